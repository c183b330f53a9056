"""SpotTune policy statistics and the paper's Fig. 3 (per-unit fine-tune fractions).

For each gated residual unit ``stage{i}_unit{j}``, the fraction of patches whose hard decision
(1 = the fine-tuned copy ran) selects the fine-tuned copy, over the validation patches. The
decisions are the model's ``training=False`` ones: argmax of the policy logits by default
(``train.policy_eval``), Gumbel-sampled with ``policy_eval="sample"`` -- the file says which.

``policy.json`` (written by the SpotTune job)::

  {"units": ["stage1_unit1", ...], "stages": [1, 1, ...], "fraction_tuned": [...],
   "fraction_tuned_positive": [...], "fraction_tuned_negative": [...],
   "decision": "argmax", "split": "val", "num_patches": N, "epoch": best_epoch, "hm": false,
   "per_epoch": [[...], ...]}
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from mammo_tf.io import workdir_names as names
from mammo_tf.training import runtime

POLICY_FILE = names.POLICY_FILE
_UNIT = re.compile(r"stage(\d+)_unit(\d+)")


def fraction_tuned(gates: np.ndarray) -> np.ndarray:
  """Per-unit mean of hard decisions ``[N, T]`` in {0, 1}: float64 ``[T]`` (NaN when N = 0)."""
  gates = np.asarray(gates, np.float64)
  if gates.ndim != 2:
    raise ValueError(f"gates must be [N, T], got shape {gates.shape}")
  if not np.all((gates == 0.0) | (gates == 1.0)):
    raise ValueError("gates must be hard decisions (exactly 0 or 1)")
  if gates.shape[0] == 0:
    return np.full(gates.shape[1], np.nan)
  return gates.mean(axis=0)


def stage_of(unit_names: Sequence[str]) -> list[int]:
  """Stage number of every ``stage{i}_unit{j}`` name."""
  out = []
  for name in unit_names:
    m = _UNIT.fullmatch(name)
    if not m:
      raise ValueError(f"unit name {name!r} is not of the form stage<i>_unit<j>")
    out.append(int(m.group(1)))
  return out


def policy_summary(gates: np.ndarray, labels: np.ndarray, unit_names: Sequence[str], *,
                   decision: str, split: str = "val", **extra: Any) -> dict[str, Any]:
  """The content of ``policy.json`` for hard decisions ``gates [N, T]`` and binary
  ``labels [N]``."""
  gates = np.asarray(gates)
  labels = np.asarray(labels).reshape(-1) > 0.5
  if gates.shape != (labels.shape[0], len(unit_names)):
    raise ValueError(f"gates {gates.shape} do not match {labels.shape[0]} labels and "
                     f"{len(unit_names)} units")

  def listed(a: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in a]

  return {"units": list(unit_names), "stages": stage_of(unit_names),
          "fraction_tuned": listed(fraction_tuned(gates)),
          "fraction_tuned_positive": listed(fraction_tuned(gates[labels])),
          "fraction_tuned_negative": listed(fraction_tuned(gates[~labels])),
          "decision": decision, "split": split, "num_patches": int(gates.shape[0]), **extra}


def save_policy(path: str, summary: Mapping[str, Any]) -> None:
  runtime.write_json_atomic(path, dict(summary))


def load_policy(path: str) -> dict[str, Any]:
  return runtime.read_json(path)


def plot_policy(policies: Mapping[str, Mapping[str, Any]], out_path: str,
                title: str = "SpotTune policy") -> str:
  """Fig. 3: bars of the fine-tuned fraction per unit, one bar series per policy, side by side.

  Args:
    policies: ``{legend label: policy.json content}``, e.g. ``{"MIP": ..., "MIP + HM": ...}``;
      all must have the same units.
    out_path: PNG to write.
    title: figure title.
  Stage boundaries are dashed vertical lines; the decision mode is stated in the axis label.
  """
  if not policies:
    raise ValueError("no policy to plot")
  items = list(policies.items())
  units = items[0][1]["units"]
  for label, p in items[1:]:
    if list(p["units"]) != list(units):
      raise ValueError(f"policy {label!r} has other units than {items[0][0]!r}")
  stages = stage_of(units)
  n, k = len(units), len(items)
  width = 0.8 / k
  import matplotlib
  matplotlib.use("Agg")   # drawn to a file (chosen here, not at import)
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * n + 2), 3.6))
  x = np.arange(n)
  for i, (label, p) in enumerate(items):
    values = np.array([np.nan if v is None else v for v in p["fraction_tuned"]], np.float64)
    ax.bar(x + (i - (k - 1) / 2) * width, np.nan_to_num(values), width, label=label)
  for t in range(1, n):
    if stages[t] != stages[t - 1]:
      ax.axvline(t - 0.5, color="0.4", ls="--", lw=1)
  for s in sorted(set(stages)):
    idx = [t for t in range(n) if stages[t] == s]
    ax.text(np.mean(idx), 1.02, f"stage {s}", ha="center", va="bottom", fontsize=8)
  ax.set_xticks(x)
  ax.set_xticklabels([str(t + 1) for t in range(n)])
  ax.set_xlabel("residual unit")
  decisions = sorted({str(p.get("decision", "?")) for _, p in items})
  ax.set_ylabel(f"fraction fine-tuned ({'/'.join(decisions)})")
  ax.set_ylim(0, 1.12)
  ax.set_xlim(-0.6, n - 0.4)
  ax.set_title(title, pad=14)
  if k > 1 or items[0][0]:
    ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path


def plot_policy_file(src: str, out_path: str, title: str = "SpotTune policy") -> str:
  """Fig. 3 for one ``policy.json``."""
  p = load_policy(src)
  label = "MIP + HM" if p.get("hm") else "MIP"
  return plot_policy({label: p}, out_path, title=title)


def plot_policy_comparison(raw_path: str, hm_path: str, out_path: str,
                           title: str = "SpotTune policy: MIP vs MIP + HM") -> str:
  """Fig. 3 with and without HM side by side (the paper's layout)."""
  return plot_policy({"MIP": load_policy(raw_path), "MIP + HM": load_policy(hm_path)}, out_path,
                     title=title)


def policy_figure_image(summary: Mapping[str, Any], title: str = "policy") -> np.ndarray:
  """Fig. 3 bars as a uint8 image ``[1, H, W, 4]`` (for TensorBoard)."""
  import tempfile

  import tensorflow as tf
  with tempfile.TemporaryDirectory() as tmp:
    path = plot_policy({"": summary}, os.path.join(tmp, "p.png"), title=title)
    with open(path, "rb") as f:
      return tf.io.decode_png(f.read(), channels=4).numpy()[None]
