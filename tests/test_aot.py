"""jaxface.aot: the training step compiled ahead of time for a target.

The CPU tests run anywhere. The TPU tests compile for a v5e topology on this
CPU and skip when libtpu (the `tpu` extra) is not installed, as in CI.
"""

import pathlib
import subprocess
import sys

import jax
import pytest

from jaxface import aot
import toy_task

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from configs import inpaint as inpaint_config

needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason="libtpu is not installed (the `tpu` extra): no TPU topologies")


def _run(config, target, batch_sizes, devices=None):
  lines = []
  rows = aot.run(config, target, batch_sizes, devices=devices,
                 printer=lines.append)
  return rows, lines


def _check_table(lines, rows, batch_sizes):
  """The header names every column; one line per batch size follows."""
  assert lines[1].split() == list(aot.COLUMNS)
  assert [int(line.split()[0]) for line in lines[3:3 + len(rows)]] == list(
      batch_sizes)
  assert [r.batch_size for r in rows] == list(batch_sizes)
  for line in lines[3:3 + len(rows)]:
    assert len(line.split()) == len(aot.COLUMNS)


@pytest.mark.parametrize("text,generation,dims", [
    ("v5e:2x2", "v5e", (2, 2)), ("V6E:4x4", "v6e", (4, 4)),
    ("v5p:2x2x1", "v5p", (2, 2, 1)), ("v4:2x2x2", "v4", (2, 2, 2))])
def test_parse_topology(text, generation, dims):
  target = aot.parse_topology(text)
  assert (target.platform, target.generation, target.dims) == (
      "tpu", generation, dims)
  assert target.hbm_bytes == aot.HBM_GIB[generation] * 2**30


@pytest.mark.parametrize("text", ["cpu", "", None])
def test_parse_topology_cpu(text):
  target = aot.parse_topology(text)
  assert (target.platform, target.hbm_bytes) == ("cpu", None)


@pytest.mark.parametrize("text,says", [
    ("v9z:2x2", "unknown topology"), ("tpu", "unknown topology"),
    ("v5e:2x2x1", "2-D"), ("v5p:2x2", "3-D"), ("v5e:2xa", "2-D"),
    ("v5e:0x2", "2-D")])
def test_bad_topology_names_the_problem_and_examples(text, says):
  with pytest.raises(aot.TopologyError, match=says) as e:
    aot.parse_topology(text)
  assert "v5e:2x2" in str(e.value) and "cpu" in str(e.value)


def test_public_hbm_per_chip():
  assert aot.HBM_GIB == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def test_cpu_tiny_inpaint_step_compiles_and_is_reported():
  config = inpaint_config.get_config("tiny")
  rows, lines = _run(config, aot.parse_topology("cpu"), [8])
  assert lines[0].startswith("target cpu: 4 x cpu")
  assert "task inpaint" in lines[0]
  _check_table(lines, rows, [8])
  row = rows[0]
  assert row.error is None
  assert row.flops > 0 and row.total_bytes > 0 and row.argument_bytes > 0
  # The donated state comes back in place of the new one.
  assert 0 < row.alias_bytes <= row.output_bytes
  assert row.estimate_s is None  # CPU XLA has no cost-model time
  assert "n/a" in lines[3]
  assert any("keys: bytes accessed, flops" in line for line in lines)


def test_flops_are_per_device():
  config = toy_task.toy_config()
  target = aot.parse_topology("cpu")
  one, = _run(config, target, [32], devices=jax.devices()[:1])[0]
  four, = _run(config, target, [32], devices=jax.devices())[0]
  # Each of four devices runs a quarter of the batch plus the replicated
  # work (optimiser update, gradient all-reduce); a count of the whole
  # program would be about `one.flops`.
  assert one.flops / 4 <= four.flops < one.flops / 2


def test_bad_batch_size_fails_before_compiling():
  with pytest.raises(ValueError, match="config.train.batch_size=6"):
    _run(toy_task.toy_config(), aot.parse_topology("cpu"), [8, 6])


def test_command_line():
  # Also proves the CLI runs on CPU whatever JAX would pick by itself.
  result = subprocess.run(
      [sys.executable, "-m", "jaxface.aot", "--config=tests/toy_config.py",
       "--topology=cpu", "--cpu_devices=2", "--batch_sizes=2,4"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout.splitlines()
  assert out[0].startswith("target cpu: 2 x cpu")
  assert out[1].split() == list(aot.COLUMNS)
  assert [line.split()[:2] for line in out[3:5]] == [["2", "1"], ["4", "2"]]

  bad = subprocess.run(
      [sys.executable, "-m", "jaxface.aot", "--config=tests/toy_config.py",
       "--topology=v9z:2x2"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode != 0
  assert "unknown topology" in bad.stderr and "v5e:2x2" in bad.stderr


@needs_libtpu
def test_tpu_topology_devices():
  devices = aot.target_devices(aot.parse_topology("v5e:2x2"))
  assert len(devices) == 4
  assert {d.device_kind for d in devices} == {"TPU v5 lite"}
  # Smaller than one host, and megacore v5p: one device per chip.
  assert len(aot.target_devices(aot.parse_topology("v5e:1x1"))) == 1
  assert len(aot.target_devices(aot.parse_topology("v5p:2x2x1"))) == 4
  with pytest.raises(aot.TopologyError, match="libtpu refused"):
    aot.target_devices(aot.parse_topology("v5e:3x3"))


@needs_libtpu
def test_tpu_toy_step_compiles_for_v5e():
  rows, lines = _run(toy_task.toy_config(), aot.parse_topology("v5e:2x2"),
                     [8])
  assert lines[0].startswith("target v5e:2x2: 4 x TPU v5 lite, 16 GiB")
  _check_table(lines, rows, [8])
  row = rows[0]
  assert row.error is None, row.error
  assert (row.num_devices, row.num_chips) == (4, 4)
  assert row.flops > 0 and row.total_bytes > 0 and row.code_bytes > 0
  assert row.total_bytes < aot.HBM_GIB["v5e"] * 2**30


@needs_libtpu
def test_command_line_compiles_for_a_v6e_slice():
  # libtpu 0.0.42 segfaults compiling this step for v6e:2x2 in a process
  # started with a finite stack limit, and now and then without one; the
  # command compiles in a child under an unlimited limit and restarts it
  # after a segfault (which prints the target line again).
  result = subprocess.run(
      [sys.executable, "-m", "jaxface.aot", "--config=tests/toy_config.py",
       "--topology=v6e:2x2", "--batch_sizes=8"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout.splitlines()
  assert out[0].startswith("target v6e:2x2: 4 x TPU v6 lite, 32 GiB")
  assert [line.split()[:2] for line in out
          if line.split()[:1] == ["8"]] == [["8", "2"]]


@needs_libtpu
@pytest.mark.slow
def test_tpu_tiny_inpaint_step_compiles_for_v5e():
  # The tiny config at 32 px with narrower networks: every piece of the GAN
  # step, in well under a minute of TPU compiling (the tiny config itself
  # takes minutes on 2 cores).
  config = inpaint_config.get_config("tiny,size=32")
  config.model.generator.update(width=8, num_res_blocks=1)
  config.model.discriminator.width = 8
  config.losses.vgg_width = 8
  rows, lines = _run(config, aot.parse_topology("v5e:2x2"), [8])
  _check_table(lines, rows, [8])
  row = rows[0]
  assert row.error is None, row.error
  assert row.argument_bytes > 0 and row.temp_bytes > 0
  assert 0 < row.total_bytes < aot.HBM_GIB["v5e"] * 2**30
  assert row.flops > 0
  assert "%" in lines[3]  # the share of the chip's HBM
