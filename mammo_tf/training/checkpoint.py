"""The epoch checkpoint that makes a killed run resumable (``<workdir>/backup/state.npz``).

One file holds every model variable (weights, BatchNorm statistics, `keras.random.SeedGenerator`
states), every optimiser variable (iteration counters, Adam moments, loss scale) and a JSON block
with the loop's own state (next epoch, best-so-far tracker, history). It is written at the end of
each completed epoch through a temporary file and a rename, so a kill at any moment leaves either
the previous or the new checkpoint, never a torn one. Together with a data stream that is a fixed
function of (seed, epoch), a restart replays exactly the epochs an uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from mammo_tf.io import files
from mammo_tf.io import workdir_names as names
from mammo_tf.training import artifacts

STATE_FILE = names.STATE_FILE


def _values(variables: Sequence) -> list[np.ndarray]:
  return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables]


def save_state(backup_dir: str, model_variables: Sequence, optimizer_variables: Sequence,
               meta: dict[str, Any]) -> str:
  """Atomically writes the checkpoint; returns its path."""
  os.makedirs(backup_dir, exist_ok=True)
  arrays = {}
  for i, value in enumerate(_values(model_variables)):
    arrays[f"model_{i:05d}"] = value
  for i, value in enumerate(_values(optimizer_variables)):
    arrays[f"opt_{i:05d}"] = value
  arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  path = os.path.join(backup_dir, STATE_FILE)
  files.atomic_write_with(path, lambda f: np.savez(f, **arrays), fsync=True)
  return path


def has_state(backup_dir: str) -> bool:
  return os.path.exists(os.path.join(backup_dir, STATE_FILE))


def load_state(backup_dir: str, model_variables: Sequence, optimizer_variables: Sequence
               ) -> dict[str, Any]:
  """Assigns the saved values to the given variables (same order as saved); returns the meta."""
  path = os.path.join(backup_dir, STATE_FILE)
  with artifacts.open_state(path) as data:   # a corrupt file: one line naming it
    model_keys = sorted(k for k in data.files if k.startswith("model_"))
    opt_keys = sorted(k for k in data.files if k.startswith("opt_"))
    if len(model_keys) != len(model_variables) or len(opt_keys) != len(optimizer_variables):
      raise ValueError(
          f"{path}: checkpoint holds {len(model_keys)} model / {len(opt_keys)} optimiser "
          f"variables, the model has {len(model_variables)} / {len(optimizer_variables)}; was it "
          "written by a different configuration?")
    for keys, variables in ((model_keys, model_variables), (opt_keys, optimizer_variables)):
      for key, var in zip(keys, variables):
        value = data[key]
        if tuple(value.shape) != tuple(var.shape):
          raise ValueError(f"{path}: {key} has shape {value.shape}, variable "
                           f"{getattr(var, 'path', var.name)} has {tuple(var.shape)}")
        var.assign(value)
    return json.loads(bytes(data["meta"]).decode())
