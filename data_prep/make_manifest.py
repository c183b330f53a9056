r"""Turns a downloaded public dataset (or a folder of DICOM files) into a manifest.

  python -m data_prep.make_manifest --dataset NAME --root DIR --out FILE.csv [options]

Datasets: cbis-ddsm, vindr-mammo, bcs-dbt, rsna, cmmd, inbreast, embed, dicom-folder (README,
"Public datasets"; one module each under mammo_tf/data/datasets/). Writes FILE.csv (paths relative
to its folder when inside it, else absolute) and FILE.skipped.csv (table:line, reason) for every
annotation row it could not use, and prints counts per label / domain / split and what it left
out. Exit status: 0 every row used, 1 some rows skipped, 2 nothing could be built.
"""

from __future__ import annotations

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf.data import datasets
from mammo_tf.data.datasets import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(datasets.NAMES), "Which dataset layout --root holds.")
flags.DEFINE_string("root", None, "The dataset's download folder (images and tables).")
flags.DEFINE_string("out", None, "Manifest CSV to write (FILE.skipped.csv goes next to it).")
flags.DEFINE_integer("seed", 0, "Seed of the validation share carved out of official train splits.")
flags.DEFINE_float("val_fraction", 0.1,
                   "Share of an official training split's patients moved to val "
                   "(cbis-ddsm, vindr-mammo).")
flags.DEFINE_bool("keep_unboxed_positives", False,
                  "Keep positive images that have no finding box (default: leave them out, "
                  "counted, since a random patch from them is a noisy label).")
flags.DEFINE_string("birads_map", common.DEFAULT_BIRADS_MAP,
                    "vindr-mammo, inbreast, embed: BI-RADS -> label proxy (a label may be 'skip').")
flags.DEFINE_bool("keep_actionable", False, "bcs-dbt: keep Actionable volumes, as benign.")
flags.DEFINE_string("labels", "", "dicom-folder: labels CSV (see mammo_tf/data/datasets/"
                    "dicom_folder.py for its keys).")
flags.DEFINE_string("default_label", "", "dicom-folder: label of images without a labels row "
                    "(default: such images are skipped).")
flags.mark_flags_as_required(["dataset", "root", "out"])


def main(argv):
  del argv
  options = common.Options(
      seed=FLAGS.seed, val_fraction=FLAGS.val_fraction,
      keep_unboxed_positives=FLAGS.keep_unboxed_positives, birads_map=FLAGS.birads_map,
      keep_actionable=FLAGS.keep_actionable, labels=FLAGS.labels,
      default_label=FLAGS.default_label)
  try:
    result = datasets.get_builder(FLAGS.dataset)(FLAGS.root, options)
    if not result.rows:
      if result.skipped:
        common.write_skipped(result, FLAGS.out)
      raise common.DatasetError(
          f"no usable image ({len(result.skipped)} annotation rows skipped"
          + (f", e.g. {result.skipped[0][1]})" if result.skipped else ")"))
    skipped_path = common.write_outputs(result, FLAGS.out)
  except (common.DatasetError, OSError) as e:
    logging.error("%s: nothing built: %s", FLAGS.dataset, e)
    return 2
  for line in common.summary_lines(result):
    print(line)
  print(f"wrote {FLAGS.out} and {skipped_path}")
  if result.unboxed_positives and FLAGS.keep_unboxed_positives:
    logging.warning("%d positive image(s) kept without a finding box (noisy patch labels)",
                    result.unboxed_positives)
  return result.exit_code


if __name__ == "__main__":
  cli.run(main)
