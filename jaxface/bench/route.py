r"""Gender routing benchmark: two inpainting generators on a mixed batch.

  python -m jaxface.bench.route --config=configs/inpaint.py \
      --batch_sizes=8,64 --male_shares=0.5,0.9
  # CPU (the tiny generator, seconds):
  python -m jaxface.bench.route --config=configs/inpaint.py:tiny \
      --batch_sizes=8,16 --steps=5

For each batch size and share of male faces, one row per way of routing
(`jaxface.route`): "chunks" (each gender's faces through its own
generator, in chunks of `--chunk`, 0: a quarter of the batch), "both" (both
generators on every face, then a select), and "one" (a single generator on
the whole batch: the floor neither routing can beat). Each row: the median
wall time of `--steps` synchronised calls after `--warmup`, faces per
second, and the time relative to "one".
"""


from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from jaxface import bench
from jaxface import route
from jaxface import tasks

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/inpaint.py", "An inpainting config (the generator).",
    lock_config=False)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8", "64"], "Batch sizes.")
_SHARES = flags.DEFINE_list("male_shares", ["0.5"],
                            "Shares of male faces in the batch.")
_CHUNK = flags.DEFINE_integer("chunk", 0, "Faces per chunk (0: B / 4).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per row.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")


def _time(fn, *args) -> float:
  return bench.median_seconds(fn, *args, steps=_STEPS.value,
                              warmup=max(0, _WARMUP.value - 1))[0]


def main(argv):
  del argv
  c = _CONFIG.value
  g = tasks.make(c).generator  # as the inpainting task builds it
  s = c.data.image_size
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}), generator "
        f"{c.compute_dtype} at {s}x{s}")
  header = (f"{'batch':>5} {'male':>5} {'routing':>8} {'chunk':>5} "
            f"{'ms':>9} {'faces/s':>9} {'vs one':>7}")
  print(header)
  print("-" * len(header))
  rng = np.random.default_rng(0)
  for bs in (int(b) for b in _BATCH_SIZES.value):
    image = jnp.asarray(rng.uniform(size=(bs, s, s, 3)), jnp.float32)
    lmap = jnp.zeros((bs, s, s, 1))
    mask = jnp.zeros((bs, s, s, 1)).at[:, s // 2:, s // 4:-s // 4].set(1.0)
    init = jax.jit(g.init)
    params = [init(jax.random.key(k), image[:1], lmap[:1], mask[:1])
              for k in (0, 1)]
    chunk = _CHUNK.value or route.default_chunk(bs)
    one = jax.jit(g.apply)
    t_one = _time(one, params[0], image, lmap, mask)
    for share in (float(x) for x in _SHARES.value):
      genders = jnp.asarray(rng.permutation(
          (np.arange(bs) < round(share * bs)).astype(np.int32)))
      rows = [("one", "-", t_one)]
      for strategy in route.STRATEGIES:
        fn = jax.jit(lambda p0, p1, gs, *x, strategy=strategy: route.route(
            g.apply, (p0, p1), gs, *x, strategy=strategy, chunk=chunk))
        rows.append((strategy, chunk if strategy == "chunks" else "-",
                     _time(fn, *params, genders, image, lmap, mask)))
      for name, ch, t in rows:
        print(f"{bs:>5} {share:>5.2f} {name:>8} {ch:>5} {1e3 * t:>9.2f} "
              f"{bs / t:>9.1f} {t / t_one:>7.2f}")


if __name__ == "__main__":
  app.run(main)
