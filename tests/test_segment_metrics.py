"""Map metrics (IoU, Dice, uncovered share, boundary F) and COCO-style AP."""

import numpy as np
import pytest

from jaxface import metrics


def _maps():
  pred = np.zeros((3, 8, 8, 1), np.float32)
  target = np.zeros((3, 8, 8, 1), np.float32)
  pred[0, 0:4, 0:4] = 1      # 16 px
  target[0, 0:4, 2:6] = 1    # 16 px, 8 shared
  target[1, 2:4, 2:4] = 1    # missed entirely
  return pred, target        # image 2: both empty


def test_iou_dice_uncovered_hand_cases():
  pred, target = _maps()
  np.testing.assert_allclose(metrics.mask_iou(pred, target), [8 / 24, 0, 1])
  np.testing.assert_allclose(metrics.dice(pred, target), [16 / 32, 0, 1])
  u = np.asarray(metrics.uncovered(pred, target))
  np.testing.assert_allclose(u[:2], [0.5, 1.0])
  assert np.isnan(u[2])


def test_boundary_f_hand_cases():
  a = np.zeros((1, 16, 16), np.float32)
  a[0, 4:12, 4:12] = 1
  shifted = np.roll(a, 1, axis=2)
  far = np.roll(a, 4, axis=2)
  assert float(metrics.boundary_f(a, a)[0]) == 1.0
  # A one-pixel shift is within the 2-pixel tolerance everywhere.
  assert float(metrics.boundary_f(shifted, a)[0]) == 1.0
  # Four pixels: only the horizontal edges' overlapping parts match.
  f = float(metrics.boundary_f(far, a)[0])
  assert 0.2 < f < 0.8
  assert float(metrics.boundary_f(np.zeros_like(a), a)[0]) == 0.0
  assert float(metrics.boundary_f(np.zeros_like(a), np.zeros_like(a))[0]) == 1


def test_boundary_is_the_inner_contour():
  a = np.zeros((1, 6, 6), bool)
  a[0, 1:5, 1:5] = True
  b = np.asarray(metrics.boundary(a))[0]
  assert b.sum() == 12 and not b[2:4, 2:4].any()


def test_average_precision_hand_cases():
  # Perfect: every detection matches its own ground truth.
  assert metrics.average_precision(
      [np.array([0.9, 0.8])], [np.eye(2)], 0.5) == pytest.approx(1.0)
  # A false positive ranked first, then the one true positive: 0.5.
  assert metrics.average_precision(
      [np.array([0.9, 0.8])], [np.array([[0.1], [0.7]])], 0.5) == (
          pytest.approx(0.5))
  # Two detections of one object: the second is a false positive, but
  # after full recall, so AP stays 1.
  assert metrics.average_precision(
      [np.array([0.9, 0.8])], [np.array([[0.9], [0.8]])], 0.5) == (
          pytest.approx(1.0))
  # Half the objects found (recall 0.5): 51 of 101 recall points.
  assert metrics.average_precision(
      [np.array([0.9]), np.zeros(0)],
      [np.array([[0.9]]), np.zeros((0, 1))], 0.5) == pytest.approx(51 / 101)
  # Nothing detected: 0; nothing to detect: NaN.
  assert metrics.average_precision([np.zeros(0)], [np.zeros((0, 1))],
                                   0.5) == 0.0
  assert np.isnan(metrics.average_precision([np.array([0.5])],
                                            [np.zeros((1, 0))], 0.5))


def test_average_precision_matches_the_best_free_object():
  # One detection overlapping two objects takes the better one; the next
  # detection can still take the other.
  overlaps = np.array([[0.6, 0.8], [0.55, 0.9]])
  ap = metrics.average_precision([np.array([0.9, 0.8])], [overlaps], 0.5)
  assert ap == pytest.approx(1.0)
