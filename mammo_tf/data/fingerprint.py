"""A content fingerprint of a converter output folder.

Studies record it so that a rerun refuses data that was converted differently, and accepts data
that is the same: it depends only on what the folder holds (the shards' bytes, the average c.d.f.
arrays, the summary's values), never on file modification times, the converter's cache keys, the
number of workers or the order files were written in.

* shards: the sha256 that the converter records for every shard in ``shards.json`` (computed from
  the shard's bytes when written, verified and repaired by ``convert`` on rerun); a folder without
  ``shards.json`` (written by older versions) has its shard files hashed here, which reads them
  all once;
* ``cdf_<domain>.npz``: every array's name, dtype, shape and bytes (not the file's bytes: a
  ``.npz`` is a zip whose entries carry the time they were written);
* ``summary.json``: its JSON values, with sorted keys.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from mammo_tf import config as config_lib
from mammo_tf.data.writer import file_sha256

SHARDS_FILE = "shards.json"  # written by data/writer.py
SUMMARY_FILE = "summary.json"


def _shard_digests(data_dir: str) -> dict[str, str]:
  path = os.path.join(data_dir, SHARDS_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return dict(json.load(f)["sha256"])
  out = {}
  for domain in config_lib.DOMAINS:
    shard_dir = os.path.join(data_dir, domain)
    if not os.path.isdir(shard_dir):
      continue
    for name in sorted(os.listdir(shard_dir)):
      if name.endswith(".tfrecord"):
        out[f"{domain}/{name}"] = file_sha256(os.path.join(shard_dir, name))
  return out


def _npz_digest(path: str) -> str:
  h = hashlib.sha256()
  with np.load(path, allow_pickle=False) as data:
    for key in sorted(data.files):
      array = np.ascontiguousarray(data[key])
      h.update(f"{key}\0{array.dtype.str}\0{array.shape}\0".encode())
      h.update(array.tobytes())
  return h.hexdigest()


def data_fingerprint(data_dir: str) -> str:
  """A 16-hex-digit hash of the folder's content (see the module docstring)."""
  h = hashlib.sha256(b"mammo_tf data fingerprint v2\0")
  summary = os.path.join(data_dir, SUMMARY_FILE)
  if os.path.exists(summary):
    with open(summary, encoding="utf-8") as f:
      h.update(json.dumps(json.load(f), sort_keys=True).encode())
  for domain in config_lib.DOMAINS:
    path = os.path.join(data_dir, f"cdf_{domain}.npz")
    if os.path.exists(path):
      h.update(f"\0cdf_{domain}\0{_npz_digest(path)}".encode())
  for relpath, digest in sorted(_shard_digests(data_dir).items()):
    h.update(f"\0{relpath}\0{digest}".encode())
  return h.hexdigest()[:16]
