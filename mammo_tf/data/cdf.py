"""Per-domain average c.d.f.s and the histogram-matching lookup table (paper §2.4.1, Algorithm 1).

NumPy reference implementation. The TF application of the table lives in
`mammo_tf.models.preprocessing.HistogramMatching`.

We average *normalised per-image* c.d.f.s (every image weighs the same), computed over breast
pixels only on the 12-bit grid 0..4095. The lookup table maps a source level k to
``C_ref^-1(C_src(k))`` where the inverse is a linear interpolation over the reference levels at
which ``C_ref`` increases (empty reference bins are dropped, as `skimage.exposure.match_histograms`
does). With one source and one reference image this reproduces `match_histograms` exactly on every
non-zero source level.

Edges: source levels below the lowest populated source level ``s0`` (where ``C_src`` is still 0:
a dark non-zero background, interpolated patch borders) map linearly onto ``[0, r0]``, ``r0`` the
lowest populated reference level (``LUT[k] = k * r0 / s0``), instead of all jumping to ``r0``;
level 0 (background) always maps to 0.
"""

from __future__ import annotations

import os

import numpy as np

from mammo_tf.config import NUM_LEVELS
from mammo_tf.io import files


def image_cdf(image: np.ndarray, mask: np.ndarray | None = None,
              num_levels: int = NUM_LEVELS) -> np.ndarray:
  """Normalised cumulative histogram (float64 [num_levels]) of the masked pixels of `image`."""
  values = np.asarray(image)
  if mask is not None:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != values.shape:
      raise ValueError(f"mask shape {mask.shape} != image shape {values.shape}")
    values = values[mask]
  values = values.ravel()
  if values.size == 0:
    raise ValueError("no pixels to build a c.d.f. from (empty mask)")
  if values.min() < 0 or values.max() >= num_levels:
    raise ValueError(f"values outside 0..{num_levels - 1}")
  counts = np.bincount(values.astype(np.int64), minlength=num_levels)
  return np.cumsum(counts, dtype=np.float64) / values.size


def average_cdf(cdfs) -> np.ndarray:
  """Mean of per-image c.d.f.s (each image weighs the same)."""
  stack = np.stack([np.asarray(c, np.float64) for c in cdfs])
  if stack.ndim != 2 or stack.shape[0] == 0:
    raise ValueError("average_cdf needs at least one 1-D c.d.f.")
  return stack.mean(axis=0)


def hm_lut(src_cdf: np.ndarray, ref_cdf: np.ndarray) -> np.ndarray:
  """Algorithm 1: LUT[k] = C_ref^-1(C_src(k)) with a linearly interpolated inverse.

  Returns float32 [len(src_cdf)] in reference intensity units. Levels where the reference
  c.d.f. does not increase are dropped before inverting. Below the lowest populated source level
  the table ramps linearly from 0 to the lowest populated reference level; ``LUT[0] = 0``.
  """
  src = np.asarray(src_cdf, np.float64)
  ref = np.asarray(ref_cdf, np.float64)
  increments = np.diff(ref, prepend=0.0)
  keep = increments > 0
  if not keep.any():
    raise ValueError("reference c.d.f. is empty")
  if not (src > 0).any():
    raise ValueError("source c.d.f. is empty")
  ref_levels = np.nonzero(keep)[0].astype(np.float64)
  lut = np.interp(src, ref[keep], ref_levels)
  s0 = int(np.argmax(src > 0))     # lowest populated source level
  if s0 > 0:
    lut[:s0] = np.arange(s0, dtype=np.float64) * (ref_levels[0] / s0)
  lut[0] = 0.0
  return lut.astype(np.float32)


def apply_lut(image: np.ndarray, lut: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """Applies `lut` to integer `image` (float32 out); pixels outside `mask` stay 0."""
  out = np.asarray(lut, np.float32)[np.asarray(image).astype(np.int64)]
  if mask is not None:
    out = np.where(np.asarray(mask, bool), out, np.float32(0))
  return out


def kolmogorov_distance(cdf_a: np.ndarray, cdf_b: np.ndarray) -> float:
  """sup |C_a - C_b| over levels."""
  return float(np.max(np.abs(np.asarray(cdf_a, np.float64) - np.asarray(cdf_b, np.float64))))


def save_cdf(path: str, cdf: np.ndarray, *, domain: str, num_images: int) -> None:
  """Writes `cdf_<domain>.npz` atomically (temp file + rename)."""
  files.atomic_write_with(path, lambda f: np.savez(
      f, cdf=np.asarray(cdf, np.float64), domain=np.array(domain),
      num_images=np.array(num_images, np.int64)))


def load_cdf(path: str) -> np.ndarray:
  """Reads the c.d.f. array of a `cdf_<domain>.npz` file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such c.d.f. file (run data_prep.convert first)")
  with np.load(path) as z:
    cdf = np.asarray(z["cdf"], np.float64)
  if cdf.ndim != 1 or not np.all(np.diff(cdf) >= -1e-12):
    raise ValueError(f"{path}: not a non-decreasing 1-D c.d.f.")
  return cdf


def lut_from_files(src_path: str, ref_path: str) -> np.ndarray:
  """HM lookup table from two saved c.d.f.s (source domain -> reference domain)."""
  return hm_lut(load_cdf(src_path), load_cdf(ref_path))
