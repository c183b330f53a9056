"""CBIS-DDSM builder on a rebuilt TCIA layout: table paths that match no downloaded folder, crop
and mask files in either order or in two series, trailing newlines in cells, calc tables'
`breast density` spelling, several abnormalities on one image, a case missing on disk."""

import os

import numpy as np
import pytest
from skimage import measure

from tests import dicom_factory
from tests.data.datasets import helpers

MASS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
        "image file path", "cropped image file path", "ROI mask file path"]
CALC = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "calc type", "calc distribution", "assessment", "pathology",
        "subtlety", "image file path", "cropped image file path", "ROI mask file path"]
BIG, SMALL = (6, 12, 10, 9), (20, 40, 3, 2)    # abnormality 1: two blobs, the box is BIG's


def _mask(boxes):
  m = np.zeros((helpers.ROWS, helpers.COLS), np.uint8)
  for x, y, w, h in boxes:
    m[y:y + h, x:x + w] = 255
  return m


def _dcm(path, pixels, **kw):
  bits = 8 if pixels.dtype == np.uint8 else 12
  dicom_factory.write_ffdm(path, pixels, bits_stored=bits, bits_allocated=8 if bits == 8 else 16,
                           **kw)


def _case(root, case, side, abnormalities, full_uids):
  """Full image + ROI folders laid out as NBIA downloads them."""
  full = os.path.join(root, "CBIS-DDSM", case, "07-20-2016-DDSM-NA-74994",
                      "1.000000-full mammogram images-24515", "1-1.dcm")
  _dcm(full, helpers.breast(side, seed=len(case)), StudyInstanceUID=full_uids[0],
       SeriesInstanceUID=full_uids[1])
  crop = np.full((20, 16), 200, np.uint8)
  for k, (boxes, layout) in enumerate(abnormalities, start=1):
    base = os.path.join(root, "CBIS-DDSM", f"{case}_{k}", "07-21-2016-DDSM-NA-09887")
    if layout == "mask_first":
      _dcm(os.path.join(base, "1.000000-ROI mask images-18630", "1-1.dcm"), _mask(boxes))
      _dcm(os.path.join(base, "1.000000-ROI mask images-18630", "1-2.dcm"), crop)
    elif layout == "crop_first":
      _dcm(os.path.join(base, "1.000000-ROI mask images-18630", "1-1.dcm"), crop)
      _dcm(os.path.join(base, "1.000000-ROI mask images-18630", "1-2.dcm"), _mask(boxes))
    else:  # two series
      _dcm(os.path.join(base, "1.000000-cropped images-11111", "1-1.dcm"), crop)
      _dcm(os.path.join(base, "2.000000-ROI mask images-22222", "1-1.dcm"), _mask(boxes))


def _table_path(case, what="000000"):
  return f"{case}/1.3.6.1.4.1.9590.100.1.2.111/1.3.6.1.4.1.9590.100.1.2.222/{what}.dcm"


@pytest.fixture(scope="module")
def cbis(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cbis"))
  m1, m3, c2 = ("Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00003_RIGHT_MLO",
                "Calc-Test_P_00002_RIGHT_CC")
  _case(root, m1, "L", [([BIG, SMALL], "mask_first"), ([(20, 30, 4, 4)], "crop_first")],
        ("1.1", "1.2"))
  _case(root, m3, "R", [([(30, 20, 8, 8)], "two_series")], ("3.1", "3.2"))
  _case(root, c2, "R", [([(28, 30, 5, 7)], "two_series")], ("2.1", "2.2"))
  # A case folder with two series and no "full mammogram" name: told apart by the table's UIDs.
  m4 = "Mass-Test_P_00004_LEFT_MLO"
  _case(root, m4, "L", [([(10, 20, 6, 6)], "mask_first")], ("1.3.6.1.4.1.9590.100.1.2.111",
                                                           "1.3.6.1.4.1.9590.100.1.2.222"))
  os.rename(os.path.join(root, "CBIS-DDSM", m4, "07-20-2016-DDSM-NA-74994",
                         "1.000000-full mammogram images-24515"),
            os.path.join(root, "CBIS-DDSM", m4, "07-20-2016-DDSM-NA-74994", "2.000000-NA-2"))
  _dcm(os.path.join(root, "CBIS-DDSM", m4, "07-20-2016-DDSM-NA-74994", "1.000000-NA-1",
                    "1-1.dcm"), helpers.breast("R"), StudyInstanceUID="9.9",
       SeriesInstanceUID="9.8")

  def mass(pid, side, view, abn, path, case):
    return [pid, 2, side, view, abn, "MASS", "OVAL", "CIRCUMSCRIBED", 4, path, 3,
            _table_path(case), _table_path(f"{case}_{abn}"), _table_path(f"{case}_{abn}", "1")]

  helpers.write_csv(os.path.join(root, "mass_case_description_train_set.csv"), MASS, [
      mass("P_00001", "LEFT", "CC", 1, "MALIGNANT", m1),
      mass("P_00001", "LEFT", "CC", 2, "BENIGN", m1),
      mass("P_00003", "RIGHT", "MLO", 1, "BENIGN", m3),
      mass("P_00009", "LEFT", "MLO", 1, "BENIGN", "Mass-Training_P_00009_LEFT_MLO"),
      mass("P_00004", "LEFT", "MLO", 1, "MALIGNANT", m4)])
  helpers.write_csv(os.path.join(root, "calc_case_description_test_set.csv"), CALC, [
      ["P_00002", 3, "RIGHT", "CC", 1, "calcification", "PLEOMORPHIC", "CLUSTERED", 3,
       "BENIGN_WITHOUT_CALLBACK", 2, _table_path(c2), _table_path(f"{c2}_1"),
       _table_path(f"{c2}_1", "1")]], newline_in_cells=True)
  out = str(tmp_path_factory.mktemp("cbis_out") / "manifest.csv")
  status, log, rows, skipped = helpers.make_manifest("cbis-ddsm", root, out, "--val_fraction",
                                                     "0.5")
  return dict(root=root, out=out, status=status, log=log, rows=rows, skipped=skipped)


def test_rows_labels_and_mask_boxes(cbis):
  assert cbis["status"] == 1, cbis["log"]
  rows = cbis["rows"]
  assert sorted(rows) == ["Calc-Test_P_00002_RIGHT_CC", "Mass-Test_P_00004_LEFT_MLO",
                          "Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00003_RIGHT_MLO"]
  m4 = rows["Mass-Test_P_00004_LEFT_MLO"]
  assert m4["path"].endswith("2.000000-NA-2/1-1.dcm") and helpers.box(m4) == (10, 20, 6, 6)
  m1 = rows["Mass-Training_P_00001_LEFT_CC"]
  assert (m1["label"], m1["laterality"], m1["view"], m1["domain"]) == ("malignant", "L", "CC",
                                                                        "ffdm")
  assert m1["path"].endswith("1.000000-full mammogram images-24515/1-1.dcm")
  # Reference: scikit-image's largest region of the drawn mask.
  props = max(measure.regionprops(measure.label(_mask([BIG, SMALL]) > 0, connectivity=2)),
              key=lambda p: p.area)
  r0, c0, r1, c1 = props.bbox
  assert helpers.box(m1) == (c0, r0, c1 - c0, r1 - r0) == BIG
  c2 = rows["Calc-Test_P_00002_RIGHT_CC"]
  assert (c2["label"], c2["split"], c2["laterality"], helpers.box(c2)) == (
      "benign", "test", "R", (28, 30, 5, 7))
  assert helpers.box(rows["Mass-Training_P_00003_RIGHT_MLO"]) == (30, 20, 8, 8)
  assert sorted(r["split"] for r in rows.values() if "Training" in r["image_id"]) == [
      "train", "val"]                                   # --val_fraction 0.5 of 2 patients
  assert [r["reason"].split(" (")[0] for r in cbis["skipped"]] == ["full mammogram not found"]
  assert cbis["skipped"][0]["row"] == "mass_case_description_train_set.csv:5"
  assert "extra findings set aside (one row per image, most severe kept): 1" in cbis["log"]


def test_converts(cbis, tmp_path):
  status, log, summary = helpers.convert(cbis["out"], str(tmp_path / "tfr"))
  assert status == 0, log
  assert summary["domains"]["ffdm"]["images"] == 4
  assert summary["total"]["positive"] == 2
  assert summary["splits"]["test"]["images"] == 2


def test_same_seed_same_bytes(cbis, tmp_path):
  out = str(tmp_path / "manifest.csv")
  status, _, _, _ = helpers.make_manifest("cbis-ddsm", cbis["root"], out, "--val_fraction", "0.5")
  assert status == 1
  for suffix in (".csv", ".skipped.csv"):
    with open(cbis["out"][:-4] + suffix, "rb") as a, open(out[:-4] + suffix, "rb") as b:
      assert a.read() == b.read()
