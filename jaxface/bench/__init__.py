"""Benchmarks: project commands that print tables (not tests)."""

import statistics
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
