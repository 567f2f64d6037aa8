"""Short+long-term attention (Zheng et al., Pluralistic; as used by LaFIn).

For a feature map x [B, H, W, C] with N = H*W positions:

  Q = conv1x1(x) in R^{N x C/4}   (key = query; no separate key conv)
  A = softmax_j(Q_i . Q_j)        (no 1/sqrt(d) scaling)
  short-term: o = A x,            out = gamma * o + x
  long-term (generator only, given the encoder feature `pre` and the hole
  mask M at this resolution):
                c = A pre,        ctx = alpha * M * c + (1 - M) * pre
                out = ResBlock(concat(out, ctx))   (spectral-normalised)

gamma and alpha start at 0, so the layer starts as the identity (plus the
ResBlock). Both attention products share one softmax, so they are computed
as a single attention with the value [x, pre].

Three implementations compute the same numbers:
* "xla": the N x N score matrix is materialised, softmax in float32;
* "chunked": the same in blocks of `CHUNK` queries, each block
  rematerialised in the backward pass (`jax.checkpoint`), so only one
  block's [CHUNK, N] scores exist at a time: the memory-bound choice on TPU
  (256x256 input: N = 4096, a 64 MiB float32 score matrix per image);
* "cudnn": `jax.nn.dot_product_attention` with cuDNN's fused kernel (GPU,
  bf16/fp16): the value is split into heads of size C/4 that all share the
  same query and key, so the N x N matrix never reaches memory.
"auto" picks cudnn on GPU with a 16-bit compute dtype, else xla.

Precision: with a bfloat16 compute dtype the query (and so the unscaled
scores) is rounded to bfloat16 before the float32-accumulated product; the
softmax runs in float32. Scores are not scaled by 1/sqrt(d), so they can be
large and this rounding shifts the weights somewhat; use float32 compute
where exact attention weights matter (scores in strict float32 would cost
several times the layer's bf16 time on GPU).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models import layers

Dtype = Any


def attend_xla(q: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q q^T) v with the score matrix in float32.

  Args:
    q: [B, N, D] queries (= keys).
    v: [B, N, Cv] values.

  Returns:
    [B, N, Cv] in v's dtype.
  """
  scores = jnp.einsum("bnd,bmd->bnm", q, q,
                      preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bnm,bmc->bnc", weights.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(v.dtype)


# Queries per block of the "chunked" implementation.
CHUNK = 512


def attend_chunked(q: jax.Array, v: jax.Array, chunk: int = CHUNK
                   ) -> jax.Array:
  """`attend_xla` over blocks of `chunk` queries, one block at a time.

  Each block's scores and softmax are recomputed in the backward pass
  instead of being kept, so the peak is one [B, chunk, N] block rather than
  the [B, N, N] matrix (and its softmax) for the whole map.
  """
  b, n, d = q.shape
  if n <= chunk or n % chunk:
    return attend_xla(q, v)

  @jax.checkpoint
  def block(q_block):                                # [B, chunk, D]
    scores = jnp.einsum("bnd,bmd->bnm", q_block, q,
                        preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bnm,bmc->bnc", weights.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(v.dtype)

  blocks = q.reshape(b, n // chunk, chunk, d).swapaxes(0, 1)
  out = jax.lax.map(block, blocks)                   # [N/chunk, B, chunk, Cv]
  return out.swapaxes(0, 1).reshape(b, n, v.shape[-1])


def attend_fused(q: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
  """The same product through `jax.nn.dot_product_attention`.

  The value's channels are split into heads of q's width; every head uses the
  same query and key, which is exactly one shared softmax applied to all
  value channels.
  """
  b, n, d = q.shape
  cv = v.shape[-1]
  if cv % d:
    raise ValueError(f"value width {cv} is not a multiple of query width {d}")
  heads = cv // d
  qh = jnp.broadcast_to(q[:, :, None, :], (b, n, heads, d))
  vh = v.reshape(b, n, heads, d)
  out = jax.nn.dot_product_attention(qh, qh, vh, scale=1.0,
                                     implementation=implementation)
  return out.reshape(b, n, cv)


IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn")


def resolve_impl(impl: str, dtype: Dtype) -> str:
  """Maps "auto" to the best implementation for this backend and dtype."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be "
                     f"{'|'.join(IMPLEMENTATIONS)}, got {impl!r}")
  if impl != "auto":
    return impl
  sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16),
                                     jnp.dtype(jnp.float16))
  return "cudnn" if jax.default_backend() == "gpu" and sixteen_bit else "xla"


class AttentionResBlock(nn.Module):
  """Pluralistic's ResBlock after the long-term attention.

  Pre-activation, no norm, spectral norm on all three convs:
  main = conv3x3(lrelu(conv3x3(lrelu(x)))), shortcut = conv1x1(x).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
    sn = dict(use_bias=True, dtype=self.dtype)
    h = nn.leaky_relu(x, 0.01)
    h = layers.SpectralConv(self.features, 3, padding=1, name="conv1", **sn)(
        h, update_stats=update_stats)
    h = nn.leaky_relu(h, 0.01)
    h = layers.SpectralConv(self.features, 3, padding=1, name="conv2", **sn)(
        h, update_stats=update_stats)
    shortcut = layers.SpectralConv(self.features, 1, name="bypass", **sn)(
        x, update_stats=update_stats)
    return h + shortcut


class LongShortAttention(nn.Module):
  """LaFIn's `Auto_Attn`; see the module docstring.

  Attributes:
    long_term: build the long-term branch (generator); the discriminator uses
      only the short-term self-attention.
    impl: "auto" | "xla" | "chunked" | "cudnn".
  """
  long_term: bool = True
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, pre: jax.Array | None = None,
               mask: jax.Array | None = None, *,
               update_stats: bool = False) -> jax.Array:
    b, h, w, c = x.shape
    n = h * w
    if self.long_term and (pre is None or mask is None):
      raise ValueError("long-term attention needs `pre` and `mask`")
    q = layers.conv(c // 4, 1, dtype=self.dtype, name="query_conv")(x)
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)

    x_flat = x.reshape(b, n, c).astype(self.dtype)
    values = x_flat
    if self.long_term:
      pre_flat = pre.reshape(b, n, c).astype(self.dtype)
      values = jnp.concatenate([x_flat, pre_flat], axis=-1)  # [B, N, 2C]
    q = q.reshape(b, n, c // 4)
    impl = resolve_impl(self.impl, self.dtype)
    if impl == "xla":
      attended = attend_xla(q, values)
    elif impl == "chunked":
      attended = attend_chunked(q, values)
    else:
      attended = attend_fused(q, values, impl)

    out = gamma.astype(self.dtype) * attended[..., :c] + x_flat
    out = out.reshape(b, h, w, c)
    if not self.long_term:
      return out

    alpha = self.param("alpha", nn.initializers.zeros, (), jnp.float32)
    m = mask.reshape(b, n, 1).astype(self.dtype)
    context = (alpha.astype(self.dtype) * m * attended[..., c:]
               + (1 - m) * pre_flat)
    context = context.reshape(b, h, w, c)
    return AttentionResBlock(c, dtype=self.dtype, name="model")(
        jnp.concatenate([out, context], axis=-1), update_stats=update_stats)
