"""Stateless augmentation: the projective transform against skimage / NumPy, and distributions."""
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from skimage.transform import rotate

from mammo_tf import config
from mammo_tf.data import augment
from mammo_tf.data import patches


def _smooth_image(seed, shape=(160, 150)):
  rng = np.random.default_rng(seed)
  return ndimage.gaussian_filter(rng.random(shape) * 4000.0, 2.0).astype(np.float32)


@pytest.mark.parametrize("angle_deg", [-30.0, -7.5, 0.0, 12.0, 30.0])
@pytest.mark.parametrize("hflip,vflip",
                         [(False, False), (True, False), (False, True), (True, True)])
def test_transform_equals_skimage_rotation_of_the_same_window(angle_deg, hflip, vflip):
  image = _smooth_image(int(angle_deg) + 100)
  p, s = 41, 81
  centre = np.array([77.0, 70.0])
  got = augment.extract_patch(tf.constant(image[..., None]), centre, math.radians(angle_deg),
                              hflip, vflip, p).numpy()[..., 0]
  top = (centre - (s - 1) / 2).astype(int)
  window = image[top[0]:top[0] + s, top[1]:top[1] + s]
  ref = rotate(window, angle_deg, order=1, preserve_range=True)   # about the window centre
  m = (s - p) // 2
  ref = ref[m:m + p, m:m + p]
  if hflip:
    ref = ref[:, ::-1]
  if vflip:
    ref = ref[::-1, :]
  np.testing.assert_allclose(got[1:-1, 1:-1], ref[1:-1, 1:-1], atol=0.05)


def test_transform_matches_map_coordinates_near_edges_with_zero_fill():
  rng = np.random.default_rng(0)
  image = _smooth_image(1, (70, 90)) + 1.0
  p = 48
  for _ in range(25):
    centre = rng.uniform([-10, -10], [80, 100])
    angle = rng.uniform(-0.6, 0.6)
    got = augment.extract_patch(tf.constant(image[..., None]), centre, angle, False, False,
                                p).numpy()[..., 0]
    d = np.arange(p) - (p - 1) / 2
    dy, dx = np.meshgrid(d, d, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    ys = centre[0] + c * dy + s * dx
    xs = centre[1] - s * dy + c * dx
    ref = ndimage.map_coordinates(image, [ys, xs], order=1, mode="constant", cval=0.0)
    inside = (ys >= 0) & (ys <= 69) & (xs >= 0) & (xs <= 89)
    np.testing.assert_allclose(got[inside], ref[inside], rtol=1e-4, atol=1e-2)
    outside = (ys < -1) | (ys > 70) | (xs < -1) | (xs > 90)
    assert np.all(got[outside] == 0)


def test_clamped_augmented_patch_holds_image_content_only():
  """Rotation + translation + crop as one transform: no padding inside a big enough image."""
  cfg = config.get_config("tiny", {"data.noise_std": 0.0, "data.rotation_deg": 45.0,
                                   "data.translate_std": 200.0}).data
  image = tf.fill([100, 120, 1], tf.constant(1000, tf.uint16))   # 100 >= 64 * sqrt(2)
  mask = tf.ones([25, 30, 1], tf.uint8)
  for i in range(40):
    box = tf.constant([0.0, 119.0, 0.0, 119.0]) if i % 2 else tf.constant([-1.0] * 4)
    patch = augment.make_patch(image, mask, 4, box, bool(i % 2), augment.example_seed(0, i),
                               cfg, train=True)
    np.testing.assert_allclose(patch.numpy(), 1000.0, atol=0.05)


def _params(n, data_cfg, seed=0):
  ds = tf.data.Dataset.range(n).map(
      lambda i: augment.sample_params(augment.example_seed(seed, i), data_cfg))
  return next(iter(ds.batch(n)))


def test_augmentation_distributions():
  cfg = config.get_config("paper").data      # translate 20 px original = 10 stored, +-30 deg
  p = _params(4000, cfg)
  t = p["translate"].numpy()
  assert abs(t.mean()) < 0.5
  np.testing.assert_allclose(t.std(axis=0), 10.0, rtol=0.05)
  a = np.degrees(p["angle"].numpy())
  assert a.min() >= -30.0 and a.max() <= 30.0 and a.min() < -29.0 and a.max() > 29.0
  assert abs(a.mean()) < 1.0
  np.testing.assert_allclose(a.std(), 30.0 / math.sqrt(3.0), rtol=0.05)   # uniform
  for k in ("hflip", "vflip"):
    assert abs(p[k].numpy().mean() - 0.5) < 0.03
  flips = p["hflip"].numpy() & p["vflip"].numpy()
  assert abs(flips.mean() - 0.25) < 0.03                                    # independent
  off = _params(500, config.get_config("paper", {"data.hflip": False, "data.vflip": False}).data)
  assert not off["hflip"].numpy().any() and not off["vflip"].numpy().any()
  noise = augment.add_noise(tf.zeros([256, 256, 1]), tf.constant([1, 2]), cfg.noise_std).numpy()
  assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(1.0, rel=0.02)


def test_same_seed_same_params_other_seed_different():
  cfg = config.get_config("tiny").data
  a, b, c = _params(50, cfg, 0), _params(50, cfg, 0), _params(50, cfg, 1)
  for k in a:
    np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
  assert not np.array_equal(a["translate"].numpy(), c["translate"].numpy())
  evalp = augment.sample_params(augment.example_seed(0, 5), cfg, train=False)
  assert float(evalp["angle"]) == 0.0 and not bool(evalp["hflip"])
  np.testing.assert_array_equal(evalp["centre_u"].numpy(), a["centre_u"].numpy()[5])


def test_clamp_keeps_rotated_patch_samples_inside():
  for angle in np.linspace(-0.6, 0.6, 7):
    c = patches.clamp_centre_np([0.0, 500.0], (300, 260), 128, angle)
    e = patches.half_extent(128, angle)
    assert c[0] == pytest.approx(e, abs=1e-3) and c[1] == pytest.approx(259 - e, abs=1e-3)
