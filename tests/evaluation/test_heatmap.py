"""Sliding-window heat map: window geometry, overlap averaging, and a trained lesion model whose
peak lands on a lesion planted in a synthetic DICOM image."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mammo_tf import config
from mammo_tf.data import masks
from mammo_tf.data import schema
from mammo_tf.evaluation import evaluate
from mammo_tf.evaluation import heatmap
from tests import tfrecord_factory

SHAPE = (256, 208)           # stored rows, cols of the lesion images
SIGMA = 64 / 12.0            # lesion sigma of tests/tfrecord_factory at the tiny patch size


def test_window_starts_cover_the_edges():
  np.testing.assert_array_equal(heatmap.window_starts(100, 32, 16), [0, 16, 32, 48, 64, 68])
  np.testing.assert_array_equal(heatmap.window_starts(96, 32, 16), [0, 16, 32, 48, 64])
  np.testing.assert_array_equal(heatmap.window_starts(20, 32, 8), [0])
  with pytest.raises(ValueError):
    heatmap.window_starts(10, 0, 1)


def _bright_spot_model(patches):
  """A hand-written patch 'model': probability from the brightest 3x3 mean in the centre half."""
  p = np.asarray(patches)[..., 0]
  s = p.shape[1]
  centre = p[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4]
  return np.clip(centre.max(axis=(1, 2)) / 4095.0, 0, 1)


def test_sliding_window_map_geometry_and_averaging():
  img = np.zeros((90, 70), np.float32)
  img[10:80, 0:60] = 1000.0
  img[40, 30] = 4095.0
  mask = img > 0
  calls = []

  def model(x):
    calls.append(x.shape)
    return _bright_spot_model(x)

  hm = heatmap.sliding_window_map(model, img, 32, stride=8, batch_size=7, mask=mask,
                                  weighting="uniform")
  assert hm.probability.shape == img.shape
  assert all(c[1:] == (32, 32, 1) and c[0] <= 7 for c in calls)
  assert sum(c[0] for c in calls) == hm.windows
  assert hm.score == pytest.approx(1.0)
  assert (hm.probability[~mask] == 0).all()
  # Pixel (40, 30) is covered by windows that all see the spot in their centre half or not;
  # the map there is the mean of the covering windows' probabilities.
  ys, xs = heatmap.window_starts(90, 32, 8), heatmap.window_starts(70, 32, 8)
  cover = [(i, j) for i, y in enumerate(ys) for j, x in enumerate(xs)
           if y <= 40 < y + 32 and x <= 30 < x + 32]
  want = np.mean([hm.window_probability[i, j] for i, j in cover])
  assert hm.probability[40, 30] == pytest.approx(want, rel=1e-6)
  # Centre-weighted averaging puts the peak on the spot.
  g = heatmap.sliding_window_map(model, img, 32, stride=4, mask=mask)
  assert abs(g.peak[0] - 40) <= 4 and abs(g.peak[1] - 30) <= 4, g.peak
  assert g.score == hm.score
  w = heatmap.window_weights(32)
  assert w.shape == (32, 32) and w[15, 15] == w[16, 16] == w.max()
  np.testing.assert_allclose(w, w.T)
  # A window without breast pixels is never evaluated.
  hm2 = heatmap.sliding_window_map(model, img, 32, stride=8, mask=np.zeros_like(mask))
  assert hm2.windows == 0 and hm2.score == 0.0 and not hm2.probability.any()


def test_overlay_keeps_the_image_shape():
  img = np.arange(60 * 40, dtype=np.float32).reshape(60, 40) + 1
  rgb = heatmap.overlay_rgb(img, np.linspace(0, 1, 2400).reshape(60, 40))
  assert rgb.shape == (60, 40, 3) and rgb.dtype == np.uint8


# -- a model trained on the lesion type --------------------------------------------------------


def _plant(img, breast, rng, lesion):
  """Adds a bright Gaussian blob (amplitude 2500, sigma SIGMA) at a random point well inside the
  breast when `lesion`; returns (image, box) where box (ymin, xmin, ymax, xmax) = centre ± 2 sigma
  (also for a lesion-free image: a 'benign' tissue box at the same kind of position)."""
  h, w = img.shape
  inside = np.argwhere(_distance_inside(breast) > 16)
  cy, cx = inside[rng.integers(len(inside))] + rng.uniform(0, 1, 2)
  if lesion:
    yy, xx = np.mgrid[0:h, 0:w]
    blob = 2500.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * SIGMA ** 2))
    img = np.where(breast, np.clip(img + blob, 1, 4095), 0).astype(np.uint16)
  half = 2 * SIGMA
  return img, (max(0.0, cy - half), max(0.0, cx - half), min(h - 1.0, cy + half),
               min(w - 1.0, cx + half))


def _distance_inside(breast):
  """Distance to the nearest non-breast pixel or image edge (the chest wall counts as an edge)."""
  from scipy import ndimage
  return ndimage.distance_transform_edt(np.pad(breast, 1))[1:-1, 1:-1]


def _lesion_image(seed, lesion=True):
  rng = np.random.default_rng(seed)
  img, breast, _ = tfrecord_factory.make_image(rng, SHAPE, "ffdm", lesion=False,
                                               lesion_sigma=SIGMA, laterality="L")
  img, box = _plant(img, breast, rng, lesion)
  return img, breast, box


def _write_lesion_dataset(root, cfg, n_per_class):
  """FFDM train/val TFRecords: positives are patches centred on a planted bright blob; negatives
  are centred either on a random tissue point (a 'benign' box, the same distribution of
  positions as the lesions) or on a random in-breast pixel, so only the blob separates them."""
  data_dir = os.path.join(str(root), "tfrecords")
  os.makedirs(os.path.join(data_dir, "ffdm"))
  for split in ("train", "val"):
    for positive in (True, False):
      path = os.path.join(data_dir, "ffdm", schema.shard_name(split, positive, 0, 1))
      with tf.io.TFRecordWriter(path) as w:
        for i in range(n_per_class):
          img, breast, box = _lesion_image([7, split == "train", positive, i], lesion=positive)
          if not positive and i % 2:
            box = None
          rec = {"image": img, "mask": tfrecord_factory.downsample_mask(
                     breast, cfg.data.mask_downsample),
                 "label": ("malignant" if positive else "benign"), "box": box,
                 "domain": "ffdm", "split": split, "laterality": "L", "view": "CC",
                 "patient": f"p{split}{int(positive)}{i}", "exam": f"e{i}",
                 "image_id": f"i{split}{int(positive)}{i:03d}",
                 "downsample": cfg.data.downsample,
                 "mask_downsample": cfg.data.mask_downsample}
          w.write(schema.encode_example(rec))
  return data_dir


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory):
  from mammo_tf.training import jobs
  root = tmp_path_factory.mktemp("heat")
  cfg = config.get_config("tiny", {"data.samples_per_epoch": 640, "train.epochs": 2,
                                   "data.num_shards": 1})
  data_dir = _write_lesion_dataset(root, cfg, 48)
  result = jobs.train_base(cfg, data_dir, str(root / "base"))
  return cfg, result.paths["best"], root


@pytest.mark.slow
def test_trained_model_peaks_on_the_lesion(lesion_model):
  cfg, model_path, _ = lesion_model
  predictor = evaluate.load_predictor(model_path)
  for k in range(3):
    img, breast, box = _lesion_image([1234, k])
    hm = heatmap.sliding_window_map(predictor, img, cfg.data.patch_size,
                                    mask=masks.breast_mask(img))
    ymin, xmin, ymax, xmax = box
    margin = 4
    assert ymin - margin <= hm.peak[0] <= ymax + margin, (k, hm.peak, box)
    assert xmin - margin <= hm.peak[1] <= xmax + margin, (k, hm.peak, box)
    img0, _, _ = _lesion_image([1234, k], lesion=False)
    hm0 = heatmap.sliding_window_map(predictor, img0, cfg.data.patch_size,
                                     mask=masks.breast_mask(img0))
    assert hm.score > hm0.score


@pytest.mark.slow
def test_heatmap_from_dicom(lesion_model, tmp_path):
  pytest.importorskip("mammo_tf.io.dicom")
  from tests import dicom_factory
  cfg, model_path, _ = lesion_model
  img, _, box = _lesion_image([1234, 5])
  original = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)   # block_mean gives img back
  dcm = dicom_factory.write_ffdm(tmp_path / "lesion.dcm", original, bits_stored=12)
  out = tmp_path / "out" / "heat.png"
  info = heatmap.heatmap_for_dicom(model_path, str(dcm), str(out), cfg, stride=8)
  from matplotlib import image as mpimg
  png = mpimg.imread(out)
  assert png.shape[:2] == SHAPE          # the stored image: the original's aspect exactly
  assert png.shape[0] / png.shape[1] == pytest.approx(original.shape[0] / original.shape[1])
  saved = json.load(open(tmp_path / "out" / "heat.json"))
  assert saved == info
  assert info["image_shape"] == list(original.shape) and info["stride"] == 8
  assert info["domain"] == "ffdm" and 0.0 <= info["score"] <= 1.0
  ymin, xmin, ymax, xmax = (2 * v for v in box)   # original pixels
  margin = 8
  assert ymin - margin <= info["peak"][0] <= ymax + margin
  assert xmin - margin <= info["peak"][1] <= xmax + margin
  assert np.load(tmp_path / "out" / "heat.npy").shape == SHAPE
  text = open(tmp_path / "out" / "heat.json").read()
  assert dicom_factory.PATIENT_ID not in text and "lesion.dcm" not in text
