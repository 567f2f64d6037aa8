"""Device mesh and partitioning: `jax.jit` with `NamedSharding` (no pmap).

The mesh has two axes:
* `data`: data parallelism; the batch is split over it, parameters replicated;
* `fsdp`: also splits the batch, and additionally shards each large parameter
  (and its optimiser moments) along one dimension, ZeRO-3 style. 1 by default.

The same code runs on one CPU, several fake CPU devices in tests, a GPU host
or a TPU pod slice (one process per host; see `jaxface.main`).
"""

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (`data`, `fsdp`) mesh from `config.mesh`.

  Args:
    config: with `data` (-1 = all remaining devices) and `fsdp` sizes.
    devices: defaults to all devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  fsdp = int(config.fsdp)
  data = int(config.data)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} must be >= 1 and divide the "
                     f"{n} devices")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f"config.mesh: data={config.data} x fsdp={fsdp} does not "
                     f"match the {n} devices available")
  return jax.make_mesh((data, fsdp), DATA_AXES,
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_multiple(mesh: Mesh) -> int:
  """The global batch size must be a multiple of this."""
  return int(np.prod([mesh.shape[a] for a in DATA_AXES]))


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  # Shard the largest dimension that divides evenly.
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state: Any,
                    min_fsdp_size: int = 2**14) -> Any:
  """NamedShardings for a state pytree (leaves: arrays or ShapeDtypeStructs).

  Replicated when the `fsdp` axis has size 1; otherwise every leaf with at
  least `min_fsdp_size` elements is split along its largest evenly divisible
  dimension.
  """
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp,
                                                min_fsdp_size)),
      abstract_state)


def put_batch(batch: dict[str, np.ndarray],
              sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's shard of it."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def per_process_batch(size: int, key: str, mesh: Mesh) -> int:
  """This process's share of a global batch of `size`.

  The one place batch sizes are checked: the global batch must split evenly
  over the mesh's data-parallel devices (and so over its processes).

  Args:
    size: the global batch size.
    key: the config key it came from, for the error message.
    mesh: the mesh the batch is sharded over.

  Raises:
    ValueError: naming `config.<key>`.
  """
  multiple = batch_multiple(mesh)
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (
      size < 1 or size % multiple):
    raise ValueError(f"config.{key}={size!r} must be a positive multiple of "
                     f"the {multiple} data-parallel devices")
  processes = len({d.process_index for d in mesh.devices.flat})
  return int(size) // processes
