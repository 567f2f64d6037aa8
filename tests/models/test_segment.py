"""Mask R-CNN and the U-Net: sizes, static shapes, RoI ops, pasting, losses."""

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import boxes as box_ops
from jaxface.models import segment as seg
from tests import numerics

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8, fpn_channels=32,
            representation=64, mask_channels=32, pre_nms_train=100,
            post_nms_train=64, pre_nms_test=50, post_nms_test=32,
            max_detections=8, rpn_samples=64, roi_samples=32, norm="group")


def _count(tree):
  return seg.num_params(tree)


def test_resnet50_fpn_sizes_are_torchvisions():
  # torchvision maskrcnn_resnet50_fpn(num_classes=91): 44,401,393
  # parameters; its FrozenBatchNorm2d tensors (4 x 26,560) are buffers.
  model = seg.MaskRCNN(num_classes=91, norm="frozen")
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                         method=seg.MaskRCNN.init_all))
  params = shapes["params"]
  assert _count(params["backbone"]["body"]) == 23_454_912
  assert _count(shapes["batch_stats"]) == 4 * 26_560
  assert _count(params["backbone"]["fpn"]) == 3_344_384
  assert _count(params) == 44_401_393


@pytest.mark.parametrize("batch", [1, 8])
def test_inference_has_static_shapes(batch):
  model = seg.MaskRCNN(**TINY)
  x = jnp.zeros((batch, 64, 64, 3))
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x[:1],
                         method=seg.MaskRCNN.init_all))
  out = jax.eval_shape(model.apply, variables, x)
  assert out["boxes"].shape == (batch, 8, 4)
  assert out["masks"].shape == (batch, 8, 28, 28)
  for key in ("scores", "classes", "valid"):
    assert out[key].shape == (batch, 8)
  m = jax.eval_shape(lambda v, x: seg.binary_map(model.apply(v, x), 64, 64),
                     variables, x)
  assert m.shape == (batch, 64, 64, 1)


def test_fpn_levels():
  model = seg.Backbone((1, 1, 1, 1), width=8, fpn_channels=16, norm="group")
  x = jnp.zeros((2, 64, 64, 3))
  shapes = jax.eval_shape(
      lambda: model.apply(model.init(jax.random.key(0), x), x))
  assert [s.shape for s in shapes] == [(2, 16, 16, 16), (2, 8, 8, 16),
                                       (2, 4, 4, 16), (2, 2, 2, 16),
                                       (2, 1, 1, 16)]


def test_frozen_norm_is_the_affine_of_its_statistics():
  norm = seg.Norm("frozen", epsilon=0.0)
  x = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype(np.float32)
  stats = {"scale": np.array([1.0, 2.0, 3.0], np.float32),
           "bias": np.array([0.5, 0.0, -1.0], np.float32),
           "mean": np.array([0.1, 0.2, 0.3], np.float32),
           "var": np.array([4.0, 1.0, 0.25], np.float32)}
  y = norm.apply({"batch_stats": stats}, x)
  want = ((x - stats["mean"]) / np.sqrt(stats["var"]) * stats["scale"]
          + stats["bias"])
  np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_conv5_mask_is_a_2x2_stride_2_transposed_convolution():
  rng = np.random.default_rng(1)
  head = seg.MaskHead(num_classes=3, channels=8)
  x = rng.normal(size=(2, 14, 14, 8)).astype(np.float32)
  params = head.init(jax.random.key(0), x)["params"]
  # flax's ConvTranspose (transpose_kernel: torch's (in, out, kh, kw)
  # permuted to (kh, kw, out, in)), k 2, stride 2, no padding: torch's
  # ConvTranspose2d(256, 256, 2, 2).
  ref = nn.ConvTranspose(8, (2, 2), strides=(2, 2), padding="VALID",
                         transpose_kernel=True)
  y = x
  for i in range(1, 5):
    p = params[f"mask_fcn{i}"]
    y = jax.nn.relu(jax.lax.conv_general_dilated(
        y, p["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"])
  y = jax.nn.relu(ref.apply({"params": {
      "kernel": params["conv5_mask_kernel"],
      "bias": params["conv5_mask_bias"]}}, y))
  p = params["mask_fcn_logits"]
  want = jnp.einsum("rhwc,co->rhwo", y, p["kernel"][0, 0]) + p["bias"]
  got = head.apply({"params": params}, x)
  assert got.shape == (2, 28, 28, 3)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_roi_levels_are_torchvisions():
  rois = np.array([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 8, 8],
                   [0, 0, 1000, 1000], [0, 0, 447, 447], [0, 0, 448, 448]],
                  np.float32)
  # P4 (index 2) at 224; one level per factor of 2; clamped to P2-P5.
  np.testing.assert_array_equal(seg.roi_levels(rois), [2, 1, 0, 3, 2, 3])


def test_multiscale_roi_align_reads_each_rois_level():
  rng = np.random.default_rng(2)
  feats = [rng.normal(size=(64 // s, 64 // s, 4)).astype(np.float32)
           for s in (4, 8, 16, 32)]
  rois = np.array([[0, 0, 20, 20], [0, 0, 60, 60]], np.float32)
  got = seg.multiscale_roi_align(feats, rois, 7)
  for r, level in zip(range(2), np.asarray(seg.roi_levels(rois))):
    want = box_ops.roi_align(feats[level], rois[r:r + 1], 7,
                             1 / seg.STRIDES[level])
    # Both are two contractions of bilinear weights (summing to 1 per
    # sample) with the same features, fused differently.
    numerics.assert_within(got[r:r + 1], want, 2 * numerics.gamma(32)
                           * np.abs(feats[level]).max(), f"roi {r}")


def test_paste_of_a_full_mask_covers_exactly_its_box():
  """torchvision's zero border: above 0.5 at the pixel centres inside the
  box, 1 half a mask cell in, 0 half a cell outside."""
  boxes = np.array([[3.0, 5.0, 20.0, 19.0], [0, 0, 0, 0]], np.float32)
  pasted = np.asarray(seg.paste_masks(jnp.ones((2, 28, 28)), boxes, 24, 24))
  inside = np.zeros((24, 24), bool)
  inside[5:19, 3:20] = True
  np.testing.assert_array_equal(pasted[0] > 0.5, inside)
  np.testing.assert_allclose(pasted[0, 7:17, 5:18], 1.0, atol=1e-6)
  assert not pasted[0, :4].any() and not pasted[0, :, 21:].any()
  assert not pasted[1].any()


def test_paste_is_a_bilinear_resize_into_the_box():
  m = np.random.default_rng(3).random((28, 28)).astype(np.float32)
  box = np.array([[8.0, 4.0, 64.0, 60.0]], np.float32)  # 56 x 56 pixels
  pasted = np.asarray(seg.paste_masks(m[None], box, 70, 70))[0]
  want = cv2.resize(m, (56, 56), interpolation=cv2.INTER_LINEAR)
  # Inside (away from the border's half cell, one pixel here) a resize;
  # cv2 computes with fixed-point weights (11 bits).
  np.testing.assert_allclose(pasted[5:59, 9:63], want[1:-1, 1:-1],
                             atol=2e-3)
  assert not pasted[:3].any() and not pasted[:, 65:].any()


def test_binary_map_unites_confident_face_masks_and_dilates():
  boxes = np.array([[[0, 0, 8, 8], [8, 8, 16, 16], [0, 8, 8, 16],
                     [8, 0, 16, 8]]], np.float32)
  det = {"boxes": boxes, "masks": np.ones((1, 4, 28, 28), np.float32),
         "scores": np.array([[0.9, 0.6, 0.3, 0.9]], np.float32),
         "classes": np.array([[seg.FACE_MASK, seg.FACE_MASK, seg.FACE_MASK,
                               seg.FACE]], np.int32),
         "valid": np.array([[True, True, True, True]])}
  m = np.asarray(seg.binary_map(det, 16, 16, score_threshold=0.5))[0, ..., 0]
  want = np.zeros((16, 16))
  want[:8, :8] = want[8:, 8:] = 1  # low score and face class left out
  np.testing.assert_array_equal(m, want)
  grown = np.asarray(seg.binary_map(det, 16, 16, dilation=2))[0, ..., 0]
  assert grown[9, 0] == 1 and grown[10, 0] == 0 and grown.sum() > m.sum()


def test_mask_targets_cut_the_map_at_the_ground_truth_box():
  instance_map = np.zeros((32, 32), np.float32)
  instance_map[4:12, 4:12] = 1     # this instance
  instance_map[4:12, 16:24] = 1    # another one, in the same map
  gt = np.array([[4, 4, 12, 12]], np.float32)
  roi = np.array([[0, 0, 28, 28]], np.float32)  # covers both
  t = np.asarray(seg.mask_targets(instance_map, roi, gt, aligned=True))[0]
  want = np.zeros((28, 28))
  want[4:12, 4:12] = 1
  np.testing.assert_array_equal(t, want)


def test_smooth_l1_and_bce():
  x = np.array([-2.0, -0.05, 0.0, 0.05, 2.0], np.float32)
  np.testing.assert_allclose(seg.smooth_l1(x, 0.1),
                             [1.95, 0.0125, 0.0, 0.0125, 1.95], rtol=1e-6)
  t = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
  p = 1 / (1 + np.exp(-x.astype(np.float64)))
  want = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  numerics.assert_within(seg.bce_with_logits(x, t), want,
                         8 * numerics.U32 * (want + 1), "bce")


def test_unet_shapes():
  model = seg.UNet(widths=(8, 16, 32))
  x = jnp.zeros((2, 32, 32, 3))
  out = jax.eval_shape(lambda: model.apply(
      model.init(jax.random.key(0), x), x))
  assert out.shape == (2, 32, 32, 1)
