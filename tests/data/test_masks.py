"""Breast mask on synthetic arrays."""
import numpy as np
import pytest

from mammo_tf.data import masks


def _breast(shape=(200, 160), background=0, noise=0.0, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  inside = ((yy - shape[0] / 2) / (shape[0] * 0.45)) ** 2 + (xx / (shape[1] * 0.8)) ** 2 < 1
  img = np.full(shape, background, np.float64)
  img[inside] = 1500 + 800 * rng.random(inside.sum())
  img += noise * rng.standard_normal(shape)
  return np.clip(img, 0, 4095).astype(np.uint16), inside


@pytest.mark.parametrize("background, noise", [(0, 0.0), (60, 15.0)])
def test_mask_finds_the_breast(background, noise):
  img, truth = _breast(background=background, noise=noise)
  m = masks.breast_mask(img)
  assert m.dtype == bool and m.shape == img.shape
  assert (m != truth).mean() < 0.002


def test_largest_component_and_hole_filling():
  img, truth = _breast()
  img[90:110, 20:40] = 0              # dark (fatty) hole inside the breast
  img[5:15, 140:150] = 4095           # a bright marker away from the breast
  m = masks.breast_mask(img)
  assert m[100, 30] and not m[10, 145]
  np.testing.assert_array_equal(m, truth)


@pytest.mark.parametrize("value", [0, 700])
def test_empty_or_constant_image_has_no_breast(value):
  with pytest.raises(ValueError, match="no breast found"):
    masks.breast_mask(np.full((32, 32), value, np.uint16))


def test_downsample_majority_rule_and_upsample_inverse():
  m = np.zeros((5, 7), bool)
  m[0:2, 0:1] = True          # 2 of 4 pixels in cell (0, 0): majority (>= half)
  m[2:4, 2:3] = True          # 1 of 4 in cell (1, 1) ... plus (3, 3) below makes 2 of 4
  m[3, 3] = True
  m[4, 6] = True              # edge cell (2, 3) has a single real pixel
  small = masks.downsample_mask(m, 2)
  assert small.dtype == np.uint8 and small.shape == (3, 4)
  expected = np.zeros((3, 4), np.uint8)
  expected[0, 0] = expected[1, 1] = expected[2, 3] = 1
  np.testing.assert_array_equal(small, expected)
  up = masks.upsample_mask(small, 2, (5, 7))
  assert up.shape == (5, 7) and up[4, 6] and up[0, 1] and not up[0, 2]
  np.testing.assert_array_equal(masks.downsample_mask(up, 2), small)
  with pytest.raises(ValueError, match="does not match"):
    masks.upsample_mask(small, 2, (9, 7))


def test_fill_holes_equals_scipy_and_cell_grid_mask():
  from scipy import ndimage
  rng = np.random.default_rng(3)
  for _ in range(5):
    m = rng.random((40, 33)) < 0.6
    np.testing.assert_array_equal(masks.fill_holes(m), ndimage.binary_fill_holes(m))
  img, truth = _breast()
  img[5:9, 140:144] = 4095            # a 4x4 marker: one cell of its own, dropped as a component
  cells = masks.breast_mask(img, factor=4)
  assert cells.shape == (50, 40) and not cells[1, 35]
  expected = masks.downsample_mask(truth, 4).astype(bool)
  assert (cells != expected).sum() <= 2
