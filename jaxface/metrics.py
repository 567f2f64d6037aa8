"""Metrics: PSNR, SSIM, masked L1, LaFIn's evaluation set, per-gender means.

Every function takes batches of channels-last images `[B, H, W, C]`, is
jitted (window sizes and constants are static arguments) and can be called
inside other jitted code, computes in float32 and returns one value per image
(`[B]`), so callers can average over a dataset however they like (the mean of
per-image values is what the papers report).

Two SSIM flavours are provided:

* `ssim` with its defaults is Wang et al. (2004): an 11-tap Gaussian window
  with sigma 1.5, statistics normalised by the window weights (no N/(N-1)),
  evaluated only where the window fits inside the image ('valid'), computed
  per channel and averaged over channels.
* `ssim_lafin` reproduces the numbers of LaFIn's offline evaluation script,
  which calls scikit-image's `structural_similarity(gt, pred, data_range=1,
  win_size=51)` on grayscale images: a 51x51 uniform window and sample
  covariance normalisation N/(N-1). `lafin_metrics` returns PSNR, SSIM and MAE
  exactly as that script computes them (all three on grayscale images).
"""

import functools
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.data import schema

# scikit-image's `rgb2gray` weights (used by LaFIn's metrics script). Note they
# are not the ITU-R 601-2 weights (0.299, 0.587, 0.114) that PIL's
# `convert("L")` uses.
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


def _as_float(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _check_pair(a: jax.Array, b: jax.Array) -> None:
  if a.ndim != 4:
    raise ValueError(f"expected images [B, H, W, C], got shape {a.shape}")
  if a.shape != b.shape:
    raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")


def rgb_to_gray(x: jax.Array) -> jax.Array:
  """Luma of RGB images with scikit-image's weights.

  Args:
    x: `[..., 3]` RGB images (a single channel passes through unchanged).

  Returns:
    `[..., 1]` float32 grayscale images.
  """
  x = _as_float(x)
  if x.shape[-1] == 1:
    return x
  if x.shape[-1] != 3:
    raise ValueError(f"expected 1 or 3 channels, got shape {x.shape}")
  w = jnp.asarray(GRAY_WEIGHTS, jnp.float32)
  # A weighted sum rather than a matmul keeps full float32 precision on
  # accelerators whose default matmul precision is reduced.
  return jnp.sum(x * w, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("data_range", "max_db"))
def psnr(a: jax.Array,
         b: jax.Array,
         data_range: float = 1.0,
         max_db: Optional[float] = 100.0) -> jax.Array:
  """Peak signal-to-noise ratio per image, in dB.

  `10 * log10(data_range**2 / MSE)` with the MSE over all pixels and
  channels of each image.

  Args:
    a: `[B, H, W, C]` images.
    b: `[B, H, W, C]` images.
    data_range: Difference between the largest and smallest possible value.
    max_db: Upper clamp. Identical images have an infinite PSNR; clamping it
      (100 dB by default, far above any real reconstruction) keeps dataset
      averages finite. `None` disables the clamp and returns `inf` for them.

  Returns:
    `[B]` float32 PSNR values.
  """
  a, b = _as_float(a), _as_float(b)
  _check_pair(a, b)
  mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))  # [B]
  value = 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / mse)
  if max_db is not None:
    value = jnp.minimum(value, jnp.float32(max_db))
  return value


def psnr_gray(a: jax.Array,
              b: jax.Array,
              data_range: float = 1.0,
              max_db: Optional[float] = 100.0) -> jax.Array:
  """`psnr` of the grayscale (`rgb_to_gray`) images, as LaFIn reports it."""
  return psnr(rgb_to_gray(a), rgb_to_gray(b), data_range, max_db)


def _window_1d(win_size: int, sigma: float, gaussian: bool) -> jax.Array:
  """Normalised 1-D window taps, `[win_size]` float32."""
  if gaussian:
    x = jnp.arange(win_size, dtype=jnp.float32) - (win_size - 1) / 2.0
    w = jnp.exp(-0.5 * jnp.square(x / sigma))
  else:
    w = jnp.ones((win_size,), jnp.float32)
  return w / jnp.sum(w)


def _filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable 'valid' filtering of `[N, H, W]` planes with 1-D `taps`."""
  k = taps.shape[0]
  x = x[..., None]  # [N, H, W, 1]
  dn = ("NHWC", "HWIO", "NHWC")
  # HIGHEST precision: TPUs and recent GPUs otherwise convolve in bf16/TF32,
  # and the variances below are differences of nearly equal numbers.
  precision = jax.lax.Precision.HIGHEST
  x = jax.lax.conv_general_dilated(
      x, taps.reshape(k, 1, 1, 1), (1, 1), "VALID",
      dimension_numbers=dn, precision=precision)
  x = jax.lax.conv_general_dilated(
      x, taps.reshape(1, k, 1, 1), (1, 1), "VALID",
      dimension_numbers=dn, precision=precision)
  return x[..., 0]


@functools.partial(
    jax.jit,
    static_argnames=("data_range", "win_size", "sigma", "gaussian", "k1", "k2",
                     "use_sample_covariance"))
def ssim(a: jax.Array,
         b: jax.Array,
         data_range: float = 1.0,
         win_size: int = 11,
         sigma: float = 1.5,
         gaussian: bool = True,
         k1: float = 0.01,
         k2: float = 0.03,
         *,
         use_sample_covariance: bool = False) -> jax.Array:
  """Structural similarity per image (Wang et al., 2004).

  Local statistics come from a separable window of `win_size` taps: a
  Gaussian with standard deviation `sigma` (`gaussian=True`) or a uniform box
  (`gaussian=False`). The SSIM map is evaluated only where the window fits
  inside the image, averaged spatially, per channel, then over channels.

  Args:
    a: `[B, H, W, C]` images; `H` and `W` must be at least `win_size`.
    b: `[B, H, W, C]` images.
    data_range: Difference between the largest and smallest possible value.
    win_size: Window side length in pixels.
    sigma: Gaussian standard deviation (ignored for the uniform window).
    gaussian: Gaussian (True) or uniform (False) window.
    k1: Luminance stabiliser, `C1 = (k1 * data_range)**2`.
    k2: Contrast stabiliser, `C2 = (k2 * data_range)**2`.
    use_sample_covariance: Scale variances and the covariance by `N / (N - 1)`
      with `N = win_size**2`, as scikit-image does by default.

  Returns:
    `[B]` float32 SSIM values.
  """
  a, b = _as_float(a), _as_float(b)
  _check_pair(a, b)
  batch, height, width, channels = a.shape
  if win_size < 1 or win_size > min(height, width):
    raise ValueError(
        f"win_size={win_size} does not fit images of size {height}x{width}")

  # Variances and the covariance are shift invariant; removing each plane's
  # mean first keeps E[x^2] - E[x]^2 away from float32 cancellation.
  offset = 0.5 * (jnp.mean(a, axis=(1, 2), keepdims=True)
                  + jnp.mean(b, axis=(1, 2), keepdims=True))  # [B, 1, 1, C]
  x, y = a - offset, b - offset
  # The five moments of every channel plane, filtered in one batch.
  planes = jnp.stack([x, y, x * x, y * y, x * y], axis=0)  # [5, B, H, W, C]
  planes = jnp.moveaxis(planes, -1, 2)  # [5, B, C, H, W]
  planes = planes.reshape(5 * batch * channels, height, width)
  taps = _window_1d(win_size, sigma, gaussian)
  filt = _filter_valid(planes, taps)
  filt = filt.reshape(5, batch, channels, *filt.shape[-2:])
  mu_x, mu_y, exx, eyy, exy = filt  # each [B, C, H', W']

  cov_norm = 1.0
  if use_sample_covariance:
    n = float(win_size) ** 2
    cov_norm = n / (n - 1.0) if n > 1 else 1.0
  var_x = cov_norm * (exx - mu_x * mu_x)
  var_y = cov_norm * (eyy - mu_y * mu_y)
  cov_xy = cov_norm * (exy - mu_x * mu_y)
  # Luminance uses the true (un-shifted) means.
  off = jnp.moveaxis(offset, -1, 1)  # [B, C, 1, 1]
  mu_x, mu_y = mu_x + off, mu_y + off

  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  ssim_map = num / den  # [B, C, H', W']
  return jnp.mean(ssim_map, axis=(1, 2, 3))


def ssim_lafin(a: jax.Array, b: jax.Array) -> jax.Array:
  """SSIM as LaFIn's evaluation script computes it, per image.

  Equivalent to scikit-image's
  `structural_similarity(rgb2gray(a), rgb2gray(b), data_range=1,
  win_size=51)`: grayscale images, a 51x51 uniform window and sample
  covariance. Images must be in [0, 1] and at least 51 pixels on a side.

  Args:
    a: `[B, H, W, C]` images in [0, 1], C in {1, 3}.
    b: `[B, H, W, C]` images in [0, 1].

  Returns:
    `[B]` float32 SSIM values.
  """
  return ssim(rgb_to_gray(a), rgb_to_gray(b), data_range=1.0, win_size=51,
              gaussian=False, use_sample_covariance=True)


@functools.partial(jax.jit, static_argnames=("eps",))
def masked_l1(a: jax.Array,
              b: jax.Array,
              mask: jax.Array,
              eps: float = 1e-8) -> jax.Array:
  """Mean absolute difference inside a mask, per image.

  Args:
    a: `[B, H, W, C]` images.
    b: `[B, H, W, C]` images.
    mask: `[B, H, W, 1]` or `[B, H, W, C]` weights, 1 = hole (the region to
      score), 0 = ignored.
    eps: Guards images whose mask is empty (they score 0).

  Returns:
    `[B]` float32 mean of `|a - b|` over masked pixels and all channels.
  """
  a, b, mask = _as_float(a), _as_float(b), _as_float(mask)
  _check_pair(a, b)
  mask = jnp.broadcast_to(mask, a.shape)
  total = jnp.sum(jnp.abs(a - b) * mask, axis=(1, 2, 3))
  return total / (jnp.sum(mask, axis=(1, 2, 3)) + eps)


@jax.jit
def mae_lafin(a: jax.Array, b: jax.Array) -> jax.Array:
  """LaFIn's "MAE": `sum|a - b| / sum(a + b)` per image.

  The script applies it to grayscale images; `lafin_metrics` does that. For
  two all-zero images the ratio is 0/0 and the result is NaN, as in the
  original.

  Args:
    a: `[B, H, W, C]` images in [0, 1].
    b: `[B, H, W, C]` images in [0, 1].

  Returns:
    `[B]` float32 values.
  """
  a, b = _as_float(a), _as_float(b)
  _check_pair(a, b)
  return (jnp.sum(jnp.abs(a - b), axis=(1, 2, 3))
          / jnp.sum(a + b, axis=(1, 2, 3)))


@jax.jit
def lafin_metrics(target: jax.Array, pred: jax.Array) -> dict[str, jax.Array]:
  """PSNR, SSIM and MAE per image, all on grayscale, as LaFIn reports them.

  Args:
    target: `[B, H, W, 3]` ground-truth images in [0, 1].
    pred: `[B, H, W, 3]` reconstructions in [0, 1].

  Returns:
    `{"psnr": [B], "ssim": [B], "mae": [B]}`. The PSNR of identical images
    is capped at 100 dB (see `psnr`).
  """
  gt, pr = rgb_to_gray(target), rgb_to_gray(pred)
  return {
      "psnr": psnr(gt, pr, data_range=1.0),
      "ssim": ssim_lafin(gt, pr),
      "mae": mae_lafin(gt, pr),
  }


def summarize_per_gender(per_example: Mapping[str, np.ndarray],
                         gender_key: str = "gender") -> dict[str, float]:
  """Means of per-example metrics, overall and per gender.

  The paper reports every number separately for men and women, so every
  task's evaluation does. Host-side (NumPy) on concatenated eval outputs.

  Args:
    per_example: `{name: [N] values}`; `per_example[gender_key]`, when
      present, holds the gender codes of `jaxface.data.schema` (0 female,
      1 male, -1 unknown).
    gender_key: which entry holds the genders (it is not summarised).

  Returns:
    `{name: mean}` plus `{name/female: mean, name/male: mean}` for the
    genders present (a NaN value makes its means NaN: visible, not hidden).
  """
  out = {}
  gender = per_example.get(gender_key)
  for key, values in per_example.items():
    if key == gender_key:
      continue
    values = np.asarray(values, np.float64)
    out[key] = float(np.mean(values))
    if gender is None:
      continue
    for name, code in schema.GENDERS.items():
      sel = np.asarray(gender) == code
      if np.any(sel):
        out[f"{key}/{name}"] = float(np.mean(values[sel]))
  return out


# ---------------------------------------------------------------- landmarks
def landmark_nme(pred: np.ndarray, target: np.ndarray, normaliser: np.ndarray,
                 points: np.ndarray | None = None) -> np.ndarray:
  """Normalised mean error of each face over the selected points.

  Args:
    pred, target: [N, K, 2] points (pixels).
    normaliser: [N] distances (WFLW: the outer eye corners, 60 and 72).
    points: [N, K] bool, the points to average over (None: all); a face
      with none selected gets NaN.

  Returns:
    [N] mean point-to-point distance / normaliser.
  """
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  error = np.sqrt(np.sum(np.square(pred - target), axis=-1))  # [N, K]
  if points is None:
    points = np.ones(error.shape, bool)
  points = np.asarray(points, bool)
  count = np.sum(points, axis=-1)
  total = np.sum(np.where(points, error, 0.0), axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan) / (
        np.asarray(normaliser, np.float64))


def failure_rate(nme: np.ndarray, threshold: float = 0.1) -> float:
  """Fraction of faces whose NME exceeds `threshold` (NaN faces ignored)."""
  nme = np.asarray(nme, np.float64)
  nme = nme[np.isfinite(nme)]
  return float(np.mean(nme > threshold)) if nme.size else float("nan")


def ced_auc(nme: np.ndarray, threshold: float = 0.1, steps: int = 1000
            ) -> float:
  """Area under the cumulative error distribution up to `threshold`, / it.

  The WFLW AUC@0.1: the fraction of faces with NME <= t, integrated over t
  in [0, threshold] (trapezoids on `steps` intervals) and divided by
  `threshold`, so 1 is perfect and 0 means every face failed.
  """
  nme = np.asarray(nme, np.float64)
  nme = np.sort(nme[np.isfinite(nme)])
  if not nme.size:
    return float("nan")
  t = np.linspace(0.0, threshold, steps + 1)
  ced = np.searchsorted(nme, t, side="right") / nme.size
  return float(np.trapezoid(ced, t) / threshold)


# ------------------------------------------------------------ segmentation
def _binary(x: jax.Array) -> jax.Array:
  return (x[..., 0] if x.ndim == 4 else x) > 0.5


def _ratio(num: jax.Array, den: jax.Array, empty: float) -> jax.Array:
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), empty)


def mask_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  """[B] intersection over union of binary maps [B, H, W(, 1)] (> 0.5).

  1 where both are empty (nothing to find, nothing found).
  """
  p, t = _binary(pred), _binary(target)
  inter = jnp.sum(p & t, axis=(1, 2)).astype(jnp.float32)
  union = jnp.sum(p | t, axis=(1, 2)).astype(jnp.float32)
  return _ratio(inter, union, 1.0)


def dice(pred: jax.Array, target: jax.Array) -> jax.Array:
  """[B] Dice coefficient 2|P & T| / (|P| + |T|) of binary maps (1 if empty)."""
  p, t = _binary(pred), _binary(target)
  inter = jnp.sum(p & t, axis=(1, 2)).astype(jnp.float32)
  total = (jnp.sum(p, axis=(1, 2)) + jnp.sum(t, axis=(1, 2))).astype(
      jnp.float32)
  return _ratio(2 * inter, total, 1.0)


def uncovered(pred: jax.Array, target: jax.Array) -> jax.Array:
  """[B] share of the target's pixels the prediction misses (NaN if none).

  For the face-mask map this is the paper's failure mode: mask left on the
  face after completion.
  """
  p, t = _binary(pred), _binary(target)
  missed = jnp.sum(t & ~p, axis=(1, 2)).astype(jnp.float32)
  return _ratio(missed, jnp.sum(t, axis=(1, 2)).astype(jnp.float32),
                jnp.nan)


def _max_filter(x: jax.Array, radius: int) -> jax.Array:
  """[B, H, W] bool grown by a (2r + 1)^2 square."""
  k = 2 * radius + 1
  return jax.lax.reduce_window(x, False, jax.lax.bitwise_or, (1, k, k),
                               (1, 1, 1), "SAME")


def boundary(x: jax.Array) -> jax.Array:
  """[B, H, W] bool: pixels of a binary map with a 4-neighbour outside it.

  The image border counts as outside.
  """
  pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=False)
  inner = (pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1] & pad[:, 1:-1, :-2]
           & pad[:, 1:-1, 2:])
  return x & ~inner


@functools.partial(jax.jit, static_argnames="tolerance")
def boundary_f(pred: jax.Array, target: jax.Array,
               tolerance: int = 2) -> jax.Array:
  """[B] boundary F-score: contours matched within `tolerance` pixels.

  Precision: the share of the predicted contour within `tolerance`
  (chessboard distance) of the true contour; recall the converse; F their
  harmonic mean (Perazzi et al.'s F measure with a square tolerance). 1
  when both maps are empty, 0 when only one is.
  """
  bp, bt = boundary(_binary(pred)), boundary(_binary(target))
  near_t, near_p = _max_filter(bt, tolerance), _max_filter(bp, tolerance)
  np_ = jnp.sum(bp, axis=(1, 2)).astype(jnp.float32)
  nt = jnp.sum(bt, axis=(1, 2)).astype(jnp.float32)
  precision = _ratio(jnp.sum(bp & near_t, axis=(1, 2)), np_, 0.0)
  recall = _ratio(jnp.sum(bt & near_p, axis=(1, 2)), nt, 0.0)
  f = _ratio(2 * precision * recall, precision + recall, 0.0)
  return jnp.where((np_ == 0) & (nt == 0), 1.0, f)


# COCO's IoU thresholds of "AP@[.5:.95]" and its 101 recall points.
COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def average_precision(scores: list[np.ndarray], overlaps: list[np.ndarray],
                      threshold: float) -> float:
  """COCO-style average precision of one class at one IoU threshold.

  Detections of all images are taken in order of falling score; each is a
  true positive if an unmatched ground-truth object of its image overlaps
  it by at least `threshold` (the best such one is taken), else a false
  positive. Precision is made monotone (the envelope) and read at 101
  recall points. Crowd regions and area ranges are not modelled.

  Args:
    scores: per image [D_i] detection scores.
    overlaps: per image [D_i, G_i] IoU (box or mask) with that image's
      ground-truth objects.
    threshold: the IoU of a match.

  Returns:
    AP in [0, 1]; NaN when there is no ground truth at all.
  """
  num_gt = sum(o.shape[1] for o in overlaps)
  if num_gt == 0:
    return float("nan")
  records = []  # (score, image, detection)
  for i, s in enumerate(scores):
    records += [(float(v), i, d) for d, v in enumerate(np.asarray(s))]
  if not records:
    return 0.0
  records.sort(key=lambda r: -r[0])
  taken = [np.zeros(o.shape[1], bool) for o in overlaps]
  tp = np.zeros(len(records))
  for k, (_, i, d) in enumerate(records):
    iou = np.where(taken[i], -1.0, np.asarray(overlaps[i][d], np.float64))
    if iou.size and iou.max() >= threshold:
      taken[i][int(np.argmax(iou))] = True
      tp[k] = 1
  ctp = np.cumsum(tp)
  recall = ctp / num_gt
  precision = ctp / np.arange(1, len(records) + 1)
  # The envelope: the best precision at this recall or any higher one.
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  at = np.searchsorted(recall, _RECALL_POINTS, side="left")
  sampled = np.where(at < len(precision),
                     precision[np.minimum(at, len(precision) - 1)], 0.0)
  return float(np.mean(sampled))


# ------------------------------------------------------ binary classification
# Host-side (NumPy) figures of a binary classifier from its probabilities of
# the positive class (for the gender classifier, "male") and 0/1 labels.
def _binary_inputs(prob: np.ndarray, label: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  prob = np.asarray(prob, np.float64).reshape(-1)
  label = np.asarray(label).reshape(-1)
  if prob.shape != label.shape:
    raise ValueError(f"{prob.shape[0]} probabilities for {label.shape[0]} "
                     "labels")
  if np.any((label != 0) & (label != 1)):
    raise ValueError("labels must be 0 or 1")
  return prob, label.astype(bool)


def binary_accuracy(prob: np.ndarray, label: np.ndarray,
                    threshold: float = 0.5) -> float:
  """The share of examples whose `prob >= threshold` equals the label."""
  prob, label = _binary_inputs(prob, label)
  if not prob.size:
    return float("nan")
  return float(np.mean((prob >= threshold) == label))


def class_recall(prob: np.ndarray, label: np.ndarray, positive: bool,
                 threshold: float = 0.5) -> float:
  """Accuracy on the examples of one class (NaN: none of that class)."""
  prob, label = _binary_inputs(prob, label)
  sel = label == positive
  if not np.any(sel):
    return float("nan")
  return float(np.mean((prob[sel] >= threshold) == positive))


def balanced_accuracy(prob: np.ndarray, label: np.ndarray,
                      threshold: float = 0.5) -> float:
  """The mean of the two classes' recalls (NaN unless both are present)."""
  return float(np.mean([class_recall(prob, label, c, threshold)
                        for c in (False, True)]))


def roc_auc(prob: np.ndarray, label: np.ndarray) -> float:
  """Area under the ROC curve: the chance that a random positive scores
  above a random negative, ties counting one half (Mann-Whitney U with
  average ranks). NaN unless both classes are present."""
  prob, label = _binary_inputs(prob, label)
  pos, neg = int(label.sum()), int((~label).sum())
  if not pos or not neg:
    return float("nan")
  order = np.argsort(prob, kind="mergesort")
  sorted_p = prob[order]
  ranks = np.empty(prob.size, np.float64)
  # Average 1-based ranks over runs of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
  ends = np.r_[starts[1:], prob.size]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + 1 + e) / 2.0
  u = ranks[label].sum() - pos * (pos + 1) / 2.0
  return float(u / (pos * neg))


def expected_calibration_error(prob: np.ndarray, label: np.ndarray,
                               num_bins: int = 15) -> float:
  """ECE of the predicted class (Guo et al., 2017).

  Each example's confidence is the probability of the class it is given,
  `max(p, 1 - p)`; examples are binned by confidence into `num_bins` equal
  widths of [0, 1] (so a binary classifier fills the upper half), and the
  ECE is the example-weighted mean over bins of |accuracy - mean
  confidence|. 0 is perfectly calibrated.
  """
  prob, label = _binary_inputs(prob, label)
  if not prob.size:
    return float("nan")
  confidence = np.maximum(prob, 1.0 - prob)
  correct = (prob >= 0.5) == label
  bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
  ece = 0.0
  for b in np.unique(bins):
    sel = bins == b
    ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
  return float(ece)


def binary_nll(prob: np.ndarray, label: np.ndarray,
               eps: float = 1e-7) -> float:
  """Mean negative log-likelihood (binary cross-entropy) of the labels."""
  prob, label = _binary_inputs(prob, label)
  if not prob.size:
    return float("nan")
  p = np.clip(prob, eps, 1 - eps)
  return float(-np.mean(np.where(label, np.log(p), np.log1p(-p))))
