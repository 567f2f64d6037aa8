"""Multi-host training for real: two CPU processes train one model together.

Two `python -m jaxface.main` processes on 127.0.0.1, two CPU devices each,
join through `jax.distributed` (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) and train the toy task on a mesh of four devices; gradients
cross processes through JAX's gloo CPU collectives. Both are SIGKILLed once
a checkpoint is on disk, and a second launch resumes from it and finishes.

The final state must be bit-equal to the state one process with four
devices trains on the same global batches. Three things, none of them a
bug, keep a plain one-process run of the config from being that reference;
the reference (this file run as a script, `_reference`) matches each:

* Data order: each process shuffles its own shard of the records
  (`pipeline.train_dataset`), so a two-process global batch is process 0's
  batch followed by process 1's, not a batch of the one-process stream. The
  reference concatenates the two shards' batches the same way. A control
  in which every process reads the same records must not match: the check
  sees that each process read its own shard.
* Summation order across devices: gloo's all-reduce over four ranks adds
  the partial sums in a ring order that changes from one chunk of an array
  to the next, while the in-process CPU all-reduce adds them in device
  order. The reference starts a `jax.distributed` runtime of one process,
  with which JAX uses gloo for its own devices too.
* Summation order within a device: how XLA's CPU convolutions split their
  sums depends on the size of the process's thread pool, max(NPROC or the
  number of cores, local devices). Every process here gets NPROC=4.

Without the last two, float32 results differ in their last bits, and Adam
turns the rounding noise of gradients that are zero in exact arithmetic (a
conv bias before BatchNorm) into updates of full size.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TOY_CONFIG = REPO / "tests" / "toy_config.py"
NUM_PROCESSES = 2
LOCAL_DEVICES = 2
CHECKPOINT_EVERY = 2
# Life 1 is killed after its first checkpoint, long before it would finish.
LIFE1_STEPS = 20
# Seconds one launch may take; one takes under a minute on 2 busy cores.
TIMEOUT = 150

RESUMED = re.compile(r"Resumed from the checkpoint of step (\d+)")
TRAINING = re.compile(r"Training \S+ from step (\d+) to (\d+)")


def _free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
  """The environment of every process this test starts."""
  # Proxy variables could send gRPC's connections to 127.0.0.1 to a proxy.
  env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower()}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             NPROC=str(NUM_PROCESSES * LOCAL_DEVICES), **extra)
  return env


class _Launch:
  """The processes of one multi-host launch, each logging to a file."""

  def __init__(self, name: str, workdir: pathlib.Path, logs: pathlib.Path,
               children: list[subprocess.Popen], *overrides: str):
    port = _free_port()
    self.name = name
    self.logs = [logs / f"{name}.{i}.log" for i in range(NUM_PROCESSES)]
    self.procs = []
    for i, log in enumerate(self.logs):
      env = _env(JAX_NUM_CPU_DEVICES=str(LOCAL_DEVICES),
                 JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 # Loopback only, not every interface (JAX's default).
                 JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(NUM_PROCESSES),
                 JAX_PROCESS_ID=str(i))
      with open(log, "w") as f:
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "jaxface.main", f"--config={TOY_CONFIG}",
             f"--workdir={workdir}", *overrides],
            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
      children.append(self.procs[-1])
    self.deadline = time.monotonic() + TIMEOUT

  def texts(self) -> list[str]:
    return [log.read_text() for log in self.logs]

  def report(self, what: str) -> str:
    """`what`, then the end of every process's log."""
    tails = [f"--- {self.name}, process {i} (exit {p.poll()}):\n{text[-3000:]}"
             for i, (p, text) in enumerate(zip(self.procs, self.texts()))]
    return "\n".join([f"{self.name}: {what}", *tails])

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def _watch(self, done, exit_ok) -> None:
    """Polls until `done()`; fails (killing all) on a bad exit or timeout.

    A process that fails leaves the others waiting for it in a collective,
    so none is waited for alone.
    """
    while not done():
      codes = [p.poll() for p in self.procs]
      if any(c is not None and not exit_ok(c) for c in codes):
        self.kill()
        pytest.fail(self.report(f"exit statuses {codes}"))
      if time.monotonic() > self.deadline:
        self.kill()
        pytest.fail(self.report(f"still running after {TIMEOUT} s"))
      time.sleep(0.05)

  def kill_when(self, condition) -> None:
    """SIGKILLs every process once `condition()` holds (all still alive)."""
    self._watch(condition, exit_ok=lambda code: False)
    self.kill()

  def finish(self) -> list[str]:
    """Waits for every process to exit with 0; returns their logs."""
    self._watch(lambda: all(p.poll() is not None for p in self.procs),
                exit_ok=lambda code: code == 0)
    return self.texts()


@pytest.fixture
def children():
  """Processes a test starts; any still running at its end are killed."""
  procs = []
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _steps(workdir: pathlib.Path) -> list[int]:
  """The committed checkpoints (orbax renames a step's folder when done)."""
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit()) if root.is_dir() else []


def _saved_checksums(workdir: pathlib.Path, step: int) -> dict[str, str]:
  """The checksums saved with the state of `step`."""
  # Imported here: this file, run as the reference, must not start JAX
  # before `jax.distributed.initialize`.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jaxface.train import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.make_manager(str(workdir), max_to_keep=1000,
                                    asynchronous=False)
  try:
    return manager.restore(step, args=ocp.args.Composite(**{
        checkpoint.CHECKSUMS: ocp.args.JsonRestore()}))[checkpoint.CHECKSUMS]
  finally:
    manager.close()


def _assert_saved_by_every_process(step_dir: pathlib.Path) -> None:
  """Each process wrote its part: arrays (its OCDBT files), data position."""
  for i in range(NUM_PROCESSES):
    assert (step_dir / "state" / f"ocdbt.process_{i}").is_dir(), step_dir
    data = step_dir / "data" / f"process_{i}-of-{NUM_PROCESSES}.json"
    assert data.is_file(), data


@pytest.mark.slow
def test_two_processes_train_are_killed_resume_and_match_one(tmp_path,
                                                             children):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  logs.mkdir()

  # The reference trains meanwhile, to every step life 2 may end at.
  reference_out, reference_log = tmp_path / "reference.json", logs / "ref.log"
  with open(reference_log, "w") as f:
    reference = subprocess.Popen(
        [sys.executable, __file__, str(LIFE1_STEPS), str(reference_out)],
        cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)
  children.append(reference)
  reference_deadline = time.monotonic() + 2 * TIMEOUT

  # Life 1: both processes SIGKILLed as soon as a checkpoint is committed.
  # Which is the newest by then depends on timing: life 2 trains one step
  # past it, whatever it is.
  first = _Launch("life1", workdir, logs, children,
                  f"--config.train.num_steps={LIFE1_STEPS}",
                  f"--config.train.checkpoint_every={CHECKPOINT_EVERY}")
  first.kill_when(lambda: _steps(workdir))
  assert all(p.returncode == -signal.SIGKILL for p in first.procs), (
      first.report("finished before it was killed"))
  for i, text in enumerate(first.texts()):
    assert (f"process {i}/{NUM_PROCESSES}, {LOCAL_DEVICES} local / "
            f"{NUM_PROCESSES * LOCAL_DEVICES} global devices") in text, (
                first.report("not one run of two processes"))
  saved = _steps(workdir)[-1]
  assert 0 < saved < LIFE1_STEPS and saved % CHECKPOINT_EVERY == 0, saved
  _assert_saved_by_every_process(workdir / "checkpoints" / str(saved))

  # Life 2: the same command resumes from that checkpoint and finishes.
  num_steps = saved + 1
  second = _Launch("life2", workdir, logs, children,
                   f"--config.train.num_steps={num_steps}",
                   f"--config.train.checkpoint_every={CHECKPOINT_EVERY}")
  for text in second.finish():
    assert RESUMED.findall(text) == [str(saved)], second.report(
        f"did not resume from the checkpoint of step {saved}")
    assert TRAINING.findall(text) == [(str(saved), str(num_steps))], (
        second.report(f"did not train on from step {saved}"))
  assert _steps(workdir)[-1] == num_steps
  _assert_saved_by_every_process(workdir / "checkpoints" / str(num_steps))
  got = _saved_checksums(workdir, num_steps)

  try:
    reference.wait(timeout=max(1.0, reference_deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  assert reference.returncode == 0, (
      f"reference (exit {reference.poll()}):\n"
      f"{reference_log.read_text()[-3000:]}")
  want = {name: by_step[num_steps - 1] for name, by_step in
          json.loads(reference_out.read_text()).items()}
  assert len(got) == len(want["own_shards"]) > 0
  differ = sorted(k for k in got if got[k] != want["own_shards"].get(k))
  assert not differ, (
      f"{len(differ)} of {len(got)} arrays of step {num_steps} differ from "
      f"the one-process reference's, e.g. {differ[:3]}")
  # The control: had every process read the same records, the state would
  # differ.
  assert got != want["same_records"]


def _reference(num_steps: int, out: str) -> None:
  """One process, four devices: the states after steps 1 to `num_steps`.

  Writes {"own_shards": [checksums, ...], "same_records": [...]} to `out`,
  one entry per step: trained on the global batches of two processes that
  each read their own shard (process 0's rows first), and, as a control, of
  two that read the same records (process 0's).
  """
  # pylint: disable=g-import-not-at-top
  import jax
  jax.config.update("jax_num_cpu_devices", NUM_PROCESSES * LOCAL_DEVICES)
  # A runtime of one process: JAX's CPU collectives are then gloo's, as in
  # the multi-host run (see the module docstring).
  port = _free_port()
  jax.distributed.initialize(
      f"127.0.0.1:{port}", num_processes=1, process_id=0,
      coordinator_bind_address=f"127.0.0.1:{port}")
  sys.path.insert(0, str(REPO / "tests"))
  import toy_task
  from jaxface.data import pipeline
  from jaxface.train import checkpoint
  from jaxface.train import loop
  # pylint: enable=g-import-not-at-top

  config = toy_task.toy_config()
  setup = loop.build(config)
  consts = setup.constants()

  def shard(process_index):
    return iter(pipeline.train_dataset(
        setup.task.examples, config,
        batch_size=setup.train_batch_size // NUM_PROCESSES,
        process_index=process_index, process_count=NUM_PROCESSES))

  result = {"own_shards": list(range(NUM_PROCESSES)),
            "same_records": [0] * NUM_PROCESSES}
  for name, shards in result.items():
    streams = [shard(i) for i in shards]
    state = setup.init(jax.random.key(config.seed))
    result[name] = []
    for _ in range(num_steps):
      parts = [next(s) for s in streams]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      state, _ = setup.train_step(state, setup.put(batch), consts)
      result[name].append(checkpoint.checksums(state))
  pathlib.Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
  _reference(int(sys.argv[1]), sys.argv[2])
