"""Report rendering: Table 2 beside the paper, Table 1 from summary.json, figure links."""

import html.parser
import os
import re

import numpy as np
import pytest

from mammo_tf.evaluation import evaluate
from mammo_tf.evaluation import report
from mammo_tf.evaluation import study


def _predictions(seed, n=40):
  rng = np.random.default_rng(seed)
  labels = np.tile([0, 1], n // 2)
  return evaluate.Predictions(
      scores=rng.normal(size=n) + labels, labels=labels, label_class=labels * 3,
      image_id=np.array([f"img{i:03d}" for i in range(n)]),
      patient=np.array([f"pat{i // 2:03d}" for i in range(n)]))


def _results(rows=study.ROWS):
  per_row = {}
  for k, row in enumerate(rows):
    per_row[row.key] = evaluate.summarize({s: _predictions(10 * k + s) for s in (0, 1, 2)},
                                          bootstrap_resamples=200)
  return {
      "preset": "tiny", "seed": 0, "split": "test", "eval_seeds": [0, 1, 2],
      "std": "population std", "ci": "patient bootstrap", "commit": "abc1234",
      "rows": [study.row_summary(r, per_row[r.key]) for r in rows],
      "trainings": {"base": {"best_epoch": 2, "best_val_auc": 0.81}},
      "figures": {}, "trained_now": [], "evaluated_now": [],
  }, per_row


def test_summarize_matches_metrics():
  per_seed = {s: _predictions(s) for s in (0, 1, 2)}
  res = evaluate.summarize(per_seed, bootstrap_resamples=300, bootstrap_seed=4)
  from sklearn.metrics import roc_auc_score
  want = [roc_auc_score(per_seed[s].labels, per_seed[s].scores) for s in (0, 1, 2)]
  np.testing.assert_allclose(res["aucs"], want)
  assert res["mean"] == pytest.approx(np.mean(want))
  assert res["std"] == pytest.approx(np.std(want))
  assert res["std_sample"] == pytest.approx(np.std(want, ddof=1))
  assert res["n_images"] == 40 and res["n_patients"] == 20
  assert res["n_positive"] == 20 and res["n_negative"] == 20
  assert res["ci"]["low"] < res["mean"] < res["ci"]["high"]
  assert set(res["roc"]) == {"0", "1", "2"}
  assert res["roc"]["0"]["fpr"][0] == 0.0 and res["roc"]["0"]["tpr"][-1] == 1.0
  # Seeds must score the same images.
  other = _predictions(1)
  other.image_id = np.array([f"x{i}" for i in range(40)])
  with pytest.raises(ValueError, match="different set of images"):
    evaluate.summarize({0: per_seed[0], 1: other})


def test_predict_batches_sorts_by_image_and_decodes_ids():
  batches = [{"patch": np.full((2, 4, 4, 1), v, np.float32), "label": np.array([1.0, 0.0]),
              "label_class": np.array([3, 0]), "image_id": np.array([b"b", b"a"]),
              "patient": np.array([b"p2", b"p1"])} for v in (1.0, 2.0)]
  batches[1]["image_id"] = np.array([b"d", b"c"])
  preds = evaluate.predict_batches(lambda x: x.reshape(len(x), -1).mean(axis=1) / 10, batches)
  assert preds.image_id.tolist() == ["a", "b", "c", "d"]
  np.testing.assert_allclose(preds.scores, [0.1, 0.1, 0.2, 0.2])
  assert preds.labels.tolist() == [0, 1, 0, 1]
  assert preds.patient.tolist() == ["p1", "p2", "p1", "p2"]


class _Links(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.srcs = []
    self.cells = []

  def handle_starttag(self, tag, attrs):
    if tag == "img":
      self.srcs.append(dict(attrs)["src"])

  def handle_data(self, data):
    self.cells.append(data)


def test_report_tables_and_only_existing_figures(tmp_path):
  results, per_row = _results()
  os.makedirs(tmp_path / "figures")
  evaluate.plot_roc_curves([("Test only", per_row["mip_test_only"])],
                           str(tmp_path / "figures" / "roc_mip_test_only.png"))
  (tmp_path / "figures" / "sample_patches.png").write_bytes(b"\x89PNG")
  results["figures"] = {"roc_mip_test_only": "figures/roc_mip_test_only.png",
                        "sample_patches": "figures/sample_patches.png",
                        "roc_ffdm_scratch": "figures/roc_ffdm_scratch.png",     # missing
                        "policy_spottune": "figures/policy_spottune.png"}       # missing
  summary = {"schema_version": 1, "manifest_rows": 30, "num_errors": 1,
             "total": {"patients": 10, "exams": 12, "images": 29, "positive": 9, "negative": 20,
                       "classes": {"normal": 15, "benign": 5, "high_risk": 3, "malignant": 6}},
             "domains": {"ffdm": {"patients": 10, "exams": 10, "images": 20, "positive": 6,
                                  "negative": 14,
                                  "classes": {"normal": 10, "benign": 4, "high_risk": 2,
                                              "malignant": 4},
                                  "splits": {"test": {"patients": 2, "exams": 2, "images": 4,
                                                      "positive": 1, "negative": 3,
                                                      "classes": {"normal": 3, "benign": 0,
                                                                  "high_risk": 0,
                                                                  "malignant": 1}}}}},
             "cdf_images": {"ffdm": 16, "dbt": 8}}
  md_path, html_path = report.write_report(str(tmp_path), results, summary)
  md = open(md_path).read()
  page = open(html_path).read()

  # Table 2: every row with our mean ± std and the paper's value, in the paper's order.
  table_lines = [l for l in md.splitlines() if l.startswith("| FFDM |") and "±" in l]
  assert len(table_lines) == 7
  paper = ["0.909 ± 0.001", "0.751 ± 0.001", "0.759 ± 0.003", "0.825 ± 0.002",
           "0.847 ± 0.001", "0.837 ± 0.001", "0.830 ± 0.002"]
  for line, row, want in zip(table_lines, results["rows"], paper):
    assert line.rstrip(" |").endswith(want)
    assert f"{row['mean']:.3f} ± {row['std']:.3f}" in line
    assert want in page and f"{row['mean']:.3f} ± {row['std']:.3f}" in page
  assert "| FFDM | MIP with HM | SpotTune |" in md

  # Table 1 from summary.json.
  assert "| FFDM | 10 | 10 | 20 | 6 | 14 | 10 | 4 | 2 | 4 |" in md
  assert "|   FFDM test | 2 | 2 | 4 | 1 | 3 | 3 | 0 | 0 | 1 |" in md
  assert "| All images | 10 | 12 | 29 | 9 | 20 | 15 | 5 | 3 | 6 |" in md
  assert "num errors 1" in md and "16 ffdm images" in md

  # Figures: links only to files that exist, identical in both renderings.
  md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  parser = _Links()
  parser.feed(page)
  assert sorted(md_links) == sorted(parser.srcs) == ["figures/roc_mip_test_only.png",
                                                     "figures/sample_patches.png"]
  for link in md_links:
    assert os.path.isfile(tmp_path / link)
  text = report.format_table(results)
  assert len(text.splitlines()) == 9 and "0.847 ± 0.001" in text


def test_report_without_summary_or_figures(tmp_path):
  results, _ = _results()
  md_path, html_path = report.write_report(str(tmp_path), results, None)
  md = open(md_path).read()
  assert "No summary.json" in md and "![" not in md
  assert "<img" not in open(html_path).read()


def test_generic_summary_layout():
  blocks = report.summary_tables({"note": "x", "counts": {"a": {"n": 1, "m": 2},
                                                          "b": {"n": 3}}})
  tables = [b for b in blocks if isinstance(b, report.Table)]
  assert tables[0].rows == [("note", "x")]
  assert tables[1].header == ["", "n", "m"]
  assert tables[1].rows == [["a", "1", "2"], ["b", "3", ""]]


def test_one_class_test_set_is_reported_not_fatal(tmp_path):
  negatives = {s: _predictions(s) for s in (0, 1, 2)}
  for p in negatives.values():
    p.labels = np.zeros_like(p.labels)
  res = evaluate.summarize(negatives, bootstrap_resamples=50)
  assert np.isnan(res["mean"]) and all(np.isnan(a) for a in res["aucs"])
  assert res["roc"] == {} and "0 positive and 40 negative" in res["note"]
  results, _ = _results()
  row = study.row_summary(study.ROWS[1], res)
  results["rows"][1] = study.json_safe(row)
  study.write_json_atomic(str(tmp_path / "r.json"), results)
  loaded = study.read_json(str(tmp_path / "r.json"))
  assert loaded["rows"][1]["mean"] is None and loaded["rows"][1]["aucs"] == [None] * 3
  md_path, _ = report.write_report(str(tmp_path), loaded, None)
  md = open(md_path).read()
  assert "| FFDM | MIP | Test only | n/a | n/a | n/a, n/a, n/a |" in md
  assert "AUC undefined: 0 positive and 40 negative images" in md
