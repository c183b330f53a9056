"""The cohort's completion marker: a finished cohort is not generated again.

`generate_cohort` writes every DICOM file and then the manifest; a run killed half-way leaves a
partial folder. ``<out>/COMPLETE.json`` is written last, atomically, and holds what was asked for
(synthetic config, seed, patient count, proportions). A rerun with the same request finds it and
reuses the folder as it is (files untouched, so the converter's cache stays valid); any other
request, or a folder without the marker, is generated again (the same request gives the same
bytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mammo_tf.io import files

MARKER = "COMPLETE.json"


def request(synthetic_cfg: Any, seed: int, num_patients: int | None,
            paper_proportions: bool) -> dict[str, Any]:
  """What a cohort is a function of, as JSON-able values."""
  return {"synthetic": json.loads(json.dumps(dataclasses.asdict(synthetic_cfg))),
          "seed": int(seed), "patients": num_patients, "paper_proportions": bool(paper_proportions)}


def is_complete(out_dir: str, wanted: dict[str, Any]) -> bool:
  """True when `out_dir` holds a finished cohort made for `wanted` (and its manifest)."""
  path = os.path.join(out_dir, MARKER)
  try:
    with open(path, encoding="utf-8") as f:
      found = json.load(f)
  except (OSError, ValueError):
    return False
  return found == wanted and os.path.exists(os.path.join(out_dir, "manifest.csv"))


def mark_incomplete(out_dir: str) -> None:
  """Removes the marker before a (re)generation starts."""
  try:
    os.remove(os.path.join(out_dir, MARKER))
  except FileNotFoundError:
    pass


def mark_complete(out_dir: str, wanted: dict[str, Any]) -> None:
  files.atomic_write_json(os.path.join(out_dir, MARKER), wanted)
