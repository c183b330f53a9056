"""Figures of the input pipeline: sample patches (paper Fig. 1) and average c.d.f.s (Fig. 2).

Every function returns a `matplotlib.figure.Figure` (and the `save_*` helpers write PNGs), so the
report and TensorBoard can reuse them. Importing this module chooses no matplotlib backend: the
entry point does (or matplotlib's default, Agg without a display); the study's figure writers
choose Agg where they draw (`mammo_tf.evaluation.study_figures`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from mammo_tf.config import MAX_INTENSITY
from mammo_tf.config import NUM_LEVELS
from mammo_tf.data import cdf as cdf_lib
from mammo_tf.data import schema

if TYPE_CHECKING:
  from matplotlib.figure import Figure


def _pyplot():
  from matplotlib import pyplot as plt
  return plt


def _no_augmentation(cfg):
  data = dataclasses.replace(cfg.data, hflip=False, vflip=False, noise_std=0.0,
                             translate_std=0.0, rotation_deg=0.0, reuse=1)
  return dataclasses.replace(cfg, data=data)


def sample_patches(data_dir: str, domain: str, cfg, *, split: str = "train", num: int = 6,
                   seed: int = 0, hm_lut=None) -> dict[str, np.ndarray]:
  """Training patches of the same sampled images in four versions.

  Returns ``{"plain", "augmented", "plain+HM", "augmented+HM"}`` -> float32 [num, P, P] and
  ``"label"`` -> [num]. HM versions are present only when `hm_lut` is given. The same seed picks
  the same images and centres in every version (augmentation only adds its own draws).
  """
  from mammo_tf.data import pipeline

  def first(c, lut):
    c = dataclasses.replace(c, data=dataclasses.replace(c.data, batch_size=num, reuse=1))
    ds = pipeline.make_train_dataset(data_dir, domain, split, c, seed, hm_lut=lut)
    patch, label = next(iter(ds))
    return patch.numpy()[..., 0], label.numpy()

  out = {}
  out["plain"], out["label"] = first(_no_augmentation(cfg), None)
  out["augmented"], _ = first(cfg, None)
  if hm_lut is not None:
    out["plain+HM"], _ = first(_no_augmentation(cfg), hm_lut)
    out["augmented+HM"], _ = first(cfg, hm_lut)
  return out


def patch_grid_figure(samples: dict[str, np.ndarray], title: str = "") -> Figure:
  """Rows = versions (plain / augmented / +HM), columns = sampled images; 12-bit grey scale."""
  plt = _pyplot()
  rows = [k for k in ("plain", "augmented", "plain+HM", "augmented+HM") if k in samples]
  num = samples["plain"].shape[0]
  fig, axes = plt.subplots(len(rows), num, figsize=(1.8 * num, 1.9 * len(rows)), squeeze=False)
  for r, key in enumerate(rows):
    for c in range(num):
      ax = axes[r, c]
      ax.imshow(samples[key][c], cmap="gray", vmin=0, vmax=MAX_INTENSITY)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(key, fontsize=9)
      if r == 0:
        ax.set_title("positive" if samples["label"][c] > 0.5 else "negative", fontsize=9)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def matched_cdf(src_cdf: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """c.d.f. of LUT(X) for X ~ src_cdf on the 0..4095 grid (values rounded to levels)."""
  src = np.asarray(src_cdf, np.float64)
  pmf = np.diff(src, prepend=0.0)
  levels = np.clip(np.rint(np.asarray(lut, np.float64)), 0, NUM_LEVELS - 1).astype(np.int64)
  return np.cumsum(np.bincount(levels, weights=pmf, minlength=NUM_LEVELS))


def cdf_figure(ffdm_cdf: np.ndarray, mip_cdf: np.ndarray, lut: np.ndarray | None = None
               ) -> Figure:
  """Average cumulative histograms of FFDM, MIP and HM-MIP on 0..4095 (paper Fig. 2)."""
  plt = _pyplot()
  if lut is None:
    lut = cdf_lib.hm_lut(mip_cdf, ffdm_cdf)
  x = np.arange(NUM_LEVELS)
  fig, ax = plt.subplots(figsize=(5.5, 4.0))
  ax.plot(x, ffdm_cdf, label="FFDM", lw=2)
  ax.plot(x, mip_cdf, label="MIP", lw=2)
  ax.plot(x, matched_cdf(mip_cdf, lut), label="HM-MIP", lw=1.5, ls="--")
  ax.set_xlim(0, MAX_INTENSITY)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("intensity (12-bit)")
  ax.set_ylabel("average cumulative histogram")
  ax.legend(loc="lower right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def save_preview(data_dir: str, domain: str, cfg, out_path: str, *, cdf_out: str | None = None,
                 split: str = "train", num: int = 6, seed: int = 0) -> tuple[str, str | None]:
  """Writes the patch grid (HM rows when both c.d.f. files exist) and, for the c.d.f.s, Fig. 2.

  Returns the paths written (the second is None when a c.d.f. file is missing).
  """
  import os

  import matplotlib
  matplotlib.use("Agg")   # writes files only
  plt = _pyplot()
  ffdm_path, dbt_path = schema.cdf_path(data_dir, "ffdm"), schema.cdf_path(data_dir, domain)
  have_cdfs = os.path.exists(ffdm_path) and os.path.exists(schema.cdf_path(data_dir, "dbt"))
  lut = cdf_lib.lut_from_files(dbt_path, ffdm_path) if have_cdfs else None
  samples = sample_patches(data_dir, domain, cfg, split=split, num=num, seed=seed, hm_lut=lut)
  fig = patch_grid_figure(samples, title=f"{domain} {split} patches (HM: {domain} -> ffdm)")
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  if not have_cdfs:
    return out_path, None
  if cdf_out is None:
    stem, ext = os.path.splitext(out_path)
    cdf_out = f"{stem}_cdf{ext or '.png'}"
  fig = cdf_figure(cdf_lib.load_cdf(ffdm_path), cdf_lib.load_cdf(schema.cdf_path(data_dir, "dbt")))
  fig.savefig(cdf_out, dpi=110)
  plt.close(fig)
  return out_path, cdf_out
