"""The controlled domain-shift study on the tiny preset: levels, shift.json, figure and resume.

Real pieces throughout: the synthetic renderer writes DICOM files at each response level, the
converter writes TFRecords and average c.d.f.s, the base model is trained for real and scored
through the evaluation pipeline.
"""

import json
import os
import shutil

import numpy as np
import pytest

from mammo_tf.data import cdf
from mammo_tf.data import schema
from mammo_tf.evaluation import evaluate as evaluate_lib
from mammo_tf.evaluation import shift
from mammo_tf.evaluation import study_figures
from mammo_tf.io import workdir_names as names
from tests import trees

FACTORS = (1.0, 1.5, 2.25, 3.4)
OVERRIDES = {"data.samples_per_epoch": 16}


_files = trees.tree_mtimes


def _no_training(*args):
  raise AssertionError(f"a finished shift study trained again: {args[-1]}")


@pytest.fixture(scope="module")
def shift_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("shift") / "W")
  cfg = shift.shift_config("tiny", OVERRIDES)
  result = shift.run_shift_study(cfg, workdir, factors=FACTORS, workers=1)
  return cfg, workdir, result


@pytest.mark.slow
def test_shift_json_has_one_entry_per_level_at_growing_distance(shift_run):
  cfg, workdir, result = shift_run
  with open(os.path.join(workdir, names.SHIFT_JSON)) as f:
    assert json.load(f) == result
  assert result["levels"] == [0, 1, 2, 3] and result["factor"] == list(FACTORS)
  for key in ("distance", "test_only", "hm", "test_only_std", "hm_std", "n_images"):
    assert len(result[key]) == len(FACTORS), key
  d = result["distance"]
  assert all(b > a for a, b in zip(d, d[1:])), d
  for method in ("test_only", "hm"):
    for mean, aucs in zip(result[method], result[f"{method}_aucs"]):
      assert len(aucs) == 3 and 0.0 <= mean <= 1.0
      assert mean == pytest.approx(np.mean(aucs), abs=1e-12)
  # Model-free residuals (values checked by hand in test_hm_residual.py): level 0 is compared with
  # itself; the shift grows with the level, and HM removes most of it.
  before, after = result["residual_test_only"], result["residual_hm"]
  assert before[0] == 0.0 and all(b > a for a, b in zip(before, before[1:])), before
  assert all(0.0 <= a < b for a, b in zip(after[1:], before[1:])), (before, after)
  # The distance is the Kolmogorov distance of the saved average c.d.f.s (checked by hand).
  train = cdf.load_cdf(schema.cdf_path(os.path.join(workdir, "data"), "ffdm"))
  level3 = cdf.load_cdf(schema.cdf_path(os.path.join(workdir, "levels", "3", "data"), "ffdm"))
  assert d[3] == pytest.approx(float(np.max(np.abs(train - level3))), abs=1e-12)


@pytest.mark.slow
def test_levels_render_the_held_out_test_images_and_build_hm_on_other_patients(shift_run):
  cfg, workdir, result = shift_run
  with open(os.path.join(workdir, "data", names.SUMMARY_FILE)) as f:
    base = json.load(f)["domains"]["ffdm"]["splits"]
  for j in range(len(FACTORS)):
    with open(os.path.join(workdir, "levels", str(j), "data", names.SUMMARY_FILE)) as f:
      level = json.load(f)
    splits = level["domains"]["ffdm"]["splits"]
    # Scored: exactly the training cohort's test patients; c.d.f.: its validation patients.
    assert splits["test"] == base["test"]
    assert splits["train"]["patients"] == base["val"]["patients"] > 0
    assert level["cdf_images"]["ffdm"] == base["val"]["images"]
    assert result["n_images"][j] == base["test"]["images"]
  # Level 0 is the training response: its test-only AUCs are the base model's on its own test
  # split, evaluated here independently of the study.
  predictor = evaluate_lib.load_predictor(os.path.join(workdir, "base", names.MODEL_FILE))
  direct = evaluate_lib.evaluate_seeds(predictor, os.path.join(workdir, "data"), "ffdm", cfg,
                                       cfg.data.eval_seeds, split="test", bootstrap_resamples=10)
  assert result["test_only_aucs"][0] == pytest.approx(direct["aucs"], abs=1e-9)


@pytest.mark.slow
def test_rerun_reuses_everything_and_recomputes_only_what_was_lost(shift_run):
  cfg, workdir, result = shift_run
  before = _files(workdir)
  again = shift.run_shift_study(cfg, workdir, factors=FACTORS, workers=1,
                                train_base=_no_training)
  assert again == result
  after = _files(workdir)
  changed = {k for k in after if after[k] != before.get(k)}
  assert changed <= {names.SHIFT_JSON, names.SHIFT_FIGURE}, sorted(changed)
  # Lose a level's evaluation and a whole rendered level: both come back with the same values.
  os.unlink(os.path.join(workdir, names.EVAL_DIR, "level1.json"))
  shutil.rmtree(os.path.join(workdir, "levels", "3"))
  third = shift.run_shift_study(cfg, workdir, factors=FACTORS, workers=1,
                                train_base=_no_training)
  assert third == result
  with pytest.raises(ValueError, match="other levels"):
    shift.run_shift_study(cfg, workdir, factors=(1.0, 2.0, 3.0, 4.0), workers=1,
                          train_base=_no_training)


@pytest.mark.slow
def test_shift_figure_is_a_png(shift_run):
  from matplotlib import image
  _, workdir, _ = shift_run
  img = image.imread(os.path.join(workdir, names.SHIFT_FIGURE))
  assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300


def test_shift_figure_leaves_out_undefined_aucs(tmp_path):
  from matplotlib import image
  data = {"distance": [0.01, 0.2, 0.5, 0.7], "factor": list(FACTORS), "preset": "tiny",
          "eval_seeds": [0, 1, 2], "test_only": [0.8, None, 0.6, 0.55],
          "test_only_std": [0.01, None, 0.02, 0.0], "hm": [0.8, 0.79, None, 0.78],
          "hm_std": [0.0, 0.01, None, 0.02]}
  path = study_figures.shift_figure(data, str(tmp_path / "s.png"))
  assert image.imread(path).shape[2] in (3, 4)


def test_level_patients_keep_test_and_turn_validation_into_the_cdf_set():
  splits = {"SYN00001": "train", "SYN00002": "val", "SYN00007": "test", "SYN00010": "val"}
  indices, level_splits = shift.level_patients(splits)
  assert indices == [2, 7, 10]
  assert level_splits == {"SYN00002": "train", "SYN00007": "test", "SYN00010": "train"}


@pytest.mark.parametrize("factors", [(1.0,), (2.0, 3.0), (1.0, 2.0, 2.0), (1.0, 0.5)])
def test_levels_must_start_at_the_training_response_and_increase(tmp_path, factors):
  with pytest.raises(ValueError, match="levels must start at 1"):
    shift.run_shift_study(shift.shift_config("tiny"), str(tmp_path), factors=factors)
  assert not os.listdir(tmp_path)


def test_shift_config_is_single_site_ffdm_only_and_overrides_win():
  cfg = shift.shift_config("demo", ["data.split_fractions=(0.5,0.25,0.25)"])
  assert cfg.synthetic.vendors == "single" and cfg.synthetic.dbt_share == 0.0
  assert cfg.synthetic.dbt_only_share == 0.0 and cfg.data.split_fractions == (0.5, 0.25, 0.25)
  assert cfg.synthetic.num_patients == 320 and cfg.train.epochs == 40   # the demo's sizes


@pytest.mark.slow
def test_attach_to_study_adds_the_shift_section_to_its_report(shift_run, tmp_path):
  from tests.evaluation.test_findings import _results
  _, workdir, result = shift_run
  study_dir = tmp_path / "study"
  with pytest.raises(ValueError, match="no finished study"):
    shift.attach_to_study(workdir, str(study_dir))
  os.makedirs(study_dir)
  results = dict(_results(), data_dir=os.path.join(workdir, "data"))   # Table 1 from its summary
  with open(study_dir / names.RESULTS_FILE, "w") as f:
    json.dump(results, f)
  md_path, _ = shift.attach_to_study(workdir, str(study_dir))
  md = open(md_path).read()
  assert "## Controlled domain shift" in md and "](figures/shift.png)" in md
  assert "## Data (Table 1)" in md and "| FFDM |" in md
  for j, d in enumerate(result["distance"]):
    assert f"| {j} | {FACTORS[j]:g} | {d:.3f} |" in md
  with open(study_dir / names.SHIFT_JSON) as f:
    assert json.load(f) == result
