"""Fabric textures: the renderer's noise fields and the printed-cloth prints.

Noise fields are made once per renderer from a fixed seed, so a render
depends only on the generator passed to it; random windows of them give
weave, fibres, wrinkles and camouflage blobs. Prints (stripes, dots, checks /
plaid, flowers, camouflage) are drawn on the mask-frame texture.
"""

import math

import cv2
import numpy as np

from jaxface.data.facemask import colours

# Printed-cloth kinds and how often each is drawn.
_PRINT_KINDS = ("stripes", "dots", "checks", "floral", "camo")
_PRINT_WEIGHTS = (0.22, 0.2, 0.22, 0.24, 0.12)


class NoiseBank:
  """Noise fields made once per renderer (from a fixed seed) and cropped.

  Attributes:
    white: [512, 512] white noise (sensor grain).
    smooth: three [256, 256] blurred noises of growing blur, unit variance.
    weave: [256, 256] thread-like noise, unit variance.
  """

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


def crop(field: np.ndarray, shape, rng: np.random.Generator,
         zoom: float = 1.0) -> np.ndarray:
  """A random window of `field` resized to `shape` (h, w).

  Args:
    field: a 2-D noise field of a `NoiseBank`.
    shape: (h, w) wanted.
    rng: randomness (two integers: the window's corner).
    zoom: output pixels per field pixel (the window is `shape / zoom`, at
      most the whole field).

  Returns:
    float32 [h, w]; a view of `field` when no resize is needed.
  """
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


def mix(planes: np.ndarray, colour: np.ndarray, a: np.ndarray) -> None:
  """planes [3, h, w] <- planes + (colour - planes) * a, per channel.

  Planar 2-D updates: NumPy broadcasting over a trailing axis of 3 is many
  times slower than three contiguous 2-D operations.
  """
  for k in range(3):
    planes[k] += (float(colour[k]) - planes[k]) * a


def print_pattern(rng: np.random.Generator, shape, unit: float,
                  base: np.ndarray, bank: NoiseBank) -> np.ndarray:
  """A printed-cloth colour layer, planar [3, h, w] in [0, 1].

  Args:
    rng: randomness.
    shape: (h, w) in texels (texels are about square on the face).
    unit: texels per mask height.
    base: background colour.
    bank: noise fields.

  Returns:
    float32 [3, h, w].
  """
  h, w = shape
  yy = np.arange(h, dtype=np.float32)[:, None]
  xx = np.arange(w, dtype=np.float32)[None, :]
  c1 = colours.contrasting(rng, base)
  c2 = colours.contrasting(rng, base)
  kind = rng.choice(list(_PRINT_KINDS), p=list(_PRINT_WEIGHTS))
  out = np.empty((3, h, w), np.float32)
  for k in range(3):
    out[k] = base[k]
  draw = {"stripes": _stripes, "dots": _dots, "checks": _checks,
          "floral": _floral, "camo": _camo}[str(kind)]
  draw(rng, out, xx, yy, unit, (c1, c2), bank)
  return out


# Each print below paints the planar layer `out` [3, h, w] in place, with
# texel coordinates `xx` [1, w] and `yy` [h, 1], `unit` texels per mask
# height and the two print colours `inks`.


def _stripes(rng, out, xx, yy, unit, inks, bank):
  """Straight stripes at one of a few angles, maybe a thin second stripe."""
  del bank  # unused
  c1, c2 = inks
  theta = rng.choice([0.0, 0.5 * np.pi, 0.25 * np.pi, -0.25 * np.pi,
                      rng.uniform(0, np.pi)])
  period = unit * rng.uniform(0.06, 0.2)
  t = (xx * math.cos(theta) + yy * math.sin(theta)) / period
  duty = rng.uniform(0.25, 0.55)
  d = np.abs((t % 1.0) - 0.5) * period  # texels from the stripe centre
  mix(out, c1, np.clip(duty * period * 0.5 - d + 0.5, 0.0, 1.0))
  if rng.random() < 0.5:  # a thin second stripe between the wide ones
    d2 = np.abs(((t + 0.5) % 1.0) - 0.5) * period
    mix(out, c2, np.clip(0.08 * period - d2 + 0.5, 0.0, 1.0))


def _dots(rng, out, xx, yy, unit, inks, bank):
  """Polka dots on a staggered grid."""
  del bank  # unused
  c1, _ = inks
  period = unit * rng.uniform(0.07, 0.18)
  radius = period * rng.uniform(0.14, 0.32)
  row = np.floor(yy / period)
  fx = (xx / period + 0.5 * (row % 2)) % 1.0 - 0.5
  fy = (yy / period) % 1.0 - 0.5
  d = np.sqrt(fx * fx + fy * fy) * period
  mix(out, c1, np.clip(radius - d + 0.5, 0.0, 1.0))


def _checks(rng, out, xx, yy, unit, inks, bank):
  """Gingham (translucent crossing bands) or plaid (bands and lines)."""
  del bank  # unused
  c1, c2 = inks
  period = unit * rng.uniform(0.08, 0.25)
  bx, by = (np.clip((np.abs((c / period) % 1.0 - 0.5) - 0.25) * period + 0.5,
                    0.0, 1.0) for c in (xx, yy))
  if rng.random() < 0.6:  # gingham: overlapping translucent bands
    mix(out, c1, 0.5 * (bx + by))
  else:  # plaid: bands plus thin lines of a second colour
    mix(out, c1, np.maximum(bx, by) * 0.75)
    lx = np.clip(1.2 - np.abs(((xx / period) % 1.0) - 0.5) * period, 0, 1)
    ly = np.clip(1.2 - np.abs(((yy / period) % 1.0) - 0.5) * period, 0, 1)
    mix(out, c2, np.maximum(lx, ly) * 0.8)


def _floral(rng, out, xx, yy, unit, inks, bank):
  """Scattered flowers: petals, a centre, sometimes a leaf."""
  del xx, yy, bank  # flowers are drawn with OpenCV, not from coordinates
  c1, c2 = inks
  _, h, w = out.shape
  layers = np.zeros((3, h, w), np.float32)  # petals, centres, leaves
  size = unit * rng.uniform(0.06, 0.14)
  count = int(np.clip(h * w / (size * size * rng.uniform(4.0, 9.0)), 3,
                      400))
  petals = int(rng.integers(4, 7))
  for _ in range(count):
    _flower(rng, layers, size, petals, w, h)
  leaf_colour = colours.colour(rng, "dark") * np.array([0.6, 1.0, 0.6],
                                                       np.float32)
  for layer, paint in ((layers[2], leaf_colour), (layers[0], c1),
                       (layers[1], c2)):
    mix(out, paint, np.clip(layer, 0.0, 1.0))


def _flower(rng, layers, size, petals, w, h):
  """Adds one flower to `layers` (petals, centres, leaves) [3, h, w]."""
  cx, cy = rng.uniform(-size, w + size), rng.uniform(-size, h + size)
  s = size * rng.uniform(0.7, 1.3)
  phase = rng.uniform(0, 2 * np.pi)
  # Shapes are drawn at 1/16 pixel precision (shift=4) and anti-aliased.
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


def _camo(rng, out, xx, yy, unit, inks, bank):
  """Camouflage-like blobs: two levels of one smooth noise field."""
  del xx, yy  # the noise field has its own coordinates
  c1, c2 = inks
  _, h, w = out.shape
  field = crop(bank.smooth[1], (h, w), rng,
               zoom=rng.uniform(0.6, 1.6) * unit / 100.0)
  sharp = 6.0
  mix(out, c1, np.clip((field - 0.3) * sharp + 0.5, 0.0, 1.0))
  mix(out, c2, np.clip((-field - 0.5) * sharp + 0.5, 0.0, 1.0))
