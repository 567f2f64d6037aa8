"""Tests for jaxface.train.progress with a fake clock."""

import pytest

from jaxface.train import progress as progress_lib


class FakeClock:

  def __init__(self, t=1000.0):
    self.t = t

  def __call__(self):
    return self.t

  def advance(self, seconds):
    self.t += seconds


@pytest.mark.parametrize("seconds,want", [
    (0, "0s"),
    (42.4, "42s"),
    (187, "3m 07s"),
    (3600 + 5 * 60 + 59, "1h 05m"),
    (2 * 3600 + 5 * 60, "2h 05m"),
    (86400 + 16 * 3600 + 34 * 60 + 10, "1d 16h 34m"),
    (12 * 86400, "12d 0h 0m"),
    (-5, "0s"),
    (float("inf"), "?"),
    (float("nan"), "?"),
])
def test_format_duration(seconds, want):
  assert progress_lib.format_duration(seconds) == want


def test_first_step_excluded_and_rates():
  clock = FakeClock()
  p = progress_lib.Progress(1000, start_step=100, batch_size=4,
                            every_steps=10, every_secs=None, clock=clock)
  clock.advance(30.0)  # compilation inside the first step
  assert p.update(101) is None
  assert p.rate() is None
  for step in range(102, 110):
    clock.advance(0.5)
    assert p.update(step) is None
  clock.advance(0.5)
  line = p.update(110)
  # 9 steps in 4.5 s after the first one; the 30 s of compilation is ignored.
  assert p.rate() == pytest.approx(2.0)
  assert line == ("step 110/1000 (11.0%) | 2.00 steps/s | 8.0 img/s | "
                  "ETA 7m 25s")


def test_compiling_reported_before_two_updates():
  clock = FakeClock()
  p = progress_lib.Progress(500000, start_step=0, batch_size=4,
                            every_steps=1, clock=clock)
  clock.advance(75.0)
  assert p.update(1) == "step 1/500000 (0.0%) | compiling (1m 15s)"
  clock.advance(0.25)
  assert p.update(2) == ("step 2/500000 (0.0%) | 4.00 steps/s | 16.0 img/s"
                         " | ETA 1d 10h 43m")


def test_every_secs_and_final_step():
  clock = FakeClock()
  p = progress_lib.Progress(100, start_step=0, batch_size=None,
                            every_secs=10.0, clock=clock)
  clock.advance(1.0)
  assert p.update(1) is None
  lines = {}
  for step in range(2, 101):
    clock.advance(1.0)
    line = p.update(step)
    if line:
      lines[step] = line
  # Every 10 s since construction (t=10 at step 10), and at the end.
  assert sorted(lines) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
  assert lines[100] == "step 100/100 (100.0%) | 1.00 steps/s | ETA 0s"


def test_rate_uses_recent_window():
  clock = FakeClock()
  p = progress_lib.Progress(10000, every_steps=None, every_secs=None,
                            window_secs=10.0, clock=clock)
  p.update(1)
  for step in range(2, 101):  # slow phase: 1 step/s
    clock.advance(1.0)
    p.update(step)
  for step in range(101, 401):  # fast phase: 10 steps/s for 30 s
    clock.advance(0.1)
    p.update(step)
  # Only the last ~10 s count, not the slow start.
  assert p.rate() == pytest.approx(10.0, rel=0.02)


def test_timer_fractions():
  clock = FakeClock()
  timer = progress_lib.Timer(clock=clock)
  for _ in range(3):
    with timer.timed("data"):
      clock.advance(1.0)
    with timer.timed("step"):
      clock.advance(5.0)
    clock.advance(0.5)  # untimed
  with timer.timed("checkpoint"):
    clock.advance(0.5)
  timer.add("eval", 1.0)
  clock.advance(1.0)
  assert timer.totals() == pytest.approx(
      {"data": 3.0, "step": 15.0, "checkpoint": 0.5, "eval": 1.0})
  assert timer.elapsed() == pytest.approx(21.0)
  fr = timer.fractions()
  assert fr["step"] == pytest.approx(15.0 / 21.0)
  assert fr["other"] == pytest.approx(1.5 / 21.0)
  assert sum(fr.values()) == pytest.approx(1.0)
  assert timer.summary() == (
      "data 14% | step 71% | checkpoint 2% | eval 5% | other 7%")
  timer.reset()
  assert timer.totals() == {} and timer.fractions() == {}


def test_timer_counts_time_when_the_body_raises():
  clock = FakeClock()
  timer = progress_lib.Timer(clock=clock)
  with pytest.raises(RuntimeError):
    with timer.timed("eval"):
      clock.advance(2.0)
      raise RuntimeError("boom")
  assert timer.totals() == {"eval": 2.0}
