"""Synthetic face masks rendered onto face photographs from their landmarks.

There are no photo pairs of one face with and without a mask, so training
pairs are made by drawing a face mask onto a real face photo. `FaceMaskRenderer`
takes a uint8 RGB image, its 98 WFLW landmarks (`jaxface.data.wflw`) and a
`np.random.Generator`, and returns the image wearing a face mask, the exact
binary map of the mask (1 = mask / hole) and the style label.

Styles (`STYLES`, label = index):

  surgical          flat surgical mask, bound edges, nose wire, ear loops.
  surgical_pleated  the same with three horizontal pleats that open in the
                    middle and bunch towards the sides, fold shadows.
  n95               moulded cup, rim, optional centre seam, valve and nose
                    clip; two head straps.
  kn95              folded mask with a pointed chin, vertical centre fold
                    with the two halves lit differently, welded dotted
                    border; ear loops.
  cloth             plain fabric with weave and wrinkle noise, optional
                    centre seam and hem stitching; ear loops.
  cloth_printed     cloth printed with stripes, dots, checks / plaid,
                    flowers or camouflage blobs, all generated here.
  template          a MaskTheFace RGBA template warped onto the face (needs
                    `template_dir`).
  box               the paper's landmark-derived lower-face box (a hole,
                    filled with `HOLE_FILL`; see `box_bounds`).
  freeform          free-form irregular strokes (a hole, filled with
                    `HOLE_FILL`), 10-50% of the image.

How a procedural mask is placed. A face frame is taken from the landmarks:
`right` along the eye line, `down` perpendicular to it (so the mask follows
the roll), the face scale from the jaw width and the eye-to-chin height. The
outline runs from a point on the nose bridge (between landmarks 51 and 53;
under the nose, above the upper lip, with probability `lower_prob`) over two
points under the eyes to the jaw contour near points 3 and 29, then along the
jaw pushed a little outwards and, around the chin, downwards. Since the
outline is built from the landmarks of the posed face, it follows yaw and
roll. The fabric (colour, pattern, pleats, folds, seams, edge binding) is
drawn in the mask's own frame, a texture whose axes are the mask's centre
line (top anchor -> bottom anchor) and its cheek anchors, and warped onto the
image with two affine maps, one per half of the mask, that agree on the centre
line: stripes and pleats turn with the roll and the half turning away is
foreshortened. The colour is then multiplied by the low-frequency luminance
of the face under the mask (normalised), the exposure and colour cast of the
surroundings, and a shape shading (darker towards the cheeks and under the
chin). Coverage is anti-aliased (OpenCV LINE_AA polygons at sub-pixel
precision), the composite is `image * (1 - alpha) + colour * alpha` and the
binary map is `alpha > 1/2`: pixels the renderer changes outside the map lie
on its one-pixel soft edge. Everything is computed in the bounding box of the
mask, in float32.

Templates follow MaskTheFace (aqeelanwar/MaskTheFace): `masks.cfg` names for
each template six anchor points a-f; the face gets six matching points (b on
the nose bridge, a and c on the jaw contour at the height of the eye line
moved down by the length of the nose, d and f on the jaw contour at the height
of the lower lip, e the chin) and a least-squares homography of all six pairs
warps the RGBA template. The `_left` / `_right` variant of a template is used
when the head is turned by more than `TEMPLATE_YAW_DEG` (the yaw is estimated
from where the nose tip lies between the two sides of the jaw).

Speed (one core, 256 x 256): about 1.5-2 ms per procedural mask, 2-3 ms per
template once its image is cached (the first use of a template decodes its
PNG), well under 1 ms for the holes. Noise fields are made once per renderer
(from a fixed seed, so renders depend only on the generator passed in) and
templates are loaded on first use; neither is pickled.

Coordinates follow the project convention: pixel (x, y) with the centre of
pixel (row i, col j) at (j, i), which is also OpenCV's drawing convention.
"""

import colorsys
import configparser
import dataclasses
import math
import os
import pathlib
from typing import Mapping, Sequence

import cv2
import numpy as np

from jaxface.data import curves
from jaxface.data import wflw

PROCEDURAL_STYLES = ("surgical", "surgical_pleated", "n95", "kn95", "cloth",
                     "cloth_printed")
HOLE_STYLES = ("box", "freeform")
STYLES = PROCEDURAL_STYLES + ("template",) + HOLE_STYLES
STYLE_ID = {name: i for i, name in enumerate(STYLES)}
DEFAULT_STYLES = PROCEDURAL_STYLES

# Colour of the hole in `masked_image` for the `box` and `freeform` styles.
HOLE_FILL = (255, 255, 255)
# Fraction of the image a `freeform` hole covers.
FREEFORM_COVERAGE = (0.1, 0.5)
# Head yaw (degrees) past which a template's `_left` / `_right` variant is
# used when `masks.cfg` has one.
TEMPLATE_YAW_DEG = 13.0
# The `box` style's margins in pixels of a 256 x 256 image: (left of point 0,
# right of point 31, below point 64, below point 16). They scale with the
# image size.
BOX_MARGINS_256 = (10.0, 10.0, 4.0, 15.0)

MIN_IMAGE_SIZE = 16

# Landmarks each kind of placement reads (all must be finite).
_EYES = np.arange(60, 76)
_NEEDED = {
    "procedural": np.concatenate([wflw.JAW, np.arange(51, 60), _EYES,
                                  [79]]),
    "template": np.concatenate([wflw.JAW, np.arange(51, 55), _EYES, [85]]),
    "box": np.array([0, 16, 31, 64]),
    "freeform": np.array([], np.int64),
}

# Nose-tip offset between the jaw sides (-1 .. 1) per unit sin(yaw),
# measured on `jaxface.data.procedural` faces of known yaw.
_YAW_GAIN = 1.26
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class RenderedMask:
  """A face wearing a rendered mask.

  Attributes:
    masked_image: uint8 [H, W, 3], the input image with the mask drawn on it.
    mask: uint8 [H, W] in {0, 1}, 1 where the mask is (alpha > 1/2).
    style: int, index of the style in `STYLES`.
  """
  masked_image: np.ndarray
  mask: np.ndarray
  style: int


# ---------------------------------------------------------------------------
# Small geometry helpers.






def _at(curve: np.ndarray, index) -> np.ndarray:
  """Points of a polyline [N, 2] at fractional vertex indices."""
  k = np.arange(len(curve))
  index = np.asarray(index, np.float64)
  return np.stack([np.interp(index, k, curve[:, 0]),
                   np.interp(index, k, curve[:, 1])], -1)


def _fixed(points: np.ndarray, origin) -> np.ndarray:
  """Float pixel points -> int32 for OpenCV drawing with shift=4."""
  return np.round((np.asarray(points) - origin) * 16.0).astype(np.int32)


def _smoothstep(e0, e1, x):
  """0 at e0, 1 at e1, a cubic in between (e1 < e0 gives a falling step)."""
  t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


@dataclasses.dataclass
class _Frame:
  """The face's frame: unit axes, scale, yaw estimate."""
  right: np.ndarray  # [2] along the eye line, image-left eye -> right eye
  down: np.ndarray  # [2] perpendicular, towards the chin
  eyes: np.ndarray  # [2] midpoint of the two eye centres
  scale: float  # about the face width in pixels
  yaw: float  # degrees, + when the nose points to image-right


def _face_frame(lm: np.ndarray) -> _Frame:
  """The frame of a face from its landmarks; ValueError if they are absurd."""
  eye_l, eye_r = lm[60:68].mean(0), lm[68:76].mean(0)
  axis = eye_r - eye_l
  norm = float(np.hypot(*axis))
  if not norm > 1e-3:
    raise ValueError("landmarks: the two eyes coincide; not a face")
  right = axis / norm
  down = np.array([-right[1], right[0]])
  eyes = 0.5 * (eye_l + eye_r)
  width = float((lm[wflw.JAW_RIGHT] - lm[wflw.JAW_LEFT]) @ right)
  height = float((lm[wflw.CHIN] - eyes) @ down)
  if not (width > 2.0 and height > 2.0):
    raise ValueError(
        "landmarks: the jaw contour must run from image-left (point 0) to "
        "image-right (point 32) with the chin (16) below the eyes; got face "
        f"width {width:.1f} px and eye-to-chin height {height:.1f} px")
  x_nose = float((lm[wflw.NOSE_TIP] - lm[wflw.JAW_LEFT]) @ right) / width
  q = np.clip((2.0 * x_nose - 1.0) / _YAW_GAIN, -1.0, 1.0)
  return _Frame(right, down, eyes, max(width, 1.15 * height),
                math.degrees(math.asin(q)))


def estimate_yaw(landmarks: np.ndarray) -> float:
  """Rough head yaw in degrees from 98 landmarks; + when the nose points to
  image-right.

  From where the nose tip (54) lies between the two ends of the jaw contour
  (0 and 32) along the eye line; the gain is measured on
  `jaxface.data.procedural` faces of known yaw (about +-3 degrees there).
  Used to choose `_left` / `_right` templates.
  """
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (wflw.NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks must be [{wflw.NUM_LANDMARKS}, 2], got "
                     f"{lm.shape}")
  needed = np.concatenate([[0, 16, 32, 54], _EYES])
  if not np.all(np.isfinite(lm[needed])):
    raise ValueError(f"estimate_yaw needs landmarks {needed.tolist()}")
  return _face_frame(lm).yaw



def _jaw_crossing(jaw: np.ndarray, frame: _Frame, height: float,
                  side: int) -> np.ndarray:
  """Point of the jaw contour at `height` (along `down`) below the eyes.

  Args:
    jaw: [33, 2] contour.
    frame: the face frame.
    height: pixels below the eye line.
    side: 0 for the image-left half (points 0..16), 1 for the right half.

  Returns:
    [2]: the crossing, interpolated; above point 0 (or 32) the contour is
    extended straight up, below the chin the chin is returned.
  """
  half = jaw[:17] if side == 0 else jaw[16:][::-1]
  h = (half - frame.eyes) @ frame.down
  if height <= h[0]:
    return half[0] + (height - h[0]) * frame.down
  above = np.nonzero(h >= height)[0]
  if not len(above):
    return half[-1].copy()
  i = int(above[0])
  t = (height - h[i - 1]) / max(h[i] - h[i - 1], 1e-9)
  return half[i - 1] + (half[i] - half[i - 1]) * t


# ---------------------------------------------------------------------------
# Colours.

# HSV ranges per colour family: hue (degrees), saturation, value.
_FAMILIES = {
    "white": ((0, 360), (0.0, 0.06), (0.86, 0.97)),
    "light_blue": ((188, 208), (0.22, 0.5), (0.78, 0.95)),
    "teal": ((160, 182), (0.2, 0.45), (0.62, 0.88)),
    "pastel": ((0, 360), (0.14, 0.38), (0.78, 0.95)),
    "black": ((0, 360), (0.0, 0.15), (0.07, 0.2)),
    "grey": ((0, 360), (0.0, 0.06), (0.35, 0.78)),
    "dark": ((0, 360), (0.3, 0.8), (0.16, 0.42)),
    "vivid": ((0, 360), (0.5, 0.95), (0.45, 0.92)),
    "navy": ((215, 235), (0.45, 0.8), (0.22, 0.45)),
    "beige": ((28, 48), (0.08, 0.3), (0.7, 0.9)),
}
_PALETTES = {
    "surgical": {"light_blue": 45, "white": 20, "teal": 10, "pastel": 10,
                 "black": 10, "grey": 5},
    "n95": {"white": 55, "beige": 15, "grey": 10, "pastel": 8, "black": 6,
            "vivid": 6},
    "kn95": {"white": 40, "black": 20, "grey": 10, "pastel": 15, "vivid": 7,
             "dark": 4, "light_blue": 4},
    "cloth": {"black": 18, "dark": 18, "vivid": 18, "pastel": 12, "grey": 10,
              "white": 8, "navy": 10, "beige": 6},
}
_PALETTES["surgical_pleated"] = _PALETTES["surgical"]
_PALETTES["cloth_printed"] = _PALETTES["cloth"]


def _colour(rng: np.random.Generator, family: str) -> np.ndarray:
  """A random RGB colour in [0, 1] of one family."""
  (h0, h1), (s0, s1), (v0, v1) = _FAMILIES[family]
  rgb = colorsys.hsv_to_rgb((rng.uniform(h0, h1) / 360.0) % 1.0,
                            rng.uniform(s0, s1), rng.uniform(v0, v1))
  return np.array(rgb, np.float32)


def _palette_colour(rng: np.random.Generator, style: str) -> np.ndarray:
  """A random colour from the style's mix of families (`_PALETTES`)."""
  table = _PALETTES[style]
  names = list(table)
  w = np.array([table[n] for n in names], np.float64)
  return _colour(rng, names[rng.choice(len(names), p=w / w.sum())])


def _contrasting(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
  """A colour that stands out of `base` (for prints and valves)."""
  for _ in range(8):
    c = _colour(rng, str(rng.choice(["white", "black", "vivid", "pastel",
                                     "dark", "navy"])))
    if np.abs(c - base).sum() > 0.45:
      return c
  return np.where(base > 0.5, base * 0.35, 1.0 - (1.0 - base) * 0.35)


# ---------------------------------------------------------------------------
# Textures.


class _Bank:
  """Noise fields made once per renderer (from a fixed seed) and cropped."""

  def __init__(self):
    rng = np.random.default_rng(20240611)
    self.white = rng.standard_normal((512, 512)).astype(np.float32)
    smooth = []
    for sigma in (3.0, 6.0, 12.0):
      f = cv2.GaussianBlur(rng.standard_normal((256, 256)).astype(np.float32),
                           (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
      smooth.append(f / (f.std() + 1e-6))
    self.smooth = smooth
    # Threads: noise smeared along rows plus noise smeared along columns,
    # and a faint regular warp.
    noise = rng.standard_normal((256, 256)).astype(np.float32)
    weave = (cv2.GaussianBlur(noise, (9, 1), 0)
             + cv2.GaussianBlur(noise, (1, 9), 0))
    weave += 0.5 * np.sin(np.arange(256, dtype=np.float32) * (
        2 * np.pi / 3.0))[None, :]
    self.weave = weave / (weave.std() + 1e-6)

  @staticmethod
  def crop(field: np.ndarray, shape, rng: np.random.Generator,
           zoom: float = 1.0) -> np.ndarray:
    """A random window of `field` resized to `shape` (h, w)."""
    h, w = shape
    fh, fw = field.shape
    ch = int(min(fh, max(2, round(h / zoom))))
    cw = int(min(fw, max(2, round(w / zoom))))
    y = int(rng.integers(0, fh - ch + 1))
    x = int(rng.integers(0, fw - cw + 1))
    win = field[y:y + ch, x:x + cw]
    if (ch, cw) == (h, w):
      return win
    return cv2.resize(win, (w, h), interpolation=cv2.INTER_LINEAR)


def _mix(planes: np.ndarray, colour: np.ndarray, a: np.ndarray) -> None:
  """planes [3, h, w] <- planes + (colour - planes) * a, per channel.

  Planar 2-D updates: NumPy broadcasting over a trailing axis of 3 is many
  times slower than three contiguous 2-D operations.
  """
  for k in range(3):
    planes[k] += (float(colour[k]) - planes[k]) * a


def _print_pattern(rng: np.random.Generator, shape, unit: float,
                   base: np.ndarray, bank: _Bank) -> np.ndarray:
  """A printed-cloth colour layer, planar [3, h, w] in [0, 1].

  Args:
    rng: randomness.
    shape: (h, w) in texels (texels are about square on the face).
    unit: texels per mask height.
    base: background colour.
    bank: noise fields.
  """
  h, w = shape
  yy = np.arange(h, dtype=np.float32)[:, None]
  xx = np.arange(w, dtype=np.float32)[None, :]
  c1 = _contrasting(rng, base)
  c2 = _contrasting(rng, base)
  kind = rng.choice(["stripes", "dots", "checks", "floral", "camo"],
                    p=[0.22, 0.2, 0.22, 0.24, 0.12])
  out = np.empty((3, h, w), np.float32)
  for k in range(3):
    out[k] = base[k]
  if kind == "stripes":
    theta = rng.choice([0.0, 0.5 * np.pi, 0.25 * np.pi, -0.25 * np.pi,
                        rng.uniform(0, np.pi)])
    period = unit * rng.uniform(0.06, 0.2)
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / period
    duty = rng.uniform(0.25, 0.55)
    d = np.abs((t % 1.0) - 0.5) * period  # texels from the stripe centre
    _mix(out, c1, np.clip(duty * period * 0.5 - d + 0.5, 0.0, 1.0))
    if rng.random() < 0.5:  # a thin second stripe between the wide ones
      d2 = np.abs(((t + 0.5) % 1.0) - 0.5) * period
      _mix(out, c2, np.clip(0.08 * period - d2 + 0.5, 0.0, 1.0))
  elif kind == "dots":
    period = unit * rng.uniform(0.07, 0.18)
    radius = period * rng.uniform(0.14, 0.32)
    row = np.floor(yy / period)
    fx = (xx / period + 0.5 * (row % 2)) % 1.0 - 0.5
    fy = (yy / period) % 1.0 - 0.5
    d = np.sqrt(fx * fx + fy * fy) * period
    _mix(out, c1, np.clip(radius - d + 0.5, 0.0, 1.0))
  elif kind == "checks":
    period = unit * rng.uniform(0.08, 0.25)
    bx, by = (np.clip((np.abs((c / period) % 1.0 - 0.5) - 0.25) * period + 0.5,
                      0.0, 1.0) for c in (xx, yy))
    if rng.random() < 0.6:  # gingham: overlapping translucent bands
      _mix(out, c1, 0.5 * (bx + by))
    else:  # plaid: bands plus thin lines of a second colour
      _mix(out, c1, np.maximum(bx, by) * 0.75)
      lx = np.clip(1.2 - np.abs(((xx / period) % 1.0) - 0.5) * period, 0, 1)
      ly = np.clip(1.2 - np.abs(((yy / period) % 1.0) - 0.5) * period, 0, 1)
      _mix(out, c2, np.maximum(lx, ly) * 0.8)
  elif kind == "floral":
    layers = np.zeros((3, h, w), np.float32)  # petals, centres, leaves
    size = unit * rng.uniform(0.06, 0.14)
    count = int(np.clip(h * w / (size * size * rng.uniform(4.0, 9.0)), 3,
                        400))
    petals = int(rng.integers(4, 7))
    for _ in range(count):
      cx, cy = rng.uniform(-size, w + size), rng.uniform(-size, h + size)
      s = size * rng.uniform(0.7, 1.3)
      phase = rng.uniform(0, 2 * np.pi)
      if rng.random() < 0.5:
        ang = phase + 1.3
        leaf = (cx + 1.2 * s * math.cos(ang), cy + 1.2 * s * math.sin(ang))
        cv2.ellipse(layers[2], (int(leaf[0] * 16), int(leaf[1] * 16)),
                    (int(0.55 * s * 16), int(0.25 * s * 16)),
                    math.degrees(ang), 0, 360, 1.0, -1, cv2.LINE_AA, 4)
      for k in range(petals):
        ang = phase + 2 * np.pi * k / petals
        px, py = cx + 0.5 * s * math.cos(ang), cy + 0.5 * s * math.sin(ang)
        cv2.ellipse(layers[0], (int(px * 16), int(py * 16)),
                    (int(0.5 * s * 16), int(0.28 * s * 16)),
                    math.degrees(ang), 0, 360, 1.0, -1, cv2.LINE_AA, 4)
      cv2.circle(layers[1], (int(cx * 16), int(cy * 16)),
                 int(0.22 * s * 16), 1.0, -1, cv2.LINE_AA, 4)
    leaf_colour = _colour(rng, "dark") * np.array([0.6, 1.0, 0.6], np.float32)
    for layer, colour in ((layers[2], leaf_colour), (layers[0], c1),
                          (layers[1], c2)):
      _mix(out, colour, np.clip(layer, 0.0, 1.0))
  else:  # camouflage-like blobs from smooth noise, two levels
    field = _Bank.crop(bank.smooth[1], (h, w), rng,
                       zoom=rng.uniform(0.6, 1.6) * unit / 100.0)
    sharp = 6.0
    _mix(out, c1, np.clip((field - 0.3) * sharp + 0.5, 0.0, 1.0))
    _mix(out, c2, np.clip((-field - 0.5) * sharp + 0.5, 0.0, 1.0))
  return out


def _valve(rng: np.random.Generator, colour: np.ndarray, unit: float,
           uu: np.ndarray, vv: np.ndarray, step, rgb: np.ndarray,
           shade: np.ndarray) -> np.ndarray:
  """Draws an N95 exhalation valve on one side of the mask-frame texture.

  Recolours the planar `rgb` [3, h, w] in place and returns the new shading
  [h, w] (see `FaceMaskRenderer._pattern` for the arguments).
  """
  u = rng.uniform
  du, dv = step
  side = rng.choice([-1.0, 1.0])
  centre_u, centre_v = 0.5 + side * u(0.18, 0.24), u(0.55, 0.66)
  radius = u(0.09, 0.13) * unit  # texels
  dx = (uu - centre_u) / du
  dy = (vv - centre_v) / dv
  r = np.sqrt(dx * dx + dy * dy) / radius  # [h, w], 0 at the centre
  body = np.clip((1.0 - r) * radius + 0.5, 0.0, 1.0)
  ring = np.clip(1.0 - np.abs(r - 0.8) * radius / 1.5, 0.0, 1.0)
  valve_col = (_colour(rng, str(rng.choice(["white", "grey", "black",
                                            "vivid"])))
               if rng.random() < 0.8 else colour)
  _mix(rgb, valve_col, body)
  slits = 0.5 + 0.5 * np.cos(dy * (2 * np.pi / max(2.5, radius / 3.0)))
  shade = shade * (1.0 - body * (0.12 * slits * (r < 0.6) + 0.25 * ring))
  return shade + 0.08 * body * np.clip(1.0 - r, 0, 1) * (dy < 0)


# ---------------------------------------------------------------------------
# Compositing helpers.


def _light(image: np.ndarray, box, alpha: np.ndarray, rng: np.random.Generator,
           strength: float) -> tuple[np.ndarray, np.ndarray]:
  """Gain from the image's low-frequency lighting, for the region `box`.

  The luminance of the image under the mask (weighted by `alpha`, at a
  resolution of a few cells) divided by its mean gives the shading of the
  face; the mean luminance and colour of a wider region give exposure and
  colour cast.

  Args:
    image: uint8 [H, W, 3] input.
    box: (x0, y0, x1, y1) of the region being rendered.
    alpha: uint8 [h, w] coverage of the mask in that region.
    rng: randomness.
    strength: exponent of the local shading (0 = none).

  Returns:
    (gain [h, w] float32, per-channel factor [3] float32): the colour of a
    pixel is multiplied by gain * factor.
  """
  x0, y0, x1, y1 = box
  h, w = y1 - y0, x1 - x0
  crop = image[y0:y1, x0:x1]
  gh = int(np.clip(round(h / 18.0), 3, 6))
  gw = int(np.clip(round(w / 18.0), 3, 6))
  small = cv2.resize(crop, (gw, gh), interpolation=cv2.INTER_AREA)
  luma = small.astype(np.float32) @ _LUMA + 4.0  # [gh, gw]
  a = cv2.resize(alpha, (gw, gh), interpolation=cv2.INTER_AREA).astype(
      np.float32) / 255.0 + 1e-3
  num = cv2.GaussianBlur(luma * a, (3, 3), 0.8)
  den = cv2.GaussianBlur(a, (3, 3), 0.8)
  local = num / den
  mean = float((luma * a).sum() / a.sum())
  gain = np.clip((local / mean) ** strength, 0.55, 1.45).astype(np.float32)
  gain = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
  # Exposure and colour cast of the surroundings (every few pixels).
  H, W = image.shape[:2]
  step = max(1, min(h, w) // 24)
  wide = image[max(0, y0 - h // 2):min(H, y1 + h // 2):step,
               max(0, x0 - w // 2):min(W, x1 + w // 2):step]
  env = wide.reshape(-1, 3).mean(0).astype(np.float32) + 4.0
  env_luma = float(env @ _LUMA)
  exposure = float(np.clip((env_luma / 120.0) ** 0.35, 0.72, 1.12))
  cast = np.clip((env / env_luma) ** rng.uniform(0.1, 0.3), 0.85, 1.15)
  return gain, (exposure * cast).astype(np.float32)


def _to_uint8(planes, gain: np.ndarray, factor: np.ndarray,
              grain: np.ndarray | None = None,
              blur: float = 0.0) -> np.ndarray:
  """Planar float colour (0..1) x gain x factor (+ grain) -> uint8 [h, w, 3]."""
  out = []
  for k in range(3):
    plane = planes[k] * (gain * float(factor[k]))
    if grain is not None:
      plane += grain
    out.append(plane)
  rgb = cv2.merge(out)
  if blur > 0:
    rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
  return cv2.convertScaleAbs(rgb, alpha=255.0)  # rounds and saturates


def _composite(image: np.ndarray, box, layers) -> tuple[np.ndarray,
                                                        np.ndarray]:
  """Composites layers of (colour uint8 [h, w, 3], alpha uint8 [h, w]).

  Each layer gives `region * (1 - alpha) + colour * alpha`; pixels where
  every alpha is 0 are left as they are.

  Returns:
    The new uint8 image and the uint8 {0, 1} full-size map where the
    combined coverage is above 1/2 (one layer: alpha > 127).
  """
  x0, y0, x1, y1 = box
  out = image.copy()
  region = image[y0:y1, x0:x1]
  total = None
  for colour, alpha in layers:
    a = alpha.astype(np.float32)
    region = cv2.blendLinear(colour, region, a, 255.0 - a)
    total = a if total is None else total + (255.0 - total) * (a / 255.0)
  out[y0:y1, x0:x1] = region
  mask = np.zeros(image.shape[:2], np.uint8)
  mask[y0:y1, x0:x1] = total > 127.5
  return out, mask


def _bounds(points: np.ndarray, pad: float, shape) -> tuple[int, int, int,
                                                            int] | None:
  """Integer box (x0, y0, x1, y1) around points, clipped; None if empty."""
  H, W = shape[:2]
  lo = np.floor(points.min(0) - pad)
  hi = np.ceil(points.max(0) + pad) + 1
  x0, y0 = int(max(0, lo[0])), int(max(0, lo[1]))
  x1, y1 = int(min(W, hi[0])), int(min(H, hi[1]))
  if x1 <= x0 or y1 <= y0:
    return None
  return x0, y0, x1, y1


# ---------------------------------------------------------------------------
# Templates.


def _parse_templates(template_dir: str) -> dict:
  """Reads MaskTheFace's masks.cfg: {section: (file path, [6, 2] a-f)}."""
  root = pathlib.Path(template_dir)
  cfg_path = root / "masks.cfg"
  if not cfg_path.is_file():
    raise ValueError(f"template_dir {str(root)!r} has no masks.cfg "
                     f"({str(cfg_path)!r} not found)")
  parser = configparser.ConfigParser(interpolation=None, strict=False)
  try:
    parser.read(cfg_path)
  except configparser.Error as e:
    raise ValueError(f"cannot parse {str(cfg_path)!r}: {e}") from e
  templates = {}
  for section in parser.sections():
    items = parser[section]
    if "template" not in items:
      continue  # MaskTheFace's `empty` / `inpaint` entries have no image
    name = pathlib.PurePath(items["template"].replace("\\", "/")).name
    path = root / "templates" / name
    if not path.is_file():
      path = root / name
    if not path.is_file():
      raise ValueError(f"{str(cfg_path)!r} [{section}]: template {name!r} "
                       f"not found under {str(root / 'templates')!r}")
    pts = []
    for key in ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f"):
      try:
        x, y = (float(v) for v in items[key].split(","))
      except (KeyError, ValueError) as e:
        raise ValueError(f"{str(cfg_path)!r} [{section}]: {key} must be "
                         f"'x, y' ({e})") from e
      pts.append((x, y))
    templates[section] = (str(path), np.array(pts, np.float64))
  if not templates:
    raise ValueError(f"{str(cfg_path)!r} names no template")
  return templates


def _load_rgba(path: str) -> np.ndarray:
  """An image file as premultiplied RGBA uint8 [h, w, 4]."""
  raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if raw is None:
    raise ValueError(f"cannot read image {path!r}")
  if raw.dtype != np.uint8:
    raw = (raw.astype(np.float32) * (255.0 / np.iinfo(raw.dtype).max)
           ).astype(np.uint8)
  if raw.ndim == 2:
    raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGRA)
  elif raw.shape[2] == 3:
    raw = cv2.cvtColor(raw, cv2.COLOR_BGR2BGRA)
  rgba = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA)
  a = rgba[..., 3:].astype(np.uint16)
  rgba[..., :3] = ((rgba[..., :3].astype(np.uint16) * a + 127) // 255
                   ).astype(np.uint8)
  return rgba


# ---------------------------------------------------------------------------
# The renderer.


class FaceMaskRenderer:
  """Draws synthetic face masks onto face photos; see the module docstring.

  Host-side (NumPy + OpenCV), picklable (caches are rebuilt lazily after
  unpickling), deterministic given the generator passed to each call.
  """

  def __init__(self,
               styles: Sequence[str] | Mapping[str, float] = DEFAULT_STYLES,
               template_dir: str | os.PathLike | None = None,
               lower_prob: float = 0.1,
               jitter: float = 0.05):
    """Creates a renderer.

    Args:
      styles: the styles to draw from: names from `STYLES` (uniform), or a
        mapping name -> relative weight.
      template_dir: a MaskTheFace-format folder (`masks.cfg`, `templates/`,
        optional `textures/<group>/`), needed by the `template` style.
      lower_prob: probability that a procedural mask is worn under the nose.
      jitter: size of the random size / position changes of a procedural
        mask, as a fraction of the face size.
    """
    if isinstance(styles, str):
      styles = (styles,)
    if isinstance(styles, Mapping):
      names, weights = list(styles.keys()), [float(v) for v in styles.values()]
    else:
      names = list(styles)
      weights = [1.0] * len(names)
    if not names:
      raise ValueError("styles is empty")
    for name in names:
      if name not in STYLE_ID:
        raise ValueError(f"unknown face-mask style {name!r}; the styles are "
                         f"{STYLES}")
    if len(set(names)) != len(names):
      raise ValueError(f"styles has repeated names: {names}")
    w = np.array(weights, np.float64)
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
      raise ValueError(f"style weights must be >= 0 and not all 0: {weights}")
    if not 0.0 <= float(lower_prob) <= 1.0:
      raise ValueError(f"lower_prob={lower_prob!r} must be in [0, 1]")
    if not 0.0 <= float(jitter) <= 0.3:
      raise ValueError(f"jitter={jitter!r} must be in [0, 0.3]")
    self.styles = tuple(names)
    self.weights = w / w.sum()
    self.lower_prob = float(lower_prob)
    self.jitter = float(jitter)
    self.template_dir = None if template_dir is None else os.fspath(
        template_dir)
    self._templates = {}
    self._textures = []
    if self.template_dir is not None:
      self._templates = _parse_templates(self.template_dir)
      tex_root = pathlib.Path(self.template_dir) / "textures"
      if tex_root.is_dir():
        self._textures = sorted(
            str(p) for p in tex_root.glob("*/*")
            if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    elif "template" in self.styles:
      raise ValueError("style 'template' needs template_dir (a MaskTheFace "
                       "folder with masks.cfg)")
    self._cache = {}

  # Pickling: plain settings only; images and noise are rebuilt lazily.
  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  @property
  def template_names(self) -> tuple[str, ...]:
    """Sections of masks.cfg that name a template (empty without a dir)."""
    return tuple(self._templates)

  def __call__(self, image: np.ndarray, landmarks: np.ndarray,
               rng: np.random.Generator, style: str | None = None,
               template: str | None = None) -> RenderedMask:
    """Renders a face mask onto a copy of `image`.

    Args:
      image: uint8 [H, W, 3] RGB; not modified.
      landmarks: [98, 2] WFLW pixel (x, y); rows may be NaN where unknown,
        but not the ones the style needs for placement; not modified.
      rng: the randomness of this render.
      style: a name from `STYLES`, or None to draw one from the
        constructor's styles.
      template: for the `template` style, a section of masks.cfg to use as
        it is (default: a random frontal template, swapped for its
        `_left` / `_right` variant when the head is turned).

    Returns:
      A `RenderedMask`.
    """
    if not isinstance(rng, np.random.Generator):
      raise TypeError(f"rng must be a np.random.Generator, got "
                      f"{type(rng).__name__}")
    image = np.ascontiguousarray(image)
    if (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3
        or min(image.shape[:2]) < MIN_IMAGE_SIZE):
      raise ValueError(
          "image must be uint8 [H, W, 3] RGB with H, W >= "
          f"{MIN_IMAGE_SIZE}; got {image.dtype} {image.shape}")
    lm = np.array(landmarks, np.float64)  # a copy
    if lm.shape != (wflw.NUM_LANDMARKS, 2):
      raise ValueError(f"landmarks must be [{wflw.NUM_LANDMARKS}, 2], got "
                       f"{lm.shape}")
    if template is not None:
      if style not in (None, "template"):
        raise ValueError("template= is only for style='template'")
      style = "template"
    if style is None:
      style = self.styles[int(rng.choice(len(self.styles), p=self.weights))]
    if style not in STYLE_ID:
      raise ValueError(f"unknown face-mask style {style!r}; the styles are "
                       f"{STYLES}")
    if style == "template" and not self._templates:
      raise ValueError("style 'template' needs template_dir (a MaskTheFace "
                       "folder with masks.cfg)")
    kind = style if style in ("template", "box", "freeform") else "procedural"
    needed = _NEEDED[kind]
    bad = needed[~np.all(np.isfinite(lm[needed]), axis=-1)]
    if len(bad):
      raise ValueError(f"landmarks {bad.tolist()} are missing (NaN / inf); "
                       f"the {style!r} style needs points {needed.tolist()}")
    if style == "box":
      out, mask = self._box(image, lm)
    elif style == "freeform":
      out, mask = self._freeform(image, rng)
    elif style == "template":
      out, mask = self._template(image, lm, rng, template)
    else:
      out, mask = self._procedural(image, lm, rng, style)
    return RenderedMask(out, mask, STYLE_ID[style])

  # -------------------------------------------------------------------------
  # Holes.

  @staticmethod
  def box_bounds(landmarks: np.ndarray, height: int,
                 width: int) -> tuple[int, int, int, int]:
    """The `box` hole as (top, bottom, left, right) row / column bounds.

    In a 256 x 256 image the hole spans columns lm[0].x - 10 to
    lm[31].x + 10 and rows lm[64].y + 4 to lm[16].y + 15 (clamped to the
    image); the margins scale with width / 256 and height / 256. Bounds are
    truncated to integers and used as slices: `mask[top:bottom, left:right]`.
    """
    lm = np.asarray(landmarks, np.float64)
    sx, sy = width / 256.0, height / 256.0
    ml, mr, mt, mb = BOX_MARGINS_256
    left = int(max(0.0, lm[0, 0] - ml * sx))
    right = int(min(float(width), lm[31, 0] + mr * sx))
    top = int(max(0.0, lm[64, 1] + mt * sy))
    bottom = int(min(float(height), lm[16, 1] + mb * sy))
    return top, bottom, left, right

  def _box(self, image, lm):
    H, W = image.shape[:2]
    top, bottom, left, right = self.box_bounds(lm, H, W)
    mask = np.zeros((H, W), np.uint8)
    mask[top:bottom, left:right] = 1
    out = image.copy()
    out[top:bottom, left:right] = HOLE_FILL
    return out, mask

  def _freeform(self, image, rng):
    H, W = image.shape[:2]
    size = min(H, W)
    lo, hi = FREEFORM_COVERAGE
    target = rng.uniform(lo + 0.02, hi - 0.05)
    canvas = np.zeros((H, W), np.uint8)
    covered = 0.0
    for attempt in range(60):
      trial = canvas.copy()
      start = rng.uniform([0, 0], [W, H])
      angle = rng.uniform(0, 2 * np.pi)
      thin = attempt > 30  # finish with thinner strokes if still short
      width = size * (rng.uniform(0.02, 0.05) if thin else
                      rng.uniform(0.03, 0.11))
      for _ in range(int(rng.integers(4, 13))):
        angle += rng.uniform(-0.6, 0.6) * np.pi
        length = size * rng.uniform(0.05, 0.25)
        end = np.clip(start + length * np.array([math.cos(angle),
                                                 math.sin(angle)]),
                      [0, 0], [W - 1, H - 1])
        width = float(np.clip(width * rng.uniform(0.75, 1.3), 0.015 * size,
                              0.13 * size))
        t = max(1, int(round(width)))
        p0 = (int(round(start[0])), int(round(start[1])))
        p1 = (int(round(end[0])), int(round(end[1])))
        cv2.line(trial, p0, p1, 1, t, cv2.LINE_8)
        cv2.circle(trial, p1, t // 2, 1, -1, cv2.LINE_8)
        start = end
      new = float(np.count_nonzero(trial)) / (H * W)
      if new > hi:
        continue  # this stroke overshoots: drop it
      canvas, covered = trial, new
      if covered >= target:
        break
    if covered < lo:  # unlucky: a blob that tops it up
      need = lo - covered
      r = int(math.ceil(math.sqrt(need * H * W / math.pi))) + 2
      c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
      cv2.circle(canvas, c, r, 1, -1, cv2.LINE_8)
      while np.count_nonzero(canvas) < lo * H * W:
        r += max(1, r // 8)
        cv2.circle(canvas, c, r, 1, -1, cv2.LINE_8)
    out = image.copy()
    cv2.copyTo(np.full_like(image, HOLE_FILL), canvas, out)
    return out, canvas

  # -------------------------------------------------------------------------
  # Procedural masks.

  def _bank(self) -> _Bank:
    if "bank" not in self._cache:
      self._cache["bank"] = _Bank()
    return self._cache["bank"]

  def _procedural(self, image, lm, rng, style):
    frame = _face_frame(lm)
    fs = frame.scale
    R, D = frame.right, frame.down
    u = rng.uniform
    lower = rng.random() < self.lower_prob
    jit = self.jitter
    jaw = lm[:33]
    normals = curves.outward_normals(jaw, lm[[54, 57]].mean(0))

    # Shape of the style: top corner on the jaw, how far out and down.
    if style in ("surgical", "surgical_pleated"):
      margin, drop, under = u(0.02, 0.05), u(0.05, 0.11), u(0.06, 0.085)
      def profile(i):
        return np.clip(1.0 - (np.abs(i - 16) / 11.0) ** 4, 0.0, 1.0)
      low_corner = u(8.0, 9.5)
    elif style == "n95":
      margin, drop, under = u(0.0, 0.025), u(0.07, 0.13), u(0.07, 0.1)
      def profile(i):
        return np.clip(1.0 - ((i - 16) / 11.5) ** 2, 0.0, 1.0)
      low_corner = u(8.5, 10.0)
    elif style == "kn95":
      margin, drop, under = u(0.0, 0.03), u(0.08, 0.15), u(0.085, 0.12)
      def profile(i):
        return np.clip(1.0 - np.abs(i - 16) / 9.0, 0.0, 1.0) ** 1.3
      low_corner = u(7.0, 8.5)
    else:  # cloth
      margin, drop, under = u(0.01, 0.04), u(0.05, 0.1), u(0.065, 0.095)
      def profile(i):
        return np.clip(1.0 - ((i - 16) / 10.5) ** 2, 0.0, 1.0)
      low_corner = u(7.0, 8.5)
    scale = 1.0 + u(-jit, jit)
    margin *= fs * scale
    drop *= fs * scale
    k0 = u(2.3, 3.8) if not lower else u(5.0, 6.5)
    idx = np.linspace(k0, 32.0 - k0, 29)
    side = (_at(jaw, idx) + _at(normals, idx) * margin
            + np.outer(profile(idx) * drop, D))
    # Surgical (and some cloth) masks hang flatter under the chin than the
    # jaw: lift the low points towards the height of the lowest one.
    flat = {"surgical": u(0.5, 0.9), "surgical_pleated": u(0.5, 0.9),
            "cloth": u(0.0, 0.5), "cloth_printed": u(0.0, 0.5)}.get(style, 0.0)
    if flat:
      h = (side - frame.eyes) @ D
      reach = _smoothstep(10.0, 4.0, np.abs(idx - 16.0)) * flat
      side += np.outer(np.maximum(h.max() - h, 0.0) * reach, D)
    # Top: on the nose bridge (or under the nose), over two points under the
    # eyes.
    if lower:
      top = lm[wflw.SUBNASALE] + (lm[wflw.UPPER_LIP_TOP]
                                  - lm[wflw.SUBNASALE]) * u(0.1, 0.4)
    else:
      top = lm[51] + (lm[53] - lm[51]) * u(0.3, 0.7)
    top = top + D * (u(-0.5, 0.5) * jit * 0.3 * fs)
    unders = []
    for lid in ((66, 67), (74, 73)):
      p = lm[lid[0]] + (lm[lid[1]] - lm[lid[0]]) * 0.3 + D * (under * fs)
      if lower:  # level with the top, a little lower
        p = top + R * float((p - top) @ R) + D * (0.03 * fs)
      unders.append(p)
    shift = (R * u(-1, 1) + D * u(-0.5, 0.5)) * (0.25 * jit * fs)
    side = side + shift
    unders = [p + shift for p in unders]
    top = top + shift
    top_curve = curves.catmull_rom(np.array([side[0], unders[0], top, unders[1],
                                  side[-1]]), 8)
    bottom_curve = curves.catmull_rom(side, 3)  # left -> right
    outline = np.concatenate([top_curve, bottom_curve[::-1][1:-1]])
    # Anchors of the mask's frame: top, bottom (under the chin), cheeks.
    anchor_t = top
    anchor_b = side[len(side) // 2]
    anchor_l = _at(side, [np.interp(6.5, idx, np.arange(len(idx)))])[0]
    anchor_r = _at(side, [np.interp(25.5, idx, np.arange(len(idx)))])[0]

    # Loops / straps: curves from the mask's sides towards the ears.
    loops = []
    yaw_q = math.sin(math.radians(frame.yaw))  # + : image-right side is far
    strap = style == "n95"
    thick = max(2.0, (0.022 if strap else 0.013) * fs)
    for s, sign in ((0, -1.0), (1, 1.0)):
      far = (yaw_q if s == 1 else -yaw_q)
      vis = float(np.clip(1.0 - 1.8 * far, 0.0, 1.0))
      if vis < 0.15:
        continue
      out_dir = R * sign
      j0, j5 = (jaw[0], jaw[5]) if s == 0 else (jaw[32], jaw[27])
      up = -D
      if strap:
        a_top = _at(side, [np.interp(4.5 if s == 0 else 27.5, idx,
                                     np.arange(len(idx)))])[0]
        a_low = _at(side, [np.interp(low_corner if s == 0 else 32 - low_corner,
                                     idx, np.arange(len(idx)))])[0]
        e_top = j0 + out_dir * (0.14 * fs * vis) + up * (0.12 * fs)
        e_low = j5 + out_dir * (0.16 * fs * vis) + D * (0.12 * fs)
        bulge_top, bulge_low = up * (0.02 * fs), D * (0.015 * fs)
      else:
        a_top = side[0 if s == 0 else -1] - out_dir * (0.01 * fs)
        a_low = _at(side, [np.interp(low_corner if s == 0 else 32 - low_corner,
                                     idx, np.arange(len(idx)))])[0]
        e_top = j0 + out_dir * (0.09 * fs * vis) + up * (0.01 * fs)
        e_low = j5 + out_dir * (0.09 * fs * vis)
        bulge_top, bulge_low = up * (0.025 * fs), D * (0.02 * fs)
      for a, e, b in ((a_top, e_top, bulge_top), (a_low, e_low, bulge_low)):
        mid = 0.5 * (a + e) + b * vis
        loops.append(curves.catmull_rom(np.array([a, mid, e]), 6))

    box = _bounds(np.concatenate([outline] + loops), thick + 3, image.shape)
    if box is None:  # the mask lies outside the image
      return image.copy(), np.zeros(image.shape[:2], np.uint8)
    x0, y0, x1, y1 = box
    bh, bw = y1 - y0, x1 - x0
    origin = np.array([x0, y0], np.float64)
    body_alpha = np.zeros((bh, bw), np.uint8)
    cv2.fillPoly(body_alpha, [_fixed(outline, origin)], 255, cv2.LINE_AA, 4)
    loop_alpha = None
    if loops:
      loop_alpha = np.zeros((bh, bw), np.uint8)
      cv2.polylines(loop_alpha, [_fixed(c, origin) for c in loops], False,
                    255, int(round(thick)), cv2.LINE_AA, 4)

    # Fabric in the mask's frame, warped in two halves.
    colour = _palette_colour(rng, style)
    fabric = self._fabric(rng, style, colour, outline, origin, (bh, bw),
                          anchor_t, anchor_b, anchor_l, anchor_r)
    gain, factor = _light(image, box, body_alpha, rng, u(0.5, 0.9))
    grain = _Bank.crop(self._bank().white, (bh, bw), rng) * u(0.004, 0.015)
    blur = (u(0.3, 0.7) * max(1.0, fs / 150.0) if rng.random() < 0.5
            else 0.0)
    body = _to_uint8(cv2.split(fabric), gain, factor, grain, blur)
    layers = []
    if loop_alpha is not None:
      if strap:
        loop_col = (_colour(rng, str(rng.choice(["white", "vivid", "beige"])))
                    if rng.random() < 0.7 else colour)
      elif style in ("surgical", "surgical_pleated"):
        loop_col = (_colour(rng, "white") if rng.random() < 0.7
                    else colour * 1.05)
      else:
        loop_col = colour * u(0.85, 1.0)
      loop_rgb = _to_uint8([np.float32(c) for c in loop_col], gain,
                           factor * 0.95)
      layers.append((loop_rgb, loop_alpha))
    layers.append((body, body_alpha))
    return _composite(image, box, layers)

  def _fabric(self, rng, style, colour, outline, origin, shape, t, b, l, r):
    """The mask's colour [h, w, 3] over its bounding box (float32 0..1).

    The fabric is drawn in the mask frame (u across, 0 at the left cheek
    anchor and 1 at the right; v down, 0 at the top anchor and 1 at the
    bottom) on a texture of about one texel per pixel and warped onto the
    image with one affine map per half of the mask.
    """
    bh, bw = shape
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
    pad = 0.03
    u0, v0 = canon.min(0) - pad
    u1, v1 = canon.max(0) + pad
    # Texels: about one per pixel on the wider half, square on the face.
    tex_per_u = float(np.clip(2.0 * max(dl, dr), 8.0, 640.0))
    tex_per_v = float(np.clip(height, 8.0, 640.0))
    tw = int(np.clip(math.ceil((u1 - u0) * tex_per_u), 8, 900))
    th = int(np.clip(math.ceil((v1 - v0) * tex_per_v), 8, 900))
    du, dv = (u1 - u0) / tw, (v1 - v0) / th
    uu = (u0 + (np.arange(tw, dtype=np.float32) + 0.5) * du)[None, :]
    vv = (v0 + (np.arange(th, dtype=np.float32) + 0.5) * dv)[:, None]
    poly_tex = np.stack([(canon[:, 0] - u0) / du - 0.5,
                         (canon[:, 1] - v0) / dv - 0.5], -1)
    unit = tex_per_v  # texels per mask height
    bank = self._bank()
    tex = self._pattern(rng, style, colour, unit, uu, vv, (du, dv), poly_tex,
                        bank)
    # Texel -> image maps per half, composed with the bbox offset.
    to_tex = np.array([[1.0 / du, 0.0, -u0 / du - 0.5],
                       [0.0, 1.0 / dv, -v0 / dv - 0.5],
                       [0.0, 0.0, 1.0]])
    from_img = np.array([[1.0, 0.0, origin[0]], [0.0, 1.0, origin[1]],
                         [0.0, 0.0, 1.0]])
    halves = []
    for inv in (inv_l, inv_r):
      m = to_tex @ np.vstack([inv, [0.0, 0.0, 1.0]]) @ from_img  # img -> tex
      halves.append(cv2.warpAffine(
          tex, m[:2], (bw, bh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
          borderMode=cv2.BORDER_REPLICATE))
    xs = np.arange(bw, dtype=np.float32)[None, :] + (origin[0] - t[0])
    ys = np.arange(bh, dtype=np.float32)[:, None] + (origin[1] - t[1])
    left = ((xs * np.float32(n[0]) + ys * np.float32(n[1])) > 0).astype(
        np.uint8)
    return cv2.copyTo(halves[0], left, halves[1])

  def _pattern(self, rng, style, colour, unit, uu, vv, step, poly_tex,
               bank):
    """Colour x shading of the fabric on the mask-frame texture.

    Args:
      rng: randomness.
      style: a procedural style.
      colour: RGB [3] in [0, 1].
      unit: texels per mask height (v from 0 to 1).
      uu: [1, tw] u of the texel centres.
      vv: [th, 1] v of the texel centres.
      step: (du, dv), u and v per texel.
      poly_tex: [N, 2] the outline in texel coordinates.
      bank: noise fields.

    Returns:
      float32 [th, tw, 3].
    """
    u = rng.uniform
    th, tw = vv.shape[0], uu.shape[1]
    shape = (th, tw)
    du, dv = step
    xc = (uu - 0.5) / du  # texels from the centre line
    if style == "cloth_printed":
      rgb = _print_pattern(rng, shape, unit, colour, bank)
    else:
      rgb = np.empty((3, th, tw), np.float32)  # planar
      for k in range(3):
        rgb[k] = colour[k]
    cx = 2.0 * uu - 1.0  # -1 .. 1 across
    # Shape shading: rounder towards the cheeks, turned away under the chin,
    # a light from one side.
    shade = (1.0 - u(0.12, 0.3) * np.abs(cx) ** u(1.6, 2.6)
             - u(0.04, 0.16) * _smoothstep(0.72, 1.1, vv)
             + u(-0.06, 0.06) * cx)
    shade = np.broadcast_to(shade, (th, tw)).astype(np.float32).copy()
    edge = np.zeros((th, tw), np.float32)  # binding / rim band
    poly = [np.round(poly_tex * 16).astype(np.int32)]
    band = max(1.5, unit * u(0.025, 0.045))

    if style in ("surgical", "surgical_pleated"):
      cv2.polylines(edge, poly, True, 1.0, max(2, int(round(2 * band))),
                    cv2.LINE_AA, 4)
      shade *= 1.0 - 0.04 * edge
      shade += 0.025 * edge
      # Nose wire: a ridge along the top near the centre.
      wire = np.exp(-((vv - 0.045) / 0.02) ** 2) * np.exp(
          -((uu - 0.5) / 0.12) ** 4)
      shade += u(0.02, 0.06) * wire
      if style == "surgical_pleated":
        folds = 3
        start, end = u(0.2, 0.28), u(0.72, 0.82)
        squeeze = u(0.4, 0.9)
        vp = 0.5 + (vv - 0.5) * (1.0 + squeeze * cx * cx)
        f = (vp - start) / (end - start) * folds
        frac = f - np.floor(f)
        inside = (f >= 0) & (f < folds + 0.35)
        dark = u(0.12, 0.25)
        period = (end - start) / folds * unit
        soft = 1.0 / max(period, 1.0)
        # Each fold casts a shadow that fades down the pleat below it, whose
        # lower edge catches the light; the jump at the fold is spread over
        # about a texel so that it stays anti-aliased once warped.
        rise = _smoothstep(0.0, 1.5 * soft, frac)
        prof = (1.0 - (dark * np.exp(-frac / 0.22) + 0.05) * rise
                + 0.08 * _smoothstep(0.8 - 2 * soft, 1.0, frac) * rise)
        shade *= np.where(inside, prof, 1.0)
      else:
        # Flat: only a faint horizontal texture of the non-woven layers.
        lines = _Bank.crop(bank.weave.T, (th, tw), rng, zoom=0.7)
        shade += 0.015 * lines
    elif style == "n95":
      cup = 1.0 - u(0.12, 0.22) * (cx * cx + ((vv - 0.5) / 0.55) ** 2)
      shade *= cup
      shade += 0.06 * np.exp(-((cx / 0.35) ** 2 + ((vv - 0.35) / 0.3) ** 2))
      cv2.polylines(edge, poly, True, 1.0, max(2, int(round(2.4 * band))),
                    cv2.LINE_AA, 4)
      shade *= 1.0 - u(0.05, 0.14) * edge
      fib = _Bank.crop(bank.smooth[0], (th, tw), rng, zoom=1.5)
      shade += 0.02 * fib
      if rng.random() < 0.5:  # centre seam
        seam = np.exp(-(xc / 0.9) ** 2)
        shade *= 1.0 - 0.18 * seam * _smoothstep(0.05, 0.15, vv)
      if rng.random() < 0.6:  # metal nose clip
        clip = (np.exp(-((vv - 0.07) / 0.03) ** 6)
                * np.exp(-((uu - 0.5) / 0.13) ** 6))
        metal = u(0.55, 0.85)
        _mix(rgb, np.full(3, metal), clip * 0.7)
      if rng.random() < 0.4:  # exhalation valve on one side
        shade = _valve(rng, colour, unit, uu, vv, step, rgb, shade)
    elif style == "kn95":
      d = u(0.05, 0.16) * rng.choice([-1.0, 1.0])
      shade *= 1.0 + d * np.tanh(xc / 0.8)
      fold = np.exp(-xc ** 2)
      shade *= 1.0 - 0.25 * fold
      cv2.polylines(edge, poly, True, 1.0, max(2, int(round(1.6 * band))),
                    cv2.LINE_AA, 4)
      shade *= 1.0 - 0.05 * edge
      # Dotted weld a little inside the edge.
      centre = poly_tex.mean(0)
      inset = centre + (poly_tex - centre) * (1.0 - 2.5 * band / max(th, tw))
      dots = curves.resample_polyline(np.concatenate([inset, inset[:1]]),
                       int(np.clip(len(inset) * 2, 40, 240)))
      pitch = max(2.0, 0.02 * unit)
      seg = np.hypot(*np.diff(dots, axis=0).T).sum() / len(dots)
      keep = dots[::max(1, int(round(pitch / max(seg, 1e-6))))]
      weld = np.zeros((th, tw), np.float32)
      rad = max(1, int(round(0.006 * unit * 16)))
      for p in np.round(keep * 16).astype(np.int32):
        cv2.circle(weld, (int(p[0]), int(p[1])), rad, 1.0, -1, cv2.LINE_AA,
                   4)
      shade *= 1.0 - 0.18 * weld
    else:  # cloth, cloth_printed
      weave = _Bank.crop(bank.weave, (th, tw), rng,
                         zoom=u(0.8, 1.3) * max(1.0, unit / 120.0))
      shade *= 1.0 + u(0.02, 0.05) * weave
      wrinkle = _Bank.crop(bank.smooth[2], (th, tw), rng,
                           zoom=u(0.5, 1.0) * unit / 120.0)
      shade *= 1.0 + u(0.02, 0.06) * wrinkle
      cv2.polylines(edge, poly, True, 1.0, max(2, int(round(1.2 * band))),
                    cv2.LINE_AA, 4)
      shade *= 1.0 - 0.1 * edge
      if rng.random() < 0.55:  # centre seam
        seam = np.exp(-(xc / 0.9) ** 2)
        shade *= 1.0 - u(0.15, 0.3) * seam
      if rng.random() < 0.5:  # hem stitching
        centre = poly_tex.mean(0)
        inset = centre + (poly_tex - centre) * (1.0 - 3.0 * band / max(th, tw))
        pts = curves.resample_polyline(np.concatenate([inset, inset[:1]]), 120)
        stitch = np.zeros((th, tw), np.float32)
        segs = [np.round(pts[i:i + 2] * 16).astype(np.int32)
                for i in range(0, len(pts) - 1, 2)]
        cv2.polylines(stitch, segs, False, 1.0, 1, cv2.LINE_AA, 4)
        shade *= 1.0 - 0.15 * stitch
    return cv2.merge([rgb[k] * shade for k in range(3)])

  # -------------------------------------------------------------------------
  # MaskTheFace templates.

  def _template_level(self, name: str, level: int):
    """Template `name` halved `level` times: (premultiplied RGBA, ref).

    `ref` is the brightness of the template's bright fabric (for tinting).
    Only the levels in use are kept (a 256-pixel face uses a level a few
    times smaller than the file), so a worker holds a few MB of templates.
    """
    key = ("template", name, level)
    if key not in self._cache:
      rgba = _load_rgba(self._templates[name][0])
      luma = rgba[..., :3].astype(np.float32) @ _LUMA
      alpha = rgba[..., 3].astype(np.float32)
      covered = alpha > 127
      ref = float(np.percentile(luma[covered] / (alpha[covered] / 255.0),
                                90)) if covered.any() else 255.0
      for _ in range(level):
        h, w = rgba.shape[:2]
        rgba = cv2.resize(rgba, ((w + 1) // 2, (h + 1) // 2),
                          interpolation=cv2.INTER_AREA)
      self._cache[key] = (rgba, max(ref, 16.0))
    return self._cache[key]

  def _texture(self, index: int) -> np.ndarray:
    """Texture image `index` of textures/, uint8 RGB on white, <= 256 px."""
    key = ("texture", index)
    if key not in self._cache:
      rgba = _load_rgba(self._textures[index])
      h, w = rgba.shape[:2]
      s = 256.0 / max(h, w)
      if s < 1:
        rgba = cv2.resize(rgba, (max(1, int(w * s)), max(1, int(h * s))),
                          interpolation=cv2.INTER_AREA)
      # Composited on white (transparent parts of a print are the cloth).
      rgba[..., :3] += 255 - rgba[..., 3:]
      self._cache[key] = np.ascontiguousarray(rgba[..., :3])
    return self._cache[key]

  def pick_template(self, landmarks: np.ndarray,
                    rng: np.random.Generator) -> str:
    """The masks.cfg section the `template` style draws for a face.

    A random frontal template (a section whose name has no `_left` /
    `_right` suffix), swapped for its `_left` (nose towards image-left) or
    `_right` variant when `estimate_yaw` is beyond +-`TEMPLATE_YAW_DEG` and
    masks.cfg has that variant.
    """
    if not self._templates:
      raise ValueError("no templates: the renderer has no template_dir")
    bases = [n for n in self._templates
             if not n.endswith(("_left", "_right"))] or list(self._templates)
    name = bases[int(rng.integers(len(bases)))]
    yaw = estimate_yaw(landmarks)
    if abs(yaw) > TEMPLATE_YAW_DEG:
      turned = name + ("_left" if yaw < 0 else "_right")
      if turned in self._templates:
        name = turned
    return name

  def _template(self, image, lm, rng, name):
    frame = _face_frame(lm)
    if name is None:
      name = self.pick_template(lm, rng)
    elif name not in self._templates:
      raise ValueError(f"template {name!r} is not in masks.cfg; there are "
                       f"{self.template_names}")
    jaw = lm[:33]
    down = frame.down
    nose = float((lm[54] - lm[51]) @ down)
    h_ac = float((lm[51] - frame.eyes) @ down) + max(nose, 0.0)
    h_df = float((lm[85] - frame.eyes) @ down)
    face = np.array([
        _jaw_crossing(jaw, frame, h_ac, 0),  # a
        0.5 * (lm[51] + lm[53]),  # b
        _jaw_crossing(jaw, frame, h_ac, 1),  # c
        _jaw_crossing(jaw, frame, h_df, 1),  # f
        lm[wflw.CHIN],  # e
        _jaw_crossing(jaw, frame, h_df, 0),  # d
    ])
    pts = self._templates[name][1][[0, 1, 2, 5, 4, 3]]  # a b c f e d
    # The pyramid level just finer than the output where the least-squares
    # homography magnifies most (at the six anchors).
    hom0, _ = cv2.findHomography(pts.astype(np.float32),
                                 face.astype(np.float32), 0)
    if hom0 is None or not np.all(np.isfinite(hom0)):
      raise ValueError(f"cannot place template {name!r} on these landmarks")
    probe = np.concatenate([pts, pts + [1.0, 0.0], pts + [0.0, 1.0]])
    mapped = cv2.perspectiveTransform(probe[None].astype(np.float64), hom0)[0]
    mapped = mapped.reshape(3, 6, 2)
    gain = max(float(np.linalg.norm(mapped[1] - mapped[0], axis=-1).max()),
               float(np.linalg.norm(mapped[2] - mapped[0], axis=-1).max()),
               1e-3)
    level = int(np.clip(math.floor(math.log2(max(1.0 / gain, 1.0))), 0, 8))
    rgba, ref = self._template_level(name, level)
    s = 0.5 ** level
    pts_l = (pts + 0.5) * s - 0.5
    hom, _ = cv2.findHomography(pts_l.astype(np.float32),
                                face.astype(np.float32), 0)
    if hom is None or not np.all(np.isfinite(hom)):
      raise ValueError(f"cannot place template {name!r} on these landmarks")
    h, w = rgba.shape[:2]
    corners = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    warped_c = cv2.perspectiveTransform(corners[None], hom)[0]
    centre = face.mean(0)
    warped_c = np.clip(warped_c, centre - 3 * frame.scale,
                       centre + 3 * frame.scale)
    box = _bounds(warped_c, 2, image.shape)
    if box is None:
      return image.copy(), np.zeros(image.shape[:2], np.uint8)
    x0, y0, x1, y1 = box
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    m = shift @ hom
    warped = cv2.warpPerspective(rgba, m, (x1 - x0, y1 - y0),
                                 flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.ascontiguousarray(warped[..., 3])
    # The map is alpha > 127 (as in MaskTheFace). Faint coverage more than
    # two pixels from it (thin ear loops that the warp shrinks below half
    # coverage) is dropped, so that the map is what the renderer changes.
    near = cv2.dilate((alpha > 127).astype(np.uint8), np.ones((5, 5),
                                                              np.uint8))
    alpha *= near
    a = alpha.astype(np.float32) * (1.0 / 255.0)
    planes = [warped[..., k].astype(np.float32) * (1.0 / 255.0)
              for k in range(3)]  # premultiplied
    pick = rng.random()
    if pick < 0.3 or (pick < 0.5 and self._textures):
      # Recolour, keeping the template's shading: its brightness (relative
      # to its bright fabric) times a colour or a texture image.
      shading = (planes[0] * float(_LUMA[0]) + planes[1] * float(_LUMA[1])
                 + planes[2] * float(_LUMA[2])) * (255.0 / ref)
      if pick < 0.3:
        tint = _palette_colour(rng, "cloth")
        planes = [np.minimum(shading * float(c), a) for c in tint]
      else:  # a printed fabric from textures/
        tex = self._texture(int(rng.integers(len(self._textures))))
        th_, tw_ = tex.shape[:2]
        zoom = max(w / tw_, h / th_) * rng.uniform(0.35, 1.0)
        tm = np.array([[zoom, 0, 0], [0, zoom, 0], [0, 0, 1]], np.float64)
        tex_w = cv2.warpPerspective(tex, m @ tm, (x1 - x0, y1 - y0),
                                    flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_WRAP)
        shading = np.minimum(shading, 1.2) * (1.0 / 255.0)
        planes = [np.minimum(shading * tex_w[..., k], a) for k in range(3)]
    gain, factor = _light(image, box, alpha, rng, rng.uniform(0.3, 0.6))
    # Straight (not premultiplied) colour for `_composite`.
    gain = gain / np.maximum(a, 1.0 / 255.0)
    colour = _to_uint8(planes, gain, factor)
    # The map is the warped alpha > 127, as in MaskTheFace.
    return _composite(image, box, [(colour, alpha)])


def render(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
           style: str | None = None, **kwargs) -> RenderedMask:
  """One-off `FaceMaskRenderer(**kwargs)(image, landmarks, rng, style)`.

  Builds a renderer per call (its noise bank and templates are not kept):
  make a `FaceMaskRenderer` once for a pipeline.
  """
  return FaceMaskRenderer(**kwargs)(image, landmarks, rng, style)
