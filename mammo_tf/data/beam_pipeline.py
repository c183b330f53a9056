"""The conversion as an Apache Beam pipeline (docs/scale_out.md).

The same per-image function as the local batch job (`convert.convert_image`), the same shard
layout and shard writer (`writer.write_shard`: one class per shard, examples sorted by hashed
image id, temp file + rename), the same c.d.f. sample (`convert.stratified_sample`), the same
``summary.json`` (`convert.build_summary`) and ``errors.csv``. Given the same manifest, config,
seed and salt, the output files are byte-identical to `convert.run_conversion`'s (the test
``tests/data/test_beam.py`` checks it on the DirectRunner); only the local job's per-image cache
``.cache/*.meta`` is not written (on a cluster the runner retries failed bundles instead).

Graph::

  manifest rows (driver: read, validate, split, cache keys)
    | Create | Reshuffle                       spread the rows over the workers
    | ParDo(ConvertFn)                        convert_image -> tagged outputs:
        "meta"    light per-row result (status/reason, domain, split, label, hashed ids, key)
        "example" (shard relpath, (image hash, key, serialized tf.train.Example))
        "hist"    (image hash, breast-pixel histogram) of training images only
    meta    | ToList | resolve_duplicates      later copies of one image (SOPInstanceUID, else
                                               pixels) become rejections, as in the local job
            -> the c.d.f. sample (`stratified_sample`)
    example | Filter(not a duplicate) | GroupByKey | Map(write_one_shard)
                                               one shard per key, sorted, atomic
    hist    | Filter(in sample) | ToList       -> only the sampled histograms leave the workers
    Create([None]) | Map(finalize, side inputs) empty shards of non-empty groups, stale shards
                                               removed, cdf_<domain>.npz, errors.csv,
                                               summary.json (last)

The output folder must be a path every worker can write (a shared POSIX mount such as NFS,
Filestore or gcsfuse): the writers use plain file I/O and a rename for atomicity. Pipeline options
(runner, project, parallelism, ...) come from the caller, e.g. ``python -m data_prep.convert ...
--runner beam -- --runner=FlinkRunner --flink_master=host:8081``; see docs/scale_out.md.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.data import convert
from mammo_tf.data import manifest as manifest_lib
from mammo_tf.data import schema
from mammo_tf.data import writer

META, EXAMPLE, HIST = "meta", "example", "hist"


def _shard_relpath(domain: str, split: str, positive: bool, image_hash: str,
                   num_shards: int) -> str:
  index = writer.shard_index(image_hash, num_shards)
  return f"{domain}/{schema.shard_name(split, positive, index, num_shards)}"


def convert_row(row: manifest_lib.ManifestRow, split: str, key: str,
                cfg: config_lib.ExperimentConfig, salt: bytes
                ) -> tuple[dict, tuple | None, tuple | None]:
  """One row -> ``(meta, example, hist)`` as the pipeline emits them (no Beam needed).

  ``example`` is ``(relpath, (image_hash, key, serialized))`` or None (rejected row); ``hist`` is
  ``(image_hash, int64 [4096])`` for training images, else None. Errors become a meta with the
  same reason text as the local job (`convert._error_reason`).
  """
  try:
    record = convert.convert_image(row, split, cfg, salt)
  except Exception as e:
    meta = {"status": "error", "reason": convert._error_reason(e, row),
            "line": row.line, "where": row.given_path, "image_id": row.image_id}
    return meta, None, None
  serialized = schema.encode_example(record, cfg.data.image_codec)
  positive = record["label"] in config_lib.POSITIVE_LABELS
  meta = {"status": "ok", "domain": record["domain"], "split": split, "label": record["label"],
          "patient": record["patient"], "exam": record["exam"], "image": record["image_id"],
          "key": key, "line": row.line, "where": row.given_path, "image_id": row.image_id,
          "content": convert.content_key(row.path, record, salt)}
  relpath = _shard_relpath(record["domain"], split, positive, record["image_id"],
                           cfg.data.num_shards)
  hist = None
  if split == "train":
    hist = (record["image_id"], convert.breast_histogram(record))
  return meta, (relpath, (record["image_id"], key, serialized)), hist


def resolve_duplicates(metas: Sequence[dict]) -> list[dict]:
  """Metas in manifest order with later copies of one image turned into rejections.

  The same rule and reason text as the local job (`convert.sort_results`): the first line with
  a SOPInstanceUID (else stored pixels) is kept, each later one becomes "duplicate of line N
  (the same SOPInstanceUID | the same pixels)"; its example must not be written.
  """
  out, first_of = [], {}
  for m in sorted(metas, key=lambda m: m["line"]):
    content = m.get("content") if m["status"] == "ok" else None
    if content and content in first_of:
      first = first_of[content]
      what = convert.duplicate_what(content)
      if first["patient"] != m["patient"]:
        logging.warning("manifest lines %d and %d hold %s under two different patient ids: the "
                        "ids may belong to one person", first["line"], m["line"], what)
      m = {"status": "error", "reason": f"duplicate of line {first['line']} ({what})",
           "line": m["line"], "where": m["where"], "image_id": m["image_id"], "key": m["key"],
           "duplicate": True}
    elif content:
      first_of[content] = m
    out.append(m)
  return out


def duplicate_keys(metas: Sequence[dict]) -> frozenset:
  """Cache keys of the rows `resolve_duplicates` rejected (their examples are dropped)."""
  return frozenset(m["key"] for m in metas if m.get("duplicate"))


def write_one_shard(out_dir: str, relpath: str, items: Iterable[tuple[str, str, bytes]]) -> str:
  """Writes one shard from ``(image_hash, key, serialized)`` items (any order); returns relpath.

  Skipped when the shard is already complete with the same content list (a retried bundle).
  """
  items = sorted(items, key=lambda t: t[0])
  entries = [(h, k) for h, k, _ in items]
  digest = writer.contents_digest(entries)
  state_dir = os.path.join(out_dir, convert.CACHE_DIR, "shards")
  if not writer.is_complete(out_dir, relpath, digest, state_dir):
    writer.write_shard(out_dir, relpath, digest, state_dir, (s for _, _, s in items))
  return relpath


def finalize(out_dir: str, cfg: config_lib.ExperimentConfig, seed: int, num_rows: int,
             manifest_errors: Sequence[manifest_lib.RowError], metas: Sequence[dict],
             hists: Sequence[tuple[str, np.ndarray]], salt: bytes | None = None,
             errors_with_paths: bool = False) -> dict:
  """Empty shards, stale-shard removal, c.d.f.s, errors.csv and summary.json; returns the summary.

  Runs once, after every non-empty shard is written (the pipeline makes them a side input).
  """
  ok = sorted((m for m in metas if m["status"] == "ok"), key=lambda m: m["line"])
  errors = list(manifest_errors) + [
      manifest_lib.RowError(m["where"], m["reason"], m["line"], m.get("image_id", ""))
      for m in metas if m["status"] != "ok"]
  errors.sort(key=lambda e: e.line)
  plan = writer.plan_shards(((m["domain"], m["split"], m["label"] in config_lib.POSITIVE_LABELS,
                              m["image"], m["key"]) for m in ok), cfg.data.num_shards)
  writer.remove_unplanned_shards(out_dir, config_lib.DOMAINS, plan)
  for relpath, entries in plan.items():
    if not entries:
      write_one_shard(out_dir, relpath, [])

  hist_by_image = dict(hists)
  writer.write_checksums(out_dir, plan, os.path.join(out_dir, convert.CACHE_DIR, "shards"),
                         os.path.join(out_dir, convert.SHARDS))
  summary = convert.write_cdfs_and_reports(out_dir, ok, errors, hist_by_image.__getitem__,
                                           cfg=cfg, seed=seed, num_rows=num_rows, salt=salt,
                                           errors_with_paths=errors_with_paths)
  return summary


def sampled_images(metas: Sequence[dict], cfg: config_lib.ExperimentConfig, seed: int
                   ) -> frozenset:
  """Hashed ids of the training images in the c.d.f. sample of either domain."""
  chosen = set()
  for d in config_lib.DOMAINS:
    train = [(m["image"], m["label"]) for m in metas
             if m["status"] == "ok" and m["domain"] == d and m["split"] == "train"]
    num = cfg.data.cdf_samples_ffdm if d == "ffdm" else cfg.data.cdf_samples_dbt
    if train:
      chosen.update(convert.stratified_sample(train, num, seed, d))
  return frozenset(chosen)


def _read_errors(path: str, where_by_line: dict[int, str]) -> list[manifest_lib.RowError]:
  """errors.csv back as RowErrors; the paths (not in the file by default) come from the rows."""
  with open(path, newline="", encoding="utf-8") as f:
    return [manifest_lib.RowError(where_by_line.get(int(r["line"]), ""), r["reason"],
                                  int(r["line"])) for r in csv.DictReader(f)]


def build_pipeline(pipeline, tasks: Sequence[tuple], out_dir: str,
                   cfg: config_lib.ExperimentConfig, *, seed: int, salt: bytes, num_rows: int,
                   manifest_errors: Sequence[manifest_lib.RowError]):
  """Adds the conversion to a `beam.Pipeline`; `tasks` are ``(row, split, cache key)``."""
  import apache_beam as beam

  cfg_json = config_lib.to_json(cfg)

  class ConvertFn(beam.DoFn):
    """convert_image on one row; tagged outputs (see the module docstring)."""

    def setup(self):
      self._cfg = config_lib.from_json(cfg_json)

    def process(self, task):
      row, split, key = task
      meta, example, hist = convert_row(row, split, key, self._cfg, salt)
      yield beam.pvalue.TaggedOutput(META, meta)
      if example is not None:
        yield beam.pvalue.TaggedOutput(EXAMPLE, example)
      if hist is not None:
        yield beam.pvalue.TaggedOutput(HIST, hist)

  results = (pipeline
             | "Rows" >> beam.Create(list(tasks))
             | "Spread" >> beam.Reshuffle()
             | "Convert" >> beam.ParDo(ConvertFn()).with_outputs(META, EXAMPLE, HIST))
  metas = (results[META]
           | "Metas" >> beam.combiners.ToList()
           | "Duplicates" >> beam.Map(resolve_duplicates))
  dropped = metas | "DuplicateKeys" >> beam.Map(duplicate_keys)
  written = (results[EXAMPLE]
             | "NotDuplicate" >> beam.Filter(lambda ex, d: ex[1][1] not in d,
                                             d=beam.pvalue.AsSingleton(dropped))
             | "ByShard" >> beam.GroupByKey()
             | "WriteShard" >> beam.MapTuple(
                 lambda rel, items: write_one_shard(out_dir, rel, items)))
  chosen = metas | "Sample" >> beam.Map(sampled_images, cfg, seed)
  hists = (results[HIST]
           | "InSample" >> beam.Filter(lambda h, c: h[0] in c, c=beam.pvalue.AsSingleton(chosen))
           | "Hists" >> beam.combiners.ToList())

  def _finalize(_, metas, hists, written):
    del written  # only orders this step after the shard writers
    finalize(out_dir, config_lib.from_json(cfg_json), seed, num_rows, manifest_errors, metas,
             hists, salt)

  _ = (pipeline
       | "Once" >> beam.Create([None])
       | "Finalize" >> beam.Map(_finalize, metas=beam.pvalue.AsSingleton(metas),
                                hists=beam.pvalue.AsSingleton(hists),
                                written=beam.pvalue.AsList(written)))
  return pipeline


def run_beam_conversion(manifest: str, out_dir: str, cfg: config_lib.ExperimentConfig, *,
                        seed: int, salt: bytes, pipeline_args: Sequence[str] = ()
                        ) -> convert.ConversionReport:
  """`convert.run_conversion`'s job on Apache Beam; `pipeline_args` are Beam pipeline options.

  Without options the DirectRunner runs it in this process. Raises `convert.ConversionError` when
  nothing can be done (unusable manifest, no valid row, unwritable output).
  """
  import apache_beam as beam
  from apache_beam.options import pipeline_options

  if cfg.data.num_shards <= 0:   # workers assign shards before the group sizes are known
    raise convert.ConversionError("the Beam runner needs a fixed shard count: set "
                                  "data.num_shards (about group size / data.shard_size_mb)")
  rows, manifest_errors, num_rows = convert.read_rows(manifest, out_dir, salt, convert.Options())
  cfg = dataclasses.replace(cfg, seed=int(seed))
  try:
    os.makedirs(os.path.join(out_dir, convert.CACHE_DIR, "shards"), exist_ok=True)
    convert._atomic_write(os.path.join(out_dir, convert.CONFIG),
                          (config_lib.to_json(cfg) + "\n").encode())
  except OSError as e:
    raise convert.ConversionError(
        f"{out_dir}: output folder is not writable ({e.strerror or e})") from None
  for d in ("",) + config_lib.DOMAINS:
    writer.remove_temp_files(os.path.join(out_dir, d))
  for name in (convert.SUMMARY, convert.ERRORS):   # written last: absent until the job is done
    if os.path.exists(os.path.join(out_dir, name)):
      os.unlink(os.path.join(out_dir, name))
  splits = manifest_lib.assign_splits(rows, seed, cfg.data.split_fractions)
  tasks = [(r, splits[r.patient_id], convert.cache_key(r, splits[r.patient_id], cfg, salt))
           for r in rows]
  options = pipeline_options.PipelineOptions(list(pipeline_args))
  with beam.Pipeline(options=options) as p:
    build_pipeline(p, tasks, out_dir, cfg, seed=seed, salt=salt, num_rows=num_rows,
                   manifest_errors=manifest_errors)
  with open(os.path.join(out_dir, convert.SUMMARY), encoding="utf-8") as f:
    summary = json.load(f)
  where_by_line = {e.line: e.where for e in manifest_errors}
  where_by_line.update((r.line, r.given_path) for r in rows)
  errors = _read_errors(os.path.join(out_dir, convert.ERRORS), where_by_line)
  return convert.ConversionReport(out_dir=out_dir, num_rows=num_rows,
                                  num_converted=int(summary["total"]["images"]), errors=errors,
                                  summary=summary)
