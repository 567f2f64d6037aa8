r"""Benchmark of the fused reconstruction pipeline: latency and throughput.

  python -m jaxface.bench.pipeline                       # the shipped lite
  python -m jaxface.bench.pipeline --weights=my_bundle --batch_sizes=1,64
  python -m jaxface.bench.pipeline --full                # full-size networks

Times the jitted pipeline (`jaxface.pipeline.Pipeline`: gender, landmarks,
segmentation, the gender-routed generators, composite) on device-resident
faces, for each batch size and compute dtype: the median of `--steps`
synchronised calls after compiling and `--warmup` calls; the gender
classifier routes each face to its generator. `--full`
builds the four modules at their full configs (256x256; random weights:
speed does not depend on them), the sizes of the goals in
docs/PERFORMANCE.md: >= 739 img/s at batch 64 and <= 4.5 ms at batch 1 on
an H100 (the reference's generator alone).
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import bench
from jaxface import pipeline
from jaxface.weights import bundle as bundle_lib

_WEIGHTS = flags.DEFINE_string("weights", "lite",
                               "A shipped bundle's name or a bundle folder.")
_FULL = flags.DEFINE_bool("full", False, "Full-size networks from configs/ "
                          "with random weights instead of a bundle.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"],
                            "Compute dtypes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per row.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")


def _random_variables(pipe: pipeline.Pipeline, seed: int = 0):
  """Initialised variables of every module (speed does not depend on them)."""
  key = jax.random.key(seed)
  out = {}
  for module in ("gender", "landmarks", "segment"):
    task = getattr(pipe, module)
    out[module] = jax.jit(lambda k, t=task: t.inference_variables(
        t.init_state(k)))(key)
  make = jax.jit(lambda k: pipe.inpaint.inference_variables(
      pipe.inpaint.init_state(k)))
  out["inpaint"] = (make(key), make(jax.random.key(seed + 1)))
  return out


def _time(fn, *args) -> tuple[float, float]:
  return bench.median_seconds(fn, *args, steps=_STEPS.value,
                              warmup=_WARMUP.value)


def main(argv):
  del argv
  if _FULL.value:
    configs, variables, name = (bench.full_size_configs(), None,
                                "full size, random")
  else:
    b = bundle_lib.load(_WEIGHTS.value)
    configs = {m: b[m].config for m in ("gender", "landmarks", "segment")}
    configs["inpaint"] = b["inpaint_female"].config
    variables, name = jax.device_put(pipeline.variables_of(b)), b.name
  dev = jax.devices()[0]
  header = (f"{'dtype':>9} {'batch':>5} {'ms/batch':>10} {'ms/face':>9} "
            f"{'faces/s':>9} {'compile s':>10}")
  printed = False
  for dtype in _DTYPES.value:
    pipe = pipeline.Pipeline(configs, dtype)
    if variables is None:
      variables = _random_variables(pipe)
    if not printed:
      print(f"device: {dev.device_kind} ({dev.platform}); weights: {name}; "
            f"faces {pipe.size}x{pipe.size}; gender routing: chunks")
      print(header)
      print("-" * len(header))
      printed = True
    fn = jax.jit(lambda v, x, m, p=pipe: p(v, x, None, None,
                                           gender="auto")["output"])
    rng = np.random.default_rng(0)
    for bs in (int(b) for b in _BATCH_SIZES.value):
      faces = jax.device_put(jnp.asarray(
          rng.uniform(size=(bs, pipe.size, pipe.size, 3)), jnp.float32))
      t, compile_s = _time(fn, variables, faces, None)
      print(f"{dtype:>9} {bs:>5} {1e3 * t:>10.2f} {1e3 * t / bs:>9.2f} "
            f"{bs / t:>9.1f} {compile_s:>10.1f}")


if __name__ == "__main__":
  app.run(main)
