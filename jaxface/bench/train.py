r"""Training-step benchmark: prints a table per compute dtype and batch size.

  python -m jaxface.bench.train --config=configs/inpaint.py \
      --batch_sizes=16,32,64 --dtypes=bfloat16,float32

  # CPU, tiny model (seconds):
  python -m jaxface.bench.train --config=configs/inpaint.py:tiny \
      --batch_sizes=4,8 --dtypes=float32 --steps=5 --warmup=1

Each row: the median wall time of `--steps` (>= 20 for reported figures)
individually synchronised steps after `--warmup` steps, images per second,
the model FLOPs of one step as counted by XLA's cost analysis of the compiled
step (custom calls such as cuDNN attention are not counted by XLA; the
analytic count of the attention is added for them, see `attention_flops`),
the achieved TFLOP/s, MFU against `--peak_tflops` (H100 SXM dense bf16:
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

from jaxface import sharding
from jaxface.data import pipeline
from jaxface.models import attention as attention_lib
from jaxface.train import inpaint

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/inpaint.py", "Experiment config.", lock_config=False)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["16", "32", "64"],
                                 "Global batch sizes.")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"],
                            "Compute dtypes.")
_ATTENTION = flags.DEFINE_list(
    "attention", [], "Attention implementations to compare (auto, xla, "
    "cudnn); default: the config's.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_PEAK = flags.DEFINE_float("peak_tflops", 769.6,
                           "Device peak (TFLOP/s) for MFU.")


def attention_flops(config, batch: int) -> float:
  """Analytic FLOPs of the two attention layers for one training step.

  Per layer and image: scores N*N*d*2, value product N*N*Cv*2, N = positions;
  a training step runs G's layer forward + backward (x3) and D's layer on
  2B images forward + backward (x3) and on B images forward + input-backward
  (x2). Only used where XLA cannot count them (cuDNN custom calls).
  """
  s = config.data.image_size
  g, d = config.model.generator.width, config.model.discriminator.width
  n_g, n_d = (s // 4) ** 2, (s // 4) ** 2
  g_layer = 2 * n_g * n_g * (g + 8 * g)       # d = 4g/4 = g, Cv = 8g
  d_layer = 2 * n_d * n_d * (2 * d / 4 + 2 * d)  # d = 2d/4, Cv = 2d
  return batch * (3 * g_layer + 3 * 2 * d_layer + 2 * d_layer)


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


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
  config = base_config.copy_and_resolve_references()
  config.compute_dtype = dtype
  config.train.batch_size = batch_size
  if attention:
    config.model.attention_impl = attention
  task = inpaint.InpaintTask(config)
  mesh = sharding.make_mesh(config.mesh)
  data_sh, repl = sharding.data_sharding(mesh), sharding.replicated(mesh)
  shapes = jax.eval_shape(task.init_state, jax.random.key(0))
  state_sh = sharding.state_shardings(mesh, shapes)
  state = jax.jit(task.init_state, out_shardings=state_sh)(jax.random.key(0))
  consts = jax.device_put(task.constants(), repl)

  batch = sharding.put_batch(
      pipeline.fixed_batch("inpaint", config, batch_size), data_sh)

  step = jax.jit(task.train_step, in_shardings=(state_sh, data_sh, repl),
                 out_shardings=(state_sh, repl), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, consts).compile()
  compile_s = time.perf_counter() - t0
  flops = _cost_flops(compiled)
  impl = attention_lib.resolve_impl(config.model.attention_impl,
                                        inpaint.compute_dtype(config))
  if impl == "cudnn":
    flops += attention_flops(config, batch_size)

  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch, consts)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, consts)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  if not bool(metrics["finite"]):
    print(f"warning: non-finite loss in {dtype} batch {batch_size}",
          file=sys.stderr)
  ms = statistics.median(times) * 1e3
  tflops = flops / (ms / 1e3) / 1e12
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
        f"jax {jax.__version__}; image {config.data.image_size}px, "
        f"G width {config.model.generator.width}; median of {_STEPS.value} "
        f"steps after {_WARMUP.value} warm-up")
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
