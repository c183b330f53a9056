"""Patch-level evaluation of a model over patch-extraction seeds (paper §3).

For every seed the evaluation pipeline cuts one patch per test image (finding centre when
annotated, else a seeded in-breast pixel); the model scores them; the ROC AUC is computed per
seed, then the mean and standard deviation over seeds (the paper's error estimate) and a
patient-level bootstrap interval of the seed-averaged AUC.

A model is either a `.keras` file (the classifier or the SpotTune model; mammo_tf's layers are
registered on import) or an exported SavedModel directory (`serving_default(patch uint16)
-> {"probability"}`), wrapped as a `Predictor`: float32 patches ``[B, P, P, 1]`` in 12-bit
units -> probabilities ``[B]``.

Result dictionaries (JSON-ready, see `summarize`) are what the CLI writes and what the Table 2
study caches per row.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mammo_tf.evaluation import metrics
from mammo_tf.io import workdir_names as names

# Modules whose import registers mammo_tf's Keras custom objects.
_CUSTOM_OBJECT_MODULES = ("mammo_tf.models.preprocessing", "mammo_tf.models.resnet",
                          "mammo_tf.models.spottune")
PROBABILITY_KEY = "probability"


def register_custom_objects() -> None:
  """Imports the model modules so that `keras.models.load_model` knows mammo_tf's layers."""
  for name in _CUSTOM_OBJECT_MODULES:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:  # a module not written yet: only that one may be missing
      if e.name != name:
        raise


def _to_probability(outputs: Any) -> np.ndarray:
  """Model outputs (array, dict or tuple whose first entry is the probability) -> float64 [B]."""
  if isinstance(outputs, Mapping):
    outputs = outputs[PROBABILITY_KEY] if PROBABILITY_KEY in outputs else next(
        iter(outputs.values()))
  elif isinstance(outputs, (list, tuple)):
    outputs = outputs[0]
  return np.asarray(outputs, np.float64).reshape(-1)


@dataclasses.dataclass
class Predictor:
  """A loaded model as a function of a float32 patch batch ``[B, P, P, 1]`` -> ``[B]``."""
  predict: Callable[[np.ndarray], np.ndarray]
  kind: str                  # "keras" | "saved_model"
  input_size: int | None     # patch side the model expects, when fixed
  path: str
  model: Any = None          # the keras.Model (kind "keras")

  def __call__(self, patches: np.ndarray) -> np.ndarray:
    return self.predict(patches)


def _input_size(model: Any) -> int | None:
  size = getattr(model, "input_size", None)   # SpotTuneModel keeps it as an attribute
  if isinstance(size, int):
    return size
  try:
    shape = model.inputs[0].shape
    return int(shape[1]) if shape[1] is not None else None
  except (AttributeError, IndexError, TypeError):
    return None


MODEL_CONFIG = names.CONFIG_FILE   # written by the trainer beside best.keras
MODEL_HM_LUT = "hm_lut.npy"      # the HM table a training applied to its inputs


def _model_dirs(model_path: str) -> list[str]:
  """Folders that hold a model's training files: the SavedModel folder itself and its parent
  (``<workdir>/export``), or the folder of a ``.keras`` file (``<workdir>``)."""
  path = os.path.abspath(model_path.rstrip("/\\"))
  return ([path] if os.path.isdir(path) else []) + [os.path.dirname(path)]


def model_config_path(model_path: str) -> str | None:
  """The ``config.json`` saved with a model by its training, or None."""
  for folder in _model_dirs(model_path):
    candidate = os.path.join(folder, MODEL_CONFIG)
    if os.path.isfile(candidate):
      return candidate
  return None


def config_for_model(model_path: str, preset: str | None, overrides: Sequence[str] = ()
                     ) -> tuple[Any, str]:
  """The configuration to evaluate a model with, and where it came from.

  The model's own ``config.json`` (patch geometry, downsampling, masks, batch sizes: what its
  training used), with `overrides` applied on top; a named `preset` only when one is given or the
  model has no ``config.json`` (then ``paper``).
  """
  from mammo_tf import config as config_lib
  if preset is None:
    path = model_config_path(model_path)
    if path is not None:
      with open(path, "r", encoding="utf-8") as f:
        cfg = config_lib.from_json(f.read())
      return config_lib.validate(config_lib.override(cfg, list(overrides))), path
    preset = "paper"
  return config_lib.get_config(preset, list(overrides)), f"preset {preset}"


def model_hm_lut(model_path: str) -> np.ndarray | None:
  """The HM table a ``.keras`` model was trained with (``hm_lut.npy`` beside it), else None.

  A SavedModel export carries its HM layer already, so it gets None.
  """
  if os.path.isdir(model_path):
    return None
  path = os.path.join(os.path.dirname(os.path.abspath(model_path)), MODEL_HM_LUT)
  return np.load(path).astype(np.float32) if os.path.isfile(path) else None


def load_predictor(path: str) -> Predictor:
  """Loads a `.keras` model or a SavedModel directory as a `Predictor`.

  Raises:
    FileNotFoundError / ValueError naming `path` when it is neither.
  """
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise ValueError(f"{path}: a directory without saved_model.pb is not a SavedModel")
    return _load_saved_model(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such model file")
  if not path.endswith(".keras"):
    raise ValueError(f"{path}: expected a .keras file or a SavedModel directory")
  from mammo_tf.training import artifacts
  register_custom_objects()
  model = artifacts.load_keras_model(path, compile=False)   # truncated/corrupt: one clear line

  def predict(patches: np.ndarray) -> np.ndarray:
    return _to_probability(model.predict_on_batch(np.asarray(patches, np.float32)))

  return Predictor(predict, "keras", _input_size(model), path, model)


def _load_saved_model(path: str) -> Predictor:
  import tensorflow as tf
  register_custom_objects()
  loaded = tf.saved_model.load(path)
  fn = loaded.signatures["serving_default"]
  spec = fn.structured_input_signature[1]
  name, tensor_spec = next(iter(spec.items()))
  dtype = tensor_spec.dtype
  size = tensor_spec.shape[1]

  def predict(patches: np.ndarray) -> np.ndarray:
    x = np.asarray(patches, np.float32)
    if dtype.is_integer:
      x = np.clip(np.rint(x), 0, 4095).astype(dtype.as_numpy_dtype)
    return _to_probability({k: v.numpy() for k, v in fn(**{name: tf.constant(x)}).items()})

  predictor = Predictor(predict, "saved_model", int(size) if size is not None else None, path)
  predictor.model = loaded  # keep the loaded object (and its variables) alive
  return predictor


@dataclasses.dataclass
class Predictions:
  """Scores of one patch per image, sorted by image id."""
  scores: np.ndarray        # float64 [N]
  labels: np.ndarray        # int64 [N] binary
  label_class: np.ndarray   # int64 [N] index into config.LABELS
  image_id: np.ndarray      # str [N] (hashed ids)
  patient: np.ndarray       # str [N] (hashed ids)


def _text(values) -> np.ndarray:
  return np.array([v.decode() if isinstance(v, bytes) else str(v)
                   for v in np.asarray(values).reshape(-1)])


def predict_batches(predictor: Callable[[np.ndarray], np.ndarray],
                    batches: Iterable[Mapping[str, Any]], *, label: str | None = None
                    ) -> Predictions:
  """Runs `predictor` over batched dicts ``{"patch", "label", "label_class", "image_id",
  "patient"}`` (e.g. `make_eval_dataset(...).as_numpy_iterator()`); with a `label`, reports
  progress (batches, patches/s: a bar on a terminal, else periodic log lines)."""
  from mammo_tf.training import progress
  parts: dict[str, list] = {k: [] for k in ("scores", "labels", "label_class", "image_id",
                                            "patient")}
  bar = progress.Progress(label or "", enabled=label is not None)
  for batch in batches:
    parts["scores"].append(np.asarray(predictor(np.asarray(batch["patch"])), np.float64))
    parts["labels"].append(np.asarray(batch["label"]).reshape(-1).astype(np.int64))
    parts["label_class"].append(np.asarray(batch["label_class"]).reshape(-1).astype(np.int64))
    parts["image_id"].append(_text(batch["image_id"]))
    parts["patient"].append(_text(batch["patient"]))
    bar.update(1, samples=parts["labels"][-1].size)
  bar.close()
  if not parts["scores"]:
    raise ValueError("the evaluation dataset is empty")
  cat = {k: np.concatenate(v) for k, v in parts.items()}
  if cat["scores"].shape != cat["labels"].shape:
    raise ValueError(f"model returned {cat['scores'].shape[0]} scores for "
                     f"{cat['labels'].shape[0]} patches")
  order = np.argsort(cat["image_id"], kind="mergesort")
  return Predictions(**{k: v[order] for k, v in cat.items()})


def summarize(per_seed: Mapping[int, Predictions], *, bootstrap_resamples: int = 1000,
              bootstrap_seed: int = 0, level: float = 0.95,
              max_roc_points: int = 512) -> dict[str, Any]:
  """AUC per seed, mean ± std, patient-level bootstrap interval and ROC points (JSON-ready).

  Keys: ``seeds``, ``aucs``, ``mean``, ``std`` (population, ``np.std(ddof=0)``), ``std_ddof``
  (0), ``std_sample`` (``ddof=1``), ``ci`` {low, high, level, num_resamples, num_valid, seed},
  ``n_images``, ``n_patients``, ``n_positive``, ``n_negative``, ``roc`` {seed: {fpr, tpr}},
  ``note``. With one class only the AUC is undefined: AUCs, mean, std and CI are NaN, ``roc`` is
  empty and ``note`` says why (no exception, so a study still finishes and reports it).
  """
  seeds = sorted(per_seed)
  if not seeds:
    raise ValueError("summarize needs at least one seed")
  first = per_seed[seeds[0]]
  for s in seeds[1:]:
    if not np.array_equal(per_seed[s].image_id, first.image_id):
      raise ValueError(f"seed {s} scored a different set of images than seed {seeds[0]}")
  n_pos = int(first.labels.sum())
  n_neg = int((first.labels == 0).sum())
  if n_pos == 0 or n_neg == 0:
    # The AUC is undefined; say so in the result instead of failing a whole study.
    nan = float("nan")
    ci = metrics.BootstrapInterval(nan, nan, level, bootstrap_resamples, 0, bootstrap_seed)
    aucs, mean, std, std_sample, roc = [nan] * len(seeds), nan, nan, nan, {}
    note = f"AUC undefined: {n_pos} positive and {n_neg} negative images"
  else:
    aucs = [metrics.roc_auc(per_seed[s].labels, per_seed[s].scores) for s in seeds]
    mean, std = metrics.mean_std(aucs, ddof=0)
    _, std_sample = metrics.mean_std(aucs, ddof=1)
    ci = metrics.patient_bootstrap_ci(
        first.labels, np.stack([per_seed[s].scores for s in seeds]), first.patient,
        num_resamples=bootstrap_resamples, level=level, seed=bootstrap_seed)
    roc = {}
    note = ""
    for s in seeds:
      fpr, tpr, _ = metrics.roc_curve(per_seed[s].labels, per_seed[s].scores)
      if fpr.size > max_roc_points:  # thin long curves for the JSON; keep both ends
        keep = np.unique(np.linspace(0, fpr.size - 1, max_roc_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
      roc[str(s)] = {"fpr": [round(float(v), 6) for v in fpr],
                     "tpr": [round(float(v), 6) for v in tpr]}
  return {
      "seeds": [int(s) for s in seeds],
      "aucs": [float(a) for a in aucs],
      "mean": mean,
      "std": std,
      "std_ddof": 0,
      "std_sample": std_sample,
      "ci": dataclasses.asdict(ci),
      "n_images": int(first.labels.size),
      "n_patients": int(np.unique(first.patient).size),
      "n_positive": n_pos,
      "n_negative": n_neg,
      "roc": roc,
      "note": note,
  }


def evaluate_seeds(predictor: Callable[[np.ndarray], np.ndarray], data_dir: str, domain: str,
                   cfg, seeds: Sequence[int], *, split: str = "test",
                   hm_lut: np.ndarray | None = None, bootstrap_resamples: int = 1000,
                   bootstrap_seed: int = 0, log: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
  """Evaluates `predictor` on `domain`/`split` of `data_dir` for each seed; see `summarize`.

  `hm_lut` (a 4096-entry table, e.g. `cdf.lut_from_files(cdf_dbt, cdf_ffdm)`) histogram-matches
  the patches in the pipeline. Do not pass it for a SavedModel that already carries its HM layer.
  """
  from mammo_tf.data import pipeline
  per_seed = {}
  for seed in seeds:
    ds = pipeline.make_eval_dataset(data_dir, domain, split, cfg, int(seed), hm_lut=hm_lut)
    per_seed[int(seed)] = predict_batches(predictor, ds.as_numpy_iterator(),
                                          label=f"evaluating {domain}/{split} seed {seed}")
    if log:
      p = per_seed[int(seed)]
      auc = (metrics.roc_auc(p.labels, p.scores) if 0 < p.labels.sum() < p.labels.size
             else float("nan"))
      log(f"{domain}/{split}{' +HM' if hm_lut is not None else ''} seed {seed}: "
          f"{p.labels.size} patches, AUC {auc:.4f}")
  result = summarize(per_seed, bootstrap_resamples=bootstrap_resamples,
                     bootstrap_seed=bootstrap_seed)
  result.update(domain=domain, split=split, hm=hm_lut is not None)
  return result


def plot_roc_curves(curves: Sequence[tuple[str, Mapping[str, Any]]], path: str,
                    title: str = "ROC") -> str:
  """Writes a PNG of ROC curves: one panel line per (name, result) and per seed.

  Each result is a `summarize` dict; the legend shows mean ± std AUC.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5.0, 5.0), dpi=100)
  try:
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, result) in enumerate(curves):
      colour = colours[i % len(colours)]
      for j, (_, pts) in enumerate(sorted(result["roc"].items())):
        label = (f"{name}: {result['mean']:.3f} ± {result['std']:.3f}" if j == 0 else None)
        ax.plot(pts["fpr"], pts["tpr"], color=colour, alpha=0.8, lw=1.2, label=label,
                drawstyle="default")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
  finally:
    plt.close(fig)
  return path
