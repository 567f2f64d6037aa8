"""Tests of the shared layers: norms, padding, resize, SN conv, landmark map."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from jaxface.models import layers

U = numerics.U32


def test_instance_norm_matches_definition():
  x = np.random.default_rng(0).normal(2.0, 3.0, (2, 5, 7, 3)).astype(np.float32)
  y = np.asarray(layers.instance_norm(jnp.asarray(x)))
  # The definition in float64, mirroring the float32 steps for the bound.
  xb = numerics.Bounded(x)
  mean = xb.mean(axis=(1, 2), keepdims=True)
  centred = xb - mean
  var = (centred * centred).mean(axis=(1, 2), keepdims=True)  # biased
  want = centred * (var + 1e-5).fn(lambda v: v**-0.5,
                                   lambda v: -0.5 * v**-1.5)  # rsqrt
  numerics.assert_within(y, want.value, want.err, "instance norm")


def test_instance_norm_keeps_bf16_dtype():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  assert layers.instance_norm(x).dtype == jnp.bfloat16


def test_reflect_pad_mirrors_without_edge_repeat():
  x = jnp.arange(4.0).reshape(1, 1, 4, 1)
  x = jnp.broadcast_to(x, (1, 4, 4, 1))
  y = np.asarray(layers.reflect_pad(x, 2))[0, 2, :, 0]
  np.testing.assert_array_equal(y, [2, 1, 0, 1, 2, 3, 2, 1])


def _align_corners_reference(x, out_h, out_w):
  """Direct per-pixel bilinear sampling at i * (in - 1) / (out - 1).

  Returns the float64 samples and the error bound of a float32 resize: the
  sample position i * ((in - 1) / (out - 1)) is off by 2 u pos (a division
  and a product), which moves the value by at most that times the range of
  x (the interpolant is continuous, even where floor(pos) flips); 1 - frac
  is rounded (u of its term, per axis); two 2-term weighted sums (gamma(4)).
  """
  b, h, w, c = x.shape
  x = x.astype(np.float64)
  out = np.zeros((b, out_h, out_w, c), np.float64)
  bound = np.zeros_like(out)
  spread = (x.max(axis=(1, 2)) - x.min(axis=(1, 2)))  # [B, C]
  for i in range(out_h):
    for j in range(out_w):
      y = i * (h - 1) / (out_h - 1)
      xx = j * (w - 1) / (out_w - 1)
      y0, x0 = int(np.floor(y)), int(np.floor(xx))
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      fy, fx = y - y0, xx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx
                      * x[:, y0, x1] + fy * (1 - fx) * x[:, y1, x0]
                      + fy * fx * x[:, y1, x1])
      terms = ((1 - fy) * (1 - fx) * np.abs(x[:, y0, x0]) + (1 - fy) * fx
               * np.abs(x[:, y0, x1]) + fy * (1 - fx) * np.abs(x[:, y1, x0])
               + fy * fx * np.abs(x[:, y1, x1]))
      bound[:, i, j] = ((numerics.gamma(4) + 2 * U) * terms
                        + 2 * U * (y + xx) * spread)
  return out, bound


def test_resize_align_corners_matches_direct_sampling():
  x = np.random.default_rng(1).random((2, 16, 12, 1)).astype(np.float32)
  y = np.asarray(layers.resize_align_corners(jnp.asarray(x), (4, 3)))
  numerics.assert_within(y, *_align_corners_reference(x, 4, 3), "resize")
  # Corners are copied exactly (the point of align_corners=True): weight 1
  # on the corner, exact zeros elsewhere.
  np.testing.assert_array_equal(y[:, 0, 0], x[:, 0, 0])
  np.testing.assert_array_equal(y[:, -1, -1], x[:, -1, -1])


def test_resize_align_corners_against_torch():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(2).random((2, 32, 32, 1)).astype(np.float32)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(8, 8),
      mode="bilinear", align_corners=True).numpy().transpose(0, 2, 3, 1)
  y = np.asarray(layers.resize_align_corners(jnp.asarray(x), (8, 8)))
  # torch samples at the same float32-rounded positions (scale * i) and
  # sums the same 2x2 terms, so each is within the bound of the exact
  # resize, and the two within twice that.
  _, bound = _align_corners_reference(x, 8, 8)
  numerics.assert_within(y, ref, 2 * bound, "resize vs torch")


@pytest.mark.parametrize("impl", layers.CONV_TRANSPOSE_IMPLS)
def test_conv_transpose_doubles_and_matches_torch(impl):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
  t = torch.nn.ConvTranspose2d(5, 3, 4, 2, 1)
  module = layers.conv_transpose(3, impl=impl)
  params = {"kernel": t.weight.detach().numpy().transpose(2, 3, 1, 0),
            "bias": t.bias.detach().numpy()}
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  assert y.shape == (2, 12, 12, 3)
  # torch's layer in float64, and the same layer on |x|, |W|, |b| for the
  # sum of |terms|. Sub-pixel form: 2 x 2 x 5 products and the bias per
  # output; dilated: a 4 x 4 conv of the dilated input (the zeros exact);
  # both within the bound of 4 x 4 x 5 + 1 terms.
  t64 = t.double()
  x64 = torch.from_numpy(x.transpose(0, 3, 1, 2)).double()
  with torch.no_grad():
    ref = t64(x64).numpy().transpose(0, 2, 3, 1)
    t64.weight.abs_()
    t64.bias.abs_()
    terms = t64(x64.abs()).numpy().transpose(0, 2, 3, 1)
  numerics.assert_within(y, ref, numerics.gamma(4 * 4 * 5 + 1) * terms,
                         "conv transpose vs torch float64")


def test_landmark_map_lights_one_pixel_per_landmark():
  lms = jnp.array([[[0.4, 0.4], [3.5, 1.2], [9.0, -3.0], [3.6, 1.4]]])
  m = np.asarray(layers.landmark_map(lms, 8, 8))[0, ..., 0]
  expected = np.zeros((8, 8), np.float32)
  expected[0, 0] = 1       # (0.4, 0.4) rounds to (0, 0)
  expected[1, 4] = 1       # (3.5, 1.2) and (3.6, 1.4) share a pixel
  expected[0, 7] = 1       # clamped into the image
  np.testing.assert_array_equal(m, expected)


# ------------------------------------------------------------ spectral norm
def _sn_init(features=8, k=3, cin=4, seed=0):
  module = layers.SpectralConv(features, k, padding=1)
  x = jnp.ones((1, 6, 6, cin))
  variables = module.init(jax.random.key(seed), x, update_stats=False)
  return module, x, variables


def _effective_kernel(variables):
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  u = np.asarray(variables[layers.SPECTRAL_STATS]["u"], np.float64)
  v = np.asarray(variables[layers.SPECTRAL_STATS]["v"], np.float64)
  w_mat = kernel.reshape(-1, kernel.shape[-1]).T
  return w_mat / (u @ w_mat @ v)


def _normalize(z, z_err):
  """z / ||z|| in float64 and the error bound of the float32 version."""
  norm = np.linalg.norm(z)
  # The float32 norm: the input error (triangle inequality), the sum of
  # squares (gamma(n), halved by the sqrt) and the sqrt.
  norm_err = np.linalg.norm(z_err) + (numerics.gamma(len(z)) / 2 + U) * norm
  out = z / norm
  return out, (z_err + np.abs(out) * norm_err) / norm + numerics.DIV_U * np.abs(
      out)


def _power_step(w_mat, u):
  """One power-iteration step from u, as SpectralConv and PyTorch take it.

  Returns (u, u_err, v, v_err, sigma, sigma_err): float64 values and the
  error bounds of their float32 versions.
  """
  out, k = w_mat.shape
  w_abs = np.abs(w_mat)
  v, v_err = _normalize(w_mat.T @ u,
                        numerics.gamma(out) * (w_abs.T @ np.abs(u)))
  u, u_err = _normalize(w_mat @ v, numerics.gamma(k) * (w_abs @ np.abs(v))
                        + w_abs @ v_err)
  sigma = u @ w_mat @ v
  # sigma(u + du, v + dv) - sigma = du . W v + dv . W^T u to first order.
  # W v = |W v| u and u . du = |u + du| - 1 (to first order), which float32
  # normalisation keeps within gamma(n)/2 + 3 u; likewise with W^T u =
  # c v + r, r orthogonal to v (r = 0 once converged). Then u . (W v) sums
  # terms of K + Cout roundings.
  c = v @ (w_mat.T @ u)
  r = w_mat.T @ u - c * v
  sigma_err = (np.linalg.norm(w_mat @ v) * _norm_dev(out)
               + abs(c) * _norm_dev(k) + np.linalg.norm(r) * np.linalg.norm(
                   v_err)
               + numerics.gamma(k + out) * (np.abs(u) @ w_abs @ np.abs(v)))
  return u, u_err, v, v_err, sigma, sigma_err


def _norm_dev(n):
  """Bound on | |z / ||z|| | - 1 | for z of length n, all in float32."""
  return numerics.gamma(n) / 2 + 3 * U


def test_spectral_norm_power_iteration_converges_to_unit_norm():
  module, x, variables = _sn_init()
  kernel = np.asarray(variables["params"]["kernel"])
  sigmas = np.linalg.svd(kernel.reshape(-1, 8).T, compute_uv=False)
  assert abs(sigmas[0] - 1) > 0.1  # the raw kernel is not normalised
  top_init = np.linalg.svd(_effective_kernel(variables), compute_uv=False)[0]
  steps = 50
  for _ in range(steps):
    _, updates = module.apply(variables, x, update_stats=True,
                              mutable=[layers.SPECTRAL_STATS])
    variables = {**variables, **updates}
  top = np.linalg.svd(_effective_kernel(variables), compute_uv=False)[0]
  # top = sigma_1 / (u^T W v) for the stored float32 u, v. Rounding leaves
  # |u| and |v| off 1 by gamma(n)/2 + 3 u each (see _norm_dev); the
  # convergence deficit (quadratic in the angle to the singular vectors)
  # shrinks by (s2/s1)^4 per step from what init left.
  rounding = _norm_dev(8) + _norm_dev(36)
  deficit = abs(top_init - 1) * (sigmas[1] / sigmas[0])**(4 * steps)
  assert abs(top - 1) <= rounding + deficit, (top - 1, rounding, deficit)
  assert abs(top_init - 1) > rounding  # so the loop had work to do
  # The stored kernel itself is untouched: a reparameterisation.
  np.testing.assert_array_equal(variables["params"]["kernel"], kernel)


def test_spectral_norm_u_changes_only_in_training():
  module, x, variables = _sn_init()
  y_eval, updates = module.apply(variables, x, update_stats=False,
                                 mutable=[layers.SPECTRAL_STATS])
  np.testing.assert_array_equal(updates[layers.SPECTRAL_STATS]["u"],
                                variables[layers.SPECTRAL_STATS]["u"])
  y_eval2 = module.apply(variables, x, update_stats=False)
  np.testing.assert_array_equal(y_eval, y_eval2)
  _, updates = module.apply(variables, x, update_stats=True,
                            mutable=[layers.SPECTRAL_STATS])
  # Training takes one power-iteration step from the stored u ...
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  u_old = np.asarray(variables[layers.SPECTRAL_STATS]["u"], np.float64)
  u_new, u_err, *_ = _power_step(kernel.reshape(-1, 8).T, u_old)
  numerics.assert_within(updates[layers.SPECTRAL_STATS]["u"], u_new, u_err,
                         "u after one power step")
  # ... which moves it by more than rounding.
  assert np.any(np.abs(u_new - u_old) > 2 * u_err)


def test_spectral_norm_matches_torch_training_forward():
  torch = pytest.importorskip("torch")
  module, x, variables = _sn_init(features=6, k=4, cin=3, seed=1)
  conv = torch.nn.Conv2d(3, 6, 4, 2, 1, bias=False)
  sn = torch.nn.utils.spectral_norm(conv)
  kernel = np.asarray(variables["params"]["kernel"])  # [kh, kw, in, out]
  u = np.asarray(variables[layers.SPECTRAL_STATS]["u"])
  v = np.asarray(variables[layers.SPECTRAL_STATS]["v"])
  with torch.no_grad():
    sn.weight_orig.copy_(torch.from_numpy(
        np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
    sn.weight_u.copy_(torch.from_numpy(np.array(u)))
    # Our v flattens (kh, kw, in); PyTorch's flattens (in, kh, kw).
    sn.weight_v.copy_(torch.from_numpy(
        v.reshape(4, 4, 3).transpose(2, 0, 1).reshape(-1)))
  xin = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  # PyTorch's training forward in float64: one power step from the same u.
  sn64 = copy.deepcopy(sn).double()
  x64 = torch.from_numpy(xin.transpose(0, 3, 1, 2)).double()
  with torch.no_grad():
    ref = sn64(x64).numpy().transpose(0, 2, 3, 1)
  ours_module = layers.SpectralConv(6, 4, stride=2, padding=1)
  y, updates = ours_module.apply(variables, jnp.asarray(xin),
                                 update_stats=True,
                                 mutable=[layers.SPECTRAL_STATS])
  # The bound: sigma's (after the float32 power step) as a relative error of
  # W / sigma, and the conv's 4*4*3 products per output.
  w_mat = kernel.astype(np.float64).reshape(-1, 6).T
  _, u_err, _, _, sigma, sigma_err = _power_step(w_mat, u.astype(np.float64))
  with torch.no_grad():
    terms = torch.nn.functional.conv2d(
        x64.abs(), torch.from_numpy(np.abs(kernel.transpose(3, 2, 0, 1))
                                    / abs(sigma)).double(),
        stride=2, padding=1).numpy().transpose(0, 2, 3, 1)
  bound = (numerics.gamma(4 * 4 * 3) + sigma_err / abs(sigma)
           + numerics.DIV_U) * terms
  numerics.assert_within(y, ref, bound, "SN conv vs torch float64")
  numerics.assert_within(updates[layers.SPECTRAL_STATS]["u"],
                         sn64.weight_u.numpy(), u_err, "u vs torch float64")


def test_spectral_norm_gradient_flows_through_sigma():
  module, x, variables = _sn_init()

  def loss(kernel):
    v = {**variables, "params": {"kernel": kernel}}
    return jnp.sum(module.apply(v, x, update_stats=False))

  kernel = variables["params"]["kernel"]
  grad = jax.grad(loss)(kernel)
  # Analytically: x and the cotangent are all ones, so dL/d(W / sigma) = G
  # counts the output positions where each tap meets the image (exact in
  # float32), and with sigma = u^T W v
  #   dL/dW = G / sigma - (sum G * W / sigma^2) u v^T.
  w = np.asarray(kernel, np.float64)
  w_mat = w.reshape(-1, 8).T
  u = np.asarray(variables[layers.SPECTRAL_STATS]["u"], np.float64)
  v = np.asarray(variables[layers.SPECTRAL_STATS]["v"], np.float64)
  sigma = u @ w_mat @ v
  sigma_rel = numerics.gamma(w_mat.size // 8 + 8) * (
      np.abs(u) @ np.abs(w_mat) @ np.abs(v)) / abs(sigma)
  ones = np.pad(np.ones((6, 6)), 1)
  counts = np.array([[ones[i:i + 6, j:j + 6].sum() for j in range(3)]
                     for i in range(3)])
  g_eff = np.broadcast_to(counts[:, :, None, None], w.shape)
  d_sigma = -(g_eff * w).sum() / sigma**2
  uv = np.outer(u, v).T.reshape(w.shape)
  want = g_eff / sigma + d_sigma * uv
  # Float32: G / sigma (a division); d_sigma sums n = W.size terms of a few
  # roundings each; two products make the outer-product term; the sum of
  # the two; sigma's own rounding enters both terms.
  n = w.size
  err = ((numerics.DIV_U + sigma_rel) * g_eff / abs(sigma)
         + (numerics.gamma(n + 4) * (g_eff * np.abs(w)).sum() / sigma**2
            + (2 * U + 2 * sigma_rel) * abs(d_sigma)) * np.abs(uv)
         + U * np.abs(want))
  numerics.assert_within(grad, want, err, "gradient through sigma")
  # Scaling W leaves W / sigma(W) unchanged, so the gradient is orthogonal
  # to W (Euler's theorem for a 0-homogeneous function): <grad, W> = 0 up to
  # grad's error and the float32 dot product.
  residual = abs(float(jnp.vdot(grad, kernel)))
  assert residual <= ((err * np.abs(w)).sum() + numerics.gamma(n) * (
      np.abs(want) * np.abs(w)).sum())
