"""Procedural cartoon faces wearing synthetic face masks, drawn from a seed.

`ProceduralFaces` is the embedded default data source: every command can run
on a fresh machine without downloading anything. It is a smoke-test source,
not a benchmark: the faces are cartoons, and a model that does well on them
says little about real photographs. It is nevertheless a complete source for
every task of the project: each record holds the clean face, the same face
wearing a face mask, the exact binary map of the mask, the 98 WFLW landmarks
of the drawing and the gender of the face.

How a face is made. Every random choice comes from
`np.random.default_rng([seed, face_index])` and is drawn in normalised units
before the image size is looked at, so a record depends only on
(seed, index, gender filter, size), not on the order of the calls, and the
same index at two sizes is the same face (its landmarks obey the resize
convention exactly). A 3D landmark template (the 98 points with depth) is
built from random proportions and an expression (smile, open mouth), turned by
the yaw about the vertical axis and projected orthographically (the contour
on the side turning away slides to the silhouette of the head), rolled in the
image plane, scaled and placed. Everything is then drawn FROM the projected
points with PIL at 2-4x supersampling and box-filtered down: background,
shoulders, neck, hair, head, ears, face, brows, eyes, nose, mouth. The mask is
drawn last from the landmarks (bridge of the nose to below the chin, cheek to
cheek, ear loops); its binary map is its coverage thresholded at 1/2, and
`masked_image` takes the masked rendering where the map is 1 and is
byte-identical to `image` elsewhere.

Coordinates follow the project convention: pixel units (x, y), the centre of
pixel (row i, col j) at (j, i).

Gender is a deterministic function of the face index: face k is female (0)
when k is even and male (1) when odd. With `gender="all"` record i is face i;
with `gender="female"` record i is face 2i, with `gender="male"` face 2i + 1.
The filtered sources of one seed are therefore disjoint and both are subsets
of the unfiltered one.
"""

import math
import types
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from jaxface.data import curves
from jaxface.data import schema
from jaxface.data import wflw

MIN_SIZE, MAX_SIZE = 64, 512
GENDER_FILTERS = schema.GENDER_FILTERS
# `mask_style` values.
MASK_STYLES = ("surgical", "cloth", "kn95")
MAX_YAW, MAX_ROLL = 30.0, 20.0  # degrees

# Keys of the attribute scalars of a record (besides the schema keys).
YAW, ROLL, MASK_STYLE = "yaw", "roll", "mask_style"

# Skin tones from light to dark; a face takes a random point on this ramp.
_SKIN_RAMP = np.array([
    [255, 226, 205], [241, 194, 167], [224, 172, 138], [198, 146, 108],
    [168, 113, 78], [134, 84, 56], [104, 64, 44], [74, 46, 33],
], np.float64)
_HAIR_COLOURS = np.array([
    [22, 18, 16], [40, 30, 24], [62, 42, 30], [95, 64, 40], [128, 90, 55],
    [182, 140, 88], [214, 180, 120], [140, 62, 32], [150, 146, 140],
], np.float64)
_HAIR_PROBS = np.array([18, 20, 16, 13, 9, 7, 6, 6, 5], np.float64)
_IRIS_COLOURS = np.array([
    [70, 45, 25], [100, 65, 35], [40, 28, 20], [80, 120, 160],
    [90, 120, 80], [120, 100, 60],
], np.float64)
_MASK_COLOURS = np.array([
    [150, 196, 226], [236, 238, 240], [36, 38, 44], [140, 142, 148],
    [228, 170, 188], [40, 52, 92], [120, 160, 140], [205, 205, 190],
], np.float64)

# Face-frame depth of the front of the face (units: face units, FU, where
# the face is about 1 FU wide; x right, y down, z towards the viewer, origin
# between the eyes on the yaw axis).
_FACE_DEPTH = 0.42
_JAW_DEPTH = 0.42
# Head-frame point about which the head rolls (under the mouth).
_PIVOT = np.array([0.0, 0.75])


def _colour(rgb) -> tuple[int, int, int]:
  rgb = np.clip(np.round(np.asarray(rgb, np.float64)), 0, 255).astype(int)
  return int(rgb[0]), int(rgb[1]), int(rgb[2])






def _lerp(a, b, t):
  return np.asarray(a) + (np.asarray(b) - np.asarray(a)) * t


def _ellipse(centre, rx, ry, n=24) -> np.ndarray:
  t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
  return np.stack([rx * np.cos(t), ry * np.sin(t)], -1) + np.asarray(centre)


def _mirror(points: np.ndarray) -> np.ndarray:
  """Mirrors [N, 2] head-frame points about x = 0 and reverses their order."""
  return (points * np.array([-1.0, 1.0]))[::-1]


# ---------------------------------------------------------------------------
# Parameters.


def _sample_params(rng: np.random.Generator,
                   male: bool) -> types.SimpleNamespace:
  """Draws every random choice of a face; nothing here depends on the size."""
  u = rng.uniform
  p = types.SimpleNamespace(male=male)
  # Head shape.
  p.a = u(0.46, 0.51) + (0.03 if male else 0.0)  # half-width at the eyes
  p.jaw_n = u(2.5, 3.3) if male else u(1.9, 2.4)  # squareness of the jaw
  p.jaw_taper = u(0.0, 0.06) if male else u(0.04, 0.14)
  p.chin = u(0.80, 0.87) + (0.03 if male else 0.0)
  p.skull_h = u(0.76, 0.84)
  # Eyes.
  p.eye_x = u(0.19, 0.225)
  p.eye_w = u(0.085, 0.103)
  p.eye_up = u(0.036, 0.058)
  p.eye_low = u(0.024, 0.04)
  p.eye_tilt = u(-0.012, 0.02)
  p.iris_r = u(0.04, 0.05)
  p.gaze = np.array([u(-1.0, 1.0), u(-1.0, 1.0)])
  p.iris_colour = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]
  # Brows.
  p.brow_y = u(0.12, 0.16)
  p.brow_arch = u(0.01, 0.04)
  p.brow_thick = u(0.03, 0.045) if male else u(0.016, 0.026)
  p.brow_inner = u(0.06, 0.10)
  p.brow_outer = p.eye_x + p.eye_w + u(0.03, 0.07)
  # Nose.
  p.nose_y = u(0.31, 0.37)
  p.nose_w = u(0.075, 0.1) + (0.01 if male else 0.0)
  p.nose_z = u(0.16, 0.26)
  # Mouth and expression.
  p.mouth_y = p.nose_y + u(0.16, 0.21)
  p.mouth_w = u(0.15, 0.19)
  p.lip_up = u(0.022, 0.036) + (0.0 if male else 0.008)
  p.lip_low = u(0.032, 0.05) + (0.0 if male else 0.008)
  p.smile = float(np.clip(u(-0.4, 1.2), 0.0, 1.0))
  p.open = u(0.02, 0.11) if rng.random() < 0.35 else 0.0
  p.jitter = rng.normal(0.0, 0.004, size=(wflw.NUM_LANDMARKS, 2))
  # Pose and placement.
  p.yaw = u(-MAX_YAW, MAX_YAW)
  p.roll = float(np.clip(rng.normal(0.0, 8.0), -MAX_ROLL, MAX_ROLL))
  p.unit = u(0.40, 0.54)  # image widths per face unit
  p.shift = rng.normal(0.0, 0.03, size=2)
  # Colours.
  t = u(0.0, 1.0) * (len(_SKIN_RAMP) - 1)
  i = min(int(t), len(_SKIN_RAMP) - 2)
  p.skin = (_lerp(_SKIN_RAMP[i], _SKIN_RAMP[i + 1], t - i)
            + rng.normal(0.0, 5.0, 3))
  p.hair_colour = (_HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS),
                                            p=_HAIR_PROBS / _HAIR_PROBS.sum())]
                   + rng.normal(0.0, 6.0, 3))
  p.lip_mix = u(0.45, 0.75) if not male else u(0.1, 0.25)
  p.lip_red = np.array([u(170, 215), u(50, 90), u(70, 110)])
  p.blush = u(0.0, 0.14) if not male else 0.0
  p.beard = (u(0.2, 0.6) if rng.random() < 0.45 else 0.0) if male else 0.0
  p.shirt = u(20, 230, 3)
  p.neckline = int(rng.integers(2))  # 0: V, 1: round
  p.neckline_depth = u(0.1, 0.3)
  p.neck_w = u(0.25, 0.29) + (0.04 if male else 0.0)
  # Hair.
  if male:
    p.hair_volume = u(0.02, 0.1)
    p.hairline = u(-0.5, -0.4)
    p.hairline_bend = u(0.06, 0.2)
    p.hairline_tilt = 0.0
    p.sideburn = int(rng.integers(1, 4))
  else:
    p.hair_volume = u(0.06, 0.14)
    style = int(rng.integers(3))  # centre part, side part, bangs
    p.hairline = (u(-0.5, -0.42), u(-0.42, -0.34), u(-0.32, -0.26))[style]
    p.hairline_bend = (u(0.26, 0.34), u(0.18, 0.26), u(0.06, 0.12))[style]
    p.hairline_tilt = (0.0, u(0.08, 0.14) * rng.choice([-1, 1]), 0.0)[style]
    p.lock_end = int(rng.integers(6, 12))  # jaw point where the locks end
    p.hair_length = u(1.15, 1.8)
    p.hair_spread = u(0.1, 0.24)
  p.hair_shine = u(0.0, 0.15)
  # Background.
  p.bg = rng.uniform(25, 235, size=(2, 3))
  p.bg_angle = u(0, 2 * np.pi)
  p.blobs = [(rng.uniform(0, 1, 2), u(0.1, 0.35), rng.uniform(25, 235, 3),
              u(0.3, 0.7)) for _ in range(int(rng.integers(0, 4)))]
  p.light_angle = u(0, 2 * np.pi)
  p.light = u(0.0, 0.12)
  # Face mask.
  p.mask_style = int(rng.integers(len(MASK_STYLES)))
  p.mask_colour = (_MASK_COLOURS[rng.integers(len(_MASK_COLOURS))]
                   if rng.random() < 0.8 else rng.uniform(20, 235, 3))
  p.mask_colour = np.clip(p.mask_colour + rng.normal(0, 6, 3), 0, 255)
  p.mask_top = u(0.35, 0.65)  # between landmarks 51 and 53
  p.mask_drop = u(0.06, 0.14)  # below the chin
  p.mask_side = u(0.0, 0.03)  # outside the contour
  return p


# ---------------------------------------------------------------------------
# Geometry.


def _surface_z(x):
  """Depth of the front of the face at horizontal position x."""
  return _FACE_DEPTH * np.sqrt(np.maximum(0.0, 1.0 - (np.asarray(x) / 0.62)
                                          ** 2))


def _jaw_curve(p) -> np.ndarray:
  """The 33 frontal contour points: [33, 2] from image-left to image-right."""
  psi = np.linspace(0.0, np.pi, 161)
  c, s = np.cos(psi), np.sin(psi)
  e = 2.0 / p.jaw_n
  x = -p.a * np.sign(c) * np.abs(c) ** e
  y = p.chin * np.abs(s) ** e
  x = x * (1.0 - p.jaw_taper * (y / p.chin) ** 2)
  return curves.resample_polyline(np.stack([x, y], -1), 33)


def _template(p) -> np.ndarray:
  """The 3D landmark template of a face, before the pose.

  Returns:
    [98, 3] points (x, y, z) in face units; the depth of the contour is not
    used (see `_project_jaw`).
  """
  pts = np.zeros((wflw.NUM_LANDMARKS, 3))
  jaw = _jaw_curve(p)
  pts[:33, :2] = jaw
  # Left eye: 60 outer corner, 61-63 upper lid, 64 inner, 65-67 lower lid.
  outer = np.array([-(p.eye_x + p.eye_w), -p.eye_tilt])
  inner = np.array([-(p.eye_x - p.eye_w), 0.006])
  pts[60, :2], pts[64, :2] = outer, inner
  for k, t in zip((61, 62, 63), (0.25, 0.5, 0.75)):
    pts[k, :2] = _lerp(outer, inner, t) - [0.0, p.eye_up * math.sin(
        math.pi * (0.85 * t + 0.1)) ** 0.7]
  for k, t in zip((65, 66, 67), (0.75, 0.5, 0.25)):
    pts[k, :2] = _lerp(outer, inner, t) + [0.0, p.eye_low * math.sin(
        math.pi * t) ** 0.8]
  # Left brow: 33-37 upper edge outer -> inner, 38-41 lower edge back.
  def brow(t, lower):
    x = -_lerp(p.brow_outer, p.brow_inner, t)
    y = -p.brow_y - p.brow_arch * math.sin(math.pi * min(1.0, t * 1.4))
    y += 0.02 * (1 - t)  # the tail sits lower
    if lower:
      y += p.brow_thick * (0.5 + 0.5 * t)
    return [x, y]
  for k, t in zip(range(33, 38), (0.0, 0.25, 0.5, 0.75, 1.0)):
    pts[k, :2] = brow(t, False)
  for k, t in zip(range(38, 42), (0.92, 0.66, 0.4, 0.14)):
    pts[k, :2] = brow(t, True)
  # Nose: bridge 51-54 top to tip, bottom 55-57 (58, 59 by symmetry).
  for k, t in zip(range(51, 55), (0.0, 1 / 3, 2 / 3, 1.0)):
    pts[k] = [0.0, _lerp(0.03, p.nose_y, t), _FACE_DEPTH + p.nose_z * (
        0.1 + 0.9 * t ** 1.5)]
  pts[55] = [-p.nose_w, p.nose_y + 0.025, _FACE_DEPTH + 0.05]
  pts[56] = [-0.5 * p.nose_w, p.nose_y + 0.05, _FACE_DEPTH + 0.35 * p.nose_z]
  pts[57] = [0.0, p.nose_y + 0.06, _FACE_DEPTH + 0.5 * p.nose_z]
  # Mouth, closed and neutral; left half and centre.
  mw, my = p.mouth_w, p.mouth_y
  pts[76, :2] = [-mw, my]
  pts[77, :2] = [-0.6 * mw, my - 0.8 * p.lip_up]
  pts[78, :2] = [-0.22 * mw, my - 1.05 * p.lip_up]
  pts[79, :2] = [0.0, my - 0.85 * p.lip_up]
  pts[85, :2] = [0.0, my + p.lip_low]
  pts[86, :2] = [-0.3 * mw, my + 0.95 * p.lip_low]
  pts[87, :2] = [-0.65 * mw, my + 0.65 * p.lip_low]
  pts[88, :2] = [-0.86 * mw, my]
  pts[89, :2] = [-0.42 * mw, my - 0.12 * p.lip_up]
  pts[90, :2] = [0.0, my - 0.1 * p.lip_up]
  pts[94, :2] = [0.0, my + 0.05 * p.lip_low]
  pts[95, :2] = [-0.42 * mw, my + 0.05 * p.lip_low]
  # Right half by symmetry.
  perm = wflw.FLIP_PERMUTATION
  right = np.array([k for k in range(96) if perm[k] != k
                    and pts[perm[k], 0] < 0 and k not in range(33)])
  pts[right] = pts[perm[right]] * np.array([-1.0, 1.0, 1.0])
  # A little asymmetry.
  pts[33:96, :2] += p.jitter[33:96]
  # Expression: a smile lifts and widens the corners, an open mouth drops the
  # lower lips and the chin.
  for k in (76, 88):
    pts[k, :2] += [-0.02 * p.smile, -0.035 * p.smile]
  for k in (82, 92):
    pts[k, :2] += [0.02 * p.smile, -0.035 * p.smile]
  for k in (77, 87, 89, 95):
    pts[k, 1] -= 0.012 * p.smile
  for k in (81, 83, 91, 93):
    pts[k, 1] -= 0.012 * p.smile
  for k, w in ((93, 0.7), (94, 1.0), (95, 0.7), (83, 0.6), (84, 0.9),
               (85, 1.0), (86, 0.9), (87, 0.6)):
    pts[k, 1] += p.open * w
  drop = np.clip(1.0 - ((np.arange(33) - 16) / 11.0) ** 2, 0.0, 1.0)
  pts[:33, 1] += 0.55 * p.open * drop
  # Pupils: centre of the opening plus the gaze, the same for both eyes.
  for k, eye in ((96, wflw.LEFT_EYE), (97, wflw.RIGHT_EYE)):
    corners = pts[[eye[0], eye[4]], :2]
    centre = corners.mean(0) + [0.0, 0.25 * (p.eye_low - p.eye_up)]
    pts[k, :2] = centre + p.gaze * [0.3 * p.eye_w, 0.1 * p.eye_up]
  # Depth of the inner features.
  feats = np.r_[33:51, 55:57, 58:60, 60:98]
  dz = np.zeros(wflw.NUM_LANDMARKS)
  dz[33:51] = 0.015
  dz[60:96] = -0.03
  dz[96:98] = -0.01
  dz[76:96] = 0.03
  pts[feats, 2] = _surface_z(pts[feats, 0]) + dz[feats]
  for k in (55, 59):
    pts[k, 2] = _FACE_DEPTH + 0.05
  for k in (56, 58):
    pts[k, 2] = _FACE_DEPTH + 0.35 * p.nose_z
  pts[76:96, 2] += 0.02 * (1.0 - np.abs(pts[76:96, 0]) / p.mouth_w)
  return pts


def _rigid(points3: np.ndarray, yaw: float) -> np.ndarray:
  """Orthographic projection of [N, 3] points turned by `yaw` (radians)."""
  c, s = math.cos(yaw), math.sin(yaw)
  return np.stack([points3[:, 0] * c + points3[:, 2] * s, points3[:, 1]], -1)


def _project_jaw(jaw: np.ndarray, yaw: float) -> np.ndarray:
  """Projects the contour: rigid on the near side, silhouette on the far.

  The contour points at height y lie on the cross-section of the head there,
  an ellipse of half-width |x| and half-depth `_JAW_DEPTH` centred on the yaw
  axis. On the side turning towards the viewer the contour is the same
  points of the jaw, turned; on the side turning away it is the silhouette of
  that cross-section, which stays wider than the turned points.
  """
  x, y = jaw[:, 0], jaw[:, 1]
  c, s = math.cos(yaw), math.sin(yaw)
  z_front = _JAW_DEPTH * np.sqrt(np.maximum(0.0, 1.0 - (x / np.abs(x).max())
                                            ** 2))
  near = x * c + z_front * s
  far = np.sign(x) * np.sqrt((x * c) ** 2 + (_JAW_DEPTH * s) ** 2)
  far_side = np.sign(x) * s > 0
  return np.stack([np.where(far_side, far, near), y], -1)


def _skull(x, y, yaw):
  """Projects frontal outline points of the skull (an ellipsoid)."""
  ratio = 1.2  # depth / width of the head
  k = math.sqrt(math.cos(yaw) ** 2 + (ratio * math.sin(yaw)) ** 2)
  return np.stack([np.asarray(x) * k - 0.06 * math.sin(yaw),
                   np.asarray(y, np.float64)], -1)


def _skull_outline(p, yaw, volume=0.0, y_low=0.35, n=48):
  """Outline of the (hair-covered) skull from the right side over the top.

  Args:
    p: face parameters.
    yaw: radians.
    volume: how far the outline stands out of the skull (hair).
    y_low: height of both ends.
    n: number of points.

  Returns:
    [n, 2] head-frame points from (right, y_low) to (left, y_low).
  """
  a = p.a * 1.03 + volume
  yc, h = -0.08, p.skull_h + volume
  phi0 = math.asin(np.clip((y_low - yc) / h, -1.0, 1.0))
  phi = np.linspace(-phi0, math.pi + phi0, n)
  return _skull(a * np.cos(phi), yc - h * np.sin(phi), yaw)


def _hairline(p, yaw, n=13) -> np.ndarray:
  """Hairline across the forehead, image-left temple to image-right."""
  ah = p.a - 0.03
  x = np.linspace(-ah, ah, n)
  r = x / ah
  y = p.hairline + p.hairline_bend * r ** 2 + p.hairline_tilt * r
  z = _surface_z(x) - 0.12 * ((y + 0.1) / 0.8) ** 2
  return _rigid(np.stack([x, y, z], -1), yaw)



class _Painter:
  """Draws head-frame or body-frame shapes on a supersampled canvas."""

  def __init__(self, image: Image.Image, size: int, factor: int, p):
    self.image = image
    self.draw = ImageDraw.Draw(image)
    self.canvas = size * factor
    self.unit = p.unit  # image widths per face unit
    self.fu = p.unit * self.canvas  # canvas pixels per face unit
    roll = math.radians(p.roll)
    c, s = math.cos(roll), math.sin(roll)
    self.rot = np.array([[c, -s], [s, c]])
    self.pivot = p.pivot_u  # image position (fraction) of the pivot

  def head(self, pts) -> np.ndarray:
    """Head frame (FU) -> image fraction."""
    return self.pivot + (np.asarray(pts) - _PIVOT) @ self.rot.T * self.unit

  def body(self, pts) -> np.ndarray:
    """Body frame (FU from the pivot, unrolled) -> image fraction."""
    return self.pivot + np.asarray(pts) * self.unit

  def _xy(self, pts_u):
    return (np.asarray(pts_u) * self.canvas - 0.5).ravel().tolist()

  def poly(self, pts_u, colour, draw=None):
    (draw or self.draw).polygon(self._xy(pts_u), fill=colour)

  def line(self, pts_u, width_fu, colour, draw=None, min_px=0.0):
    width = max(1, int(round(max(width_fu * self.fu, min_px))))
    (draw or self.draw).line(self._xy(pts_u), fill=colour, width=width,
                             joint="curve")

  def dot(self, centre_u, radius_fu, colour, draw=None):
    r = radius_fu * self.fu
    x, y = np.asarray(centre_u) * self.canvas - 0.5
    (draw or self.draw).ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _supersampling(size: int) -> int:
  return 4 if size <= 160 else (3 if size <= 320 else 2)


def _background(p, size: int, factor: int) -> Image.Image:
  """Soft gradient with blurry blobs, made small and scaled up."""
  n = 16
  g = (np.arange(n) + 0.5) / n
  xx, yy = np.meshgrid(g, g)
  t = (math.cos(p.bg_angle) * (xx - 0.5) + math.sin(p.bg_angle) * (yy - 0.5)
       ) / 1.42 + 0.5
  img = _lerp(p.bg[0], p.bg[1], t[..., None])  # [n, n, 3]
  for centre, radius, colour, strength in p.blobs:
    w = strength * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2)
                          / radius ** 2)[..., None]
    img = img * (1 - w) + colour * w
  small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  # Bicubic to the output size, then nearest up to the canvas: the box
  # filter at the end gives back exactly the bicubic image.
  return small.resize((size, size), Image.BICUBIC).resize(
      (size * factor, size * factor), Image.NEAREST)


def _place(p, lm_head: np.ndarray):
  """Chooses the image position of the pivot so the landmarks fit."""
  roll = math.radians(p.roll)
  c, s = math.cos(roll), math.sin(roll)
  rel = (lm_head - _PIVOT) @ np.array([[c, -s], [s, c]]).T * p.unit
  lo, hi = rel.min(0), rel.max(0)
  pivot = 0.5 - (lo + hi) / 2 + p.shift
  # Keep the landmarks at least 3% inside the image.
  pivot = np.clip(pivot, 0.03 - lo, 0.97 - hi)
  return pivot


def _draw_face(p, painter: _Painter, lm: np.ndarray, yaw: float,
               male: bool) -> dict:
  """Draws everything but the mask. `lm` are head-frame landmarks [98, 2]."""
  pt = painter
  H = pt.head
  skin = p.skin

  def dark(k):
    return _colour(skin * k)

  hair = _colour(p.hair_colour)
  hair_dark = _colour(p.hair_colour * 0.72)
  hair_light = _colour(p.hair_colour * (1 + p.hair_shine) + 20 * p.hair_shine)
  jaw = lm[:33]

  # Shoulders and clothes (body frame: not rolled).
  nb = 0.42  # neck base below the pivot
  torso = np.array([[-p.neck_w - 0.04, nb - 0.02], [-0.62, nb + 0.06],
                    [-1.05, nb + 0.18], [-1.38, nb + 0.48],
                    [-1.55, nb + 1.2], [-1.6, nb + 3.0]])
  torso = np.concatenate([torso, _mirror(torso)])
  pt.poly(pt.body(torso), _colour(p.shirt))
  if p.neckline == 0:
    neckline = np.array([[-p.neck_w - 0.02, nb - 0.05],
                         [0.0, nb + p.neckline_depth],
                         [p.neck_w + 0.02, nb - 0.05]])
  else:
    t = np.linspace(0, np.pi, 12)
    neckline = np.stack([-(p.neck_w + 0.06) * np.cos(t),
                         nb - 0.05 + 0.6 * p.neckline_depth * np.sin(t)], -1)
  pt.poly(pt.body(neckline), dark(0.8))

  # Long hair falls behind the neck and over the shoulders.
  if not male:
    top = _skull_outline(p, yaw, p.hair_volume, y_low=0.2)  # right -> left
    yb = _PIVOT[1] + nb + p.hair_length - 0.9  # head-frame bottom
    xr_top, xl_top = top[0, 0], top[-1, 0]
    right = np.array([[xr_top + 0.04, 0.6], [xr_top + p.hair_spread, yb],
                      [xr_top - 0.12, yb + 0.04], [p.neck_w + 0.06, 1.05],
                      [p.neck_w - 0.02, 0.5]])
    left = np.array([[-p.neck_w + 0.02, 0.5], [-p.neck_w - 0.06, 1.05],
                     [xl_top + 0.12, yb + 0.04], [xl_top - p.hair_spread, yb],
                     [xl_top - 0.04, 0.6]])
    back = np.concatenate([right[::-1], top, left[::-1]])
    pt.poly(H(back), hair)
  else:
    back = _skull_outline(p, yaw, p.hair_volume, y_low=0.25)
    pt.poly(H(back), hair)

  # Neck, a shadow under the chin.
  neck_top = _rigid(np.array([[-p.neck_w, 0.35, 0.0], [p.neck_w, 0.35, 0.0]]),
                    yaw)
  neck_bottom = np.array([[p.neck_w * 1.1, nb + 0.1],
                          [-p.neck_w * 1.1, nb + 0.1]])
  pt.poly(np.concatenate([H(neck_top), pt.body(neck_bottom)]), dark(0.84))
  chin = jaw[10:23]
  shadow = np.concatenate([chin, (chin + [0.0, 0.07])[::-1]])
  pt.poly(H(shadow), dark(0.72))

  # Head: skull outline closed along the lower jaw.
  head = np.concatenate([_skull_outline(p, yaw, 0.0, y_low=0.35),
                         jaw[6:27]])
  pt.poly(H(head), _colour(skin))

  # Ears, on the sides of the head (hidden on the far side by the face).
  ears = []
  for side in (-1.0, 1.0):
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ear = np.stack([side * (p.a + 0.02 + 0.035 * (1 + np.cos(t))),
                    0.15 + 0.17 * np.sin(t),
                    -0.06 + 0.06 * np.cos(t)], -1)
    inner = ear.copy()
    inner[:, 0] = side * (p.a + 0.03 + 0.02 * (1 + np.cos(t)))
    inner[:, 1] = 0.16 + 0.1 * np.sin(t)
    e2, i2 = _rigid(ear, yaw), _rigid(inner, yaw)
    ears.append(e2)
    pt.poly(H(e2), dark(0.93))
    pt.poly(H(i2), dark(0.78))

  # Face: contour closed across the eyes (the head covers the forehead).
  pt.poly(H(jaw), _colour(skin))
  # Cel shading on the far side of the face.
  if abs(yaw) > 0.08:
    far = jaw[16:33] if yaw > 0 else jaw[:17][::-1]
    inward = far + np.array([-np.sign(yaw) * (0.04 + 0.12 * abs(yaw)), 0.0])
    inward[-1] = far[-1]
    inward[0] = far[0] + [0.0, -0.02]
    pt.poly(H(np.concatenate([far, inward[::-1]])), dark(0.9))
  if p.blush > 0:
    blush = _colour(_lerp(skin, [230, 110, 120], p.blush))
    for a, b in ((4, 60), (28, 72)):
      centre = _lerp(jaw[a], lm[b], 0.5) + [0.0, 0.1]
      pt.poly(H(_ellipse(centre, 0.07 * math.cos(yaw) + 0.01, 0.045, 16)),
              blush)
  if p.beard > 0:
    # Stubble: the skin darkened towards the hair colour (never lightened).
    stubble = np.minimum(p.hair_colour, skin * 0.75)
    beard_col = _colour(_lerp(skin, stubble, p.beard))
    upper = np.array([_lerp(jaw[26], lm[82], 0.35),
                      _lerp(lm[82], lm[59], 0.5) + [0.01, 0.0],
                      _lerp(lm[58], lm[80], 0.4),
                      _lerp(lm[57], lm[79], 0.4),
                      _lerp(lm[56], lm[78], 0.4),
                      _lerp(lm[76], lm[55], 0.5) + [-0.01, 0.0],
                      _lerp(jaw[6], lm[76], 0.35)])
    beard = np.concatenate([jaw[5:28], upper])
    pt.poly(H(beard), beard_col)

  # Nose.
  side = -1.0 if yaw > 0 else 1.0  # shaded side of the bridge
  bridge = np.array([lm[52], lm[53], lm[54] + [0.0, -0.03]])
  bridge = bridge + [side * 0.035, 0.0]
  pt.line(H(bridge), 0.008, dark(0.88))
  pt.line(H(curves.catmull_rom(lm[55:60], 4)), 0.014, dark(0.72))
  for a in (56, 58):
    centre = _lerp(lm[a], lm[57], 0.35) + [0.0, -0.012]
    pt.poly(H(_ellipse(centre, 0.022 * max(0.4, math.cos(yaw)), 0.011, 12)),
            dark(0.45))

  # Eyes.
  for eye, pupil in ((wflw.LEFT_EYE, 96), (wflw.RIGHT_EYE, 97)):
    e = lm[eye]
    upper = curves.catmull_rom(e[0:5], 5)
    lower = curves.catmull_rom(np.concatenate([e[4:], e[:1]]), 5)
    pt.poly(H(np.concatenate([upper, lower[1:-1]])), (245, 243, 238))
    r = p.iris_r
    squeeze = max(0.5, math.cos(yaw))
    pt.poly(H(_ellipse(lm[pupil], r * squeeze, r, 20)),
            _colour(p.iris_colour))
    pt.poly(H(_ellipse(lm[pupil], 0.45 * r * squeeze, 0.45 * r, 16)),
            (12, 10, 10))
    pt.dot(H(lm[pupil] + [-0.3 * r, -0.35 * r]), 0.2 * r, (250, 250, 250))
    # Lids cover what of the iris sticks out of the opening.
    pt.poly(H(np.concatenate([upper, (upper - [0.0, 1.3 * r])[::-1]])),
            _colour(skin))
    pt.poly(H(np.concatenate([lower, (lower + [0.0, 1.3 * r])[::-1]])),
            _colour(skin))
    pt.line(H(upper - [0.0, 0.006]), 0.014 if male else 0.02, (30, 22, 20))
    pt.line(H(lower[1:-1]), 0.006, dark(0.7))
    crease = curves.catmull_rom(e[0:5], 4)[2:-2] - [0.0, p.eye_up * 0.9 + 0.015]
    pt.line(H(crease), 0.006, dark(0.8))

  # Brows.
  for brow in (wflw.LEFT_BROW, wflw.RIGHT_BROW):
    b = lm[brow]
    top = curves.catmull_rom(b[:5], 4)
    bottom = curves.catmull_rom(np.concatenate([b[4:5], b[5:], b[:1]]), 4)
    pt.poly(H(np.concatenate([top, bottom[1:-1]])), hair_dark)

  # Mouth.
  lip = _colour(_lerp(skin * 0.9, p.lip_red, p.lip_mix))
  lip_dark = _colour(_lerp(skin * 0.8, p.lip_red * 0.85, p.lip_mix))
  outer_up = curves.catmull_rom(lm[76:83], 4)
  outer_low = curves.catmull_rom(np.concatenate([lm[82:88], lm[76:77]]), 4)
  inner_up = curves.catmull_rom(lm[88:93], 4)
  inner_low = curves.catmull_rom(np.concatenate([lm[92:96], lm[88:89]]), 4)
  pt.poly(H(np.concatenate([outer_up, outer_low[1:-1]])), lip)
  pt.poly(H(np.concatenate([outer_up, inner_up[::-1]])), lip_dark)
  if p.open > 0.015:
    pt.poly(H(np.concatenate([inner_up, inner_low[1:-1]])), (70, 25, 30))
    # Upper teeth: the top third of the opening (both lips have the same
    # number of curve points).
    teeth_low = _lerp(inner_up, inner_low[::-1], 0.35)
    pt.poly(H(np.concatenate([inner_up, teeth_low[::-1]])), (238, 234, 222))
  pt.line(H(inner_up), 0.008, _colour(skin * 0.45))

  # Hair in front: fringe, cap, locks.
  if male:
    cap = _skull_outline(p, yaw, p.hair_volume, y_low=-0.02)
    hl = _hairline(p, yaw)
    js = p.sideburn
    front = np.concatenate([
        cap,
        [jaw[js] + [0.03, 0.0]],
        hl,
        [jaw[32 - js] + [-0.03, 0.0]],
    ])
    pt.poly(H(front), hair)
  else:
    cap = _skull_outline(p, yaw, p.hair_volume, y_low=0.1)
    hl = _hairline(p, yaw)
    k = p.lock_end
    left_locks = jaw[:k + 1] + [0.01, 0.0]
    right_locks = jaw[32 - k:] + [-0.01, 0.0]
    low_r = right_locks[0] + [0.16, 0.12]
    low_l = left_locks[-1] + [-0.16, 0.12]
    front = np.concatenate([
        cap,  # right -> left over the top
        [cap[-1] + [-0.04, 0.2], low_l],
        left_locks[::-1],  # up the left side of the face
        hl,  # across the forehead
        right_locks[::-1],  # down the right side
        [low_r, cap[0] + [0.04, 0.2]],
    ])
    pt.poly(H(front), hair)
    # A few strands between the hairline and the crown.
    quarter = len(cap) // 4
    crown = curves.resample_polyline(cap[quarter:-quarter][::-1], len(hl))
    for t, colour in ((0.35, hair_light), (0.7, hair_dark)):
      pt.line(H(_lerp(hl, crown, t)), 0.008, colour)
  return {"ears": ears}


def _draw_mask(p, painter: _Painter, lm: np.ndarray, ears, alpha_draw,
               yaw: float) -> None:
  """Draws the face mask (and its ear loops) on the canvas and the alpha."""
  pt = painter
  H = pt.head
  jaw = lm[:33]
  centre = lm[[54, 57, 79, 85]].mean(0)
  normals = curves.outward_normals(jaw, centre)
  idx = np.arange(2, 31)
  w = np.clip(1.0 - ((idx - 16) / 9.0) ** 2, 0.0, 1.0)
  if p.mask_style == 2:  # kn95: pointed chin
    w = np.clip(1.0 - np.abs(idx - 16) / 8.0, 0.0, 1.0) ** 1.3
  elif p.mask_style == 0:  # surgical: flatter bottom
    w = np.clip(1.0 - ((idx - 16) / 10.0) ** 4, 0.0, 1.0)
  side = jaw[idx] + normals[idx] * p.mask_side + np.outer(w * p.mask_drop,
                                                          [0.0, 1.0])
  nose = _lerp(lm[51], lm[53], p.mask_top) + [0.0, -0.01]
  under_l = _lerp(lm[66], lm[67], 0.3) + [0.0, 0.07]
  under_r = _lerp(lm[74], lm[73], 0.3) + [0.0, 0.07]
  top = curves.catmull_rom(
      np.array([side[0], under_l, nose, under_r, side[-1]]), 6)
  bottom = curves.catmull_rom(side[::-1], 2)  # right -> left
  body = np.concatenate([top, bottom[1:-1]])
  colour = p.mask_colour
  # Loops: from the top and bottom corners to the ears.
  corner_low = {0: 7, 1: 6, 2: 8}[p.mask_style] - 2
  loops = []
  for ear, top_i, low_i in ((ears[0], 0, corner_low),
                            (ears[1], -1, -1 - corner_low)):
    top_ear = ear[np.argmin(ear[:, 1])] + [0.0, 0.03]
    low_ear = ear[np.argmax(ear[:, 1])] + [0.0, -0.02]
    loops.append(np.array([side[top_i], _lerp(side[top_i], top_ear, 0.5)
                           + [0.0, -0.015], top_ear]))
    loops.append(np.array([side[low_i], _lerp(side[low_i], low_ear, 0.5)
                           + [0.0, 0.01], low_ear]))
  loop_colour = _colour(colour * 0.92 if p.mask_style else [240, 240, 240])
  min_px = 1.6 * pt.canvas / p.size  # at least ~1.6 output pixels wide
  for loop in loops:
    curve = curves.catmull_rom(loop, 4)
    pt.line(H(curve), 0.012, loop_colour, min_px=min_px)
    pt.line(H(curve), 0.012, 255, draw=alpha_draw, min_px=min_px)
  pt.poly(H(body), _colour(colour))
  pt.poly(H(body), 255, draw=alpha_draw)
  # Shading and details, inside the body.
  n = 24
  top_r = curves.resample_polyline(top, n)
  bottom_r = curves.resample_polyline(bottom[::-1], n)
  shade = _colour(colour * 0.86)
  if p.mask_style == 0:
    for t in (0.3, 0.5, 0.7):
      pt.line(H(_lerp(top_r, bottom_r, t)[1:-1]), 0.008, shade)
    pt.line(H(_lerp(top_r, bottom_r, 0.04)[5:-5]), 0.012,
            _colour(_lerp(colour, [250, 250, 250], 0.5)))
  else:
    seam = np.array([nose + [0.0, 0.02], _lerp(nose, bottom_r[n // 2], 0.5),
                     bottom_r[n // 2] + [0.0, -0.02]])
    pt.line(H(curves.catmull_rom(seam, 4)), 0.008, shade)
    if p.mask_style == 2:  # heat-welded side lines
      for i in (3, n - 4):
        pt.line(H(_lerp(top_r[i], bottom_r[i], np.array([[0.1], [0.9]]))),
                0.008, shade)
  # The lower band is in shadow.
  band = np.concatenate([_lerp(top_r, bottom_r, 0.8)[1:-1],
                         bottom_r[1:-1][::-1]])
  pt.poly(H(band), _colour(colour * 0.93))


def _lighting(image: np.ndarray, p) -> np.ndarray:
  """A soft linear light gradient over the whole image."""
  if p.light <= 0:
    return image
  size = image.shape[0]
  g = (np.arange(size) + 0.5) / size - 0.5
  gain = 1.0 + p.light * 2.0 * (math.cos(p.light_angle) * g[None, :]
                                + math.sin(p.light_angle) * g[:, None])
  out = image.astype(np.float32) * gain[..., None].astype(np.float32)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render(face_index: int, size: int = 256, seed: int = 0) -> dict:
  """Renders face `face_index` of stream `seed` at `size` x `size`.

  Args:
    face_index: which face (its parity is its gender: even female, odd male).
    size: output side in pixels, 64 to 512.
    seed: the stream.

  Returns:
    A record; see `ProceduralFaces`.
  """
  size = _check_size(size)
  face_index = int(face_index)
  male = face_index % 2 == 1
  rng = np.random.default_rng([int(seed), face_index])
  p = _sample_params(rng, male)
  p.size = size
  yaw = math.radians(p.yaw)

  # Landmarks: template -> yaw -> head frame.
  pts3 = _template(p)
  lm = _rigid(pts3, yaw)
  lm[:33] = _project_jaw(pts3[:33, :2], yaw)
  p.pivot_u = _place(p, lm)

  factor = _supersampling(size)
  canvas = _background(p, size, factor)
  painter = _Painter(canvas, size, factor, p)
  drawn = _draw_face(p, painter, lm, yaw, male)
  image = np.asarray(canvas.reduce(factor))

  alpha = Image.new("L", canvas.size, 0)
  _draw_mask(p, painter, lm, drawn["ears"], ImageDraw.Draw(alpha), yaw)
  masked = np.asarray(canvas.reduce(factor))
  mask = (np.asarray(alpha.reduce(factor)) >= 128).astype(np.uint8)

  image = _lighting(image, p)
  masked = _lighting(masked, p)
  masked_image = np.where(mask[..., None] == 1, masked, image)

  landmarks = painter.head(lm) * size - 0.5
  return {
      schema.IMAGE: image,
      schema.MASKED_IMAGE: masked_image,
      schema.MASK: mask,
      schema.LANDMARKS: landmarks.astype(np.float32),
      schema.GENDER: np.int32(schema.MALE if male else schema.FEMALE),
      YAW: np.float32(p.yaw),
      ROLL: np.float32(p.roll),
      MASK_STYLE: np.int32(p.mask_style),
  }


def _check_size(size) -> int:
  if (isinstance(size, bool) or not isinstance(size, (int, np.integer))
      or not MIN_SIZE <= size <= MAX_SIZE):
    raise ValueError(f"size={size!r} is not supported: ProceduralFaces draws "
                     f"square images of {MIN_SIZE} to {MAX_SIZE} pixels "
                     "(an int)")
  return int(size)


class ProceduralFaces:
  """Random-access source of procedural masked faces (grain-compatible).

  Each record is a dict of numpy arrays:

    image         uint8 [S, S, 3]   the clean face (ground truth)
    masked_image  uint8 [S, S, 3]   the same face wearing a face mask
    mask          uint8 [S, S]      1 on the face mask (and its ear loops);
                                    `masked_image == image` wherever it is 0
    landmarks     float32 [98, 2]   WFLW points of the drawing, pixel (x, y)
    gender        int32 []          0 female, 1 male
    yaw           float32 []        degrees, + turns the face to image-right
    roll          float32 []        degrees, + turns the face clockwise
    mask_style    int32 []          index into `MASK_STYLES` (this
                                    module's; `sources.Procedural` maps it
                                    to `schema.MASK_STYLES`)

  A smoke-test source, not a benchmark (see the module docstring).
  """

  def __init__(self, size: int = 256, num_records: int = 100_000,
               seed: int = 0, gender: str = "all"):
    """Creates the source; nothing is drawn until a record is read.

    Args:
      size: side of the square images, 64 to 512.
      num_records: length of the source.
      seed: the stream of faces (a non-negative int).
      gender: "all", or "female" / "male" for only faces of that gender.
    """
    self.size = _check_size(size)
    if (isinstance(num_records, bool)
        or not isinstance(num_records, (int, np.integer)) or num_records < 1):
      raise ValueError(f"num_records={num_records!r} must be a positive int")
    if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
        or seed < 0):
      raise ValueError(f"seed={seed!r} must be a non-negative int")
    if gender not in GENDER_FILTERS:
      raise ValueError(f"gender={gender!r} is not one of {GENDER_FILTERS}")
    self.num_records = int(num_records)
    self.seed = int(seed)
    self.gender = gender

  def __len__(self) -> int:
    return self.num_records

  def face_index(self, index: int) -> int:
    """The face drawn for record `index` (see the module docstring)."""
    if self.gender == "female":
      return 2 * index
    if self.gender == "male":
      return 2 * index + 1
    return index

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
      raise TypeError(f"index must be an int, got {type(index).__name__}")
    index = int(index)
    if index < 0:
      index += self.num_records
    if not 0 <= index < self.num_records:
      raise IndexError(f"index {index} out of range for {self!r}")
    return render(self.face_index(index), self.size, self.seed)

  def __repr__(self) -> str:
    return (f"ProceduralFaces(size={self.size}, num_records="
            f"{self.num_records}, seed={self.seed}, gender={self.gender!r})")


def contact_sheet(images: Sequence[np.ndarray], columns: int = 8
                  ) -> np.ndarray:
  """Tiles same-sized [H, W, 3] uint8 images into one image (for looking)."""
  images = [np.asarray(im) for im in images]
  if not images:
    raise ValueError("no images")
  h, w = images[0].shape[:2]
  rows = -(-len(images) // columns)
  sheet = np.full((rows * h, columns * w, 3), 255, np.uint8)
  for i, im in enumerate(images):
    if im.ndim == 2:
      im = np.repeat(im[..., None], 3, -1)
    r, c = divmod(i, columns)
    sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
  return sheet
