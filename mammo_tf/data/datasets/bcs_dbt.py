"""BCS-DBT (Duke Breast Cancer Screening - Digital Breast Tomosynthesis, TCIA) -> manifest rows.

Layout and tables, as published on TCIA (collection "Breast-Cancer-Screening-DBT") and read by the
dataset's official reader ``duke_dbt_data.py`` (https://github.com/mazurowski-lab/duke-dbt-data):

* ``BCS-DBT-file-paths-<split>*.csv``: ``PatientID, StudyUID, View, descriptive_path,
  classic_path``; ``View`` is ``lcc|lmlo|rcc|rmlo``; paths are relative to the download folder,
  e.g. ``Breast-Cancer-Screening-DBT/DBT-P00013/<date>-DBT-S04378-.../19.000000-L CC-57165/
  1-1.dcm``.
* ``BCS-DBT-labels-<split>*.csv``: ``PatientID, StudyUID, View, Normal, Actionable, Benign,
  Cancer`` (one-hot).
* ``BCS-DBT-boxes-<split>*.csv``: ``PatientID, StudyUID, View, Subject, Slice, X, Y, Width,
  Height, Class, AD, VolumeSlices``; ``X, Y`` is the box's top-left corner, ``Class`` is
  ``benign`` or ``cancer``.

``<split>`` is ``train``, ``validation`` or ``test`` (-> train, val, test); file names drift between
releases (``-v2`` suffixes, spaces), so tables are found by pattern. A listed path that does not
exist is resolved by the patient's folder: the DICOM files under it whose StudyInstanceUID is the
row's ``StudyUID``, then the series folder name (``L CC``) or the header's laterality and view.

Labels: Cancer -> malignant, Benign -> benign, Normal -> normal; Actionable rows are left out
(``keep_actionable`` keeps them as benign). One row per volume: several boxes on one view keep
the most severe (cancer over benign), ties the largest.

Orientation: the official reader compares the sums of the first and last pixel columns of frame 0
(stored values): the breast is on the right ("R") when the left column sums to less, else "L";
when that disagrees with the View's laterality the volume is turned by 180 degrees, and the
boxes are given in that turned frame. The builder applies the same test to frame 0 and writes
``rotate=180`` in the manifest, so the converter stores the MIP in the boxes' frame.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pydicom
from pydicom.pixels import iter_pixels

from mammo_tf.data.datasets import common

SPLITS = {"train": "train", "validation": "val", "test": "test"}
_KEY = ("PatientID", "StudyUID", "View")
_VIEWS = ("lcc", "lmlo", "rcc", "rmlo")


def _tables(root: str, kind: str) -> dict[str, list[str]]:
  pattern = rf"bcs[-_ ]?dbt[-_ ]?{kind}[-_ ]?(train|validation|test)\b.*\.csv"
  out: dict[str, list[str]] = {}
  for path in common.find_tables(root, pattern):
    split = re.search(r"(train|validation|test)", os.path.basename(path).lower()).group(1)
    out.setdefault(split, []).append(path)
  return out


def frame0_laterality(path: str) -> str:
  """The official reader's rule on frame 0: "R" if sum(first column) < sum(last column), else
  "L"."""
  frames = iter_pixels(path)
  try:
    frame = next(frames)
  finally:
    frames.close()
  frame = np.asarray(frame, dtype=np.float64)
  return "R" if frame[:, 0].sum() < frame[:, -1].sum() else "L"


def _norm(text: str) -> str:
  return re.sub(r"[^a-z0-9]", "", text.lower())


class _Resolver:
  """Finds a volume whose listed path is missing, by patient folder, StudyUID and view."""

  def __init__(self, root: str):
    self.root = root
    self._dirs = None

  def __call__(self, values: dict) -> str | None:
    for column in ("descriptive_path", "classic_path"):
      given = values.get(column, "").replace("\\", "/")
      if not given:
        continue
      parts = given.split("/")
      for k in range(len(parts)):   # the root may be the download folder or a folder inside it
        candidate = os.path.join(self.root, *parts[k:])
        if os.path.isfile(candidate):
          return candidate
    return self._search(values)

  def _search(self, values: dict) -> str | None:
    if self._dirs is None:
      self._dirs = common.index_dirs(self.root)
    view = values["View"].lower()
    matches = []
    for folder in self._dirs.get(values["PatientID"], []):
      for path in common.dicom_files_under(folder):
        try:
          ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
              "StudyInstanceUID", "ImageLaterality", "Laterality", "ViewPosition"])
        except Exception:
          continue
        if str(ds.get("StudyInstanceUID", "")) == values["StudyUID"]:
          matches.append((path, ds))
    if len(matches) > 1:
      by_folder = [m for m in matches if view in _norm(os.path.basename(os.path.dirname(m[0])))]
      by_header = [m for m in matches if (str(m[1].get("ImageLaterality", "") or m[1].get(
          "Laterality", "")).upper() + str(m[1].get("ViewPosition", "")).upper()).lower() == view]
      matches = by_folder or by_header
    return matches[0][0] if len(matches) == 1 else None


def _label(values: dict, keep_actionable: bool) -> str | None:
  flags = {c: values.get(c, "0").strip() in ("1", "1.0", "True", "true") for c in
           ("Normal", "Actionable", "Benign", "Cancer")}
  if flags["Cancer"]:
    return "malignant"
  if flags["Benign"]:
    return "benign"
  if flags["Actionable"]:
    return "benign" if keep_actionable else None
  return "normal" if flags["Normal"] else ""


def _boxes(tables: list[str], col: common.Collector) -> dict[tuple, list]:
  out: dict[tuple, list] = {}
  for path in tables:
    rows = common.read_table(path)
    common.require_columns(path, rows, _KEY + ("X", "Y", "Width", "Height"))
    for line, v in rows:
      try:
        box = tuple(float(v[c]) for c in ("X", "Y", "Width", "Height"))
      except ValueError:
        col.skip(common.ref(path, line), "box coordinates are not numbers")
        continue
      if not (box[2] > 0 and box[3] > 0):
        col.skip(common.ref(path, line), "box has no area")
        continue
      cls = v.get("Class", "").strip().lower()
      label = {"cancer": "malignant", "benign": "benign"}.get(cls, "")
      out.setdefault(tuple(v[c] for c in _KEY), []).append((box, label, common.ref(path, line)))
  return out


def build(root: str, options: common.Options) -> common.BuildResult:
  """The BCS-DBT download under `root` -> manifest rows (see the module docstring)."""
  paths, labels, boxes = (_tables(root, k) for k in ("file[-_ ]?paths", "labels", "boxes"))
  if not paths:
    raise common.DatasetError(f"no BCS-DBT-file-paths-<split>.csv found under {root}")
  col = common.Collector(options)
  resolve = _Resolver(root)
  for split_name in sorted(paths):
    label_of = {}
    for path in labels.get(split_name, []):
      rows = common.read_table(path)
      common.require_columns(path, rows, _KEY + ("Normal", "Actionable", "Benign", "Cancer"))
      label_of.update({tuple(v[c] for c in _KEY): v for _, v in rows})
    box_of = _boxes(boxes.get(split_name, []), col)
    for table in paths[split_name]:
      rows = common.read_table(table)
      common.require_columns(table, rows, _KEY)
      for line, v in rows:
        _add_volume(col, v, common.ref(table, line), SPLITS[split_name], label_of, box_of,
                    resolve, options)
  return col.finish()


def _add_volume(col, v, where, split, label_of, box_of, resolve, options) -> None:
  key = tuple(v[c] for c in _KEY)
  view = v["View"].lower()
  if view not in _VIEWS:
    col.skip(where, f"View is not one of {'|'.join(_VIEWS)}")
    return
  if key not in label_of:
    col.skip(where, "no row in the labels table")
    return
  label = _label(label_of[key], options.keep_actionable)
  if label is None:
    col.skip(where, "Actionable (no pathology; --keep_actionable keeps it as benign)")
    return
  if not label:
    col.skip(where, "no label set in the labels table")
    return
  path = resolve(v)
  if path is None:
    col.skip(where, "volume not found (listed paths missing; no unique match in the patient "
             "folder by StudyUID and view)")
    return
  try:
    rotate = 0 if frame0_laterality(path) == view[0].upper() else 180
  except Exception as e:
    col.skip(where, f"cannot decode frame 0 for the orientation check ({type(e).__name__})")
    return
  image = common.Image(patient_id=v["PatientID"], exam_id=v["StudyUID"],
                       image_id="|".join(key), domain="dbt", path=path,
                       laterality=view[0].upper(), view=view[1:].upper(), split=split,
                       rotate=rotate)
  found = box_of.get(key, [])
  for box, box_label, ref in found:
    col.add_image(image, box_label or label, box, ref)
  if not found:
    col.add_image(image, label, None, where)
