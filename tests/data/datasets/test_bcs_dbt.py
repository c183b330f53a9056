"""BCS-DBT builder on a rebuilt TCIA layout: drifted table names and paths, volumes stored turned
by 180 degrees with boxes in the turned frame, several boxes on one view, Actionable rows."""

import os

import numpy as np
import pytest

from tests import dicom_factory
from tests.data.datasets import helpers

PATHS_HEADER = ["PatientID", "StudyUID", "View", "descriptive_path", "classic_path"]
LABELS_HEADER = ["PatientID", "StudyUID", "View", "Normal", "Actionable", "Benign", "Cancer"]
BOXES_HEADER = ["PatientID", "StudyUID", "View", "Subject", "Slice", "X", "Y", "Width", "Height",
                "Class", "AD", "VolumeSlices"]
TOP = "Breast-Cancer-Screening-DBT"
CANCER_BOX, BENIGN_BOX, RCC_BOX = (4, 10, 8, 8), (6, 40, 6, 6), (32, 20, 6, 6)


def _volume(side, lesions, turned, seed):
  """[3, 64, 48] frames; lesion k in frame k+1 (so only the MIP shows them all)."""
  frames = [helpers.breast(side, seed=seed)]
  for k in range(2):
    frames.append(helpers.breast(side, lesions=lesions[k:k + 1], seed=seed + k + 1))
  vol = np.stack(frames)
  return np.ascontiguousarray(vol[:, ::-1, ::-1]) if turned else vol


def _write(root, patient, study, series_folder, vol):
  path = os.path.join(root, TOP, patient, "01-01-2000-DBT-S01-MAMMO screening", series_folder,
                      "1-1.dcm")
  dicom_factory.write_dbt(path, vol, StudyInstanceUID=study)
  return os.path.relpath(path, root).replace(os.sep, "/")


@pytest.fixture(scope="module")
def bcs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bcs") / "download")
  s1, s2, s3, s4 = "1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"
  # P1 lcc: stored turned (breast on the right), boxes given in the turned (official) frame.
  lcc = _write(root, "DBT-P00001", s1, "19.000000-L CC-101",
               _volume("L", [CANCER_BOX, BENIGN_BOX], turned=True, seed=1))
  # P2 rmlo as acquired; P2 rcc: its listed path has drifted (folder renamed since the table).
  rmlo = _write(root, "DBT-P00002", s2, "20.000000-R MLO-202", _volume("R", [], False, 4))
  _write(root, "DBT-P00002", s2, "21.000000-R CC-999", _volume("R", [RCC_BOX, RCC_BOX], False, 7))
  drifted = f"{TOP}/DBT-P00002/01-01-2000-DBT-S01-MAMMO screening/21.000000-R CC-303/1-1.dcm"
  act = _write(root, "DBT-P00004", s4, "19.000000-L MLO-404", _volume("L", [], False, 10))
  val = _write(root, "DBT-P00003", s3, "19.000000-L CC-505", _volume("L", [], False, 13))
  helpers.write_csv(os.path.join(root, "BCS-DBT-file-paths-train-v2.csv"), PATHS_HEADER, [
      ["DBT-P00001", s1, "lcc", lcc, "nowhere/1-1.dcm"],
      ["DBT-P00002", s2, "rmlo", rmlo, ""],
      ["DBT-P00002", s2, "rcc", drifted, f"{TOP}/DBT-P00002/{s2}/9.9/1-1.dcm"],
      ["DBT-P00004", s4, "lmlo", act, ""],
      ["DBT-P00005", "1.2.3.5", "rcc", f"{TOP}/DBT-P00005/x/y/1-1.dcm", ""]])
  helpers.write_csv(os.path.join(root, "BCS-DBT-labels-train-v2.csv"), LABELS_HEADER, [
      ["DBT-P00001", s1, "lcc", 0, 0, 0, 1], ["DBT-P00002", s2, "rmlo", 1, 0, 0, 0],
      ["DBT-P00002", s2, "rcc", 0, 0, 0, 1], ["DBT-P00004", s4, "lmlo", 0, 1, 0, 0],
      ["DBT-P00005", "1.2.3.5", "rcc", 1, 0, 0, 0]])
  helpers.write_csv(os.path.join(root, "BCS-DBT-boxes-train-v2.csv"), BOXES_HEADER, [
      ["DBT-P00001", s1, "lcc", 1, 1, *BENIGN_BOX, "benign", 0, 3],
      ["DBT-P00001", s1, "lcc", 1, 2, *CANCER_BOX, "cancer", 0, 3],
      ["DBT-P00002", s2, "rcc", 2, 1, *RCC_BOX, "cancer", 0, 3]])
  helpers.write_csv(os.path.join(root, "BCS-DBT-file-paths-validation-v2.csv"), PATHS_HEADER,
                    [["DBT-P00003", s3, "lcc", val, ""]])
  helpers.write_csv(os.path.join(root, "BCS-DBT-labels-validation-v2.csv"), LABELS_HEADER,
                    [["DBT-P00003", s3, "lcc", 1, 0, 0, 0]])
  out = str(tmp_path_factory.mktemp("bcs_out") / "manifest.csv")
  status, log, rows, skipped = helpers.make_manifest("bcs-dbt", root, out)
  return dict(root=root, out=out, status=status, log=log, rows=rows, skipped=skipped,
              ids=(s1, s2, s3))


def test_rows_labels_orientation_and_boxes(bcs):
  s1, s2, s3 = bcs["ids"]
  assert bcs["status"] == 1, bcs["log"]
  rows = bcs["rows"]
  assert sorted(rows) == sorted([f"DBT-P00001|{s1}|lcc", f"DBT-P00002|{s2}|rmlo",
                                 f"DBT-P00002|{s2}|rcc", f"DBT-P00003|{s3}|lcc"])
  lcc = rows[f"DBT-P00001|{s1}|lcc"]
  assert (lcc["label"], lcc["laterality"], lcc["view"], lcc["rotate"], lcc["split"],
          lcc["domain"]) == ("malignant", "L", "CC", "180", "train", "dbt")
  assert helpers.box(lcc) == CANCER_BOX          # cancer outranks the benign box
  rcc = rows[f"DBT-P00002|{s2}|rcc"]
  assert rcc["path"].endswith("21.000000-R CC-999/1-1.dcm")   # found by StudyUID + view
  assert (rcc["rotate"], helpers.box(rcc)) == ("", RCC_BOX)
  assert rows[f"DBT-P00002|{s2}|rmlo"]["label"] == "normal"
  assert rows[f"DBT-P00003|{s3}|lcc"]["split"] == "val"
  reasons = sorted(r["reason"].split(" (")[0] for r in bcs["skipped"])
  assert reasons == ["Actionable", "volume not found"]
  assert all(r["row"].startswith("BCS-DBT-file-paths-train-v2.csv:") for r in bcs["skipped"])
  assert "extra findings set aside (one row per image, most severe kept): 1" in bcs["log"]


def test_actionable_flag_keeps_them_as_benign(bcs, tmp_path):
  out = str(tmp_path / "m.csv")
  status, log, rows, _ = helpers.make_manifest("bcs-dbt", bcs["root"], out, "--keep_actionable")
  assert status == 1, log
  assert [r["label"] for k, r in rows.items() if k.startswith("DBT-P00004")] == ["benign"]


def test_converted_mip_is_brightest_inside_every_box(bcs, tmp_path):
  out = str(tmp_path / "tfr")
  status, log, summary = helpers.convert(bcs["out"], out)
  assert status == 0, log
  assert summary["domains"]["dbt"]["images"] == 4
  assert summary["splits"]["val"]["images"] == 1
  assert summary["total"]["positive"] == 2
  recs = {(r["laterality"], r["view"]): r for r in helpers.records(out, "dbt")
          if r["label"] == "malignant"}
  for key, boxes in ((("L", "CC"), [CANCER_BOX, BENIGN_BOX]), (("R", "CC"), [RCC_BOX])):
    image = recs[key]["image"].astype(float)
    inside = np.zeros(image.shape, bool)
    for x, y, w, h in boxes:           # stored at 1/2: every box lies on its lesion
      inside[y // 2:(y + h) // 2, x // 2:(x + w) // 2] = True
      assert image[y // 2:(y + h) // 2, x // 2:(x + w) // 2].min() >= 3000, key
    assert image[~inside].max() < 2000, key
