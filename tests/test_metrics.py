"""Tests for jaxface.metrics against hand computations and a NumPy SSIM."""

import math

import jax
import numpy as np
import pytest

from jaxface import metrics


def _images(seed, shape):
  """A pair of correlated float32 images in [0, 1]."""
  rng = np.random.default_rng(seed)
  a = rng.random(shape, dtype=np.float32)
  b = np.clip(0.7 * a + 0.25 * rng.random(shape, dtype=np.float32) + 0.05,
              0.0, 1.0)
  return a, b.astype(np.float32)


def _ref_window(win_size, sigma, gaussian):
  if gaussian:
    x = np.arange(win_size, dtype=np.float64) - (win_size - 1) / 2.0
    w1 = np.exp(-0.5 * (x / sigma) ** 2)
  else:
    w1 = np.ones(win_size, np.float64)
  w = np.outer(w1, w1)
  return w / w.sum()


def _ref_ssim_plane(x, y, *, win_size, sigma, gaussian, data_range=1.0,
                    k1=0.01, k2=0.03, sample_cov=False):
  """SSIM of one 2-D plane by an explicit loop over every valid window."""
  x = x.astype(np.float64)
  y = y.astype(np.float64)
  w = _ref_window(win_size, sigma, gaussian)
  n = win_size * win_size
  norm = n / (n - 1.0) if sample_cov else 1.0
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  vals = []
  for i in range(x.shape[0] - win_size + 1):
    for j in range(x.shape[1] - win_size + 1):
      px = x[i:i + win_size, j:j + win_size]
      py = y[i:i + win_size, j:j + win_size]
      mx, my = np.sum(w * px), np.sum(w * py)
      vx = norm * np.sum(w * (px - mx) ** 2)
      vy = norm * np.sum(w * (py - my) ** 2)
      cxy = norm * np.sum(w * (px - mx) * (py - my))
      vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                  / ((mx * mx + my * my + c1) * (vx + vy + c2)))
  return float(np.mean(vals))


def _ref_ssim(a, b, **kwargs):
  """Per-image reference SSIM, averaged over channels: `[B]`."""
  return np.array([
      np.mean([_ref_ssim_plane(a[i, ..., c], b[i, ..., c], **kwargs)
               for c in range(a.shape[-1])])
      for i in range(a.shape[0])
  ])


def _ref_gray(x):
  return (x.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]))[..., None]


def test_psnr_hand_computed():
  a = np.zeros((1, 2, 2, 1), np.float32)
  b = np.array([0.1, 0.2, 0.0, 0.3], np.float32).reshape(1, 2, 2, 1)
  mse = (0.01 + 0.04 + 0.0 + 0.09) / 4
  expected = 10 * math.log10(1.0 / mse)
  np.testing.assert_allclose(metrics.psnr(a, b), [expected], rtol=1e-5)
  # data_range scales the peak.
  np.testing.assert_allclose(
      metrics.psnr(a * 255, b * 255, data_range=255.0), [expected], rtol=1e-5)


def test_psnr_identical_is_clamped():
  a, _ = _images(0, (2, 8, 8, 3))
  np.testing.assert_allclose(metrics.psnr(a, a), [100.0, 100.0])
  np.testing.assert_allclose(metrics.psnr(a, a, max_db=60.0), [60.0, 60.0])
  assert np.all(np.isinf(metrics.psnr(a, a, max_db=None)))


def test_psnr_gray_uses_luma():
  a, b = _images(1, (2, 6, 5, 3))
  ga, gb = _ref_gray(a), _ref_gray(b)
  expected = 10 * np.log10(1.0 / np.mean((ga - gb) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(metrics.psnr_gray(a, b), expected, rtol=1e-5)


def test_ssim_identical_is_one():
  a, _ = _images(2, (2, 56, 56, 3))
  np.testing.assert_allclose(metrics.ssim(a, a), [1.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(
      metrics.ssim(a, a, win_size=7, gaussian=False), [1.0, 1.0], atol=1e-6)
  gray = metrics.rgb_to_gray(a)
  np.testing.assert_allclose(metrics.ssim_lafin(gray, gray), [1.0, 1.0],
                             atol=1e-6)


@pytest.mark.parametrize("gaussian,win_size,sample_cov", [
    (True, 11, False),
    (True, 7, True),
    (False, 5, False),
    (False, 7, True),
])
def test_ssim_matches_numpy_reference(gaussian, win_size, sample_cov):
  a, b = _images(3, (2, 16, 19, 3))
  got = metrics.ssim(a, b, win_size=win_size, gaussian=gaussian,
                     use_sample_covariance=sample_cov)
  want = _ref_ssim(a, b, win_size=win_size, sigma=1.5, gaussian=gaussian,
                   sample_cov=sample_cov)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_ssim_data_range():
  a, b = _images(4, (1, 14, 14, 1))
  got = metrics.ssim(a * 255, b * 255, data_range=255.0)
  np.testing.assert_allclose(got, metrics.ssim(a, b), atol=1e-5)


def test_ssim_rejects_too_small_images():
  a, b = _images(5, (1, 8, 8, 1))
  with pytest.raises(ValueError, match="win_size"):
    metrics.ssim(a, b)


def test_ssim_lafin_matches_numpy_reference():
  a, b = _images(6, (2, 53, 54, 3))
  got = metrics.ssim_lafin(a, b)
  want = _ref_ssim(_ref_gray(a), _ref_gray(b), win_size=51, sigma=1.5,
                   gaussian=False, sample_cov=True)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_ssim_lafin_matches_scikit_image():
  skm = pytest.importorskip("skimage.metrics")
  skc = pytest.importorskip("skimage.color")
  a, b = _images(7, (2, 64, 72, 3))
  got = metrics.ssim_lafin(a, b)
  got_psnr = metrics.psnr_gray(a, b)
  for i in range(2):
    ga, gb = skc.rgb2gray(a[i]), skc.rgb2gray(b[i])
    want = skm.structural_similarity(ga, gb, win_size=51, data_range=1)
    np.testing.assert_allclose(got[i], want, atol=1e-5)
    want_psnr = skm.peak_signal_noise_ratio(ga, gb, data_range=1)
    np.testing.assert_allclose(got_psnr[i], want_psnr, rtol=1e-5)


def test_masked_l1_and_mae_lafin():
  a, b = _images(8, (2, 4, 4, 3))
  mask = np.zeros((2, 4, 4, 1), np.float32)
  mask[0, 1:3, 1:3] = 1.0  # image 1 has an empty mask
  diff = np.abs(a - b)
  want0 = diff[0, 1:3, 1:3].mean()
  np.testing.assert_allclose(metrics.masked_l1(a, b, mask), [want0, 0.0],
                             rtol=1e-5)
  want = diff.sum(axis=(1, 2, 3)) / (a + b).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(metrics.mae_lafin(a, b), want, rtol=1e-5)


def test_lafin_metrics_are_grayscale():
  a, b = _images(9, (2, 51, 51, 3))
  got = metrics.lafin_metrics(a, b)
  ga, gb = _ref_gray(a), _ref_gray(b)
  np.testing.assert_allclose(
      got["mae"], np.abs(ga - gb).sum((1, 2, 3)) / (ga + gb).sum((1, 2, 3)),
      rtol=1e-5)
  np.testing.assert_allclose(got["psnr"], metrics.psnr_gray(a, b), rtol=1e-6)
  np.testing.assert_allclose(got["ssim"], metrics.ssim_lafin(a, b), atol=1e-6)


def test_jit_and_batched_equals_per_image():
  a, b = _images(10, (3, 64, 64, 3))
  mask = (np.arange(64)[None, :, None, None] > 30).astype(np.float32)
  mask = np.broadcast_to(mask, (3, 64, 64, 1))
  fns = {
      "psnr": lambda x, y, m: metrics.psnr(x, y),
      "ssim": lambda x, y, m: metrics.ssim(x, y),
      "ssim_uniform": lambda x, y, m: metrics.ssim(x, y, win_size=9,
                                                   gaussian=False),
      "ssim_lafin": lambda x, y, m: metrics.ssim_lafin(x, y),
      "masked_l1": metrics.masked_l1,
      "mae_lafin": lambda x, y, m: metrics.mae_lafin(x, y),
  }
  for name, fn in fns.items():
    batched = jax.jit(fn)(a, b, mask)
    assert batched.shape == (3,) and batched.dtype == np.float32, name
    single = [jax.jit(fn)(a[i:i + 1], b[i:i + 1], mask[i:i + 1])[0]
              for i in range(3)]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_uint8_inputs_are_accepted():
  a, b = _images(11, (1, 16, 16, 3))
  a8 = np.round(a * 255).astype(np.uint8)
  b8 = np.round(b * 255).astype(np.uint8)
  np.testing.assert_allclose(
      metrics.psnr(a8, b8, data_range=255.0),
      metrics.psnr(a8 / 255.0, b8 / 255.0), rtol=1e-5)
