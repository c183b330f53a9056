"""INbreast (Moreira et al., Acad. Radiol. 2012) -> manifest rows.

Layout, as distributed by the authors (and described by the community XML readers, e.g.
https://github.com/itzortzis/INBreast_XML_parser): ``INbreast.csv``, semicolon-separated, with
``Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads``; images
``AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm``; annotations
``AllXML/<File Name>.xml``, an OsiriX property list: ``Images`` -> ``ROIs`` -> each with ``Name``
(Mass, Calcification, Cluster, ...), ``NumberOfPoints`` and ``Point_px`` (strings ``"(x, y)"``).

Labels: there is no per-image pathology in the table, so the label is a BI-RADS proxy of the
``Bi-Rads`` column (``1``, ``2``, ``3``, ``4a``, ``4b``, ``4c``, ``5``, ``6``), by default 1 ->
normal, 2-3 -> benign, 4-6 -> malignant (``birads_map``; a key ``4`` covers 4a-4c; printed as a
proxy). Box: the bounding box of an ROI's ``Point_px`` (single points give a 1 x 1 box); one row
per image keeps the largest ROI box and counts the others as set aside. The patient is the hash
in the file name (the table's ``Patient ID`` is blank in the public release). No official split.
"""

from __future__ import annotations

import os
import plistlib
import re

from mammo_tf.data.datasets import common

REQUIRED = ("File Name", "Bi-Rads")


def roi_boxes(xml_path: str) -> list[tuple[float, float, float, float]]:
  """Every ROI's (x, y, w, h) from its ``Point_px`` list (ROIs without points are ignored)."""
  with open(xml_path, "rb") as f:
    plist = plistlib.load(f)
  boxes = []
  for image in plist.get("Images", []):
    for roi in image.get("ROIs", []):
      points = [tuple(float(t) for t in re.findall(r"-?\d+(?:\.\d+)?", str(p)))[:2]
                for p in roi.get("Point_px", [])]
      points = [p for p in points if len(p) == 2]
      if not points:
        continue
      xs, ys = [p[0] for p in points], [p[1] for p in points]
      boxes.append((min(xs), min(ys), max(max(xs) - min(xs), 1.0), max(max(ys) - min(ys), 1.0)))
  return boxes


def _index(root: str, suffix: str) -> dict[str, str]:
  """{file-name prefix before the first '_' (or the stem): path} for files ending in `suffix`."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.lower().endswith(suffix):
        out.setdefault(name.split("_")[0].split(".")[0], os.path.join(dirpath, name))
  return out


def build(root: str, options: common.Options) -> common.BuildResult:
  """The INbreast folder under `root` -> manifest rows (see the module docstring)."""
  tables = common.find_tables(root, r"inbreast\.csv")
  if not tables:
    raise common.DatasetError(f"no INbreast.csv under {root}")
  table = tables[0]
  rows = common.read_table(table, delimiter=";")
  common.require_columns(table, rows, REQUIRED)
  mapping = common.parse_birads_map(options.birads_map)
  dicoms, xmls = _index(root, ".dcm"), _index(root, ".xml")
  col = common.Collector(options)
  col.notes.append(f"labels are a BI-RADS proxy (INbreast): {options.birads_map}")
  for line, v in rows:
    where = common.ref(table, line)
    name = v["File Name"].split(".")[0]
    label = common.birads_label(v["Bi-Rads"], mapping)
    if label is None:
      col.skip(where, "Bi-Rads not in the BI-RADS map")
      continue
    path = dicoms.get(name)
    if path is None:
      col.skip(where, "image listed but not found on disk")
      continue
    parts = os.path.basename(path).split("_")
    patient = parts[1] if len(parts) > 2 else name
    side = (v.get("Laterality", "") or (parts[3] if len(parts) > 4 else "")).upper()[:1]
    view = (v.get("View", "") or (parts[4] if len(parts) > 4 else "")).upper()
    image = common.Image(patient_id=patient, exam_id=patient, image_id=name, domain="ffdm",
                         path=path, laterality=side, view=view)
    boxes = []
    if name in xmls:
      try:
        boxes = roi_boxes(xmls[name])
      except Exception:
        col.skip(where, "annotation XML is not a readable property list")
    boxes.sort(key=common.box_area, reverse=True)
    for b in boxes:
      col.add_image(image, label, b, f"{os.path.basename(xmls[name])}")
    if not boxes:
      col.add_image(image, label, None, where)
  return col.finish()
