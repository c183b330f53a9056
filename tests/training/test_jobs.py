"""The three training jobs on real tiny TFRecords: steps, selection, logs, save/reload/export."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk_metrics

from mammo_tf.data import cdf
from mammo_tf.data import pipeline
from mammo_tf.models import resnet
from mammo_tf.models import spottune
from mammo_tf.training import export
from mammo_tf.training import jobs
from mammo_tf.training import loop
from mammo_tf.training import optim
from mammo_tf.training import selection
from mammo_tf.training import spottune_train
from mammo_tf.training import tensorboard
from tests import testing
from tests.training.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _val_batch(data_dir, cfg, domain="ffdm"):
  return next(iter(pipeline.make_eval_dataset(data_dir, domain, "val", cfg, seed=0)))


def _bce(model, x, y, training):
  p = loop.probability_of(model(x, training=training))
  return float(tf.reduce_mean(loop.bce(y, p)))


def _trainer(model, lr, cfg):
  spec = optim.OptimizerSpec(lr, cfg.train.weight_decay)
  group = loop.VariableGroup("all", list(model.trainable_variables),
                             optim.make_optimizer(spec), optim.coupled_l2(spec))
  return loop.Trainer(model, [group], cfg, tf.distribute.get_strategy())


# -- the step itself -------------------------------------------------------------------------------

def test_two_steps_lower_the_loss_on_a_fixed_batch(tiny_cfg, data_dir):
  keras.utils.set_random_seed(0)
  model = resnet.build_classifier(tiny_cfg.model, tiny_cfg.input_size)
  x, y = next(iter(pipeline.make_train_dataset(data_dir, "ffdm", "train", tiny_cfg, seed=3)))
  trainer = _trainer(model, 1e-3, tiny_cfg)
  before = _bce(model, x, y, training=True)
  for _ in range(2):
    trainer._train_fn(x, y)
  after = _bce(model, x, y, training=True)
  assert after < before, (before, after)


def test_learnability_overfits_eight_patches(tiny_cfg, data_dir):
  batch = _val_batch(data_dir, tiny_cfg)          # 4 positive + 4 negative val images
  x, y = batch["patch"][:8], batch["label"][:8]
  assert int(tf.reduce_sum(y)) == 4
  keras.utils.set_random_seed(1)
  model = resnet.build_classifier(tiny_cfg.model, tiny_cfg.input_size)
  trainer = _trainer(model, 3e-3, tiny_cfg)
  for step in range(200):
    trainer._train_fn(x, y)
    if step >= 30 and step % 10 == 0:
      p = loop.probability_of(model(x, training=False)).numpy()
      if np.all((p > 0.5) == (y.numpy() > 0.5)):
        break
  p = loop.probability_of(model(x, training=False)).numpy()
  assert np.mean((p > 0.5) == (y.numpy() > 0.5)) == 1.0, p


# -- the base job ----------------------------------------------------------------------------------

def test_base_run_files_and_best_selection(base_run, tiny_cfg, data_dir):
  w = base_run.paths["workdir"]
  for name in ("config.json", "run.json", "history.json", "done.json", "best.keras",
               "backup/state.npz", "export/saved_model.pb"):
    assert os.path.exists(os.path.join(w, name)), name
  history = json.load(open(os.path.join(w, "history.json")))
  assert [r["epoch"] for r in history] == [1, 2, 3] and base_run.epochs_run == 3
  aucs = [float("nan") if r["val_auc"] is None else r["val_auc"] for r in history]
  best_epoch, _ = selection.select_best(aucs)
  assert base_run.best_epoch == best_epoch
  # best.keras really is the model of the best epoch: it reproduces that epoch's validation AUC.
  model = keras.models.load_model(base_run.paths["best"])
  val = pipeline.make_eval_dataset(data_dir, "ffdm", "val", tiny_cfg, seed=0)
  probs = np.concatenate([model.predict_on_batch(b["patch"]).reshape(-1) for b in val])
  labels = np.concatenate([b["label"].numpy() for b in val])
  assert sk_metrics.roc_auc_score(labels, probs) == pytest.approx(base_run.best_val_auc, abs=1e-6)
  done = json.load(open(os.path.join(w, "done.json")))
  assert done["job"] == "base" and done["best_epoch"] == base_run.best_epoch
  assert json.load(open(os.path.join(w, "config.json")))["train"]["epochs"] == 3


class _ScriptedSelection(jobs.BaseTask):
  """The base job with a scripted selection metric: the loop must follow it, not the AUC."""

  def __init__(self, values):
    self.values = list(values)

  def selection_metric(self, outputs):
    del outputs
    return self.values.pop(0)


def test_a_task_decides_the_selection_metric_and_the_loop_keeps_that_epoch(tiny_cfg, data_dir,
                                                                           tmp_path):
  result = loop.run(_ScriptedSelection([0.2, 0.9, 0.5]), tiny_cfg, data_dir,
                    str(tmp_path / "scripted"), log_images=False)
  assert [r["val_auc"] for r in result.history] == [0.2, 0.9, 0.5]
  assert [r["best"] for r in result.history] == [True, True, False]
  assert result.best_epoch == 2 and result.best_val_auc == 0.9
  # best.keras is not the last epoch's model: the checkpoint (after epoch 3) trained on from it.
  best = keras.models.load_model(result.paths["best"])
  with np.load(os.path.join(result.paths["backup"], "state.npz")) as state:
    final = [state[f"model_{i:05d}"] for i in range(len(best.variables))]
  assert [a.shape for a in final] == [tuple(v.shape) for v in best.variables]
  assert any(not np.array_equal(a, v.numpy()) for a, v in zip(final, best.variables))


def test_base_run_is_reused_and_refuses_another_config(base_run, tiny_cfg, data_dir):
  again = jobs.train_base(tiny_cfg, data_dir, base_run.paths["workdir"])
  assert again.best_epoch == base_run.best_epoch and again.history == base_run.history
  os.rename(base_run.paths["done"], base_run.paths["done"] + ".bak")
  try:
    with pytest.raises(ValueError, match="train.learning_rate"):
      jobs.train_base(tiny_config("train.epochs=3", "train.learning_rate=0.5"), data_dir,
                      base_run.paths["workdir"])
  finally:
    os.rename(base_run.paths["done"] + ".bak", base_run.paths["done"])


def test_tensorboard_tags(base_run):
  tags = tensorboard.read_tags(base_run.paths["tb"])
  assert {"loss", "total_loss", "auc", "learning_rate", "patches"} <= tags["train"]
  assert {"auc", "roc_curve", "pr_curve"} <= tags["val"]


# -- export ----------------------------------------------------------------------------------------

def _uint16_patches(data_dir, cfg, domain, n=6):
  return np.rint(_val_batch(data_dir, cfg, domain)["patch"][:n].numpy()).astype(np.uint16)


def test_export_in_a_fresh_process_matches_keras(base_run, tiny_cfg, data_dir, tmp_path):
  x = _uint16_patches(data_dir, tiny_cfg, "ffdm")
  y, info = testing.serve_in_fresh_process(base_run.paths["export"], x, tmp_path)
  assert not info["mammo_tf"] and not info["path"]
  assert info["keys"] == ["probability"] and info["dtype"] == "float32"
  model = keras.models.load_model(base_run.paths["best"])
  want = model.predict_on_batch(x.astype(np.float32)).reshape(-1)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  assert "uint16" in info["errors"]["dtype"]
  assert "expects uint16 patches of shape [batch, 64, 64, 1]" in info["errors"]["shape"]


def test_saved_model_cli_lists_the_signature(base_run):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  cmd = ([cli] if os.path.exists(cli)
         else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"])
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run(cmd + ["show", "--dir", base_run.paths["export"], "--all"], env=env,
                       capture_output=True, text=True, check=True, timeout=300).stdout
  assert "signature_def['serving_default']" in out
  assert "dtype: DT_UINT16" in out and "shape: (-1, 64, 64, 1)" in out
  assert "outputs['probability']" in out and "dtype: DT_FLOAT" in out


# -- FC-only fine-tuning ---------------------------------------------------------------------------

def test_finetune_changes_only_the_head(base_run, tiny_cfg, data_dir, tmp_path):
  result = jobs.finetune(tiny_cfg, data_dir, base_run.paths["best"], str(tmp_path / "ft"),
                         hm=True)
  assert result.epochs_run == 1 and os.path.exists(result.paths["done"])
  base = keras.models.load_model(base_run.paths["best"])
  tuned = keras.models.load_model(result.paths["best"])
  changed = set()
  for vb, vt in zip(base.variables, tuned.variables):
    assert vb.path == vt.path
    if not np.array_equal(vb.numpy(), vt.numpy()):
      changed.add(vb.path)
  assert changed == {"head/kernel", "head/bias"}
  # HM export: uint16 MIP patches in, HM + classifier inside.
  lut = cdf.lut_from_files(os.path.join(data_dir, "cdf_dbt.npz"),
                           os.path.join(data_dir, "cdf_ffdm.npz"))
  np.testing.assert_array_equal(np.load(result.paths["hm_lut"]), lut)
  x = _uint16_patches(data_dir, tiny_cfg, "dbt")
  served = export.load_serving(result.paths["export"])(patch=tf.constant(x))["probability"]
  want = tuned.predict_on_batch(cdf.apply_lut(x, lut, x > 0)).reshape(-1)
  np.testing.assert_allclose(served.numpy(), want, rtol=1e-5, atol=1e-6)


# -- SpotTune --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_spottune_job_trains_saves_reloads_exports(base_run, data_dir, tmp_path):
  cfg = tiny_config("train.spottune_epochs=1", "train.policy_learning_rate=0.01")
  result = spottune_train.train_spottune(cfg, data_dir, base_run.paths["best"],
                                         str(tmp_path / "st"), hm=False)
  assert result.epochs_run == 1
  base = keras.models.load_model(base_run.paths["best"])
  model = keras.models.load_model(result.paths["best"])
  assert isinstance(model, spottune.SpotTuneModel)
  unit = "stage2_unit1"
  frozen = model.get_layer(unit).frozen_unit
  tuned = model.get_layer(unit).tuned_unit
  for a, b in zip(base.get_layer(unit).conv1.get_weights(), frozen.conv1.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(base.get_layer(unit).conv1.get_weights()[0],
                            tuned.conv1.get_weights()[0])
  history = result.history[0]
  assert history["learning_rate_policy"] == pytest.approx(0.01)
  assert len(history["policy"]) == 12
  pol = json.load(open(result.paths["policy"]))
  assert pol["decision"] == "argmax" and pol["units"][0] == "stage1_unit1"
  assert pol["num_patches"] == 8 and all(0.0 <= f <= 1.0 for f in pol["fraction_tuned"])
  tags = tensorboard.read_tags(result.paths["tb"])
  assert {"policy/stage1_unit1", "policy/stage3_unit4", "policy", "auc"} <= tags["val"]
  assert {"learning_rate", "learning_rate_policy"} <= tags["train"]
  x = _uint16_patches(data_dir, cfg, "dbt")
  served = export.load_serving(result.paths["export"])(patch=tf.constant(x))["probability"]
  want = model.predict_on_batch(x.astype(np.float32)).reshape(-1)
  np.testing.assert_allclose(served.numpy(), want, rtol=1e-5, atol=1e-6)
