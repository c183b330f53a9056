"""Progress reporting: a bar on a terminal, periodic log lines otherwise (fake clock, no timing)."""
import io

from mammo_tf.training import progress


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_log_lines_every_period_with_rate_and_eta():
  clock, lines = _Clock(), []
  bar = progress.Progress("train epoch 3/100", total=1250, batch_size=32, stream=io.StringIO(),
                          log=lambda fmt, text: lines.append(text), log_seconds=30, clock=clock)
  for _ in range(10):            # 10 steps in 10 s: below the 30 s period, nothing logged
    clock.now += 1.0
    bar.update()
  assert lines == []
  for _ in range(20):            # 30 steps in 30 s
    clock.now += 1.0
    bar.update()
  # 960 samples in 30 s = 32 samples/s; 1220 steps left at 1 s per step = 0:20:20.
  assert lines == ["train epoch 3/100: 30/1250 steps, 32 samples/s, ETA 0:20:20"]
  bar.close()
  assert len(lines) == 2 and lines[-1].startswith("train epoch 3/100: 30/1250 steps")
  bar.close()                    # idempotent
  assert len(lines) == 2


def test_bar_on_a_terminal_and_unknown_total():
  clock, tty = _Clock(), _Tty()
  with progress.Progress("train", total=4, batch_size=8, stream=tty, clock=clock) as bar:
    for _ in range(2):
      clock.now += 0.5
      bar.update()
  out = tty.getvalue()
  assert out.endswith("\n") and out.count("\n") == 1
  last = out.strip().split("\r")[-1].replace("\033[K", "")
  assert last == "train [##########..........] 2/4 steps 16 samples/s ETA 0:00:01"
  clock, lines = _Clock(), []
  bar = progress.Progress("validation", stream=io.StringIO(), log=lambda f, t: lines.append(t),
                          clock=clock)
  clock.now += 2.0
  bar.update(1, samples=10)
  bar.close()
  assert lines == ["validation: 1 steps, 5 samples/s"]


def test_disabled_reports_nothing_and_format_eta():
  lines = []
  bar = progress.Progress("x", total=3, log=lambda f, t: lines.append(t), enabled=False)
  bar.update()
  bar.close()
  assert lines == [] and bar.steps == 0
  assert progress.format_eta(3725.4) == "1:02:05" and progress.format_eta(-3) == "0:00:00"
