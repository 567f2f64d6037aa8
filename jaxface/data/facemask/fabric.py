"""The fabric of a procedural mask, drawn in the mask's own frame.

The mask frame has u across (0 at the left cheek anchor, 1 at the right) and
v down (0 at the top anchor on the nose, 1 at the bottom anchor under the
chin). Colour, print, pleats, folds, seams, valve and edge binding are drawn
on a texture in that frame of about one texel per pixel, then warped onto the
image with two affine maps, one per half of the mask, that agree on the
centre line: stripes and pleats turn with the roll and the half turning away
is foreshortened.
"""

import dataclasses
import math

import cv2
import numpy as np

from jaxface.data import curves
from jaxface.data.facemask import colours
from jaxface.data.facemask import geometry
from jaxface.data.facemask import textures

# Margin (in u and v) of the texture around the outline, so that bilinear
# warping never samples past the drawn fabric.
_PAD = 0.03


@dataclasses.dataclass(frozen=True)
class _Texels:
  """How the mask-frame texture samples the frame.

  Attributes:
    uu: [1, tw] float32, u of the texel centres.
    vv: [th, 1] float32, v of the texel centres.
    du: u per texel.
    dv: v per texel.
    u0: u of the texture's left edge.
    v0: v of the texture's top edge.
    unit: texels per mask height (v from 0 to 1).
    outline: [N, 2] the mask outline in texel coordinates.
  """
  uu: np.ndarray
  vv: np.ndarray
  du: float
  dv: float
  u0: float
  v0: float
  unit: float
  outline: np.ndarray

  @property
  def shape(self) -> tuple[int, int]:
    """(th, tw), the texture's size."""
    return self.vv.shape[0], self.uu.shape[1]

  @property
  def xc(self) -> np.ndarray:
    """[1, tw] texels from the centre line (u = 1/2)."""
    return (self.uu - 0.5) / self.du


def fabric(rng: np.random.Generator, style: str, colour: np.ndarray,
           outline: np.ndarray, origin: np.ndarray, shape, anchors,
           bank: textures.NoiseBank) -> np.ndarray:
  """The mask's colour [h, w, 3] over its bounding box (float32 0..1).

  Args:
    rng: randomness.
    style: a procedural style.
    colour: RGB [3] in [0, 1], the fabric's base colour.
    outline: [N, 2] the mask outline in image pixels.
    origin: [2] image (x, y) of the box's top-left pixel.
    shape: (h, w) of the box.
    anchors: image points (top, bottom, left cheek, right cheek) that the
      mask frame's (1/2, 0), (1/2, 1), (0, .) and (1, .) go to.
    bank: noise fields.

  Returns:
    float32 [h, w, 3].
  """
  t, b, l, r = anchors
  axis = b - t
  height = float(np.hypot(*axis))
  n = np.array([-axis[1], axis[0]]) / max(height, 1e-6)  # towards image-left
  # The cheek anchors, kept clear of the centre line.
  dl = max(float((l - t) @ n), 0.12 * height)
  dr = max(float(-(r - t) @ n), 0.12 * height)
  va = float(np.clip((l - t) @ axis / height ** 2, -0.2, 0.9))
  vb = float(np.clip((r - t) @ axis / height ** 2, -0.2, 0.9))
  l = t + axis * va + n * dl
  r = t + axis * vb - n * dr
  # Canonical (u, v) -> image per half.
  src_l = np.float32([[0.5, 0.0], [0.5, 1.0], [0.0, va]])
  src_r = np.float32([[0.5, 0.0], [0.5, 1.0], [1.0, vb]])
  m_l = cv2.getAffineTransform(src_l, np.float32([t, b, l]))
  m_r = cv2.getAffineTransform(src_r, np.float32([t, b, r]))
  inv_l = cv2.invertAffineTransform(m_l)
  inv_r = cv2.invertAffineTransform(m_r)
  side_of = (outline - t) @ n  # > 0 on the left half
  homog = np.concatenate([outline, np.ones((len(outline), 1))], 1)
  canon = np.where((side_of > 0)[:, None], homog @ inv_l.T, homog @ inv_r.T)
  texels = _texels(canon, 2.0 * max(dl, dr), height)
  tex = _pattern(rng, style, colour, texels, bank)
  return _warp_halves(tex, texels, (inv_l, inv_r), origin, shape, t, n)


def _texels(canon: np.ndarray, width: float, height: float) -> _Texels:
  """The texture's sampling for an outline `canon` [N, 2] in (u, v).

  Texels are about one per pixel on the wider half (`width` pixels per unit
  u) and square on the face (`height` pixels per unit v), within limits
  that keep tiny and huge faces cheap.
  """
  u0, v0 = canon.min(0) - _PAD
  u1, v1 = canon.max(0) + _PAD
  tex_per_u = float(np.clip(width, 8.0, 640.0))
  tex_per_v = float(np.clip(height, 8.0, 640.0))
  tw = int(np.clip(math.ceil((u1 - u0) * tex_per_u), 8, 900))
  th = int(np.clip(math.ceil((v1 - v0) * tex_per_v), 8, 900))
  du, dv = (u1 - u0) / tw, (v1 - v0) / th
  uu = (u0 + (np.arange(tw, dtype=np.float32) + 0.5) * du)[None, :]
  vv = (v0 + (np.arange(th, dtype=np.float32) + 0.5) * dv)[:, None]
  poly_tex = np.stack([(canon[:, 0] - u0) / du - 0.5,
                       (canon[:, 1] - v0) / dv - 0.5], -1)
  return _Texels(uu, vv, du, dv, u0, v0, tex_per_v, poly_tex)


def _warp_halves(tex: np.ndarray, texels: _Texels, inverses, origin, shape,
                 t: np.ndarray, n: np.ndarray) -> np.ndarray:
  """Warps the texture onto the box, each half of the mask with its own map.

  Args:
    tex: float32 [th, tw, 3] the texture.
    texels: its sampling.
    inverses: the image -> (u, v) affine maps [2, 3] of the left and the
      right half.
    origin: [2] image (x, y) of the box's top-left pixel.
    shape: (h, w) of the box.
    t: [2] the top anchor, on the centre line.
    n: [2] unit normal of the centre line, towards image-left.

  Returns:
    float32 [h, w, 3].
  """
  bh, bw = shape
  du, dv, u0, v0 = texels.du, texels.dv, texels.u0, texels.v0
  # Texel -> image maps per half, composed with the bbox offset.
  to_tex = np.array([[1.0 / du, 0.0, -u0 / du - 0.5],
                     [0.0, 1.0 / dv, -v0 / dv - 0.5],
                     [0.0, 0.0, 1.0]])
  from_img = np.array([[1.0, 0.0, origin[0]], [0.0, 1.0, origin[1]],
                       [0.0, 0.0, 1.0]])
  halves = []
  for inv in inverses:
    m = to_tex @ np.vstack([inv, [0.0, 0.0, 1.0]]) @ from_img  # img -> tex
    halves.append(cv2.warpAffine(
        tex, m[:2], (bw, bh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE))
  xs = np.arange(bw, dtype=np.float32)[None, :] + (origin[0] - t[0])
  ys = np.arange(bh, dtype=np.float32)[:, None] + (origin[1] - t[1])
  left = ((xs * np.float32(n[0]) + ys * np.float32(n[1])) > 0).astype(
      np.uint8)
  return cv2.copyTo(halves[0], left, halves[1])


def _pattern(rng: np.random.Generator, style: str, colour: np.ndarray,
             texels: _Texels, bank: textures.NoiseBank) -> np.ndarray:
  """Colour x shading of the fabric on the mask-frame texture.

  Args:
    rng: randomness.
    style: a procedural style.
    colour: RGB [3] in [0, 1].
    texels: the texture's sampling.
    bank: noise fields.

  Returns:
    float32 [th, tw, 3].
  """
  u = rng.uniform
  uu, vv = texels.uu, texels.vv
  th, tw = texels.shape
  if style == "cloth_printed":
    rgb = textures.print_pattern(rng, (th, tw), texels.unit, colour, bank)
  else:
    rgb = np.empty((3, th, tw), np.float32)  # planar
    for k in range(3):
      rgb[k] = colour[k]
  cx = 2.0 * uu - 1.0  # -1 .. 1 across
  # Shape shading: rounder towards the cheeks, turned away under the chin,
  # a light from one side.
  shade = (1.0 - u(0.12, 0.3) * np.abs(cx) ** u(1.6, 2.6)
           - u(0.04, 0.16) * geometry.smoothstep(0.72, 1.1, vv)
           + u(-0.06, 0.06) * cx)
  shade = np.broadcast_to(shade, (th, tw)).astype(np.float32).copy()
  band = max(1.5, texels.unit * u(0.025, 0.045))  # binding / rim width
  shading = {"surgical": _surgical, "surgical_pleated": _surgical,
             "n95": _n95, "kn95": _kn95, "cloth": _cloth,
             "cloth_printed": _cloth}[style]
  shade = shading(rng, style, texels, rgb, shade, band, colour, bank)
  return cv2.merge([rgb[k] * shade for k in range(3)])


def _edge(texels: _Texels, width: float) -> np.ndarray:
  """float32 [th, tw] coverage of a band `width` texels wide on the outline.

  At least two texels wide, anti-aliased, at 1/16 texel precision.
  """
  edge = np.zeros(texels.shape, np.float32)
  poly = [np.round(texels.outline * 16).astype(np.int32)]
  cv2.polylines(edge, poly, True, 1.0, max(2, int(round(width))),
                cv2.LINE_AA, 4)
  return edge


def _inset(texels: _Texels, depth: float) -> np.ndarray:
  """The outline shrunk towards its centroid by about `depth` texels, closed.

  Returns:
    [N + 1, 2] texel points, the first repeated at the end.
  """
  poly = texels.outline
  centre = poly.mean(0)
  inset = centre + (poly - centre) * (1.0 - depth / max(texels.shape))
  return np.concatenate([inset, inset[:1]])


# The per-style shadings below take the planar colour `rgb` [3, th, tw]
# (which they may recolour in place) and the shading `shade` [th, tw], and
# return the new shading; `band` is the edge binding's width in texels.


def _surgical(rng, style, texels, rgb, shade, band, colour, bank):
  """Bound edges, nose wire; pleats or a faint non-woven texture."""
  del rgb, colour  # the fabric keeps its plain colour
  u = rng.uniform
  uu, vv = texels.uu, texels.vv
  edge = _edge(texels, 2 * band)
  shade *= 1.0 - 0.04 * edge
  shade += 0.025 * edge
  # Nose wire: a ridge along the top near the centre.
  wire = np.exp(-((vv - 0.045) / 0.02) ** 2) * np.exp(
      -((uu - 0.5) / 0.12) ** 4)
  shade += u(0.02, 0.06) * wire
  if style == "surgical_pleated":
    shade *= _pleats(rng, texels)
  else:
    # Flat: only a faint horizontal texture of the non-woven layers.
    lines = textures.crop(bank.weave.T, texels.shape, rng, zoom=0.7)
    shade += 0.015 * lines
  return shade


def _pleats(rng: np.random.Generator, texels: _Texels) -> np.ndarray:
  """Shading factor of three horizontal pleats, [th, tw].

  The pleats open in the middle and bunch towards the sides (v is squeezed
  about the middle more with |u - 1/2|).
  """
  u = rng.uniform
  uu, vv = texels.uu, texels.vv
  cx = 2.0 * uu - 1.0
  folds = 3
  start, end = u(0.2, 0.28), u(0.72, 0.82)
  squeeze = u(0.4, 0.9)
  vp = 0.5 + (vv - 0.5) * (1.0 + squeeze * cx * cx)
  f = (vp - start) / (end - start) * folds
  frac = f - np.floor(f)
  inside = (f >= 0) & (f < folds + 0.35)
  dark = u(0.12, 0.25)
  period = (end - start) / folds * texels.unit
  soft = 1.0 / max(period, 1.0)
  # Each fold casts a shadow that fades down the pleat below it, whose
  # lower edge catches the light; the jump at the fold is spread over
  # about a texel so that it stays anti-aliased once warped.
  rise = geometry.smoothstep(0.0, 1.5 * soft, frac)
  prof = (1.0 - (dark * np.exp(-frac / 0.22) + 0.05) * rise
          + 0.08 * geometry.smoothstep(0.8 - 2 * soft, 1.0, frac) * rise)
  return np.where(inside, prof, 1.0)


def _n95(rng, style, texels, rgb, shade, band, colour, bank):
  """Moulded cup and rim; maybe a centre seam, a nose clip and a valve."""
  del style  # one kind of N95
  u = rng.uniform
  uu, vv = texels.uu, texels.vv
  cx = 2.0 * uu - 1.0
  cup = 1.0 - u(0.12, 0.22) * (cx * cx + ((vv - 0.5) / 0.55) ** 2)
  shade *= cup
  shade += 0.06 * np.exp(-((cx / 0.35) ** 2 + ((vv - 0.35) / 0.3) ** 2))
  edge = _edge(texels, 2.4 * band)
  shade *= 1.0 - u(0.05, 0.14) * edge
  fib = textures.crop(bank.smooth[0], texels.shape, rng, zoom=1.5)
  shade += 0.02 * fib
  if rng.random() < 0.5:  # centre seam
    seam = np.exp(-(texels.xc / 0.9) ** 2)
    shade *= 1.0 - 0.18 * seam * geometry.smoothstep(0.05, 0.15, vv)
  if rng.random() < 0.6:  # metal nose clip
    clip = (np.exp(-((vv - 0.07) / 0.03) ** 6)
            * np.exp(-((uu - 0.5) / 0.13) ** 6))
    metal = u(0.55, 0.85)
    textures.mix(rgb, np.full(3, metal), clip * 0.7)
  if rng.random() < 0.4:  # exhalation valve on one side
    shade = _valve(rng, colour, texels, rgb, shade)
  return shade


def _valve(rng: np.random.Generator, colour: np.ndarray, texels: _Texels,
           rgb: np.ndarray, shade: np.ndarray) -> np.ndarray:
  """Draws an N95 exhalation valve on one side of the mask-frame texture.

  Recolours the planar `rgb` [3, h, w] in place and returns the new shading
  [h, w].
  """
  u = rng.uniform
  uu, vv, unit = texels.uu, texels.vv, texels.unit
  side = rng.choice([-1.0, 1.0])
  centre_u, centre_v = 0.5 + side * u(0.18, 0.24), u(0.55, 0.66)
  radius = u(0.09, 0.13) * unit  # texels
  dx = (uu - centre_u) / texels.du
  dy = (vv - centre_v) / texels.dv
  r = np.sqrt(dx * dx + dy * dy) / radius  # [h, w], 0 at the centre
  body = np.clip((1.0 - r) * radius + 0.5, 0.0, 1.0)
  ring = np.clip(1.0 - np.abs(r - 0.8) * radius / 1.5, 0.0, 1.0)
  valve_col = (colours.colour(rng, str(rng.choice(["white", "grey", "black",
                                                   "vivid"])))
               if rng.random() < 0.8 else colour)
  textures.mix(rgb, valve_col, body)
  slits = 0.5 + 0.5 * np.cos(dy * (2 * np.pi / max(2.5, radius / 3.0)))
  shade = shade * (1.0 - body * (0.12 * slits * (r < 0.6) + 0.25 * ring))
  return shade + 0.08 * body * np.clip(1.0 - r, 0, 1) * (dy < 0)


def _kn95(rng, style, texels, rgb, shade, band, colour, bank):
  """Vertical centre fold with two differently lit halves, dotted weld."""
  del style, rgb, colour, bank  # one kind of KN95, plain colour
  u = rng.uniform
  xc = texels.xc
  d = u(0.05, 0.16) * rng.choice([-1.0, 1.0])
  shade *= 1.0 + d * np.tanh(xc / 0.8)
  fold = np.exp(-xc ** 2)
  shade *= 1.0 - 0.25 * fold
  edge = _edge(texels, 1.6 * band)
  shade *= 1.0 - 0.05 * edge
  shade *= 1.0 - 0.18 * _weld(texels, band)
  return shade


def _weld(texels: _Texels, band: float) -> np.ndarray:
  """[th, tw] coverage of the dotted weld a little inside the edge."""
  unit = texels.unit
  inset = _inset(texels, 2.5 * band)
  dots = curves.resample_polyline(
      inset, int(np.clip((len(inset) - 1) * 2, 40, 240)))
  pitch = max(2.0, 0.02 * unit)
  seg = np.hypot(*np.diff(dots, axis=0).T).sum() / len(dots)
  keep = dots[::max(1, int(round(pitch / max(seg, 1e-6))))]
  weld = np.zeros(texels.shape, np.float32)
  rad = max(1, int(round(0.006 * unit * 16)))
  for p in np.round(keep * 16).astype(np.int32):
    cv2.circle(weld, (int(p[0]), int(p[1])), rad, 1.0, -1, cv2.LINE_AA, 4)
  return weld


def _cloth(rng, style, texels, rgb, shade, band, colour, bank):
  """Weave and wrinkles; maybe a centre seam and hem stitching."""
  del style, rgb, colour  # the print, if any, is already in `rgb`
  u = rng.uniform
  unit = texels.unit
  weave = textures.crop(bank.weave, texels.shape, rng,
                        zoom=u(0.8, 1.3) * max(1.0, unit / 120.0))
  shade *= 1.0 + u(0.02, 0.05) * weave
  wrinkle = textures.crop(bank.smooth[2], texels.shape, rng,
                          zoom=u(0.5, 1.0) * unit / 120.0)
  shade *= 1.0 + u(0.02, 0.06) * wrinkle
  edge = _edge(texels, 1.2 * band)
  shade *= 1.0 - 0.1 * edge
  if rng.random() < 0.55:  # centre seam
    seam = np.exp(-(texels.xc / 0.9) ** 2)
    shade *= 1.0 - u(0.15, 0.3) * seam
  if rng.random() < 0.5:  # hem stitching
    pts = curves.resample_polyline(_inset(texels, 3.0 * band), 120)
    stitch = np.zeros(texels.shape, np.float32)
    # Every other segment of the resampled hem: a dashed line.
    segs = [np.round(pts[i:i + 2] * 16).astype(np.int32)
            for i in range(0, len(pts) - 1, 2)]
    cv2.polylines(stitch, segs, False, 1.0, 1, cv2.LINE_AA, 4)
    shade *= 1.0 - 0.15 * stitch
  return shade
