"""Face geometry from landmarks and the pixel helpers the styles share.

The face frame (eye-line axes, scale, yaw) from the 98 WFLW landmarks, the
yaw estimate, the jaw contour at a given height, and small helpers for
polyline sampling, bounding boxes and OpenCV's fixed-point drawing.
"""

import dataclasses
import math

import numpy as np

from jaxface.data import wflw

# The eye contours (both eyes), which give the face's roll and centre.
EYES = np.arange(60, 76)

# Nose-tip offset between the jaw sides (-1 .. 1) per unit sin(yaw),
# measured on `jaxface.data.procedural` faces of known yaw.
_YAW_GAIN = 1.26


def at(curve: np.ndarray, index) -> np.ndarray:
  """Points of a polyline [N, 2] at fractional vertex indices."""
  k = np.arange(len(curve))
  index = np.asarray(index, np.float64)
  return np.stack([np.interp(index, k, curve[:, 0]),
                   np.interp(index, k, curve[:, 1])], -1)


def fixed(points: np.ndarray, origin) -> np.ndarray:
  """Float pixel points -> int32 for OpenCV drawing with shift=4."""
  return np.round((np.asarray(points) - origin) * 16.0).astype(np.int32)


def smoothstep(e0, e1, x):
  """0 at e0, 1 at e1, a cubic in between (e1 < e0 gives a falling step)."""
  t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def bounds(points: np.ndarray, pad: float,
           shape) -> tuple[int, int, int, int] | None:
  """Integer box (x0, y0, x1, y1) around points, clipped; None if empty."""
  H, W = shape[:2]
  lo = np.floor(points.min(0) - pad)
  hi = np.ceil(points.max(0) + pad) + 1
  x0, y0 = int(max(0, lo[0])), int(max(0, lo[1]))
  x1, y1 = int(min(W, hi[0])), int(min(H, hi[1]))
  if x1 <= x0 or y1 <= y0:
    return None
  return x0, y0, x1, y1


@dataclasses.dataclass
class Frame:
  """The face's frame: unit axes, scale, yaw estimate."""
  right: np.ndarray  # [2] along the eye line, image-left eye -> right eye
  down: np.ndarray  # [2] perpendicular, towards the chin
  eyes: np.ndarray  # [2] midpoint of the two eye centres
  scale: float  # about the face width in pixels
  yaw: float  # degrees, + when the nose points to image-right


def face_frame(lm: np.ndarray) -> Frame:
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
  # A turned head's jaw looks narrower but its eye-to-chin height does not
  # shrink, so the larger of the two measures the face.
  return Frame(right, down, eyes, max(width, 1.15 * height),
               math.degrees(math.asin(q)))


def estimate_yaw(landmarks: np.ndarray) -> float:
  """Rough head yaw in degrees from 98 landmarks.

  Positive when the nose points to image-right. From where the nose tip (54)
  lies between the two ends of the jaw contour (0 and 32) along the eye line;
  the gain is measured on `jaxface.data.procedural` faces of known yaw (about
  +-3 degrees there). Used to choose `_left` / `_right` templates.

  Args:
    landmarks: [98, 2] WFLW pixel (x, y); points 0, 16, 32, 54 and the eyes
      must be finite.

  Returns:
    The yaw in degrees.
  """
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (wflw.NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks must be [{wflw.NUM_LANDMARKS}, 2], got "
                     f"{lm.shape}")
  needed = np.concatenate([[0, 16, 32, 54], EYES])
  if not np.all(np.isfinite(lm[needed])):
    raise ValueError(f"estimate_yaw needs landmarks {needed.tolist()}")
  return face_frame(lm).yaw


def jaw_crossing(jaw: np.ndarray, frame: Frame, height: float,
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
