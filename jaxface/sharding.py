"""Device mesh and partitioning: `jax.jit` with `NamedSharding` (no pmap).

The mesh has two axes:
* `data`: data parallelism; the batch is split over it, parameters replicated;
* `fsdp`: also splits the batch, and additionally shards each large parameter
  (and its optimiser moments) along one dimension, ZeRO-3 style; a step
  gathers the parameters where it uses them (`gathered`). 1 by default.

The same code runs on one CPU, several fake CPU devices in tests, a GPU host
or a TPU pod slice (one process per host; see `jaxface.main`).
"""

from typing import Any, Sequence

from absl import logging
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
  dimension. The spec depends on the shape alone, so optimiser moments are
  split like their parameters. A warning names the large leaves that no
  dimension lets split (e.g. fsdp=6 with power-of-two channel counts):
  they stay whole on every device.
  """
  fsdp = mesh.shape["fsdp"]
  leaves, treedef = jax.tree.flatten_with_path(abstract_state)
  specs = [_fsdp_spec(tuple(x.shape), fsdp, min_fsdp_size)
           for _, x in leaves]
  whole = [(jax.tree_util.keystr(path), x) for (path, x), spec
           in zip(leaves, specs) if fsdp > 1 and spec == P()
           and int(np.prod(x.shape, dtype=np.int64)) >= min_fsdp_size]
  if whole:
    mib = sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
              for _, x in whole) / 2**20
    logging.warning(
        "config.mesh.fsdp=%d divides no dimension of %d arrays of at least "
        "%d values (%.1f MiB, e.g. %s %s): they stay replicated on every "
        "device. An fsdp size that divides the channel counts (a power of "
        "two) shards them.", fsdp, len(whole), min_fsdp_size, mib,
        whole[0][0], tuple(whole[0][1].shape))
  return jax.tree.unflatten(treedef,
                            [NamedSharding(mesh, spec) for spec in specs])


def gathered(tree: Any) -> Any:
  """`tree` replicated over the mesh the step is traced under.

  For FSDP, a step calls this on its parameters where it uses them (they
  are all-gathered) and on their gradients before the optimiser update
  (summed whole over the batch's devices; the update then slices each to
  the shard its optimiser state has: an all-reduce and a dynamic-slice,
  which XLA's GPU and TPU compilers can fuse into a reduce-scatter). Left
  to itself, XLA's SPMD partitioner may instead carry a parameter's `fsdp`
  sharding into the backward pass and run a layer channel-parallel over the
  whole global batch: every device then holds all examples' activations
  and all-reduces their gradients (the inpainting step at 256 px on 1 x 8
  devices needed 2.3 times the temporary memory of pure data parallelism).

  A no-op outside a mesh (`loop.build` traces the training step under
  its own) and wherever `tree` is already replicated (`fsdp=1`).
  """
  if jax.sharding.get_abstract_mesh().empty:
    return tree
  return jax.lax.with_sharding_constraint(tree, P())


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
                     f"the {multiple} devices the batch is split over "
                     f"(mesh data={mesh.shape['data']} x "
                     f"fsdp={mesh.shape['fsdp']})")
  processes = len({d.process_index for d in mesh.devices.flat})
  return int(size) // processes
