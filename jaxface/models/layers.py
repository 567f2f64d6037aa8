"""Building blocks shared by the networks.

All layers are channels-last (NHWC). Parameters are stored in float32 and the
arithmetic runs in the module's `dtype` (the config's compute dtype);
statistics (instance norm moments, spectral-norm power iteration) are always
computed in float32.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# LaFIn / EdgeConnect initialise every conv with N(0, 0.02) and zero bias.
default_kernel_init = nn.initializers.normal(stddev=0.02)

# The spectral-norm power-iteration vectors live in their own collection so
# that they never mix with BatchNorm statistics (`batch_stats`).
SPECTRAL_STATS = "spectral_norm_stats"


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding of the two spatial axes of an NHWC tensor."""
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Instance norm without affine parameters (PyTorch InstanceNorm2d default).

  Per sample and channel over H and W, biased variance, moments in float32.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def conv(features: int, kernel: int, *, stride: int = 1, padding: int = 0,
         dilation: int = 1, use_bias: bool = True, dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A PyTorch-style Conv2d: explicit zero padding, N(0, 0.02) init."""
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      kernel_dilation=(dilation, dilation), use_bias=use_bias, dtype=dtype,
      kernel_init=default_kernel_init, name=name)


def conv_transpose(features: int, *, dtype: Dtype = jnp.float32,
                   name: str | None = None) -> nn.ConvTranspose:
  """PyTorch `ConvTranspose2d(k=4, s=2, p=1)`: doubles H and W exactly.

  With `transpose_kernel=True` the kernel is stored as (kh, kw, out, in), which
  is PyTorch's (in, out, kh, kw) transposed by (2, 3, 1, 0); the padding is
  `k - 1 - p = 2` on each side of the dilated input.
  """
  return nn.ConvTranspose(
      features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
      transpose_kernel=True, dtype=dtype, kernel_init=default_kernel_init,
      name=name)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  # Full float32: accelerators would otherwise use TF32 / one bf16 pass.
  return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


class SpectralConv(nn.Module):
  """Conv2d with a spectrally normalised kernel (Miyato et al., 2018).

  A true reparameterisation: the stored kernel stays the raw W and the layer
  convolves with W / sigma(W). sigma is estimated by power iteration on the
  (out, kh*kw*in) matrix view of W with vectors `u` [out] and `v` [kh*kw*in]
  kept in the `spectral_norm_stats` collection. As in PyTorch's
  `torch.nn.utils.spectral_norm`:

  * `update_stats=True` (training) runs one power-iteration step, stores the
    new `u`, `v`, and uses them; gradients flow through W in both the
    numerator and sigma = u^T W v, not through `u`, `v`.
  * `update_stats=False` uses the stored `u`, `v` unchanged.
  * At initialisation `init_iterations` steps converge `u`, `v` to the
    kernel's leading singular vectors.

  Note the matrix view flattens the kernel in (kh, kw, in) order, whereas
  PyTorch flattens (in, kh, kw); importers permute `v` accordingly.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = False
  eps: float = 1e-12
  init_iterations: int = 15
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
    k = self.kernel_size
    in_features = x.shape[-1]
    kernel = self.param("kernel", default_kernel_init,
                        (k, k, in_features, self.features), jnp.float32)
    w_mat = kernel.reshape(-1, self.features).T  # [out, kh*kw*in]

    def init_vector(n):
      key = self.make_rng("params")
      return _l2_normalize(jax.random.normal(key, (n,), jnp.float32), self.eps)

    u_var = self.variable(SPECTRAL_STATS, "u", init_vector, self.features)
    v_var = self.variable(SPECTRAL_STATS, "v", init_vector, w_mat.shape[1])
    u, v = u_var.value, v_var.value
    if self.is_initializing() or update_stats:
      # At initialisation, converge the vectors first (as PyTorch's
      # parametrisation does) so that even an eval-mode call on fresh weights
      # divides by a meaningful sigma; in training, one step per call.
      steps = self.init_iterations if self.is_initializing() else 1
      w_const = jax.lax.stop_gradient(w_mat)
      for _ in range(steps):
        v = _l2_normalize(_dot(w_const.T, u), self.eps)
        u = _l2_normalize(_dot(w_const, v), self.eps)
      u_var.value, v_var.value = u, v
    sigma = _dot(u, _dot(w_mat, v))
    w = (kernel / sigma).astype(self.dtype)
    pad = ((self.padding, self.padding),) * 2
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w, (self.stride, self.stride), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def resize_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of [B, H, W, C] with `align_corners=True` semantics.

  Output sample i sits at input position i * (in - 1) / (out - 1), as
  PyTorch's `F.interpolate(..., mode='bilinear', align_corners=True)`.
  (`jax.image.resize` uses half-pixel centres, which differs at the borders.)
  """

  def axis_weights(n_in: int, n_out: int) -> jax.Array:
    # [n_out, n_in] interpolation matrix.
    if n_out == 1:
      pos = jnp.zeros((1,), jnp.float32)
    else:
      pos = jnp.arange(n_out, dtype=jnp.float32) * (n_in - 1) / (n_out - 1)
    lo = jnp.clip(jnp.floor(pos), 0, n_in - 1).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    return (jax.nn.one_hot(lo, n_in) * (1 - frac)[:, None]
            + jax.nn.one_hot(hi, n_in) * frac[:, None])

  out_h, out_w = size
  wy = axis_weights(x.shape[1], out_h)
  wx = axis_weights(x.shape[2], out_w)
  x32 = x.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum("oh,bhwc->bowc", wy, x32, precision=hi)
  y = jnp.einsum("pw,bowc->bopc", wx, y, precision=hi)
  return y.astype(x.dtype)


def landmark_map(landmarks: jax.Array, height: int, width: int) -> jax.Array:
  """LaFIn's landmark input: one lit pixel per landmark.

  Args:
    landmarks: [B, P, 2] pixel (x, y), integer-centred.
    height, width: the map size.

  Returns:
    [B, H, W, 1] float32, 1 at (round(y), round(x)) of each landmark (clamped
    into the image), 0 elsewhere.
  """
  b, p, _ = landmarks.shape
  xy = jnp.floor(landmarks + 0.5).astype(jnp.int32)
  x = jnp.clip(xy[..., 0], 0, width - 1)
  y = jnp.clip(xy[..., 1], 0, height - 1)
  batch = jnp.broadcast_to(jnp.arange(b)[:, None], (b, p))
  out = jnp.zeros((b, height, width), jnp.float32)
  out = out.at[batch, y, x].set(1.0)
  return out[..., None]
