"""Sharded, atomic, resumable TFRecord writing (docs/DESIGN.md, TFRecords).

Layout: ``<out>/<domain>/<split>-<pos|neg>-NNNNN-of-MMMMM.tfrecord`` (`schema.shard_name`), one
class per shard. The number of shards of a (domain, split, class) group follows its data: enough
shards of about ``data.shard_size_mb`` each (`shard_counts`, the way dataset builders size their
shards: a paper-scale FFDM negative group of ~130 GB gets ~700 shards, a small DBT group one),
or a fixed ``data.num_shards`` for every group when that is set (> 0). Some shards may be empty
files when a group has fewer images than shards; groups with no image get no files, so a missing
class fails loudly in the input pipeline. `shard_stats` gives the per-group shard counts, record
counts and bytes that ``summary.json`` records.

* Assignment: an image goes to shard ``int(image_hash[:8], 16) % num_shards`` (its salted image-id
  hash): deterministic, independent of row order and worker count, and balanced.
* Order: within a shard, examples are sorted by hashed image id.
* Atomicity: a shard is written to ``.tmp-<name>`` in the same folder and renamed into place, so a
  shard file that exists is complete.
* Resumability: before the rename, a small digest of the shard's content list (the per-image cache
  keys, which cover the inputs, the config and the salt) is written under ``state_dir``. A shard is
  skipped on a rerun when it exists *and* its digest matches; otherwise it is rewritten. Leftover
  ``.tmp-*`` files of a killed run are removed, and so are shard files of an earlier run into the
  same folder that the current plan does not produce (e.g. another ``num_shards``), because the
  input pipeline would otherwise read them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import tensorflow as tf
from absl import logging

from mammo_tf.data import schema
from mammo_tf.io import files

TMP_PREFIX = files.TMP_PREFIX  # one prefix for every atomic write, swept on resume
_SHARD_RE = re.compile(r"^(train|val|test)-(pos|neg)-\d{5}-of-\d{5}\.tfrecord$")


def shard_index(image_hash: str, num_shards: int) -> int:
  """Shard of one image from its (hex) hashed id."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  return int(image_hash[:8], 16) % num_shards


Group = tuple[str, str, bool]   # (domain, split, positive)


def shards_for_bytes(total_bytes: int, target_bytes: int) -> int:
  """Shards of one group: ceil(total / target), at least 1."""
  if target_bytes <= 0:
    raise ValueError(f"target shard size must be positive, got {target_bytes} bytes")
  return max(1, -(-int(total_bytes) // int(target_bytes)))


def shard_counts(sizes: Iterable[tuple[str, str, bool, int]], *, num_shards: int = 0,
                 shard_size_mb: float = 192.0) -> dict[Group, int]:
  """Shards per (domain, split, positive) group.

  Args:
    sizes: ``(domain, split, positive, example bytes)`` of every converted image.
    num_shards: > 0: this many shards for every group (fixed layout); 0: sized by bytes.
    shard_size_mb: target shard size in MiB when sizing by bytes.

  The count depends only on the examples' sizes, so it is the same for any worker count and on
  every rerun.
  """
  totals: dict[Group, int] = {}
  for domain, split, positive, nbytes in sizes:
    key = (domain, split, bool(positive))
    totals[key] = totals.get(key, 0) + int(nbytes)
  if num_shards > 0:
    return {k: int(num_shards) for k in sorted(totals)}
  target = int(round(float(shard_size_mb) * 2 ** 20))
  return {k: shards_for_bytes(totals[k], target) for k in sorted(totals)}


def plan_shards(items: Iterable[tuple[str, str, bool, str, str]],
                num_shards: int | Mapping[Group, int]) -> dict[str, list[tuple[str, str]]]:
  """Groups images into shards.

  Args:
    items: ``(domain, split, positive, image_hash, cache_key)`` of every converted image.
    num_shards: shards per (domain, split, class) group: one number for every group, or a
      mapping ``{(domain, split, positive): count}`` (`shard_counts`).

  Returns:
    ``{"<domain>/<shard name>": [(image_hash, cache_key), ...] sorted by image_hash}``, with every
    shard of a non-empty group present (possibly with an empty list), in sorted path order.
  """
  plan: dict[str, list[tuple[str, str]]] = {}
  groups = set()
  count = (lambda group: int(num_shards[group])) if isinstance(num_shards, Mapping) else (
      lambda group: int(num_shards))
  for domain, split, positive, image_hash, key in items:
    group = (domain, split, bool(positive))
    groups.add(group)
    n = count(group)
    name = schema.shard_name(split, bool(positive), shard_index(image_hash, n), n)
    plan.setdefault(f"{domain}/{name}", []).append((image_hash, key))
  for domain, split, positive in groups:
    n = count((domain, split, positive))
    for i in range(n):
      plan.setdefault(f"{domain}/{schema.shard_name(split, positive, i, n)}", [])
  return {k: sorted(plan[k]) for k in sorted(plan)}


def contents_digest(entries: Sequence[tuple[str, str]]) -> str:
  """Digest of a shard's ordered content list."""
  h = hashlib.sha256()
  for image_hash, key in entries:
    h.update(f"{image_hash}:{key}\n".encode("ascii"))
  return h.hexdigest()


def _digest_path(state_dir: str, relpath: str) -> str:
  return os.path.join(state_dir, relpath + ".digest")


def _write_atomic(path: str, data: bytes) -> None:
  tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path))
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def file_sha256(path: str) -> str:
  """sha256 (hex) of a file's bytes, read in 1 MB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


_VERIFIED: dict[tuple, bool] = {}   # (path, size, mtime_ns, expected) -> checksum matched


def _read_state(state_dir: str, relpath: str) -> list[str]:
  try:
    with open(_digest_path(state_dir, relpath), "r", encoding="ascii") as f:
      return f.read().split()
  except OSError:
    return []


def is_complete(out_dir: str, relpath: str, digest: str, state_dir: str) -> bool:
  """True when the shard exists, was written from the same content list and still has the
  sha256 recorded when it was written (a flipped byte makes it incomplete: it is rewritten)."""
  path = os.path.join(out_dir, relpath)
  state = _read_state(state_dir, relpath)
  if not state or state[0] != digest:
    return False
  try:
    st = os.stat(path)
  except OSError:
    return False
  if len(state) < 2:
    return True   # written before checksums were recorded
  key = (path, st.st_size, st.st_mtime_ns, state[1])
  if key not in _VERIFIED:
    _VERIFIED[key] = file_sha256(path) == state[1]
    if not _VERIFIED[key]:
      logging.warning("shard %s does not match its recorded sha256: it will be rewritten", relpath)
  return _VERIFIED[key]


def write_checksums(out_dir: str, plan: Mapping[str, object], state_dir: str, path: str) -> dict:
  """Writes ``{relpath: sha256}`` of every planned shard (``shards.json``); returns it."""
  sums = {}
  for relpath in plan:
    state = _read_state(state_dir, relpath)
    sums[relpath] = state[1] if len(state) > 1 else file_sha256(os.path.join(out_dir, relpath))
  files.atomic_write_json(path, {"sha256": sums})
  return sums


def find_corrupt_shards(data_dir: str, candidates: Iterable[str] | None = None) -> list[str]:
  """Shards under `data_dir` whose bytes differ from ``shards.json`` (relative paths, sorted)."""
  import json
  try:
    with open(os.path.join(data_dir, "shards.json"), encoding="utf-8") as f:
      sums = json.load(f)["sha256"]
  except (OSError, ValueError, KeyError):
    return []
  names = sorted(sums) if candidates is None else sorted(set(candidates) & set(sums))
  bad = []
  for relpath in names:
    try:
      if file_sha256(os.path.join(data_dir, relpath)) != sums[relpath]:
        bad.append(relpath)
    except OSError:
      bad.append(relpath)
  return bad


def write_shard(out_dir: str, relpath: str, digest: str, state_dir: str,
                examples: Iterable[bytes]) -> int:
  """Writes one shard atomically (temp file + rename); returns the number of examples."""
  path = os.path.join(out_dir, relpath)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path))
  count = 0
  try:
    try:
      with tf.io.TFRecordWriter(tmp) as w:
        for serialized in examples:
          w.write(serialized)
          count += 1
      dpath = _digest_path(state_dir, relpath)
      os.makedirs(os.path.dirname(dpath), exist_ok=True)
      _write_atomic(dpath, f"{digest}\n{file_sha256(tmp)}\n".encode("ascii"))
      os.replace(tmp, path)
    except (OSError, tf.errors.OpError) as e:
      # Disk full, file-size limit, I/O error: one clear OSError (the caller's exit status 2).
      if isinstance(e, OSError):
        reason, code = e.strerror or str(e), e.errno or errno.EIO
      else:  # TF's file errors carry the C library's text ("<path>; No space left on device")
        reason = e.message.rpartition("; ")[2]
        code = next((c for c in errno.errorcode if os.strerror(c) == reason), errno.EIO)
      raise OSError(code,
                    f"cannot write shard {relpath} ({reason}); no partial shard was left in "
                    "place, free space and rerun to resume") from e
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return count


def remove_temp_files(directory: str) -> int:
  """Deletes ``.tmp-*`` leftovers of a killed run in `directory` (not recursive)."""
  removed = 0
  if not os.path.isdir(directory):
    return 0
  for name in os.listdir(directory):
    if name.startswith(TMP_PREFIX):
      os.unlink(os.path.join(directory, name))
      removed += 1
  return removed


def remove_unplanned_shards(out_dir: str, domains: Sequence[str],
                            plan: Mapping[str, object]) -> list[str]:
  """Deletes shard files under ``<out>/<domain>/`` that `plan` does not produce; returns them."""
  removed = []
  for domain in domains:
    folder = os.path.join(out_dir, domain)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      rel = f"{domain}/{name}"
      if _SHARD_RE.match(name) and rel not in plan:
        os.unlink(os.path.join(folder, name))
        removed.append(rel)
  return removed


def write_all(out_dir: str, plan: Mapping[str, Sequence[tuple[str, str]]], state_dir: str,
              load: Callable[[str], bytes],
              on_written: Callable[[str, Sequence[tuple[str, str]]], None] | None = None
              ) -> tuple[int, int]:
  """Writes every incomplete shard of `plan`, loading examples one at a time with `load(key)`.

  Returns ``(shards written, shards skipped as complete)``. `on_written(relpath, entries)` is
  called after each shard is in place (and for skipped ones), e.g. to drop cached examples.
  """
  written = skipped = 0
  for relpath, entries in plan.items():
    digest = contents_digest(entries)
    if is_complete(out_dir, relpath, digest, state_dir):
      skipped += 1
    else:
      write_shard(out_dir, relpath, digest, state_dir, (load(key) for _, key in entries))
      written += 1
    if on_written is not None:
      on_written(relpath, entries)
  return written, skipped


def iter_shard(path: str) -> Iterator[bytes]:
  """Serialized examples of one shard, in order."""
  for record in tf.data.TFRecordDataset(path):
    yield record.numpy()


def count_records(path: str) -> int:
  """Records in one TFRecord file, from the length headers only (seeks over the payloads)."""
  size = tf.io.gfile.stat(path).length
  count = pos = 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while pos < size:
      f.seek(pos)
      header = f.read(8)
      if len(header) < 8:
        break
      pos += 16 + struct.unpack("<Q", header)[0]   # length, its crc, payload, payload crc
      count += 1
  if pos != size:
    raise ValueError(f"truncated TFRecord file {os.path.basename(path)} (last record cut)")
  return count


def shard_stats(out_dir: str, domains: Sequence[str]) -> dict[str, dict]:
  """``{"<domain>/<split>-<pos|neg>": {"shards", "records", "bytes", "max_shard_bytes"}}`` of the
  shard files under ``<out>/<domain>/`` (sorted; records from the TFRecord headers), for
  summary.json: the same for the local and the Beam runner."""
  stats: dict[str, dict] = {}
  for domain in domains:
    folder = os.path.join(out_dir, domain)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
      if not _SHARD_RE.match(name):
        continue
      path = os.path.join(folder, name)
      split, cls = name.split("-")[:2]
      size = os.path.getsize(path)
      group = stats.setdefault(f"{domain}/{split}-{cls}",
                               {"shards": 0, "records": 0, "bytes": 0, "max_shard_bytes": 0})
      group["shards"] += 1
      group["records"] += count_records(path)
      group["bytes"] += size
      group["max_shard_bytes"] = max(group["max_shard_bytes"], size)
  return stats
