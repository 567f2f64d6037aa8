"""Tests of the `masked_faces` TFDS dataset (written and read without TF)."""

import os
import pickle
import sys

from absl import flags
import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxface.data import decode
from jaxface.data import masked_faces
from jaxface.data import procedural
from jaxface.data import schema
from jaxface.data import sources
from jaxface.data import wflw

_FACES = procedural.ProceduralFaces(size=64, num_records=16, seed=11)
_SPLIT_FACES = {"train": range(0, 8), "val": range(8, 12),
                "test": range(12, 15)}


def _examples(indices, unknown_gender=False):
  for k in indices:
    record = _FACES[k]
    approx = np.zeros(98, bool)
    approx[wflw.PUPILS] = True
    yield {
        "image": record[schema.IMAGE],
        "landmarks": record[schema.LANDMARKS],
        "landmarks_approx": approx,
        "gender": -1 if unknown_gender else int(record[schema.GENDER]),
        "key": f"faces/{k:03d}.png",
        "landmark_teacher": "procedural",
    }


def _write(out_dir, image_format="png", **kw):
  return masked_faces.write_dataset(
      out_dir, {s: _examples(r) for s, r in _SPLIT_FACES.items()},
      description="procedural faces for a test",
      metadata={"source": "procedural", "seed": 11},
      image_format=image_format, **kw)


def test_round_trip_without_tensorflow(tmp_path):
  path = _write(tmp_path)
  assert os.path.basename(path) == "1.0.0"
  assert sorted(p.name for p in path.iterdir() if "array_record" not in
                p.name) == ["dataset_info.json", "features.json",
                            "gender-test.npy", "gender-train.npy",
                            "gender-val.npy", "metadata.json"]
  info = masked_faces.read_info(tmp_path)
  assert info["metadata"] == {"source": "procedural", "seed": 11}
  assert info["description"] == "procedural faces for a test"
  assert info["num_examples"] == {"train": 8, "val": 4, "test": 3}
  assert info["gender_counts"]["train"] == {"female": 4, "male": 4,
                                            "unknown": 0}
  for split, indices in _SPLIT_FACES.items():
    prepared = sources.Prepared(tmp_path, split=split)
    assert len(prepared) == len(indices)
    for i, k in enumerate(indices):
      record = prepared[i]
      face = _FACES[k]
      np.testing.assert_array_equal(record[schema.IMAGE], face[schema.IMAGE])
      np.testing.assert_array_equal(record[schema.LANDMARKS],
                                    face[schema.LANDMARKS])
      assert record[schema.LANDMARKS].dtype == np.float32
      assert record[sources.LANDMARKS_APPROX].dtype == np.bool_
      assert record[sources.LANDMARKS_APPROX].sum() == 2
      assert record[schema.GENDER] == face[schema.GENDER]
      assert record[schema.GENDER].dtype == np.int32
      assert record[sources.KEY] == f"faces/{k:03d}.png"
      assert record[sources.LANDMARK_TEACHER] == "procedural"
  spec = sources.open_source(f"prepared:{tmp_path}", split="val",
                             gender="male")
  assert [spec[i][sources.KEY] for i in range(len(spec))] == [
      "faces/009.png", "faces/011.png"]
  # tfds's own readers, straight and by directory.
  ds = tfds.data_source("masked_faces", split="val", data_dir=tmp_path)
  assert len(ds) == 4
  np.testing.assert_array_equal(ds[1]["image"], _FACES[9][schema.IMAGE])
  assert ds[1]["key"] == b"faces/009.png"
  builder = tfds.builder_from_directory(os.fspath(path))
  ds = builder.as_data_source("test")
  np.testing.assert_array_equal(ds[2]["landmarks"],
                                _FACES[14][schema.LANDMARKS])
  assert "tensorflow" not in sys.modules


def test_jpeg_gender_filter_and_draft(tmp_path):
  path = _write(tmp_path, image_format="jpeg", quality=95)
  prepared = sources.Prepared(path, split="train")
  diff = np.abs(prepared[0][schema.IMAGE].astype(np.float64)
                - _FACES[0][schema.IMAGE])
  assert diff.mean() < 3.0
  female = sources.Prepared(tmp_path / "masked_faces", split="train",
                            gender="female")
  assert len(female) == 4
  assert [female[i][sources.KEY] for i in range(4)] == [
      f"faces/{k:03d}.png" for k in (0, 2, 4, 6)]
  assert female[-1][schema.GENDER] == schema.FEMALE
  small = sources.Prepared(path, split="train", draft_size=32)[1]
  assert small[schema.IMAGE].shape == (32, 32, 3)
  np.testing.assert_allclose(
      small[schema.LANDMARKS],
      wflw.resize_landmarks(_FACES[1][schema.LANDMARKS], 0.5), atol=1e-5)


def test_grain_pipeline_and_pickle(tmp_path):
  _write(tmp_path)
  prepared = sources.Prepared(tmp_path, split="train", gender="male")
  copy = pickle.loads(pickle.dumps(prepared))
  np.testing.assert_array_equal(copy[2][schema.IMAGE],
                                prepared[2][schema.IMAGE])
  ds = (grain.MapDataset.source(prepared).shuffle(seed=0)
        .filter(lambda r: r is not None)
        .map(lambda r: {schema.IMAGE: r[schema.IMAGE],
                        schema.GENDER: r[schema.GENDER]}))
  batches = list(ds.to_iter_dataset().batch(2))
  assert len(batches) == 2
  assert batches[0][schema.IMAGE].shape == (2, 64, 64, 3)
  assert np.all(np.concatenate([b[schema.GENDER] for b in batches]) == 1)


def test_grain_worker_processes(tmp_path):
  # grain's worker processes read absl flags, which a test run never parses.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  _write(tmp_path)
  prepared = sources.Prepared(tmp_path, split="train", gender="female")
  ds = grain.MapDataset.source(prepared).map(lambda r: r[sources.KEY])
  it = ds.to_iter_dataset().mp_prefetch(
      grain.MultiprocessingOptions(num_workers=2))
  assert sorted(it) == [f"faces/{k:03d}.png" for k in (0, 2, 4, 6)]


def test_unknown_gender_corrupt_record_and_missing_split(tmp_path, caplog):
  examples = list(_examples(range(3), unknown_gender=True))
  examples[1]["image"] = b"not an image"  # bytes are stored as they are
  path = masked_faces.write_dataset(
      tmp_path, {"train": examples, "test": []}, description="",
      metadata={})
  assert masked_faces.split_names(path) == ("train",)
  prepared = sources.Prepared(path, split="train")
  assert prepared[0][schema.GENDER] == -1
  assert np.all(prepared[0][schema.LANDMARKS] == _FACES[0][schema.LANDMARKS])
  assert prepared[1] is None
  assert "faces/001.png" in caplog.text
  with pytest.raises(ValueError, match="no gender labels.*prepare"):
    sources.Prepared(path, split="train", gender="male")
  with pytest.raises(ValueError, match="no split 'test'"):
    sources.Prepared(path, split="test")


def test_existing_and_interrupted_writes(tmp_path):
  _write(tmp_path)
  with pytest.raises(FileExistsError):
    _write(tmp_path)

  def broken():
    yield from _examples(range(3))
    raise RuntimeError("preparation interrupted")

  # A failed replacement leaves the old dataset as it was.
  with pytest.raises(RuntimeError, match="interrupted"):
    masked_faces.write_dataset(tmp_path, {"train": broken()}, description="",
                               metadata={}, overwrite=True)
  assert len(sources.Prepared(tmp_path, split="train")) == 8
  assert sorted(os.listdir(tmp_path)) == ["masked_faces"]
  assert os.listdir(tmp_path / "masked_faces") == ["1.0.0"]
  # A failed first write leaves nothing that looks like a dataset.
  other = tmp_path / "other"
  with pytest.raises(RuntimeError, match="interrupted"):
    masked_faces.write_dataset(other, {"train": broken()}, description="",
                               metadata={})
  with pytest.raises(FileNotFoundError):
    masked_faces.find_dataset_dir(other)
  path = masked_faces.write_dataset(other, {"val": _examples([3])},
                                    description="", metadata={})
  assert len(sources.Prepared(path, split="val")) == 1
  # A successful replacement.
  path = masked_faces.write_dataset(tmp_path, {"val": _examples([3, 4])},
                                    description="", metadata={},
                                    overwrite=True)
  assert masked_faces.split_names(path) == ("val",)
  assert len(sources.Prepared(tmp_path, split="val")) == 2
  assert os.listdir(tmp_path / "masked_faces") == ["1.0.0"]


def test_bad_examples_and_arguments(tmp_path):
  with pytest.raises(ValueError, match="splits"):
    masked_faces.write_dataset(tmp_path, {"validation": []}, description="",
                               metadata={})
  with pytest.raises(ValueError, match="JSON"):
    masked_faces.write_dataset(tmp_path, {"train": _examples([0])},
                               description="", metadata={"x": object()})
  bad = {"image": _FACES[0][schema.IMAGE], "key": "x",
         "landmarks": np.zeros((68, 2))}
  with pytest.raises(ValueError, match=r"\(x\).*\[98, 2\]"):
    masked_faces.write_dataset(tmp_path, {"train": [bad]}, description="",
                               metadata={})


def test_encode_image():
  image = _FACES[3][schema.IMAGE]
  png = masked_faces.encode_image(image, "png")
  np.testing.assert_array_equal(decode.decode_image(png), image)
  jpeg = masked_faces.encode_image(image, "jpeg", quality=90)
  assert jpeg[:2] == b"\xff\xd8"
  assert np.abs(decode.decode_image(jpeg).astype(float) - image).mean() < 4
  with pytest.raises(ValueError, match="format"):
    masked_faces.encode_image(image, "gif")
