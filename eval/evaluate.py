r"""Patch-level ROC AUC of one model over patch-extraction seeds, with a patient-level bootstrap CI.

  python -m eval.evaluate --model runs/demo/study/base/best.keras --data runs/demo/tfrecords \
      --domain dbt --hm --seeds 0,1,2 --out results.json

Patch geometry and preprocessing come from the config.json the training saved beside the model
(the HM table from its hm_lut.npy); --preset / --override / --hm override them.

Writes the JSON (per-seed AUCs, mean, std = np.std over seeds with ddof=0, std_sample with
ddof=1, the 95% interval, counts, ROC points) and `<out>_roc.png`.
"""

import json
import os

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf import config as config_lib
from mammo_tf.evaluation import evaluate
from mammo_tf.evaluation import study

_MODEL = flags.DEFINE_string("model", None, "A .keras file or an exported SavedModel directory.",
                             required=True)
_DATA = flags.DEFINE_string("data", None, "Converter output folder (TFRecords + cdf_*.npz).",
                            required=True)
_DOMAIN = flags.DEFINE_enum("domain", "ffdm", ["ffdm", "dbt"], "Test domain.")
_HM = flags.DEFINE_bool("hm", None, "Histogram-match the patches (cdf_<domain> -> cdf_ffdm). "
                        "Default: the table the model was trained with (hm_lut.npy beside a "
                        ".keras model), none for a SavedModel (its export carries the HM layer).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Patch-extraction seeds.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.")
_PRESET = flags.DEFINE_string("preset", None, "Config preset (patch geometry, batch size). "
                              "Default: the config.json saved with the model by its training "
                              "(beside best.keras, or above export/); paper when there is none.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Config overrides, section.field=value.")
_OUT = flags.DEFINE_string("out", "results.json", "Output JSON; the ROC PNG goes beside it.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples (patients).")
_BOOTSTRAP_SEED = flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap.")


def main(argv):
  del argv
  cfg, source = evaluate.config_for_model(_MODEL.value, _PRESET.value, _OVERRIDE.value)
  logging.info("configuration: %s", source)
  seeds = [int(s) for s in _SEEDS.value]
  predictor = evaluate.load_predictor(_MODEL.value)
  if predictor.input_size and predictor.input_size != cfg.data.patch_size:
    logging.warning("model input %d != preset patch size %d: using the model's",
                    predictor.input_size, cfg.data.patch_size)
    cfg = config_lib.override(cfg, {"data.patch_size": predictor.input_size})
  hm_lut = evaluate.model_hm_lut(_MODEL.value) if _HM.value is None else None
  if _HM.value:
    from mammo_tf.data import pipeline
    hm_lut = pipeline.hm_lut_for(_DATA.value, _DOMAIN.value, "ffdm")
  if hm_lut is not None:
    logging.info("histogram matching on (%s)", "--hm" if _HM.value else "the model's hm_lut.npy")
  result = evaluate.evaluate_seeds(predictor, _DATA.value, _DOMAIN.value, cfg, seeds,
                                   split=_SPLIT.value, hm_lut=hm_lut,
                                   bootstrap_resamples=_BOOTSTRAP.value,
                                   bootstrap_seed=_BOOTSTRAP_SEED.value, log=logging.info)
  result["model"] = _MODEL.value
  result["preset"] = cfg.name
  study.write_json_atomic(_OUT.value, result)
  roc_png = os.path.splitext(_OUT.value)[0] + "_roc.png"
  name = f"{_DOMAIN.value}{' +HM' if hm_lut is not None else ''}"
  evaluate.plot_roc_curves([(name, result)], roc_png, title=f"{os.path.basename(_MODEL.value)} "
                                                            f"on {name} {_SPLIT.value}")
  ci = result["ci"]
  print(f"AUC per seed {', '.join(f'{a:.4f}' for a in result['aucs'])}; "
        f"mean {result['mean']:.4f} ± {result['std']:.4f} (np.std, ddof=0); "
        f"{int(ci['level'] * 100)}% patient bootstrap CI {ci['low']:.4f}-{ci['high']:.4f}; "
        f"{result['n_images']} images, {result['n_patients']} patients")
  print(json.dumps({"out": _OUT.value, "roc": roc_png}))


if __name__ == "__main__":
  cli.run(main, data_flags=("data",))
