"""Figure of sample synthetic FFDM and DBT-MIP images, with and without findings.

  python bench/make_synthetic_figure.py --out docs/synthetic_samples.png

Generates a few demo-geometry patients into a temporary folder, reads the DICOM files back with
the project's reader (12-bit, background 0) and shows, per class, one FFDM image and one MIP
(whole image with the finding box, and the 192 px window around it).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mammo_tf import config
from mammo_tf.io import dicom
from mammo_tf.synthetic.cohort import generate_cohort

CLASSES = ("normal", "benign", "high_risk", "malignant")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="docs/synthetic_samples.png")
  ap.add_argument("--patients", type=int, default=80)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  cfg = config.get_config("demo").synthetic
  with tempfile.TemporaryDirectory() as tmp:
    rep = generate_cohort(tmp, cfg, args.seed, num_patients=args.patients, workers=2)
    with open(rep.manifest) as f:
      rows = list(csv.DictReader(f))
    pick = {}
    for r in rows:
      key = (r["domain"], r["label"])
      if key not in pick and (r["label"] in ("normal", "benign") or r["roi_x"]):
        if r["label"] == "benign" and not r["roi_x"]:
          continue
        pick[key] = r
    fig, axes = plt.subplots(4, len(CLASSES), figsize=(3.2 * len(CLASSES), 13))
    for j, label in enumerate(CLASSES):
      for i, domain in enumerate(("ffdm", "dbt")):
        ax_full, ax_crop = axes[2 * i, j], axes[2 * i + 1, j]
        r = pick.get((domain, label))
        for ax in (ax_full, ax_crop):
          ax.set_xticks([]), ax.set_yticks([])
        if r is None:
          continue
        img, meta = dicom.read_image(os.path.join(tmp, r["path"]), domain)
        name = "FFDM" if domain == "ffdm" else "DBT MIP"
        ax_full.imshow(img, cmap="gray", vmin=0, vmax=4095)
        ax_full.set_title(f"{name}: {label}\n{meta.manufacturer}, {meta.bits_stored}-bit "
                          f"{meta.photometric[-1]}", fontsize=8)
        h, w = img.shape
        if r["roi_x"]:
          x, y, bw, bh = (int(r[k]) for k in ("roi_x", "roi_y", "roi_w", "roi_h"))
        else:
          ys, xs = np.nonzero(img > 0)
          x, y, bw, bh = int(xs.mean()), int(ys.mean()), 1, 1
        cy, cx = y + bh // 2, x + bw // 2
        r0, c0 = int(np.clip(cy - 96, 0, h - 192)), int(np.clip(cx - 96, 0, w - 192))
        crop = img[r0:r0 + 192, c0:c0 + 192]
        vals = crop[crop > 0]
        lo, hi = (np.percentile(vals, [0.5, 99.5]) if vals.size else (0, 4095))
        ax_crop.imshow(crop, cmap="gray", vmin=lo, vmax=hi)
        ax_crop.set_title(f"{name} 192 px window", fontsize=8)
        if r["roi_x"]:
          for ax, ox, oy in ((ax_full, 0, 0), (ax_crop, c0, r0)):
            ax.add_patch(plt.Rectangle((x - ox, y - oy), bw, bh, fill=False, ec="r", lw=1))
    fig.suptitle("Synthetic cohort (demo geometry 512x416): FFDM and DBT MIP by class", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
