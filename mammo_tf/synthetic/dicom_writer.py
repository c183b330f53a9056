"""Writes synthetic FFDM and DBT images as DICOM files with the tags of a hospital export.

FFDM: Digital Mammography X-Ray Image Storage - For Presentation (DX IOD: RescaleSlope 1,
RescaleIntercept 0 as the IOD requires). DBT: Breast Tomosynthesis Image Storage (enhanced
multi-frame) with shared and per-frame functional groups, either one multi-frame file or one
single-frame file per slice. Everything is deterministic: UIDs come from
`pydicom.uid.generate_uid(entropy_srcs=...)` over (seed, patient, exam, image) and dates are fixed
by the cohort plan. Pixel data of large volumes is streamed from a temporary raw file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import generate_uid

from mammo_tf.synthetic.vendors import Vendor
from mammo_tf.synthetic.vendors import full_scale

FFDM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
DBT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.13.1.3"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.20010838100"
IMPLEMENTATION_NAME = "MAMMO_TF_SYN"
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
ORIENTATION = {("L", "CC"): ["A", "R"], ("R", "CC"): ["P", "L"],
               ("L", "MLO"): ["A", "FR"], ("R", "MLO"): ["P", "FL"]}


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """Identifiers and acquisition facts of one image (all fake)."""
  seed: int
  patient_id: str
  patient_name: str
  birth_date: str
  age: int
  exam_id: str
  accession: str
  study_date: str
  study_time: str
  image_id: str
  laterality: str
  view: str
  spacing: float
  thickness_mm: float
  series_number: int
  instance_number: int
  monochrome1: bool
  kvp: float
  exposure_mas: float
  force_n: float


def uid(info: ImageInfo, *parts: str) -> str:
  return str(generate_uid(entropy_srcs=["mammo_tf-synthetic", str(info.seed), *parts]))


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
  c = Dataset()
  c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
  return c


def _base(info: ImageInfo, vendor: Vendor, sop_class: str, sop_uid: str, series_uid: str,
          rows: int, cols: int, photometric: str) -> Dataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  meta.ImplementationClassUID = IMPLEMENTATION_UID
  meta.ImplementationVersionName = IMPLEMENTATION_NAME
  ds = Dataset()
  ds.file_meta = meta
  ds.SpecificCharacterSet = "ISO_IR 100"
  ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
  ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = info.study_date
  ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = info.study_time
  ds.AccessionNumber = info.accession
  ds.Modality = "MG"
  ds.Manufacturer = vendor.manufacturer
  ds.ManufacturerModelName = vendor.model
  ds.SoftwareVersions = vendor.software
  ds.DeviceSerialNumber = f"SN-{vendor.model.split()[0].upper()}-{vendor.bits_stored:02d}07"
  ds.InstitutionName = "Synthetic Breast Imaging Centre"
  ds.StationName = "SYNMAMMO01"
  ds.ReferringPhysicianName = "Referrer^Synthetic"
  ds.StudyDescription = "SCREENING MAMMOGRAPHY (SYNTHETIC)"
  ds.PatientName = info.patient_name
  ds.PatientID = info.patient_id
  ds.PatientBirthDate = info.birth_date
  ds.PatientSex = "F"
  ds.PatientAge = f"{info.age:03d}Y"
  ds.BodyPartExamined = "BREAST"
  ds.BodyPartThickness = f"{info.thickness_mm:.1f}"
  ds.CompressionForce = f"{info.force_n:.1f}"
  ds.KVP = f"{info.kvp:.1f}"
  ds.ExposureInuAs = int(round(info.exposure_mas * 1000))
  ds.StudyInstanceUID = uid(info, info.patient_id, info.exam_id, "study")
  ds.SeriesInstanceUID = series_uid
  ds.FrameOfReferenceUID = uid(info, info.patient_id, info.exam_id, info.image_id, "frame")
  ds.StudyID = info.exam_id[-8:]
  ds.SeriesNumber = info.series_number
  ds.InstanceNumber = info.instance_number
  ds.Laterality = info.laterality
  ds.ImageLaterality = info.laterality
  ds.ViewPosition = info.view
  view_code = _code(*VIEW_CODES[info.view])
  view_code.ViewModifierCodeSequence = Sequence([])
  ds.ViewCodeSequence = Sequence([view_code])
  ds.AnatomicRegionSequence = Sequence([_code("76752008", "Breast")])
  ds.PatientOrientation = ORIENTATION[(info.laterality, info.view)]
  ds.PositionerPrimaryAngle = 0 if info.view == "CC" else (45 if info.laterality == "R" else -45)
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.BurnedInAnnotation = "NO"
  ds.LossyImageCompression = "00"
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.Rows, ds.Columns = rows, cols
  ds.BitsAllocated = 16
  ds.BitsStored = vendor.bits_stored
  ds.HighBit = vendor.bits_stored - 1
  ds.PixelRepresentation = 0
  ds.PixelSpacing = [f"{info.spacing:.6f}", f"{info.spacing:.6f}"]
  ds.ImagerPixelSpacing = [f"{info.spacing:.6f}", f"{info.spacing:.6f}"]
  ds.PixelIntensityRelationship = "LOG"
  ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
  ds.RescaleIntercept = f"{vendor.rescale_intercept:g}"
  ds.RescaleSlope = f"{vendor.rescale_slope:g}"
  ds.RescaleType = "US"
  return ds


def _save(ds: Dataset, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
  os.replace(tmp, path)


def write_ffdm(path: str, pixels: np.ndarray, info: ImageInfo, vendor: Vendor,
               window: tuple[float, float]) -> None:
  """One FFDM For-Presentation file. `pixels` are stored values (uint16 [H, W])."""
  photometric = "MONOCHROME1" if info.monochrome1 else "MONOCHROME2"
  series_uid = uid(info, info.patient_id, info.exam_id, "ffdm-series", info.image_id)
  ds = _base(info, vendor, FFDM_SOP_CLASS, uid(info, info.image_id, "sop"), series_uid,
             pixels.shape[0], pixels.shape[1], photometric)
  ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
  ds.SeriesDescription = f"{info.laterality} {info.view}"
  ds.DetectorType = "DIRECT"
  ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
  ds.VOILUTFunction = vendor.voi_function
  if vendor.padding:
    ds.PixelPaddingValue = full_scale(vendor) if info.monochrome1 else 0
  ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
  _save(ds, path)


def _dbt_dataset(info: ImageInfo, vendor: Vendor, sop_uid: str, rows: int, cols: int,
                 heights: np.ndarray, first: int, window: tuple[float, float],
                 slice_thickness: float) -> Dataset:
  series_uid = uid(info, info.patient_id, info.exam_id, "dbt-series", info.image_id)
  ds = _base(info, vendor, DBT_SOP_CLASS, sop_uid, series_uid, rows, cols, "MONOCHROME2")
  ds.ImageType = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
  ds.SeriesDescription = f"{info.laterality} {info.view} Tomo"
  ds.VolumetricProperties = "VOLUME"
  ds.VolumeBasedCalculationTechnique = "TOMOSYNTHESIS"
  ds.ContentQualification = "PRODUCT"
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  ds.SliceThickness = f"{slice_thickness:.3f}"
  ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
  ds.VOILUTFunction = vendor.voi_function
  ds.NumberOfFrames = len(heights)
  ds.DimensionOrganizationType = "3D"
  shared = Dataset()
  pm = Dataset()
  pm.PixelSpacing = [f"{info.spacing:.6f}", f"{info.spacing:.6f}"]
  pm.SliceThickness = f"{slice_thickness:.3f}"
  pvt = Dataset()
  pvt.RescaleIntercept, pvt.RescaleSlope = ds.RescaleIntercept, ds.RescaleSlope
  pvt.RescaleType = "US"
  voi = Dataset()
  voi.WindowCenter, voi.WindowWidth = ds.WindowCenter, ds.WindowWidth
  orient = Dataset()
  orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  shared.PixelMeasuresSequence = Sequence([pm])
  shared.PixelValueTransformationSequence = Sequence([pvt])
  shared.FrameVOILUTSequence = Sequence([voi])
  shared.PlaneOrientationSequence = Sequence([orient])
  ds.SharedFunctionalGroupsSequence = Sequence([shared])
  frames = []
  for k, z in enumerate(heights):
    fg = Dataset()
    fc = Dataset()
    fc.InStackPositionNumber = first + k + 1
    fc.DimensionIndexValues = [first + k + 1]
    pos = Dataset()
    pos.ImagePositionPatient = [0.0, 0.0, round(float(z), 3)]
    fg.FrameContentSequence = Sequence([fc])
    fg.PlanePositionSequence = Sequence([pos])
    frames.append(fg)
  ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
  return ds


def write_dbt(path: str, frames: Iterable[np.ndarray], heights: np.ndarray, info: ImageInfo,
              vendor: Vendor, window: tuple[float, float], per_slice: bool,
              shape: tuple[int, int]) -> None:
  """DBT volume: one multi-frame file at `path`, or a directory `path` of single-frame files.

  `frames` is an iterator of stored uint16 slices (bottom to top), consumed one at a time.
  """
  rows, cols = shape
  thickness = float(heights[1] - heights[0]) if len(heights) > 1 else 1.0
  if per_slice:
    os.makedirs(path, exist_ok=True)
    for k, frame in enumerate(frames):
      sub = dataclasses.replace(info, instance_number=k + 1)
      ds = _dbt_dataset(sub, vendor, uid(info, info.image_id, "sop", str(k)), rows, cols,
                        heights[k:k + 1], k, window, thickness)
      ds.ImagePositionPatient = [0.0, 0.0, round(float(heights[k]), 3)]
      ds.PixelData = np.ascontiguousarray(frame, dtype="<u2").tobytes()
      _save(ds, os.path.join(path, f"slice_{k + 1:03d}.dcm"))
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds = _dbt_dataset(info, vendor, uid(info, info.image_id, "sop"), rows, cols, heights, 0,
                    window, thickness)
  fd, raw = tempfile.mkstemp(prefix=".frames-", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "wb") as f:
      for frame in frames:
        f.write(np.ascontiguousarray(frame, dtype="<u2").tobytes())
    with open(raw, "rb") as buf:
      ds.PixelData = buf
      _save(ds, path)
  finally:
    os.unlink(raw)
