"""Tests of the WFLW layout: flip permutation, flips, resizing, 98 -> 68."""

import numpy as np
import pytest

import numerics
from jaxface.data import procedural
from jaxface.data import wflw


def _mirror_pairs(perm):
  return {(int(k), int(perm[k])) for k in range(len(perm))}


def test_groups_partition_the_98_points():
  groups = np.concatenate([np.asarray(g) for g in wflw.GROUPS.values()])
  assert sorted(groups.tolist()) == list(range(wflw.NUM_LANDMARKS))


def test_flip_permutation_is_an_involution():
  perm = wflw.FLIP_PERMUTATION
  assert perm.shape == (98,)
  assert sorted(perm.tolist()) == list(range(98))
  np.testing.assert_array_equal(perm[perm], np.arange(98))


def test_flip_permutation_pairs():
  perm = wflw.FLIP_PERMUTATION
  pairs = _mirror_pairs(perm)
  for a, b in [(60, 72), (64, 68), (96, 97), (0, 32), (76, 82), (88, 92),
               (33, 46), (37, 42), (38, 50), (41, 47), (55, 59), (61, 71),
               (65, 75), (67, 73), (83, 87)]:
    assert (a, b) in pairs and (b, a) in pairs
  for k in (16, 51, 52, 53, 54, 57, 79, 85, 90, 94):
    assert perm[k] == k
  # Groups map onto their mirror groups.
  assert set(perm[wflw.LEFT_EYE]) == set(wflw.RIGHT_EYE)
  assert set(perm[wflw.LEFT_BROW]) == set(wflw.RIGHT_BROW)
  assert set(perm[wflw.JAW]) == set(wflw.JAW)
  assert set(perm[wflw.OUTER_LIP]) == set(wflw.OUTER_LIP)
  assert set(perm[wflw.INNER_LIP]) == set(wflw.INNER_LIP)
  assert set(perm[wflw.NOSE_BRIDGE]) == set(wflw.NOSE_BRIDGE)


def test_flip_twice_is_identity():
  rng = np.random.default_rng(0)
  lm = rng.uniform(0, 100, size=(3, 98, 2)).astype(np.float32)
  once = wflw.flip_landmarks(lm, 100)
  assert once.shape == lm.shape
  assert not np.allclose(once, lm)
  # x -> 99 - x rounds in float32, twice; y is only permuted.
  x = numerics.Bounded(lm[..., 0])
  bound = np.stack([(99 - (99 - x)).err, np.zeros(x.value.shape)], -1)
  numerics.assert_within(wflw.flip_landmarks(once, 100), lm, bound,
                         "flip twice")


def test_flip_mirrors_x_about_the_pixel_centres():
  lm = np.zeros((98, 2))
  lm[wflw.CHIN] = [0.0, 5.0]
  flipped = wflw.flip_landmarks(lm, 64)
  np.testing.assert_array_equal(flipped[wflw.CHIN], [63.0, 5.0])  # exact


def test_flipped_procedural_face_stays_left_right_consistent():
  record = procedural.render(3, size=128, seed=0)
  image, lm = record["image"], record["landmarks"]
  flipped_image = image[:, ::-1]
  flipped = wflw.flip_landmarks(lm, image.shape[1])
  for points in (lm, flipped):
    x = points[:, 0]
    # Image-left features are on the image-left in both.
    assert x[60] < x[64] < x[68] < x[72]
    assert x[0] < x[16] < x[32]
    assert x[76] < x[82] and x[96] < x[97]
    assert x[33] < x[46]
  # The flipped points still sit on the flipped drawing: the pupils are dark.
  for k in (96, 97):
    col, row = np.round(flipped[k]).astype(int)
    assert flipped_image[row, col].mean() < 80


def test_symmetric_template_is_its_own_mirror():
  # A neutral face without jitter or gaze: the 3D template is symmetric, so
  # mirroring x and permuting gives the template back.
  rng = np.random.default_rng([0, 0])
  params = procedural._sample_params(rng, male=False)
  params.jitter[:] = 0.0
  params.gaze[:] = 0.0
  pts = procedural._template(params)
  mirrored = pts[wflw.FLIP_PERMUTATION] * np.array([-1.0, 1.0, 1.0])
  # The right half is the left half negated: exact.
  np.testing.assert_array_equal(mirrored[33:], pts[33:])
  # The jaw contour is sampled from cos/sin of linspace(0, pi) and resampled
  # by arc length, in float64: the 160-term cumulative length (gamma(160)
  # times the length, at most twice that of the 33-point polyline) and a
  # few ulps per point, for the point and its mirror. And cos(pi / 2) is
  # 6e-17, not 0, which |cos|**(2 / n) enlarges at the middle vertex to
  # a * 6e-17**(2 / n) (moving resampled points by up to 3 times that).
  jaw = pts[:33, :2]
  length = 2 * np.sum(np.linalg.norm(np.diff(jaw, axis=0), axis=-1))
  middle = params.a * abs(np.cos(np.linspace(0, np.pi, 161)[80]))**(
      2 / params.jaw_n)
  bound = 2 * (numerics.gamma(160, numerics.U64) * length
               + 8 * numerics.U64 * np.abs(jaw).max() + 3 * middle)
  numerics.assert_within(mirrored[:33, :2], jaw, bound, "jaw")


@pytest.mark.parametrize("scale", [2.0, 0.5, (2.0, 3.0)])
def test_resize_round_trip(scale):
  rng = np.random.default_rng(1)
  lm = rng.uniform(0, 50, size=(98, 2))
  inverse = 1.0 / np.asarray(scale)
  back = wflw.resize_landmarks(wflw.resize_landmarks(lm, scale), inverse)
  # The identity in exact arithmetic; the float64 steps' bound (the
  # inverse itself rounded).
  u = numerics.U64
  s = numerics.Bounded(np.asarray(scale, np.float64), 0.0, u)
  x = numerics.Bounded(lm, 0.0, u)
  want = (((x + 0.5) * s - 0.5) + 0.5) * (1.0 / s) - 0.5
  numerics.assert_within(back, lm, want.err, "round trip")


def test_resize_convention():
  # The centre of a 2x2 image (0.5, 0.5) goes to the centre of 4x4 (1.5, 1.5);
  # pixel 0's centre goes to the centre of the first 2x2 block.
  lm = np.array([[0.5, 0.5], [0.0, 0.0]])
  np.testing.assert_array_equal(wflw.resize_landmarks(lm, 2.0),
                                [[1.5, 1.5], [0.5, 0.5]])  # exact


def test_inter_ocular():
  lm = np.zeros((2, 98, 2))
  lm[:, wflw.LEFT_EYE_OUTER] = [10.0, 20.0]
  lm[:, wflw.RIGHT_EYE_OUTER] = [13.0, 24.0]
  np.testing.assert_array_equal(wflw.inter_ocular(lm), [5.0, 5.0])  # exact


def test_to_68():
  lm = np.stack([np.arange(98), np.arange(98) * 2.0], -1)
  out = wflw.to_68(lm[None])
  assert out.shape == (1, 68, 2)
  out = out[0]
  np.testing.assert_array_equal(out[:17, 0], np.arange(0, 33, 2))
  assert len(set(wflw.TO_68_INDICES.tolist())) == 68
  np.testing.assert_array_equal(out[17:27, 0],
                                [33, 34, 35, 36, 37, 42, 43, 44, 45, 46])
  np.testing.assert_array_equal(out[27:36, 0], np.arange(51, 60))
  np.testing.assert_array_equal(out[36:48, 0],
                                [60, 61, 63, 64, 65, 67,
                                 68, 69, 71, 72, 73, 75])
  np.testing.assert_array_equal(out[48:, 0], np.arange(76, 96))
