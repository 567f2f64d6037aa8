"""Console progress lines with throughput and ETA, and per-phase timing.

    progress = Progress(total_steps, start_step, batch_size, every_secs=60)
    timer = Timer()
    for step in range(start_step + 1, total_steps + 1):
      with timer.timed("data"):
        batch = next(it)
      with timer.timed("step"):
        state, metrics = train_step(state, batch)
      line = progress.update(step)
      if line:
        logging.info("%s | %s", line, timer.summary())
        timer.reset()

JAX dispatches asynchronously, so host-side times are those of dispatch
until something blocks on a result (fetching metrics, a checkpoint); rates
averaged over a window of many steps are still right.
"""

import collections
import contextlib
import math
import time
from typing import Callable, Iterator, Optional

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
  """Compact human form: `1d 16h 34m`, `2h 05m`, `3m 07s`, `42s`.

  Args:
    seconds: A duration; negative values count as 0.

  Returns:
    The formatted duration, or `?` when it is not finite.
  """
  if not math.isfinite(seconds):
    return "?"
  s = int(round(max(0.0, seconds)))
  days, s = divmod(s, 86400)
  hours, s = divmod(s, 3600)
  minutes, s = divmod(s, 60)
  if days:
    return f"{days}d {hours}h {minutes}m"
  if hours:
    return f"{hours}h {minutes:02d}m"
  if minutes:
    return f"{minutes}m {s:02d}s"
  return f"{s}s"


class Progress:
  """Decides when to report training progress and formats the line.

  Call `update(step)` after every step (or every few). It returns a line
  such as

    step 1200/500000 (0.2%) | 3.41 steps/s | 13.6 img/s | ETA 1d 16h 34m

  when a report is due (every `every_steps` steps, every `every_secs`
  seconds, whichever comes first, and at the last step), else None.

  The rate is measured from the first `update` after construction onwards,
  over roughly the last `window_secs`: the time before that first call
  (which includes compilation after a start or restart) never counts. Until
  two updates have been seen there is no rate, and the line says
  `compiling` with the time taken so far.
  """

  def __init__(self,
               total_steps: int,
               start_step: int = 0,
               batch_size: Optional[int] = None,
               *,
               every_steps: Optional[int] = None,
               every_secs: Optional[float] = 60.0,
               window_secs: float = 300.0,
               clock: Clock = time.monotonic):
    """Initialises the reporter.

    Args:
      total_steps: Step number at which training ends.
      start_step: Step the run (re)starts from; the first `update` is for a
        later step.
      batch_size: Global examples per step, for the img/s figure (omitted
        when None).
      every_steps: Report when this many steps passed since the last report.
      every_secs: Report when this many seconds passed since the last report.
      window_secs: Approximate span of the recent window the rate is
        measured over.
      clock: Seconds from an arbitrary origin; injectable for tests.
    """
    self.total_steps = int(total_steps)
    self.start_step = int(start_step)
    self.batch_size = batch_size
    self.every_steps = every_steps
    self.every_secs = every_secs
    self.window_secs = float(window_secs)
    self._clock = clock
    self._created = clock()
    self._last_report_step = self.start_step
    self._last_report_time = self._created
    # (step, time) samples, oldest first; the first is the first update.
    self._samples: collections.deque[tuple[int, float]] = collections.deque()

  def rate(self) -> Optional[float]:
    """Steps per second over the recent window, None before 2 updates."""
    if len(self._samples) < 2:
      return None
    (s0, t0), (s1, t1) = self._samples[0], self._samples[-1]
    if s1 <= s0 or t1 <= t0:
      return None
    return (s1 - s0) / (t1 - t0)

  def _due(self, step: int, now: float) -> bool:
    if step >= self.total_steps:
      return True
    if (self.every_steps is not None
        and step - self._last_report_step >= self.every_steps):
      return True
    return (self.every_secs is not None
            and now - self._last_report_time >= self.every_secs)

  def update(self, step: int) -> Optional[str]:
    """Records that `step` is done; returns a progress line when one is due."""
    step = int(step)
    now = self._clock()
    self._samples.append((step, now))
    # Drop samples older than the window, always keeping the two needed for a
    # rate (the oldest kept sample is the window's start).
    while (len(self._samples) > 2
           and now - self._samples[1][1] >= self.window_secs):
      self._samples.popleft()
    if not self._due(step, now):
      return None
    self._last_report_step = step
    self._last_report_time = now
    return self.format(step, now)

  def format(self, step: int, now: Optional[float] = None) -> str:
    """The progress line for `step` (without updating any state)."""
    now = self._clock() if now is None else now
    if self.total_steps > 0:
      pct = 100.0 * step / self.total_steps
      parts = [f"step {step}/{self.total_steps} ({pct:.1f}%)"]
    else:
      parts = [f"step {step}"]
    rate = self.rate()
    if rate is None:
      parts.append(f"compiling ({format_duration(now - self._created)})")
      return " | ".join(parts)
    parts.append(f"{rate:.2f} steps/s")
    if self.batch_size:
      parts.append(f"{rate * self.batch_size:.1f} img/s")
    parts.append(f"ETA {format_duration((self.total_steps - step) / rate)}")
    return " | ".join(parts)


class Timer:
  """Accumulates wall time per named phase (data, step, eval, checkpoint).

  Fractions are of the wall time since construction or the last `reset`, so
  time spent outside any phase shows up as `other`. Phases should not nest
  (nested time would be counted twice).
  """

  def __init__(self, clock: Clock = time.monotonic):
    self._clock = clock
    self._totals: dict[str, float] = {}
    self._start = clock()

  @contextlib.contextmanager
  def timed(self, name: str) -> Iterator[None]:
    """Context manager adding the time spent inside it to phase `name`."""
    t0 = self._clock()
    try:
      yield
    finally:
      self._totals[name] = self._totals.get(name, 0.0) + self._clock() - t0

  def add(self, name: str, seconds: float) -> None:
    """Adds `seconds` to phase `name` (for times measured elsewhere)."""
    self._totals[name] = self._totals.get(name, 0.0) + float(seconds)

  def totals(self) -> dict[str, float]:
    """Seconds per phase since the last reset, in first-use order."""
    return dict(self._totals)

  def elapsed(self) -> float:
    """Wall seconds since construction or the last reset."""
    return self._clock() - self._start

  def fractions(self) -> dict[str, float]:
    """Share of the elapsed wall time per phase, plus `other` for the rest."""
    elapsed = self.elapsed()
    if elapsed <= 0:
      return {}
    out = {k: v / elapsed for k, v in self._totals.items()}
    other = 1.0 - sum(out.values())
    if other > 0:
      out["other"] = other
    return out

  def summary(self) -> str:
    """E.g. `data 3% | step 91% | checkpoint 4% | other 2%`."""
    fractions = self.fractions().items()
    return " | ".join(f"{name} {100.0 * frac:.0f}%" for name, frac in fractions)

  def reset(self) -> None:
    """Clears the totals and restarts the elapsed-time origin."""
    self._totals = {}
    self._start = self._clock()
