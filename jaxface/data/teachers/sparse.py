"""98 WFLW landmarks from the sparser annotations that datasets come with.

  * `from_68`: iBUG 300-W 68 points (dlib's 68-point layout).
  * `from_5`: five points, in CelebA / MTCNN order (eye centres, nose tip,
    mouth corners) or dlib's 5-point order (eye corners and nose base).
  * `wflw_to_5`: the other way, five points from 98.

Points that the annotation gives directly are copied and marked exact;
everything else is interpolated or taken from `MEAN_SHAPE` and marked
approximate.
"""

import numpy as np

from jaxface.data import wflw
from jaxface.data.teachers import base

# Mean 98-point WFLW face, in a frame where the pupils (points 96 and 97) are
# at (-0.5, 0) and (0.5, 0), y down. Computed with `MediaPipeTeacher`
# (mediapipe 0.10.21 models) on UTKFace crops of adults: the landmarks of
# each face were mapped by the similarity transform that puts its pupils at
# those two positions, faces turned away (nose tip more than 0.08 pupil
# distances off the pupils' perpendicular bisector) or inconsistent under a
# horizontal flip (NME > 0.03) were left out, the first 300 remaining faces
# were averaged together with their mirror images (so the shape is exactly
# symmetric), and the result rounded to 4 decimals.
MEAN_SHAPE = np.array([
    -1.0782, -0.0078, -1.0728, 0.1290, -1.0630, 0.2659, -1.0520, 0.4027,
    -1.0350, 0.5388, -1.0105, 0.6736, -0.9737, 0.8057, -0.9266, 0.9342,
    -0.8667, 1.0576, -0.7919, 1.1721, -0.7037, 1.2764, -0.6049, 1.3713,
    -0.4996, 1.4589, -0.3889, 1.5393, -0.2672, 1.6012, -0.1364, 1.6374,
    0.0000, 1.6536, 0.1364, 1.6374, 0.2672, 1.6012, 0.3889, 1.5393,
    0.4996, 1.4589, 0.6049, 1.3713, 0.7037, 1.2764, 0.7919, 1.1721,
    0.8667, 1.0576, 0.9266, 0.9342, 0.9737, 0.8057, 1.0105, 0.6736,
    1.0350, 0.5388, 1.0520, 0.4027, 1.0630, 0.2659, 1.0728, 0.1290,
    1.0782, -0.0078, -0.8950, -0.2254, -0.7524, -0.3153, -0.5832, -0.3351,
    -0.4110, -0.3211, -0.2393, -0.2997, -0.2070, -0.1784, -0.3836, -0.2328,
    -0.5651, -0.2600, -0.7466, -0.2384, 0.2393, -0.2997, 0.4110, -0.3211,
    0.5832, -0.3351, 0.7524, -0.3153, 0.8950, -0.2254, 0.7466, -0.2384,
    0.5651, -0.2600, 0.3836, -0.2328, 0.2070, -0.1784, 0.0000, -0.0353,
    0.0000, 0.1985, 0.0000, 0.4322, 0.0000, 0.6661, -0.2740, 0.6783,
    -0.1215, 0.7268, 0.0000, 0.7355, 0.1215, 0.7268, 0.2740, 0.6783,
    -0.7150, -0.0078, -0.6075, -0.0677, -0.4848, -0.0784, -0.3664, -0.0457,
    -0.2708, 0.0315, -0.3840, 0.0509, -0.4988, 0.0588, -0.6125, 0.0417,
    0.2708, 0.0315, 0.3664, -0.0457, 0.4848, -0.0784, 0.6075, -0.0677,
    0.7150, -0.0078, 0.6125, 0.0417, 0.4988, 0.0588, 0.3840, 0.0509,
    -0.4294, 0.9702, -0.2943, 0.9238, -0.1480, 0.9049, 0.0000, 0.9209,
    0.1480, 0.9049, 0.2943, 0.9238, 0.4294, 0.9702, 0.3152, 1.0979,
    0.1695, 1.1877, 0.0000, 1.2190, -0.1695, 1.1877, -0.3152, 1.0979,
    -0.3703, 0.9689, -0.1865, 0.9761, 0.0000, 0.9946, 0.1865, 0.9761,
    0.3703, 0.9689, 0.1962, 1.0509, 0.0000, 1.0799, -0.1962, 1.0509,
    -0.5000, 0.0000, 0.5000, 0.0000,
], np.float32).reshape(-1, 2)
MEAN_SHAPE.setflags(write=False)

LAYOUTS_5 = ("celeba", "mtcnn", "dlib5")

# WFLW points corresponding to each 5-point layout. CelebA and MTCNN give
# the eye centres (here the pupils), the nose tip and the mouth corners,
# image-left first. dlib's 5-point model gives the image-right eye's outer
# and inner corner, the image-left eye's outer and inner corner, and the
# base of the nose between the nostrils.
FIVE_POINT_INDICES = {
    "celeba": np.array([wflw.LEFT_PUPIL, wflw.RIGHT_PUPIL, wflw.NOSE_TIP,
                        wflw.MOUTH_LEFT, wflw.MOUTH_RIGHT]),
    "mtcnn": np.array([wflw.LEFT_PUPIL, wflw.RIGHT_PUPIL, wflw.NOSE_TIP,
                       wflw.MOUTH_LEFT, wflw.MOUTH_RIGHT]),
    "dlib5": np.array([wflw.RIGHT_EYE_OUTER, wflw.RIGHT_EYE_INNER,
                       wflw.LEFT_EYE_OUTER, wflw.LEFT_EYE_INNER,
                       wflw.SUBNASALE]),
}
# Of those, the points whose definition matches WFLW's (an eye centre is not
# quite a pupil).
_FIVE_POINT_EXACT = {
    "celeba": np.array([wflw.NOSE_TIP, wflw.MOUTH_LEFT, wflw.MOUTH_RIGHT]),
    "mtcnn": np.array([wflw.NOSE_TIP, wflw.MOUTH_LEFT, wflw.MOUTH_RIGHT]),
    "dlib5": np.array([wflw.RIGHT_EYE_OUTER, wflw.RIGHT_EYE_INNER,
                       wflw.LEFT_EYE_OUTER, wflw.LEFT_EYE_INNER,
                       wflw.SUBNASALE]),
}


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, shift) src -> dst.

  No reflection. Umeyama's closed form.

  Args:
    src: [N, 2], N >= 2 points not all equal.
    dst: [N, 2].

  Returns:
    [2, 3] matrix M with dst ~ src @ M[:, :2].T + M[:, 2].
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
    raise ValueError(f"expected two [N, 2] arrays, got {src.shape} and "
                     f"{dst.shape}")
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  var = np.sum(s * s)
  if var <= 0:
    raise ValueError("source points are all equal")
  # With complex numbers a similarity is multiplication by one complex a.
  zs = s[:, 0] + 1j * s[:, 1]
  zd = d[:, 0] + 1j * d[:, 1]
  a = np.sum(np.conj(zs) * zd) / var
  rot = np.array([[a.real, -a.imag], [a.imag, a.real]])
  return np.concatenate([rot, (mu_d - rot @ mu_s)[:, None]], 1)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """[..., 2] points through a [2, 3] affine matrix."""
  points = np.asarray(points, np.float64)
  return points @ matrix[:, :2].T + matrix[:, 2]


def _catmull_rom_mid(p0, p1, p2, p3):
  """Uniform Catmull-Rom curve through p1 -> p2, at its middle."""
  return (-p0 + 9 * p1 + 9 * p2 - p3) / 16


def _midpoints(chain: np.ndarray) -> np.ndarray:
  """Points half-way along a smooth curve through each pair of neighbours.

  Ends are extrapolated linearly.

  Args:
    chain: [N, 2], N >= 2.

  Returns:
    [N - 1, 2].
  """
  ext = np.concatenate([2 * chain[:1] - chain[1:2], chain,
                        2 * chain[-1:] - chain[-2:-1]])
  return _catmull_rom_mid(ext[:-3], ext[1:-2], ext[2:-1], ext[3:])


def from_68(points68: np.ndarray) -> base.LandmarkResult:
  """98 WFLW landmarks from 68 iBUG 300-W points.

  The inverse of `wflw.to_68` on the points it keeps (copied, exact); the
  rest are approximate:

    odd jaw points 1, 3, ..., 31   half-way along a smooth curve through the
                                   17 jaw points
    brow lower edges 38-41, 47-50  the mean shape's lower edge, moved with
                                   the similarity that fits its upper edge
                                   to the annotated one
    mid-lid points 62, 66, 70, 74  half-way along a smooth curve through the
                                   lid's corners and two annotated points
    pupils 96, 97                  the centre of the six eye points

  Args:
    points68: [68, 2] pixel (x, y).

  Returns:
    A `LandmarkResult` with score 1.
  """
  p = np.asarray(points68, np.float64)
  if p.shape != (68, 2):
    raise ValueError(f"expected [68, 2] points, got {p.shape}")
  out = np.zeros((wflw.NUM_LANDMARKS, 2))
  out[wflw.TO_68_INDICES] = p
  approximate = np.ones(wflw.NUM_LANDMARKS, bool)
  approximate[wflw.TO_68_INDICES] = False
  # Jaw.
  out[1:32:2] = _midpoints(p[0:17])
  # Brow lower edges from the mean shape.
  for upper, lower in ((wflw.LEFT_BROW[:5], wflw.LEFT_BROW[5:]),
                       (wflw.RIGHT_BROW[:5], wflw.RIGHT_BROW[5:])):
    m = similarity_transform(MEAN_SHAPE[upper], out[upper])
    out[lower] = apply_transform(m, MEAN_SHAPE[lower])
  # Mid-lid points: each lid is corner, two points, corner.
  for mid, chain in ((62, (60, 61, 63, 64)), (66, (64, 65, 67, 60)),
                     (70, (68, 69, 71, 72)), (74, (72, 73, 75, 68))):
    out[mid] = _catmull_rom_mid(*out[list(chain)])
  out[wflw.LEFT_PUPIL] = p[36:42].mean(0)
  out[wflw.RIGHT_PUPIL] = p[42:48].mean(0)
  return base.LandmarkResult(out.astype(np.float32), approximate, 1.0)


def _check_layout(layout: str) -> str:
  if layout not in LAYOUTS_5:
    raise ValueError(f"layout={layout!r} is not one of {LAYOUTS_5}")
  return layout


def wflw_to_5(landmarks98: np.ndarray, layout: str = "celeba") -> np.ndarray:
  """Five points of `layout` from [..., 98, 2] WFLW landmarks.

  Args:
    landmarks98: [..., 98, 2].
    layout: 'celeba' / 'mtcnn' (image-left eye centre, image-right eye
      centre, nose tip, image-left mouth corner, image-right mouth corner;
      the eye centres are the pupils 96, 97) or 'dlib5' (image-right eye
      outer and inner corner, image-left eye outer and inner corner, base
      of the nose).

  Returns:
    [..., 5, 2].
  """
  landmarks98 = np.asarray(landmarks98)
  if landmarks98.shape[-2:] != (wflw.NUM_LANDMARKS, 2):
    raise ValueError(f"expected [..., 98, 2] landmarks, got "
                     f"{landmarks98.shape}")
  return landmarks98[..., FIVE_POINT_INDICES[_check_layout(layout)], :]


def from_5(points5: np.ndarray, layout: str = "celeba"
           ) -> base.LandmarkResult:
  """98 WFLW landmarks from five points: the mean shape fitted to them.

  The similarity transform that best maps the mean shape's five points onto
  `points5` (least squares) places the whole mean shape; the five given
  points then replace their counterparts. Only the points whose definition
  matches WFLW are marked exact: the nose tip and the mouth corners for
  CelebA / MTCNN (eye centres stand in for the pupils), the eye corners and
  the base of the nose for dlib5.

  Args:
    points5: [5, 2] pixel (x, y) in `layout` order (see `wflw_to_5`).
    layout: 'celeba', 'mtcnn' or 'dlib5'.

  Returns:
    A `LandmarkResult` with score 1.
  """
  layout = _check_layout(layout)
  p = np.asarray(points5, np.float64)
  if p.shape != (5, 2):
    raise ValueError(f"expected [5, 2] points, got {p.shape}")
  idx = FIVE_POINT_INDICES[layout]
  m = similarity_transform(MEAN_SHAPE[idx], p)
  out = apply_transform(m, MEAN_SHAPE)
  out[idx] = p
  approximate = np.ones(wflw.NUM_LANDMARKS, bool)
  approximate[_FIVE_POINT_EXACT[layout]] = False
  return base.LandmarkResult(out.astype(np.float32), approximate, 1.0)
