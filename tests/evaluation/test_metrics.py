"""mammo_tf.evaluation.metrics against sklearn on random inputs (with ties) and bootstrap checks."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mammo_tf.evaluation import metrics


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 5, 40])   # None = continuous; else ties from rounding
def test_auc_matches_sklearn(seed, levels):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  y = rng.integers(0, 2, n)
  y[0], y[1] = 0, 1
  s = rng.normal(size=n) + 0.7 * y
  if levels is not None:
    s = np.round(s * levels / 4.0) / levels
  assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_matches_sklearn(seed):
  rng = np.random.default_rng(100 + seed)
  y = rng.integers(0, 2, 120)
  s = np.round(rng.uniform(size=120), 1)   # heavy ties
  fpr, tpr, thr = metrics.roc_curve(y, s)
  fpr_ref, tpr_ref, thr_ref = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, fpr_ref)
  np.testing.assert_allclose(tpr, tpr_ref)
  np.testing.assert_array_equal(thr[1:], thr_ref[1:])
  assert np.isinf(thr[0])
  assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(y, s))


def test_auc_exact_small_cases():
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert metrics.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
  assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
  # 1 positive above 2 of 3 negatives, tied with the third: (2 + 0.5) / 3.
  assert metrics.roc_auc([0, 0, 0, 1], [0.1, 0.2, 0.9, 0.9]) == pytest.approx(2.5 / 3)
  with pytest.raises(ValueError, match="one class"):
    metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="binary"):
    metrics.roc_auc([0, 2], [0.1, 0.2])


def test_weighted_auc_equals_auc_of_repeated_samples():
  rng = np.random.default_rng(7)
  y = rng.integers(0, 2, 50)
  y[:2] = (0, 1)
  s = np.round(rng.normal(size=50), 1)
  w = rng.integers(0, 4, size=(3, 50))
  w[:, :2] = 1
  got = metrics.weighted_auc(y, s, w)
  for b in range(3):
    idx = np.repeat(np.arange(50), w[b])
    assert got[b] == pytest.approx(skm.roc_auc_score(y[idx], s[idx]), abs=1e-12)
  # One class only under a weighting -> NaN, not an error.
  w_neg = np.where(y == 0, 1, 0)
  assert np.isnan(metrics.weighted_auc(y, s, w_neg))


def test_mean_std_population_and_sample():
  mean, std = metrics.mean_std([0.90, 0.91, 0.92])
  assert mean == pytest.approx(0.91)
  assert std == pytest.approx(np.std([0.90, 0.91, 0.92]))
  assert std == pytest.approx(np.sqrt(2.0 / 3.0) * 0.01)
  _, sample = metrics.mean_std([0.90, 0.91, 0.92], ddof=1)
  assert sample == pytest.approx(0.01)


def _cohort(seed, num_patients=40, per_patient=3, num_seeds=3):
  rng = np.random.default_rng(seed)
  patients = np.repeat([f"p{i:03d}" for i in range(num_patients)], per_patient)
  y = rng.integers(0, 2, patients.size)
  scores = rng.normal(size=(num_seeds, patients.size)) + 1.0 * y
  return y, scores, patients


def test_bootstrap_contains_estimate_and_is_deterministic():
  y, scores, patients = _cohort(3)
  point = np.mean([metrics.roc_auc(y, row) for row in scores])
  ci = metrics.patient_bootstrap_ci(y, scores, patients, num_resamples=400, seed=11)
  assert ci.low < point < ci.high
  assert 0.0 <= ci.low and ci.high <= 1.0
  assert ci.num_valid == 400 and ci.level == 0.95
  again = metrics.patient_bootstrap_ci(y, scores, patients, num_resamples=400, seed=11)
  assert again == ci
  other = metrics.patient_bootstrap_ci(y, scores, patients, num_resamples=400, seed=12)
  assert (other.low, other.high) != (ci.low, ci.high)
  # Chunking does not change the result.
  chunked = metrics.patient_bootstrap_ci(y, scores, patients, num_resamples=400, seed=11,
                                         chunk=37)
  assert (chunked.low, chunked.high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_bootstrap_resamples_patients_not_images():
  # Every patient has identical images: resampling patients must give the same interval as a
  # cohort of one image per patient whose resamples carry weight `per_patient`.
  rng = np.random.default_rng(5)
  y1 = rng.integers(0, 2, 30)
  y1[:2] = (0, 1)
  s1 = rng.normal(size=30) + y1
  p1 = np.arange(30)
  y3, s3, p3 = np.repeat(y1, 3), np.repeat(s1, 3), np.repeat(p1, 3)
  a = metrics.patient_bootstrap_ci(y1, s1, p1, num_resamples=300, seed=0)
  b = metrics.patient_bootstrap_ci(y3, s3, p3, num_resamples=300, seed=0)
  assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=1e-12)
  # Resampling images instead would give a narrower interval for the 3x cohort.
  c = metrics.patient_bootstrap_ci(y3, s3, np.arange(90), num_resamples=300, seed=0)
  assert (c.high - c.low) < (b.high - b.low)
