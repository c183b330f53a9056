"""FC-only fine-tuning of the FFDM base model on MIP patches (paper §2.4.2).

  python -m train.finetune --data DIR --base W/best.keras --workdir W2 [--hm]
      [--preset P] [--override section.field=value ...]

Without --preset the config is the base run's config.json (same geometry and width).
"""

from absl import logging

from mammo_tf import cli
from train import flags as train_flags

train_flags.define_common()
train_flags.define_adaptation()
FLAGS = train_flags.FLAGS


def main(argv):
  del argv
  from mammo_tf import training
  cfg = train_flags.resolve_config("finetune_epochs", base_path=FLAGS.base)
  train_flags.apply_runtime_flags(cfg)
  result = training.finetune(cfg, FLAGS.data, FLAGS.base, FLAGS.workdir, FLAGS.hm,
                             deterministic=FLAGS.deterministic)
  logging.info("best epoch %d, validation AUC %.4f", result.best_epoch, result.best_val_auc)
  print(f"best_epoch={result.best_epoch} best_val_auc={result.best_val_auc:.4f} "
        f"workdir={result.paths['workdir']}")


if __name__ == "__main__":
  cli.run(main, data_flags=("data",))
