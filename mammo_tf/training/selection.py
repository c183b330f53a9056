"""Best-epoch selection and early stopping (paper §2.3), as a pure state machine.

The training loop calls `BestTracker.update(epoch, value)` once per epoch (epochs numbered from 1)
with the job's selection metric (validation ROC AUC, `mammo_tf.evaluation.metrics.roc_auc`); it
answers whether this epoch is the new best (then the loop writes ``best.keras``) and whether to
stop early. The state is a small dict so that the epoch checkpoint can carry it across a restart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


def is_improvement(value: float, best: float | None, min_delta: float = 0.0) -> bool:
  """True when ``value`` beats ``best`` by more than ``min_delta`` (ties keep the earlier epoch).

  A number beats ``None`` and NaN; NaN never beats anything except ``None`` (the first epoch is
  always kept, so a model exists even when the validation AUC is undefined).
  """
  if best is None:
    return True
  if math.isnan(value):
    return False
  if math.isnan(best):
    return True
  return value > best + min_delta


@dataclasses.dataclass
class BestTracker:
  """Keeps the best epoch by a "higher is better" metric and counts epochs without progress.

  Attributes:
    patience: stop after this many consecutive epochs without improvement (0 = never stop).
    min_delta: an improvement must exceed the best value by more than this.
  """
  patience: int = 0
  min_delta: float = 0.0
  best_value: float | None = None
  best_epoch: int = 0                         # 1-based; 0 until the first update
  bad_epochs: int = 0

  def update(self, epoch: int, value: float) -> bool:
    """Records ``value`` for ``epoch`` (1-based, as in ``history.json``); returns True when it
    is the new best."""
    if is_improvement(float(value), self.best_value, self.min_delta):
      self.best_value = float(value)
      self.best_epoch = int(epoch)
      self.bad_epochs = 0
      return True
    self.bad_epochs += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_epochs >= self.patience

  def state(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_state(cls, state: Mapping[str, Any]) -> "BestTracker":
    return cls(**dict(state))


def select_best(values: list[float], patience: int = 0, min_delta: float = 0.0
                ) -> tuple[int, int]:
  """Replays a metric sequence of epochs 1, 2, ...: (best epoch, epochs run before stopping)."""
  tracker = BestTracker(patience=patience, min_delta=min_delta)
  for epoch, value in enumerate(values, start=1):
    tracker.update(epoch, value)
    if tracker.should_stop:
      return tracker.best_epoch, epoch
  return tracker.best_epoch, len(values)
