"""The model-free residual of the shift study: hand-built records, then the real renderer.

The first tests write TFRecords whose pixel values are set by hand, so every residual below is
computed by hand. The last one renders real DICOM files at two response levels, converts them
under the two reading rules and shows the mechanism the shift study reports: a response change
read as stored is one monotone map that HM undoes to a few grey levels, while the per-image VOI
window that ``data.intensity=auto`` applies after the shift leaves hundreds.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from mammo_tf.data import cdf
from mammo_tf.data import masks
from mammo_tf.data import schema
from mammo_tf.evaluation import hm_residual
from mammo_tf.evaluation import shift

SIDE = 7             # odd: the coarse mask (4 x 4 cells of 2 px) overhangs the image
BACKGROUND = 3000    # outside the mask in the level's images only: must never count


def _record(image_id: str, image: np.ndarray) -> bytes:
  mask = np.zeros((4, 4), np.uint8)
  mask[:, :2] = 1          # breast: columns 0..3 of the 7 x 7 image
  return schema.encode_example({
      "image": image.astype(np.uint16), "mask": mask, "mask_downsample": 2,
      "label": "normal", "domain": "ffdm", "split": "test", "patient": "p",
      "exam": "e", "image_id": image_id})


def _write(data_dir: str, images: dict[str, np.ndarray]) -> str:
  os.makedirs(os.path.join(data_dir, "ffdm"), exist_ok=True)
  path = os.path.join(data_dir, "ffdm", schema.shard_name("test", False, 0, 1))
  with tf.io.TFRecordWriter(path) as w:
    for image_id, image in images.items():
      w.write(_record(image_id, image))
  return data_dir


def _breast(values: tuple[int, int], outside: int = 0) -> np.ndarray:
  image = np.full((SIDE, SIDE), outside, np.int64)
  image[:, :4] = values[0]
  image[::2, :4] = values[1]
  return image


def test_breast_pixels_repeat_the_coarse_mask_and_crop_it_to_the_image():
  mask = np.array([[1, 0], [0, 1]], np.uint8)
  full = masks.upsample_mask(mask, 2, (3, 4))
  np.testing.assert_array_equal(full, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])


def test_residual_before_and_after_a_table_by_hand(tmp_path):
  reference = _write(str(tmp_path / "level0"), {
      "a": _breast((1000, 2000)), "b": _breast((1000, 2000)), "only-at-level-0": _breast((5, 5))})
  level = _write(str(tmp_path / "level4"), {
      "a": _breast((1300, 2300), outside=BACKGROUND),      # this image moved by +300
      "b": _breast((1100, 2100), outside=BACKGROUND),      # this one by +100
      "only-at-the-level": _breast((9, 9))})
  lut = np.clip(np.arange(4096) - 300, 0, None)            # a table that undoes +300
  got = hm_residual.intensity_residual(level, reference, lut)
  # before: (300 + 100) / 2; after: image a 0, image b |1100 - 300 - 1000| = 200, mean 100.
  assert got == {"before": 200.0, "after": 100.0, "images": 2}
  identity = hm_residual.intensity_residual(level, reference, np.arange(4096))
  assert identity == {"before": 200.0, "after": 200.0, "images": 2}


def test_data_dirs_of_other_images_are_refused(tmp_path):
  a = _write(str(tmp_path / "a"), {"x": _breast((1, 2))})
  b = _write(str(tmp_path / "b"), {"y": _breast((1, 2))})
  with pytest.raises(ValueError, match="share no ffdm/test image"):
    hm_residual.intensity_residual(a, b, np.arange(4096))


@pytest.mark.slow
def test_hm_undoes_a_response_shift_read_as_stored_but_not_through_per_image_windows(tmp_path):
  patients = list(range(12))
  cohorts = {}
  for factor in (1.0, 5.0):
    cohorts[factor] = shift.ensure_cohort(shift.shift_config("tiny"), str(tmp_path / f"c{factor}"),
                                          workers=1, patients=patients, factor=factor)
  residual = {}
  for rule in ("bits", "auto"):
    cfg = shift.shift_config("tiny", {"data.intensity": rule})
    data = {f: shift.ensure_data(cfg, m, str(tmp_path / f"{rule}{f}"), workers=1)
            for f, m in cohorts.items()}
    # The table is built on the converter's training split; scored on its held-out patients.
    lut = cdf.lut_from_files(schema.cdf_path(data[5.0], "ffdm"), schema.cdf_path(data[1.0], "ffdm"))
    residual[rule] = hm_residual.intensity_residual(data[5.0], data[1.0], lut, split="test")
  print(residual)
  for rule in ("bits", "auto"):
    assert residual[rule]["images"] > 0 and residual[rule]["before"] > 1000
  # Read as stored, the shift is one power curve: HM leaves only quantisation (~9 levels here).
  assert residual["bits"]["after"] < 20
  # Through each file's own window (its breast's 1-99 % range), the map differs per image.
  assert residual["auto"]["after"] > 10 * residual["bits"]["after"]
