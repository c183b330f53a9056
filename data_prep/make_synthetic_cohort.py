"""Writes the synthetic DICOM cohort and its manifest.

  python -m data_prep.make_synthetic_cohort --out runs/demo/cohort --preset demo --seed 0

A finished cohort (its COMPLETE.json written last) is reused as it is when asked for again with
the same preset, seed and options, so a rerun of `make demo` does not rewrite it.
"""

from __future__ import annotations

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf import config
from mammo_tf.synthetic import completion
from mammo_tf.synthetic.cohort import generate_cohort

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder (manifest.csv, dicom/).", required=True)
flags.DEFINE_enum("preset", "paper", sorted(config.PRESETS), "Config preset (cohort geometry).")
flags.DEFINE_integer("seed", 0, "Seed: the same seed gives byte-identical files.")
flags.DEFINE_integer("patients", None, "Number of patients (default: the preset's).")
flags.DEFINE_bool("paper_proportions", False, "Use the class proportions of the paper's Table 1.")
flags.DEFINE_integer("workers", 2, "Worker processes (output does not depend on it).")
flags.DEFINE_multi_string("override", [], "Config overrides, e.g. synthetic.lesion_scale=1.5.")
flags.DEFINE_bool("force", False, "Generate again even when <out>/COMPLETE.json says the cohort "
                  "was finished for the same preset and seed.")


def main(argv):
  del argv
  cfg = config.get_config(FLAGS.preset, FLAGS.override)
  wanted = completion.request(cfg.synthetic, FLAGS.seed, FLAGS.patients, FLAGS.paper_proportions)
  if completion.is_complete(FLAGS.out, wanted) and not FLAGS.force:
    print(f"{FLAGS.out}: complete cohort for this preset and seed, reused (--force regenerates)")
    return
  completion.mark_incomplete(FLAGS.out)
  report = generate_cohort(FLAGS.out, cfg.synthetic, FLAGS.seed, num_patients=FLAGS.patients,
                           workers=FLAGS.workers, paper_proportions=FLAGS.paper_proportions)
  logging.info("wrote %d patients, %d FFDM images, %d DBT volumes to %s in %.1f s",
               report.num_patients, report.num_ffdm, report.num_dbt, report.out_dir,
               report.seconds)
  completion.mark_complete(FLAGS.out, wanted)
  print(f"{report.manifest}: {report.num_patients} patients, {report.num_ffdm} FFDM, "
        f"{report.num_dbt} DBT, {report.seconds:.1f} s")


if __name__ == "__main__":
  cli.run(main)
