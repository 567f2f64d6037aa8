"""The labelme reader and source, on files the tests write."""

import base64
import io
import json
import pathlib
import sys

import numpy as np
from PIL import Image
import pytest

from jaxface.data import labelme
from jaxface.data import pipeline
from jaxface.data import schema
from jaxface.data import sources

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import segment as segment_config


def _photo(h=48, w=64):
  rng = np.random.default_rng(0)
  return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _write(folder, name, shapes, photo, embed=False):
  meta = {"version": "5.0.1", "flags": {}, "shapes": shapes,
          "imageHeight": photo.shape[0], "imageWidth": photo.shape[1]}
  buf = io.BytesIO()
  Image.fromarray(photo).save(buf, format="PNG")
  if embed:
    meta["imagePath"] = None
    meta["imageData"] = base64.b64encode(buf.getvalue()).decode()
  else:
    (folder / f"{name}.png").write_bytes(buf.getvalue())
    meta["imagePath"] = f"{name}.png"
    meta["imageData"] = None
  path = folder / f"{name}.json"
  path.write_text(json.dumps(meta))
  return path


SHAPES = [
    {"label": "Face_Mask", "shape_type": "polygon",
     "points": [[2, 2], [9, 2], [9, 7], [2, 7]]},
    {"label": "face", "shape_type": "rectangle", "points": [[30, 4], [20, 1]]},
    {"label": "mask", "shape_type": "polygon",
     "points": [[40, 30], [50, 30], [45, 40]]},
    {"label": "hand", "shape_type": "polygon",
     "points": [[0, 40], [5, 40], [5, 45]]},
]


@pytest.mark.parametrize("embed", [False, True])
def test_read_polygons_rectangles_and_boxes(tmp_path, embed):
  photo = _photo()
  a = labelme.read(_write(tmp_path, "p", SHAPES, photo, embed))
  np.testing.assert_array_equal(a.image, photo)
  np.testing.assert_array_equal(a.classes, [labelme.FACE_MASK, labelme.FACE,
                                            labelme.FACE_MASK])
  # The square's vertices are pixel centres: rows 2..7, columns 2..9.
  square = np.zeros((48, 64), np.uint8)
  square[2:8, 2:10] = 1
  np.testing.assert_array_equal(a.instances[0], square)
  np.testing.assert_array_equal(a.boxes[0], [2, 2, 10, 8])
  # The rectangle (corners in any order): centres in [20, 30] x [1, 4].
  np.testing.assert_array_equal(a.boxes[1], [20, 1, 31, 5])
  assert a.instances[1].sum() == 11 * 4
  # The triangle: inside its box, apex row 40 included.
  tri = a.instances[2]
  assert tri[30, 40:51].all() and tri[40, 45] and not tri[40, 44]
  np.testing.assert_array_equal(a.boxes[2], [40, 30, 51, 41])
  # The map: both face masks, not the face, not the hand.
  np.testing.assert_array_equal(a.mask, a.instances[0] | a.instances[2])


def test_bad_files_are_named(tmp_path):
  photo = _photo()
  bad = tmp_path / "broken.json"
  bad.write_text("{not json")
  with pytest.raises(labelme.LabelmeError, match="broken.json"):
    labelme.read(bad)
  line = [{"label": "mask", "shape_type": "polygon", "points": [[1, 1],
                                                                [5, 5]]}]
  with pytest.raises(labelme.LabelmeError, match="two.json.*3 points"):
    labelme.read(_write(tmp_path, "two", line, photo))
  path = _write(tmp_path, "size", SHAPES, photo)
  meta = json.loads(path.read_text())
  meta["imageWidth"] = 10
  path.write_text(json.dumps(meta))
  with pytest.raises(labelme.LabelmeError, match="size.json.*64x48"):
    labelme.read(path)


def test_source_records_and_a_segment_batch(tmp_path):
  for i in range(4):
    _write(tmp_path, f"photo{i}", SHAPES, _photo())
  (tmp_path / "junk.json").write_text("[]")
  src = sources.open_source(f"labelme:{tmp_path}", split="all")
  assert len(src) == 5
  records = [src[i] for i in range(len(src))]
  assert sum(r is None for r in records) == 1  # junk.json, with a warning
  r = next(r for r in records if r is not None)
  assert r[schema.MASK].sum() > 0 and r[schema.MASK_STYLE] == -1
  assert np.isnan(r[schema.LANDMARKS]).all()
  with pytest.raises(ValueError, match="gender"):
    sources.open_source(f"labelme:{tmp_path}", gender="male")

  # The segment task trains from such photos: the map is theirs, the face
  # box unknown (no landmarks).
  from jaxface import tasks  # pylint: disable=g-import-not-at-top
  c = segment_config.get_config("tiny")
  c.data.source = f"labelme:{tmp_path},splits=1/0/0"
  spec = tasks.examples(c)
  batch = pipeline.fixed_batch(spec, c, 4)
  assert batch[schema.MASK].shape == (4, 64, 64, 1)
  assert batch[schema.MASK].any() and np.isnan(batch["face_box"]).all()
