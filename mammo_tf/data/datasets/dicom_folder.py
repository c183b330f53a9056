"""Any folder tree of DICOM files (a PACS export) -> manifest rows, from the headers alone.

Every file with the DICOM preamble is read with ``stop_before_pixels`` (no pixel is decoded) and
classified by its SOP Class UID (DICOM PS3.4 Annex B):

* Digital Mammography X-Ray Image - For Presentation (``1.2.840.10008.5.1.4.1.1.1.2``), or
  Digital X-Ray - For Presentation (``...1.1.1``) with Modality MG -> one ``ffdm`` row;
* Breast Tomosynthesis Image Storage (``...1.1.13.1.3``): a multi-frame file -> one ``dbt`` row;
  single-frame files of one series -> one ``dbt`` row whose path is their folder (the folder
  must hold that series only, since the converter reads every DICOM file in it);
* For Processing images (raw detector data), Breast Projection X-Ray (the tomosynthesis
  projections), and anything else are skipped with the reason.

Patient, exam and image ids are the header's PatientID, StudyInstanceUID and SOPInstanceUID
(SeriesInstanceUID for a slice folder): they go into the manifest, which is the user's own file,
and nowhere else (skipped rows name a file by a hash of its path under the root).

Labels CSV (``labels``, optional), joined on the first key it has, in this order:

* ``sop_instance_uid`` (the image; for a slice folder any of its slices), or
* ``series_instance_uid`` (a slice folder or a multi-frame volume), or
* ``accession_number`` + ``laterality`` (every image of that exam and breast);

with a ``label`` column (normal|benign|high_risk|malignant) and optional ``roi_x, roi_y, roi_w,
roi_h`` (a box in the image's pixels; for DBT on the MIP plane) and ``split``. Several label rows
for one image are several findings (the most severe is kept). Images without a label row get
``default_label`` when it is given, else are skipped; label rows that match no image are
reported in the skipped file.
"""

from __future__ import annotations

import collections
import hashlib
import os

import pydicom

from mammo_tf import config as config_lib
from mammo_tf.data.datasets import common

FFDM = "1.2.840.10008.5.1.4.1.1.1.2"
FFDM_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
BTO = "1.2.840.10008.5.1.4.1.1.13.1.3"
BREAST_PROJECTION = ("1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5")
_TAGS = ["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
         "AccessionNumber", "NumberOfFrames", "Modality", "ImageLaterality", "Laterality",
         "ViewPosition", "ViewCodeSequence", "SharedFunctionalGroupsSequence"]


def file_ref(root: str, path: str) -> str:
  rel = os.path.relpath(path, root)
  return "file " + hashlib.sha256(rel.encode("utf-8")).hexdigest()[:12]


def _kind(ds) -> tuple[str, str]:
  """("ffdm"|"dbt"|"slice"|"", reason when "")."""
  sop = str(ds.get("SOPClassUID", ""))
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if sop == FFDM or (sop == DX and str(ds.get("Modality", "")).upper() == "MG"):
    return ("ffdm", "") if frames == 1 else ("", "multi-frame 2D image")
  if sop == BTO:
    return ("dbt", "") if frames > 1 else ("slice", "")
  if sop in (FFDM_PROCESSING, DX_PROCESSING):
    return "", "For Processing image (raw detector data)"
  if sop in BREAST_PROJECTION:
    return "", "tomosynthesis projection images (the MIP needs the reconstructed volume)"
  return "", "SOP class is not a mammogram or a tomosynthesis volume"


def scan(root: str, col: common.Collector) -> list[common.Image]:
  """Images (with their join keys in `keys`) of every DICOM file under `root`."""
  images, slices = [], collections.defaultdict(list)
  for path in common.dicom_files_under(root):
    try:
      ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception:
      col.skip(file_ref(root, path), "unreadable DICOM header")
      continue
    kind, reason = _kind(ds)
    if not kind:
      col.skip(file_ref(root, path), reason)
      continue
    if kind == "slice":
      slices[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
      continue
    images.append(_image(ds, path, kind))
  for series, members in sorted(slices.items()):
    folders = {os.path.dirname(p) for p, _ in members}
    folder = folders.pop()
    in_folder = sum(1 for name in os.listdir(folder)
                    if common.is_dicom(os.path.join(folder, name)))
    if folders or in_folder != len(members):
      col.skip(file_ref(root, members[0][0]), "tomosynthesis slices of one series are spread "
               "over folders, or share a folder with other files")
      continue
    image = _image(members[0][1], folder, "dbt", image_id=series)
    image.keys = {("sop", str(ds.get("SOPInstanceUID", ""))) for _, ds in members} | image.keys
    images.append(image)
  return images


def _image(ds, path: str, kind: str, image_id: str = "") -> common.Image:
  side, view = common.side_and_view(ds)
  sop = str(ds.get("SOPInstanceUID", ""))
  series = str(ds.get("SeriesInstanceUID", ""))
  study = str(ds.get("StudyInstanceUID", ""))
  image = common.Image(patient_id=str(ds.get("PatientID", "") or study), exam_id=study,
                       image_id=image_id or sop, domain="ffdm" if kind == "ffdm" else "dbt",
                       path=path, laterality=side, view=view)
  image.keys = {("sop", sop), ("series", series),
                ("accession", str(ds.get("AccessionNumber", "")), side)}
  if image_id:
    image.keys.discard(("sop", sop))
  return image


def _labels(path: str) -> list[tuple[str, tuple, dict]]:
  rows = common.read_table(path)
  if not rows:
    raise common.DatasetError(f"{os.path.basename(path)}: no label rows")
  columns = {c.lower(): c for c in rows[0][1]}
  if "label" not in columns:
    raise common.DatasetError(f"{os.path.basename(path)}: no 'label' column")
  out = []
  for line, raw in rows:
    v = {c.lower(): x for c, x in raw.items()}
    if v.get("sop_instance_uid"):
      key = ("sop", v["sop_instance_uid"])
    elif v.get("series_instance_uid"):
      key = ("series", v["series_instance_uid"])
    elif v.get("accession_number"):
      key = ("accession", v["accession_number"], v.get("laterality", "").upper()[:1])
    else:
      key = None
    out.append((common.ref(path, line), key, v))
  return out


def build(root: str, options: common.Options) -> common.BuildResult:
  """A DICOM folder tree under `root` (+ optional labels CSV) -> manifest rows."""
  col = common.Collector(options)
  images = scan(root, col)
  if not images and not col.skipped:
    raise common.DatasetError(f"no mammogram or tomosynthesis DICOM file under {root}")
  labels = _labels(options.labels) if options.labels else []
  default = options.default_label.strip().lower()
  if default and default not in config_lib.LABELS:
    raise common.DatasetError(f"--default_label {default!r} is not one of "
                              f"{'|'.join(config_lib.LABELS)}")
  by_key = collections.defaultdict(list)
  for image in images:
    for key in image.keys:
      by_key[key].append(image)
  matched = set()
  for where, key, v in labels:
    label = v.get("label", "").lower()
    if key is None or label not in config_lib.LABELS:
      col.skip(where, "label row without a key column or with an unknown label")
      continue
    targets = by_key.get(key, [])
    if not targets:
      col.skip(where, "label row matches no image")
      continue
    box = _box(v)
    for image in targets:
      image.split = v.get("split", "").lower() if v.get("split", "").lower() in (
          config_lib.SPLITS) else image.split
      col.add_image(image, label, box, where)
      matched.add(image.image_id)
  for image in images:
    if image.image_id in matched:
      continue
    if default:
      col.add_image(image, default, None, file_ref(root, image.path))
    else:
      col.skip(file_ref(root, image.path), "no label row for this image (--labels or "
               "--default_label)")
  return col.finish()


def _box(v: dict):
  values = [v.get(c, "") for c in ("roi_x", "roi_y", "roi_w", "roi_h")]
  if not all(values):
    return None
  try:
    x, y, w, h = (float(t) for t in values)
  except ValueError:
    return None
  return (x, y, w, h) if w > 0 and h > 0 else None
