"""Table 2 end to end on the tiny preset: trainings, 7 rows x 3 seeds, report, resume.

Data: tests/tfrecord_factory.py (real TFRecords in the converter's layout, synthetic images with
planted lesions) -- the fastest real input; the converter path is exercised by its own tests.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mammo_tf import config
from mammo_tf.evaluation import study
from tests import tfrecord_factory
from tests import trees

OVERRIDES = {"data.samples_per_epoch": 16, "train.epochs": 1, "train.finetune_epochs": 1,
             "train.spottune_epochs": 1}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CountingTrainers:
  """mammo_tf.training's real jobs, counting the calls."""

  def __init__(self):
    self.calls = []
    real = study.default_trainers()
    self._real = real

  def trainers(self):
    def wrap(name, fn):
      def call(*args):
        self.calls.append((name, os.path.basename(args[-1] if name == "base" else args[3])))
        return fn(*args)
      return call
    return study.Trainers(wrap("base", self._real.train_base),
                          wrap("finetune", self._real.finetune),
                          wrap("spottune", self._real.train_spottune))


_mtimes = trees.tree_mtimes


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
  root = tmp_path_factory.mktemp("study")
  cfg = config.get_config("tiny", OVERRIDES)
  data_dir = tfrecord_factory.write_dataset(root, cfg=cfg, num_images_per_class=6)
  workdir = str(root / "W")
  counter = CountingTrainers()
  results = study.run_study(cfg, data_dir, workdir, trainers=counter.trainers(),
                            bootstrap_resamples=200)
  return cfg, data_dir, workdir, results, counter


@pytest.mark.slow
def test_results_hold_seven_rows_with_finite_aucs(finished_study):
  cfg, _, workdir, results, counter = finished_study
  assert [c[1] for c in counter.calls] == list(study.RUNS)
  assert results["trained_now"] == list(study.RUNS)
  assert results["evaluated_now"] == [r.key for r in study.ROWS]
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["rows"] == json.loads(json.dumps(results["rows"]))
  rows = saved["rows"]
  assert [r["key"] for r in rows] == ["ffdm_scratch", "mip_test_only", "mip_finetune",
                                      "mip_spottune", "hm_test_only", "hm_finetune",
                                      "hm_spottune"]
  assert [r["paper"]["mean"] for r in rows] == [0.909, 0.751, 0.759, 0.825, 0.847, 0.837, 0.830]
  for r in rows:
    assert r["seeds"] == [0, 1, 2] and len(r["aucs"]) == 3
    assert all(np.isfinite(a) and 0.0 <= a <= 1.0 for a in r["aucs"])
    assert r["mean"] == pytest.approx(np.mean(r["aucs"]))
    assert r["std"] == pytest.approx(np.std(r["aucs"]))
    assert r["n_images"] == 12 and r["n_positive"] == 6 and r["n_negative"] == 6
    assert r["ci"]["low"] <= r["ci"]["high"]
  # The "test only" rows evaluate the same base model as the FFDM row, on MIP (raw and HM).
  assert {r["run"] for r in rows if r["procedure"] == "Test only"} == {"base"}
  assert [r["hm"] for r in rows] == [False, False, False, False, True, True, True]
  assert set(saved["trainings"]) == set(study.RUNS)
  for r in study.ROWS:
    cached = json.load(open(study.eval_cache_path(workdir, r)))
    assert cached["aucs"] == results["rows"][study.ROWS.index(r)]["aucs"]
    assert set(cached["roc"]) == {"0", "1", "2"}


@pytest.mark.slow
def test_report_links_only_existing_files(finished_study):
  _, _, workdir, results, _ = finished_study
  md = open(os.path.join(workdir, "report.md")).read()
  page = open(os.path.join(workdir, "report.html")).read()
  import re
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  srcs = re.findall(r'<img src="([^"]+)"', page)
  assert sorted(links) == sorted(srcs)
  for link in links:
    assert not os.path.isabs(link) and os.path.isfile(os.path.join(workdir, link))
  names = {os.path.basename(l) for l in links}
  assert {"sample_patches.png", "cumulative_histograms.png", "policy_comparison.png",
          "roc_mip.png", "roc_hm.png"} <= names
  assert {f"roc_{r.key}.png" for r in study.ROWS} <= names
  for r in results["rows"]:
    assert f"{r['mean']:.3f} ± {r['std']:.3f}" in md
    assert f"{r['paper']['mean']:.3f} ± {r['paper']['std']:.3f}" in page


@pytest.mark.slow
def test_interrupted_study_resumes_only_what_is_missing(finished_study):
  cfg, data_dir, workdir, results, _ = finished_study
  # As if the study had stopped during the HM fine-tuning: its work dir has no done.json.
  os.remove(os.path.join(workdir, "finetune_hm", "done.json"))
  os.remove(study.eval_cache_path(workdir, study.ROWS[5]))
  before = _mtimes(workdir)
  counter = CountingTrainers()
  again = study.run_study(cfg, data_dir, workdir, trainers=counter.trainers(),
                          bootstrap_resamples=200)
  assert [c[1] for c in counter.calls] == ["finetune_hm"]
  assert again["trained_now"] == ["finetune_hm"]
  assert again["evaluated_now"] == ["hm_finetune"]
  after = _mtimes(workdir)
  for rel in ("base/best.keras", "spottune_hm/best.keras", "eval/hm_spottune.json",
              "eval/ffdm_scratch.json", "figures/sample_patches.png"):
    assert after[rel] == before[rel], rel
  # A changed config is refused rather than mixed into the same work dir.
  with pytest.raises(ValueError, match="different config"):
    study.run_study(config.get_config("tiny", {**OVERRIDES, "train.epochs": 2}), data_dir,
                    workdir, trainers=counter.trainers())


@pytest.mark.slow
def test_finished_study_rerun_recomputes_nothing_and_savedmodel_agrees(finished_study, tmp_path):
  _, data_dir, workdir, results, _ = finished_study
  before = _mtimes(workdir)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  args = [sys.executable, "-m", "eval.table2", "--data", data_dir, "--workdir", workdir,
          "--preset", "tiny", "--bootstrap", "200"]
  for k, v in OVERRIDES.items():
    args += ["--override", f"{k}={v}"]
  out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  table = [l.split() for l in out.stdout.splitlines() if l.startswith("FFDM ")]
  assert len(table) == 7
  assert table[-1][:5] == ["FFDM", "MIP", "with", "HM", "SpotTune"]
  assert table[-1][-3:] == ["0.830", "±", "0.002"] and "report.html" in out.stdout
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["trained_now"] == [] and saved["evaluated_now"] == []
  after = _mtimes(workdir)
  unchanged = [k for k in before if not k.startswith(("report.", "results.json"))]
  assert unchanged and all(after[k] == before[k] for k in unchanged)
  # The exported SpotTune+HM SavedModel carries its HM layer: raw MIP patches through it give
  # the row computed from best.keras with HM in the pipeline.
  out_json = str(tmp_path / "sm.json")
  ev = subprocess.run([sys.executable, "-m", "eval.evaluate", "--model",
                       os.path.join(workdir, "spottune_hm", "export"), "--data", data_dir,
                       "--domain", "dbt", "--seeds", "0,1,2", "--preset", "tiny",
                       "--bootstrap", "100", "--out", out_json],
                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  sm = json.load(open(out_json))
  row = [r for r in saved["rows"] if r["key"] == "hm_spottune"][0]
  np.testing.assert_allclose(sm["aucs"], row["aucs"], atol=1e-6)
  assert os.path.isfile(str(tmp_path / "sm_roc.png"))


@pytest.mark.slow
def test_same_seed_gives_the_same_table_bit_for_bit(tmp_path):
  """`eval.table2` (op determinism on by default) run twice from scratch: identical rows."""
  cfg = config.get_config("tiny", OVERRIDES)
  data_dir = tfrecord_factory.write_dataset(tmp_path, cfg=cfg, num_images_per_class=4)
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  rows = []
  for run in ("a", "b"):
    cmd = [sys.executable, "-m", "eval.table2", "--data", data_dir, "--workdir",
           str(tmp_path / run), "--preset", "tiny", "--bootstrap", "50"]
    cmd += [f"--override={k}={v}" for k, v in OVERRIDES.items()]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows.append(json.load(open(tmp_path / run / "results.json"))["rows"])
  assert len(rows[0]) == 7
  assert rows[0] == rows[1]


def test_a_study_refuses_other_data_in_the_same_workdir(tmp_path):
  cfg = config.get_config("tiny", OVERRIDES)
  a = tfrecord_factory.write_dataset(tmp_path / "a", cfg=cfg, num_images_per_class=2, seed=0)
  b = tfrecord_factory.write_dataset(tmp_path / "b", cfg=cfg, num_images_per_class=2, seed=1)
  assert study.data_fingerprint(a) == study.data_fingerprint(a)
  assert study.data_fingerprint(a) != study.data_fingerprint(b)
  workdir = str(tmp_path / "W")
  os.makedirs(workdir)
  study.check_study_config(cfg, workdir, a)
  study.check_study_config(cfg, workdir, a)           # same data: resumes
  with pytest.raises(ValueError, match="data_fingerprint"):
    study.check_study_config(cfg, workdir, b)
