"""How much of an intensity shift histogram matching undoes, image by image (no model involved).

The shift study renders the same test images at level 0 (the training response) and at level j.
For each image present at both levels, over the breast pixels of its level-0 record:

- before HM: ``mean |x_j - x_0|`` (grey levels on the stored 0..4095 scale);
- after HM: ``mean |LUT_j(x_j) - x_0|``, LUT_j the level's table (its average c.d.f. onto the
  training one).

Each figure is the mean over images (every image weighs the same, as in the average c.d.f.).
A change that is the same monotone map for every image leaves only the quantisation of the stored
values after HM; a change that differs from image to image (for example a per-image VOI window
applied after the shift) leaves a residual that one per-domain table cannot remove, whatever the
model does with it.
"""

from __future__ import annotations

import glob
from typing import Any

import numpy as np

from mammo_tf.data import schema
from mammo_tf.data import writer


def breast_pixels(mask: np.ndarray, mask_downsample: int, image_hw: tuple[int, int]) -> np.ndarray:
  """The stored-resolution breast mask (bool [H, W]) of a record's coarse mask."""
  md = int(mask_downsample)
  full = np.repeat(np.repeat(np.asarray(mask) > 0, md, axis=0), md, axis=1)
  h, w = image_hw
  out = np.zeros((h, w), bool)
  out[:min(h, full.shape[0]), :min(w, full.shape[1])] = full[:h, :w]
  return out


def read_split(data_dir: str, domain: str, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{image_id: (image uint16 [H, W], breast mask bool [H, W])} of one domain/split's shards."""
  out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for path in sorted(glob.glob(schema.shard_pattern(data_dir, domain, split))):
    for serialized in writer.iter_shard(path):
      rec = schema.decode_example_numpy(serialized)
      image = rec["image"]
      out[rec["image_id"]] = (image, breast_pixels(rec["mask"], rec["mask_downsample"],
                                                   image.shape))
  return out


def intensity_residual(level_dir: str, reference_dir: str, lut: np.ndarray, *,
                       domain: str = "ffdm", split: str = "test") -> dict[str, Any]:
  """Mean per-image |difference| to level 0, before and after HM, over the images both hold.

  Returns ``{"before": float, "after": float, "images": int}``. Raises ValueError when the two
  data dirs share no image of that split (not renderings of the same patients).
  """
  level = read_split(level_dir, domain, split)
  reference = read_split(reference_dir, domain, split)
  common = sorted(set(level) & set(reference))
  if not common:
    raise ValueError(f"{level_dir} and {reference_dir} share no {domain}/{split} image")
  table = np.asarray(lut, np.float64)
  before, after = [], []
  for image_id in common:
    x, _ = level[image_id]
    x0, mask = reference[image_id]
    if x.shape != x0.shape:
      raise ValueError(f"image {image_id}: shape {x.shape} at the level, {x0.shape} at level 0")
    if not mask.any():
      continue
    xj = x[mask].astype(np.int64)
    ref = x0[mask].astype(np.float64)
    before.append(float(np.mean(np.abs(xj - ref))))
    after.append(float(np.mean(np.abs(table[xj] - ref))))
  if not before:
    raise ValueError(f"{reference_dir}: no breast pixels in the {domain}/{split} images")
  return {"before": float(np.mean(before)), "after": float(np.mean(after)), "images": len(before)}
