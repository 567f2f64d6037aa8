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


def np_conv(x: np.ndarray, kernel: np.ndarray, pad: int = 0) -> np.ndarray:
  """Stride-1 conv of [B, H, W, Cin] with [k, k, Cin, Cout], in float64.

  Zero padding `pad`, no bias. Given |x| and |W| it returns each output's sum
  of |terms|; given an error bound of x and |W|, that error propagated.
  """
  k = kernel.shape[0]
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros((b, h + 2 * pad - k + 1, w + 2 * pad - k + 1,
                  kernel.shape[-1]))
  for dy in range(k):
    for dx in range(k):
      out += xp[:, dy:dy + out.shape[1], dx:dx + out.shape[2], :] @ (
          kernel[dy, dx])
  return out


def conv_bound(x_abs: np.ndarray, kernel_abs: np.ndarray,
               bias_abs: np.ndarray | float = 0.0, pad: int = 0,
               u: float = U32) -> np.ndarray:
  """Rounding bound of a stride-1 'same' conv of [B, H, W, Cin] inputs.

  gamma(k*k*Cin + 1) * (|x| conv |W| + |b|): each output sums k*k*Cin
  products and a bias.
  """
  k, _, cin, _ = kernel_abs.shape
  return gamma(k * k * cin + 1, u) * (np_conv(x_abs, kernel_abs, pad)
                                      + bias_abs)


def matmul_bound(a: np.ndarray, b: np.ndarray, err_a: np.ndarray | float = 0.0,
                 err_b: np.ndarray | float = 0.0,
                 u: float = U32) -> np.ndarray:
  """First-order error bound of a @ b computed from inputs with errors.

  gamma(n) |a| @ |b| for the n-term sums, plus err_a @ |b| + |a| @ err_b for
  the errors the inputs carry (a, b: exact values; err_*: their bounds).
  """
  a_abs, b_abs = np.abs(a), np.abs(b)
  return (gamma(a.shape[-1], u) * (a_abs @ b_abs)
          + np.broadcast_to(err_a, a.shape) @ b_abs
          + a_abs @ np.broadcast_to(err_b, b.shape))


# XLA CPU's exp, log, log10 and rsqrt were measured within 3.2 u of the
# exact value (sqrt and division of arrays are correctly rounded); 4 u leaves
# room for other vector code paths.
FN_U = 4 * U32
# XLA may divide by a constant or a broadcast scalar through its reciprocal:
# two roundings.
DIV_U = 2 * U32


class Bounded:
  """A float64 value with a first-order bound on its float32 twin's error.

  Mirroring a float32 computation operation by operation on exact float64
  values (running error analysis, Higham sec. 3.3), every result carries
  `err` >= |float32 result - exact result|: the inputs' errors propagated
  to first order plus the operation's own rounding, u |result| for + - *,
  2 u |result| for / (XLA may divide by a constant through its reciprocal),
  gamma(n) * sum |terms| for an n-term sum. Python numbers become float32
  constants, as in JAX, with their representation error (u |x| for another
  u); NumPy arrays count as exact inputs.

  Attributes:
    value: the exact result, float64.
    err: the error bound, broadcast to `value`'s shape.
    u: unit roundoff of the arithmetic mirrored.
  """

  __array_ufunc__ = None  # `ndarray op Bounded` defers to Bounded

  def __init__(self, value, err=0.0, u: float = U32):
    self.value = np.asarray(value, np.float64)
    self.err = np.broadcast_to(np.asarray(err, np.float64), self.value.shape)
    self.u = u

  @classmethod
  def const(cls, decimals, u: float = U32) -> "Bounded":
    """Constants as JAX holds them: rounded to float32 (to u otherwise)."""
    exact = np.asarray(decimals, np.float64)
    rounded = (np.float32(exact).astype(np.float64) if u == U32
               else exact * (1 + u))
    return cls(exact, np.abs(rounded - exact), u)

  def _lift(self, x) -> "Bounded":
    if isinstance(x, Bounded):
      return x
    if isinstance(x, (int, float)):
      return Bounded.const(x, self.u)
    return Bounded(x, 0.0, self.u)

  def _new(self, value, err) -> "Bounded":
    return Bounded(value, err + self.u * np.abs(value), self.u)

  def __add__(self, other):
    o = self._lift(other)
    return self._new(self.value + o.value, self.err + o.err)

  def __sub__(self, other):
    o = self._lift(other)
    return self._new(self.value - o.value, self.err + o.err)

  def __mul__(self, other):
    o = self._lift(other)
    return self._new(self.value * o.value,
                     np.abs(self.value) * o.err + self.err * np.abs(o.value))

  def __truediv__(self, other):
    o = self._lift(other)
    v = self.value / o.value
    return self._new(v, (self.err + np.abs(v) * o.err) / np.abs(o.value)
                     + self.u * np.abs(v))

  __radd__ = __add__
  __rmul__ = __mul__

  def __rsub__(self, other):
    return self._lift(other) - self

  def __rtruediv__(self, other):
    return self._lift(other) / self

  def __neg__(self):
    return Bounded(-self.value, self.err, self.u)

  def __getitem__(self, index):
    return self.moved(lambda a: a[index])

  def moved(self, fn) -> "Bounded":
    """Applies an exact rearrangement (reshape, stack, index) to both."""
    return Bounded(fn(self.value), fn(self.err), self.u)

  def lipschitz(self, fn) -> "Bounded":
    """An exact elementwise 1-Lipschitz function: abs, relu, clip."""
    return Bounded(fn(self.value), self.err, self.u)

  def fn(self, f, df, ulps: float = FN_U / U32) -> "Bounded":
    """A library function f (derivative df) within `ulps` u of exact."""
    v = f(self.value)
    return Bounded(v, np.abs(df(self.value)) * self.err
                   + ulps * self.u * np.abs(v), self.u)

  def sum(self, axis=None, keepdims: bool = False) -> "Bounded":
    """An n-term sum in any order: gamma(n) * sum |terms|."""
    value = self.value.sum(axis, keepdims=keepdims)
    n = self.value.size // max(value.size, 1)
    return Bounded(value, self.err.sum(axis, keepdims=keepdims)
                   + gamma(n, self.u) * np.abs(self.value).sum(
                       axis, keepdims=keepdims), self.u)

  def mean(self, axis=None, keepdims: bool = False) -> "Bounded":
    """The sum, then a division by the count."""
    total = self.sum(axis, keepdims)
    return total / (self.value.size // max(total.value.size, 1))


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
