"""The generic trainer shared by the three jobs (FFDM base, FC-only fine-tune, SpotTune).

A job is a `Task` (the shape of TF Model Garden's task): it says how to build its model
(`Task.build_model`), its variable groups and optimisers (`Task.build_groups`), its inputs
(`Task.build_inputs`), what one validation step returns (`Task.validation_step`) and how the best
epoch is chosen (`Task.selection_metric`). Everything else belongs to `run`, the same for every
job: reuse of a finished work dir (``done.json``), the distribution strategy, determinism, the
histogram-matching table, the resume checkpoint, the epoch loop, TensorBoard, the export and the
done marker.

The step is a custom `tf.function` (GradientTape) rather than `Model.fit`, because the jobs need
things `fit` does not give together: several optimisers on disjoint variable groups (SpotTune's
policy learning rate), coupled L2 (see `optim`), a data stream rebuilt per epoch from
``(seed, epoch)`` so that a restart replays exactly the same batches, and a checkpoint of
model + optimisers + best-so-far state after every epoch.

`run` in named steps:
  1. `_prepare`: ``done.json`` present -> its result; else strategy, seeds (and op determinism when
     asked), the HM table (``hm_lut.npy``), model and optimisers inside the strategy scope,
     ``config.json``/``run.json`` checked against an existing run, ``backup/`` restored;
  2. `_run_epoch`, once per epoch: ``task.build_inputs(..., "train", seed=seed, epoch=epoch)``
     for ``steps_per_epoch(cfg)`` class-balanced batches; train steps (binary cross-entropy on the
     probability + coupled L2, gradients once, each variable group applied by its own optimiser);
     validation on the fixed-seed validation patches; the selection metric (ROC AUC by default);
  3. `_log_epoch` (TensorBoard, log line) and `_save_epoch` (``best.keras`` when the metric
     improves -- ties keep the earlier epoch --, ``history.json``, then ``backup/state.npz``);
  4. `_finish`: the best model reloaded from ``best.keras``, exported to ``export/``, the task's
     `Task.on_finish`, and ``done.json`` (last of all).

Epochs are numbered from 1 in every output (history, TensorBoard steps, `TrainResult`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.data import pipeline
from mammo_tf.evaluation import metrics
from mammo_tf.io import workdir_names as names
from mammo_tf.training import artifacts
from mammo_tf.training import checkpoint
from mammo_tf.training import export as export_lib
from mammo_tf.training import optim
from mammo_tf.training import progress
from mammo_tf.training import runtime
from mammo_tf.training import selection
from mammo_tf.training import tensorboard

CONFIG_FILE = names.CONFIG_FILE
RUN_FILE = names.RUN_FILE
HISTORY_FILE = names.HISTORY_FILE
DONE_FILE = names.DONE_FILE
BEST_FILE = names.MODEL_FILE
HM_LUT_FILE = names.HM_LUT_FILE
EXPORT_DIR = names.EXPORT_DIR
TB_DIR = names.TB_DIR
BACKUP_DIR = names.BACKUP_DIR


@dataclasses.dataclass
class VariableGroup:
  """Variables updated by one optimiser with one coupled-L2 coefficient."""
  name: str
  variables: list
  optimizer: keras.optimizers.Optimizer
  l2: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Outcome of a job. ``paths`` maps ``workdir``, ``best``, ``export``, ``history``, ``config``,
  ``tb``, ``done`` (and job extras such as ``policy``, ``hm_lut``) to file paths."""
  best_epoch: int
  best_val_auc: float
  epochs_run: int
  paths: dict[str, str]
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Task:
  """What one training job trains and on what; `run` does the rest.

  Subclasses set `kind` (recorded in ``done.json``), `domain` (training/validation domain),
  `hm` (histogram-match the inputs to FFDM: `run` builds the table from the c.d.f.s of the data
  folder, saves it as ``hm_lut.npy``, hands it to `build_inputs` and puts it into the export) and
  implement `epochs`, `build_model` and `build_groups`. The other methods have defaults.
  """
  kind: str = ""
  domain: str = "ffdm"
  hm: bool = False

  def epochs(self, cfg: config_lib.ExperimentConfig) -> int:
    """Number of epochs of this job."""
    raise NotImplementedError

  def build_model(self, cfg: config_lib.ExperimentConfig) -> keras.Model:
    """The model, built (or loaded) inside the strategy scope and the run's dtype policy."""
    raise NotImplementedError

  def build_groups(self, model: keras.Model, cfg: config_lib.ExperimentConfig
                   ) -> list[VariableGroup]:
    """The variable groups and their optimisers (inside the strategy scope)."""
    raise NotImplementedError

  def run_info(self, cfg: config_lib.ExperimentConfig, workdir: str) -> dict[str, Any]:
    """JSON-able description of the job's inputs (``run.json``); ``extra_paths`` names the
    job's own output files (they join `TrainResult.paths`)."""
    del cfg, workdir
    return {}

  def build_inputs(self, data_dir: str, split: str, cfg: config_lib.ExperimentConfig, *,
                   seed: int, hm_lut: np.ndarray | None, epoch: int = 1) -> tf.data.Dataset:
    """``"train"``: the infinite, class-balanced, augmented ``(patch, label)`` stream from the
    start of `epoch` (a function of the run `seed` and `epoch`; every record of a class is reached
    before any repeats); other splits: the finite eval dataset of dicts (one patch per image)."""
    if split == "train":
      return pipeline.make_train_dataset(data_dir, self.domain, split, cfg, seed=seed,
                                         epoch=epoch, hm_lut=hm_lut)
    return pipeline.make_eval_dataset(data_dir, self.domain, split, cfg, seed=seed, hm_lut=hm_lut)

  def validation_step(self, model: keras.Model, x: tf.Tensor) -> dict[str, tf.Tensor]:
    """One validation batch -> ``{"probability": [B] float32, ...}`` (traced by `tf.function`)."""
    return {"probability": probability_of(model(x, training=False))}

  def selection_metric(self, outputs: Mapping[str, np.ndarray]) -> float:
    """The "higher is better" number that picks the best epoch: validation ROC AUC (NaN when
    the validation patches hold one class only)."""
    labels = np.asarray(outputs["label"]).reshape(-1)
    if labels.size == 0 or labels.all() or not labels.any():
      return float("nan")
    return metrics.roc_auc(labels, outputs["probability"])

  def on_validation(self, epoch: int, outputs: Mapping[str, np.ndarray],
                    logger: tensorboard.SummaryLogger) -> dict[str, Any]:
    """Extra ``history.json`` fields of one epoch (and extra TensorBoard summaries)."""
    del epoch, outputs, logger
    return {}

  def on_finish(self, cfg: config_lib.ExperimentConfig, best_model: keras.Model,
                history: list[dict[str, Any]], val_ds: tf.data.Dataset) -> None:
    """Called with the best model and the validation dataset before ``done.json`` is written."""
    del cfg, best_model, history, val_ds


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
  want_cfg = runtime.json_round_trip(config_lib.to_dict(cfg))
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


def bce(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
  """Per-example binary cross-entropy on probabilities (clipped like Keras, float32)."""
  eps = 1e-7
  p = tf.clip_by_value(probs, eps, 1.0 - eps)
  y = tf.cast(labels, tf.float32)
  return -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))


class Trainer:
  """The compiled train / predict steps of one model and its variable groups under a strategy.

  Args:
    model: the Keras model (built inside ``strategy.scope()``).
    groups: its variable groups (optimisers created inside the scope).
    cfg: the run's config (global batch size, XLA).
    strategy: the distribution strategy.
    validation_step: ``(model, x) -> {"probability", ...}``; default: the probability alone.
    augment: ``data.augment_on=device``: the `DeviceAugment` layer that turns each training batch
      of windows into patches inside the train step (on the accelerator); None: batches are
      patches already.
  """

  def __init__(self, model: keras.Model, groups: list[VariableGroup],
               cfg: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy,
               validation_step: Callable[[keras.Model, tf.Tensor], dict] | None = None,
               augment: keras.layers.Layer | None = None):
    self.model = model
    self.augment = augment
    self.groups = groups
    self.cfg = cfg
    self.strategy = strategy
    self.global_batch = cfg.data.batch_size
    replicas = strategy.num_replicas_in_sync
    if self.global_batch % replicas:
      raise ValueError(f"data.batch_size={self.global_batch} is the global batch and must be a "
                       f"multiple of the {replicas} replicas in sync (docs/distributed.md)")
    with strategy.scope():
      for group in groups:
        group.optimizer.build(group.variables)
      self.train_auc = keras.metrics.AUC(name="train_auc", num_thresholds=200)
    self._validation_step = validation_step or Task().validation_step
    self._train_fn = self._make_train_fn()
    self._predict_fn = self._make_predict_fn()
    self._sync_fn = self._make_sync_fn() if replicas > 1 else None

  # -- variables -------------------------------------------------------------------------------

  @property
  def model_variables(self) -> list:
    """Every model variable (weights, BN statistics, RNG states) in a fixed order."""
    return list(self.model.variables)

  @property
  def optimizer_variables(self) -> list:
    return optim.optimizer_variables([g.optimizer for g in self.groups])

  # -- steps -----------------------------------------------------------------------------------

  def _make_train_fn(self):
    model, groups = self.model, self.groups
    all_vars = [v for g in groups for v in g.variables]
    sizes = [len(g.variables) for g in groups]
    replicas = self.strategy.num_replicas_in_sync
    global_batch = float(self.global_batch)
    xla = bool(self.cfg.train.xla)

    def grads_fn(x, y):
      with tf.GradientTape() as tape:
        probs = probability_of(model(x, training=True))
        ce = tf.reduce_sum(bce(y, probs)) / global_batch
        l2 = tf.add_n([tf.cast(optim.l2_penalty(g.variables, g.l2), tf.float32)
                       for g in groups]) / replicas
        total = ce + l2
      grads = tape.gradient(total, all_vars)
      return ce, total, probs, grads

    if xla:
      grads_fn = tf.function(grads_fn, jit_compile=True)

    def replica_step(x, y):
      if self.augment is not None:
        x = self.augment(x)
      ce, total, probs, grads = grads_fn(x, y)
      start = 0
      for group, n in zip(groups, sizes):
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
    variables = [v for v in self.model.non_trainable_variables
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
    model, step = self.model, self._validation_step

    def predict(x):
      return step(model, x)

    # reduce_retracing: the last evaluation batch is smaller; trace one shape-generic graph for it
    # instead of one per batch size.
    return tf.function(predict, jit_compile=bool(self.cfg.train.xla), reduce_retracing=True)

  # -- epochs ----------------------------------------------------------------------------------

  def train_epoch(self, dataset: tf.data.Dataset, steps: int,
                  on_first_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
                  label: str = "train") -> dict[str, float]:
    """Runs ``steps`` steps; returns mean loss, mean total loss and the training AUC.

    Progress (steps, samples/s, ETA) goes to a bar on a terminal, else to a log line every 30 s.
    """
    self.train_auc.reset_state()
    # DATA sharding: every worker builds the same (seeded) stream of global batches and keeps its
    # replicas' slices, so a multi-worker run sees exactly the batches of a single-device run.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = self.strategy.experimental_distribute_dataset(
        dataset.take(steps).with_options(options))
    ce_sum, total_sum, n = 0.0, 0.0, 0
    bar = progress.Progress(label, total=steps, batch_size=self.global_batch,
                            enabled=runtime.is_chief(self.strategy))
    for x, y in dist:
      if n == 0 and on_first_batch is not None:
        local_x = self.strategy.experimental_local_results(x)[0]
        local_y = self.strategy.experimental_local_results(y)[0]
        if self.augment is not None:
          local_x = self.augment(local_x)
        on_first_batch(local_x.numpy(), local_y.numpy())
      ce, total = self._train_fn(x, y)
      ce_sum += float(ce)
      total_sum += float(total)
      n += 1
      bar.update()
    bar.close()
    if n == 0:
      raise ValueError("the training dataset produced no batch")
    if self._sync_fn is not None:
      self._sync_fn()
    return {"loss": ce_sum / n, "total_loss": total_sum / n,
            "train_auc": float(self.train_auc.result())}

  def predict(self, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """Model outputs and labels over a finite eval dataset of dicts, concatenated."""
    parts: dict[str, list[np.ndarray]] = {}
    bar = progress.Progress("validation", enabled=runtime.is_chief(self.strategy))
    for batch in dataset:
      out = dict(self._predict_fn(batch["patch"]))
      out["label"] = batch["label"]
      out["label_class"] = batch["label_class"]
      for key, value in out.items():
        parts.setdefault(key, []).append(np.asarray(value))
      bar.update(1, samples=int(out["label"].shape[0]))
    bar.close()
    if not parts:
      raise ValueError("the validation dataset is empty")
    return {k: np.concatenate(v) for k, v in parts.items()}


# -- the generic run, in named steps -------------------------------------------------------------

@dataclasses.dataclass
class _Run:
  """State of one `run` between its steps."""
  task: Task
  cfg: config_lib.ExperimentConfig
  data_dir: str
  paths: dict[str, str]
  chief: bool
  hm_lut: np.ndarray | None
  extra_paths: dict[str, str]
  trainer: Trainer
  tracker: selection.BestTracker
  logger: tensorboard.SummaryLogger
  val_ds: tf.data.Dataset
  log_images: bool
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  next_epoch: int = 1
  stopped: bool = False
  ran_epochs: int = 0


def run(task: Task, cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str, *,
        strategy: tf.distribute.Strategy | None = None, deterministic: bool = False,
        log_images: bool = True) -> TrainResult:
  """Trains `task` in `workdir`, resuming from ``backup/`` if present; see the module docstring.

  Args:
    task: the job.
    cfg: the resolved config (written to ``config.json``).
    data_dir: converter output folder (TFRecords and ``cdf_*.npz``).
    workdir: the run's folder; a finished one (``done.json``) is reused as it is.
    strategy: default: `runtime.select_strategy(cfg.train.strategy)`.
    deterministic: also turn on TF op determinism (process-wide; bit-exact reruns and resumes).
      The entry points turn it on unless ``--nodeterministic``.
    log_images: TensorBoard patch grids and ROC figures (off in tests that need no images).
  """
  done = result_from_done(workdir)
  if done is not None:
    logging.info("%s: done.json present, reusing the finished run", workdir)
    return done
  state = _prepare(task, cfg, data_dir, workdir, strategy, deterministic, log_images)
  epochs = task.epochs(cfg)
  while state.next_epoch <= epochs and not state.stopped:
    record = _run_epoch(state, state.next_epoch, epochs)
    _save_epoch(state, record)
  state.logger.close()
  return _finish(state)


def _prepare(task: Task, cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str,
             strategy: tf.distribute.Strategy | None, deterministic: bool, log_images: bool
             ) -> _Run:
  """Strategy, seeds, HM table, model and optimisers, work-dir check and restored state."""
  for split in ("train", "val"):   # one clear line naming a missing split, before any work
    pipeline.require_split(data_dir, task.domain, split, both_classes=True)
  strategy = strategy or runtime.select_strategy(cfg.train.strategy)
  runtime.set_determinism(cfg.seed, op_determinism=deterministic)
  chief = runtime.is_chief(strategy)
  paths = work_paths(workdir)
  run_info = {"job": task.kind, **task.run_info(cfg, workdir)}
  extra_paths = dict(run_info.get("extra_paths", {}))
  hm_lut = _hm_table(task, data_dir, workdir, chief, extra_paths)
  if extra_paths:
    run_info["extra_paths"] = extra_paths
  with strategy.scope():
    with runtime.dtype_policy(runtime.precision_policy(cfg.train.mixed_precision)):
      model = task.build_model(cfg)
    groups = task.build_groups(model, cfg)
    augment = None
    if cfg.data.augment_on == "device":
      from mammo_tf.models import augment_layer
      augment = augment_layer.for_config(cfg.data, hm_lut)
  if chief:
    check_workdir(workdir, cfg, run_info)
  trainer = Trainer(model, groups, cfg, strategy, validation_step=task.validation_step,
                    augment=augment)
  state = _Run(task=task, cfg=cfg, data_dir=data_dir, paths=paths, chief=chief, hm_lut=hm_lut,
               extra_paths=extra_paths, trainer=trainer,
               tracker=selection.BestTracker(patience=cfg.train.early_stopping_patience),
               logger=tensorboard.SummaryLogger(paths["tb"], enabled=chief),
               val_ds=task.build_inputs(data_dir, "val", cfg, seed=0, hm_lut=hm_lut),
               log_images=log_images)
  _restore(state)
  return state


def _hm_table(task: Task, data_dir: str, workdir: str, chief: bool,
              extra_paths: dict[str, str]) -> np.ndarray | None:
  """The task's HM table (source domain -> FFDM), saved as ``hm_lut.npy``; None without HM."""
  if not task.hm:
    return None
  lut = pipeline.hm_lut_for(data_dir, task.domain, "ffdm")
  path = os.path.join(workdir, HM_LUT_FILE)
  if chief:
    os.makedirs(workdir, exist_ok=True)
    np.save(path, np.asarray(lut, np.float32))
  extra_paths["hm_lut"] = path
  return lut


def _restore(state: _Run) -> None:
  """Model, optimisers, tracker and history from ``backup/`` when a checkpoint exists."""
  backup = state.paths["backup"]
  if not checkpoint.has_state(backup):
    return
  meta = checkpoint.load_state(backup, state.trainer.model_variables,
                               state.trainer.optimizer_variables)
  state.next_epoch = int(meta["next_epoch"])
  state.tracker = selection.BestTracker.from_state(meta["tracker"])
  state.history = list(meta["history"])
  state.stopped = bool(meta.get("stopped", False))
  logging.info("resuming %s from epoch %d", state.paths["workdir"], state.next_epoch)


def _run_epoch(state: _Run, epoch: int, epochs: int) -> dict[str, Any]:
  """Trains one epoch, validates, updates the tracker; returns the epoch's history record."""
  task, cfg, trainer = state.task, state.cfg, state.trainer
  t0 = time.time()
  train_ds = task.build_inputs(state.data_dir, "train", cfg, seed=cfg.seed, epoch=epoch,
                               hm_lut=state.hm_lut)

  def log_patches(x, y):
    if state.log_images:
      state.logger.patches("train", x, y, step=epoch)

  train_metrics = trainer.train_epoch(train_ds, pipeline.steps_per_epoch(cfg),
                                      on_first_batch=log_patches,
                                      label=f"train epoch {epoch}/{epochs}")
  outputs = trainer.predict(state.val_ds)
  val_auc = task.selection_metric(outputs)
  record: dict[str, Any] = {"epoch": epoch, **train_metrics, "val_auc": _json_float(val_auc),
                            "val_size": int(outputs["label"].shape[0])}
  for group in trainer.groups:
    key = "learning_rate" if group is trainer.groups[0] else f"learning_rate_{group.name}"
    record[key] = optim.current_learning_rate(group.optimizer)
  record.update(task.on_validation(epoch, outputs, state.logger))
  record["best"] = state.tracker.update(epoch, val_auc)
  record["seconds"] = round(time.time() - t0, 3)
  _log_epoch(state, record, outputs, epochs)
  return record


def _log_epoch(state: _Run, record: dict[str, Any], outputs: Mapping[str, np.ndarray],
               epochs: int) -> None:
  """TensorBoard scalars and curves of one epoch, and its log line."""
  logger, epoch = state.logger, record["epoch"]
  val_auc = _nan(record["val_auc"])
  logger.scalars("train", {"loss": record["loss"], "total_loss": record["total_loss"],
                           "auc": record["train_auc"],
                           **{k: v for k, v in record.items() if k.startswith("learning_rate")}},
                 step=epoch)
  logger.scalars("val", {"auc": val_auc}, step=epoch)
  if state.log_images:
    logger.roc_curve("val", outputs["label"], outputs["probability"], step=epoch)
  logger.pr_curve("val", outputs["label"], outputs["probability"], step=epoch)
  logger.flush()
  logging.info("epoch %d/%d: loss %.4f train AUC %.4f val AUC %.4f%s", epoch, epochs,
               record["loss"], record["train_auc"], val_auc, " (best)" if record["best"] else "")


def _save_epoch(state: _Run, record: dict[str, Any]) -> None:
  """Appends the record; the chief writes ``best.keras`` (on improvement), ``history.json`` and,
  last, the resume checkpoint."""
  state.history.append(record)
  state.stopped = state.tracker.should_stop
  state.next_epoch = record["epoch"] + 1
  state.ran_epochs += 1
  if not state.chief:
    return
  if record["best"]:
    _save_keras_atomic(state.trainer.model, state.paths["best"])
  runtime.write_json_atomic(state.paths["history"], state.history)
  checkpoint.save_state(state.paths["backup"], state.trainer.model_variables,
                        state.trainer.optimizer_variables,
                        {"next_epoch": state.next_epoch, "tracker": state.tracker.state(),
                         "history": state.history, "stopped": state.stopped})


def _save_keras_atomic(model: keras.Model, path: str) -> None:
  tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
  model.save(tmp)
  os.replace(tmp, path)


def _finish(state: _Run) -> TrainResult:
  """Export of the best model, the task's last word, then ``done.json`` (chief only)."""
  tracker, history, paths = state.tracker, state.history, dict(state.paths)
  if not state.chief:
    return TrainResult(tracker.best_epoch, _nan(tracker.best_value), len(history), paths, history)
  if state.ran_epochs and history[-1]["best"]:
    best_model = state.trainer.model   # the last epoch is the best: it is what best.keras holds
  else:
    best_model = artifacts.load_keras_model(paths["best"])
  export_lib.export_serving(best_model, paths["export"], state.cfg.input_size,
                            hm_lut=state.hm_lut)
  state.task.on_finish(state.cfg, best_model, history, state.val_ds)
  runtime.write_json_atomic(paths["done"], {
      "job": state.task.kind, "best_epoch": tracker.best_epoch,
      "best_val_auc": _json_float(tracker.best_value), "epochs_run": len(history),
      "early_stopped": state.stopped, "extra_paths": state.extra_paths})
  paths.update(state.extra_paths)
  return TrainResult(best_epoch=tracker.best_epoch, best_val_auc=_nan(tracker.best_value),
                     epochs_run=len(history), paths=paths, history=history)
