"""The pointwise intensity rule: stored values -> 12-bit (0..4095), as a frozen dataclass. No TF.

`IntensityRule` holds, for one file (or frame), in this order of application on a stored value s:

1. padding: ``s`` is background when it equals PixelPaddingValue, or lies between
   PixelPaddingValue and PixelPaddingRangeLimit (inclusive, either order). The comparison is on
   the STORED value, before any rescale (PS3.3 C.7.5.1.1.2 gives the padding value in stored units).
2. modality LUT: ``v = s * RescaleSlope + RescaleIntercept`` (or a Modality LUT Sequence `Lut`).
3. VOI (optional): a `voi.Window` (output 0..4095) or a VOI LUT Sequence `voi.Lut`.
4. MONOCHROME1: ``v = lo + hi - v``, inverted about the value range ``[lo, hi]``.
5. linear map of ``[lo, hi]`` onto ``[0, 4095]``: ``y = (v - lo) * 4095 / (hi - lo)``.
6. round half up (``floor(y + 0.5)``), clip to ``[0, 4095]``, uint16.
7. padding pixels (step 1) are set to 0, so background is 0 whatever the inversion or rescale.

``[lo, hi]`` (`value_range`) is what the reader's rule chooses (`mammo_tf.io.readers`): the VOI's
output range (``window``), the image's robust used range (``range``) or ``[0, 2**BitsStored - 1]``
(``bits``, the default when `value_range` is None). Steps 3-6 are `IntensityRule.present`, a
function of the modality value alone, monotonic non-decreasing (MONOCHROME2) or non-increasing
(MONOCHROME1) whenever the VOI is, which is what lets a DBT maximum be taken before the mapping.

Because stored values are integers of at most 16 bits, the rule is evaluated once per possible
stored value into a lookup table and applied with a gather; the result is identical to evaluating
it pixel by pixel (`to_12bit` picks whichever is cheaper).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from mammo_tf.config import MAX_INTENSITY
from mammo_tf.io.header import fail
from mammo_tf.io.header import short

ValueFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class IntensityRule:
  """Parameters of the rule of the module docstring (hashable: LUTs are `voi.Lut` tuples)."""
  bits_stored: int
  photometric: str = "MONOCHROME2"
  slope: float = 1.0
  intercept: float = 0.0
  padding_value: int | None = None
  padding_range_limit: int | None = None
  modality_lut: ValueFn | None = None   # a `voi.Lut` (or any pointwise function)
  voi: ValueFn | None = None            # a `voi.Window` / `voi.Lut` (or any pointwise function)
  value_range: tuple[float, float] | None = None

  def check(self) -> None:
    """Raises ValueError for parameters the rule cannot use."""
    if not 1 <= int(self.bits_stored) <= 32:
      raise ValueError(f"bits_stored must be in 1..32, got {self.bits_stored}")
    if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
      raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got "
                       f"{self.photometric!r}")
    for name, v in (("slope", self.slope), ("intercept", self.intercept)):
      if not math.isfinite(float(v)):
        raise ValueError(f"{name} must be finite, got {v}")
    if float(self.slope) == 0.0:
      raise ValueError("slope must not be 0")
    r = self.value_range
    if r is not None and not float(r[1]) > float(r[0]):
      raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {r}")

  @property
  def range(self) -> tuple[float, float]:
    if self.value_range is None:
      return 0.0, float(2 ** int(self.bits_stored) - 1)
    return float(self.value_range[0]), float(self.value_range[1])

  def padding(self, s: np.ndarray) -> np.ndarray | None:
    """bool mask of the padding values among stored values `s` (None without padding)."""
    if self.padding_value is None:
      return None
    if self.padding_range_limit is None:
      return s == self.padding_value
    lo_p, hi_p = sorted((int(self.padding_value), int(self.padding_range_limit)))
    return (s >= lo_p) & (s <= hi_p)

  @property
  def has_modality_transform(self) -> bool:
    return self.modality_lut is not None or self.slope != 1.0 or self.intercept != 0.0

  def modality(self, s: np.ndarray) -> np.ndarray:
    """Step 2: float64 modality values of stored values `s`."""
    if self.modality_lut is not None:
      return np.asarray(self.modality_lut(s), dtype=np.float64)
    return np.asarray(s).astype(np.float64) * float(self.slope) + float(self.intercept)

  def present(self, v: np.ndarray) -> np.ndarray:
    """Steps 3-6 on modality values `v` -> uint16 0..4095 (no padding step)."""
    if self.voi is not None:
      v = np.asarray(self.voi(v), dtype=np.float64)
    lo, hi = self.range
    if self.photometric == "MONOCHROME1":
      v = (lo + hi) - v
    with np.errstate(invalid="ignore", over="ignore"):
      y = (v - lo) * float(MAX_INTENSITY) / (hi - lo)
      y = np.floor(y + 0.5)
    np.clip(y, 0, MAX_INTENSITY, out=y)
    return y.astype(np.uint16)

  def direct(self, s: np.ndarray) -> np.ndarray:
    """The whole rule, element by element (no table)."""
    s = np.asarray(s)
    pad = self.padding(s)
    out = self.present(self.modality(s))
    if pad is not None:
      out[pad] = 0
    return out

  def table(self, dtype) -> np.ndarray:
    """uint16 table T with T[index] = rule(value) for every value of `dtype` ((u)int8/16)."""
    return self.direct(table_domain(dtype))


def table_domain(dtype) -> np.ndarray:
  """Every value of an (u)int8/16 dtype, ordered by its unsigned bit pattern (the table index)."""
  dtype = np.dtype(dtype)
  unsigned = np.dtype(f"u{dtype.itemsize}")
  return np.arange(2 ** (8 * dtype.itemsize), dtype=np.int64).astype(unsigned).view(dtype)


def table_index(arr: np.ndarray) -> np.ndarray:
  """The table index of each value: its unsigned bit pattern."""
  return arr.view(np.dtype(f"u{arr.dtype.itemsize}")) if arr.dtype.kind == "i" else arr


def intensity_table(dtype, **rule) -> np.ndarray:
  """uint16 table T with T[index] = to_12bit(value) for every value of `dtype` ((u)int8 / (u)int16).

  The index of a value is its unsigned bit pattern (``arr.view(uint)`` for signed arrays).
  `rule` holds the keyword arguments of `to_12bit`.
  """
  return IntensityRule(**rule).table(dtype)


def to_12bit(array: np.ndarray, *, bits_stored: int, photometric: str = "MONOCHROME2",
             slope: float = 1.0, intercept: float = 0.0, padding_value: int | None = None,
             padding_range_limit: int | None = None, modality_lut: ValueFn | None = None,
             voi: ValueFn | None = None,
             value_range: tuple[float, float] | None = None) -> np.ndarray:
  """Stored pixel values (integer array) -> uint16 in 0..4095, by the rule of the module docstring.

  Args:
    array: stored values, any integer dtype, any shape.
    bits_stored: BitsStored; the default value range is ``[0, 2**bits_stored - 1]``.
    photometric: "MONOCHROME1" (inverted about the value range) or "MONOCHROME2".
    slope, intercept: RescaleSlope / RescaleIntercept (finite; slope != 0).
    padding_value, padding_range_limit: PixelPaddingValue (/ RangeLimit), compared with the stored
      values before anything else; those pixels come out 0.
    modality_lut: optional pointwise function (stored -> modality values) replacing
      slope/intercept (a `voi.Lut` for a Modality LUT Sequence).
    voi: optional pointwise VOI function (a `voi.Window` or `voi.Lut`).
    value_range: the ``(lo, hi)`` range mapped onto ``[0, 4095]`` (and inverted about for
      MONOCHROME1); default ``(0, 2**bits_stored - 1)``. Give the VOI output range with `voi`.

  Returns:
    uint16 array of `array`'s shape in 0..4095.
  """
  rule = IntensityRule(bits_stored=bits_stored, photometric=photometric, slope=slope,
                       intercept=intercept, padding_value=padding_value,
                       padding_range_limit=padding_range_limit, modality_lut=modality_lut,
                       voi=voi, value_range=value_range)
  rule.check()
  arr = np.asarray(array)
  if arr.dtype.kind not in "ui":
    raise TypeError(f"stored values must be integers, got {arr.dtype}")
  if arr.dtype.itemsize <= 2 and arr.size > 2 ** (8 * arr.dtype.itemsize) // 4:
    return rule.table(arr.dtype)[table_index(arr)]
  return rule.direct(arr)


class FrameMapper:
  """Maps decoded frames to 12-bit with a lookup table per stored dtype (direct for 32-bit)."""

  def __init__(self, rule: IntensityRule):
    self.rule = rule
    self.table = None
    self.order = None  # "max" | "min" when the table is monotonic (MIP on stored values)
    self.dtype = None
    # Fast path: on 0..n-1 the table is s (identity) or c - s, except at a few stored values.
    self.affine = None  # (n, sign, c, exceptions)

  def prepare(self, path, frame: np.ndarray) -> None:
    if frame.dtype.kind not in "ui":
      fail(path, f"decoded pixel data has non-integer dtype {frame.dtype}")
    if self.dtype == frame.dtype:
      return
    self.dtype = frame.dtype
    self.table, self.order = None, None
    if frame.dtype.itemsize <= 2:
      try:
        self.rule.check()
        self.table = self.rule.table(frame.dtype)
      except ValueError as e:
        fail(path, f"invalid intensity parameters: {short(e)}")
      by_value = self.table[np.argsort(table_domain(frame.dtype), kind="stable")]
      steps = np.diff(by_value.astype(np.int32))
      if (steps >= 0).all():
        self.order = "max"
      elif (steps <= 0).all():
        self.order = "min"
      self.affine = self._find_affine(frame.dtype)

  def _find_affine(self, dtype: np.dtype):
    """(n, sign, c, exceptions) when table[s] == c + sign * s on 0..n-1 but for <= 4 values."""
    bits = int(self.rule.bits_stored)
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
      return self.table[table_index(frame)]
    try:
      self.rule.check()
      return self.rule.direct(frame)
    except ValueError as e:
      fail(path, f"invalid intensity parameters: {short(e)}")

