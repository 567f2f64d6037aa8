"""The dataset preparation CLI: outputs, bad files, teachers, idempotency."""

import csv
import os
import pathlib

import numpy as np
import pytest

from jaxface.data import masked_faces
from jaxface.data import prepare
from jaxface.data import procedural
from jaxface.data import sources
from jaxface.data import teachers


def make_folder(root: pathlib.Path, n: int = 10, size: int = 96,
                landmarks: bool = True) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  faces = procedural.ProceduralFaces(size=size, num_records=n, seed=7)
  header = ["file", "gender"]
  if landmarks:
    header += [f"{a}{i}" for i in range(98) for a in ("x", "y")]
  with open(root / "labels.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for i in range(n):
      r = faces[i]
      (root / f"{i:03d}.png").write_bytes(
          masked_faces.encode_image(r["image"], "png"))
      row = [f"{i:03d}.png", "male" if r["gender"] else "female"]
      if landmarks:
        row += [f"{v:.4f}" for v in r["landmarks"].reshape(-1)]
      w.writerow(row)
  (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
  return root


def test_prepare_folder_with_annotations(tmp_path, capsys):
  src = make_folder(tmp_path / "faces")
  out = tmp_path / "prepared"
  summary = prepare.prepare(f"folder:{src},splits=0.6/0.2/0.2", str(out),
                            size=64)
  text = capsys.readouterr().out
  assert sum(summary["written"].values()) == 10
  assert summary["skipped_by_reason"] == {"unreadable or corrupt image": 1}
  assert "broken.jpg" in text and "broken.jpg" in (
      out / "skipped.txt").read_text()
  assert not (out / "_work").exists()

  faces = procedural.ProceduralFaces(size=96, num_records=10, seed=7)
  by_key = {}
  for split in summary["written"]:
    ds = sources.Prepared(str(out), split=split)
    for i in range(len(ds)):
      by_key[ds[i]["key"]] = ds[i]
  assert len(by_key) == 10
  r = by_key["003.png"]
  assert r["image"].shape == (64, 64, 3)
  assert r["landmark_teacher"] == "annotation"
  want = (faces[3]["landmarks"] + 0.5) * (64 / 96) - 0.5
  np.testing.assert_allclose(r["landmarks"], want, atol=1e-3)
  assert r["gender"] == faces[3]["gender"]
  # Gender splits for training: the male records of a split.
  split = next(iter(summary["written"]))
  males = sources.Prepared(str(out), split=split, gender="male")
  assert all(males[i]["gender"] == 1 for i in range(len(males)))


def test_prepare_is_idempotent(tmp_path, capsys):
  src = make_folder(tmp_path / "faces", n=6)
  out = tmp_path / "prepared"
  spec = f"folder:{src},splits=1/0/0"
  prepare.prepare(spec, str(out), size=64)
  stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.array_record*")}
  capsys.readouterr()
  prepare.prepare(spec, str(out), size=64)
  assert "already prepared" in capsys.readouterr().out
  assert stamp == {p: p.stat().st_mtime_ns for p in
                   out.rglob("*.array_record*")}


def test_interrupted_run_resumes_from_its_shards(tmp_path, capsys,
                                                 monkeypatch):
  src = make_folder(tmp_path / "faces", n=9)
  out = tmp_path / "prepared"
  spec = f"folder:{src},splits=1/0/0"

  def crash(*args, **kwargs):
    raise KeyboardInterrupt  # the run dies after the shards were written

  with monkeypatch.context() as m:
    m.setattr(masked_faces, "write_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
      prepare.prepare(spec, str(out), size=64, shard_size=4)
  assert len(list((out / "_work").glob("train-*.pkl"))) == 3
  capsys.readouterr()
  summary = prepare.prepare(spec, str(out), size=64, shard_size=4)
  assert "10 already done, 0 to prepare" in capsys.readouterr().out
  assert summary["written"]["train"] == 9


def test_changed_settings_are_refused_while_work_is_pending(tmp_path,
                                                            monkeypatch):
  src = make_folder(tmp_path / "faces", n=4)
  out = tmp_path / "prepared"
  spec = f"folder:{src},splits=1/0/0"
  monkeypatch.setattr(masked_faces, "write_dataset",
                      lambda *a, **k: (_ for _ in ()).throw(RuntimeError()))
  with pytest.raises(RuntimeError):
    prepare.prepare(spec, str(out), size=64)
  with pytest.raises(SystemExit, match="other settings"):
    prepare.prepare(spec, str(out), size=32)


class FakeTeacher:
  """Landmarks from the procedural generator for even files, none for odd."""
  name = "fake-teacher-1"

  def __init__(self):
    self.faces = procedural.ProceduralFaces(size=96, num_records=10, seed=7)

  def __call__(self, image):
    for i in range(10):
      face = self.faces[i]
      if np.array_equal(face["image"], image):
        if i % 2:
          return None
        return teachers.LandmarkResult(face["landmarks"],
                                       np.zeros(98, bool), 0.9)
    raise AssertionError("unexpected image")


def test_landmark_teacher_fills_missing_landmarks(tmp_path, monkeypatch):
  src = make_folder(tmp_path / "faces", landmarks=False)
  monkeypatch.setattr(teachers, "make_landmark_teacher",
                      lambda spec: FakeTeacher())
  out = tmp_path / "prepared"
  summary = prepare.prepare(f"folder:{src},splits=1/0/0", str(out), size=96,
                            landmarks="fake:unused")
  assert summary["written"] == {"train": 5}
  assert summary["landmark_sources"] == {"fake-teacher-1": 5}
  assert summary["skipped_by_reason"]["no face found by the landmark "
                                      "teacher"] == 5
  ds = sources.Prepared(str(out), split="train")
  record = ds[0]
  assert record["landmark_teacher"] == "fake-teacher-1"
  assert np.all(np.isfinite(record["landmarks"]))


def test_without_teacher_faces_without_landmarks_are_skipped(tmp_path):
  src = make_folder(tmp_path / "faces", n=3, landmarks=False)
  summary = prepare.prepare(f"folder:{src},splits=1/0/0",
                            str(tmp_path / "out"), size=64)
  reasons = summary["skipped_by_reason"]
  assert reasons["no landmarks (pass --landmarks=TEACHER)"] == 3
  assert summary["written"] == {}


def test_gender_teacher_labels_unknown_genders(tmp_path, monkeypatch):
  src = make_folder(tmp_path / "faces", n=4)
  rows = list(csv.reader(open(src / "labels.csv")))
  for row in rows[1:]:
    row[1] = ""
  with open(src / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)

  class FakeGender:
    name = "fake-gender"

    def __call__(self, image, landmarks):
      return 0.9 if image.mean() > 128 else 0.1

  monkeypatch.setattr(teachers, "make_gender_teacher",
                      lambda spec: FakeGender())
  summary = prepare.prepare(f"folder:{src},splits=1/0/0",
                            str(tmp_path / "out"), size=64, gender="fake:x")
  assert summary["genders"].get("unknown", 0) == 0
  assert sum(summary["genders"].values()) == 4


def test_procedural_source_and_workers(tmp_path):
  summary = prepare.prepare("procedural:num_records=40,size=64",
                            str(tmp_path / "out"), size=64, workers=2,
                            shard_size=2)
  assert summary["written"] == {"train": 36, "val": 2, "test": 2}
  assert os.path.exists(tmp_path / "out" / "skipped.txt")


def test_resume_after_the_folder_changed_redoes_moved_shards(tmp_path,
                                                              monkeypatch):
  src = make_folder(tmp_path / "faces", n=8)
  out = tmp_path / "prepared"
  spec = f"folder:{src},splits=1/0/0"
  with monkeypatch.context() as m:
    m.setattr(masked_faces, "write_dataset",
              lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
      prepare.prepare(spec, str(out), size=64, shard_size=4)
  # A new file sorts first: every index range now names other files. (Not
  # a byte-identical copy: the folder would list that once.)
  image = procedural.ProceduralFaces(size=96, num_records=10, seed=7)[0][
      "image"].copy()
  image[0, 0] ^= 1
  (src / "000a.png").write_bytes(masked_faces.encode_image(image, "png"))
  rows = list(csv.reader(open(src / "labels.csv")))
  rows.append(["000a.png"] + rows[1][1:])
  with open(src / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  summary = prepare.prepare(spec, str(out), size=64, shard_size=4)
  assert summary["written"]["train"] == 9
  keys = [sources.Prepared(str(out), split="train")[i]["key"]
          for i in range(9)]
  assert len(set(keys)) == 9


def test_finished_dataset_with_other_settings_is_not_reused(tmp_path):
  src = make_folder(tmp_path / "faces", n=3)
  spec = f"folder:{src},splits=1/0/0"
  prepare.prepare(spec, str(tmp_path / "out"), size=64)
  with pytest.raises(SystemExit, match="other settings"):
    prepare.prepare(spec, str(tmp_path / "out"), size=96)
  summary = prepare.prepare(spec, str(tmp_path / "out"), size=96,
                            overwrite=True)
  assert sources.Prepared(str(tmp_path / "out"), split="train")[0][
      "image"].shape == (96, 96, 3)
  assert summary["written"] == {"train": 3}


# ------------------------------------------------- records that are no face
def read_labels(src: pathlib.Path) -> list[list[str]]:
  with open(src / "labels.csv", newline="") as f:
    return list(csv.reader(f))


def write_labels(src: pathlib.Path, rows: list[list[str]]) -> None:
  with open(src / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)


def add_image(src: pathlib.Path, name: str, image: np.ndarray,
              landmarks: np.ndarray | None, gender: str = "female") -> None:
  """Writes `image` as PNG under `name` and appends its labels row."""
  (src / name).write_bytes(masked_faces.encode_image(image, "png"))
  rows = read_labels(src)
  row = [name, gender]
  if landmarks is not None:
    row += [f"{v:.4f}" for v in np.asarray(landmarks).reshape(-1)]
  else:
    row += [""] * 196
  write_labels(src, rows + [row])


def read_skipped(out: pathlib.Path) -> list[list[str]]:
  lines = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
  return [line.split("\t") for line in lines]


def test_implausible_records_are_rejected_with_their_reason(tmp_path,
                                                            capsys):
  src = make_folder(tmp_path / "faces", n=6)
  faces = procedural.ProceduralFaces(size=96, num_records=10, seed=7)
  rows = read_labels(src)
  by_name = {row[0]: row for row in rows[1:]}
  # Off by a scale factor: far outside the 96-pixel image.
  by_name["001.png"][2:] = [f"{v * 10:.4f}"
                            for v in faces[1]["landmarks"].reshape(-1)]
  # All 98 points at one spot.
  by_name["002.png"][2:] = ["48.0"] * 196
  # NaN.
  by_name["003.png"][2:] = ["nan"] * 196
  write_labels(src, rows)
  # A thumbnail below the minimum size, with plausible landmarks.
  small = faces[4]["image"][::4, ::4]
  add_image(src, "small.png", small, (faces[4]["landmarks"] + 0.5) / 4 - 0.5)
  # A wide photo with the face at its left: fine in the photo, but the
  # centred square crop leaves the face out.
  wide = np.full((96, 400, 3), 128, np.uint8)
  wide[:, :96] = faces[5]["image"]
  add_image(src, "wide.png", wide, faces[5]["landmarks"])

  out = tmp_path / "out"
  summary = prepare.prepare(f"folder:{src},splits=1/0/0", str(out), size=64)
  text = capsys.readouterr().out
  assert summary["written"] == {"train": 3}  # 000, 004, 005
  written = sources.Prepared(str(out), split="train")
  assert sorted(written[i]["key"] for i in range(3)) == [
      "000.png", "004.png", "005.png"]
  skipped = read_skipped(out)
  assert summary["skipped"] == len(skipped) == 6
  reasons = {key: reason for _, key, reason in skipped}
  assert len(reasons) == 6  # each reported once
  assert "far outside the image" in reasons["001.png"]
  assert "too small a face" in reasons["002.png"]
  assert "no landmarks" in reasons["003.png"]
  assert "image too small" in reasons["small.png"]
  assert reasons["wide.png"].startswith("in the 64x64 crop: landmarks far "
                                        "outside")
  assert "unreadable" in reasons["broken.jpg"]
  for name in reasons:
    assert name in text

  # --min_size lets the thumbnail through, and is one of the settings.
  out2 = tmp_path / "out2"
  summary = prepare.prepare(f"folder:{src},splits=1/0/0", str(out2), size=64,
                            min_size=16)
  assert summary["written"] == {"train": 4}
  assert "small.png" not in (out2 / "skipped.txt").read_text()
  params = masked_faces.read_info(out2)["metadata"]["params"]
  assert params["min_size"] == 16


class NaNTeacher:
  """A landmark teacher that 'finds' a face with NaN points."""
  name = "nan-teacher"

  def __call__(self, image):
    return teachers.LandmarkResult(np.full((98, 2), np.nan, np.float32),
                                   np.zeros(98, bool), 0.9)


def test_teacher_landmarks_are_checked_too(tmp_path, monkeypatch):
  src = make_folder(tmp_path / "faces", n=3, landmarks=False)
  monkeypatch.setattr(teachers, "make_landmark_teacher",
                      lambda spec: NaNTeacher())
  summary = prepare.prepare(f"folder:{src},splits=1/0/0",
                            str(tmp_path / "out"), size=64,
                            landmarks="nan:unused")
  assert summary["written"] == {}
  assert summary["skipped_by_reason"][
      "98 landmarks are not finite (NaN or Inf)"] == 3


def test_skipped_names_stay_one_line_each(tmp_path, capsys):
  src = make_folder(tmp_path / "faces", n=3)
  odd = ["bad\tna\nme.jpg", "carriage\rreturn.jpg", "back\\slash.jpg"]
  for k, name in enumerate(odd):  # corrupt, each its own bytes
    (src / name).write_bytes(b"\xff\xd8\xff\xe0garbage" + bytes([k]))
  faces = procedural.ProceduralFaces(size=96, num_records=10, seed=7)
  # A readable photo, named through the labels file, whose landmarks fail.
  add_image(src, "tab\tand\nnewline.png", 255 - faces[1]["image"],
            faces[1]["landmarks"] * 10)
  out = tmp_path / "out"
  summary = prepare.prepare(f"folder:{src},splits=1/0/0", str(out), size=64)
  text = capsys.readouterr().out
  assert summary["written"] == {"train": 3}
  skipped = read_skipped(out)
  assert summary["skipped"] == len(skipped) == 5
  assert all(len(fields) == 3 for fields in skipped)
  escaped = {"bad\\tna\\nme.jpg", "carriage\\rreturn.jpg",
             "back\\\\slash.jpg", "tab\\tand\\nnewline.png", "broken.jpg"}
  assert {key for _, key, _ in skipped} == escaped
  # The summary: each name on the line of its reason, none split.
  assert "\r" not in text and "\t" not in text
  for name in escaped:
    assert name in text
  lines = text.splitlines()
  assert not any(line.startswith(("me.jpg", "return.jpg", "newline.png"))
                 for line in lines)


def test_escaping_of_undecodable_names(tmp_path, capsys):
  # A file name that is no UTF-8 reads as surrogate escapes.
  name = b"caf\xe9\tx.jpg".decode("utf-8", "surrogateescape")
  assert prepare._escape(name) == "caf\\udce9\\tx.jpg"
  assert prepare._escape("café é\\") == "café é\\\\"
  summary = {"written": {}, "genders": {}, "landmark_sources": {},
             "landmark_coverage": 0.0, "skipped": 1}
  prepare._print_summary(str(tmp_path), summary,
                         [("train", name, "bad\nreason")])
  text = capsys.readouterr().out
  assert "1  bad\\nreason: caf\\udce9\\tx.jpg\n" in text


def test_a_file_name_that_is_not_utf8_is_reported_not_fatal(tmp_path):
  src = make_folder(tmp_path / "faces", n=4)
  odd = os.fsdecode(b"caf\xe9\n.png")  # Latin-1 bytes and a newline
  (src / odd).write_bytes((src / "000.png").read_bytes()[:-1] + b"\x00")
  out = tmp_path / "prepared"
  summary = prepare.prepare(f"folder:{src},splits=1/0/0", str(out), size=64)
  assert sum(summary["written"].values()) == 4
  lines = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
  assert len(lines) == 2  # broken.jpg, and the odd name on one line
  assert "train\tcaf\\udce9\\n.png\tno landmarks" in lines[1], lines


# ----------------------------------------------- resume keyed on the inputs
def interrupt_after_first_shard(monkeypatch, spec: str, out: pathlib.Path,
                                **kwargs) -> None:
  """Runs `prepare` until it has saved one shard, then kills it."""
  save = prepare._save_shard
  saved = []

  def save_once_then_die(*args, **kw):
    if saved:
      raise KeyboardInterrupt
    saved.append(args[0])
    save(*args, **kw)

  with monkeypatch.context() as m:
    m.setattr(prepare, "_save_shard", save_once_then_die)
    with pytest.raises(KeyboardInterrupt):
      prepare.prepare(spec, str(out), **kwargs)
  assert len(list((out / "_work").glob("*.pkl"))) == 1


def count_shard_work(monkeypatch) -> list[tuple[str, int]]:
  """(split, shard) of every `_work_shard` run from now on."""
  ran = []
  work = prepare._work_shard

  def counted(job):
    ran.append((job[1], job[2]))
    return work(job)

  monkeypatch.setattr(prepare, "_work_shard", counted)
  return ran


def by_key(out: pathlib.Path) -> dict[str, dict]:
  ds = sources.Prepared(str(out), split="train")
  return {ds[i]["key"]: ds[i] for i in range(len(ds))}


def test_resume_with_unchanged_inputs_reuses_finished_shards(tmp_path,
                                                             monkeypatch,
                                                             capsys):
  src = make_folder(tmp_path / "faces", n=9)
  out = tmp_path / "out"
  spec = f"folder:{src},splits=1/0/0"
  interrupt_after_first_shard(monkeypatch, spec, out, size=64, shard_size=3)
  ran = count_shard_work(monkeypatch)
  capsys.readouterr()
  summary = prepare.prepare(spec, str(out), size=64, shard_size=3)
  assert "3 already done, 7 to prepare" in capsys.readouterr().out
  # 10 records (9 faces and broken.jpg) in shards of 3: shard 0 was done.
  assert sorted(ran) == [("train", 1), ("train", 2), ("train", 3)]
  assert summary["written"] == {"train": 9}


def test_resume_after_labels_were_edited_uses_the_new_labels(tmp_path,
                                                             monkeypatch):
  src = make_folder(tmp_path / "faces", n=9)
  out = tmp_path / "out"
  spec = f"folder:{src},splits=1/0/0"
  interrupt_after_first_shard(monkeypatch, spec, out, size=64, shard_size=3)
  # 001.png is in the finished shard 0: flip its gender.
  rows = read_labels(src)
  row = next(r for r in rows if r[0] == "001.png")
  old = row[1]
  row[1] = "female" if old == "male" else "male"
  write_labels(src, rows)
  ran = count_shard_work(monkeypatch)
  summary = prepare.prepare(spec, str(out), size=64, shard_size=3)
  assert ("train", 0) in ran
  assert summary["written"] == {"train": 9}
  assert by_key(out)["001.png"]["gender"] == (0 if old == "male" else 1)


def test_resume_after_a_photo_was_replaced_uses_the_new_photo(tmp_path,
                                                              monkeypatch):
  src = make_folder(tmp_path / "faces", n=9)
  out = tmp_path / "out"
  spec = f"folder:{src},splits=1/0/0"
  interrupt_after_first_shard(monkeypatch, spec, out, size=64, shard_size=3)
  # Another photo under the same name (and the same labels row).
  (src / "001.png").write_bytes(masked_faces.encode_image(
      np.full((96, 96, 3), 200, np.uint8), "png"))
  ran = count_shard_work(monkeypatch)
  summary = prepare.prepare(spec, str(out), size=64, shard_size=3)
  assert ("train", 0) in ran
  assert summary["written"] == {"train": 9}
  image = by_key(out)["001.png"]["image"].astype(np.float32)
  assert abs(image.mean() - 200) < 2 and image.std() < 2


def test_input_digests_follow_labels_and_content(tmp_path):
  src = make_folder(tmp_path / "faces", n=3)

  def open_folder():
    return sources.ImageFolder(src, split="all")

  before = [open_folder().input_digest(i) for i in range(4)]
  assert len(set(before)) == 4
  assert before == [open_folder().input_digest(i) for i in range(4)]
  rows = read_labels(src)
  rows[2][3] = "1.5"  # one coordinate of 001.png
  write_labels(src, rows)
  after = [open_folder().input_digest(i) for i in range(4)]
  assert [a != b for a, b in zip(before, after)] == [False, True, False,
                                                     False]
  (src / "002.png").write_bytes(masked_faces.encode_image(
      np.zeros((96, 96, 3), np.uint8), "png"))
  again = [open_folder().input_digest(i) for i in range(4)]
  assert [a != b for a, b in zip(after, again)] == [False, False, True,
                                                    False]
  proc = sources.Procedural(num_records=20, size=64)
  assert proc.input_digest(3) == sources.Procedural(
      num_records=20, size=64).input_digest(3)
  assert proc.input_digest(3) != proc.input_digest(4)
  assert proc.input_digest(3) != sources.Procedural(
      num_records=20, size=64, seed=1).input_digest(3)
