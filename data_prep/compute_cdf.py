r"""Recomputes the per-domain average c.d.f.s from existing TFRecords.

  python -m data_prep.compute_cdf --data DIR [--domain ffdm|dbt|both] [--num N] [--seed S]

Uses the same class-stratified sample of training images as data_prep.convert (same --seed and
--num give the same `cdf_<domain>.npz`, byte for byte). --num 0 (default) takes the paper's sample
sizes (1200 FFDM, 600 MIP); all training images are used when there are fewer.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf import config as config_lib
from mammo_tf.data import cdf as cdf_lib
from mammo_tf.data import convert
from mammo_tf.data import schema

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "TFRecord folder written by data_prep.convert.")
flags.DEFINE_enum("domain", "both", ["ffdm", "dbt", "both"], "Domain(s) to recompute.")
flags.DEFINE_integer("num", 0, "Images in the sample (0 = 1200 FFDM / 600 MIP).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the sample (the conversion's --seed).")
flags.mark_flag_as_required("data")


def main(argv):
  del argv
  defaults = config_lib.DataConfig()
  domains = config_lib.DOMAINS if FLAGS.domain == "both" else (FLAGS.domain,)
  status = 0
  for domain in domains:
    num = FLAGS.num or (defaults.cdf_samples_ffdm if domain == "ffdm" else defaults.cdf_samples_dbt)
    try:
      avg, count = convert.cdf_from_tfrecords(FLAGS.data, domain, num, FLAGS.seed)
    except (FileNotFoundError, ValueError) as e:
      logging.error("%s: %s", domain, e)
      status = 2
      continue
    path = schema.cdf_path(FLAGS.data, domain)
    cdf_lib.save_cdf(path, avg, domain=domain, num_images=count)
    logging.info("%s: average c.d.f. over %d training images -> %s", domain, count, path)
  return status


if __name__ == "__main__":
  cli.run(main)
