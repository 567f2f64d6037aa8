"""The evaluation command and the jaxface landmark teacher on a trained run.

One tiny landmark run (a few steps on procedural faces) serves every test:
`python -m jaxface.evaluate` restores it read-only and reports per gender,
with a baseline; exported to weights, it is the `jaxface:` landmark teacher
of `prepare`.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxface import evaluate
from jaxface.data import teachers
from jaxface.data.teachers import base
from jaxface.train import loop
from jaxface.weights import landmarks as fan_weights

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import landmarks as landmarks_config


def _config():
  c = landmarks_config.get_config("tiny")
  c.model.width = 8
  c.model.stem_width = 8
  c.model.depth = 1
  c.data.image_size = 32
  c.data.source = "procedural:num_records=320"  # 16 val, 16 test
  c.train.update(dict(batch_size=8, num_steps=2, log_every=1, image_every=0,
                      eval_every=0, checkpoint_every=1, max_to_keep=5))
  c.eval.batch_size = 8
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("landmarks_run")
  loop.train_and_evaluate(_config(), str(path))
  return str(path)


def test_evaluates_every_test_example_per_gender(workdir):
  result = evaluate.evaluate(workdir, split="test")
  info, model = result["info"], result["model"]
  assert info["step"] == 2 and info["examples"] == 16
  for group in ("", "_masked", "_visible"):
    for metric in ("nme", "fr", "auc"):
      for gender in ("", "/female", "/male"):
        assert f"{metric}{group}{gender}" in model
  assert model["count"] == 16
  assert model["count/female"] + model["count/male"] == 16
  table = evaluate.format_table(model, "title")
  assert table.splitlines()[1].split() == ["all", "female", "male"]


def test_older_step_and_missing_step(workdir):
  assert evaluate.evaluate(workdir, step=1, split="val")["info"]["step"] == 1
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7"):
    evaluate.evaluate(workdir, step=7)


def test_other_size_keeps_the_network_size(workdir):
  """At 64 px the 32-px network sees resized faces; points come back."""
  result = evaluate.evaluate(workdir, split="test", size=64)
  assert result["info"]["image_size"] == 64
  assert np.isfinite(result["model"]["nme"])


class _Teacher:
  """A stand-in teacher: the true points on odd calls, none on even."""
  name = "stand-in"

  def __init__(self):
    self.calls = 0

  def __call__(self, image):
    self.calls += 1
    if self.calls % 2 == 0:
      return None
    return base.LandmarkResult(np.full((98, 2), 5.0), np.zeros(98, bool))


def test_baseline_scored_on_the_examples_it_processed(workdir, monkeypatch):
  monkeypatch.setattr(teachers, "make_landmark_teacher",
                      lambda spec: _Teacher())
  result = evaluate.evaluate(workdir, split="test", baseline="stand-in:x")
  assert result["info"]["baseline_found"] == 8
  assert result["baseline"]["count"] == 8
  assert result["model_on_baseline_examples"]["count"] == 8


def test_command_prints_tables_and_writes_json(workdir, tmp_path):
  out = tmp_path / "eval.json"
  proc = subprocess.run(
      [sys.executable, "-m", "jaxface.evaluate", f"--workdir={workdir}",
       "--split=val", f"--output={out}"], cwd=REPO, capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "nme_masked" in proc.stdout and "female" in proc.stdout
  assert json.loads(out.read_text())["info"]["split"] == "val"


def test_evaluate_names_a_workdir_without_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    evaluate.evaluate(str(tmp_path))


def test_exported_run_labels_a_photo_as_teacher(workdir, tmp_path):
  """A run exported to .npz is a `jaxface:` teacher at its input size."""
  path = tmp_path / "fan.npz"
  _, size, step = fan_weights.export_run(workdir, str(path), step=1)
  assert (size, step) == (32, 1)
  assert fan_weights.input_size(path) == 32
  teacher = teachers.make_landmark_teacher(f"jaxface:{path}")
  teacher.min_score = 0.0  # an untrained network is not confident
  assert teacher.name == "jaxface-fan.npz" and teacher.size == 32
  image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
  result = teacher(image)
  assert result.landmarks.shape == (98, 2)
  assert np.all(np.isfinite(result.landmarks))
  # The centred 40x40 square of the 60-px-wide photo: x in [10, 50].
  assert np.all(result.landmarks[:, 0] >= 10 - 0.5)
  assert np.all(result.landmarks[:, 0] <= 50 - 0.5)
  teacher.min_score = 2.0  # no score reaches it: no face
  assert teacher(image) is None


def test_network_teacher_bad_specs(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="jaxface:"):
    teachers.make_landmark_teacher(f"jaxface:{tmp_path}/absent.npz")
  with pytest.raises(ValueError, match="--workdir=.*--output"):
    teachers.make_landmark_teacher(f"jaxface:{workdir}")
  other = tmp_path / "notes.txt"
  other.write_text("x")
  with pytest.raises(ValueError, match="weights file"):
    teachers.make_landmark_teacher(f"jaxface:{other}")
