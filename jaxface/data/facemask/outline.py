"""Where a procedural mask lies on the face: its outline and its ear loops.

The outline runs from a point on the nose bridge (between landmarks 51 and
53; under the nose, above the upper lip, when worn low) over two points under
the eyes to the jaw contour near points 3 and 29, then along the jaw pushed a
little outwards and, around the chin, downwards, by amounts that depend on
the style. Since it is built from the landmarks of the posed face, it
follows yaw and roll.
"""

import dataclasses
import math
from typing import Callable

import numpy as np

from jaxface.data import curves
from jaxface.data import wflw
from jaxface.data.facemask import geometry


# How far below the jaw each style hangs, as a function of the jaw vertex
# index i (16 = chin): 1 around the chin, falling to 0 towards the ears.


def _surgical_profile(i):
  """Flat across the chin, falling steeply near the ears (a wide rectangle)."""
  return np.clip(1.0 - (np.abs(i - 16) / 11.0) ** 4, 0.0, 1.0)


def _n95_profile(i):
  """A round cup."""
  return np.clip(1.0 - ((i - 16) / 11.5) ** 2, 0.0, 1.0)


def _kn95_profile(i):
  """A point at the chin (the fold)."""
  return np.clip(1.0 - np.abs(i - 16) / 9.0, 0.0, 1.0) ** 1.3


def _cloth_profile(i):
  """A round cup, a little narrower than the N95's."""
  return np.clip(1.0 - ((i - 16) / 10.5) ** 2, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _Cut:
  """Ranges a style draws its shape from.

  Attributes:
    margin: how far out of the jaw the edge lies, in face scales.
    drop: how far below the jaw it hangs at the chin, in face scales.
    under: how far below the eyes the top corners are, in face scales.
    profile: the drop along the jaw (see `_surgical_profile`).
    low_corner: jaw vertex index where the lower loop leaves the mask.
  """
  margin: tuple[float, float]
  drop: tuple[float, float]
  under: tuple[float, float]
  profile: Callable[[np.ndarray], np.ndarray]
  low_corner: tuple[float, float]


_SURGICAL_CUT = _Cut((0.02, 0.05), (0.05, 0.11), (0.06, 0.085),
                     _surgical_profile, (8.0, 9.5))
_CLOTH_CUT = _Cut((0.01, 0.04), (0.05, 0.1), (0.065, 0.095), _cloth_profile,
                  (7.0, 8.5))
_CUTS = {
    "surgical": _SURGICAL_CUT,
    "surgical_pleated": _SURGICAL_CUT,
    "n95": _Cut((0.0, 0.025), (0.07, 0.13), (0.07, 0.1), _n95_profile,
                (8.5, 10.0)),
    "kn95": _Cut((0.0, 0.03), (0.08, 0.15), (0.085, 0.12), _kn95_profile,
                 (7.0, 8.5)),
    "cloth": _CLOTH_CUT,
    "cloth_printed": _CLOTH_CUT,
}

# Ranges of how much a style's bottom is lifted towards its lowest point
# under the chin (0 = follows the jaw). The order is the order of the draws.
_FLAT = (("surgical", (0.5, 0.9)), ("surgical_pleated", (0.5, 0.9)),
         ("cloth", (0.0, 0.5)), ("cloth_printed", (0.0, 0.5)))


@dataclasses.dataclass(frozen=True)
class Shape:
  """A procedural mask's placement, in image pixels.

  Attributes:
    outline: [N, 2] the closed outline, top edge first.
    side: [29, 2] the lower edge along the jaw, image-left to right.
    idx: [29] the jaw vertex index (fractional) of each `side` point.
    anchors: (top, bottom, left cheek, right cheek), each [2]: the mask
      frame's centre line runs from top to bottom.
    low_corner: jaw vertex index (left half) where a lower loop leaves.
  """
  outline: np.ndarray
  side: np.ndarray
  idx: np.ndarray
  anchors: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
  low_corner: float


def mask_shape(lm: np.ndarray, frame: geometry.Frame,
               rng: np.random.Generator, style: str, lower: bool,
               jitter: float) -> Shape:
  """Draws where a procedural mask lies on a face.

  Args:
    lm: [98, 2] float64 landmarks.
    frame: their face frame.
    rng: randomness.
    style: a procedural style.
    lower: worn under the nose.
    jitter: size of the random size / position changes, in face sizes.

  Returns:
    The mask's `Shape`.
  """
  fs = frame.scale
  R, D = frame.right, frame.down
  u = rng.uniform
  cut = _CUTS[style]
  # Shape of the style: top corner on the jaw, how far out and down.
  margin, drop, under = u(*cut.margin), u(*cut.drop), u(*cut.under)
  low_corner = u(*cut.low_corner)
  scale = 1.0 + u(-jitter, jitter)
  margin *= fs * scale
  drop *= fs * scale
  side, idx = _lower_edge(lm, frame, rng, style, lower, cut.profile,
                          (margin, drop))
  top, unders = _top_edge(lm, frame, rng, lower, under, jitter)
  shift = (R * u(-1, 1) + D * u(-0.5, 0.5)) * (0.25 * jitter * fs)
  side = side + shift
  unders = [p + shift for p in unders]
  top = top + shift
  top_curve = curves.catmull_rom(np.array([side[0], unders[0], top,
                                           unders[1], side[-1]]), 8)
  bottom_curve = curves.catmull_rom(side, 3)  # left -> right
  outline = np.concatenate([top_curve, bottom_curve[::-1][1:-1]])
  # Anchors of the mask's frame: top, bottom (under the chin), cheeks.
  anchor_b = side[len(side) // 2]
  anchor_l = _side_at(side, idx, 6.5)
  anchor_r = _side_at(side, idx, 25.5)
  return Shape(outline, side, idx, (top, anchor_b, anchor_l, anchor_r),
               low_corner)


def _side_at(side: np.ndarray, idx: np.ndarray, jaw_index: float):
  """The point of the lower edge at a (fractional) jaw vertex index."""
  return geometry.at(side, [np.interp(jaw_index, idx,
                                      np.arange(len(idx)))])[0]


def _lower_edge(lm, frame, rng, style, lower, profile, reach):
  """The mask's edge along the jaw: (side [29, 2], jaw indices idx [29]).

  The jaw contour between vertices k0 and 32 - k0 (further from the ears
  when worn low), pushed out by `margin` and down by `drop` x `profile`, and
  for some styles flattened under the chin.

  Args:
    lm: [98, 2] landmarks.
    frame: their face frame.
    rng: randomness.
    style: a procedural style.
    lower: worn under the nose.
    profile: the style's drop along the jaw.
    reach: (margin, drop) in pixels.
  """
  u = rng.uniform
  margin, drop = reach
  D = frame.down
  jaw = lm[:33]
  normals = curves.outward_normals(jaw, lm[[54, 57]].mean(0))
  k0 = u(2.3, 3.8) if not lower else u(5.0, 6.5)
  idx = np.linspace(k0, 32.0 - k0, 29)
  side = (geometry.at(jaw, idx) + geometry.at(normals, idx) * margin
          + np.outer(profile(idx) * drop, D))
  # Surgical (and some cloth) masks hang flatter under the chin than the
  # jaw: lift the low points towards the height of the lowest one. Every
  # style draws all four amounts, so that the draws that follow do not
  # depend on the style.
  amounts = {name: u(*span) for name, span in _FLAT}
  flat = amounts.get(style, 0.0)
  if flat:
    h = (side - frame.eyes) @ D
    lift = geometry.smoothstep(10.0, 4.0, np.abs(idx - 16.0)) * flat
    side += np.outer(np.maximum(h.max() - h, 0.0) * lift, D)
  return side, idx


def _top_edge(lm, frame, rng, lower, under, jitter):
  """The mask's top: (top point on the nose [2], [two points under the eyes]).

  Args:
    lm: [98, 2] landmarks.
    frame: their face frame.
    rng: randomness.
    lower: worn under the nose (top above the upper lip).
    under: how far below the eyes the top corners are, in face scales.
    jitter: size of the random position change, in face sizes.
  """
  u = rng.uniform
  fs = frame.scale
  R, D = frame.right, frame.down
  if lower:
    top = lm[wflw.SUBNASALE] + (lm[wflw.UPPER_LIP_TOP]
                                - lm[wflw.SUBNASALE]) * u(0.1, 0.4)
  else:
    top = lm[51] + (lm[53] - lm[51]) * u(0.3, 0.7)
  top = top + D * (u(-0.5, 0.5) * jitter * 0.3 * fs)
  unders = []
  for lid in ((66, 67), (74, 73)):  # lower eyelids, outer -> inner
    p = lm[lid[0]] + (lm[lid[1]] - lm[lid[0]]) * 0.3 + D * (under * fs)
    if lower:  # level with the top, a little lower
      p = top + R * float((p - top) @ R) + D * (0.03 * fs)
    unders.append(p)
  return top, unders


def loops(lm: np.ndarray, frame: geometry.Frame, shape: Shape,
          style: str) -> tuple[list[np.ndarray], float]:
  """The ear loops (or N95 head straps) as curves from the mask's sides.

  Two per visible side, towards the ear; a side turned away (by the yaw)
  loses its loops.

  Args:
    lm: [98, 2] landmarks.
    frame: their face frame.
    shape: the mask's placement.
    style: a procedural style.

  Returns:
    (curves [M, 2] in image pixels, line thickness in pixels).
  """
  fs = frame.scale
  jaw = lm[:33]
  yaw_q = math.sin(math.radians(frame.yaw))  # + : image-right side is far
  strap = style == "n95"
  thick = max(2.0, (0.022 if strap else 0.013) * fs)
  out = []
  for s, sign in ((0, -1.0), (1, 1.0)):
    far = (yaw_q if s == 1 else -yaw_q)
    vis = float(np.clip(1.0 - 1.8 * far, 0.0, 1.0))
    if vis < 0.15:
      continue
    ends = (jaw[0], jaw[5]) if s == 0 else (jaw[32], jaw[27])
    for a, e, b in _loop_ends(frame, shape, s, sign, vis, ends, strap):
      mid = 0.5 * (a + e) + b * vis
      out.append(curves.catmull_rom(np.array([a, mid, e]), 6))
  return out, thick


def _loop_ends(frame, shape, s, sign, vis, ends, strap):
  """(start on the mask, end towards the ear, bulge) of one side's loops.

  Args:
    frame: the face frame.
    shape: the mask's placement.
    s: 0 for the image-left side, 1 for the right.
    sign: -1.0 on the left, 1.0 on the right (along `frame.right`).
    vis: how visible that side is (1 frontal, 0 turned away); loops are
      shortened with it.
    ends: jaw points 0 and 5 (left) or 32 and 27 (right), near the ear.
    strap: N95 head straps (wider apart, above and below the ear).

  Returns:
    Two (a, e, bulge) triples, the upper loop first.
  """
  fs = frame.scale
  R, D = frame.right, frame.down
  side, idx, low_corner = shape.side, shape.idx, shape.low_corner
  out_dir = R * sign
  j0, j5 = ends
  up = -D
  a_low = _side_at(side, idx, low_corner if s == 0 else 32 - low_corner)
  if strap:
    a_top = _side_at(side, idx, 4.5 if s == 0 else 27.5)
    e_top = j0 + out_dir * (0.14 * fs * vis) + up * (0.12 * fs)
    e_low = j5 + out_dir * (0.16 * fs * vis) + D * (0.12 * fs)
    bulge_top, bulge_low = up * (0.02 * fs), D * (0.015 * fs)
  else:
    a_top = side[0 if s == 0 else -1] - out_dir * (0.01 * fs)
    e_top = j0 + out_dir * (0.09 * fs * vis) + up * (0.01 * fs)
    e_low = j5 + out_dir * (0.09 * fs * vis)
    bulge_top, bulge_low = up * (0.025 * fs), D * (0.02 * fs)
  return ((a_top, e_top, bulge_top), (a_low, e_low, bulge_low))
