"""The study report: Table 2 beside the paper, the Table 1-style data summary and the figures.

The report is built once as a list of blocks (heading, paragraph, table, figure) and rendered to
Markdown (`report.md`) and to a self-contained HTML page (`report.html`, figures as relative
links) from the same blocks, so the two always carry the same content. A figure is linked only
when its file exists under the work directory. When the work directory holds ``shift.json`` and
``figures/shift.png`` (copied there by ``eval.shift_study --study W``), the report gains the
controlled domain-shift section; "What the demo shows" is written from the numbers
(`mammo_tf.evaluation.findings`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
from typing import Any, Mapping, Sequence

from mammo_tf import config as config_lib
from mammo_tf.evaluation import findings
from mammo_tf.io import files
from mammo_tf.io import workdir_names as names


@dataclasses.dataclass(frozen=True)
class Heading:
  text: str
  level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str


@dataclasses.dataclass(frozen=True)
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Figure:
  path: str      # relative to the work directory, "/" separated
  caption: str


FIGURE_CAPTIONS = (
    ("sample_patches", "Sample patches: FFDM, MIP and MIP with histogram matching (paper Fig. 1)."),
    ("cumulative_histograms", "Average cumulative histograms of FFDM, MIP and HM-MIP training "
                              "images, breast pixels (paper Fig. 2)."),
    ("policy_comparison", "SpotTune policies with and without HM: fraction of validation patches "
                          "routed to the fine-tuned copy of each residual block (paper Fig. 3)."),
    ("policy_spottune", "SpotTune policy: fraction of validation patches routed to the fine-tuned "
                        "copy "
                        "of each residual block, MIP (paper Fig. 3)."),
    ("policy_spottune_hm", "SpotTune policy, MIP with HM (paper Fig. 3)."),
    ("roc_mip", "ROC curves on MIP: the FFDM model tested only, fine-tuned and SpotTuned "
                "(one line per seed)."),
    ("roc_hm", "ROC curves on MIP with HM: the FFDM model tested only, fine-tuned and SpotTuned "
               "(one line per seed)."),
)


def _finite(v: Any) -> bool:
  return _is_number(v) and math.isfinite(v)


def fmt_auc(mean: float | None, std: float | None) -> str:
  """``0.909 ± 0.001``; ``n/a`` when undefined (None or NaN, e.g. a one-class test set)."""
  if not (_finite(mean) and _finite(std)):
    return "n/a"
  return f"{mean:.3f} ± {std:.3f}"


def _fmt(v: Any) -> str:
  return f"{v:.3f}" if _finite(v) else "n/a"


def table2(results: Mapping[str, Any]) -> Table:
  """Table 2 with our mean ± std beside the paper's value."""
  header = ("Training data", "Testing data", "Procedure", "ROC AUC (ours)", "95% CI (patients)",
            "AUC per seed", "Images / patients (pos)", "Paper")
  rows = []
  for r in results["rows"]:
    ci = (f"{_fmt(r['ci']['low'])}–{_fmt(r['ci']['high'])}"
          if _finite(r["ci"]["low"]) else "n/a")
    rows.append((r["train_data"], r["test_data"], r["procedure"], fmt_auc(r["mean"], r["std"]),
                 ci, ", ".join(_fmt(a) for a in r["aucs"]),
                 f"{r['n_images']} / {r['n_patients']} ({r['n_positive']})",
                 fmt_auc(r["paper"]["mean"], r["paper"]["std"])))
  return Table(header, rows)


def format_table(results: Mapping[str, Any]) -> str:
  """Plain-text Table 2 for the terminal."""
  t = table2(results)
  cols = [0, 1, 2, 3, 4, 7]
  header = [t.header[c] for c in cols]
  body = [[row[c] for c in cols] for row in t.rows]
  widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
  line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
  sep = "  ".join("-" * w for w in widths)
  return "\n".join([line(header), sep] + [line(r) for r in body])


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


_COUNT_COLUMNS = ("patients", "exams", "images", "positive", "negative")


def _counts_row(name: str, counts: Mapping[str, Any]) -> list[str]:
  classes = counts.get("classes") or {}
  return ([name] + [str(counts.get(c, "")) for c in _COUNT_COLUMNS]
          + [str(classes.get(label, "")) for label in config_lib.LABELS])


def _ordered(mapping: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
  """Items in the canonical `order` first (e.g. ffdm, dbt; train, val, test), then the rest."""
  rank = {k: i for i, k in enumerate(order)}
  return sorted(mapping.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def table1(summary: Mapping[str, Any]) -> list[Any]:
  """Table 1 from the converter's summary.json: counts per domain and split, per class."""
  header = ["Domain / split"] + list(_COUNT_COLUMNS) + list(config_lib.LABELS)
  rows = []
  for domain, counts in _ordered(summary["domains"], config_lib.DOMAINS):
    name = {"ffdm": "FFDM", "dbt": "DBT (MIP)"}.get(domain, domain)
    rows.append(_counts_row(name, counts))
    for split, split_counts in _ordered(counts.get("splits") or {}, config_lib.SPLITS):
      rows.append(_counts_row(f"  {name} {split}", split_counts))
  if isinstance(summary.get("total"), Mapping):
    rows.append(_counts_row("All images", summary["total"]))
  blocks: list[Any] = [Table(header, rows)]
  notes = [f"{k.replace('_', ' ')} {summary[k]}" for k in ("manifest_rows", "num_errors")
           if k in summary]
  if isinstance(summary.get("cdf_images"), Mapping):
    notes.append("average c.d.f. from " + ", ".join(
        f"{v} {k} images" for k, v in summary["cdf_images"].items()))
  if notes:
    blocks.append(Paragraph("Positive = high_risk or malignant. " + "; ".join(notes) + "."))
  return blocks


def summary_tables(summary: Mapping[str, Any]) -> list[Any]:
  """Table 1-style blocks from the converter's summary.json (`table1`), or, for another layout,
  generic tables whatever its nesting.

  A mapping whose values are mappings of numbers becomes a table (rows = outer keys, columns =
  inner keys); deeper mappings get a heading per level; top-level scalars become one table.
  """
  if isinstance(summary.get("domains"), Mapping) and all(
      isinstance(v, Mapping) for v in summary["domains"].values()):
    return table1(summary)
  blocks: list[Any] = []
  scalars = [(k, v) for k, v in summary.items() if not isinstance(v, Mapping)
             and not isinstance(v, (list, tuple))]
  if scalars:
    blocks.append(Table(("Item", "Value"), [(str(k), str(v)) for k, v in scalars]))
  for key, value in summary.items():
    if isinstance(value, Mapping):
      blocks.extend(_mapping_blocks(str(key), value))
  return blocks


def _mapping_blocks(title: str, value: Mapping[str, Any]) -> list[Any]:
  if value and all(isinstance(v, Mapping) and v and all(_is_number(x) for x in v.values())
                   for v in value.values()):
    columns: list[str] = []
    for v in value.values():
      for c in v:
        if c not in columns:
          columns.append(c)
    rows = [[str(k)] + [str(v.get(c, "")) for c in columns] for k, v in value.items()]
    return [Paragraph(f"**{title}**"), Table([""] + [str(c) for c in columns], rows)]
  if value and all(_is_number(v) for v in value.values()):
    return [Paragraph(f"**{title}**"),
            Table([str(k) for k in value], [[str(v) for v in value.values()]])]
  out: list[Any] = []
  leaves = [(k, v) for k, v in value.items() if not isinstance(v, Mapping)]
  if leaves:
    out.append(Paragraph(f"**{title}**: " + ", ".join(f"{k} {v}" for k, v in leaves)))
  for k, v in value.items():
    if isinstance(v, Mapping):
      out.extend(_mapping_blocks(f"{title} / {k}", v))
  return out


def existing_figures(workdir: str, figures: Mapping[str, str]) -> dict[str, str]:
  """Only the figures whose files exist, with "/"-separated relative paths."""
  out = {}
  for key, rel in figures.items():
    if rel and not os.path.isabs(rel) and os.path.isfile(os.path.join(workdir, rel)):
      out[key] = rel.replace(os.sep, "/")
  return out


SHIFT_FIGURE = f"{names.FIGURES_DIR}/{names.SHIFT_FIGURE}"


def _findings_blocks(results: Mapping[str, Any], shift: Mapping[str, Any] | None) -> list[Any]:
  return [Heading("What the demo shows")] + [
      Paragraph(p) for p in findings.what_the_demo_shows(results, shift)]


def _shift_blocks(shift: Mapping[str, Any], figure: str | None) -> list[Any]:
  header, rows = findings.shift_table(shift)
  blocks: list[Any] = [
      Heading("Controlled domain shift"),
      Paragraph(f"One FFDM model trained on a single vendor response (preset {shift['preset']}); "
                f"the same test lesions rendered through the {shift['family']}. Distance: "
                f"{shift['distance_measure']}. AUC: {shift['auc']} (± std over the seeds)."),
      Table(header, rows)]
  if figure:
    blocks.append(Figure(figure, "ROC AUC against the distance of the test images' intensity "
                                 "distribution from the training one: tested as they are and "
                                 "with histogram matching."))
  return blocks


def build_blocks(results: Mapping[str, Any], data_summary: Mapping[str, Any] | None,
                 figures: Mapping[str, str], shift: Mapping[str, Any] | None = None
                 ) -> list[Any]:
  """The report's content (figures must already be filtered with `existing_figures`)."""
  blocks: list[Any] = [Heading(f"mammo_tf study: Table 2 (preset {results['preset']})", 1)]
  seeds = ", ".join(str(s) for s in results["eval_seeds"])
  commit = results.get("commit") or "unknown"
  blocks.append(Paragraph(
      f"FFDM -> DBT (MIP) transfer of a patch classifier, after arXiv 2001.08381. Patch-level "
      f"ROC AUC on the {results['split']} split, one patch per image for each of the seeds "
      f"{seeds}; ± is the {results['std']}. The interval is a {results['ci']}. "
      f"Config seed {results['seed']}, commit {commit}."))
  blocks.append(Heading("Table 2: ROC AUC"))
  blocks.append(table2(results))
  notes = [f"{r['procedure']} on {r['test_data']}: {r['note']}" for r in results["rows"]
           if r.get("note")]
  if notes:
    blocks.append(Paragraph("Note: " + "; ".join(notes) + "."))
  blocks.extend(_findings_blocks(results, shift))
  if shift is not None:
    blocks.extend(_shift_blocks(shift, figures.get("shift")))
  trainings = results.get("trainings") or {}
  if trainings:
    blocks.append(Heading("Trainings"))
    rows = []
    for run, done in trainings.items():
      best_auc = done.get("best_val_auc")
      rows.append((run, str(done.get("best_epoch", "")),
                   f"{best_auc:.4f}" if _is_number(best_auc) else str(best_auc or "")))
    blocks.append(Table(("Run", "Best epoch", "Best validation AUC"), rows))
  blocks.append(Heading("Data (Table 1)"))
  if data_summary:
    blocks.extend(summary_tables(data_summary))
  else:
    blocks.append(Paragraph("No summary.json in the data directory."))
  shown = [(k, c) for k, c in FIGURE_CAPTIONS if k in figures]
  row_rocs = [(r, figures.get(f"roc_{r['key']}")) for r in results["rows"]]
  row_rocs = [(r, f) for r, f in row_rocs if f]
  if shown or row_rocs:
    blocks.append(Heading("Figures"))
    for key, caption in shown:
      blocks.append(Figure(figures[key], caption))
    for r, rel in row_rocs:
      blocks.append(Figure(rel, f"ROC: {r['train_data']} -> {r['test_data']}, {r['procedure']} "
                                f"(AUC {fmt_auc(r['mean'], r['std'])})."))
  return blocks


def _md_cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Any]) -> str:
  out = []
  for b in blocks:
    if isinstance(b, Heading):
      out.append("#" * b.level + " " + b.text)
    elif isinstance(b, Paragraph):
      out.append(b.text)
    elif isinstance(b, Table):
      out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
      out.append("|" + "|".join("---" for _ in b.header) + "|")
      out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)
    elif isinstance(b, Figure):
      alt = os.path.splitext(os.path.basename(b.path))[0]
      out.append(f"![{alt}]({b.path})\n\n*{b.caption}*")
    out.append("")
  return "\n".join(out)


def _inline_html(text: str) -> str:
  """Escapes text; **bold** (the only Markdown used in paragraphs) becomes <b>."""
  parts = html.escape(text).split("**")
  return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;}"
        "table{border-collapse:collapse;margin:1em 0;}"
        "th,td{border:1px solid #bbb;padding:4px 8px;text-align:left;}"
        "th{background:#eee;} figure{margin:1.5em 0;} img{max-width:100%;}")


def to_html(blocks: Sequence[Any], title: str = "mammo_tf study") -> str:
  out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
         f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
  for b in blocks:
    if isinstance(b, Heading):
      out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
    elif isinstance(b, Paragraph):
      out.append(f"<p>{_inline_html(b.text)}</p>")
    elif isinstance(b, Table):
      out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>"
                                                 for h in b.header) + "</tr></thead><tbody>")
      out.extend("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                 for row in b.rows)
      out.append("</tbody></table>")
    elif isinstance(b, Figure):
      out.append(f"<figure><img src=\"{html.escape(b.path, quote=True)}\" "
                 f"alt=\"{html.escape(b.caption, quote=True)}\">"
                 f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
  out.append("</body></html>")
  return "\n".join(out) + "\n"


def load_shift(workdir: str) -> dict[str, Any] | None:
  """W/shift.json (a controlled shift study added to this study's report), or None."""
  path = os.path.join(workdir, names.SHIFT_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_report(workdir: str, results: Mapping[str, Any],
                 data_summary: Mapping[str, Any] | None = None) -> tuple[str, str]:
  """Writes W/report.md and W/report.html; returns their paths."""
  figures = existing_figures(workdir, dict(results.get("figures") or {}, shift=SHIFT_FIGURE))
  blocks = build_blocks(results, data_summary, figures, load_shift(workdir))
  md_path = os.path.join(workdir, names.REPORT_MD)
  html_path = os.path.join(workdir, names.REPORT_HTML)
  files.atomic_write(md_path, to_markdown(blocks))
  files.atomic_write(html_path, to_html(blocks, blocks[0].text))
  return md_path, html_path
