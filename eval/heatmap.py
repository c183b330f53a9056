r"""Malignancy heat map of a whole DICOM image from a patch model (sliding window).

  python -m eval.heatmap --model runs/demo/study/base/best.keras --dicom image.dcm \
      --out heatmap.png [--preset demo] [--stride 24] [--hm_lut runs/demo/tfrecords]

Geometry and preprocessing come from the config.json the training saved beside the model (and
the HM table from its hm_lut.npy); --preset / --override / --hm_lut override them.

Writes the overlay PNG (the image's aspect), `<out>.json` (score = max window probability, peak
location) and `<out>.npy` (the probability map), and prints the score.
"""

import json

from absl import flags
from absl import logging

from mammo_tf import cli
from mammo_tf.evaluation import evaluate
from mammo_tf.evaluation import heatmap

_MODEL = flags.DEFINE_string("model", None, "A .keras file or SavedModel directory.",
                             required=True)
_DICOM = flags.DEFINE_string("dicom", None, "DICOM file (FFDM, multi-frame DBT) or DBT slice "
                             "directory.", required=True)
_OUT = flags.DEFINE_string("out", "heatmap.png", "Output PNG.")
_PRESET = flags.DEFINE_string("preset", None, "Config preset (downsample, patch size). Default: "
                              "the config.json saved with the model by its training; paper "
                              "when there is none.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Config overrides, section.field=value.")
_DOMAIN = flags.DEFINE_enum("domain", "auto", ["auto", "ffdm", "dbt"], "Image domain.")
_STRIDE = flags.DEFINE_integer("stride", None, "Window stride in stored pixels (default P/4).")
_HM_LUT = flags.DEFINE_string("hm_lut", None, "Histogram matching: 'src.npz,ref.npz' or a "
                              "converter output folder (cdf_dbt -> cdf_ffdm). For a .keras model "
                              "trained on HM patches; an exported SavedModel of an HM run "
                              "already carries the table: leave this off for it. Default: "
                              "hm_lut.npy beside a .keras model (the table its training used), "
                              "else none.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Windows per model call.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  cfg, source = evaluate.config_for_model(_MODEL.value, _PRESET.value, _OVERRIDE.value)
  logging.info("configuration: %s", source)
  hm_lut = (evaluate.model_hm_lut(_MODEL.value) if _HM_LUT.value is None
            else heatmap.resolve_hm_lut(_HM_LUT.value))
  info = heatmap.heatmap_for_dicom(
      _MODEL.value, _DICOM.value, _OUT.value, cfg, domain=_DOMAIN.value, stride=_STRIDE.value,
      hm_lut=hm_lut, batch_size=_BATCH.value, log=logging.info)
  print(f"score (max window probability): {info['score']:.4f}; peak at row {info['peak'][0]}, "
        f"col {info['peak'][1]} (original pixels); heat map {_OUT.value}")
  print(json.dumps(info, sort_keys=True))


if __name__ == "__main__":
  cli.run(main)
