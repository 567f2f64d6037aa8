"""The AdaptiveWing landmark network: a stacked-hourglass FAN with CoordConv.

Wang, Bo and Fuxin, "Adaptive Wing Loss for Robust Face Alignment via
Heatmap Regression" (ICCV 2019), as released (REFERENCE.md section 7.1):

  image [B, S, S, 3] in [0, 1]
    -> CoordConv 7x7 stride 2 (+ x, y, radius channels) -> BN -> ReLU
    -> ConvBlock(64, 2w) -> avg-pool 2 -> ConvBlock(2w, 2w) -> ConvBlock(2w, w)
  per stack i:
    -> CoordConv 1x1 (+ x, y, radius; stacks 1+ also the two "boundary
       coordinate" channels: x, y where the previous stack's boundary
       heatmap exceeds 0.05)
    -> hourglass (depth 4, avg-pool down, nearest up) -> ConvBlock
    -> 1x1 conv -> BN -> ReLU -> 1x1 conv -> [B, S/4, S/4, K + 1] heatmaps
       (K landmarks, then the boundary heatmap)
    -> next stack's input: previous + 1x1(features) + 1x1(heatmaps)

with w = 256 and K = 98 in the reference (4 stacks: 24,153,036 parameters).
Parameter names follow the reference's state dict (`conv1`, `m0`, `b1_4`,
`top_m_0`, `l0`, ...), so the importer is a renaming (`weights/landmarks`).
Channels-last throughout; BatchNorm statistics live in `batch_stats`.

Also here, what the heatmaps mean (section 7.2-7.3): the training targets
(`gaussian_heatmaps`, `boundary_heatmap`) and the read-out of points
(`decode_argmax`, `decode_soft_argmax`). Heatmap pixel coordinates follow
the resize rule of docs/DEVELOPING.md: image point x is heatmap point
(x + 0.5) / 4 - 0.5, and back x = (h + 0.5) * 4 - 0.5. (The reference draws
its targets at floor(x / 4) and decodes to (h + 0.5) * 4; a point it was
trained on therefore comes back 0.5 px right and down of where this
convention puts it. Its weights still decode to the right place here:
a peak at floor(x / 4) means x in [4h, 4h + 4), centred on (h + 0.5) * 4
- 0.5.)
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.data import curves
from jaxface.models import layers

Dtype = Any

# PyTorch BatchNorm2d: eps 1e-5, running average momentum 0.1.
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.9
# A pixel belongs to the previous stack's boundary where its boundary
# heatmap (clipped to [0, 1]) exceeds this.
BOUNDARY_THRESHOLD = 0.05


def coord_channels(height: int, width: int) -> jax.Array:
  """The CoordConv channels [H, W, 3]: row coordinate, column coordinate, r.

  The first varies along rows (axis 0) and the second along columns, each
  `i / (n - 1) * 2 - 1` in [-1, 1]; r is their Euclidean norm divided by
  its maximum. (The reference calls the first two xx/yy but transposes
  them; this is the order its weights expect.)
  """
  rows = jnp.arange(height, dtype=jnp.float32) / max(height - 1, 1) * 2 - 1
  cols = jnp.arange(width, dtype=jnp.float32) / max(width - 1, 1) * 2 - 1
  c1 = jnp.broadcast_to(rows[:, None], (height, width))
  c2 = jnp.broadcast_to(cols[None, :], (height, width))
  r = jnp.sqrt(c1 * c1 + c2 * c2)
  return jnp.stack([c1, c2, r / jnp.max(r)], axis=-1)


def add_coords(x: jax.Array, boundary: jax.Array | None = None) -> jax.Array:
  """Appends the CoordConv channels to NHWC `x`.

  Args:
    x: [B, H, W, C].
    boundary: the previous stack's boundary heatmap [B, H, W] (raw network
      output), or None for the first stack and the stem.

  Returns:
    [B, H, W, C + 3] or, with `boundary`, [B, H, W, C + 5]: the row and
    column coordinates kept only where clip(boundary, 0, 1) > 0.05.
  """
  b, h, w, _ = x.shape
  coords = jnp.broadcast_to(coord_channels(h, w), (b, h, w, 3))
  parts = [x, coords.astype(x.dtype)]
  if boundary is not None:
    on = (jnp.clip(boundary, 0.0, 1.0) > BOUNDARY_THRESHOLD)[..., None]
    parts.append(jnp.where(on, coords[..., :2], 0.0).astype(x.dtype))
  return jnp.concatenate(parts, axis=-1)


# The reference's convolutions have no bias unless they say so.
_conv = functools.partial(layers.same_conv, use_bias=False)


def _bn(x: jax.Array, train: bool, *, dtype: Dtype, name: str) -> jax.Array:
  """BatchNorm2d with the reference's constants; statistics in float32."""
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                      epsilon=_BN_EPS, dtype=dtype, name=name)(x)


class ConvBlock(nn.Module):
  """Bulat's multi-scale pre-activation residual block.

  Three BN-ReLU-3x3 convolutions with out/2, out/4 and out/4 channels, their
  outputs concatenated (out channels) plus the input, which passes through
  BN-ReLU-1x1 when the channel count changes.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    widths = (self.features // 2, self.features // 4, self.features // 4)
    outs, h = [], x
    for i, width in enumerate(widths, start=1):
      h = _bn(h, train, dtype=self.dtype, name=f"bn{i}")
      h = _conv(width, 3, dtype=self.dtype, name=f"conv{i}")(nn.relu(h))
      outs.append(h)
    residual = x
    if x.shape[-1] != self.features:
      residual = _bn(x, train, dtype=self.dtype, name="downsample_bn")
      residual = _conv(self.features, 1, dtype=self.dtype,
                       name="downsample_conv")(nn.relu(residual))
    return jnp.concatenate(outs, axis=-1) + residual


def _avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 (each pixel repeated into a 2x2 block)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class HourGlass(nn.Module):
  """CoordConv 1x1, then the depth-`depth` hourglass of ConvBlocks.

  Level L (from `depth` down to 1): out = b1_L(x) + up2(b3_L(inner)), where
  inner = the level below applied to b2_L(avg_pool2(x)), or b2_plus_1 at
  the bottom. Names as in the reference state dict.
  """
  features: int
  depth: int = 4
  dtype: Dtype = jnp.float32

  def _level(self, level: int, x: jax.Array, train: bool) -> jax.Array:
    block = lambda name: ConvBlock(self.features, self.dtype, name=name)
    up = block(f"b1_{level}")(x, train)
    low = block(f"b2_{level}")(_avg_pool2(x), train)
    if level > 1:
      low = self._level(level - 1, low, train)
    else:
      low = block(f"b2_plus_{level}")(low, train)
    low = block(f"b3_{level}")(low, train)
    return up + _upsample2(low)

  @nn.compact
  def __call__(self, x: jax.Array, boundary: jax.Array | None,
               train: bool) -> jax.Array:
    x = nn.Conv(self.features, (1, 1), dtype=self.dtype,
                name="coordconv")(add_coords(x, boundary))
    return self._level(self.depth, x, train)


class FAN(nn.Module):
  """The stacked-hourglass landmark network.

  Attributes:
    num_stacks: hourglasses (4 in the reference; 1-4 sensible).
    num_landmarks: landmark heatmaps per stack (98, WFLW); one boundary
      heatmap is added.
    width: channels of the hourglasses (256 in the reference); the stem
      uses width / 2 (and 64 for its first convolution, as the reference).
    depth: hourglass recursion depth (4: down to 1/64 of the input).
    stem_width: channels of the 7x7 stem convolution.
    dtype: compute dtype; parameters and BatchNorm statistics are float32.
  """
  num_stacks: int = 4
  num_landmarks: int = 98
  width: int = 256
  depth: int = 4
  stem_width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False) -> list[jax.Array]:
    """Heatmaps of every stack.

    Args:
      image: [B, S, S, 3] RGB in [0, 1], S divisible by 4 * 2**depth.
      train: batch statistics (and their update) instead of running ones.

    Returns:
      `num_stacks` float32 arrays [B, S/4, S/4, num_landmarks + 1]; the last
      channel is the boundary heatmap. Inference uses the last stack.
    """
    x = _conv(self.stem_width, 7, stride=2, use_bias=True, dtype=self.dtype,
              name="conv1")(add_coords(image.astype(self.dtype)))
    x = nn.relu(_bn(x, train, dtype=self.dtype, name="bn1"))
    x = _avg_pool2(ConvBlock(self.width // 2, self.dtype, name="conv2")(
        x, train))
    x = ConvBlock(self.width // 2, self.dtype, name="conv3")(x, train)
    previous = ConvBlock(self.width, self.dtype, name="conv4")(x, train)

    outputs, heatmaps = [], None
    for i in range(self.num_stacks):
      boundary = None if heatmaps is None else heatmaps[..., -1]
      hg = HourGlass(self.width, self.depth, self.dtype, name=f"m{i}")(
          previous, boundary, train)
      ll = ConvBlock(self.width, self.dtype, name=f"top_m_{i}")(hg, train)
      ll = nn.Conv(self.width, (1, 1), dtype=self.dtype,
                   name=f"conv_last{i}")(ll)
      ll = nn.relu(_bn(ll, train, dtype=self.dtype, name=f"bn_end{i}"))
      heatmaps = nn.Conv(self.num_landmarks + 1, (1, 1), dtype=self.dtype,
                         name=f"l{i}")(ll)
      outputs.append(heatmaps.astype(jnp.float32))
      if i < self.num_stacks - 1:
        previous = (previous
                    + nn.Conv(self.width, (1, 1), dtype=self.dtype,
                              name=f"bl{i}")(ll)
                    + nn.Conv(self.width, (1, 1), dtype=self.dtype,
                              name=f"al{i}")(heatmaps))
    return outputs


def heatmap_size(image_size: int) -> int:
  """The side of the heatmaps for a square input of `image_size`."""
  return image_size // 4


# ------------------------------------------------------------- targets
# Heatmap targets: a Gaussian of std 1.75 heatmap px with peak 1, inside a
# 7x7 window around the point (the reference's `draw_gaussian` with
# sigma = 1: size 6 * sigma + 1 = 7, std = 0.25 * size).
HEATMAP_SIGMA = 1.75
HEATMAP_HALF_WINDOW = 3.5
# The boundary heatmap: exp(-d^2 / 2) within 3 heatmap px of a curve.
BOUNDARY_SIGMA = 1.0
BOUNDARY_RADIUS = 3.0

# The 13 landmark curves of the reference's WFLW boundary heatmap.
BOUNDARY_CURVES = (
    tuple(range(0, 33)),                  # cheek
    tuple(range(33, 38)),                 # image-left brow, upper edge
    tuple(range(42, 47)),                 # image-right brow, upper edge
    tuple(range(60, 65)),                 # image-left upper eyelid
    (60, 67, 66, 65, 64),                 # image-left lower eyelid
    tuple(range(68, 73)),                 # image-right upper eyelid
    (68, 75, 74, 73, 72),                 # image-right lower eyelid
    tuple(range(51, 55)),                 # nose bridge
    tuple(range(55, 60)),                 # nose bottom
    tuple(range(76, 83)),                 # upper outer lip
    (88, 89, 90, 91, 92),                 # upper inner lip
    (76, 87, 86, 85, 84, 83, 82),         # lower outer lip
    (88, 95, 94, 93, 92),                 # lower inner lip
)
# Catmull-Rom samples per landmark-to-landmark segment of a curve.
_CURVE_SAMPLES = 4


def _curve_segments(num_landmarks: int) -> tuple[np.ndarray, np.ndarray]:
  """Linear maps from landmarks to the ends of every curve segment.

  The boundary curves are Catmull-Rom splines through their landmarks, a
  linear function of the points; sampled densely they become segments
  whose start and end points are `starts @ landmarks` and `ends @
  landmarks`.

  Returns:
    (starts, ends): [S, num_landmarks] float32 matrices.
  """
  starts, ends = [], []
  for curve in BOUNDARY_CURVES:
    n = len(curve)
    # catmull_rom is linear in its points: map each basis vector through it.
    basis = np.zeros((n, 2))
    weights = []
    for k in range(n):
      basis[:] = 0
      basis[k, 0] = 1
      weights.append(curves.catmull_rom(basis, _CURVE_SAMPLES)[:, 0])
    w = np.zeros((len(weights[0]), num_landmarks))
    w[:, list(curve)] = np.stack(weights, -1)  # [samples, K]
    starts.append(w[:-1])
    ends.append(w[1:])
  return (np.concatenate(starts).astype(np.float32),
          np.concatenate(ends).astype(np.float32))


def to_heatmap_coords(landmarks: jax.Array, image_size: int,
                      size: int) -> jax.Array:
  """Image pixel (x, y) -> heatmap pixel (x, y) (the resize rule)."""
  return (landmarks + 0.5) * (size / image_size) - 0.5


def from_heatmap_coords(points: jax.Array, size: int,
                        image_size: int) -> jax.Array:
  """Heatmap pixel (x, y) -> image pixel (x, y)."""
  return (points + 0.5) * (image_size / size) - 0.5


def gaussian_heatmaps(points: jax.Array, size: int) -> jax.Array:
  """One Gaussian per point, peak 1, std 1.75 px, in a 7x7 window.

  Args:
    points: [B, K, 2] heatmap pixel (x, y); non-finite points give empty
      maps.
    size: the heatmap side.

  Returns:
    [B, size, size, K] float32.
  """
  grid = jnp.arange(size, dtype=jnp.float32)
  finite = jnp.all(jnp.isfinite(points), axis=-1)  # [B, K]
  points = jnp.where(finite[..., None], points, -1e4)
  dx = grid[None, None, :] - points[..., 0:1]  # [B, K, W]
  dy = grid[None, None, :] - points[..., 1:2]  # [B, K, H]

  def profile(d):
    g = jnp.exp(-d * d / (2 * HEATMAP_SIGMA ** 2))
    # Strict: at most 7 pixels per axis, even for a point at x.5.
    return jnp.where(jnp.abs(d) < HEATMAP_HALF_WINDOW, g, 0.0)

  # Separable: [B, K, H, 1] * [B, K, 1, W] -> [B, H, W, K].
  maps = profile(dy)[..., :, None] * profile(dx)[..., None, :]
  return jnp.moveaxis(maps, 1, -1)


def boundary_heatmap(points: jax.Array, size: int) -> jax.Array:
  """The boundary target: exp(-d^2 / 2) within 3 px of the face's curves.

  d is the distance of a heatmap pixel centre to the nearest of the 13
  landmark curves (`BOUNDARY_CURVES`, Catmull-Rom splines sampled as short
  segments): the reference's distance transform of the plotted curves,
  computed exactly instead of on a raster. Segments with a non-finite end
  are left out.

  Args:
    points: [B, K, 2] heatmap pixel (x, y) of all landmarks (K = 98).
    size: the heatmap side.

  Returns:
    [B, size, size] float32 in [0, 1].
  """
  starts, ends = _curve_segments(points.shape[1])
  finite = jnp.all(jnp.isfinite(points), axis=-1)  # [B, K]
  uses = (starts != 0) | (ends != 0)  # [S, K]
  valid = jnp.all(finite[:, None, :] | ~uses[None], axis=-1)  # [B, S]
  safe = jnp.where(finite[..., None], points, 0.0)
  a = jnp.einsum("sk,bkc->bsc", starts, safe)  # [B, S, 2]
  b = jnp.einsum("sk,bkc->bsc", ends, safe)
  grid = jnp.arange(size, dtype=jnp.float32)
  pix = jnp.stack(jnp.meshgrid(grid, grid, indexing="xy"), -1)  # [H, W, 2]
  pix = pix.reshape(1, -1, 1, 2)  # [1, P, 1, 2]
  ab = (b - a)[:, None]  # [B, 1, S, 2]
  ap = pix - a[:, None]  # [B, P, S, 2]
  t = jnp.clip(jnp.sum(ap * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1),
                                                  1e-12), 0.0, 1.0)
  d2 = jnp.sum(jnp.square(ap - t[..., None] * ab), -1)  # [B, P, S]
  d2 = jnp.min(jnp.where(valid[:, None, :], d2, jnp.inf), axis=-1)
  value = jnp.exp(-d2 / (2 * BOUNDARY_SIGMA ** 2))
  value = jnp.where(d2 < BOUNDARY_RADIUS ** 2, value, 0.0)
  return value.reshape(-1, size, size)


def targets(landmarks: jax.Array, image_size: int, size: int) -> jax.Array:
  """The training target of every stack: landmark heatmaps + boundary.

  Args:
    landmarks: [B, K, 2] image pixel (x, y).
    image_size: the side of the network's input.
    size: the heatmap side.

  Returns:
    [B, size, size, K + 1] float32 (the last channel is the boundary).
  """
  points = to_heatmap_coords(landmarks.astype(jnp.float32), image_size, size)
  return jnp.concatenate([gaussian_heatmaps(points, size),
                          boundary_heatmap(points, size)[..., None]], -1)


# ------------------------------------------------------------ decoding
def decode_argmax(heatmaps: jax.Array, image_size: int) -> jax.Array:
  """Points from heatmaps: the argmax moved a quarter pixel uphill.

  The reference's read-out: at the maximum (x, y) of each map, add
  0.25 * sign(h[y, x+1] - h[y, x-1]) to x (and likewise to y) unless the
  maximum lies on the border; then map heatmap to image pixels.

  Args:
    heatmaps: [B, h, w, K] (landmark channels only).
    image_size: the side of the image the points are returned in.

  Returns:
    [B, K, 2] float32 image pixel (x, y).
  """
  b, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, -1)
  index = jnp.argmax(flat, axis=-1)  # [B, K]
  y, x = index // w, index % w

  def at(yy, xx):
    yy, xx = jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)
    return jnp.take_along_axis(flat, (yy * w + xx)[..., None], -1)[..., 0]

  inside = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
  sx = jnp.where(inside, jnp.sign(at(y, x + 1) - at(y, x - 1)), 0.0)
  sy = jnp.where(inside, jnp.sign(at(y + 1, x) - at(y - 1, x)), 0.0)
  points = jnp.stack([x + 0.25 * sx, y + 0.25 * sy], -1)
  return from_heatmap_coords(points, w, image_size)


def decode_soft_argmax(heatmaps: jax.Array, image_size: int,
                       temperature: float = 0.05) -> jax.Array:
  """Differentiable points: the expected position under softmax(h / T).

  For the fused pipeline when gradients must pass through the landmarks.
  With the default temperature a trained map's mass stays within a pixel
  or two of its peak.

  Args:
    heatmaps: [B, h, w, K] (landmark channels only).
    image_size: the side of the image the points are returned in.
    temperature: softmax temperature in heatmap units (peaks are ~1).

  Returns:
    [B, K, 2] float32 image pixel (x, y).
  """
  b, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, -1)
  p = jax.nn.softmax(flat / temperature, axis=-1).reshape(b, k, h, w)
  x = jnp.sum(jnp.sum(p, axis=2) * jnp.arange(w, dtype=jnp.float32), -1)
  y = jnp.sum(jnp.sum(p, axis=3) * jnp.arange(h, dtype=jnp.float32), -1)
  return from_heatmap_coords(jnp.stack([x, y], -1), w, image_size)
