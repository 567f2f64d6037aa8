"""The shared training loop, used by every task.

A task (e.g. `jaxface.train.inpaint.InpaintTask`) provides pure functions:

  init_state(rng) -> state
  train_step(state, batch, consts) -> (state, metrics)   # metrics["finite"]
  eval_step(state, batch, consts) -> per-example arrays  # incl. "gender"
  sample(state, batch, consts) -> image columns
  constants() -> frozen pytree (e.g. a loss network)
  train_data(process_index, process_count) -> grain IterDataset
  eval_data(process_index, process_count, agree) -> list of host batches
  sample_grid(columns, landmarks) -> uint8 image
  summarize_eval(per_example) -> {name: float}

and this loop does the rest: mesh and shardings, state created already
sharded, automatic resume from the latest checkpoint in the workdir,
TensorBoard scalars and image grids, console progress with rate and ETA,
periodic evaluation, checkpoints on an interval and on SIGTERM, and an abort
that names the step when a loss turns NaN/Inf.
"""

import importlib
import os
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxface import sharding
from jaxface.data import schema
from jaxface.train import checkpoint
from jaxface.train import progress as progress_lib
from jaxface.train import writers

# config.task -> "module:Class". Adding a task is one module + one line.
TASKS = {
    "inpaint": "jaxface.train.inpaint:InpaintTask",
}


def make_task(config: ml_collections.ConfigDict) -> Any:
  if config.task not in TASKS:
    raise ValueError(f"config.task={config.task!r} is not a known task "
                     f"(known: {sorted(TASKS)})")
  module, cls = TASKS[config.task].split(":")
  return getattr(importlib.import_module(module), cls)(config)


class NonFiniteLossError(FloatingPointError):
  """A loss or gradient norm became NaN/Inf."""


class PreemptionWatcher:
  """Turns a stop request into a checkpoint and a clean exit.

  One process: SIGTERM (preemption, `kill`) and SIGINT (Ctrl-C) set a flag
  that the loop polls once per step; it then saves and returns. Several
  processes: no Python handler is installed (it would replace JAX's own
  preemption notifier, and a signal seen by one host must stop all of them
  at the same step); orbax's `reached_preemption`, backed by JAX's
  preemption sync service, decides for all hosts together.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._event = threading.Event()
    self._previous = {}
    self.signal_name = None
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._event.is_set():
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
    self.signal_name = signal.Signals(signum).name
    self._event.set()
    logging.warning("%s: saving a checkpoint after this step (Ctrl-C again "
                    "to stop at once).", self.signal_name)

  def requested(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self._event.is_set()

  def close(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class FiniteGuard:
  """Detects a non-finite loss without syncing with the device every step.

  Each step's `metrics["finite"]` is AND-ed into a device-side flag (an
  asynchronous op); the host reads the flag only at log and checkpoint
  boundaries, then names the first bad step among the steps since the last
  check. Nothing is saved after a bad step.
  """

  def __init__(self):
    self._flag = None
    self._since_check = []  # (step, metrics) since the last check

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    finite = metrics["finite"]
    self._flag = finite if self._flag is None else jnp.logical_and(
        self._flag, finite)
    self._since_check.append((step, metrics))

  def check(self, manager) -> None:
    if self._flag is None:
      return
    ok = bool(jax.device_get(self._flag))
    pending, self._since_check, self._flag = self._since_check, [], None
    if ok:
      return
    step, metrics = next((s, m) for s, m in pending
                         if not bool(jax.device_get(m["finite"])))
    values = {k: float(v) for k, v in jax.device_get(metrics).items()
              if k != "finite"}
    manager.wait_until_finished()
    last = manager.latest_step()
    raise NonFiniteLossError(
        f"non-finite loss, gradient or parameter at step {step}: {values}. "
        f"Training stopped; the last checkpoint "
        f"({'none' if last is None else last}) is intact. Lower the learning "
        "rates or use float32 and resume.")


def _mean_metrics(pending: list[dict[str, Any]]) -> dict[str, float]:
  host = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in host]))
          for k in host[0] if k != "finite"}


def _agree_min(n: int) -> int:
  """The smallest `n` over all processes (each process calls this)."""
  if jax.process_count() == 1:
    return n
  return int(np.min(multihost_utils.process_allgather(np.int32(n))))


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def evaluate(task, eval_step, state, consts, eval_batches, data_sh) -> dict:
  """Runs the held-out batches and returns summary scalars."""
  per_example = []
  for batch in eval_batches:
    batch = sharding.put_batch(batch, data_sh)
    per_example.append(jax.device_get(eval_step(state, batch, consts)))
  merged = {k: np.concatenate([np.atleast_1d(p[k]) for p in per_example])
            for k in per_example[0]}
  return task.summarize_eval(merged)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> Any:
  """Trains `config.task` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: the experiment config.
    workdir: checkpoints, TensorBoard events, samples and config.json go here.
    devices: devices of the mesh (default: all).

  Returns:
    The final train state.
  """
  tc = config.train
  task = make_task(config)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_primary = process_index == 0
  os.makedirs(workdir, exist_ok=True)
  if is_primary:
    _write_config(workdir, config)

  # ------------------------------------------------------------------ mesh
  mesh = sharding.make_mesh(config.mesh, devices)
  multiple = sharding.batch_multiple(mesh)
  for key, size in (("train.batch_size", tc.batch_size),
                    ("eval.batch_size", config.eval.batch_size)):
    if size % multiple:
      raise ValueError(f"config.{key}={size} must be a multiple of the "
                       f"{multiple} data-parallel devices")
  data_sh, repl = sharding.data_sharding(mesh), sharding.replicated(mesh)
  logging.info("Mesh %s over %d devices (%s); %d process(es).",
               dict(mesh.shape), mesh.devices.size,
               mesh.devices.flat[0].platform, process_count)

  # ------------------------------------------------------------------ data
  train_ds = task.train_data(process_index, process_count)
  train_iter = iter(train_ds)
  eval_ds = task.eval_data(process_index, process_count, _agree_min)

  # ----------------------------------------------------------------- state
  rng = jax.random.key(config.seed)
  shapes = jax.eval_shape(task.init_state, rng)
  state_sh = sharding.state_shardings(mesh, shapes)
  manager = checkpoint.make_manager(workdir, max_to_keep=tc.max_to_keep)
  latest = manager.latest_step()
  if latest is not None:
    state = checkpoint.restore(manager, latest,
                               checkpoint.abstract_like(shapes, state_sh),
                               train_iter)
    logging.info("Resumed from the checkpoint of step %d in %s.", latest,
                 workdir)
  else:
    state = jax.jit(task.init_state, out_shardings=state_sh)(rng)
  step = int(jax.device_get(state.step))
  if step >= tc.num_steps:
    logging.info("%s is already trained to step %d (config.train.num_steps="
                 "%d); raise num_steps to train on.", workdir, step,
                 tc.num_steps)
    if hasattr(train_iter, "close"):
      train_iter.close()
    return state
  consts = jax.device_put(task.constants(), repl)

  # ----------------------------------------------------------------- steps
  train_step = jax.jit(task.train_step,
                       in_shardings=(state_sh, data_sh, repl),
                       out_shardings=(state_sh, repl), donate_argnums=0)
  eval_step = jax.jit(task.eval_step, in_shardings=(state_sh, data_sh, repl),
                      out_shardings=repl)
  sample_fn = jax.jit(task.sample, in_shardings=(state_sh, data_sh, repl),
                      out_shardings=repl)
  sample_batch = eval_ds[0]

  def write_samples(step):
    columns = jax.device_get(sample_fn(
        state, sharding.put_batch(sample_batch, data_sh), consts))
    if not is_primary:
      return
    # This process's rows come first in the global batch.
    local = sample_batch[schema.LANDMARKS]
    columns = {k: v[:len(local)] for k, v in columns.items()}
    grid = task.sample_grid(columns, local)
    writer.write_images(step, {"samples": grid[None]})
    writers.write_png(os.path.join(workdir, "samples", f"{step:08d}.png"),
                      grid)

  def run_eval(step):
    with timer.timed("eval"):
      summary = evaluate(task, eval_step, state, consts, eval_ds, data_sh)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in summary.items()})
    logging.info("eval @ step %d: %s", step, "  ".join(
        f"{k}={v:.4f}" for k, v in sorted(summary.items())))

  # ------------------------------------------------------- logging, signals
  writer = writers.create_writer(workdir, is_primary=is_primary,
                                 console=False,
                                 purge_step=None if latest is None else step)
  if latest is None:
    writer.write_hparams(config.to_dict())
  progress = progress_lib.Progress(tc.num_steps, step, tc.batch_size,
                                   every_steps=None, every_secs=None)
  timer = progress_lib.Timer()
  watcher = PreemptionWatcher()
  logging.info("Training %s from step %d to %d, global batch %d.",
               config.task, step, tc.num_steps, tc.batch_size)

  # ------------------------------------------------------------------ loop
  pending = []
  guard = FiniteGuard()
  preempted = False
  try:
    while step < tc.num_steps:
      with timer.timed("data"):
        batch = sharding.put_batch(next(train_iter), data_sh)
      with timer.timed("step"):
        state, metrics = train_step(state, batch, consts)
      step += 1
      progress.update(step)
      guard.add(step, metrics)
      pending.append(metrics)
      last = step == tc.num_steps
      preempted = watcher.requested(manager, step)

      if step % tc.log_every == 0 or last:
        with timer.timed("step"):  # waits for the device
          guard.check(manager)
        scalars = _mean_metrics(pending)
        pending = []
        scalars.update({f"time/{k}": v for k, v in timer.fractions().items()})
        writer.write_scalars(step, {f"train/{k}": v
                                    for k, v in scalars.items()})
        line = progress.format(step)
        logging.info("%s | g %.4f d %.4f l1 %.4f", line,
                     scalars.get("g_loss", np.nan),
                     scalars.get("d_loss", np.nan),
                     scalars.get("loss/l1", np.nan))
      if step % tc.checkpoint_every == 0 or last or preempted:
        guard.check(manager)
        with timer.timed("checkpoint"):
          checkpoint.save(manager, step, state, train_iter)
      if preempted:
        logging.warning(
            "%s received: checkpoint of step %d saved; run the same command "
            "again to resume.", watcher.signal_name or "Preemption", step)
        break
      if tc.image_every and (step % tc.image_every == 0 or last):
        write_samples(step)
      if tc.eval_every and (step % tc.eval_every == 0 or last):
        run_eval(step)
  finally:
    watcher.close()
    manager.wait_until_finished()
    writer.flush()
    if hasattr(train_iter, "close"):
      train_iter.close()  # stops grain worker processes
  if not preempted:
    logging.info("Done: %d steps in %s.", step, workdir)
  return state
