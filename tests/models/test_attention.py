"""The attention layer against a direct NumPy transcription of its maths.

The transcription runs in float64 and carries, beside every value, a
first-order running bound on the error of the float32 layer (Higham ch. 3:
a k-term sum is off by at most gamma(k) times the sum of its |terms|, and
errors already in the terms propagate through the |coefficients|). The
comparison then holds for any CPU's summation order and still sits at
float32's resolution.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from jaxface.models import attention
from jaxface.models import layers

SN = layers.SPECTRAL_STATS
U = numerics.U32
EXP_U = numerics.FN_U  # XLA's exp: within 1.5 u measured, 4 u allowed
DIV_U = numerics.DIV_U
# An exp that underflows (or is flushed to zero) is off by at most this.
TINY = float(np.finfo(np.float32).tiny)


def _np_conv(x, kernel, bias, pad):
  """'Same'-size stride-1 conv of [B, H, W, Cin] with [k, k, Cin, Cout]."""
  k = kernel.shape[0]
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros((b, h, w, kernel.shape[-1]))
  for dy in range(k):
    for dx in range(k):
      out += xp[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
  return out + bias


def _conv(x, x_err, kernel, kernel_rel_err, bias, pad):
  """The conv and its error bound, given the inputs' error bounds."""
  x_abs, k_abs = np.abs(x), np.abs(kernel)
  terms = numerics.np_conv(x_abs, k_abs, pad)
  err = (numerics.conv_bound(x_abs, k_abs, np.abs(bias), pad)  # own sums
         + numerics.np_conv(x_err, k_abs, pad)                # input error
         + kernel_rel_err * terms)                             # kernel error
  return _np_conv(x, kernel, bias, pad), err


def _np_sn_kernel(params, stats):
  """kernel / sigma and the relative error bound of the float32 quotient."""
  kernel = params["kernel"].astype(np.float64)
  w_mat = kernel.reshape(-1, kernel.shape[-1]).T
  u, v = stats["u"], stats["v"]
  sigma = u @ w_mat @ v
  # sigma = u . (W v): each term passes at most K + Cout roundings.
  sigma_err = numerics.gamma(w_mat.size // len(u) + len(u)) * (
      np.abs(u) @ np.abs(w_mat) @ np.abs(v))
  return kernel / sigma, sigma_err / abs(sigma) + DIV_U


def _leaky(x, x_err):
  """Leaky ReLU and its error bound."""
  # The function is 1-Lipschitz, and 0.01-Lipschitz where the error cannot
  # reach across 0; on the negative side 0.01 is rounded to float32 and the
  # product rounded (2 u).
  slope = np.where(np.abs(x) > x_err, np.where(x > 0, 1.0, 0.01), 1.0)
  return (np.where(x > 0, x, 0.01 * x),
          slope * x_err + np.where(x > 0, 0.0, 2 * U * 0.01 * np.abs(x)))


def _attend(q, q_err, v):
  """softmax(q q^T) v of one sample [N, D], [N, Cv], with its error bound."""
  n = q.shape[0]
  energy = q @ q.T                           # [N, N], no scaling
  energy_err = numerics.matmul_bound(q, q.T, q_err, q_err.T)
  shifted = energy - energy.max(axis=1, keepdims=True)
  attn = np.exp(shifted)
  attn /= attn.sum(axis=1, keepdims=True)    # softmax over j
  # Relative error of attn_ij: the energies' errors dE_ij - sum_k attn_ik
  # dE_ik (a common shift cancels); u |E_ij - max_i| from the subtraction
  # before exp and exp's own error, for the term and, weighted, for the
  # terms of the sum; gamma(N) for the sum; the division.
  shift_err = U * np.abs(shifted) + EXP_U
  rel = (energy_err + (attn * energy_err).sum(axis=1, keepdims=True)
         + shift_err + (attn * shift_err).sum(axis=1, keepdims=True)
         + numerics.gamma(n) + DIV_U)
  return attn @ v, numerics.matmul_bound(attn, v, rel * attn + TINY)


def _np_attention(x, pre, mask, params, stats, long_term):
  """REFERENCE.md 2.1 written out, with the float32 layer's error bound."""
  b, h, w, c = x.shape
  n = h * w
  qp = params["query_conv"]
  q = _np_conv(x, qp["kernel"], qp["bias"], 0).reshape(b, n, c // 4)
  # C products and the bias per element: gamma(C + 1) * sum |terms|.
  q_err = numerics.conv_bound(np.abs(x), np.abs(qp["kernel"]),
                              np.abs(qp["bias"])).reshape(b, n, c // 4)
  xf = x.reshape(b, n, c)
  pf = pre.reshape(b, n, c)
  values = np.concatenate([xf, pf], axis=-1) if long_term else xf
  att, att_err = map(np.stack, zip(*[_attend(q[i], q_err[i], values[i])
                                     for i in range(b)]))
  g = params["gamma"]
  out = g * att[..., :c] + xf
  # gamma * A x, then + x: one rounding each.
  out_err = (abs(g) * att_err[..., :c] + U * np.abs(g * att[..., :c])
             + U * np.abs(out))
  if not long_term:
    return out.reshape(b, h, w, c), out_err.reshape(b, h, w, c)
  m = mask.reshape(b, n, 1)
  am = params["alpha"] * m
  ctx = am * att[..., c:] + (1 - m) * pf
  # (alpha * M) * (A pre) and (1 - M) * pre: two roundings each; the sum.
  ctx_err = (np.abs(am) * att_err[..., c:] + 2 * U * np.abs(am * att[..., c:])
             + 2 * U * np.abs((1 - m) * pf) + U * np.abs(ctx))
  cat = np.concatenate([out, ctx], axis=-1).reshape(b, h, w, 2 * c)
  cat_err = np.concatenate([out_err, ctx_err], axis=-1).reshape(cat.shape)
  rb, rs = params["model"], stats["model"]

  def sn_conv(name, x, x_err, pad):
    return _conv(x, x_err, *_np_sn_kernel(rb[name], rs[name]),
                 rb[name]["bias"], pad)

  hdn, hdn_err = sn_conv("conv1", *_leaky(cat, cat_err), 1)
  hdn, hdn_err = sn_conv("conv2", *_leaky(hdn, hdn_err), 1)
  short, short_err = sn_conv("bypass", cat, cat_err, 0)
  y = hdn + short
  return y, hdn_err + short_err + U * np.abs(y)


def _randomise(tree, seed):
  """Non-zero gamma/alpha and biases so every term is exercised."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  leaves = [rng.normal(0, 0.3, np.shape(l)).astype(np.float32) for l in leaves]
  return jax.tree.unflatten(treedef, leaves)


def _singular_vectors(params, stats):
  """Spectral-norm stats holding the kernels' leading singular vectors.

  The vectors from `init` belong to the initial N(0, 0.02) kernels, not the
  randomised ones; with them sigma = u^T W v nearly cancelled (-0.007 for
  conv1, against sum |u_i W_ij v_j| = 6), which scaled the ResBlock by ~100
  and made the output ill-conditioned. As after training, sigma is now the
  spectral norm.
  """
  def vectors(kernel):
    kernel = np.asarray(kernel, np.float64)
    left, _, right = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]).T)
    return {"u": left[:, 0].astype(np.float32),
            "v": right[0].astype(np.float32)}
  return {"model": {name: vectors(params["model"][name]["kernel"])
                    for name in stats["model"]}}


@pytest.mark.parametrize("long_term", [True, False])
def test_attention_equals_numpy(long_term):
  rng = np.random.default_rng(0)
  b, h, w, c = 2, 6, 5, 8
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  pre = rng.normal(size=(b, h, w, c)).astype(np.float32)
  mask = (rng.random((b, h, w, 1)) > 0.5).astype(np.float32)
  mask[0, :2] = 0.3  # soft values, as the align-corners resize produces
  module = attention.LongShortAttention(long_term=long_term, impl="xla")
  args = (x, pre, mask) if long_term else (x,)
  variables = module.init(jax.random.key(0), *args)
  params = _randomise(variables["params"], 1)
  stats = _singular_vectors(params, variables[SN]) if long_term else {}
  got = module.apply({"params": params, SN: stats}, *args, update_stats=False)
  np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  np_stats = jax.tree.map(lambda a: np.asarray(a, np.float64), stats)
  want, bound = _np_attention(
      x.astype(np.float64), pre.astype(np.float64), mask.astype(np.float64),
      np_params, np_stats, long_term)
  numerics.assert_within(got, want, bound, "attention vs float64 NumPy")


def test_attention_starts_as_identity_in_short_term():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 8)),
                  jnp.float32)
  module = attention.LongShortAttention(long_term=False, impl="xla")
  variables = module.init(jax.random.key(0), x)
  # gamma = 0: 0 * (A x) + x is x exactly.
  np.testing.assert_array_equal(module.apply(variables, x), x)


def test_fused_attention_path_equals_xla():
  # The head-split formulation (used with cuDNN on GPU) computes the same
  # numbers; on CPU the XLA implementation of dot_product_attention runs it.
  rng = np.random.default_rng(2)
  q = rng.normal(size=(2, 20, 4)).astype(np.float32)
  v = rng.normal(size=(2, 20, 16)).astype(np.float32)
  want, bound = map(np.stack, zip(*[
      _attend(q[i].astype(np.float64), np.zeros(q.shape[1:]),
              v[i].astype(np.float64)) for i in range(len(q))]))
  # Both within float32's error bound of the exact product, so within twice
  # that of each other.
  numerics.assert_within(attention.attend_fused(q, v, "xla"), want, bound,
                         "fused attention vs float64")
  numerics.assert_within(attention.attend_xla(q, v), want, bound,
                         "XLA attention vs float64")


def test_chunked_attention_equals_xla_with_gradients():
  # Blocks of 8 queries over 32 positions: the same sums per output as the
  # whole matrix, so equal to the float32 bound of the exact product; the
  # gradients (recomputed per block) equal the unchunked ones likewise.
  rng = np.random.default_rng(4)
  q = rng.normal(size=(2, 32, 4)).astype(np.float32)
  v = rng.normal(size=(2, 32, 8)).astype(np.float32)
  want, bound = map(np.stack, zip(*[
      _attend(q[i].astype(np.float64), np.zeros(q.shape[1:]),
              v[i].astype(np.float64)) for i in range(len(q))]))
  chunked = jax.jit(lambda q, v: attention.attend_chunked(q, v, chunk=8))
  numerics.assert_within(chunked(q, v), want, bound, "chunked vs float64")
  loss = lambda f: lambda q, v: jnp.sum(jnp.sin(f(q, v)))
  g_chunk = jax.grad(loss(lambda q, v: attention.attend_chunked(q, v, 8)),
                     argnums=(0, 1))(q, v)
  g_xla = jax.grad(loss(attention.attend_xla), argnums=(0, 1))(q, v)
  for a, b in zip(g_chunk, g_xla):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # A map that is not a multiple of the block is attended whole.
  np.testing.assert_array_equal(attention.attend_chunked(q[:, :20], v[:, :20],
                                                         chunk=8),
                                attention.attend_xla(q[:, :20], v[:, :20]))


def test_resolve_impl():
  assert attention.resolve_impl("xla", jnp.bfloat16) == "xla"
  if jax.default_backend() == "cpu":
    assert attention.resolve_impl("auto", jnp.bfloat16) == "xla"
  assert attention.resolve_impl("chunked", jnp.float32) == "chunked"
  with pytest.raises(ValueError, match="auto|xla|chunked|cudnn"):
    attention.resolve_impl("flash", jnp.float32)
