"""Polyline helpers shared by the face drawing, the mask renderer and the
landmark mappings."""

import numpy as np


def catmull_rom(points: np.ndarray, samples: int = 6) -> np.ndarray:
  """Uniform Catmull-Rom curve through [N, 2] points, ends included.

  `samples` points per segment; fewer than 3 points are returned as given.
  """
  p = np.asarray(points, np.float64)
  if len(p) < 3:
    return p
  ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
  p0, p1, p2, p3 = (ext[i:len(ext) - 3 + i, None] for i in range(4))
  t = (np.arange(samples) / samples)[None, :, None]  # [1, T, 1]
  out = 0.5 * (2 * p1 + (p2 - p0) * t
               + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
               + (3 * p1 - p0 - 3 * p2 + p3) * t * t * t)
  return np.concatenate([out.reshape(-1, 2), p[-1:]])


def resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
  """`n` points evenly spaced by arc length along a polyline, ends included.

  Args:
    points: [M, 2] vertices, M >= 1.
    n: number of points wanted (>= 2, or 1 for the first vertex).

  Returns:
    [n, 2] float64. Repeated vertices (zero-length segments) are fine.
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[0] < 1:
    raise ValueError(f"expected [M, 2] points, got {points.shape}")
  if n < 1:
    raise ValueError(f"n must be positive, got {n}")
  if n == 1:
    return points[:1].copy()
  seg = np.sqrt(np.sum(np.diff(points, axis=0) ** 2, axis=-1))
  s = np.concatenate([[0.0], np.cumsum(seg)])
  if s[-1] <= 0:
    return np.repeat(points[:1], n, axis=0)
  t = np.linspace(0.0, s[-1], n)
  # np.interp takes the last of equal abscissae at repeated vertices, which
  # is harmless here.
  return np.stack([np.interp(t, s, points[:, 0]),
                   np.interp(t, s, points[:, 1])], -1)


def outward_normals(curve: np.ndarray, centre: np.ndarray) -> np.ndarray:
  """Unit normals of an open polyline [N, 2], pointing away from `centre`."""
  tangent = np.gradient(np.asarray(curve, np.float64), axis=0)
  normal = np.stack([tangent[:, 1], -tangent[:, 0]], -1)
  normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-9
  flip = np.sum(normal * (curve - centre), axis=-1) < 0
  normal[flip] *= -1
  return normal
