"""Whole-image inference: a malignancy heat map from a patch classifier (the paper's future work).

The image is read from DICOM (`mammo_tf.io.dicom`: 12-bit, background 0; DBT as its MIP),
reduced exactly as the converter stores it (`mammo_tf.data.convert.block_mean`,
``cfg.data.downsample`` x ``downsample`` block mean), optionally
histogram-matched (MIP -> FFDM), and the patch model slides over it in batches of overlapping
``P x P`` windows (stride ``P / 4`` by default; the last window of a row or column is aligned
with the image edge so that every pixel is covered). Windows that do not touch the breast are
skipped. Each pixel's probability is the average over the windows that cover it (weighted by a
Gaussian of the distance to each window's centre by default; plain mean with
``weighting="uniform"``), restricted to the breast mask. The image-level score is the highest
window probability.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any, Callable

import numpy as np

from mammo_tf import config as config_lib


def window_starts(length: int, patch: int, stride: int) -> np.ndarray:
  """Start offsets covering ``[0, length)`` with windows of `patch` every `stride` pixels.

  The last window ends at the edge. A side shorter than `patch` gets one window at 0 (the image
  is zero-padded to the patch size).
  """
  if patch <= 0 or stride <= 0:
    raise ValueError(f"patch and stride must be positive, got {patch}, {stride}")
  last = max(0, length - patch)
  starts = np.arange(0, last + 1, stride)
  if starts[-1] != last:
    starts = np.append(starts, last)
  return starts.astype(np.int64)


def window_weights(patch: int, weighting: str = "gaussian") -> np.ndarray:
  """float64 [P, P] weight of each window pixel in the overlap average (see sliding_window_map)."""
  if weighting == "uniform":
    return np.ones((patch, patch))
  if weighting != "gaussian":
    raise ValueError(f"weighting must be 'gaussian' or 'uniform', got {weighting!r}")
  d = np.arange(patch) - (patch - 1) / 2.0
  g = np.exp(-d ** 2 / (2.0 * (patch / 4.0) ** 2))
  return np.outer(g, g)


@dataclasses.dataclass
class HeatMap:
  """Result of `sliding_window_map` (stored-resolution arrays)."""
  probability: np.ndarray    # float32 [H, W]: average over covering windows, 0 outside the mask
  window_probability: np.ndarray  # float32 [ny, nx]: NaN for skipped windows
  starts_y: np.ndarray
  starts_x: np.ndarray
  score: float               # max window probability
  peak: tuple[int, int]      # (row, col) of the map's maximum (`peak_location`)
  windows: int               # windows evaluated


def sliding_window_map(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                       patch: int, *, stride: int | None = None, batch_size: int = 64,
                       mask: np.ndarray | None = None, weighting: str = "gaussian",
                       log: Callable[[str], None] | None = None) -> HeatMap:
  """Slides `predict` (float32 ``[B, P, P, 1]`` -> ``[B]``) over `image` (12-bit units).

  Args:
    predict: the patch model.
    image: [H, W] intensities in 12-bit units (background 0).
    patch: window side P in pixels (the model's input size).
    stride: window step; default ``P // 4``.
    batch_size: windows per model call.
    mask: bool [H, W] breast mask; windows without breast pixels are skipped and the map is 0
      outside it. None: everything counts.
    weighting: how a window's probability spreads over its pixels in the average: "gaussian"
      (default; weight exp(-d^2 / (2 (P/4)^2)) at distance d from the window centre, so each pixel
      mostly reflects the windows centred near it, as training patches are centred on findings)
      or "uniform" (plain mean of every covering window).
    log: optional progress callback.
  """
  img = np.asarray(image, np.float32)
  if img.ndim != 2:
    raise ValueError(f"image must be 2-D, got shape {img.shape}")
  h, w = img.shape
  m = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
  if m.shape != img.shape:
    raise ValueError(f"mask shape {m.shape} != image shape {img.shape}")
  stride = max(1, patch // 4) if stride is None else int(stride)
  ph, pw = max(h, patch), max(w, patch)
  padded = np.zeros((ph, pw), np.float32)
  padded[:h, :w] = img
  pmask = np.zeros((ph, pw), bool)
  pmask[:h, :w] = m
  sy, sx = window_starts(h, patch, stride), window_starts(w, patch, stride)
  # Breast pixels per window from a summed-area table: skip windows with none.
  sat = np.pad(pmask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  yy, xx = np.meshgrid(sy, sx, indexing="ij")
  inside = (sat[yy + patch, xx + patch] - sat[yy, xx + patch] - sat[yy + patch, xx]
            + sat[yy, xx]) > 0
  todo = np.argwhere(inside)
  window_prob = np.full(yy.shape, np.nan, np.float32)
  for b in range(0, len(todo), batch_size):
    idx = todo[b:b + batch_size]
    batch = np.stack([padded[sy[i]:sy[i] + patch, sx[j]:sx[j] + patch] for i, j in idx])
    probs = np.asarray(predict(batch[..., None]), np.float32).reshape(-1)
    window_prob[idx[:, 0], idx[:, 1]] = probs
    if log and (b // batch_size) % 20 == 0:
      log(f"heat map: {min(b + batch_size, len(todo))}/{len(todo)} windows")
  kernel = window_weights(patch, weighting)
  acc = np.zeros((ph, pw), np.float64)
  cnt = np.zeros((ph, pw), np.float64)
  for i, j in todo:
    acc[sy[i]:sy[i] + patch, sx[j]:sx[j] + patch] += kernel * window_prob[i, j]
    cnt[sy[i]:sy[i] + patch, sx[j]:sx[j] + patch] += kernel
  prob = np.where(cnt > 0, acc / np.maximum(cnt, 1.0), 0.0)[:h, :w]
  prob = np.where(m, prob, 0.0).astype(np.float32)
  peak = peak_location(prob)
  score = float(np.nanmax(window_prob)) if len(todo) else 0.0
  return HeatMap(prob, window_prob, sy, sx, score, peak, int(len(todo)))


def peak_location(prob: np.ndarray, tol: float = 1e-6) -> tuple[int, int]:
  """(row, col) of the map's maximum: the centroid of the connected plateau of maximal values
  that holds the first maximum (an averaged map is flat where the same windows cover)."""
  from scipy import ndimage
  first = np.unravel_index(int(np.argmax(prob)), prob.shape)
  top = prob >= prob[first] - tol
  labels, _ = ndimage.label(top, structure=np.ones((3, 3), bool))
  rows, cols = np.nonzero(labels == labels[first])
  return int(round(rows.mean())), int(round(cols.mean()))


def overlay_rgb(image: np.ndarray, probability: np.ndarray, mask: np.ndarray | None = None,
                *, alpha: float = 0.6, cmap: str = "jet") -> np.ndarray:
  """uint8 RGB [H, W, 3]: the image in grey with the probability in colour on top.

  Grey levels are windowed to the breast's 1st-99.5th percentiles; the colour's opacity grows
  with the probability (``alpha * p``), so low-probability tissue stays readable.
  """
  from matplotlib import colormaps
  img = np.asarray(image, np.float64)
  m = img > 0 if mask is None else np.asarray(mask, bool)
  vals = img[m] if m.any() else img.ravel()
  lo, hi = np.percentile(vals, [1.0, 99.5])
  grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
  grey = np.where(m, grey, np.where(img > 0, grey, 0.0))
  p = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
  colour = colormaps[cmap](p)[..., :3]
  a = (alpha * p)[..., None]
  rgb = grey[..., None] * (1.0 - a) + colour * a
  return np.rint(rgb * 255.0).astype(np.uint8)


def detect_domain(path: str) -> str:
  """"dbt" for a slice directory or a multi-frame file, else "ffdm".

  Reads the header through `mammo_tf.io.dicom` (a missing, non-DICOM or damaged file raises its
  `DicomError`, a ValueError naming the file and the reason).
  """
  from mammo_tf.io import dicom
  from mammo_tf.io import guard
  try:
    st = guard.require_regular_file(path, "DICOM input", allow_dir=True)
  except guard.UnsafeInput as e:
    raise dicom.DicomError(path, e.reason) from None
  if stat.S_ISDIR(st.st_mode):
    return "dbt"
  frames = dicom.open_dataset(path).ds.get("NumberOfFrames", 1)
  try:
    return "dbt" if int(frames or 1) > 1 else "ffdm"
  except (TypeError, ValueError):
    raise dicom.DicomError(path, "NumberOfFrames is not a number") from None


def resolve_hm_lut(spec: str | None) -> np.ndarray | None:
  """``"src.npz,ref.npz"`` or a converter output folder (cdf_dbt -> cdf_ffdm) -> HM table."""
  if not spec:
    return None
  from mammo_tf.data import cdf
  from mammo_tf.data import schema
  if "," in spec:
    src, ref = (s.strip() for s in spec.split(",", 1))
    return cdf.lut_from_files(src, ref)
  if os.path.isdir(spec):
    return cdf.lut_from_files(schema.cdf_path(spec, "dbt"), schema.cdf_path(spec, "ffdm"))
  raise ValueError(f"--hm_lut {spec!r}: expected 'src.npz,ref.npz' or a data directory")


def heatmap_for_dicom(model_path: str, dicom_path: str, out_png: str,
                      cfg: config_lib.ExperimentConfig, *, domain: str = "auto",
                      stride: int | None = None, hm_lut: np.ndarray | None = None,
                      batch_size: int | None = None,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Reads a DICOM, builds the heat map, writes `out_png` (overlay) and `<out>.json`.

  Returns the JSON dict: ``score`` (max window probability), ``peak`` (row, col) in original
  pixels and ``peak_stored`` in stored pixels, shapes, patch size, stride, windows, hm. No
  identifiers from the DICOM are written.
  """
  from mammo_tf.data import cdf
  from mammo_tf.data import convert
  from mammo_tf.data import masks
  from mammo_tf.evaluation import evaluate
  from mammo_tf.io import dicom
  domain = detect_domain(dicom_path) if domain == "auto" else domain
  original, _ = dicom.read_image(dicom_path, domain, intensity=cfg.data.intensity,
                                 voi_index=cfg.data.voi_index,
                                 apply_voi_lut=cfg.data.apply_voi_lut)
  factor = int(cfg.data.downsample)
  try:
    stored = convert.block_mean(original, factor)  # exactly as the converter stores images
    mask = masks.breast_mask(stored)
  except ValueError as e:
    raise ValueError(f"{dicom_path}: no heat map: {e}") from None
  pixels = (cdf.apply_lut(stored, hm_lut, mask) if hm_lut is not None
            else stored.astype(np.float32))
  predictor = evaluate.load_predictor(model_path)
  patch = predictor.input_size or cfg.data.patch_size
  if log:
    log(f"heat map: {domain} image {original.shape} -> stored {stored.shape}, patch {patch}, "
        f"stride {stride or max(1, patch // 4)}")
  hmap = sliding_window_map(predictor, pixels, patch, stride=stride,
                            batch_size=batch_size or cfg.data.eval_batch_size, mask=mask, log=log)
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  from matplotlib import image as mpimg
  mpimg.imsave(out_png, overlay_rgb(stored, hmap.probability, mask))
  info = {
      "score": hmap.score,
      "peak": [int(hmap.peak[0] * factor + factor // 2), int(hmap.peak[1] * factor + factor // 2)],
      "peak_stored": [int(hmap.peak[0]), int(hmap.peak[1])],
      "peak_probability": float(hmap.probability[hmap.peak]),
      "image_shape": [int(s) for s in original.shape],
      "stored_shape": [int(s) for s in stored.shape],
      "downsample": factor,
      "domain": domain,
      "patch_size": int(patch),
      "stride": int(stride or max(1, patch // 4)),
      "windows": hmap.windows,
      "hm": hm_lut is not None,
      "model": os.path.basename(os.path.normpath(model_path)),
      "png": os.path.basename(out_png),
  }
  from mammo_tf.io import files
  files.atomic_write_with(os.path.splitext(out_png)[0] + ".npy",
                          lambda f: np.save(f, hmap.probability))
  files.atomic_write_json(os.path.splitext(out_png)[0] + ".json", info, indent=1)
  return info
