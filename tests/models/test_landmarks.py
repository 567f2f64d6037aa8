"""The AdaptiveWing FAN: shapes and counts, CoordConv, targets, decoding.

Shapes and parameter counts at the reference size come from abstract
evaluation only; numerical checks use small maps whose values are exact in
float32 by construction, or float64 references with `numerics` bounds.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

import numerics
from jaxface.models import landmarks as fan

U32 = numerics.U32
# exp(-d^2 / (2 sigma^2)): the denominator of the target Gaussians.
TWO_SIGMA2 = 2 * 1.75**2  # 6.125, exact


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _paths(tree):
  """'/'-joined key paths of the leaves of a nested dict."""
  return {"/".join(k.key for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------- network
def test_reference_shapes_and_parameter_count_at_256():
  """4 stacks at 256 px give 4 x [B, 64, 64, 99] and 24,153,036 params."""
  model = fan.FAN()
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  outputs = jax.eval_shape(model.apply, variables, x)
  assert len(outputs) == 4
  for out in outputs:
    assert out.shape == (2, 64, 64, 99) and out.dtype == jnp.float32
  params = variables["params"]
  assert _count(params) == 24_153_036  # REFERENCE.md section 7.1
  # The CoordConv inputs: image + 3 at the stem; 256 + 3 at stack 0 and
  # 256 + 5 (the two boundary coordinate channels) at stacks 1-3.
  assert params["conv1"]["kernel"].shape == (7, 7, 6, 64)
  assert params["m0"]["coordconv"]["kernel"].shape == (1, 1, 259, 256)
  for i in (1, 2, 3):
    assert params[f"m{i}"]["coordconv"]["kernel"].shape == (1, 1, 261, 256)
  for i in range(4):
    assert params[f"l{i}"]["kernel"].shape == (1, 1, 256, 99)
  # Stacks feed the next one; the last has nothing to feed.
  assert params["al0"]["kernel"].shape == (1, 1, 99, 256)
  assert "al3" not in params and "bl3" not in params
  # Every BatchNorm has running statistics in `batch_stats`.
  stats = variables["batch_stats"]
  bn_scales = {p[:-len("/scale")] for p in _paths(params)
               if p.endswith("/scale")}
  assert {p[:-len("/mean")] for p in _paths(stats)
          if p.endswith("/mean")} == bn_scales
  assert {p[:-len("/var")] for p in _paths(stats)
          if p.endswith("/var")} == bn_scales
  assert len(bn_scales) > 100


def _numpy_variables(model, shape, seed=0):
  """Random variables of `model` without compiling its initialiser.

  He-like normal kernels, small biases, BN scale 1, running var 1.
  """
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct(shape, jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, math.sqrt(2 / fan_in), leaf.shape).astype(
          np.float32)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_next_stack_reads_the_previous_boundary_through_coordconv():
  """Stack 1's boundary coordinate channels follow stack 0's boundary.

  With stack 0's boundary heatmap forced below the threshold everywhere
  (bias -100), the two extra CoordConv inputs of stack 1 are zero, so their
  weights cannot matter; forced above it (bias +100) they do. The boundary
  channel's other path into stack 1 (`al0`) is cut so that only CoordConv
  carries it.
  """
  model = fan.FAN(num_stacks=2, width=16, depth=2, stem_width=8)
  image = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
  variables = _numpy_variables(model, image.shape)
  params = variables["params"]
  params["al0"]["kernel"][..., -1, :] = 0.0
  apply = jax.jit(model.apply)

  def run(boundary_bias, extra_rows_scale):
    p = jax.tree.map(np.copy, params)
    p["l0"]["bias"][-1] = boundary_bias
    p["m1"]["coordconv"]["kernel"][:, :, -2:, :] *= extra_rows_scale
    outs = apply({"params": p, "batch_stats": variables["batch_stats"]},
                 image)
    return [np.asarray(o) for o in outs]

  off, off_other = run(-100.0, 1.0), run(-100.0, 3.0)
  on, on_other = run(100.0, 1.0), run(100.0, 3.0)
  for outs in (off, on):
    assert [o.shape for o in outs] == [(2, 8, 8, 99)] * 2
    assert all(np.all(np.isfinite(o)) for o in outs)
  # Stack 0 only sees the bias in its own boundary channel.
  np.testing.assert_array_equal(off[0][..., :-1], on[0][..., :-1])
  # Below the threshold the channels are zeros: bit-identical outputs.
  np.testing.assert_array_equal(off[1], off_other[1])
  assert not np.array_equal(on[1], on_other[1])
  assert not np.array_equal(off[1], on[1])


def test_train_mode_updates_batch_stats():
  """train=True returns new running statistics for every BatchNorm."""
  model = fan.FAN(num_stacks=2, width=16, depth=2, stem_width=8)
  image = np.random.default_rng(2).random((2, 32, 32, 3)).astype(np.float32)
  variables = _numpy_variables(model, image.shape)
  outs, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
          variables, image)
  assert [o.shape for o in outs] == [(2, 8, 8, 99)] * 2
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert len(before) == len(after)
  for a, b in zip(before, after):
    assert not np.array_equal(a, np.asarray(b))


# --------------------------------------------------------------- CoordConv
def test_coord_channels_by_hand_on_a_3x5_map():
  """Row channel, column channel and radius / its maximum, exactly."""
  c = np.asarray(fan.coord_channels(3, 5), np.float64)
  assert c.shape == (3, 5, 3)
  rows = np.array([-1.0, 0.0, 1.0])
  cols = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
  # i / (n - 1) * 2 - 1 is exact in float32 for these n.
  np.testing.assert_array_equal(c[..., 0], np.repeat(rows[:, None], 5, 1))
  np.testing.assert_array_equal(c[..., 1], np.repeat(cols[None, :], 3, 0))
  r = np.sqrt(rows[:, None]**2 + cols[None, :]**2)
  want = r / math.sqrt(2)
  # Exact squares and sums; two correctly rounded square roots (u each)
  # and a division that may go through a reciprocal (2 u).
  numerics.assert_within(c[..., 2], want, 4 * U32 * want, "radius")
  assert c[1, 2, 2] == 0.0


def test_add_coords_without_and_with_a_boundary_map():
  """+3 channels, or +5 with coordinates kept where clip(b, 0, 1) > 0.05."""
  x = np.arange(2 * 3 * 5 * 2, dtype=np.float32).reshape(2, 3, 5, 2)
  coords = np.asarray(fan.coord_channels(3, 5))
  plain = np.asarray(fan.add_coords(jnp.asarray(x)))
  assert plain.shape == (2, 3, 5, 5)
  np.testing.assert_array_equal(plain[..., :2], x)
  for b in range(2):
    np.testing.assert_array_equal(plain[b, ..., 2:], coords)

  just_above = np.nextafter(np.float32(0.05), np.float32(1))
  boundary = np.zeros((2, 3, 5), np.float32)
  boundary[0, 0, :] = [-1.0, 0.05, just_above, 0.5, 2.0]
  boundary[0, 2, 4] = np.nan
  boundary[1] = 7.0  # clipped to 1: everywhere on
  out = np.asarray(fan.add_coords(jnp.asarray(x), jnp.asarray(boundary)))
  assert out.shape == (2, 3, 5, 7)
  np.testing.assert_array_equal(out[..., :5], plain)
  on = np.zeros((2, 3, 5), bool)
  on[0, 0, 2:] = True
  on[1] = True
  want = np.where(on[..., None], coords[None, ..., :2], 0.0)
  np.testing.assert_array_equal(out[..., 5:], want)


# ----------------------------------------------------------------- targets
def _gauss(d2):
  """exp(-d2 / 6.125) as computed in float32, with its error bound."""
  return (numerics.Bounded(-np.asarray(d2, np.float64)) / TWO_SIGMA2).fn(
      np.exp, np.exp)


def test_gaussian_target_peak_std_and_window():
  """Peak 1 at an integer point, std 1.75 px, zero outside a 7x7 window."""
  points = jnp.array([[[10.0, 12.0], [3.0, 30.0]]])  # [1, K=2, (x, y)]
  maps = np.asarray(fan.gaussian_heatmaps(points, 32))
  assert maps.shape == (1, 32, 32, 2) and maps.dtype == np.float32
  m = maps[0, ..., 0]
  assert m[12, 10] == 1.0 and m.max() == 1.0
  for (dx, dy) in ((1, 0), (0, -1), (1, 1), (3, -2), (-3, 3)):
    want = _gauss(dx * dx).value * _gauss(dy * dy).value
    # Two profiles (each a division and an exp) and their product.
    bound = (_gauss(dx * dx) * _gauss(dy * dy)).err
    numerics.assert_within(m[12 + dy, 10 + dx], want, bound,
                           f"offset ({dx}, {dy})")
  nonzero = np.argwhere(m > 0)
  assert nonzero.min(0).tolist() == [9, 7] and nonzero.max(0).tolist() == [
      15, 13]
  assert len(nonzero) == 49
  # Near the edge the window is cut, not moved.
  assert np.count_nonzero(maps[0, ..., 1]) == 7 * 5


def test_non_finite_points_give_empty_maps():
  """A NaN or inf point renders nothing; the other points are unaffected."""
  points = jnp.array([[[np.nan, 5.0], [4.0, np.inf], [8.0, 8.0]]])
  maps = np.asarray(fan.gaussian_heatmaps(points, 16))
  assert not np.any(maps[..., :2])
  assert maps[0, 8, 8, 2] == 1.0


def test_targets_map_image_points_to_heatmap_pixels():
  """`targets` follows the resize rule: image x -> (x + 0.5) / 4 - 0.5."""
  lm = np.full((1, 98, 2), np.nan, np.float32)
  lm[0, 0] = [41.5, 49.5]  # heatmap (10, 12) at 128 -> 32
  lm[0, 97] = [1.5, 125.5]  # heatmap (0, 31)
  t = np.asarray(fan.targets(jnp.asarray(lm), 128, 32))
  assert t.shape == (1, 32, 32, 99)
  assert t[0, 12, 10, 0] == 1.0 and np.argmax(t[0, ..., 0]) == 12 * 32 + 10
  assert t[0, 31, 0, 97] == 1.0
  assert not np.any(t[0, ..., 1:97])
  # No curve has all its points: no boundary.
  assert not np.any(t[0, ..., 98])


NOSE_BRIDGE = (51, 52, 53, 54)


def _nose_bridge_only(x, ys=(10.0, 12.0, 14.0, 16.0)):
  """Landmarks [1, 98, 2] with only the nose bridge, a vertical line."""
  pts = np.full((1, 98, 2), np.nan, np.float32)
  for i, y in zip(NOSE_BRIDGE, ys):
    pts[0, i] = [x, y]
  return pts


def _boundary_bound(value, d2):
  """Float32 error of exp(-d2 / 2) when d2 is exact up to its own rounding.

  The curve's sample points are dyadic (Catmull-Rom weights at t = k/4 are
  multiples of 1/128), so the segment ends are exact; d2 carries at most a
  few roundings (3 u relative) and the exp its own (FN_U).
  """
  return value * (numerics.FN_U + 3 * U32 * d2 / 2) + 1e-30


def test_boundary_is_exp_minus_half_d_squared_near_a_straight_curve():
  """1 on the curve, exp(-d^2/2) within 3 px of it, 0 from 3 px on."""
  b = np.asarray(fan.boundary_heatmap(jnp.asarray(_nose_bridge_only(20.0)),
                                      32))[0]
  assert b.shape == (32, 32)
  # On the curve (between its ends).
  np.testing.assert_array_equal(b[10:17, 20], 1.0)
  cases = {  # (row, col): d^2 to the segment x = 20, y in [10, 16]
      (13, 21): 1.0, (13, 18): 4.0, (10, 22): 4.0, (16, 19): 1.0,
      (8, 20): 4.0, (18, 21): 5.0, (8, 22): 8.0, (17, 22): 5.0,
  }
  for (row, col), d2 in cases.items():
    want = math.exp(-d2 / 2)
    numerics.assert_within(b[row, col], want, _boundary_bound(want, d2),
                           f"pixel ({row}, {col})")
  # d >= 3: nothing (d = 3 exactly is out, as the reference's d < 3).
  for row, col in ((13, 23), (13, 17), (7, 20), (19, 20), (7, 21),
                   (13, 30), (0, 0)):
    assert b[row, col] == 0.0, (row, col)
  assert np.count_nonzero(b) == np.count_nonzero(b > 0.0)
  assert b.min() >= 0.0 and b.max() == 1.0


def test_boundary_within_three_pixels_at_half_pixel_offsets():
  """A curve at x = 20.5: 2.5 px away is exp(-3.125), 3.5 px away is 0."""
  b = np.asarray(fan.boundary_heatmap(jnp.asarray(_nose_bridge_only(20.5)),
                                      32))[0]
  for col, d2 in ((20, 0.25), (21, 0.25), (18, 6.25), (23, 6.25)):
    want = math.exp(-d2 / 2)
    numerics.assert_within(b[13, col], want, _boundary_bound(want, d2),
                           f"column {col}")
  assert b[13, 17] == 0.0 and b[13, 24] == 0.0


def test_boundary_drops_segments_with_non_finite_points():
  """A NaN point drops the curve segments it shapes; all NaN: empty map."""
  pts = _nose_bridge_only(20.0)
  pts[0, 54] = np.nan
  b = np.asarray(fan.boundary_heatmap(jnp.asarray(pts), 32))[0]
  # Segments 52-53 and 53-54 use point 54 (Catmull-Rom looks one point
  # ahead, the end is extrapolated from it); 51-52 is left.
  np.testing.assert_array_equal(b[10:13, 20], 1.0)
  want = math.exp(-2.0)  # (14, 20) is 2 px below the end at y = 12
  numerics.assert_within(b[14, 20], want, _boundary_bound(want, 4.0),
                         "below the remaining segment")
  assert b[15, 20] == 0.0 and b[16, 20] == 0.0
  empty = np.full((2, 98, 2), np.nan, np.float32)
  assert not np.any(np.asarray(fan.boundary_heatmap(jnp.asarray(empty), 16)))


def test_boundary_of_a_full_face_stays_near_its_curves():
  """All 13 curves of a finite face: values in [0, 1], 1 at each landmark
  on a curve, 0 far from every landmark."""
  rng = np.random.default_rng(3)
  pts = rng.uniform(4, 28, (1, 98, 2)).astype(np.float32)
  b = np.asarray(fan.boundary_heatmap(jnp.asarray(pts), 32))[0]
  assert b.min() >= 0.0 and b.max() <= 1.0
  on_curve = sorted({i for c in fan.BOUNDARY_CURVES for i in c})
  # The brows' lower edges and the pupils are on no curve.
  assert set(range(98)) - set(on_curve) == {38, 39, 40, 41, 47, 48, 49, 50,
                                             96, 97}
  # Each landmark of a curve is a sample of it: its nearest pixel is
  # within sqrt(0.5) px, so exp(-0.25) or more.
  near = np.round(pts[0, on_curve]).astype(int)
  assert np.all(b[near[:, 1], near[:, 0]] >= math.exp(-0.25) * (
      1 - numerics.FN_U) - 4 * U32)


# ---------------------------------------------------------------- decoding
def _interior_points(rng, n, size):
  """[1, n, 2] heatmap points at least 1 px inside a size x size map, with
  fractional parts covering [0, 1) including 0 and 0.5."""
  base = rng.integers(1, size - 2, (1, n, 2)).astype(np.float32)
  frac = rng.random((1, n, 2)).astype(np.float32)
  frac[0, :4] = [[0.0, 0.5], [0.5, 0.0], [0.25, 0.75], [0.0, 0.0]]
  return base + frac


def test_decode_argmax_recovers_sub_pixel_points_within_a_quarter():
  """Rendered Gaussians decode within 0.25 heatmap px (1 image px)."""
  rng = np.random.default_rng(4)
  hm_points = _interior_points(rng, 98, 32)
  image = np.asarray(fan.from_heatmap_coords(hm_points, 32, 128))
  maps = fan.targets(jnp.asarray(image), 128, 32)[..., :-1]
  got = np.asarray(fan.decode_argmax(maps, 128), np.float64)
  assert got.shape == (1, 98, 2)
  # The read-out is a quarter-pixel grid: exact in float32.
  np.testing.assert_array_equal((got + 0.5) / 4 - 0.5,
                                np.round(((got + 0.5) / 4 - 0.5) * 4) / 4)
  # Off by at most a quarter heatmap pixel, plus the rounding of the
  # image -> heatmap mapping of the rendered point (2 u of |x| + 1).
  bound = 4 * (0.25 + 2 * U32 * (np.abs(hm_points) + 1))
  numerics.assert_within(got, image.astype(np.float64), bound, "decoded")
  # An integer point comes back exactly (equal neighbours, no shift).
  i = np.all(hm_points[0] == np.round(hm_points[0]), -1)
  assert i.any()
  np.testing.assert_array_equal(got[0, i], image[0, i])


def test_decode_argmax_quarter_pixel_shift_and_border_rule():
  """+-0.25 towards the larger neighbour inside; no shift on the border."""
  maps = np.zeros((1, 8, 8, 3), np.float32)
  # Interior peak at (row 5, col 3); right > left, up > down.
  maps[0, 5, 3, 0] = 1.0
  maps[0, 5, 4, 0], maps[0, 5, 2, 0] = 0.6, 0.5
  maps[0, 4, 3, 0], maps[0, 6, 3, 0] = 0.7, 0.1
  # Peak on the left border: neither coordinate moves.
  maps[0, 5, 0, 1] = 1.0
  maps[0, 5, 1, 1], maps[0, 4, 0, 1] = 0.9, 0.9
  # Peak on the bottom border.
  maps[0, 7, 4, 2] = 1.0
  maps[0, 7, 5, 2], maps[0, 6, 4, 2] = 0.9, 0.9
  got = np.asarray(fan.decode_argmax(jnp.asarray(maps), 32))
  hm = (got + 0.5) * 8 / 32 - 0.5  # back to heatmap pixels (exact)
  np.testing.assert_array_equal(hm[0], [[3.25, 4.75], [0.0, 5.0],
                                        [4.0, 7.0]])
  # Image pixels: (h + 0.5) * 4 - 0.5.
  np.testing.assert_array_equal(got[0, 0], [14.5, 20.5])


def _soft_argmax_f64(maps, temperature):
  """The definition in float64: E[position] under softmax(h / T)."""
  b, h, w, k = maps.shape
  logits = np.moveaxis(maps.astype(np.float64), -1, 1).reshape(b, k, -1)
  logits = logits / temperature
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True)).reshape(b, k, h, w)
  x = np.sum(p.sum(2) * np.arange(w), -1)
  y = np.sum(p.sum(3) * np.arange(h), -1)
  return np.stack([x, y], -1)


def test_decode_soft_argmax_is_the_softmax_expectation_near_the_point():
  """Matches its float64 definition and lies within 0.25 heatmap px of the
  rendered point."""
  rng = np.random.default_rng(5)
  hm_points = _interior_points(rng, 16, 32)
  hm_points = np.clip(hm_points, 4, 27)  # the whole 7x7 window inside
  maps = fan.gaussian_heatmaps(jnp.asarray(hm_points), 32)
  got = np.asarray(fan.decode_soft_argmax(maps, 128), np.float64)
  want_hm = _soft_argmax_f64(np.asarray(maps), 0.05)
  want = (want_hm + 0.5) * 4 - 0.5
  # Logits |h / T| <= 20 with a division's 2 u; exp(l - max) (FN_U and
  # the subtraction's u), softmax's n-term sum and division; two sums over
  # rows / columns; every weight times a position <= w - 1. Then the
  # heatmap -> image map (x4, two roundings of <= 128).
  lmax, n, w = 20.0, 32 * 32, 32
  rel = (2 * numerics.DIV_U * lmax + U32 * lmax + numerics.FN_U
         + numerics.gamma(n) + numerics.DIV_U + 2 * numerics.gamma(w) + U32)
  bound = 4 * rel * (w - 1) + 2 * U32 * 128
  numerics.assert_within(got, want, bound, "soft-argmax")
  # And the expectation is close to the point itself (a property of the
  # temperature, checked here in float64: the bias towards the nearest
  # pixel stays below a quarter pixel).
  assert np.max(np.abs(want_hm - hm_points)) < 0.25


def test_decode_soft_argmax_has_finite_nonzero_gradients():
  """Gradients flow from the points back to every map."""
  points = jnp.array([[[10.3, 12.8], [20.6, 5.1]]])
  maps = fan.gaussian_heatmaps(points, 32)
  grad = jax.grad(lambda m: jnp.sum(fan.decode_soft_argmax(m, 128)))(maps)
  grad = np.asarray(grad)
  assert grad.shape == maps.shape
  assert np.all(np.isfinite(grad))
  assert np.all(np.abs(grad).reshape(-1, 2).max(0) > 0)


def test_decoders_jit_on_a_batch():
  """Both decoders jit on a batch [B, h, w, K] and agree with eager."""
  rng = np.random.default_rng(6)
  pts = np.concatenate([_interior_points(rng, 5, 16) for _ in range(3)])
  maps = fan.gaussian_heatmaps(jnp.asarray(pts), 16)  # [3, 16, 16, 5]
  hard = jax.jit(fan.decode_argmax, static_argnums=1)(maps, 64)
  soft = jax.jit(fan.decode_soft_argmax, static_argnums=1)(maps, 64)
  assert hard.shape == soft.shape == (3, 5, 2)
  np.testing.assert_array_equal(hard, fan.decode_argmax(maps, 64))
  image = np.asarray(fan.from_heatmap_coords(pts, 16, 64), np.float64)
  numerics.assert_within(np.asarray(hard, np.float64), image,
                         4 * (0.25 + 2 * U32 * (np.abs(pts) + 1)), "hard")
  assert np.all(np.isfinite(np.asarray(soft)))


def test_heatmap_coordinate_maps_invert_each_other():
  """to_heatmap_coords and from_heatmap_coords are inverse (dyadic)."""
  x = jnp.array([[[0.0, 255.0], [127.5, 3.25]]])
  h = fan.to_heatmap_coords(x, 256, 64)
  np.testing.assert_array_equal(h, [[[-0.375, 63.375], [31.5, 0.4375]]])
  np.testing.assert_array_equal(fan.from_heatmap_coords(h, 64, 256), x)
  assert fan.heatmap_size(256) == 64
