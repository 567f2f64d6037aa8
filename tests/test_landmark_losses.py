"""Adaptive Wing and its weight map against the paper's formulas.

The reference values are the formulas of REFERENCE.md section 7.2 in
float64; each float32 result's bound comes from mirroring the float32
computation on `numerics.Bounded` values. Inputs are dyadic, so the errors
|target - pred| are exact.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from jaxface import losses

Bounded = numerics.Bounded
U32 = numerics.U32
ALPHA, OMEGA, EPSILON, THETA = 2.1, 14.0, 1.0, 0.5


def _awing_f64(delta, y):
  """The paper's per-pixel loss (REFERENCE.md 7.2), float64."""
  a = ALPHA - y
  r = THETA / EPSILON
  if delta < THETA:
    return OMEGA * math.log1p((delta / EPSILON)**a)
  big_a = OMEGA * (1 / (1 + r**a)) * a * r**(a - 1) / EPSILON
  big_c = THETA * big_a - OMEGA * math.log1p(r**a)
  return big_a * delta - big_c


def _awing_slope_f64(delta, y):
  """d loss / d delta, float64."""
  a = ALPHA - y
  if delta < THETA:
    q = delta / EPSILON
    return OMEGA * a * q**(a - 1) / (EPSILON * (1 + q**a))
  r = THETA / EPSILON
  return OMEGA * (1 / (1 + r**a)) * a * r**(a - 1) / EPSILON


def _pow(x: Bounded, e: Bounded) -> Bounded:
  """x^e for x > 0 as exp(e log x): log and exp within FN_U each, their
  product's rounding, and the inputs' errors propagated."""
  v = x.value**e.value
  log = np.abs(np.log(x.value))
  err = np.abs(v) * (log * e.err + np.abs(e.value) * x.err / x.value
                     + np.abs(e.value) * log * (numerics.FN_U + U32)
                     + numerics.FN_U)
  return Bounded(v, err)


def _log1p(x: Bounded) -> Bounded:
  return x.fn(np.log1p, lambda t: 1 / (1 + t))


def _awing_mirror(delta: float, y: float) -> Bounded:
  """`losses.adaptive_wing`'s float32 operations on Bounded values."""
  a = Bounded.const(ALPHA) - Bounded(y)
  r = Bounded.const(THETA / EPSILON)
  big_a = (OMEGA * a * _pow(r, a - 1)) / (EPSILON * (1 + _pow(r, a)))
  big_c = THETA * big_a - OMEGA * _log1p(_pow(r, a))
  if delta < THETA:
    return OMEGA * _log1p(_pow(Bounded(min(delta, THETA)) / EPSILON, a))
  return big_a * Bounded(delta) - big_c


def _slope_mirror(delta: float, y: float) -> Bounded:
  """The float32 gradient of the loss w.r.t. delta, as autodiff forms it:
  omega / (1 + q^a) * (a * q^(a - 1)) below theta, A above."""
  a = Bounded.const(ALPHA) - Bounded(y)
  if delta < THETA:
    q = Bounded(delta) / EPSILON
    return (OMEGA / (1 + _pow(q, a))) * (a * _pow(q, a - 1)) / EPSILON
  r = Bounded.const(THETA / EPSILON)
  return (OMEGA * a * _pow(r, a - 1)) / (EPSILON * (1 + _pow(r, a)))


DELTAS = (0.125, 0.25, 0.375, 0.4375, 0.5, 0.625, 1.0, 1.5)


@pytest.mark.parametrize("y", [0.0, 0.5, 1.0])
def test_adaptive_wing_equals_the_paper_formula(y):
  """Both branches, errors of either sign, three targets."""
  deltas = np.array(DELTAS + tuple(-d for d in DELTAS))
  pred = np.float32(y) - deltas.astype(np.float32)
  target = np.full_like(pred, y)
  got = np.asarray(losses.adaptive_wing(jnp.asarray(pred),
                                        jnp.asarray(target)))
  assert got.dtype == np.float32
  for g, d in zip(got, np.abs(deltas)):
    mirror = _awing_mirror(float(d), y)
    want = _awing_f64(float(d), y)
    # The mirror follows the implementation, the reference the paper: the
    # same number in float64 (a few dozen float64 roundings apart).
    assert mirror.value == pytest.approx(want, rel=64 * numerics.U64)
    numerics.assert_within(g, want, mirror.err, f"delta={d}, y={y}")


@pytest.mark.parametrize("y", [0.0, 0.5, 1.0])
def test_adaptive_wing_is_continuous_with_equal_slopes_at_theta(y):
  """Just below theta (small branch) and at theta (linear branch) the
  values and the slopes agree."""
  below = float(np.nextafter(np.float32(THETA), np.float32(0)))
  deltas = np.array([below, THETA], np.float32)
  target = jnp.full((2,), y, jnp.float32)
  pred = jnp.asarray(np.float32(y) - deltas)
  values = np.asarray(losses.adaptive_wing(pred, target))
  grads = np.abs(np.asarray(jax.grad(
      lambda p: jnp.sum(losses.adaptive_wing(p, target)))(pred)))
  m_below, m_at = _awing_mirror(below, y), _awing_mirror(THETA, y)
  # The exact function moves by at most slope * (theta - below).
  gap = _awing_slope_f64(THETA, y) * (THETA - below)
  numerics.assert_within(values[0], values[1],
                         m_below.err + m_at.err + gap, f"value, y={y}")
  s_below, s_at = _slope_mirror(below, y), _slope_mirror(THETA, y)
  numerics.assert_within(grads[0], _awing_slope_f64(below, y), s_below.err,
                         f"slope below theta, y={y}")
  numerics.assert_within(grads[1], _awing_slope_f64(THETA, y), s_at.err,
                         f"slope at theta, y={y}")
  slope_gap = abs(_awing_slope_f64(below, y) - _awing_slope_f64(THETA, y))
  numerics.assert_within(grads[0], grads[1],
                         s_below.err + s_at.err + slope_gap,
                         f"slopes, y={y}")
  # Well apart from rounding: the two branches' slopes really are one.
  assert slope_gap < 1e-5 * _awing_slope_f64(THETA, y)


def test_adaptive_wing_gradient_is_finite_at_zero_error():
  """pred == target: a zero, finite gradient (no 0^(a-1) blow-up)."""
  target = jnp.array([[0.0, 0.5, 1.0, 0.25]])
  grad = jax.grad(lambda p: jnp.sum(losses.adaptive_wing(p, target)))(
      target)
  np.testing.assert_array_equal(grad, np.zeros((1, 4)))
  # A tiny error: finite, pointing back to the target.
  pred = target + 2.0**-20
  grad = np.asarray(jax.grad(
      lambda p: jnp.sum(losses.adaptive_wing(p, target)))(pred))
  assert np.all(np.isfinite(grad)) and np.all(grad > 0)
  values = np.asarray(losses.adaptive_wing(target, target))
  np.testing.assert_array_equal(values, np.zeros((1, 4)))


def test_adaptive_wing_keeps_the_shape_and_takes_other_constants():
  """Elementwise on [B, H, W, K]; the constants are honoured."""
  rng = np.random.default_rng(0)
  pred = rng.random((2, 4, 4, 3)).astype(np.float32)
  target = rng.random((2, 4, 4, 3)).astype(np.float32)
  got = losses.adaptive_wing(jnp.asarray(pred), jnp.asarray(target))
  assert got.shape == (2, 4, 4, 3)
  doubled = losses.adaptive_wing(jnp.asarray(pred), jnp.asarray(target),
                                 omega=28.0)
  # Every term is proportional to omega (A and C are): exactly twice.
  np.testing.assert_array_equal(doubled, 2 * np.asarray(got))


def test_heatmap_weight_map_dilates_3x3_and_thresholds_strictly():
  """M = 1 on the 3x3 neighbourhood of every value > 0.2, per channel."""
  target = np.zeros((1, 8, 10, 2), np.float32)
  target[0, 1, 1, 0] = 1.0
  target[0, 5, 5, 0] = 0.3
  target[0, 1, 8, 0] = 0.2  # not > 0.2 (same float32 number)
  target[0, 6, 1, 0] = np.nextafter(np.float32(0.2), np.float32(1))
  target[0, 7, 9, 0] = 0.25  # a corner: the window is cut
  target[0, 3, 3, 1] = 0.9  # another channel, another map
  got = np.asarray(losses.heatmap_weight_map(jnp.asarray(target)))
  want = np.zeros_like(target)
  want[0, 0:3, 0:3, 0] = 1
  want[0, 4:7, 4:7, 0] = 1
  want[0, 5:8, 0:3, 0] = 1
  want[0, 6:8, 8:10, 0] = 1
  want[0, 2:5, 2:5, 1] = 1
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  # Another threshold: only the values above it count.
  strict = np.asarray(losses.heatmap_weight_map(jnp.asarray(target), 0.5))
  want = np.zeros_like(target)
  want[0, 0:3, 0:3, 0] = 1
  want[0, 2:5, 2:5, 1] = 1
  np.testing.assert_array_equal(strict, want)
