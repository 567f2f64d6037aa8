r"""Ahead-of-time compile of any task's training step for any device target.

Compiles the real `train_step` of a registered task for a TPU topology on
this (CPU-only) machine, and prints per batch size what XLA says about it:
per-device memory against the chip's HBM, FLOPs, and the compiler's
cost-model time estimate.

  # A TPU v5e slice of 2x2 chips (needs libtpu, the `tpu` extra):
  python -m jaxface.aot --config=configs/inpaint.py --topology=v5e:2x2 \
      --batch_sizes=16,32,64 --dtype=bfloat16
  # The local CPU devices, for comparison (no libtpu needed):
  python -m jaxface.aot --config=configs/inpaint.py:tiny --topology=cpu \
      --cpu_devices=4

Topologies are `GENERATION:AxB` (v5e, v6e) or `GENERATION:AxBxC` (v4, v5p)
in chips, as in the Cloud TPU docs: v5e:2x2, v5e:4x4, v6e:2x2, v5p:2x2x1,
v4:2x2x1; `cpu` (the default) compiles for the local CPU devices. v4 and
v5p are compiled as megacore (one JAX device per chip, as their TPU VMs run).

The step is built exactly as training builds it: `loop.build(config,
devices)` over the target's devices, then `Setup.train_step` lowered with
`Setup.abstract_state`, `Setup.abstract_batch(batch_size)` and
`Setup.abstract_constants()`. A new task gets this command for free.

How libtpu runs on a machine without TPUs: install the `tpu` extra into a
virtual environment of its own (libtpu in the test environment could change
what JAX does at start-up):

  python3 -m venv ../tpuvenv && ../tpuvenv/bin/pip install \
      -c constraints.txt -e ".[tpu]"

This module always runs JAX on the CPU backend (`jax_platforms=cpu`, set in
`main`; `JAX_PLATFORMS=cpu` in the environment does the same), so libtpu is
never asked for a TPU: `jax.experimental.topologies.get_topology_desc` loads
it as a PJRT plugin only to describe the topology's devices and compile for
them. Nothing needs setting by hand: JAX itself sets `TPU_SKIP_MDS_QUERY=1`
when it finds no TPU chip (no metadata-server queries, no timeouts); here
`TPU_WORKER_HOSTNAMES` defaults to `localhost` (silences a spurious libtpu
error about worker hostnames) and `ALLOW_MULTIPLE_LIBTPU_LOAD` to 1 (no chip
is opened, so compiling processes need not exclude each other through
/tmp/libtpu_lockfile). For TPU targets the command runs itself in a child
process with an unlimited stack size limit, started again if it segfaults:
libtpu 0.0.42 otherwise crashes compiling for v6e slices of 4+ chips (see
`_run_in_children`). libtpu still prints one harmless line, "Failed
to find host bounds for accelerator type: WARNING: could not determine TPU
accelerator type ...": the topology is given explicitly.

What the figures are (all from the compiled executable, nothing is run):

- memory, per device: `compiled.memory_analysis()`; total = arguments +
  outputs - aliased (donated state reused as output) + temporaries +
  generated code, compared with the chip's HBM (`HBM_GIB`, public figures).
  A step that cannot fit fails to compile; its row says so.
- FLOPs, per device: `compiled.cost_analysis()["flops"]` counts one device's
  SPMD program (checked: the tiny step's count on 4 CPU devices is a quarter
  of the count on 1). GFLOP/img multiplies back by the device count.
- estimate: the TPU compiler's cost model (`optimal_seconds` in
  `cost_analysis()`) for one step; an ESTIMATE, not a measurement, and
  absent on CPU. A non-positive value means the model gave no estimate and
  is shown as n/a. img/s/chip = batch / estimate / chips.
"""

import dataclasses
import functools
import importlib.util
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import topologies
import ml_collections
from ml_collections import config_flags

from jaxface import config_utils
from jaxface import logging_utils
from jaxface.train import loop

# Public per-chip HBM capacity of each TPU generation (Cloud TPU system
# architecture pages), in GiB.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}

# Generation -> (topology rank, libtpu chip config). v4 and v5p have two
# TensorCores per chip that their VMs run as one device ("megacore").
_GENERATIONS = {"v4": (3, "megacore"), "v5p": (3, "megacore"),
                "v5e": (2, "default"), "v6e": (2, "default")}
_HOST_BOUNDS = (2, 2, 1)  # libtpu's default chips per host
EXAMPLES = ("cpu", "v5e:2x2", "v5e:4x4", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1")

# The table's columns, in order.
COLUMNS = ("batch", "batch/dev", "args_MiB", "out_MiB", "alias_MiB",
           "temp_MiB", "code_MiB", "total_MiB", "%HBM", "GFLOP/dev",
           "GFLOP/img", "est_ms", "img/s/chip", "compile_s")

def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command's flags, defined only when it runs as a command (importing
  this module next to another command's module defines no clashing flags)."""
  return dict(
      config=config_flags.DEFINE_config_file(
          "config", "configs/inpaint.py",
          "Experiment config (configs/*.py[:args]).", lock_config=True),
      topology=flags.DEFINE_string(
          "topology", "cpu", "Compile target: a TPU topology in chips such as "
          f"{', '.join(EXAMPLES[1:])}, or cpu (the local CPU devices)."),
      batch_sizes=flags.DEFINE_list(
          "batch_sizes", [],
          "Global batch sizes (default: config.train.batch_size)."),
      dtype=flags.DEFINE_enum(
          "dtype", None, sorted(config_utils.DTYPES),
          "config.compute_dtype (default: the config's)."),
      cpu_devices=flags.DEFINE_integer(
          "cpu_devices", 1,
          "--topology=cpu: how many CPU devices to compile for."),
  )


class TopologyError(ValueError):
  """An unknown or unusable `--topology` (or libtpu missing for it)."""


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile target: a TPU topology or the local CPU devices."""
  name: str  # "cpu" or as given, e.g. "v5e:2x2"
  platform: str  # "cpu" | "tpu"
  generation: str | None = None  # a key of HBM_GIB
  dims: tuple[int, ...] = ()  # the chip grid

  @property
  def hbm_bytes(self) -> int | None:
    """HBM of one chip (None on CPU)."""
    return HBM_GIB[self.generation] * 2**30 if self.generation else None


def parse_topology(text: str | None) -> Target:
  """Parses `--topology`: "cpu", "" or None (the CPU), or e.g. "v5e:2x2".

  Raises:
    TopologyError: saying what is wrong, with examples of valid names.
  """
  text = (text or "cpu").strip().lower()
  if text == "cpu":
    return Target("cpu", "cpu")
  hint = (f"expected cpu or GENERATION:AxB[xC] with GENERATION one of "
          f"{', '.join(sorted(_GENERATIONS))}, e.g. {', '.join(EXAMPLES)}")
  generation, sep, shape = text.partition(":")
  if not sep or generation not in _GENERATIONS:
    raise TopologyError(f"--topology={text!r}: unknown topology; {hint}")
  try:
    dims = tuple(int(d) for d in shape.split("x"))
  except ValueError:
    dims = ()
  rank = _GENERATIONS[generation][0]
  if len(dims) != rank or min(dims) < 1:
    raise TopologyError(f"--topology={text!r}: {generation} topologies are "
                        f"{rank}-D chip grids ({'x'.join('N' * rank)}); {hint}")
  return Target(text, "tpu", generation, dims)


def libtpu_available() -> bool:
  """Whether libtpu (the `tpu` extra) is installed."""
  return importlib.util.find_spec("libtpu") is not None


def target_devices(target: Target) -> list[jax.Device]:
  """The devices to build the mesh over: compile-only ones for a TPU."""
  if target.platform == "cpu":
    return jax.devices("cpu")
  if not libtpu_available():
    raise TopologyError(
        f"--topology={target.name} needs libtpu: install the tpu extra "
        "(pip install -c constraints.txt -e '.[tpu]'), best in a virtual "
        "environment of its own; see `python -m jaxface.aot --help`.")
  # Read when libtpu initialises (the first topology call). One host, no
  # chips opened: several compiling processes may share the machine (libtpu
  # otherwise holds /tmp/libtpu_lockfile for the process's lifetime).
  if not (os.environ.get("TPU_WORKER_HOSTNAMES")
          or os.environ.get("TPU_PROCESS_ADDRESSES")):
    os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kwargs = {"chip_config_name": _GENERATIONS[target.generation][1]}
  # Slices smaller than one host (v5e:1x1) need host bounds that divide them.
  padded = target.dims + (1,) * (3 - len(target.dims))
  if any(d < h for d, h in zip(padded, _HOST_BOUNDS)):
    kwargs["chips_per_host_bounds"] = tuple(
        min(d, h) for d, h in zip(padded, _HOST_BOUNDS))
  try:
    return list(topologies.get_topology_desc(target.name, "tpu",
                                             **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except
    raise TopologyError(f"--topology={target.name}: libtpu refused it: "
                        f"{str(e).splitlines()[0]}; e.g. "
                        f"{', '.join(EXAMPLES)}") from e


@dataclasses.dataclass
class Row:
  """What XLA reports for one compiled step (bytes and FLOPs per device)."""
  batch_size: int
  num_devices: int
  num_chips: int
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  flops: float = 0.0
  estimate_s: float | None = None  # XLA's cost model, when it gives one
  cost: dict[str, float] = dataclasses.field(default_factory=dict)
  compile_s: float = 0.0
  error: str | None = None  # why it did not compile (e.g. out of memory)

  @property
  def total_bytes(self) -> int:
    """Device memory the step needs at its peak, as XLA planned it."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.code_bytes)

  @property
  def images_per_s_per_chip(self) -> float | None:
    if not self.estimate_s:
      return None
    return self.batch_size / self.estimate_s / self.num_chips


def cost_analysis(compiled) -> dict[str, float]:
  """`cost_analysis()` without its per-operand entries ("bytes accessed0{}")."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return {k: float(v) for k, v in (cost or {}).items()
          if "{" not in k and isinstance(v, (int, float))}


def _with(config: ml_collections.ConfigDict, batch_size: int,
          dtype: str | None) -> ml_collections.ConfigDict:
  """A copy of `config` with this batch size and compute dtype."""
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch_size
  # `build` also checks the evaluation batch against the mesh; only the
  # train step is compiled here, so give it a size that fits any mesh the
  # train batch fits.
  config.eval.batch_size = batch_size
  if dtype:
    config.compute_dtype = dtype
  return config


def compile_step(config: ml_collections.ConfigDict,
                 devices: Sequence[jax.Device], batch_size: int,
                 dtype: str | None = None) -> Row:
  """Compiles `config.task`'s training step over `devices` and analyses it.

  Args:
    config: the experiment config (not modified).
    devices: the mesh's devices (compile-only TPU devices are fine).
    batch_size: the global batch size.
    dtype: `config.compute_dtype` to use instead of the config's.

  Returns:
    The row; `error` is set if XLA could not compile it (e.g. the step does
    not fit in memory).

  Raises:
    ValueError: a bad config or batch size (naming the config key).
  """
  setup = loop.build(_with(config, batch_size, dtype), devices=devices)
  # Chips: distinct (slice, coordinates); a CPU device counts as one.
  num_chips = len({(d.platform, getattr(d, "slice_index", 0),
                    tuple(getattr(d, "coords", ())) or d.id)
                   for d in devices})
  row = Row(batch_size, len(devices), num_chips)
  lowered = setup.train_step.lower(setup.abstract_state,
                                   setup.abstract_batch(batch_size),
                                   setup.abstract_constants())
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    row.error = str(e).strip().splitlines()[0]
    return row
  finally:
    row.compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is not None:
    row.argument_bytes = mem.argument_size_in_bytes
    row.output_bytes = mem.output_size_in_bytes
    row.alias_bytes = mem.alias_size_in_bytes
    row.temp_bytes = mem.temp_size_in_bytes
    row.code_bytes = mem.generated_code_size_in_bytes
  row.cost = cost_analysis(compiled)
  row.flops = row.cost.get("flops", 0.0)
  estimate = row.cost.get("optimal_seconds")
  row.estimate_s = estimate if estimate is not None and estimate > 0 else None
  return row


def _cells(row: Row, hbm_bytes: int | None) -> list[str]:
  mib = lambda b: f"{b / 2**20:.1f}"
  cells = [str(row.batch_size), f"{row.batch_size / row.num_devices:g}"]
  if row.error:
    return cells + [f"failed: {row.error[:400]}"]
  fits = "-"
  if hbm_bytes:  # a chip's HBM is shared by its devices
    per_device_hbm = hbm_bytes * row.num_chips / row.num_devices
    fits = f"{row.total_bytes / per_device_hbm:.2%}"
  img_s = row.images_per_s_per_chip
  return cells + [
      mib(row.argument_bytes), mib(row.output_bytes), mib(row.alias_bytes),
      mib(row.temp_bytes), mib(row.code_bytes), mib(row.total_bytes), fits,
      f"{row.flops / 1e9:.3f}",
      f"{row.flops * row.num_devices / row.batch_size / 1e9:.3f}",
      "n/a" if row.estimate_s is None else f"{row.estimate_s * 1e3:.3f}",
      "n/a" if img_s is None else f"{img_s:.1f}", f"{row.compile_s:.1f}"]


# Fixed widths, so that rows printed one at a time line up.
_WIDTHS = tuple(max(len(c), 8) for c in COLUMNS)


def format_table(rows: Sequence[Row], hbm_bytes: int | None,
                 header: bool = True) -> list[str]:
  """The table's lines: header and rule (if `header`), one line per row."""
  lines = []
  if header:
    lines.append(" ".join(c.rjust(w) for c, w in zip(COLUMNS, _WIDTHS)))
    lines.append("-" * len(lines[0]))
  for row in rows:
    cells = _cells(row, hbm_bytes)
    lines.append(" ".join(c if c.startswith("failed") else c.rjust(w)
                          for c, w in zip(cells, _WIDTHS)))
  return lines


def describe(target: Target, devices: Sequence[jax.Device],
             config: ml_collections.ConfigDict, dtype: str | None) -> str:
  """One line naming the target, the task and the settings."""
  kind = devices[0].device_kind
  processes = len({d.process_index for d in devices})
  if target.platform == "tpu":
    where = (f"{target.name}: {len(devices)} x {kind}, "
             f"{HBM_GIB[target.generation]} GiB HBM per chip (public "
             f"figure), {processes} host(s)")
  else:
    where = f"cpu: {len(devices)} x {kind} (no HBM limit)"
  return (f"target {where}; task {config.task}, image "
          f"{config.data.image_size}px, {dtype or config.compute_dtype}; "
          f"jax {jax.__version__}")


FOOTNOTE = (
    "Per device: memory (total = args + out - alias + temp + code) and",
    "GFLOP/dev (XLA counts one device's SPMD program); GFLOP/img = GFLOP/dev",
    "x devices / batch. est_ms: XLA's cost-model ESTIMATE of one step, not a",
    "measurement; img/s/chip = batch / est / chips.")


def run(config: ml_collections.ConfigDict, target: Target,
        batch_sizes: Sequence[int], dtype: str | None = None,
        devices: Sequence[jax.Device] | None = None,
        printer=print) -> list[Row]:
  """Compiles every batch size for `target` and prints the table as it goes.

  Args:
    config: the experiment config.
    target: from `parse_topology`.
    batch_sizes: global batch sizes.
    dtype: compute dtype override.
    devices: the target's devices (default: `target_devices(target)`).
    printer: where lines go.

  Returns:
    One row per batch size.
  """
  devices = list(devices) if devices is not None else target_devices(target)
  # Batch sizes and config are checked before the first (slow) compile.
  for bs in batch_sizes:
    loop.build(_with(config, bs, dtype), devices=devices)
  printer(describe(target, devices, config, dtype))
  rows = []
  for i, bs in enumerate(batch_sizes):
    rows.append(compile_step(config, devices, bs, dtype))
    for line in format_table(rows[-1:], target.hbm_bytes, header=i == 0):
      printer(line)
  keys = sorted({k for r in rows for k in r.cost})
  raw = [r.cost["optimal_seconds"] for r in rows if "optimal_seconds" in r.cost]
  printer(f"XLA cost_analysis() keys: {', '.join(keys) or 'none'}"
          + (f"; optimal_seconds as reported: "
             f"{', '.join(f'{v:.6g}' for v in raw)}" if raw else ""))
  for line in FOOTNOTE:
    printer(line)
  return rows


def _batch_sizes(values: Sequence[str], default: int) -> list[int]:
  if not values:
    return [int(default)]
  out = []
  for v in values:
    try:
      out.append(int(v))
    except ValueError:
      raise app.UsageError(f"--batch_sizes: {v!r} is not an integer") from None
    if out[-1] < 1:
      raise app.UsageError(f"--batch_sizes: {v} must be positive")
  return out


_CHILD = "JAXFACE_AOT_CHILD"
_ATTEMPTS = 4


def _run_in_children() -> int | None:
  """Runs this command in a child process with an unlimited stack limit.

  libtpu 0.0.42's compiler segfaults on data-parallel training steps for
  v6e slices of 4+ chips in a process started with a finite stack limit
  (8 MiB..1 GiB tried; raising the limit once running does not help), and
  still now and then (4 of 25 starts) with `ulimit -s unlimited`. So TPU
  compiles run in a child started under an unlimited limit, and a child
  killed by SIGSEGV is started again (its rows are printed again).

  Returns:
    The child's exit status, or None in the child itself.
  """
  if os.environ.get(_CHILD):
    return None
  soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
  if hard == resource.RLIM_INFINITY:
    resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, hard))
  elif soft != resource.RLIM_INFINITY:
    logging.warning("The stack size limit cannot be raised to unlimited; "
                    "libtpu may crash: run under `ulimit -s unlimited`.")
  env = dict(os.environ, **{_CHILD: "1"})
  command = [sys.executable, "-m", "jaxface.aot", *sys.argv[1:]]
  for attempt in range(1, _ATTEMPTS + 1):
    sys.stdout.flush()
    code = subprocess.run(command, env=env, check=False).returncode
    if code != -signal.SIGSEGV:
      return code
    print(f"libtpu crashed (segfault, attempt {attempt} of {_ATTEMPTS}; "
          "see docs/PERFORMANCE.md)" + (": starting again."
                                        if attempt < _ATTEMPTS else "."),
          file=sys.stderr, flush=True)
  return 1


def main(argv, flag_values: dict[str, flags.FlagHolder]):
  """The command; `flag_values` from `_define_flags`."""
  f = {name: holder.value for name, holder in flag_values.items()}
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging_utils.quiet_libraries()
  # Before any backend exists: run on the CPU whatever is installed, so
  # libtpu only describes and compiles for the topology.
  jax.config.update("jax_platforms", "cpu")
  if f["cpu_devices"] < 1:
    raise app.UsageError("--cpu_devices must be >= 1")
  jax.config.update("jax_num_cpu_devices", f["cpu_devices"])
  try:
    target = parse_topology(f["topology"])
  except TopologyError as e:
    raise app.UsageError(str(e)) from None
  if target.platform == "tpu" and libtpu_available():
    code = _run_in_children()
    if code is not None:
      raise SystemExit(code)
  config = f["config"]
  batch_sizes = _batch_sizes(f["batch_sizes"], config.train.batch_size)
  try:
    rows = run(config, target, batch_sizes, f["dtype"])
  except ValueError as e:  # the topology, the config or a batch size
    raise app.UsageError(str(e)) from None
  if any(r.error for r in rows):
    raise SystemExit(1)


if __name__ == "__main__":
  _flag_values = _define_flags()
  app.run(functools.partial(main, flag_values=_flag_values))
