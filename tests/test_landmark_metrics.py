"""Landmark metrics (NME, failure rate, CED AUC) on hand-made values.

All in float64 on exact inputs (3-4-5 triangles, dyadic distances), so the
NMEs are exact; the AUC is a trapezoid sum on `steps` intervals, off by at
most half an interval per jump of the CED.
"""

import numpy as np
import pytest

import numerics
from jaxface import metrics
from jaxface.data import wflw


def _face(eye_distance, shift=(0.0, 0.0)):
  """98 points on a grid with the outer eye corners `eye_distance` apart."""
  pts = np.stack(np.meshgrid(np.arange(14.0), np.arange(7.0)), -1).reshape(
      -1, 2) * 2 + np.asarray(shift)
  pts[wflw.LEFT_EYE_OUTER] = [20.0, 40.0]
  pts[wflw.RIGHT_EYE_OUTER] = [20.0 + eye_distance, 40.0]
  return pts


def test_nme_divides_the_mean_point_error_by_the_normaliser():
  """1 px errors with eyes 10 px apart: 0.1; a 3-4-5 error: 0.5."""
  target = np.stack([_face(10.0), _face(50.0)])
  norm = wflw.inter_ocular(target)
  np.testing.assert_array_equal(norm, [10.0, 50.0])
  pred = target.copy()
  pred[0, :, 0] += 1.0  # every point 1 px right
  pred[1, :, 0] += 3.0  # 3 right, 4 down: 5 px
  pred[1, :, 1] += 4.0
  nme = metrics.landmark_nme(pred, target, norm)
  assert nme.shape == (2,)
  np.testing.assert_array_equal(nme, [0.1, 0.1])
  # Unequal errors average over points: 1 point of 98 off by 49 px.
  pred = target.copy()
  pred[0, 7, 1] += 49.0
  nme = metrics.landmark_nme(pred, target, norm)
  np.testing.assert_array_equal(nme, [0.05, 0.0])


def test_nme_over_a_point_subset_and_an_empty_one():
  """Only the selected points count; a face with none selected is NaN."""
  target = np.stack([_face(10.0), _face(20.0)])
  pred = target.copy()
  pred[:, :10, 0] += 4.0  # points 0-9 off by 4 px
  points = np.zeros((2, 98), bool)
  points[0, :20] = True  # 10 off by 4, 10 exact: mean 2
  nme = metrics.landmark_nme(pred, target, wflw.inter_ocular(target),
                             points)
  assert nme[0] == 0.2
  assert np.isnan(nme[1])
  # All points: 40 / 98 px on average.
  nme = metrics.landmark_nme(pred, target, wflw.inter_ocular(target))
  np.testing.assert_allclose(nme, [40 / 98 / 10, 40 / 98 / 20],
                             rtol=numerics.gamma(100, numerics.U64))


def test_failure_rate_is_strictly_above_the_threshold():
  """0.1 itself passes; NaN faces are left out; none at all gives NaN."""
  nme = np.array([0.05, 0.1, np.nextafter(0.1, 1.0), 0.2, np.nan])
  assert metrics.failure_rate(nme) == 0.5
  assert metrics.failure_rate(nme, threshold=0.2) == 0.0
  assert metrics.failure_rate(np.array([0.0, 0.3, 0.3])) == pytest.approx(
      2 / 3, rel=numerics.U64)
  assert np.isnan(metrics.failure_rate(np.array([np.nan])))


def test_ced_auc_by_hand():
  """Perfect faces: 1; all failed: 0; a step at 0.05: 0.5 (trapezoids)."""
  steps = 1000
  # Float64 rounding of the trapezoid sum (steps terms) and the division.
  rounding = numerics.gamma(steps + 2, numerics.U64)
  assert metrics.ced_auc(np.zeros(5), steps=steps) == pytest.approx(
      1.0, abs=rounding)
  assert metrics.ced_auc(np.array([0.2, np.nextafter(0.1, 1.0)])) == 0.0
  # The CED jumps inside one interval: the trapezoid rule is off by at
  # most half of it, 1 / (2 steps) of the range, times the jump.
  half_interval = 1 / (2 * steps)
  assert metrics.ced_auc(np.array([0.05]), steps=steps) == pytest.approx(
      0.5, abs=half_interval + rounding)
  # NME exactly 0.1: a success, but only at the last grid point.
  auc = metrics.ced_auc(np.array([0.1, 0.3]), steps=steps)
  assert 0.0 < auc <= 0.5 * half_interval + rounding
  # Two thirds with NME 0 and 0.05, one failure, one NaN (left out):
  # (1/3) * 1 + (1/3) * 0.5.
  auc = metrics.ced_auc(np.array([0.0, 0.05, 0.2, np.nan]), steps=steps)
  assert auc == pytest.approx(0.5, abs=half_interval / 3 + rounding)
  assert np.isnan(metrics.ced_auc(np.array([np.nan, np.nan])))
  # Another range: AUC at 0.2 of a step at 0.05 is 0.75.
  assert metrics.ced_auc(np.array([0.05]), threshold=0.2,
                         steps=steps) == pytest.approx(
                             0.75, abs=half_interval + rounding)
