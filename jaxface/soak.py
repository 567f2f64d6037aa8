r"""Soak test: train while being killed and having checkpoints damaged.

  python -m jaxface.soak --config=configs/inpaint.py:tiny --workdir=runs/soak \
      --minutes=30 --steps=2000

1. Trains the config uninterrupted to `--steps` in `<workdir>/reference`
   (a complete reference run is reused: its start finds it done).
2. Trains it again in `<workdir>/soak`, as `python -m jaxface.main`
   processes that are SIGKILLed at random: some a random time after their first progress line,
   some the moment a checkpoint save begins (a temporary folder appears in
   `checkpoints/`). Between lives, at random, the newest checkpoint is
   damaged: a file truncated, a byte of the saved arrays flipped, its state
   deleted, or an empty folder of a later step left behind. The same command
   is started again each time, as a scheduler would.
3. After `--minutes`, one last life trains to the end undisturbed, and the
   final state's digest (from the checksums saved with the checkpoint) must
   equal the reference's.

Prints a table (lives, kills, kills during saves, damage done and detected,
resume points, both digests) and exits 0 when the digests are equal, 1 when
not. Each life's log is kept in `<workdir>/soak/lives/`. Not a CI test: it
takes as long as `--minutes` plus two runs of `--steps`.
"""

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags

from jaxface import fileio
from jaxface import logging_utils

_CONFIG = flags.DEFINE_string(
    "config", "configs/inpaint.py:tiny", "Config file (as for jaxface.main).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/soak",
                               "Where both runs go (a local directory).")
_MINUTES = flags.DEFINE_float("minutes", 30.0, "How long to kill and damage.")
_KILLS = flags.DEFINE_integer(
    "kills", 0, "Stop killing after this many kills (0: only --minutes "
    "limits them).")
_STEPS = flags.DEFINE_integer(
    "steps", 2000, "config.train.num_steps of both runs; more than the soak "
    "reaches in --minutes, so that it ends in the undisturbed last life.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 25, "config.train.checkpoint_every (many saves to "
    "kill during).")
_DAMAGE = flags.DEFINE_float(
    "damage", 0.3, "Probability of damaging the newest checkpoint after a "
    "kill.")
_KILL_AFTER = flags.DEFINE_float(
    "kill_after", 40.0, "Kills not aimed at a save come a random time up to "
    "this many seconds into training.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill and damage plan.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "Extra --config.<key>=<value> flags for both runs.")

DAMAGED = re.compile(r"checkpoint of step (\d+) in .* is damaged")
PROGRESS = re.compile(r"step \d+/\d+ \(")
RESUMED = re.compile(r"Resumed from the checkpoint of step (\d+)")


@dataclasses.dataclass
class Tally:
  lives: int = 0
  kills: int = 0
  kills_in_save: int = 0
  damage: dict = dataclasses.field(default_factory=dict)
  detected: int = 0
  resumed_from: list = dataclasses.field(default_factory=list)


def _command(workdir: str) -> list[str]:
  return [sys.executable, "-m", "jaxface.main", f"--config={_CONFIG.value}",
          f"--workdir={workdir}",
          f"--config.train.num_steps={_STEPS.value}",
          f"--config.train.checkpoint_every={_CHECKPOINT_EVERY.value}",
          "--config.train.keep_every=0",
          *[f"--config.{o.removeprefix('--config.')}" for o in
            _OVERRIDES.value]]


def _steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root) if n.isdigit())


def _saving(workdir: str) -> bool:
  """A save in progress: orbax's temporary step folder exists."""
  root = os.path.join(workdir, "checkpoints")
  return os.path.isdir(root) and any("tmp" in n for n in os.listdir(root))


def _life(workdir: str, log_path: str, plan: random.Random | None,
          tally: Tally) -> int:
  """One start of the training command; killed per `plan` (None: never).

  Returns its exit status (-9 when killed).
  """
  with open(log_path, "w") as log:
    proc = subprocess.Popen(_command(workdir), stdout=log,
                            stderr=subprocess.STDOUT)
    in_save = plan is not None and plan.random() < 0.4
    delay = plan.uniform(0.05, 1.0) * _KILL_AFTER.value if plan else None
    trained_since = None
    while proc.poll() is None:
      time.sleep(0.02)
      if plan is None:
        continue
      if trained_since is None:  # compiling: wait for the first progress line
        with open(log_path) as f:
          if PROGRESS.search(f.read()):
            trained_since = time.monotonic()
        continue
      waited = time.monotonic() - trained_since
      if in_save and _saving(workdir):
        time.sleep(plan.uniform(0.0, 0.2))
        tally.kills_in_save += _saving(workdir)
      elif waited < (3 * delay if in_save else delay):
        continue  # (a save too quick to catch: killed later anyway)
      proc.send_signal(signal.SIGKILL)
      tally.kills += 1
      break
    proc.wait()
  with open(log_path) as f:
    text = f.read()
  tally.lives += 1
  tally.detected += len(DAMAGED.findall(text))
  tally.resumed_from += [int(s) for s in RESUMED.findall(text)]
  return proc.returncode


def _damage(workdir: str, plan: random.Random, tally: Tally) -> None:
  """Damages the newest checkpoint in one of four ways."""
  steps = _steps(workdir)
  if not steps:
    return
  step_dir = os.path.join(workdir, "checkpoints", str(steps[-1]))
  kind = plan.choice(["truncate", "flip", "lose_state", "stray"])
  files = [os.path.join(d, n) for d, _, names in os.walk(
      os.path.join(step_dir, "state")) for n in names]
  if kind == "stray":
    os.makedirs(os.path.join(workdir, "checkpoints",
                             str(steps[-1] + _CHECKPOINT_EVERY.value)))
  elif kind == "lose_state":
    shutil.rmtree(os.path.join(step_dir, "state"), ignore_errors=True)
  elif not files:
    return
  else:
    path = max(files, key=os.path.getsize)
    with open(path, "rb") as f:
      data = bytearray(f.read())
    if kind == "truncate":
      data = data[:len(data) // 3]
    else:  # a flipped bit where the arrays are (first part of the file)
      data[plan.randrange(16, max(17, len(data) * 2 // 3))] ^= 0x10
    with open(path, "wb") as f:
      f.write(bytes(data))
  tally.damage[kind] = tally.damage.get(kind, 0) + 1


def final_digest(workdir: str) -> tuple[int | None, str]:
  """(step, digest of the saved checksums) of the newest checkpoint."""
  # Imported here: the parent process needs no JAX while it supervises.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jaxface.train import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.make_manager(workdir, max_to_keep=1000,
                                    asynchronous=False)
  step = manager.latest_step()
  if step is None:
    return None, "(no checkpoint)"
  sums = manager.restore(step, args=ocp.args.Composite(**{
      checkpoint.CHECKSUMS: ocp.args.JsonRestore()}))[checkpoint.CHECKSUMS]
  manager.close()
  # The values in the state's flatten order (how they were saved): equal
  # states give equal digests whatever the key spelling of the jaxface
  # version that saved them.
  text = json.dumps(list(sums.values())).encode()
  return step, hashlib.sha256(text).hexdigest()[:16]


def main(argv):
  del argv
  logging_utils.quiet_libraries()
  if not fileio.is_local(_WORKDIR.value):
    # It kills processes and damages their checkpoint files in place.
    raise app.UsageError(f"--workdir={_WORKDIR.value}: the soak test needs "
                         "a local directory.")
  root = os.path.abspath(_WORKDIR.value)
  reference, soak = os.path.join(root, "reference"), os.path.join(root,
                                                                  "soak")
  lives_dir = os.path.join(soak, "lives")
  shutil.rmtree(soak, ignore_errors=True)  # a soak always starts afresh
  os.makedirs(lives_dir, exist_ok=True)
  plan = random.Random(_SEED.value)
  started = time.monotonic()

  print(f"reference: {_STEPS.value} steps in {reference} ...", flush=True)
  status = _life(reference, os.path.join(root, "reference.log"), None,
                 Tally())
  if status != 0:
    sys.exit(f"the reference run failed (exit {status}); see "
             f"{os.path.join(root, 'reference.log')}")
  reference_time = time.monotonic() - started

  tally = Tally()
  deadline = time.monotonic() + 60 * _MINUTES.value
  finished = False
  while (time.monotonic() < deadline and not finished
         and not (_KILLS.value and tally.kills >= _KILLS.value)):
    log = os.path.join(lives_dir, f"{tally.lives:04d}.log")
    status = _life(soak, log, plan, tally)
    if status == 0:
      finished = True  # trained to the end before the time was up
    elif status != -signal.SIGKILL:
      sys.exit(f"life {tally.lives - 1} exited with {status}; see {log}")
    elif plan.random() < _DAMAGE.value:
      _damage(soak, plan, tally)
    print(f"  {tally.lives} lives, {tally.kills} kills, newest checkpoint "
          f"{(_steps(soak) or [None])[-1]}", flush=True)
  if not finished:
    log = os.path.join(lives_dir, f"{tally.lives:04d}-last.log")
    status = _life(soak, log, None, tally)
    if status != 0:
      sys.exit(f"the last life exited with {status}; see {log}")

  want, got = final_digest(reference), final_digest(soak)
  equal = want == got
  damage = ", ".join(f"{k} {v}" for k, v in sorted(tally.damage.items()))
  rows = [
      ("config", f"{_CONFIG.value}, {_STEPS.value} steps, checkpoint every "
                 f"{_CHECKPOINT_EVERY.value}"),
      ("reference run", f"{reference_time / 60:.1f} min"),
      ("soak", f"{(time.monotonic() - started - reference_time) / 60:.1f} "
               f"min, {_MINUTES.value:g} of them killing"),
      ("lives", tally.lives),
      ("SIGKILLs", f"{tally.kills} ({tally.kills_in_save} during a save)"),
      ("checkpoints damaged", f"{sum(tally.damage.values())} ({damage})"),
      ("damaged checkpoints detected and skipped", tally.detected),
      ("resumed from steps", " ".join(map(str, tally.resumed_from)) or "-"),
      ("reference final state", f"step {want[0]}, digest {want[1]}"),
      ("soak final state", f"step {got[0]}, digest {got[1]}"),
      ("result", "EQUAL" if equal else "DIFFERENT"),
  ]
  width = max(len(k) for k, _ in rows)
  print()
  for key, value in rows:
    print(f"{key:<{width}}  {value}")
  sys.exit(0 if equal else 1)


if __name__ == "__main__":
  app.run(main)
