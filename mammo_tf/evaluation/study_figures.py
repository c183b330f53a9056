"""Figures of the studies: Table 2's (paper Figs. 1-3, ROC curves) and the domain-shift curve.

They sit beside `mammo_tf.data.figures`, whose patch grid and c.d.f. plots they reuse. Each
function writes one PNG with matplotlib's Agg backend, chosen where the figure is drawn.
`make_figures` writes what the report links; a figure that fails is logged and left out, it
never stops a study.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.evaluation import run_records
from mammo_tf.evaluation.rows import ROWS
from mammo_tf.evaluation.rows import Row
from mammo_tf.io import workdir_names as names


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def shift_figure(shift: Mapping[str, Any], path: str) -> str:
  """AUC against the c.d.f. distance, one line per method, error bars = std over the seeds.

  `shift` is the content of shift.json; undefined AUCs (None) are left out of their line. When
  it holds the model-free residuals, a second panel shows them against the same distance.
  """
  plt = _pyplot()
  panels = [_shift_auc_panel]
  if "residual_hm" in shift:
    panels.append(_shift_residual_panel)
  if "target_fractions" in shift:
    panels.append(_shift_fraction_panel)
  fig, axes = plt.subplots(1, len(panels), figsize=(0.6 + 5.0 * len(panels), 4.2), dpi=100,
                           squeeze=False)
  try:
    for ax, panel in zip(axes[0], panels):
      panel(ax, shift)
    fig.tight_layout()
    fig.savefig(path)
  finally:
    plt.close(fig)
  return path


def _shift_methods(shift: Mapping[str, Any]) -> list[tuple[str, str]]:
  """(key, label) of the methods shift.json holds, in the table's order."""
  from mammo_tf.evaluation import shift as shift_lib
  from mammo_tf.evaluation import shift_adapt
  labels = dict(shift_lib.METHOD_LABELS, **shift_adapt.METHOD_LABELS)
  return [(m, labels[m]) for m in (*shift_lib.METHODS, *shift_adapt.METHODS) if m in shift]


def _shift_auc_panel(ax: Any, shift: Mapping[str, Any]) -> None:
  x = np.asarray(shift["distance"], np.float64)
  for (method, label), marker in zip(_shift_methods(shift), ("o", "s", "^", "D")):
    y = np.array([np.nan if v is None else v for v in shift[method]], np.float64)
    e = np.array([np.nan if v is None else v for v in shift[f"{method}_std"]], np.float64)
    ok = np.isfinite(y)
    ax.errorbar(x[ok], y[ok], yerr=np.nan_to_num(e[ok]), marker=marker, capsize=3, label=label)
  for xi, f in zip(x, shift["factor"]):
    ax.annotate(f"x{f:g}", (xi, 0.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                textcoords="offset points", ha="center", fontsize=7, color="0.4")
  ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
  ax.set_xlabel("Kolmogorov distance to the training c.d.f.")
  ax.set_ylabel(f"ROC AUC (mean ± std, seeds {', '.join(map(str, shift['eval_seeds']))})")
  ax.set_title(f"FFDM model under a controlled intensity shift ({shift['preset']})", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)


def _shift_residual_panel(ax: Any, shift: Mapping[str, Any]) -> None:
  x = np.asarray(shift["distance"], np.float64)
  for method, marker, label in (("test_only", "o", "as read"), ("hm", "s", "after HM")):
    ax.plot(x, shift[f"residual_{method}"], marker=marker, label=label)
  ax.set_xlabel("Kolmogorov distance to the training c.d.f.")
  ax.set_ylabel("mean |image - its level-0 rendering| (grey levels)")
  ax.set_title("What HM undoes, image by image (no model)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)


def _shift_fraction_panel(ax: Any, shift: Mapping[str, Any]) -> None:
  """Adapted AUC against the share of target training data, at level 0 and the largest shift."""
  from mammo_tf.evaluation import shift_adapt
  pct = 100.0 * np.asarray(shift["target_fractions"], np.float64)
  last = len(shift["levels"]) - 1
  for (method, marker), color in zip(zip(shift_adapt.METHODS, ("^", "D")), ("C2", "C3")):
    for j, style in ((0, "--"), (last, "-")):
      y = np.array([np.nan if v is None else v for v in shift[f"{method}_by_fraction"][j]])
      e = np.array([np.nan if v is None else v for v in shift[f"{method}_by_fraction_std"][j]])
      ax.errorbar(pct, y, yerr=np.nan_to_num(e), marker=marker, ls=style, color=color, capsize=3,
                  label=f"{shift_adapt.METHOD_LABELS[method]}, level {shift['levels'][j]}")
  ax.set_xlabel("target-domain training patients used (%)")
  ax.set_ylabel("ROC AUC (mean ± std over the seeds)")
  ax.set_title("Adaptation against the amount of target data", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=7)


def _figure(workdir: str, name: str, make: Callable[[str], Any], *, force: bool = False
            ) -> str | None:
  """Makes figures/<name> unless it exists; returns its path relative to `workdir` or None."""
  rel = os.path.join(names.FIGURES_DIR, name)
  path = os.path.join(workdir, rel)
  if os.path.exists(path) and not force:
    return rel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    make(path)
  except Exception as e:  # a figure never stops the study
    logging.warning("figure %s failed: %s: %s", name, type(e).__name__, e)
    return None
  if not os.path.exists(path):
    logging.warning("figure %s was not written", name)
    return None
  logging.info("figure %s written", rel)
  return rel


def make_figures(cfg: config_lib.ExperimentConfig, data_dir: str, workdir: str,
                 results: Mapping[str, Mapping[str, Any]], *, refresh_roc: Sequence[str] = (),
                 rows: Sequence[Row] = ROWS) -> dict[str, str]:
  """Writes the report's figures; returns {figure key: path relative to workdir}."""
  figures: dict[str, str] = {}

  def add(key, name, make, force=False):
    rel = _figure(workdir, name, make, force=force)
    if rel:
      figures[key] = rel

  results = {k: v for k, v in results.items() if v.get("roc")}   # rows with a defined AUC
  _roc_figures(results, rows, refresh_roc, add)
  add("sample_patches", "sample_patches.png", lambda p: sample_patch_figure(data_dir, cfg, p))
  add("cumulative_histograms", "cumulative_histograms.png",
      lambda p: cumulative_histogram_figure(data_dir, p))
  _policy_figures(workdir, add)
  return figures


def _roc_figures(results: Mapping[str, Mapping[str, Any]], rows: Sequence[Row],
                 refresh_roc: Sequence[str], add: Callable[..., None]) -> None:
  """One ROC figure per row, and one per test domain (MIP, MIP with HM) with every procedure."""
  from mammo_tf.evaluation import evaluate as evaluate_lib
  for row in rows:
    if row.key in results:
      add(f"roc_{row.key}", f"roc_{row.key}.png",
          lambda p, r=row: evaluate_lib.plot_roc_curves([(r.procedure, results[r.key])], p,
                                                        title=r.label),
          force=row.key in refresh_roc)
  for name, keys in (("roc_mip.png", [r for r in rows if r.domain == "dbt" and not r.hm]),
                     ("roc_hm.png", [r for r in rows if r.hm])):
    present = [r for r in keys if r.key in results]
    if present:
      add(name[:-4], name,
          lambda p, rs=present: evaluate_lib.plot_roc_curves(
              [(r.procedure, results[r.key]) for r in rs], p,
              title=f"FFDM -> {rs[0].test_data}"),
          force=any(r.key in refresh_roc for r in present))


def sample_patch_figure(data_dir: str, cfg: config_lib.ExperimentConfig, path: str, *,
                        num: int = 6, seed: int = 0) -> str:
  """Paper Fig. 1: un-augmented training patches, rows FFDM, MIP and MIP with HM."""
  from mammo_tf.data import figures as data_figures
  from mammo_tf.data import pipeline
  plt = _pyplot()
  ffdm = data_figures.sample_patches(data_dir, "ffdm", cfg, num=num, seed=seed)
  mip = data_figures.sample_patches(data_dir, "dbt", cfg, num=num, seed=seed,
                                    hm_lut=pipeline.hm_lut_for(data_dir, "dbt", "ffdm"))
  rows = (("FFDM", ffdm["plain"], ffdm["label"]), ("MIP", mip["plain"], mip["label"]),
          ("MIP with HM", mip["plain+HM"], mip["label"]))
  fig, axes = plt.subplots(len(rows), num, figsize=(1.6 * num, 1.75 * len(rows)), squeeze=False)
  try:
    for r, (name, patches, labels) in enumerate(rows):
      for c in range(num):
        ax = axes[r, c]
        ax.imshow(patches[c], cmap="gray", vmin=0, vmax=config_lib.MAX_INTENSITY)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("positive" if labels[c] > 0.5 else "negative", fontsize=7)
        if c == 0:
          ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  finally:
    plt.close(fig)
  return path


def cumulative_histogram_figure(data_dir: str, path: str) -> str:
  """Paper Fig. 2: average cumulative histograms of FFDM, MIP and HM-MIP (from cdf_*.npz)."""
  from mammo_tf.data import cdf
  from mammo_tf.data import figures as data_figures
  from mammo_tf.data import schema
  plt = _pyplot()
  fig = data_figures.cdf_figure(cdf.load_cdf(schema.cdf_path(data_dir, "ffdm")),
                                cdf.load_cdf(schema.cdf_path(data_dir, "dbt")))
  try:
    fig.savefig(path, dpi=100)
  finally:
    plt.close(fig)
  return path


def _policy_figures(workdir: str, add: Callable[..., None]) -> None:
  """Paper Fig. 3: both SpotTune policies in one figure, or each one that exists."""
  from mammo_tf.training import policy
  paths = {run: os.path.join(run_records.run_dir(workdir, run), names.POLICY_FILE)
           for run in ("spottune", "spottune_hm")}
  if all(os.path.exists(p) for p in paths.values()):
    add("policy_comparison", "policy_comparison.png",
        lambda p: policy.plot_policy_comparison(paths["spottune"], paths["spottune_hm"], p))
    return
  for run, src in paths.items():
    if os.path.exists(src):
      add(f"policy_{run}", f"policy_{run}.png",
          lambda p, src=src, r=run: policy.plot_policy_file(src, p, title=(
              "SpotTune policy, MIP with HM" if r.endswith("_hm") else "SpotTune policy, MIP")))
