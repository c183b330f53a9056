"""Technical metadata of a mammogram: laterality, view, pixel spacing, slice position, flips.

`DicomMeta` carries no patient identifiers (names, ids, dates). No TF.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from pydicom.dataset import Dataset

from mammo_tf.io.header import Source
from mammo_tf.io.header import first_item

# ViewCodeSequence fallback (SNOMED CT / SRT codes and meanings) -> ViewPosition-style names.
_VIEW_CODES = {
  "399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO",
  "399260004": "ML", "R-10224": "ML", "399352003": "LM", "R-10228": "LM",
  "399099002": "LMO", "R-10230": "LMO", "399192003": "XCCL", "R-1024A": "XCCL",
  "399101009": "XCCM", "R-1024B": "XCCM", "399196006": "FB", "R-10244": "FB",
  "399188001": "SIO", "R-102D0": "SIO",
}
_VIEW_MEANINGS = {
  "cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML",
  "latero-medial": "LM", "latero-medial oblique": "LMO",
  "cranio-caudal exaggerated laterally": "XCCL", "cranio-caudal exaggerated medially": "XCCM",
  "caudo-cranial (from below)": "FB", "superolateral to inferomedial oblique": "SIO",
}


@dataclasses.dataclass(frozen=True)
class DicomMeta:
  """Technical facts about one image or volume. No patient identifiers (names, ids, dates)."""
  rows: int
  cols: int
  frames: int
  bits_stored: int
  photometric: str
  laterality: str          # "L" | "R" | ""
  view: str                # "CC" | "MLO" | ... | ""
  manufacturer: str
  sop_class_uid: str
  transfer_syntax_uid: str
  pixel_spacing: tuple[float, float] | None


def norm_laterality(value) -> str:
  """"L" | "R" | "" from any tag value."""
  v = str(value or "").strip().upper()
  return v if v in ("L", "R") else ""


def laterality(ds: Dataset) -> str:
  """ImageLaterality, Laterality, then FrameLaterality in the functional groups."""
  for kw in ("ImageLaterality", "Laterality"):
    v = norm_laterality(ds.get(kw, ""))
    if v:
      return v
  for path in (("SharedFunctionalGroupsSequence", "FrameAnatomySequence"),
               ("PerFrameFunctionalGroupsSequence", "FrameAnatomySequence")):
    item = first_item(ds, *path)
    if item is not None:
      v = norm_laterality(item.get("FrameLaterality", ""))
      if v:
        return v
  return ""


def view(ds: Dataset) -> str:
  """ViewPosition, else the ViewCodeSequence code (or meaning)."""
  v = str(ds.get("ViewPosition", "") or "").strip().upper()
  if v:
    return v
  item = first_item(ds, "ViewCodeSequence")
  if item is not None:
    code = str(item.get("CodeValue", "") or "").strip()
    if code in _VIEW_CODES:
      return _VIEW_CODES[code]
    meaning = str(item.get("CodeMeaning", "") or "").strip().lower()
    return _VIEW_MEANINGS.get(meaning, "")
  return ""


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
  """(row, column) spacing in mm from the functional groups, PixelSpacing or ImagerPixelSpacing."""
  candidates = [ds.get("PixelSpacing", None), ds.get("ImagerPixelSpacing", None)]
  item = first_item(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
  if item is not None:
    candidates.insert(0, item.get("PixelSpacing", None))
  for value in candidates:
    try:
      if value is not None and len(value) == 2:
        out = (float(value[0]), float(value[1]))
        if all(math.isfinite(x) and x > 0 for x in out):
          return out
    except (TypeError, ValueError):
      continue
  return None


def meta(src: Source, *, frames: int | None = None) -> DicomMeta:
  """The `DicomMeta` of a checked source (`frames` overrides the frame count)."""
  ds = src.ds
  return DicomMeta(
    rows=src.rows, cols=src.cols, frames=src.frames if frames is None else frames,
    bits_stored=src.bits_stored, photometric=src.photometric, laterality=laterality(ds),
    view=view(ds), manufacturer=str(ds.get("Manufacturer", "") or ""),
    sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
    transfer_syntax_uid=str(src.tsyntax), pixel_spacing=pixel_spacing(ds))


def slice_position(ds: Dataset) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
  """(ImagePositionPatient [3], ImageOrientationPatient [6], InstanceNumber), each or None."""
  ipp = ds.get("ImagePositionPatient", None)
  iop = ds.get("ImageOrientationPatient", None)
  if ipp is None:
    item = first_item(ds, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence")
    ipp = item.get("ImagePositionPatient", None) if item is not None else None
  if iop is None:
    for path in (("SharedFunctionalGroupsSequence", "PlaneOrientationSequence"),
                 ("PerFrameFunctionalGroupsSequence", "PlaneOrientationSequence")):
      item = first_item(ds, *path)
      if item is not None and item.get("ImageOrientationPatient", None) is not None:
        iop = item.ImageOrientationPatient
        break

  def vec(v, n):
    try:
      a = np.array([float(x) for x in v], dtype=np.float64)
      return a if a.shape == (n,) and np.isfinite(a).all() else None
    except (TypeError, ValueError):
      return None

  number = None
  if "InstanceNumber" in ds and ds.InstanceNumber not in (None, ""):
    try:
      number = int(ds.InstanceNumber)
    except (TypeError, ValueError):
      number = None
  return (vec(ipp, 3) if ipp is not None else None, vec(iop, 6) if iop is not None else None,
          number)


def infer_laterality(image: np.ndarray) -> str:
  """Guesses the laterality from the pixels: "L" when the breast lies against the image's left edge
  (a left breast in the standard DICOM orientation, PatientOrientation A\\R for L CC), "R" when
  against the right edge, "" for a blank or symmetric image."""
  img = np.asarray(image)
  half = img.shape[1] // 2
  left = float(img[:, :half].sum(dtype=np.float64))
  right = float(img[:, img.shape[1] - half:].sum(dtype=np.float64))
  if left == right:
    return ""
  return "L" if left > right else "R"


def flip_to_canonical(image: np.ndarray, laterality: str, canonical: str) -> np.ndarray:
  """Mirrors `image` left-right so that every breast looks like a `canonical` ("L"|"R") one.

  `canonical` "" means no flip. An image is flipped when its `laterality` differs from
  `canonical`; when `laterality` is "" it is inferred from the image (`infer_laterality`).
  Returns a new contiguous array when flipped, else `image` itself.
  """
  canonical = (canonical or "").strip().upper()
  if canonical not in ("", "L", "R"):
    raise ValueError(f"canonical must be '', 'L' or 'R', got {canonical!r}")
  if not canonical:
    return image
  laterality = norm_laterality(laterality)
  if not laterality:
    laterality = infer_laterality(image)
  if laterality and laterality != canonical:
    return np.ascontiguousarray(image[:, ::-1])
  return image
