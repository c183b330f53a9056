"""data.augment_on=device: host windows + the DeviceAugment layer give the host-mode patches."""
import dataclasses
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from mammo_tf import config
from mammo_tf.data import augment
from mammo_tf.data import pipeline
from mammo_tf.data import windows
from mammo_tf.models import augment_layer
from mammo_tf.models.preprocessing import HistogramMatching
from tests import tfrecord_factory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(seed, shape=(150, 130)):
  """A white-noise image (the worst case for interpolation rounding) and a smooth one."""
  rng = np.random.default_rng(seed)
  noise = rng.integers(0, 4096, shape).astype(np.uint16)
  smooth = ndimage.gaussian_filter(rng.random(shape) * 4000.0, 3.0).astype(np.uint16)
  return noise, smooth


def _windows_at(image, centres, angles, flips, data_cfg):
  """Device-mode inputs for explicit geometry (what `windows.cut_window` does after its draws)."""
  img = tf.constant(image[..., None])
  out = {k: [] for k in ("window", "centre", "angle", "flip", "noise_seed")}
  for c, a, f in zip(centres, angles, flips):
    c = tf.constant(c, tf.float32)
    y0, x0, _, _ = augment.window_bounds(c, a, tf.shape(img)[:2], data_cfg.patch_size)
    out["window"].append(windows.window_from_image(img, y0, x0, windows.window_size(data_cfg)))
    out["centre"].append(c - tf.cast(tf.stack([y0, x0]), tf.float32))
    out["angle"].append(tf.constant(a, tf.float32))
    out["flip"].append(tf.constant(f, tf.float32))
    out["noise_seed"].append(tf.constant([0, 0], tf.int64))
  return {k: tf.stack(v) for k, v in out.items()}


def test_window_size_is_the_rotated_patch_reach_plus_margin():
  paper = config.get_config("paper").data            # 512 px, +-30 degrees
  # 255.5 * (cos 30 + sin 30) = 349.02 -> ceil(698.04) + 5
  assert windows.window_size(paper) == 704
  no_rot = config.get_config("paper", {"data.rotation_deg": 0.0}).data
  assert windows.window_size(no_rot) == 511 + 5
  wide = config.get_config("paper", {"data.rotation_deg": 90.0}).data
  assert windows.window_size(wide) == math.ceil(511 * math.sqrt(2)) + 5


@pytest.mark.parametrize("angle_deg", [-30.0, 30.0, -13.0, 0.0])
def test_layer_equals_host_transform_at_edges_and_extreme_angles(angle_deg):
  cfg = config.get_config("tiny").data                # 64 px patches
  rng = np.random.default_rng(int(angle_deg) + 50)
  for image in _images(int(angle_deg) + 60):
    h, w = image.shape
    # Centres inside, on the border and beyond it (the host transform fills 0 past the image).
    centres = np.concatenate([rng.uniform([-12, -12], [h + 12, w + 12], (10, 2)),
                              [[0.0, 0.0], [h - 1.0, w - 1.0], [h - 1.0, 3.3], [20.5, w + 5.0]]])
    flips = [(i % 2, (i // 2) % 2) for i in range(len(centres))]
    angle = math.radians(angle_deg)
    host = np.stack([augment.extract_patch(tf.constant(image[..., None]), c, angle, f[0], f[1],
                                           cfg.patch_size).numpy() for c, f in zip(centres, flips)])
    inputs = _windows_at(image, centres, [angle] * len(centres), flips, cfg)
    dev = augment_layer.DeviceAugment(cfg.patch_size)(inputs).numpy()
    assert dev.shape == host.shape == (len(centres), 64, 64, 1)
    # Float tolerance: 1e-5 of the 12-bit range, on white noise where rounding shows most.
    np.testing.assert_allclose(dev, host, rtol=0, atol=0.05)
    assert (host == 0).mean() > 0.01                  # the zero fill past the image is exercised


def test_layer_matches_scipy_bilinear_sampling():
  """Independent reference: scipy's order-1 map_coordinates of the rotated, flipped grid."""
  cfg = config.get_config("tiny").data
  _, image = _images(3, (90, 100))
  image = image.astype(np.float32)
  rng = np.random.default_rng(1)
  p = cfg.patch_size
  for _ in range(8):
    centre = rng.uniform([-5, -5], [95, 105])
    angle, hflip, vflip = rng.uniform(-0.6, 0.6), rng.random() < 0.5, rng.random() < 0.5
    inputs = _windows_at(image.astype(np.uint16), [centre], [angle], [(hflip, vflip)], cfg)
    got = augment_layer.DeviceAugment(p)(inputs).numpy()[0, ..., 0]
    d = np.arange(p) - (p - 1) / 2
    dy, dx = np.meshgrid(d * (-1 if vflip else 1), d * (-1 if hflip else 1), indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    ys, xs = centre[0] + c * dy + s * dx, centre[1] - s * dy + c * dx
    ref = ndimage.map_coordinates(image.astype(np.uint16).astype(np.float64), [ys, xs], order=1,
                                  mode="constant", cval=0.0)
    inside = (ys >= 0) & (ys <= 89) & (xs >= 0) & (xs <= 99)
    np.testing.assert_allclose(got[inside], ref[inside], rtol=1e-4, atol=0.05)
    assert np.all(got[(ys < -1) | (ys > 90) | (xs < -1) | (xs > 100)] == 0)


def _host_and_device(image, mask, data_cfg, hm_lut, n=24, seed=7):
  hm = HistogramMatching(hm_lut) if hm_lut is not None else None
  img, msk = tf.constant(image[..., None]), tf.constant(mask[..., None])
  host, cuts = [], []
  for i in range(n):
    has_box = i % 3 == 0
    box = tf.constant([2.0, 3.0, 9.0, 8.0] if has_box else [-1.0] * 4)
    s = augment.example_seed(seed, i)
    host.append(augment.make_patch(img, msk, 4, box, has_box, s, data_cfg, train=True,
                                   hm=hm).numpy())
    cuts.append(windows.cut_window(
        tf.shape(img)[:2], msk, 4, box, has_box, s, data_cfg,
        read_window=lambda y0, x0, size: windows.window_from_image(img, y0, x0, size)))
  batch = {k: tf.stack([c[k] for c in cuts]) for k in windows.WINDOW_KEYS}
  dev = augment_layer.for_config(data_cfg, hm_lut)(batch).numpy()
  return np.stack(host), dev, batch


@pytest.mark.parametrize("noise_std", [0.0, 1.0])
@pytest.mark.parametrize("with_hm", [False, True])
def test_same_seed_same_patches_with_and_without_hm_and_noise(noise_std, with_hm):
  cfg = config.get_config("tiny", {"data.noise_std": noise_std, "data.rotation_deg": 30.0,
                                   "data.translate_std": 60.0}).data
  for image in _images(11):
    mask = np.ones((38, 33), np.uint8)
    lut = np.sqrt(np.arange(4096) * 4095.0).astype(np.float32) if with_hm else None
    host, dev, batch = _host_and_device(image, mask, cfg, lut)
    assert np.abs(np.degrees(batch["angle"].numpy())).max() > 25.0     # large angles drawn
    np.testing.assert_allclose(dev, host, rtol=1e-5, atol=0.05)
    if noise_std:
      clean = _host_and_device(image, mask, dataclasses.replace(cfg, noise_std=0.0), lut)[1]
      assert np.std(dev - clean) == pytest.approx(noise_std, rel=0.05)


def test_config_validates_augment_on():
  assert config.get_config("tiny").data.augment_on == "host"
  assert config.get_config("tiny", {"data.augment_on": "device"}).data.augment_on == "device"
  with pytest.raises(ValueError, match="data.augment_on='gpu'"):
    config.get_config("tiny", {"data.augment_on": "gpu"})
  cfg = config.get_config("tiny", {"data.augment_on": "device"})
  assert config.from_json(config.to_json(cfg)) == cfg


@pytest.fixture(scope="module", params=["png", "raw"])
def codec_dir(request, tmp_path_factory):
  cfg = config.get_config("tiny")
  d = tfrecord_factory.write_dataset(tmp_path_factory.mktemp(request.param), cfg=cfg,
                                     num_images_per_class=4, domains=("dbt", "ffdm"),
                                     splits=("train",), codec=request.param)
  return request.param, d


def _take(ds, n):
  return [b for _, b in zip(range(n), ds)]


@pytest.mark.parametrize("reuse", [1, 4])
def test_device_pipeline_batches_equal_host_batches(codec_dir, reuse):
  codec, data_dir = codec_dir
  host_cfg = config.get_config("tiny", {"data.reuse": reuse, "data.rotation_deg": 30.0})
  dev_cfg = config.override(host_cfg, {"data.augment_on": "device"})
  lut = pipeline.hm_lut_for(data_dir, "dbt")
  host = _take(pipeline.make_train_dataset(data_dir, "dbt", "train", host_cfg, seed=4, epoch=2,
                                           hm_lut=lut), 3)
  dev = _take(pipeline.make_train_dataset(data_dir, "dbt", "train", dev_cfg, seed=4, epoch=2,
                                          band_decode=True), 3)
  full = _take(pipeline.make_train_dataset(data_dir, "dbt", "train", dev_cfg, seed=4, epoch=2,
                                           band_decode=False), 3)
  layer = augment_layer.for_config(dev_cfg.data, lut)
  s = windows.window_size(dev_cfg.data)
  for (hp, hl), (dx, dl), (fx, _) in zip(host, dev, full):
    assert dx["window"].shape == (8, s, s, 1) and dx["window"].dtype == tf.uint16
    np.testing.assert_array_equal(dl.numpy(), hl.numpy())
    for k in windows.WINDOW_KEYS:     # decoding only the window's rows changes nothing
      np.testing.assert_array_equal(dx[k].numpy(), fx[k].numpy())
    np.testing.assert_allclose(layer(dx).numpy(), hp.numpy(), rtol=1e-5, atol=0.05)


_JAX_SCRIPT = """
import os, sys, numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from mammo_tf.models import augment_layer
d = np.load(sys.argv[1])
inputs = {k: d[k] for k in ("window", "centre", "angle", "flip", "noise_seed")}
out = augment_layer.DeviceAugment(int(d["p"]), 0.0, hm_lut=d["lut"])(inputs)
noisy = augment_layer.DeviceAugment(int(d["p"]), 2.0, hm_lut=d["lut"])(inputs)
np.savez(sys.argv[2], out=np.asarray(out), noisy=np.asarray(noisy))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_layer_under_jax_backend_equals_host_patches(tmp_path):
  cfg = config.get_config("tiny", {"data.noise_std": 0.0}).data
  _, image = _images(5)
  lut = np.sqrt(np.arange(4096) * 4095.0).astype(np.float32)
  host, _, batch = _host_and_device(image, np.ones((38, 33), np.uint8), cfg, lut, n=8)
  np.savez(tmp_path / "in.npz", p=cfg.patch_size, lut=lut,
           **{k: v.numpy() for k, v in batch.items()})
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  got = np.load(tmp_path / "out.npz")
  np.testing.assert_allclose(got["out"], host, rtol=1e-5, atol=0.05)
  # JAX draws its own (threefry) normals from the same seeds: same law, other values.
  diff = got["noisy"] - got["out"]
  assert diff.std() == pytest.approx(2.0, rel=0.05) and abs(diff.mean()) < 0.05


def test_device_mode_training_run_matches_host_mode(tmp_path):
  """A real base-training epoch: the train step's DeviceAugment sees the host patches, so the
  losses agree; validation and the exported SavedModel (uint16 patches in) are unchanged."""
  from mammo_tf import training
  overrides = ["data.samples_per_epoch=16", "data.batch_size=8", "data.eval_batch_size=16",
               "train.epochs=1"]
  host_cfg = config.get_config("tiny", overrides)
  dev_cfg = config.get_config("tiny", overrides + ["data.augment_on=device"])
  data_dir = tfrecord_factory.write_dataset(tmp_path, cfg=host_cfg, num_images_per_class=4,
                                            domains=("ffdm", "dbt"), splits=("train", "val"))
  host = training.train_base(host_cfg, data_dir, str(tmp_path / "host"))
  dev = training.train_base(dev_cfg, data_dir, str(tmp_path / "device"))
  h, d = host.history[0], dev.history[0]
  assert d["loss"] == pytest.approx(h["loss"], rel=1e-3)
  assert d["val_size"] == h["val_size"]
  serving = tf.saved_model.load(dev.paths["export"]).signatures["serving_default"]
  spec = list(serving.structured_input_signature[1].values())[0]
  assert spec.dtype == tf.uint16 and spec.shape[1:] == (64, 64, 1)
