"""The shared training loop, used by every task.

A task (`jaxface.train.task.Task`, found through the registry in
`jaxface.tasks`) provides pure functions: state init, the train, eval and
sample steps, its examples and what to show. `build` turns a config into a
mesh, shardings, an abstract state and the jitted functions (also used by
the benchmarks and the ahead-of-time compile), and `train_and_evaluate`
does the rest: state created already sharded, automatic resume from the
latest checkpoint in the workdir, TensorBoard scalars and image grids,
console progress with rate and ETA, periodic evaluation, checkpoints on an
interval and on SIGTERM, and an abort that names the step when a loss turns
NaN/Inf.

A run stopped by SIGTERM or SIGINT saves a checkpoint and raises
`Preempted`; `jaxface.main` turns it into exit status `EXIT_PREEMPTED` (75,
EX_TEMPFAIL: "try again"), which a scheduler tells apart from 0 (finished)
and 1 (failed): rerunning the same command resumes.
"""

import dataclasses
import json
import signal
import threading
from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxface import fileio
from jaxface import sharding
from jaxface import tasks
from jaxface import visualize
from jaxface.data import pipeline
from jaxface.train import checkpoint
from jaxface.train import progress as progress_lib
from jaxface.train import task as task_lib
from jaxface.train import writers

# The per-step rng is fold_in(fold_in(key(seed), _STEP_STREAM), step): a
# stream of its own, apart from the key that initialises the state.
_STEP_STREAM = 0x57E9


# Exit status of a run stopped by a signal after saving (sysexits.h
# EX_TEMPFAIL): rerun the same command to resume.
EXIT_PREEMPTED = 75


class NonFiniteLossError(FloatingPointError):
  """A loss or gradient norm became NaN/Inf."""


class Preempted(Exception):
  """The run was stopped by a signal after saving the checkpoint of `step`."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f"{signal_name} received: checkpoint of step {step} "
                     "saved; run the same command again to resume.")
    self.step, self.signal_name = step, signal_name


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


def _console_line(progress_line: str, scalars: dict[str, float],
                  shown: dict[str, str]) -> str:
  """The progress line plus the task's `console_metrics`, e.g. `| g 0.72`."""
  parts = [f"{label} {scalars[key]:.4f}" for label, key in shown.items()
           if key in scalars]
  return progress_line + (" | " + " ".join(parts) if parts else "")


def _agree_min(n: int) -> int:
  """The smallest `n` over all processes (each process calls this)."""
  if jax.process_count() == 1:
    return n
  return int(np.min(multihost_utils.process_allgather(np.int32(n))))


@dataclasses.dataclass(frozen=True)
class Setup:
  """A task on a mesh: what the loop, a benchmark or an AOT compile needs.

  The jitted functions take and return global arrays sharded as below:
  `train_step(state, batch, consts) -> (state, metrics)` donates `state`
  and derives the task's rng from `config.seed` and `state.step`;
  `eval_step(state, batch, consts)` and `sample(state, batch, consts)`
  return replicated arrays; `init(rng)` creates the state already sharded.
  """
  config: ml_collections.ConfigDict
  task: task_lib.Task
  mesh: jax.sharding.Mesh
  data_sharding: jax.sharding.NamedSharding
  replicated: jax.sharding.NamedSharding
  state_sharding: Any
  abstract_state: Any  # ShapeDtypeStructs carrying `state_sharding`
  train_batch_size: int  # this process's share of the global batch
  eval_batch_size: int
  init: Callable[..., Any]
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  sample: Callable[..., Any]

  def constants(self) -> Any:
    """The task's constants, loaded and replicated over the mesh."""
    return jax.device_put(self.task.constants(), self.replicated)

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch (this process's rows) as a global sharded batch."""
    return sharding.put_batch(batch, self.data_sharding)

  def abstract_batch(self, batch_size: int | None = None) -> dict[str, Any]:
    """ShapeDtypeStructs of a global batch (default: `train.batch_size`).

    Shapes come from one real example of the configured source, so they are
    what the pipeline yields. With `abstract_state` and
    `abstract_constants`, enough to lower and compile `train_step` ahead of
    time for any device topology.
    """
    size = batch_size or self.config.train.batch_size
    one = pipeline.fixed_batch(self.task.examples, self.config, 1)
    return {k: jax.ShapeDtypeStruct((size,) + v.shape[1:], v.dtype,
                                    sharding=self.data_sharding)
            for k, v in one.items()}

  def abstract_constants(self) -> Any:
    """ShapeDtypeStructs of the task's constants (replicated)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=self.replicated),
        jax.eval_shape(self.task.constants))

  def describe(self) -> str:
    """One line: the mesh, the batch sizes and how the state is split.

    Global, per-process and per-device batch for training and evaluation;
    the state's values (parameters, optimiser moments, ...) sharded over
    `fsdp` and replicated, and the bytes of the state each device holds.
    """
    mesh = self.mesh
    devices = mesh.devices.size
    processes = len({d.process_index for d in mesh.devices.flat})
    batches = ", ".join(
        f"{name} {size} global = {local}/process = {size // devices}/device"
        for name, size, local in (
            ("train", self.config.train.batch_size, self.train_batch_size),
            ("eval", self.config.eval.batch_size, self.eval_batch_size)))
    values, arrays, held = [0, 0], [0, 0], 0
    for x in jax.tree.leaves(self.abstract_state):
      replicated = int(x.sharding.is_fully_replicated)
      values[replicated] += x.size
      arrays[replicated] += 1
      held += (int(np.prod(x.sharding.shard_shape(x.shape)))
               * np.dtype(x.dtype).itemsize)
    return (f"Mesh {' x '.join(f'{k}={v}' for k, v in mesh.shape.items())} "
            f"over {devices} {mesh.devices.flat[0].platform} device(s), "
            f"{processes} process(es). Batch: {batches}. State: "
            f"{values[0]:,} values in {arrays[0]} arrays sharded over fsdp, "
            f"{values[1]:,} in {arrays[1]} replicated; "
            f"{held / 2**20:.2f} MiB per device.")


def step_rng(seed: int, step: jax.Array) -> jax.Array:
  """The rng a task's `train_step` gets at `step` (0 for the first)."""
  return jax.random.fold_in(
      jax.random.fold_in(jax.random.key(seed), _STEP_STREAM), step)


def build(config: ml_collections.ConfigDict,
          devices: Sequence[jax.Device] | None = None,
          task: task_lib.Task | None = None) -> Setup:
  """Builds `config.task` on a mesh of `devices` (default: all).

  Checks the config (the task's constructor) and the batch sizes against
  the mesh; compiles nothing yet.
  """
  task = task if task is not None else tasks.make(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  train_batch = sharding.per_process_batch(config.train.batch_size,
                                           "train.batch_size", mesh)
  eval_batch = sharding.per_process_batch(config.eval.batch_size,
                                          "eval.batch_size", mesh)
  data_sh, repl = sharding.data_sharding(mesh), sharding.replicated(mesh)
  shapes = jax.eval_shape(task.init_state, jax.random.key(config.seed))
  state_sh = sharding.state_shardings(mesh, shapes)
  seed = config.seed

  def train_step(state, batch, consts):
    # Under the mesh, so that the task's `sharding.gathered` applies.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return task.train_step(state, batch, consts,
                             step_rng(seed, state.step))

  return Setup(
      config=config, task=task, mesh=mesh, data_sharding=data_sh,
      replicated=repl, state_sharding=state_sh,
      abstract_state=checkpoint.abstract_like(shapes, state_sh),
      train_batch_size=train_batch, eval_batch_size=eval_batch,
      init=jax.jit(task.init_state, out_shardings=state_sh),
      train_step=jax.jit(train_step, in_shardings=(state_sh, data_sh, repl),
                         out_shardings=(state_sh, repl), donate_argnums=0),
      eval_step=jax.jit(task.eval_step,
                        in_shardings=(state_sh, data_sh, repl),
                        out_shardings=repl),
      sample=jax.jit(task.sample, in_shardings=(state_sh, data_sh, repl),
                     out_shardings=repl))


def concat_examples(parts: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Per-example outputs of several batches joined into one [N, ...] each."""
  return {k: np.concatenate([np.atleast_1d(p[k]) for p in parts])
          for k in parts[0]}


def eval_outputs(setup: Setup, state: Any, consts: Any,
                 eval_batches: list[dict[str, np.ndarray]]
                 ) -> dict[str, np.ndarray]:
  """The task's `eval_step` outputs over host batches, concatenated."""
  return concat_examples([
      jax.device_get(setup.eval_step(state, setup.put(batch), consts))
      for batch in eval_batches])


def evaluate(setup: Setup, state: Any, consts: Any,
             eval_batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Runs the held-out batches and returns the task's summary scalars."""
  return setup.task.summarize_eval(
      eval_outputs(setup, state, consts, eval_batches))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run last started with (its `config.json`).

  Raises:
    FileNotFoundError: naming the workdir when it holds no config.json.
  """
  path = fileio.as_path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
        f"{workdir}: no config.json (not a jaxface workdir, or its run never "
        "started); pass the config the run was trained with")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_state(setup: Setup, workdir: str, step: int | None = None
               ) -> tuple[Any, int]:
  """A trained state from a workdir's checkpoints, for evaluation or use.

  Read-only: no lock is taken (a run may be writing newer checkpoints)
  and the data iterator is not restored.

  Args:
    setup: `build(config)` of the config the run was trained with.
    workdir: the run's workdir.
    step: which checkpoint; None for the newest.

  Returns:
    (state, step).

  Raises:
    FileNotFoundError: the workdir or the step has no checkpoint (the
      message lists the steps there are).
    checkpoint.CheckpointMismatchError: the checkpoint holds another model
      than `setup` builds.
  """
  root = fileio.as_path(workdir) / "checkpoints"
  if not root.exists():
    raise FileNotFoundError(f"{workdir}: no checkpoints/ directory")
  manager = checkpoint.make_manager(workdir, max_to_keep=10**6,
                                    asynchronous=False)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{workdir}: no checkpoint saved yet")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{workdir}: no checkpoint of step {step}; "
                            f"there are {steps}")
  problems = checkpoint.mismatches(manager, step, setup.abstract_state)
  if problems:
    raise checkpoint.CheckpointMismatchError(
        _describe_mismatch(workdir, setup.config)(step, problems))
  state = checkpoint.restore(manager, step, setup.abstract_state, None)
  manager.close()
  return state, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None) -> Any:
  """Trains `config.task` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: the experiment config.
    workdir: checkpoints, TensorBoard events, samples and config.json go
      here: a local path or a `gs://` URL.
    devices: devices of the mesh (default: all).

  Returns:
    The final train state.

  Raises:
    Preempted: stopped by SIGTERM/SIGINT (or a preemption notice) after
      saving a checkpoint.
    ValueError, ImportError: a workdir URL that cannot be used (see
      `fileio.check_workdir`), before anything is written.
  """
  fileio.check_workdir(workdir)
  setup = build(config, devices)
  fileio.as_path(workdir).mkdir(parents=True, exist_ok=True)
  # One run per workdir: the primary process holds the lock for the run.
  lock = checkpoint.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return _train(setup, workdir)
  finally:
    lock.release()


def _describe_mismatch(workdir: str, config: ml_collections.ConfigDict
                       ) -> Callable[[int, list[str]], str]:
  """The message of a refused checkpoint: which arrays, which config keys."""

  def describe(step: int, problems: list[str]) -> str:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    text = (f"{workdir}: the checkpoint of step {step} holds another model "
            f"than this config builds: {'; '.join(problems[:3])}{more}.")
    try:
      saved = writers.flatten(json.loads(
          (fileio.as_path(workdir) / "config.json").read_text()))
    except (OSError, ValueError):
      saved = None
    if saved is not None:
      now = writers.flatten(json.loads(config.to_json_best_effort()))
      diffs = [f"{k}: {saved.get(k, '(absent)')!r} saved, "
               f"{now.get(k, '(absent)')!r} now"
               for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k)]
      if diffs:
        text += (" Config values that differ from its config.json: "
                 + "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
                 + ".")
    return text + (" Run with the config it was trained with, or use "
                   "another --workdir.")

  return describe


def _train(setup: Setup, workdir: str) -> Any:
  """`train_and_evaluate` once the workdir is this run's."""
  config, task, tc = setup.config, setup.task, setup.config.train
  process_index, process_count = jax.process_index(), jax.process_count()
  is_primary = process_index == 0
  logging.info("%s", setup.describe())

  # ------------------------------------------------------------------ data
  def make_train_iter():
    return iter(pipeline.train_dataset(
        task.examples, config, batch_size=setup.train_batch_size,
        process_index=process_index, process_count=process_count))

  # Held-out batches (evaluation and sample grids), read only when used, so
  # that a run without either needs no validation split.
  eval_ds = None
  if tc.eval_every or tc.image_every:
    eval_ds = pipeline.eval_batches(
        task.examples, config, batch_size=setup.eval_batch_size,
        process_index=process_index, process_count=process_count,
        agree=_agree_min)

  # ----------------------------------------------------------------- state
  manager = checkpoint.make_manager(workdir, max_to_keep=tc.max_to_keep,
                                    keep_every=tc.keep_every)
  state, latest, train_iter = checkpoint.restore_latest(
      manager, setup.abstract_state, make_train_iter,
      describe_mismatch=_describe_mismatch(workdir, config))
  if state is not None:
    logging.info("Resumed from the checkpoint of step %d in %s.", latest,
                 workdir)
  else:
    state = setup.init(jax.random.key(config.seed))
    loaded = task.pretrained(state)
    if loaded is not state:  # placed like the state the step expects
      state = jax.device_put(loaded, setup.state_sharding)
  step = int(jax.device_get(state.step))
  if is_primary:  # only now: a refused checkpoint leaves the old config
    checkpoint.write_config(
        workdir, config.to_json_best_effort(indent=2, sort_keys=True), step)
  if step >= tc.num_steps:
    logging.info("%s is already trained to step %d (config.train.num_steps="
                 "%d); raise num_steps to train on.", workdir, step,
                 tc.num_steps)
    if hasattr(train_iter, "close"):
      train_iter.close()
    return state
  consts = setup.constants()
  sample_batch = eval_ds[0] if eval_ds else None

  def write_samples(step):
    columns = jax.device_get(setup.sample(state, setup.put(sample_batch),
                                          consts))
    if not is_primary:
      return
    # This process's rows come first in the global batch.
    local = len(next(iter(sample_batch.values())))
    columns = {k: v[:local] for k, v in columns.items()}
    grid = task.sample_grid(columns, sample_batch)
    writer.write_images(step, {"samples": grid[None]})
    visualize.write_png(
        fileio.as_path(workdir) / "samples" / f"{step:08d}.png", grid)

  def run_eval(step):
    with timer.timed("eval"):
      summary = evaluate(setup, state, consts, eval_ds)
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
        batch = setup.put(next(train_iter))
      with timer.timed("step"):
        state, metrics = setup.train_step(state, batch, consts)
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
        scalars["data/skipped"] = getattr(train_iter, "skipped", 0)
        writer.write_scalars(step, {f"train/{k}": v
                                    for k, v in scalars.items()})
        line = _console_line(progress.format(step), scalars,
                             task.console_metrics)
        if scalars["data/skipped"]:
          line += f" | {scalars['data/skipped']} records skipped"
        logging.info("%s", line)
      if step % tc.checkpoint_every == 0 or last or preempted:
        guard.check(manager)
        with timer.timed("checkpoint"):
          checkpoint.save(manager, step, state, train_iter)
      if preempted:
        break
      if tc.image_every and (step % tc.image_every == 0 or last):
        write_samples(step)
      if tc.eval_every and (step % tc.eval_every == 0 or last):
        run_eval(step)
  finally:
    watcher.close()
    manager.wait_until_finished()
    # Closed, not only flushed: tensorboardX's flush leaves the events still
    # in its queue behind, and an event file in a bucket is uploaded whole
    # at each flush and at close.
    writer.close()
    if hasattr(train_iter, "close"):
      train_iter.close()  # stops grain worker processes
  if preempted:
    raise Preempted(step, watcher.signal_name or "Preemption")
  logging.info("Done: %d steps in %s.", step, workdir)
  return state
