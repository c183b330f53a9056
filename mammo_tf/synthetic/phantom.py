"""3D compressed-breast phantom: outline, skin, power-law tissue texture, ligaments and findings.

Units: millimetres and linear attenuation coefficients in 1/mm at an effective energy of about
20 keV. Coordinates: ``x`` = distance from the chest wall (image columns, flipped for right breasts
by the caller), ``y`` = image rows, ``z`` = height above the centre of the compressed breast.

The tissue is a stack of ``layers`` horizontal slabs sampled on a coarse in-plane grid (the
*tissue grid*, at most ``phantom_max_side`` pixels on its long side) so that the whole 3D phantom
of a
paper-size image stays a few tens of MB of float32. Findings are small 3D blocks sampled at the
full image resolution and projected separately (`Lesion`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Linear attenuation coefficients (1/mm), ~20 keV effective energy.
MU_FAT = 0.045
MU_GLAND = 0.080
MU_SKIN = 0.080
MU_MUSCLE = 0.085
MU_CALC = 1.2

# The field of view of every preset (paper FFDM: 4096 x 3328 pixels of 70 um).
FOV_ROWS_MM = 286.72


@dataclasses.dataclass(frozen=True)
class BreastShape:
  """Parameters of one compressed breast in one view (millimetres)."""
  view: str                 # CC | MLO
  depth: float              # chest wall -> nipple
  half_height: float        # half extent along rows at the chest wall (below centre for MLO)
  half_height_up: float     # half extent above the centre (MLO: larger, axillary tail)
  centre: float             # row of the centre (mm)
  tilt: float               # MLO: centre moves down by tilt * x
  thickness: float          # compressed thickness T
  skin: float               # skin thickness
  density: float            # threshold of the glandular field: low = dense
  beta: float               # power-law exponent of the texture
  harmonics: tuple          # ((m, amplitude, phase), ...) outline perturbation
  pectoral_width: float     # MLO: pectoral muscle width at the top row (0 for CC)
  pectoral_height: float    # MLO: pectoral muscle extent along the chest wall


def sample_shape(rng: np.random.Generator, view: str, fov_rows: float, fov_cols: float
                 ) -> BreastShape:
  """Draws a breast outline/thickness/density for one view."""
  depth = rng.uniform(0.55, 0.8) * fov_cols
  thickness = rng.uniform(40.0, 62.0)
  harm = tuple((m, rng.uniform(0.0, 0.035 / m ** 0.5), rng.uniform(0, 2 * np.pi))
               for m in range(2, 7))
  if view == "MLO":
    hh = rng.uniform(0.30, 0.38) * fov_rows
    return BreastShape(view, depth, hh, rng.uniform(0.55, 0.62) * fov_rows,
                       rng.uniform(0.50, 0.56) * fov_rows, rng.uniform(0.1, 0.25), thickness,
                       rng.uniform(1.2, 2.0), rng.uniform(-0.2, 1.1), rng.uniform(2.4, 3.0), harm,
                       rng.uniform(0.25, 0.45) * depth, rng.uniform(0.35, 0.6) * fov_rows)
  hh = rng.uniform(0.36, 0.45) * fov_rows
  return BreastShape(view, depth, hh, hh, rng.uniform(0.46, 0.54) * fov_rows, 0.0, thickness,
                     rng.uniform(1.2, 2.0), rng.uniform(-0.2, 1.1), rng.uniform(2.4, 3.0), harm,
                     0.0, 0.0)


def _grid(shape: tuple[int, int], spacing: float) -> tuple[np.ndarray, np.ndarray]:
  rows, cols = shape
  y = (np.arange(rows, dtype=np.float32) + 0.5) * spacing
  x = (np.arange(cols, dtype=np.float32) + 0.5) * spacing
  return x[None, :], y[:, None]


def elliptic_radius(b: BreastShape, x: np.ndarray, y: np.ndarray, shrink: float = 0.0
                    ) -> np.ndarray:
  """Normalised radius (1 on the outline) of points (x mm from chest wall, y mm rows)."""
  yc = b.centre + b.tilt * x
  dy = y - yc
  hh = np.where(dy < 0, b.half_height_up, b.half_height)
  u = x / max(b.depth - shrink, 1e-3)
  v = dy / np.maximum(hh - shrink, 1e-3)
  r = np.sqrt(u * u + v * v)
  phi = np.arctan2(v, u)
  pert = np.ones_like(r)
  for m, amp, ph in b.harmonics:
    pert = pert + amp * np.cos(m * phi + ph)
  return (r / pert).astype(np.float32)


def thickness_map(b: BreastShape, x, y, shrink: float = 0.0, r0: float = 0.8) -> np.ndarray:
  """Compressed thickness (mm) at each point: flat, rolling off to 0 at the outline."""
  r = elliptic_radius(b, x, y, shrink)
  s = np.clip((r - r0) / (1 - r0), 0.0, None)
  t = (b.thickness - 2 * shrink) * np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0))
  return t.astype(np.float32)


def pectoral_mask(b: BreastShape, x, y) -> np.ndarray:
  """MLO pectoral muscle (triangle at the top of the chest wall), soft edge, float32 in [0, 1]."""
  if b.pectoral_width <= 0:
    return np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), np.float32)
  edge = b.pectoral_width * (1.0 - y / b.pectoral_height) - x
  return np.clip(edge / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)


def power_law_field(rng: np.random.Generator, shape: tuple[int, int, int],
                    spacing: tuple[float, ...], beta: float, stretch_x: float = 1.0,
                    band: tuple[float, float] | None = None) -> np.ndarray:
  """Zero-mean, unit-variance Gaussian field with power spectrum 1/f^beta (float32).

  `stretch_x` > 1 elongates structures along x (columns); `band` = (f_lo, f_hi) in cycles/mm
  turns it into a band-pass field (used for the ligament sheets).
  """
  freqs = [np.fft.fftfreq(n, d).astype(np.float32) for n, d in zip(shape, spacing)]
  fz, fy, fx = np.meshgrid(*freqs, indexing="ij", sparse=True)
  f2 = fz * fz + fy * fy + (fx * stretch_x) ** 2
  f2 = np.maximum(f2, (1.0 / (4 * max(n * d for n, d in zip(shape, spacing)))) ** 2)
  amp = f2 ** np.float32(-beta / 4.0)
  if band is not None:
    f = np.sqrt(f2)
    amp = amp * np.exp(-((np.log(f / band[0])) ** 2) / 0.5) * (f < band[1])
  amp[0, 0, 0] = 0.0
  noise = (rng.standard_normal(shape, dtype=np.float32)
           + 1j * rng.standard_normal(shape, dtype=np.float32)).astype(np.complex64)
  field = np.fft.ifftn(noise * amp.astype(np.float32)).real.astype(np.float32)
  field -= field.mean()
  field /= field.std() + 1e-12
  return field


@dataclasses.dataclass
class TissueLayers:
  """Breast tissue as `layers` slabs on the tissue grid: mu_dz[k] = attenuation * slab thickness."""
  mu_dz: np.ndarray          # float32 [layers, h, w] (line-integral contribution of each slab)
  z: np.ndarray              # float32 [layers] slab centre heights (mm)
  spacing: float             # tissue-grid pixel size (mm)


def make_tissue(rng: np.random.Generator, b: BreastShape, grid_shape: tuple[int, int],
                grid_spacing: float, layers: int) -> TissueLayers:
  """Fat/fibroglandular texture with Cooper's-ligament-like sheets inside the skin (float32)."""
  x, y = _grid(grid_shape, grid_spacing)
  t_in = thickness_map(b, x, y, shrink=b.skin)
  dz = b.thickness / layers
  z = ((np.arange(layers, dtype=np.float32) + 0.5) * dz - b.thickness / 2).astype(np.float32)
  shape3 = (layers,) + tuple(grid_shape)
  sp3 = (dz, grid_spacing, grid_spacing)
  tex = power_law_field(rng, shape3, sp3, b.beta, stretch_x=0.6)
  lig = power_law_field(rng, shape3, sp3, 2.0, stretch_x=0.35, band=(0.04, 0.6))
  # Glandular envelope: retro-areolar / central, fading towards the skin and the chest wall.
  yc = b.centre + b.tilt * x
  env = (np.exp(-((x / b.depth - 0.45) / 0.38) ** 2 - ((y - yc) / (0.75 * b.half_height)) ** 2)
         - 0.3).astype(np.float32)
  zenv = (1.0 - (2 * z / b.thickness) ** 2).astype(np.float32)[:, None, None]
  g = 1.0 / (1.0 + np.exp(-(tex + 1.6 * env[None] * (0.6 + 0.4 * zenv) - b.density) / 0.35))
  sheets = np.exp(-(lig / 0.07) ** 2) * (1.0 - g) * 1.2
  g = np.clip(g + sheets, 0.0, 1.0)
  mu = MU_FAT + (MU_GLAND - MU_FAT) * g
  pec = pectoral_mask(b, x, y)
  mu = mu * (1 - pec)[None] + MU_MUSCLE * pec[None]
  frac = np.clip((t_in[None] / 2 - np.abs(z)[:, None, None] + dz / 2) / dz, 0.0, 1.0)
  return TissueLayers((mu * frac * dz).astype(np.float32), z, grid_spacing)


def skin_and_support(b: BreastShape, shape: tuple[int, int], spacing: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Full-resolution maps: skin line integral, total thickness (mm), breast support (bool)."""
  x, y = _grid(shape, spacing)
  t = thickness_map(b, x, y)
  t_in = thickness_map(b, x, y, shrink=b.skin)
  return ((t - t_in) * MU_SKIN).astype(np.float32), t, t > 0.5 * spacing


# ----------------------------------------------------------------------------------------------
# Findings


@dataclasses.dataclass
class Lesion:
  """A finding as a 3D block of excess attenuation at full image resolution.

  block[k] is the excess line integral of plane k (already multiplied by the plane spacing);
  plane k lies at height ``z0 + dz_planes[k]``. (row0, col0) is the block's top-left pixel in the
  image (x already in image columns). `box` is (x, y, w, h) in image pixels.
  """
  kind: str
  block: np.ndarray
  dz_planes: np.ndarray
  z0: float
  row0: int
  col0: int
  box: tuple[int, int, int, int]


def _splat(block: np.ndarray, pts: np.ndarray, weights: np.ndarray) -> None:
  """Adds weighted points (z, y, x in block voxels) with trilinear splatting."""
  nz, ny, nx = block.shape
  base = np.floor(pts).astype(np.int64)
  frac = (pts - base).astype(np.float32)
  for dzi in (0, 1):
    for dyi in (0, 1):
      for dxi in (0, 1):
        w = (weights * np.where(dzi, frac[:, 0], 1 - frac[:, 0])
             * np.where(dyi, frac[:, 1], 1 - frac[:, 1])
             * np.where(dxi, frac[:, 2], 1 - frac[:, 2]))
        iz, iy, ix = base[:, 0] + dzi, base[:, 1] + dyi, base[:, 2] + dxi
        ok = (iz >= 0) & (iz < nz) & (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        np.add.at(block, (iz[ok], iy[ok], ix[ok]), w[ok].astype(np.float32))


_MASS_KINDS = ("spiculated", "irregular", "mass_calc", "circumscribed", "subtle")
_CALC_KINDS = ("calc_cluster", "mass_calc", "scattered_calc")


@dataclasses.dataclass(frozen=True)
class _Block:
  """Voxel grid of a finding: planes along z, square in-plane at full image resolution."""
  half: int                 # in-plane half side (pixels)
  dz_planes: np.ndarray     # plane heights relative to the finding's centre (mm)
  dzp: float                # plane spacing (mm)
  zspan: float              # total height (mm)
  spacing: float            # in-plane pixel spacing (mm)


def _lesion_kind(rng: np.random.Generator, label: str) -> str:
  u = rng.uniform()
  if label == "malignant":
    return "spiculated" if u < 0.35 else ("irregular" if u < 0.6 else ("calc_cluster" if u < 0.85
                                                                        else "mass_calc"))
  if label == "benign":
    return "circumscribed" if u < 0.65 else "scattered_calc"
  return "subtle"


def _lesion_size(rng: np.random.Generator, kind: str, scale: float) -> tuple[float, float]:
  """(radius mm, contrast as a multiple of gland - fat; 0 for calcifications only)."""
  if kind in ("spiculated", "irregular", "mass_calc"):
    return rng.uniform(4.5, 11.0) * scale, rng.uniform(1.0, 1.7)
  if kind == "circumscribed":
    return rng.uniform(4.0, 10.0) * scale, rng.uniform(0.9, 1.5)
  if kind == "subtle":
    return rng.uniform(3.5, 6.0) * scale, rng.uniform(0.8, 1.3)
  if kind == "calc_cluster":
    return rng.uniform(3.0, 7.0) * scale, 0.0
  return rng.uniform(8.0, 16.0) * scale, 0.0  # scattered_calc


def _lesion_position(rng: np.random.Generator, b: BreastShape, shape: tuple[int, int],
                     spacing: float, extent: float, radius: float) -> tuple[float, float, float]:
  """(x, y, z) mm inside the inner part of the breast, away from skin and pectoral muscle."""
  for _ in range(200):
    px = rng.uniform(0.12, 0.8) * b.depth
    py = b.centre + b.tilt * px + rng.uniform(-0.7, 0.7) * b.half_height
    r = float(elliptic_radius(b, np.float32(px), np.float32(py)))
    pec = float(pectoral_mask(b, np.float32(px), np.float32(py)))
    if r < 0.72 and pec == 0.0 and py - extent > 0 and py + extent < shape[0] * spacing:
      break
  zmax = max(b.thickness / 2 - b.skin - radius, 0.5)
  return px, py, rng.uniform(-zmax, zmax) * 0.8


def _block_grid(kind: str, radius: float, extent: float, spacing: float, max_planes: int
                ) -> _Block:
  half = int(np.ceil(extent / spacing)) + 3
  planes = int(min(max_planes, max(5, 2 * np.ceil(radius * 1.2 / spacing) + 1)))
  zspan = 2.4 * radius if kind not in ("scattered_calc",) else 2.0 * radius
  dz_planes = np.linspace(-zspan / 2, zspan / 2, planes).astype(np.float32)
  return _Block(half, dz_planes, float(zspan / max(planes - 1, 1)), zspan, spacing)


def _add_mass(rng: np.random.Generator, block: np.ndarray, g: _Block, kind: str, radius: float,
              contrast: float) -> None:
  """A soft-edged mass with a random low-order surface (smooth when circumscribed)."""
  n = 2 * g.half + 1
  zz = g.dz_planes[:, None, None]
  yy = ((np.arange(n, dtype=np.float32) - g.half) * g.spacing)[None, :, None]
  xx = ((np.arange(n, dtype=np.float32) - g.half) * g.spacing)[None, None, :]
  ax = rng.uniform(0.8, 1.2, size=3)
  rr = np.sqrt((xx / ax[0]) ** 2 + (yy / ax[1]) ** 2 + (zz / ax[2]) ** 2) + 1e-6
  if kind != "circumscribed":
    theta = np.arccos(np.clip(zz / rr, -1, 1))
    phi = np.arctan2(yy, xx)
    mod = np.ones_like(rr)
    amp = 0.08 if kind == "subtle" else 0.22
    for _ in range(6):
      l, m = rng.integers(2, 6), rng.integers(1, 5)
      mod = mod + amp * rng.uniform(0.3, 1.0) * np.cos(m * phi + rng.uniform(0, 6.3)) * np.cos(
          l * theta + rng.uniform(0, 6.3)) / 2
    rr = rr / mod
  edge = g.spacing * (0.6 if kind == "circumscribed" else (2.5 if kind == "subtle" else 1.2))
  occ = 1.0 / (1.0 + np.exp((rr - radius) / edge))
  block += (contrast * (MU_GLAND - MU_FAT) * occ * g.dzp).astype(np.float32)


def _add_spicules(rng: np.random.Generator, block: np.ndarray, g: _Block, radius: float,
                  contrast: float) -> None:
  """10-21 tapered spicules radiating from the mass surface, flatter in z."""
  nsp = int(rng.integers(10, 22))
  dirs = rng.normal(size=(nsp, 3))
  dirs[:, 0] *= 0.5
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  lengths = radius * rng.uniform(1.4, 2.5, size=nsp)
  pts, wts = [], []
  for d, ln in zip(dirs, lengths):
    s = np.arange(0.8 * radius, ln, g.spacing * 0.5, dtype=np.float32)
    taper = 1.0 - (s - 0.8 * radius) / max(ln - 0.8 * radius, 1e-3)
    p = s[:, None] * d[None, :]
    pts.append(np.stack([(p[:, 0] + g.zspan / 2) / g.dzp, p[:, 1] / g.spacing + g.half,
                         p[:, 2] / g.spacing + g.half], 1))
    wts.append(taper * contrast * (MU_GLAND - MU_FAT) * 1.6 * g.spacing * 0.5)
  _splat(block, np.concatenate(pts), np.concatenate(wts).astype(np.float32))


def _add_calcifications(rng: np.random.Generator, block: np.ndarray, g: _Block, kind: str,
                        radius: float) -> np.ndarray:
  """Clustered (or scattered) calcifications; returns their offsets (z, y, x mm)."""
  if kind == "scattered_calc":
    ncal, spread, size = int(rng.integers(4, 9)), radius, rng.uniform(0.7, 1.2)
  else:
    ncal = int(rng.integers(8, 22))
    spread = radius * (0.6 if kind == "mass_calc" else 0.8)
    size = rng.uniform(0.35, 0.6)
  off = rng.normal(size=(ncal, 3)) * spread / 2
  off = np.clip(off, -spread, spread)
  off[:, 0] = np.clip(off[:, 0], -g.zspan / 2, g.zspan / 2)
  sizes = size * rng.uniform(0.6, 1.4, size=ncal)
  # A calcification of diameter d adds MU_CALC * d over an area ~ d^2 (mm): spread it over
  # at least one pixel (partial-volume averaging) by dividing by the pixel area.
  weight = MU_CALC * sizes ** 3 / np.maximum(g.spacing * g.spacing, sizes ** 2) * 2.0
  pts = np.stack([(off[:, 0] + g.zspan / 2) / g.dzp, off[:, 1] / g.spacing + g.half,
                  off[:, 2] / g.spacing + g.half], 1)
  _splat(block, pts, weight.astype(np.float32))
  return off


def _place(kind: str, block: np.ndarray, g: _Block, position: tuple[float, float, float],
           extent: float, calc_offsets: np.ndarray | None, shape: tuple[int, int],
           flip: bool) -> Lesion:
  """Puts the block in image coordinates (x flipped for right breasts) and draws its box."""
  px, py, pz = position
  spacing = g.spacing
  rows, cols = shape
  col_c = px / spacing if not flip else cols - px / spacing
  row_c = py / spacing
  if flip:
    block = block[:, :, ::-1].copy()
  ext = max(extent * (0.85 if kind == "spiculated" else 1.0), 3 * spacing) / spacing
  if calc_offsets is not None:
    ext = max(ext, (np.abs(calc_offsets[:, 1:]).max() + 2 * spacing) / spacing)
  x0 = int(np.clip(np.floor(col_c - ext), 0, cols - 1))
  y0 = int(np.clip(np.floor(row_c - ext), 0, rows - 1))
  x1 = int(np.clip(np.ceil(col_c + ext), x0 + 1, cols))
  y1 = int(np.clip(np.ceil(row_c + ext), y0 + 1, rows))
  return Lesion(kind, block, g.dz_planes, float(pz), int(round(row_c)) - g.half,
                int(round(col_c)) - g.half, (x0, y0, x1 - x0, y1 - y0))


def make_lesion(rng: np.random.Generator, label: str, b: BreastShape, shape: tuple[int, int],
                spacing: float, flip: bool, scale: float = 1.0, max_planes: int = 24,
                position: tuple[float, float, float] | None = None) -> Lesion | None:
  """Draws the finding of an image of class `label` (None for normal).

  malignant: irregular or spiculated mass (60%), clustered microcalcifications (25%) or both;
  benign: round circumscribed mass (65%) or scattered coarse calcifications; high_risk: small,
  subtle, ill-defined mass. `position` = (x mm from chest wall, y mm, z mm) reuses a location.
  Sizes are in mm (the field of view is fixed), so in pixels they scale with the image size.
  """
  if label == "normal":
    return None
  kind = _lesion_kind(rng, label)
  radius, contrast = _lesion_size(rng, kind, scale)
  extent = radius * {"spiculated": 2.6, "subtle": 1.6}.get(kind, 1.3)
  if position is None:
    position = _lesion_position(rng, b, shape, spacing, extent, radius)
  g = _block_grid(kind, radius, extent, spacing, max_planes)
  block = np.zeros((len(g.dz_planes), 2 * g.half + 1, 2 * g.half + 1), np.float32)
  if kind in _MASS_KINDS:
    _add_mass(rng, block, g, kind, radius, contrast)
    if kind == "spiculated":
      _add_spicules(rng, block, g, radius, contrast)
  offsets = _add_calcifications(rng, block, g, kind, radius) if kind in _CALC_KINDS else None
  return _place(kind, block, g, position, extent, offsets, shape, flip)
