"""Benchmarks: project commands that print tables (not tests)."""

import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax


def median_seconds(fn: Callable[..., Any], *args: Any, steps: int,
                   warmup: int) -> tuple[float, float]:
  """(median wall seconds of `steps` synchronised calls, seconds of the
  first call, which compiles); `warmup` untimed calls in between."""
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times), first


def full_size_configs() -> dict[str, Any]:
  """The four modules' full-size configs from configs/ (the U-Net
  segmenter), for timing the whole pipeline with random weights.

  Flag-free (unlike the benchmark commands), so tests can import it.
  """
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  # pylint: disable-next=import-outside-toplevel
  from configs import gender, inpaint, landmarks, segment
  gender_config = gender.get_config()
  # Frozen or not, the backbone runs the same forward pass; unfrozen needs
  # no ImageNet file.
  gender_config.model.freeze_backbone = False
  return {"gender": gender_config, "landmarks": landmarks.get_config(),
          "segment": segment.get_config("model=unet"),
          "inpaint": inpaint.get_config()}
