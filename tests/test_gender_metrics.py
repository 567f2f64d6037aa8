"""Binary classification figures and the classifier's loss, by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import losses
from jaxface import metrics


def test_accuracy_recalls_and_balanced_accuracy():
  p = [0.9, 0.2, 0.6, 0.4, 0.5]
  y = [1, 0, 0, 1, 1]
  assert metrics.binary_accuracy(p, y) == pytest.approx(3 / 5)
  assert metrics.class_recall(p, y, True) == pytest.approx(2 / 3)
  assert metrics.class_recall(p, y, False) == pytest.approx(1 / 2)
  assert metrics.balanced_accuracy(p, y) == pytest.approx(7 / 12)
  assert math.isnan(metrics.class_recall([0.3], [1], False))
  with pytest.raises(ValueError, match="labels must be 0 or 1"):
    metrics.binary_accuracy([0.5], [2])


def test_roc_auc_counts_ties_as_half():
  # Positives 0.5, 0.8 against negatives 0.5, 0.2: pairs 0.5 (tie), 1, 1, 1.
  assert metrics.roc_auc([0.5, 0.8, 0.5, 0.2], [1, 1, 0, 0]) == 0.875
  assert metrics.roc_auc([0.1, 0.9], [1, 0]) == 0.0
  assert math.isnan(metrics.roc_auc([0.1, 0.9], [1, 1]))
  # Against a direct count over all pairs on random scores with ties.
  rng = np.random.default_rng(0)
  p = rng.integers(0, 5, 200) / 4
  y = rng.integers(0, 2, 200)
  pos, neg = p[y == 1], p[y == 0]
  pairs = (pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()
  assert metrics.roc_auc(p, y) == pytest.approx(pairs / (pos.size * neg.size))


def test_expected_calibration_error():
  # Confidences 0.9, 0.9 (one right), 0.6 and 0.7 (right): bins of 0.1 give
  # 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.6| + 1/4 * |1 - 0.7|.
  ece = metrics.expected_calibration_error([0.9, 0.9, 0.6, 0.3],
                                           [1, 0, 1, 0], num_bins=10)
  assert ece == pytest.approx(0.2 + 0.1 + 0.075)
  # Calibrated by construction: in each bin accuracy equals confidence.
  p = np.array([0.75] * 4 + [1.0] * 3)
  assert metrics.expected_calibration_error(
      p, [1, 1, 1, 0, 1, 1, 1], num_bins=4) == pytest.approx(0.0)


def test_negative_log_likelihood():
  assert metrics.binary_nll([0.8, 0.25], [1, 0]) == pytest.approx(
      -(math.log(0.8) + math.log(0.75)) / 2)


def test_sigmoid_cross_entropy_and_balancing_weights():
  logits = jnp.array([0.0, 2.0, -3.0, 40.0])
  labels = jnp.array([1, 0, 0, 1])
  per = [math.log(2), math.log1p(math.exp(2)), math.log1p(math.exp(-3)),
         math.log1p(math.exp(-40))]
  assert float(losses.sigmoid_cross_entropy(logits, labels)) == (
      pytest.approx(np.mean(per), rel=1e-6))
  w = losses.balancing_weights(jnp.array([1, 1, 1, 0]))
  np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0], rtol=1e-6)
  np.testing.assert_allclose(losses.balancing_weights(jnp.array([1, 1])),
                             [1.0, 1.0])
  got = losses.sigmoid_cross_entropy(logits, labels, jnp.array([1, 0, 0, 1]))
  assert float(got) == pytest.approx((per[0] + per[3]) / 2, rel=1e-6)
