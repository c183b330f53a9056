"""DICOM mammograms and tomosynthesis volumes -> 12-bit uint16 images (DESIGN §4.2). No TF.

Public API (docs/ARCHITECTURE.md):

* `read_ffdm(path, *, apply_voi_lut=False) -> (uint16 [H, W] in 0..4095, DicomMeta)`
* `read_dbt_mip(path, *, apply_voi_lut=False) -> (uint16 [H, W], DicomMeta)`: `path` is a multi-frame
  file (Breast Tomosynthesis Image Storage) or a directory of single-frame slices.
* `read_image(path, domain, **kw)`: dispatches on ``"ffdm" | "dbt"``.
* `flip_to_canonical(image, laterality, canonical)`.
* `to_12bit(array, *, bits_stored, photometric, slope, intercept, padding_value, ...)`: the pure
  intensity rule, applied pointwise to stored values.
* `DicomError(path, reason)`: every rejected input, with a specific reason naming the file.

Intensity rule (`to_12bit`), in this order, on each stored value ``s``:

1. padding: ``s`` is background when it equals PixelPaddingValue, or lies between PixelPaddingValue
   and PixelPaddingRangeLimit (inclusive, either order). The comparison is on the STORED value,
   before any rescale (PS3.3 C.7.5.1.1.2 gives the padding value in stored units).
2. modality LUT: ``v = s * RescaleSlope + RescaleIntercept`` (or the Modality LUT Sequence table).
3. VOI LUT (only with ``apply_voi_lut=True``): pydicom's `apply_voi_lut` (VOI LUT Sequence, else
   window centre/width with VOILUTFunction); the value range becomes the VOI output range.
4. MONOCHROME1: ``v = lo + hi - v``, i.e. inverted about the value range ``[lo, hi]``; without a VOI
   LUT that range is ``[0, 2**BitsStored - 1]`` (so a 12-bit MONOCHROME1 value 4095 becomes 0).
5. linear map of ``[lo, hi]`` onto ``[0, 4095]``: ``y = (v - lo) * 4095 / (hi - lo)``.
6. round half up (``floor(y + 0.5)``), clip to ``[0, 4095]``, uint16.
7. padding pixels (step 1) are set to 0, so background is 0 whatever the inversion or rescale.

PresentationLUTShape is ignored: for DX/MG images INVERSE accompanies MONOCHROME1 and carries the
same information, so applying both would invert twice.

Signed pixel data (PixelRepresentation 1) is read as two's complement. It is accepted when a
modality LUT (a slope/intercept other than 1/0, or a Modality LUT Sequence) says how to interpret
it, or when no non-padding stored value is negative; otherwise it is rejected (negative stored values
with no modality transform have no place on the 0..4095 scale). Float pixel data is rejected.

Decoding goes through pydicom (`pydicom.pixels.iter_pixels` on an open file, so only one frame is
decoded and held at a time) with pylibjpeg / pylibjpeg-openjpeg / pylibjpeg-libjpeg for JPEG,
JPEG-LS and JPEG 2000, and pydicom's own RLE decoder. Before anything is decoded, the header is
checked against the file: declared Rows x Columns x Frames x BitsAllocated against the PixelData
length and the file size (native data), the fragment / offset-table count against NumberOfFrames
(encapsulated data), and a per-frame size limit; huge declared dimensions are never allocated.

Because stored values are integers of at most 16 bits, the rule is evaluated once per possible
stored value into a lookup table and applied with a gather; the result is identical to evaluating
it pixel by pixel. The DBT MIP is a running ``np.maximum`` over frames: when the table is monotonic
(the usual case: rescale with either sign, MONOCHROME1 or 2, padding at the dark end) the running
maximum (or minimum) is taken on the stored values and mapped once at the end, otherwise each frame
is mapped and then maximised. Memory holds one decoded frame plus the running extreme.

Privacy: only the tags listed in `_HEADER_TAGS` are ever parsed (`dcmread(specific_tags=...)`), so
patient names, ids and dates are never read; `DicomMeta` and `DicomError` carry none.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.pixels.processing import apply_windowing
from pydicom.uid import UID

from mammo_tf.config import MAX_INTENSITY
# A decoded frame larger than this is refused before decoding (a 4096 x 3328 16-bit FFDM is 27 MB).
MAX_FRAME_BYTES = 1 << 30

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
               0x7FE00009: "DoubleFloatPixelData"}
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD

# The only elements ever parsed (patient module elements are never among them).
_HEADER_TAGS = [
  "SOPClassUID", "Manufacturer", "Modality", "Rows", "Columns", "NumberOfFrames",
  "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "BitsAllocated",
  "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
  "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
  "PixelPaddingValue", "PixelPaddingRangeLimit", "ImageLaterality", "Laterality", "ViewPosition",
  "ViewCodeSequence", "PixelSpacing", "ImagerPixelSpacing", "ImagePositionPatient",
  "ImageOrientationPatient", "InstanceNumber", "SharedFunctionalGroupsSequence",
  "PerFrameFunctionalGroupsSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
]

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


class DicomError(ValueError):
  """A DICOM input that cannot be read; `str()` is ``"<path>: <reason>"``.

  Reasons name the technical problem only: never patient names, ids or dates.
  """

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = str(reason)
    super().__init__(f"{self.path}: {self.reason}")

  def __reduce__(self):  # picklable across multiprocessing workers
    return (type(self), (self.path, self.reason))


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


# --------------------------------------------------------------------------------------------------
# The intensity rule.
# --------------------------------------------------------------------------------------------------
def _check_rule_args(bits_stored, photometric, slope, intercept, value_range):
  if not 1 <= int(bits_stored) <= 32:
    raise ValueError(f"bits_stored must be in 1..32, got {bits_stored}")
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
  for name, v in (("slope", slope), ("intercept", intercept)):
    if not math.isfinite(float(v)):
      raise ValueError(f"{name} must be finite, got {v}")
  if float(slope) == 0.0:
    raise ValueError("slope must not be 0")
  if value_range is not None and not float(value_range[1]) > float(value_range[0]):
    raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")


def _to_12bit_direct(s: np.ndarray, *, bits_stored, photometric, slope, intercept, padding_value,
                     padding_range_limit, modality_lut, voi, value_range) -> np.ndarray:
  """The rule of the module docstring, evaluated element by element (no table)."""
  s = np.asarray(s)
  pad = None
  if padding_value is not None:
    if padding_range_limit is None:
      pad = s == padding_value
    else:
      lo_p, hi_p = sorted((int(padding_value), int(padding_range_limit)))
      pad = (s >= lo_p) & (s <= hi_p)
  if modality_lut is not None:
    v = np.asarray(modality_lut(s), dtype=np.float64)
  else:
    v = s.astype(np.float64) * float(slope) + float(intercept)
  if voi is not None:
    v = np.asarray(voi(v), dtype=np.float64)
  if value_range is None:
    lo, hi = 0.0, float(2 ** int(bits_stored) - 1)
  else:
    lo, hi = float(value_range[0]), float(value_range[1])
  if photometric == "MONOCHROME1":
    v = (lo + hi) - v
  y = (v - lo) * float(MAX_INTENSITY) / (hi - lo)
  y = np.floor(y + 0.5)
  np.clip(y, 0, MAX_INTENSITY, out=y)
  out = y.astype(np.uint16)
  if pad is not None:
    out[pad] = 0
  return out


def _table_domain(dtype: np.dtype) -> np.ndarray:
  """Every value of an (u)int8/16 dtype, ordered by its unsigned bit pattern (the table index)."""
  dtype = np.dtype(dtype)
  unsigned = np.dtype(f"u{dtype.itemsize}")
  return np.arange(2 ** (8 * dtype.itemsize), dtype=np.int64).astype(unsigned).view(dtype)


def _table_index(arr: np.ndarray) -> np.ndarray:
  return arr.view(np.dtype(f"u{arr.dtype.itemsize}")) if arr.dtype.kind == "i" else arr


def intensity_table(dtype, **rule) -> np.ndarray:
  """uint16 table T with T[index] = to_12bit(value) for every value of `dtype` ((u)int8 / (u)int16).

  The index of a value is its unsigned bit pattern (``arr.view(uint)`` for signed arrays).
  `rule` holds the keyword arguments of `to_12bit`.
  """
  return _to_12bit_direct(_table_domain(dtype), **_rule_defaults(rule))


def _rule_defaults(rule: dict) -> dict:
  out = dict(photometric="MONOCHROME2", slope=1.0, intercept=0.0, padding_value=None,
             padding_range_limit=None, modality_lut=None, voi=None, value_range=None)
  out.update(rule)
  return out


def to_12bit(
  array: np.ndarray,
  *,
  bits_stored: int,
  photometric: str = "MONOCHROME2",
  slope: float = 1.0,
  intercept: float = 0.0,
  padding_value: int | None = None,
  padding_range_limit: int | None = None,
  modality_lut: Callable[[np.ndarray], np.ndarray] | None = None,
  voi: Callable[[np.ndarray], np.ndarray] | None = None,
  value_range: tuple[float, float] | None = None,
) -> np.ndarray:
  """Stored pixel values (integer array) -> uint16 in 0..4095, by the rule of the module docstring.

  Args:
    array: stored values, any integer dtype, any shape.
    bits_stored: BitsStored; the default value range is ``[0, 2**bits_stored - 1]``.
    photometric: "MONOCHROME1" (inverted about the value range) or "MONOCHROME2".
    slope, intercept: RescaleSlope / RescaleIntercept (finite; slope != 0).
    padding_value, padding_range_limit: PixelPaddingValue (/ RangeLimit), compared with the stored
      values before anything else; those pixels come out 0.
    modality_lut: optional table function (stored -> modality values) replacing slope/intercept
      (Modality LUT Sequence).
    voi: optional pointwise VOI function (modality values -> presentation values).
    value_range: the ``(lo, hi)`` range mapped onto ``[0, 4095]`` (and inverted about for
      MONOCHROME1); default ``(0, 2**bits_stored - 1)``. Give the VOI output range with `voi`.

  Returns:
    uint16 array of `array`'s shape in 0..4095.
  """
  _check_rule_args(bits_stored, photometric, slope, intercept, value_range)
  arr = np.asarray(array)
  if arr.dtype.kind not in "ui":
    raise TypeError(f"stored values must be integers, got {arr.dtype}")
  rule = dict(bits_stored=bits_stored, photometric=photometric, slope=slope, intercept=intercept,
              padding_value=padding_value, padding_range_limit=padding_range_limit,
              modality_lut=modality_lut, voi=voi, value_range=value_range)
  if arr.dtype.itemsize <= 2 and arr.size > 2 ** (8 * arr.dtype.itemsize) // 4:
    table = intensity_table(arr.dtype, **rule)
    return table[_table_index(arr)]
  return _to_12bit_direct(arr, **rule)


# --------------------------------------------------------------------------------------------------
# Header reading and validation.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Source:
  """One checked DICOM file: its header dataset and where its pixel data lies."""
  path: Path
  ds: Dataset
  tsyntax: UID
  rows: int
  cols: int
  frames: int
  bits_allocated: int
  bits_stored: int
  pixel_representation: int
  photometric: str
  in_memory: Dataset | None = None  # deflated files: the whole dataset, decoded from memory


def _fail(path, reason: str):
  raise DicomError(path, reason)


def _value(path, ds: Dataset, keyword: str):
  """ds.<keyword> or None; a value pydicom cannot convert is reported as a DicomError."""
  if keyword not in ds:
    return None
  try:
    value = ds[keyword].value
  except Exception as e:  # e.g. a DS/IS string that is not a number
    _fail(path, f"{keyword} cannot be parsed ({type(e).__name__})")
  return None if value in (None, "") else value


def _int_attr(path, ds: Dataset, keyword: str, default=None, *, required=True) -> int | None:
  value = _value(path, ds, keyword)
  if value is None:
    if required and default is None:
      _fail(path, f"missing {keyword}")
    return default
  if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
    if len(value) != 1:
      _fail(path, f"{keyword} has {len(value)} values, expected 1 (wrong value length?)")
    value = value[0]
  try:
    return int(value)
  except (TypeError, ValueError):
    _fail(path, f"{keyword} is not an integer")


def _float_attr(path, where: Dataset, keyword: str, default: float) -> float:
  value = _value(path, where, keyword)
  if value is None:
    return default
  try:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
      if len(value) != 1:
        _fail(path, f"{keyword} has {len(value)} values, expected 1")
      value = value[0]
    f = float(value)
  except (TypeError, ValueError):
    _fail(path, f"{keyword} is not a number")
  if not math.isfinite(f):
    _fail(path, f"{keyword} is {f} (not finite)")
  return f


def _read_header(path: Path) -> tuple[Dataset, UID, int | None, int | None, int]:
  """-> (header dataset, transfer syntax, pixel tag, pixel value length or None, value offset).

  pixel tag is None when the dataset has no pixel data element; length None = undefined length.
  """
  if not path.exists():
    _fail(path, "file not found")
  if path.is_dir():
    _fail(path, "is a directory, expected a DICOM file")
  size = path.stat().st_size
  try:
    with open(path, "rb") as f:
      head = f.read(132)
      if len(head) < 132 or head[128:132] != b"DICM":
        _fail(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
      f.seek(0)
      try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
      except (InvalidDicomError, EOFError, struct.error) as e:
        _fail(path, f"unreadable DICOM header ({type(e).__name__})")
      tsyntax = ds.file_meta.get("TransferSyntaxUID", None)
      if not tsyntax:
        _fail(path, "unreadable DICOM file meta information (no TransferSyntaxUID)")
      tsyntax = UID(str(tsyntax))
      if tsyntax.is_transfer_syntax and tsyntax.is_deflated:
        return ds, tsyntax, None, None, -1
      if not tsyntax.is_transfer_syntax:
        # Unknown UID: assume Explicit VR Little Endian for the element header (DICOM requires
        # it of every encapsulated syntax); decodability is checked later.
        little, implicit = True, False
      else:
        little, implicit = tsyntax.is_little_endian, tsyntax.is_implicit_VR
      start = f.tell()
      data = f.read(8)
      if len(data) < 8:
        return ds, tsyntax, None, None, start
      e = "<" if little else ">"
      group, elem = struct.unpack(f"{e}HH", data[:4])
      tag = (group << 16) | elem
      if tag not in _PIXEL_TAGS:
        return ds, tsyntax, None, None, start
      if implicit:
        (length,) = struct.unpack(f"{e}L", data[4:8])
      else:
        more = f.read(4)
        if len(more) < 4:
          _fail(path, "truncated pixel data element header")
        (length,) = struct.unpack(f"{e}L", more)
      return ds, tsyntax, tag, (None if length == 0xFFFFFFFF else length), f.tell()
  except DicomError:
    raise
  except OSError as e:
    _fail(path, f"cannot read file ({e.strerror or type(e).__name__})")
  except Exception as e:  # any other parsing failure of a corrupt header
    _fail(path, f"unreadable DICOM header ({type(e).__name__})")
  raise AssertionError("unreachable")  # pragma: no cover


def _scan_fragments(path: Path, offset: int, file_size: int) -> tuple[int, int]:
  """Walks the item headers of encapsulated pixel data -> (BOT entries, fragment count)."""
  with open(path, "rb") as f:
    f.seek(offset)
    pos, n_frag, n_bot, first = offset, 0, 0, True
    while True:
      header = f.read(8)
      if len(header) < 8:
        _fail(path, "truncated encapsulated pixel data (no sequence delimiter before end of file)")
      group, elem, length = struct.unpack("<HHL", header)
      tag = (group << 16) | elem
      if tag == _SEQ_DELIM:
        break
      if tag != _ITEM:
        _fail(path, f"corrupt encapsulated pixel data (unexpected tag {tag:08X} at byte {pos})")
      if length == 0xFFFFFFFF:
        _fail(path, "corrupt encapsulated pixel data (undefined item length)")
      if pos + 8 + length > file_size:
        _fail(path, f"truncated encapsulated pixel data (an item of {length} bytes runs past the "
                    f"end of the file)")
      if first:
        n_bot = length // 4
        first = False
      else:
        n_frag += 1
      pos += 8 + length
      f.seek(pos)
  if first:
    _fail(path, "corrupt encapsulated pixel data (no Basic Offset Table item)")
  return n_bot, n_frag


def _open_source(path) -> _Source:
  """Reads and checks the header of one DICOM file; decodes nothing."""
  path = Path(path)
  ds, tsyntax, pixel_tag, length, offset = _read_header(path)
  file_size = path.stat().st_size
  in_memory = None
  if tsyntax.is_transfer_syntax and tsyntax.is_deflated:
    try:
      in_memory = pydicom.dcmread(str(path), specific_tags=_HEADER_TAGS + ["PixelData",
                                                                          "FloatPixelData",
                                                                          "DoubleFloatPixelData"])
    except Exception as e:
      _fail(path, f"unreadable deflated DICOM ({type(e).__name__})")
    for tag in _PIXEL_TAGS:
      if tag in in_memory:
        pixel_tag = tag
        break
    if pixel_tag is not None:
      length = len(in_memory[pixel_tag].value or b"")

  # Pixel description.
  if pixel_tag is None:
    _fail(path, "no PixelData element")
  if pixel_tag != 0x7FE00010:
    _fail(path, f"float pixel data ({_PIXEL_TAGS[pixel_tag]}) is not supported")
  samples = _int_attr(path, ds, "SamplesPerPixel", 1, required=False)
  photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
  if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
    _fail(path, f"colour image (SamplesPerPixel={samples}, PhotometricInterpretation="
                f"{photometric or 'missing'}); only MONOCHROME1/MONOCHROME2 greyscale is supported")
  rows = _int_attr(path, ds, "Rows")
  cols = _int_attr(path, ds, "Columns")
  frames = _int_attr(path, ds, "NumberOfFrames", 1, required=False)
  if rows <= 0 or cols <= 0 or frames <= 0:
    _fail(path, f"invalid dimensions Rows={rows} Columns={cols} NumberOfFrames={frames}")
  bits_allocated = _int_attr(path, ds, "BitsAllocated")
  bits_stored = _int_attr(path, ds, "BitsStored", bits_allocated, required=False)
  pixel_representation = _int_attr(path, ds, "PixelRepresentation", 0, required=False)
  if bits_allocated not in (8, 16, 32):
    _fail(path, f"BitsAllocated={bits_allocated} is not supported (8, 16 or 32)")
  if not 1 <= bits_stored <= bits_allocated:
    _fail(path, f"BitsStored={bits_stored} is not in 1..BitsAllocated ({bits_allocated})")
  if pixel_representation not in (0, 1):
    _fail(path, f"PixelRepresentation={pixel_representation} is neither 0 (unsigned) nor 1 (signed)")

  # Size checks before anything is allocated.
  frame_bytes = rows * cols * (bits_allocated // 8)
  total = frame_bytes * frames
  dims = f"{rows} x {cols} x {frames} frame(s) x {bits_allocated} bits"
  if frame_bytes > MAX_FRAME_BYTES:
    _fail(path, f"declared frame size {rows} x {cols} x {bits_allocated} bits "
                f"({frame_bytes} bytes) exceeds the limit of {MAX_FRAME_BYTES} bytes")
  if tsyntax.is_transfer_syntax and not tsyntax.is_encapsulated:
    if length is None:
      _fail(path, "native (uncompressed) pixel data with undefined length")
    if in_memory is None and offset + length > file_size:
      _fail(path, f"truncated pixel data: PixelData declares {length} bytes but the file holds "
                  f"only {max(file_size - offset, 0)}")
    if length < total:
      held = length // frame_bytes
      if frames > 1 and length % frame_bytes == 0 and held >= 1:
        _fail(path, f"frame-count mismatch: NumberOfFrames={frames} but PixelData holds {held} "
                    f"frame(s)")
      _fail(path, f"declared dimensions {dims} need {total} bytes but PixelData holds {length}")
    if length >= total + frame_bytes:
      _fail(path, f"frame-count mismatch: NumberOfFrames={frames} but PixelData holds "
                  f"{length // frame_bytes} frame(s)")
  else:
    try:
      decoder = get_decoder(tsyntax)
    except NotImplementedError:
      name = tsyntax.name if tsyntax.is_transfer_syntax else "unknown"
      _fail(path, f"unsupported transfer syntax {tsyntax} ({name}): no decoder available")
    if not decoder.is_available:
      _fail(path, f"unsupported transfer syntax {tsyntax} ({tsyntax.name}): no decoder plugin "
                  f"installed ({'; '.join(decoder.missing_dependencies)})")
    if length is not None and in_memory is None:
      _fail(path, f"compressed transfer syntax {tsyntax.name} with defined-length (not "
                  f"encapsulated) pixel data")
    if in_memory is None:
      n_bot, n_frag = _scan_fragments(path, offset, file_size)
      if n_frag == 0:
        _fail(path, "encapsulated pixel data holds no fragments")
      if "ExtendedOffsetTable" in ds and ds["ExtendedOffsetTable"].value:
        n_eot = len(ds["ExtendedOffsetTable"].value) // 8
        if n_eot != frames:
          _fail(path, f"frame-count mismatch: NumberOfFrames={frames} but the Extended Offset "
                      f"Table lists {n_eot} frame(s)")
      elif n_bot and n_bot != frames:
        _fail(path, f"frame-count mismatch: NumberOfFrames={frames} but the Basic Offset Table "
                    f"lists {n_bot} frame(s)")
      elif n_frag < frames:
        _fail(path, f"frame-count mismatch: NumberOfFrames={frames} but the pixel data holds "
                    f"{n_frag} fragment(s)")
  return _Source(path=path, ds=ds, tsyntax=tsyntax, rows=rows, cols=cols, frames=frames,
                 bits_allocated=bits_allocated, bits_stored=bits_stored,
                 pixel_representation=pixel_representation, photometric=photometric,
                 in_memory=in_memory)


def _iter_frames(src: _Source) -> Iterator[np.ndarray]:
  """Decodes the frames one at a time (pydicom), checking the count and shape."""
  count = 0
  expected_shape = (src.rows, src.cols)
  source = src.in_memory if src.in_memory is not None else str(src.path)
  iterator = iter_pixels(source)
  try:
    while True:
      try:
        frame = next(iterator)
      except StopIteration:
        break
      except OSError as e:
        _fail(src.path, f"cannot read file ({e.strerror or type(e).__name__})")
      except Exception as e:  # decoder failures: corrupt codestreams
        _fail(src.path, f"cannot decode frame {count} ({src.tsyntax.name}): "
                        f"{type(e).__name__}: {_short(e)}")
      if frame.shape != expected_shape:
        _fail(src.path, f"decoded frame {count} has shape {frame.shape}, expected "
                        f"{expected_shape}")
      count += 1
      if count > src.frames:
        _fail(src.path, f"frame-count mismatch: NumberOfFrames={src.frames} but the pixel data "
                        f"holds more frames")
      yield frame
  finally:
    iterator.close()  # closes the file pydicom opened
  if count != src.frames:
    _fail(src.path, f"frame-count mismatch: NumberOfFrames={src.frames} but the pixel data holds "
                    f"{count} frame(s)")


def _short(e: BaseException, limit: int = 160) -> str:
  text = " ".join(str(e).split())
  return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------------
# Per-file intensity parameters.
# --------------------------------------------------------------------------------------------------
def _first_item(ds: Dataset, *keywords: str) -> Dataset | None:
  """ds.K1[0].K2[0]...; None when any level is missing or empty."""
  cur = ds
  for kw in keywords:
    seq = cur.get(kw, None) if cur is not None else None
    if not seq:
      return None
    cur = seq[0]
  return cur


def _rescale_sources(src: _Source) -> list[Dataset | None]:
  """Where the rescale of each frame lives: shared group, per-frame groups or the top level."""
  ds = src.ds
  shared = _first_item(ds, "SharedFunctionalGroupsSequence", "PixelValueTransformationSequence")
  if shared is not None:
    return [shared]
  per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
  if per_frame:
    items = [_first_item(item, "PixelValueTransformationSequence") for item in per_frame]
    if any(it is not None for it in items):
      if len(items) != src.frames:
        _fail(src.path, f"frame-count mismatch: NumberOfFrames={src.frames} but "
                        f"PerFrameFunctionalGroupsSequence has {len(items)} item(s)")
      return items
  return [ds]


def _voi_source(ds: Dataset) -> Dataset | None:
  if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
    return ds
  return _first_item(ds, "SharedFunctionalGroupsSequence", "FrameVOILUTSequence")


def _lut_table(src: _Source, item: Dataset) -> tuple[int, np.ndarray, int]:
  """(first mapped value, table, bits per entry) of a LUT item (VOI or Modality LUT Sequence)."""
  try:
    n, first_map, bits = (int(x) for x in item.LUTDescriptor)
    data = item["LUTData"]
    n = n or 65536  # PS3.3 C.11.1.1.1: 0 means 2**16 entries
    if isinstance(data.value, (bytes, bytearray)):
      little = src.tsyntax.is_little_endian if src.tsyntax.is_transfer_syntax else True
      table = np.frombuffer(data.value, dtype="<u2" if little else ">u2")[:n]
    else:
      value = data.value
      table = np.asarray([value] if isinstance(value, int) else list(value), dtype=np.int64)[:n]
  except Exception as e:
    _fail(src.path, f"invalid LUT in the VOI/Modality LUT Sequence ({type(e).__name__})")
  if len(table) < n or not 1 <= bits <= 16:
    _fail(src.path, f"invalid LUT: descriptor says {n} entries of {bits} bits, data has "
                    f"{len(table)}")
  if first_map >= 2 ** 15 and src.pixel_representation == 1:
    first_map -= 2 ** 16  # US-encoded negative first value for signed data
  return first_map, table.astype(np.int64), bits


def _build_voi(src: _Source, slope: float, intercept: float, modality: Dataset | None):
  """-> (voi function, (lo, hi) output range) from the file's VOI LUT or window, or (None, None)."""
  where = _voi_source(src.ds)
  if where is None:
    return None, None
  voi_ds = Dataset()
  voi_ds.PhotometricInterpretation = src.photometric  # pydicom checks it; never inverts
  voi_ds.BitsStored = src.bits_stored
  voi_ds.PixelRepresentation = src.pixel_representation
  if modality is not None:
    voi_ds.ModalityLUTSequence = modality.ModalityLUTSequence
  else:
    voi_ds.RescaleSlope = slope
    voi_ds.RescaleIntercept = intercept
  lut = where.get("VOILUTSequence", None)
  if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
    first_map, table, bits = _lut_table(src, lut[0])

    def voi(v):
      # PS3.3 C.11.2.1.1: values below the first mapped value take the first entry, values past
      # the last entry the last one. (pydicom 3.0's apply_voi indexes through a uint8 array for
      # 8-bit LUTs and wraps for tables longer than 256 entries, hence this table lookup.)
      idx = np.floor(np.asarray(v, dtype=np.float64) + 0.5) - first_map
      idx = np.clip(idx, 0, len(table) - 1).astype(np.int64)
      return table[idx].astype(np.float64)

    return voi, (0.0, float(2 ** bits - 1))
  if "WindowCenter" in where and "WindowWidth" in where:
    voi_ds.WindowCenter = where.WindowCenter
    voi_ds.WindowWidth = where.WindowWidth
    if "VOILUTFunction" in where:
      voi_ds.VOILUTFunction = where.VOILUTFunction
    for kw in ("WindowCenter", "WindowWidth"):
      values = voi_ds[kw].value
      first = values[0] if isinstance(values, (list, tuple, pydicom.multival.MultiValue)) else values
      try:
        ok = math.isfinite(float(first))
      except (TypeError, ValueError):
        ok = False
      if not ok:
        _fail(src.path, f"{kw} is not a finite number")

    def voi(v):
      return apply_windowing(np.asarray(v, dtype=np.float64), voi_ds)

    try:
      lo, hi = voi(np.array([-1e300, 1e300]))
      voi(np.zeros(1))
    except ValueError as e:
      _fail(src.path, f"invalid VOI window: {_short(e)}")
    if not hi > lo:
      _fail(src.path, f"invalid VOI window output range [{lo}, {hi}]")
    return voi, (float(lo), float(hi))
  return None, None


def _rules(src: _Source, apply_voi_lut: bool) -> list[dict]:
  """The `to_12bit` keyword arguments for each frame (one dict when all frames share them)."""
  ds, path = src.ds, src.path
  padding = None
  limit = None
  if "PixelPaddingValue" in ds:
    padding = _int_attr(path, ds, "PixelPaddingValue")
    if "PixelPaddingRangeLimit" in ds:
      limit = _int_attr(path, ds, "PixelPaddingRangeLimit")
    if src.pixel_representation == 1:  # a US-encoded padding value for signed data
      half = 2 ** (src.bits_allocated - 1)
      padding = padding - 2 * half if padding >= half else padding
      if limit is not None and limit >= half:
        limit -= 2 * half
  modality = ds if ds.get("ModalityLUTSequence") else None
  rules = []
  for where in _rescale_sources(src):
    if modality is not None:
      slope, intercept = 1.0, 0.0
    else:
      where = where if where is not None else ds
      slope = _float_attr(path, where, "RescaleSlope", 1.0)
      intercept = _float_attr(path, where, "RescaleIntercept", 0.0)
      if slope == 0.0:
        _fail(path, "RescaleSlope is 0")
    rule = dict(bits_stored=src.bits_stored, photometric=src.photometric, slope=slope,
                intercept=intercept, padding_value=padding, padding_range_limit=limit)
    if modality is not None:
      first_map, table, out_bits = _lut_table(src, modality.ModalityLUTSequence[0])

      def modality_lut(stored, _first=first_map, _table=table):
        idx = np.clip(np.asarray(stored, dtype=np.int64) - _first, 0, len(_table) - 1)
        return _table[idx].astype(np.float64)

      rule["modality_lut"] = modality_lut
      rule["value_range"] = (0.0, float(2 ** out_bits - 1))
    if apply_voi_lut:
      voi, out_range = _build_voi(src, slope, intercept, modality)
      if voi is not None:
        rule["voi"] = voi
        rule["value_range"] = out_range
    rules.append(rule)
  if len(rules) > 1 and all(_same_rule(rules[0], r) for r in rules[1:]):
    rules = rules[:1]
  return rules


def _same_rule(a: dict, b: dict) -> bool:
  keys = ("slope", "intercept", "padding_value", "padding_range_limit", "bits_stored",
          "photometric", "value_range")
  return all(a.get(k) == b.get(k) for k in keys) and "voi" not in a and "modality_lut" not in a


def _has_modality_transform(rule: dict) -> bool:
  return rule.get("modality_lut") is not None or rule["slope"] != 1.0 or rule["intercept"] != 0.0


def _check_signed(src: _Source, frame: np.ndarray, rule: dict) -> None:
  """Signed data without a modality transform must not hold negative (non-padding) values."""
  if src.pixel_representation != 1 or _has_modality_transform(rule):
    return
  neg = frame < 0
  if rule.get("padding_value") is not None:
    pv, lim = rule["padding_value"], rule.get("padding_range_limit")
    lo_p, hi_p = sorted((pv, pv if lim is None else lim))
    neg &= ~((frame >= lo_p) & (frame <= hi_p))
  if neg.any():
    _fail(src.path, f"signed pixel data (PixelRepresentation=1) with negative stored values "
                    f"(min {int(frame[neg].min())}) and no rescale or Modality LUT: cannot map to "
                    f"0..{MAX_INTENSITY}")


def _rule_key(rule: dict):
  """Hashable identity of a rule without callables (None when it has a VOI / Modality LUT)."""
  if rule.get("voi") is not None or rule.get("modality_lut") is not None:
    return None
  return tuple(sorted((k, v) for k, v in rule.items()))


class _FrameMapper:
  """Maps decoded frames to 12-bit with a lookup table per stored dtype (direct for 32-bit)."""

  def __init__(self, rule: dict):
    self.rule = rule
    self.table = None
    self.order = None  # "max" | "min" when the table is monotonic (MIP on stored values)
    self.dtype = None
    # Fast path: on 0..n-1 the table is s (identity) or c - s, except at a few stored values.
    self.affine = None  # (n, sign, c, exceptions)

  def prepare(self, path, frame: np.ndarray) -> None:
    if frame.dtype.kind not in "ui":
      _fail(path, f"decoded pixel data has non-integer dtype {frame.dtype}")
    if self.dtype == frame.dtype:
      return
    self.dtype = frame.dtype
    self.table, self.order = None, None
    if frame.dtype.itemsize <= 2:
      try:
        self.table = intensity_table(frame.dtype, **self.rule)
      except ValueError as e:
        _fail(path, f"invalid intensity parameters: {_short(e)}")
      by_value = self.table[np.argsort(_table_domain(frame.dtype), kind="stable")]
      steps = np.diff(by_value.astype(np.int32))
      if (steps >= 0).all():
        self.order = "max"
      elif (steps <= 0).all():
        self.order = "min"
      self.affine = self._find_affine(frame.dtype)

  def _find_affine(self, dtype: np.dtype):
    """(n, sign, c, exceptions) when table[s] == c + sign * s on 0..n-1 but for <= 4 values."""
    bits = int(self.rule["bits_stored"])
    if dtype.kind != "u" or bits > 12:
      return None
    n = 2 ** bits
    head = self.table[:n].astype(np.int64)
    s = np.arange(n, dtype=np.int64)
    for sign, c in ((1, 0), (-1, MAX_INTENSITY)):
      exceptions = np.flatnonzero(head != c + sign * s)
      if len(exceptions) <= 4:
        return n, sign, c, [(int(v), int(self.table[v])) for v in exceptions]
    return None

  def map(self, path, frame: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """12-bit image of `frame`; with `inplace`, `frame` (uint, writeable) may be reused."""
    self.prepare(path, frame)
    if (inplace and self.affine is not None and frame.flags.writeable
        and int(frame.max(initial=0)) < self.affine[0]):
      n, sign, c, exceptions = self.affine
      masks = [(frame == v, out) for v, out in exceptions]
      out = frame if frame.dtype == np.uint16 else frame.astype(np.uint16)
      if sign < 0:
        np.subtract(np.uint16(c), out, out=out)
      for mask, value in masks:
        out[mask] = value
      return out
    if self.table is not None:
      return self.table[_table_index(frame)]
    try:
      return _to_12bit_direct(frame, **_rule_defaults(self.rule))
    except ValueError as e:
      _fail(path, f"invalid intensity parameters: {_short(e)}")


# --------------------------------------------------------------------------------------------------
# Metadata.
# --------------------------------------------------------------------------------------------------
def _norm_laterality(value) -> str:
  v = str(value or "").strip().upper()
  return v if v in ("L", "R") else ""


def _laterality(ds: Dataset) -> str:
  for kw in ("ImageLaterality", "Laterality"):
    v = _norm_laterality(ds.get(kw, ""))
    if v:
      return v
  for path in (("SharedFunctionalGroupsSequence", "FrameAnatomySequence"),
               ("PerFrameFunctionalGroupsSequence", "FrameAnatomySequence")):
    item = _first_item(ds, *path)
    if item is not None:
      v = _norm_laterality(item.get("FrameLaterality", ""))
      if v:
        return v
  return ""


def _view(ds: Dataset) -> str:
  v = str(ds.get("ViewPosition", "") or "").strip().upper()
  if v:
    return v
  item = _first_item(ds, "ViewCodeSequence")
  if item is not None:
    code = str(item.get("CodeValue", "") or "").strip()
    if code in _VIEW_CODES:
      return _VIEW_CODES[code]
    meaning = str(item.get("CodeMeaning", "") or "").strip().lower()
    return _VIEW_MEANINGS.get(meaning, "")
  return ""


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
  candidates = [ds.get("PixelSpacing", None), ds.get("ImagerPixelSpacing", None)]
  item = _first_item(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
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


def _meta(src: _Source, *, frames: int | None = None) -> DicomMeta:
  ds = src.ds
  return DicomMeta(
    rows=src.rows, cols=src.cols, frames=src.frames if frames is None else frames,
    bits_stored=src.bits_stored, photometric=src.photometric, laterality=_laterality(ds),
    view=_view(ds), manufacturer=str(ds.get("Manufacturer", "") or ""),
    sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
    transfer_syntax_uid=str(src.tsyntax), pixel_spacing=_pixel_spacing(ds))


# --------------------------------------------------------------------------------------------------
# Public readers.
# --------------------------------------------------------------------------------------------------
def read_ffdm(path, *, apply_voi_lut: bool = False) -> tuple[np.ndarray, DicomMeta]:
  """Reads a single-frame mammogram -> (uint16 [H, W] in 0..4095, DicomMeta).

  Raises:
    DicomError: with a specific reason for any input that cannot be read (see module docstring).
  """
  src = _open_source(path)
  if src.frames != 1:
    _fail(src.path, f"expected a single-frame image, found NumberOfFrames={src.frames} "
                    f"(read it as DBT)")
  rules = _rules(src, apply_voi_lut)
  mapper = _FrameMapper(rules[0])
  image = None
  for frame in _iter_frames(src):
    _check_signed(src, frame, mapper.rule)
    image = mapper.map(src.path, frame, inplace=True)
  return image, _meta(src)


class _RunningMip:
  """Running maximum of the 12-bit frames: one decoded frame + the running extreme in memory.

  While consecutive frames share a monotonic table, the running maximum (non-decreasing table) or
  minimum (non-increasing) is kept on the STORED values and mapped once; otherwise each frame is
  mapped and maximised. Both give exactly ``max_k table[frame_k]``.
  """

  def __init__(self):
    self.result = None       # uint16 running max of mapped frames
    self.pending = None      # (mapper, running stored extreme) not yet mapped
    self.frames = 0

  def _flush(self) -> None:
    if self.pending is None:
      return
    mapper, extreme = self.pending
    self._merge(mapper.table[_table_index(extreme)])
    self.pending = None

  def _merge(self, mapped: np.ndarray) -> None:
    if self.result is None:
      self.result = mapped
    else:
      np.maximum(self.result, mapped, out=self.result)

  def add(self, src: _Source, mapper: _FrameMapper, frame: np.ndarray) -> None:
    self.frames += 1
    mapper.prepare(src.path, frame)
    _check_signed(src, frame, mapper.rule)
    if self.pending is not None and (self.pending[0] is not mapper
                                     or self.pending[1].dtype != frame.dtype):
      self._flush()
    if mapper.order is None:
      self._merge(mapper.map(src.path, frame))
    elif self.pending is None:
      self.pending = (mapper, frame if frame.flags.writeable else frame.copy())
    else:
      ufunc = np.maximum if mapper.order == "max" else np.minimum
      ufunc(self.pending[1], frame, out=self.pending[1])

  def value(self) -> np.ndarray:
    self._flush()
    return self.result


def _slice_key_info(src: _Source) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
  ds = src.ds
  ipp = ds.get("ImagePositionPatient", None)
  iop = ds.get("ImageOrientationPatient", None)
  if ipp is None:
    item = _first_item(ds, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence")
    ipp = item.get("ImagePositionPatient", None) if item is not None else None
  if iop is None:
    for path in (("SharedFunctionalGroupsSequence", "PlaneOrientationSequence"),
                 ("PerFrameFunctionalGroupsSequence", "PlaneOrientationSequence")):
      item = _first_item(ds, *path)
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


def _dicom_files(directory: Path) -> list[Path]:
  files = []
  for entry in sorted(directory.iterdir()):
    if not entry.is_file() or entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
      continue
    try:
      with open(entry, "rb") as f:
        head = f.read(132)
    except OSError:
      continue
    if len(head) == 132 and head[128:132] == b"DICM":
      files.append(entry)
  return files


def _sorted_slices(directory: Path) -> list[_Source]:
  files = _dicom_files(directory)
  if not files:
    _fail(directory, "DBT slice directory holds no DICOM files")
  sources = [_open_source(p) for p in files]
  sizes: dict[tuple[int, int], list[str]] = {}
  for s in sources:
    sizes.setdefault((s.rows, s.cols), []).append(s.path.name)
  if len(sizes) > 1:
    parts = [f"{len(v)} x {r}x{c} (e.g. {v[0]})" for (r, c), v in sorted(sizes.items())]
    _fail(directory, "DBT slice directory with mixed slice sizes: " + ", ".join(parts))
  infos = [_slice_key_info(s) for s in sources]
  normal = None
  if all(ipp is not None for ipp, _, _ in infos):
    iops = [iop for _, iop, _ in infos if iop is not None]
    if iops:
      normal = np.cross(iops[0][:3], iops[0][3:])
      if not np.linalg.norm(normal) > 0:
        normal = None
  if normal is not None:
    keys = [(float(np.dot(ipp, normal)), num if num is not None else 0, s.path.name)
            for s, (ipp, _, num) in zip(sources, infos)]
  elif all(num is not None for _, _, num in infos):
    keys = [(float(num), 0, s.path.name) for s, (_, _, num) in zip(sources, infos)]
  else:
    keys = [(0.0, 0, s.path.name) for s in sources]
  order = sorted(range(len(sources)), key=lambda i: keys[i])
  return [sources[i] for i in order]


def list_dbt_slices(directory) -> list[Path]:
  """The DICOM files of a slice directory in slice order (ImagePositionPatient along the slice
  normal; InstanceNumber when positions are missing; file name last). Raises DicomError."""
  directory = Path(directory)
  if not directory.is_dir():
    _fail(directory, "not a directory" if directory.exists() else "directory not found")
  return [s.path for s in _sorted_slices(directory)]


def read_dbt_mip(path, *, apply_voi_lut: bool = False) -> tuple[np.ndarray, DicomMeta]:
  """Maximum intensity projection of a DBT volume -> (uint16 [H, W] in 0..4095, DicomMeta).

  `path`: a multi-frame file (Breast Tomosynthesis Image Storage) or a directory of single-frame
  slices (read in slice order, see `list_dbt_slices`; mixed slice sizes are rejected). Frames are
  decoded one at a time; memory holds one frame plus the running maximum. The result equals
  ``np.max`` over the volume of 12-bit frames (each frame mapped by `to_12bit` with its own file's
  parameters). `DicomMeta.frames` is the number of frames projected.
  """
  path = Path(path)
  if path.is_dir():
    sources = _sorted_slices(path)
  else:
    sources = [_open_source(path)]
  mip = _RunningMip()
  cache: dict = {}  # slices with the same parameters share one mapper (and one running extreme)

  def mapper_for(rule):
    key = _rule_key(rule)
    if key is None:
      return _FrameMapper(rule)
    if key not in cache:
      cache[key] = _FrameMapper(rule)
    return cache[key]

  for src in sources:
    mappers = [mapper_for(r) for r in _rules(src, apply_voi_lut)]
    for k, frame in enumerate(_iter_frames(src)):
      mip.add(src, mappers[k] if len(mappers) > 1 else mappers[0], frame)
  image = mip.value()
  return image, _meta(sources[0], frames=mip.frames)


def read_image(path, domain: str, **kw) -> tuple[np.ndarray, DicomMeta]:
  """`read_ffdm` for domain "ffdm", `read_dbt_mip` for "dbt"."""
  if domain == "ffdm":
    return read_ffdm(path, **kw)
  if domain == "dbt":
    return read_dbt_mip(path, **kw)
  raise ValueError(f"unknown domain {domain!r} (expected 'ffdm' or 'dbt')")


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
  laterality = _norm_laterality(laterality)
  if not laterality:
    laterality = infer_laterality(image)
  if laterality and laterality != canonical:
    return np.ascontiguousarray(image[:, ::-1])
  return image
