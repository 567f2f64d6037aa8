r"""Training-step (or evaluation-step) benchmark of any registered task: a
table per compute dtype and batch size.

  python -m jaxface.bench.train --config=configs/inpaint.py \
      --batch_sizes=16,32,64 --dtypes=bfloat16,float32

  # Inference: the evaluation step (`--mode=eval`), e.g. the two
  # segmentation networks:
  python -m jaxface.bench.train --config=configs/segment.py:lite \
      --mode=eval --batch_sizes=8 --dtypes=float32

  # CPU, tiny model (seconds):
  python -m jaxface.bench.train --config=configs/inpaint.py:tiny \
      --batch_sizes=4,8 --dtypes=float32 --steps=5 --warmup=1

Each row: the median wall time of `--steps` (>= 20 for reported figures)
individually synchronised steps after `--warmup` steps, images per second,
the model FLOPs of one step as counted by XLA's cost analysis of the compiled
step (which counts one device's program, so it is multiplied by the device
count; custom calls such as cuDNN attention are not counted by XLA; the task
adds its analytic count for them, `Task.uncounted_flops`), the achieved
TFLOP/s per device, MFU against `--peak_tflops` (H100 SXM dense bf16:
769.6), and memory: XLA's static estimate for the compiled step and, where
the backend reports it, the process's peak device memory so far. Data loading
is excluded (one fixed batch); the input pipeline has its own benchmark.
"""

import statistics
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from jaxface import aot
from jaxface.data import pipeline
from jaxface.models import attention as attention_lib
from jaxface.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/inpaint.py", "Experiment config.", lock_config=False)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["16", "32", "64"],
                                 "Global batch sizes.")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"],
                            "Compute dtypes.")
_ATTENTION = flags.DEFINE_list(
    "attention", [], "Tasks with config.model.attention_impl: the "
    "implementations to compare (auto, xla, chunked, "
    "cudnn); default: the config's.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"], "train: the training step; eval: "
    "the evaluation step (inference on a held-out batch and its "
    "per-example metrics).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_PEAK = flags.DEFINE_float("peak_tflops", 769.6,
                           "Device peak (TFLOP/s) for MFU.")


def _static_bytes(compiled) -> float:
  try:
    m = compiled.memory_analysis()
    return float(m.temp_size_in_bytes + m.argument_size_in_bytes
                 + m.output_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return float("nan")


def _peak_bytes() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  return float(stats.get("peak_bytes_in_use", float("nan")))


def bench_one(base_config, batch_size: int, dtype: str, attention: str):
  """Compiles and times one training step configuration; returns a row."""
  config = base_config.copy_and_resolve_references()
  config.compute_dtype = dtype
  config.train.batch_size = batch_size
  if attention:
    if "attention_impl" not in config.get("model", {}):
      raise ValueError(f"--attention: task {config.task!r} has no "
                       "config.model.attention_impl")
    config.model.attention_impl = attention
  setup = loop.build(config)
  state = setup.init(jax.random.key(config.seed))
  consts = setup.constants()
  batch = setup.put(pipeline.fixed_batch(setup.task.examples, config,
                                         setup.train_batch_size))

  train = _MODE.value == "train"
  step_fn = setup.train_step if train else setup.eval_step
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, consts).compile()
  compile_s = time.perf_counter() - t0
  # cost_analysis() counts one device's SPMD program; the task's analytic
  # count is for the whole (global) batch.
  devices = setup.mesh.devices.size
  flops = (aot.cost_analysis(compiled).get("flops", 0.0) * devices
           + (setup.task.uncounted_flops(batch_size) if train else 0.0))

  def run(state):
    if train:
      return compiled(state, batch, consts)
    return state, compiled(state, batch, consts)

  for _ in range(_WARMUP.value):
    state, metrics = run(state)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = run(state)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  if train and not bool(metrics["finite"]):
    print(f"warning: non-finite loss in {dtype} batch {batch_size}",
          file=sys.stderr)
  ms = statistics.median(times) * 1e3
  tflops = flops / devices / (ms / 1e3) / 1e12  # per device
  impl = "-"
  if "attention_impl" in config.get("model", {}):
    impl = attention_lib.resolve_impl(config.model.attention_impl,
                                      setup.task.dtype)
  return dict(dtype=dtype, attention=impl, batch=batch_size, ms=ms,
              img_s=batch_size / (ms / 1e3), gflop_img=flops / batch_size / 1e9,
              tflops=tflops, mfu=tflops / _PEAK.value,
              static_gib=_static_bytes(compiled) / 2**30,
              peak_gib=_peak_bytes() / 2**30, compile_s=compile_s)


def main(argv):
  del argv
  config = _CONFIG.value
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} x{jax.device_count()} ({dev.platform}), "
        f"jax {jax.__version__}; {_MODE.value} step of task {config.task}, "
        f"image {config.data.image_size}px; median of {_STEPS.value} steps after "
        f"{_WARMUP.value} warm-up")
  header = (f"{'dtype':>9} {'attn':>5} {'batch':>5} {'step ms':>9} "
            f"{'img/s':>8} {'GFLOP/img':>9} {'TFLOP/s':>8} {'MFU':>6} "
            f"{'static GiB':>10} {'peak GiB':>9} {'compile s':>9}")
  print(header)
  print("-" * len(header))
  for attention in (_ATTENTION.value or [""]):
    for dtype in _DTYPES.value:
      for bs in map(int, _BATCH_SIZES.value):
        try:
          r = bench_one(config, bs, dtype, attention)
        except Exception as e:  # pylint: disable=broad-except
          msg = str(e).splitlines()[0][:60]
          print(f"{dtype:>9} {attention or '-':>5} {bs:>5} failed: {msg}")
          continue
        print(f"{r['dtype']:>9} {r['attention']:>5} {r['batch']:>5} "
              f"{r['ms']:>9.2f} {r['img_s']:>8.1f} {r['gflop_img']:>9.1f} "
              f"{r['tflops']:>8.2f} {r['mfu']:>6.1%} {r['static_gib']:>10.2f} "
              f"{r['peak_gib']:>9.2f} {r['compile_s']:>9.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
