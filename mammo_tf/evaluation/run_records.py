"""What a study records about its runs: JSON files, completion, model stamps, commit, data
fingerprint and the config check that keeps a resumed study honest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any, Mapping

import numpy as np
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.data import fingerprint
from mammo_tf.evaluation.rows import RUNS
from mammo_tf.io import files
from mammo_tf.io import workdir_names as names


def json_safe(obj: Any) -> Any:
  """NaN / infinity -> None (strict JSON), recursively."""
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, Mapping):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return obj


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes strict JSON (NaN -> null) through a temp file + rename, so a crash never leaves a
  half-written file."""
  files.atomic_write_json(path, json_safe(obj), indent=1, allow_nan=False)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def run_dir(workdir: str, run: str) -> str:
  return os.path.join(workdir, run)


def is_done(directory: str) -> bool:
  """A training work dir is complete when its done.json (written last) exists."""
  return os.path.exists(os.path.join(directory, names.DONE_FILE))


def model_stamp(directory: str) -> str:
  """Identifies a completed training: a hash of its done.json and best.keras bytes."""
  digest = hashlib.sha256()
  for name in (names.DONE_FILE, names.MODEL_FILE):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
  return digest.hexdigest()[:16]


def git_commit(path: str | None = None) -> str:
  """The commit of the repository holding this code ("" when not a git checkout)."""
  where = path or os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10, check=True)
    dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return ""


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = ""
                       ) -> list[str]:
  """``"key: old -> new"`` for every leaf that differs between two nested mappings."""
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key), b.get(key)
    if isinstance(va, Mapping) and isinstance(vb, Mapping):
      out.extend(config_differences(va, vb, f"{prefix}{key}."))
    elif va != vb:
      out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
  return out


def data_fingerprint(data_dir: str) -> str:
  """The converter output's content fingerprint (`mammo_tf.data.fingerprint`): its shards' bytes,
  c.d.f. arrays and summary; never modification times, cache keys or worker counts."""
  return fingerprint.data_fingerprint(data_dir)


def check_study_config(cfg: config_lib.ExperimentConfig, workdir: str,
                       data_dir: str | None = None) -> None:
  """Writes W/study_config.json, or checks that a resumed study uses the same config and data."""
  path = os.path.join(workdir, names.STUDY_CONFIG_FILE)
  current = json.loads(config_lib.to_json(cfg))
  if data_dir is not None:
    current["data_fingerprint"] = data_fingerprint(data_dir)
  if os.path.exists(path):
    diffs = config_differences(read_json(path), current)
    if diffs:
      raise ValueError(
          f"{workdir} holds a study with a different config ({'; '.join(diffs[:8])}); "
          "use a new --workdir, or the same data, preset and overrides")
    return
  write_json_atomic(path, current)


def training_summary(workdir: str) -> dict[str, Any]:
  """done.json of each complete training (best epoch, validation AUC, ...)."""
  out = {}
  for run in RUNS:
    path = os.path.join(run_dir(workdir, run), names.DONE_FILE)
    if os.path.exists(path):
      try:
        out[run] = read_json(path)
      except (OSError, ValueError):
        out[run] = {}
  return out


def load_data_summary(data_dir: str) -> dict[str, Any] | None:
  """The converter's summary.json (Table 1 counts), or None."""
  path = os.path.join(data_dir, names.SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  try:
    return read_json(path)
  except (OSError, ValueError) as e:
    logging.warning("cannot read %s: %s", path, e)
    return None
