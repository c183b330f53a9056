r"""Why HM falls short at a shift study's strongest level: one table per domain or one per image.

  python bench/shift_oracle_residual.py --workdir runs/shift [--level 4]

For the test images of a finished `eval.shift_study` work dir, the mean per-image |difference|
to the level-0 rendering (grey levels, breast pixels) three ways:

- as read;
- after the study's HM: one table per level (its average c.d.f. onto the training one);
- after an oracle HM: each image matched onto its own level-0 rendering
  (`skimage.exposure.match_histograms`, independent of this project's HM code).

If the oracle leaves little, the intensities are still there and the shift is monotone within
each image, but not the same map for all images: one table per domain cannot undo it. If the
oracle leaves as much as the table, the values were lost (clipping, quantisation).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from skimage import exposure

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mammo_tf.data import cdf
from mammo_tf.data import schema
from mammo_tf.evaluation import hm_residual


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--level", type=int, default=-1, help="level index (default: the last)")
  args = parser.parse_args()
  levels = sorted(int(d) for d in os.listdir(os.path.join(args.workdir, "levels")))
  j = levels[args.level] if args.level < 0 else args.level
  level_dir = os.path.join(args.workdir, "levels", str(j), "data")
  ref_dir = os.path.join(args.workdir, "levels", "0", "data")
  t0 = time.perf_counter()
  lut = cdf.lut_from_files(schema.cdf_path(level_dir, "ffdm"),
                           schema.cdf_path(os.path.join(args.workdir, "data"), "ffdm"))
  level, reference = (hm_residual.read_split(d, "ffdm", "test") for d in (level_dir, ref_dir))
  table = hm_residual.residual(level, reference, lut)
  oracle = []
  for image_id in sorted(set(level) & set(reference)):
    x, _ = level[image_id]
    x0, mask = reference[image_id]
    if mask.any():
      matched = exposure.match_histograms(x[mask].astype(np.float64), x0[mask].astype(np.float64))
      oracle.append(float(np.mean(np.abs(matched - x0[mask]))))
  seconds = time.perf_counter() - t0
  print(f"level {j}, {table['images']} test images ({seconds:.1f} s)")
  print(f"  as read:                     {table['before']:8.1f} grey levels")
  print(f"  one HM table for the level:  {table['after']:8.1f}")
  print(f"  oracle HM, image by image:   {np.mean(oracle):8.1f}")
  print(f"  table / oracle residual:     {table['after'] / max(np.mean(oracle), 1e-9):8.1f}x")


if __name__ == "__main__":
  main()
