"""DICOM header reading and validation: the one place where an input file is opened. No TF.

* `open_file(path)`: opens a file for reading (binary). Every read of an input goes through it.
* `open_dataset(path) -> Header`: parses the header (only `HEADER_TAGS`, so patient names, ids and
  dates are never read) and locates the pixel data element; a deflated file is inflated here.
* `open_source(path) -> Source`: `open_dataset` plus every check that can be made before decoding
  (declared Rows x Columns x Frames x BitsAllocated against the PixelData length and the file
  size for native data, the fragment / offset-table count against NumberOfFrames for encapsulated
  data, a per-frame size limit), so huge declared dimensions are never allocated.
* `iter_frames(src)`: decodes the frames one at a time (`pydicom.pixels.iter_pixels`).
* `DicomError(path, reason)`: every rejected input; reasons never hold patient identifiers.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.pixels import iter_pixels
from pydicom.uid import UID

from mammo_tf.io import guard

# A decoded frame larger than this is refused before decoding (a 4096 x 3328 16-bit FFDM is 27 MB).
MAX_FRAME_BYTES = 1 << 30

PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
              0x7FE00009: "DoubleFloatPixelData"}
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD

# The only elements ever parsed (patient module elements are never among them).
HEADER_TAGS = [
  "SOPClassUID", "Manufacturer", "Modality", "Rows", "Columns", "NumberOfFrames",
  "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "BitsAllocated",
  "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
  "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
  "PixelPaddingValue", "PixelPaddingRangeLimit", "ImageLaterality", "Laterality", "ViewPosition",
  "ViewCodeSequence", "PixelSpacing", "ImagerPixelSpacing", "ImagePositionPatient",
  "ImageOrientationPatient", "InstanceNumber", "SharedFunctionalGroupsSequence",
  "PerFrameFunctionalGroupsSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
]


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


def fail(path, reason: str):
  """Raises `DicomError(path, reason)`."""
  raise DicomError(path, reason)


def short(e: BaseException, limit: int = 160) -> str:
  """An exception's message on one line, at most `limit` characters."""
  text = " ".join(str(e).split())
  return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------------
# Element access.
# --------------------------------------------------------------------------------------------------
def value(path, ds: Dataset, keyword: str):
  """ds.<keyword> or None; a value pydicom cannot convert is reported as a DicomError."""
  if keyword not in ds:
    return None
  try:
    v = ds[keyword].value
  except Exception as e:  # e.g. a DS/IS string that is not a number
    fail(path, f"{keyword} cannot be parsed ({type(e).__name__})")
  return None if v in (None, "") else v


def int_attr(path, ds: Dataset, keyword: str, default=None, *, required=True) -> int | None:
  """An integer element (one value); missing -> `default`, or an error when `required`."""
  v = value(path, ds, keyword)
  if v is None:
    if required and default is None:
      fail(path, f"missing {keyword}")
    return default
  if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
    if len(v) != 1:
      fail(path, f"{keyword} has {len(v)} values, expected 1 (wrong value length?)")
    v = v[0]
  try:
    return int(v)
  except (TypeError, ValueError):
    fail(path, f"{keyword} is not an integer")


def float_attr(path, where: Dataset, keyword: str, default: float) -> float:
  """A finite number element (one value); missing -> `default`."""
  v = value(path, where, keyword)
  if v is None:
    return default
  try:
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
      if len(v) != 1:
        fail(path, f"{keyword} has {len(v)} values, expected 1")
      v = v[0]
    f = float(v)
  except (TypeError, ValueError):
    fail(path, f"{keyword} is not a number")
  if not math.isfinite(f):
    fail(path, f"{keyword} is {f} (not finite)")
  return f


def first_item(ds: Dataset | None, *keywords: str) -> Dataset | None:
  """ds.K1[0].K2[0]...; None when any level is missing or empty."""
  cur = ds
  for kw in keywords:
    seq = cur.get(kw, None) if cur is not None else None
    if not seq:
      return None
    cur = seq[0]
  return cur


# --------------------------------------------------------------------------------------------------
# Opening a file.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Header:
  """A parsed header: the dataset, its transfer syntax and where the pixel data element lies."""
  ds: Dataset
  tsyntax: UID
  pixel_tag: int | None       # None: no pixel data element
  length: int | None          # pixel data value length; None = undefined length
  offset: int                 # file offset of the pixel data value (-1 for deflated files)
  in_memory: Dataset | None = None  # deflated files: the whole dataset, inflated


def open_file(path) -> BinaryIO:
  """Opens an input file for binary reading: the single place where input files are opened.

  Only a regular file is opened: ``os.stat`` first (`guard.require_regular_file`), so a FIFO or a
  device is refused instead of blocking in ``open()`` or reading without end.
  """
  try:
    guard.require_regular_file(path, "input")
  except guard.UnsafeInput as e:
    fail(path, e.reason)
  return open(path, "rb")


def _read_deflated(path: Path) -> Dataset:
  """The whole data set of a deflated file, inflated once within the size its header declares
  (`guard.read_deflated`: a deflate bomb is refused as soon as it passes that size)."""
  try:
    return guard.read_deflated(path, specific_tags=HEADER_TAGS + list(PIXEL_TAGS.values()))
  except guard.UnsafeInput as e:
    fail(path, e.reason)
  except OSError as e:
    fail(path, f"cannot read file ({e.strerror or type(e).__name__})")
  except Exception as e:
    fail(path, f"unreadable deflated DICOM ({type(e).__name__})")


def _pixel_element_header(path: Path, f: BinaryIO, tsyntax: UID) -> tuple[int | None,
                                                                         int | None, int]:
  """(pixel tag or None, value length or None, value offset) of the element at `f`'s position."""
  if not tsyntax.is_transfer_syntax:
    # Unknown UID: assume Explicit VR Little Endian for the element header (DICOM requires it of
    # every encapsulated syntax); decodability is checked later.
    little, implicit = True, False
  else:
    little, implicit = tsyntax.is_little_endian, tsyntax.is_implicit_VR
  start = f.tell()
  data = f.read(8)
  if len(data) < 8:
    return None, None, start
  e = "<" if little else ">"
  group, elem = struct.unpack(f"{e}HH", data[:4])
  tag = (group << 16) | elem
  if tag not in PIXEL_TAGS:
    return None, None, start
  if implicit:
    (length,) = struct.unpack(f"{e}L", data[4:8])
  else:
    more = f.read(4)
    if len(more) < 4:
      fail(path, "truncated pixel data element header")
    (length,) = struct.unpack(f"{e}L", more)
  return tag, (None if length == 0xFFFFFFFF else length), f.tell()


def open_dataset(path) -> Header:
  """Reads the header of one DICOM file (only `HEADER_TAGS`) and locates its pixel data.

  Raises:
    DicomError: missing file, a directory, no DICM marker, an unreadable header.
  """
  path = Path(path)
  if not path.exists():
    fail(path, "file not found")
  if path.is_dir():
    fail(path, "is a directory, expected a DICOM file")
  try:
    with open_file(path) as f:
      head = f.read(132)
      if len(head) < 132 or head[128:132] != b"DICM":
        fail(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
      if guard.is_deflated(path):   # never let pydicom inflate it whole, unbounded
        in_memory = _read_deflated(path)
        tag = next((t for t in PIXEL_TAGS if t in in_memory), None)
        length = len(in_memory[tag].value or b"") if tag is not None else None
        return Header(in_memory, UID(guard.DEFLATED_UID), tag, length, -1, in_memory)
      f.seek(0)
      try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=HEADER_TAGS)
      except (InvalidDicomError, EOFError, struct.error) as e:
        fail(path, f"unreadable DICOM header ({type(e).__name__})")
      tsyntax = ds.file_meta.get("TransferSyntaxUID", None)
      if not tsyntax:
        fail(path, "unreadable DICOM file meta information (no TransferSyntaxUID)")
      tsyntax = UID(str(tsyntax))
      if not (tsyntax.is_transfer_syntax and tsyntax.is_deflated):
        tag, length, offset = _pixel_element_header(path, f, tsyntax)
        return Header(ds, tsyntax, tag, length, offset)
  except DicomError:
    raise
  except OSError as e:
    fail(path, f"cannot read file ({e.strerror or type(e).__name__})")
  except Exception as e:  # any other parsing failure of a corrupt header
    fail(path, f"unreadable DICOM header ({type(e).__name__})")
  in_memory = _read_deflated(path)
  tag = next((t for t in PIXEL_TAGS if t in in_memory), None)
  length = len(in_memory[tag].value or b"") if tag is not None else None
  return Header(ds, tsyntax, tag, length, -1, in_memory)


def _scan_fragments(path: Path, offset: int, file_size: int) -> tuple[int, int]:
  """Walks the item headers of encapsulated pixel data -> (BOT entries, fragment count)."""
  with open_file(path) as f:
    f.seek(offset)
    pos, n_frag, n_bot, first = offset, 0, 0, True
    while True:
      header = f.read(8)
      if len(header) < 8:
        fail(path, "truncated encapsulated pixel data (no sequence delimiter before end of file)")
      group, elem, length = struct.unpack("<HHL", header)
      tag = (group << 16) | elem
      if tag == _SEQ_DELIM:
        break
      if tag != _ITEM:
        fail(path, f"corrupt encapsulated pixel data (unexpected tag {tag:08X} at byte {pos})")
      if length == 0xFFFFFFFF:
        fail(path, "corrupt encapsulated pixel data (undefined item length)")
      if pos + 8 + length > file_size:
        fail(path, f"truncated encapsulated pixel data (an item of {length} bytes runs past the "
                   f"end of the file)")
      if first:
        n_bot = length // 4
        first = False
      else:
        n_frag += 1
      pos += 8 + length
      f.seek(pos)
  if first:
    fail(path, "corrupt encapsulated pixel data (no Basic Offset Table item)")
  return n_bot, n_frag


# --------------------------------------------------------------------------------------------------
# A checked source.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Source:
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


def _pixel_description(path: Path, ds: Dataset) -> tuple[int, ...]:
  """(rows, cols, frames, bits_allocated, bits_stored, pixel_representation), checked."""
  rows = int_attr(path, ds, "Rows")
  cols = int_attr(path, ds, "Columns")
  frames = int_attr(path, ds, "NumberOfFrames", 1, required=False)
  if rows <= 0 or cols <= 0 or frames <= 0:
    fail(path, f"invalid dimensions Rows={rows} Columns={cols} NumberOfFrames={frames}")
  bits_allocated = int_attr(path, ds, "BitsAllocated")
  bits_stored = int_attr(path, ds, "BitsStored", bits_allocated, required=False)
  pixel_representation = int_attr(path, ds, "PixelRepresentation", 0, required=False)
  if bits_allocated not in (8, 16, 32):
    fail(path, f"BitsAllocated={bits_allocated} is not supported (8, 16 or 32)")
  if not 1 <= bits_stored <= bits_allocated:
    fail(path, f"BitsStored={bits_stored} is not in 1..BitsAllocated ({bits_allocated})")
  if pixel_representation not in (0, 1):
    fail(path, f"PixelRepresentation={pixel_representation} is neither 0 (unsigned) nor 1 "
               f"(signed)")
  return rows, cols, frames, bits_allocated, bits_stored, pixel_representation


def _check_native(path: Path, h: Header, file_size: int, frame_bytes: int, frames: int,
                  dims: str) -> None:
  length, total = h.length, frame_bytes * frames
  if length is None:
    fail(path, "native (uncompressed) pixel data with undefined length")
  if h.in_memory is None and h.offset + length > file_size:
    fail(path, f"truncated pixel data: PixelData declares {length} bytes but the file holds "
               f"only {max(file_size - h.offset, 0)}")
  if length < total:
    held = length // frame_bytes
    if frames > 1 and length % frame_bytes == 0 and held >= 1:
      fail(path, f"frame-count mismatch: NumberOfFrames={frames} but PixelData holds {held} "
                 f"frame(s)")
    fail(path, f"declared dimensions {dims} need {total} bytes but PixelData holds {length}")
  if length >= total + frame_bytes:
    fail(path, f"frame-count mismatch: NumberOfFrames={frames} but PixelData holds "
               f"{length // frame_bytes} frame(s)")


def _check_encapsulated(path: Path, h: Header, file_size: int, frames: int) -> None:
  tsyntax, ds = h.tsyntax, h.ds
  try:
    decoder = get_decoder(tsyntax)
  except NotImplementedError:
    name = tsyntax.name if tsyntax.is_transfer_syntax else "unknown"
    fail(path, f"unsupported transfer syntax {tsyntax} ({name}): no decoder available")
  if not decoder.is_available:
    fail(path, f"unsupported transfer syntax {tsyntax} ({tsyntax.name}): no decoder plugin "
               f"installed ({'; '.join(decoder.missing_dependencies)})")
  if h.in_memory is not None:
    return
  if h.length is not None:
    fail(path, f"compressed transfer syntax {tsyntax.name} with defined-length (not "
               f"encapsulated) pixel data")
  n_bot, n_frag = _scan_fragments(path, h.offset, file_size)
  if n_frag == 0:
    fail(path, "encapsulated pixel data holds no fragments")
  if "ExtendedOffsetTable" in ds and ds["ExtendedOffsetTable"].value:
    n_eot = len(ds["ExtendedOffsetTable"].value) // 8
    if n_eot != frames:
      fail(path, f"frame-count mismatch: NumberOfFrames={frames} but the Extended Offset "
                 f"Table lists {n_eot} frame(s)")
  elif n_bot and n_bot != frames:
    fail(path, f"frame-count mismatch: NumberOfFrames={frames} but the Basic Offset Table "
               f"lists {n_bot} frame(s)")
  elif n_frag < frames:
    fail(path, f"frame-count mismatch: NumberOfFrames={frames} but the pixel data holds "
               f"{n_frag} fragment(s)")


def open_source(path) -> Source:
  """Reads and checks the header of one DICOM file; decodes nothing."""
  path = Path(path)
  h = open_dataset(path)
  ds = h.ds
  file_size = path.stat().st_size
  if h.pixel_tag is None:
    fail(path, "no PixelData element")
  if h.pixel_tag != 0x7FE00010:
    fail(path, f"float pixel data ({PIXEL_TAGS[h.pixel_tag]}) is not supported")
  samples = int_attr(path, ds, "SamplesPerPixel", 1, required=False)
  photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
  if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
    fail(path, f"colour image (SamplesPerPixel={samples}, PhotometricInterpretation="
               f"{photometric or 'missing'}); only MONOCHROME1/MONOCHROME2 greyscale is supported")
  rows, cols, frames, bits_allocated, bits_stored, pixel_rep = _pixel_description(path, ds)
  frame_bytes = rows * cols * (bits_allocated // 8)
  if frame_bytes > MAX_FRAME_BYTES:
    fail(path, f"declared frame size {rows} x {cols} x {bits_allocated} bits "
               f"({frame_bytes} bytes) exceeds the limit of {MAX_FRAME_BYTES} bytes")
  dims = f"{rows} x {cols} x {frames} frame(s) x {bits_allocated} bits"
  if h.tsyntax.is_transfer_syntax and not h.tsyntax.is_encapsulated:
    _check_native(path, h, file_size, frame_bytes, frames, dims)
  else:
    _check_encapsulated(path, h, file_size, frames)
  return Source(path=path, ds=ds, tsyntax=h.tsyntax, rows=rows, cols=cols, frames=frames,
                bits_allocated=bits_allocated, bits_stored=bits_stored,
                pixel_representation=pixel_rep, photometric=photometric, in_memory=h.in_memory)


def iter_frames(src: Source) -> Iterator[np.ndarray]:
  """Decodes the frames one at a time (pydicom), checking the count and shape."""
  count = 0
  expected_shape = (src.rows, src.cols)
  handle = None
  try:
    if src.in_memory is not None:
      iterator = iter_pixels(src.in_memory)
    else:
      handle = open_file(src.path)
      iterator = iter_pixels(handle)
  except OSError as e:
    fail(src.path, f"cannot read file ({e.strerror or type(e).__name__})")
  try:
    while True:
      try:
        frame = next(iterator)
      except StopIteration:
        break
      except OSError as e:
        fail(src.path, f"cannot read file ({e.strerror or type(e).__name__})")
      except Exception as e:  # decoder failures: corrupt codestreams
        fail(src.path, f"cannot decode frame {count} ({src.tsyntax.name}): "
                       f"{type(e).__name__}: {short(e)}")
      if frame.shape != expected_shape:
        fail(src.path, f"decoded frame {count} has shape {frame.shape}, expected "
                       f"{expected_shape}")
      count += 1
      if count > src.frames:
        fail(src.path, f"frame-count mismatch: NumberOfFrames={src.frames} but the pixel data "
                       f"holds more frames")
      yield frame
  finally:
    iterator.close()
    if handle is not None:
      handle.close()
  if count != src.frames:
    fail(src.path, f"frame-count mismatch: NumberOfFrames={src.frames} but the pixel data holds "
                   f"{count} frame(s)")
