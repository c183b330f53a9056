"""The study of paper §3: five trainings, the seven rows of Table 2, figures and the report.

This module orchestrates; the pieces live beside it: `rows` (Table 2's rows and runs),
`run_records` (JSON files, completion, model stamps, commit, data fingerprint, config check),
`eval_cache` (per-row evaluation, cached), `study_figures` (the figures) and `report`.

Work directory layout (everything is resumable; a rerun reuses what is complete; file names in
`mammo_tf.io.workdir_names`)::

  W/study_config.json          the experiment config of the study (a rerun must match it)
  W/base/ W/finetune/ W/finetune_hm/ W/spottune/ W/spottune_hm/
                               training work dirs; complete when their done.json exists
  W/eval/<row>.json            per-row evaluation (per-seed AUCs, mean, std, CI, ROC points),
                               reused when the model's done.json and the seeds are unchanged
  W/figures/*.png              sample patches (Fig. 1), cumulative histograms (Fig. 2),
                               SpotTune policies (Fig. 3), ROC curves per row and overall
  W/results.json, W/report.md, W/report.html
  W/shift.json, W/figures/shift.png
                               optional: a controlled shift study (``eval.shift_study --study W``)

HM rows histogram-match the MIP test patches with the table ``cdf_dbt -> cdf_ffdm`` (Algorithm 1)
in the evaluation pipeline, as the HM trainings do in theirs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.evaluation import report
from mammo_tf.evaluation import study_figures
from mammo_tf.evaluation import training_runs
from mammo_tf.evaluation.eval_cache import eval_cache_path
from mammo_tf.evaluation.eval_cache import evaluate_rows
from mammo_tf.evaluation.rows import ROWS
from mammo_tf.evaluation.rows import RUNS
from mammo_tf.evaluation.rows import Row
from mammo_tf.evaluation.rows import row_summary
from mammo_tf.evaluation.run_records import check_study_config
from mammo_tf.evaluation.run_records import data_fingerprint
from mammo_tf.evaluation.run_records import git_commit
from mammo_tf.evaluation.run_records import is_done
from mammo_tf.evaluation.run_records import json_safe
from mammo_tf.evaluation.run_records import load_data_summary
from mammo_tf.evaluation.run_records import model_stamp
from mammo_tf.evaluation.run_records import read_json
from mammo_tf.evaluation.run_records import run_dir
from mammo_tf.evaluation.run_records import training_summary
from mammo_tf.evaluation.run_records import write_json_atomic
from mammo_tf.io import workdir_names as names

# The study's public names, including those of the modules it is made of (kept importable
# from here for the entry points and existing callers).
__all__ = [
    "ROWS", "RUNS", "Row", "Trainers", "base_model_path", "check_splits", "check_study_config",
    "data_fingerprint", "default_trainers", "ensure_trainings", "eval_cache_path",
    "evaluate_rows", "git_commit", "is_done", "json_safe", "load_data_summary", "model_stamp",
    "read_json", "row_summary", "run_dir", "run_study", "training_summary", "write_json_atomic",
]


@dataclasses.dataclass(frozen=True)
class Trainers:
  """The three training functions (mammo_tf.training's by default)."""
  train_base: Callable[..., Any]
  finetune: Callable[..., Any]
  train_spottune: Callable[..., Any]


def default_trainers() -> Trainers:
  """mammo_tf.training's jobs: `jobs.train_base`, `jobs.finetune`,
  `spottune_train.train_spottune`."""
  from mammo_tf.training import jobs
  from mammo_tf.training import spottune_train
  return Trainers(jobs.train_base, jobs.finetune, spottune_train.train_spottune)


def check_splits(data_dir: str, split: str = "test") -> None:
  """Every split the study reads holds both classes, else one line naming it (before any work).

  Training and validation of FFDM and DBT, and the evaluation `split` of both domains (Table 2
  evaluates FFDM and MIP). Raises `pipeline.MissingSplitError` (a ValueError: exit status 2).
  """
  from mammo_tf.data import pipeline
  for domain in config_lib.DOMAINS:
    for name in ("train", "val", split):
      pipeline.require_split(data_dir, domain, name, both_classes=True)


def base_model_path(workdir: str) -> str:
  return os.path.join(run_dir(workdir, "base"), names.MODEL_FILE)


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
      raise RuntimeError(f"training {run} returned without writing {names.DONE_FILE} in "
                         f"{directory}")
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


def run_study(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str, *,
              trainers: Trainers | None = None, split: str = "test",
              bootstrap_resamples: int = 1000) -> dict[str, Any]:
  """Runs or resumes the whole study; writes results.json, report.md and report.html.

  Returns the results dict (also in W/results.json) with ``trained_now`` and ``evaluated_now``:
  the trainings and rows computed by this call (both empty when a finished study is rerun).
  """
  check_splits(data_dir, split)
  os.makedirs(workdir, exist_ok=True)
  check_study_config(cfg, workdir, data_dir)
  logging.info("study in %s: preset %s, seed %d, data %s", workdir, cfg.name, cfg.seed, data_dir)
  trained = ensure_trainings(cfg, data_dir, workdir, trainers or default_trainers())
  row_results, evaluated = evaluate_rows(cfg, data_dir, workdir, split=split,
                                         bootstrap_resamples=bootstrap_resamples)
  figures = study_figures.make_figures(cfg, data_dir, workdir, row_results,
                                       refresh_roc=evaluated)
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
      "data_dir": os.path.abspath(data_dir),
      "rows": [row_summary(r, row_results[r.key]) for r in ROWS],
      "trainings": training_summary(workdir),
      "figures": figures,
      "trained_now": trained,
      "evaluated_now": evaluated,
  }
  results = json_safe(results)   # the returned dict is what results.json holds
  write_json_atomic(os.path.join(workdir, names.RESULTS_FILE), results)
  report.write_report(workdir, results, load_data_summary(data_dir))
  logging.info("study complete: %s", os.path.join(workdir, names.REPORT_HTML))
  return results
