"""Unit tests of the training building blocks (no dataset needed)."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk_metrics

from mammo_tf.training import loop
from mammo_tf.training import optim
from mammo_tf.training import policy
from mammo_tf.training import runtime
from mammo_tf.training import selection
from mammo_tf.training import tensorboard

# -- best-AUC selection and early stopping ---------------------------------------------------------

def test_best_epoch_on_a_scripted_auc_sequence():
  aucs = [0.55, 0.61, 0.60, 0.74, 0.74, 0.70, 0.73]
  tracker = selection.BestTracker()
  flags = [tracker.update(e, a) for e, a in enumerate(aucs, start=1)]
  assert flags == [True, True, False, True, False, False, False]
  assert tracker.best_epoch == 4 and tracker.best_value == 0.74   # the tie at epoch 5 keeps 4
  assert selection.select_best(aucs) == (4, 7)                    # the same, replayed


def test_early_stopping_counts_epochs_without_progress():
  assert selection.select_best([0.5, 0.6, 0.59, 0.58, 0.9], patience=2) == (2, 4)
  assert selection.select_best([0.5, 0.6, 0.59, 0.61, 0.6], patience=2) == (4, 5)
  tracker = selection.BestTracker(patience=1)
  tracker.update(1, 0.7)
  tracker.update(2, 0.6)
  assert tracker.should_stop
  restored = selection.BestTracker.from_state(tracker.state())
  assert restored == tracker


def test_nan_auc_never_wins_but_the_first_epoch_is_kept():
  nan = float("nan")
  assert selection.select_best([nan, nan])[0] == 1
  assert selection.select_best([nan, 0.5, nan, 0.4])[0] == 2
  one_class = {"label": np.ones(4), "probability": np.arange(4.0)}
  assert math.isnan(loop.Task().selection_metric(one_class))


def test_selection_metric_is_sklearns_roc_auc():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  scores = rng.random(200) + 0.3 * labels
  outputs = {"label": labels.astype(np.float32), "probability": scores}
  assert loop.Task().selection_metric(outputs) == pytest.approx(
      sk_metrics.roc_auc_score(labels, scores), abs=1e-12)


# -- optimisers and weight decay -------------------------------------------------------------------

def test_coupled_l2_gradient_is_wd_times_w():
  w = keras.Variable(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32))
  b = keras.Variable(np.array([4.0], np.float32))
  with tf.GradientTape() as tape:
    penalty = optim.l2_penalty([w, b], 5e-4)
  gw, gb = tape.gradient(penalty, [w, b])
  np.testing.assert_allclose(gw, 5e-4 * w.numpy(), rtol=1e-6)
  np.testing.assert_allclose(gb, 5e-4 * b.numpy(), rtol=1e-6)
  assert float(penalty) == pytest.approx(0.5 * 5e-4 * (1 + 4 + 0.25 + 9 + 16))


def test_optimizer_kinds():
  adam = optim.make_optimizer(optim.OptimizerSpec(5e-5, 5e-4))
  adamw = optim.make_optimizer(optim.OptimizerSpec(5e-5, 5e-4, decoupled=True))
  assert type(adam) is keras.optimizers.Adam and adam.weight_decay is None
  assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 5e-4
  assert optim.coupled_l2(optim.OptimizerSpec(5e-5, 5e-4)) == 5e-4
  assert optim.coupled_l2(optim.OptimizerSpec(5e-5, 5e-4, decoupled=True)) == 0.0
  assert optim.current_learning_rate(adam) == pytest.approx(5e-5)
  with pytest.raises(ValueError, match="learning rate"):
    optim.make_optimizer(optim.OptimizerSpec(0.0, 1e-4))


def test_decoupled_decay_shrinks_weights_without_gradient():
  w = keras.Variable(np.full((3,), 2.0, np.float32))
  opt = optim.make_optimizer(optim.OptimizerSpec(0.1, 0.5, decoupled=True))
  opt.apply([tf.zeros(3)], [w])
  np.testing.assert_allclose(w.numpy(), 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)


# -- runtime ---------------------------------------------------------------------------------------

def test_epoch_seeds_are_fixed_and_distinct():
  seeds = [runtime.epoch_seed(0, e) for e in range(1, 50)]
  assert len(set(seeds)) == len(seeds)
  assert seeds == [runtime.epoch_seed(0, e) for e in range(1, 50)]
  assert runtime.epoch_seed(1, 1) != runtime.epoch_seed(0, 1)
  assert all(0 <= s < 2 ** 31 for s in seeds)


def test_strategy_selection_on_cpu():
  assert runtime.select_strategy("auto").num_replicas_in_sync == 1
  assert runtime.select_strategy("default") is tf.distribute.get_strategy()
  with pytest.raises(ValueError, match="unknown strategy"):
    runtime.select_strategy("tpu_pod")
  if not os.environ.get("TF_CONFIG"):
    with pytest.raises(ValueError, match="TF_CONFIG"):
      runtime.select_strategy("multi_worker")
  assert runtime.precision_policy(True) == "mixed_bfloat16"
  assert runtime.precision_policy(False) == "float32"
  before = keras.config.dtype_policy().name
  with runtime.dtype_policy("mixed_bfloat16"):
    assert keras.layers.Dense(1).compute_dtype == "bfloat16"
  assert keras.config.dtype_policy().name == before


# -- TensorBoard -----------------------------------------------------------------------------------

def test_pr_curve_data_counts():
  labels = np.array([1, 1, 0, 0, 1])
  scores = np.array([0.9, 0.4, 0.6, 0.1, 0.4])
  data = tensorboard.pr_curve_data(labels, scores, num_thresholds=11)
  tp, fp, tn, fn, precision, recall = data
  # threshold 0.5 (index 5): predicted positive = {0.9, 0.6}
  assert (tp[5], fp[5], tn[5], fn[5]) == (1, 1, 1, 2)
  assert precision[5] == pytest.approx(0.5) and recall[5] == pytest.approx(1 / 3)
  assert (tp[0], fp[0]) == (3, 2) and recall[0] == 1.0
  assert np.all(tp + fn == 3) and np.all(fp + tn == 2)


def test_patch_grid_layout():
  patches = np.full((5, 4, 4, 1), 4095.0, np.float32)
  grid = tensorboard.patch_grid(patches, np.array([1, 0, 1, 0, 1]), border=1)
  assert grid.shape == (1, 2 * 6, 3 * 6, 1)        # 5 patches -> 3 columns x 2 rows
  assert grid[0, 0, 0, 0] == 1.0 and grid[0, 0, 6, 0] == pytest.approx(0.3)
  assert grid[0, 1, 1, 0] == 1.0 and grid[0, 7, 13, 0] == 0.0   # an empty cell stays 0


def test_summary_logger_writes_named_tags(tmp_path):
  logger = tensorboard.SummaryLogger(str(tmp_path))
  rng = np.random.default_rng(0)
  labels, scores = rng.integers(0, 2, 40), rng.random(40)
  logger.scalars("train", {"loss": 0.5, "skipped": float("nan")}, step=1)
  logger.patches("train", rng.uniform(0, 4095, (4, 8, 8, 1)), np.array([0, 1, 0, 1]), step=1)
  logger.roc_curve("val", labels, scores, step=1)
  logger.pr_curve("val", labels, scores, step=1)
  logger.close()
  tags = tensorboard.read_tags(str(tmp_path))
  assert tags == {"train": {"loss", "patches"}, "val": {"roc_curve", "pr_curve"}}


# -- SpotTune policy statistics --------------------------------------------------------------------

UNITS = [f"stage{i}_unit{j}" for i in (1, 2, 3) for j in (1, 2, 3, 4)]


def test_policy_summary_fractions():
  gates = np.zeros((4, 12), np.float32)
  gates[:, 0] = 1
  gates[:2, 5] = 1
  labels = np.array([1, 1, 0, 0])
  s = policy.policy_summary(gates, labels, UNITS, decision="argmax", hm=False)
  assert s["fraction_tuned"][0] == 1.0 and s["fraction_tuned"][5] == 0.5
  assert s["fraction_tuned_positive"][5] == 1.0 and s["fraction_tuned_negative"][5] == 0.0
  assert s["stages"] == [1] * 4 + [2] * 4 + [3] * 4 and s["num_patches"] == 4
  with pytest.raises(ValueError, match="hard decisions"):
    policy.fraction_tuned(np.full((2, 3), 0.5))


def test_policy_figure_side_by_side(tmp_path):
  rng = np.random.default_rng(1)
  raw = policy.policy_summary((rng.random((10, 12)) < 0.3).astype(float), np.arange(10) % 2,
                              UNITS, decision="argmax", hm=False)
  hm = policy.policy_summary((rng.random((10, 12)) < 0.7).astype(float), np.arange(10) % 2,
                             UNITS, decision="argmax", hm=True)
  policy.save_policy(str(tmp_path / "raw.json"), raw)
  policy.save_policy(str(tmp_path / "hm.json"), hm)
  both = policy.plot_policy_comparison(str(tmp_path / "raw.json"), str(tmp_path / "hm.json"),
                                       str(tmp_path / "fig3.png"))
  one = policy.plot_policy_file(str(tmp_path / "hm.json"), str(tmp_path / "one.png"))
  for path in (both, one):
    image = tf.io.decode_png(open(path, "rb").read()).numpy()
    assert image.shape[0] > 200 and image.shape[1] > 400
  assert policy.load_policy(str(tmp_path / "hm.json")) == runtime.json_round_trip(hm)
