"""DICOM/DBT manifest -> TFRecords, c.d.f.s, summary and errors (docs/DESIGN.md, Data contract).

Two layers:

* `convert_image(row, split, cfg, salt) -> record`: pure, one image. Reads the FFDM or the DBT MIP
  (`mammo_tf.io.dicom`), optionally flips it to ``cfg.data.canonical_laterality`` (box flipped too;
  an unknown laterality is inferred from the image for that decision only, the record keeps ""),
  stores it at ``1/cfg.data.downsample`` by a ``factor x factor`` block mean (remainder rows/cols
  cropped, rounded half up in integer arithmetic), computes the breast mask of the stored image on
  the ``1/cfg.data.mask_downsample`` cell grid (`masks.breast_mask`, majority rule), converts the
  finding box to stored ``(ymin, xmin, ymax, xmax)`` (clipped when partly outside; an error when
  nothing is left), and replaces ids by salted hashes. Raises `DicomError` / `ValueError` with a
  reason. Beam reuses it.

* `run_conversion(manifest, out_dir, cfg, *, seed, workers, salt)`: the batch job.

  1. Read and validate the manifest; assign patient-level splits (`manifest.assign_splits`).
  2. Convert every image that has no cached result, in a pool of ``workers`` processes (spawned:
     TF is not fork-safe), and cache each result under ``<out>/.cache/`` as two small files written
     atomically: ``<key>.meta`` (status or error reason, label, split, hashed ids, the breast-pixel
     histogram) and ``<key>.example`` (the serialized tf.train.Example). The key is a hash of the
     row, the input file's size and mtime, the split, the relevant config fields, a fingerprint of
     the salt and the cache version, so a changed input or setting is converted again. A kill
     loses at most the images in flight; memory holds at most one image per worker.
  3. Write the shards from the cache (`writer.write_all`: atomic, skipped when already complete),
     dropping each shard's ``.example`` files once it is in place. The ``.meta`` files stay
     (a few KB per image) so that a rerun regenerates everything without decoding again.
  4. Per domain, average the c.d.f.s (breast pixels of the stored image, mask as stored) of a
     class-stratified random sample of training images (`stratified_sample`) ->
     ``cdf_<domain>.npz``.
  5. ``summary.json`` (Table-1 counts, no ids), ``errors.csv`` (see below), ``config.json``
     (resolved config), ``shards.json`` (sha256 of every shard, checked and repaired on rerun).

Hostile inputs and faults:

* Inputs: only regular files (or DBT slice directories) are opened: `mammo_tf.io.guard` checks
  ``os.stat`` before any ``open`` (here for the manifest and each input, and in the reader's one
  open function), so a FIFO or a device is refused instead of blocking. The reader inflates a
  deflated file once, as a stream, within the size its header declares (a "deflate bomb" is
  refused as soon as it passes that size).
* Duplicates: the same file (same device and inode, so ``./`` variants, symbolic and hard links)
  on a later row, or the same image (same SOPInstanceUID, or same stored pixels when the UID is
  missing) is rejected as "duplicate of line N"; the first row is kept. When the two rows carry
  different patient ids, a warning says the ids may belong to one person. Patient ids are compared
  after trimming whitespace; case matters (``ab1`` and ``AB1`` are two patients).
* Failures of this machine (MemoryError, OSError such as ENOSPC/EIO, a killed worker, the
  per-image time limit) are reported but never cached: the next run retries them. Only
  deterministic rejections (bad file, bad header, bad row) are cached.
* Workers: `mammo_tf.data.pool` (spawned processes watched through their sentinels): a killed
  worker's image goes to a fresh worker once; `image_time_limit` seconds per image (0 = none).
* ``errors.csv`` columns ``line,image,reason`` (+ ``path`` with ``errors_with_paths``): the
  manifest line, the salted image-id hash (as in the TFRecords; empty when the row has no id) and a
  reason that never echoes a field value or a path component; cells that a spreadsheet would run
  as a formula (leading ``= + - @``) are prefixed with ``'``.

Everything is a function of the inputs, the config, the seed and the salt: the output is
byte-identical whatever the worker count and however often the job was interrupted and rerun.
Raw identifiers (manifest ids, DICOM names, dates) never reach an output file or a log line.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import stat
import time
import zlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.data import cdf as cdf_lib
from mammo_tf.data import manifest as manifest_lib
from mammo_tf.data import masks
from mammo_tf.data import pool as pool_lib
from mammo_tf.data import privacy
from mammo_tf.data import schema
from mammo_tf.data import writer
from mammo_tf.io import dicom
from mammo_tf.io import files
from mammo_tf.io import guard
from mammo_tf.io import workdir_names as names

CACHE_DIR = ".cache"
CACHE_VERSION = 2
SUMMARY = names.SUMMARY_FILE
ERRORS = names.ERRORS_FILE
SHARDS = "shards.json"
CONFIG = names.CONFIG_FILE
PROGRESS_SECONDS = 5.0

# Exit statuses of data_prep.convert (the Makefile relies on 1 = partial success).
EXIT_OK, EXIT_PARTIAL, EXIT_NOTHING = 0, 1, 2


class ConversionError(RuntimeError):
  """Nothing could be done (missing/unusable manifest, no valid rows, unwritable output)."""


# ----------------------------------------------------------------------------- one image


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
  """uint16 [H//f, W//f]: mean of each f x f block (remainder cropped), rounded half up."""
  image = np.asarray(image)
  if factor < 1:
    raise ValueError(f"downsample factor must be >= 1, got {factor}")
  h, w = image.shape[0] // factor, image.shape[1] // factor
  if h == 0 or w == 0:
    raise ValueError(f"image {image.shape[0]}x{image.shape[1]} is smaller than the "
                     f"downsample factor {factor}")
  if factor == 1:
    return image.astype(np.uint16, copy=True)
  # Rows first (contiguous), then columns: ~2x faster than f*f strided 2-D adds.
  rows = image[0:h * factor:factor, :w * factor].astype(np.uint32)
  for dy in range(1, factor):
    rows += image[dy:h * factor:factor, :w * factor]
  acc = rows[:, 0::factor].copy()
  for dx in range(1, factor):
    acc += rows[:, dx::factor]
  del rows
  n = factor * factor
  acc += n // 2
  acc //= n
  return acc.astype(np.uint16)


def flip_box(box: tuple[float, float, float, float], width: int):
  """Mirrors an (x, y, w, h) box left-right in an image of `width` columns."""
  x, y, w, h = box
  return (width - (x + w), y, w, h)


def box_to_stored(box: tuple[float, float, float, float], original_shape: tuple[int, int],
                  factor: int, stored_shape: tuple[int, int]):
  """(x, y, w, h) in original pixels -> (ymin, xmin, ymax, xmax) in stored pixels, clipped.

  Raises ValueError when no part of the box lies inside the (stored) image.
  """
  x, y, w, h = box
  sh, sw = stored_shape
  ymin = min(max(y / factor, 0.0), sh)
  xmin = min(max(x / factor, 0.0), sw)
  ymax = min(max((y + h) / factor, 0.0), sh)
  xmax = min(max((x + w) / factor, 0.0), sw)
  if ymax <= ymin or xmax <= xmin:
    raise ValueError(f"finding box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the image "
                     f"({original_shape[0]}x{original_shape[1]})")
  return (float(ymin), float(xmin), float(ymax), float(xmax))


def convert_image(row: manifest_lib.ManifestRow, split: str, cfg: config_lib.ExperimentConfig,
                  salt: bytes) -> dict[str, Any]:
  """One manifest row -> a record for `schema.encode_example` (see the module docstring)."""
  data = cfg.data
  guard.check_input(row.path, row.domain, inflate=False)   # the reader bounds deflated files
  image, meta = dicom.read_image(row.path, row.domain, intensity=data.intensity,
                                 voi_index=data.voi_index, apply_voi_lut=data.apply_voi_lut)
  if row.rotate == 180:  # the manifest's `rotate`: into the frame the box was drawn in
    image = np.ascontiguousarray(image[::-1, ::-1])
  laterality = row.laterality or (meta.laterality or "")
  view = row.view or (meta.view or "")
  original_shape = tuple(image.shape)
  box = row.box
  canonical = data.canonical_laterality
  if canonical:
    # Unknown laterality: the side the breast lies against decides (as io.dicom does).
    side = laterality or dicom.infer_laterality(image)
    if side and side != canonical:
      image = dicom.flip_to_canonical(image, side, canonical)
      if box is not None:
        box = flip_box(box, original_shape[1])
  stored = block_mean(image, data.downsample)
  del image
  stored_box = None
  if box is not None:
    stored_box = box_to_stored(box, original_shape, data.downsample, stored.shape)
  mask = masks.breast_mask(stored, factor=data.mask_downsample).astype(np.uint8)
  return {
      "image": stored, "mask": mask, "label": row.label, "box": stored_box,
      "domain": row.domain, "split": split, "laterality": laterality, "view": view,
      "patient": privacy.hash_patient(salt, row.patient_id),
      "exam": privacy.hash_exam(salt, row.patient_id, row.exam_id),
      "image_id": privacy.hash_image(salt, row.image_id),
      "downsample": data.downsample, "mask_downsample": data.mask_downsample,
  }


def breast_histogram(record: dict[str, Any]) -> np.ndarray:
  """int64 [4096] histogram of the stored image's breast pixels (mask as stored)."""
  image = record["image"]
  m = masks.upsample_mask(record["mask"], record["mask_downsample"], image.shape)
  return np.bincount(image[m].ravel(), minlength=config_lib.NUM_LEVELS).astype(np.int64)


def cdf_from_histogram(hist: np.ndarray) -> np.ndarray:
  """The same normalised c.d.f. that `cdf.image_cdf` gives for those pixels."""
  hist = np.asarray(hist, np.int64)
  total = int(hist.sum())
  if total == 0:
    raise ValueError("empty histogram")
  return np.cumsum(hist, dtype=np.float64) / total


# ----------------------------------------------------------------------------- c.d.f. sample


CDF_STRATA = ("normal", "benign", "positive")   # the paper's "normal, benign and malignant"


def _stratum(label: str) -> str:
  return "positive" if label in config_lib.POSITIVE_LABELS else label


def balanced_counts(num: int, sizes: Sequence[int]) -> list[int]:
  """Equal shares of `num` over the strata, each capped at its size, the shortfall of a small
  stratum spread equally over the others (water filling; remainders go to the earlier strata)."""
  counts = [0] * len(sizes)
  left = min(int(num), sum(sizes))
  open_ = [i for i, n in enumerate(sizes) if n > 0]
  while left > 0 and open_:
    share, extra = divmod(left, len(open_))
    for j, i in enumerate(open_):
      take = min(sizes[i] - counts[i], share + (1 if j < extra else 0))
      counts[i] += take
      left -= take
    open_ = [i for i in open_ if counts[i] < sizes[i]]
  return counts


def stratified_sample(items: Sequence[tuple[str, str]], num: int, seed: int,
                      domain: str) -> list[str]:
  """The c.d.f. sample: equal numbers of normal, benign and positive images, sorted hashes.

  The paper averages the c.d.f.s of 1,200 FFDM / 600 MIP training images "comprised of equal
  amounts of the normal, benign and malignant classes" (positive = malignant + high-risk here).
  A class with fewer images than its share gives all of them and the others fill the shortfall
  (`balanced_counts`); `sample_strata` counts what was taken (summary.json).

  Args:
    items: ``(image_hash, label)`` pairs (any order).
    num: sample size; every item when there are fewer.
    seed: the run's seed; the domain is mixed in so the two domains draw independently.
    domain: "ffdm" | "dbt".
  """
  by_stratum: dict[str, list[str]] = {c: [] for c in CDF_STRATA}
  for image_hash, label in items:
    by_stratum[_stratum(label)].append(image_hash)
  total = sum(len(v) for v in by_stratum.values())
  if num <= 0 or num >= total:
    return sorted(h for v in by_stratum.values() for h in v)
  counts = balanced_counts(num, [len(by_stratum[c]) for c in CDF_STRATA])
  rng = np.random.default_rng(np.random.SeedSequence(
      [int(seed), config_lib.DOMAINS.index(domain), 0xCDF]))
  chosen = []
  for stratum, k in zip(CDF_STRATA, counts):
    pool = sorted(by_stratum[stratum])
    if k:
      chosen.extend(pool[i] for i in rng.choice(len(pool), size=k, replace=False))
  return sorted(chosen)


def sample_strata(chosen: Iterable[str], labels: dict[str, str]) -> dict[str, int]:
  """``{"normal": n, "benign": n, "positive": n}`` of a c.d.f. sample (hash -> label map)."""
  counts = collections.Counter(_stratum(labels[h]) for h in chosen)
  return {c: int(counts[c]) for c in CDF_STRATA}


def cdf_from_tfrecords(data_dir: str, domain: str, num: int, seed: int) -> tuple[np.ndarray, int]:
  """Recomputes a domain's average c.d.f. from its training shards (same sample as conversion).

  Returns ``(cdf, number of images averaged)``. Two passes over the shards: metadata only, then
  the sampled images, one at a time.
  """
  import glob

  import tensorflow as tf
  paths = sorted(glob.glob(schema.shard_pattern(data_dir, domain, "train")))
  if not paths:
    raise FileNotFoundError(f"no training shards for {domain} under {data_dir}")
  items = []
  for path in paths:
    for serialized in writer.iter_shard(path):
      f = schema.parse_example(tf.constant(serialized))
      items.append((f[schema.IMAGE_ID].numpy().decode(),
                    config_lib.LABELS[int(f[schema.LABEL_CLASS])]))
  chosen = set(stratified_sample(items, num, seed, domain))
  cdfs = {}
  for path in paths:
    for serialized in writer.iter_shard(path):
      rec = schema.decode_example_numpy(serialized)
      if rec["image_id"] in chosen:
        m = masks.upsample_mask(rec["mask"], rec["mask_downsample"], rec["image"].shape)
        cdfs[rec["image_id"]] = cdf_lib.image_cdf(rec["image"], m)
  return cdf_lib.average_cdf([cdfs[k] for k in sorted(cdfs)]), len(cdfs)


# ----------------------------------------------------------------------------- cache


def _input_fingerprint(path: str) -> list:
  try:
    st = os.stat(path)
  except OSError:
    return ["missing"]
  if os.path.isdir(path):
    entries = []
    for name in sorted(os.listdir(path)):
      try:
        s = os.stat(os.path.join(path, name))
        entries.append([name, s.st_size, s.st_mtime_ns])
      except OSError:
        entries.append([name])
    return ["dir", entries]
  return ["file", st.st_size, st.st_mtime_ns]


def cache_key(row: manifest_lib.ManifestRow, split: str, cfg: config_lib.ExperimentConfig,
              salt: bytes) -> str:
  d = cfg.data
  payload = json.dumps([
      CACHE_VERSION, schema.SCHEMA_VERSION, privacy.salt_fingerprint(salt),
      [d.downsample, d.mask_downsample, d.image_codec, d.canonical_laterality, d.apply_voi_lut,
       d.intensity, d.voi_index],
      [row.patient_id, row.exam_id, row.image_id, row.domain, row.path, row.label, row.laterality,
       row.view, list(row.box) if row.box else None] + ([row.rotate] if row.rotate else []),
      split, _input_fingerprint(row.path),
  ], sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:40]


_atomic_write = files.atomic_write


def _write_meta(path: str, meta: dict, hist: np.ndarray | None) -> None:
  body = json.dumps(meta, sort_keys=True).encode("utf-8") + b"\n"
  if hist is not None:
    body += zlib.compress(np.asarray(hist, "<i8").tobytes(), 6)
  _atomic_write(path, body)


def _read_meta(path: str) -> tuple[dict, bytes] | None:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError:
    return None
  head, _, rest = data.partition(b"\n")
  try:
    return json.loads(head), rest
  except ValueError:
    return None


def _read_hist(path: str) -> np.ndarray:
  _, rest = _read_meta(path)
  return np.frombuffer(zlib.decompress(rest), "<i8")


# ----------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(cfg_json: str, salt: bytes, cache_dir: str) -> None:
  _WORKER.update(cfg=config_lib.from_json(cfg_json), salt=salt, cache_dir=cache_dir)


_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.ENOMEM, errno.EIO, errno.EAGAIN, errno.EINTR,
                     errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ETIMEDOUT, errno.ESTALE}


def is_transient(e: BaseException) -> bool:
  """True for failures of this machine (memory, disk, I/O), looking through wrapped causes."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, MemoryError):
      return True
    if isinstance(e, guard.UnsafeInput) and e.transient:
      return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
      return True
    e = e.__cause__ or e.__context__
  return False


def _slice_position(folder: str, file_path: str) -> str:
  """"slice file k of n (name order)" for a file inside a DBT slice folder (never its name)."""
  try:
    names = sorted(os.listdir(folder))
    return f"slice file {names.index(os.path.basename(file_path)) + 1} of {len(names)} (name order)"
  except (OSError, ValueError):
    return "a slice file"


def _error_reason(e: BaseException, row: manifest_lib.ManifestRow | None = None) -> str:
  """The reason recorded for a failed image: technical, no field value, no path component."""
  if isinstance(e, MemoryError) or (is_transient(e) and not isinstance(e, OSError)):
    reason = "out of memory or I/O failure while converting (not cached: retried on the next run)"
  elif isinstance(e, (dicom.DicomError, guard.UnsafeInput)):
    reason = str(e.reason)
    if row is not None and os.path.normpath(e.path) != os.path.normpath(row.path) \
        and os.path.dirname(os.path.normpath(e.path)) == os.path.normpath(row.path):
      reason = f"{_slice_position(row.path, e.path)}: {reason}"
  elif isinstance(e, OSError):
    reason = f"cannot read input ({e.strerror or type(e).__name__})"
    if e.errno in _TRANSIENT_ERRNOS:
      reason += " (not cached: retried on the next run)"
  elif isinstance(e, ValueError):
    reason = str(e)
  else:
    reason = f"unexpected {type(e).__name__} while converting"
  return scrub(reason, row) if row is not None else reason


def scrub(text: str, row: manifest_lib.ManifestRow) -> str:
  """Removes the row's identifiers, its path and id-like path components from a reason."""
  secrets = {row.patient_id, row.exam_id, row.image_id, row.path, row.given_path}
  for path in (row.path, row.given_path):
    # Path components that can hold an id (they contain a digit: MRN12345, 2024-01-31_...).
    secrets.update(part for part in re.split(r"[\\/]", path or "")
                   if len(part) >= 3 and any(c.isdigit() for c in part))
  for secret in sorted((x for x in secrets if x and len(x) >= 2), key=len, reverse=True):
    text = text.replace(secret, "<withheld>")
  return text


def _sop_uid(path: str) -> str:
  """The SOPInstanceUID of a DICOM file ("" when absent, unreadable or a folder)."""
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):
      return ""
    if guard.is_deflated(path):   # the elements before the pixel data only
      header = guard.inflate_deflated(path, keep=False, header_only=True).header
    else:
      import pydicom
      header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(header.get("SOPInstanceUID", "") or "").strip()
  except Exception:
    return ""


def content_key(path: str, record: dict[str, Any], salt: bytes) -> str:
  """Identity of the image for duplicate detection: SOPInstanceUID (a slice folder: the sorted
  UIDs of its slices), else the stored pixels."""
  if os.path.isdir(path):
    uids = sorted(_sop_uid(os.path.join(path, n)) for n in os.listdir(path)
                  if not n.startswith("."))
    uid = "\x1f".join(uids) if uids and all(uids) else ""
  else:
    uid = _sop_uid(path)
  if uid:
    return "uid:" + privacy.hash_id(salt, "sop", uid)
  image = np.ascontiguousarray(record["image"])
  h = hashlib.sha256(f"{image.shape}".encode())
  h.update(image.tobytes())
  return "px:" + h.hexdigest()[:32]


def duplicate_what(content: str) -> str:
  """How two rows of one `content_key` are the same image, for "duplicate of line N (...)"."""
  return "the same SOPInstanceUID" if content.startswith("uid:") else "the same pixels"


def _convert_task(task: tuple) -> tuple[str, dict]:
  """Worker body: convert one row and cache the result. Returns (key, meta).

  Deterministic rejections are cached; failures of this machine come back with status
  "transient" and are not cached.
  """
  row, split, key, example_only = task
  cfg, salt, cache_dir = _WORKER["cfg"], _WORKER["salt"], _WORKER["cache_dir"]
  base = os.path.join(cache_dir, key)
  try:
    record = convert_image(row, split, cfg, salt)
  except Exception as e:
    transient = is_transient(e)
    meta = {"status": "transient" if transient else "error", "reason": _error_reason(e, row)}
    if example_only:  # cached as converted earlier; the input must have changed under us
      raise ConversionError(f"manifest line {row.line}: input failed to convert again "
                            f"({meta['reason']}); rerun the conversion") from None
    if not transient:
      _write_meta(base + ".meta", meta, None)
    return key, meta
  serialized = schema.encode_example(record, cfg.data.image_codec)
  _atomic_write(base + ".example", serialized)
  meta = {"status": "ok", "domain": record["domain"], "split": split, "label": record["label"],
          "patient": record["patient"], "exam": record["exam"], "image": record["image_id"],
          "bytes": len(serialized)}   # sizes the shards (writer.shard_counts)
  if not example_only:
    meta["content"] = content_key(row.path, record, salt)
    _write_meta(base + ".meta", meta, breast_histogram(record))
  return key, meta


# ----------------------------------------------------------------------------- the batch job


@dataclasses.dataclass
class ConversionReport:
  out_dir: str
  num_rows: int             # manifest rows (valid + rejected by validation)
  num_converted: int
  errors: list              # RowError, by line
  summary: dict

  @property
  def num_errors(self) -> int:
    return len(self.errors)

  @property
  def exit_code(self) -> int:
    if self.num_converted == 0:
      return EXIT_NOTHING
    return EXIT_PARTIAL if self.errors else EXIT_OK


def _task_results(tasks: list, workers: int, cfg, salt, cache_dir, time_limit: float):
  """Yields `_convert_task` results (in-process for 1 worker without a time limit)."""
  if workers <= 1 and not time_limit:
    _init_worker(config_lib.to_json(cfg), salt, cache_dir)
    yield from map(_convert_task, tasks)
    return
  runs = pool_lib.run(tasks, _convert_task, workers=max(workers, 1), initializer=_init_worker,
                      initargs=(config_lib.to_json(cfg), salt, cache_dir),
                      time_limit=time_limit or None,
                      on_event=lambda msg: logging.warning("conversion pool: %s", msg))
  try:
    for idx, result in runs:
      if isinstance(result, pool_lib.Failure):
        row, _, key, example_only = tasks[idx]
        if example_only:
          raise ConversionError(f"manifest line {row.line}: could not be converted again for its "
                                f"shard ({result.message}); rerun the conversion")
        yield key, {"status": "transient", "reason": result.message}
      else:
        yield result
  except pool_lib.PoolError as e:
    raise ConversionError(f"conversion stopped: {e}") from None


def _run_tasks(tasks: list, workers: int, cfg, salt, cache_dir, label: str,
               time_limit: float = 0.0) -> dict[str, dict]:
  """Runs `_convert_task` over `tasks`, logging progress; returns {cache key: meta}."""
  results: dict[str, dict] = {}
  if not tasks:
    return results
  start = last = time.monotonic()
  errors = 0

  def progress(done, final=False):
    rate = done / max(time.monotonic() - start, 1e-9)
    logging.info("%s: %d/%d images (%d rejected), %.2f images/s%s", label, done, len(tasks),
                 errors, rate, " - done" if final else "")

  for key, meta in _task_results(tasks, workers, cfg, salt, cache_dir, time_limit):
    results[key] = meta
    errors += meta["status"] != "ok"
    now = time.monotonic()
    if now - last >= PROGRESS_SECONDS:
      progress(len(results))
      last = now
  progress(len(results), final=True)
  return results


def _counts(entries: Iterable[dict]) -> dict:
  entries = list(entries)
  classes = collections.Counter(e["label"] for e in entries)
  return {
      "patients": len({e["patient"] for e in entries}),
      "exams": len({e["exam"] for e in entries}),
      "images": len(entries),
      "positive": sum(classes[l] for l in config_lib.POSITIVE_LABELS),
      "negative": len(entries) - sum(classes[l] for l in config_lib.POSITIVE_LABELS),
      "classes": {l: classes[l] for l in config_lib.LABELS},
  }


def build_summary(ok: Sequence[dict], *, cfg, seed: int, num_rows: int, num_errors: int,
                  cdf_counts: dict) -> dict:
  """Table-1 counts (patients, exams, images; per class, domain and split). No identifiers."""
  summary = {
      "schema_version": schema.SCHEMA_VERSION,
      "config": cfg.name,
      "seed": int(seed),
      "manifest_rows": int(num_rows),
      "num_errors": int(num_errors),
      "total": _counts(ok),
      "splits": {s: _counts(e for e in ok if e["split"] == s) for s in config_lib.SPLITS},
      "domains": {},
      "cdf_images": cdf_counts,
  }
  for d in config_lib.DOMAINS:
    mine = [e for e in ok if e["domain"] == d]
    summary["domains"][d] = dict(_counts(mine), splits={
        s: _counts(e for e in mine if e["split"] == s) for s in config_lib.SPLITS})
  return summary


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(text: str) -> str:
  """A cell a spreadsheet would evaluate (leading = + - @ tab CR) gets a leading apostrophe."""
  text = str(text)
  return "'" + text if text.startswith(_FORMULA_START) else text


def _manifest_reason(reason: str) -> str:
  """A manifest validation reason without the quoted field values it may echo."""
  return _QUOTED.sub("(value withheld)", reason)


def _errors_csv(errors: Sequence[manifest_lib.RowError], salt: bytes | None,
                with_paths: bool = False) -> bytes:
  """``line,image,reason[,path]``: no identifier unless `with_paths` (see the module docstring)."""
  buf = io.StringIO(newline="")
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["line", "image", "reason"] + (["path"] if with_paths else []))
  for e in errors:
    image = privacy.hash_image(salt, e.image_id) if (salt and e.image_id) else ""
    cells = [e.line, image, neutralise_cell(e.reason)]
    if with_paths:
      cells.append(neutralise_cell(e.where))
    w.writerow(cells)
  return buf.getvalue().encode("utf-8")


def write_cdfs_and_reports(out_dir: str, ok: Sequence[dict], errors: Sequence,
                           histogram_of: Callable[[str], np.ndarray], *,
                           cfg: config_lib.ExperimentConfig, seed: int, num_rows: int,
                           salt: bytes | None = None, errors_with_paths: bool = False) -> dict:
  """Writes `cdf_<domain>.npz`, `errors.csv` and `summary.json`; returns the summary.

  Shared by the local and the Beam runner. `ok` holds the converted images' metadata (keys
  image, domain, split, label, ...); `histogram_of(image_hash)` returns an image's breast-pixel
  histogram. The average c.d.f. of each domain is taken over a class-stratified sample of its
  training images (`stratified_sample`), in a fixed order, so both runners write the same bytes.
  """
  cdf_counts, cdf_classes = {}, {}
  for d in config_lib.DOMAINS:
    path = schema.cdf_path(out_dir, d)
    train = [(e["image"], e["label"]) for e in ok if e["domain"] == d and e["split"] == "train"]
    if not train:
      if os.path.exists(path):
        os.unlink(path)
      cdf_counts[d] = 0
      continue
    num = cfg.data.cdf_samples_ffdm if d == "ffdm" else cfg.data.cdf_samples_dbt
    chosen = sorted(stratified_sample(train, num, seed, d))
    avg = cdf_lib.average_cdf([cdf_from_histogram(histogram_of(h)) for h in chosen])
    cdf_lib.save_cdf(path, avg, domain=d, num_images=len(chosen))
    cdf_counts[d] = len(chosen)
    cdf_classes[d] = sample_strata(chosen, dict(train))
    logging.info("%s: average c.d.f. over %d training images (%s)", d, len(chosen),
                 ", ".join(f"{n} {c}" for c, n in cdf_classes[d].items()))

  summary = build_summary(ok, cfg=cfg, seed=seed, num_rows=num_rows, num_errors=len(errors),
                          cdf_counts=cdf_counts)
  summary["cdf_classes"] = cdf_classes
  warn_missing_classes(ok)
  summary["shards"] = writer.shard_stats(out_dir, config_lib.DOMAINS)
  _atomic_write(os.path.join(out_dir, ERRORS), _errors_csv(errors, salt, errors_with_paths))
  files.atomic_write_json(os.path.join(out_dir, SUMMARY), summary)
  return summary


def warn_missing_classes(ok: Sequence[dict]) -> list[str]:
  """Logs (and returns) one line per domain and split that lacks a class, e.g. too few DBT
  patients or positives for the patient split to give every split both classes."""
  lines = []
  for d in config_lib.DOMAINS:
    mine = [e for e in ok if e["domain"] == d]
    if not mine:
      continue
    for split in config_lib.SPLITS:
      have = {e["label"] in config_lib.POSITIVE_LABELS for e in mine if e["split"] == split}
      missing = [name for flag, name in ((True, "positive"), (False, "negative"))
                 if flag not in have]
      if missing:
        lines.append(f"{d}/{split} has no {' and no '.join(missing)} images (too few patients "
                     "of that class for the split); training or evaluation on it will stop")
        logging.warning("%s", lines[-1])
  return lines


def _write_errors_if_possible(out_dir: str, errors: Sequence[manifest_lib.RowError],
                              salt: bytes | None, with_paths: bool) -> None:
  """Records why nothing could be converted in `errors.csv`, when the output folder allows it."""
  try:
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write(os.path.join(out_dir, ERRORS), _errors_csv(errors, salt, with_paths))
  except OSError:
    pass  # the caller's ConversionError carries the reason anyway


@dataclasses.dataclass(frozen=True)
class Options:
  """How the batch job runs (none of it changes the output bytes)."""
  workers: int = 1
  image_time_limit: float = 0.0      # seconds per image; 0 = none
  errors_with_paths: bool = False    # errors.csv also lists the path as written in the manifest


def read_rows(manifest: str, out_dir: str, salt: bytes, opts: Options):
  """Step 1: the manifest (a regular file only), its rows and row errors, file duplicates."""
  try:
    guard.require_regular_file(manifest, "manifest")
    rows, manifest_errors = manifest_lib.read_manifest(manifest)
  except (manifest_lib.ManifestError, guard.UnsafeInput) as e:
    reason = e.reason if isinstance(e, guard.UnsafeInput) else str(e).replace(manifest, "manifest")
    _write_errors_if_possible(out_dir, [manifest_lib.RowError(manifest, reason)],
                              salt, opts.errors_with_paths)
    raise ConversionError(str(e)) from None
  manifest_errors = [manifest_lib.RowError(e.where, _manifest_reason(e.reason), e.line,
                                           e.image_id) for e in manifest_errors]
  rows, dupes = same_file_duplicates(rows)
  num_rows = len(rows) + len(manifest_errors) + len(dupes)
  if not rows:
    _write_errors_if_possible(out_dir, manifest_errors + dupes, salt, opts.errors_with_paths)
    raise ConversionError(f"{manifest}: no valid rows ({len(manifest_errors)} rejected)")
  logging.info("manifest: %d rows, %d valid, %d rejected", num_rows, len(rows),
               len(manifest_errors) + len(dupes))
  unboxed = sum(1 for r in rows if r.positive and r.box is None)
  if unboxed:
    logging.warning("%d positive row(s) have no finding box: their training patches are random "
                    "in-breast windows (a noisy label)", unboxed)
  return rows, manifest_errors + dupes, num_rows


def _duplicate(row: manifest_lib.ManifestRow, first: manifest_lib.ManifestRow,
               what: str) -> manifest_lib.RowError:
  if first.patient_id != row.patient_id:
    logging.warning("manifest lines %d and %d hold %s under two different patient ids: the ids "
                    "may belong to one person", first.line, row.line, what)
  return manifest_lib.RowError(row.given_path, f"duplicate of line {first.line} ({what})",
                               row.line, row.image_id)


def same_file_duplicates(rows: Sequence[manifest_lib.ManifestRow]):
  """Later rows naming a file already listed (same device and inode, else same real path)."""
  seen: dict[Any, manifest_lib.ManifestRow] = {}
  kept, dupes = [], []
  for row in rows:
    try:
      st = os.stat(row.path)
      ident = ("inode", st.st_dev, st.st_ino)
    except OSError:
      ident = ("path", os.path.realpath(row.path))
    if ident in seen:
      dupes.append(_duplicate(row, seen[ident], "the same file"))
    else:
      seen[ident] = row
      kept.append(row)
  return kept, dupes


def prepare_output(out_dir: str, cfg: config_lib.ExperimentConfig) -> tuple[str, str]:
  """Step 2: output and cache folders, ``config.json``, leftovers of a killed run removed."""
  cache_dir = os.path.join(out_dir, CACHE_DIR)
  state_dir = os.path.join(cache_dir, "shards")
  try:
    os.makedirs(cache_dir, exist_ok=True)
    _atomic_write(os.path.join(out_dir, CONFIG), (config_lib.to_json(cfg) + "\n").encode())
  except OSError as e:
    raise ConversionError(f"{out_dir}: output folder is not writable ({e.strerror or e})") from None
  writer.remove_temp_files(out_dir)
  writer.remove_temp_files(cache_dir)
  return cache_dir, state_dir


def convert_uncached(keyed: list, cfg, salt: bytes, cache_dir: str, opts: Options) -> dict:
  """Step 3: converts every row without a cached verdict; returns {cache key: meta}."""
  metas: dict[str, dict] = {}
  todo = []
  for row, split, key in keyed:
    m = _read_meta(os.path.join(cache_dir, key + ".meta"))
    if m is None:
      todo.append((row, split, key, False))
    else:
      metas[key] = m[0]
  logging.info("%d images cached from an earlier run, %d to convert with %d worker(s)",
               len(metas), len(todo), opts.workers)
  metas.update(_run_tasks(todo, opts.workers, cfg, salt, cache_dir, "converting",
                          opts.image_time_limit))
  return metas


def sort_results(keyed: list, metas: dict, earlier_errors: Sequence[manifest_lib.RowError]):
  """Step 4: converted images and rejections (same-image duplicates included), by line."""
  ok, errors = [], list(earlier_errors)
  first_of: dict[str, manifest_lib.ManifestRow] = {}
  for row, _, key in keyed:
    meta = metas[key]
    if meta["status"] != "ok":
      errors.append(manifest_lib.RowError(row.given_path, meta["reason"], row.line, row.image_id))
      continue
    content = meta.get("content")
    if content and content in first_of:
      errors.append(_duplicate(row, first_of[content], duplicate_what(content)))
      continue
    if content:
      first_of[content] = row
    ok.append(dict(meta, key=key))
  errors.sort(key=lambda e: e.line)
  return ok, errors


def write_shards(out_dir: str, ok: list, keyed: list, cfg, salt: bytes, cache_dir: str,
                 state_dir: str, opts: Options) -> None:
  """Step 5: (re)writes every shard that is missing, stale or fails its checksum."""
  counts = writer.shard_counts(((e["domain"], e["split"], e["label"] in config_lib.POSITIVE_LABELS,
                                 e.get("bytes", 0)) for e in ok),
                               num_shards=cfg.data.num_shards, shard_size_mb=cfg.data.shard_size_mb)
  plan = writer.plan_shards(((e["domain"], e["split"], e["label"] in config_lib.POSITIVE_LABELS,
                              e["image"], e["key"]) for e in ok), counts)
  removed = writer.remove_unplanned_shards(out_dir, config_lib.DOMAINS, plan)
  if removed:
    logging.warning("removed %d shard file(s) of an earlier, different run", len(removed))
  for d in config_lib.DOMAINS:
    writer.remove_temp_files(os.path.join(out_dir, d))
  by_key = {key: (row, split) for row, split, key in keyed}
  redo = []
  for relpath, entries in plan.items():
    if writer.is_complete(out_dir, relpath, writer.contents_digest(entries), state_dir):
      continue
    for _, key in entries:
      if not os.path.exists(os.path.join(cache_dir, key + ".example")):
        redo.append(by_key[key] + (key, True))
  _run_tasks(redo, opts.workers, cfg, salt, cache_dir, "re-converting for missing shards",
             opts.image_time_limit)

  def load(key):
    with open(os.path.join(cache_dir, key + ".example"), "rb") as f:
      return f.read()

  def drop(relpath, entries):
    for _, key in entries:
      p = os.path.join(cache_dir, key + ".example")
      if os.path.exists(p):
        os.unlink(p)

  written, skipped = writer.write_all(out_dir, plan, state_dir, load, drop)
  writer.write_checksums(out_dir, plan, state_dir, os.path.join(out_dir, SHARDS))
  logging.info("shards: %d written, %d already complete", written, skipped)


def run_conversion(manifest: str, out_dir: str, cfg: config_lib.ExperimentConfig, *,
                   seed: int, workers: int = 1, salt: bytes, image_time_limit: float = 0.0,
                   errors_with_paths: bool = False) -> ConversionReport:
  """The whole job (see the module docstring). Raises `ConversionError` if nothing can be done."""
  opts = Options(workers=int(workers), image_time_limit=float(image_time_limit or 0.0),
                 errors_with_paths=bool(errors_with_paths))
  rows, earlier_errors, num_rows = read_rows(manifest, out_dir, salt, opts)
  cfg = dataclasses.replace(cfg, seed=int(seed))
  cache_dir, state_dir = prepare_output(out_dir, cfg)
  splits = manifest_lib.assign_splits(rows, seed, cfg.data.split_fractions)
  keyed = [(r, splits[r.patient_id], cache_key(r, splits[r.patient_id], cfg, salt)) for r in rows]
  metas = convert_uncached(keyed, cfg, salt, cache_dir, opts)
  ok, errors = sort_results(keyed, metas, earlier_errors)
  write_shards(out_dir, ok, keyed, cfg, salt, cache_dir, state_dir, opts)
  hist_paths = {e["image"]: os.path.join(cache_dir, e["key"] + ".meta") for e in ok}
  summary = write_cdfs_and_reports(out_dir, ok, errors, lambda h: _read_hist(hist_paths[h]),
                                   cfg=cfg, seed=seed, num_rows=num_rows, salt=salt,
                                   errors_with_paths=opts.errors_with_paths)
  logging.info("done: %d images converted, %d rejected (see %s)", len(ok), len(errors), ERRORS)
  return ConversionReport(out_dir=out_dir, num_rows=num_rows, num_converted=len(ok),
                          errors=errors, summary=summary)
