"""The shift study's optional arm: adapting the FFDM model to each level with some target data.

At each level j the training patients are rendered through the level's response too, and the
base model is adapted on a share of them (``fractions``, e.g. 25/50/100 %: nested, stratified by
class, fixed by the seed) with the level's validation patients for model selection:

- ``finetune``: FC-only fine-tuning (`mammo_tf.training.jobs.finetune`);
- ``spottune``: SpotTune (`mammo_tf.training.spottune_train.train_spottune`).

Both are scored on the level's test patients, the same images as the test-only and HM columns.
This measures the paper's conclusion as a surface: which method wins depends on the shift (the
level) and on how much target-domain data there is (the fraction).

Work directory (below the shift study's, each step resumable)::

  W/adapt/<j>/cohort/            the training patients rendered at level j
  W/adapt/<j>/f<pct>/manifest.csv, data/
                                 pct % of them (train), the level's validation (val) and test
                                 patients (test)
  W/adapt/<j>/f<pct>/<method>/   the training run
  W/eval/level<j>_<method>_f<pct>.json
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.evaluation import run_records
from mammo_tf.io import files
from mammo_tf.io import workdir_names as names

DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)
METHODS = ("finetune", "spottune")
METHOD_LABELS = {"finetune": "FC-only fine-tuning", "spottune": "SpotTune"}
CACHE_VERSION = 1
BOOTSTRAP = 200   # patient-bootstrap resamples of each interval, as for the other columns

# trainer(cfg, data_dir, base_model_path, run_workdir): trains (or resumes) one adaptation.
Trainer = Callable[[config_lib.ExperimentConfig, str, str, str], Any]


def check_fractions(fractions: Sequence[float]) -> list[float]:
  """Increasing shares in (0, 1]; raises ValueError otherwise."""
  out = [float(f) for f in fractions]
  if not out or any(not 0.0 < f <= 1.0 for f in out) or any(b <= a for a, b in zip(out, out[1:])):
    raise ValueError(f"target-data fractions must increase within (0, 1], got {out}")
  return out


def fraction_tag(fraction: float) -> str:
  """``0.25 -> "f25"`` (percent, one decimal place when needed)."""
  pct = 100.0 * float(fraction)
  return f"f{pct:g}".replace(".", "p")


def training_subset(patients: Mapping[str, bool], fraction: float, seed: int) -> list[str]:
  """``ceil(fraction * n)`` patients of each class (``{patient_id: positive}``), sorted ids.

  Within a class the order is SHA-256 of ``"<seed>:<patient_id>"``, so a smaller fraction's
  patients are always part of a larger one's and the choice does not depend on the machine.
  """
  chosen: list[str] = []
  for positive in (False, True):
    members = sorted((p for p, pos in patients.items() if pos == positive),
                     key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    chosen.extend(members[:math.ceil(fraction * len(members))])
  return sorted(chosen)


def training_patients(manifest: str, splits: Mapping[str, str]) -> dict[str, bool]:
  """``{patient_id: positive}`` of the cohort's training patients."""
  from mammo_tf.data import manifest as manifest_lib
  rows, errors = manifest_lib.read_manifest(manifest)
  if errors:
    raise ValueError(f"{manifest}: {len(errors)} invalid row(s)")
  out: dict[str, bool] = {}
  for r in rows:
    if splits.get(r.patient_id) == "train":
      out[r.patient_id] = out.get(r.patient_id, False) or r.positive
  return out


def _csv_rows(manifest: str) -> tuple[list[str], list[dict[str, str]]]:
  with open(manifest, newline="") as f:
    reader = csv.DictReader(f)
    return list(reader.fieldnames or []), list(reader)


def write_subset_manifest(out: str, train_manifest: str, level_manifest: str,
                          chosen: Sequence[str]) -> str:
  """``out/manifest.csv``: the chosen training patients' rows (split ``train``) and the level's
  rows with its c.d.f. patients back as ``val`` and its test patients as ``test``; absolute paths.
  """
  keep = set(chosen)
  rows = []
  columns: list[str] = []
  for path, rename, wanted in (
      (train_manifest, {"train": "train"}, lambda pid: pid in keep),
      (level_manifest, {"train": "val", "test": "test"}, lambda pid: True)):
    columns, found = _csv_rows(path)
    base = os.path.dirname(os.path.abspath(path))
    rows.extend(dict(row, split=rename[row["split"]],
                     path=os.path.normpath(os.path.join(base, row["path"])))
                for row in found if wanted(row["patient_id"]))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  manifest = os.path.join(out, "manifest.csv")
  files.atomic_write(manifest, buf.getvalue().encode("utf-8"))
  return manifest


def evaluate_adapted(cfg: config_lib.ExperimentConfig, run_dir: str, test_data: str,
                     cache_path: str, key: Mapping[str, Any]) -> dict[str, Any]:
  """AUCs of one adapted model on the level's test patients (cached on the model and seeds)."""
  from mammo_tf.evaluation import evaluate as evaluate_lib
  full_key = dict(key, version=CACHE_VERSION, model_stamp=run_records.model_stamp(run_dir),
                  seeds=[int(s) for s in cfg.data.eval_seeds])
  if os.path.exists(cache_path):
    cached = run_records.read_json(cache_path)
    if cached.get("cache_key") == full_key:
      return cached
  predictor = evaluate_lib.load_predictor(os.path.join(run_dir, names.MODEL_FILE))
  result = evaluate_lib.evaluate_seeds(predictor, test_data, "ffdm", cfg, full_key["seeds"],
                                       split="test", bootstrap_resamples=BOOTSTRAP,
                                       bootstrap_seed=cfg.seed)
  out = {"cache_key": full_key,
         **{k: result[k] for k in ("aucs", "mean", "std", "ci", "n_images", "note")}}
  run_records.write_json_atomic(cache_path, out)
  return run_records.read_json(cache_path)


def default_trainers() -> dict[str, Trainer]:
  """In-process FC-only fine-tuning and SpotTune on the level's (FFDM-domain) patches."""
  from mammo_tf.training import jobs
  from mammo_tf.training import spottune_train

  def finetune(cfg, data_dir, base, workdir):
    return jobs.finetune(cfg, data_dir, base, workdir, False, domain="ffdm")

  def spottune(cfg, data_dir, base, workdir):
    return spottune_train.train_spottune(cfg, data_dir, base, workdir, False, domain="ffdm")

  return {"finetune": finetune, "spottune": spottune}


def summarize(per_level: Sequence[Mapping[str, Mapping[str, Mapping[str, Any]]]],
              fractions: Sequence[float]) -> dict[str, Any]:
  """shift.json's adaptation entries: ``<method>`` (AUC mean with all the target data, one per
  level), ``<method>_std``, and ``<method>_by_fraction`` / ``_std`` ([level][fraction])."""
  out: dict[str, Any] = {"target_fractions": [float(f) for f in fractions]}
  tags = [fraction_tag(f) for f in fractions]
  for m in METHODS:
    out[f"{m}_by_fraction"] = [[lv[m][t]["mean"] for t in tags] for lv in per_level]
    out[f"{m}_by_fraction_std"] = [[lv[m][t]["std"] for t in tags] for lv in per_level]
    out[m] = [row[-1] for row in out[f"{m}_by_fraction"]]
    out[f"{m}_std"] = [row[-1] for row in out[f"{m}_by_fraction_std"]]
  return out


def log_level(j: int, fractions: Sequence[float], level: Mapping[str, Any]) -> None:
  for m in METHODS:
    logging.info("level %d %s: %s", j, METHOD_LABELS[m], ", ".join(
        f"{100 * f:g}% {level[m][fraction_tag(f)]['mean']}" for f in fractions))
