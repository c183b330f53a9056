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

from mammo_tf.data import masks
from mammo_tf.data import schema
from mammo_tf.data import writer

Images = dict  # {image_id: (image uint16 [H, W], breast mask bool [H, W])}, see `read_split`


def read_split(data_dir: str, domain: str, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{image_id: (image uint16 [H, W], breast mask bool [H, W])} of one domain/split's shards."""
  out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for path in sorted(glob.glob(schema.shard_pattern(data_dir, domain, split))):
    for serialized in writer.iter_shard(path):
      rec = schema.decode_example_numpy(serialized)
      image = rec["image"]
      out[rec["image_id"]] = (image, masks.upsample_mask(rec["mask"], rec["mask_downsample"],
                                                         image.shape))
  return out


def intensity_residual(level_dir: str, reference_dir: str, lut: np.ndarray, *,
                       domain: str = "ffdm", split: str = "test") -> dict[str, Any]:
  """`residual` of two converter output folders' ``domain``/``split`` images."""
  return residual(read_split(level_dir, domain, split), read_split(reference_dir, domain, split),
                  lut, what=f"{level_dir} and {reference_dir}", domain=domain, split=split)


def residual(level: Images, reference: Images, lut: np.ndarray, *, what: str = "the levels",
             domain: str = "ffdm", split: str = "test") -> dict[str, Any]:
  """Mean per-image |difference| to level 0, before and after HM, over the images both hold.

  `level` and `reference` come from `read_split` (read level 0 once for every level). Returns
  ``{"before": float, "after": float, "images": int}``. Raises ValueError when the two share no
  image (not renderings of the same patients).
  """
  common = sorted(set(level) & set(reference))
  if not common:
    raise ValueError(f"{what} share no {domain}/{split} image")
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
    raise ValueError(f"{what}: no breast pixels in the {domain}/{split} images")
  return {"before": float(np.mean(before)), "after": float(np.mean(after)), "images": len(before)}
