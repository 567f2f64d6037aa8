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
  # A new file sorts first: every index range now names other files.
  (src / "000a.png").write_bytes((src / "000.png").read_bytes())
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
