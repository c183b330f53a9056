"""Evaluation of Table 2's rows, cached per row under W/eval/<row>.json.

A cached row is reused while its key holds: the model's stamp (hash of its done.json and
best.keras), the seeds, the split, the domain, HM and the number of bootstrap resamples.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.evaluation import evaluate as evaluate_lib
from mammo_tf.evaluation import run_records
from mammo_tf.evaluation.rows import ROWS
from mammo_tf.evaluation.rows import Row
from mammo_tf.io import workdir_names as names

CACHE_VERSION = 1


def fmt_auc(mean: Any, std: Any) -> str:
  if mean is None or std is None or not np.isfinite(mean):
    return "n/a"
  return f"{mean:.4f} ± {std:.4f}"


def eval_cache_path(workdir: str, row: Row) -> str:
  return os.path.join(workdir, names.EVAL_DIR, f"{row.key}.json")


def cache_key(row: Row, stamp: str, seeds: Sequence[int], split: str,
              bootstrap_resamples: int) -> dict[str, Any]:
  return {"version": CACHE_VERSION, "row": row.key, "model_stamp": stamp,
          "seeds": [int(s) for s in seeds], "split": split, "domain": row.domain,
          "hm": row.hm, "bootstrap_resamples": int(bootstrap_resamples)}


def cached_row(workdir: str, row: Row, key: Mapping[str, Any]) -> dict[str, Any] | None:
  """The cached evaluation of `row` if its key matches `key`, else None."""
  path = eval_cache_path(workdir, row)
  if not os.path.exists(path):
    return None
  try:
    cached = run_records.read_json(path)
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
    directory = run_records.run_dir(workdir, row.run)
    key = cache_key(row, run_records.model_stamp(directory), seeds, split, bootstrap_resamples)
    cached = cached_row(workdir, row, key)
    if cached is not None:
      logging.info("row %d/%d %-14s cached: AUC %s", i + 1, len(rows), row.key,
                   fmt_auc(cached["mean"], cached["std"]))
      results[row.key] = cached
      continue
    logging.info("row %d/%d %-14s evaluating %s on %s/%s%s, seeds %s", i + 1, len(rows),
                 row.key, row.run, row.domain, split, " +HM" if row.hm else "", list(seeds))
    if row.run not in predictors:
      predictors[row.run] = evaluate_lib.load_predictor(os.path.join(directory, names.MODEL_FILE))
    if row.hm and hm_lut is None:
      from mammo_tf.data import pipeline
      hm_lut = pipeline.hm_lut_for(data_dir, "dbt", "ffdm")
    result = evaluate_lib.evaluate_seeds(
        predictors[row.run], data_dir, row.domain, cfg, seeds, split=split,
        hm_lut=hm_lut if row.hm else None, bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=cfg.seed, log=logging.info)
    result["cache_key"] = key
    run_records.write_json_atomic(eval_cache_path(workdir, row), result)
    logging.info("row %d/%d %-14s AUC %s %s", i + 1, len(rows), row.key,
                 fmt_auc(result["mean"], result["std"]), result.get("note", ""))
    results[row.key] = result
    evaluated.append(row.key)
  return results, evaluated
