"""Breast segmentation that survives real artefacts: threshold, film borders, opening, largest
component, holes filled.

`breast_mask` works on the stored 12-bit image (padding and background 0 after `mammo_tf.io`):

1. background level ``bg``: the image minimum, or, when the non-zero pixels hold a flat plateau
   (at least 20 % of them within +-1 % of the range, in the lower half of the range: uniform air
   after a VOI window, next to zero padding), the top of that plateau;
2. fixed threshold ``t = bg + max(1, threshold_fraction * (p99 - bg))`` with ``p99`` the 99th
   percentile (5 % by default: robust to a noisy or non-zero background and to a few saturated
   pixels; Otsu is not used because it splits fatty from dense tissue and cuts the breast's
   fatty periphery);
3. film borders: from each image edge inwards (at most 1/8 of the side), a row or column that is
   at least 90 % above ``t`` and nearly uniform (inter-quartile range at most 2 % of
   ``p99 - bg``) is background; breast tissue along the chest wall is never that uniform;
4. morphological opening with a 3 x 3 square (drops lines and specks up to 2 pixels wide, such
   as a bright detector line crossing the image);
5. the largest 8-connected component (drops burnt-in labels, markers and anything left apart);
6. its holes filled (fatty tissue darker than ``t`` inside the breast stays breast).

An image with nothing above the threshold raises ``ValueError("no breast found ...")``.

`downsample_mask` stores the mask at ``1/factor`` resolution: a cell is breast when **at least
half** of its pixels are (majority rule; edge cells count only their real pixels), so a centre
drawn from the stored mask lies in the breast. The converter calls ``breast_mask(stored,
factor=mask_downsample)``, which applies steps 1-4 at full resolution, the majority rule, and steps
5-6 on the cell grid (cheaper than at full resolution). `upsample_mask` is its nearest-neighbour
inverse, used for "breast pixels only" c.d.f.s both at conversion and when recomputing from
TFRecords, so the two give identical results.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
  """Fills background regions not 4-connected to the border (= `ndimage.binary_fill_holes`)."""
  labels, n = ndimage.label(~mask)
  if n == 0:
    return mask.copy()
  border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
  outside = np.zeros(n + 1, bool)
  outside[border] = True
  outside[0] = False
  return ~outside[labels]


def _levels(image: np.ndarray, threshold_fraction: float) -> tuple[float, float, float]:
  """(background level, p99, threshold) of steps 1-2."""
  # Percentiles on a strided subsample: the same answer to a few levels, much cheaper.
  step = max(1, int(np.sqrt(image.size / 250_000)))
  sample = image[::step, ::step]
  lo = float(image.min())
  hi = float(np.percentile(sample, 99))
  if hi <= lo:
    hi = float(image.max())
  bg = lo
  nonzero = sample[sample > 0]
  if nonzero.size and hi > lo and np.issubdtype(sample.dtype, np.integer):
    r = max(1, int(round(0.01 * (hi - lo))))
    hist = np.bincount(nonzero.astype(np.int64).ravel(), minlength=int(hi) + 1)
    band = np.convolve(hist, np.ones(2 * r + 1, np.int64), mode="same")
    k = int(np.argmax(band))
    if band[k] >= 0.2 * nonzero.size and k < lo + 0.5 * (hi - lo):
      bg = max(lo, float(min(k + r, hi)))
  return bg, hi, bg + max(1.0, threshold_fraction * (hi - bg))


def _peel_film_borders(image: np.ndarray, fg: np.ndarray, uniform: float) -> None:
  """Step 3, in place on `fg`: uniform bright rows / columns at the image edges -> background."""
  h, w = fg.shape
  for axis, size in ((0, h), (1, w)):
    for from_end in (False, True):
      for k in range(max(1, size // 8)):
        i = size - 1 - k if from_end else k
        line_fg = fg[i] if axis == 0 else fg[:, i]
        if line_fg.mean() < 0.9:
          break
        values = image[i] if axis == 0 else image[:, i]
        q1, q3 = np.percentile(values[line_fg], [25, 75])
        if q3 - q1 > uniform:
          break
        line_fg[...] = False


def breast_mask(image: np.ndarray, threshold_fraction: float = 0.05,
                factor: int = 1) -> np.ndarray:
  """bool [ceil(H/f), ceil(W/f)]: the breast by steps 1-6 of the module docstring.

  With ``factor > 1`` the mask is returned on the cell grid of `downsample_mask`: steps 1-4 run
  at full resolution, a cell is foreground when at least half of its pixels are, and the largest
  component and hole filling run on the cells (this is what the converter stores).
  """
  image = np.asarray(image)
  if image.ndim != 2 or image.size == 0:
    raise ValueError(f"breast_mask needs a non-empty 2-D image, got shape {image.shape}")
  bg, hi, threshold = _levels(image, threshold_fraction)
  fg = image >= threshold
  _peel_film_borders(image, fg, 0.02 * max(hi - bg, 1.0))
  fg = ndimage.binary_opening(fg, structure=np.ones((3, 3), bool))
  if factor > 1:
    fg = downsample_mask(fg, factor).astype(bool)
  if not fg.any():
    raise ValueError("no breast found (image has no pixels above the background)")
  labels, n = ndimage.label(fg, structure=_EIGHT)
  if n > 1:
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    fg = labels == int(np.argmax(sizes))
  return fill_holes(fg)


def downsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
  """uint8 [ceil(H/f), ceil(W/f)]: 1 where at least half of the cell's pixels are breast."""
  mask = np.asarray(mask, bool)
  if factor < 1:
    raise ValueError(f"mask downsample factor must be >= 1, got {factor}")
  if factor == 1:
    return mask.astype(np.uint8)
  h, w = mask.shape
  hh, ww = -(-h // factor), -(-w // factor)
  padded = np.zeros((hh * factor, ww * factor), np.uint8)
  padded[:h, :w] = mask
  counts = padded.reshape(hh, factor, ww, factor).sum(axis=(1, 3), dtype=np.int32)
  rows = np.minimum(factor, h - np.arange(hh) * factor)
  cols = np.minimum(factor, w - np.arange(ww) * factor)
  area = rows[:, None] * cols[None, :]
  return (2 * counts >= area).astype(np.uint8)


def upsample_mask(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
  """bool `shape`: nearest-neighbour inverse of `downsample_mask` (cells repeated, then cropped)."""
  mask = np.asarray(mask) > 0
  h, w = shape
  if mask.shape != (-(-h // factor), -(-w // factor)):
    raise ValueError(f"mask shape {mask.shape} does not match image {shape} at factor {factor}")
  return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)[:h, :w]
