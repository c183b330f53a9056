"""Manifest CSV reading and validation, and the patient-level split (docs/DESIGN.md).

Manifest columns (header names are matched after stripping whitespace, case-insensitively):

* required: ``patient_id, exam_id, image_id, domain, path, label``
* optional: ``laterality`` (L|R or empty: taken from the DICOM), ``view``, ``roi_x, roi_y, roi_w,
  roi_h`` (finding box in original pixels, all four or none, positive size; for DBT on the MIP
  plane), ``split`` (train|val|test overrides the computed split for the row's *patient*),
  ``rotate`` (0 or 180, empty = 0: the reader turns the image, for DBT the MIP, by that many
  degrees before anything else, so that it lies in the frame the box was drawn in).

Unknown extra columns are ignored. A UTF-8 byte-order mark and whitespace around values are
tolerated; ``domain``, ``label`` and ``split`` are case-insensitive, ``laterality`` and ``view`` are
upper-cased. ``path`` is relative to the manifest's folder unless absolute.

Path policy: a relative ``path`` must stay inside the manifest's folder once normalised (a path
such as ``../../etc/passwd`` is a row error, "path escapes the manifest folder"), so a manifest
handed over with its images cannot make the converter read files elsewhere. Absolute paths are
the manifest author's explicit choice and are allowed (a hospital export often lists them); the
check is lexical, so symbolic links inside the folder that the data owner placed are followed.

File-level problems (missing/unreadable file, not UTF-8, no header, missing required columns) raise
`ManifestError`. Row-level problems become `RowError`s (``where`` = the path as written in the
manifest, ``reason``, and ``line``, the 1-based physical line) and the row is skipped; the rest of
the manifest is still used. Reasons never echo identifier values (ids, names): they name the
column instead. A duplicate ``image_id`` rejects the second (and later) occurrence.

Split (`assign_splits`): patient level, shared by both domains, deterministic given the seed.
Patients are grouped in strata by (set of domains they have images in, whether any of their images
is positive); within a stratum they are ordered by ``SHA-256(f"{seed}:{patient_id}")`` and spread
evenly over [0, 1) (position = (rank + a seeded offset) / stratum size). All patients are then
sorted by position and the first ``n_train`` go to train, the next ``n_val`` to val, the rest to
test, the counts being the fractions of the patient total by largest-remainder rounding (exact
proportions overall; every domain and class close to them). A patient's split does not depend on
row order, and a patient is in exactly one split. Patients with a
``split`` override keep it and are left out of the allocation; a patient whose rows carry
different overrides is an error for all of that patient's rows (`read_manifest` reports it).
Scarce classes: when a domain's val or test split holds no positive (or no negative) image of that
domain after the cut, a training patient holding one moves there, as long as training keeps every
(domain, class) it had; what the data cannot give, the converter reports per domain and split.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import math
import os
from typing import Iterable, Mapping, Sequence

from mammo_tf import config as config_lib

REQUIRED_COLUMNS = ("patient_id", "exam_id", "image_id", "domain", "path", "label")
ROI_COLUMNS = ("roi_x", "roi_y", "roi_w", "roi_h")
OPTIONAL_COLUMNS = ("laterality", "view") + ROI_COLUMNS + ("split", "rotate")
ROTATIONS = (0, 180)
LATERALITIES = ("L", "R")


class ManifestError(ValueError):
  """The manifest as a whole cannot be used (exit status 2 in data_prep.convert)."""


class RowError(tuple):
  """A rejected manifest row or input: behaves as the ``(where, reason)`` pair, plus ``.line``."""

  def __new__(cls, where: str, reason: str, line: int = 0, image_id: str = ""):
    obj = super().__new__(cls, (where, reason))
    obj._line = int(line)
    obj._image_id = str(image_id or "")
    return obj

  @property
  def image_id(self) -> str:
    """The row's image_id when it has one (in memory only: reports hash it)."""
    return self._image_id

  @property
  def where(self) -> str:
    return self[0]

  @property
  def reason(self) -> str:
    return self[1]

  @property
  def line(self) -> int:
    return self._line

  def __repr__(self) -> str:
    return f"RowError(where={self.where!r}, reason={self.reason!r}, line={self.line})"

  def __reduce__(self):
    return (RowError, (self.where, self.reason, self.line, self.image_id))


@dataclasses.dataclass(frozen=True)
class ManifestRow:
  """One validated manifest row. `path` is absolute; `given_path` is as written (for reports)."""
  patient_id: str
  exam_id: str
  image_id: str
  domain: str
  path: str
  label: str
  laterality: str = ""
  view: str = ""
  box: tuple[float, float, float, float] | None = None   # (x, y, w, h), original pixels
  split: str = ""
  line: int = 0
  given_path: str = ""
  rotate: int = 0   # degrees (0 | 180) the reader turns the image before anything else

  @property
  def positive(self) -> bool:
    return self.label in config_lib.POSITIVE_LABELS


def _decode(data: bytes, path: str) -> str:
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise ManifestError(
        f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
        "save the manifest as UTF-8 CSV") from None


def _parse_float(value: str, column: str) -> float:
  try:
    x = float(value)
  except ValueError:
    raise ValueError(f"{column} is not a number: {value[:20]!r}") from None
  if not math.isfinite(x):
    raise ValueError(f"{column} is not finite: {value[:20]!r}")
  return x


def _parse_row(values: Mapping[str, str], base_dir: str, line: int) -> ManifestRow:
  """Validates one row (values already stripped); raises ValueError with a reason."""
  for col in REQUIRED_COLUMNS:
    if not values.get(col):
      raise ValueError(f"empty {col}")
  domain = values["domain"].lower()
  if domain not in config_lib.DOMAINS:
    raise ValueError(f"unknown domain {values['domain'][:20]!r} (expected ffdm or dbt)")
  label = values["label"].lower()
  if label not in config_lib.LABELS:
    raise ValueError(f"unknown label {values['label'][:30]!r} "
                     f"(expected one of {'|'.join(config_lib.LABELS)})")
  laterality = values.get("laterality", "").upper()
  if laterality not in ("",) + LATERALITIES:
    raise ValueError(f"laterality {values['laterality'][:10]!r} is not L or R")
  view = values.get("view", "").upper()
  split = values.get("split", "").lower()
  if split not in ("",) + config_lib.SPLITS:
    raise ValueError(f"unknown split {values['split'][:20]!r} (expected train, val or test)")
  roi = [values.get(c, "") for c in ROI_COLUMNS]
  box = None
  if any(roi):
    if not all(roi):
      missing = [c for c, v in zip(ROI_COLUMNS, roi) if not v]
      raise ValueError(f"incomplete finding box: {', '.join(missing)} missing "
                       "(give roi_x, roi_y, roi_w, roi_h all four or none)")
    x, y, w, h = (_parse_float(v, c) for v, c in zip(roi, ROI_COLUMNS))
    if w <= 0 or h <= 0:
      raise ValueError(f"finding box has a non-positive size (roi_w={w:g}, roi_h={h:g})")
    box = (x, y, w, h)
  rotate_text = values.get("rotate", "") or "0"
  if rotate_text not in ("0", "180"):
    raise ValueError(f"rotate {rotate_text[:10]!r} is not 0 or 180")
  given = values["path"]
  if "\x00" in given:
    raise ValueError("path contains a NUL character")
  if not os.path.isabs(given):
    rel = os.path.normpath(given)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
      raise ValueError("path escapes the manifest folder (relative paths must stay inside it; "
                       "give an absolute path to read elsewhere)")
  path = given if os.path.isabs(given) else os.path.join(base_dir, given)
  return ManifestRow(patient_id=values["patient_id"], exam_id=values["exam_id"],
                     image_id=values["image_id"], domain=domain, path=os.path.normpath(path),
                     label=label, laterality=laterality, view=view, box=box, split=split,
                     line=line, given_path=given, rotate=int(rotate_text))


def read_manifest(path: str) -> tuple[list[ManifestRow], list[RowError]]:
  """Reads and validates a manifest CSV -> (valid rows in file order, row errors by line)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise ManifestError(f"{path}: manifest not found") from None
  except OSError as e:
    raise ManifestError(f"{path}: cannot read manifest ({e.strerror or e})") from None
  text = _decode(data, path)
  base_dir = os.path.dirname(os.path.abspath(path))
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    header = next(reader)
  except StopIteration:
    raise ManifestError(f"{path}: manifest is empty (no header row)") from None
  except csv.Error as e:
    raise ManifestError(f"{path}: not a readable CSV ({e})") from None
  columns = [c.strip().lower() for c in header]
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  if missing:
    raise ManifestError(f"{path}: missing required column(s): {', '.join(missing)} "
                        f"(required: {', '.join(REQUIRED_COLUMNS)})")
  dupes = sorted({c for c in columns if c and columns.count(c) > 1})
  if dupes:
    raise ManifestError(f"{path}: duplicate column(s): {', '.join(dupes)}")

  rows: list[ManifestRow] = []
  errors: list[RowError] = []
  first_line_of_image: dict[str, int] = {}
  line = reader.line_num
  while True:
    start = line + 1
    try:
      record = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      errors.append(RowError("", f"unreadable CSV row ({e})", start))
      line = reader.line_num
      continue
    line = reader.line_num
    if not any(v.strip() for v in record):
      continue  # blank line
    values = {c: v.strip() for c, v in zip(columns, record) if c}
    where = values.get("path", "")
    if len(record) > len(columns) and any(v.strip() for v in record[len(columns):]):
      errors.append(RowError(where, f"row has {len(record)} fields, header has {len(columns)}",
                             start, values.get("image_id", "")))
      continue
    try:
      row = _parse_row(values, base_dir, start)
    except ValueError as e:
      errors.append(RowError(where, str(e), start, values.get("image_id", "")))
      continue
    if row.image_id in first_line_of_image:
      errors.append(RowError(where, "duplicate image_id (first used on line "
                             f"{first_line_of_image[row.image_id]})", start, row.image_id))
      continue
    first_line_of_image[row.image_id] = start
    rows.append(row)

  rows, conflict_errors = _reject_conflicting_overrides(rows)
  errors.extend(conflict_errors)
  errors.sort(key=lambda e: e.line)
  return rows, errors


def _reject_conflicting_overrides(rows: Sequence[ManifestRow]):
  overrides: dict[str, set[str]] = {}
  for r in rows:
    if r.split:
      overrides.setdefault(r.patient_id, set()).add(r.split)
  bad = {p: s for p, s in overrides.items() if len(s) > 1}
  if not bad:
    return list(rows), []
  kept, errors = [], []
  for r in rows:
    if r.patient_id in bad:
      errors.append(RowError(r.given_path, "conflicting split overrides for this patient ("
                             f"{', '.join(sorted(bad[r.patient_id]))})", r.line, r.image_id))
    else:
      kept.append(r)
  return kept, errors


def allocate(n: int, fractions: Sequence[float]) -> list[int]:
  """Splits `n` items into counts proportional to `fractions` (largest remainder, ties: first)."""
  fractions = [float(f) for f in fractions]
  total = sum(fractions)
  if n < 0 or total <= 0 or any(f < 0 for f in fractions):
    raise ValueError(f"bad allocation request n={n}, fractions={fractions}")
  exact = [n * f / total for f in fractions]
  counts = [int(math.floor(x)) for x in exact]
  order = sorted(range(len(fractions)), key=lambda i: (-(exact[i] - counts[i]), i))
  for i in order[:n - sum(counts)]:
    counts[i] += 1
  return counts


def _patient_key(seed: int, patient_id: str) -> str:
  return hashlib.sha256(f"{int(seed)}:{patient_id}".encode("utf-8")).hexdigest()


def assign_splits(rows: Iterable[ManifestRow], seed: int,
                  fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, str]:
  """Patient-level split ``{patient_id: "train"|"val"|"test"}`` (see the module docstring)."""
  if len(fractions) != len(config_lib.SPLITS):
    raise ValueError(f"split_fractions needs {len(config_lib.SPLITS)} values, got {fractions}")
  rows = list(rows)
  domains: dict[str, set[str]] = {}
  positive: dict[str, bool] = {}
  overrides: dict[str, set[str]] = {}
  for r in rows:
    domains.setdefault(r.patient_id, set()).add(r.domain)
    positive[r.patient_id] = positive.get(r.patient_id, False) or r.positive
    if r.split:
      overrides.setdefault(r.patient_id, set()).add(r.split)
  splits: dict[str, str] = {}
  strata: dict[tuple, list[str]] = {}
  for pid in domains:
    over = overrides.get(pid)
    if over:
      if len(over) > 1:
        raise ValueError(f"conflicting split overrides for one patient: {sorted(over)}")
      splits[pid] = next(iter(over))
      continue
    strata.setdefault((tuple(sorted(domains[pid])), positive[pid]), []).append(pid)
  # Spread every stratum evenly over [0, 1) (rank + a seeded per-stratum offset), order all
  # patients by that position, then cut the one global ordering at exact counts.
  positions = []
  for key in sorted(strata):
    ordered = sorted(strata[key], key=lambda p: (_patient_key(seed, p), p))
    offset = int(_patient_key(seed, repr(key))[:8], 16) / 16**8
    for rank, pid in enumerate(ordered):
      positions.append(((rank + offset) / len(ordered), _patient_key(seed, pid), pid))
  positions.sort()
  counts = allocate(len(positions), fractions)
  i = 0
  for split, count in zip(config_lib.SPLITS, counts):
    for _, _, pid in positions[i:i + count]:
      splits[pid] = split
    i += count
  holds: dict[str, set[tuple[str, bool]]] = {}
  for r in rows:
    holds.setdefault(r.patient_id, set()).add((r.domain, bool(r.positive)))
  _give_every_split_both_classes(splits, holds, set(overrides), seed)
  return splits


def _give_every_split_both_classes(splits: dict[str, str], holds: dict[str, set[tuple[str, bool]]],
                                   fixed: set[str], seed: int) -> None:
  """Moves training patients into a val/test split that lacks a (domain, class) they hold.

  Scarce DBT can leave a domain's val or test split without positives (or negatives) after the
  proportional cut. When training holds at least two patients with such images, the first of them
  in seeded order whose move leaves training with every (domain, class) it had goes to that split
  (override patients never move). Deterministic; a no-op when the cut already satisfies it.
  """
  wanted = sorted({key for keys in holds.values() for key in keys})
  for split in ("val", "test"):
    for key in wanted:
      if any(splits[p] == split and key in holds[p] for p in holds):
        continue
      train = [p for p in holds if splits[p] == "train"]
      in_train = collections.Counter(k for p in train for k in holds[p])
      for pid in sorted(train, key=lambda p: (_patient_key(seed, p), p)):
        if pid in fixed or key not in holds[pid]:
          continue
        if all(in_train[k] >= 2 for k in holds[pid]):
          splits[pid] = split
          break
