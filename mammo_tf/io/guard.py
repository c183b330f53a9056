"""Checks made before an input is opened or decoded: no hangs, memory bounded by the header.

* `require_regular_file(path)`: ``os.stat`` first, then only a regular file is accepted. A FIFO,
  socket or device (``/dev/zero``) is refused *before* ``open()``, which would otherwise block
  forever (a FIFO with no writer) or read without end (a device).
* `check_input(path, domain)`: a FFDM input must be a regular file; a DBT input a regular file or a
  directory (its slices are read later; entries that are not regular files are never opened). A
  Deflated Explicit VR Little Endian file is inflated as a stream to check that it stays within
  what its header declares (`inflate_deflated` with ``keep=False``: nothing is kept).
* `inflate_deflated(path, keep=True)`: bounded streaming inflate of a Deflated Explicit VR Little
  Endian file. The data set is inflated chunk by chunk; the elements before the pixel data are
  parsed as they arrive (at most `HEADER_LIMIT` bytes), which gives Rows, Columns, NumberOfFrames
  and BitsAllocated. From then on the inflated size may not pass

      (offset of the pixel data value)
        + min(declared PixelData length, Rows x Columns x Frames x BitsAllocated / 8 + one frame)
      + `TRAILER_LIMIT`

  and the file is rejected (`UnsafeInput`) as soon as it does, so a few-MB file that would inflate
  to GBs ("deflate bomb") costs at most the declared image size in memory, and a file is inflated
  only once. `read_deflated` turns the result into an in-memory pydicom data set (transfer syntax
  Explicit VR Little Endian) that `mammo_tf.io.dicom` decodes without inflating again.

`UnsafeInput` is a `ValueError` carrying ``path`` and ``reason`` (a technical reason, never a field
value or an identifier); ``transient`` marks a failure of this machine rather than of the file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
import zlib
from typing import BinaryIO

DEFLATED_UID = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE_UID = "1.2.840.10008.1.2.1"
HEADER_LIMIT = 64 << 20        # inflated bytes allowed before the pixel data element
TRAILER_LIMIT = 1 << 20        # inflated bytes allowed after the declared pixel data
_CHUNK = 1 << 16               # compressed bytes read at a time
_OUT_CHUNK = 4 << 20           # inflated bytes produced at a time
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_META_LIMIT = 1 << 20
# The only elements parsed while inflating (the size bound and duplicate detection need them).
_BOUND_TAGS = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SOPInstanceUID")


class UnsafeInput(ValueError):
  """An input refused before it is read; `str()` is ``"<path>: <reason>"``."""

  def __init__(self, path, reason: str, transient: bool = False):
    self.path = str(path)
    self.reason = str(reason)
    self.transient = bool(transient)
    super().__init__(f"{self.path}: {self.reason}")

  def __reduce__(self):  # picklable across worker processes
    return (type(self), (self.path, self.reason, self.transient))


def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                     (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                     (stat.S_ISDIR, "a directory")):
    if test(mode):
      return name
  return "not a regular file"


def require_regular_file(path, what: str = "input", *, allow_dir: bool = False) -> os.stat_result:
  """``os.stat`` (following links) and refuse anything but a regular file (or a directory)."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise UnsafeInput(path, "file not found" if what == "input" else f"{what} not found") from None
  except OSError as e:
    raise UnsafeInput(path, f"cannot stat {what} ({e.strerror or type(e).__name__})") from None
  if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
    return st
  if stat.S_ISDIR(st.st_mode) and what == "input":
    raise UnsafeInput(path, "is a directory, expected a DICOM file")
  expected = "a regular file or a directory" if allow_dir else "a regular file"
  raise UnsafeInput(path, f"{what} is {_kind(st.st_mode)}, expected {expected}")


# ----------------------------------------------------------------------------- file meta


@dataclasses.dataclass
class FileMeta:
  raw: bytes              # the group 0002 elements as stored
  transfer_syntax: str
  end: int                # file offset of the first element after group 0002


def read_file_meta(f: BinaryIO, path) -> FileMeta | None:
  """Group 0002 (always Explicit VR Little Endian) of an open file; None without a DICM marker."""
  head = f.read(132)
  if len(head) < 132 or head[128:132] != b"DICM":
    return None
  raw = bytearray()
  syntax = ""
  while len(raw) <= _META_LIMIT:
    start = f.tell()
    header = f.read(8)
    if len(header) < 8:
      break
    group, elem = struct.unpack("<HH", header[:4])
    if group != 2:
      f.seek(start)
      break
    vr = header[4:6]
    if vr in _LONG_VRS:
      more = f.read(4)
      if len(more) < 4:
        raise UnsafeInput(path, "truncated DICOM file meta information")
      (length,) = struct.unpack("<L", more)
      header += more
    else:
      (length,) = struct.unpack("<H", header[6:8])
    if length == 0xFFFFFFFF or length > _META_LIMIT:
      raise UnsafeInput(path, "corrupt DICOM file meta information (element length)")
    value = f.read(length)
    if len(value) < length:
      raise UnsafeInput(path, "truncated DICOM file meta information")
    if elem == 0x0010:
      syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
    raw += header + value
  else:
    raise UnsafeInput(path, "DICOM file meta information larger than 1 MB")
  return FileMeta(bytes(raw), syntax, f.tell())


def is_deflated(path) -> bool:
  """True when `path` is a DICOM file in the Deflated Explicit VR Little Endian syntax (False
  when its file meta cannot be read: the reader then rejects it with its own reason)."""
  try:
    with open(path, "rb") as f:
      meta = read_file_meta(f, path)
  except UnsafeInput:
    return False
  return meta is not None and meta.transfer_syntax == DEFLATED_UID


# ----------------------------------------------------------------------------- bounded inflate


class _Inflater(io.RawIOBase):
  """A read-only, seekable view of a raw deflate stream, inflated on demand up to `limit` bytes.

  With ``keep=False`` the bytes before `discard_from` stay available and later ones are only
  counted (`drain`)."""

  def __init__(self, f: BinaryIO, path, limit: int):
    super().__init__()
    self._f, self._path, self.limit = f, path, limit
    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
    self.buf = bytearray()
    self.total = 0
    self._pos = 0
    self.eof = False

  def _pump(self, keep: bool = True) -> None:
    data = self._z.unconsumed_tail
    if not data:
      data = self._f.read(_CHUNK)
      if not data:
        self.eof = True
        if not self._z.eof:
          raise UnsafeInput(self._path, "truncated deflate stream (file ends inside the data set)")
        return
    room = self.limit + 1 - self.total
    try:
      out = self._z.decompress(data, max(1, min(room, _OUT_CHUNK)))
    except zlib.error:
      raise UnsafeInput(self._path, "corrupt deflate stream") from None
    self.total += len(out)
    if self.total > self.limit:
      raise UnsafeInput(self._path, f"deflated data set inflates past {self.limit} bytes, more "
                                    "than its header allows (Rows x Columns x NumberOfFrames x "
                                    "BitsAllocated); refused")
    if keep:
      self.buf += out
    if self._z.eof:
      self.eof = True

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = 0) -> int:
    base = {0: 0, 1: self._pos}.get(whence)
    if base is None:
      raise OSError("seek from the end is not supported")
    self._pos = max(0, base + offset)
    return self._pos

  def read(self, size: int = -1) -> bytes:
    want = self._pos + size if size is not None and size >= 0 else self.limit + 1
    while len(self.buf) < want and not self.eof:
      self._pump()
    out = bytes(self.buf[self._pos:want])
    self._pos += len(out)
    return out

  def readinto(self, b) -> int:
    data = self.read(len(b))
    b[:len(data)] = data
    return len(data)

  def drain(self, keep: bool) -> None:
    while not self.eof:
      self._pump(keep)


@dataclasses.dataclass
class Inflated:
  meta: FileMeta
  header: object            # pydicom Dataset of the elements before the pixel data
  data: bytes | None        # the whole inflated data set (keep=True)
  size: int                 # inflated bytes
  limit: int                # the cap that applied


def _declared_bytes(path, header) -> tuple[int, int] | None:
  """(image bytes, one frame's bytes) from the header, or None when it does not say."""
  try:
    rows, cols = int(header.Rows), int(header.Columns)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    bits = int(header.BitsAllocated)
  except (AttributeError, KeyError, TypeError, ValueError):
    return None
  if rows <= 0 or cols <= 0 or frames <= 0 or bits <= 0:
    raise UnsafeInput(path, "invalid image dimensions in the header")
  frame = (rows * cols * bits + 7) // 8
  return frame * frames, frame


def inflate_deflated(path, *, keep: bool = True, header_limit: int = HEADER_LIMIT,
                     header_only: bool = False) -> Inflated:
  """Inflates a Deflated Explicit VR Little Endian file within the header's bound (see above).

  ``header_only``: stop at the pixel data element (``data`` None; the header's few tags only).

  Raises `UnsafeInput` when the file is not in that syntax, is corrupt, or inflates past the
  bound; `MemoryError` / `OSError` of this machine propagate.
  """
  from pydicom import filereader
  from pydicom.tag import Tag
  require_regular_file(path, "input")
  with open(path, "rb") as f:
    meta = read_file_meta(f, path)
    if meta is None or meta.transfer_syntax != DEFLATED_UID:
      raise UnsafeInput(path, "not a Deflated Explicit VR Little Endian DICOM file")
    stream = _Inflater(f, path, header_limit)
    try:
      header = filereader.read_dataset(stream, False, True,
                                       stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS,
                                       specific_tags=[Tag(k) for k in _BOUND_TAGS])
    except UnsafeInput:
      raise
    except (MemoryError, OSError):
      raise
    except Exception as e:
      raise UnsafeInput(path, f"unreadable deflated DICOM header ({type(e).__name__})") from None
    start = stream.tell()
    element = stream.read(12)
    limit = start + TRAILER_LIMIT
    if len(element) == 12 and struct.unpack("<L", element[:4])[0] == 0x00107FE0:
      (length,) = struct.unpack("<L", element[8:])
      declared = _declared_bytes(path, header)
      if length == 0xFFFFFFFF:
        raise UnsafeInput(path, "deflated file with undefined-length pixel data")
      if declared is not None:
        total, frame = declared
        if length >= total + max(frame, 2):
          raise UnsafeInput(path, f"PixelData declares {length} bytes but the header's dimensions "
                                  f"need {total}; refused")
      limit = start + 12 + length + TRAILER_LIMIT
    stream.limit = max(limit, stream.total)
    if header_only:
      return Inflated(meta=meta, header=header, data=None, size=stream.total, limit=stream.limit)
    if keep:
      stream.drain(True)
      data = bytes(stream.buf)
    else:
      stream.buf = bytearray()
      stream.drain(False)
      data = None
    return Inflated(meta=meta, header=header, data=data, size=stream.total, limit=stream.limit)


def read_deflated(path, specific_tags=None):
  """An in-memory pydicom `FileDataset` of a deflated file, inflated once within its bound.

  The data set's transfer syntax becomes Explicit VR Little Endian (what the deflated bytes are).
  """
  from pydicom import filereader
  from pydicom.dataset import FileDataset
  from pydicom.dataset import FileMetaDataset
  from pydicom.tag import Tag
  inflated = inflate_deflated(path, keep=True)
  tags = None if specific_tags is None else [Tag(t) for t in specific_tags]
  try:
    file_meta = FileMetaDataset(filereader.read_dataset(io.BytesIO(inflated.meta.raw), False, True))
    ds = filereader.read_dataset(io.BytesIO(inflated.data), False, True, specific_tags=tags)
  except (MemoryError, OSError):
    raise
  except Exception as e:
    raise UnsafeInput(path, f"unreadable deflated DICOM data set ({type(e).__name__})") from None
  file_meta.TransferSyntaxUID = EXPLICIT_LE_UID
  out = FileDataset(str(path), ds, preamble=b"\x00" * 128, file_meta=file_meta,
                    is_implicit_VR=False, is_little_endian=True)
  return out


def check_input(path, domain: str, *, inflate: bool = True) -> None:
  """Refuses non-regular inputs before any open, and deflated files that inflate past their bound.

  `domain` "ffdm": a regular file; "dbt": a regular file or a directory (each of its regular files
  that is deflated is checked too). Raises `UnsafeInput`.
  """
  st = require_regular_file(path, "input", allow_dir=(domain == "dbt"))
  if stat.S_ISDIR(st.st_mode):
    names = sorted(os.listdir(path))
    for name in names:
      entry = os.path.join(path, name)
      try:
        if not stat.S_ISREG(os.stat(entry).st_mode):
          continue
      except OSError:
        continue
      if inflate and is_deflated(entry):
        try:
          inflate_deflated(entry, keep=False)
        except UnsafeInput as e:
          raise UnsafeInput(path, f"slice file {names.index(name) + 1} of {len(names)} (in name "
                                  f"order): {e.reason}") from None
    return
  if inflate and is_deflated(path):
    inflate_deflated(path, keep=False)
