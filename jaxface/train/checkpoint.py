"""Checkpoints: orbax `CheckpointManager` with the train state and the data
iterator in one step directory.

Orbax writes each step into a temporary directory and renames it when
complete, so a checkpoint is never left half-written: a run killed while
saving resumes from the previous complete step. Saves are asynchronous (the
device arrays are copied to host memory before `save` returns, so the next
step may donate them).
"""

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

STATE, DATA = "state", "data"


def make_manager(workdir: str, *, max_to_keep: int,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """A manager over `<workdir>/checkpoints`; saving cadence is the caller's."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: grain.DatasetIterator | None) -> None:
  """Saves state (+ iterator position) as `step`, unconditionally."""
  items = {STATE: ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: grain.DatasetIterator | None) -> Any:
  """Restores `step` into arrays shaped and sharded like `abstract_state`.

  The iterator, when given, is moved to the saved position in place.
  """
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored[STATE]


def abstract_like(state_shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state_shapes, shardings)
