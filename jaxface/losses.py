"""Loss functions, all computed in float32.

Inpainting (LaFIn; REFERENCE.md section 5). Notation: `output` is the raw
generator output, `target` the ground truth, `mask` 1 in the hole, images
[B, H, W, C] in [0, 1], VGG features dicts of [B, h, w, c].

Landmark heatmaps (AdaptiveWing; REFERENCE.md section 7.2): `adaptive_wing`
per pixel and `heatmap_weight_map`, the map that weights the pixels near
each landmark and boundary W + 1 times.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

# Guards the hole-fraction normaliser for a batch without holes.
_EPS = 1e-8


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def hole_l1(output: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """mean |output - target| over the whole image, divided by mean(mask).

  The division by the hole fraction keeps the weight of the reconstruction
  term independent of how much of the image is hidden.
  """
  l1 = jnp.mean(jnp.abs(_f32(output) - _f32(target)))
  return l1 / jnp.maximum(jnp.mean(_f32(mask)), _EPS)


def perceptual(features_out: Mapping[str, jax.Array],
               features_target: Mapping[str, jax.Array],
               layer_names: Sequence[str]) -> jax.Array:
  """Sum over layers of the element mean of |phi(output) - phi(target)|."""
  return sum(jnp.mean(jnp.abs(_f32(features_out[k]) - _f32(features_target[k])))
             for k in layer_names)


def gram(features: jax.Array) -> jax.Array:
  """Per-sample Gram matrix F F^T / (C H W) of [B, H, W, C] -> [B, C, C]."""
  b, h, w, c = features.shape
  f = features.reshape(b, h * w, c)
  g = jnp.einsum("bnc,bnd->bcd", f, f, preferred_element_type=jnp.float32)
  return g / (c * h * w)


def style(features_out: Mapping[str, jax.Array],
          features_target: Mapping[str, jax.Array],
          layer_names: Sequence[str]) -> jax.Array:
  """Sum over layers of the element mean of |Gram(out) - Gram(target)|.

  LaFIn feeds the hole-masked images (`output * mask`, `target * mask`) to VGG
  for this term; the caller does the masking.
  """
  return sum(jnp.mean(jnp.abs(gram(features_out[k]) - gram(features_target[k])))
             for k in layer_names)


def total_variation(x: jax.Array) -> jax.Array:
  """Mean absolute difference of vertical plus horizontal neighbours."""
  x = _f32(x)
  dy = jnp.mean(jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]))
  dx = jnp.mean(jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]))
  return dy + dx


def lsgan_discriminator(real_prob: jax.Array,
                        fake_prob: jax.Array) -> jax.Array:
  """(mean (D(real) - 1)^2 + mean D(fake)^2) / 2 on sigmoid outputs."""
  return 0.5 * (jnp.mean(jnp.square(_f32(real_prob) - 1))
                + jnp.mean(jnp.square(_f32(fake_prob))))


def lsgan_generator(fake_prob: jax.Array) -> jax.Array:
  """mean (D(fake) - 1)^2 on sigmoid outputs."""
  return jnp.mean(jnp.square(_f32(fake_prob) - 1))


# ------------------------------------------------------- landmark heatmaps
# Adaptive Wing constants of the paper (and of mmpose's defaults).
AWING_ALPHA, AWING_OMEGA, AWING_EPSILON, AWING_THETA = 2.1, 14.0, 1.0, 0.5


def adaptive_wing(pred: jax.Array, target: jax.Array, *,
                  alpha: float = AWING_ALPHA, omega: float = AWING_OMEGA,
                  epsilon: float = AWING_EPSILON,
                  theta: float = AWING_THETA) -> jax.Array:
  """The Adaptive Wing loss of every pixel (same shape as the inputs).

  With d = |target - pred| and the exponent a = alpha - target:

    d < theta:  omega * ln(1 + (d / epsilon)^a)
    otherwise:  A * d - C, with A = omega * a * (theta/epsilon)^(a-1)
                / (epsilon * (1 + (theta/epsilon)^a)) and
                C = theta * A - omega * ln(1 + (theta/epsilon)^a),

  so the two pieces meet, with equal slopes, at d = theta. Near a
  foreground pixel (target ~ 1, exponent ~ 1.1) small errors keep a large
  gradient; on the background (exponent 2.1) the loss is nearly quadratic.
  """
  pred, target = _f32(pred), _f32(target)
  delta = jnp.abs(target - pred)
  a = alpha - target
  r = theta / epsilon
  big_a = omega * a * r ** (a - 1) / (epsilon * (1 + r ** a))
  big_c = theta * big_a - omega * jnp.log1p(r ** a)
  # The small-error branch at min(delta, theta): finite gradients on both
  # sides of where().
  small = omega * jnp.log1p((jnp.minimum(delta, theta) / epsilon) ** a)
  return jnp.where(delta < theta, small, big_a * delta - big_c)


def heatmap_weight_map(target: jax.Array, threshold: float = 0.2
                       ) -> jax.Array:
  """M of the paper: 1 where the 3x3 grey dilation of `target` > threshold.

  Args:
    target: [B, H, W, K] heatmaps (landmarks and boundary).
    threshold: the paper's 0.2.

  Returns:
    [B, H, W, K] float32 in {0, 1}; the loss is weighted by W * M + 1.
  """
  dilated = jax.lax.reduce_window(
      _f32(target), -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
      "SAME")
  return (dilated > threshold).astype(jnp.float32)


# ------------------------------------------------------------ classification
def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array,
                          weights: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy of logits [B] against 0/1 labels [B].

  Computed from the logits (`log(1 + exp(-|x|))` form, exact for large
  |x|); with `weights`, their weighted mean (weights summing to B keep the
  scale of the plain mean).
  """
  x, y = _f32(logits), _f32(labels)
  per_example = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
  if weights is None:
    return jnp.mean(per_example)
  w = _f32(weights)
  return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), _EPS)


def balancing_weights(labels: jax.Array) -> jax.Array:
  """[B] weights under which each class present in the batch weighs half.

  A weight is B / (2 n_c) for an example of class c (n_c examples of it in
  the batch); a batch of one class gets weight 1 everywhere.
  """
  y = _f32(labels)
  b = y.shape[0]
  n_pos = jnp.sum(y)
  n_neg = b - n_pos
  both = (n_pos > 0) & (n_neg > 0)
  w = jnp.where(y > 0.5, b / (2 * jnp.maximum(n_pos, 1.0)),
                b / (2 * jnp.maximum(n_neg, 1.0)))
  return jnp.where(both, w, 1.0)
