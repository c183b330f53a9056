"""The numbers-driven "what the demo shows" text and the report's shift section."""

import json
import os

import numpy as np
import pytest

from mammo_tf.evaluation import evaluate
from mammo_tf.evaluation import findings
from mammo_tf.evaluation import report
from mammo_tf.evaluation import study_figures


def _results():
  """A results.json with all seven rows, from real `evaluate.summarize` outputs."""
  from mammo_tf.evaluation import study
  rng = np.random.default_rng(0)
  rows = []
  for row in study.ROWS:
    per_seed = {}
    for s in (0, 1, 2):
      labels = np.tile([0, 1], 20)
      per_seed[s] = evaluate.Predictions(
          scores=rng.normal(size=40) + labels, labels=labels, label_class=labels * 3,
          image_id=np.array([f"img{i:03d}" for i in range(40)]),
          patient=np.array([f"pat{i // 2:03d}" for i in range(40)]))
    rows.append(study.row_summary(row, evaluate.summarize(per_seed, bootstrap_resamples=100)))
  return {"preset": "tiny", "seed": 0, "split": "test", "eval_seeds": [0, 1, 2],
          "std": "population std", "ci": "patient bootstrap", "commit": "abc1234", "rows": rows,
          "trainings": {}, "figures": {}}


def _row(key, mean, low, high, paper):
  return {"key": key, "mean": mean, "ci": {"low": low, "high": high},
          "paper": {"mean": paper, "std": 0.001}}


def _table2(mip=(0.70, 0.62, 0.77), hm=(0.86, 0.80, 0.91)):
  return {"rows": [_row("ffdm_scratch", 0.88, 0.83, 0.93, 0.909),
                   _row("mip_test_only", *mip, 0.751),
                   _row("hm_test_only", *hm, 0.847),
                   _row("mip_finetune", 0.72, 0.64, 0.79, 0.759)]}


def _shift(test_only, hm):
  n = len(test_only)
  return {"levels": list(range(n)), "factor": [1.0, 1.5, 2.25, 3.4, 5.0][:n],
          "distance": [0.02, 0.15, 0.3, 0.45, 0.6][:n], "test_only": test_only, "hm": hm,
          "test_only_std": [0.01] * n, "hm_std": [0.02] * n, "preset": "demo",
          "eval_seeds": [0, 1, 2], "family": "gamma response", "distance_measure": "K",
          "auc": "patch AUC"}


def test_table2_sentences_call_a_difference_only_when_the_intervals_are_apart():
  text = " ".join(findings.table2_sentences(_table2()))
  assert "0.880 (95% CI 0.830–0.930) on FFDM and 0.700 (95% CI 0.620–0.770) on MIP" in text
  assert "MIP against FFDM: -0.180 (lower, with the patient-level intervals apart); the paper: " \
         "-0.158" in text
  assert "against plain MIP, test only: +0.160 (higher, with the patient-level intervals " \
         "apart); the paper: +0.096" in text
  assert "Fine-tuning on MIP against testing only: +0.020 (the intervals overlap" in text
  close = " ".join(findings.table2_sentences(_table2(mip=(0.86, 0.80, 0.92))))
  assert "MIP against FFDM: -0.020 (the intervals overlap, so this cohort cannot tell" in close
  undefined = _table2()
  undefined["rows"][1]["mean"] = None
  assert findings.table2_sentences(undefined) == [
      "Table 2 has undefined AUCs (see its notes), so it supports no comparison."]


@pytest.mark.parametrize("test_only,hm,want", [
    ([0.85, 0.83, 0.79, 0.74, 0.70], [0.85, 0.86, 0.84, 0.83, 0.82],
     "This is the paper's mechanism"),
    ([0.85, 0.86, 0.84, 0.83, 0.82], [0.85, 0.85, 0.84, 0.85, 0.84], "robust to this shift"),
    ([0.85, 0.80, 0.75, 0.70, 0.65], [0.85, 0.84, 0.80, 0.75, 0.70],
     "histogram matching does not hold it"),
])
def test_shift_sentences_follow_the_numbers(test_only, hm, want):
  text = " ".join(findings.shift_sentences(_shift(test_only, hm)))
  assert want in text
  assert f"from {test_only[0]:.3f} to {test_only[-1]:.3f}" in text
  assert f"{test_only[-1] - test_only[0]:+.3f}" in text
  v = findings.shift_verdict(_shift(test_only, hm))
  assert v["test_only_drop"] == pytest.approx(test_only[0] - test_only[-1])
  assert v["hm_max_deviation"] == pytest.approx(max(abs(h - hm[0]) for h in hm))


@pytest.mark.parametrize("after,want", [
    (9.0, "(99.4% removed). The shift is one monotone map for all images"),
    (301.0, "(80.9% removed). What is left is no single map shared by all images"),
])
def test_shift_sentences_report_the_image_residual_when_the_json_has_it(after, want):
  shift = dict(_shift([0.85, 0.80, 0.75, 0.70, 0.65], [0.85, 0.84, 0.80, 0.75, 0.70]),
               residual_test_only=[0.0, 400.0, 800.0, 1200.0, 1575.0],
               residual_hm=[5.0, 6.0, 7.0, 8.0, after])
  text = " ".join(findings.shift_sentences(shift))
  assert "differ from their level-0 renderings by 1575 grey levels on average, " \
         f"{after:.0f} after histogram matching {want}" in text
  header, rows = findings.shift_table(shift)
  assert header[-1] == "Image residual, as read -> with HM"
  assert rows[0][-1] == "0 -> 5" and rows[-1][-1] == f"1575 -> {after:.0f}"
  plain = " ".join(findings.shift_sentences(_shift([0.85] * 5, [0.85] * 5)))
  assert "grey levels" not in plain and len(findings.shift_table(_shift([0.8], [0.8]))[0]) == 5


def test_shift_sentences_with_an_undefined_level():
  text = findings.shift_sentences(_shift([0.8, None, 0.7, 0.6], [0.8, None, 0.8, 0.8]))
  assert "undefined AUCs" in text[0]


def test_report_gains_the_shift_section_when_the_workdir_holds_shift_json(tmp_path):
  results = _results()
  shift = _shift([0.85, 0.83, 0.79, 0.74, 0.70], [0.85, 0.86, 0.84, 0.83, 0.82])
  md_path, _ = report.write_report(str(tmp_path), results, None)
  assert "Controlled domain shift" not in open(md_path).read()
  with open(tmp_path / "shift.json", "w") as f:
    json.dump(shift, f)
  os.makedirs(tmp_path / "figures")
  study_figures.shift_figure(shift, str(tmp_path / "figures" / "shift.png"))
  md_path, html_path = report.write_report(str(tmp_path), results, None)
  md, page = open(md_path).read(), open(html_path).read()
  for text in (md, page):
    assert "What the demo shows" in text and "Controlled domain shift" in text
    assert "This is the paper&#x27;s mechanism" in text or "This is the paper's mechanism" in text
    assert "figures/shift.png" in text
  assert "| 4 | 5 | 0.600 | 0.700 ± 0.010 | 0.820 ± 0.020 |" in md
