"""X-ray acquisition of a phantom: FFDM projection, DBT limited-angle projections, reconstruction.

Physics (all float32, vectorised):

* line integral ``p = sum_k mu_k dz`` through the tissue slabs (+ skin + finding block);
* primary fluence ``exp(-p)``; scatter = scatter-to-primary ratio x a wide low-pass of the primary
  under the breast (an anti-scatter grid in FFDM: low SPR; none in DBT: higher SPR);
* detector blur (Gaussian PSF), quantum noise (Gaussian approximation of Poisson counts with
  ``n0`` quanta per pixel at the unattenuated fluence) plus electronic noise;
* log transform back to a line-integral estimate.

DBT: parallel-beam approximation of a tube sweeping along the chest wall (image rows): a slab at
height z shifts by ``z tan(theta)``. Each low-dose projection (the FFDM dose split over the
projections) is high-pass filtered (a slice-thickness filter that keeps a fraction of the low
frequencies, as filtered-backprojection spectral filters do) and slices are reconstructed by
shift-and-add, one slice at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from scipy import ndimage

from mammo_tf.synthetic.phantom import Lesion
from mammo_tf.synthetic.phantom import TissueLayers


@dataclasses.dataclass(frozen=True)
class AcquisitionParams:
  n0: float = 4000.0            # quanta per pixel, unattenuated, full (FFDM) dose
  electronic_noise: float = 3.0  # quanta
  blur_sigma_px: float = 0.6
  spr_ffdm: float = 0.15
  spr_dbt: float = 0.45
  scatter_sigma_mm: float = 20.0
  dbt_dose_ratio: float = 1.2   # DBT total dose / FFDM dose
  dbt_highpass_mm: float = 12.0  # Gaussian sigma of the removed low-frequency component
  dbt_highpass_keep: float = 0.25  # fraction of low frequencies kept


def resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a 2D float array to `shape` (pixel-centre aligned)."""
  if tuple(a.shape) == tuple(shape):
    return a
  out = ndimage.zoom(a, (shape[0] / a.shape[0], shape[1] / a.shape[1]), order=1,
                     grid_mode=True, mode="nearest")
  return out[:shape[0], :shape[1]].astype(np.float32, copy=False)


def lowpass(a: np.ndarray, sigma_px: float) -> np.ndarray:
  """Wide Gaussian low-pass, computed on a reduced grid when sigma is large."""
  factor = int(max(1, sigma_px // 3))
  if factor == 1:
    return ndimage.gaussian_filter(a, sigma_px, mode="nearest")
  small = resize(a, (max(1, a.shape[0] // factor), max(1, a.shape[1] // factor)))
  small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
  return resize(small, a.shape)


def shift_rows(a: np.ndarray, s: float) -> np.ndarray:
  """Shifts `a` by `s` pixels along its second-to-last axis (linear interpolation, zero fill)."""
  n = int(np.floor(s))
  f = np.float32(s - n)
  out = np.zeros_like(a)
  for k, w in ((n, 1 - f), (n + 1, f)):
    if w == 0 or abs(k) >= a.shape[-2]:
      continue
    if k >= 0:
      out[..., k:, :] += w * a[..., :a.shape[-2] - k, :]
    else:
      out[..., :k, :] += w * a[..., -k:, :]
  return out


def _add_clipped(img: np.ndarray, patch: np.ndarray, r0: int, c0: int) -> None:
  h, w = img.shape
  ph, pw = patch.shape
  y0, x0 = max(r0, 0), max(c0, 0)
  y1, x1 = min(r0 + ph, h), min(c0 + pw, w)
  if y1 > y0 and x1 > x0:
    img[y0:y1, x0:x1] += patch[y0 - r0:y1 - r0, x0 - c0:x1 - c0]


def add_lesion(img: np.ndarray, lesion: Lesion | None, tan: float, spacing: float) -> None:
  """Adds the finding's projection at angle atan(tan) to a line-integral image (in place)."""
  if lesion is None:
    return
  if tan == 0.0:
    _add_clipped(img, lesion.block.sum(0), lesion.row0, lesion.col0)
    return
  for k in range(lesion.block.shape[0]):
    s = (lesion.z0 + float(lesion.dz_planes[k])) * tan / spacing
    n = int(np.floor(s))
    _add_clipped(img, shift_rows(lesion.block[k], s - n), lesion.row0 + n, lesion.col0)


def _detect(line: np.ndarray, support: np.ndarray, spacing: float, n0: float, spr: float,
            p: AcquisitionParams, rng: np.random.Generator) -> np.ndarray:
  """Line integral -> measured log signal (float32): scatter, blur, noise, log."""
  primary = np.exp(-line)
  scatter = spr * lowpass(primary * support, p.scatter_sigma_mm / spacing)
  signal = ndimage.gaussian_filter(primary + scatter, p.blur_sigma_px, mode="nearest")
  counts = n0 * signal
  counts += np.sqrt(counts) * rng.standard_normal(counts.shape, dtype=np.float32)
  counts += p.electronic_noise * rng.standard_normal(counts.shape, dtype=np.float32)
  return (-np.log(np.maximum(counts, 1.0) / n0)).astype(np.float32)


def project(tissue: TissueLayers, skin: np.ndarray, lesion: Lesion | None, shape: tuple[int, int],
            spacing: float, tan: float = 0.0) -> np.ndarray:
  """Noise-free line integral at angle atan(tan) on the full image grid (float32)."""
  if tan == 0.0:
    grid = tissue.mu_dz.sum(0)
  else:
    grid = np.zeros(tissue.mu_dz.shape[1:], np.float32)
    for k in range(tissue.mu_dz.shape[0]):
      grid += shift_rows(tissue.mu_dz[k], float(tissue.z[k]) * tan / tissue.spacing)
  cos = np.float32(1.0 / np.sqrt(1.0 + tan * tan))
  line = resize(grid, shape) / cos + skin / cos
  add_lesion(line, lesion, tan, spacing)
  return line.astype(np.float32)


def acquire_ffdm(tissue: TissueLayers, skin: np.ndarray, support: np.ndarray, lesion: Lesion | None,
                 spacing: float, p: AcquisitionParams, rng: np.random.Generator) -> np.ndarray:
  """FFDM: measured log-attenuation image (float32 [H, W])."""
  line = project(tissue, skin, lesion, skin.shape, spacing)
  return _detect(line, support.astype(np.float32), spacing, p.n0, p.spr_ffdm, p, rng)


def dbt_angles(num_projections: int, arc_deg: float) -> np.ndarray:
  half = np.deg2rad(arc_deg / 2.0)
  return np.linspace(-half, half, num_projections) if num_projections > 1 else np.zeros(1)


def acquire_dbt_projections(tissue: TissueLayers, skin: np.ndarray, support: np.ndarray,
                            lesion: Lesion | None, spacing: float, angles: np.ndarray,
                            p: AcquisitionParams, rng: np.random.Generator) -> np.ndarray:
  """Low-dose projections, logged and high-pass filtered: float32 [n_proj, H, W]."""
  n0 = p.n0 * p.dbt_dose_ratio / len(angles)
  sup = support.astype(np.float32)
  out = np.empty((len(angles),) + skin.shape, np.float32)
  for i, th in enumerate(angles):
    line = project(tissue, skin, lesion, skin.shape, spacing, float(np.tan(th)))
    q = _detect(line, sup, spacing, n0, p.spr_dbt, p, rng)
    out[i] = q - (1.0 - p.dbt_highpass_keep) * lowpass(q, p.dbt_highpass_mm / spacing)
  return out


def reconstruct_slice(proj: np.ndarray, angles: np.ndarray, z: float, spacing: float) -> np.ndarray:
  """Shift-and-add slice at height z (mm) from filtered projections (float32 [H, W])."""
  acc = np.zeros(proj.shape[1:], np.float32)
  for q, th in zip(proj, angles):
    acc += shift_rows(q, -z * float(np.tan(th)) / spacing)
  return acc / np.float32(len(angles))


def slice_heights(thickness: float, num_slices: int) -> np.ndarray:
  dz = thickness / num_slices
  return ((np.arange(num_slices) + 0.5) * dz - thickness / 2).astype(np.float32)


def iter_slices(proj: np.ndarray, angles: np.ndarray, heights: np.ndarray,
                spacing: float) -> Iterator[np.ndarray]:
  for z in heights:
    yield reconstruct_slice(proj, angles, float(z), spacing)
