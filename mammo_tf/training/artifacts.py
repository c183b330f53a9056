"""Opening a run's files with one clear error when they are missing or damaged.

* `load_keras_model(path)`: a missing file says so; a truncated or corrupt ``.keras`` file (not a
  valid zip archive, or one Keras cannot read) is named with what to do, instead of Keras'
  "File not found" for a file that exists.
* `open_state(path)`: the epoch checkpoint ``backup/state.npz``; a corrupt one is named with what
  to do (delete the run's ``backup/`` folder: the run restarts from epoch 1).
* `data_loss_error(error, data_dirs)`: a TensorFlow ``DataLossError`` ("corrupted record at N",
  no file name) turned into an error naming the damaged shard(s), found by their sha256 in the
  converter's ``shards.json``.

Each raises `mammo_tf.cli.UserError` (exit status 2, one line, no traceback).
"""

from __future__ import annotations

import os
import zipfile
from typing import Sequence

import numpy as np

from mammo_tf.cli import UserError


def load_keras_model(path: str, **kw):
  """`keras.models.load_model` with clear errors for a missing, truncated or corrupt file."""
  import keras
  if not os.path.exists(path):
    raise UserError(f"{path}: model file not found (train the model first)")
  if not os.path.isfile(path):
    raise UserError(f"{path}: not a model file")
  if str(path).endswith(".keras"):
    problem = None
    try:
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad is not None:
          problem = f"member {bad} fails its CRC"
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      problem = f"{type(e).__name__}: {e}"
    if problem is not None:
      raise UserError(f"{path}: truncated or corrupt Keras model ({problem}); delete it and the "
                      "run's backup/ folder and train again")
  try:
    return keras.models.load_model(path, **kw)
  except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
    raise UserError(f"{path}: cannot load the Keras model ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}); delete it and the run's backup/ folder "
                    "and train again") from None


def open_state(path: str):
  """``np.load(path)`` of a checkpoint, with every array readable; clear error otherwise."""
  try:
    data = np.load(path)
    for key in data.files:
      data[key]   # reads and CRC-checks each member
    return data
  except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise UserError(f"{path}: corrupt training checkpoint ({type(e).__name__}); delete the run's "
                    "backup/ folder to restart the run from its first epoch") from None


def data_loss_error(error: BaseException, data_dirs: Sequence[str]) -> UserError:
  """A `UserError` naming the shard(s) whose bytes no longer match ``shards.json``."""
  from mammo_tf.data import writer
  first = " ".join(str(getattr(error, "message", error)).split())[:200]
  bad = []
  for d in data_dirs:
    if d and os.path.isdir(d):
      bad += [os.path.join(d, rel) for rel in writer.find_corrupt_shards(d)]
  if bad:
    return UserError(f"corrupt TFRecord shard(s): {', '.join(bad)} (sha256 differs from "
                     "shards.json); rerun data_prep.convert with the same --out to rewrite them")
  return UserError(f"corrupt TFRecord data under {', '.join(d for d in data_dirs if d)} ({first});"
                   " rerun data_prep.convert with the same --out to check and rewrite its shards")
