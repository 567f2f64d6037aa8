"""Tests of the procedural face source."""

import pickle

import numpy as np
import pytest

import numerics
from jaxface.data import procedural
from jaxface.data import schema
from jaxface.data import wflw

_KEYS = {schema.IMAGE, schema.MASKED_IMAGE, schema.MASK, schema.LANDMARKS,
         schema.GENDER, procedural.YAW, procedural.ROLL,
         procedural.MASK_STYLE}


def _pixel(image, point):
  col, row = np.round(point).astype(int)
  return image[row, col].astype(np.float64)


def _patch(image, point, radius=2):
  """Median colour of a small square patch, or None outside the image."""
  col, row = np.round(point).astype(int)
  size = image.shape[0]
  if not (radius <= col < size - radius and radius <= row < size - radius):
    return None
  patch = image[row - radius:row + radius + 1, col - radius:col + radius + 1]
  return np.median(patch.reshape(-1, 3).astype(np.float64), axis=0)


@pytest.mark.parametrize("size,count", [(64, 3), (256, 2), (512, 1)])
def test_shapes_and_dtypes(size, count):
  source = procedural.ProceduralFaces(size=size, num_records=10, seed=1)
  assert len(source) == 10
  for i in range(count):
    record = source[i]
    assert set(record) == _KEYS
    assert record[schema.IMAGE].shape == (size, size, 3)
    assert record[schema.IMAGE].dtype == np.uint8
    assert record[schema.MASKED_IMAGE].shape == (size, size, 3)
    assert record[schema.MASKED_IMAGE].dtype == np.uint8
    assert record[schema.MASK].shape == (size, size)
    assert record[schema.MASK].dtype == np.uint8
    assert set(np.unique(record[schema.MASK])) <= {0, 1}
    assert record[schema.LANDMARKS].shape == (98, 2)
    assert record[schema.LANDMARKS].dtype == np.float32
    assert record[schema.GENDER].dtype == np.int32
    assert record[schema.GENDER].shape == ()
    assert record[procedural.YAW].dtype == np.float32
    assert record[procedural.ROLL].dtype == np.float32
    assert record[procedural.MASK_STYLE].dtype == np.int32
    assert abs(record[procedural.YAW]) <= procedural.MAX_YAW
    assert abs(record[procedural.ROLL]) <= procedural.MAX_ROLL
    assert 0 <= record[procedural.MASK_STYLE] < len(procedural.MASK_STYLES)


def test_deterministic_and_order_independent():
  source = procedural.ProceduralFaces(size=64, num_records=10, seed=3)
  first = source[4]
  _ = source[7]
  again = procedural.ProceduralFaces(size=64, num_records=10, seed=3)[4]
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  other = source[5]
  assert not np.array_equal(first[schema.IMAGE], other[schema.IMAGE])
  other_seed = procedural.ProceduralFaces(size=64, num_records=10, seed=4)[4]
  assert not np.array_equal(first[schema.IMAGE], other_seed[schema.IMAGE])
  # Negative indices count from the end.
  np.testing.assert_array_equal(source[-6][schema.IMAGE],
                                first[schema.IMAGE])


def test_source_is_picklable():
  source = procedural.ProceduralFaces(size=64, num_records=5, seed=2,
                                      gender="male")
  clone = pickle.loads(pickle.dumps(source))
  assert len(clone) == 5
  np.testing.assert_array_equal(clone[1][schema.IMAGE],
                                source[1][schema.IMAGE])


def test_mask_is_exact():
  source = procedural.ProceduralFaces(size=128, num_records=8, seed=5)
  for i in range(6):
    record = source[i]
    image, masked = record[schema.IMAGE], record[schema.MASKED_IMAGE]
    mask = record[schema.MASK].astype(bool)
    differs = np.any(image != masked, axis=-1)
    assert not differs[~mask].any()
    assert 0.03 < mask.mean() < 0.4
    assert differs[mask].mean() > 0.9
    # Drawn from the landmarks: over the nose tip and the mouth, under the
    # eyes.
    lm = record[schema.LANDMARKS]
    for k in (wflw.NOSE_TIP, wflw.UPPER_LIP_TOP, wflw.LOWER_LIP_BOTTOM,
              wflw.MOUTH_LEFT, wflw.MOUTH_RIGHT):
      assert _pixel(mask, lm[k]) == 1, k
    for k in (wflw.LEFT_PUPIL, wflw.RIGHT_PUPIL, 37, 42):
      assert _pixel(mask, lm[k]) == 0, k


def test_landmarks_match_the_drawing():
  source = procedural.ProceduralFaces(size=256, num_records=8, seed=6)
  for i in range(4):
    record = source[i]
    image, lm = record[schema.IMAGE], record[schema.LANDMARKS]
    assert lm.min() >= 0 and lm.max() <= 255
    # The nose tip is skin: the same colour as between the brows.
    glabella = (lm[51] + (lm[37] + lm[42]) / 2) / 2
    assert np.abs(_pixel(image, lm[wflw.NOSE_TIP])
                  - _pixel(image, glabella)).mean() < 20
    # Each pupil is much darker than the whites either side of it.
    for pupil, outer, inner in ((96, 60, 64), (97, 72, 68)):
      lum = lambda p: _pixel(image, p).mean()
      whites = max(lum(lm[pupil] + 0.7 * (lm[outer] - lm[pupil])),
                   lum(lm[pupil] + 0.7 * (lm[inner] - lm[pupil])))
      assert whites - lum(lm[pupil]) > 60
    # Anatomical order (the face is never turned past profile).
    x, y = lm[:, 0], lm[:, 1]
    assert x[60] < x[64] < x[68] < x[72]
    eyes_y = (y[96] + y[97]) / 2
    assert eyes_y < y[54] < y[79] < y[85] < y[16]


def test_gender_filter():
  for gender, code in schema.GENDERS.items():
    source = procedural.ProceduralFaces(size=64, num_records=6, seed=0,
                                        gender=gender)
    assert [int(source[i][schema.GENDER]) for i in range(6)] == [code] * 6
  both = procedural.ProceduralFaces(size=64, num_records=6, seed=0)
  assert [int(both[i][schema.GENDER]) for i in range(6)] == [0, 1] * 3
  # The filtered sources are subsets of the unfiltered one.
  male = procedural.ProceduralFaces(size=64, num_records=3, seed=0,
                                    gender="male")
  np.testing.assert_array_equal(male[1][schema.IMAGE],
                                both[3][schema.IMAGE])


def _hair_beside_the_jaw(record):
  """Is the colour beside the lower jaw the colour of the hair on top?

  The hair is sampled above the forehead; the other samples lie a little
  outside the contour beside the mouth (jaw points 8 and 24), where long hair
  falls but short hair never reaches (background there).
  """
  image, lm = record[schema.IMAGE], record[schema.LANDMARKS].astype(float)
  eyes = (lm[60] + lm[72]) / 2
  down = lm[16] - eyes
  face_unit = np.linalg.norm(down) / 0.85  # eye line to chin ~ 0.85 units
  down /= np.linalg.norm(down)
  right = np.array([down[1], -down[0]])
  top = _patch(image, (lm[35] + lm[44]) / 2 - down * 0.42 * face_unit)
  if top is None:
    return None
  distances = []
  for jaw_point, side in ((8, -1.0), (24, 1.0)):
    beside = _patch(image, lm[jaw_point] + right * side * 0.14 * face_unit)
    if beside is not None:
      distances.append(np.abs(beside - top).mean())
  return min(distances) < 25 if distances else None


def test_gender_changes_the_hair():
  # Women have long hair beside the face and men short hair: the colour
  # beside the lower jaw matches the hair on top for (nearly) every woman and
  # (nearly) no man. A source that ignored gender would score the same on
  # both.
  rates = {}
  for gender in ("female", "male"):
    source = procedural.ProceduralFaces(size=96, num_records=20, seed=11,
                                        gender=gender)
    found = [_hair_beside_the_jaw(source[i]) for i in range(20)]
    found = [f for f in found if f is not None]
    assert len(found) >= 12
    rates[gender] = np.mean(found)
  assert rates["female"] >= 0.8, rates
  assert rates["male"] <= 0.3, rates


def test_same_face_at_every_size():
  small = procedural.render(9, size=128, seed=2)
  large = procedural.render(9, size=256, seed=2)
  # Both are f * size - 0.5 for the same float64 f, rounded to float32
  # (u of each); resizing the small ones adds the float32 steps of
  # (x + 0.5) * 2 - 0.5.
  lm_small, lm_large = small[schema.LANDMARKS], large[schema.LANDMARKS]
  resized = (numerics.Bounded(lm_small, numerics.U32 * np.abs(lm_small))
             + 0.5) * 2.0 - 0.5
  numerics.assert_within(wflw.resize_landmarks(lm_small, 2.0), lm_large,
                         resized.err + numerics.U32 * np.abs(lm_large),
                         "landmarks at 128, resized, vs at 256")
  for key in (schema.GENDER, procedural.YAW, procedural.ROLL,
              procedural.MASK_STYLE):
    assert small[key] == large[key]
  # The pictures agree too: the large one box-filtered is close to the small.
  down = large[schema.IMAGE].astype(np.float64).reshape(128, 2, 128, 2, 3)
  down = down.mean(axis=(1, 3))
  assert np.abs(down - small[schema.IMAGE]).mean() < 6
  mask_down = large[schema.MASK].reshape(128, 2, 128, 2).mean(axis=(1, 3))
  assert np.mean(np.abs(mask_down - small[schema.MASK]) > 0.5) < 0.02


@pytest.mark.parametrize("size", [63, 513, 0, -256, 128.0, "256", True])
def test_invalid_size(size):
  with pytest.raises(ValueError, match="size"):
    procedural.ProceduralFaces(size=size)


def test_invalid_arguments():
  with pytest.raises(ValueError, match="gender"):
    procedural.ProceduralFaces(gender="other")
  with pytest.raises(ValueError, match="num_records"):
    procedural.ProceduralFaces(num_records=0)
  with pytest.raises(ValueError, match="seed"):
    procedural.ProceduralFaces(seed=-1)
  source = procedural.ProceduralFaces(size=64, num_records=3)
  with pytest.raises(IndexError):
    source[3]
