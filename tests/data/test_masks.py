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


# --------------------------------------------------------------------------------------------------
# Real artefacts on DICOM files read by mammo_tf.io (intensity auto), against the drawn breast.
# --------------------------------------------------------------------------------------------------
def _drawn_breast(shape=(240, 200), seed=0, centre=0.5, radius=0.42):
  """(density in [0, 1] with a skin-line fall-off, the drawn breast: a half-ellipse on the left;
  `centre` and `radius` as fractions of the height: 0.4 and 0.5 reach the top edge)."""
  from scipy import ndimage
  rng = np.random.default_rng(seed)
  h, w = shape
  yy, xx = np.mgrid[:h, :w]
  r2 = ((yy - h * centre) / (h * radius)) ** 2 + (xx / (0.7 * w)) ** 2
  inside = r2 < 1
  field = ndimage.gaussian_filter(rng.standard_normal(shape), 4)
  field = (field - field.min()) / (field.max() - field.min())
  edge = np.clip(1 - r2, 0, 1) ** 0.25
  return np.where(inside, (0.35 + 0.65 * field) * edge, 0.0), inside


def _iou(a, b):
  return (a & b).sum() / (a | b).sum()


def _mono2_file(path, density, inside, seed=0, **kw):
  rng = np.random.default_rng(seed)
  stored = np.where(inside, 600 + 3000 * density, 30 + rng.integers(0, 40, density.shape))
  return stored.astype(np.uint16), kw


def _artefact_text(stored, inside):
  h, w = stored.shape
  glyphs = np.random.default_rng(9).random((14, 40)) < 0.5           # a block of "letters"
  block = stored[4:18, w - 46:w - 6]
  block[glyphs] = 4095
  return stored


def _artefact_line(stored, inside):
  stored[:, int(stored.shape[1] * 0.45)] = 4095                       # crosses breast and air
  return stored


def _artefact_border(stored, inside):
  rng = np.random.default_rng(3)
  stored[:7] = 4000 + rng.integers(0, 20, stored[:7].shape)           # top and right film border
  stored[:, -6:] = 4000 + rng.integers(0, 20, stored[:, -6:].shape)
  return stored


@pytest.mark.parametrize("artefact", ["text", "line", "border", "all"])
@pytest.mark.parametrize("factor", [1, 4])
def test_mask_ignores_burnt_in_text_lines_and_film_borders(tmp_path, artefact, factor):
  from mammo_tf.io import dicom
  from tests import dicom_factory as factory
  # The breast reaches the top edge, so the film border there touches it.
  density, inside = _drawn_breast(seed=1, centre=0.4, radius=0.5)
  assert inside[0].any()
  stored, _ = _mono2_file(None, density, inside, seed=1)
  makers = {"text": [_artefact_text], "line": [_artefact_line], "border": [_artefact_border],
            "all": [_artefact_text, _artefact_line, _artefact_border]}[artefact]
  for make in makers:
    stored = make(stored, inside)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored)
  image, _ = dicom.read_ffdm(path)
  m = masks.breast_mask(image, factor=factor)
  if factor > 1:
    m = masks.upsample_mask(m, factor, image.shape)
  assert _iou(m, inside) >= 0.95, _iou(m, inside)
  outside = m & ~inside
  assert outside.sum() <= 0.01 * inside.sum()
  if artefact in ("text", "all"):
    assert not m[4:18, -46:-6].any()
  if artefact in ("line", "all") and factor == 1:
    col = int(image.shape[1] * 0.45)
    # The line outside the breast is dropped (but for a pixel where it enters the breast).
    assert outside[:, col - 1:col + 2].sum() <= 4 < (~inside[:, col]).sum()
  if artefact in ("border", "all"):
    assert not m[:7, -60:].any() and not m[:, -6:].any()


def test_mask_of_monochrome1_whose_padding_is_the_brightest_value(tmp_path):
  from mammo_tf.io import dicom
  from tests import dicom_factory as factory
  density, inside = _drawn_breast(seed=2)
  stored = np.where(inside, 14000 - 9000 * density, 16383).astype(np.uint16)  # 14-bit MONO1
  stored[:, int(stored.shape[1] * 0.6)] = 200                       # a bright (low) line too
  path = factory.write_ffdm(tmp_path / "m1.dcm", stored, bits_stored=14,
                            photometric="MONOCHROME1", padding_value=16383)
  image, _ = dicom.read_ffdm(path)
  assert (image[~inside & (stored == 16383)] == 0).all()
  for factor in (1, 8):
    m = masks.upsample_mask(masks.breast_mask(image, factor=factor), factor, image.shape)
    assert _iou(m, inside) >= 0.95, (factor, _iou(m, inside))


def test_mask_with_uniform_air_after_a_window_and_a_padding_strip(tmp_path):
  """MONOCHROME1 + SIGMOID window: air comes out as a flat non-zero plateau, padding as 0."""
  from mammo_tf.io import dicom
  from tests import dicom_factory as factory
  density, inside = _drawn_breast(seed=3)
  stored = np.where(inside, 3204 - 1738 * density, 3204).astype(np.uint16)
  stored[:, -10:] = 0
  path = factory.write_ffdm(tmp_path / "w.dcm", stored, bits_stored=16, photometric="MONOCHROME1",
                            padding_value=0, window_center=2335, window_width=1738,
                            voi_lut_function="SIGMOID")
  image, _ = dicom.read_ffdm(path)
  air = image[~inside & (stored > 0)]
  assert air.min() > 300                      # the air is not 0 under this window
  m = masks.breast_mask(image)
  assert _iou(m, inside) >= 0.95, _iou(m, inside)
