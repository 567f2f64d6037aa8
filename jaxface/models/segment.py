"""Face-mask segmentation networks: Mask R-CNN (ResNet-50-FPN) and a U-Net.

Mask R-CNN is torchvision's `maskrcnn_resnet50_fpn` (../REFERENCE.md
section 9) restated with static shapes, so that training and inference are
each one jitted function at any batch size:

  ResNet-50 -> FPN (P2-P6, 256 channels) -> RPN (3 anchors per cell, sizes
  32-512) -> top-k per level, NMS, a fixed number of proposals -> RoIAlign
  7x7 -> two FC 1024 -> class scores and class-specific boxes -> a fixed
  number of detections -> RoIAlign 14x14 -> 4 conv + transposed conv ->
  28x28 masks -> pasted into the image -> the binary map M (the union of
  the face-mask detections above a score threshold, optionally dilated).

Variable-size sets (proposals, ground-truth boxes, detections) are arrays
of a fixed size with a `valid` mask; `jaxface.boxes` has the geometry.
Classes: 0 background, 1 face mask, 2 face.

`UNet` is the fast alternative: one pass, a logit of M per pixel.

Submodule and parameter names follow torchvision's state dict (dots become
underscores in the flax tree) so that `jaxface.weights.segment` maps COCO
checkpoints by name.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface import boxes as box_ops
from jaxface.models import layers

Dtype = Any

BACKGROUND, FACE_MASK, FACE = 0, 1, 2
CLASSES = ("background", "face_mask", "face")
# Normalisation of the input (torchvision's GeneralizedRCNNTransform).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
# Anchor sizes of P2-P6 and the aspect ratios (height / width) at each.
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
STRIDES = (4, 8, 16, 32, 64)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
NORMS = ("frozen", "batch", "group")
MASK_SIZE = 28


# ---------------------------------------------------------------- backbone
class Norm(nn.Module):
  """The backbone's normalisation.

  "frozen": torchvision's FrozenBatchNorm2d, `(x - mean) / sqrt(var + eps)
  * weight + bias` with all four tensors fixed (in `batch_stats`, never
  trained: COCO checkpoints are used this way); "batch": BatchNorm with
  statistics of the batch in training; "group": GroupNorm (32 groups),
  for training from scratch at small batches.
  """
  kind: str = "frozen"
  epsilon: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    if self.kind == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                          epsilon=self.epsilon or 1e-5, dtype=self.dtype)(x)
    if self.kind == "group":
      return nn.GroupNorm(num_groups=min(32, c), epsilon=self.epsilon or 1e-5,
                          dtype=self.dtype)(x)
    stats = {name: self.variable("batch_stats", name, init, (c,)).value
             for name, init in (("scale", jnp.ones), ("bias", jnp.zeros),
                                ("mean", jnp.zeros), ("var", jnp.ones))}
    scale = stats["scale"] * jax.lax.rsqrt(stats["var"] + self.epsilon)
    shift = stats["bias"] - stats["mean"] * scale
    return x * scale.astype(self.dtype) + shift.astype(self.dtype)


_conv = layers.same_conv


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck (the stride on the 3x3 convolution)."""
  planes: int
  stride: int = 1
  downsample: bool = False
  norm: str = "frozen"
  epsilon: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def norm(name):
      return Norm(self.norm, self.epsilon, self.dtype, name=name)

    y = _conv(self.planes, 1, use_bias=False, dtype=self.dtype,
              name="conv1")(x)
    y = nn.relu(norm("bn1")(y, train))
    y = _conv(self.planes, 3, stride=self.stride, use_bias=False,
              dtype=self.dtype, name="conv2")(y)
    y = nn.relu(norm("bn2")(y, train))
    y = _conv(self.planes * 4, 1, use_bias=False, dtype=self.dtype,
              name="conv3")(y)
    y = norm("bn3")(y, train)
    if self.downsample:
      x = _conv(self.planes * 4, 1, stride=self.stride, use_bias=False,
                dtype=self.dtype, name="downsample_0")(x)
      x = norm("downsample_1")(x, train)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet body -> [C2, C3, C4, C5] (strides 4, 8, 16, 32).

  Attributes:
    stage_sizes: bottlenecks per stage ((3, 4, 6, 3): ResNet-50).
    width: the stem's channels; stage s has `width * 2**s` planes.
    norm: "frozen" | "batch" | "group" (`Norm`).
    epsilon: of the norm (torchvision's COCO Mask R-CNN: frozen, eps 0).
    freeze_at: 0 trains everything; 1 freezes the stem; 2 the stem and
      the first stage (torchvision's default for fine-tuning: 3 trainable
      stages); gradients stop at that output.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  norm: str = "frozen"
  epsilon: float = 0.0
  freeze_at: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    x = _conv(self.width, 7, stride=2, use_bias=False, dtype=self.dtype,
              name="conv1")(x.astype(self.dtype))
    x = nn.relu(Norm(self.norm, self.epsilon, self.dtype, name="bn1")(
        x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    features = []
    for s, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        x = Bottleneck(self.width * 2 ** s, stride=2 if (s and not b) else 1,
                       downsample=b == 0, norm=self.norm,
                       epsilon=self.epsilon, dtype=self.dtype,
                       name=f"layer{s + 1}_{b}")(x, train)
      if self.freeze_at >= s + 2:
        x = jax.lax.stop_gradient(x)
      features.append(x)
    return features


class FPN(nn.Module):
  """Feature pyramid: [C2..C5] -> [P2..P6], `channels` each.

  1x1 lateral convolutions, nearest-neighbour top-down upsampling, 3x3
  output convolutions, and P6 = stride-2 subsampling of P5
  (torchvision's LastLevelMaxPool, kernel 1).
  """
  channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
    n = len(features)
    inner = [_conv(self.channels, 1, dtype=self.dtype,
                   name=f"inner_blocks_{i}")(f)
             for i, f in enumerate(features)]
    outputs = [None] * n
    last = inner[-1]
    outputs[-1] = _conv(self.channels, 3, dtype=self.dtype,
                        name=f"layer_blocks_{n - 1}")(last)
    for i in range(n - 2, -1, -1):
      h, w = inner[i].shape[1:3]
      # Nearest upsampling to the lateral's size (x2 for even sizes).
      rows = jnp.arange(h) * last.shape[1] // h
      cols = jnp.arange(w) * last.shape[2] // w
      last = inner[i] + last[:, rows][:, :, cols]
      outputs[i] = _conv(self.channels, 3, dtype=self.dtype,
                         name=f"layer_blocks_{i}")(last)
    outputs.append(outputs[-1][:, ::2, ::2])
    return outputs


class Backbone(nn.Module):
  """ResNet body + FPN (torchvision's `backbone.body` / `backbone.fpn`)."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  fpn_channels: int = 256
  norm: str = "frozen"
  epsilon: float = 0.0
  freeze_at: int = 0
  dtype: Dtype = jnp.float32

  def setup(self):
    self.body = ResNet(self.stage_sizes, self.width, self.norm, self.epsilon,
                       self.freeze_at, self.dtype)
    self.fpn = FPN(self.fpn_channels, self.dtype)

  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    return self.fpn(self.body(x, train))


# --------------------------------------------------------------------- RPN
class RPNHead(nn.Module):
  """Shared 3x3 conv + ReLU, then objectness [A] and deltas [4A] per cell."""
  num_anchors: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
    """[P2..P6] -> (logits [B, N], deltas [B, N, 4]) over all anchors."""
    channels = features[0].shape[-1]
    conv = _conv(channels, 3, dtype=self.dtype, name="conv")
    cls = _conv(self.num_anchors, 1, dtype=self.dtype, name="cls_logits")
    reg = _conv(4 * self.num_anchors, 1, dtype=self.dtype, name="bbox_pred")
    logits, deltas = [], []
    for f in features:
      t = nn.relu(conv(f))
      b = f.shape[0]
      logits.append(cls(t).reshape(b, -1))
      deltas.append(reg(t).reshape(b, -1, 4))
    return (jnp.concatenate(logits, 1).astype(jnp.float32),
            jnp.concatenate(deltas, 1).astype(jnp.float32))


def anchors(image_size: int, num_levels: int = 5) -> tuple[jax.Array, ...]:
  """Per level [h * w * 3, 4] anchors of a square image (P2 upwards)."""
  out = []
  for level in range(num_levels):
    stride = STRIDES[level]
    cells = -(-image_size // stride)
    out.append(box_ops.grid_anchors(
        box_ops.cell_anchors(ANCHOR_SIZES[level], ASPECT_RATIOS), stride,
        cells, cells))
  return tuple(out)


def propose(logits: jax.Array, deltas: jax.Array,
            level_anchors: Sequence[jax.Array], image_size: int, *,
            pre_nms: int, post_nms: int, nms_threshold: float = 0.7,
            min_size: float = 1e-3) -> tuple[jax.Array, jax.Array]:
  """RPN proposals of one image, a fixed number of them.

  The `pre_nms` best anchors of each level, decoded and clipped; tiny
  boxes dropped; NMS within each level; the `post_nms` best overall
  (torchvision's `RegionProposalNetwork.filter_proposals`).

  Args:
    logits: [N] objectness over all anchors (levels concatenated).
    deltas: [N, 4].
    level_anchors: per level [n_l, 4], sum n_l = N.
    image_size: the square image's side.
    pre_nms, post_nms: top-k before NMS (per level) and after (overall).
    nms_threshold: IoU.
    min_size: boxes narrower or lower than this are dropped.

  Returns:
    (boxes [post_nms, 4], valid [post_nms]).
  """
  all_boxes, all_scores, all_levels = [], [], []
  start = 0
  for level, a in enumerate(level_anchors):
    n = a.shape[0]
    k = min(pre_nms, n)
    score, idx = jax.lax.top_k(logits[start:start + n], k)
    b = box_ops.clip(
        box_ops.decode(deltas[start:start + n][idx], a[idx], RPN_WEIGHTS),
        image_size, image_size)
    all_boxes.append(b)
    all_scores.append(score)
    all_levels.append(jnp.full((k,), level, jnp.int32))
    start += n
  b = jnp.concatenate(all_boxes)
  s = jnp.concatenate(all_scores)
  lv = jnp.concatenate(all_levels)
  ok = (((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
        & jnp.isfinite(s))
  keep, valid = box_ops.batched_nms(b, s, lv, ok, nms_threshold, post_nms)
  return b[keep], valid


# ----------------------------------------------------------------- RoI ops
def roi_levels(rois: jax.Array, num_levels: int = 4) -> jax.Array:
  """[R] pyramid level (0 = P2) of each RoI: floor(4 + log2(sqrt(a) / 224)).

  torchvision's LevelMapper (canonical size 224 at P4, eps 1e-6), clamped
  to P2-P5.
  """
  scale = jnp.sqrt(jnp.maximum(box_ops.area(rois), 1e-12))
  k = jnp.floor(4 + jnp.log2(scale / 224.0) + 1e-6)
  return (jnp.clip(k, 2, 1 + num_levels) - 2).astype(jnp.int32)


def multiscale_roi_align(features: Sequence[jax.Array], rois: jax.Array,
                         output_size: int, sampling_ratio: int = 2,
                         aligned: bool = False) -> jax.Array:
  """RoIAlign of each RoI from its level of P2-P5 (one image).

  Args:
    features: [P2, P3, P4, P5], each [h, w, C] (P6 is not pooled).
    rois: [R, 4] image pixels.
    output_size, sampling_ratio, aligned: as `boxes.roi_align`
      (torchvision's MultiScaleRoIAlign: sampling 2, not aligned).

  Returns:
    [R, output_size, output_size, C].
  """
  level = roi_levels(rois, len(features))
  out = 0.0
  for i, f in enumerate(features):
    pooled = box_ops.roi_align(f, rois, output_size, 1.0 / STRIDES[i],
                               sampling_ratio, aligned)
    out = out + pooled * (level == i)[:, None, None, None].astype(f.dtype)
  return out


class BoxHead(nn.Module):
  """TwoMLPHead (fc6, fc7) and the FastRCNNPredictor (cls_score, bbox_pred).

  Flattening is channel-major as PyTorch's NCHW `flatten(1)`, so fc6's
  weights import unchanged.
  """
  num_classes: int = len(CLASSES)
  hidden: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[R, 7, 7, C] -> (logits [R, classes], deltas [R, classes, 4])."""
    x = pooled.transpose(0, 3, 1, 2).reshape(pooled.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc6")(x))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc7")(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      name="cls_score")(x)
    deltas = nn.Dense(4 * self.num_classes, dtype=self.dtype,
                      name="bbox_pred")(x)
    return (logits.astype(jnp.float32),
            deltas.reshape(-1, self.num_classes, 4).astype(jnp.float32))


class MaskHead(nn.Module):
  """mask_fcn1..4 (3x3, ReLU), conv5_mask (2x2 stride-2 transposed, ReLU),
  mask_fcn_logits (1x1): [R, 14, 14, C] -> [R, 28, 28, classes] logits."""
  num_classes: int = len(CLASSES)
  channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    x = pooled
    for i in range(1, 5):
      x = nn.relu(_conv(self.channels, 3, dtype=self.dtype,
                        name=f"mask_fcn{i}")(x))
    # A 2x2 stride-2 transposed convolution places each input's 2x2
    # products in its own output block: a 1x1 convolution to 4 * C
    # channels, interleaved. Kernel stored as torch's (in, out, 2, 2)
    # permuted to (2, 2, out, in), flax's transpose_kernel layout.
    kernel = self.param("conv5_mask_kernel", nn.initializers.lecun_normal(),
                        (2, 2, self.channels, x.shape[-1]))
    bias = self.param("conv5_mask_bias", nn.initializers.zeros_init(),
                      (self.channels,))
    r, h, w, _ = x.shape
    y = jnp.einsum("rhwi,aboi->rhawbo", x, kernel.astype(self.dtype))
    x = nn.relu(y.reshape(r, 2 * h, 2 * w, self.channels)
                + bias.astype(self.dtype))
    return _conv(self.num_classes, 1, dtype=self.dtype,
                 name="mask_fcn_logits")(x).astype(jnp.float32)


# ------------------------------------------------------------------ losses
def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth L1 (torchvision's, beta 1/9 for RPN and box head)."""
  a = jnp.abs(x)
  return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def bce_with_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy of logits (numerically stable)."""
  return (jnp.maximum(logits, 0) - logits * target
          + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def _gt_iou(candidates, gt_boxes, gt_valid):
  overlaps = box_ops.iou(candidates, gt_boxes)
  return jnp.where(gt_valid[None, :], overlaps, -1.0)


def rpn_loss(logits: jax.Array, deltas: jax.Array, anchors_: jax.Array,
             gt_boxes: jax.Array, gt_valid: jax.Array, rng: jax.Array, *,
             num_samples: int = 256, positive_fraction: float = 0.5
             ) -> tuple[jax.Array, jax.Array]:
  """(objectness, box) losses of one image's RPN, torchvision's normalisation.

  Anchors match at IoU >= 0.7 (and each ground-truth box's best anchors),
  are negative below 0.3; `num_samples` are drawn, half positive at most;
  BCE over the drawn, smooth L1 (beta 1/9) over the drawn positives, both
  divided by the number drawn.
  """
  matched, label = box_ops.match(_gt_iou(anchors_, gt_boxes, gt_valid),
                                 0.7, 0.3, allow_low_quality=True)
  idx, positive, valid = box_ops.sample(label, num_samples,
                                        positive_fraction, rng)
  count = jnp.maximum(jnp.sum(valid), 1)
  obj = jnp.sum(bce_with_logits(logits[idx], positive.astype(jnp.float32))
                * valid) / count
  target = box_ops.encode(anchors_[idx], gt_boxes[matched[idx]], RPN_WEIGHTS)
  reg = jnp.sum(smooth_l1(deltas[idx] - target, 1.0 / 9).sum(-1)
                * positive) / count
  return obj, reg


def sample_rois(proposals: jax.Array, proposal_valid: jax.Array,
                gt_boxes: jax.Array, gt_classes: jax.Array,
                gt_valid: jax.Array, rng: jax.Array, *, num_samples: int,
                positive_fraction: float):
  """The RoIs the box and mask heads train on (one image).

  The ground-truth boxes join the proposals; RoIs match at IoU >= 0.5
  (else background); `num_samples` drawn, a quarter positive at most.

  Returns:
    dict of rois [S, 4], classes [S] (0 for background), matched [S]
    (ground-truth index), positive [S], valid [S].
  """
  cand = jnp.concatenate([proposals, gt_boxes])
  cand_valid = jnp.concatenate([proposal_valid, gt_valid])
  overlaps = jnp.where(cand_valid[:, None],
                       _gt_iou(cand, gt_boxes, gt_valid), -1.0)
  matched, label = box_ops.match(overlaps, 0.5, 0.5, allow_low_quality=False)
  # Invalid candidates (padding) are neither positive nor negative.
  label = jnp.where(cand_valid, label, -1)
  idx, positive, valid = box_ops.sample(label, num_samples,
                                        positive_fraction, rng)
  m = matched[idx]
  return {"rois": cand[idx], "classes": jnp.where(positive, gt_classes[m], 0),
          "matched": m, "positive": positive, "valid": valid}


def box_head_loss(logits: jax.Array, deltas: jax.Array, s: dict,
                  gt_boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(classification, box) losses of the sampled RoIs of one image.

  Cross-entropy over the drawn RoIs; smooth L1 (beta 1/9) of the matched
  class's deltas (weights 10/10/5/5) over the positives; both divided by
  the number drawn.
  """
  count = jnp.maximum(jnp.sum(s["valid"]), 1)
  logp = jax.nn.log_softmax(logits)
  ce = -jnp.take_along_axis(logp, s["classes"][:, None], 1)[:, 0]
  cls = jnp.sum(ce * s["valid"]) / count
  target = box_ops.encode(s["rois"], gt_boxes[s["matched"]], BOX_WEIGHTS)
  pred = jnp.take_along_axis(deltas, s["classes"][:, None, None], 1)[:, 0]
  reg = jnp.sum(smooth_l1(pred - target, 1.0 / 9).sum(-1)
                * s["positive"]) / count
  return cls, reg


def mask_targets(instance_map: jax.Array, rois: jax.Array,
                 gt_boxes: jax.Array, size: int = MASK_SIZE,
                 aligned: bool = False) -> jax.Array:
  """[R, size, size] binary targets: the map inside each matched box.

  `instance_map` [H, W] holds the masks of all instances of one class; the
  instance of RoI r is the part inside its ground-truth box `gt_boxes[r]`
  (the synthetic scenes never overlap two face masks). The map is RoIAligned
  over the RoI (as torchvision's `project_masks_on_boxes`), multiplied by
  whether each bin centre lies in the ground-truth box, and thresholded at
  0.5. `aligned` as the features' RoIAlign.
  """
  pooled = box_ops.roi_align(instance_map[..., None], rois, size, 1.0,
                             aligned=aligned)[..., 0]
  t = (jnp.arange(size) + 0.5) / size
  xs = rois[:, None, 0] + t[None] * (rois[:, None, 2] - rois[:, None, 0])
  ys = rois[:, None, 1] + t[None] * (rois[:, None, 3] - rois[:, None, 1])
  in_x = (xs >= gt_boxes[:, None, 0]) & (xs <= gt_boxes[:, None, 2])
  in_y = (ys >= gt_boxes[:, None, 1]) & (ys <= gt_boxes[:, None, 3])
  inside = in_y[:, :, None] & in_x[:, None, :]
  return ((pooled * inside) >= 0.5).astype(jnp.float32)


def mask_loss(mask_logits: jax.Array, classes: jax.Array,
              targets: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean BCE of the matched class's 28x28 logits over weighted RoIs.

  Args:
    mask_logits: [R, 28, 28, classes].
    classes: [R] the class whose channel is supervised.
    targets: [R, 28, 28].
    weight: [R] 1 for supervised RoIs (positives with a mask), else 0.
  """
  logits = jnp.take_along_axis(mask_logits, classes[:, None, None, None],
                               -1)[..., 0]
  per_roi = bce_with_logits(logits, targets).mean((1, 2))
  return jnp.sum(per_roi * weight) / jnp.maximum(jnp.sum(weight), 1)


# ------------------------------------------------------------ postprocess
def detect(logits: jax.Array, deltas: jax.Array, rois: jax.Array,
           roi_valid: jax.Array, image_size: int, *, score_threshold: float,
           nms_threshold: float, max_detections: int,
           min_size: float = 1e-2) -> dict[str, jax.Array]:
  """Class-specific boxes, scores and NMS per class (one image).

  torchvision's `postprocess_detections`: softmax scores, the deltas of
  each foreground class decoded and clipped, scores below the threshold
  and tiny boxes dropped, NMS within each class, the best
  `max_detections`.

  Returns:
    {boxes [D, 4], scores [D], classes [D] int32, valid [D]}.
  """
  r, c = logits.shape
  scores = jax.nn.softmax(logits)[:, 1:]                     # [R, C - 1]
  b = box_ops.clip(box_ops.decode(deltas[:, 1:], rois[:, None], BOX_WEIGHTS),
                   image_size, image_size)                   # [R, C - 1, 4]
  classes = jnp.broadcast_to(jnp.arange(1, c), (r, c - 1))
  b, scores, classes = b.reshape(-1, 4), scores.reshape(-1), classes.ravel()
  ok = (jnp.repeat(roi_valid, c - 1) & (scores > score_threshold)
        & ((b[:, 2] - b[:, 0]) >= min_size)
        & ((b[:, 3] - b[:, 1]) >= min_size))
  keep, valid = box_ops.batched_nms(b, scores, classes, ok, nms_threshold,
                                    max_detections)
  return {"boxes": b[keep], "scores": jnp.where(valid, scores[keep], 0.0),
          "classes": jnp.where(valid, classes[keep], 0).astype(jnp.int32),
          "valid": valid}


def _paste_weights(start, end, size, mask_size):
  """[D, size, mask_size]: bilinear weights of mask cells at image pixels.

  Pixel centres p + 0.5 inside [start, end) sample the mask, stretched
  over the box, at cell coordinate ((p + 0.5 - start) / (end - start)) *
  m - 0.5 (half-pixel, as resizing the mask to the box); outside: 0.
  """
  p = jnp.arange(size, dtype=jnp.float32) + 0.5
  extent = jnp.maximum(end - start, 1e-6)[:, None]
  u = (p[None] - start[:, None]) / extent * mask_size - 0.5   # [D, size]
  inside = (p[None] >= start[:, None]) & (p[None] < end[:, None])
  u = jnp.clip(u, 0, mask_size - 1)
  cells = jnp.arange(mask_size, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(u[..., None] - cells))
  return w * inside[..., None]


def paste_masks(masks: jax.Array, boxes: jax.Array, height: int,
                width: int) -> jax.Array:
  """[D, height, width] probabilities: each 28x28 mask stretched into its box.

  As torchvision's `paste_masks_in_image`: the mask gets a border of zero
  cells and the box grows by (M + 2) / M to hold it, so a probability
  falls to half the edge cell's at the box's edge and to 0 half a cell
  beyond (torchvision then rounds the grown box to whole pixels; here it
  stays exact). Separable bilinear resampling (`Wy @ m @ Wx^T`); no loops,
  static shapes.
  """
  m = masks.shape[-1]
  padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))
  grow = (m + 2) / m
  cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
  hw = (boxes[:, 2] - boxes[:, 0]) * grow / 2
  hh = (boxes[:, 3] - boxes[:, 1]) * grow / 2
  wy = _paste_weights(cy - hh, cy + hh, height, m + 2)
  wx = _paste_weights(cx - hw, cx + hw, width, m + 2)
  return jnp.einsum("dhm,dmn,dwn->dhw", wy, padded, wx)


def dilate(binary: jax.Array, pixels: int) -> jax.Array:
  """[B, H, W, 1] maps grown by `pixels` (a (2p + 1)^2 square max-pool)."""
  if pixels <= 0:
    return binary
  k = 2 * pixels + 1
  return nn.max_pool(binary, (k, k), strides=(1, 1),
                     padding=((pixels, pixels), (pixels, pixels)))


def paste_masks_batch(detections: dict[str, jax.Array], height: int,
                      width: int, cls: int = FACE_MASK,
                      score_threshold: float = 0.5) -> jax.Array:
  """[B, D, H, W] pasted probabilities of the class's confident detections.

  Detections of another class, below the score or invalid are all zero.
  """
  def one(d):
    use = d["valid"] & (d["classes"] == cls) & (d["scores"] >= score_threshold)
    return paste_masks(d["masks"], d["boxes"], height, width) * use[
        :, None, None]

  return jax.vmap(one)(detections)


def binary_map(detections: dict[str, jax.Array], height: int, width: int, *,
               score_threshold: float = 0.5, mask_threshold: float = 0.5,
               dilation: int = 0) -> jax.Array:
  """[B, H, W, 1] float map M: the union of the face-mask detections.

  Detections of class `FACE_MASK` scoring at least `score_threshold`; each
  pasted mask thresholded at `mask_threshold`; then grown by `dilation`
  pixels (the paper's failure mode is mask left on the face).
  """
  pasted = paste_masks_batch(detections, height, width, FACE_MASK,
                             score_threshold)
  union = jnp.any(pasted >= mask_threshold, axis=1)
  return dilate(union.astype(jnp.float32)[..., None], dilation)


# ------------------------------------------------------------------ models
class MaskRCNN(nn.Module):
  """Mask R-CNN with static shapes; see the module docstring.

  `__call__(images)` is inference (detections with 28x28 masks);
  `losses(...)` is training. Images are [B, S, S, 3] in [0, 1], square,
  S a multiple of 32 (the FPN's coarsest stride below P6).

  Attributes:
    stage_sizes, width, fpn_channels, norm, epsilon, freeze_at: the
      backbone (`Backbone`); the defaults are ResNet-50-FPN.
    num_classes: including the background.
    representation: the box head's FC width (1024).
    mask_channels: the mask head's conv width (256).
    pre_nms_train, post_nms_train, pre_nms_test, post_nms_test: RPN top-k
      per level before NMS and overall after (torchvision: 2000/2000,
      1000/1000).
    rpn_nms: IoU of the RPN's NMS (0.7).
    box_score: detection score threshold (0.05); box_nms: per-class NMS
      IoU (0.5); max_detections: detections per image (100).
    rpn_samples, rpn_positive, roi_samples, roi_positive: the samplers
      (256 / 0.5, 512 / 0.25).
    mask_classes: classes whose masks are supervised (the face class has
      no mask target: its boxes train detection only).
    roi_aligned: RoIAlign's `aligned` (torchvision's Mask R-CNN: False).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  fpn_channels: int = 256
  norm: str = "frozen"
  epsilon: float = 0.0
  freeze_at: int = 0
  num_classes: int = len(CLASSES)
  representation: int = 1024
  mask_channels: int = 256
  pre_nms_train: int = 2000
  post_nms_train: int = 2000
  pre_nms_test: int = 1000
  post_nms_test: int = 1000
  rpn_nms: float = 0.7
  box_score: float = 0.05
  box_nms: float = 0.5
  max_detections: int = 100
  rpn_samples: int = 256
  rpn_positive: float = 0.5
  roi_samples: int = 512
  roi_positive: float = 0.25
  mask_classes: Sequence[int] = (FACE_MASK,)
  roi_aligned: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.backbone = Backbone(self.stage_sizes, self.width, self.fpn_channels,
                             self.norm, self.epsilon, self.freeze_at,
                             self.dtype)
    self.rpn = RPNHead(len(ASPECT_RATIOS), self.dtype)
    self.box_head = BoxHead(self.num_classes, self.representation,
                            self.dtype)
    self.mask_head = MaskHead(self.num_classes, self.mask_channels,
                              self.dtype)

  def init_all(self, images: jax.Array) -> None:
    """Touches every submodule, for `init(..., method=MaskRCNN.init_all)`:
    the parameters without tracing inference's NMS loops."""
    f = self.features(images)
    self.rpn(f)
    c = f[0].shape[-1]
    self.box_head(jnp.zeros((1, 7, 7, c), f[0].dtype))
    self.mask_head(jnp.zeros((1, 14, 14, c), f[0].dtype))

  def features(self, images: jax.Array, train: bool = False
               ) -> list[jax.Array]:
    """[P2..P6] of images in [0, 1] (normalised as torchvision's)."""
    mean = jnp.asarray(PIXEL_MEAN, images.dtype)
    std = jnp.asarray(PIXEL_STD, images.dtype)
    return self.backbone((images - mean) / std, train)

  def _proposals(self, features, image_size, pre_nms, post_nms):
    logits, deltas = self.rpn(features)
    level_anchors = anchors(image_size, len(features))
    fn = lambda l, d: propose(l, d, level_anchors, image_size,
                              pre_nms=pre_nms, post_nms=post_nms,
                              nms_threshold=self.rpn_nms)
    boxes, valid = jax.vmap(fn)(jax.lax.stop_gradient(logits),
                                jax.lax.stop_gradient(deltas))
    return logits, deltas, level_anchors, boxes, valid

  def _pool(self, features, rois, size):
    """[B, R, size, size, C] from P2-P5 of each image."""
    return jax.vmap(lambda f, r: multiscale_roi_align(
        f, r, size, aligned=self.roi_aligned))(features[:4], rois)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Detections of [B, S, S, 3] images in [0, 1].

    Returns:
      {boxes [B, D, 4], scores [B, D], classes [B, D], valid [B, D],
      masks [B, D, 28, 28] probabilities of the detected class}.
    """
    size = images.shape[1]
    f = self.features(images)
    _, _, _, props, props_valid = self._proposals(
        f, size, self.pre_nms_test, self.post_nms_test)
    b, r = props.shape[:2]
    logits, deltas = self.box_head(
        self._pool(f, props, 7).reshape(b * r, 7, 7, -1))
    det = jax.vmap(lambda l, d, p, v: detect(
        l, d, p, v, size, score_threshold=self.box_score,
        nms_threshold=self.box_nms, max_detections=self.max_detections))(
            logits.reshape(b, r, -1), deltas.reshape(b, r, -1, 4), props,
            props_valid)
    d = self.max_detections
    mask_logits = self.mask_head(
        self._pool(f, det["boxes"], 14).reshape(b * d, 14, 14, -1))
    mask_logits = mask_logits.reshape(b, d, MASK_SIZE, MASK_SIZE, -1)
    det["masks"] = jax.nn.sigmoid(jnp.take_along_axis(
        mask_logits, det["classes"][:, :, None, None, None], -1)[..., 0])
    return det

  def losses(self, images: jax.Array, gt_boxes: jax.Array,
             gt_classes: jax.Array, gt_valid: jax.Array,
             instance_map: jax.Array, rng: jax.Array,
             train: bool = True) -> dict[str, jax.Array]:
    """The five Mask R-CNN losses, means over the batch.

    Args:
      images: [B, S, S, 3] in [0, 1].
      gt_boxes: [B, G, 4] ground-truth boxes (padded).
      gt_classes: [B, G] int32 class of each.
      gt_valid: [B, G] bool.
      instance_map: [B, S, S] the face-mask map (instances are its parts
        inside their boxes; see `mask_targets`).
      rng: the samplers' draws.
      train: the backbone's norm mode ("batch" norm only).

    Returns:
      {rpn_objectness, rpn_box, classifier, box_reg, mask}.
    """
    size = images.shape[1]
    bsz = images.shape[0]
    f = self.features(images, train)
    logits, deltas, level_anchors, props, props_valid = self._proposals(
        f, size, self.pre_nms_train, self.post_nms_train)
    all_anchors = jnp.concatenate(level_anchors)
    rng_rpn, rng_roi = jax.random.split(rng)
    obj, rpn_reg = jax.vmap(lambda l, d, g, v, k: rpn_loss(
        l, d, all_anchors, g, v, k, num_samples=self.rpn_samples,
        positive_fraction=self.rpn_positive))(
            logits, deltas, gt_boxes, gt_valid,
            jax.random.split(rng_rpn, bsz))
    s = jax.vmap(lambda p, pv, g, c, v, k: sample_rois(
        p, pv, g, c, v, k, num_samples=self.roi_samples,
        positive_fraction=self.roi_positive))(
            props, props_valid, gt_boxes, gt_classes, gt_valid,
            jax.random.split(rng_roi, bsz))
    rois = jax.lax.stop_gradient(s["rois"])
    n = self.roi_samples
    cls_logits, box_deltas = self.box_head(
        self._pool(f, rois, 7).reshape(bsz * n, 7, 7, -1))
    cls, box_reg = jax.vmap(box_head_loss)(
        cls_logits.reshape(bsz, n, -1), box_deltas.reshape(bsz, n, -1, 4),
        s, gt_boxes)
    # The mask head sees the positives only: the first
    # `roi_samples * roi_positive` slots of the sample (positives first).
    p = max(1, int(n * self.roi_positive))
    pos_rois = rois[:, :p]
    matched = s["matched"][:, :p]
    classes = s["classes"][:, :p]
    mask_logits = self.mask_head(
        self._pool(f, pos_rois, 14).reshape(bsz * p, 14, 14, -1))
    matched_boxes = jnp.take_along_axis(gt_boxes, matched[..., None], 1)
    targets = jax.vmap(lambda m, r, g: mask_targets(
        m, r, g, aligned=self.roi_aligned))(instance_map, pos_rois,
                                            matched_boxes)
    supervised = s["positive"][:, :p] & jnp.isin(
        classes, jnp.asarray(self.mask_classes))
    mask = mask_loss(mask_logits, classes.reshape(-1),
                     targets.reshape(bsz * p, MASK_SIZE, MASK_SIZE),
                     supervised.reshape(-1).astype(jnp.float32))
    return {"rpn_objectness": jnp.mean(obj), "rpn_box": jnp.mean(rpn_reg),
            "classifier": jnp.mean(cls), "box_reg": jnp.mean(box_reg),
            "mask": mask}


class UNet(nn.Module):
  """A light U-Net predicting the face-mask map in one pass.

  `levels` resolutions, each two 3x3 conv + GroupNorm + ReLU blocks;
  max-pool down, nearest-upsample + skip concatenation up; a 1x1 logit.

  Attributes:
    widths: channels per level, finest first.
  """
  widths: Sequence[int] = (32, 64, 128, 256)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """[B, S, S, 3] in [0, 1] -> [B, S, S, 1] logits (S divisible by
    2 ** (levels - 1))."""
    def block(x, c, name):
      for i in range(2):
        x = _conv(c, 3, use_bias=False, dtype=self.dtype,
                  name=f"{name}_conv{i}")(x)
        x = nn.GroupNorm(num_groups=min(8, c), dtype=self.dtype,
                         name=f"{name}_norm{i}")(x)
        x = nn.relu(x)
      return x

    mean = jnp.asarray(PIXEL_MEAN, images.dtype)
    std = jnp.asarray(PIXEL_STD, images.dtype)
    x = ((images - mean) / std).astype(self.dtype)
    skips = []
    for i, c in enumerate(self.widths):
      if i:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = block(x, c, f"down{i}")
      skips.append(x)
    for i in range(len(self.widths) - 2, -1, -1):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = block(jnp.concatenate([x, skips[i]], -1), self.widths[i],
                f"up{i}")
    return _conv(1, 1, dtype=self.dtype, name="logits")(x).astype(
        jnp.float32)


def dice_loss(logits: jax.Array, target: jax.Array,
              eps: float = 1.0) -> jax.Array:
  """[B] soft Dice loss of per-pixel logits against a binary map."""
  p = jax.nn.sigmoid(logits)
  inter = jnp.sum(p * target, axis=(1, 2, 3))
  total = jnp.sum(p, axis=(1, 2, 3)) + jnp.sum(target, axis=(1, 2, 3))
  return 1.0 - (2 * inter + eps) / (total + eps)


def num_params(tree: Any) -> int:
  """The number of scalars in a parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
