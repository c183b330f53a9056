"""VinDr-Mammo and RSNA builders on rebuilt layouts: exact CSV headers, BI-RADS strings, float
boxes, several findings on one image, positives without a box, files listed but missing."""

import os

import pytest

from tests import dicom_factory
from tests.data.datasets import helpers

BREAST = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
          "breast_birads", "breast_density", "split"]
FINDING = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
           "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin",
           "ymin", "xmax", "ymax", "split"]
RSNA = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy",
        "invasive", "BIRADS", "implant", "density", "machine_id", "difficult_negative_case"]


@pytest.fixture(scope="module")
def vindr(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("vindr") / "vindr-mammo")
  images = {  # image_id: (study, side, view, breast BI-RADS, split, on disk)
      "i1": ("s1", "L", "CC", "BI-RADS 4", "training", True),
      "i2": ("s1", "L", "MLO", "BI-RADS 1", "training", True),
      "i3": ("s2", "R", "CC", "BI-RADS 5", "training", True),
      "i4": ("s3", "R", "MLO", "BI-RADS 2", "test", True),
      "i5": ("s4", "L", "CC", "BI-RADS 1", "training", False)}
  breast, findings = [], []
  for iid, (study, side, view, birads, split, on_disk) in images.items():
    if on_disk:
      dicom_factory.write_ffdm(os.path.join(root, "images", study, f"{iid}.dicom"),
                               helpers.breast(side, seed=len(findings)), laterality=side)
    common = [study, "ser", iid, side, view, 64, 48, birads, "DENSITY C"]
    breast.append(common + [split])
    if iid == "i1":   # a BI-RADS 4 mass and a larger BI-RADS 3 asymmetry
      findings.append(common + ["['Mass']", "BI-RADS 4", 5.5, 10.25, 15.5, 20.25, split])
      findings.append(common + ["['Asymmetry']", "BI-RADS 3", 2, 30, 22, 50, split])
    elif iid == "i4":
      findings.append(common + ["['Mass']", "BI-RADS 2", 30, 20, 36, 28, split])
    else:
      findings.append(common + ["['No Finding']", "", "", "", "", "", split])
  helpers.write_csv(os.path.join(root, "breast-level_annotations.csv"), BREAST, breast)
  helpers.write_csv(os.path.join(root, "finding_annotations.csv"), FINDING, findings)
  out = str(tmp_path_factory.mktemp("vindr_out") / "manifest.csv")
  status, log, rows, skipped = helpers.make_manifest("vindr-mammo", root, out)
  return dict(out=out, status=status, log=log, rows=rows, skipped=skipped)


def test_vindr_rows(vindr):
  assert vindr["status"] == 1, vindr["log"]
  rows = vindr["rows"]
  assert sorted(rows) == ["i1", "i2", "i4"]
  assert (rows["i1"]["label"], helpers.box(rows["i1"]), rows["i1"]["view"]) == (
      "malignant", (5.5, 10.25, 10.0, 10.0), "CC")
  assert (rows["i2"]["label"], helpers.box(rows["i2"])) == ("normal", None)
  assert (rows["i4"]["label"], rows["i4"]["split"], helpers.box(rows["i4"])) == (
      "benign", "test", (30.0, 20.0, 6.0, 8.0))
  assert {rows["i1"]["split"], rows["i2"]["split"]} == {"train"}
  assert sorted(r["reason"].split(" (")[0] for r in vindr["skipped"]) == [
      "image listed but not found on disk", "malignant image without a finding box"]
  assert "BI-RADS proxy" in vindr["log"]
  assert "extra findings set aside (one row per image, most severe kept): 1" in vindr["log"]


def test_vindr_converts(vindr, tmp_path):
  status, log, summary = helpers.convert(vindr["out"], str(tmp_path / "tfr"))
  assert status == 0, log
  assert (summary["total"]["images"], summary["total"]["positive"]) == (3, 1)


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("rsna"))
  table = [  # patient, image, side, view, cancer, biopsy, on disk
      ("10", "100", "L", "CC", 1, 1, True), ("10", "101", "L", "MLO", 0, 1, True),
      ("11", "110", "R", "CC", 0, 0, True), ("11", "111", "R", "MLO", 0, 0, False),
      ("11", "110", "R", "CC", 0, 0, True)]   # listed twice by the dataset
  rows = []
  for pid, iid, side, view, cancer, biopsy, on_disk in table:
    if on_disk:
      dicom_factory.write_ffdm(os.path.join(root, "train_images", pid, f"{iid}.dcm"),
                               helpers.breast(side, seed=int(iid)), laterality=side)
    rows.append([2, pid, iid, side, view, 61.0, cancer, biopsy, cancer, "", 0, "B", 49, False])
  helpers.write_csv(os.path.join(root, "train.csv"), RSNA, rows)
  return root


def test_rsna_labels_and_unboxed_positives(rsna, tmp_path):
  status, log, rows, skipped = helpers.make_manifest("rsna", rsna, str(tmp_path / "m.csv"))
  assert status == 1, log
  assert {k: (r["label"], r["laterality"], r["view"]) for k, r in rows.items()} == {
      "101": ("benign", "L", "MLO"), "110": ("normal", "R", "CC")}
  assert [(r["row"], r["reason"].split(" (")[0]) for r in skipped] == [
      ("train.csv:5", "image listed but not found on disk"),
      ("train.csv:2", "malignant image without a finding box")]
  assert "positive images without a finding box: 1" in log
  assert "extra findings set aside (one row per image, most severe kept): 1" in log


def test_rsna_kept_unboxed_positive_converts_with_a_warning(rsna, tmp_path):
  out = str(tmp_path / "m.csv")
  status, log, rows, _ = helpers.make_manifest("rsna", rsna, out, "--keep_unboxed_positives")
  assert status == 1 and rows["100"]["label"] == "malignant", log
  status, log, summary = helpers.convert(out, str(tmp_path / "tfr"))
  assert status == 0, log
  assert "1 positive row(s) have no finding box" in log
  assert summary["total"]["classes"] == {"normal": 1, "benign": 1, "high_risk": 0,
                                         "malignant": 1}
