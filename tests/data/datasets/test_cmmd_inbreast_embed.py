"""CMMD, INbreast and EMBED builders on rebuilt layouts: CMMD's .xlsx clinical sheet with
laterality and view from the headers, INbreast's semicolon table and OsiriX plist ROIs, EMBED's
clinical/metadata join on patient, exam and side with ymin-first ROI coordinates."""

import os
import plistlib
import zipfile
from xml.sax.saxutils import escape

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests import dicom_factory
from tests.data.datasets import helpers


def _write_xlsx(path, rows):
  """A minimal SpreadsheetML workbook (inline strings), as spreadsheet programs read it."""
  def cell(ref, value):
    if isinstance(value, (int, float)):
      return f'<c r="{ref}"><v>{value}</v></c>'
    return f'<c r="{ref}" t="inlineStr"><is><t>{escape(str(value))}</t></is></c>'
  body = "".join(
      f'<row r="{i}">' + "".join(cell(f"{chr(65 + j)}{i}", v) for j, v in enumerate(r)) + "</row>"
      for i, r in enumerate(rows, start=1))
  ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.'
               'openxmlformats.org/package/2006/content-types"/>')
    z.writestr("xl/workbook.xml", f'<workbook xmlns="{ns}"><sheets><sheet name="Sheet1" '
               'sheetId="1"/></sheets></workbook>')
    z.writestr("xl/worksheets/sheet1.xml",
               f'<worksheet xmlns="{ns}"><sheetData>{body}</sheetData></worksheet>')


def _view_code(meaning):
  item = Dataset()
  item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X", "SCT", meaning
  return Sequence([item])


@pytest.fixture(scope="module")
def cmmd(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cmmd"))
  series = "07-18-2010-NA-NA-79377/1.000000-NA-70244"
  for pid, files in {"D1-0001": [("L", "cranio-caudal"), ("L", "medio-lateral oblique")],
                     "D1-0002": [("R", "cranio-caudal"), ("R", "medio-lateral oblique"),
                                 ("L", "cranio-caudal")]}.items():
    for k, (side, meaning) in enumerate(files, start=1):
      dicom_factory.write_ffdm(os.path.join(root, "CMMD", pid, series, f"1-{k}.dcm"),
                               helpers.breast(side, seed=k), laterality=side, view=None,
                               ViewCodeSequence=_view_code(meaning))
  _write_xlsx(os.path.join(root, "CMMD_clinicaldata_revision.xlsx"), [
      ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"],
      ["D1-0001", "L", 44, 2, "calcification", "Benign", ""],
      ["D1-0002", "R", 58, 2, "mass", "Malignant", "Luminal A"],
      ["D1-0003", "L", 61, 2, "both", "Benign", ""]])
  out = str(tmp_path_factory.mktemp("cmmd_out") / "manifest.csv")
  return (out,) + helpers.make_manifest("cmmd", root, out)


def test_cmmd(cmmd, tmp_path):
  out, status, log, rows, skipped = cmmd
  assert status == 1, log
  assert sorted((r["patient_id"], r["label"], r["laterality"], r["view"]) for r in rows.values()) \
      == [("D1-0001", "benign", "L", "CC"), ("D1-0001", "benign", "L", "MLO")]
  assert sorted(r["reason"].split(" (")[0] for r in skipped) == [
      "malignant image without a finding box", "malignant image without a finding box",
      "no image of this breast found on disk", "no spreadsheet row for this breast"]
  status, log, summary = helpers.convert(out, str(tmp_path / "tfr"))
  assert status == 0 and summary["total"]["images"] == 2, log


INBREAST = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name",
            "ACR", "Bi-Rads"]
MASS = [(6.5, 12.0), (14.0, 10.5), (16.25, 20.0), (8.0, 22.0)]


def test_inbreast(tmp_path):
  root = str(tmp_path / "INbreast Release 1.0")
  files = {"22678622": ("61b13c59bcba149e", "L", "CC", "4c"), "22678646": ("61b13c59bcba149e",
           "L", "MLO", "1"), "20588046": ("024ee3569b2605dc", "R", "CC", "2"),
           "20588072": ("024ee3569b2605dc", "R", "MLO", "5")}
  for name, (patient, side, view, _) in list(files.items())[:3]:
    tag = "ML" if view == "MLO" else view
    dicom_factory.write_ffdm(os.path.join(root, "AllDICOMs", f"{name}_{patient}_MG_{side}_{tag}"
                                          "_ANON.dcm"), helpers.breast(side), laterality=side)
  rois = [{"Name": "Mass", "NumberOfPoints": 4, "Point_px": [f"({x}, {y})" for x, y in MASS]},
          {"Name": "Calcification", "NumberOfPoints": 1, "Point_px": ["(30.0, 40.0)"]}]
  os.makedirs(os.path.join(root, "AllXML"))
  with open(os.path.join(root, "AllXML", "22678622.xml"), "wb") as f:
    plistlib.dump({"Images": [{"ImageIndex": 0, "NumberOfROIs": 2, "ROIs": rois}]}, f)
  helpers.write_csv(os.path.join(root, "INbreast.csv"), INBREAST, [
      ["removed", "", side, view, "201001", name, 2, birads]
      for name, (_, side, view, birads) in files.items()], delimiter=";")
  out = str(tmp_path / "m.csv")
  status, log, rows, skipped = helpers.make_manifest("inbreast", root, out)
  assert status == 1, log
  assert {k: (r["patient_id"], r["label"], r["laterality"], r["view"], helpers.box(r))
          for k, r in rows.items()} == {
      "22678622": ("61b13c59bcba149e", "malignant", "L", "CC", (6.5, 10.5, 9.75, 11.5)),
      "22678646": ("61b13c59bcba149e", "normal", "L", "MLO", None),
      "20588046": ("024ee3569b2605dc", "benign", "R", "CC", None)}
  assert [(r["row"], r["reason"]) for r in skipped] == [
      ("INbreast.csv:5", "image listed but not found on disk")]
  assert "extra findings set aside (one row per image, most severe kept): 1" in log
  status, log, summary = helpers.convert(out, str(tmp_path / "tfr"))
  assert status == 0 and summary["total"]["positive"] == 1, log


CLINICAL = ["empi_anon", "acc_anon", "study_date_anon", "desc", "side", "asses", "numfind",
            "path_severity"]
METADATA = ["empi_anon", "acc_anon", "anon_dicom_path", "FinalImageType", "ImageLateralityFinal",
            "ViewPosition", "spot_mag", "num_roi", "ROI_coords", "match_level"]


def test_embed(tmp_path):
  root = str(tmp_path / "embed")
  meta = []
  for k, (empi, acc, kind, side, view, roi, on_disk) in enumerate([
      ("E1", "A1", "2D", "L", "CC", "[[10, 4, 20, 14], [40, 20, 42, 22]]", True),
      ("E1", "A1", "cview", "L", "CC", "[[10, 4, 20, 14]]", True),
      ("E1", "A1", "2D", "R", "MLO", "", True),
      ("E2", "A2", "2D", "L", "CC", "", True),
      ("E2", "A2", "2D", "R", "CC", "", False),
      ("E3", "A3", "2D", "L", "CC", "", True),
      ("E4", "A4", "2D", "R", "CC", "", True)]):
    rel = f"cohort_1/{empi}/{acc}/1.2.840.{k}.dcm"
    if on_disk:
      dicom_factory.write_ffdm(os.path.join(root, rel), helpers.breast(side, seed=k),
                               laterality=side)
    meta.append([empi, acc, f"/mnt/NAS2/mammo/anon_dicom/{rel}", kind, side, view, 0,
                 roi.count("[") - 1 if roi else 0, roi, "(1, 2)"])
  helpers.write_csv(os.path.join(root, "tables", "EMBED_OpenData_metadata_reduced.csv"),
                    METADATA, meta)
  helpers.write_csv(os.path.join(root, "tables", "EMBED_OpenData_clinical_reduced.csv"),
                    CLINICAL, [["E1", "A1", "2019-01-01", "MG Diag", "L", "S", 1, "0.0"],
                               ["E1", "A1", "2019-01-01", "MG Diag", "R", "N", 2, ""],
                               ["E2", "A2", "2019-02-01", "MG Screen", "B", "B", 1, ""],
                               ["E3", "A3", "2019-03-01", "MG Diag", "L", "S", 1, ""],
                               ["E4", "A4", "2019-04-01", "MG Screen", "", "N", "", ""]])
  out = str(tmp_path / "m.csv")
  status, log, rows, skipped = helpers.make_manifest("embed", root, out)
  assert status == 1, log
  assert {k: (r["patient_id"], r["exam_id"], r["label"], r["laterality"], helpers.box(r))
          for k, r in rows.items()} == {
      "1.2.840.0": ("E1", "A1", "malignant", "L", (4.0, 10.0, 10.0, 10.0)),
      "1.2.840.2": ("E1", "A1", "normal", "R", None),
      "1.2.840.3": ("E2", "A2", "normal", "L", None),
      "1.2.840.6": ("E4", "A4", "normal", "R", None)}
  assert sorted(r["reason"].split(" (")[0] for r in skipped) == [
      "finding without a usable outcome", "image listed but not found on disk",
      "no clinical finding with a usable outcome for this exam and side"]
  assert "metadata rows not 2D (C-view, 3D, ...) not used: 1" in log
  status, log, summary = helpers.convert(out, str(tmp_path / "tfr"))
  assert status == 0 and summary["total"]["images"] == 4, log
