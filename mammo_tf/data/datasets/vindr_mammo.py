"""VinDr-Mammo (PhysioNet, https://physionet.org/content/vindr-mammo/; the authors' code at
https://github.com/vinbigdata-medical/vindr-mammo) -> manifest rows.

Layout, as published on PhysioNet and described in the dataset paper (Nguyen et al., Sci. Data
2023): ``breast-level_annotations.csv`` (one row per image: ``study_id, series_id, image_id,
laterality, view_position, height, width, breast_birads, breast_density, split``),
``finding_annotations.csv`` (one row per finding, the same columns plus ``finding_categories,
finding_birads, xmin, ymin, xmax, ymax``; empty box for ``['No Finding']``), images at
``images/<study_id>/<image_id>.dicom``. ``split`` is ``training`` or ``test``.

There is no pathology: the label is a BI-RADS proxy taken from ``breast_birads`` (``BI-RADS 4``),
by default 1 -> normal, 2-3 -> benign, 4-5 -> malignant (``birads_map``; printed as a proxy).
A finding's box is its float ``xmin..xmax, ymin..ymax`` as ``(x, y, w, h)``; one row per image
keeps the most severe finding (by ``finding_birads``), ties the largest box. Training patients
(studies: VinDr publishes no patient id, so the study stands for the patient) get a seeded
``val_fraction`` carved out for val; ``test`` stays test. Images listed but missing on disk are
skipped with a reason.
"""

from __future__ import annotations

import os

from mammo_tf.data.datasets import common

BREAST_TABLE = r"breast-level_annotations\.csv"
FINDING_TABLE = r"finding_annotations\.csv"
REQUIRED = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "split")
BOX = ("xmin", "ymin", "xmax", "ymax")


def _image_path(root: str, images_dir: str, study: str, image: str) -> str | None:
  for name in (f"{image}.dicom", f"{image}.dcm"):
    path = os.path.join(images_dir, study, name)
    if os.path.isfile(path):
      return path
  return None


def _findings(path: str, mapping, col: common.Collector) -> dict[str, list]:
  rows = common.read_table(path)
  common.require_columns(path, rows, ("image_id", "finding_birads") + BOX)
  out: dict[str, list] = {}
  for line, v in rows:
    if not any(v[c] for c in BOX):
      continue   # "No Finding"
    try:
      box = common.xyxy_to_box(*(float(v[c]) for c in BOX))
    except ValueError:
      col.skip(common.ref(path, line), "finding box coordinates are not numbers")
      continue
    label = common.birads_label(v["finding_birads"], mapping)
    if box is None or label is None:
      col.skip(common.ref(path, line), "finding without a usable box or BI-RADS")
      continue
    out.setdefault(v["image_id"], []).append((label, box, common.ref(path, line)))
  return out


def build(root: str, options: common.Options) -> common.BuildResult:
  """The VinDr-Mammo download under `root` -> manifest rows (see the module docstring)."""
  breast = common.find_tables(root, BREAST_TABLE)
  if not breast:
    raise common.DatasetError(f"no breast-level_annotations.csv under {root}")
  mapping = common.parse_birads_map(options.birads_map)
  col = common.Collector(options)
  col.notes.append(f"labels are a BI-RADS proxy (no pathology in VinDr-Mammo): "
                   f"{options.birads_map}")
  finding_tables = common.find_tables(root, FINDING_TABLE)
  findings = _findings(finding_tables[0], mapping, col) if finding_tables else {}
  table = breast[0]
  images_dir = os.path.join(os.path.dirname(table), "images")
  rows = common.read_table(table)
  common.require_columns(table, rows, REQUIRED)
  for line, v in rows:
    where = common.ref(table, line)
    label = common.birads_label(v["breast_birads"], mapping)
    if label is None:
      col.skip(where, "breast_birads not in the BI-RADS map")
      continue
    path = _image_path(root, images_dir, v["study_id"], v["image_id"])
    if path is None:
      col.skip(where, "image listed but not found on disk")
      continue
    split = {"training": "train", "test": "test"}.get(v["split"].lower(), "")
    image = common.Image(patient_id=v["study_id"], exam_id=v["study_id"], image_id=v["image_id"],
                         domain="ffdm", path=path, laterality=v["laterality"].upper()[:1],
                         view=v["view_position"].upper(), split=split)
    found = sorted(findings.get(v["image_id"], []), reverse=True,
                   key=lambda f: (common.SEVERITY[f[0]], common.box_area(f[1])))
    if not found:
      col.add_image(image, label, None, where)
    for k, (f_label, box, ref) in enumerate(found):
      # The image keeps its breast-level label, with the box of its most severe finding.
      col.add_image(image, label if k == 0 else _cap(f_label, label), box, ref)
  return col.finish(carve_val_split=True)


def _cap(finding_label: str, image_label: str) -> str:
  """A finding never outranks its image's breast-level label."""
  return min((finding_label, image_label), key=common.SEVERITY.get)
