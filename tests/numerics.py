"""Tolerances from error bounds, so comparisons hold on any CPU.

Float32 results depend on the order in which a machine's vector code sums
(AVX-512 here, AVX2 elsewhere, another order on 4 devices than on 1), so a
comparison with a fixed `atol=1e-4` passes on one machine and fails on
another. The tolerances of the test suite come from the standard rounding
error bounds instead (Higham, *Accuracy and Stability of Numerical
Algorithms*, ch. 3): a sum or dot product of n terms computed in floating
point, in any order, differs from the exact one by at most

    gamma(n) * sum_i |term_i|,      gamma(n) = n u / (1 - n u),

with u the unit roundoff (2**-24 for float32). The helpers below turn such
bounds into assertions whose failure message says by how much a bound was
exceeded.
"""

import numpy as np

U32 = 2.0**-24      # unit roundoff of float32
U16 = 2.0**-8       # unit roundoff of bfloat16
U64 = 2.0**-53


def gamma(n: float, u: float = U32) -> float:
  """Higham's gamma_n = n u / (1 - n u): the relative error bound of an
  n-term sum or dot product."""
  nu = float(n) * u
  if nu >= 1:
    raise ValueError(f"gamma({n}) undefined for u={u}: n u >= 1")
  return nu / (1 - nu)


def conv_bound(x_abs: np.ndarray, kernel_abs: np.ndarray,
               bias_abs: np.ndarray | float = 0.0, pad: int = 0,
               u: float = U32) -> np.ndarray:
  """Rounding bound of a stride-1 'same' conv of [B, H, W, Cin] inputs.

  gamma(k*k*Cin + 1) * (|x| conv |W| + |b|): each output sums k*k*Cin
  products and a bias.
  """
  k, _, cin, _ = kernel_abs.shape
  b, h, w, _ = x_abs.shape
  xp = np.pad(x_abs, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros((b, h + 2 * pad - k + 1, w + 2 * pad - k + 1,
                  kernel_abs.shape[-1]))
  for dy in range(k):
    for dx in range(k):
      out += xp[:, dy:dy + out.shape[1], dx:dx + out.shape[2], :] @ (
          kernel_abs[dy, dx])
  return gamma(k * k * cin + 1, u) * (out + bias_abs)


def assert_within(actual, desired, bound, what: str = "") -> None:
  """Asserts |actual - desired| <= bound elementwise (bound broadcasts).

  The message names the worst element and how far past its bound it is.
  """
  actual = np.asarray(actual, np.float64)
  desired = np.asarray(desired, np.float64)
  bound = np.broadcast_to(np.asarray(bound, np.float64), desired.shape)
  if actual.shape != desired.shape:
    raise AssertionError(f"{what}: shapes differ, {actual.shape} vs "
                         f"{desired.shape}")
  err = np.abs(actual - desired)
  bad = ~(err <= bound)  # NaN counts as bad
  if np.any(bad):
    ratio = np.where(bound > 0, err / np.maximum(bound, 1e-300), np.inf)
    i = np.unravel_index(np.nanargmax(np.where(bad, ratio, -1)), err.shape)
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {err.size} values exceed their error "
        f"bound; worst at {i}: |{actual[i]!r} - {desired[i]!r}| = "
        f"{err[i]:.3g} > bound {bound[i]:.3g} ({ratio[i]:.3g}x)")
