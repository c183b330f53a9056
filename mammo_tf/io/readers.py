"""Readers: FFDM -> 12-bit image, DBT (multi-frame file or slice folder) -> 12-bit MIP. No TF.

Frames are decoded one at a time (`header.iter_frames`); memory holds one decoded frame plus the
running extreme. The intensity rule (`rules`: auto | window | range | bits) is chosen once per
image or volume.

DBT MIP and the mapping. For ``window`` and ``bits`` the mapping F is known before decoding; the
MIP is ``max_k F(frame_k)``. When F's lookup table is monotonic (non-decreasing for MONOCHROME2,
non-increasing for MONOCHROME1, padding mapping to 0 at the dark end) that equals F(max) or F(min)
of the stored values, so the running extreme is kept on stored values and mapped once; otherwise
every frame is mapped and maximised. For ``range`` F is only known after the last frame (the used
range of the whole volume); F is then a monotonic function of the modality value v (increasing
for MONOCHROME2, decreasing for MONOCHROME1), so the MIP is F(max_k v_k) (F(min_k v_k)) with
padding treated as the value that maps to 0. The running extreme is kept as a rank in the sorted
values of the frame's lookup domain (uint16), in modality values (float64) only while frames with
different rescales are mixed. Either way the result is exactly ``max_k F(frame_k)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo_tf.config import MAX_INTENSITY
from mammo_tf.io import header
from mammo_tf.io import metadata
from mammo_tf.io import rules as rules_lib
from mammo_tf.io.header import DicomError
from mammo_tf.io.header import Source
from mammo_tf.io.header import fail
from mammo_tf.io.intensity import FrameMapper
from mammo_tf.io.intensity import IntensityRule
from mammo_tf.io.intensity import table_domain
from mammo_tf.io.intensity import table_index
from mammo_tf.io.metadata import DicomMeta


def _check_signed(src: Source, frame: np.ndarray, rule: IntensityRule) -> None:
  """Signed data without a modality transform must not hold negative (non-padding) values."""
  if src.pixel_representation != 1 or rule.has_modality_transform:
    return
  neg = frame < 0
  pad = rule.padding(frame)
  if pad is not None:
    neg &= ~pad
  if neg.any():
    fail(src.path, f"signed pixel data (PixelRepresentation=1) with negative stored values "
                   f"(min {int(frame[neg].min())}) and no rescale or Modality LUT: cannot map to "
                   f"0..{MAX_INTENSITY}")


def _final_rules(src: Source, choice: rules_lib.Choice) -> list[IntensityRule]:
  base = rules_lib.stored_rules(src)
  if choice.kind == "window":
    return [rules_lib.with_voi(r, choice.voi) for r in base]
  return base


# --------------------------------------------------------------------------------------------------
# FFDM.
# --------------------------------------------------------------------------------------------------
def _frame_range(src: Source, rule: IntensityRule, frame: np.ndarray) -> tuple[float, float]:
  """The robust used range (`rules.RANGE_PERCENTILES`) of one frame's non-padding values."""
  stats = _RangeStats()
  stats.add(rule, frame)
  return stats.range(src)


def read_ffdm(path, *, intensity: str = "auto", voi_index: int = 0,
              apply_voi_lut: bool = False) -> tuple[np.ndarray, DicomMeta]:
  """Reads a single-frame mammogram -> (uint16 [H, W] in 0..4095, DicomMeta).

  Args:
    path: a DICOM file.
    intensity: "auto" | "window" | "range" | "bits" (`mammo_tf.io.rules`).
    voi_index: which window / VOI LUT to apply (0 = the first).
    apply_voi_lut: legacy switch of the "bits" rule (apply the VOI when present).

  Raises:
    DicomError: with a specific reason for any input that cannot be read.
  """
  rules_lib.check_rule_name(intensity)
  src = header.open_source(path)
  if src.frames != 1:
    fail(src.path, f"expected a single-frame image, found NumberOfFrames={src.frames} "
                   f"(read it as DBT)")
  choice = rules_lib.choose(src, intensity, voi_index, apply_voi_lut)
  rule = _final_rules(src, choice)[0]
  image = None
  for frame in header.iter_frames(src):
    _check_signed(src, frame, rule)
    if choice.kind == "range":
      rule = rules_lib.with_range(rule, *_frame_range(src, rule, frame))
    image = FrameMapper(rule).map(src.path, frame, inplace=True)
  return image, metadata.meta(src)


# --------------------------------------------------------------------------------------------------
# Running MIPs.
# --------------------------------------------------------------------------------------------------
class _RunningMip:
  """Running maximum of 12-bit frames mapped by KNOWN rules (``window`` / ``bits``).

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
    self._merge(mapper.table[table_index(extreme)])
    self.pending = None

  def _merge(self, mapped: np.ndarray) -> None:
    if self.result is None:
      self.result = mapped
    else:
      np.maximum(self.result, mapped, out=self.result)

  def add(self, src: Source, mapper: FrameMapper, frame: np.ndarray) -> None:
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


class _RangeStats:
  """Streaming histogram of non-padding modality values, per (rule, stored dtype)."""

  def __init__(self):
    self.counts: dict = {}
    self.extremes: list[tuple[float, float]] = []  # 32-bit frames: (min, max)

  def add(self, rule: IntensityRule, frame: np.ndarray) -> None:
    if frame.dtype.itemsize <= 2:
      key = (rule, frame.dtype)
      n = 2 ** (8 * frame.dtype.itemsize)
      counts = np.bincount(table_index(frame).ravel(), minlength=n)
      if key in self.counts:
        self.counts[key] += counts
      else:
        self.counts[key] = counts.astype(np.int64)
      return
    pad = rule.padding(frame)
    v = rule.modality(frame if pad is None else frame[~pad])
    if v.size:
      self.extremes.append((float(v.min()), float(v.max())))

  def range(self, src: Source) -> tuple[float, float]:
    values, counts = [], []
    for (rule, dtype), c in self.counts.items():
      domain = table_domain(dtype)
      pad = rule.padding(domain)
      if pad is not None:
        c = np.where(pad, 0, c)
      values.append(rule.modality(domain))
      counts.append(c)
    for lo, hi in self.extremes:  # 32-bit data: its minimum and maximum
      values.append(np.array([lo, hi]))
      counts.append(np.array([1, 1]))
    pair = None
    if values:
      pair = rules_lib.weighted_percentiles(np.concatenate(values), np.concatenate(counts))
    if pair is None:
      fail(src.path, "no pixel outside the padding value: nothing to map")
    return pair


class _ValueMip:
  """Running extreme of modality values for the ``range`` rule (see the module docstring)."""

  def __init__(self, photometric: str):
    self.up = photometric == "MONOCHROME2"   # F increasing in v: keep the maximum
    self.stats = _RangeStats()
    self.tables: dict = {}
    self.key = None          # rank mode: the (rule, dtype) of every frame so far
    self.rank = None         # uint16/uint32 running rank extreme
    self.values = None       # float64 running extreme (mixed rules)
    self.frames = 0

  def _tables(self, key):
    """(order values over the lookup domain, their ranks, the values sorted by rank)."""
    if key not in self.tables:
      rule, dtype = key
      domain = table_domain(dtype)
      o = rule.modality(domain)
      pad = rule.padding(domain)
      if pad is not None:
        o[pad] = -np.inf if self.up else np.inf
      order = np.argsort(o if self.up else -o, kind="stable")
      ranks = np.empty(len(o), np.uint16 if len(o) <= 65536 else np.uint32)
      ranks[order] = np.arange(len(o))
      self.tables[key] = (o, ranks, o[order])
    return self.tables[key]

  def _to_values(self) -> None:
    if self.rank is not None:
      self.values = self._tables(self.key)[2][self.rank]
      self.rank, self.key = None, "mixed"

  def _merge_values(self, o: np.ndarray) -> None:
    self._to_values()
    if self.values is None:
      self.values = o.astype(np.float64, copy=True)
      self.key = "mixed"
    else:
      (np.maximum if self.up else np.minimum)(self.values, o, out=self.values)

  def add(self, src: Source, rule: IntensityRule, frame: np.ndarray) -> None:
    self.frames += 1
    if frame.dtype.kind not in "ui":
      fail(src.path, f"decoded pixel data has non-integer dtype {frame.dtype}")
    _check_signed(src, frame, rule)
    self.stats.add(rule, frame)
    if frame.dtype.itemsize > 2:
      o = rule.modality(frame)
      pad = rule.padding(frame)
      if pad is not None:
        o[pad] = -np.inf if self.up else np.inf
      self._merge_values(o)
      return
    key = (rule, frame.dtype)
    o, ranks, _ = self._tables(key)
    idx = table_index(frame)
    if self.key is None:
      self.key, self.rank = key, ranks[idx]
    elif self.key == key:
      np.maximum(self.rank, ranks[idx], out=self.rank)
    else:
      self._merge_values(o[idx])

  def value(self, src: Source, rule: IntensityRule) -> np.ndarray:
    """The MIP mapped by `rule` with the volume's used range."""
    final = rules_lib.with_range(rule, *self.stats.range(src))
    if self.rank is not None:
      return final.present(self._tables(self.key)[2])[self.rank]
    out = np.empty(self.values.shape, np.uint16)
    for r in range(0, out.shape[0], 64):  # bounded temporaries
      out[r:r + 64] = final.present(self.values[r:r + 64])
    return out


# --------------------------------------------------------------------------------------------------
# DBT.
# --------------------------------------------------------------------------------------------------
def _dicom_files(directory: Path) -> list[Path]:
  files = []
  for entry in sorted(directory.iterdir()):
    if not entry.is_file() or entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
      continue
    try:
      with header.open_file(entry) as f:
        head = f.read(132)
    except OSError:
      continue
    if len(head) == 132 and head[128:132] == b"DICM":
      files.append(entry)
  return files


class _SliceError(DicomError):
  """A slice of a folder failed: names the folder and the slice's position, never its path."""

  def __init__(self, path, reason: str):
    super().__init__(path, reason)


def _slice_failure(directory: Path, k: int, n: int, e: DicomError) -> DicomError:
  return _SliceError(directory, f"slice {k + 1} of {n}: {e.reason}")


def _slice_order(sources: list[Source]) -> list[int]:
  infos = [metadata.slice_position(s.ds) for s in sources]
  normal = None
  if all(ipp is not None for ipp, _, _ in infos):
    iops = [iop for _, iop, _ in infos if iop is not None]
    if iops:
      normal = np.cross(iops[0][:3], iops[0][3:])
      if not np.linalg.norm(normal) > 0:
        normal = None
  if normal is not None:
    keys = [(float(np.dot(ipp, normal)), num if num is not None else 0, i)
            for i, (ipp, _, num) in enumerate(infos)]
  elif all(num is not None for _, _, num in infos):
    keys = [(float(num), 0, i) for i, (_, _, num) in enumerate(infos)]
  else:
    keys = [(0.0, 0, i) for i in range(len(sources))]
  return sorted(range(len(sources)), key=lambda i: keys[i])


def _sorted_slices(directory: Path) -> tuple[list[Source], list[int]]:
  """(sources in slice order, each one's position in the folder's name order)."""
  files = _dicom_files(directory)
  if not files:
    fail(directory, "DBT slice directory holds no DICOM files")
  sources = []
  for k, p in enumerate(files):
    try:
      sources.append(header.open_source(p))
    except DicomError as e:
      raise _slice_failure(directory, k, len(files), e) from None
  sizes: dict[tuple[int, int], list[int]] = {}
  for k, s in enumerate(sources):
    sizes.setdefault((s.rows, s.cols), []).append(k + 1)
  if len(sizes) > 1:
    parts = [f"{len(v)} x {r}x{c} (e.g. slice {v[0]} of {len(files)})"
             for (r, c), v in sorted(sizes.items())]
    fail(directory, "DBT slice directory with mixed slice sizes: " + ", ".join(parts))
  order = _slice_order(sources)
  return [sources[i] for i in order], order


def list_dbt_slices(directory) -> list[Path]:
  """The DICOM files of a slice directory in slice order (ImagePositionPatient along the slice
  normal; InstanceNumber when positions are missing; file name last). Raises DicomError."""
  directory = Path(directory)
  if not directory.is_dir():
    fail(directory, "not a directory" if directory.exists() else "directory not found")
  return [s.path for s in _sorted_slices(directory)[0]]


def _volume_sources(path: Path) -> tuple[list[Source], list[int] | None]:
  if path.is_dir():
    return _sorted_slices(path)
  return [header.open_source(path)], None


def _mip_known(sources: list[Source], choice: rules_lib.Choice, frames_of) -> np.ndarray:
  """MIP for a rule known before decoding (window, bits)."""
  mip = _RunningMip()
  cache: dict = {}  # frames with the same rule share one mapper (and one running extreme)
  for i, src in enumerate(sources):
    mappers = [cache.setdefault(r, FrameMapper(r)) for r in _final_rules(src, choice)]
    for k, frame in enumerate(frames_of(i, src)):
      mip.add(src, mappers[k] if len(mappers) > 1 else mappers[0], frame)
  return mip.value()


def _mip_range(sources: list[Source], frames_of) -> np.ndarray:
  """MIP for the range rule: one used range for the whole volume."""
  first = sources[0]
  mip = _ValueMip(first.photometric)
  for i, src in enumerate(sources):
    if src.photometric != first.photometric:
      fail(src.path, "DBT volume mixes MONOCHROME1 and MONOCHROME2 frames")
    rules = rules_lib.stored_rules(src)
    for k, frame in enumerate(frames_of(i, src)):
      mip.add(src, rules[k] if len(rules) > 1 else rules[0], frame)
  return mip.value(first, rules_lib.stored_rules(first)[0])


def read_dbt_mip(path, *, intensity: str = "auto", voi_index: int = 0,
                 apply_voi_lut: bool = False) -> tuple[np.ndarray, DicomMeta]:
  """Maximum intensity projection of a DBT volume -> (uint16 [H, W] in 0..4095, DicomMeta).

  `path`: a multi-frame file (Breast Tomosynthesis Image Storage) or a directory of single-frame
  slices (read in slice order, see `list_dbt_slices`; mixed slice sizes are rejected; an error in
  a slice names its position in the folder, "slice 7 of 40: ..."). Frames are decoded one at a
  time. ONE mapping per volume (`intensity`, `voi_index` as in `read_ffdm`; the VOI of the first
  frame / slice, or the used range of all frames), and the result equals ``np.max`` over the
  volume of the 12-bit frames under that mapping. `DicomMeta.frames` is the number of frames.
  """
  rules_lib.check_rule_name(intensity)
  path = Path(path)
  sources, folder_pos = _volume_sources(path)
  n_files = len(sources)
  counted = [0]

  def frames_of(_: int, src: Source):
    for frame in header.iter_frames(src):
      counted[0] += 1
      yield frame

  try:
    choice = rules_lib.choose(sources[0], intensity, voi_index, apply_voi_lut)
    if choice.kind == "range":
      image = _mip_range(sources, frames_of)
    else:
      image = _mip_known(sources, choice, frames_of)
  except DicomError as e:
    if folder_pos is None or isinstance(e, _SliceError):
      raise
    where = [i for i, s in enumerate(sources) if str(s.path) == e.path]
    if not where:
      raise DicomError(path, e.reason) from None
    raise _slice_failure(path, folder_pos[where[0]], n_files, e) from None
  return image, metadata.meta(sources[0], frames=counted[0])


def read_image(path, domain: str, **kw) -> tuple[np.ndarray, DicomMeta]:
  """`read_ffdm` for domain "ffdm", `read_dbt_mip` for "dbt" (keyword arguments passed on)."""
  if domain == "ffdm":
    return read_ffdm(path, **kw)
  if domain == "dbt":
    return read_dbt_mip(path, **kw)
  raise ValueError(f"unknown domain {domain!r} (expected 'ffdm' or 'dbt')")
