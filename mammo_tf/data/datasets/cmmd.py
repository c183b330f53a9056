"""CMMD (The Chinese Mammography Database, TCIA) -> manifest rows.

Layout, as published on the TCIA collection page (https://www.cancerimagingarchive.net/collection/
cmmd/): the clinical spreadsheet ``CMMD_clinicaldata_revision.xlsx`` (a ``.csv`` export is
accepted too) with ``ID1, LeftRight, Age, number, abnormality, classification, subtype``, one row
per patient and breast; images from NBIA as ``CMMD/<ID1>/<date>-NA-NA-<n>/1.000000-NA-<n>/1-1.dcm,
1-2.dcm, ...``. Laterality and view are read from each file's DICOM header (ImageLaterality /
Laterality, ViewPosition or ViewCodeSequence), without decoding pixels.

Labels: ``classification`` Malignant -> malignant, Benign -> benign, per (patient, breast). There
are no finding boxes: malignant images are positives without a box, left out by default
(counted; ``keep_unboxed_positives`` keeps them). Images of a breast that has no spreadsheet row
are skipped. No official split (convert computes the patient-level one).
"""

from __future__ import annotations

import os

import pydicom

from mammo_tf.data.datasets import common

TABLE = r"cmmd_clinicaldata.*\.(xlsx|csv)"
REQUIRED = ("ID1", "LeftRight", "classification")
LABELS = {"malignant": "malignant", "benign": "benign"}
_TAGS = ["ImageLaterality", "Laterality", "ViewPosition", "ViewCodeSequence", "SOPInstanceUID"]


def _header(path: str) -> tuple[str, str, str]:
  """(laterality, view, SOPInstanceUID) from the header only."""
  ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
  side, view = common.side_and_view(ds)
  return side, view, str(ds.get("SOPInstanceUID", ""))


def read_clinical(path: str) -> list[tuple[int, dict[str, str]]]:
  return common.read_xlsx(path) if path.lower().endswith(".xlsx") else common.read_table(path)


def build(root: str, options: common.Options) -> common.BuildResult:
  """The CMMD download under `root` -> manifest rows (see the module docstring)."""
  tables = common.find_tables(root, TABLE)
  if not tables:
    raise common.DatasetError(f"no CMMD_clinicaldata*.xlsx|csv under {root}")
  table = tables[0]
  rows = read_clinical(table)
  common.require_columns(table, rows, REQUIRED)
  labels: dict[tuple[str, str], tuple[str, str]] = {}
  col = common.Collector(options)
  for line, v in rows:
    label = LABELS.get(v["classification"].strip().lower())
    if label is None:
      col.skip(common.ref(table, line), "classification is not Benign or Malignant")
      continue
    labels[(v["ID1"], v["LeftRight"].upper()[:1])] = (label, common.ref(table, line))
  used = set()
  dirs = common.index_dirs(root)
  for patient in sorted({p for p, _ in labels}):
    folders = dirs.get(patient, [])
    for path in (p for d in folders for p in common.dicom_files_under(d)):
      where = f"{patient}/{os.path.basename(path)}"
      try:
        side, view, sop = _header(path)
      except Exception:
        col.skip(where, "unreadable DICOM header")
        continue
      if (patient, side) not in labels:
        col.skip(where, "no spreadsheet row for this breast (or no laterality in the header)")
        continue
      label, ref = labels[(patient, side)]
      used.add((patient, side))
      col.add_image(common.Image(patient_id=patient, exam_id=patient, image_id=sop or path,
                                 domain="ffdm", path=path, laterality=side, view=view),
                    label, None, ref)
  for key in sorted(set(labels) - used):
    col.skip(labels[key][1], "no image of this breast found on disk")
  return col.finish()
