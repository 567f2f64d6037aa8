"""The paper authors' hole masks: a lower-face box and free-form strokes.

Neither is a face mask: both mark a hole, filled with `HOLE_FILL` in the
masked image, for training the reconstruction the way the paper did.
"""

import math

import cv2
import numpy as np

HOLE_STYLES = ("box", "freeform")

# Colour of the hole in `masked_image` for the `box` and `freeform` styles.
HOLE_FILL = (255, 255, 255)
# Fraction of the image a `freeform` hole covers.
FREEFORM_COVERAGE = (0.1, 0.5)
# The `box` style's margins in pixels of a 256 x 256 image: (left of point 0,
# right of point 31, below point 64, below point 16). They scale with the
# image size.
BOX_MARGINS_256 = (10.0, 10.0, 4.0, 15.0)

# Strokes tried before giving up on reaching the drawn coverage, and the
# attempt after which strokes get thinner (to fill the last few percent
# without overshooting).
_MAX_STROKES = 60
_THIN_AFTER = 30


def box_bounds(landmarks: np.ndarray, height: int,
               width: int) -> tuple[int, int, int, int]:
  """The `box` hole as (top, bottom, left, right) row / column bounds.

  In a 256 x 256 image the hole spans columns lm[0].x - 10 to
  lm[31].x + 10 and rows lm[64].y + 4 to lm[16].y + 15 (clamped to the
  image); the margins scale with width / 256 and height / 256. Bounds are
  truncated to integers and used as slices: `mask[top:bottom, left:right]`.

  Args:
    landmarks: [98, 2] WFLW pixel (x, y); points 0, 16, 31 and 64 are read.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    (top, bottom, left, right).
  """
  lm = np.asarray(landmarks, np.float64)
  sx, sy = width / 256.0, height / 256.0
  ml, mr, mt, mb = BOX_MARGINS_256
  left = int(max(0.0, lm[0, 0] - ml * sx))
  right = int(min(float(width), lm[31, 0] + mr * sx))
  top = int(max(0.0, lm[64, 1] + mt * sy))
  bottom = int(min(float(height), lm[16, 1] + mb * sy))
  return top, bottom, left, right


def render_box(image: np.ndarray,
               lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The `box` hole: (masked uint8 image, uint8 {0, 1} map)."""
  H, W = image.shape[:2]
  top, bottom, left, right = box_bounds(lm, H, W)
  mask = np.zeros((H, W), np.uint8)
  mask[top:bottom, left:right] = 1
  out = image.copy()
  out[top:bottom, left:right] = HOLE_FILL
  return out, mask


def render_freeform(image: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The `freeform` hole: (masked uint8 image, uint8 {0, 1} map).

  Random thick strokes are added until the hole covers a coverage drawn in
  `FREEFORM_COVERAGE` (a stroke that would overshoot its upper end is
  dropped), then topped up with a disc if it is still short.
  """
  H, W = image.shape[:2]
  lo, hi = FREEFORM_COVERAGE
  # Aim inside the range so that the last stroke rarely crosses its ends.
  target = rng.uniform(lo + 0.02, hi - 0.05)
  canvas = np.zeros((H, W), np.uint8)
  covered = 0.0
  for attempt in range(_MAX_STROKES):
    trial = _stroke(rng, canvas, thin=attempt > _THIN_AFTER)
    new = float(np.count_nonzero(trial)) / (H * W)
    if new > hi:
      continue  # this stroke overshoots: drop it
    canvas, covered = trial, new
    if covered >= target:
      break
  if covered < lo:
    _top_up(rng, canvas, lo - covered)
  out = image.copy()
  cv2.copyTo(np.full_like(image, HOLE_FILL), canvas, out)
  return out, canvas


def _stroke(rng: np.random.Generator, canvas: np.ndarray,
            thin: bool) -> np.ndarray:
  """`canvas` with one more random stroke (4-12 segments); a copy."""
  H, W = canvas.shape
  size = min(H, W)
  trial = canvas.copy()
  start = rng.uniform([0, 0], [W, H])
  angle = rng.uniform(0, 2 * np.pi)
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
    # A round joint, so that turning segments leave no notches.
    cv2.circle(trial, p1, t // 2, 1, -1, cv2.LINE_8)
    start = end
  return trial


def _top_up(rng: np.random.Generator, canvas: np.ndarray,
            need: float) -> None:
  """Adds a disc to `canvas` (in place) until `need` more of it is covered.

  Only for unlucky draws whose strokes kept overshooting: the disc starts at
  the area still missing and grows until the minimum coverage is reached
  (it may overlap the strokes).
  """
  H, W = canvas.shape
  lo = FREEFORM_COVERAGE[0]
  r = int(math.ceil(math.sqrt(need * H * W / math.pi))) + 2
  c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
  cv2.circle(canvas, c, r, 1, -1, cv2.LINE_8)
  while np.count_nonzero(canvas) < lo * H * W:
    r += max(1, r // 8)
    cv2.circle(canvas, c, r, 1, -1, cv2.LINE_8)
