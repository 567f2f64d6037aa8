"""The reconstruct CLI: bad inputs named, good ones written with metadata."""

import os

import numpy as np
from PIL import Image
import pytest

from jaxface import faces
from jaxface import reconstruct
import pipeline_helpers

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bundle")
  pipeline_helpers.make_bundle(folder, agnostic=False)
  return str(folder)


def _face() -> np.ndarray:
  return skimage_data.astronaut()[40:240, 140:340]  # a 200 px face crop


def _write_folder(folder):
  face = _face()
  Image.fromarray(face).save(folder / "good.jpg", quality=95)
  (folder / "corrupt.jpg").write_bytes(
      (folder / "good.jpg").read_bytes()[:300])
  (folder / "text.png").write_text("not an image at all\n")
  Image.fromarray(face[:1, :1]).save(folder / "tiny.png")
  grey16 = (face.mean(-1) * 257).astype(np.uint16)
  Image.fromarray(grey16).save(folder / "deep16.png")
  assert Image.open(folder / "deep16.png").mode.startswith("I")
  Image.fromarray(np.dstack([face, np.full(face.shape[:2], 200, np.uint8)]),
                  "RGBA").save(folder / "alpha.png")
  Image.fromarray(face.mean(-1).astype(np.uint8), "L").save(
      folder / "grey.png")


def test_folder_of_good_and_bad_inputs(tiny, tmp_path, capsys):
  inputs = tmp_path / "in"
  inputs.mkdir()
  _write_folder(inputs)
  out = tmp_path / "out"
  status = reconstruct.main([str(inputs), "--out", str(out), "--weights",
                             tiny, "--aligned", "--save-intermediates",
                             "--batch-size", "1",
                             "--min-mask", "0"])
  err = capsys.readouterr().err
  assert status == 1
  for bad, why in (("corrupt.jpg", "cannot decode"),
                   ("text.png", "not an image"), ("tiny.png", "too small")):
    assert f"{inputs / bad}: " in err and why in err, (bad, err)
  written = sorted(os.listdir(out))
  for name in ("good.jpg", "deep16.png", "alpha.png", "grey.png"):
    assert name in written, written
    with Image.open(out / name) as im:
      assert im.size == (200, 200)  # the input's size
    notice = reconstruct.read_notice(str(out / name))
    assert notice and "not the person's real face" in notice
  sheets = [n for n in written if n.endswith("_sheet.png")]
  assert len(sheets) == 4
  for name in sheets:
    assert "synthetic" in reconstruct.read_notice(str(out / name)).lower()
  assert "4 written" in err and "3 failed" in err
  assert "photos/s" in err and "ETA" in err


def test_user_mask_limits_the_change_to_the_mask(tiny, tmp_path):
  face = _face()
  Image.fromarray(face).save(tmp_path / "face.png")
  mask = np.zeros(face.shape[:2], np.uint8)
  mask[110:170, 50:150] = 255
  Image.fromarray(mask).save(tmp_path / "map.png")
  out = tmp_path / "out"
  status = reconstruct.main([str(tmp_path / "face.png"), "--out", str(out),
                             "--weights", tiny, "--aligned", "--mask",
                             str(tmp_path / "map.png"), "--gender", "male"])
  assert status == 0
  result = np.asarray(Image.open(out / "face.png"))
  changed = np.any(result != face, axis=-1)
  assert changed[110:170, 50:150].mean() > 0.5
  assert not changed[:95].any() and not changed[:, :35].any()


def test_missing_inputs_and_companions_are_named(tiny, tmp_path, capsys):
  Image.fromarray(_face()).save(tmp_path / "a.png")
  Image.fromarray(_face()).save(tmp_path / "b.png")
  status = reconstruct.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                             str(tmp_path / "nothing*.png"), "--out",
                             str(tmp_path / "out"), "--weights", tiny,
                             "--aligned", "--landmarks", str(tmp_path)])
  err = capsys.readouterr().err
  assert status == 1
  assert "nothing*.png: no such file" in err
  assert "a.png: no file a.*" in err and "b.png: no file b.*" in err


def test_landmarks_file_aligns_and_guides(tiny, tmp_path):
  photo = skimage_data.astronaut()
  Image.fromarray(photo).save(tmp_path / "astro.png")
  # 98 points: a plausible face shape around the astronaut's face.
  from jaxface.data.teachers import sparse  # pylint: disable=import-outside-toplevel
  mean = sparse.MEAN_SHAPE  # unit square layout
  points = mean * 110 + np.array([170.0, 70.0])
  np.savetxt(tmp_path / "astro.txt", points)
  status = reconstruct.main([str(tmp_path / "astro.png"), "--out",
                             str(tmp_path / "out"), "--weights", tiny,
                             "--landmarks", str(tmp_path / "astro.txt"),
                             "--min-mask", "0"])
  assert status == 0
  result = np.asarray(Image.open(tmp_path / "out" / "astro.png"))
  assert result.shape == photo.shape
  changed = np.any(result != photo, axis=-1)
  assert changed[300:].sum() == 0  # far from the face: untouched


def test_detected_faces_in_a_photo(tiny, tmp_path, capsys):
  pytest.importorskip("ai_edge_litert")
  if faces.find_detector_source() is None:
    pytest.skip(f"no face detector installed: {faces.INSTALL_HINT}")
  Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astro.jpg")
  blank = tmp_path / "blank.png"
  Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(blank)
  status = reconstruct.main([str(tmp_path / "astro.jpg"), str(blank),
                             "--out", str(tmp_path / "out"), "--weights",
                             tiny, "--min-mask", "0"])
  err = capsys.readouterr().err
  assert status == 1 and f"{blank}: no face found" in err
  with Image.open(tmp_path / "out" / "astro.jpg") as im:
    assert im.size == (512, 512)
  assert "synthetic" in reconstruct.read_notice(
      str(tmp_path / "out" / "astro.jpg")).lower()


def test_faces_without_enough_mask_stay_bit_identical(tiny, tmp_path, capsys):
  face = _face()
  Image.fromarray(face).save(tmp_path / "face.png")
  status = reconstruct.main([str(tmp_path / "face.png"), "--out",
                             str(tmp_path / "out"), "--weights", tiny,
                             "--aligned", "--min-mask", "1.01",
                             "--sheet", str(tmp_path / "sheet.png")])
  assert status == 0
  assert np.array_equal(np.asarray(Image.open(tmp_path / "out" /
                                              "face.png")), face)
  assert "1 without a face mask left as they were" in capsys.readouterr().err
  with Image.open(tmp_path / "sheet.png") as sheet:
    assert sheet.size[1] >= 256


def test_clashing_output_names_and_01_masks(tiny, tmp_path):
  face = _face()
  Image.fromarray(face).save(tmp_path / "x.png")
  Image.fromarray(face).save(tmp_path / "x.bmp")
  items, errors = reconstruct.expand_inputs([str(tmp_path / "x.png"),
                                             str(tmp_path / "x.bmp")])
  assert not errors
  assert len({target for _, _, target in items}) == 2
  mask = np.zeros(face.shape[:2], np.uint8)
  mask[100:150, 60:140] = 1  # a 0/1 map counts too
  Image.fromarray(mask).save(tmp_path / "m.png")
  assert reconstruct.read_mask(str(tmp_path / "m.png"),
                               face.shape[:2]).sum() == 50 * 80


def test_outputs_keep_the_photo_colour_profile(tiny, tmp_path):
  cms = pytest.importorskip("PIL.ImageCms")
  icc = cms.ImageCmsProfile(cms.createProfile("LAB")).tobytes()
  face = Image.fromarray(_face())
  face.save(tmp_path / "a.jpg", quality=95, icc_profile=icc)
  face.save(tmp_path / "b.png", icc_profile=icc)
  face.save(tmp_path / "plain.png")
  out = tmp_path / "out"
  status = reconstruct.main([str(tmp_path / n) for n in
                             ("a.jpg", "b.png", "plain.png")] +
                            ["--out", str(out), "--weights", tiny,
                             "--aligned", "--min-mask", "0"])
  assert status == 0
  for name in ("a.jpg", "b.png"):
    with Image.open(out / name) as im:
      assert im.info.get("icc_profile") == icc, name
  with Image.open(out / "plain.png") as im:
    assert "icc_profile" not in im.info
