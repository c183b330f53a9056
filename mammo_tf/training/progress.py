"""Progress within an epoch: a step counter with samples/s and ETA.

A paper epoch is 1,250 steps (40,000 samples of 32), several minutes on a GPU: without a counter a
run says nothing between two epoch lines. `Progress` counts steps (and samples) and reports

* on a terminal (the stream is a TTY): one progress bar redrawn in place, at most 5 times a
  second, e.g.
  ``train epoch 3/100 [#######.............] 448/1250 steps 2,310 samples/s ETA 0:00:11``;
* otherwise (logs, batch jobs, CI): one log line every `log_seconds` (and one at the end), so log
  files stay small: ``train epoch 3/100: 448/1250 steps, 2,310 samples/s, ETA 0:00:11``.

The total may be unknown (evaluation over a split): then no bar and no ETA, only counts and rate.
Reporting never changes what is computed; the clock is injectable for tests.

Usage::

  with progress.Progress("train epoch 3/100", total=steps, batch_size=32) as bar:
    for batch in dataset:
      ...
      bar.update()
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from absl import logging

BAR_WIDTH = 20
REDRAW_SECONDS = 0.2
LOG_SECONDS = 30.0


def format_eta(seconds: float) -> str:
  """``H:MM:SS`` of a non-negative duration (rounded to the second)."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _is_tty(stream: TextIO) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


class Progress:
  """Step counter with samples/s and ETA (see the module docstring).

  Args:
    label: what is counted, e.g. ``"train epoch 3/100"`` or ``"validation"``.
    total: steps expected (None: unknown).
    batch_size: samples per step, for the rate (the last step may hold fewer: `update(n, samples)`).
    stream: where the bar goes (default sys.stderr); a non-TTY stream gets log lines instead.
    log: the log-line function (default absl ``logging.info``).
    log_seconds: seconds between two log lines.
    clock: monotonic clock in seconds.
    enabled: False makes every call a no-op (non-chief workers).
  """

  def __init__(self, label: str, total: int | None = None, *, batch_size: int = 1,
               stream: TextIO | None = None, log: Callable[..., None] | None = None,
               log_seconds: float = LOG_SECONDS, clock: Callable[[], float] = time.monotonic,
               enabled: bool = True):
    self.label = label
    self.total = int(total) if total else None
    self.batch_size = int(batch_size)
    self.stream = stream if stream is not None else sys.stderr
    self.log = log or logging.info
    self.log_seconds = float(log_seconds)
    self.clock = clock
    self.enabled = enabled
    self.tty = _is_tty(self.stream)
    self.steps = 0
    self.samples = 0
    self.start = clock()
    self._last = self.start
    self._drawn = False

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @property
  def rate(self) -> float:
    """Samples per second so far (0 before any time has passed)."""
    elapsed = self.clock() - self.start
    return self.samples / elapsed if elapsed > 0 else 0.0

  def eta(self) -> float | None:
    """Seconds left at the current step rate (None without a total or before the first step)."""
    elapsed = self.clock() - self.start
    if not self.total or self.steps == 0 or elapsed <= 0:
      return None
    return (self.total - self.steps) * elapsed / self.steps

  def text(self, bar: bool) -> str:
    """The current report, as a bar (``bar=True``) or as a log line."""
    eta = self.eta()
    count = f"{self.steps}/{self.total} steps" if self.total else f"{self.steps} steps"
    parts = [count, f"{self.rate:,.0f} samples/s"]
    if eta is not None:
      parts.append(f"ETA {format_eta(eta)}")
    if not bar:
      return f"{self.label}: " + ", ".join(parts)
    if self.total:
      filled = min(BAR_WIDTH, BAR_WIDTH * self.steps // self.total)
      return f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " + " ".join(parts)
    return f"{self.label} " + " ".join(parts)

  def update(self, steps: int = 1, samples: int | None = None) -> None:
    """Counts `steps` more steps (`samples` samples; default steps * batch_size)."""
    if not self.enabled:
      return
    self.steps += int(steps)
    self.samples += int(samples) if samples is not None else int(steps) * self.batch_size
    now = self.clock()
    if self.tty and now - self._last >= REDRAW_SECONDS:
      self._draw()
      self._last = now
    elif not self.tty and now - self._last >= self.log_seconds:
      self.log("%s", self.text(bar=False))
      self._last = now

  def _draw(self) -> None:
    self.stream.write("\r" + self.text(bar=True) + "\033[K")
    self.stream.flush()
    self._drawn = True

  def close(self) -> None:
    """Final report: the bar completed with a newline, or one last log line."""
    if not self.enabled or self.steps == 0:
      return
    if self.tty:
      self._draw()
      self.stream.write("\n")
      self.stream.flush()
    else:
      self.log("%s", self.text(bar=False))
    self.enabled = False
