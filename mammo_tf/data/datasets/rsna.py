"""RSNA Screening Mammography Breast Cancer Detection (Kaggle, 2022-23) -> manifest rows.

Layout, as published on the competition's data page
(https://www.kaggle.com/competitions/rsna-breast-cancer-detection/data): ``train.csv`` with
``site_id, patient_id, image_id, laterality, view, age, cancer, biopsy, invasive, BIRADS, implant,
density, machine_id, difficult_negative_case`` and images at
``train_images/<patient_id>/<image_id>.dcm``.

Labels: ``cancer`` 1 -> malignant; ``biopsy`` 1 without cancer -> benign; else normal. The
dataset has no finding boxes, so every malignant image is a positive without a box: left out
by default (counted; ``keep_unboxed_positives`` keeps them). No official split: the manifest's
split column stays empty and ``convert`` computes the patient-level split. The exam is the
patient's (one screening exam per patient in the release). Images listed but missing on disk are
skipped with a reason.
"""

from __future__ import annotations

import os

from mammo_tf.data.datasets import common

REQUIRED = ("patient_id", "image_id", "laterality", "view", "cancer", "biopsy")


def _flag(value: str) -> bool:
  return value.strip() in ("1", "1.0", "True", "true")


def build(root: str, options: common.Options) -> common.BuildResult:
  """The RSNA download under `root` -> manifest rows (see the module docstring)."""
  tables = common.find_tables(root, r"train\.csv", max_depth=2)
  if not tables:
    raise common.DatasetError(f"no train.csv under {root}")
  table = tables[0]
  images_dir = os.path.join(os.path.dirname(table), "train_images")
  rows = common.read_table(table)
  common.require_columns(table, rows, REQUIRED)
  col = common.Collector(options)
  for line, v in rows:
    where = common.ref(table, line)
    path = os.path.join(images_dir, v["patient_id"], f"{v['image_id']}.dcm")
    if not os.path.isfile(path):
      col.skip(where, "image listed but not found on disk")
      continue
    label = ("malignant" if _flag(v["cancer"]) else "benign" if _flag(v["biopsy"])
             else "normal")
    image = common.Image(patient_id=v["patient_id"], exam_id=v["patient_id"],
                         image_id=v["image_id"], domain="ffdm", path=path,
                         laterality=v["laterality"].upper(), view=v["view"].upper())
    col.add_image(image, label, None, where)
  return col.finish()
