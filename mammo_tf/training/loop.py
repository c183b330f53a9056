"""The epoch loop shared by the three jobs (FFDM base, FC-only fine-tune, SpotTune).

A custom `tf.function` step (GradientTape) rather than `Model.fit`, because the jobs need things
`fit` does not give together: several optimisers on disjoint variable groups (SpotTune's policy
learning rate), coupled L2 (see `optim`), a data stream rebuilt per epoch from
``(seed, epoch)`` so that a restart replays exactly the same batches, and a checkpoint of
model + optimisers + best-so-far state after every epoch.

One epoch:
  1. ``make_train_dataset(data_dir, domain, "train", cfg, seed=epoch_seed(cfg.seed, epoch))``,
     ``steps_per_epoch(cfg)`` batches (``samples_per_epoch // batch_size``), class-balanced;
  2. train steps: binary cross-entropy on the probability + coupled L2, gradients once, each
     variable group applied by its own optimiser; `keras.metrics.AUC` on the training batches;
  3. validation: the fixed-seed validation patches (``make_eval_dataset(..., "val", seed=0)``),
     ROC AUC by scikit-learn on the collected probabilities;
  4. ``best.keras`` when the validation AUC improves (ties keep the earlier epoch), TensorBoard,
     ``history.json`` and the checkpoint ``backup/state.npz`` (written last in the epoch).
Then the best model is reloaded from ``best.keras``, exported to ``export/`` and ``done.json`` is
written (last of all). A finished work dir is reused: calling the job again returns its result.

Epochs are numbered from 1 in every output (history, TensorBoard steps, `TrainResult`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.data import pipeline
from mammo_tf.training import callbacks
from mammo_tf.training import checkpoint
from mammo_tf.training import export as export_lib
from mammo_tf.training import optim
from mammo_tf.training import runtime
from mammo_tf.training import tensorboard

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
DONE_FILE = "done.json"
BEST_FILE = "best.keras"
EXPORT_DIR = "export"
TB_DIR = "tb"
BACKUP_DIR = "backup"


@dataclasses.dataclass
class VariableGroup:
  """Variables updated by one optimiser with one coupled-L2 coefficient."""
  name: str
  variables: list
  optimizer: keras.optimizers.Optimizer
  l2: float = 0.0


@dataclasses.dataclass
class Job:
  """What one training job trains and on what.

  Attributes:
    kind: ``"base"``, ``"finetune"`` or ``"spottune"`` (recorded in ``done.json``).
    model: the Keras model (built inside the strategy scope).
    groups: variable groups and their optimisers (created inside the strategy scope).
    domain: training/validation domain (``"ffdm"`` or ``"dbt"``).
    epochs: number of epochs.
    hm_lut: histogram-matching table applied in the pipeline (and put into the export).
    run_info: JSON-able description of the job's inputs (base model, hm, ...); ``run.json``.
    gates: the model returns ``(prob, gates)`` with ``return_gates=True`` (SpotTune); the loop
      collects the validation gates and passes them to `on_validation`.
    on_validation: hook ``(epoch, outputs, logger) -> extra history fields`` called after each
      validation with ``outputs = {"probability", "label", "label_class"[, "gates"]}``.
    on_finish: hook ``(best_model, history) -> None`` called before ``done.json`` is written.
  """
  kind: str
  model: keras.Model
  groups: list[VariableGroup]
  domain: str
  epochs: int
  hm_lut: np.ndarray | None = None
  run_info: dict[str, Any] = dataclasses.field(default_factory=dict)
  gates: bool = False
  on_validation: Callable[[int, dict, tensorboard.SummaryLogger], dict] | None = None
  on_finish: Callable[[keras.Model, list], None] | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Outcome of a job. ``paths`` maps ``workdir``, ``best``, ``export``, ``history``, ``config``,
  ``tb``, ``done`` (and job extras such as ``policy``) to file paths."""
  best_epoch: int
  best_val_auc: float
  epochs_run: int
  paths: dict[str, str]
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def work_paths(workdir: str) -> dict[str, str]:
  return {
      "workdir": workdir,
      "config": os.path.join(workdir, CONFIG_FILE),
      "run": os.path.join(workdir, RUN_FILE),
      "history": os.path.join(workdir, HISTORY_FILE),
      "done": os.path.join(workdir, DONE_FILE),
      "best": os.path.join(workdir, BEST_FILE),
      "export": os.path.join(workdir, EXPORT_DIR),
      "tb": os.path.join(workdir, TB_DIR),
      "backup": os.path.join(workdir, BACKUP_DIR),
  }


def result_from_done(workdir: str) -> TrainResult | None:
  """The `TrainResult` of a finished work dir (``done.json`` present), else None."""
  paths = work_paths(workdir)
  if not os.path.exists(paths["done"]):
    return None
  done = runtime.read_json(paths["done"])
  history = runtime.read_json(paths["history"]) if os.path.exists(paths["history"]) else []
  paths.update(done.get("extra_paths", {}))
  return TrainResult(best_epoch=int(done["best_epoch"]), best_val_auc=_nan(done["best_val_auc"]),
                     epochs_run=int(done["epochs_run"]), paths=paths, history=history)


def _nan(value: Any) -> float:
  return float("nan") if value is None else float(value)


def _json_float(value: float | None) -> float | None:
  return None if value is None or math.isnan(value) else float(value)


def check_workdir(workdir: str, cfg: config_lib.ExperimentConfig, run_info: Mapping[str, Any]
                  ) -> None:
  """Writes ``config.json``/``run.json``, or checks that an existing run used the same ones.

  Raises:
    ValueError: the work dir holds a run with another configuration (resuming it with this one
      would mix two experiments).
  """
  paths = work_paths(workdir)
  os.makedirs(workdir, exist_ok=True)
  want_cfg = config_lib.to_dict(cfg)
  want_cfg = runtime.json_round_trip(want_cfg)
  want_run = runtime.json_round_trip(dict(run_info))
  for path, want in ((paths["config"], want_cfg), (paths["run"], want_run)):
    if os.path.exists(path):
      have = runtime.read_json(path)
      if have != want:
        diff = sorted(_diff_keys(have, want))
        raise ValueError(f"{path} belongs to another run (differs in {diff}); use a new --workdir "
                         "or the same settings to resume")
    else:
      runtime.write_json_atomic(path, want)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out.extend(_diff_keys(a.get(key), b.get(key), f"{prefix}{key}."))
    return out
  return [] if a == b else [prefix.rstrip(".")]


def probability_of(outputs: Any) -> tf.Tensor:
  """``[B]`` float32 probability from a model output ``[B, 1]`` / ``(prob, ...)`` / dict."""
  if isinstance(outputs, dict):
    outputs = outputs["probability"]
  elif isinstance(outputs, (tuple, list)):
    outputs = outputs[0]
  return tf.reshape(tf.cast(outputs, tf.float32), [-1])


def _bce(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
  """Per-example binary cross-entropy on probabilities (clipped like Keras, float32)."""
  eps = 1e-7
  p = tf.clip_by_value(probs, eps, 1.0 - eps)
  y = tf.cast(labels, tf.float32)
  return -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))


class Trainer:
  """Builds the compiled train/predict steps of a `Job` under a strategy."""

  def __init__(self, job: Job, cfg: config_lib.ExperimentConfig,
               strategy: tf.distribute.Strategy):
    self.job = job
    self.cfg = cfg
    self.strategy = strategy
    self.global_batch = cfg.data.batch_size
    replicas = strategy.num_replicas_in_sync
    if self.global_batch % replicas:
      raise ValueError(f"data.batch_size={self.global_batch} is the global batch and must be a "
                       f"multiple of the {replicas} replicas in sync (docs/distributed.md)")
    with strategy.scope():
      for group in job.groups:
        group.optimizer.build(group.variables)
      self.train_auc = keras.metrics.AUC(name="train_auc", num_thresholds=200)
    self._train_fn = self._make_train_fn()
    self._predict_fn = self._make_predict_fn()
    self._sync_fn = self._make_sync_fn() if replicas > 1 else None

  # -- variables -------------------------------------------------------------------------------

  @property
  def model_variables(self) -> list:
    """Every model variable (weights, BN statistics, RNG states) in a fixed order."""
    return list(self.job.model.variables)

  @property
  def optimizer_variables(self) -> list:
    return optim.optimizer_variables([g.optimizer for g in self.job.groups])

  # -- steps -----------------------------------------------------------------------------------

  def _make_train_fn(self):
    job, model = self.job, self.job.model
    all_vars = [v for g in job.groups for v in g.variables]
    sizes = [len(g.variables) for g in job.groups]
    replicas = self.strategy.num_replicas_in_sync
    global_batch = float(self.global_batch)
    xla = bool(self.cfg.train.xla)

    def grads_fn(x, y):
      with tf.GradientTape() as tape:
        probs = probability_of(model(x, training=True))
        ce = tf.reduce_sum(_bce(y, probs)) / global_batch
        l2 = tf.add_n([tf.cast(optim.l2_penalty(g.variables, g.l2), tf.float32)
                       for g in job.groups]) / replicas
        total = ce + l2
      grads = tape.gradient(total, all_vars)
      return ce, total, probs, grads

    if xla:
      grads_fn = tf.function(grads_fn, jit_compile=True)

    def replica_step(x, y):
      ce, total, probs, grads = grads_fn(x, y)
      start = 0
      for group, n in zip(job.groups, sizes):
        group.optimizer.apply(grads[start:start + n], group.variables)
        start += n
      self.train_auc.update_state(y, probs)
      return ce, total

    @tf.function
    def train_step(x, y):
      ce, total = self.strategy.run(replica_step, args=(x, y))
      return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, ce, axis=None),
              self.strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None))

    return train_step

  def _make_sync_fn(self):
    """Averages the non-trainable float variables (BatchNorm moving statistics) over replicas.

    Each replica updates the moving mean/variance from its own part of the global batch, so the
    copies drift apart under `MirroredStrategy` / `MultiWorkerMirroredStrategy`. The moving
    averages are linear in the batch statistics, so averaging the copies once per epoch gives the
    moving averages of the replica-averaged batch statistics (what per-step syncing would give,
    up to rounding) at one all-reduce per epoch. Frozen weights are identical on every replica
    and stay so.
    """
    variables = [v for v in self.job.model.non_trainable_variables
                 if tf.as_dtype(v.dtype).is_floating]
    if not variables:
      return None
    strategy = self.strategy

    @tf.function
    def sync():
      local = strategy.run(lambda: [tf.identity(v.value) for v in variables])
      for v, value in zip(variables, local):
        v.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return sync

  def _make_predict_fn(self):
    model, gates = self.job.model, self.job.gates

    def predict(x):
      if gates:
        prob, g = model(x, training=False, return_gates=True)
        return {"probability": probability_of(prob), "gates": tf.cast(g, tf.float32)}
      return {"probability": probability_of(model(x, training=False))}

    # reduce_retracing: the last evaluation batch is smaller; trace one shape-generic graph for it
    # instead of one per batch size.
    return tf.function(predict, jit_compile=bool(self.cfg.train.xla), reduce_retracing=True)

  # -- epochs ----------------------------------------------------------------------------------

  def train_epoch(self, dataset: tf.data.Dataset, steps: int,
                  on_first_batch: Callable[[np.ndarray, np.ndarray], None] | None = None
                  ) -> dict[str, float]:
    """Runs ``steps`` steps; returns mean loss, mean total loss and the training AUC."""
    self.train_auc.reset_state()
    # DATA sharding: every worker builds the same (seeded) stream of global batches and keeps its
    # replicas' slices, so a multi-worker run sees exactly the batches of a single-device run.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = self.strategy.experimental_distribute_dataset(
        dataset.take(steps).with_options(options))
    ce_sum, total_sum, n = 0.0, 0.0, 0
    for x, y in dist:
      if n == 0 and on_first_batch is not None:
        local_x = self.strategy.experimental_local_results(x)[0]
        local_y = self.strategy.experimental_local_results(y)[0]
        on_first_batch(local_x.numpy(), local_y.numpy())
      ce, total = self._train_fn(x, y)
      ce_sum += float(ce)
      total_sum += float(total)
      n += 1
    if n == 0:
      raise ValueError("the training dataset produced no batch")
    if self._sync_fn is not None:
      self._sync_fn()
    return {"loss": ce_sum / n, "total_loss": total_sum / n,
            "train_auc": float(self.train_auc.result())}

  def predict(self, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """Model outputs and labels over a finite eval dataset of dicts, concatenated."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset:
      out = self._predict_fn(batch["patch"])
      out["label"] = batch["label"]
      out["label_class"] = batch["label_class"]
      for key, value in out.items():
        parts.setdefault(key, []).append(np.asarray(value))
    if not parts:
      raise ValueError("the validation dataset is empty")
    return {k: np.concatenate(v) for k, v in parts.items()}


def _save_keras_atomic(model: keras.Model, path: str) -> None:
  tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
  model.save(tmp)
  os.replace(tmp, path)


def run(job: Job, cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str,
        strategy: tf.distribute.Strategy, *, log_images: bool = True) -> TrainResult:
  """Trains `job` in `workdir` (resuming from ``backup/`` if present); see the module docstring."""
  paths = work_paths(workdir)
  done = result_from_done(workdir)
  if done is not None:
    logging.info("%s: done.json present, reusing the finished run", workdir)
    return done
  chief = runtime.is_chief(strategy)
  if chief:
    check_workdir(workdir, cfg, {"job": job.kind, **job.run_info})
  trainer = Trainer(job, cfg, strategy)
  tracker = callbacks.BestTracker(patience=cfg.train.early_stopping_patience)
  history: list[dict[str, Any]] = []
  start_epoch, stopped = 1, False
  if checkpoint.has_state(paths["backup"]):
    meta = checkpoint.load_state(paths["backup"], trainer.model_variables,
                                 trainer.optimizer_variables)
    start_epoch = int(meta["next_epoch"])
    tracker = callbacks.BestTracker.from_state(meta["tracker"])
    history = list(meta["history"])
    stopped = bool(meta.get("stopped", False))
    logging.info("resuming %s from epoch %d", workdir, start_epoch)
  logger = tensorboard.SummaryLogger(paths["tb"], enabled=chief)
  steps = pipeline.steps_per_epoch(cfg)
  val_ds = pipeline.make_eval_dataset(data_dir, job.domain, "val", cfg, seed=0,
                                      hm_lut=job.hm_lut)
  epoch, ran_epochs = start_epoch, 0
  while epoch <= job.epochs and not stopped:
    t0 = time.time()
    train_ds = pipeline.make_train_dataset(data_dir, job.domain, "train", cfg,
                                           seed=runtime.epoch_seed(cfg.seed, epoch),
                                           hm_lut=job.hm_lut)

    def log_patches(x, y, epoch=epoch):
      if log_images:
        logger.patches("train", x, y, step=epoch)

    train_metrics = trainer.train_epoch(train_ds, steps, on_first_batch=log_patches)
    outputs = trainer.predict(val_ds)
    val_auc = callbacks.roc_auc(outputs["label"], outputs["probability"])
    record: dict[str, Any] = {"epoch": epoch, **train_metrics, "val_auc": _json_float(val_auc),
                              "val_size": int(outputs["label"].shape[0])}
    for group in job.groups:
      key = "learning_rate" if group is job.groups[0] else f"learning_rate_{group.name}"
      record[key] = optim.current_learning_rate(group.optimizer)
    if job.on_validation is not None:
      record.update(job.on_validation(epoch, outputs, logger))
    improved = tracker.update(epoch, val_auc)
    record["best"] = improved
    record["seconds"] = round(time.time() - t0, 3)
    history.append(record)
    logger.scalars("train", {"loss": train_metrics["loss"],
                             "total_loss": train_metrics["total_loss"],
                             "auc": train_metrics["train_auc"],
                             **{k: v for k, v in record.items() if k.startswith("learning_rate")}},
                   step=epoch)
    logger.scalars("val", {"auc": val_auc}, step=epoch)
    if log_images:
      logger.roc_curve("val", outputs["label"], outputs["probability"], step=epoch)
    logger.pr_curve("val", outputs["label"], outputs["probability"], step=epoch)
    logger.flush()
    logging.info("epoch %d/%d: loss %.4f train AUC %.4f val AUC %.4f%s", epoch, job.epochs,
                 train_metrics["loss"], train_metrics["train_auc"], val_auc,
                 " (best)" if improved else "")
    stopped = tracker.should_stop
    if chief:
      if improved:
        _save_keras_atomic(job.model, paths["best"])
      runtime.write_json_atomic(paths["history"], history)
      checkpoint.save_state(paths["backup"], trainer.model_variables,
                            trainer.optimizer_variables,
                            {"next_epoch": epoch + 1, "tracker": tracker.state(),
                             "history": history, "stopped": stopped})
    epoch += 1
    ran_epochs += 1
  logger.close()
  if not chief:
    return TrainResult(tracker.best_epoch, _nan(tracker.best_value), len(history), paths, history)
  if ran_epochs and history[-1]["best"]:
    best_model = job.model          # the last epoch is the best: it is what best.keras holds
  else:
    best_model = keras.models.load_model(paths["best"])
  export_lib.export_serving(best_model, paths["export"], cfg.input_size, hm_lut=job.hm_lut)
  if job.on_finish is not None:
    job.on_finish(best_model, history)
  extra = {k: v for k, v in job.run_info.get("extra_paths", {}).items()}
  runtime.write_json_atomic(paths["done"], {
      "job": job.kind, "best_epoch": tracker.best_epoch,
      "best_val_auc": _json_float(tracker.best_value), "epochs_run": len(history),
      "early_stopped": stopped, "extra_paths": extra})
  paths.update(extra)
  return TrainResult(best_epoch=tracker.best_epoch, best_val_auc=_nan(tracker.best_value),
                     epochs_run=len(history), paths=paths, history=history)
