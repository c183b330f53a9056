"""ROC AUC, ROC curve points, mean ± std over seeds and patient-level bootstrap intervals (NumPy).

The paper (§3) reports the patch-level ROC AUC averaged over three random patch extractions and
uses their standard deviation as the error. `mean_std` uses the population standard deviation
(``np.std`` with ``ddof=0``) by default; the sample value (``ddof=1``) is larger by
``sqrt(n / (n - 1))`` (x1.22 for three seeds) and is reported beside it by the evaluation.

AUC is the Mann-Whitney statistic with ties counted as 1/2, which equals the trapezoidal area
under the ROC curve and ``sklearn.metrics.roc_auc_score``. It accepts per-sample weights so that a
bootstrap resample (a multiset of patients) is a vector of multiplicities, and many resamples
are evaluated at once as a weight matrix (`weighted_auc`): one sort, then O(B * N) work.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def _as_labels(labels) -> np.ndarray:
  y = np.asarray(labels).reshape(-1)
  if y.dtype == bool:
    return y
  uniq = np.unique(y)
  if not np.all(np.isin(uniq, (0, 1))):
    raise ValueError(f"labels must be binary 0/1, got values {uniq[:5].tolist()}")
  return y.astype(bool)


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Ascending sort order of `scores` and the start index of each group of equal scores."""
  order = np.argsort(scores, kind="mergesort")
  s = scores[order]
  starts = np.concatenate([[0], np.nonzero(np.diff(s))[0] + 1])
  return order, starts


def weighted_auc(labels, scores, weights) -> np.ndarray:
  """ROC AUC for one or many weightings of the same samples.

  Args:
    labels: [N] binary (1 = positive).
    scores: [N] real; higher means more likely positive.
    weights: [N] or [B, N] non-negative sample weights (e.g. bootstrap multiplicities).

  Returns:
    float64 array of shape ``weights.shape[:-1]``: AUC per weighting, NaN where the weighted
    positives or negatives sum to zero.
  """
  y = _as_labels(labels)
  s = np.asarray(scores, np.float64).reshape(-1)
  w = np.asarray(weights, np.float64)
  if y.shape != s.shape or w.shape[-1] != s.shape[0]:
    raise ValueError(f"shape mismatch: labels {y.shape}, scores {s.shape}, weights {w.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores contain NaN or infinity")
  squeeze = w.ndim == 1
  w = np.atleast_2d(w)
  order, starts = _tie_groups(s)
  ws = w[:, order]
  ys = y[order]
  pos = np.add.reduceat(np.where(ys, ws, 0.0), starts, axis=1)   # [B, G]
  neg = np.add.reduceat(np.where(ys, 0.0, ws), starts, axis=1)
  neg_below = np.cumsum(neg, axis=1) - neg                      # negatives strictly lower
  num = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
  den = pos.sum(axis=1) * neg.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
  return auc[0] if squeeze else auc


def roc_auc(labels, scores) -> float:
  """ROC AUC (ties count 1/2); equals ``sklearn.metrics.roc_auc_score``.

  Raises:
    ValueError: when only one class is present (the AUC is undefined).
  """
  y = _as_labels(labels)
  if y.all() or not y.any():
    raise ValueError(f"ROC AUC is undefined with one class only ({y.size} samples, "
                     f"{int(y.sum())} positive)")
  return float(weighted_auc(y, scores, np.ones(y.shape, np.float64)))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC curve points (fpr, tpr, thresholds), one per distinct score, from (0, 0).

  Same values as ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``: the
  thresholds are the distinct scores in decreasing order, preceded by ``+inf``.
  """
  y = _as_labels(labels)
  s = np.asarray(scores, np.float64).reshape(-1)
  if y.all() or not y.any():
    raise ValueError("ROC curve is undefined with one class only")
  order = np.argsort(-s, kind="mergesort")
  s_desc, y_desc = s[order], y[order]
  last = np.concatenate([np.nonzero(np.diff(s_desc))[0], [s.size - 1]])
  tps = np.cumsum(y_desc)[last].astype(np.float64)
  fps = (last + 1 - tps).astype(np.float64)
  tpr = np.concatenate([[0.0], tps / tps[-1]])
  fpr = np.concatenate([[0.0], fps / fps[-1]])
  thresholds = np.concatenate([[np.inf], s_desc[last]])
  return fpr, tpr, thresholds


def mean_std(values: Sequence[float], ddof: int = 0) -> tuple[float, float]:
  """Mean and standard deviation (``np.std`` with `ddof`; 0 = population, the default)."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    raise ValueError("mean_std needs at least one value")
  std = float(np.std(v, ddof=ddof)) if v.size > ddof else float("nan")
  return float(np.mean(v)), std


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
  """Percentile bootstrap interval of the (seed-averaged) AUC."""
  low: float
  high: float
  level: float
  num_resamples: int
  num_valid: int        # resamples with both classes present
  seed: int


def patient_bootstrap_ci(labels, scores, patients, *, num_resamples: int = 1000,
                         level: float = 0.95, seed: int = 0,
                         chunk: int = 250) -> BootstrapInterval:
  """Patient-level percentile bootstrap interval of the ROC AUC.

  Patients are resampled with replacement (all images of a drawn patient come along, as many
  times as the patient is drawn). With several patch-extraction seeds, pass `scores` as
  ``[S, N]`` (one row per seed, columns aligned with `labels`/`patients`): each resample's
  statistic is the mean over seeds of the per-seed AUC, i.e. the quantity the paper reports.

  Args:
    labels: [N] binary labels.
    scores: [N] or [S, N] scores.
    patients: [N] patient keys (any hashable values, e.g. hashed ids).
    num_resamples: bootstrap replicates.
    level: coverage, e.g. 0.95.
    seed: the resampling is a pure function of it.
    chunk: replicates evaluated per vectorised block (memory: chunk x N floats).

  Returns:
    BootstrapInterval; resamples with one class only are dropped (counted in num_valid).
  """
  y = _as_labels(labels)
  s = np.atleast_2d(np.asarray(scores, np.float64))
  p = np.asarray(patients).reshape(-1)
  if s.shape[1] != y.size or p.size != y.size:
    raise ValueError(f"shape mismatch: labels {y.shape}, scores {s.shape}, patients {p.shape}")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  _, patient_index = np.unique(p, return_inverse=True)
  num_patients = int(patient_index.max()) + 1
  rng = np.random.default_rng(seed)
  stats = []
  remaining = num_resamples
  while remaining > 0:
    b = min(chunk, remaining)
    remaining -= b
    counts = rng.multinomial(num_patients, np.full(num_patients, 1.0 / num_patients), size=b)
    weights = counts[:, patient_index].astype(np.float64)             # [b, N]
    per_seed = np.stack([weighted_auc(y, row, weights) for row in s])  # [S, b]
    stats.append(per_seed.mean(axis=0))
  stats = np.concatenate(stats)
  valid = stats[np.isfinite(stats)]
  if valid.size == 0:
    return BootstrapInterval(float("nan"), float("nan"), level, num_resamples, 0, seed)
  alpha = (1.0 - level) / 2.0
  low, high = np.quantile(valid, [alpha, 1.0 - alpha])
  return BootstrapInterval(float(low), float(high), level, num_resamples, int(valid.size), seed)
