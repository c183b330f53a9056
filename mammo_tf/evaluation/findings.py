"""The report's "what the demo shows" paragraphs, written from the numbers of a run.

Every sentence is computed from `results.json` (Table 2) and, when present, `shift.json` (the
controlled domain-shift study), so a rerun that changes the numbers changes the words: nothing
here claims a direction the data do not show. Two AUCs are called different only when their
patient-level bootstrap intervals do not overlap.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

# The expectation the shift study tests, from the method itself: an intensity change costs the
# model AUC as it grows, and histogram matching (which undoes a monotone intensity change)
# keeps the AUC near its level-0 value.
SHIFT_DROP = 0.08     # test-only AUC at the largest shift at least this far below level 0
HM_TOLERANCE = 0.04   # HM AUC within this of its own level-0 value at every level
# Model-free: HM "undoes" a level when it removes at least this share of the mean per-image
# difference to the level-0 renderings (what is left is the stored values' quantisation).
RESIDUAL_UNDONE = 0.95


def _num(v: Any) -> float | None:
  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
    return float(v)
  return None


def _rows(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
  return {r["key"]: r for r in results.get("rows", [])}


def _ci(row: Mapping[str, Any]) -> tuple[float, float] | None:
  ci = row.get("ci") or {}
  lo, hi = _num(ci.get("low")), _num(ci.get("high"))
  return (lo, hi) if lo is not None and hi is not None else None


def _auc(row: Mapping[str, Any]) -> str:
  ci = _ci(row)
  return f"{row['mean']:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
  """How row `b` relates to row `a`: "higher", "lower" (intervals apart) or "within"."""
  ca, cb = _ci(a), _ci(b)
  if ca and cb and (cb[0] > ca[1] or cb[1] < ca[0]):
    return "higher" if b["mean"] > a["mean"] else "lower"
  return "within"


def _versus(name: str, a: Mapping[str, Any], b: Mapping[str, Any], paper: float | None) -> str:
  delta = b["mean"] - a["mean"]
  how = compare(a, b)
  verdict = ("the intervals overlap, so this cohort cannot tell them apart" if how == "within"
             else f"{how}, with the patient-level intervals apart")
  text = f"{name}: {delta:+.3f} ({verdict})"
  if paper is not None:
    text += f"; the paper: {paper:+.3f}"
  return text


def table2_sentences(results: Mapping[str, Any]) -> list[str]:
  """What Table 2 shows: the domain gap and what HM and the adaptations change, with CIs."""
  rows = _rows(results)
  need = ("ffdm_scratch", "mip_test_only", "hm_test_only")
  if any(k not in rows or _num(rows[k].get("mean")) is None for k in need):
    return ["Table 2 has undefined AUCs (see its notes), so it supports no comparison."]
  ffdm, mip, hm = (rows[k] for k in need)
  paper = lambda k, ref: rows[k]["paper"]["mean"] - rows[ref]["paper"]["mean"]
  out = [f"The FFDM model scores {_auc(ffdm)} on FFDM and {_auc(mip)} on MIP.",
         _versus("MIP against FFDM", ffdm, mip, paper("mip_test_only", "ffdm_scratch")) + ".",
         _versus("Histogram matching against plain MIP, test only", mip, hm,
                 paper("hm_test_only", "mip_test_only")) + "."]
  for key, name, ref in (("mip_finetune", "Fine-tuning on MIP", "mip_test_only"),
                         ("mip_spottune", "SpotTune on MIP", "mip_test_only"),
                         ("hm_finetune", "Fine-tuning on MIP with HM", "hm_test_only"),
                         ("hm_spottune", "SpotTune on MIP with HM", "hm_test_only")):
    if key in rows and _num(rows[key].get("mean")) is not None:
      out.append(_versus(f"{name} against testing only", rows[ref], rows[key],
                         paper(key, ref)) + ".")
  return out


def shift_verdict(shift: Mapping[str, Any]) -> dict[str, Any]:
  """The numbers behind the shift sentences: drops from level 0 and whether they meet the
  expectation (test-only falls by at least SHIFT_DROP, HM stays within HM_TOLERANCE)."""
  t = [_num(v) for v in shift["test_only"]]
  h = [_num(v) for v in shift["hm"]]
  if t[0] is None or t[-1] is None or h[0] is None or any(v is None for v in h):
    return {"defined": False}
  hm_dev = max(abs(v - h[0]) for v in h)
  return {"defined": True, "test_only_drop": t[0] - t[-1], "hm_drop": h[0] - h[-1],
          "hm_max_deviation": hm_dev, "test_only_falls": t[0] - t[-1] >= SHIFT_DROP,
          "hm_holds": hm_dev <= HM_TOLERANCE,
          "monotone": all(b <= a + 1e-12 for a, b in zip(t, t[1:]) if a is not None
                          and b is not None)}


def shift_sentences(shift: Mapping[str, Any]) -> list[str]:
  """What the controlled shift shows, against the method's expectation."""
  v = shift_verdict(shift)
  d = shift["distance"]
  if not v["defined"]:
    return ["The shift study has undefined AUCs at some level (one class in the test split)."]
  t, h = shift["test_only"], shift["hm"]
  out = [f"Controlled shift ({len(d)} levels of the training vendor's response, Kolmogorov "
         f"distance {d[0]:.2f} to {d[-1]:.2f}): tested as it is, the model goes from "
         f"{t[0]:.3f} to {t[-1]:.3f} ({-v['test_only_drop']:+.3f}"
         f"{', falling at every level' if v['monotone'] else ', not monotonically'}); with "
         f"histogram matching from {h[0]:.3f} to {h[-1]:.3f} (largest deviation from level 0 "
         f"{v['hm_max_deviation']:.3f})."]
  if v["test_only_falls"] and v["hm_holds"]:
    out.append(f"This is the paper's mechanism: an intensity shift costs the model AUC (at least "
               f"{SHIFT_DROP} here) and histogram matching recovers it (within {HM_TOLERANCE}).")
  elif not v["test_only_falls"]:
    out.append(f"The model is robust to this shift (its AUC falls by less than {SHIFT_DROP}), so "
               "this cohort gives histogram matching little to recover.")
  else:
    out.append(f"The shift costs the model AUC, but histogram matching does not hold it within "
               f"{HM_TOLERANCE} of level 0.")
  out.extend(_residual_sentences(shift))
  out.extend(_adaptation_sentences(shift))
  return out


def _adaptation_sentences(shift: Mapping[str, Any]) -> list[str]:
  """Fine-tuning and SpotTune at the largest shift, with the least and the most target data."""
  if "target_fractions" not in shift:
    return []
  fractions = shift["target_fractions"]
  fmt = lambda v: "n/a" if _num(v) is None else f"{v:.3f}"
  parts = []
  for key, label in (("finetune", "FC-only fine-tuning"), ("spottune", "SpotTune")):
    row = shift[f"{key}_by_fraction"][-1]
    parts.append(f"{label} {fmt(row[0])} with {100 * fractions[0]:g}% and {fmt(row[-1])} with "
                 f"{100 * fractions[-1]:g}% of the target training patients")
  return [f"Adapting to the largest shift instead: {'; '.join(parts)} (test only "
          f"{fmt(shift['test_only'][-1])}, with HM {fmt(shift['hm'][-1])})."]


def _residual_sentences(shift: Mapping[str, Any]) -> list[str]:
  """What HM undoes image by image at the largest shift (no model), when shift.json has it."""
  if "residual_hm" not in shift:
    return []
  before, after = shift["residual_test_only"][-1], shift["residual_hm"][-1]
  removed = 1.0 - after / before if before > 0 else 1.0
  text = (f"Image by image (no model), the test images at the largest shift differ from their "
          f"level-0 renderings by {before:.0f} grey levels on average, {after:.0f} after "
          f"histogram matching ({100 * removed:.1f}% removed).")
  if removed >= RESIDUAL_UNDONE:
    return [text + " The shift is one monotone map for all images, which the table undoes."]
  return [text + " What is left is no single map shared by all images (for example each file's "
          "own VOI window applied after the shift) or was lost to quantisation: one table per "
          "domain cannot undo it."]


def what_the_demo_shows(results: Mapping[str, Any] | None,
                        shift: Mapping[str, Any] | None) -> list[str]:
  """Paragraphs (each a string) for the report."""
  paragraphs: list[str] = []
  if results is not None:
    paragraphs.append(" ".join(table2_sentences(results)))
  if shift is not None:
    paragraphs.append(" ".join(shift_sentences(shift)))
  return paragraphs


def shift_table(shift: Mapping[str, Any]) -> tuple[Sequence[str], list[list[str]]]:
  """(header, rows) of the shift levels for the report."""
  fmt = lambda m, s: "n/a" if _num(m) is None else f"{m:.3f} ± {(_num(s) or 0.0):.3f}"
  header = ["Level", "Response power", "Distance", "Test only", "With HM"]
  rows = [[str(j), f"{f:g}", f"{d:.3f}", fmt(t, ts), fmt(h, hs)]
          for j, f, d, t, ts, h, hs in zip(shift["levels"], shift["factor"], shift["distance"],
                                           shift["test_only"], shift["test_only_std"],
                                           shift["hm"], shift["hm_std"])]
  for key, label in (("finetune", "FC-only fine-tuning"), ("spottune", "SpotTune")):
    if key in shift:
      header.append(f"{label} ({100 * shift['target_fractions'][-1]:g}% target data)")
      for row, m, sd in zip(rows, shift[key], shift[f"{key}_std"]):
        row.append(fmt(m, sd))
  if "residual_hm" in shift:
    header.append("Image residual, as read -> with HM")
    for row, b, a in zip(rows, shift["residual_test_only"], shift["residual_hm"]):
      row.append(f"{b:.0f} -> {a:.0f}")
  return header, rows
