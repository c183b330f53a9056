"""VOI transforms (PS3.3 C.11.2.1) and LUT tables as small frozen dataclasses. No TF.

Window functions (PS3.3 C.11.2.1.2), input ``x`` (modality values), centre ``c``, width ``w``,
output range ``[y_min, y_max]``:

* LINEAR (``w >= 1``): ``y_min`` for ``x <= c - 0.5 - (w - 1) / 2``, ``y_max`` for
  ``x > c - 0.5 + (w - 1) / 2``, else
  ``((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min``;
* LINEAR_EXACT (``w > 0``): ``y_min`` for ``x <= c - w / 2``, ``y_max`` for ``x > c + w / 2``,
  else ``(x - c) / w * (y_max - y_min) + (y_min + y_max) / 2``;
* SIGMOID (``w > 0``): ``(y_max - y_min) / (1 + exp(-4 (x - c) / w)) + y_min``.

`Window` applies one of them with ``[y_min, y_max] = [0, 4095]``, i.e. the window's output range
mapped onto the 12-bit scale. `Lut` is a LUT Sequence item (VOI or Modality): values below the
first mapped value take the first entry, values past the last entry the last one (PS3.3
C.11.2.1.1); non-integer inputs are rounded half up to the nearest entry.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mammo_tf.config import MAX_INTENSITY

FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def voi_linear(x, center: float, width: float, y_min: float, y_max: float) -> np.ndarray:
  """PS3.3 C.11.2.1.2.1 LINEAR window (width >= 1)."""
  if not width >= 1:
    raise ValueError(f"LINEAR window width must be >= 1, got {width}")
  x = np.asarray(x, np.float64)
  c, w = float(center) - 0.5, float(width) - 1.0
  lower, upper = c - w / 2, c + w / 2
  with np.errstate(invalid="ignore", divide="ignore"):
    inside = ((x - c) / w + 0.5) * (y_max - y_min) + y_min if w > 0 else np.full_like(x, y_min)
  return np.where(x <= lower, y_min, np.where(x > upper, y_max, inside))


def voi_linear_exact(x, center: float, width: float, y_min: float, y_max: float) -> np.ndarray:
  """PS3.3 C.11.2.1.3.2 LINEAR_EXACT window (width > 0)."""
  if not width > 0:
    raise ValueError(f"LINEAR_EXACT window width must be > 0, got {width}")
  x = np.asarray(x, np.float64)
  c, w = float(center), float(width)
  with np.errstate(invalid="ignore"):
    inside = (x - c) / w * (y_max - y_min) + (y_min + y_max) / 2
  return np.where(x <= c - w / 2, y_min, np.where(x > c + w / 2, y_max, inside))


def voi_sigmoid(x, center: float, width: float, y_min: float, y_max: float) -> np.ndarray:
  """PS3.3 C.11.2.1.3.1 SIGMOID window (width > 0)."""
  if not width > 0:
    raise ValueError(f"SIGMOID window width must be > 0, got {width}")
  x = np.asarray(x, np.float64)
  with np.errstate(over="ignore", invalid="ignore"):
    y = (y_max - y_min) / (1.0 + np.exp(-4.0 * (x - float(center)) / float(width))) + y_min
  return y


_IMPLEMENTATIONS = {"LINEAR": voi_linear, "LINEAR_EXACT": voi_linear_exact,
                    "SIGMOID": voi_sigmoid}


@dataclasses.dataclass(frozen=True)
class Window:
  """A VOI window whose output range is 0..4095. Monotonic non-decreasing in its input."""
  center: float
  width: float
  function: str = "LINEAR"

  def __post_init__(self):
    if self.function not in FUNCTIONS:
      raise ValueError(f"VOILUTFunction {self.function!r} is not one of {', '.join(FUNCTIONS)}")
    if not (np.isfinite(self.center) and np.isfinite(self.width)):
      raise ValueError(f"window centre/width must be finite, got {self.center}/{self.width}")
    minimum = 1.0 if self.function == "LINEAR" else 0.0
    if not (self.width > minimum or (minimum and self.width == minimum)):
      raise ValueError(f"{self.function} window width must be {'>= 1' if minimum else '> 0'}, "
                       f"got {self.width:g}")

  def __call__(self, x) -> np.ndarray:
    return _IMPLEMENTATIONS[self.function](x, self.center, self.width, 0.0, float(MAX_INTENSITY))

  @property
  def output_range(self) -> tuple[float, float]:
    return 0.0, float(MAX_INTENSITY)


@dataclasses.dataclass(frozen=True)
class Lut:
  """A LUT Sequence item: `data[k]` is the output for input ``first_mapped + k``."""
  first_mapped: int
  data: tuple[int, ...]
  bits: int

  def __call__(self, x) -> np.ndarray:
    table = self.array
    idx = np.floor(np.asarray(x, np.float64) + 0.5) - self.first_mapped
    with np.errstate(invalid="ignore"):
      idx = np.clip(np.nan_to_num(idx, nan=0.0), 0, len(table) - 1).astype(np.int64)
    return table[idx].astype(np.float64)

  @property
  def array(self) -> np.ndarray:
    return np.asarray(self.data, np.int64)

  @property
  def output_range(self) -> tuple[float, float]:
    """``[min, max]`` of the entries (the range actually used), or the declared bit range when
    every entry is the same."""
    table = self.array
    lo, hi = float(table.min()), float(table.max())
    return (lo, hi) if hi > lo else (0.0, float(2 ** self.bits - 1))
