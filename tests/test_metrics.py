"""Tests for jaxface.metrics against hand computations and a NumPy SSIM.

The float64 references are independent transcriptions of the definitions;
the tolerances come from `_mirror_*`, which repeat metrics' float32 steps on
`numerics.Bounded` values to get each result's rounding error bound.
"""

import math

import jax
import numpy as np
import pytest

import numerics
from jaxface import metrics

Bounded = numerics.Bounded


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


def _bounded(x, u=numerics.U32):
  return x if isinstance(x, Bounded) else Bounded(x, 0.0, u)


def _mirror_gray(x):
  """rgb_to_gray: three products with float32 weights, summed."""
  return (x * Bounded.const(metrics.GRAY_WEIGHTS, x.u)).sum(axis=-1,
                                                              keepdims=True)


def _mirror_psnr(a, b, data_range=1.0, gray=False, u=numerics.U32):
  """metrics.psnr (of the grays) step by step: `Bounded` per image."""
  a, b = _bounded(a, u), _bounded(b, u)
  if gray:
    a, b = _mirror_gray(a), _mirror_gray(b)
  d = a - b
  mse = (d * d).mean(axis=(1, 2, 3))
  peak = Bounded.const(data_range, u)
  ratio = peak * peak / mse
  return 10.0 * ratio.fn(np.log10, lambda v: 1 / (v * np.log(10)))


def _mirror_filter(z, taps):
  """Separable 'valid' filtering of the H and W axes of [B, H, W, C]."""
  k = taps.value.shape[0]
  for axis in (1, 2):
    windows = z.moved(lambda v, axis=axis:
                      np.lib.stride_tricks.sliding_window_view(v, k, axis))
    z = (windows * taps).sum(axis=-1)
  return z


def _mirror_ssim(a, b, data_range=1.0, win_size=11, sigma=1.5, gaussian=True,
                 sample_cov=False, gray=False, u=numerics.U32):
  """metrics.ssim (of the grays) step by step: `Bounded` per image."""
  a, b = _bounded(a, u), _bounded(b, u)
  if gray:
    a, b = _mirror_gray(a), _mirror_gray(b)
  # Any offset leaves SSIM unchanged (the exact taps sum to 1; the rounded
  # taps' error is carried separately), so the float32 one counts as exact.
  offset = 0.5 * (a.value.mean(axis=(1, 2), keepdims=True)
                  + b.value.mean(axis=(1, 2), keepdims=True))
  x, y = a - offset, b - offset
  if gaussian:
    t = Bounded(np.arange(win_size) - (win_size - 1) / 2.0, 0.0, u) / sigma
    w = ((t * t) * -0.5).fn(np.exp, np.exp)
  else:
    w = Bounded(np.ones(win_size), 0.0, u)
  taps = w / w.sum()
  mu_x, mu_y, exx, eyy, exy = (_mirror_filter(z, taps) for z in
                               (x, y, x * x, y * y, x * y))
  n = float(win_size)**2
  cov_norm = n / (n - 1.0) if sample_cov else 1.0
  var_x = cov_norm * (exx - mu_x * mu_x)
  var_y = cov_norm * (eyy - mu_y * mu_y)
  cov_xy = cov_norm * (exy - mu_x * mu_y)
  mu_x, mu_y = mu_x + offset, mu_y + offset
  c1 = (0.01 * data_range)**2
  c2 = (0.03 * data_range)**2
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  return (num / den).mean(axis=(1, 2, 3))


def test_psnr_hand_computed():
  a = np.zeros((1, 2, 2, 1), np.float32)
  decimals = np.array([0.1, 0.2, 0.0, 0.3]).reshape(1, 2, 2, 1)
  b = decimals.astype(np.float32)
  mse = (0.01 + 0.04 + 0.0 + 0.09) / 4
  expected = 10 * math.log10(1.0 / mse)
  # The bound includes b's float32 representation error.
  bound = _mirror_psnr(a, Bounded.const(decimals)).err
  numerics.assert_within(metrics.psnr(a, b), [expected], bound, "psnr")
  # data_range scales the peak (b * 255 rounds once more, in NumPy).
  bound = _mirror_psnr(a, Bounded.const(decimals) * 255, data_range=255.0).err
  numerics.assert_within(metrics.psnr(a * 255, b * 255, data_range=255.0),
                         [expected], bound, "psnr, data_range=255")


def test_psnr_identical_is_clamped():
  a, _ = _images(0, (2, 8, 8, 3))
  # min(inf, cap) is the cap exactly.
  np.testing.assert_array_equal(metrics.psnr(a, a), [100.0, 100.0])
  np.testing.assert_array_equal(metrics.psnr(a, a, max_db=60.0), [60.0, 60.0])
  assert np.all(np.isinf(metrics.psnr(a, a, max_db=None)))


def test_psnr_gray_uses_luma():
  a, b = _images(1, (2, 6, 5, 3))
  ga, gb = _ref_gray(a), _ref_gray(b)
  expected = 10 * np.log10(1.0 / np.mean((ga - gb) ** 2, axis=(1, 2, 3)))
  numerics.assert_within(metrics.psnr_gray(a, b), expected,
                         _mirror_psnr(a, b, gray=True).err, "psnr_gray")


def test_ssim_identical_is_one():
  a, _ = _images(2, (2, 56, 56, 3))
  numerics.assert_within(metrics.ssim(a, a), [1.0, 1.0],
                         _mirror_ssim(a, a).err, "ssim")
  numerics.assert_within(
      metrics.ssim(a, a, win_size=7, gaussian=False), [1.0, 1.0],
      _mirror_ssim(a, a, win_size=7, gaussian=False).err, "uniform ssim")
  gray = np.asarray(metrics.rgb_to_gray(a))
  numerics.assert_within(
      metrics.ssim_lafin(gray, gray), [1.0, 1.0],
      _mirror_ssim(gray, gray, win_size=51, gaussian=False,
                   sample_cov=True).err, "ssim_lafin")


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
  bound = _mirror_ssim(a, b, win_size=win_size, gaussian=gaussian,
                       sample_cov=sample_cov).err
  numerics.assert_within(got, want, bound, "ssim")


def test_ssim_data_range():
  a, b = _images(4, (1, 14, 14, 1))
  got = metrics.ssim(a * 255, b * 255, data_range=255.0)
  # SSIM is scale invariant when C1, C2 scale with data_range**2: the
  # unscaled reference, with a * 255's rounding (NumPy, float32) in the
  # bound.
  bound = _mirror_ssim(Bounded(a) * 255, Bounded(b) * 255,
                       data_range=255.0).err
  numerics.assert_within(got, _ref_ssim(a, b, win_size=11, sigma=1.5,
                                        gaussian=True), bound, "ssim x255")


def test_ssim_rejects_too_small_images():
  a, b = _images(5, (1, 8, 8, 1))
  with pytest.raises(ValueError, match="win_size"):
    metrics.ssim(a, b)


def test_ssim_lafin_matches_numpy_reference():
  a, b = _images(6, (2, 53, 54, 3))
  got = metrics.ssim_lafin(a, b)
  want = _ref_ssim(_ref_gray(a), _ref_gray(b), win_size=51, sigma=1.5,
                   gaussian=False, sample_cov=True)
  bound = _mirror_ssim(a, b, win_size=51, gaussian=False, sample_cov=True,
                       gray=True).err
  numerics.assert_within(got, want, bound, "ssim_lafin")


def test_ssim_lafin_matches_scikit_image():
  skm = pytest.importorskip("skimage.metrics")
  skc = pytest.importorskip("skimage.color")
  a, b = _images(7, (2, 64, 72, 3))
  got = metrics.ssim_lafin(a, b)
  got_psnr = metrics.psnr_gray(a, b)
  # LaFIn's script feeds scikit-image float64 images (from uint8 files), so
  # the reference runs in float64. Its own error is that of the same steps
  # with u = 2**-53 (x3: scipy's uniform filter keeps running sums along
  # each row of up to 72 pixels rather than summing 51 taps afresh).
  kwargs = dict(win_size=51, gaussian=False, sample_cov=True, gray=True)
  bound = (_mirror_ssim(a, b, **kwargs).err
           + 3 * _mirror_ssim(a, b, u=numerics.U64, **kwargs).err)
  bound_psnr = (_mirror_psnr(a, b, gray=True).err
                + _mirror_psnr(a, b, gray=True, u=numerics.U64).err)
  for i in range(2):
    ga = skc.rgb2gray(a[i].astype(np.float64))
    gb = skc.rgb2gray(b[i].astype(np.float64))
    want = skm.structural_similarity(ga, gb, win_size=51, data_range=1)
    numerics.assert_within(got[i], want, bound[i], "ssim_lafin vs skimage")
    want_psnr = skm.peak_signal_noise_ratio(ga, gb, data_range=1)
    numerics.assert_within(got_psnr[i], want_psnr, bound_psnr[i],
                           "psnr_gray vs skimage")


def test_masked_l1_and_mae_lafin():
  a, b = _images(8, (2, 4, 4, 3))
  mask = np.zeros((2, 4, 4, 1), np.float32)
  mask[0, 1:3, 1:3] = 1.0  # image 1 has an empty mask
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  diff = np.abs(a64 - b64)
  # The mean over the 4 masked pixels x 3 channels, with the eps guard.
  want0 = diff[0, 1:3, 1:3].sum() / (12 + 1e-8)
  # Mirrored steps: |a - b| * mask summed, over sum(mask) + eps.
  d = (Bounded(a) - b).lipschitz(np.abs)
  m = np.broadcast_to(mask, a.shape)
  bound = ((d * m).sum(axis=(1, 2, 3))
           / (Bounded(m).sum(axis=(1, 2, 3)) + 1e-8)).err
  assert bound[1] == 0  # an empty mask scores exactly 0
  numerics.assert_within(metrics.masked_l1(a, b, mask), [want0, 0.0], bound,
                         "masked_l1")
  want = diff.sum(axis=(1, 2, 3)) / (a64 + b64).sum(axis=(1, 2, 3))
  bound = (d.sum(axis=(1, 2, 3)) / (Bounded(a) + b).sum(axis=(1, 2, 3))).err
  numerics.assert_within(metrics.mae_lafin(a, b), want, bound, "mae_lafin")


def test_lafin_metrics_are_grayscale():
  a, b = _images(9, (2, 51, 51, 3))
  got = metrics.lafin_metrics(a, b)
  ga, gb = _ref_gray(a), _ref_gray(b)
  # All three on the grays: float64 definitions, mirrored float32 bounds.
  gma, gmb = _mirror_gray(Bounded(a)), _mirror_gray(Bounded(b))
  mae = ((gma - gmb).lipschitz(np.abs).sum(axis=(1, 2, 3))
         / (gma + gmb).sum(axis=(1, 2, 3)))
  numerics.assert_within(
      got["mae"], np.abs(ga - gb).sum((1, 2, 3)) / (ga + gb).sum((1, 2, 3)),
      mae.err, "mae")
  numerics.assert_within(
      got["psnr"], 10 * np.log10(1 / np.mean((ga - gb)**2, axis=(1, 2, 3))),
      _mirror_psnr(a, b, gray=True).err, "psnr")
  numerics.assert_within(
      got["ssim"], _ref_ssim(ga, gb, win_size=51, sigma=1.5, gaussian=False,
                             sample_cov=True),
      _mirror_ssim(a, b, win_size=51, gaussian=False, sample_cov=True,
                   gray=True).err, "ssim")


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
  # Batched and single runs may sum in different orders; each is within
  # its float32 bound of the exact value, so they are within twice that.
  d = (Bounded(a) - b).lipschitz(np.abs)
  bounds = {
      "psnr": _mirror_psnr(a, b).err,
      "ssim": _mirror_ssim(a, b).err,
      "ssim_uniform": _mirror_ssim(a, b, win_size=9, gaussian=False).err,
      "ssim_lafin": _mirror_ssim(a, b, win_size=51, gaussian=False,
                                 sample_cov=True, gray=True).err,
      "masked_l1": ((d * mask).sum(axis=(1, 2, 3))
                    / (Bounded(mask * np.ones(3)).sum(axis=(1, 2, 3))
                       + 1e-8)).err,
      "mae_lafin": (d.sum(axis=(1, 2, 3))
                    / (Bounded(a) + b).sum(axis=(1, 2, 3))).err,
  }
  for name, fn in fns.items():
    batched = jax.jit(fn)(a, b, mask)
    assert batched.shape == (3,) and batched.dtype == np.float32, name
    single = [jax.jit(fn)(a[i:i + 1], b[i:i + 1], mask[i:i + 1])[0]
              for i in range(3)]
    numerics.assert_within(batched, single, 2 * bounds[name], name)


def test_uint8_inputs_are_accepted():
  a, b = _images(11, (1, 16, 16, 3))
  a8 = np.round(a * 255).astype(np.uint8)
  b8 = np.round(b * 255).astype(np.uint8)
  d = a8.astype(np.float64) - b8
  want = 10 * np.log10(255.0**2 / np.mean(d * d))
  numerics.assert_within(metrics.psnr(a8, b8, data_range=255.0), [want],
                         _mirror_psnr(a8, b8, data_range=255.0).err, "uint8")
  # x / 255.0 is float64 here and rounded to float32 inside.
  a1, b1 = a8 / 255.0, b8 / 255.0
  bound = _mirror_psnr(Bounded(a1, np.abs(np.float32(a1) - a1)),
                       Bounded(b1, np.abs(np.float32(b1) - b1))).err
  numerics.assert_within(metrics.psnr(a1, b1), [want], bound, "uint8 / 255")
