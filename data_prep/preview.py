r"""Preview of the training input: sample patches (paper Fig. 1) and average c.d.f.s (Fig. 2).

  python -m data_prep.preview --data runs/demo/tfrecords --domain dbt --out preview.png \
      [--preset demo] [--split train] [--num 6] [--seed 0] [--cdf_out preview_cdf.png]

Writes a grid of training patches without / with augmentation and without / with histogram
matching (<domain> -> ffdm), and `<out stem>_cdf.png` with the average cumulative histograms of
FFDM, MIP and HM-MIP on 0..4095.
"""

from absl import flags

from mammo_tf import cli
from mammo_tf import config
from mammo_tf.data import figures

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Converter output folder (TFRecords + cdf_*.npz).")
flags.DEFINE_enum("domain", "dbt", list(config.DOMAINS), "Domain of the patches.")
flags.DEFINE_string("out", None, "Patch grid PNG.")
flags.DEFINE_string("cdf_out", None, "c.d.f. figure PNG (default: <out stem>_cdf.png).")
flags.DEFINE_string("preset", "paper", "Config preset (geometry, augmentation).")
flags.DEFINE_multi_string("override", [], "Config overrides, section.field=value.")
flags.DEFINE_enum("split", "train", list(config.SPLITS), "Split to sample from.")
flags.DEFINE_integer("num", 6, "Images (columns) in the grid.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["data", "out"])


def main(argv):
  del argv
  cfg = config.get_config(FLAGS.preset, FLAGS.override)
  grid, cdf_png = figures.save_preview(FLAGS.data, FLAGS.domain, cfg, FLAGS.out,
                                       cdf_out=FLAGS.cdf_out, split=FLAGS.split, num=FLAGS.num,
                                       seed=FLAGS.seed)
  print(f"wrote {grid}" + (f" and {cdf_png}" if cdf_png else " (no cdf_*.npz: no HM, no Fig. 2)"))


if __name__ == "__main__":
  cli.run(main)
