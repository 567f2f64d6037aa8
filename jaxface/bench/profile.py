r"""Where a training step's time goes: a `jax.profiler` trace and a table of
the compiled step's most expensive operations.

  python -m jaxface.bench.profile --config=configs/inpaint.py \
      --config.data.image_size=128 --config.train.batch_size=4 \
      --config.compute_dtype=float32 --trace_dir=runs/profile

Compiles the task's real training step (`loop.build`, one fixed batch, as
`jaxface.bench.train`), runs `--warmup` steps, then traces `--steps` steps
with `jax.profiler` (the trace opens in TensorBoard's profile plugin or, as
`perfetto_trace.json.gz`, in ui.perfetto.dev) and prints the operations
that took longest, summed over the traced steps and over threads, each with
the source operation XLA's metadata names (e.g.
`transpose(jvp(Generator))/decoder3/conv_general_dilated`: the kernel or
input gradient of the generator's `decoder3` convolution). Times are CPU
(or device) time per operation as the runtime reports it; operations a
backend runs inside a library call without trace events of their own are
counted in their caller.
"""

import collections
import glob
import gzip
import json
import os
import re
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from jaxface.data import pipeline
from jaxface.train import loop

# Trace events that are not operations of the compiled step.
_NOT_OPS = ("Thunk", "$", "Slinky", "end:", "ThreadPool", "PjRt", "Execute",
            "Pjit", "CommonPjRt")


def top_operations(trace_file: str, hlo_text: str,
                   count: int) -> list[tuple[float, int, str, str]]:
  """The `count` longest operations of a perfetto trace.

  Returns:
    [(total ms, calls, HLO instruction name, its op_name metadata)].
  """
  with gzip.open(trace_file) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_NOT_OPS):
      total[e["name"]] += e.get("dur", 0)
      calls[e["name"]] += 1
  rows = []
  for name, us in total.most_common(count):
    m = re.search(r"%" + re.escape(name) + r" = [^\n]*?op_name=\"([^\"]*)\"",
                  hlo_text)
    rows.append((us / 1e3, calls[name], name, m.group(1) if m else ""))
  return rows


def main(argv):
  del argv
  config = _CONFIG.value
  setup = loop.build(config)
  state = setup.init(jax.random.key(config.seed))
  consts = setup.constants()
  batch = setup.put(pipeline.fixed_batch(setup.task.examples, config,
                                         setup.train_batch_size))
  compiled = setup.train_step.lower(state, batch, consts).compile()
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch, consts)
  jax.block_until_ready((state, metrics))
  trace_dir = _TRACE_DIR.value
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, consts)
  jax.block_until_ready((state, metrics))
  wall = time.perf_counter() - t0
  jax.profiler.stop_trace()
  traces = sorted(glob.glob(os.path.join(trace_dir, "**",
                                         "perfetto_trace.json.gz"),
                            recursive=True), key=os.path.getmtime)
  if not traces:
    raise SystemExit(f"no perfetto trace was written under {trace_dir}")
  rows = top_operations(traces[-1], compiled.as_text(), _TOP.value)
  print(f"task {config.task}, {config.data.image_size}px, batch "
        f"{config.train.batch_size}, {config.compute_dtype}; "
        f"{_STEPS.value} traced step(s): {wall:.2f} s wall; trace "
        f"{traces[-1]}")
  print(f"{'ms':>9} {'calls':>5}  {'HLO instruction':<30} source operation")
  for ms, n, name, source in rows:
    print(f"{ms:>9.1f} {n:>5}  {name:<30} {source[-90:]}")


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "configs/inpaint.py", "Experiment config.", lock_config=False)
  _TRACE_DIR = flags.DEFINE_string("trace_dir", "runs/profile",
                                   "Where the trace goes.")
  _STEPS = flags.DEFINE_integer("steps", 1, "Traced steps.")
  _WARMUP = flags.DEFINE_integer("warmup", 1, "Untraced steps first.")
  _TOP = flags.DEFINE_integer("top", 25, "Operations listed.")
  app.run(main)
