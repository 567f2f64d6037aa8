"""Is a face record usable? The checks `prepare` and the pipelines share.

Web photos come with any annotation: landmarks off by a scale factor, all
at one point, NaN, or from a detector that fired on the wrong thing. A face
mask is placed from the landmarks, so a record whose landmarks are not a
plausible face in its image would give an example without a hole, or make
the renderer fail. Each check returns None for a usable record, or the
reason it is not, as one short line for reports ("landmarks far outside the
image: x from -812 to 40, image 256x256").

The bounds are loose on purpose: they reject what cannot be a face, not
unusual faces (profiles, tilted heads, faces cut by the border). They are
scale-free (fractions of the image or of the face), so they hold for any
image size.
"""

import numpy as np

from jaxface.data import wflw

# Smallest side of a usable photo, in pixels.
MIN_IMAGE_SIZE = 32
# Landmarks may lie this far outside the image (fraction of its size): faces
# cut by the border still place a mask, points beyond that are mistakes.
LANDMARK_MARGIN = 0.25
# The face (the landmarks' bounding box) spans at least this fraction of the
# image's shorter side...
MIN_FACE_FRACTION = 0.05
# ...and its sides are at most this many times each other.
MAX_FACE_ASPECT = 5.0
# Eye-to-mouth distance over outer-eye-corner distance: about 1 for a
# frontal face, larger in profile; outside these bounds the points are no
# face.
EYE_MOUTH_RATIO = (0.2, 6.0)


def check_image(image: np.ndarray, min_size: int = MIN_IMAGE_SIZE
                ) -> str | None:
  """None if `image` is a usable [H, W, 3] photo, else why not."""
  shape = getattr(image, "shape", ())
  if len(shape) != 3 or shape[-1] != 3:
    return f"not an RGB image (shape {tuple(shape)})"
  if min(shape[:2]) < min_size:
    return (f"image too small ({shape[1]}x{shape[0]}, the shorter side must "
            f"be at least {min_size} px)")
  return None


def check_landmarks(landmarks: np.ndarray, height: int, width: int,
                    margin: float = LANDMARK_MARGIN) -> str | None:
  """None if 98 WFLW `landmarks` (x, y pixels) are a plausible face."""
  points = np.asarray(landmarks, np.float64)
  if points.shape != (wflw.NUM_LANDMARKS, 2):
    return (f"landmarks of shape {points.shape}, not "
            f"({wflw.NUM_LANDMARKS}, 2)")
  bad = ~np.isfinite(points).all(axis=-1)
  if bad.any():
    return f"{int(bad.sum())} landmarks are not finite (NaN or Inf)"
  lo, hi = points.min(axis=0), points.max(axis=0)
  size = np.array([width, height], np.float64)
  if (lo < -margin * size).any() or (hi > (1 + margin) * size).any():
    return (f"landmarks far outside the image: x from {lo[0]:.0f} to "
            f"{hi[0]:.0f}, y from {lo[1]:.0f} to {hi[1]:.0f}, image "
            f"{width}x{height}")
  extent = hi - lo
  shorter = min(height, width)
  if extent.min() < MIN_FACE_FRACTION * shorter:
    return (f"landmarks span {extent[0]:.1f}x{extent[1]:.1f} px, too small "
            f"a face for a {width}x{height} image (degenerate points?)")
  if extent.max() > MAX_FACE_ASPECT * extent.min():
    return (f"landmarks span {extent[0]:.1f}x{extent[1]:.1f} px, no face "
            "is that elongated")
  eyes = np.linalg.norm(points[wflw.LEFT_EYE_OUTER]
                        - points[wflw.RIGHT_EYE_OUTER])
  eye_centre = (points[wflw.LEFT_EYE_OUTER] + points[wflw.RIGHT_EYE_OUTER]) / 2
  mouth_centre = (points[wflw.MOUTH_LEFT] + points[wflw.MOUTH_RIGHT]) / 2
  mouth = np.linalg.norm(mouth_centre - eye_centre)
  low, high = EYE_MOUTH_RATIO
  if not low * eyes <= mouth <= high * eyes:
    return (f"implausible face geometry: eye-to-mouth {mouth:.1f} px for "
            f"eye corners {eyes:.1f} px apart")
  return None


def check_face(image: np.ndarray, landmarks: np.ndarray,
               min_size: int = MIN_IMAGE_SIZE) -> str | None:
  """`check_image`, then `check_landmarks` in that image."""
  reason = check_image(image, min_size)
  if reason is None:
    reason = check_landmarks(landmarks, image.shape[0], image.shape[1])
  return reason
