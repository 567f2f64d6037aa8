"""Tests of the sources (folder, CelebA, FFHQ, ...), decoding, specs, splits."""

import contextlib
import csv
import hashlib
import io
import itertools
import os
import pickle
import shutil
import signal

import grain
import ml_collections
import numpy as np
from PIL import Image
import pytest

from jaxface.data import decode
from jaxface.data import masked_faces
from jaxface.data import pipeline
from jaxface.data import procedural
from jaxface.data import schema
from jaxface.data import sources
from jaxface.data import wflw

_FACES = procedural.ProceduralFaces(size=64, num_records=64, seed=5)


def _save(path, image, fmt=None, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, format=fmt, **kw)


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def _lm_header(n, style="xy"):
  if style == "xy":
    return [f"x{k}" for k in range(n)] + [f"y{k}" for k in range(n)]
  return [c for k in range(n) for c in (f"lm{k}_x", f"lm{k}_y")]


def _lm_cells(points, style="xy"):
  points = np.asarray(points)
  if style == "xy":
    return [f"{v:.3f}" for v in points[:, 0]] + [
        f"{v:.3f}" for v in points[:, 1]]
  return [f"{v:.3f}" for v in points.reshape(-1)]


def _make_tree(root):
  """A nested folder of face images with a labels.csv.

  Returns {relative path: face index}; faces with an even index are
  labelled (gender words, 98 landmarks) except `top.JPG`, which has no row.
  The CSV also lists a file that does not exist.
  """
  layout = {}
  for k in range(12):
    rel = (f"a/face{k:02d}.jpg" if k < 6 else f"b/c/face{k:02d}.png")
    layout[rel] = k
  layout["top.JPG"] = 12
  for rel, k in layout.items():
    fmt = "PNG" if rel.endswith(".png") else "JPEG"
    _save(os.path.join(root, rel), _FACES[k][schema.IMAGE], fmt)
  rows = []
  for rel, k in layout.items():
    if rel == "top.JPG":
      continue
    record = _FACES[k]
    word = "female" if record[schema.GENDER] == 0 else "male"
    name = rel if k % 3 else os.path.basename(rel)  # both ways of naming
    rows.append([name, word, 30] + _lm_cells(record[schema.LANDMARKS]))
  rows.append(["ghost.jpg", "male", 40] + [""] * 196)
  _write_csv(os.path.join(root, "labels.csv"),
             ["file", "Gender", "age"] + _lm_header(98), rows)
  return layout


def test_image_folder_lists_labels_and_splits(tmp_path, caplog):
  layout = _make_tree(tmp_path)
  (tmp_path / "notes.txt").write_text("not an image")
  src = sources.ImageFolder(tmp_path, split="all")
  assert "ghost.jpg" in caplog.text
  assert sorted(src.keys) == sorted(layout)
  assert len(src) == 13
  by_key = {src[i][sources.KEY]: src[i] for i in range(len(src))}
  for rel, k in layout.items():
    record = by_key[rel]
    assert record[schema.IMAGE].shape == (64, 64, 3)
    assert record[schema.IMAGE].dtype == np.uint8
    assert record[schema.LANDMARKS].shape == (98, 2)
    assert record[schema.LANDMARKS].dtype == np.float32
    assert record[sources.LANDMARKS_APPROX].shape == (98,)
    assert record[schema.GENDER].dtype == np.int32
    if rel == "top.JPG":
      assert record[schema.GENDER] == -1
      assert np.all(np.isnan(record[schema.LANDMARKS]))
      assert np.all(record[sources.LANDMARKS_APPROX])
    else:
      assert record[schema.GENDER] == _FACES[k][schema.GENDER]
      np.testing.assert_allclose(record[schema.LANDMARKS],
                                 _FACES[k][schema.LANDMARKS], atol=1e-3)
      assert not np.any(record[sources.LANDMARKS_APPROX])
    if rel.endswith(".png"):
      np.testing.assert_array_equal(record[schema.IMAGE],
                                    _FACES[k][schema.IMAGE])
  assert src[-1][sources.KEY] == src[len(src) - 1][sources.KEY]
  with pytest.raises(IndexError):
    src[len(src)]
  # The three splits partition the folder.
  parts = [sources.ImageFolder(tmp_path, split=s).keys
           for s in sources.SPLITS]
  assert sum(len(p) for p in parts) == 13
  assert set().union(*parts) == set(layout)
  uneven = [sources.ImageFolder(tmp_path, split=s,
                                splits=(0.5, 0.25, 0.25)).keys
            for s in sources.SPLITS]
  assert sum(len(p) for p in uneven) == 13


def test_splits_are_stable_when_files_are_added(tmp_path):
  layout = _make_tree(tmp_path)
  before = {s: set(sources.ImageFolder(tmp_path, split=s).keys)
            for s in sources.SPLITS}
  for k in range(13, 40):
    _save(str(tmp_path / "new" / f"n{k}.png"), _FACES[k][schema.IMAGE])
  after = {s: set(sources.ImageFolder(tmp_path, split=s).keys)
           for s in sources.SPLITS}
  for s in sources.SPLITS:
    assert before[s] <= after[s]
  assert sum(len(v) for v in after.values()) == len(layout) + 27
  # The seed reshuffles.
  other = {s: set(sources.ImageFolder(tmp_path, split=s, seed=7).keys)
           for s in sources.SPLITS}
  assert other != after


def test_gender_filter(tmp_path):
  layout = _make_tree(tmp_path)
  female = sources.ImageFolder(tmp_path, split="all", gender="female")
  male = sources.ImageFolder(tmp_path, split="all", gender="male")
  labelled = [k for rel, k in layout.items() if rel != "top.JPG"]
  assert len(female) + len(male) == len(labelled)
  assert len(female) == sum(1 for k in labelled if k % 2 == 0)
  assert all(female[i][schema.GENDER] == schema.FEMALE
             for i in range(len(female)))
  assert all(male[i][schema.GENDER] == schema.MALE for i in range(len(male)))
  assert "top.JPG" not in female.keys + male.keys
  np.testing.assert_array_equal(female.genders, 0)
  # No gender labels at all: asking for one gender is an error that says
  # what to do.
  with pytest.raises(ValueError, match="ImageFolder.*gender.*prepare"):
    sources.ImageFolder(tmp_path, labels=False, gender="male")
  with pytest.raises(ValueError, match="gender"):
    sources.ImageFolder(tmp_path, gender="other")


def test_labels_path_numeric_gender_and_68_points(tmp_path):
  images = tmp_path / "images"
  for k in range(4):
    _save(str(images / f"{k}.png"), _FACES[k][schema.IMAGE])
  points = {k: wflw.to_68(_FACES[k][schema.LANDMARKS]) for k in range(4)}
  rows = [[f"{k}.png", str(k % 2)] + _lm_cells(points[k], "lm")
          for k in range(3)]
  rows.append(["3.png", ""] + [""] * 136)
  labels = tmp_path / "elsewhere.csv"
  _write_csv(labels, ["FILE", "gender"] + _lm_header(68, "lm"), rows)
  raw = sources.ImageFolder(images, labels=labels, split="all")
  records = {raw[i][sources.KEY]: raw[i] for i in range(len(raw))}
  assert records["1.png"][schema.GENDER] == schema.MALE
  assert records["0.png"][schema.GENDER] == schema.FEMALE
  assert records["3.png"][schema.GENDER] == -1
  np.testing.assert_allclose(records["2.png"][sources.LANDMARKS_RAW],
                             points[2], atol=1e-3)
  assert np.all(np.isnan(records["2.png"][schema.LANDMARKS]))
  assert np.all(np.isnan(records["3.png"][sources.LANDMARKS_RAW]))

  calls = []

  def converter(pts):
    calls.append(pts.shape)
    lm = np.zeros((98, 2), np.float32)
    lm[wflw.TO_68_INDICES] = pts
    approx = np.ones(98, bool)
    approx[wflw.TO_68_INDICES] = False
    return lm, approx

  converted = sources.ImageFolder(images, labels=labels, split="all",
                                  landmark_converter=converter)
  record = converted[converted.keys.index("2.png")]
  np.testing.assert_allclose(record[schema.LANDMARKS][wflw.TO_68_INDICES],
                             points[2], atol=1e-3)
  assert record[sources.LANDMARKS_APPROX].sum() == 98 - 68
  assert sources.LANDMARKS_RAW not in record
  unknown = converted[converted.keys.index("3.png")]
  assert np.all(unknown[sources.LANDMARKS_APPROX])
  assert calls == [(68, 2)]
  # The teachers' conversion: the 68 points are copied, the rest filled in.
  record = sources.ImageFolder(
      images, labels=labels, split="all",
      landmark_converter=sources.SparseConverter())[2]
  assert record[sources.KEY] == "2.png"
  np.testing.assert_allclose(record[schema.LANDMARKS][wflw.TO_68_INDICES],
                             points[2], atol=1e-3)
  assert np.all(np.isfinite(record[schema.LANDMARKS]))
  assert not np.any(record[sources.LANDMARKS_APPROX][wflw.TO_68_INDICES])
  assert np.all(np.delete(record[sources.LANDMARKS_APPROX],
                          wflw.TO_68_INDICES))
  # A bad gender cell names the row.
  _write_csv(labels, ["file", "gender"], [["0.png", "yes"]])
  with pytest.raises(ValueError, match="elsewhere.csv:2"):
    sources.ImageFolder(images, labels=labels)


def _corrupt_tree(root):
  for k in range(4):
    _save(os.path.join(root, f"ok{k}.jpg"), _FACES[k][schema.IMAGE], "JPEG")
  data = io.BytesIO()
  Image.fromarray(_FACES[4][schema.IMAGE]).save(data, format="JPEG")
  with open(os.path.join(root, "truncated.jpg"), "wb") as f:
    f.write(data.getvalue()[:len(data.getvalue()) // 2])
  with open(os.path.join(root, "noise.jpg"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(3000))


def test_corrupt_files_are_skipped_with_one_warning(tmp_path, caplog):
  _corrupt_tree(tmp_path)
  src = sources.ImageFolder(tmp_path, split="all")
  assert len(src) == 6
  bad = {"noise.jpg", "truncated.jpg"}
  for i, key in enumerate(src.keys):
    record = src[i]
    assert (record is None) == (key in bad)
  for name in bad:
    assert name in caplog.text
  caplog.clear()
  for i in range(len(src)):
    src[i]
  assert "noise.jpg" not in caplog.text  # warned once per file
  # grain drops the Nones.
  ds = grain.MapDataset.source(src).filter(lambda r: r is not None)
  keys = [r[sources.KEY] for r in ds.to_iter_dataset()]
  assert sorted(keys) == [f"ok{k}.jpg" for k in range(4)]
  ds = grain.MapDataset.source(src).map(lambda r: r[schema.IMAGE].mean())
  assert len(list(ds.to_iter_dataset())) == 4
  with pytest.raises(decode.CorruptImageError, match="noise.jpg"):
    decode.read_image(tmp_path / "noise.jpg")


def test_decode_exif_orientation_and_draft(tmp_path):
  image = np.zeros((40, 60, 3), np.uint8)
  image[:10, :20] = 255  # a white block at the top left
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", exif=exif, quality=95)
  decoded = decode.decode_image(buf.getvalue(), "rotated.jpg")
  assert decoded.shape == (60, 40, 3)
  assert decoded[:20, -10:].mean() > 200  # now at the top right
  # Draft: 1/4 scale, landmarks follow.
  face = procedural.ProceduralFaces(size=256, num_records=1, seed=2)[0]
  _save(str(tmp_path / "big.jpg"), face[schema.IMAGE], "JPEG", quality=95)
  _write_csv(tmp_path / "labels.csv", ["file"] + _lm_header(98),
             [["big.jpg"] + _lm_cells(face[schema.LANDMARKS])])
  full = sources.ImageFolder(tmp_path, split="all")[0]
  small = sources.ImageFolder(tmp_path, split="all", draft_size=64)[0]
  assert full[schema.IMAGE].shape == (256, 256, 3)
  assert small[schema.IMAGE].shape == (64, 64, 3)
  np.testing.assert_allclose(
      small[schema.LANDMARKS],
      wflw.resize_landmarks(face[schema.LANDMARKS], 0.25), atol=1e-3)
  image, scale = decode.decode_image_scaled(
      (tmp_path / "big.jpg").read_bytes(), draft_size=100)
  assert image.shape == (128, 128, 3) and scale == 0.5
  # PNG ignores the hint; grey and RGBA come out RGB.
  buf = io.BytesIO()
  Image.fromarray(face[schema.IMAGE]).convert("LA").save(buf, format="PNG")
  grey, scale = decode.decode_image_scaled(buf.getvalue(), draft_size=64)
  assert grey.shape == (256, 256, 3) and scale == 1.0
  with pytest.raises(decode.CorruptImageError, match="empty"):
    decode.decode_image(b"", "empty")


def test_pickle_and_grain_workers_view(tmp_path):
  _make_tree(tmp_path)
  src = sources.ImageFolder(tmp_path, split="all", gender="male")
  copy = pickle.loads(pickle.dumps(src))
  assert copy.keys == src.keys
  np.testing.assert_array_equal(copy[1][schema.IMAGE], src[1][schema.IMAGE])


# ---------------------------------------------------------------------------
# Folder safety: symlinks, loops, special files, copies, big files.


@contextlib.contextmanager
def _deadline(seconds):
  """Fails the test where the body would hang CI."""
  if not hasattr(signal, "SIGALRM"):
    pytest.skip("needs SIGALRM")

  def expire(signum, frame):
    del signum, frame
    # pytest.fail, not TimeoutError: an OSError that code under test
    # could catch and turn into something else.
    pytest.fail(f"still running after {seconds} s: hangs")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _needs(name):
  if not hasattr(os, name):
    pytest.skip(f"needs os.{name}")


def _photos(root, rels):
  for k, rel in enumerate(rels):
    fmt = "PNG" if rel.endswith(".png") else "JPEG"
    _save(str(root / rel), _FACES[k][schema.IMAGE], fmt)


def _split_keys(root, **kw):
  return {s: sources.ImageFolder(root, split=s, **kw).keys
          for s in sources.SPLITS}


def test_symlink_loop_lists_each_photo_once_in_one_split(tmp_path, caplog):
  _needs("symlink")
  real = sorted(["a/f0.jpg", "a/f1.png", "a/d/f2.jpg", "b/c/f3.png",
                 "b/f4.jpg", "top5.jpg", "top6.png", "z/f7.jpg"])
  _photos(tmp_path, real)
  os.symlink("..", tmp_path / "a" / "loop")  # back to the root
  # More names of listed things: listed once, under the name without a
  # symlink (even where a symlink's sorts first), else the first in order.
  os.symlink(os.path.join("..", "a", "f0.jpg"), tmp_path / "b" / "alias.jpg")
  os.symlink(os.path.join("a", "f0.jpg"), tmp_path / "0_alias.jpg")
  os.symlink("b", tmp_path / "0_link")
  os.symlink("b", tmp_path / "y_link")
  os.link(tmp_path / "a" / "f1.png", tmp_path / "zz_hard.png")
  assert sources.list_images(tmp_path) == real
  assert sources.ImageFolder(tmp_path, split="all").keys == real
  parts = _split_keys(tmp_path)
  assert sorted(k for p in parts.values() for k in p) == real
  assert "'a/loop'" in caplog.text  # the cut loop is reported


def test_mutual_symlink_loops_terminate(tmp_path, caplog):
  _needs("symlink")
  _photos(tmp_path, ["a/f.jpg", "b/g.png"])
  os.symlink(os.path.join("..", "b"), tmp_path / "a" / "to_b")
  os.symlink(os.path.join("..", "a"), tmp_path / "b" / "to_a")
  os.symlink("..", tmp_path / "a" / "up")
  os.symlink("..", tmp_path / "b" / "up")
  os.symlink(".", tmp_path / "self")
  os.symlink("self_loop", tmp_path / "self_loop")  # a link to itself
  with _deadline(20):
    assert sources.list_images(tmp_path) == ["a/f.jpg", "b/g.png"]
    assert sum(len(p) for p in _split_keys(tmp_path).values()) == 2
  for name in ("a/to_b", "b/to_a", "a/up", "b/up", "self"):
    assert f"{name!r}: leads to the folder" in caplog.text


def test_special_files_named_like_images_are_skipped(tmp_path, caplog):
  _needs("mkfifo")
  _photos(tmp_path, ["ok.jpg", "y.png/inner.jpg"])
  os.mkfifo(tmp_path / "x.jpg")
  os.symlink("missing.jpg", tmp_path / "w.jpg")
  expected = {"x.jpg": "a FIFO", "y.png": "a folder",
              "w.jpg": "a dangling symlink"}
  if os.path.exists("/dev/zero"):
    os.symlink("/dev/zero", tmp_path / "z.jpg")
    expected["z.jpg"] = "a character device"
  os.mkfifo(tmp_path / "pipe.txt")  # not named like an image: ignored
  with _deadline(20):
    src = sources.ImageFolder(tmp_path, split="all")
    records = [src[i] for i in range(len(src))]
  assert src.keys == ["ok.jpg", "y.png/inner.jpg"]
  assert all(r is not None for r in records)
  for name, kind in expected.items():
    assert f"skipping {name!r}: {kind}" in caplog.text
  assert "pipe.txt" not in caplog.text


def test_identical_copies_are_one_record(tmp_path, caplog):
  _photos(tmp_path, ["a/face.jpg", "a/other.png"])
  for copy in ("b/copy.jpg", "c/again.jpg"):
    os.makedirs(tmp_path / os.path.dirname(copy), exist_ok=True)
    shutil.copyfile(tmp_path / "a" / "face.jpg", tmp_path / copy)
  # BMPs (uncompressed, 12 KB) of one size that differ only in the middle
  # rows: the same first and last bytes, so only a whole-file hash tells
  # them apart.
  one = _FACES[2][schema.IMAGE].copy()
  two = one.copy()
  two[30:34] = 255 - two[30:34]
  _save(str(tmp_path / "m" / "one.bmp"), one, "BMP")
  _save(str(tmp_path / "m" / "two.bmp"), two, "BMP")
  os.makedirs(tmp_path / "n")
  shutil.copyfile(tmp_path / "m" / "one.bmp", tmp_path / "n" / "one.bmp")
  _write_csv(tmp_path / "labels.csv", ["file", "gender"],
             [["a/face.jpg", "female"], ["b/copy.jpg", "male"]])
  kept = ["a/face.jpg", "a/other.png", "m/one.bmp", "m/two.bmp"]
  assert sources.list_images(tmp_path) == kept
  assert len(sources.list_images(tmp_path, unique_content=False)) == 7
  src = sources.ImageFolder(tmp_path, split="all")
  assert src.keys == kept
  records = {src[i][sources.KEY]: src[i] for i in range(len(src))}
  assert records["a/face.jpg"][schema.GENDER] == schema.FEMALE
  assert not np.array_equal(records["m/one.bmp"][schema.IMAGE],
                            records["m/two.bmp"][schema.IMAGE])
  # Every photo in exactly one split, decided on its kept name.
  parts = _split_keys(tmp_path)
  assert sorted(k for p in parts.values() for k in p) == kept
  for s, keys in parts.items():
    assert all(sources.hash_split(k, sources.DEFAULT_SPLITS) == s
               for k in keys)
  assert "left out 3 file(s) as byte-identical copies" in caplog.text
  assert "'b/copy.jpg' (the same as 'a/face.jpg', which is listed)" in (
      caplog.text)
  assert "a copy of a file listed under another name" in caplog.text


def test_read_image_refuses_files_over_max_bytes(tmp_path, caplog,
                                                 monkeypatch):
  _photos(tmp_path, ["face.jpg"])
  path = tmp_path / "face.jpg"
  size = path.stat().st_size
  image, _ = decode.read_image(path, max_bytes=size)
  assert image.shape == (64, 64, 3)
  with pytest.raises(decode.CorruptImageError,
                     match=rf"face\.jpg: larger than the limit of {size - 1} "):
    decode.read_image(path, max_bytes=size - 1)
  assert decode.MAX_IMAGE_BYTES >= 16 << 20  # far above any photo
  # The default bound holds for sources: the record is skipped, warned.
  monkeypatch.setattr(decode, "MAX_IMAGE_BYTES", size - 1)
  src = sources.ImageFolder(tmp_path, split="all")
  assert src[0] is None
  assert f"face.jpg: larger than the limit of {size - 1}" in caplog.text


def test_read_image_refuses_a_fifo_quickly(tmp_path, caplog):
  _needs("mkfifo")
  os.mkfifo(tmp_path / "x.jpg")
  with _deadline(10):
    with pytest.raises(decode.CorruptImageError,
                       match=r"x\.jpg: a FIFO, not a regular file"):
      decode.read_image(tmp_path / "x.jpg")
  if os.path.exists("/dev/zero"):
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    with pytest.raises(decode.CorruptImageError,
                       match=r"zero\.jpg: a character device"):
      decode.read_image(tmp_path / "zero.jpg", max_bytes=1 << 16)
  # A FIFO that replaced a listed file: that record is skipped.
  folder = tmp_path / "faces"
  _photos(folder, ["a.jpg", "b.jpg"])
  src = sources.ImageFolder(folder, split="all")
  os.unlink(folder / "a.jpg")
  os.mkfifo(folder / "a.jpg")
  with _deadline(10):
    records = [src[i] for i in range(len(src))]
  assert records[0] is None and records[1] is not None
  assert "a.jpg: a FIFO, not a regular file" in caplog.text


# ---------------------------------------------------------------------------
# CelebA in its own formats.

_CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs "
    "Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair "
    "Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
    "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings "
    "Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def _make_celeba(root, count=9):
  """A small CelebA copy; image k is male when k is odd, partition k % 3."""
  os.makedirs(root / "img_align_celeba")
  rng = np.random.default_rng(0)
  names = [f"{k + 1:06d}.jpg" for k in range(count)]
  points = {}
  for k, name in enumerate(names):
    image = rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)
    _save(str(root / "img_align_celeba" / name), image, "JPEG")
    points[name] = np.array([[69, 109], [106, 113], [77, 142], [73, 152],
                             [108, 154]], np.float32) + k
  attr = [f"{count}", " ".join(_CELEBA_ATTRS) + " "]
  male = _CELEBA_ATTRS.index("Male")
  for k, name in enumerate(names):
    values = ["-1"] * 40
    values[male] = "1" if k % 2 else "-1"
    attr.append(name + "".join(f" {v:>2}" for v in values))
  (root / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
  lms = [f"{count}", "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
         "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"]
  for name in names:
    cells = " ".join(f"{int(v):>4}" for v in points[name].reshape(-1))
    lms.append(f"{name:<10}{cells}")
  (root / "list_landmarks_align_celeba.txt").write_text("\n".join(lms) + "\n")
  (root / "list_eval_partition.txt").write_text(
      "".join(f"{name} {k % 3}\n" for k, name in enumerate(names)))
  return names, points


def test_celeba(tmp_path):
  names, points = _make_celeba(tmp_path)
  train = sources.CelebA(tmp_path, split="train")
  val = sources.CelebA(tmp_path, split="val")
  test = sources.CelebA(tmp_path, split="test")
  assert train.keys == names[0::3]
  assert val.keys == names[1::3]
  assert test.keys == names[2::3]
  record = val[0]  # 000002.jpg
  assert record[sources.KEY] == "000002.jpg"
  assert record[schema.IMAGE].shape == (218, 178, 3)
  assert record[schema.GENDER] == schema.MALE
  np.testing.assert_array_equal(record[sources.LANDMARKS_RAW],
                                points["000002.jpg"])
  assert np.all(record[sources.LANDMARKS_APPROX])
  assert train[0][schema.GENDER] == schema.FEMALE
  male = sources.CelebA(tmp_path, split="all", gender="male")
  assert male.keys == names[1::2]

  def converter(pts):
    lm = np.full((98, 2), 7.0, np.float32)
    lm[wflw.LEFT_PUPIL], lm[wflw.RIGHT_PUPIL] = pts[0], pts[1]
    approx = np.ones(98, bool)
    approx[[wflw.LEFT_PUPIL, wflw.RIGHT_PUPIL]] = False
    return lm, approx

  record = sources.CelebA(tmp_path, split="val",
                          landmark_converter=converter)[0]
  np.testing.assert_array_equal(record[schema.LANDMARKS][96:],
                                points["000002.jpg"][:2])
  assert record[sources.LANDMARKS_APPROX].sum() == 96
  record = sources.CelebA(tmp_path, split="val",
                          landmark_converter=sources.SparseConverter())[0]
  np.testing.assert_allclose(
      record[schema.LANDMARKS][[96, 97, 54, 76, 82]], points["000002.jpg"],
      atol=1e-4)
  assert np.all(np.isfinite(record[schema.LANDMARKS]))
  assert record[sources.LANDMARKS_APPROX].sum() == 95  # nose, mouth exact
  (tmp_path / "list_attr_celeba.txt").unlink()
  with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
    sources.CelebA(tmp_path)


def test_celeba_annotations_in_subfolders(tmp_path):
  _make_celeba(tmp_path, count=3)
  os.makedirs(tmp_path / "Anno")
  os.makedirs(tmp_path / "Eval")
  for name in ("list_attr_celeba.txt", "list_landmarks_align_celeba.txt"):
    os.rename(tmp_path / name, tmp_path / "Anno" / name)
  os.rename(tmp_path / "list_eval_partition.txt",
            tmp_path / "Eval" / "list_eval_partition.txt")
  assert len(sources.CelebA(tmp_path, split="all")) == 3


# ---------------------------------------------------------------------------
# FFHQ.


def _make_ffhq(root, numbers):
  for n in numbers:
    # A pixel from the number: byte-identical files would be one record.
    image = _FACES[0][schema.IMAGE][:16, :16].copy()
    image[0, 0] = (n % 256, n // 256 % 256, n // 65536)
    _save(str(root / "images1024x1024" / f"{n // 1000 * 1000:05d}" /
              f"{n:05d}.png"), image)


def test_ffhq_number_split(tmp_path):
  numbers = [0, 1, 2, 999, 1000, 59999, 60000, 60001, 69999]
  _make_ffhq(tmp_path, numbers)
  train = sources.FFHQ(tmp_path, split="train")
  val = sources.FFHQ(tmp_path, split="val")
  test = sources.FFHQ(tmp_path, split="test")
  assert train.split_rule == "ffhq"
  assert [int(k[-9:-4]) for k in train.keys] == numbers[:6]
  assert [int(k[-9:-4]) for k in val.keys] == numbers[6:]
  assert len(test) == 0
  assert train.keys[0] == "00000/00000.png"
  record = val[0]
  assert record[schema.GENDER] == -1
  assert record[schema.IMAGE].shape == (16, 16, 3)
  with pytest.raises(ValueError, match="FFHQ.*no gender labels.*prepare"):
    sources.FFHQ(tmp_path, gender="female")
  # Splits given: the hash split, with a test split.
  parts = [sources.FFHQ(tmp_path, split=s, splits=(0.4, 0.3, 0.3))
           for s in sources.SPLITS]
  assert all(p.split_rule == "hash" for p in parts)
  assert sum(len(p) for p in parts) == len(numbers)


def test_ffhq_small_copy_uses_hash_split(tmp_path):
  _make_ffhq(tmp_path, range(40))
  parts = [sources.FFHQ(tmp_path / "images1024x1024", split=s)
           for s in sources.SPLITS]
  assert parts[0].split_rule == "hash"
  assert sum(len(p) for p in parts) == 40
  assert len(parts[0]) > len(parts[1])


# ---------------------------------------------------------------------------
# Specs.


def test_open_source_specs(tmp_path):
  _make_tree(tmp_path)
  labels = tmp_path / "labels.csv"
  os.rename(labels, tmp_path / "other.csv")
  src = sources.open_source(f"folder:{tmp_path},labels={tmp_path}/other.csv",
                            split="all", gender="female")
  assert isinstance(src, sources.ImageFolder) and len(src) > 0
  src = sources.open_source(f"folder:{tmp_path},splits=0.5/0.5/0,seed=3",
                            split="test")
  assert len(src) == 0
  proc = sources.open_source("procedural:size=64,num_records=40",
                             split="val")
  assert len(proc) == 2  # 5 % of 40
  record = proc[0]
  assert record[schema.IMAGE].shape == (64, 64, 3)
  assert record[sources.KEY].startswith("procedural/")
  assert not np.any(record[sources.LANDMARKS_APPROX])
  # The pipeline's image size is a hint only drawn sources take.
  assert sources.open_source("procedural", size_hint=96)[0][
      schema.IMAGE].shape == (96, 96, 3)
  assert sources.open_source("procedural:size=64", size_hint=96)[0][
      schema.IMAGE].shape == (64, 64, 3)
  assert len(sources.open_source("procedural:num_records=3", split="val")) == 0
  with pytest.raises(ValueError, match="folder, celeba, ffhq, prepared"):
    sources.open_source(f"tfrecord:{tmp_path}")
  with pytest.raises(ValueError, match="unknown option 'color'"):
    sources.open_source(f"folder:{tmp_path},color=1")
  with pytest.raises(ValueError, match="needs a path"):
    sources.open_source("celeba:")
  with pytest.raises(FileNotFoundError):
    sources.open_source(f"folder:{tmp_path}/absent")


# ---------------------------------------------------------------------------
# Splits, through the pipelines' one path from a config to a source.


def _prepared(root):
  faces = procedural.ProceduralFaces(size=64, num_records=12, seed=2)

  def split(indices):
    for k in indices:
      yield {"image": faces[k][schema.IMAGE],
             "landmarks": faces[k][schema.LANDMARKS],
             "landmarks_approx": np.zeros(98, bool),
             "gender": int(faces[k][schema.GENDER]), "key": f"f{k:02d}.png",
             "landmark_teacher": "procedural"}

  masked_faces.write_dataset(
      root, {"train": split(range(8)), "val": split(range(8, 10)),
             "test": split(range(10, 12))}, description="", metadata={})
  return f"prepared:{root}"


def _spec_of_kind(kind, root):
  if kind == "folder":
    _make_tree(root)
    return f"folder:{root},splits=0.5/0.25/0.25"
  if kind == "ffhq":
    _make_ffhq(root, list(range(0, 70000, 2500)))
    return f"ffhq:{root}"
  if kind == "celeba":
    _make_celeba(root, count=12)
    return f"celeba:{root}"
  if kind == "prepared":
    return _prepared(root)
  return "procedural:num_records=200"


def _identities(spec, split):
  """(key, image digest) of every record of a split, opened as the training
  and evaluation pipelines open it."""
  data = ml_collections.ConfigDict(dict(source=spec, gender="all",
                                        image_size=64))
  source = pipeline.open_split(data, split)
  keys, images = set(), set()
  for i in range(len(source)):
    record = source[i]
    keys.add(record[sources.KEY])
    images.add(hashlib.sha1(record[schema.IMAGE].tobytes()).hexdigest())
  return keys, images, len(source)


def _overlaps(spec):
  ids = {s: _identities(spec, s) for s in sources.SPLITS}
  out = []
  for a, b in itertools.combinations(sources.SPLITS, 2):
    if ids[a][0] & ids[b][0]:
      out.append(f"{a}/{b} share keys")
    # Files in these trees may repeat pixels; drawn faces must not.
    if spec.startswith("procedural") and ids[a][1] & ids[b][1]:
      out.append(f"{a}/{b} share faces")
  return out, {s: ids[s][2] for s in sources.SPLITS}


@pytest.mark.parametrize("kind", sources.KINDS)
def test_train_val_test_are_disjoint_for_every_kind(tmp_path, kind):
  overlaps, sizes = _overlaps(_spec_of_kind(kind, tmp_path))
  assert not overlaps, (overlaps, sizes)
  assert sizes["train"] > 0 and sizes["val"] > 0, sizes


def test_the_split_test_catches_a_shared_seed_stream(monkeypatch):
  # The bug this guards against: test drawn from the validation stream.
  offsets = dict(sources.Procedural.SEED_OFFSETS)
  offsets[sources.TEST] = offsets[sources.VAL]
  monkeypatch.setattr(sources.Procedural, "SEED_OFFSETS", offsets)
  overlaps, _ = _overlaps("procedural:num_records=200")
  assert "val/test share faces" in overlaps


# ---------------------------------------------------------------------------
# Real data.


def test_utkface_folder(shared_data):
  root = shared_data / "utkface"
  # 9,780 files, of which 105 are byte-identical copies of others under
  # other names (14 labelled with the other gender): each photo is one
  # record, labelled by the row of its kept name.
  src = sources.ImageFolder(root, split="all")
  assert len(src) == 9675
  assert len(sources.list_images(root, unique_content=False)) == 9780
  genders = src.genders
  assert np.sum(genders >= 0) == 9673
  assert np.sum(genders == schema.MALE) == 4336
  assert np.sum(genders == schema.FEMALE) == 5337
  parts = [len(sources.ImageFolder(root, split=s)) for s in sources.SPLITS]
  assert sum(parts) == 9675 and parts[0] > 8500
  male = sources.ImageFolder(root, split="val", gender="male")
  for i in (0, len(male) // 2, -1):
    record = male[i]
    assert record[schema.IMAGE].shape == (200, 200, 3)
    assert record[schema.GENDER] == schema.MALE
    assert np.all(np.isnan(record[schema.LANDMARKS]))
