"""Checkpoints a run can trust, and one run per workdir (fault injection).

Runs the toy task of `tests/toy_task.py` (seconds per run) through the real
loop.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxface.train import checkpoint
from jaxface.train import loop
import toy_task as toy  # registers the toy task

REPO = pathlib.Path(__file__).resolve().parents[2]


def _equal(a, b):
  a, b = jax.device_get((a, b))
  return all(np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run(workdir, num_steps, **train):
  return loop.train_and_evaluate(
      toy.toy_config(num_steps=num_steps, checkpoint_every=2, **train),
      str(workdir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Uninterrupted runs: {4: state after 4 steps, 6: after 6}."""
  return {n: _run(tmp_path_factory.mktemp(f"straight{n}"), n) for n in (4, 6)}


def _damage_truncate(step_dir):
  files = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file())
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 3])


def _damage_lose_the_state(step_dir):
  shutil.rmtree(step_dir / "state")


def _damage_empty(step_dir):
  for p in sorted(step_dir.rglob("*"), reverse=True):
    p.unlink() if p.is_file() else p.rmdir()


def _damage_lose_the_checksums(step_dir):
  shutil.rmtree(step_dir / "checksums")


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_lose_the_state,
                                    _damage_empty,
                                    _damage_lose_the_checksums])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(
    tmp_path, reference, caplog, damage):
  workdir = tmp_path / "run"
  _run(workdir, 4)
  damage(workdir / "checkpoints" / "4")
  with caplog.at_level(logging.INFO):
    state = _run(workdir, 6)
  assert "checkpoint of step 4" in caplog.text and "damaged" in caplog.text
  assert "Resumed from the checkpoint of step 2" in caplog.text
  assert [p.name[:2] for p in (workdir / "checkpoints.damaged").iterdir()
          ] == ["4-"]
  # Steps 3 and 4 were trained again from step 2, exactly as before.
  assert int(state.step) == 6
  assert _equal(state, reference[6])


def _alter_silently(state_dir, state):
  """Flips one byte of the saved arrays where orbax restores without error
  but with other values (arrays are stored compressed, so the test finds
  such a byte with a plain orbax restore, without jaxface's checks)."""
  data_files = [p for p in (state_dir / "ocdbt.process_0" / "d").iterdir()]
  path = max(data_files, key=lambda p: p.stat().st_size)
  original = path.read_bytes()
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  for pos in range(16, len(original), 7):
    data = bytearray(original)
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))
    try:
      restored = ocp.StandardCheckpointer().restore(state_dir, abstract)
    except Exception:  # pylint: disable=broad-except
      continue
    if not _equal(restored, state):
      return
  pytest.fail("no silently altering byte found")


def test_altered_bytes_are_detected_and_the_previous_checkpoint_used(
    tmp_path, reference, caplog):
  """Bit rot inside a saved array that restores without error: only the
  checksums catch it."""
  workdir = tmp_path / "run"
  state = _run(workdir, 4)
  _alter_silently(workdir / "checkpoints" / "4" / "state", state)
  with caplog.at_level(logging.INFO):
    state = _run(workdir, 6)
  assert "checkpoint of step 4" in caplog.text
  assert "differ from their checksums" in caplog.text
  assert "Resumed from the checkpoint of step 2" in caplog.text
  assert int(state.step) == 6 and _equal(state, reference[6])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int32", "int8",
                                   "bool", "uint32", "float16"])
def test_checksums_see_any_one_changed_or_swapped_value(dtype):
  rng = np.random.default_rng(0)
  x = (rng.random((6, 7)) > 0.5 if dtype == "bool"
       else (rng.random((6, 7)) * 100).astype(dtype))
  base = checkpoint.checksums({"x": jax.numpy.asarray(x)})["['x']"]
  assert len(base) == 16
  flat = x.reshape(-1)
  for i in range(flat.size):
    y = flat.copy()
    y[i] = ~y[i] if dtype == "bool" else (
        y.view(np.uint8 if y.dtype.itemsize == 1 else f"u{y.dtype.itemsize}")
        ^ 1).view(y.dtype)[i]
    assert checkpoint.checksums({"x": y.reshape(x.shape)})["['x']"] != base, i
  swapped = flat.copy()
  j = int(np.flatnonzero(flat != flat[0])[0])
  swapped[[0, j]] = swapped[[j, 0]]
  assert checkpoint.checksums({"x": swapped.reshape(x.shape)})["['x']"] != base


def test_checksums_do_not_depend_on_the_sharding():
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
  x = jax.numpy.arange(64 * 3, dtype=jax.numpy.float32).reshape(64, 3)
  spread = jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data")))
  assert checkpoint.checksums([spread]) == checkpoint.checksums([x])


def test_keep_every_keeps_multiples_beyond_max_to_keep(tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, 12, max_to_keep=2, keep_every=4)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [4, 8, 10, 12]


def test_a_stray_folder_is_not_a_checkpoint(tmp_path, reference, caplog):
  workdir = tmp_path / "run"
  _run(workdir, 4)
  (workdir / "checkpoints" / "9").mkdir()
  with caplog.at_level(logging.INFO):
    state = _run(workdir, 4)
  assert "checkpoint of step 9" in caplog.text
  assert "Resumed from the checkpoint of step 4" in caplog.text
  assert int(state.step) == 4 and _equal(state, reference[4])


def test_a_checkpoint_of_another_model_is_refused_before_writing(tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, 2)
  before = (workdir / "config.json").read_text()
  starts = sorted(os.listdir(workdir / "starts"))
  config = toy.toy_config(num_steps=4)
  config.model.width = 8
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    loop.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert "checkpoint of step 2" in message
  assert ("model_state/batch_stats/BatchNorm_0/mean: (4,) saved, (8,) now"
          in message)
  assert "(and 42 more)" in message
  assert "model.width: 4 saved, 8 now" in message
  # Nothing was written: the config of the run is the one it was trained
  # with, no start was recorded, the checkpoint is where it was.
  assert (workdir / "config.json").read_text() == before
  assert sorted(os.listdir(workdir / "starts")) == starts
  assert (workdir / "checkpoints" / "2").is_dir()
  assert not (workdir / "checkpoints.damaged").exists()


def test_every_start_keeps_its_config(tmp_path, caplog):
  workdir = tmp_path / "run"
  _run(workdir, 2)
  with caplog.at_level(logging.INFO):
    _run(workdir, 4)
  assert "Resumed from the checkpoint of step 2" in caplog.text
  starts = sorted(os.listdir(workdir / "starts"))
  assert len(starts) == 2 and starts[0].endswith("-step0.json")
  assert starts[1].endswith("-step2.json")
  assert json.loads((workdir / "config.json").read_text())["train"][
      "num_steps"] == 4


def test_a_second_run_on_a_workdir_is_refused(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with checkpoint.WorkdirLock(str(workdir)):
    with pytest.raises(checkpoint.WorkdirLockedError,
                       match=rf"in use by another run \(pid {os.getpid()} "):
      _run(workdir, 2)
  # Released on exit: the workdir is free again.
  assert int(_run(workdir, 2).step) == 2


def test_a_lock_left_by_a_killed_run_is_recovered(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          sys.path.insert(0, {str(REPO)!r})
          from jaxface.train import checkpoint
          checkpoint.WorkdirLock({str(workdir)!r}).acquire()
          print("locked", flush=True)
          time.sleep(600)
          """)], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(checkpoint.WorkdirLockedError, match=str(holder.pid)):
    checkpoint.WorkdirLock(str(workdir)).acquire()
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with caplog.at_level(logging.INFO):
    state = _run(workdir, 2)
  assert int(state.step) == 2
  assert f"pid {holder.pid}" in caplog.text  # whose lock was taken over


def test_an_empty_evaluation_split_is_refused_at_start(tmp_path):
  config = toy.toy_config(num_steps=4, eval_every=2)
  config.data.source = "procedural:num_records=40"  # val: 2 faces
  with pytest.raises(ValueError, match=r"config.data.source=.*the val split "
                     r"yields fewer examples than one batch of "
                     r"config.eval.batch_size \(8"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert not (tmp_path / "run" / "config.json").exists()
