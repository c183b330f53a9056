"""SpotTune adaptation of the FFDM base model to MIP patches (paper §2.4.3).

  python -m train.spottune --data DIR --base W/best.keras --workdir W3 [--hm]
      [--policy_eval argmax|sample] [--frozen_bn frozen|live] [--train_stem]
      [--policy_learning_rate LR] [--preset P] [--override section.field=value ...]

Defaults: argmax decisions at evaluation, frozen copies entirely frozen (BN in inference mode),
stem frozen, one optimiser for network and policy (docs/DESIGN.md, Models).
"""

from absl import flags
from absl import logging

from mammo_tf import cli
from train import flags as train_flags

train_flags.define_common()
train_flags.define_adaptation()
flags.DEFINE_enum("policy_eval", None, ["argmax", "sample"],
                  "Evaluation decisions: argmax of the policy logits, or Gumbel-sampled.")
flags.DEFINE_enum("frozen_bn", None, ["frozen", "live"],
                  "frozen: frozen copies fully frozen; live: only their convs (SpotTune code).")
flags.DEFINE_boolean("train_stem", None, "Train the stem conv (SpotTune code quirk).")
flags.DEFINE_float("policy_learning_rate", None,
                   "Policy network learning rate (0 = the network's).")
FLAGS = train_flags.FLAGS


def main(argv):
  del argv
  from mammo_tf import training
  extra = []
  for name in ("policy_eval", "frozen_bn", "train_stem", "policy_learning_rate"):
    if FLAGS[name].value is not None:
      extra.append(f"train.{name}={FLAGS[name].value}")
  cfg = train_flags.resolve_config("spottune_epochs", extra=extra, base_path=FLAGS.base)
  train_flags.apply_runtime_flags(cfg)
  result = training.train_spottune(cfg, FLAGS.data, FLAGS.base, FLAGS.workdir, FLAGS.hm,
                                   deterministic=FLAGS.deterministic)
  logging.info("best epoch %d, validation AUC %.4f; policy %s", result.best_epoch,
               result.best_val_auc, result.paths.get("policy"))
  print(f"best_epoch={result.best_epoch} best_val_auc={result.best_val_auc:.4f} "
        f"workdir={result.paths['workdir']}")


if __name__ == "__main__":
  cli.run(main, data_flags=("data",))
