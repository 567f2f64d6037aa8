"""The 98-point WFLW landmark layout, its flip permutation and conversions.

Coordinates are pixel units `(x, y)` with the centre of pixel `(row i, col j)`
at `(j, i)` (integer-centred, as in the WFLW annotations). A horizontal flip of
an image of width `W` maps `x -> W - 1 - x`; resizing by a factor `s` maps
`x -> (x + 0.5) * s - 0.5`.

"Left" and "right" in the names below are image-left and image-right (the
subject's right and left). The order of the 98 points:

  0-32    face contour, 0 at image-left (level with the eyes), 16 the chin,
          32 at image-right.
  33-41   image-left eyebrow: 33-37 upper edge left to right, 38-41 lower
          edge back right to left.
  42-50   image-right eyebrow: 42-46 upper edge left to right, 47-50 lower
          edge back right to left.
  51-54   nose bridge, top to bottom (54 is the nose tip).
  55-59   nose bottom, left to right (57 under the tip).
  60-67   image-left eye: 60 outer corner, 61-63 upper lid, 64 inner corner,
          65-67 lower lid back towards 60.
  68-75   image-right eye: 68 inner corner, 69-71 upper lid, 72 outer
          corner, 73-75 lower lid back towards 68.
  76-87   outer lip: 76 left corner, 77-81 upper lip, 82 right corner, 83-87
          lower lip back towards 76.
  88-95   inner lip: 88 left corner, 89-91 upper, 92 right corner, 93-95
          lower back towards 88.
  96, 97  image-left and image-right pupil.
"""

import numpy as np

NUM_LANDMARKS = 98

# Index groups, each in annotation order.
JAW = np.arange(0, 33)
LEFT_BROW = np.arange(33, 42)
RIGHT_BROW = np.arange(42, 51)
NOSE_BRIDGE = np.arange(51, 55)
NOSE_BOTTOM = np.arange(55, 60)
LEFT_EYE = np.arange(60, 68)
RIGHT_EYE = np.arange(68, 76)
OUTER_LIP = np.arange(76, 88)
INNER_LIP = np.arange(88, 96)
PUPILS = np.array([96, 97])

GROUPS = {
    "jaw": JAW,
    "left_brow": LEFT_BROW,
    "right_brow": RIGHT_BROW,
    "nose_bridge": NOSE_BRIDGE,
    "nose_bottom": NOSE_BOTTOM,
    "left_eye": LEFT_EYE,
    "right_eye": RIGHT_EYE,
    "outer_lip": OUTER_LIP,
    "inner_lip": INNER_LIP,
    "pupils": PUPILS,
}

# Single points.
JAW_LEFT = 0
CHIN = 16
JAW_RIGHT = 32
NOSE_ROOT = 51
NOSE_TIP = 54
SUBNASALE = 57
LEFT_EYE_OUTER = 60
LEFT_EYE_INNER = 64
RIGHT_EYE_INNER = 68
RIGHT_EYE_OUTER = 72
MOUTH_LEFT = 76
UPPER_LIP_TOP = 79
MOUTH_RIGHT = 82
LOWER_LIP_BOTTOM = 85
LEFT_PUPIL = 96
RIGHT_PUPIL = 97


def _build_flip_permutation() -> np.ndarray:
  """Pairs each point with its mirror image; unpaired points map to self."""
  pairs = []
  # Contour: i <-> 32 - i (16, the chin, is its own mirror).
  pairs += [(i, 32 - i) for i in range(16)]
  # Brows: upper edges run left to right in both brows, so the outer end of
  # one (33) meets the outer end of the other (46). The lower edges run right
  # to left: 38 (inner end of the left brow) meets 50 (inner end of the
  # right), 41 (outer) meets 47 (outer).
  pairs += [(33 + i, 46 - i) for i in range(5)]
  pairs += [(38 + i, 50 - i) for i in range(4)]
  # Nose bottom (the bridge lies on the axis).
  pairs += [(55, 59), (56, 58)]
  # Eyes: corners outer<->outer and inner<->inner; the upper lids run in
  # opposite directions (outer->inner on the left, inner->outer on the
  # right), as do the lower lids.
  pairs += [(60, 72), (64, 68)]
  pairs += [(61, 71), (62, 70), (63, 69)]
  pairs += [(65, 75), (66, 74), (67, 73)]
  # Outer lip: corners, upper lip around 79, lower lip around 85.
  pairs += [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86)]
  # Inner lip: corners, upper around 90, lower around 94.
  pairs += [(88, 92), (89, 91), (93, 95)]
  pairs += [(96, 97)]
  perm = np.arange(NUM_LANDMARKS)
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


# After a horizontal flip, new landmark k is old landmark FLIP_PERMUTATION[k]
# with its x mirrored. The permutation is an involution.
FLIP_PERMUTATION = _build_flip_permutation()
FLIP_PERMUTATION.setflags(write=False)

# WFLW -> iBUG 300-W 68-point order: jaw at every second contour point, the
# brows' upper edges, the whole nose, six points per eye (corners and the two
# lid points either side of the middle one), the 20 lip points unchanged.
TO_68_INDICES = np.concatenate([
    np.arange(0, 33, 2),  # 0-16 jaw
    np.arange(33, 38),  # 17-21 left brow
    np.arange(42, 47),  # 22-26 right brow
    np.arange(51, 55),  # 27-30 nose bridge
    np.arange(55, 60),  # 31-35 nose bottom
    np.array([60, 61, 63, 64, 65, 67]),  # 36-41 left eye
    np.array([68, 69, 71, 72, 73, 75]),  # 42-47 right eye
    np.arange(76, 96),  # 48-67 mouth
])
TO_68_INDICES.setflags(write=False)


def flip_landmarks(landmarks: np.ndarray, width: int | float) -> np.ndarray:
  """Landmarks of the horizontally flipped image.

  Args:
    landmarks: [..., 98, 2] pixel (x, y).
    width: width in pixels of the image being flipped.

  Returns:
    [..., 98, 2] with x -> width - 1 - x and the points re-ordered so that the
    result is again in WFLW order (the image-left eye of the flipped image is
    the old image-right eye, and so on).
  """
  landmarks = np.asarray(landmarks)
  if landmarks.shape[-2:] != (NUM_LANDMARKS, 2):
    raise ValueError(
        f"expected [..., {NUM_LANDMARKS}, 2] landmarks, got {landmarks.shape}")
  flipped = landmarks[..., FLIP_PERMUTATION, :].copy()
  flipped[..., 0] = (width - 1) - flipped[..., 0]
  return flipped


def resize_landmarks(landmarks: np.ndarray,
                     scale_xy: float | tuple[float, float]) -> np.ndarray:
  """Landmarks of an image resized by `scale_xy` (scalar or `(sx, sy)`).

  Uses the integer-centred convention: `x -> (x + 0.5) * s - 0.5`.

  Args:
    landmarks: [..., 2] pixel (x, y); any number of points.
    scale_xy: new size / old size, one factor or one per axis.

  Returns:
    Array of the same shape, floating point.
  """
  landmarks = np.asarray(landmarks)
  if not np.issubdtype(landmarks.dtype, np.floating):
    landmarks = landmarks.astype(np.float32)
  scale = np.broadcast_to(np.asarray(scale_xy, landmarks.dtype), (2,))
  return (landmarks + 0.5) * scale - 0.5


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
  """Outer-eye-corner distance (points 60 and 72), the WFLW NME normaliser.

  Args:
    landmarks: [..., 98, 2].

  Returns:
    [...] distances in pixels.
  """
  landmarks = np.asarray(landmarks)
  delta = landmarks[..., LEFT_EYE_OUTER, :] - landmarks[..., RIGHT_EYE_OUTER, :]
  return np.sqrt(np.sum(np.square(delta), axis=-1))


def to_68(landmarks: np.ndarray) -> np.ndarray:
  """Converts [..., 98, 2] WFLW landmarks to [..., 68, 2] iBUG 300-W order."""
  landmarks = np.asarray(landmarks)
  if landmarks.shape[-2] != NUM_LANDMARKS:
    raise ValueError(
        f"expected [..., {NUM_LANDMARKS}, 2] landmarks, got {landmarks.shape}")
  return landmarks[..., TO_68_INDICES, :]
