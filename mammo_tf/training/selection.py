"""Model selection by validation ROC AUC and early stopping (paper §2.3), as pure state machines.

The training loop calls `BestTracker.update(epoch, auc)` once per epoch; it answers whether this
epoch is the new best (then the loop writes ``best.keras``) and whether to stop early. The state
is a small dict so that the epoch checkpoint can carry it across a restart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
from sklearn import metrics as sk_metrics


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC by `sklearn.metrics.roc_auc_score`; NaN when only one class is present."""
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} scores")
  if len(np.unique(labels)) < 2:
    return float("nan")
  return float(sk_metrics.roc_auc_score(labels, scores))


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
  best_epoch: int = -1
  bad_epochs: int = 0

  def update(self, epoch: int, value: float) -> bool:
    """Records ``value`` for ``epoch`` (0-based); returns True when it is the new best."""
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
  """Replays a metric sequence: (best epoch, number of epochs run before early stopping)."""
  tracker = BestTracker(patience=patience, min_delta=min_delta)
  for epoch, value in enumerate(values):
    tracker.update(epoch, value)
    if tracker.should_stop:
      return tracker.best_epoch, epoch + 1
  return tracker.best_epoch, len(values)
