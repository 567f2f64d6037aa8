"""MediaPipe's 468-point face mesh -> the 98-point WFLW layout.

The face mesh is a dense, fixed topology: each of its 468 vertices sits on the
same spot of every face. WFLW instead spaces its points evenly along facial
contours. The mapping therefore takes the mesh's contour vertex chains (face
oval, eyebrows, eye lids, lips, nose), anchors the WFLW points that have a
single anatomical definition to the mesh vertex with the same definition, and
resamples each contour between anchors by arc length to WFLW's number of
points. Mesh "left/right" names are the subject's; WFLW's are image-left and
image-right, so the mesh's *right* eye (vertices 33, 133, ...) becomes the
WFLW *left* eye (60-67).

  WFLW     from the mesh                                   exact?
  0-15     face oval from eye level on the image-left      approximate
           down to the chin, resampled to 17 points
  16       chin (vertex 152)                               approximate
  17-32    the same on the image-right                     approximate
  33-37    upper brow edge 70-63-105-66-107 (outer tip to  approximate
           inner end), resampled
  38-41    lower brow edge 55-65-52-53-46 back to the tip  approximate
  42-50    the mirror image (300-293-334-296-336,          approximate
           285-295-282-283-276)
  51-53    nose bridge 168-6-197-195-5-4-1, resampled      approximate
  54       nose tip (1)                                    exact
  55, 56   nostril base 98, 97                             approximate
  57       subnasale (2)                                   exact
  58, 59   nostril base 326, 327                           approximate
  60, 64   eye corners 33 (outer), 133 (inner)             exact
  61-63    upper lid 33-246-161-160-159-158-157-173-133    approximate
  65-67    lower lid 133-155-154-153-145-144-163-7-33      approximate
  68, 72   eye corners 362 (inner), 263 (outer)            exact
  69-71    upper lid 362-398-384-385-386-387-388-466-263   approximate
  73-75    lower lid 263-249-390-373-374-380-381-382-362   approximate
  76, 82   outer mouth corners 61, 291                     exact
  79, 85   upper lip top (0), lower lip bottom (17)        exact
  77-78,   outer lips between those anchors                approximate
  80-81,   (upper 61-185-40-39-37-0-267-269-270-409-291,
  83-84,   lower 61-146-91-181-84-17-314-405-321-375-291)
  86-87
  88, 92   inner mouth corners 78, 308                     exact
  90, 94   inner lip midpoints 13, 14                      exact
  89, 91,  inner lips between those anchors                approximate
  93, 95
  96, 97   centre of each eye's 16 lid vertices (the mesh  approximate
           has no iris; WFLW marks the pupil)

"Approximate" jaw: WFLW's contour follows the visible cheek and jaw line and
starts level with the eyes near the ear; the mesh oval is a fixed ring of
vertices that sits slightly inside the silhouette and does not slide to it on
turned faces. Points resampled along a contour lie on the right curve, but
their position along it follows WFLW's even spacing only approximately.
"""

import numpy as np

from jaxface.data.curves import resample_polyline
from jaxface.data import wflw

NUM_MESH = 468

# Mesh vertex chains (subject-right = image-left first where paired).
# The face oval from the forehead down the image-left side to the chin, and
# down the image-right side to the chin.
OVAL_LEFT = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136,
             150, 149, 176, 148, 152)
OVAL_RIGHT = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397,
              365, 379, 378, 400, 377, 152)
CHIN = 152
# Eyebrows, outer end to inner end.
LEFT_BROW_UPPER = (70, 63, 105, 66, 107)
LEFT_BROW_LOWER = (46, 53, 52, 65, 55)
RIGHT_BROW_UPPER = (300, 293, 334, 296, 336)
RIGHT_BROW_LOWER = (276, 283, 282, 295, 285)
# Nose bridge from between the eyes to the tip, and the base of the nose
# from image-left to image-right.
NOSE_BRIDGE = (168, 6, 197, 195, 5, 4, 1)
NOSE_BOTTOM = (98, 97, 2, 326, 327)
# Eye lids, outer corner to inner corner.
LEFT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
LEFT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
RIGHT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
RIGHT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
# Lips from the image-left corner to the image-right corner.
OUTER_UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_UPPER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


def _mirror_pairs() -> list[tuple[int, int]]:
  """Pairs of mesh vertices that are mirror images of each other."""
  pairs = list(zip(OVAL_LEFT, OVAL_RIGHT))
  for left, right in ((LEFT_BROW_UPPER, RIGHT_BROW_UPPER),
                      (LEFT_BROW_LOWER, RIGHT_BROW_LOWER),
                      (LEFT_EYE_UPPER, RIGHT_EYE_UPPER),
                      (LEFT_EYE_LOWER, RIGHT_EYE_LOWER)):
    pairs += list(zip(left, right))
  for chain in (NOSE_BOTTOM, OUTER_UPPER_LIP, OUTER_LOWER_LIP,
                INNER_UPPER_LIP, INNER_LOWER_LIP):
    pairs += list(zip(chain, chain[::-1]))
  pairs += [(i, i) for i in NOSE_BRIDGE]
  return pairs


def _build_mirror() -> np.ndarray:
  mirror = np.arange(NUM_MESH)
  for a, b in _mirror_pairs():
    mirror[a], mirror[b] = b, a
  return mirror


# The mesh vertex that is the mirror image of each vertex, for the vertices
# the mapping reads (the others map to themselves; the mapping never reads
# them). A horizontal flip of the photo turns mesh vertex i into
# MESH_MIRROR[i].
MESH_MIRROR = _build_mirror()
MESH_MIRROR.setflags(write=False)

# Mesh vertices read by `mesh_to_wflw`.
USED_VERTICES = np.unique(np.concatenate([
    OVAL_LEFT, OVAL_RIGHT, LEFT_BROW_UPPER, LEFT_BROW_LOWER, RIGHT_BROW_UPPER,
    RIGHT_BROW_LOWER, NOSE_BRIDGE, NOSE_BOTTOM, LEFT_EYE_UPPER,
    LEFT_EYE_LOWER, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER, OUTER_UPPER_LIP,
    OUTER_LOWER_LIP, INNER_UPPER_LIP, INNER_LOWER_LIP]))

# WFLW points that are mesh vertices with the same anatomical definition.
EXACT = {
    wflw.NOSE_TIP: 1,
    wflw.SUBNASALE: 2,
    wflw.LEFT_EYE_OUTER: 33,
    wflw.LEFT_EYE_INNER: 133,
    wflw.RIGHT_EYE_INNER: 362,
    wflw.RIGHT_EYE_OUTER: 263,
    wflw.MOUTH_LEFT: 61,
    wflw.UPPER_LIP_TOP: 0,
    wflw.MOUTH_RIGHT: 291,
    wflw.LOWER_LIP_BOTTOM: 17,
    88: 78,
    90: 13,
    92: 308,
    94: 14,
}

APPROXIMATE = np.ones(wflw.NUM_LANDMARKS, bool)
APPROXIMATE[list(EXACT)] = False
APPROXIMATE.setflags(write=False)




def _trim_at_level(chain: np.ndarray, down: np.ndarray, level: float
                   ) -> np.ndarray:
  """The part of `chain` from where it first reaches `level` to its end.

  `level` is measured along the unit vector `down`; the chain runs
  downwards overall (forehead to chin).
  """
  depth = chain @ down
  below = np.nonzero(depth >= level)[0]
  if len(below) == 0:
    return chain[-1:]
  k = int(below[0])
  if k == 0:
    return chain
  t = (level - depth[k - 1]) / max(depth[k] - depth[k - 1], 1e-12)
  start = chain[k - 1] + t * (chain[k] - chain[k - 1])
  return np.concatenate([start[None], chain[k:]])


def _jaw(mesh: np.ndarray) -> np.ndarray:
  """WFLW 0-32 from the face oval, starting level with the outer eye corners.
  """
  left_outer, right_outer = mesh[33], mesh[263]
  across = right_outer - left_outer
  across = across / max(np.linalg.norm(across), 1e-12)
  down = np.array([-across[1], across[0]])
  level = 0.5 * (left_outer + right_outer) @ down
  left = _trim_at_level(mesh[list(OVAL_LEFT)], down, level)
  right = _trim_at_level(mesh[list(OVAL_RIGHT)], down, level)
  return np.concatenate([resample_polyline(left, 17),
                         resample_polyline(right, 17)[::-1][1:]])


def _brow(mesh, upper, lower) -> np.ndarray:
  """9 brow points: upper edge outer->inner (5), lower edge inner->outer (4).

  The lower edge is resampled from the inner end back to the outer tip (the
  first upper point, shared by both edges), and the tip is dropped.
  """
  up = resample_polyline(mesh[list(upper)], 5)
  low_chain = np.concatenate([mesh[list(lower[::-1])], up[:1]])
  low = resample_polyline(low_chain, 5)[:4]
  return np.concatenate([up, low])


def _between(mesh, chain, n) -> np.ndarray:
  """`n` points resampled along a vertex chain, ends included."""
  return resample_polyline(mesh[list(chain)], n)


def _lip(mesh, upper, lower, n_half) -> np.ndarray:
  """A lip ring: left corner, upper lip, right corner, lower lip back.

  Each half-lip (corner to midpoint) is resampled separately so that the
  midpoints (vertices upper[5], lower[5]) stay exact.
  """
  up = np.concatenate([_between(mesh, upper[:6], n_half + 1),
                       _between(mesh, upper[5:], n_half + 1)[1:]])
  low = np.concatenate([_between(mesh, lower[:6], n_half + 1),
                        _between(mesh, lower[5:], n_half + 1)[1:]])
  return np.concatenate([up, low[::-1][1:-1]])


def mesh_to_wflw(mesh: np.ndarray) -> np.ndarray:
  """Maps [468, 2+] face-mesh points to [98, 2] WFLW points (float32).

  Args:
    mesh: [468, 2] or [468, 3] (x, y[, z]) in any 2D frame with y pointing
      down (image pixels); z is ignored.

  Returns:
    [98, 2] float32 in the same frame; `APPROXIMATE` says which points are
    approximations (see the module docstring).
  """
  mesh = np.asarray(mesh, np.float64)
  if mesh.ndim != 2 or mesh.shape[0] != NUM_MESH or mesh.shape[1] < 2:
    raise ValueError(f"expected [{NUM_MESH}, 2 or 3] mesh, got {mesh.shape}")
  mesh = mesh[:, :2]
  out = np.zeros((wflw.NUM_LANDMARKS, 2))
  out[wflw.JAW] = _jaw(mesh)
  out[wflw.LEFT_BROW] = _brow(mesh, LEFT_BROW_UPPER, LEFT_BROW_LOWER)
  right = _brow(mesh, RIGHT_BROW_UPPER, RIGHT_BROW_LOWER)
  # The right brow's upper edge runs left (inner) to right (outer) in WFLW,
  # its lower edge back from the outer side to the inner end.
  out[wflw.RIGHT_BROW[:5]] = right[:5][::-1]
  out[wflw.RIGHT_BROW[5:]] = right[5:][::-1]
  out[wflw.NOSE_BRIDGE] = _between(mesh, NOSE_BRIDGE, 4)
  out[wflw.NOSE_BOTTOM] = mesh[list(NOSE_BOTTOM)]
  # Left eye: 60 outer, 61-63 upper, 64 inner, 65-67 lower back to 60.
  up = _between(mesh, LEFT_EYE_UPPER, 5)
  low = _between(mesh, LEFT_EYE_LOWER, 5)
  out[wflw.LEFT_EYE] = np.concatenate([up, low[::-1][1:4]])
  # Right eye: 68 inner, 69-71 upper, 72 outer, 73-75 lower back to 68.
  up = _between(mesh, RIGHT_EYE_UPPER, 5)[::-1]
  low = _between(mesh, RIGHT_EYE_LOWER, 5)
  out[wflw.RIGHT_EYE] = np.concatenate([up, low[1:4]])
  out[wflw.OUTER_LIP] = _lip(mesh, OUTER_UPPER_LIP, OUTER_LOWER_LIP, 3)
  out[wflw.INNER_LIP] = _lip(mesh, INNER_UPPER_LIP, INNER_LOWER_LIP, 2)
  for i, chains in ((wflw.LEFT_PUPIL, (LEFT_EYE_UPPER, LEFT_EYE_LOWER)),
                    (wflw.RIGHT_PUPIL, (RIGHT_EYE_UPPER, RIGHT_EYE_LOWER))):
    ring = np.unique(np.concatenate(chains))
    out[i] = mesh[ring].mean(axis=0)
  for k, v in EXACT.items():
    out[k] = mesh[v]
  return out.astype(np.float32)
