"""Flags shared by the training mains (``python -m train.train_base|finetune|spottune``).

Flags live only here and in the mains; the library receives an `ExperimentConfig`. Every config
field is reachable with ``--override section.field=value`` (repeatable); the dedicated flags below
are shortcuts that become overrides. ``--flagfile F`` (absl) reads flags from a file.
"""

from __future__ import annotations

import os

from absl import flags
from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.io import workdir_names as names

FLAGS = flags.FLAGS
# The DEFINEs below run on behalf of the main that calls `define_common`: their flags are that
# main's key flags, so its ``--help`` lists them.
flags.disclaim_key_flags()


def define_common() -> None:
  """--data, --workdir, --preset, --seed, --override and the training shortcuts."""
  flags.DEFINE_string("data", None, "Converter output folder (TFRecords, cdf_*.npz).")
  flags.DEFINE_string("workdir", None, "Work dir of this run (resumed when it exists).")
  flags.DEFINE_string("preset", None, "Config preset: tiny | demo | paper.")
  flags.DEFINE_string("config", None, "A config.json to start from instead of --preset (as "
                      "written beside every run; eval.table2 passes its own this way).")
  flags.DEFINE_integer("seed", None, "Run seed (weights, data order, augmentation, Gumbel noise).")
  flags.DEFINE_multi_string("override", [], "Config override section.field=value (repeatable).")
  flags.DEFINE_integer("epochs", None, "Number of epochs of this job (overrides the config).")
  flags.DEFINE_boolean("mixed_precision", None, "mixed_bfloat16 compute (train.mixed_precision).")
  flags.DEFINE_boolean("xla", None, "Compile the train/predict steps with XLA (train.xla).")
  flags.DEFINE_enum("augment_on", None, ["host", "device"],
                    "Where augmentation and HM run (data.augment_on): host = in tf.data, device = "
                    "in the train step on the accelerator.")
  flags.DEFINE_enum("strategy", None, ["auto", "default", "mirrored", "multi_worker"],
                    "tf.distribute strategy (train.strategy; multi_worker reads TF_CONFIG).")
  flags.DEFINE_boolean("decoupled_weight_decay", None,
                       "AdamW (decoupled) instead of Adam + coupled L2.")
  flags.DEFINE_integer("early_stopping_patience", None, "Epochs without val AUC gain (0 = off).")
  flags.DEFINE_boolean("deterministic", True,
                       "TF op determinism: one seed gives the same bytes, resumes are bit-exact "
                       "(slower on GPU; --nodeterministic turns it off).")
  flags.mark_flags_as_required(["data", "workdir"])


def define_adaptation() -> None:
  """--base and --hm for the DBT adaptation jobs."""
  flags.DEFINE_string("base", None, "The FFDM base model (W/best.keras of train_base).")
  flags.DEFINE_boolean("hm", False, "Histogram-match MIP patches to FFDM (cdf_dbt -> cdf_ffdm).")
  flags.mark_flags_as_required(["base"])


def overrides(epochs_field: str) -> list[str]:
  """Config overrides from the shortcut flags (then the explicit --override values)."""
  out = []
  if FLAGS.seed is not None:
    out.append(f"seed={FLAGS.seed}")
  shortcuts = {"epochs": f"train.{epochs_field}", "mixed_precision": "train.mixed_precision",
               "xla": "train.xla", "augment_on": "data.augment_on", "strategy": "train.strategy",
               "decoupled_weight_decay": "train.decoupled_weight_decay",
               "early_stopping_patience": "train.early_stopping_patience"}
  for flag, key in shortcuts.items():
    value = FLAGS[flag].value
    if value is not None:
      out.append(f"{key}={value}")
  return out + list(FLAGS.override)


def resolve_config(epochs_field: str, extra: list[str] | None = None,
                   base_path: str | None = None) -> config_lib.ExperimentConfig:
  """The run's config: ``--config`` or ``--preset`` (else the base run's ``config.json``, else
  ``paper``) with the shortcut flags, `extra` and ``--override`` applied."""
  all_overrides = (extra or []) + overrides(epochs_field)
  if FLAGS.config:
    if FLAGS.preset:
      raise ValueError("give --config or --preset, not both")
    with open(FLAGS.config, encoding="utf-8") as f:
      return config_lib.override(config_lib.from_json(f.read()), all_overrides)
  if FLAGS.preset:
    return config_lib.get_config(FLAGS.preset, all_overrides)
  if base_path:
    base_cfg = os.path.join(os.path.dirname(os.path.abspath(base_path)), names.CONFIG_FILE)
    if os.path.exists(base_cfg):
      logging.info("config from the base run: %s", base_cfg)
      with open(base_cfg) as f:
        return config_lib.override(config_lib.from_json(f.read()), all_overrides)
  return config_lib.get_config("paper", all_overrides)


def apply_runtime_flags(cfg: config_lib.ExperimentConfig) -> None:
  """Logs the run's config; op determinism (``--deterministic``) is passed to the job."""
  logging.info("config %s, seed %d", cfg.name, cfg.seed)
