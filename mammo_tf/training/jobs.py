"""The FFDM base training job and the FC-only fine-tuning job (paper §2.3, §2.4.2).

Each job is a `loop.Task` that says how to build its model and optimisers; `loop.run` does the
rest. Both return a `loop.TrainResult` and leave in the work dir: ``config.json`` (resolved
config), ``run.json`` (job inputs), ``tb/`` (TensorBoard), ``backup/`` (resume checkpoint),
``best.keras``, ``export/`` (serving SavedModel), ``history.json`` and, last, ``done.json``. See
`optim` for the weight-decay semantics.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from mammo_tf import config as config_lib
from mammo_tf.models import resnet
from mammo_tf.training import artifacts
from mammo_tf.training import loop
from mammo_tf.training import optim


def optimizer_spec(lr: float, wd: float, train_cfg: config_lib.TrainConfig
                   ) -> optim.OptimizerSpec:
  """Adam at ``lr`` with weight decay ``wd`` (coupled L2 unless ``decoupled_weight_decay``)."""
  return optim.OptimizerSpec(learning_rate=lr, weight_decay=wd,
                             decoupled=train_cfg.decoupled_weight_decay)


def single_group(name: str, model: keras.Model, spec: optim.OptimizerSpec,
                 optimizer_name: str = "adam") -> list[loop.VariableGroup]:
  """All trainable variables of ``model`` under one optimiser built from ``spec``."""
  return [loop.VariableGroup(name, list(model.trainable_variables),
                             optim.make_optimizer(spec, name=optimizer_name),
                             optim.coupled_l2(spec))]


class BaseTask(loop.Task):
  """The FFDM patch classifier trained from scratch (paper §2.3).

  Adam, ``train.learning_rate`` and ``train.weight_decay`` (coupled L2 unless
  ``train.decoupled_weight_decay``), ``train.epochs`` epochs of ``data.samples_per_epoch``
  class-balanced FFDM training patches, best model by validation ROC AUC, optional early stopping.
  Initial weights depend only on ``cfg.seed``.
  """
  kind = "base"
  domain = "ffdm"

  def epochs(self, cfg: config_lib.ExperimentConfig) -> int:
    return cfg.train.epochs

  def build_model(self, cfg: config_lib.ExperimentConfig) -> keras.Model:
    return resnet.build_classifier(cfg.model, cfg.input_size)

  def build_groups(self, model: keras.Model, cfg: config_lib.ExperimentConfig
                   ) -> list[loop.VariableGroup]:
    spec = optimizer_spec(cfg.train.learning_rate, cfg.train.weight_decay, cfg.train)
    return single_group("network", model, spec)


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
  return artifacts.load_keras_model(base_path)


def domain_info(domain: str) -> dict[str, str]:
  """``run.json``'s record of an adaptation's target domain (absent for the default, MIP)."""
  if domain not in config_lib.DOMAINS:
    raise ValueError(f"unknown domain {domain!r}; choose one of {config_lib.DOMAINS}")
  return {} if domain == "dbt" else {"domain": domain}


class FinetuneTask(loop.Task):
  """FC-only fine-tuning of the FFDM base model on MIP (``dbt``) patches (paper §2.4.2).

  Everything but the ``head`` Dense layer is frozen (BatchNorm in inference mode); Adam with
  ``train.finetune_learning_rate`` / ``train.finetune_weight_decay`` for ``train.finetune_epochs``
  epochs with the training augmentation; best model by validation AUC. With ``hm`` the MIP patches
  are histogram-matched to FFDM in the pipeline and the export carries the HM layer;
  ``best.keras`` is the classifier alone (apply ``hm_lut.npy`` before it).
  """
  kind = "finetune"

  def __init__(self, base_path: str, hm: bool, domain: str = "dbt"):
    self.base_path = base_path
    self.hm = bool(hm)
    self.domain = domain

  def epochs(self, cfg: config_lib.ExperimentConfig) -> int:
    return cfg.train.finetune_epochs

  def run_info(self, cfg: config_lib.ExperimentConfig, workdir: str) -> dict[str, Any]:
    del cfg, workdir
    return {"base": os.path.abspath(self.base_path), "hm": self.hm, **domain_info(self.domain)}

  def build_model(self, cfg: config_lib.ExperimentConfig) -> keras.Model:
    return freeze_all_but_head(load_base(self.base_path))

  def build_groups(self, model: keras.Model, cfg: config_lib.ExperimentConfig
                   ) -> list[loop.VariableGroup]:
    spec = optimizer_spec(cfg.train.finetune_learning_rate, cfg.train.finetune_weight_decay,
                          cfg.train)
    return single_group("head", model, spec)


def train_base(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str, *,
               deterministic: bool = False) -> loop.TrainResult:
  """Runs `BaseTask` in ``workdir`` (resumed, or reused when finished); see `loop.run`."""
  return loop.run(BaseTask(), cfg, data_dir, workdir, deterministic=deterministic)


def finetune(cfg: config_lib.ExperimentConfig, data_dir: str, base_path: str, workdir: str,
             hm: bool, *, deterministic: bool = False, domain: str = "dbt") -> loop.TrainResult:
  """Runs `FinetuneTask` from ``base_path`` in ``workdir`` on ``domain``'s patches (default the
  MIPs; the shift study adapts to shifted FFDM); see `loop.run`."""
  return loop.run(FinetuneTask(base_path, hm, domain), cfg, data_dir, workdir,
                  deterministic=deterministic)
