"""Box geometry: anchors, coding, IoU, NMS, RoIAlign, matching, sampling.

Each against a direct NumPy statement (loops, float64) on random boxes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import boxes as box_ops
from tests import numerics


def _random_boxes(rng, n, size=64.0, min_side=1.0):
  xy = rng.uniform(-4, size, (n, 2))
  wh = rng.uniform(min_side, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_cell_anchors_are_torchvisions():
  # torchvision's AnchorGenerator for size 32, ratios (0.5, 1, 2).
  np.testing.assert_array_equal(
      box_ops.cell_anchors(32, (0.5, 1.0, 2.0)),
      [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])


def test_grid_anchors_row_major_then_anchor():
  cell = box_ops.cell_anchors(32, (0.5, 1.0, 2.0))
  a = np.asarray(box_ops.grid_anchors(cell, 4, 2, 3)).reshape(2, 3, 3, 4)
  for i in range(2):
    for j in range(3):
      np.testing.assert_array_equal(
          a[i, j], np.asarray(cell) + [4 * j, 4 * i] * 2)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0),
                                     (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
  rng = np.random.default_rng(0)
  ref, target = _random_boxes(rng, 50), _random_boxes(rng, 50)
  deltas = box_ops.encode(ref, target, weights)
  back = np.asarray(box_ops.decode(deltas, ref, weights), np.float64)
  # Each coordinate passes through a few float32 operations of values up
  # to ~100 (and exp/log of ratios up to ~40).
  numerics.assert_within(back, target.astype(np.float64),
                         64 * numerics.U32 * (np.abs(target) + 100),
                         "decode(encode(b)) vs b")


def test_decode_clamps_the_size_change():
  ref = np.array([[0, 0, 10, 10]], np.float32)
  out = np.asarray(box_ops.decode(np.array([[0, 0, 100.0, 100.0]]), ref))
  side = 10 * 1000 / 16
  np.testing.assert_allclose(out, [[5 - side / 2, 5 - side / 2,
                                    5 + side / 2, 5 + side / 2]], rtol=1e-5)


def _np_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a.astype(np.float64)):
    for j, q in enumerate(b.astype(np.float64)):
      w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      union = ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1])
               - w * h)
      out[i, j] = w * h / union
  return out


def test_iou_matches_numpy():
  rng = np.random.default_rng(1)
  a, b = _random_boxes(rng, 30), _random_boxes(rng, 20)
  numerics.assert_within(np.asarray(box_ops.iou(a, b), np.float64),
                         _np_iou(a, b), 32 * numerics.U32, "iou")


def test_iou_of_empty_boxes_is_zero():
  z = np.zeros((2, 4), np.float32)
  np.testing.assert_array_equal(box_ops.iou(z, z), np.zeros((2, 2)))


def _np_nms(boxes, scores, valid, threshold):
  order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
  keep = []
  for i in order:
    if all(_np_iou(boxes[[i]], boxes[[k]])[0, 0] <= threshold for k in keep):
      keep.append(i)
  return keep


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_keeps_what_greedy_nms_keeps(threshold):
  rng = np.random.default_rng(2)
  boxes = _random_boxes(rng, 80, size=48)
  # Distinct scores (ties would make the order, and so the result, free).
  scores = rng.permutation(80).astype(np.float32)
  valid = rng.random(80) < 0.9
  want = _np_nms(boxes, scores, valid, threshold)
  idx, keep = box_ops.nms(boxes, scores, valid, threshold, max_output=60)
  idx, keep = np.asarray(idx), np.asarray(keep)
  n = min(len(want), 60)
  assert keep.sum() == n
  np.testing.assert_array_equal(idx[:n], want[:n])
  assert not keep[n:].any() and not idx[n:].any()


def test_batched_nms_never_suppresses_across_groups():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]],
                   np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  idx, keep = box_ops.batched_nms(boxes, scores, np.array([0, 1, 0]),
                                  np.ones(3, bool), 0.5, 3)
  assert list(np.asarray(idx)[np.asarray(keep)]) == [0, 1]


def _np_bilinear(f, y, x):
  """torchvision's `bilinear_interpolate` (aligned RoIAlign), float64."""
  h, w = f.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(f.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(y), int(x)
  if y0 >= h - 1:
    y0 = y1 = h - 1
    y = float(y0)
  else:
    y1 = y0 + 1
  if x0 >= w - 1:
    x0 = x1 = w - 1
    x = float(x0)
  else:
    x1 = x0 + 1
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1]
          + ly * (1 - lx) * f[y1, x0] + ly * lx * f[y1, x1])


def _np_roi_align(f, boxes, out, scale, g, aligned):
  f = f.astype(np.float64)
  res = np.zeros((len(boxes), out, out, f.shape[-1]))
  shift = 0.5 if aligned else 0.0
  for r, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
    sx, sy = x1 * scale - shift, y1 * scale - shift
    w, h = (x2 - x1) * scale, (y2 - y1) * scale
    if not aligned:  # legacy RoIAlign: at least one cell
      w, h = max(w, 1.0), max(h, 1.0)
    bw, bh = w / out, h / out
    for p in range(out):
      for q in range(out):
        acc = 0.0
        for iy in range(g):
          for ix in range(g):
            acc = acc + _np_bilinear(f, sy + p * bh + (iy + 0.5) * bh / g,
                                     sx + q * bw + (ix + 0.5) * bw / g)
        res[r, p, q] = acc / (g * g)
  return res


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_torchvisions_rule(aligned):
  rng = np.random.default_rng(3)
  f = rng.normal(size=(12, 10, 3)).astype(np.float32)
  # Image 40x48 pixels at stride 4, boxes partly outside it too, and one
  # narrower than a cell.
  boxes = _random_boxes(rng, 12, size=44)
  boxes[0] = [-10, -6, 8, 9]
  boxes[1] = [30, 40, 60, 70]
  boxes[2] = [10, 10, 11.5, 30]
  got = np.asarray(box_ops.roi_align(f, boxes, 5, 0.25, 2, aligned),
                   np.float64)
  want = _np_roi_align(f, boxes, 5, 0.25, 2, aligned)
  # Two float32 contractions of <= 12 terms, plus the sample positions'
  # rounding (<= ~16 ulps of coordinates below 20), which moves a sample by
  # that much: at most 2 max|f| per cell of movement.
  bound = (numerics.gamma(24) * np.abs(_np_roi_align(np.abs(f), boxes, 5,
                                                     0.25, 2, aligned))
           + 16 * numerics.U32 * 20 * 2 * np.abs(f).max())
  numerics.assert_within(got, want, bound, "roi_align")


def test_match_hand_case():
  overlaps = np.array([[0.9, 0.1],    # positive, gt 0
                       [0.5, 0.2],    # between: ignored
                       [0.1, 0.25],   # negative ... but gt 1's best: positive
                       [0.0, 0.05]])  # negative
  matched, label = box_ops.match(overlaps, 0.7, 0.3, allow_low_quality=True)
  np.testing.assert_array_equal(label, [1, -1, 1, 0])
  np.testing.assert_array_equal(matched, [0, 0, 1, 1])
  _, label = box_ops.match(overlaps, 0.7, 0.3, allow_low_quality=False)
  np.testing.assert_array_equal(label, [1, -1, 0, 0])
  # A padding ground truth (IoU -1 everywhere) yields no positive.
  _, label = box_ops.match(np.full((3, 1), -1.0), 0.7, 0.3, True)
  np.testing.assert_array_equal(label, [0, 0, 0])


@pytest.mark.parametrize("num_pos,num_neg", [(3, 100), (300, 100), (0, 5)])
def test_sample_counts_and_members(num_pos, num_neg):
  label = np.concatenate([np.ones(num_pos), np.zeros(num_neg),
                          -np.ones(20)]).astype(np.int32)
  label = np.random.default_rng(4).permutation(label)
  idx, positive, valid = map(np.asarray, box_ops.sample(
      jnp.asarray(label), 256, 0.5, jax.random.key(0)))
  want_pos = min(num_pos, 128)
  want_neg = min(num_neg, 256 - want_pos)
  assert positive.sum() == want_pos and valid.sum() == want_pos + want_neg
  assert np.all(label[idx[positive]] == 1)
  assert np.all(label[idx[valid & ~positive]] == 0)
  assert len(set(idx[valid])) == valid.sum()  # no box drawn twice
