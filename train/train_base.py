"""Trains the FFDM patch classifier (paper §2.3).

  python -m train.train_base --data DIR --workdir W --preset P [--seed S]
      [--override section.field=value ...] [--flagfile F]

Killed and restarted with the same command, it resumes from the last completed epoch; a finished
work dir (done.json) is reused.
"""

from absl import logging

from mammo_tf import cli
from train import flags as train_flags

train_flags.define_common()
FLAGS = train_flags.FLAGS


def main(argv):
  del argv
  from mammo_tf import training
  cfg = train_flags.resolve_config("epochs")
  train_flags.apply_runtime_flags(cfg)
  result = training.train_base(cfg, FLAGS.data, FLAGS.workdir,
                               deterministic=FLAGS.deterministic)
  logging.info("best epoch %d, validation AUC %.4f; model %s, export %s", result.best_epoch,
               result.best_val_auc, result.paths["best"], result.paths["export"])
  print(f"best_epoch={result.best_epoch} best_val_auc={result.best_val_auc:.4f} "
        f"workdir={result.paths['workdir']}")


if __name__ == "__main__":
  cli.run(main, data_flags=("data",))
