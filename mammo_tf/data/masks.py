"""Breast segmentation: threshold + largest connected component + hole filling.

`breast_mask` works on the stored 12-bit image (background 0 after io.dicom, DESIGN §4.2):

1. threshold ``t = bg + max(1, threshold_fraction * (p99 - bg))`` where ``bg`` is the image's
   minimum and ``p99`` the 99th percentile (robust to a noisy or non-zero background and to a few
   saturated pixels; 5 % of the range by default);
2. keep the largest 8-connected component above ``t`` (drops markers, labels, noise specks);
3. fill its holes (fatty tissue darker than ``t`` inside the breast stays breast).

An image with nothing above the threshold raises ``ValueError("no breast found ...")``.

`downsample_mask` stores the mask at ``1/factor`` resolution: a cell is breast when **at least
half** of its pixels are (majority rule; edge cells count only their real pixels), so a centre
drawn from the stored mask lies in the breast. The converter calls ``breast_mask(stored,
factor=mask_downsample)``, which applies the majority rule to the thresholded pixels and then
runs steps 2-3 on the cell grid (64x cheaper at factor 8 than full resolution). `upsample_mask` is its nearest-neighbour inverse,
used for "breast pixels only" c.d.f.s both at conversion and when recomputing from TFRecords, so
the two give identical results.
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


def breast_mask(image: np.ndarray, threshold_fraction: float = 0.05,
                factor: int = 1) -> np.ndarray:
  """bool [ceil(H/f), ceil(W/f)]: the largest bright connected component, holes filled.

  With ``factor > 1`` the mask is computed directly on the cell grid of `downsample_mask`: a cell
  is foreground when at least half of its pixels reach the threshold, and the largest component
  and hole filling run on the cells (f^2 times cheaper than at full resolution; this is what the
  converter stores).
  """
  image = np.asarray(image)
  if image.ndim != 2 or image.size == 0:
    raise ValueError(f"breast_mask needs a non-empty 2-D image, got shape {image.shape}")
  bg = float(image.min())
  # Percentile on a strided subsample: the same answer to a few levels, much cheaper.
  step = max(1, int(np.sqrt(image.size / 250_000)))
  hi = float(np.percentile(image[::step, ::step], 99))
  if hi <= bg:
    hi = float(image.max())
  threshold = bg + max(1.0, threshold_fraction * (hi - bg))
  fg = image >= threshold
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
