"""dicom-folder builder on a PACS-like export: FFDM, a multi-frame tomosynthesis file, a folder
of tomosynthesis slices, a For Processing image; labels joined by SOP, series and accession +
laterality; headers only; no identifier outside the manifest; exit status 2 when nothing is
built."""

import os

import numpy as np
import pydicom
import pytest

from tests import dicom_factory
from tests.data.datasets import helpers

FFDM_SOP, SLICES_SERIES, DBT_ACCESSION = "1.2.826.0.9.1", "1.2.826.0.9.2", "ACC-DBT-1"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pacs") / "export")
  patient = os.path.join(root, dicom_factory.PATIENT_ID)     # folder named after the patient
  dicom_factory.write_ffdm(os.path.join(patient, "study1", "IM0001"),
                           helpers.breast("L", lesions=[(4, 10, 8, 8)]), laterality="L",
                           view="CC", SOPInstanceUID=FFDM_SOP)
  vol = np.stack([helpers.breast("R", seed=k) for k in range(3)])
  dicom_factory.write_dbt(os.path.join(patient, "study2", "IM0002"), vol, laterality="R",
                          view="MLO", accession_number=DBT_ACCESSION)
  dicom_factory.write_dbt_slices(os.path.join(patient, "study2", "slices"), vol,
                                 SeriesInstanceUID=SLICES_SERIES, laterality="L", view="CC")
  dicom_factory.write_ffdm(os.path.join(patient, "study1", "IM0003"), helpers.breast("L"),
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2.1")
  with open(os.path.join(patient, "notes.txt"), "w") as f:
    f.write("not DICOM")
  labels = helpers.write_csv(os.path.join(str(tmp_path_factory.mktemp("lab")), "labels.csv"),
                             ["sop_instance_uid", "series_instance_uid", "accession_number",
                              "laterality", "label", "roi_x", "roi_y", "roi_w", "roi_h"], [
      [FFDM_SOP, "", "", "", "malignant", 4, 10, 8, 8],
      ["", SLICES_SERIES, "", "", "benign", "", "", "", ""],
      ["", "", DBT_ACCESSION, "R", "normal", "", "", "", ""],
      ["", "", "ACC-NOT-THERE", "L", "normal", "", "", "", ""]])
  out = str(tmp_path_factory.mktemp("pacs_out") / "manifest.csv")
  status, log, rows, skipped = helpers.make_manifest("dicom-folder", root, out,
                                                     "--labels", labels)
  return dict(root=root, out=out, status=status, log=log, rows=rows, skipped=skipped)


def test_rows_from_headers_and_label_joins(export):
  assert export["status"] == 1, export["log"]
  rows = {(r["domain"], r["laterality"], r["view"]): r for r in export["rows"].values()}
  assert sorted(rows) == [("dbt", "L", "CC"), ("dbt", "R", "MLO"), ("ffdm", "L", "CC")]
  ffdm = rows[("ffdm", "L", "CC")]
  assert (ffdm["image_id"], ffdm["label"], helpers.box(ffdm)) == (FFDM_SOP, "malignant",
                                                                   (4, 10, 8, 8))
  assert ffdm["patient_id"] == dicom_factory.PATIENT_ID     # the user's own file
  slices = rows[("dbt", "L", "CC")]
  assert (slices["image_id"], slices["label"]) == (SLICES_SERIES, "benign")
  assert slices["path"].endswith("study2/slices")
  volume = rows[("dbt", "R", "MLO")]
  assert volume["label"] == "normal" and volume["path"].endswith("study2/IM0002")
  ds = pydicom.dcmread(os.path.join(export["root"], dicom_factory.PATIENT_ID, "study2",
                                    "IM0002"), stop_before_pixels=True)
  assert volume["exam_id"] == ds.StudyInstanceUID
  assert sorted(r["reason"].split(" (")[0] for r in export["skipped"]) == [
      "For Processing image", "label row matches no image"]


def test_no_identifier_outside_the_manifest(export):
  with open(export["out"][:-4] + ".skipped.csv") as f:
    skipped = f.read()
  for text in (skipped, export["log"]):
    for ident in (dicom_factory.PATIENT_ID, dicom_factory.ACCESSION, dicom_factory.PATIENT_NAME):
      assert ident not in text


def test_converts(export, tmp_path):
  status, log, summary = helpers.convert(export["out"], str(tmp_path / "tfr"))
  assert status == 0, log
  assert (summary["domains"]["ffdm"]["images"], summary["domains"]["dbt"]["images"]) == (1, 2)


def test_nothing_built_exits_2_with_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  status, log, rows, _ = helpers.make_manifest("dicom-folder", str(empty), str(tmp_path / "m.csv"))
  assert status == 2 and not rows
  assert "Traceback" not in log and "nothing built" in log
  status, log, rows, _ = helpers.make_manifest("cbis-ddsm", str(empty), str(tmp_path / "m.csv"))
  assert status == 2 and "Traceback" not in log
  # Only an unusable file: exit 2, and the skipped file says why.
  dicom_factory.write_ffdm(empty / "raw.dcm", helpers.breast("L"),
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2.1")
  status, log, rows, _ = helpers.make_manifest("dicom-folder", str(empty), str(tmp_path / "m.csv"))
  assert status == 2 and not os.path.exists(tmp_path / "m.csv"), log
  with open(tmp_path / "m.skipped.csv") as f:
    assert "For Processing image" in f.read()
