"""Data parallel and FSDP, checked in the compiled training step.

Compile only (running the GAN step on eight fake devices would take
minutes): the real `train_step` of `configs/inpaint.py:tiny`, built by
`loop.build` exactly as training builds it, is lowered with the abstract
state, batch and constants and compiled for three meshes of eight devices:
data=8 x fsdp=1 (pure data parallel), 2 x 4 and 1 x 8. The executable then
says how much memory each device's arguments take, which collectives the
SPMD partitioner inserted, and how its inputs and outputs are sharded; the
tests compare that with what `sharding.state_shardings` and
`sharding.data_sharding` chose.

What XLA:CPU emits (jaxlib 0.10.2). Data parallel: one tuple all-reduce of
every gradient over the eight devices, no gather of any parameter. FSDP:
one all-gather of each sharded parameter over its `fsdp` group (the step
gathers them where used, `sharding.gathered`); the gradients summed whole
by one all-reduce over all devices, from which the optimiser update
dynamic-slices each device's shard; no reduce-scatter (XLA:CPU does not
form one; the GPU and TPU compilers can). All meshes also show an
all-gather of the int32 landmark indices (a scatter in the landmark map)
and all-to-alls and collective-permutes of activations where the GAN step
concatenates and splits batch halves (real|fake for the discriminator,
image|image*mask for VGG); the tests leave those alone.

The pytest process has four CPU devices (tests/conftest.py), so the compiles
run in one child process with eight: this file run as a script, which
prints a JSON report; the tests assert on it.
"""

import collections
import inspect
import json
import logging
import math
import pathlib
import re
import subprocess
import sys

import jax
from jax.extend import core as jex_core
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import inpaint as inpaint_config
from jaxface import sharding
from jaxface.train import loop
# pylint: enable=g-import-not-at-top,wrong-import-position

NUM_DEVICES = 8
MESHES = ((8, 1), (2, 4), (1, 8))  # (data, fsdp)
# LLVM optimisation off: compiles about three times faster. The SPMD
# partitioning (the collectives) and the buffer assignment (the memory
# figures) are HLO passes that run before code generation, and are the
# same with it on.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# The state's network parameters (the rest is optimiser state, spectral-norm
# vectors and the step).
PARAMS = ("g_params", "d_params")


def fsdp_config(data: int, fsdp: int):
  """`configs/inpaint.py:tiny` at 32 px with one residual block.

  The widths stay those of `tiny`, so that most kernels reach
  `state_shardings`' minimum size and are sharded; the smaller image and
  the single residual block only make the compile faster.
  """
  config = inpaint_config.get_config("tiny,size=32")
  config.model.generator.num_res_blocks = 1
  config.mesh.update(data=data, fsdp=fsdp)
  return config


# --------------------------------------------------------- the child process
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^)]*\)|\S+) ([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([\d,]*)\]")
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                "collective-permute")


def _arrays(shape_text: str) -> list[tuple[str, list[int]]]:
  """`f32[3,3]{1,0}` or a tuple of such -> [(dtype, dims), ...]."""
  return [(dtype, [int(d) for d in dims.split(",") if d])
          for dtype, dims in _ARRAY.findall(shape_text)]


def _group_size(attributes: str, num_devices: int) -> int | None:
  """Devices per replica group, from any of XLA's three spellings."""
  if re.search(r"replica_groups=\{\}", attributes):
    return num_devices  # one group of all devices
  explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
  if explicit:  # {{0,1,2,3},{4,5,6,7}}
    return len(explicit.group(1).split(","))
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=", attributes)
  if iota:  # [2,4]<=[8]: 2 groups of 4
    return int(iota.group(1).split(",")[-1])
  named = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}",
                    attributes)
  if named:  # mesh['axis_0'=2,'axis_1'=4] {'axis_1'}: groups along axis_1
    sizes = {a: int(n) for a, n in re.findall(r"'(\w+)'=(\d+)",
                                              named.group(1))}
    return math.prod(sizes[a] for a in re.findall(r"'(\w+)'",
                                                  named.group(2)))
  return None


def collectives(hlo_text: str, num_devices: int) -> dict[str, list]:
  """The collectives and dynamic slices of a compiled module's HLO text.

  Returns:
    For each collective op, a list of {outputs: [(dtype, dims)], group:
    devices per group, dimension (all-gather, reduce-scatter), factor: how
    many times larger (all-gather) or smaller (reduce-scatter) the result is
    along it, name: the op_name of its metadata}; for `dynamic-slice`
    (fused ones included), the result shapes.
  """
  shapes, found = {}, {op: [] for op in _COLLECTIVES + ("dynamic-slice",)}
  parsed = []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape_text, op, rest = m.groups()
    shapes[name] = _arrays(shape_text)
    parsed.append((op, shape_text, rest))
  for op, shape_text, rest in parsed:
    # XLA:CPU's collectives are synchronous; an asynchronous pair counts by
    # its start (whose result also holds the operand) so that none is
    # missed.
    op = op.removesuffix("-start")
    if op == "dynamic-slice":
      found[op].append(_arrays(shape_text))
    if op not in _COLLECTIVES:
      continue
    entry = {"outputs": _arrays(shape_text),
             "group": _group_size(rest, num_devices)}
    label = re.search(r'op_name="([^"]*)"', rest)
    entry["name"] = label.group(1) if label else ""
    dimension = re.search(r"dimensions=\{(\d+)\}", rest)
    if dimension and op in ("all-gather", "reduce-scatter"):
      d = int(dimension.group(1))
      operand = re.match(r"\s*%([\w.\-]+)", rest)
      inputs = shapes.get(operand.group(1)) if operand else None
      if inputs and len(inputs) == 1:
        big, small = entry["outputs"][0][1][d], inputs[0][1][d]
        if op == "reduce-scatter":
          big, small = small, big
        entry["dimension"], entry["factor"] = d, big // small
    found[op].append(entry)
  return found


def _read_inputs(fn, *args) -> list[bool]:
  """Per leaf of `args`: does the traced `fn` read it at all?

  jit drops the inputs a step never reads (`keep_unused=False`): here the
  spectral-norm `v` vectors (recomputed from `u` in each power iteration)
  and the batch keys the step ignores. They take no device memory in the
  compiled step, nor are they aliased to outputs.
  """
  jaxpr = fn.trace(*args).jaxpr.jaxpr
  read = {v for eqn in jaxpr.eqns for v in eqn.invars
          if isinstance(v, jex_core.Var)}
  read |= {v for v in jaxpr.outvars if isinstance(v, jex_core.Var)}
  return [v in read for v in jaxpr.invars]


def _leaves(tree, read: list[bool]) -> list[dict]:
  """Per leaf: path, shape, bytes in all and on one device, spec, read."""
  out = []
  for (path, leaf), used in zip(jax.tree.leaves_with_path(tree),
                                read):
    itemsize = np.dtype(leaf.dtype).itemsize
    out.append({
        "path": jax.tree_util.keystr(path), "shape": list(leaf.shape),
        "bytes": math.prod(leaf.shape) * itemsize,
        "shard_bytes": math.prod(leaf.sharding.shard_shape(leaf.shape))
                       * itemsize,
        "spec": [list(a) if isinstance(a, tuple) else a
                 for a in leaf.sharding.spec],
        "read": used})
  return out


def mesh_report(data: int, fsdp: int) -> dict:
  """Compiles the training step on a data x fsdp mesh; what it found."""
  setup = loop.build(fsdp_config(data, fsdp), jax.devices()[:NUM_DEVICES])
  args = (setup.abstract_state, setup.abstract_batch(),
          setup.abstract_constants())
  read = iter(_read_inputs(setup.train_step, *args))
  leaves = [_leaves(tree, [next(read) for _ in jax.tree.leaves(tree)])
            for tree in args]
  compiled = setup.train_step.lower(*args).compile(COMPILER_OPTIONS)
  memory = compiled.memory_analysis()
  state_out, _ = compiled.output_shardings
  return {
      "mesh": dict(setup.mesh.shape),
      "setup_line": setup.describe(),
      "memory": {"argument": memory.argument_size_in_bytes,
                 "output": memory.output_size_in_bytes,
                 "alias": memory.alias_size_in_bytes,
                 "temp": memory.temp_size_in_bytes},
      "state": leaves[0], "batch": leaves[1], "constants": leaves[2],
      "batch_is_data_sharded": all(
          x.sharding == setup.data_sharding
          for x in jax.tree.leaves(args[1])),
      # Paths of the state outputs not sharded as `state_shardings` says.
      "state_out_mismatches": [
          leaf["path"] for leaf, want, got in zip(
              leaves[0], jax.tree.leaves(setup.state_sharding),
              jax.tree.leaves(state_out), strict=True)
          if not want.is_equivalent_to(got, len(leaf["shape"]))],
      "hlo": collectives(compiled.as_text(), NUM_DEVICES),
  }


# ------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def reports() -> dict[tuple[int, int], dict]:
  """{(data, fsdp): the child's report}; all three compiles in one child."""
  result = subprocess.run([sys.executable, __file__], cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  found = json.loads(result.stdout.splitlines()[-1])
  return {(r["mesh"]["data"], r["mesh"]["fsdp"]): r for r in found}


def _numel(leaf: dict) -> int:
  return math.prod(leaf["shape"])


def _is_sharded(leaf: dict) -> bool:
  return any(a == "fsdp" or (isinstance(a, list) and "fsdp" in a)
             for a in leaf["spec"])


def _params(report: dict) -> list[dict]:
  return [leaf for leaf in report["state"] if leaf["path"].startswith(
      tuple(f".{name}" for name in PARAMS))]


def _floats(entry: dict) -> list[list[int]]:
  """The shapes of a collective's floating-point results."""
  return [dims for dtype, dims in entry["outputs"]
          if dtype.startswith(("f", "bf"))]


def _state_bytes(report: dict, sharded: bool | None = None) -> int:
  """Bytes of the state the step reads (all of it; or its (un)sharded part).

  The state leaves the step never reads are dropped by jit (see
  `_read_inputs`), so they are not counted here either.
  """
  return sum(leaf["bytes"] for leaf in report["state"] if leaf["read"] and (
      sharded is None or _is_sharded(leaf) == sharded))


def _held(report: dict, part: str) -> int:
  """Bytes of `part` ("state", "batch", "constants") one device holds."""
  return sum(leaf["shard_bytes"] for leaf in report[part] if leaf["read"])


def test_batch_is_split_over_both_axes(reports):
  for (data, fsdp), report in reports.items():
    global_batch = fsdp_config(data, fsdp).train.batch_size
    assert report["batch_is_data_sharded"]
    for leaf in report["batch"]:
      assert leaf["shape"][0] == global_batch, leaf
      assert leaf["spec"][0] == ["data", "fsdp"], leaf
      assert not any(leaf["spec"][1:]), leaf
      # Each device holds global / (data x fsdp) rows of every key.
      assert leaf["shard_bytes"] * NUM_DEVICES == leaf["bytes"], leaf
    per_device = global_batch // NUM_DEVICES
    assert (f"Mesh data={data} x fsdp={fsdp} over {NUM_DEVICES} cpu "
            f"device(s), 1 process(es). Batch: train {global_batch} global "
            f"= {global_batch}/process = {per_device}/device"
            ) in report["setup_line"]


def test_setup_line_counts_the_state(reports):
  for report in reports.values():
    sharded = [leaf for leaf in report["state"] if _is_sharded(leaf)]
    whole = [leaf for leaf in report["state"] if not _is_sharded(leaf)]
    held = sum(leaf["shard_bytes"] for leaf in report["state"])
    assert (
        f"State: {sum(map(_numel, sharded)):,} values in {len(sharded)} "
        f"arrays sharded over fsdp, {sum(map(_numel, whole)):,} in "
        f"{len(whole)} replicated; {held / 2**20:.2f} MiB per device."
    ) in report["setup_line"]


def test_state_shardings_split_moments_like_parameters(reports):
  # `state_shardings`' default, which `loop.build` uses.
  min_size = inspect.signature(
      sharding.state_shardings).parameters["min_fsdp_size"].default
  for (_, fsdp), report in reports.items():
    specs = {leaf["path"]: leaf["spec"] for leaf in report["state"]}
    for param in _params(report):
      for moment in ("mu", "nu"):
        # .g_params['x']['kernel'] -> .g_opt[0].mu['x']['kernel']
        net = param["path"][1]
        path = param["path"].replace(f".{net}_params",
                                     f".{net}_opt[0].{moment}")
        assert specs[path] == param["spec"], path
    for leaf in report["state"]:
      if fsdp == 1:
        assert not _is_sharded(leaf), leaf
      else:  # Only small leaves (biases, spectral-norm vectors) stay whole.
        assert _is_sharded(leaf) == (_numel(leaf) >= min_size), leaf


def test_state_outputs_keep_their_shardings_and_buffers(reports):
  for report in reports.values():
    assert report["state_out_mismatches"] == []
    # The donated state is updated in place: each state input the step
    # reads is aliased to its output, shard for shard.
    assert report["memory"]["alias"] == _held(report, "state")


def test_argument_bytes_per_device(reports):
  dp, f8 = reports[(NUM_DEVICES, 1)], reports[(1, NUM_DEVICES)]
  whole = _state_bytes(dp)
  sharded = _state_bytes(f8, sharded=True)  # the arrays FSDP splits
  replicated = whole - sharded  # the small ones, kept whole
  for (data, fsdp), report in reports.items():
    memory = report["memory"]
    # Exactly what the shardings say: the state's shards, this device's
    # rows of the batch and the replicated constants (the loss network).
    assert memory["argument"] == (_held(report, "state")
                                  + _held(report, "batch")
                                  + _held(report, "constants")), (data, fsdp)
    assert _state_bytes(report) == whole
    if fsdp > 1:
      assert _state_bytes(report, sharded=True) == sharded
    # The split arrays take 1/fsdp of their bytes on a device, the rest all
    # of theirs; the batch rows and the constants are the same on every
    # mesh, so the arguments shrink by what FSDP saves and nothing else.
    assert sharded % fsdp == 0
    assert _held(report, "state") == sharded // fsdp + replicated
    assert memory["argument"] == (dp["memory"]["argument"] - sharded
                                  + sharded // fsdp)
  # At 1 x 8: an eighth of the whole state plus 7/8 of the small arrays.
  assert NUM_DEVICES * _held(f8, "state") == whole + (
      NUM_DEVICES - 1) * replicated
  assert f8["memory"]["argument"] < dp["memory"]["argument"]


def test_data_parallel_all_reduces_gradients_gathers_no_parameters(reports):
  report = reports[(NUM_DEVICES, 1)]
  hlo, params = report["hlo"], _params(report)
  sizes = {_numel(p) for p in params}
  # Every parameter's gradient is summed over the eight devices (XLA
  # combines them into one tuple all-reduce).
  reduced = collections.Counter(
      math.prod(dims) for entry in hlo["all-reduce"]
      if entry["group"] == NUM_DEVICES for dims in _floats(entry))
  assert not collections.Counter(map(_numel, params)) - reduced
  # Nothing is gathered but integer batch metadata (the landmark indices
  # of a scatter): no parameter, no activation.
  assert all(not _floats(entry) for entry in hlo["all-gather"]), (
      hlo["all-gather"])
  assert not hlo["reduce-scatter"]
  assert not {math.prod(d) for e in hlo["all-reduce"] for d in _floats(e)
              } - sizes - {1}


@pytest.mark.parametrize("data,fsdp", [m for m in MESHES if m[1] > 1])
def test_fsdp_gathers_parameters_and_reduces_gradients_to_shards(
    reports, data, fsdp):
  report = reports[(data, fsdp)]
  hlo, params = report["hlo"], _params(report)
  sharded = [p for p in params if _is_sharded(p)]
  assert sharded
  # 1. Each sharded parameter is all-gathered once, over the `fsdp` devices
  # of its row of the mesh, along the dimension it is split on, for the
  # forward and backward passes (`sharding.gathered` in the step). Nothing
  # else in floating point is gathered: no activations (the partitioner's
  # channel-parallel alternative, see `sharding.gathered`).
  gathers = [(math.prod(dims), dims[entry["dimension"]]
              if "dimension" in entry else None, entry.get("factor"),
              entry["group"])
             for entry in hlo["all-gather"] for dims in _floats(entry)]
  expected = [(_numel(p), p["shape"][p["spec"].index("fsdp")], fsdp, fsdp)
              for p in sharded]
  assert sorted(gathers) == sorted(expected)
  # 2. Gradients. XLA:CPU forms no reduce-scatter: each gradient is summed
  # whole over all data x fsdp devices (one tuple all-reduce) and the
  # optimiser update dynamic-slices this device's shard out of it. (The GPU
  # and TPU compilers can fuse that pair into a reduce-scatter over `fsdp`
  # plus an all-reduce over `data`; either form is accepted here.)
  whole = collections.Counter(
      math.prod(dims) for entry in hlo["all-reduce"]
      if entry["group"] == data * fsdp for dims in _floats(entry))
  scattered = collections.Counter(
      math.prod(dims) for entry in hlo["reduce-scatter"]
      for dims in _floats(entry))
  sliced = collections.Counter(
      math.prod(dims) for shapes in hlo["dynamic-slice"]
      for _, dims in shapes)
  for p in sharded:
    shard = _numel(p) // fsdp
    assert scattered[shard] or (whole[_numel(p)] and sliced[shard]), p
  assert not collections.Counter(
      _numel(p) for p in params if not _is_sharded(p)) - whole
  # No activation is all-reduced either: only gradients and scalar sums.
  sizes = {_numel(p) for p in params}
  assert not {math.prod(d) for e in hlo["all-reduce"] for d in _floats(e)
              } - sizes - {1}


def test_unshardable_large_arrays_are_named(caplog):
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4)))
  tree = {"odd": jax.ShapeDtypeStruct((5, 7, 9, 61), np.float32),
          "conv": jax.ShapeDtypeStruct((3, 3, 64, 64), np.float32),
          "bias": jax.ShapeDtypeStruct((3,), np.float32)}
  with caplog.at_level(logging.WARNING):
    specs = jax.tree.map(lambda s: s.spec,
                         sharding.state_shardings(mesh, tree))
  assert specs == {"odd": P(), "conv": P(None, None, "fsdp", None),
                   "bias": P()}
  assert "config.mesh.fsdp=4" in caplog.text
  assert "['odd'] (5, 7, 9, 61)" in caplog.text and "conv" not in caplog.text


def test_batch_errors_name_the_key_and_the_mesh():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2)))
  assert sharding.per_process_batch(8, "train.batch_size", mesh) == 8
  with pytest.raises(ValueError, match=r"config\.eval\.batch_size=6 .* 4 "
                     r"devices .* \(mesh data=2 x fsdp=2\)"):
    sharding.per_process_batch(6, "eval.batch_size", mesh)


def test_gathered_is_a_no_op_outside_a_mesh():
  x = np.arange(6.0, dtype=np.float32)
  np.testing.assert_array_equal(jax.jit(sharding.gathered)(x), x)


def main():
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", NUM_DEVICES)
  print(json.dumps([mesh_report(*m) for m in MESHES]))


if __name__ == "__main__":
  main()
