"""A small process pool that notices dead workers and enforces a per-task time limit.

`multiprocessing.Pool` waits forever when a worker is killed (by the OOM killer, say) in the middle
of a task. Here every worker is a spawned process with its own pipe; the parent waits on the pipes
*and* the process sentinels, so a worker that dies is seen at once:

* the task it held is given to a fresh worker once more (`retries`); a task whose worker dies
  again is reported as a `Failure` ("died"), not retried forever;
* a task running longer than `time_limit` seconds has its worker killed and is reported as a
  `Failure` ("timeout");
* workers that keep dying before taking any task (e.g. at import) stop the run with `PoolError`.

Results come back as ``(task index, result)`` in completion order. Exceptions raised by the task
function are re-raised in the parent (the task function is expected to catch what it can).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import time
from multiprocessing import connection
from typing import Any, Callable, Iterator, Sequence


class PoolError(RuntimeError):
  """The pool cannot go on (workers die before taking any task)."""


@dataclasses.dataclass(frozen=True)
class Failure:
  """A task that did not finish through no fault of its input: the worker died or timed out."""
  kind: str        # "died" | "timeout"
  message: str


def _worker_main(conn, fn, initializer, initargs) -> None:
  if initializer is not None:
    initializer(*initargs)
  conn.send(("ready",))
  while True:
    msg = conn.recv()
    if msg is None:
      return
    idx, task = msg
    try:
      out = (idx, "ok", fn(task))
    except Exception as e:
      out = (idx, "error", e)
    conn.send(out)


class _Slot:
  """One worker process, its pipe and the task it holds."""

  def __init__(self, ctx, fn, initializer, initargs):
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=_worker_main, args=(child, fn, initializer, initargs),
                            daemon=True)
    self.proc.start()
    child.close()
    self.ready = False
    self.task: int | None = None
    self.deadline = float("inf")

  def give(self, idx: int, task: Any, time_limit: float | None) -> None:
    self.conn.send((idx, task))
    self.task = idx
    self.deadline = time.monotonic() + time_limit if time_limit else float("inf")

  def stop(self, kill: bool = False) -> None:
    if kill:
      self.proc.kill()
    else:
      try:
        self.conn.send(None)
      except (OSError, ValueError):
        pass
    self.proc.join(timeout=30)
    if self.proc.is_alive():
      self.proc.kill()
      self.proc.join()
    self.conn.close()


def run(tasks: Sequence[Any], fn: Callable[[Any], Any], *, workers: int,
        initializer: Callable | None = None, initargs: tuple = (),
        time_limit: float | None = None, retries: int = 1,
        on_event: Callable[[str], None] | None = None) -> Iterator[tuple[int, Any]]:
  """Runs ``fn(task)`` in `workers` spawned processes; yields ``(index, result or Failure)``."""
  ctx = multiprocessing.get_context("spawn")
  pending = collections.deque(range(len(tasks)))
  deaths: collections.Counter = collections.Counter()
  note = on_event or (lambda msg: None)
  slots: list[_Slot] = []
  idle_deaths = 0
  try:
    while pending or any(s.task is not None for s in slots):
      busy = sum(s.task is not None for s in slots)
      while len(slots) < min(workers, busy + len(pending)):
        slots.append(_Slot(ctx, fn, initializer, initargs))
      for s in slots:
        if s.ready and s.task is None and pending:
          i = pending.popleft()
          s.give(i, tasks[i], time_limit)
      now = time.monotonic()
      timeout = min([s.deadline for s in slots] + [now + 3600]) - now
      ready = connection.wait([s.conn for s in slots] + [s.proc.sentinel for s in slots],
                              timeout=max(timeout, 0))
      for s in list(slots):
        if s.conn in ready:
          try:
            msg = s.conn.recv()
          except (EOFError, OSError):
            msg = None
          if msg is not None and msg[0] == "ready":
            s.ready, idle_deaths = True, 0
            continue
          if msg is not None:
            idx, status, payload = msg
            s.task, s.deadline = None, float("inf")
            if status == "error":
              raise payload
            yield idx, payload
            continue
        if s.conn in ready or s.proc.sentinel in ready or not s.proc.is_alive():
          failure = "died"
        elif time.monotonic() > s.deadline:
          failure = "timeout"
        else:
          continue
        slots.remove(s)
        idx = s.task
        s.stop(kill=True)
        code = s.proc.exitcode
        if idx is None:
          idle_deaths += 1
          note(f"a worker process died before taking a task (exit code {code})")
          if idle_deaths > 2 * max(workers, 1):
            raise PoolError(f"worker processes keep dying at start-up (exit code {code}); see "
                            "the log above")
        elif failure == "timeout":
          note(f"task {idx}: time limit of {time_limit:g} s exceeded; its worker was stopped")
          yield idx, Failure("timeout", f"time limit of {time_limit:g} s per image exceeded "
                                        "(not cached: retried on the next run)")
        else:
          deaths[idx] += 1
          note(f"task {idx}: its worker process died (exit code {code}, e.g. killed by the "
               "out-of-memory killer); the task goes to a fresh worker")
          if deaths[idx] > retries:
            yield idx, Failure("died", "the worker process converting this image died twice "
                                       "(killed, e.g. out of memory; not cached: retried on the "
                                       "next run)")
          else:
            pending.appendleft(idx)
  finally:
    for s in slots:
      s.stop(kill=False)
