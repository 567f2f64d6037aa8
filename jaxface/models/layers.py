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


# Named `jax.checkpoint_policies` a network's `remat` attribute may take:
# what each rematerialised block keeps for the backward pass ("none": no
# rematerialisation, everything is kept).
REMAT_POLICIES = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "nothing_saveable")


def remat(target: Any, policy: str) -> Any:
  """`nn.remat(target)` under the named policy; `target` itself for "none".

  `target` is a Module class or a function whose first argument is a Module
  (e.g. `lambda conv, x: nn.relu(conv(x))`); parameter names are unchanged.
  Within a block, "dots_saveable" keeps the convolutions' and matrix
  products' outputs and recomputes the rest (norms, activations, padding);
  "nothing_saveable" keeps only the block's inputs.
  """
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat policy must be one of {REMAT_POLICIES}, got "
                     f"{policy!r}")
  if policy == "none":
    return target
  return nn.remat(target, policy=getattr(jax.checkpoint_policies, policy))


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


def same_conv(features: int, kernel: int, *, stride: int = 1,
              use_bias: bool = True, dtype: Dtype = jnp.float32,
              name: str | None = None) -> nn.Conv:
  """A PyTorch Conv2d with symmetric zero padding of kernel // 2 (flax's
  default initialisers: the reference weights are imported)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 dtype=dtype, name=name)


# Sub-pixel form of a stride-2, 4x4 transposed convolution (padding 1): in
# one dimension output 2m takes input m-1 with tap 3 and m with tap 1; output
# 2m+1 takes m with tap 2 and m+1 with tap 0. Row a of this table lists the
# taps that phase a applies to inputs (m-1+a, m+a).
_SUBPIXEL_TAPS = ((3, 1), (2, 0))


class ConvTranspose(nn.Module):
  """PyTorch `ConvTranspose2d(k=4, s=2, p=1)`: doubles H and W exactly.

  Parameters as `flax.linen.ConvTranspose(transpose_kernel=True)` stores
  them: `kernel` (kh, kw, out, in), which is PyTorch's (in, out, kh, kw)
  transposed by (2, 3, 1, 0), and `bias` (out,).

  Computed in sub-pixel form: each of the four output phases (even/odd row
  x even/odd column) is a 2x2 convolution of the input, and one stride-1
  2x2 convolution with 4 x out channels computes all four, which are then
  interleaved. Same sums as the transposed convolution (16 products per
  output, no multiplications by inserted zeros), and its gradients are
  ordinary stride-1 convolutions: the lhs-dilated form's kernel gradient has
  no fast kernel on XLA:CPU (13 of 24 s of a 128x128 LaFIn step).

  Attributes:
    features: output channels.
    dtype: compute dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, cin = x.shape
    cout = self.features
    kernel = self.param("kernel", default_kernel_init, (4, 4, cout, cin))
    bias = self.param("bias", nn.initializers.zeros_init(), (cout,))
    taps = jnp.asarray(_SUBPIXEL_TAPS)                      # [phase, tap]
    # k[a, dy, c, dx, out, in] = kernel[taps[a, dy], taps[c, dx]].
    k = kernel[taps[:, :, None, None], taps[None, None, :, :]]
    # -> [dy, dx, in, (a, c, out)]: phase-major output channels.
    k = k.transpose(1, 3, 5, 0, 2, 4).reshape(2, 2, cin, 4 * cout)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        x, k.astype(self.dtype), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))   # [B, H+1, W+1, 4*out]
    y = y.reshape(b, h + 1, w + 1, 2, 2, cout)
    # Phase (a, c) reads the windows starting at padded row a, column c.
    rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in (0, 1)], axis=3)
            for a in (0, 1)]                            # [B, H, W, 2, out]
    y = jnp.stack(rows, axis=2)                         # [B, H, 2, W, 2, out]
    y = y.reshape(b, 2 * h, 2 * w, cout)
    return y + bias.astype(self.dtype)


CONV_TRANSPOSE_IMPLS = ("subpixel", "dilated")


def conv_transpose(features: int, *, impl: str = "subpixel",
                   dtype: Dtype = jnp.float32,
                   name: str | None = None) -> nn.Module:
  """PyTorch `ConvTranspose2d(k=4, s=2, p=1)`, the same parameters either way.

  Args:
    features: output channels.
    impl: "subpixel" (`ConvTranspose`) or "dilated": flax's
      `ConvTranspose`, a convolution of the zero-dilated input (its kernel
      gradient is the slow one on XLA:CPU; GPU libraries have native
      kernels for it).
    dtype: compute dtype.
    name: the module name.
  """
  if impl == "subpixel":
    return ConvTranspose(features, dtype=dtype, name=name)
  if impl == "dilated":
    # transpose_kernel=True: kernel (kh, kw, out, in); padding k - 1 - p.
    return nn.ConvTranspose(
        features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
        transpose_kernel=True, dtype=dtype, kernel_init=default_kernel_init,
        name=name)
  raise ValueError(f"conv_transpose impl must be one of "
                   f"{CONV_TRANSPOSE_IMPLS}, got {impl!r}")


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


def resize_square(images: jax.Array, size: int) -> jax.Array:
  """Square images [B, S, S, C] at side `size`: bilinear, antialiased when
  shrinking; unchanged when S is `size` already."""
  b, s, _, c = images.shape
  if s == size:
    return images
  return jax.image.resize(images, (b, size, size, c), "linear",
                          antialias=True)


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
