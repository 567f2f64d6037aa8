"""Tests of the shared layers: norms, padding, resize, SN conv, landmark map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import layers


def test_instance_norm_matches_definition():
  x = np.random.default_rng(0).normal(2.0, 3.0, (2, 5, 7, 3)).astype(np.float32)
  y = np.asarray(layers.instance_norm(jnp.asarray(x)))
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)  # biased, as PyTorch
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)


def test_instance_norm_keeps_bf16_dtype():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  assert layers.instance_norm(x).dtype == jnp.bfloat16


def test_reflect_pad_mirrors_without_edge_repeat():
  x = jnp.arange(4.0).reshape(1, 1, 4, 1)
  x = jnp.broadcast_to(x, (1, 4, 4, 1))
  y = np.asarray(layers.reflect_pad(x, 2))[0, 2, :, 0]
  np.testing.assert_array_equal(y, [2, 1, 0, 1, 2, 3, 2, 1])


def _align_corners_reference(x, out_h, out_w):
  # Direct per-pixel bilinear sampling at i * (in - 1) / (out - 1).
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c), np.float64)
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
  return out


def test_resize_align_corners_matches_direct_sampling():
  x = np.random.default_rng(1).random((2, 16, 12, 1)).astype(np.float32)
  y = np.asarray(layers.resize_align_corners(jnp.asarray(x), (4, 3)))
  np.testing.assert_allclose(y, _align_corners_reference(x, 4, 3), atol=1e-6)
  # Corners are copied exactly (the point of align_corners=True).
  np.testing.assert_allclose(y[:, 0, 0], x[:, 0, 0], atol=1e-7)
  np.testing.assert_allclose(y[:, -1, -1], x[:, -1, -1], atol=1e-7)


def test_resize_align_corners_against_torch():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(2).random((2, 32, 32, 1)).astype(np.float32)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(8, 8),
      mode="bilinear", align_corners=True).numpy().transpose(0, 2, 3, 1)
  y = np.asarray(layers.resize_align_corners(jnp.asarray(x), (8, 8)))
  np.testing.assert_allclose(y, ref, atol=1e-5)


def test_conv_transpose_doubles_and_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
  t = torch.nn.ConvTranspose2d(5, 3, 4, 2, 1)
  ref = t(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
  module = layers.conv_transpose(3)
  params = {"kernel": t.weight.detach().numpy().transpose(2, 3, 1, 0),
            "bias": t.bias.detach().numpy()}
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  assert y.shape == (2, 12, 12, 3)
  np.testing.assert_allclose(y, ref.transpose(0, 2, 3, 1), atol=1e-5)


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


def test_spectral_norm_power_iteration_converges_to_unit_norm():
  module, x, variables = _sn_init()
  kernel = np.asarray(variables["params"]["kernel"])
  sigma_true = np.linalg.svd(kernel.reshape(-1, 8).T, compute_uv=False)[0]
  assert abs(sigma_true - 1) > 0.1  # the raw kernel is not normalised
  for _ in range(50):
    _, updates = module.apply(variables, x, update_stats=True,
                              mutable=[layers.SPECTRAL_STATS])
    variables = {**variables, **updates}
  top = np.linalg.svd(_effective_kernel(variables), compute_uv=False)[0]
  assert top == pytest.approx(1.0, abs=1e-3)
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
  assert not np.allclose(updates[layers.SPECTRAL_STATS]["u"],
                         variables[layers.SPECTRAL_STATS]["u"])


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
  ref = sn(torch.from_numpy(xin.transpose(0, 3, 1, 2))).detach().numpy()
  ours_module = layers.SpectralConv(6, 4, stride=2, padding=1)
  y, updates = ours_module.apply(variables, jnp.asarray(xin),
                                 update_stats=True,
                                 mutable=[layers.SPECTRAL_STATS])
  np.testing.assert_allclose(np.asarray(y), ref.transpose(0, 2, 3, 1),
                             atol=1e-5)
  np.testing.assert_allclose(updates[layers.SPECTRAL_STATS]["u"],
                             sn.weight_u.numpy(), atol=1e-6)


def test_spectral_norm_gradient_flows_through_sigma():
  module, x, variables = _sn_init()

  def loss(kernel):
    v = {**variables, "params": {"kernel": kernel}}
    return jnp.sum(module.apply(v, x, update_stats=False))

  kernel = variables["params"]["kernel"]
  grad = jax.grad(loss)(kernel)
  # Scaling W leaves W / sigma(W) unchanged, so the gradient is orthogonal
  # to W (Euler's theorem for a 0-homogeneous function).
  assert abs(float(jnp.vdot(grad, kernel))) < 1e-4 * float(
      jnp.linalg.norm(grad) * jnp.linalg.norm(kernel))
