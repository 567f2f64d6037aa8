"""The attention layer against a direct NumPy transcription of its maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import attention
from jaxface.models import layers

SN = layers.SPECTRAL_STATS


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


def _np_sn_kernel(params, stats):
  kernel = params["kernel"].astype(np.float64)
  w_mat = kernel.reshape(-1, kernel.shape[-1]).T
  sigma = stats["u"] @ w_mat @ stats["v"]
  return kernel / sigma


def _leaky(x):
  return np.where(x > 0, x, 0.01 * x)


def _np_attention(x, pre, mask, params, stats, long_term):
  """REFERENCE.md 2.1 written out with explicit softmax and loops."""
  b, h, w, c = x.shape
  n = h * w
  q = _np_conv(x, params["query_conv"]["kernel"], params["query_conv"]["bias"],
               0).reshape(b, n, c // 4)
  xf = x.reshape(b, n, c)
  out = np.zeros_like(xf)
  ctx = np.zeros_like(xf)
  for i in range(b):
    energy = q[i] @ q[i].T                     # [N, N], no scaling
    energy -= energy.max(axis=1, keepdims=True)
    attn = np.exp(energy)
    attn /= attn.sum(axis=1, keepdims=True)    # softmax over j
    out[i] = params["gamma"] * (attn @ xf[i]) + xf[i]
    if long_term:
      m = mask[i].reshape(n, 1)
      pf = pre[i].reshape(n, c)
      ctx[i] = params["alpha"] * m * (attn @ pf) + (1 - m) * pf
  out = out.reshape(b, h, w, c)
  if not long_term:
    return out
  cat = np.concatenate([out, ctx.reshape(b, h, w, c)], axis=-1)
  rb, rs = params["model"], stats["model"]
  hdn = _np_conv(_leaky(cat), _np_sn_kernel(rb["conv1"], rs["conv1"]),
                 rb["conv1"]["bias"], 1)
  hdn = _np_conv(_leaky(hdn), _np_sn_kernel(rb["conv2"], rs["conv2"]),
                 rb["conv2"]["bias"], 1)
  short = _np_conv(cat, _np_sn_kernel(rb["bypass"], rs["bypass"]),
                   rb["bypass"]["bias"], 0)
  return hdn + short


def _randomise(tree, seed):
  """Non-zero gamma/alpha and biases so every term is exercised."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  leaves = [rng.normal(0, 0.3, np.shape(l)).astype(np.float32) for l in leaves]
  return jax.tree.unflatten(treedef, leaves)


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
  stats = variables.get(SN, {})
  got = module.apply({"params": params, SN: stats}, *args, update_stats=False)
  np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  np_stats = jax.tree.map(lambda a: np.asarray(a, np.float64), stats)
  want = _np_attention(x.astype(np.float64), pre.astype(np.float64),
                       mask.astype(np.float64), np_params, np_stats, long_term)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_attention_starts_as_identity_in_short_term():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 8)),
                  jnp.float32)
  module = attention.LongShortAttention(long_term=False, impl="xla")
  variables = module.init(jax.random.key(0), x)
  np.testing.assert_allclose(module.apply(variables, x), x, atol=1e-6)


def test_fused_attention_path_equals_xla():
  # The head-split formulation (used with cuDNN on GPU) computes the same
  # numbers; on CPU the XLA implementation of dot_product_attention runs it.
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(2, 20, 4)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, 20, 16)), jnp.float32)
  np.testing.assert_allclose(attention.attend_fused(q, v, "xla"),
                             attention.attend_xla(q, v), rtol=1e-5, atol=1e-5)


def test_resolve_impl():
  assert attention.resolve_impl("xla", jnp.bfloat16) == "xla"
  if jax.default_backend() == "cpu":
    assert attention.resolve_impl("auto", jnp.bfloat16) == "xla"
  with pytest.raises(ValueError, match="auto|xla|cudnn"):
    attention.resolve_impl("flash", jnp.float32)
