"""Geometric transforms keep images and landmarks consistent."""

import numpy as np
import pytest

import numerics
from jaxface.data import procedural
from jaxface.data import transforms
from jaxface.data import wflw


def _face(size=128, index=3):
  r = procedural.ProceduralFaces(size=size, num_records=8)[index]
  return {"image": r["image"], "mask": r["mask"], "landmarks": r["landmarks"]}


def test_full_box_resize_matches_the_resize_rule():
  face = _face(128)
  out = transforms.crop_and_resize(face, transforms.full_box(128, 128), 64)
  # Both are (x + 0.5) * 0.5 - 0.5 in float32: exact value and rounding
  # bound of those steps (the crop subtracts x0 = -0.5).
  want = (numerics.Bounded(face["landmarks"]) + 0.5) * 0.5 - 0.5
  numerics.assert_within(out["landmarks"], want.value, want.err, "crop")
  numerics.assert_within(wflw.resize_landmarks(face["landmarks"], 0.5),
                         want.value, want.err, "resize rule")
  assert out["image"].shape == (64, 64, 3)
  assert out["mask"].shape == (64, 64)
  assert set(np.unique(out["mask"])) <= {0, 1}


def test_resize_round_trip_of_landmarks():
  lm = _face(128)["landmarks"]
  there = wflw.resize_landmarks(lm, 2.0)
  back = wflw.resize_landmarks(there, 0.5)
  # The identity in exact arithmetic; the float32 steps' bound.
  want = (((numerics.Bounded(lm) + 0.5) * 2.0 - 0.5) + 0.5) * 0.5 - 0.5
  numerics.assert_within(back, lm, want.err, "round trip")


def test_crop_without_resize_is_a_pure_shift():
  face = _face(128)
  box = (9.5, 19.5, 9.5 + 64, 19.5 + 64)  # pixels 10..73, 20..83
  out = transforms.crop_and_resize(face, box, 64)
  np.testing.assert_array_equal(out["image"], face["image"][20:84, 10:74])
  # (x - x0) * 1 - 0.5 in float32, x0 = (9.5, 19.5).
  want = (numerics.Bounded(face["landmarks"]) - np.array([9.5, 19.5])) * (
      1.0) - 0.5
  numerics.assert_within(out["landmarks"],
                         face["landmarks"] - np.array([10.0, 20.0]), want.err,
                         "shift")


def test_crop_round_trip_through_the_same_box():
  # Crop a box to a size and map the landmarks back: identity.
  face = _face(256)
  box = (40.3, 30.7, 200.3, 190.7)
  out = transforms.crop_and_resize(face, box, 128)
  x0 = np.floor(box[0] + 0.5) - 0.5
  y0 = np.floor(box[1] + 0.5) - 0.5
  side = np.ceil(box[2] + 0.5) - 0.5 - x0
  back = (out["landmarks"] + 0.5) * side / 128 + np.array([x0, y0])
  # The crop's float32 steps (the scale 128 / side rounded to float32), and
  # `out + 0.5` here, scaled back by side / 128; the rest is float64.
  lm = numerics.Bounded(face["landmarks"])
  there = (lm - np.array([x0, y0])) * numerics.Bounded.const(128 / side) - 0.5
  bound = (there + 0.5).err * side / 128 + 8 * numerics.U64 * np.abs(back)
  numerics.assert_within(back, face["landmarks"], bound, "crop round trip")


def test_crop_landmarks_sit_on_the_same_features():
  # The pupils of the procedural face are its darkest pixels around the
  # eyes; after a crop+resize they still are at the mapped landmarks.
  face = _face(256)
  out = transforms.crop_and_resize(face, (30, 50, 222, 242), 96)
  for k in (wflw.LEFT_PUPIL, wflw.RIGHT_PUPIL):
    x, y = np.round(out["landmarks"][k]).astype(int)
    patch = out["image"][y - 4:y + 5, x - 4:x + 5].mean(axis=-1)
    assert patch[3:6, 3:6].min() <= patch.min() + 5


def test_box_outside_the_image_is_padded():
  face = _face(64)
  out = transforms.crop_and_resize(face, (-20.5, -20.5, 83.5, 83.5), 52)
  assert out["image"].shape == (52, 52, 3)


def test_hflip_is_an_involution_and_swaps_eyes():
  face = _face(128)
  face["landmarks_approx"] = np.arange(98) % 3 == 0
  once = transforms.hflip(face)
  twice = transforms.hflip(once)
  for key in ("image", "mask", "landmarks_approx"):
    np.testing.assert_array_equal(twice[key], face[key])
  # x -> 127 - x rounds in float32 (twice); y is only permuted.
  x = numerics.Bounded(face["landmarks"][:, 0])
  bound = np.stack([(127 - (127 - x)).err, np.zeros(98)], -1)
  numerics.assert_within(twice["landmarks"], face["landmarks"], bound,
                         "flip twice")
  # After the flip, the new image-left eye is the old image-right eye.
  want = 127 - x[wflw.RIGHT_EYE_OUTER]
  numerics.assert_within(once["landmarks"][wflw.LEFT_EYE_OUTER, 0],
                         want.value, want.err, "flipped eye")
  assert once["landmarks"][60, 0] < once["landmarks"][72, 0]
  np.testing.assert_array_equal(once["landmarks_approx"],
                                face["landmarks_approx"][wflw.FLIP_PERMUTATION])


def test_face_box_needs_landmarks():
  with pytest.raises(ValueError, match="no finite landmarks"):
    transforms.face_box(np.full((98, 2), np.nan))
  lm = _face(128)["landmarks"]
  x0, y0, x1, y1 = transforms.face_box(lm, scale=1.5)
  # A square: both sides are the same side/2 either side of a float32
  # centre, each end rounded to float32 (and side/2 itself), then the
  # float32 difference: u (|c0| + |c1| + 2 side) per side.
  u = numerics.U32
  side_x, side_y = x1 - x0, y1 - y0
  assert abs(side_x - side_y) <= u * (abs(x0) + abs(x1) + abs(y0) + abs(y1)
                                      + 2 * (side_x + side_y))
  assert x0 < lm[:, 0].min() and x1 > lm[:, 0].max()


def test_random_grey_is_grey_or_untouched():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  grey = transforms.random_grey(image, rng, 1.0)
  assert grey.dtype == np.uint8
  np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  expected = np.round(image.astype(np.float64) @ [0.299, 0.587, 0.114])
  np.testing.assert_allclose(grey[..., 0], expected, atol=1)
  assert transforms.random_grey(image, rng, 0.0) is image


def test_occluder_covers_the_mask_and_is_cut_out_of_the_map():
  face = _face(128)
  image, mask = face["image"], face["mask"].reshape(128, 128, 1)
  assert mask.any()
  changed_maps = 0
  for seed in range(8):
    out, out_mask = transforms.occlude(image, mask,
                                       np.random.default_rng(seed))
    drawn = np.any(out != image, -1)
    # Only mask pixels are removed from the map, and never kept under the
    # occluder; it starts on the mask, so it always takes some of it.
    assert not (out_mask > mask).any()
    removed = (mask[..., 0] == 1) & (out_mask[..., 0] == 0)
    assert removed.any()
    assert not (drawn & (out_mask[..., 0] == 1)).any()
    # Every removed pixel is occluder (drawn; a pixel drawn in its own
    # colour is the rare exception).
    assert drawn[removed].mean() > 0.95
    changed_maps += int(removed.sum() < mask.sum())
  assert changed_maps == 8
  empty = np.zeros_like(mask)
  out, out_mask = transforms.occlude(image, empty, np.random.default_rng(0))
  assert out is image and out_mask is empty
