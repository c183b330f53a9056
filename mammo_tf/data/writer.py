"""Sharded, atomic, resumable TFRecord writing (DESIGN §4.3).

Layout: ``<out>/<domain>/<split>-<pos|neg>-NNNNN-of-MMMMM.tfrecord`` (`schema.shard_name`), one
class per shard, ``num_shards`` shards for every (domain, split, class) group that has at least one
image (some may be empty files when a group has fewer images than shards; groups with no image get
no files, so a missing class fails loudly in the input pipeline).

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
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import tensorflow as tf

from mammo_tf.data import schema
from mammo_tf.io import files

TMP_PREFIX = files.TMP_PREFIX  # one prefix for every atomic write, swept on resume
_SHARD_RE = re.compile(r"^(train|val|test)-(pos|neg)-\d{5}-of-\d{5}\.tfrecord$")


def shard_index(image_hash: str, num_shards: int) -> int:
  """Shard of one image from its (hex) hashed id."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  return int(image_hash[:8], 16) % num_shards


def plan_shards(items: Iterable[tuple[str, str, bool, str, str]],
                num_shards: int) -> dict[str, list[tuple[str, str]]]:
  """Groups images into shards.

  Args:
    items: ``(domain, split, positive, image_hash, cache_key)`` of every converted image.
    num_shards: shards per (domain, split, class) group.

  Returns:
    ``{"<domain>/<shard name>": [(image_hash, cache_key), ...] sorted by image_hash}``, with every
    shard of a non-empty group present (possibly with an empty list), in sorted path order.
  """
  plan: dict[str, list[tuple[str, str]]] = {}
  groups = set()
  for domain, split, positive, image_hash, key in items:
    groups.add((domain, split, bool(positive)))
    name = schema.shard_name(split, bool(positive), shard_index(image_hash, num_shards), num_shards)
    plan.setdefault(f"{domain}/{name}", []).append((image_hash, key))
  for domain, split, positive in groups:
    for i in range(num_shards):
      plan.setdefault(f"{domain}/{schema.shard_name(split, positive, i, num_shards)}", [])
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


def is_complete(out_dir: str, relpath: str, digest: str, state_dir: str) -> bool:
  """True when the shard exists and was written from the same content list."""
  if not os.path.exists(os.path.join(out_dir, relpath)):
    return False
  try:
    with open(_digest_path(state_dir, relpath), "r", encoding="ascii") as f:
      return f.read().strip() == digest
  except OSError:
    return False


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
      _write_atomic(dpath, (digest + "\n").encode("ascii"))
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
