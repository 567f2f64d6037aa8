"""Geometric transforms keep images and landmarks consistent."""

import numpy as np
import pytest

from jaxface.data import procedural
from jaxface.data import transforms
from jaxface.data import wflw


def _face(size=128, index=3):
  r = procedural.ProceduralFaces(size=size, num_records=8)[index]
  return {"image": r["image"], "mask": r["mask"], "landmarks": r["landmarks"]}


def test_full_box_resize_matches_the_resize_rule():
  face = _face(128)
  out = transforms.crop_and_resize(face, transforms.full_box(128, 128), 64)
  np.testing.assert_allclose(out["landmarks"],
                             wflw.resize_landmarks(face["landmarks"], 0.5),
                             atol=1e-5)
  assert out["image"].shape == (64, 64, 3)
  assert out["mask"].shape == (64, 64)
  assert set(np.unique(out["mask"])) <= {0, 1}


def test_resize_round_trip_of_landmarks():
  lm = _face(128)["landmarks"]
  there = wflw.resize_landmarks(lm, 2.0)
  back = wflw.resize_landmarks(there, 0.5)
  np.testing.assert_allclose(back, lm, atol=1e-4)


def test_crop_without_resize_is_a_pure_shift():
  face = _face(128)
  box = (9.5, 19.5, 9.5 + 64, 19.5 + 64)  # pixels 10..73, 20..83
  out = transforms.crop_and_resize(face, box, 64)
  np.testing.assert_array_equal(out["image"], face["image"][20:84, 10:74])
  np.testing.assert_allclose(out["landmarks"],
                             face["landmarks"] - np.array([10, 20]),
                             atol=1e-5)


def test_crop_round_trip_through_the_same_box():
  # Crop a box to a size and map the landmarks back: identity.
  face = _face(256)
  box = (40.3, 30.7, 200.3, 190.7)
  out = transforms.crop_and_resize(face, box, 128)
  x0 = np.floor(box[0] + 0.5) - 0.5
  y0 = np.floor(box[1] + 0.5) - 0.5
  side = np.ceil(box[2] + 0.5) - 0.5 - x0
  back = (out["landmarks"] + 0.5) * side / 128 + np.array([x0, y0])
  np.testing.assert_allclose(back, face["landmarks"], atol=1e-4)


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
  np.testing.assert_allclose(twice["landmarks"], face["landmarks"], atol=1e-4)
  # After the flip, the new image-left eye is the old image-right eye.
  np.testing.assert_allclose(
      once["landmarks"][wflw.LEFT_EYE_OUTER, 0],
      127 - face["landmarks"][wflw.RIGHT_EYE_OUTER, 0], atol=1e-5)
  assert once["landmarks"][60, 0] < once["landmarks"][72, 0]
  np.testing.assert_array_equal(once["landmarks_approx"],
                                face["landmarks_approx"][wflw.FLIP_PERMUTATION])


def test_face_box_needs_landmarks():
  with pytest.raises(ValueError, match="no finite landmarks"):
    transforms.face_box(np.full((98, 2), np.nan))
  lm = _face(128)["landmarks"]
  x0, y0, x1, y1 = transforms.face_box(lm, scale=1.5)
  assert x1 - x0 == pytest.approx(y1 - y0)
  assert x0 < lm[:, 0].min() and x1 > lm[:, 0].max()
