"""The shift study's adaptation arm: target-data shares, their manifests, real trainings, resume.

The end-to-end test renders DICOM files at two response levels, converts each share of the
training patients, fine-tunes (FC only) and SpotTunes the real base model on each and scores it,
on the tiny preset.
"""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mammo_tf.evaluation import evaluate as evaluate_lib
from mammo_tf.evaluation import shift
from mammo_tf.evaluation import shift_adapt
from mammo_tf.io import workdir_names as names
from tests import trees

FACTORS = (1.0, 5.0)
FRACTIONS = (0.5, 1.0)
OVERRIDES = {"data.samples_per_epoch": 16}


def _no_training(*args):
  raise AssertionError(f"a finished run trained again: {args[-1]}")


def _manifest_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_training_subset_is_stratified_nested_and_fixed_by_the_seed():
  patients = {f"SYN{i:05d}": i % 4 == 0 for i in range(40)}      # 10 positive, 30 negative
  picks = {f: shift_adapt.training_subset(patients, f, seed=7) for f in (0.25, 0.5, 1.0)}
  for f, chosen in picks.items():
    assert sum(patients[p] for p in chosen) == math.ceil(f * 10)
    assert sum(not patients[p] for p in chosen) == math.ceil(f * 30)
    assert chosen == sorted(chosen)
  assert set(picks[0.25]) < set(picks[0.5]) < set(picks[1.0]) == set(patients)
  assert shift_adapt.training_subset(patients, 0.25, seed=7) == picks[0.25]
  assert shift_adapt.training_subset(patients, 0.25, seed=8) != picks[0.25]


@pytest.mark.parametrize("fractions", [(), (0.5, 0.25), (0.0, 1.0), (0.5, 1.5)])
def test_fractions_must_increase_within_one(fractions):
  with pytest.raises(ValueError, match="increase within"):
    shift_adapt.check_fractions(fractions)


def test_fraction_tags():
  assert [shift_adapt.fraction_tag(f) for f in (0.25, 0.5, 1.0, 0.125)] == [
      "f25", "f50", "f100", "f12p5"]


def test_subset_manifest_keeps_the_chosen_training_patients_and_the_levels_val_and_test(tmp_path):
  header = "patient_id,exam_id,image_id,domain,path,label,split\n"
  (tmp_path / "train").mkdir()
  (tmp_path / "level").mkdir()
  (tmp_path / "train" / "manifest.csv").write_text(
      header + "A,A1,A1c,ffdm,dicom/a.dcm,normal,train\n"
      "B,B1,B1c,ffdm,dicom/b.dcm,malignant,train\n")
  (tmp_path / "level" / "manifest.csv").write_text(
      header + "V,V1,V1c,ffdm,dicom/v.dcm,normal,train\nT,T1,T1c,ffdm,dicom/t.dcm,benign,test\n")
  out = tmp_path / "share"
  path = shift_adapt.write_subset_manifest(str(out), str(tmp_path / "train" / "manifest.csv"),
                                           str(tmp_path / "level" / "manifest.csv"), ["B"])
  rows = _manifest_rows(path)
  assert [(r["patient_id"], r["split"]) for r in rows] == [("B", "train"), ("V", "val"),
                                                           ("T", "test")]
  assert rows[0]["path"] == str(tmp_path / "train" / "dicom" / "b.dcm")
  assert rows[2]["path"] == str(tmp_path / "level" / "dicom" / "t.dcm")


@pytest.fixture(scope="module")
def adapt_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("shift_adapt") / "W")
  cfg = shift.shift_config("tiny", OVERRIDES)
  result = shift.run_shift_study(cfg, workdir, factors=FACTORS, workers=1, fractions=FRACTIONS)
  return cfg, workdir, result


@pytest.mark.slow
def test_adaptation_json_and_the_data_each_share_holds(adapt_run):
  cfg, workdir, result = adapt_run
  assert result["target_fractions"] == list(FRACTIONS)
  for m in shift_adapt.METHODS:
    grid = result[f"{m}_by_fraction"]
    assert len(grid) == len(FACTORS) and all(len(row) == len(FRACTIONS) for row in grid)
    assert result[m] == [row[-1] for row in grid]
    assert all(0.0 <= v <= 1.0 for row in grid for v in row)
  with open(os.path.join(workdir, "data", names.SUMMARY_FILE)) as f:
    base = json.load(f)["domains"]["ffdm"]["splits"]
  half = _manifest_rows(os.path.join(workdir, "adapt", "1", "f50", "manifest.csv"))
  full = _manifest_rows(os.path.join(workdir, "adapt", "1", "f100", "manifest.csv"))
  train = lambda rows: {r["patient_id"] for r in rows if r["split"] == "train"}
  assert train(half) < train(full) and len(train(full)) == base["train"]["patients"]
  for tag in ("f50", "f100"):
    with open(os.path.join(workdir, "adapt", "1", tag, "data", names.SUMMARY_FILE)) as f:
      splits = json.load(f)["domains"]["ffdm"]["splits"]
    assert splits["val"] == base["val"] and splits["test"] == base["test"]
  assert splits["train"] == base["train"]
  # The adapted model trains on FFDM patches at the level's response (recorded in run.json).
  with open(os.path.join(workdir, "adapt", "1", "f50", "spottune", "run.json")) as f:
    run = json.load(f)
  assert run["domain"] == "ffdm" and run["job"] == "spottune"


@pytest.mark.slow
def test_adapted_auc_is_the_models_own_on_the_levels_test_patients(adapt_run):
  cfg, workdir, result = adapt_run
  predictor = evaluate_lib.load_predictor(
      os.path.join(workdir, "adapt", "1", "f50", "finetune", names.MODEL_FILE))
  direct = evaluate_lib.evaluate_seeds(predictor, os.path.join(workdir, "levels", "1", "data"),
                                       "ffdm", cfg, cfg.data.eval_seeds, split="test",
                                       bootstrap_resamples=10)
  assert result["finetune_by_fraction"][1][0] == pytest.approx(direct["mean"], abs=1e-12)
  assert np.isfinite(result["spottune_by_fraction_std"][1][0])


@pytest.mark.slow
def test_adaptation_resumes_without_training_again(adapt_run):
  cfg, workdir, result = adapt_run
  before = trees.tree_mtimes(workdir)
  trainers = {m: _no_training for m in shift_adapt.METHODS}
  again = shift.run_shift_study(cfg, workdir, factors=FACTORS, workers=1, fractions=FRACTIONS,
                                train_base=_no_training, adapt_trainers=trainers)
  assert again == result
  after = trees.tree_mtimes(workdir)
  assert {k for k in after if after[k] != before.get(k)} <= {names.SHIFT_JSON, names.SHIFT_FIGURE}
  # Without --adapt the same work dir gives the plain study (the adaptation stays on disk).
  plain = shift.run_shift_study(cfg, workdir, factors=FACTORS, workers=1,
                                train_base=_no_training)
  assert "finetune" not in plain and plain["hm"] == result["hm"]


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "eval.shift_study", *args], capture_output=True,
                        text=True, timeout=600, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


@pytest.mark.slow
def test_command_line_resumes_the_study_and_prints_every_column(adapt_run):
  _, workdir, result = adapt_run
  proc = _cli("--workdir", workdir, "--preset", "tiny", "--levels", "1,5", "--adapt",
              "--target_fractions", "0.5,1", "--override", "data.samples_per_epoch=16")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("    ")]
  assert len(rows) == len(FACTORS)
  for i, row in enumerate(rows):
    assert row[:3] == [str(i), f"{FACTORS[i]:g}", f"{result['distance'][i]:.3f}"]
    assert row[3:7] == [f"{result[k][i]:.3f}" for k in ("test_only", "hm", "finetune",
                                                        "spottune")]
    assert row[7:] == [f"{result['residual_test_only'][i]:.0f}", "->",
                       f"{result['residual_hm'][i]:.0f}"]


@pytest.mark.parametrize("flags,message", [
    (["--adapt", "--target_fractions", "0.5,0.25"], "target-data fractions must increase"),
    (["--levels", "2,3"], "levels must start at 1"),
])
def test_command_line_refuses_bad_values_with_one_line(tmp_path, flags, message):
  proc = _cli("--workdir", str(tmp_path / "W"), "--preset", "tiny", *flags)
  assert proc.returncode == 2
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "W" / names.SHIFT_JSON)
