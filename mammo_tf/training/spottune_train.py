"""The SpotTune adaptation job (paper §2.4.3): gated frozen/tuned residual units + policy network.

`SpotTuneTask` is a `loop.Task`: it builds the SpotTune model from the base classifier, its
variable groups, a validation step that also returns the gates, and the policy statistics.

Network and policy are trained together on one loss (cross-entropy of the output, no policy
regulariser, as SpotTune's released code) with Adam, ``train.spottune_learning_rate`` and
``train.spottune_weight_decay`` (coupled L2 unless ``train.decoupled_weight_decay``) -- the paper's
recipe. With ``train.policy_learning_rate > 0`` the policy network gets its own Adam at that rate:
the gradients are computed once in the shared step and each variable group is applied by its own
optimiser (`loop.VariableGroup`); otherwise one optimiser updates everything. What is trainable
(``frozen_bn``, ``train_stem``) is decided by `mammo_tf.models.spottune`; the Gumbel noise seed is
``cfg.seed`` and its state is part of the resume checkpoint.

Each epoch the hard decisions on the validation patches (``policy_eval``: argmax by default) give
the per-unit fraction routed to the tuned copy: TensorBoard ``val/policy/<unit>`` scalars, a
``val/policy`` bar-chart image and ``history.json``'s ``policy`` field. At the end, ``policy.json``
holds the best model's statistics (see `policy`).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mammo_tf import config as config_lib
from mammo_tf.models import spottune
from mammo_tf.training import jobs
from mammo_tf.training import loop
from mammo_tf.training import optim
from mammo_tf.training import policy as policy_lib
from mammo_tf.training import tensorboard


def build_groups(model: spottune.SpotTuneModel, train_cfg: config_lib.TrainConfig
                 ) -> list[loop.VariableGroup]:
  """One optimiser for everything, or network + policy when ``policy_learning_rate > 0``."""
  net_spec = optim.OptimizerSpec(train_cfg.spottune_learning_rate, train_cfg.spottune_weight_decay,
                                 train_cfg.decoupled_weight_decay)
  if train_cfg.policy_learning_rate <= 0:
    return [loop.VariableGroup("all", list(model.trainable_variables),
                               optim.make_optimizer(net_spec, name="adam"),
                               optim.coupled_l2(net_spec))]
  pol_spec = optim.OptimizerSpec(train_cfg.policy_learning_rate, train_cfg.spottune_weight_decay,
                                 train_cfg.decoupled_weight_decay)
  return [loop.VariableGroup("network", list(model.network_variables),
                             optim.make_optimizer(net_spec, name="adam"),
                             optim.coupled_l2(net_spec)),
          loop.VariableGroup("policy", list(model.policy_variables),
                             optim.make_optimizer(pol_spec, name="adam_policy"),
                             optim.coupled_l2(pol_spec))]


def policy_of_model(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
  """Hard decisions ``[N, T]`` (``training=False``) and labels ``[N]`` over an eval dataset."""
  gates, labels = [], []
  for batch in dataset:
    _, g = model(batch["patch"], training=False, return_gates=True)
    gates.append(np.asarray(g))
    labels.append(np.asarray(batch["label"]))
  return np.concatenate(gates), np.concatenate(labels)


class SpotTuneTask(loop.Task):
  """SpotTune from the FFDM base model on MIP (``dbt``) patches, raw or histogram-matched.

  ``train.spottune_epochs`` epochs; best model by validation AUC (``best.keras``, a
  `SpotTuneModel`); export with the HM layer when ``hm``; ``policy.json`` with the best model's
  per-unit fine-tune fractions on the validation patches.
  """
  kind = "spottune"

  def __init__(self, base_path: str, hm: bool, domain: str = "dbt"):
    self.base_path = base_path
    self.hm = bool(hm)
    self.domain = domain
    self.unit_names: list[str] = []
    self.policy_path = ""

  def epochs(self, cfg: config_lib.ExperimentConfig) -> int:
    return cfg.train.spottune_epochs

  def run_info(self, cfg: config_lib.ExperimentConfig, workdir: str) -> dict[str, Any]:
    self.policy_path = os.path.join(workdir, policy_lib.POLICY_FILE)
    return {"base": os.path.abspath(self.base_path), "hm": self.hm,
            "frozen_bn": cfg.train.frozen_bn, "train_stem": cfg.train.train_stem,
            "policy_eval": cfg.train.policy_eval, "extra_paths": {"policy": self.policy_path},
            **jobs.domain_info(self.domain)}

  def build_model(self, cfg: config_lib.ExperimentConfig) -> keras.Model:
    model = spottune.build_spottune(jobs.load_base(self.base_path), cfg.model, cfg.train,
                                    seed=cfg.seed)
    self.unit_names = list(model.unit_names)
    return model

  def build_groups(self, model: keras.Model, cfg: config_lib.ExperimentConfig
                   ) -> list[loop.VariableGroup]:
    return build_groups(model, cfg.train)

  def validation_step(self, model: keras.Model, x):
    prob, gates = model(x, training=False, return_gates=True)
    return {"probability": loop.probability_of(prob), "gates": tf.cast(gates, tf.float32)}

  def on_validation(self, epoch: int, outputs, logger: tensorboard.SummaryLogger
                    ) -> dict[str, Any]:
    """Per-unit fraction of validation patches routed to the tuned copy: scalars, a bar chart
    and the history's ``policy`` field."""
    fractions = policy_lib.fraction_tuned(outputs["gates"])
    names = self.unit_names
    logger.scalars("val", {f"policy/{name}": float(f) for name, f in zip(names, fractions)},
                   step=epoch)
    logger.scalars("val", {"policy/mean": float(np.mean(fractions))}, step=epoch)
    summary = {"units": names, "fraction_tuned": [float(f) for f in fractions]}
    logger.image("val", "policy", policy_lib.policy_figure_image(summary, f"epoch {epoch}"),
                 step=epoch)
    return {"policy": [float(f) for f in fractions]}

  def on_finish(self, cfg: config_lib.ExperimentConfig, best_model: keras.Model, history: list,
                val_ds) -> None:
    gates, labels = policy_of_model(best_model, val_ds)
    best_epoch = max((r for r in history if r.get("best")), key=lambda r: r["epoch"])["epoch"]
    summary = policy_lib.policy_summary(
        gates, labels, self.unit_names, decision=cfg.train.policy_eval, split="val",
        epoch=int(best_epoch), hm=self.hm, per_epoch=[r.get("policy") for r in history])
    policy_lib.save_policy(self.policy_path, summary)


def train_spottune(cfg: config_lib.ExperimentConfig, data_dir: str, base_path: str, workdir: str,
                   hm: bool, *, deterministic: bool = False, domain: str = "dbt"
                   ) -> loop.TrainResult:
  """Runs `SpotTuneTask` from ``base_path`` in ``workdir`` on ``domain``'s patches (default the
  MIPs); see `loop.run`."""
  return loop.run(SpotTuneTask(base_path, hm, domain), cfg, data_dir, workdir,
                  deterministic=deterministic)
