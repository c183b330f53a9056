"""The FFDM base training job and the FC-only fine-tuning job (paper §2.3, §2.4.2).

Both return a `loop.TrainResult` and leave in the work dir: ``config.json`` (resolved config),
``run.json`` (job inputs), ``tb/`` (TensorBoard), ``backup/`` (resume checkpoint), ``best.keras``,
``export/`` (serving SavedModel), ``history.json`` and, last, ``done.json``. See `loop` for the
epoch loop and `optim` for the weight-decay semantics.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from mammo_tf import config as config_lib
from mammo_tf.data import pipeline
from mammo_tf.models import resnet
from mammo_tf.training import loop
from mammo_tf.training import optim
from mammo_tf.training import runtime

HM_LUT_FILE = "hm_lut.npy"


def _spec(lr: float, wd: float, train_cfg: config_lib.TrainConfig) -> optim.OptimizerSpec:
  return optim.OptimizerSpec(learning_rate=lr, weight_decay=wd,
                             decoupled=train_cfg.decoupled_weight_decay)


def train_base(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str
               ) -> loop.TrainResult:
  """Trains the FFDM patch classifier from scratch (paper §2.3).

  Adam, ``train.learning_rate`` and ``train.weight_decay`` (coupled L2 unless
  ``train.decoupled_weight_decay``), ``train.epochs`` epochs of ``data.samples_per_epoch``
  class-balanced FFDM training patches, best model by validation ROC AUC, optional early stopping.
  Initial weights depend only on ``cfg.seed``. Mixed precision, XLA and the distribution strategy
  follow ``cfg.train``.
  """
  done = loop.result_from_done(workdir)
  if done is not None:
    return done
  strategy = runtime.select_strategy(cfg.train.strategy)
  runtime.set_determinism(cfg.seed)
  spec = _spec(cfg.train.learning_rate, cfg.train.weight_decay, cfg.train)
  with strategy.scope():
    with runtime.dtype_policy(runtime.precision_policy(cfg.train.mixed_precision)):
      model = resnet.build_classifier(cfg.model, cfg.input_size)
    optimizer = optim.make_optimizer(spec, name="adam")
  groups = [loop.VariableGroup("network", list(model.trainable_variables), optimizer,
                               optim.coupled_l2(spec))]
  job = loop.Job(kind="base", model=model, groups=groups, domain="ffdm", epochs=cfg.train.epochs)
  return loop.run(job, cfg, data_dir, workdir, strategy)


def freeze_all_but_head(model: keras.Model, head: str = "head") -> keras.Model:
  """Sets ``trainable=False`` on every layer except ``head`` (BatchNorm then runs in inference
  mode and keeps its statistics). Returns the same model."""
  found = False
  for layer in model.layers:
    layer.trainable = layer.name == head
    found |= layer.name == head
  if not found:
    raise ValueError(f"model {model.name!r} has no layer named {head!r}")
  return model


def load_base(base_path: str) -> keras.Model:
  """Loads a base classifier (``best.keras`` of `train_base`) with a clear error when missing."""
  if not os.path.exists(base_path):
    raise FileNotFoundError(f"base model {base_path} does not exist (run train_base first)")
  return keras.models.load_model(base_path)


def finetune(cfg: config_lib.ExperimentConfig, data_dir: str, base_path: str, workdir: str,
             hm: bool) -> loop.TrainResult:
  """FC-only fine-tuning of the FFDM base model on MIP (``dbt``) patches (paper §2.4.2).

  Everything but the ``head`` Dense layer is frozen (BatchNorm in inference mode); Adam with
  ``train.finetune_learning_rate`` / ``train.finetune_weight_decay`` for ``train.finetune_epochs``
  epochs with the training augmentation; best model by validation AUC. With ``hm`` the MIP patches
  are histogram-matched to FFDM in the pipeline (table ``cdf_dbt.npz -> cdf_ffdm.npz`` of
  ``data_dir``, also saved as ``hm_lut.npy``) and the export carries the HM layer; ``best.keras``
  is the classifier alone (apply the table before it).
  """
  done = loop.result_from_done(workdir)
  if done is not None:
    return done
  strategy = runtime.select_strategy(cfg.train.strategy)
  runtime.set_determinism(cfg.seed)
  spec = _spec(cfg.train.finetune_learning_rate, cfg.train.finetune_weight_decay, cfg.train)
  lut = pipeline.hm_lut_for(data_dir, "dbt", "ffdm") if hm else None
  with strategy.scope():
    model = freeze_all_but_head(load_base(base_path))
    optimizer = optim.make_optimizer(spec, name="adam")
  groups = [loop.VariableGroup("head", list(model.trainable_variables), optimizer,
                               optim.coupled_l2(spec))]
  run_info = {"base": os.path.abspath(base_path), "hm": bool(hm)}
  if lut is not None:
    lut_path = os.path.join(workdir, HM_LUT_FILE)
    os.makedirs(workdir, exist_ok=True)
    np.save(lut_path, np.asarray(lut, np.float32))
    run_info["extra_paths"] = {"hm_lut": lut_path}
  job = loop.Job(kind="finetune", model=model, groups=groups, domain="dbt",
                 epochs=cfg.train.finetune_epochs, hm_lut=lut, run_info=run_info)
  return loop.run(job, cfg, data_dir, workdir, strategy)
