"""Model selection over several epochs: fine-tune and SpotTune keep the best DBT validation epoch.

Reference: the first epoch with the highest validation AUC in history.json (np.nanargmax), and
scikit-learn's roc_auc_score of the saved best model on the DBT validation patches, which must
reproduce that epoch's recorded AUC (so best.keras is that epoch's model, not the last one).
"""
import json
import os

import keras
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from mammo_tf.data import pipeline
from mammo_tf.evaluation import evaluate
from mammo_tf.training import jobs
from mammo_tf.training import spottune_train
from tests.training.conftest import tiny_config

EPOCHS = 4


def _check_selection(result, cfg, data_dir, hm_lut=None):
  history = json.load(open(result.paths["history"]))
  aucs = np.array([np.nan if r["val_auc"] is None else r["val_auc"] for r in history])
  assert len(history) == EPOCHS == result.epochs_run
  assert len(set(np.round(aucs[~np.isnan(aucs)], 6))) > 1, aucs   # the choice is a real one
  want = int(np.nanargmax(aucs)) + 1                                 # first epoch of the maximum
  assert result.best_epoch == want
  assert [r["best"] for r in history].count(True) >= 1 and history[want - 1]["best"]
  assert result.best_val_auc == pytest.approx(aucs[want - 1], abs=1e-9)
  evaluate.register_custom_objects()
  model = keras.models.load_model(result.paths["best"])
  val = pipeline.make_eval_dataset(data_dir, "dbt", "val", cfg, seed=0, hm_lut=hm_lut)
  probs = np.concatenate([np.asarray(model.predict_on_batch(b["patch"])).reshape(-1)
                          for b in val])
  labels = np.concatenate([b["label"].numpy() for b in val])
  assert sk_metrics.roc_auc_score(labels, probs) == pytest.approx(aucs[want - 1], abs=1e-6)
  done = json.load(open(result.paths["done"]))
  assert done["best_epoch"] == want and done["epochs_run"] == EPOCHS


def test_finetune_keeps_the_best_validation_epoch(base_run, data_dir, tmp_path):
  cfg = tiny_config(f"train.finetune_epochs={EPOCHS}", "train.finetune_learning_rate=0.05")
  result = jobs.finetune(cfg, data_dir, base_run.paths["best"], str(tmp_path / "ft"), hm=False)
  _check_selection(result, cfg, data_dir)


def test_spottune_keeps_the_best_validation_epoch(base_run, data_dir, tmp_path):
  cfg = tiny_config(f"train.spottune_epochs={EPOCHS}", "train.spottune_learning_rate=0.01")
  result = spottune_train.train_spottune(cfg, data_dir, base_run.paths["best"],
                                         str(tmp_path / "st"), hm=True)
  _check_selection(result, cfg, data_dir, hm_lut=np.load(result.paths["hm_lut"]))
  assert os.path.exists(result.paths["policy"])
