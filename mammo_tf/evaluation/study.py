"""The study of paper §3: five trainings, the seven rows of Table 2, figures and the report.

Work directory layout (everything is resumable; a rerun reuses what is complete)::

  W/study_config.json          the experiment config of the study (a rerun must match it)
  W/base/ W/finetune/ W/finetune_hm/ W/spottune/ W/spottune_hm/
                               training work dirs; complete when their done.json exists
  W/eval/<row>.json            per-row evaluation (per-seed AUCs, mean, std, CI, ROC points),
                               reused when the model's done.json and the seeds are unchanged
  W/figures/*.png              sample patches (Fig. 1), cumulative histograms (Fig. 2),
                               SpotTune policies (Fig. 3), ROC curves per row and overall
  W/results.json, W/report.md, W/report.html

Rows (paper Table 2; test split, seeds ``cfg.data.eval_seeds``):

  ===============  ==========  ===========  ==================  ==============  ====
  key              train data  test data    procedure           model           HM
  ===============  ==========  ===========  ==================  ==============  ====
  ffdm_scratch     FFDM        FFDM         Train from scratch  base            no
  mip_test_only    FFDM        MIP          Test only           base            no
  mip_finetune     FFDM        MIP          Fine-tune           finetune        no
  mip_spottune     FFDM        MIP          SpotTune            spottune        no
  hm_test_only     FFDM        MIP with HM  Test only           base            yes
  hm_finetune      FFDM        MIP with HM  Fine-tune           finetune_hm     yes
  hm_spottune      FFDM        MIP with HM  SpotTune            spottune_hm     yes
  ===============  ==========  ===========  ==================  ==============  ====

HM rows histogram-match the MIP test patches with the table ``cdf_dbt -> cdf_ffdm`` (Algorithm 1)
in the evaluation pipeline, as the HM trainings do in theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.data import fingerprint
from mammo_tf.evaluation import evaluate as evaluate_lib
from mammo_tf.evaluation import training_runs
from mammo_tf.io import files

RUNS = ("base", "finetune", "finetune_hm", "spottune", "spottune_hm")
DONE_FILE = "done.json"
MODEL_FILE = "best.keras"
FIGURES_DIR = "figures"
EVAL_DIR = "eval"
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of Table 2."""
  key: str
  train_data: str
  test_data: str
  procedure: str
  run: str
  domain: str
  hm: bool
  paper_mean: float
  paper_std: float

  @property
  def label(self) -> str:
    return f"{self.train_data} -> {self.test_data}, {self.procedure}"


ROWS = (
    Row("ffdm_scratch", "FFDM", "FFDM", "Train from scratch", "base", "ffdm", False, 0.909, 0.001),
    Row("mip_test_only", "FFDM", "MIP", "Test only", "base", "dbt", False, 0.751, 0.001),
    Row("mip_finetune", "FFDM", "MIP", "Fine-tune", "finetune", "dbt", False, 0.759, 0.003),
    Row("mip_spottune", "FFDM", "MIP", "SpotTune", "spottune", "dbt", False, 0.825, 0.002),
    Row("hm_test_only", "FFDM", "MIP with HM", "Test only", "base", "dbt", True, 0.847, 0.001),
    Row("hm_finetune", "FFDM", "MIP with HM", "Fine-tune", "finetune_hm", "dbt", True,
        0.837, 0.001),
    Row("hm_spottune", "FFDM", "MIP with HM", "SpotTune", "spottune_hm", "dbt", True,
        0.830, 0.002),
)


# -- small helpers ---------------------------------------------------------------------------------

def json_safe(obj: Any) -> Any:
  """NaN / infinity -> None (strict JSON), recursively."""
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, Mapping):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return obj


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes strict JSON (NaN -> null) through a temp file + rename, so a crash never leaves a
  half-written file."""
  files.atomic_write_json(path, json_safe(obj), indent=1, allow_nan=False)


def write_text_atomic(path: str, text: str) -> None:
  files.atomic_write(path, text)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def run_dir(workdir: str, run: str) -> str:
  return os.path.join(workdir, run)


def is_done(directory: str) -> bool:
  """A training work dir is complete when its done.json (written last) exists."""
  return os.path.exists(os.path.join(directory, DONE_FILE))


def model_stamp(directory: str) -> str:
  """Identifies a completed training: a hash of its done.json and best.keras bytes."""
  digest = hashlib.sha256()
  for name in (DONE_FILE, MODEL_FILE):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
  return digest.hexdigest()[:16]


def git_commit(path: str | None = None) -> str:
  """The commit of the repository holding this code ("" when not a git checkout)."""
  where = path or os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10, check=True)
    dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return ""


def _config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = ""
                        ) -> list[str]:
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key), b.get(key)
    if isinstance(va, Mapping) and isinstance(vb, Mapping):
      out.extend(_config_differences(va, vb, f"{prefix}{key}."))
    elif va != vb:
      out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
  return out


def data_fingerprint(data_dir: str) -> str:
  """The converter output's content fingerprint (`mammo_tf.data.fingerprint`): its shards' bytes,
  c.d.f. arrays and summary; never modification times, cache keys or worker counts."""
  return fingerprint.data_fingerprint(data_dir)


def check_study_config(cfg: config_lib.ExperimentConfig, workdir: str,
                       data_dir: str | None = None) -> None:
  """Writes W/study_config.json, or checks that a resumed study uses the same config and data."""
  path = os.path.join(workdir, "study_config.json")
  current = json.loads(config_lib.to_json(cfg))
  if data_dir is not None:
    current["data_fingerprint"] = data_fingerprint(data_dir)
  if os.path.exists(path):
    diffs = _config_differences(read_json(path), current)
    if diffs:
      raise ValueError(
          f"{workdir} holds a study with a different config ({'; '.join(diffs[:8])}); "
          "use a new --workdir, or the same data, preset and overrides")
    return
  write_json_atomic(path, current)


def check_splits(data_dir: str, split: str = "test") -> None:
  """Every split the study reads holds both classes, else one line naming it (before any work).

  Training and validation of FFDM and DBT, and the evaluation `split` of both domains (Table 2
  evaluates FFDM and MIP). Raises `pipeline.MissingSplitError` (a ValueError: exit status 2).
  """
  from mammo_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  for domain in config_lib.DOMAINS:
    for name in ("train", "val", split):
      pipeline.require_split(data_dir, domain, name, both_classes=True)


# -- trainings ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trainers:
  """The three training functions (mammo_tf.training's by default)."""
  train_base: Callable[..., Any]
  finetune: Callable[..., Any]
  train_spottune: Callable[..., Any]


def default_trainers() -> Trainers:
  """mammo_tf.training's jobs: `jobs.train_base`, `jobs.finetune`,
  `spottune_train.train_spottune`."""
  from mammo_tf.training import jobs  # pylint: disable=g-import-not-at-top
  from mammo_tf.training import spottune_train  # pylint: disable=g-import-not-at-top
  return Trainers(jobs.train_base, jobs.finetune, spottune_train.train_spottune)


def base_model_path(workdir: str) -> str:
  return os.path.join(run_dir(workdir, "base"), MODEL_FILE)


def ensure_trainings(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str,
                     trainers: Trainers, runs: Sequence[str] = RUNS) -> list[str]:
  """Runs every training in `runs` whose work dir has no done.json; returns those it ran.

  A training that fails (`training_runs.TrainingFailed`: a crash of its process) is logged and
  the others go on (those needing the base model are skipped when it failed); then
  `training_runs.TrainingsFailed` names every failure. Whatever finished stays on disk.
  """
  ran, failed = [], []
  base = base_model_path(workdir)
  for run in runs:
    directory = run_dir(workdir, run)
    if is_done(directory):
      logging.info("training %-12s complete, reused (%s)", run, directory)
      continue
    if run != "base" and not is_done(run_dir(workdir, "base")):
      if failed:
        logging.error("training %-12s skipped: it needs the base model", run)
        continue
      raise RuntimeError(f"{run} needs the base model, but {run_dir(workdir, 'base')} is "
                         "not complete")
    logging.info("training %-12s starting in %s", run, directory)
    try:
      _train(run, cfg, data_dir, directory, base, trainers)
    except training_runs.TrainingFailed as e:
      logging.error("%s", e)
      failed.append(e)
      continue
    if not is_done(directory):
      raise RuntimeError(f"training {run} returned without writing {DONE_FILE} in {directory}")
    logging.info("training %-12s done", run)
    ran.append(run)
  if failed:
    raise training_runs.TrainingsFailed(failed)
  return ran


def _train(run: str, cfg: config_lib.ExperimentConfig, data_dir: str, directory: str, base: str,
           trainers: Trainers) -> None:
  if run == "base":
    trainers.train_base(cfg, data_dir, directory)
  elif run.startswith("finetune"):
    trainers.finetune(cfg, data_dir, base, directory, run.endswith("_hm"))
  else:
    trainers.train_spottune(cfg, data_dir, base, directory, run.endswith("_hm"))


def training_summary(workdir: str) -> dict[str, Any]:
  """done.json of each complete training (best epoch, validation AUC, ...)."""
  out = {}
  for run in RUNS:
    path = os.path.join(run_dir(workdir, run), DONE_FILE)
    if os.path.exists(path):
      try:
        out[run] = read_json(path)
      except (OSError, ValueError):
        out[run] = {}
  return out


# -- evaluation -----------------------------------------------------------------------------------

def _fmt(mean: Any, std: Any) -> str:
  if mean is None or std is None or not np.isfinite(mean):
    return "n/a"
  return f"{mean:.4f} ± {std:.4f}"


def eval_cache_path(workdir: str, row: Row) -> str:
  return os.path.join(workdir, EVAL_DIR, f"{row.key}.json")


def _cache_key(row: Row, stamp: str, seeds: Sequence[int], split: str,
               bootstrap_resamples: int) -> dict[str, Any]:
  return {"version": CACHE_VERSION, "row": row.key, "model_stamp": stamp,
          "seeds": [int(s) for s in seeds], "split": split, "domain": row.domain,
          "hm": row.hm, "bootstrap_resamples": int(bootstrap_resamples)}


def cached_row(workdir: str, row: Row, key: Mapping[str, Any]) -> dict[str, Any] | None:
  path = eval_cache_path(workdir, row)
  if not os.path.exists(path):
    return None
  try:
    cached = read_json(path)
  except (OSError, ValueError):
    return None
  return cached if cached.get("cache_key") == dict(key) else None


def evaluate_rows(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str, *,
                  rows: Sequence[Row] = ROWS, split: str = "test",
                  bootstrap_resamples: int = 1000) -> tuple[dict[str, dict], list[str]]:
  """Evaluates (or reuses the cached evaluation of) every row. Returns (results, evaluated)."""
  seeds = tuple(int(s) for s in cfg.data.eval_seeds)
  results, evaluated = {}, []
  predictors: dict[str, evaluate_lib.Predictor] = {}
  hm_lut = None
  for i, row in enumerate(rows):
    directory = run_dir(workdir, row.run)
    key = _cache_key(row, model_stamp(directory), seeds, split, bootstrap_resamples)
    cached = cached_row(workdir, row, key)
    if cached is not None:
      logging.info("row %d/%d %-14s cached: AUC %s", i + 1, len(rows), row.key,
                   _fmt(cached["mean"], cached["std"]))
      results[row.key] = cached
      continue
    logging.info("row %d/%d %-14s evaluating %s on %s/%s%s, seeds %s", i + 1, len(rows),
                 row.key, row.run, row.domain, split, " +HM" if row.hm else "", list(seeds))
    if row.run not in predictors:
      predictors[row.run] = evaluate_lib.load_predictor(os.path.join(directory, MODEL_FILE))
    if row.hm and hm_lut is None:
      from mammo_tf.data import pipeline  # pylint: disable=g-import-not-at-top
      hm_lut = pipeline.hm_lut_for(data_dir, "dbt", "ffdm")
    result = evaluate_lib.evaluate_seeds(
        predictors[row.run], data_dir, row.domain, cfg, seeds, split=split,
        hm_lut=hm_lut if row.hm else None, bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=cfg.seed, log=logging.info)
    result["cache_key"] = key
    write_json_atomic(eval_cache_path(workdir, row), result)
    logging.info("row %d/%d %-14s AUC %s %s", i + 1, len(rows), row.key,
                 _fmt(result["mean"], result["std"]), result.get("note", ""))
    results[row.key] = result
    evaluated.append(row.key)
  return results, evaluated


# -- figures --------------------------------------------------------------------------------------

def _figure(workdir: str, name: str, make: Callable[[str], Any], *, force: bool = False
            ) -> str | None:
  """Makes figures/<name> unless it exists; returns its path relative to `workdir` or None.

  A figure that fails is logged and left out of the report; it never stops the study.
  """
  rel = os.path.join(FIGURES_DIR, name)
  path = os.path.join(workdir, rel)
  if os.path.exists(path) and not force:
    return rel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    make(path)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("figure %s failed: %s: %s", name, type(e).__name__, e)
    return None
  if not os.path.exists(path):
    logging.warning("figure %s was not written", name)
    return None
  logging.info("figure %s written", rel)
  return rel


def make_figures(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str,
                 results: Mapping[str, Mapping[str, Any]], *, refresh_roc: Sequence[str] = (),
                 rows: Sequence[Row] = ROWS) -> dict[str, str]:
  """Writes the report's figures; returns {figure key: path relative to workdir}."""
  figures: dict[str, str] = {}

  def add(key, name, make, force=False):
    rel = _figure(workdir, name, make, force=force)
    if rel:
      figures[key] = rel

  results = {k: v for k, v in results.items() if v.get("roc")}   # rows with a defined AUC
  for row in rows:
    if row.key in results:
      add(f"roc_{row.key}", f"roc_{row.key}.png",
          lambda p, r=row: evaluate_lib.plot_roc_curves([(r.procedure, results[r.key])], p,
                                                        title=r.label),
          force=row.key in refresh_roc)
  for name, keys in (("roc_mip.png", [r for r in rows if r.domain == "dbt" and not r.hm]),
                     ("roc_hm.png", [r for r in rows if r.hm])):
    present = [r for r in keys if r.key in results]
    if present:
      add(name[:-4], name,
          lambda p, rs=present: evaluate_lib.plot_roc_curves(
              [(r.procedure, results[r.key]) for r in rs], p,
              title=f"FFDM -> {rs[0].test_data}"),
          force=any(r.key in refresh_roc for r in present))
  _data_figures(cfg, data_dir, workdir, add)
  _policy_figures(cfg, workdir, add)
  return figures


def sample_patch_figure(data_dir: str, cfg: config_lib.ExperimentConfig, path: str, *,
                        num: int = 6, seed: int = 0) -> str:
  """Paper Fig. 1: un-augmented training patches, rows FFDM, MIP and MIP with HM."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  from mammo_tf.data import figures as data_figures  # pylint: disable=g-import-not-at-top
  from mammo_tf.data import pipeline  # pylint: disable=g-import-not-at-top
  ffdm = data_figures.sample_patches(data_dir, "ffdm", cfg, num=num, seed=seed)
  mip = data_figures.sample_patches(data_dir, "dbt", cfg, num=num, seed=seed,
                                    hm_lut=pipeline.hm_lut_for(data_dir, "dbt", "ffdm"))
  rows = (("FFDM", ffdm["plain"], ffdm["label"]), ("MIP", mip["plain"], mip["label"]),
          ("MIP with HM", mip["plain+HM"], mip["label"]))
  fig, axes = plt.subplots(len(rows), num, figsize=(1.6 * num, 1.75 * len(rows)), squeeze=False)
  try:
    for r, (name, patches, labels) in enumerate(rows):
      for c in range(num):
        ax = axes[r, c]
        ax.imshow(patches[c], cmap="gray", vmin=0, vmax=config_lib.MAX_INTENSITY)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("positive" if labels[c] > 0.5 else "negative", fontsize=7)
        if c == 0:
          ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  finally:
    plt.close(fig)
  return path


def cumulative_histogram_figure(data_dir: str, path: str) -> str:
  """Paper Fig. 2: average cumulative histograms of FFDM, MIP and HM-MIP (from cdf_*.npz)."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  from mammo_tf.data import cdf  # pylint: disable=g-import-not-at-top
  from mammo_tf.data import figures as data_figures  # pylint: disable=g-import-not-at-top
  from mammo_tf.data import schema  # pylint: disable=g-import-not-at-top
  fig = data_figures.cdf_figure(cdf.load_cdf(schema.cdf_path(data_dir, "ffdm")),
                                cdf.load_cdf(schema.cdf_path(data_dir, "dbt")))
  try:
    fig.savefig(path, dpi=100)
  finally:
    plt.close(fig)
  return path


def _data_figures(cfg, data_dir, workdir, add) -> None:
  del workdir
  add("sample_patches", "sample_patches.png", lambda p: sample_patch_figure(data_dir, cfg, p))
  add("cumulative_histograms", "cumulative_histograms.png",
      lambda p: cumulative_histogram_figure(data_dir, p))


def _policy_figures(cfg, workdir, add) -> None:
  del cfg
  from mammo_tf.training import policy  # pylint: disable=g-import-not-at-top
  paths = {run: os.path.join(run_dir(workdir, run), policy.POLICY_FILE)
           for run in ("spottune", "spottune_hm")}
  if all(os.path.exists(p) for p in paths.values()):
    add("policy_comparison", "policy_comparison.png",
        lambda p: policy.plot_policy_comparison(paths["spottune"], paths["spottune_hm"], p))
    return
  for run, src in paths.items():
    if os.path.exists(src):
      add(f"policy_{run}", f"policy_{run}.png",
          lambda p, src=src, r=run: policy.plot_policy_file(src, p, title=(
              "SpotTune policy, MIP with HM" if r.endswith("_hm") else "SpotTune policy, MIP")))


# -- the study ------------------------------------------------------------------------------------

def row_summary(row: Row, result: Mapping[str, Any]) -> dict[str, Any]:
  """A results.json row: the row's identity, the paper's value and our numbers (no ROC points)."""
  out = dataclasses.asdict(row)
  out["paper"] = {"mean": out.pop("paper_mean"), "std": out.pop("paper_std")}
  for k in ("seeds", "aucs", "mean", "std", "std_ddof", "std_sample", "ci", "n_images",
            "n_patients", "n_positive", "n_negative"):
    out[k] = result[k]
  out["note"] = result.get("note", "")
  return out


def load_data_summary(data_dir: str) -> dict[str, Any] | None:
  path = os.path.join(data_dir, "summary.json")
  if not os.path.exists(path):
    return None
  try:
    return read_json(path)
  except (OSError, ValueError) as e:
    logging.warning("cannot read %s: %s", path, e)
    return None


def run_study(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str, *,
              trainers: Trainers | None = None, split: str = "test",
              bootstrap_resamples: int = 1000) -> dict[str, Any]:
  """Runs or resumes the whole study; writes results.json, report.md and report.html.

  Returns the results dict (also in W/results.json) with ``trained_now`` and ``evaluated_now``:
  the trainings and rows computed by this call (both empty when a finished study is rerun).
  """
  from mammo_tf.evaluation import report  # pylint: disable=g-import-not-at-top
  check_splits(data_dir, split)
  os.makedirs(workdir, exist_ok=True)
  check_study_config(cfg, workdir, data_dir)
  logging.info("study in %s: preset %s, seed %d, data %s", workdir, cfg.name, cfg.seed, data_dir)
  trained = ensure_trainings(cfg, data_dir, workdir, trainers or default_trainers())
  row_results, evaluated = evaluate_rows(cfg, data_dir, workdir, split=split,
                                         bootstrap_resamples=bootstrap_resamples)
  figures = make_figures(cfg, data_dir, workdir, row_results, refresh_roc=evaluated)
  results = {
      "preset": cfg.name,
      "seed": cfg.seed,
      "split": split,
      "eval_seeds": [int(s) for s in cfg.data.eval_seeds],
      "std": "population standard deviation over eval seeds (np.std, ddof=0); "
             "std_sample uses ddof=1",
      "ci": f"patient-level percentile bootstrap ({bootstrap_resamples} resamples) of the "
            "seed-averaged AUC",
      "commit": git_commit(),
      "rows": [row_summary(r, row_results[r.key]) for r in ROWS],
      "trainings": training_summary(workdir),
      "figures": figures,
      "trained_now": trained,
      "evaluated_now": evaluated,
  }
  results = json_safe(results)   # the returned dict is what results.json holds
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  report.write_report(workdir, results, load_data_summary(data_dir))
  logging.info("study complete: %s", os.path.join(workdir, "report.html"))
  return results
