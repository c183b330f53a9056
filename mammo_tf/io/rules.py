"""Which intensity rule a file gets: `auto` (default), `window`, `range` or `bits`. No TF.

Every rule first applies the padding value / range and the modality LUT (RescaleSlope/Intercept,
or a Modality LUT Sequence; at the top level, in the shared or in the per-frame functional
groups), then maps the modality values onto 0..4095 (`intensity.IntensityRule`):

* ``window``: the file's VOI (Window Center/Width with VOILUTFunction LINEAR, LINEAR_EXACT or
  SIGMOID, or a VOI LUT Sequence; at the top level or in the functional groups), entry
  ``voi_index`` (0 = the first) of the multi-valued window or of the LUT sequence, as PS3.3
  C.11.2.1 defines it (`voi`); the window's output range becomes 0..4095, a LUT's used output
  range (its smallest..largest entry) likewise. A file without a VOI is rejected.
* ``range``: the image's own robust used range: the `RANGE_PERCENTILES` (0.05th and 99.95th
  percentiles, ``inverted_cdf``) of its non-padding modality values map to 0 and 4095 (values
  beyond are clipped). Ignores the VOI. Hot or dead pixels and thin lines do not set the range; a
  burnt-in label larger than 0.05 % of the image may set its top.
* ``auto``: ``window`` when the file carries a VOI, else ``range``.
* ``bits``: ``[0, 2**BitsStored - 1]`` (a Modality LUT Sequence: its output bit range) maps to
  0..4095 and the VOI is ignored: the rule before VOI support, bit for bit. With the legacy
  ``apply_voi_lut=True`` the VOI is applied when present.

MONOCHROME1 is inverted (about the VOI output or the used range) so that dense tissue is bright
in every output; padding pixels are exactly 0. A DBT volume gets ONE mapping: the VOI of its first
frame (or first slice) or the used range of all its frames.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mammo_tf.io.header import Source
from mammo_tf.io.header import fail
from mammo_tf.io.header import first_item
from mammo_tf.io.header import float_attr
from mammo_tf.io.header import int_attr
from mammo_tf.io.header import short
from mammo_tf.io.intensity import IntensityRule
from mammo_tf.io.voi import FUNCTIONS
from mammo_tf.io.voi import Lut
from mammo_tf.io.voi import Window

INTENSITY_RULES = ("auto", "window", "range", "bits")
RANGE_PERCENTILES = (0.05, 99.95)


def check_rule_name(intensity: str) -> str:
  """`intensity` if it is one of `INTENSITY_RULES`, else ValueError."""
  if intensity not in INTENSITY_RULES:
    raise ValueError(f"unknown intensity rule {intensity!r}; choose one of "
                     f"{', '.join(INTENSITY_RULES)}")
  return intensity


# --------------------------------------------------------------------------------------------------
# Padding and modality LUT (the stored part of every rule).
# --------------------------------------------------------------------------------------------------
def lut_item(src: Source, item: Dataset) -> Lut:
  """A VOI or Modality LUT Sequence item as a `Lut`."""
  try:
    n, first_map, bits = (int(x) for x in item.LUTDescriptor)
    data = item["LUTData"]
    n = n or 65536  # PS3.3 C.11.1.1.1: 0 means 2**16 entries
    if isinstance(data.value, (bytes, bytearray)):
      little = src.tsyntax.is_little_endian if src.tsyntax.is_transfer_syntax else True
      table = np.frombuffer(data.value, dtype="<u2" if little else ">u2")[:n]
    else:
      v = data.value
      table = np.asarray([v] if isinstance(v, int) else list(v), dtype=np.int64)[:n]
  except Exception as e:
    fail(src.path, f"invalid LUT in the VOI/Modality LUT Sequence ({type(e).__name__})")
  if len(table) < n or not 1 <= bits <= 16:
    fail(src.path, f"invalid LUT: descriptor says {n} entries of {bits} bits, data has "
                   f"{len(table)}")
  if first_map >= 2 ** 15 and src.pixel_representation == 1:
    first_map -= 2 ** 16  # US-encoded negative first value for signed data
  return Lut(first_mapped=first_map, data=tuple(int(x) for x in table), bits=bits)


def _rescale_sources(src: Source) -> list[Dataset | None]:
  """Where the rescale of each frame lives: shared group, per-frame groups or the top level."""
  ds = src.ds
  shared = first_item(ds, "SharedFunctionalGroupsSequence", "PixelValueTransformationSequence")
  if shared is not None:
    return [shared]
  per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
  if per_frame:
    items = [first_item(item, "PixelValueTransformationSequence") for item in per_frame]
    if any(it is not None for it in items):
      if len(items) != src.frames:
        fail(src.path, f"frame-count mismatch: NumberOfFrames={src.frames} but "
                       f"PerFrameFunctionalGroupsSequence has {len(items)} item(s)")
      return items
  return [ds]


def _padding(src: Source) -> tuple[int | None, int | None]:
  ds, path = src.ds, src.path
  if "PixelPaddingValue" not in ds:
    return None, None
  padding = int_attr(path, ds, "PixelPaddingValue")
  limit = int_attr(path, ds, "PixelPaddingRangeLimit") if "PixelPaddingRangeLimit" in ds else None
  if src.pixel_representation == 1:  # a US-encoded padding value for signed data
    half = 2 ** (src.bits_allocated - 1)
    padding = padding - 2 * half if padding >= half else padding
    if limit is not None and limit >= half:
      limit -= 2 * half
  return padding, limit


def stored_rules(src: Source) -> list[IntensityRule]:
  """The `bits` rule of each frame (one rule when all frames share it): padding + modality LUT."""
  ds, path = src.ds, src.path
  padding, limit = _padding(src)
  modality = lut_item(src, ds.ModalityLUTSequence[0]) if ds.get("ModalityLUTSequence") else None
  rules = []
  for where in _rescale_sources(src):
    if modality is not None:
      rules.append(IntensityRule(
          bits_stored=src.bits_stored, photometric=src.photometric, padding_value=padding,
          padding_range_limit=limit, modality_lut=modality,
          value_range=(0.0, float(2 ** modality.bits - 1))))
      continue
    where = where if where is not None else ds
    slope = float_attr(path, where, "RescaleSlope", 1.0)
    intercept = float_attr(path, where, "RescaleIntercept", 0.0)
    if slope == 0.0:
      fail(path, "RescaleSlope is 0")
    rules.append(IntensityRule(bits_stored=src.bits_stored, photometric=src.photometric,
                               slope=slope, intercept=intercept, padding_value=padding,
                               padding_range_limit=limit))
  if len(set(rules)) == 1:
    rules = rules[:1]
  return rules


# --------------------------------------------------------------------------------------------------
# VOI.
# --------------------------------------------------------------------------------------------------
def _voi_source(ds: Dataset) -> Dataset | None:
  if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
    return ds
  for path in (("SharedFunctionalGroupsSequence", "FrameVOILUTSequence"),
               ("PerFrameFunctionalGroupsSequence", "FrameVOILUTSequence")):
    item = first_item(ds, *path)
    if item is not None:
      return item
  return None


def _as_list(v) -> list:
  return list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]


def _window(src: Source, where: Dataset, index: int) -> Window:
  try:
    centers = _as_list(where.WindowCenter)
    widths = _as_list(where.WindowWidth)
  except Exception as e:  # a DS string that is not a number
    fail(src.path, f"WindowCenter/WindowWidth cannot be parsed ({type(e).__name__})")
  count = min(len(centers), len(widths))
  if index >= count:
    fail(src.path, f"VOI window index {index} but the file has {count} window(s)")
  function = str(where.get("VOILUTFunction", "") or "LINEAR").strip().upper()
  if function not in FUNCTIONS:
    fail(src.path, f"VOILUTFunction {function!r} is not one of {', '.join(FUNCTIONS)}")
  try:
    center, width = float(centers[index]), float(widths[index])
  except (TypeError, ValueError):
    fail(src.path, "WindowCenter/WindowWidth is not a number")
  if not (math.isfinite(center) and math.isfinite(width)):
    fail(src.path, f"WindowCenter/WindowWidth is not a finite number ({center}/{width})")
  try:
    return Window(center=center, width=width, function=function)
  except ValueError as e:
    fail(src.path, f"invalid VOI window: {short(e)}")


def file_voi(src: Source, index: int = 0) -> Window | Lut | None:
  """The VOI transform number `index` of a file (LUT Sequence first, then the window), or None."""
  if index < 0:
    fail(src.path, f"VOI window index must be >= 0, got {index}")
  where = _voi_source(src.ds)
  if where is None:
    return None
  luts = where.get("VOILUTSequence", None)
  if luts and luts[0].get("LUTDescriptor") is not None and luts[0].get("LUTData") is not None:
    if index >= len(luts):
      fail(src.path, f"VOI window index {index} but the file has {len(luts)} VOI LUT(s)")
    return lut_item(src, luts[index])
  if "WindowCenter" in where and "WindowWidth" in where:
    return _window(src, where, index)
  return None


@dataclasses.dataclass(frozen=True)
class Choice:
  """The mapping chosen for a file or volume: "window" (with its VOI), "range" or "bits"."""
  kind: str
  voi: Window | Lut | None = None


def choose(src: Source, intensity: str, voi_index: int, apply_voi_lut: bool = False) -> Choice:
  """Resolves `intensity` (auto/window/range/bits) for the file `src` (see the module docstring)."""
  check_rule_name(intensity)
  if intensity == "range":
    return Choice("range")
  if intensity == "bits" and not apply_voi_lut:
    return Choice("bits")
  voi = file_voi(src, voi_index)
  if voi is not None:
    return Choice("window", voi)
  if intensity == "window":
    fail(src.path, "intensity rule 'window' but the file has no VOI (Window Center/Width or VOI "
                   "LUT Sequence); use 'auto' or 'range'")
  return Choice("range" if intensity == "auto" else "bits")


def with_voi(rule: IntensityRule, voi: Window | Lut) -> IntensityRule:
  """`rule` with the VOI applied and its output range mapped onto 0..4095."""
  return dataclasses.replace(rule, voi=voi, value_range=voi.output_range)


def with_range(rule: IntensityRule, lo: float, hi: float) -> IntensityRule:
  """`rule` mapping modality values ``[lo, hi]`` onto 0..4095 (no VOI)."""
  if not hi > lo:
    hi = lo + 1.0  # a flat image: everything at or below lo
  return dataclasses.replace(rule, voi=None, value_range=(float(lo), float(hi)))


def weighted_percentiles(values: np.ndarray, counts: np.ndarray,
                         q=RANGE_PERCENTILES) -> tuple[float, float] | None:
  """`np.percentile(..., method="inverted_cdf")` of `values` repeated `counts` times."""
  values = np.asarray(values, np.float64)
  counts = np.asarray(counts, np.int64)
  keep = counts > 0
  values, counts = values[keep], counts[keep]
  if values.size == 0:
    return None
  order = np.argsort(values, kind="stable")
  values, cum = values[order], np.cumsum(counts[order])
  total = cum[-1]
  out = []
  for p in q:
    k = int(np.searchsorted(cum, p / 100.0 * total, side="left"))
    out.append(float(values[min(k, len(values) - 1)]))
  return out[0], out[1]
