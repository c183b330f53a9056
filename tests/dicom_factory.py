"""Writes REAL DICOM files for the tests (pydicom, no mocks).

* `write_ffdm`: Digital Mammography X-Ray Image - For Presentation, one frame.
* `write_dbt`: Breast Tomosynthesis Image Storage, one multi-frame file (enhanced IOD: the rescale
  goes into the functional groups by default, as vendors write it).
* `write_dbt_slices`: a directory of single-frame slices with ImagePositionPatient /
  ImageOrientationPatient / InstanceNumber, written in shuffled file-name order.

Transfer syntaxes: Explicit/Implicit VR Little Endian, Deflated Explicit VR Little Endian
(written by pydicom), RLE Lossless (pydicom's native encoder), JPEG 2000 Lossless (pydicom +
pylibjpeg-openjpeg) and JPEG Lossless Process 14 (SV1 `1.2.840.10008.1.2.4.70` and
`1.2.840.10008.1.2.4.57`), for which pydicom has no encoder: `encode_jpeg_lossless` below is a
small ITU T.81 process-14 encoder (predictor 1, one component, 2..16-bit precision, Huffman
table optimised for the data).

`pixels` are always the STORED values (before any rescale); the dtype written follows
`bits_allocated` / `pixel_representation`. Every writer takes `**kw`: DICOM keywords set verbatim on
the top-level dataset (e.g. `Laterality="R"`, `ViewPosition=None` to delete one).
"""
from __future__ import annotations

import contextlib
import heapq
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom import config as _pydicom_config
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.uid import JPEG2000Lossless
from pydicom.uid import JPEGLossless
from pydicom.uid import JPEGLosslessSV1
from pydicom.uid import RLELossless
from pydicom.uid import generate_uid

FFDM_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.2")  # Digital Mammography X-Ray - For Presentation
DBT_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.13.1.3")  # Breast Tomosynthesis Image Storage

# Recognisable identifiers: privacy tests grep outputs for these.
PATIENT_NAME = "Zyxwort^Quenby"
PATIENT_ID = "PID-7Q3X-UNIQUE"
STUDY_DATE = "19710923"
ACCESSION = "ACC-88K2-UNIQUE"

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
COMPRESSED_SYNTAXES = (RLELossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless)


# --------------------------------------------------------------------------------------------------
# Lossless JPEG (ITU T.81 process 14), pure NumPy.
# --------------------------------------------------------------------------------------------------
def _huffman_lengths(freqs: dict[int, int]) -> dict[int, int]:
  """Code lengths of an (unlimited) Huffman code for symbol -> frequency (all > 0)."""
  if len(freqs) == 1:
    return {next(iter(freqs)): 1}
  heap = [(f, i, (s,)) for i, (s, f) in enumerate(sorted(freqs.items()))]
  heapq.heapify(heap)
  lengths = {s: 0 for s in freqs}
  counter = len(heap)
  while len(heap) > 1:
    f1, _, s1 = heapq.heappop(heap)
    f2, _, s2 = heapq.heappop(heap)
    for s in s1 + s2:
      lengths[s] += 1
    heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
    counter += 1
  return lengths


def _build_huffman_table(categories: np.ndarray
                         ) -> tuple[list[int], list[int], dict[int, tuple[int, int]]]:
  """T.81 Annex K.2/K.3 table for the SSSS categories: (BITS[1..16], HUFFVAL,
  symbol -> (code, len))."""
  counts = np.bincount(categories, minlength=17)
  freqs = {int(s): int(c) for s, c in enumerate(counts) if c > 0}
  dummy = 256  # reserves the all-ones code point (K.2)
  freqs[dummy] = 1
  lengths = _huffman_lengths(freqs)
  bits = [0] * 64
  for length in lengths.values():
    bits[length] += 1
  # K.3 Adjust_BITS: limit code lengths to 16 (keeps the Kraft sum at 1).
  i = 63
  while i > 16:
    if bits[i] > 0:
      j = i - 2
      while bits[j] == 0:
        j -= 1
      bits[i] -= 2
      bits[i - 1] += 1
      bits[j + 1] += 2
      bits[j] -= 1
    else:
      i -= 1
  while bits[i] == 0:
    i -= 1
  bits[i] -= 1  # drop the reserved (all-ones) code point
  real = sorted((s for s in freqs if s != dummy), key=lambda s: (lengths[s], s))
  huffval = real
  table: dict[int, tuple[int, int]] = {}
  code, k = 0, 0
  for length in range(1, 17):
    for _ in range(bits[length]):
      table[huffval[k]] = (code, length)
      code += 1
      k += 1
    code <<= 1
  assert k == len(huffval)
  return bits[1:17], huffval, table


def _pack_bits(values: np.ndarray, nbits: np.ndarray) -> bytes:
  """MSB-first concatenation of `nbits[i]` low bits of `values[i]`, padded with 1s, byte-stuffed."""
  nbits = nbits.astype(np.int64)
  total = int(nbits.sum())
  idx = np.repeat(np.arange(len(nbits)), nbits)
  starts = np.cumsum(nbits) - nbits
  pos = np.arange(total, dtype=np.int64) - starts[idx]
  shift = (nbits[idx] - 1 - pos).astype(np.uint64)
  bitstream = ((values[idx].astype(np.uint64) >> shift) & np.uint64(1)).astype(np.uint8)
  pad = (-total) % 8
  if pad:
    bitstream = np.concatenate([bitstream, np.ones(pad, np.uint8)])
  data = np.packbits(bitstream)
  ff = np.flatnonzero(data == 0xFF)
  if len(ff):
    data = np.insert(data, ff + 1, 0)  # byte stuffing: 0xFF -> 0xFF 0x00
  return data.tobytes()


def encode_jpeg_lossless(frame: np.ndarray, precision: int, point_transform: int = 0) -> bytes:
  """Encodes one greyscale frame as an ITU T.81 lossless (process 14) JPEG, predictor 1 (SV1).

  `frame` holds unsigned values below 2**precision (2 <= precision <= 16). Predictor 1 is Ra (the
  left neighbour); the first row uses Ra, the first column of later rows Rb (above), the very first
  sample 2**(P - Pt - 1) (T.81 H.1.2.1). Differences are taken modulo 2**16 (H.1.2.1), coded as
  category SSSS (Huffman, table class 0) plus SSSS additional bits; SSSS = 16 has no extra bits.
  """
  if frame.ndim != 2:
    raise ValueError("one greyscale frame expected")
  if not 2 <= precision <= 16:
    raise ValueError("precision must be in 2..16")
  x = frame.astype(np.int64) >> point_transform
  if x.min() < 0 or x.max() >= (1 << (precision - point_transform)):
    raise ValueError(f"values outside 0..2**{precision}-1")
  rows, cols = x.shape
  pred = np.empty_like(x)
  pred[:, 1:] = x[:, :-1]
  pred[1:, 0] = x[:-1, 0]
  pred[0, 0] = 1 << (precision - point_transform - 1)
  diff = (x - pred) % 65536
  diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
  diff[diff == -32768] = 32768  # SSSS = 16 codes +32768
  mag = np.abs(diff)
  ssss = np.zeros(mag.shape, np.int64)
  nz = mag > 0
  ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
  # Guard against float rounding in log2 at exact powers of two.
  ssss[nz] += (mag[nz] >= (1 << ssss[nz]))
  ssss[nz] -= (mag[nz] < (1 << (ssss[nz] - 1)))
  bits, huffval, table = _build_huffman_table(ssss)
  codes = np.zeros(17, np.int64)
  code_len = np.zeros(17, np.int64)
  for s, (c, n) in table.items():
    codes[s], code_len[s] = c, n
  extra = np.where(diff < 0, diff + (1 << ssss) - 1, diff) & ((1 << ssss) - 1)
  extra_len = np.where(ssss == 16, 0, ssss)
  # One item per sample: Huffman code followed by the additional bits (<= 32 bits in all).
  values = (codes[ssss] << extra_len) | np.where(extra_len > 0, extra, 0)
  nbits = code_len[ssss] + extra_len
  scan = _pack_bits(values, nbits)

  out = bytearray(b"\xff\xd8")  # SOI
  out += b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, rows, cols, 1) + bytes([1, 0x11, 0])
  dht = bytes([0x00]) + bytes(bits) + bytes(huffval)
  out += b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
  out += b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, 1, 0, point_transform & 0x0F])
  out += scan
  out += b"\xff\xd9"  # EOI
  return bytes(out)


# --------------------------------------------------------------------------------------------------
# Dataset builders.
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _lenient_writing():
  """Lets tests write deliberately invalid values (e.g. a 'NaN' RescaleSlope)."""
  settings = _pydicom_config.settings
  old = settings.writing_validation_mode
  settings.writing_validation_mode = _pydicom_config.IGNORE
  try:
    yield
  finally:
    settings.writing_validation_mode = old


def _stored_dtype(bits_allocated: int, pixel_representation: int) -> np.dtype:
  if bits_allocated not in (8, 16, 32):
    raise ValueError("bits_allocated must be 8, 16 or 32")
  return np.dtype(f"{'u' if pixel_representation == 0 else 'i'}{bits_allocated // 8}")


def _ds_value(v):
  """DS values: numbers as short strings, strings verbatim (so 'NaN' can be written)."""
  if isinstance(v, str):
    return v
  return format(float(v), ".10g")


def _base_dataset(
  sop_class: UID,
  *,
  rows: int,
  cols: int,
  bits_stored: int,
  bits_allocated: int,
  photometric: str,
  pixel_representation: int,
  samples_per_pixel: int,
  laterality: str | None,
  view: str | None,
  patient_name: str,
  patient_id: str,
  study_date: str,
  accession_number: str,
  manufacturer: str,
  pixel_spacing: Sequence[float] | None,
  padding_value: int | None,
  padding_range_limit: int | None,
  window_center,
  window_width,
  voi_lut_function: str | None,
  voi_lut: tuple[int, int, np.ndarray] | None,
) -> Dataset:
  ds = Dataset()
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = generate_uid()
  ds.StudyInstanceUID = generate_uid()
  ds.SeriesInstanceUID = generate_uid()
  ds.PatientName = patient_name
  ds.PatientID = patient_id
  ds.PatientBirthDate = "19500101"
  ds.StudyDate = study_date
  ds.SeriesDate = study_date
  ds.ContentDate = study_date
  ds.AccessionNumber = accession_number
  ds.Modality = "MG"
  ds.Manufacturer = manufacturer
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.BodyPartExamined = "BREAST"
  if laterality is not None:
    ds.ImageLaterality = laterality
  if view is not None:
    ds.ViewPosition = view
  if pixel_spacing is not None:
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.ImagerPixelSpacing = [float(v) for v in pixel_spacing]
  ds.Rows = rows
  ds.Columns = cols
  ds.SamplesPerPixel = samples_per_pixel
  ds.PhotometricInterpretation = photometric
  if samples_per_pixel > 1:
    ds.PlanarConfiguration = 0
  ds.BitsAllocated = bits_allocated
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = pixel_representation
  vr = "US" if pixel_representation == 0 else "SS"
  if padding_value is not None:
    ds.add_new(0x00280120, vr, int(padding_value))
  if padding_range_limit is not None:
    ds.add_new(0x00280121, vr, int(padding_range_limit))
  if window_center is not None:
    ds.WindowCenter = window_center
    ds.WindowWidth = window_width
  if voi_lut_function is not None:
    ds.VOILUTFunction = voi_lut_function
  if voi_lut is not None:
    first_mapped, lut_bits, data = voi_lut
    item = Dataset()
    item.LUTDescriptor = [len(data), int(first_mapped), int(lut_bits)]
    item.LUTExplanation = "TEST LUT"
    item.add_new(0x00283006, "US" if lut_bits <= 16 else "OW", [int(v) for v in data])
    ds.VOILUTSequence = DicomSequence([item])
  return ds


def _set_rescale_top(ds: Dataset, slope, intercept) -> None:
  ds.RescaleSlope = _ds_value(slope)
  ds.RescaleIntercept = _ds_value(intercept)
  ds.RescaleType = "US"


def _apply_kw(ds: Dataset, kw: dict) -> None:
  for key, value in kw.items():
    if value is None:
      if key in ds:
        delattr(ds, key)
    else:
      setattr(ds, key, value)


def _encode_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: UID, precision: int) -> None:
  """Puts `stored` ([F,] H, W[, S]) into ds.PixelData with the given transfer syntax."""
  transfer_syntax = UID(transfer_syntax)
  if transfer_syntax in (JPEGLosslessSV1, JPEGLossless):
    frames = stored if "NumberOfFrames" in ds else stored[None]
    if ds.SamplesPerPixel != 1:
      raise ValueError("the test JPEG Lossless encoder writes one component only")
    if ds.PixelRepresentation != 0:
      raise ValueError("the test JPEG Lossless encoder writes unsigned data only")
    ds.PixelData = encapsulate([encode_jpeg_lossless(f, precision) for f in frames], has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.LossyImageCompression = "00"
    return
  if transfer_syntax in (RLELossless, JPEG2000Lossless):
    if transfer_syntax == JPEG2000Lossless and min(ds.Rows, ds.Columns) < 32:
      raise ValueError("pylibjpeg-openjpeg encodes 6 DWT resolutions: rows and columns must be "
                       ">= 32")
    ds.compress(transfer_syntax, stored, generate_instance_uid=False)
    return
  if transfer_syntax.is_encapsulated:
    raise ValueError(f"no test encoder for {transfer_syntax.name}; use raw_encapsulated_frames")
  ds.PixelData = np.ascontiguousarray(stored).tobytes()
  ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
  ds.file_meta.TransferSyntaxUID = transfer_syntax


def _save(ds: Dataset, path: Path, transfer_syntax: UID | None = None) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fm = ds.file_meta
  fm.MediaStorageSOPClassUID = ds.SOPClassUID
  fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
  if transfer_syntax is not None:
    fm.TransferSyntaxUID = UID(transfer_syntax)
  with _lenient_writing():
    if fm.TransferSyntaxUID.is_transfer_syntax:
      ds.save_as(path, enforce_file_format=True)
    else:  # a private / unknown transfer syntax: encode the dataset as Explicit VR Little Endian
      ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
  return path


def _prepare(pixels: np.ndarray, bits_allocated: int, pixel_representation: int) -> np.ndarray:
  arr = np.asarray(pixels)
  dtype = _stored_dtype(bits_allocated, pixel_representation)
  info = np.iinfo(dtype)
  if arr.size and (arr.min() < info.min or arr.max() > info.max):
    raise ValueError(f"pixel values do not fit {dtype}")
  return np.ascontiguousarray(arr.astype(dtype))


def write_ffdm(
  path,
  pixels: np.ndarray,
  *,
  bits_stored: int = 12,
  bits_allocated: int = 16,
  photometric: str = "MONOCHROME2",
  slope=1,
  intercept=0,
  rescale: bool = True,
  padding_value: int | None = None,
  padding_range_limit: int | None = None,
  laterality: str | None = "L",
  view: str | None = "CC",
  transfer_syntax=ExplicitVRLittleEndian,
  patient_name: str = PATIENT_NAME,
  patient_id: str = PATIENT_ID,
  study_date: str = STUDY_DATE,
  accession_number: str = ACCESSION,
  manufacturer: str = "MAMMO_TF_TEST",
  pixel_spacing: Sequence[float] | None = (0.07, 0.07),
  pixel_representation: int = 0,
  samples_per_pixel: int = 1,
  window_center=None,
  window_width=None,
  voi_lut_function: str | None = None,
  voi_lut: tuple[int, int, np.ndarray] | None = None,
  sop_class_uid=FFDM_SOP_CLASS,
  **kw,
) -> Path:
  """Writes a single-frame FFDM (For Presentation) DICOM file of the STORED values `pixels`.

  `pixels` is [H, W] (or [H, W, 3] with samples_per_pixel=3 and photometric="RGB").
  `rescale=False` omits RescaleSlope/Intercept. `voi_lut=(first_mapped, lut_bits, data)` writes a
  VOI LUT Sequence. Extra DICOM keywords go in `**kw` (value None deletes the element).
  """
  stored = _prepare(pixels, bits_allocated, pixel_representation)
  ds = _base_dataset(
    UID(sop_class_uid), rows=stored.shape[0], cols=stored.shape[1], bits_stored=bits_stored,
    bits_allocated=bits_allocated, photometric=photometric,
    pixel_representation=pixel_representation, samples_per_pixel=samples_per_pixel,
    laterality=laterality, view=view, patient_name=patient_name, patient_id=patient_id,
    study_date=study_date, accession_number=accession_number, manufacturer=manufacturer,
    pixel_spacing=pixel_spacing, padding_value=padding_value,
    padding_range_limit=padding_range_limit, window_center=window_center,
    window_width=window_width, voi_lut_function=voi_lut_function, voi_lut=voi_lut)
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
  if rescale:
    _set_rescale_top(ds, slope, intercept)
  _encode_pixels(ds, stored, UID(transfer_syntax), bits_stored)
  with _lenient_writing():
    _apply_kw(ds, kw)
  return _save(ds, Path(path))


def write_dbt(
  path,
  frames: np.ndarray,
  *,
  bits_stored: int = 12,
  bits_allocated: int = 16,
  photometric: str = "MONOCHROME2",
  slope=1,
  intercept=0,
  rescale_location: str = "shared",
  padding_value: int | None = None,
  padding_range_limit: int | None = None,
  laterality: str | None = "L",
  view: str | None = "CC",
  frame_laterality: str | None = None,
  transfer_syntax=ExplicitVRLittleEndian,
  patient_name: str = PATIENT_NAME,
  patient_id: str = PATIENT_ID,
  study_date: str = STUDY_DATE,
  accession_number: str = ACCESSION,
  manufacturer: str = "MAMMO_TF_TEST",
  pixel_spacing: Sequence[float] | None = (0.1, 0.1),
  pixel_representation: int = 0,
  samples_per_pixel: int = 1,
  window_center=None,
  window_width=None,
  voi_lut_function: str | None = None,
  voi_lut: tuple[int, int, np.ndarray] | None = None,
  number_of_frames: int | None = None,
  sop_class_uid=DBT_SOP_CLASS,
  **kw,
) -> Path:
  """Writes a multi-frame Breast Tomosynthesis Image Storage file; `frames` is [F, H, W] stored
  values.

  `rescale_location`: "shared" (SharedFunctionalGroupsSequence > PixelValueTransformationSequence,
  the enhanced-IOD place), "per_frame" (PerFrameFunctionalGroupsSequence; `slope`/`intercept` may
  then be per-frame sequences), "top" (top-level RescaleSlope/Intercept) or "none".
  `frame_laterality` writes FrameAnatomySequence > FrameLaterality in the shared groups.
  `number_of_frames` overrides NumberOfFrames (to write inconsistent files).
  """
  stored = _prepare(frames, bits_allocated, pixel_representation)
  if stored.ndim != 3:
    raise ValueError("frames must be [F, H, W]")
  n = stored.shape[0]
  ds = _base_dataset(
    UID(sop_class_uid), rows=stored.shape[1], cols=stored.shape[2], bits_stored=bits_stored,
    bits_allocated=bits_allocated, photometric=photometric,
    pixel_representation=pixel_representation, samples_per_pixel=samples_per_pixel,
    laterality=laterality, view=view, patient_name=patient_name, patient_id=patient_id,
    study_date=study_date, accession_number=accession_number, manufacturer=manufacturer,
    pixel_spacing=None, padding_value=padding_value, padding_range_limit=padding_range_limit,
    window_center=window_center, window_width=window_width, voi_lut_function=voi_lut_function,
    voi_lut=voi_lut)
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
  ds.NumberOfFrames = n

  shared = Dataset()
  if pixel_spacing is not None:
    measures = Dataset()
    measures.PixelSpacing = [float(v) for v in pixel_spacing]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
  orient = Dataset()
  orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
  shared.PlaneOrientationSequence = DicomSequence([orient])
  if frame_laterality is not None:
    anatomy = Dataset()
    anatomy.FrameLaterality = frame_laterality
    shared.FrameAnatomySequence = DicomSequence([anatomy])

  def _pvt(s, i):
    item = Dataset()
    item.RescaleSlope = _ds_value(s)
    item.RescaleIntercept = _ds_value(i)
    item.RescaleType = "US"
    return DicomSequence([item])

  with _lenient_writing():
    if rescale_location == "shared":
      shared.PixelValueTransformationSequence = _pvt(slope, intercept)
    elif rescale_location == "top":
      _set_rescale_top(ds, slope, intercept)
    per_frame = []
    slopes = slope if isinstance(slope, (list, tuple, np.ndarray)) else [slope] * n
    intercepts = intercept if isinstance(intercept, (list, tuple, np.ndarray)) else [intercept] * n
    for k in range(n):
      item = Dataset()
      pos = Dataset()
      pos.ImagePositionPatient = [0.0, 0.0, float(k)]
      item.PlanePositionSequence = DicomSequence([pos])
      content = Dataset()
      content.InStackPositionNumber = k + 1
      item.FrameContentSequence = DicomSequence([content])
      if rescale_location == "per_frame":
        item.PixelValueTransformationSequence = _pvt(slopes[k], intercepts[k])
      per_frame.append(item)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)

  _encode_pixels(ds, stored, UID(transfer_syntax), bits_stored)
  if number_of_frames is not None:
    ds.NumberOfFrames = number_of_frames
  with _lenient_writing():
    _apply_kw(ds, kw)
  return _save(ds, Path(path))


def write_dbt_slices(
  directory,
  frames: np.ndarray,
  *,
  positions: Iterable[float] | None = None,
  orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
  instance_numbers: Iterable[int] | None = None,
  write_positions: bool = True,
  shuffle_seed: int = 0,
  sop_class_uid=DBT_SOP_CLASS,
  **kw,
) -> list[Path]:
  """Writes `frames` [F, H, W] (or a list of 2-D arrays, possibly of different sizes) as one
  single-frame DICOM per slice in `directory`.

  Slice k gets ImagePositionPatient = origin + positions[k] * normal (positions default k * 1.0;
  normal = row x column direction cosines) and InstanceNumber = instance_numbers[k] (default k+1).
  File names are a shuffled permutation (seeded) so that listing order differs from slice order.
  Returns the paths in slice order. Other keyword arguments go to `write_ffdm` (per-slice tags).
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  frames = list(frames)
  n = len(frames)
  positions = list(positions) if positions is not None else [float(k) for k in range(n)]
  instance_numbers = (list(instance_numbers) if instance_numbers is not None
                      else list(range(1, n + 1)))
  o = np.asarray(orientation, float)
  normal = np.cross(o[:3], o[3:])
  names = np.random.default_rng(shuffle_seed).permutation(n)
  paths: list[Path | None] = [None] * n
  for k in np.random.default_rng(shuffle_seed + 1).permutation(n):  # writing order shuffled too
    k = int(k)
    frame = frames[k]
    extra = dict(kw)
    if write_positions:
      ipp = (np.array([-10.0, 20.0, 5.0]) + positions[k] * normal).tolist()
      extra.setdefault("ImagePositionPatient", [float(v) for v in ipp])
      extra.setdefault("ImageOrientationPatient", [float(v) for v in o])
    if instance_numbers[k] is not None:
      extra.setdefault("InstanceNumber", int(instance_numbers[k]))
    paths[k] = write_ffdm(directory / f"IMG{int(names[k]):04d}.dcm", frame,
                          sop_class_uid=sop_class_uid, **extra)
  return paths


def write_raw_encapsulated(path, frames_bytes: list[bytes], *, rows: int, cols: int,
                           transfer_syntax, bits_stored: int = 12, number_of_frames=None,
                           **kw) -> Path:
  """Writes arbitrary encapsulated fragments under any transfer syntax (for error tests)."""
  ds = _base_dataset(
    FFDM_SOP_CLASS, rows=rows, cols=cols, bits_stored=bits_stored, bits_allocated=16,
    photometric="MONOCHROME2", pixel_representation=0, samples_per_pixel=1, laterality="L",
    view="CC", patient_name=PATIENT_NAME, patient_id=PATIENT_ID, study_date=STUDY_DATE,
    accession_number=ACCESSION, manufacturer="MAMMO_TF_TEST", pixel_spacing=None,
    padding_value=None, padding_range_limit=None, window_center=None, window_width=None,
    voi_lut_function=None, voi_lut=None)
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
  if number_of_frames is not None:
    ds.NumberOfFrames = number_of_frames
  ds.PixelData = encapsulate(list(frames_bytes), has_bot=len(frames_bytes) > 1)
  ds["PixelData"].VR = "OB"
  ds["PixelData"].is_undefined_length = True
  _apply_kw(ds, kw)
  return _save(ds, Path(path))


def write_native_volume(path, shape: tuple[int, int, int], *, value_fn=None, bits_stored: int = 12,
                        chunk_frames: int = 8, **kw) -> Path:
  """Writes a big uncompressed (Explicit VR Little Endian) multi-frame DBT frame by frame.

  The header comes from `write_dbt` (one frame, then NumberOfFrames and the per-frame groups set to
  F); the PixelData element is appended by hand and the frames streamed to disk, so the writing
  process never holds the volume. `value_fn(k) -> [H, W] uint16` gives frame k.
  """
  f, h, w = shape
  value_fn = value_fn or (lambda k: np.full((h, w), k % (1 << bits_stored), np.uint16))
  # Header: a 1-frame dataset whose PixelData we replace by a streamed value of F frames.
  ds_path = Path(path)
  write_dbt(ds_path, value_fn(0)[None], bits_stored=bits_stored, **kw)
  ds = pydicom.dcmread(ds_path)
  ds.NumberOfFrames = f
  ds.PerFrameFunctionalGroupsSequence = DicomSequence(
    [ds.PerFrameFunctionalGroupsSequence[0]] * f)
  del ds.PixelData
  with _lenient_writing():
    ds.save_as(ds_path, enforce_file_format=True)
  nbytes = f * h * w * 2
  with open(ds_path, "ab") as fh:
    fh.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, nbytes))
    for k in range(f):
      fh.write(np.ascontiguousarray(value_fn(k), dtype="<u2").tobytes())
  return ds_path


def file_size(path) -> int:
  return os.path.getsize(path)


def half_ellipse_breast(seed: int, shape: tuple[int, int]) -> np.ndarray:
  """A uint16 image with a left-sided half-ellipse "breast" of uniform noise in 800..3000 on 0."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  inside = ((yy - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + (xx / (shape[1] * 0.75)) ** 2 < 1
  img = np.zeros(shape)
  img[inside] = rng.uniform(800, 3000, inside.sum())
  return img.astype(np.uint16)
