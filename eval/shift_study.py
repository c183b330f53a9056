r"""A controlled domain-shift experiment: AUC of one FFDM model against an intensity shift.

  python -m eval.shift_study --workdir runs/shift --preset demo

Renders a single-site FFDM cohort, trains the base model, renders the validation and test
patients again through K intensity responses at growing distance from the training one, and
scores the model on each level as it is and with histogram matching (the level's average c.d.f.
onto the training one). Writes W/shift.json and W/shift.png (details:
`mammo_tf/evaluation/shift.py`). Interrupted, rerun the same command: it picks up where it stopped.
With ``--study runs/demo/study`` the curve and its paragraph join that study's report.

``--adapt`` adds FC-only fine-tuning and SpotTune at every level, each on
``--target_fractions`` of the training patients rendered at that level (two trainings per level
and fraction: about an hour more at the demo preset on 2 cores).
"""

import os
import sys

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf.evaluation import shift
from mammo_tf.evaluation import shift_adapt

_WORKDIR = flags.DEFINE_string("workdir", None, "Shift-study work directory.", required=True)
_PRESET = flags.DEFINE_enum("preset", "demo", ["tiny", "demo"], "Config preset.")
_SEED = flags.DEFINE_integer("seed", None, "Experiment seed (default: the preset's).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Config overrides, section.field=value.")
_LEVELS = flags.DEFINE_list("levels", [str(f) for f in shift.DEFAULT_FACTORS],
                            "Response powers of the levels (the first is 1, increasing).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for rendering and conversion.")
_ADAPT = flags.DEFINE_bool(
    "adapt", False, "Also fine-tune (FC only) and SpotTune the model at every level.")
_FRACTIONS = flags.DEFINE_list(
    "target_fractions", [f"{f:g}" for f in shift_adapt.DEFAULT_FRACTIONS],
    "With --adapt: shares of the level's training patients to adapt on (increasing, <= 1).")
_STUDY = flags.DEFINE_string(
    "study", None, "A finished eval.table2 work dir: add the shift section to its report.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  overrides = list(_OVERRIDE.value) + ([f"seed={_SEED.value}"] if _SEED.value is not None else [])
  try:
    cfg = shift.shift_config(_PRESET.value, overrides)
    factors = [float(f) for f in _LEVELS.value]
    fractions = (shift_adapt.check_fractions([float(f) for f in _FRACTIONS.value])
                 if _ADAPT.value else None)
  except (KeyError, ValueError) as e:
    print(f"shift_study: bad flag value: {e}", file=sys.stderr)
    sys.exit(2)
  import tensorflow as tf
  tf.config.experimental.enable_op_determinism()   # one seed, one curve
  try:
    result = shift.run_shift_study(cfg, _WORKDIR.value, factors=factors, workers=_WORKERS.value,
                                   fractions=fractions)
    if _STUDY.value:
      print("report: " + ", ".join(shift.attach_to_study(_WORKDIR.value, _STUDY.value)))
  except ValueError as e:
    print(f"shift_study: {e}", file=sys.stderr)
    sys.exit(2)
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  adapted = [m for m in shift_adapt.METHODS if m in result]
  print("\nlevel  factor  distance  test only  HM     " + "".join(f"{m:>10s}" for m in adapted)
        + f"  residual   (preset {cfg.name}, AUC mean over seeds {list(cfg.data.eval_seeds)})")
  for i, j in enumerate(result["levels"]):
    print(f"{j:5d}  {result['factor'][i]:6g}  {result['distance'][i]:8.3f}  "
          f"{fmt(result['test_only'][i]):9s}  {fmt(result['hm'][i]):5s}  "
          + "".join(f"{fmt(result[m][i]):>10s}" for m in adapted)
          + f"  {result['residual_test_only'][i]:.0f} -> {result['residual_hm'][i]:.0f}")
  print(f"\n{os.path.join(_WORKDIR.value, 'shift.json')}, "
        f"{os.path.join(_WORKDIR.value, 'shift.png')}")


if __name__ == "__main__":
  cli.run(main)
