"""Figures of the studies: the domain-shift curve (and, beside it, Table 2's figures).

Each function draws one PNG with matplotlib's Agg backend, chosen where the figure is drawn.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def shift_figure(shift: Mapping[str, Any], path: str) -> str:
  """AUC against the c.d.f. distance, one line per method, error bars = std over the seeds.

  `shift` is the content of shift.json; undefined AUCs (None) are left out of their line.
  """
  from mammo_tf.evaluation import shift as shift_lib
  plt = _pyplot()
  x = np.asarray(shift["distance"], np.float64)
  fig, ax = plt.subplots(figsize=(5.6, 4.2), dpi=100)
  try:
    for method, marker in zip(shift_lib.METHODS, ("o", "s")):
      y = np.array([np.nan if v is None else v for v in shift[method]], np.float64)
      e = np.array([np.nan if v is None else v for v in shift[f"{method}_std"]], np.float64)
      ok = np.isfinite(y)
      ax.errorbar(x[ok], y[ok], yerr=np.nan_to_num(e[ok]), marker=marker, capsize=3,
                  label=shift_lib.METHOD_LABELS[method])
    for xi, f in zip(x, shift["factor"]):
      ax.annotate(f"x{f:g}", (xi, 0.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                  textcoords="offset points", ha="center", fontsize=7, color="0.4")
    ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
    ax.set_xlabel("Kolmogorov distance to the training c.d.f.")
    ax.set_ylabel(f"ROC AUC (mean ± std, seeds {', '.join(map(str, shift['eval_seeds']))})")
    ax.set_title(f"FFDM model under a controlled intensity shift ({shift['preset']})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
  finally:
    plt.close(fig)
  return path
