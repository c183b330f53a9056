r"""The whole study (paper §3): trainings, the 7 rows of Table 2, figures and the report.

  python -m eval.table2 --data runs/demo/tfrecords --workdir runs/demo/study --preset demo

Runs or reuses (done.json present) W/base, W/finetune, W/finetune_hm, W/spottune, W/spottune_hm,
evaluates each row on the test split for the preset's eval seeds (cached in W/eval/<row>.json),
writes W/results.json, W/report.md, W/report.html and W/figures/, and prints the table.
Interrupted, rerun the same command: it picks up where it stopped. Each training runs in its own
process (output also in W/logs/<run>.log); one that crashes (killed by a signal) is reported as
"training X crashed (signal N); log: ..." after the other trainings have run, with exit status 3,
and what finished is kept for the rerun.
"""

import os
import sys

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf import config as config_lib
from mammo_tf.evaluation import report
from mammo_tf.evaluation import study
from mammo_tf.evaluation import training_runs

_DATA = flags.DEFINE_string("data", None, "Converter output folder.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study work directory.", required=True)
_PRESET = flags.DEFINE_string("preset", "paper", "Config preset: tiny, demo or paper.")
_SEED = flags.DEFINE_integer("seed", None, "Experiment seed (default: the preset's).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Config overrides, section.field=value.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples (patients).")
_DETERMINISTIC = flags.DEFINE_boolean(
    "deterministic", True,
    "tf.config.experimental.enable_op_determinism: the same seed gives the same table, bit for "
    "bit (on CPU at little cost; turn off on GPUs for speed).")


def main(argv):
  del argv
  overrides = list(_OVERRIDE.value)
  if _SEED.value is not None:
    overrides.append(f"seed={_SEED.value}")
  cfg = config_lib.get_config(_PRESET.value, overrides)
  logging.set_verbosity(logging.INFO)
  if _DETERMINISTIC.value:
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
  trainers = training_runs.subprocess_trainers(_WORKDIR.value, _DETERMINISTIC.value)
  try:
    results = study.run_study(cfg, _DATA.value, _WORKDIR.value, trainers=trainers,
                              bootstrap_resamples=_BOOTSTRAP.value)
  except training_runs.TrainingsFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_CRASH
  print()
  print(f"Table 2 (preset {cfg.name}, seeds {list(cfg.data.eval_seeds)}, mean ± np.std):")
  print(report.format_table(results))
  print()
  print(f"report: {os.path.join(_WORKDIR.value, 'report.html')}")


if __name__ == "__main__":
  cli.run(main, data_flags=("data",))
