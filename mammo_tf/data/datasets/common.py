"""The small layer the public-dataset manifest builders share (no TF, no flags).

A builder walks a downloaded dataset and calls `Collector.add_image` once per annotation it can
use (several calls for the same ``image_id`` are several findings on one image) and
`Collector.skip` for every annotation row it cannot use. `Collector.finish` then reduces each
image to one manifest row:

* label: the most severe of its findings (malignant > high_risk > benign > normal);
* box: the box of a most severe finding that has one; ties go to the largest box;
* the other findings are counted as set aside (``extra_findings``), as is an image listed twice;
* positives (high_risk, malignant) without any box are left out by default, each with a skipped
  row and a count, because a random in-breast patch from a positive image is a noisy label
  (``keep_unboxed_positives=True`` keeps them);
* a patient with rows in several official splits is put in the most held-out one (test > val >
  train) so that no patient straddles splits; ``train`` rows can have a validation share carved
  out by patient (`carve_val`).

`write_outputs` writes the manifest (paths relative to the manifest's folder when they lie inside
it, else absolute) and ``<manifest>.skipped.csv`` (row reference, reason). Skipped references name
a table and its line, never a patient identifier.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import os
import re
import zipfile
from typing import Iterable, Iterator, Sequence
from xml.etree import ElementTree

from mammo_tf import config as config_lib

SEVERITY = {"normal": 0, "benign": 1, "high_risk": 2, "malignant": 3}
SPLIT_RANK = {"": 0, "train": 1, "val": 2, "test": 3}
MANIFEST_COLUMNS = ("patient_id", "exam_id", "image_id", "domain", "path", "label", "laterality",
                    "view", "roi_x", "roi_y", "roi_w", "roi_h", "split", "rotate")
DEFAULT_BIRADS_MAP = "1=normal,2=benign,3=benign,4=malignant,5=malignant,6=malignant"


class DatasetError(ValueError):
  """Nothing can be built (tables not found, unreadable, wrong columns): exit status 2."""


@dataclasses.dataclass(frozen=True)
class Options:
  """Builder options (the entry point fills them from its flags)."""
  seed: int = 0
  val_fraction: float = 0.1
  keep_unboxed_positives: bool = False
  birads_map: str = DEFAULT_BIRADS_MAP
  keep_actionable: bool = False
  labels: str = ""            # dicom-folder: labels CSV
  default_label: str = ""     # dicom-folder: label of images without a labels row


@dataclasses.dataclass
class Finding:
  label: str
  box: tuple[float, float, float, float] | None   # (x, y, w, h) in original pixels
  ref: str                                         # the annotation row, e.g. "table.csv:12"


@dataclasses.dataclass
class Image:
  patient_id: str
  exam_id: str
  image_id: str
  domain: str
  path: str
  laterality: str = ""
  view: str = ""
  split: str = ""
  rotate: int = 0
  findings: list = dataclasses.field(default_factory=list)
  keys: set = dataclasses.field(default_factory=set)   # join keys (dicom-folder)


@dataclasses.dataclass
class BuildResult:
  rows: list                  # manifest rows (dicts keyed by MANIFEST_COLUMNS)
  skipped: list               # (reference, reason)
  extra_findings: int = 0
  unboxed_positives: int = 0  # left out (or kept with keep_unboxed_positives)
  moved_patients: int = 0     # patients moved to their most held-out split
  notes: list = dataclasses.field(default_factory=list)

  @property
  def exit_code(self) -> int:
    if not self.rows:
      return 2
    return 1 if self.skipped else 0


def box_area(box) -> float:
  return 0.0 if box is None else float(box[2]) * float(box[3])


def pick_finding(findings: Sequence[Finding]) -> Finding:
  """The most severe finding; among those, one with the largest box (a box beats none)."""
  return max(findings, key=lambda f: (SEVERITY[f.label], f.box is not None, box_area(f.box)))


def xyxy_to_box(xmin: float, ymin: float, xmax: float, ymax: float):
  """Corner coordinates -> (x, y, w, h); None when the box is empty."""
  w, h = float(xmax) - float(xmin), float(ymax) - float(ymin)
  if not (w > 0 and h > 0):
    return None
  return (float(xmin), float(ymin), w, h)


def parse_birads_map(text: str) -> dict[str, str]:
  """``"1=normal,2=benign,4=malignant"`` -> {"1": "normal", ...}; a key "4" also covers 4a/4b/4c."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    key, _, label = part.partition("=")
    label = label.strip().lower()
    if label not in config_lib.LABELS and label != "skip":
      raise DatasetError(f"--birads_map: {label!r} is not one of "
                         f"{'|'.join(config_lib.LABELS)}|skip")
    out[key.strip().lower()] = label
  return out


def birads_label(value: str, mapping: dict[str, str]) -> str | None:
  """'BI-RADS 4', '4a', '4' -> the mapped label; None when unknown or mapped to 'skip'."""
  m = re.search(r"([0-6])\s*([a-c]?)\s*$", str(value or "").strip().lower())
  if not m:
    return None
  label = mapping.get(m.group(1) + m.group(2), mapping.get(m.group(1)))
  return None if label in (None, "skip") else label


def stable_fraction(seed: int, key: str) -> float:
  digest = hashlib.sha256(f"{int(seed)}:{key}".encode("utf-8")).hexdigest()
  return int(digest[:12], 16) / 16**12


def carve_val(patients: Iterable[str], fraction: float, seed: int) -> set[str]:
  """A seeded, order-independent choice of round(fraction * n) of `patients` for validation."""
  ordered = sorted(set(patients), key=lambda p: (stable_fraction(seed, p), p))
  return set(ordered[:int(round(fraction * len(ordered)))])


# ----------------------------------------------------------------------------- reading tables


def read_table(path: str, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
  """CSV -> [(line, {header: value})]; header and cells stripped (cells may end with newlines)."""
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8-sig")
  except OSError as e:
    raise DatasetError(f"{os.path.basename(path)}: cannot read ({e.strerror or e})") from None
  except UnicodeDecodeError:
    with open(path, "rb") as f:
      text = f.read().decode("latin-1")
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise DatasetError(f"{os.path.basename(path)}: empty table") from None
  rows = []
  line = reader.line_num
  for record in reader:
    start, line = line + 1, reader.line_num
    if any(v.strip() for v in record):
      rows.append((start, {h: v.strip() for h, v in zip(header, record)}))
  return rows


def require_columns(path: str, rows: Sequence[tuple[int, dict]], columns: Sequence[str]) -> None:
  if rows:
    missing = [c for c in columns if c not in rows[0][1]]
    if missing:
      raise DatasetError(f"{os.path.basename(path)}: missing column(s) {', '.join(missing)}")


_XLSX_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def _column_index(ref: str) -> int:
  n = 0
  for ch in re.match(r"[A-Z]+", ref).group(0):
    n = n * 26 + ord(ch) - 64
  return n - 1


def read_xlsx(path: str) -> list[tuple[int, dict[str, str]]]:
  """The first worksheet of an .xlsx file -> [(row number, {header: value})] (standard library)."""
  try:
    with zipfile.ZipFile(path) as z:
      names = set(z.namelist())
      shared = []
      if "xl/sharedStrings.xml" in names:
        for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", _XLSX_NS):
          shared.append("".join(t.text or "" for t in si.iter(f"{{{_XLSX_NS['m']}}}t")))
      sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
  except (OSError, zipfile.BadZipFile, KeyError, ElementTree.ParseError) as e:
    raise DatasetError(f"{os.path.basename(path)}: not a readable .xlsx file ({e})") from None
  table = []
  for row in sheet.iter(f"{{{_XLSX_NS['m']}}}row"):
    cells = {}
    for c in row.findall("m:c", _XLSX_NS):
      v = c.find("m:v", _XLSX_NS)
      text = v.text if v is not None else "".join(t.text or "" for t in c.iter(
          f"{{{_XLSX_NS['m']}}}t"))
      if c.get("t") == "s" and text:
        text = shared[int(text)]
      cells[_column_index(c.get("r"))] = (text or "").strip()
    table.append((int(row.get("r")), cells))
  if not table:
    raise DatasetError(f"{os.path.basename(path)}: empty worksheet")
  header = table[0][1]
  return [(n, {header[i]: cells.get(i, "") for i in header}) for n, cells in table[1:]
          if any(cells.values())]


def find_tables(root: str, pattern: str, max_depth: int = 3) -> list[str]:
  """Files under `root` (at most `max_depth` folders deep) whose name matches `pattern` (regex,
  case-insensitive), sorted."""
  rx = re.compile(pattern, re.IGNORECASE)
  found = []
  root = os.path.abspath(root)
  for dirpath, dirnames, filenames in os.walk(root):
    depth = dirpath[len(root):].count(os.sep)
    if depth >= max_depth:
      dirnames[:] = []
    dirnames.sort()
    found += [os.path.join(dirpath, n) for n in filenames if rx.fullmatch(n)]
  return sorted(found)


def is_dicom(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:] == b"DICM"


def dicom_files_under(folder: str) -> Iterator[str]:
  """Every DICOM file (by its preamble) under `folder`, in sorted walk order."""
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for name in sorted(filenames):
      p = os.path.join(dirpath, name)
      if is_dicom(p):
        yield p


def index_dirs(root: str) -> dict[str, list[str]]:
  """{folder name: [paths]} for every folder under `root` (one walk, for layout lookups)."""
  out: dict[str, list[str]] = collections.defaultdict(list)
  for dirpath, dirnames, _ in os.walk(root):
    dirnames.sort()
    for d in dirnames:
      out[d].append(os.path.join(dirpath, d))
  return out


_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML",
                  "latero-medial": "LM"}


def side_and_view(ds) -> tuple[str, str]:
  """(L|R|"", view) from a header read without pixels: ImageLaterality, Laterality, then
  FrameLaterality; ViewPosition, then ViewCodeSequence's meaning ("" when unknown: convert then
  reads the tags itself)."""
  side = ""
  for keyword in ("ImageLaterality", "Laterality"):
    value = str(ds.get(keyword, "") or "").strip().upper()
    if value in ("L", "R"):
      side = value
      break
  if not side:
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
      try:
        value = str(ds[group][0].FrameAnatomySequence[0].FrameLaterality).upper()
      except (KeyError, AttributeError, IndexError):
        continue
      if value in ("L", "R"):
        side = value
        break
  view = str(ds.get("ViewPosition", "") or "").strip().upper()
  if not view and ds.get("ViewCodeSequence"):
    meaning = str(ds.ViewCodeSequence[0].get("CodeMeaning", "")).strip().lower()
    view = _VIEW_MEANINGS.get(meaning, "")
  return side, view


def ref(path: str, line: int) -> str:
  return f"{os.path.basename(path)}:{line}"


# ----------------------------------------------------------------------------- collecting


class Collector:
  """Gathers images, findings and skipped rows; `finish` makes the manifest rows."""

  def __init__(self, options: Options):
    self.options = options
    self.images: dict[str, Image] = {}
    self.skipped: list[tuple[str, str]] = []
    self.notes: list[str] = []
    self.duplicates = 0

  def skip(self, reference: str, reason: str) -> None:
    self.skipped.append((reference, reason))

  def add_image(self, image: Image, label: str, box=None, reference: str = "") -> None:
    """Adds one finding (label + optional box) of `image`; the first call fixes the image."""
    if label not in SEVERITY:
      raise ValueError(f"unknown label {label!r}")
    known = self.images.get(image.image_id)
    if known is None:
      known = self.images[image.image_id] = image
    known.findings.append(Finding(label, box, reference))

  def _resolve_splits(self) -> int:
    by_patient: dict[str, str] = {}
    for im in self.images.values():
      cur = by_patient.get(im.patient_id)
      if cur is None or SPLIT_RANK[im.split] > SPLIT_RANK[cur]:
        by_patient[im.patient_id] = im.split
    moved = {im.patient_id for im in self.images.values()
             if im.split != by_patient[im.patient_id]}
    for im in self.images.values():
      im.split = by_patient[im.patient_id]
    return len(moved)

  def carve_val_from_train(self) -> None:
    train = [im.patient_id for im in self.images.values() if im.split == "train"]
    val = carve_val(train, self.options.val_fraction, self.options.seed)
    for im in self.images.values():
      if im.split == "train" and im.patient_id in val:
        im.split = "val"

  def finish(self, *, carve_val_split: bool = False) -> BuildResult:
    moved = self._resolve_splits()
    if carve_val_split:
      self.carve_val_from_train()
    rows, extra, unboxed = [], 0, 0
    for image_id in sorted(self.images):
      im = self.images[image_id]
      chosen = pick_finding(im.findings)
      extra += len(im.findings) - 1
      if chosen.label in config_lib.POSITIVE_LABELS and chosen.box is None:
        unboxed += 1
        if not self.options.keep_unboxed_positives:
          self.skip(chosen.ref or image_id, f"{chosen.label} image without a finding box "
                    "(left out of patch training; --keep_unboxed_positives keeps it)")
          continue
      rows.append(_manifest_row(im, chosen))
    return BuildResult(rows=rows, skipped=self.skipped, extra_findings=extra,
                       unboxed_positives=unboxed, moved_patients=moved, notes=list(self.notes))


def _fmt(x: float) -> str:
  return format(float(x), ".6g")


def _manifest_row(im: Image, chosen: Finding) -> dict[str, str]:
  box = ["", "", "", ""] if chosen.box is None else [_fmt(v) for v in chosen.box]
  return dict(zip(MANIFEST_COLUMNS, [
      im.patient_id, im.exam_id, im.image_id, im.domain, im.path, chosen.label, im.laterality,
      im.view, *box, im.split, str(im.rotate) if im.rotate else ""]))


# ----------------------------------------------------------------------------- writing


def _manifest_path(path: str, base: str) -> str:
  path = os.path.abspath(path)
  rel = os.path.relpath(path, base)
  return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def write_outputs(result: BuildResult, out: str) -> str:
  """Writes the manifest at `out` and ``<out minus .csv>.skipped.csv``; returns the latter."""
  out = os.path.abspath(out)
  base = os.path.dirname(out)
  os.makedirs(base, exist_ok=True)
  buf = io.StringIO(newline="")
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(MANIFEST_COLUMNS)
  for row in result.rows:
    w.writerow([_manifest_path(row[c], base) if c == "path" else row[c]
                for c in MANIFEST_COLUMNS])
  _write_text(out, buf.getvalue())
  return write_skipped(result, out)


def write_skipped(result: BuildResult, out: str) -> str:
  """Writes ``<out minus .csv>.skipped.csv`` (row reference, reason); returns its path."""
  out = os.path.abspath(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  skipped_path = (out[:-4] if out.lower().endswith(".csv") else out) + ".skipped.csv"
  buf = io.StringIO(newline="")
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["row", "reason"])
  w.writerows(result.skipped)
  _write_text(skipped_path, buf.getvalue())
  return skipped_path


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def summary_lines(result: BuildResult) -> list[str]:
  """Counts per label / domain / split and what was left out (no identifiers)."""
  lines = [f"manifest rows: {len(result.rows)}"]
  for column in ("label", "domain", "split"):
    counts = collections.Counter(r[column] or "(computed)" for r in result.rows)
    lines.append(f"  by {column}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
  lines.append(f"extra findings set aside (one row per image, most severe kept): "
               f"{result.extra_findings}")
  lines.append(f"positive images without a finding box: {result.unboxed_positives}")
  if result.moved_patients:
    lines.append(f"patients listed in several splits, put in the most held-out one: "
                 f"{result.moved_patients}")
  reasons = collections.Counter(_reason_kind(r) for _, r in result.skipped)
  lines.append(f"annotation rows skipped: {len(result.skipped)}")
  lines += [f"  {n} x {k}" for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
  lines += result.notes
  return lines


def _reason_kind(reason: str) -> str:
  return reason.split(" (")[0]
