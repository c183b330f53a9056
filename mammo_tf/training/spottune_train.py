"""The SpotTune adaptation job (paper §2.4.3): gated frozen/tuned residual units + policy network.

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

from mammo_tf import config as config_lib
from mammo_tf.data import pipeline
from mammo_tf.models import spottune
from mammo_tf.training import jobs
from mammo_tf.training import loop
from mammo_tf.training import optim
from mammo_tf.training import policy as policy_lib
from mammo_tf.training import runtime
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


def _validation_hook(unit_names: list[str]):
  def hook(epoch: int, outputs: dict, logger: tensorboard.SummaryLogger) -> dict[str, Any]:
    fractions = policy_lib.fraction_tuned(outputs["gates"])
    logger.scalars("val", {f"policy/{name}": float(f) for name, f in zip(unit_names, fractions)},
                   step=epoch)
    logger.scalars("val", {"policy/mean": float(np.mean(fractions))}, step=epoch)
    summary = {"units": unit_names, "fraction_tuned": [float(f) for f in fractions]}
    logger.image("val", "policy", policy_lib.policy_figure_image(summary, f"epoch {epoch}"),
                 step=epoch)
    return {"policy": [float(f) for f in fractions]}
  return hook


def policy_of_model(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
  """Hard decisions ``[N, T]`` (``training=False``) and labels ``[N]`` over an eval dataset."""
  gates, labels = [], []
  for batch in dataset:
    _, g = model(batch["patch"], training=False, return_gates=True)
    gates.append(np.asarray(g))
    labels.append(np.asarray(batch["label"]))
  return np.concatenate(gates), np.concatenate(labels)


def train_spottune(cfg: config_lib.ExperimentConfig, data_dir: str, base_path: str, workdir: str,
                   hm: bool) -> loop.TrainResult:
  """SpotTune from the FFDM base model on MIP (``dbt``) patches, raw or histogram-matched.

  ``train.spottune_epochs`` epochs; best model by validation AUC (``best.keras``, a
  `SpotTuneModel`); export with the HM layer when ``hm``; ``policy.json`` with the best model's
  per-unit fine-tune fractions on the validation patches.
  """
  done = loop.result_from_done(workdir)
  if done is not None:
    return done
  strategy = runtime.select_strategy(cfg.train.strategy)
  runtime.set_determinism(cfg.seed)
  lut = pipeline.hm_lut_for(data_dir, "dbt", "ffdm") if hm else None
  with strategy.scope():
    base = jobs.load_base(base_path)
    with runtime.dtype_policy(runtime.precision_policy(cfg.train.mixed_precision)):
      model = spottune.build_spottune(base, cfg.model, cfg.train, seed=cfg.seed)
    groups = build_groups(model, cfg.train)
  del base
  policy_path = os.path.join(workdir, policy_lib.POLICY_FILE)
  run_info: dict[str, Any] = {
      "base": os.path.abspath(base_path), "hm": bool(hm), "frozen_bn": cfg.train.frozen_bn,
      "train_stem": cfg.train.train_stem, "policy_eval": cfg.train.policy_eval,
      "extra_paths": {"policy": policy_path}}
  if lut is not None:
    lut_path = os.path.join(workdir, jobs.HM_LUT_FILE)
    os.makedirs(workdir, exist_ok=True)
    np.save(lut_path, np.asarray(lut, np.float32))
    run_info["extra_paths"]["hm_lut"] = lut_path
  unit_names = list(model.unit_names)

  def on_finish(best_model: keras.Model, history: list) -> None:
    val_ds = pipeline.make_eval_dataset(data_dir, "dbt", "val", cfg, seed=0, hm_lut=lut)
    gates, labels = policy_of_model(best_model, val_ds)
    best_epoch = max((r for r in history if r.get("best")), key=lambda r: r["epoch"])["epoch"]
    summary = policy_lib.policy_summary(
        gates, labels, unit_names, decision=cfg.train.policy_eval, split="val",
        epoch=int(best_epoch), hm=bool(hm), per_epoch=[r.get("policy") for r in history])
    policy_lib.save_policy(policy_path, summary)

  job = loop.Job(kind="spottune", model=model, groups=groups, domain="dbt",
                 epochs=cfg.train.spottune_epochs, hm_lut=lut, run_info=run_info, gates=True,
                 on_validation=_validation_hook(unit_names), on_finish=on_finish)
  return loop.run(job, cfg, data_dir, workdir, strategy)
