"""Checkpoints and the workdir: what a run may trust when it starts again.

Checkpoints: orbax `CheckpointManager` with the train state and the data
iterator in one step directory. Orbax writes each step into a temporary
directory and renames it when complete, so a checkpoint is never left
half-written. Saves are asynchronous (the device arrays are copied to host
memory before `save` returns, so the next step may donate them).

On start, `restore_latest` takes the newest checkpoint that restores: one
that cannot (missing or truncated files, unreadable metadata, a stray
folder) is reported by step, moved aside to `checkpoints.damaged/`, and the
previous one is tried. Every saved array carries a checksum (`checksums`,
computed on the devices), verified after restoring: altered bytes that still
decode are damage too. A checkpoint whose arrays do not match the config's
state (other shapes or keys) is not damaged but foreign: it is refused
(`CheckpointMismatchError`) before anything is written.

Retention: the newest `max_to_keep` checkpoints, plus every step that is a
multiple of `keep_every` (when set) for good.

`WorkdirLock` keeps two runs out of one workdir (on a local file system).

The workdir may be a local path or a `gs://` URL: every path goes through
`jaxface.fileio` (`etils.epath`).
"""

import datetime
import fcntl
import functools
import json
import os
import socket
from typing import Any, Callable

from absl import logging
from etils import epath
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxface import fileio

STATE, DATA, CHECKSUMS = "state", "data", "checksums"
LOCK_FILE = "lock"
DAMAGED_DIR = "checkpoints.damaged"


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint holds another model than the config builds."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class ChecksumError(ValueError):
  """Restored arrays differ from what was saved."""


def make_manager(workdir: str, *, max_to_keep: int, keep_every: int = 0,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """A manager over `<workdir>/checkpoints`; saving cadence is the caller's.

  Keeps the newest `max_to_keep` checkpoints and, when `keep_every` > 0,
  every step that is a multiple of it.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, keep_period=keep_every or None, create=True,
      enable_async_checkpointing=asynchronous)
  # Handlers named up front, so that a new manager (a restarted run) can read
  # a checkpoint's metadata before restoring it.
  return ocp.CheckpointManager(
      fileio.as_path(workdir) / "checkpoints", options=options,
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     DATA: grain.checkpoint.CheckpointHandler(),
                     CHECKSUMS: ocp.JsonCheckpointHandler()})


# ------------------------------------------------------------------ checksums
def _words(x: jax.Array) -> jax.Array:
  """The bits of an array as a flat uint32 vector (any dtype)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = x.dtype.itemsize * 8
  unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}
  words = jax.lax.bitcast_convert_type(x, unsigned[bits])
  return words.astype(jnp.uint32).reshape(-1)


def _mix(w: jax.Array, i: jax.Array, seed: int) -> jax.Array:
  """A bijection of each word, different at every position (murmur3's
  finaliser applied to word ^ position hash)."""
  h = w ^ ((i + np.uint32(seed)) * np.uint32(0x9E3779B9))
  h = (h ^ (h >> 16)) * np.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _checksum(x: jax.Array) -> jax.Array:
  """Two 32-bit sums of position-mixed words: uint32 [2].

  The mix is a bijection of each word, so changing any one word changes
  both sums; it depends on the position, so swapped words show too.
  Computed where the arrays live (sums of sharded arrays reduce across
  devices), so saving copies nothing extra to the host.
  """
  w = _words(x)
  i = jnp.arange(w.size, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(_mix(w, i, seed), dtype=jnp.uint32)
                    for seed in (0x243F6A88, 0x13198A2E)])


@functools.lru_cache(maxsize=8)
def _checksums_fn(out_sharding: jax.sharding.Sharding | None) -> Callable:
  return jax.jit(lambda state: jax.tree.map(_checksum, state),
                 out_shardings=out_sharding)


def checksums(state: Any) -> dict[str, str]:
  """{key path: 16 hex digits} for every array of `state`."""
  # Replicated sums: every process (multi-host too) can read all of them.
  shardings = [x.sharding for x in jax.tree.leaves(state)
               if isinstance(getattr(x, "sharding", None),
                             jax.sharding.NamedSharding)]
  replicated = (jax.sharding.NamedSharding(shardings[0].mesh,
                                           jax.sharding.PartitionSpec())
                if shardings else None)
  sums = jax.device_get(_checksums_fn(replicated)(state))
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  # keystr: unambiguous, unlike names joined with "/".
  return {jax.tree_util.keystr(path): f"{int(s[0]):08x}{int(s[1]):08x}"
          for path, s in flat}


def _saved_items(step_dir: epath.Path) -> set[str]:
  """The items a step's metadata says were saved (empty if unreadable)."""
  try:
    meta = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
    return set(meta.get("item_handlers") or ())
  except (OSError, ValueError, AttributeError):
    return set()


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: grain.DatasetIterator | None) -> None:
  """Saves state, its checksums (+ iterator position) as `step`."""
  items = {STATE: ocp.args.StandardSave(state),
           CHECKSUMS: ocp.args.JsonSave(checksums(state))}
  if data_iterator is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: grain.DatasetIterator | None) -> Any:
  """Restores `step` into arrays shaped and sharded like `abstract_state`.

  The iterator, when given, is moved to the saved position in place.

  Raises:
    ChecksumError: a restored array differs from the one saved.
  """
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
  step_dir = epath.Path(manager.directory) / str(step)
  has_sums = (step_dir / CHECKSUMS).exists()
  if not has_sums and CHECKSUMS in _saved_items(step_dir):
    raise ChecksumError("its checksums are missing")
  if has_sums:
    items[CHECKSUMS] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  state = restored[STATE]
  if not has_sums:
    logging.warning("The checkpoint of step %d has no checksums (saved by an "
                    "older jaxface); its arrays are not verified.", step)
    return state
  saved, now = restored[CHECKSUMS], checksums(state)
  changed = sorted(k for k in set(saved) | set(now)
                   if saved.get(k) != now.get(k))
  if changed:
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    raise ChecksumError(f"arrays differ from their checksums: "
                        f"{', '.join(changed[:3])}{more}")
  return state


def abstract_like(state_shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state_shapes, shardings)


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{"a/b/c": shape} of the arrays of a state or of checkpoint metadata."""
  flat = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(
          x, (dict, list, tuple)))[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in flat}


def mismatches(manager: ocp.CheckpointManager, step: int,
               abstract_state: Any) -> list[str] | None:
  """How the saved state of `step` differs from `abstract_state`.

  Returns:
    None when the checkpoint's metadata cannot be read (a damaged or stray
    checkpoint), [] when every array matches, else one line per differing
    array ("g_params/enc/kernel: (3, 3, 8, 16) saved, (3, 3, 8, 32) now").
  """
  try:
    saved = _shapes(manager.item_metadata(step)[STATE].tree)
  except Exception:  # pylint: disable=broad-except
    return None
  wanted = _shapes(abstract_state)
  out = []
  for key in sorted(set(saved) | set(wanted)):
    if key not in saved:
      out.append(f"{key}: not in the checkpoint")
    elif key not in wanted:
      out.append(f"{key}: in the checkpoint only")
    elif saved[key] != wanted[key]:
      out.append(f"{key}: {saved[key]} saved, {wanted[key]} now")
  return out


def _quarantine(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves a damaged step aside (out of the manager's view)."""
  root = epath.Path(manager.directory)
  target = root.parent / DAMAGED_DIR / f"{step}-{_timestamp()}"
  fileio.move_tree(root / str(step), target)
  manager.reload()
  return os.fspath(target)


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any,
    make_iterator: Callable[[], Any], *, describe_mismatch: Callable[
        [int, list[str]], str]) -> tuple[Any, int | None, Any]:
  """The newest checkpoint that restores, falling back over damaged ones.

  Args:
    manager: the workdir's manager.
    abstract_state: shapes, dtypes and shardings to restore into.
    make_iterator: returns a fresh data iterator (restored in place; a
      failed restore may leave it anywhere, so each try gets a new one).
    describe_mismatch: `(step, mismatches) -> message` for the error raised
      when a readable checkpoint holds another model.

  Returns:
    (state or None, its step or None, the data iterator at its position).

  Raises:
    CheckpointMismatchError: the newest readable checkpoint does not match
      `abstract_state`; nothing was changed.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    problems = mismatches(manager, step, abstract_state)
    if problems:
      raise CheckpointMismatchError(describe_mismatch(step, problems))
    iterator = make_iterator()
    if problems is None:
      error = "its metadata cannot be read"
    else:
      try:
        return restore(manager, step, abstract_state, iterator), step, iterator
      except Exception as e:  # pylint: disable=broad-except
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if hasattr(iterator, "close"):
      iterator.close()
    moved = (_quarantine(manager, step) if jax.process_index() == 0
             else "(left in place by this process)")
    logging.warning("The checkpoint of step %d in %s is damaged (%s); moved "
                    "to %s, trying the previous one.", step,
                    manager.directory, error, moved)
  return None, None, make_iterator()


def _timestamp() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y%m%dT%H%M%SZ")


def write_config(workdir: str, config_json: str, step: int) -> None:
  """`config.json` (the latest start) and `starts/<time>-step<N>.json`.

  Called once the state is restored (or initialised), so a refused start
  leaves the workdir's config as it was.
  """
  root = fileio.as_path(workdir)
  for path in (root / "config.json",
               root / "starts" / f"{_timestamp()}-step{step}.json"):
    fileio.write_atomic(path, config_json)


class WorkdirLock:
  """An exclusive lock on a workdir, held for the life of a run.

  `<workdir>/lock` is locked with `flock`, which the kernel releases when
  the holding process dies however it dies, so a lock left by a killed run
  is recovered by the next start; the file names its holder (host, pid,
  start time) for the message a second run prints. Local file systems only:
  a bucket has no such lock, so a `gs://` workdir is not locked (a warning
  says so) and nothing keeps a second run out of it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises `WorkdirLockedError` naming the holder."""
    if not fileio.is_local(self.path):
      logging.warning(
          "%s is not on a local file system: no workdir lock is taken, so "
          "nothing keeps a second run out of it; make sure only one run "
          "uses it.", os.path.dirname(self.path))
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)} is in use by another run ("
          f"{holder}); wait for it to finish or stop it, or use another "
          "--workdir") from None
    previous = _read_holder(fd)
    if previous:
      logging.info("Took over the workdir lock of a run that ended (%s).",
                   previous)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": _timestamp()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)  # an unheld lock names nobody
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
  except (ValueError, OSError):
    return "holder unknown"
  if not info:
    return ""
  return (f"pid {info.get('pid')} on {info.get('host')}, since "
          f"{info.get('since')}")
