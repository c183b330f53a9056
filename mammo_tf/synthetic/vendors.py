"""Fake manufacturers: bit depths, intensity response curves, rescale and window conventions.

A "For Presentation" image is the vendor's processing of the measured log signal: dynamic-range
compression (subtracting part of the low-frequency thickness component, FFDM only), per-image
auto-windowing on breast percentiles, a response curve, and a map to the stored bit depth
(MONOCHROME2, or inverted for MONOCHROME1). Background is 0 in modality units after inversion.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mammo_tf.synthetic.acquisition import lowpass


@dataclasses.dataclass(frozen=True)
class Vendor:
  manufacturer: str
  model: str
  bits_stored: int
  curve: str                   # gamma | logistic | log
  curve_param: float
  floor: float                 # breast range in the stored scale (fractions of full scale)
  ceil: float
  equalize: float              # fraction of the low-frequency component removed (FFDM)
  rescale_slope: float = 1.0
  rescale_intercept: float = 0.0
  padding: bool = False        # writes PixelPaddingValue for the background
  voi_function: str = "LINEAR"
  software: str = "1.0"


FFDM_VENDORS = (
    Vendor("Aurelia Medical", "Aurelia MX-3", 12, "gamma", 0.85, 0.06, 0.97, 0.35,
           software="AMX 3.2.1"),
    Vendor("Northwind Imaging", "Selene Digital", 14, "logistic", 5.0, 0.10, 0.92, 0.50,
           padding=True, voi_function="SIGMOID", software="SD 7.4"),
    Vendor("Kestrel Diagnostics", "KD Mammo 16", 16, "gamma", 1.35, 0.04, 0.80, 0.25,
           software="K16-2.0.5"),
    Vendor("Solenne Systems", "Opaline FFDM", 12, "log", 4.0, 0.12, 0.99, 0.55, padding=True,
           software="OPL 5.1"),
)

DBT_VENDORS = (
    Vendor("Aurelia Medical", "Aurelia MX-3 Tomo", 10, "gamma", 0.6, 0.30, 0.98, 0.0,
           software="AMX 3.2.1"),
    Vendor("Northwind Imaging", "Selene 3D", 12, "logistic", 4.0, 0.35, 0.95, 0.0,
           software="SD 7.4"),
    Vendor("Kestrel Diagnostics", "KD Tomo", 16, "gamma", 0.75, 0.28, 0.85, 0.0,
           rescale_intercept=-1024.0, software="K16-2.0.5"),
)


def response(u: np.ndarray, vendor: Vendor, jitter: float = 0.0) -> np.ndarray:
  """Maps normalised signal u in [0, 1] to [0, 1] through the vendor curve."""
  u = np.clip(u, 0.0, 1.0)
  k = vendor.curve_param * (1.0 + jitter)
  if vendor.curve == "gamma":
    return u ** k
  if vendor.curve == "logistic":
    lo, hi = 1 / (1 + np.exp(k / 2)), 1 / (1 + np.exp(-k / 2))
    return (1 / (1 + np.exp(-k * (u - 0.5))) - lo) / (hi - lo)
  if vendor.curve == "log":
    return np.log1p(k * u) / np.log1p(k)
  raise ValueError(f"unknown response curve {vendor.curve!r}")


def full_scale(vendor: Vendor) -> int:
  return (1 << vendor.bits_stored) - 1


def equalize(p: np.ndarray, support: np.ndarray, amount: float, spacing: float) -> np.ndarray:
  """Dynamic-range compression: removes `amount` of the low-frequency (thickness) component."""
  if amount <= 0:
    return p
  sup = support.astype(np.float32)
  low = lowpass(p * sup, 10.0 / spacing) / np.maximum(lowpass(sup, 10.0 / spacing), 1e-3)
  return p - amount * (low - np.median(p[support]))


def window_stats(values: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5
                 ) -> tuple[float, float]:
  lo, hi = np.percentile(values, [lo_pct, hi_pct])
  return float(lo), float(max(hi, lo + 1e-3))


def to_stored(u: np.ndarray, support: np.ndarray, vendor: Vendor, monochrome1: bool,
              jitter: float = 0.0) -> np.ndarray:
  """Normalised signal -> stored uint16 pixel values (background 0 in modality units)."""
  fs = full_scale(vendor)
  v = vendor.floor + response(u, vendor, jitter) * (vendor.ceil - vendor.floor)
  modality = np.where(support, np.clip(np.rint(v * fs), 1, fs - 1), 0.0)
  if monochrome1:
    modality = np.where(support, fs - modality, fs)
    # MONOCHROME1: high = dark; the background (no attenuation) is the brightest display value,
    # i.e. the maximum, which the modality LUT keeps and the reader inverts to 0.
  stored = (modality - vendor.rescale_intercept) / vendor.rescale_slope
  return np.clip(np.rint(stored), 0, 65535).astype(np.uint16)


def window(stored_breast: np.ndarray, vendor: Vendor) -> tuple[float, float]:
  """WindowCenter/Width (modality units) covering the breast's 1-99% range."""
  vals = stored_breast.astype(np.float64) * vendor.rescale_slope + vendor.rescale_intercept
  lo, hi = np.percentile(vals, [1.0, 99.0])
  return float(np.round((lo + hi) / 2)), float(np.round(max(hi - lo, 2.0)))


VENDOR_SETS = ("all", "single")


def vendor_choices(which: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Indices into (FFDM_VENDORS, DBT_VENDORS) a cohort draws from.

  ``"all"``: every fake manufacturer (a multi-site cohort). ``"single"``: one site, as in the
  paper: the Aurelia FFDM system and the Aurelia tomosynthesis system of the same manufacturer.
  """
  if which == "all":
    return tuple(range(len(FFDM_VENDORS))), tuple(range(len(DBT_VENDORS)))
  if which == "single":
    return (0,), (0,)
  raise ValueError(f"unknown vendor set {which!r}; choose one of {VENDOR_SETS}")


def shifted_response(vendor: Vendor, factor: float) -> Vendor:
  """The vendor with its response parameter multiplied by `factor` (a controlled intensity shift).

  For a gamma curve ``u -> u ** k`` the shifted response is ``u -> (u ** k) ** factor``: the
  training response followed by a monotone power, which histogram matching can undo up to the
  quantisation of the stored values. ``factor == 1`` gives the vendor itself.
  """
  if factor <= 0:
    raise ValueError(f"response factor must be positive, got {factor}")
  return dataclasses.replace(vendor, curve_param=vendor.curve_param * float(factor))
