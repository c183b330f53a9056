"""EMBED (Emory Breast Imaging Dataset, AWS Open Data release) -> manifest rows (2D images only).

Tables, as documented in the dataset's descriptor (https://github.com/Emory-HITI/EMBED_Open_Data,
README sections V-VIII): ``tables/EMBED_OpenData_clinical[_reduced].csv``, one row per finding
(``empi_anon, acc_anon, side`` L|R|B, ``asses`` the BI-RADS letter A|N|B|P|S|M|K,
``path_severity`` 0 invasive cancer, 1 non-invasive cancer, 2 high-risk lesion, 3 borderline,
4 benign, 5 negative, 6 non-breast cancer), and ``tables/EMBED_OpenData_metadata[_reduced].csv``,
one row per file (``empi_anon, acc_anon, anon_dicom_path, ImageLateralityFinal, ViewPosition,
FinalImageType`` 2D|cview|..., ``ROI_coords`` a list of ``(ymin, xmin, ymax, xmax)``). Images:
``<cohort>/<patient>/<study>/<SOPInstanceUID>.dcm``; ``anon_dicom_path`` is the curators' absolute
path, so it is resolved by its longest tail that exists under the root.

The two tables are joined, as the descriptor advises, on patient, exam and side: a finding
applies to an image of the same ``empi_anon`` and ``acc_anon`` whose ``ImageLateralityFinal``
equals the finding's ``side`` (or ``side`` is B, or empty as on a negative exam's single row).
Only ``FinalImageType`` 2D rows are used (C-view images are synthetic; 3D volumes are not in the
release); the others are counted.

Label of a finding: ``path_severity`` 0-1 -> malignant, 2 -> high_risk, 3-4 -> benign,
5 -> normal (6, non-breast cancer, is left out); without pathology, ``asses`` N (BI-RADS 1) and
B (2) -> normal, P (3) -> benign, and A/S/M/K (0, 4, 5, 6: an outcome unknown without pathology)
are left out. The image takes its most severe finding; the ROIs are not linked to findings in the
tables, so the image's box is its largest ROI and the other ROIs and findings are counted as set
aside. Positives without an ROI are left out by default. No official split.
"""

from __future__ import annotations

import os
import re

from mammo_tf.data.datasets import common

CLINICAL = r"embed_opendata_clinical(_reduced)?\.csv"
METADATA = r"embed_opendata_metadata(_reduced)?\.csv"
SEVERITY_LABELS = {"0": "malignant", "1": "malignant", "2": "high_risk", "3": "benign",
                   "4": "benign", "5": "normal"}
ASSES_LABELS = {"N": "normal", "B": "normal", "P": "benign"}


def finding_label(values: dict) -> str | None:
  """The label of one clinical row (see the module docstring); None when left out."""
  severity = values.get("path_severity", "").strip()
  if severity:
    return SEVERITY_LABELS.get(severity.split(".")[0])
  return ASSES_LABELS.get(values.get("asses", "").strip().upper())


def roi_boxes(text: str) -> list[tuple[float, float, float, float]]:
  """``ROI_coords`` (lists of ymin, xmin, ymax, xmax) -> [(x, y, w, h)], non-empty boxes only."""
  numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text or "")]
  boxes = []
  for k in range(0, len(numbers) - 3, 4):
    ymin, xmin, ymax, xmax = numbers[k:k + 4]
    box = common.xyxy_to_box(xmin, ymin, xmax, ymax)
    if box is not None:
      boxes.append(box)
  return boxes


def resolve_tail(root: str, given: str) -> str | None:
  """`given` (a path from another machine) -> the longest tail of it that is a file under root."""
  parts = [p for p in given.replace("\\", "/").split("/") if p]
  for k in range(len(parts)):
    candidate = os.path.join(root, *parts[k:])
    if os.path.isfile(candidate):
      return candidate
  return None


def _clinical(root: str, col: common.Collector) -> dict[tuple, list]:
  tables = common.find_tables(root, CLINICAL)
  if not tables:
    raise common.DatasetError(f"no EMBED_OpenData_clinical*.csv under {root}")
  rows = common.read_table(tables[0])
  common.require_columns(tables[0], rows, ("empi_anon", "acc_anon", "side", "asses"))
  out: dict[tuple, list] = {}
  for line, v in rows:
    label = finding_label(v)
    if label is None:
      col.skip(common.ref(tables[0], line), "finding without a usable outcome (BI-RADS 0/4/5/6 "
               "without pathology, or non-breast cancer)")
      continue
    out.setdefault((v["empi_anon"], v["acc_anon"]), []).append(
        (v["side"].upper()[:1], label, common.ref(tables[0], line)))
  return out


def build(root: str, options: common.Options) -> common.BuildResult:
  """The EMBED release under `root` -> manifest rows (see the module docstring)."""
  col = common.Collector(options)
  findings = _clinical(root, col)
  tables = common.find_tables(root, METADATA)
  if not tables:
    raise common.DatasetError(f"no EMBED_OpenData_metadata*.csv under {root}")
  table = tables[0]
  rows = common.read_table(table)
  common.require_columns(table, rows, ("empi_anon", "acc_anon", "anon_dicom_path",
                                       "ImageLateralityFinal", "FinalImageType"))
  not_2d = 0
  for line, v in rows:
    where = common.ref(table, line)
    if v["FinalImageType"].upper() != "2D":
      not_2d += 1
      continue
    side = v["ImageLateralityFinal"].upper()[:1]
    matched = [f for f in findings.get((v["empi_anon"], v["acc_anon"]), [])
               if f[0] in (side, "B", "")]
    if not matched:
      col.skip(where, "no clinical finding with a usable outcome for this exam and side")
      continue
    path = resolve_tail(root, v["anon_dicom_path"])
    if path is None:
      col.skip(where, "image listed but not found on disk")
      continue
    image = common.Image(patient_id=v["empi_anon"], exam_id=v["acc_anon"],
                         image_id=os.path.splitext(os.path.basename(path))[0], domain="ffdm",
                         path=path, laterality=side, view=v.get("ViewPosition", "").upper())
    top = max(matched, key=lambda f: common.SEVERITY[f[1]])
    boxes = sorted(roi_boxes(v.get("ROI_coords", "")), key=common.box_area, reverse=True)
    for b in boxes:
      col.add_image(image, top[1], b, where)
    for f in matched if not boxes else [f for f in matched if f is not top]:
      col.add_image(image, f[1], None, f[2])
  if not_2d:
    col.notes.append(f"metadata rows not 2D (C-view, 3D, ...) not used: {not_2d}")
  return col.finish()
