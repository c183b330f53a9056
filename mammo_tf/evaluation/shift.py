"""A controlled domain-shift experiment: test-only and histogram-matched AUC against the shift.

One FFDM base model is trained on a single-site synthetic cohort (one vendor response). The same
held-out lesions are then rendered again through K intensity responses at increasing distance
from the training one, and the model is scored on each level as it is ("test only") and with
histogram matching of the level's average c.d.f. onto the training c.d.f. ("HM").

Response family (`mammo_tf.synthetic.vendors.shifted_response`): the training vendor's gamma
curve ``u -> u ** k`` becomes ``u -> u ** (k * m)`` for the level's factor ``m`` (level 0:
``m = 1``), i.e. the training response followed by the monotone power ``t -> t ** m``: exactly
the kind of change histogram matching undoes, up to the quantisation of the stored values.
The distance of a level is the Kolmogorov distance (max |F - G|) between its average c.d.f. and
the training one; that is the figure's x axis.

Held apart: each level's average c.d.f. (and so its HM table) is built from the validation
patients rendered at that level, never from the test images it is scored on.

Model-free check (`mammo_tf.evaluation.hm_residual`): the same test images at level j and level 0
are compared pixel by pixel, before and after HM. It separates what HM can undo (a change that
is one monotone map for all images) from what it cannot (a change that differs per image, such
as the reader's per-image VOI window applied after the shift under ``data.intensity=auto``).

Work directory (every step resumable; a rerun reuses what is complete)::

  W/shift_config.json       config and factors (a rerun must match)
  W/cohort/  W/data/        training cohort (single site, FFDM only) and its TFRecords
  W/base/                   the FFDM model (a training work dir)
  W/levels/<j>/cohort/ W/levels/<j>/data/
                            validation + test patients rendered at level j (validation images
                            are marked "train" so that the converter builds the c.d.f. on them)
  W/eval/level<j>.json      per-level AUCs (cached on the model and the seeds)
  W/adapt/<j>/...           optional: fine-tuning and SpotTune at level j on shares of the
                            training patients (`mammo_tf.evaluation.shift_adapt`)
  W/shift.json  W/shift.png
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.evaluation import run_records
from mammo_tf.io import files
from mammo_tf.io import workdir_names as names

# Power applied to the training response at each level (level 0 = the training response).
DEFAULT_FACTORS = (1.0, 1.5, 2.25, 3.4, 5.0)
# Synthetic cohorts carry no real patients: their id-hashing salt is a fixed public string, so
# the same seed gives the same shards on every machine.
PUBLIC_SALT = b"mammo_tf synthetic shift study: public salt\n"
METHODS = ("test_only", "hm")
METHOD_LABELS = {"test_only": "Test only", "hm": "Test only, with HM"}
CACHE_VERSION = 1
BOOTSTRAP = 200   # patient-bootstrap resamples of each level's interval


def shift_config(preset: str, overrides: Sequence[str] | Mapping[str, Any] | None = None
                 ) -> config_lib.ExperimentConfig:
  """The preset as a single-site, FFDM-only cohort split 60/20/20; `overrides` apply last."""
  cfg = config_lib.get_config(preset)
  cfg = config_lib.override(cfg, {"synthetic.vendors": "single", "synthetic.dbt_share": 0.0,
                                  "synthetic.dbt_only_share": 0.0,
                                  "data.split_fractions": (0.6, 0.2, 0.2)})
  return config_lib.override(cfg, overrides)


@dataclasses.dataclass(frozen=True)
class Layout:
  """The paths of a shift-study work directory."""
  root: str

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  @property
  def cohort(self) -> str:
    return self.path("cohort")

  @property
  def data(self) -> str:
    return self.path("data")

  @property
  def base(self) -> str:
    return self.path("base")

  def level(self, j: int, what: str) -> str:
    return self.path("levels", str(j), what)

  def eval_cache(self, j: int) -> str:
    return self.path(names.EVAL_DIR, f"level{j}.json")


def _step_done(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, names.DONE_FILE))


def _mark_done(directory: str, info: Mapping[str, Any]) -> None:
  files.atomic_write_json(os.path.join(directory, names.DONE_FILE), dict(info))


def check_config(cfg: config_lib.ExperimentConfig, factors: Sequence[float], layout: Layout
                 ) -> None:
  """Writes W/shift_config.json, or refuses to resume a study with another config or levels."""
  current = {"config": json.loads(config_lib.to_json(cfg)), "factors": [float(f) for f in factors]}
  path = layout.path(names.SHIFT_CONFIG_FILE)
  if os.path.exists(path):
    if run_records.read_json(path) != current:
      raise ValueError(f"{layout.root} holds a shift study with another config or other levels; "
                       "use a new --workdir, or the same preset, overrides and levels")
    return
  files.atomic_write_json(path, current)


# -- cohorts and data -----------------------------------------------------------------------------

def ensure_cohort(cfg: config_lib.ExperimentConfig, out: str, *, workers: int,
                  patients: Sequence[int] | None = None, factor: float = 1.0,
                  splits: Mapping[str, str] | None = None) -> str:
  """Renders the cohort (or the listed patients through the level's response) unless done."""
  from mammo_tf.synthetic import cohort
  from mammo_tf.synthetic import vendors
  manifest = os.path.join(out, "manifest.csv")
  if _step_done(out):
    return manifest
  vendor = None
  if factor != 1.0:
    ffdm_choices, _ = vendors.vendor_choices(cfg.synthetic.vendors)
    if len(ffdm_choices) != 1:
      raise ValueError("a response shift needs a single-site cohort (synthetic.vendors=single)")
    vendor = vendors.shifted_response(vendors.FFDM_VENDORS[ffdm_choices[0]], factor)
  report = cohort.generate_cohort(out, cfg.synthetic, cfg.seed, workers=workers,
                                  patients=patients, ffdm_vendor=vendor,
                                  splits=dict(splits) if splits else None)
  logging.info("cohort %s: %d patients, %d FFDM images (response factor %g), %.1f s", out,
               report.num_patients, report.num_ffdm, factor, report.seconds)
  _mark_done(out, {"patients": report.num_patients, "ffdm": report.num_ffdm, "factor": factor})
  return manifest


def ensure_data(cfg: config_lib.ExperimentConfig, manifest: str, out: str, *, workers: int) -> str:
  """Converts the cohort to TFRecords unless done (the converter itself also resumes)."""
  from mammo_tf.data import convert
  if not _step_done(out):
    report = convert.run_conversion(manifest, out, cfg, seed=cfg.seed, workers=workers,
                                    salt=PUBLIC_SALT)
    if report.num_errors:
      raise RuntimeError(f"{out}: {report.num_errors} synthetic image(s) failed to convert "
                         f"(see {os.path.join(out, names.ERRORS_FILE)})")
    _mark_done(out, {"converted": report.num_converted})
  return out


def patient_splits(cfg: config_lib.ExperimentConfig, manifest: str) -> dict[str, str]:
  """{patient_id: split} exactly as the converter assigns them to this manifest."""
  from mammo_tf.data import manifest as manifest_lib
  rows, errors = manifest_lib.read_manifest(manifest)
  if errors:
    raise ValueError(f"{manifest}: {len(errors)} invalid row(s)")
  return manifest_lib.assign_splits(rows, cfg.seed, cfg.data.split_fractions)


def level_patients(splits: Mapping[str, str]) -> tuple[list[int], dict[str, str]]:
  """Validation and test patients of the training cohort, and their splits at a level.

  Test patients stay "test" (scored); validation patients become "train", the split the
  converter builds the level's average c.d.f. from (they are never scored).
  """
  chosen = {pid: ("test" if s == "test" else "train") for pid, s in splits.items()
            if s in ("val", "test")}
  indices = sorted(int(pid[3:]) for pid in chosen)   # synthetic ids are SYN<index>
  return indices, chosen


# -- evaluation -----------------------------------------------------------------------------------

def _cdf_distance(level_data: str, train_data: str) -> float:
  from mammo_tf.data import cdf
  from mammo_tf.data import schema
  return float(cdf.kolmogorov_distance(cdf.load_cdf(schema.cdf_path(level_data, "ffdm")),
                                       cdf.load_cdf(schema.cdf_path(train_data, "ffdm"))))


def evaluate_level(cfg: config_lib.ExperimentConfig, layout: Layout, j: int, factor: float,
                   predictor: Callable[[], Any], stamp: str) -> dict[str, Any]:
  """AUCs of the base model at level j, test only and with HM (cached in W/eval/level<j>.json)."""
  from mammo_tf.data import cdf
  from mammo_tf.data import schema
  from mammo_tf.evaluation import evaluate as evaluate_lib
  seeds = [int(s) for s in cfg.data.eval_seeds]
  key = {"version": CACHE_VERSION, "level": j, "factor": float(factor), "model_stamp": stamp,
         "seeds": seeds}
  path = layout.eval_cache(j)
  if os.path.exists(path):
    cached = run_records.read_json(path)
    if cached.get("cache_key") == key:
      return cached
  data = layout.level(j, "data")
  lut = cdf.lut_from_files(schema.cdf_path(data, "ffdm"), schema.cdf_path(layout.data, "ffdm"))
  out: dict[str, Any] = {"cache_key": key, "level": j, "factor": float(factor),
                         "distance": _cdf_distance(data, layout.data)}
  for method, hm_lut in (("test_only", None), ("hm", lut)):
    result = evaluate_lib.evaluate_seeds(predictor(), data, "ffdm", cfg, seeds, split="test",
                                         hm_lut=hm_lut, bootstrap_resamples=BOOTSTRAP,
                                         bootstrap_seed=cfg.seed)
    out[method] = {k: result[k] for k in ("aucs", "mean", "std", "ci", "n_images", "n_patients",
                                          "n_positive", "n_negative", "note")}
  run_records.write_json_atomic(path, out)
  return run_records.read_json(path)


def level_residual(layout: Layout, j: int, reference: Mapping[str, Any]) -> dict[str, Any]:
  """Model-free: mean per-image |level j - level 0| on the test images, before and after HM.

  `reference` is level 0's test images (`hm_residual.read_split`), read once for all levels.
  """
  from mammo_tf.data import cdf
  from mammo_tf.data import schema
  from mammo_tf.evaluation import hm_residual
  data = layout.level(j, "data")
  lut = cdf.lut_from_files(schema.cdf_path(data, "ffdm"), schema.cdf_path(layout.data, "ffdm"))
  return hm_residual.residual(hm_residual.read_split(data, "ffdm", "test"), dict(reference), lut,
                             what=f"{data} and level 0")


def summarize_levels(levels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The shift.json content: one list per quantity, levels in order (AUC means over seeds)."""
  out: dict[str, Any] = {
      "levels": [lv["level"] for lv in levels],
      "factor": [lv["factor"] for lv in levels],
      "distance": [lv["distance"] for lv in levels],
  }
  for m in METHODS:
    out[m] = [lv[m]["mean"] for lv in levels]
    out[f"{m}_std"] = [lv[m]["std"] for lv in levels]
    out[f"{m}_aucs"] = [lv[m]["aucs"] for lv in levels]
  if all("residual" in lv for lv in levels):
    out["residual_test_only"] = [lv["residual"]["before"] for lv in levels]
    out["residual_hm"] = [lv["residual"]["after"] for lv in levels]
  out["n_images"] = [lv["test_only"]["n_images"] for lv in levels]
  out["n_positive"] = [lv["test_only"]["n_positive"] for lv in levels]
  return out


# -- adaptation at each level (optional) ----------------------------------------------------------

def adapt_level(cfg: config_lib.ExperimentConfig, layout: Layout, j: int, factor: float, *,
                fractions: Sequence[float], train: Mapping[str, bool], workers: int,
                trainers: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
  """FC-only fine-tuning and SpotTune at level j on each share of its training patients.

  `train` is ``{patient_id: positive}`` of the training cohort's training patients. Returns
  ``{method: {fraction_tag: evaluation}}`` (see `mammo_tf.evaluation.shift_adapt`).
  """
  from mammo_tf.evaluation import shift_adapt
  root = layout.path("adapt", str(j))
  train_manifest = ensure_cohort(cfg, os.path.join(root, "cohort"), workers=workers,
                                 patients=sorted(int(p[3:]) for p in train), factor=factor,
                                 splits={p: "train" for p in train})
  level_manifest = os.path.join(layout.level(j, "cohort"), "manifest.csv")
  base = os.path.join(layout.base, names.MODEL_FILE)
  out: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in shift_adapt.METHODS}
  for fraction in fractions:
    tag = shift_adapt.fraction_tag(fraction)
    share = os.path.join(root, tag)
    data = os.path.join(share, "data")
    if not _step_done(data):
      chosen = shift_adapt.training_subset(train, fraction, cfg.seed)
      manifest = shift_adapt.write_subset_manifest(share, train_manifest, level_manifest, chosen)
      ensure_data(cfg, manifest, data, workers=workers)
    for method in shift_adapt.METHODS:
      run_dir = os.path.join(share, method)
      if not _step_done(run_dir):
        trainers[method](cfg, data, base, run_dir)
      out[method][tag] = shift_adapt.evaluate_adapted(
          cfg, run_dir, layout.level(j, "data"),
          layout.path(names.EVAL_DIR, f"level{j}_{method}_{tag}.json"),
          {"level": j, "factor": float(factor), "fraction": float(fraction)})
  shift_adapt.log_level(j, fractions, out)
  return out


# -- the study ------------------------------------------------------------------------------------

def _default_train_base() -> Callable[..., Any]:
  from mammo_tf.training import jobs
  return jobs.train_base


def run_shift_study(cfg: config_lib.ExperimentConfig, workdir: str, *,
                    factors: Sequence[float] = DEFAULT_FACTORS, workers: int = 2,
                    train_base: Callable[..., Any] | None = None,
                    fractions: Sequence[float] | None = None,
                    adapt_trainers: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Runs or resumes the whole experiment; writes W/shift.json and W/shift.png; returns the JSON.

  `factors` are the response powers of the levels; the first must be 1 (the training response)
  and they must increase. `train_base(cfg, data_dir, workdir)` defaults to
  `mammo_tf.training.jobs.train_base`. With `fractions` (shares of the training patients, e.g.
  ``shift_adapt.DEFAULT_FRACTIONS``) each level also gets FC-only fine-tuning and SpotTune on
  that much target data (`adapt_level`; `adapt_trainers` defaults to
  `shift_adapt.default_trainers()`).
  """
  from mammo_tf.evaluation import evaluate as evaluate_lib
  from mammo_tf.evaluation import shift_adapt
  from mammo_tf.evaluation import study_figures
  factors = [float(f) for f in factors]
  if len(factors) < 2 or factors[0] != 1.0 or any(b <= a for a, b in zip(factors, factors[1:])):
    raise ValueError(f"levels must start at 1 and increase, got {factors}")
  if fractions is not None:
    fractions = shift_adapt.check_fractions(fractions)
  layout = Layout(workdir)
  os.makedirs(workdir, exist_ok=True)
  check_config(cfg, factors, layout)
  manifest = ensure_cohort(cfg, layout.cohort, workers=workers)
  ensure_data(cfg, manifest, layout.data, workers=workers)
  if not _step_done(layout.base):
    (train_base or _default_train_base())(cfg, layout.data, layout.base)
  base_splits = patient_splits(cfg, manifest)
  indices, level_splits = level_patients(base_splits)
  loaded: dict[str, Any] = {}

  def predictor():
    if "model" not in loaded:
      loaded["model"] = evaluate_lib.load_predictor(os.path.join(layout.base, names.MODEL_FILE))
    return loaded["model"]

  stamp = run_records.model_stamp(layout.base)
  levels = []
  for j, factor in enumerate(factors):
    level_manifest = ensure_cohort(cfg, layout.level(j, "cohort"), workers=workers,
                                   patients=indices, factor=factor, splits=level_splits)
    ensure_data(cfg, level_manifest, layout.level(j, "data"), workers=workers)
    if j == 0:
      from mammo_tf.evaluation import hm_residual
      loaded["level0"] = hm_residual.read_split(layout.level(0, "data"), "ffdm", "test")
    lv = dict(evaluate_level(cfg, layout, j, factor, predictor, stamp),
              residual=level_residual(layout, j, loaded["level0"]))
    logging.info("level %d (factor %g, distance %.3f): test only %s, HM %s; per-image "
                 "residual %.1f -> %.1f grey levels", j, factor, lv["distance"],
                 lv["test_only"]["mean"], lv["hm"]["mean"], lv["residual"]["before"],
                 lv["residual"]["after"])
    levels.append(lv)
  result = summarize_levels(levels)
  if fractions is not None:
    train = shift_adapt.training_patients(manifest, base_splits)
    trainers = adapt_trainers or shift_adapt.default_trainers()
    adapted = [adapt_level(cfg, layout, j, factor, fractions=fractions, train=train,
                           workers=workers, trainers=trainers)
               for j, factor in enumerate(factors)]
    result.update(shift_adapt.summarize(adapted, fractions))
  result = dict(result, preset=cfg.name, seed=cfg.seed,
                eval_seeds=[int(s) for s in cfg.data.eval_seeds],
                family="gamma response u -> u ** (k * factor) of the training vendor "
                       "(factor 1 = the training response)",
                distance_measure="Kolmogorov distance between the level's average c.d.f. "
                                 "(validation patients) and the training c.d.f.",
                auc="patch-level ROC AUC on the test patients, mean over the eval seeds",
                residual="mean over the test images of the mean |level j - level 0| over "
                         "breast pixels (grey levels 0..4095), as read (residual_test_only) "
                         "and after HM (residual_hm); no model involved")
  run_records.write_json_atomic(layout.path(names.SHIFT_JSON), result)
  study_figures.shift_figure(result, layout.path(names.SHIFT_FIGURE))
  return run_records.read_json(layout.path(names.SHIFT_JSON))


def attach_to_study(shift_workdir: str, study_workdir: str) -> tuple[str, str]:
  """Adds this shift study to a Table 2 study's report; returns (report.md, report.html).

  Copies shift.json to the study's work dir and shift.png to its figures/, then re-renders the
  report from its results.json (Table 1 from the converter summary it names, when present).
  Later reruns of the study keep the section, since the report reads W/shift.json.
  """
  from mammo_tf.evaluation import report
  results_path = os.path.join(study_workdir, names.RESULTS_FILE)
  if not os.path.exists(results_path):
    raise ValueError(f"{study_workdir} holds no finished study ({names.RESULTS_FILE} missing)")
  with open(os.path.join(shift_workdir, names.SHIFT_FIGURE), "rb") as f:
    files.atomic_write(os.path.join(study_workdir, names.FIGURES_DIR, names.SHIFT_FIGURE),
                       f.read())
  with open(os.path.join(shift_workdir, names.SHIFT_JSON), "rb") as f:
    files.atomic_write(os.path.join(study_workdir, names.SHIFT_JSON), f.read())
  results = run_records.read_json(results_path)
  summary_path = os.path.join(results.get("data_dir") or "", names.SUMMARY_FILE)
  summary = run_records.read_json(summary_path) if results.get("data_dir") and os.path.exists(
      summary_path) else None
  return report.write_report(study_workdir, results, summary)
