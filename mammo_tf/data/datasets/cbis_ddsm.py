"""CBIS-DDSM (Curated Breast Imaging Subset of DDSM, TCIA) -> manifest rows.

Tables, as published on the TCIA collection page (https://www.cancerimagingarchive.net/collection/
cbis-ddsm/) and used by the community readers: ``mass_case_description_{train,test}_set.csv`` and
``calc_case_description_{train,test}_set.csv`` with ``patient_id, breast_density`` (the calc files
spell it ``breast density``), ``left or right breast, image view, abnormality id, abnormality type,
..., assessment, pathology, subtlety, image file path, cropped image file path, ROI mask file
path``. Cells may end with a newline (stripped).

Paths: the tables say ``<case>/<StudyUID>/<SeriesUID>/000000.dcm`` while the NBIA download is
``CBIS-DDSM/<case>/<date>-DDSM-NA-<n>/1.000000-full mammogram images-<n>/1-1.dcm``, so the full
image is found by its case folder (``Mass-Training_P_00001_LEFT_CC``): its only DICOM file, else
the one in a ``full mammogram images`` series, else the one whose Study/Series UIDs are those of
the table path. ROI folders ``<case>_<abnormality id>`` hold a cropped image and a full-size mask
as ``1-1.dcm`` / ``1-2.dcm`` in either order (or in two series): the mask is the one with the full
image's Rows x Columns. Box = bounding box of the mask's largest 8-connected component.

Labels: MALIGNANT -> malignant; BENIGN and BENIGN_WITHOUT_CALLBACK -> benign. Split: ``Training``
cases -> train (a seeded ``val_fraction`` of those patients -> val), ``Test`` cases -> test. One
row per case image: several abnormalities keep the most severe (ties: the largest box). The same
mammogram can appear once as a Mass case and once as a Calc case (two folders, two rows).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pydicom
from scipy import ndimage

from mammo_tf.data.datasets import common

TABLE_PATTERN = r"(mass|calc)_case_description_(train|test)_set\.csv"
LABELS = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
REQUIRED = ("patient_id", "left or right breast", "image view", "abnormality id", "pathology",
            "image file path")


def _shape(path: str) -> tuple[int, int]:
  ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
  return int(ds.Rows), int(ds.Columns)


def _uids(path: str) -> tuple[str, str]:
  ds = pydicom.dcmread(path, stop_before_pixels=True,
                       specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
  return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))


def mask_box(path: str):
  """(x, y, w, h) of the largest 8-connected component of a mask's nonzero pixels, or None."""
  mask = np.asarray(pydicom.dcmread(path).pixel_array) > 0
  labels, n = ndimage.label(mask, structure=np.ones((3, 3), int))
  if n == 0:
    return None
  sizes = np.bincount(labels.ravel())[1:]
  ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
  return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
          float(ys.max() - ys.min() + 1))


class _Layout:
  """Case folders of the download, looked up by name."""

  def __init__(self, root: str):
    self.dirs = common.index_dirs(root)
    self._full: dict[str, tuple[str, tuple[int, int]] | None] = {}

  def full_image(self, case: str, table_path: str):
    if case not in self._full:
      self._full[case] = self._find_full(case, table_path)
    return self._full[case]

  def _find_full(self, case: str, table_path: str):
    files = [p for d in self.dirs.get(case, []) for p in common.dicom_files_under(d)]
    if len(files) > 1:
      files = [p for p in files if "full mammogram" in os.path.dirname(p).lower()] or files
    if len(files) > 1:
      parts = table_path.split("/")
      want = (parts[1], parts[2]) if len(parts) >= 4 else None
      files = [p for p in files if _uids(p) == want]
    if len(files) != 1:
      return None
    return files[0], _shape(files[0])

  def roi_mask(self, case: str, abnormality: str, full_shape) -> str | None:
    files = [p for d in self.dirs.get(f"{case}_{abnormality}", [])
             for p in common.dicom_files_under(d)]
    masks = [p for p in files if _shape(p) == tuple(full_shape)]
    return masks[0] if len(masks) == 1 else None


def build(root: str, options: common.Options) -> common.BuildResult:
  """The CBIS-DDSM download under `root` -> manifest rows (see the module docstring)."""
  tables = common.find_tables(root, TABLE_PATTERN)
  if not tables:
    raise common.DatasetError(f"no (mass|calc)_case_description_(train|test)_set.csv under {root}")
  layout = _Layout(root)
  col = common.Collector(options)
  for table in tables:
    rows = common.read_table(table)
    common.require_columns(table, rows, REQUIRED)
    for line, v in rows:
      _add_row(col, layout, v, common.ref(table, line))
  return col.finish(carve_val_split=True)


def _add_row(col: common.Collector, layout: _Layout, v: dict, where: str) -> None:
  label = LABELS.get(v["pathology"].upper())
  if label is None:
    col.skip(where, "pathology is not MALIGNANT, BENIGN or BENIGN_WITHOUT_CALLBACK")
    return
  table_path = v["image file path"].replace("\\", "/")
  case = table_path.split("/")[0]
  split = "train" if "training" in case.lower() else "test" if "test" in case.lower() else ""
  side = {"LEFT": "L", "RIGHT": "R"}.get(v["left or right breast"].upper(), "")
  found = layout.full_image(case, table_path)
  if found is None:
    col.skip(where, "full mammogram not found (no unique DICOM file in the case folder)")
    return
  path, shape = found
  abnormality = re.sub(r"\D", "", v["abnormality id"]) or v["abnormality id"]
  mask = layout.roi_mask(case, abnormality, shape)
  if mask is None:
    col.skip(where, "ROI mask not found (no file of the full image's size in the ROI folder)")
    return
  box = mask_box(mask)
  if box is None:
    col.skip(where, "ROI mask is empty")
    return
  image = common.Image(patient_id=v["patient_id"], exam_id=v["patient_id"], image_id=case,
                       domain="ffdm", path=path, laterality=side,
                       view=v["image view"].upper(), split=split)
  col.add_image(image, label, box, where)
