"""Boxes for detection, with static shapes: anchors, coding, IoU, NMS, RoIAlign.

Boxes are float `(x1, y1, x2, y2)` in continuous pixel coordinates: pixel
(row i, col j) covers `[j, j + 1) x [i, i + 1)`, so its centre is
`(j + 0.5, i + 0.5)` (torchvision's convention; the landmarks of the data
layer are integer-centred, `box = point + 0.5`). Every function is jittable:
variable numbers of boxes are fixed-size arrays with a `valid` mask, and
selections (NMS, sampling) return fixed numbers of indices.

The constants and rules are torchvision's `maskrcnn_resnet50_fpn`
(../REFERENCE.md section 9), so its COCO weights behave here as there:
anchors rounded to integers, box deltas clipped at log(1000 / 16), RoIAlign
with a fixed sampling ratio (`aligned` as torchvision: False by default).
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# torchvision's clamp of the predicted log width / height change.
BBOX_CLIP = math.log(1000.0 / 16)


def cell_anchors(size: float, ratios: Sequence[float]) -> jax.Array:
  """[A, 4] anchors of one size centred on (0, 0), one per aspect ratio.

  `ratio` is height / width; the area stays `size ** 2`. Rounded to whole
  pixels as torchvision's `AnchorGenerator`.
  """
  ratios = jnp.asarray(ratios, jnp.float32)
  h = jnp.sqrt(ratios)
  ws, hs = size / h, size * h
  return jnp.round(jnp.stack([-ws, -hs, ws, hs], axis=-1) / 2)


def grid_anchors(cell: jax.Array, stride: int, height: int,
                 width: int) -> jax.Array:
  """[height * width * A, 4] anchors of a feature map, row-major, then A.

  The anchors of feature cell (i, j) are `cell` shifted by
  `(j * stride, i * stride)` (torchvision: cell corners, not centres).
  """
  ys = jnp.arange(height, dtype=jnp.float32) * stride
  xs = jnp.arange(width, dtype=jnp.float32) * stride
  y, x = jnp.meshgrid(ys, xs, indexing="ij")
  shifts = jnp.stack([x, y, x, y], axis=-1).reshape(-1, 1, 4)
  return (shifts + cell[None]).reshape(-1, 4)


def _centre_size(boxes):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(reference: jax.Array, target: jax.Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Deltas `(dx, dy, dw, dh)` taking `reference` boxes to `target` boxes.

  `dx = wx * (tx - rx) / rw`, `dw = ww * log(tw / rw)`, as torchvision's
  `BoxCoder` (weights (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box
  head).
  """
  rx, ry, rw, rh = _centre_size(reference)
  tx, ty, tw, th = _centre_size(target)
  wx, wy, ww, wh = weights
  eps = 1e-6  # padding boxes have zero size; their deltas are masked out
  return jnp.stack([
      wx * (tx - rx) / jnp.maximum(rw, eps),
      wy * (ty - ry) / jnp.maximum(rh, eps),
      ww * jnp.log(jnp.maximum(tw, eps) / jnp.maximum(rw, eps)),
      wh * jnp.log(jnp.maximum(th, eps) / jnp.maximum(rh, eps))], axis=-1)


def decode(deltas: jax.Array, reference: jax.Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """The boxes that `deltas` make of `reference` (inverse of `encode`)."""
  rx, ry, rw, rh = _centre_size(reference)
  wx, wy, ww, wh = weights
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, BBOX_CLIP)
  dh = jnp.minimum(deltas[..., 3] / wh, BBOX_CLIP)
  cx, cy = dx * rw + rx, dy * rh + ry
  w, h = jnp.exp(dw) * rw, jnp.exp(dh) * rh
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                   axis=-1)


def clip(boxes: jax.Array, height: int, width: int) -> jax.Array:
  """Boxes clipped to the image `[0, width] x [0, height]`."""
  limit = jnp.array([width, height, width, height], boxes.dtype)
  return jnp.clip(boxes, 0, limit)


def area(boxes: jax.Array) -> jax.Array:
  """[...] areas (0 for empty or inverted boxes)."""
  return (jnp.maximum(boxes[..., 2] - boxes[..., 0], 0)
          * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0))


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """[N, M] intersection over union of boxes a [N, 4] and b [M, 4].

  0 where the union is empty (two zero-size padding boxes).
  """
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = jnp.prod(jnp.maximum(rb - lt, 0), axis=-1)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array,
        iou_threshold: float, max_output: int
        ) -> tuple[jax.Array, jax.Array]:
  """Greedy non-maximum suppression with a fixed number of outputs.

  The kept boxes are those torchvision's `nms` keeps: in order of falling
  score, a box survives unless it overlaps a surviving box by more than
  `iou_threshold`.

  Args:
    boxes: [N, 4].
    scores: [N].
    valid: [N] bool; invalid boxes are never kept and suppress nothing.
    iou_threshold: suppress above this IoU.
    max_output: the number of indices returned.

  Returns:
    (indices [max_output] int32 into `boxes`, by falling score; keep
    [max_output] bool, False for padding entries (whose index is 0)).
  """
  n = boxes.shape[0]
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf))
  sorted_boxes = boxes[order]
  overlaps = iou(sorted_boxes, sorted_boxes) > iou_threshold
  later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
  overlaps &= later

  def body(i, alive):
    # Box i, if alive, suppresses every later box it overlaps.
    return alive & ~(alive[i] & overlaps[i])

  alive = jax.lax.fori_loop(0, n, body, valid[order])
  # The first `max_output` survivors in score order.
  rank = jnp.cumsum(alive) - 1
  slot = jnp.where(alive & (rank < max_output), rank, max_output)
  indices = jnp.zeros((max_output + 1,), jnp.int32).at[slot].set(
      order.astype(jnp.int32))[:max_output]
  keep = jnp.arange(max_output) < jnp.sum(alive)
  return jnp.where(keep, indices, 0), keep


def batched_nms(boxes: jax.Array, scores: jax.Array, groups: jax.Array,
                valid: jax.Array, iou_threshold: float, max_output: int
                ) -> tuple[jax.Array, jax.Array]:
  """`nms` within each group (class, pyramid level) independently.

  Boxes of different groups are moved apart so they never overlap
  (torchvision's coordinate trick).
  """
  offset = groups.astype(boxes.dtype) * (jnp.max(jnp.abs(boxes)) * 2 + 1)
  return nms(boxes + offset[:, None], scores, valid, iou_threshold,
             max_output)


def _sample_weights(start: jax.Array, length: jax.Array, bins: int,
                    sampling: int, size: int) -> jax.Array:
  """[R, bins, size] weights of `size` feature rows for each RoI bin.

  Each bin averages `sampling` bilinear samples at evenly spaced positions;
  torchvision's rules at the border: a sample below -1 or above `size` is
  0; otherwise it is clamped to [0, size - 1].
  """
  bin_len = length / bins                                   # [R]
  b = jnp.arange(bins, dtype=jnp.float32)
  s = (jnp.arange(sampling, dtype=jnp.float32) + 0.5) / sampling
  pos = (start[:, None, None] + (b[None, :, None] + s[None, None, :])
         * bin_len[:, None, None])                          # [R, bins, g]
  inside = (pos >= -1.0) & (pos <= size)
  pos = jnp.clip(pos, 0.0, size - 1)
  low = jnp.floor(pos)
  frac = pos - low
  grid = jnp.arange(size, dtype=jnp.float32)
  w = ((grid == low[..., None]) * (1 - frac[..., None])
       + (grid == jnp.minimum(low + 1, size - 1)[..., None])
       * frac[..., None])                                   # [R, bins, g, S]
  # At the last row low == high: the two weights sum to 1 there.
  return jnp.mean(w * inside[..., None], axis=2)


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int,
              spatial_scale: float, sampling_ratio: int = 2,
              aligned: bool = False) -> jax.Array:
  """RoIAlign of one image's feature map (torchvision's `roi_align`).

  Bilinear sampling is separable, so each output is `Wy @ F @ Wx^T` with
  sparse interpolation matrices: two matmuls per RoI, which suit every
  accelerator and keep shapes static.

  Args:
    features: [H, W, C].
    boxes: [R, 4] in image pixels.
    output_size: bins per side (7 for boxes, 14 for masks).
    spatial_scale: feature cells per image pixel (1 / stride).
    sampling_ratio: samples per bin per side (torchvision's 2; fixed, not
      adaptive, so shapes are static).
    aligned: False: torchvision's default, which its Mask R-CNN (and so
      its COCO weights) uses: box corners scaled as they are, RoIs at
      least one cell wide. True: shifted by half a cell so that pixel
      centres land on feature-cell centres (Detectron2's RoIAlignV2).

  Returns:
    [R, output_size, output_size, C].
  """
  h, w, _ = features.shape
  b = boxes * spatial_scale - (0.5 if aligned else 0.0)
  width, height = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
  if not aligned:
    width, height = jnp.maximum(width, 1.0), jnp.maximum(height, 1.0)
  wy = _sample_weights(b[:, 1], height, output_size, sampling_ratio, h)
  wx = _sample_weights(b[:, 0], width, output_size, sampling_ratio, w)
  wy, wx = wy.astype(features.dtype), wx.astype(features.dtype)
  rows = jnp.einsum("rph,hwc->rpwc", wy, features)
  return jnp.einsum("rpwc,rqw->rpqc", rows, wx)


def match(overlaps: jax.Array, high: float, low: float,
          allow_low_quality: bool) -> tuple[jax.Array, jax.Array]:
  """Assigns each anchor / proposal a ground-truth box (torchvision Matcher).

  Args:
    overlaps: [N, G] IoU of N boxes with G ground-truth boxes; padding
      ground truth has IoU 0 with everything (see `iou`) and must be
      masked to -1 by the caller.
    high: IoU at or above which a box is positive.
    low: IoU below which it is negative; in between it is ignored.
    allow_low_quality: also make positive, for each ground-truth box, the
      boxes of its highest IoU (when that IoU is > 0: a ground-truth box
      that overlaps nothing gives no positive, where torchvision would
      make every zero-IoU box positive).

  Returns:
    (matched [N] int32 index of the best ground-truth box, label [N] int32:
    1 positive, 0 negative, -1 ignored).
  """
  best = jnp.max(overlaps, axis=1)
  matched = jnp.argmax(overlaps, axis=1).astype(jnp.int32)
  label = jnp.where(best >= high, 1, jnp.where(best < low, 0, -1))
  if allow_low_quality:
    per_gt = jnp.max(overlaps, axis=0)                       # [G]
    is_best = (overlaps == per_gt[None]) & (per_gt[None] > 0)
    label = jnp.where(jnp.any(is_best, axis=1), 1, label)
  return matched, label.astype(jnp.int32)


def sample(label: jax.Array, num: int, positive_fraction: float,
           rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A fixed-size random sample of positives and negatives (static shapes).

  At most `num * positive_fraction` positives, negatives filling the rest
  (torchvision's `BalancedPositiveNegativeSampler`).

  Args:
    label: [N] 1 positive, 0 negative, -1 ignored.
    num: the sample size (when N is smaller, the surplus slots are
      invalid).
    positive_fraction: the largest share of positives.
    rng: the draw.

  Returns:
    (indices [num] int32, positive [num] bool, valid [num] bool: False
    where fewer than `num` boxes could be drawn).
  """
  n = label.shape[0]
  if n < num:  # fewer candidates than slots: pad with ignored ones
    label = jnp.pad(label, (0, num - n), constant_values=-1)
  pos, neg = label == 1, label == 0
  num_pos = jnp.minimum(jnp.sum(pos), int(num * positive_fraction))
  num_neg = jnp.minimum(jnp.sum(neg), num - num_pos)
  u = jax.random.uniform(rng, label.shape)

  def rank(members):  # a random order of the members: 0, 1, ...
    order = jnp.argsort(jnp.where(members, -u, jnp.inf))
    return jnp.zeros_like(order).at[order].set(jnp.arange(order.size))

  chosen = ((pos & (rank(pos) < num_pos)) | (neg & (rank(neg) < num_neg)))
  # The chosen boxes first, positives before negatives.
  key = jnp.where(chosen, 2.0 + pos, 0.0) + u
  order = jnp.argsort(-key)[:num].astype(jnp.int32)
  valid = jnp.arange(num) < num_pos + num_neg
  return jnp.minimum(order, n - 1), valid & pos[order], valid
