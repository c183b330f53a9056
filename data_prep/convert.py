r"""Converts a DICOM manifest into sharded TFRecords, c.d.f.s, summary.json and errors.csv.

  python -m data_prep.convert --manifest M.csv --out DIR [--workers N] [--seed S] [--preset P] \
      [--override section.field=value ...] [--salt_file F] [--codec png|raw] \
      [--canonical_laterality L|R] [--intensity auto|window|range|bits] [--voi_index N] \
      [--shard_size_mb MB] \
      [--runner local|beam [-- BEAM_PIPELINE_OPTIONS ...]]

--runner beam runs the same per-image conversion as an Apache Beam pipeline (DirectRunner unless
options after `--` say otherwise, e.g. `-- --runner=FlinkRunner --flink_master=HOST:8081`); it
writes the same shards, c.d.f.s, summary.json and errors.csv (mammo_tf/data/beam_pipeline.py,
docs/scale_out.md). --workers applies to the local runner only.

Exit status (mammo_tf/cli.py): 0 every input converted; 1 some inputs rejected (listed in
DIR/errors.csv by manifest line and salted image hash; add --errors_with_paths to list the paths
too), the rest converted; 2 nothing could be done (bad flag or override, missing or unusable
manifest, no valid rows, unwritable output or disk full, no image converted), one line, no
traceback; 3 an unexpected failure (traceback). --image_time_limit S stops any image that takes
longer than S seconds (not cached: retried on the next run). Rerunning the same command resumes
an interrupted run; the result is byte-identical to an uninterrupted one whatever --workers.
See mammo_tf/data/convert.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf import config as config_lib
from mammo_tf.data import convert
from mammo_tf.data import privacy

FLAGS = flags.FLAGS
flags.DEFINE_string("manifest", None, "Manifest CSV (docs/DESIGN.md, Manifest).")
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_integer("workers", 1, "Conversion processes (1 = in-process).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the split and of the c.d.f. sample.")
flags.DEFINE_string("preset", "paper", f"Config preset: {', '.join(config_lib.PRESETS)}.")
flags.DEFINE_multi_string("override", [], "Config override section.field=value (repeatable).")
flags.DEFINE_string("salt_file", None,
                    "File holding the id-hashing salt; default <out>/.salt (created if absent).")
flags.DEFINE_enum("codec", None, ["png", "raw"], "Image codec (default: the preset's).")
flags.DEFINE_enum("canonical_laterality", None, ["L", "R", ""],
                  "Flip every image to this side ('' = keep as acquired; default: the preset's).")
flags.DEFINE_enum("intensity", None, ["auto", "window", "range", "bits"],
                  "DICOM -> 0..4095 rule (default: the preset's, auto): auto = the file's VOI "
                  "window, else its robust used range; window; range; bits = [0, 2^BitsStored-1].")
flags.DEFINE_integer("voi_index", None,
                     "Which VOI window / LUT of a file to apply (0 = the first).", lower_bound=0)
flags.DEFINE_float("shard_size_mb", None,
                   "Target shard size in MiB: each (domain, split, class) gets enough shards of "
                   "about this size (sets data.num_shards=0; default: the preset's sizing).",
                   lower_bound=1e-3)
flags.DEFINE_enum("runner", "local", ["local", "beam"],
                  "local: a pool of --workers processes; beam: Apache Beam (options after --).")
flags.DEFINE_float("image_time_limit", 0.0,
                   "Seconds one image may take to convert (0 = no limit); runs in worker "
                   "processes when set. A timed-out image is reported, not cached.", lower_bound=0)
flags.DEFINE_bool("errors_with_paths", False,
                  "Also list each rejected input's path in errors.csv (for your own eyes: paths "
                  "often hold patient identifiers).")
flags.mark_flags_as_required(["manifest", "out"])


def main(argv):
  beam_args = argv[1:]
  if beam_args and FLAGS.runner != "beam":
    raise app.UsageError(f"unexpected arguments {beam_args} (pipeline options need --runner beam)")
  try:
    overrides = list(FLAGS.override)
    if FLAGS.codec is not None:
      overrides.append(f"data.image_codec={FLAGS.codec}")
    if FLAGS.canonical_laterality is not None:
      overrides.append(f"data.canonical_laterality={FLAGS.canonical_laterality}")
    if FLAGS.intensity is not None:
      overrides.append(f"data.intensity={FLAGS.intensity}")
    if FLAGS.voi_index is not None:
      overrides.append(f"data.voi_index={FLAGS.voi_index}")
    if FLAGS.shard_size_mb is not None:
      overrides += ["data.num_shards=0", f"data.shard_size_mb={FLAGS.shard_size_mb}"]
    cfg = config_lib.get_config(FLAGS.preset, overrides)
    salt = privacy.load_or_create_salt(FLAGS.out, FLAGS.salt_file)
    if FLAGS.runner == "beam":
      from mammo_tf.data import beam_pipeline
      report = beam_pipeline.run_beam_conversion(FLAGS.manifest, FLAGS.out, cfg, seed=FLAGS.seed,
                                                 salt=salt, pipeline_args=beam_args)
    else:
      report = convert.run_conversion(FLAGS.manifest, FLAGS.out, cfg, seed=FLAGS.seed,
                                      workers=FLAGS.workers, salt=salt,
                                      image_time_limit=FLAGS.image_time_limit,
                                      errors_with_paths=FLAGS.errors_with_paths)
  except (convert.ConversionError, privacy.SaltError, ValueError) as e:
    logging.error("nothing converted: %s", e)
    return convert.EXIT_NOTHING
  except OSError as e:   # disk full, I/O error while writing: rerunning resumes
    logging.error("conversion stopped: %s", e)
    return convert.EXIT_NOTHING
  if report.exit_code == convert.EXIT_PARTIAL:
    logging.warning("%d input(s) rejected, %d converted: see %s", report.num_errors,
                    report.num_converted, os.path.join(FLAGS.out, convert.ERRORS))
  elif report.exit_code == convert.EXIT_NOTHING:
    logging.error("no image could be converted: see %s", os.path.join(FLAGS.out, convert.ERRORS))
  return report.exit_code


if __name__ == "__main__":
  cli.run(main)
