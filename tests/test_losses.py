"""Each loss against a value computed by hand on small arrays.

The inputs are small dyadic numbers wherever possible, so that every
intermediate is exact in float32 and the result must equal the hand value
exactly; elsewhere the bound comes from a running error analysis.
"""

import jax.numpy as jnp
import numpy as np

import numerics
from jaxface import losses


def test_hole_l1_divides_by_hole_fraction():
  out = jnp.zeros((1, 2, 2, 1))
  target = jnp.array([[[[1.0], [0.0]], [[0.5], [0.0]]]])
  mask = jnp.array([[[[1.0], [0.0]], [[0.0], [0.0]]]])
  # mean |out - target| = 1.5 / 4; mean(mask) = 1 / 4. All exact.
  assert float(losses.hole_l1(out, target, mask)) == 1.5


def test_hole_l1_without_holes_is_finite():
  x = jnp.ones((1, 2, 2, 3))
  assert np.isfinite(float(losses.hole_l1(x, 0 * x, 0 * x[..., :1])))


def test_perceptual_sums_layer_means():
  a = {"r1": jnp.array([[[[1.0, 2.0]]]]), "r2": jnp.array([[[[3.0]]]]),
       "unused": jnp.array([100.0])}
  b = {"r1": jnp.array([[[[0.0, 0.0]]]]), "r2": jnp.array([[[[1.0]]]]),
       "unused": jnp.array([0.0])}
  # mean(|1|, |2|) + |3 - 1| = 1.5 + 2. All exact.
  assert float(losses.perceptual(a, b, ["r1", "r2"])) == 3.5


def test_gram_by_hand():
  # One sample, 1x2 spatial, 2 channels: F = [[1, 3], [2, 4]] (C x HW).
  f = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # [B=1, H=1, W=2, C=2]
  g = np.asarray(losses.gram(f))[0]
  # F F^T = [[1+9, 2+12], [2+12, 4+16]] / (C H W = 4). All exact.
  np.testing.assert_array_equal(g, [[2.5, 3.5], [3.5, 5.0]])


def test_style_is_mean_abs_gram_difference():
  a = {"r": jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])}
  b = {"r": jnp.zeros((1, 1, 2, 2))}
  # mean of |[[2.5, 3.5], [3.5, 5.0]]| = 14.5 / 4. All exact.
  assert float(losses.style(a, b, ["r"])) == 3.625


def test_total_variation_by_hand():
  x = jnp.array([[[[0.0], [1.0]], [[3.0], [3.0]]]])  # 2x2, one channel
  # vertical |3-0|, |3-1| -> mean 2.5; horizontal |1-0|, |3-3| -> mean 0.5.
  assert float(losses.total_variation(x)) == 3.0


def test_lsgan_by_hand():
  real = jnp.array([0.5, 1.0])
  fake = jnp.array([0.2, 0.4])
  # 0.2 and 0.4 are not float32 numbers: the hand values, with the inputs'
  # representation errors and the float32 steps' rounding as the bound.
  r = numerics.Bounded.const([0.5, 1.0])
  f = numerics.Bounded.const([0.2, 0.4])
  # 0.5 * (mean(0.25, 0) + mean(0.04, 0.16)) = 0.5 * (0.125 + 0.1).
  want = 0.5 * (((r - 1) * (r - 1)).mean() + (f * f).mean())
  numerics.assert_within(float(losses.lsgan_discriminator(real, fake)),
                         want.value, want.err, "lsgan_discriminator")
  # mean(0.64, 0.36).
  want = ((f - 1) * (f - 1)).mean()
  numerics.assert_within(float(losses.lsgan_generator(fake)), want.value,
                         want.err, "lsgan_generator")


def test_losses_are_float32_for_bf16_inputs():
  x = jnp.ones((1, 4, 4, 3), jnp.bfloat16)
  assert losses.total_variation(x).dtype == jnp.float32
  assert losses.gram(x).dtype == jnp.float32
