"""Intensity rules auto / window / range / bits on REAL DICOM files, against pydicom's own
VOI functions (`apply_windowing`, `apply_voi_lut`, `apply_modality_lut`) and pinned outputs."""
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.processing import apply_voi_lut
from pydicom.pixels.processing import apply_windowing
from pydicom.uid import JPEG2000Lossless

from mammo_tf.io import dicom
from mammo_tf.io import rules
from mammo_tf.io import voi
from mammo_tf.io.dicom import DicomError
from tests import dicom_factory as factory


def _disc(shape, lo, hi, seed):
  rng = np.random.default_rng(seed)
  h, w = shape
  yy, xx = np.mgrid[:h, :w]
  inside = ((yy - h / 2) / (h / 2)) ** 2 + (xx / (0.8 * w)) ** 2 < 1
  return np.where(inside, rng.integers(lo, hi, size=shape), 0), inside


# --------------------------------------------------------------------------------------------------
# bits: the rule before VOI support, pinned on outputs computed before the rules were added.
# --------------------------------------------------------------------------------------------------
def _golden_cases(tmp: Path) -> dict:
  out = {}
  a, ins = _disc((48, 40), 1466, 3205, 1)
  a[~ins] = 65535
  out["ffdm16_mono1_pad_sigmoid"] = (factory.write_ffdm(
      tmp / "a.dcm", a.astype(np.uint16), bits_stored=16, photometric="MONOCHROME1",
      padding_value=65535, window_center=[2335, 2200], window_width=[1738, 1500],
      voi_lut_function="SIGMOID"), "ffdm")
  b, _ = _disc((48, 40), 2000, 4000, 2)
  out["ffdm14_mono2"] = (factory.write_ffdm(tmp / "b.dcm", b.astype(np.uint16), bits_stored=14),
                         "ffdm")
  c, _ = _disc((40, 36), 0, 3000, 3)
  out["ffdm12_rescale_pad"] = (factory.write_ffdm(tmp / "c.dcm", c.astype(np.uint16), slope=1.5,
                                                  intercept=-20, padding_value=0), "ffdm")
  d, _ = _disc((40, 36), -1000, 1000, 4)
  out["ffdm_signed"] = (factory.write_ffdm(tmp / "d.dcm", d.astype(np.int16),
                                           pixel_representation=1, intercept=1500,
                                           bits_stored=12), "ffdm")
  v = np.stack([_disc((32, 32), 100, 4000, 10 + k)[0] for k in range(4)]).astype(np.uint16)
  out["dbt_perframe"] = (factory.write_dbt(tmp / "e.dcm", v, rescale_location="per_frame",
                                           slope=[1, 1.1, 0.9, 1], intercept=[0, 5, -5, 0],
                                           photometric="MONOCHROME1", padding_value=0), "dbt")
  out["dbt_slices"] = (factory.write_dbt_slices(tmp / "s", v, bits_stored=12)[0].parent, "dbt")
  out["ffdm_voilut"] = (factory.write_ffdm(tmp / "f.dcm", b.astype(np.uint16) % 4096,
                                           voi_lut=(0, 8, np.arange(4096) // 16)), "ffdm")
  return out


# sha256[:16] of the uint16 output, (apply_voi_lut=False, True), before the rules existed.
GOLDEN_BITS = {
  "ffdm16_mono1_pad_sigmoid": ("b7f7c567a4e923f9", "8ea50624e64e7ba5"),
  "ffdm14_mono2": ("d46f2072edcd3741", "d46f2072edcd3741"),
  "ffdm12_rescale_pad": ("63a1071be9cd31f7", "63a1071be9cd31f7"),
  "ffdm_signed": ("5b1028c244206827", "5b1028c244206827"),
  "dbt_perframe": ("35234885d18a2c94", "35234885d18a2c94"),
  "dbt_slices": ("88524e65c05bb65c", "88524e65c05bb65c"),
  "ffdm_voilut": ("d509b425b31ea498", "82b1a3a6bf59fe76"),
}


def test_bits_rule_is_bit_identical_to_the_rule_before_voi_support(tmp_path):
  for name, (path, domain) in _golden_cases(tmp_path).items():
    for legacy, expected in zip((False, True), GOLDEN_BITS[name]):
      image, _ = dicom.read_image(path, domain, intensity="bits", apply_voi_lut=legacy)
      assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == expected, (name, legacy)


# --------------------------------------------------------------------------------------------------
# VOI functions against pydicom.
# --------------------------------------------------------------------------------------------------
def _pydicom_window(x, center, width, function, bits=16):
  """pydicom's apply_windowing, rescaled from its output range onto [0, 1]."""
  ds = pydicom.Dataset()
  ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", bits, 0
  ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
  y = apply_windowing(np.asarray(x, np.float64), ds)
  top = 2 ** bits - 1
  return y / top


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom_on_random_inputs(function):
  rng = np.random.default_rng({"LINEAR": 0, "LINEAR_EXACT": 1, "SIGMOID": 2}[function])
  for _ in range(20):
    center = float(rng.uniform(-500, 5000))
    width = float(rng.uniform(1, 4000))
    x = np.concatenate([rng.uniform(center - width, center + width, 500),
                        rng.integers(-1000, 6000, 200).astype(np.float64),
                        [center, center - 0.5, center + width / 2, center - width / 2]])
    ours = voi.Window(center, width, function)(x) / 4095
    with np.errstate(over="ignore"):
      ref = _pydicom_window(x, center, width, function)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_window_rejects_widths_the_standard_forbids():
  with pytest.raises(ValueError, match=">= 1"):
    voi.Window(100, 0.5, "LINEAR")
  with pytest.raises(ValueError, match="> 0"):
    voi.Window(100, 0, "SIGMOID")
  with pytest.raises(ValueError, match="VOILUTFunction"):
    voi.Window(100, 10, "LOG")


def _reference_window_image(path, index=0):
  """pydicom: stored -> modality -> VOI (window `index` or the LUT) -> [0, 4095], MONOCHROME1
  inverted, padding 0; continuous (not rounded)."""
  ds = pydicom.dcmread(path)
  stored = ds.pixel_array
  v = apply_modality_lut(stored, ds)
  v = v if "VOILUTSequence" in ds else v.astype(np.float64)  # a LUT takes integer input
  with np.errstate(over="ignore"):
    y = apply_voi_lut(v, ds, index=index)
    if "VOILUTSequence" in ds:
      lut = np.asarray(ds.VOILUTSequence[index].LUTData, np.float64)
      lo, hi = lut.min(), lut.max()
    else:
      lo, hi = apply_voi_lut(np.array([-1e300, 1e300]), ds, index=index)
  y = (y - lo) / (hi - lo) * 4095
  if ds.PhotometricInterpretation == "MONOCHROME1":
    y = 4095 - y
  if "PixelPaddingValue" in ds:
    y[stored == ds.PixelPaddingValue] = 0
  return y


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_rule_matches_pydicom_on_files(tmp_path, photometric, function):
  rng = np.random.default_rng(7)
  stored = rng.integers(0, 2 ** 14, size=(40, 48)).astype(np.uint16)
  stored[:4] = 16383  # padding
  centers, widths = [6000.5, 9000], [3000, 801]
  path = factory.write_ffdm(tmp_path / "w.dcm", stored, bits_stored=14, photometric=photometric,
                            slope=1.25, intercept=-300, padding_value=16383,
                            window_center=centers, window_width=widths,
                            voi_lut_function=function)
  for index in (0, 1):
    image, _ = dicom.read_ffdm(path, intensity="window", voi_index=index)
    ref = _reference_window_image(path, index)
    np.testing.assert_allclose(image, ref, atol=0.5 + 1e-6)   # ours is the rounded value
    assert (image[:4] == 0).all()
    auto, _ = dicom.read_ffdm(path, voi_index=index)          # auto = window when there is one
    np.testing.assert_array_equal(auto, image)


def test_voi_lut_sequence_matches_pydicom(tmp_path):
  rng = np.random.default_rng(11)
  lut = np.sort(rng.integers(300, 60000, size=3000))        # 16-bit entries, first mapped 500
  stored = rng.integers(0, 4096, size=(32, 40)).astype(np.uint16)
  for photometric in ("MONOCHROME2", "MONOCHROME1"):
    path = factory.write_ffdm(tmp_path / f"{photometric}.dcm", stored, photometric=photometric,
                              voi_lut=(500, 16, lut), rescale=False)
    image, _ = dicom.read_ffdm(path)
    np.testing.assert_allclose(image, _reference_window_image(path), atol=0.5 + 1e-6)
    assert image.max() == 4095 and image.min() == 0


def test_window_rule_needs_a_voi_and_a_valid_index(tmp_path):
  stored, _ = _disc((32, 32), 100, 4000, 0)
  plain = factory.write_ffdm(tmp_path / "p.dcm", stored.astype(np.uint16))
  with pytest.raises(DicomError, match="no VOI"):
    dicom.read_ffdm(plain, intensity="window")
  win = factory.write_ffdm(tmp_path / "w.dcm", stored.astype(np.uint16), window_center=[2000, 1000],
                           window_width=[1000, 500])
  with pytest.raises(DicomError, match="VOI window index 2 but the file has 2 window"):
    dicom.read_ffdm(win, voi_index=2)
  with pytest.raises(ValueError, match="unknown intensity rule"):
    dicom.read_ffdm(win, intensity="gamma")


# --------------------------------------------------------------------------------------------------
# range.
# --------------------------------------------------------------------------------------------------
def test_weighted_percentiles_equal_numpy_inverted_cdf():
  rng = np.random.default_rng(5)
  for _ in range(30):
    values = rng.normal(0, 100, size=int(rng.integers(1, 300)))
    counts = rng.integers(0, 50, size=values.size)
    counts[0] += 1
    expanded = np.repeat(values, counts)
    ref = np.percentile(expanded, rules.RANGE_PERCENTILES, method="inverted_cdf")
    np.testing.assert_array_equal(rules.weighted_percentiles(values, counts), ref)


def _range_reference(modality_frames, pads, photometric):
  """Every frame's non-padding modality values -> percentiles -> map, MIP over frames."""
  values = np.concatenate([v[~p] for v, p in zip(modality_frames, pads)])
  lo, hi = np.percentile(values, rules.RANGE_PERCENTILES, method="inverted_cdf")
  out = []
  for v, p in zip(modality_frames, pads):
    y = (v - lo) / (hi - lo) * 4095
    if photometric == "MONOCHROME1":
      y = 4095 - y
    y = np.clip(np.floor(y + 0.5), 0, 4095)
    y[p] = 0
    out.append(y)
  return np.max(out, axis=0).astype(np.uint16)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_range_rule_ffdm_and_dbt_mip_commute_with_the_mapping(tmp_path, photometric):
  rng = np.random.default_rng(2)
  frames = rng.integers(1000, 3000, size=(5, 30, 34)).astype(np.uint16)
  frames[:, :, :3] = 7  # padding strip
  slopes, intercepts = [1, 1, 1.5, 1, 0.5], [0, 0, -100, 0, 400]  # mixed rescales
  path = factory.write_dbt(tmp_path / "v.dcm", frames, photometric=photometric,
                           rescale_location="per_frame", slope=slopes, intercept=intercepts,
                           padding_value=7)
  mip, meta = dicom.read_dbt_mip(path, intensity="range")
  modality = [f * s + i for f, s, i in zip(frames.astype(np.float64), slopes, intercepts)]
  pads = [f == 7 for f in frames]
  np.testing.assert_array_equal(mip, _range_reference(modality, pads, photometric))
  assert meta.frames == 5 and (mip[:, :3] == 0).all()
  # One rescale for all frames (the rank path) and a slice folder of the same volume.
  same = factory.write_dbt(tmp_path / "s.dcm", frames, photometric=photometric, padding_value=7)
  ref = _range_reference(list(frames.astype(np.float64)), pads, photometric)
  np.testing.assert_array_equal(dicom.read_dbt_mip(same)[0], ref)
  folder = factory.write_dbt_slices(tmp_path / "d", frames, photometric=photometric,
                                    padding_value=7)[0].parent
  np.testing.assert_array_equal(dicom.read_dbt_mip(folder)[0], ref)
  # A single frame read as FFDM gets the same mapping as a one-frame volume.
  one = factory.write_ffdm(tmp_path / "f.dcm", frames[2], photometric=photometric,
                           padding_value=7)
  np.testing.assert_array_equal(dicom.read_ffdm(one)[0],
                                _range_reference([frames[2].astype(np.float64)], [pads[2]],
                                                 photometric))


def test_dbt_window_mip_is_one_mapping_per_volume(tmp_path):
  rng = np.random.default_rng(4)
  frames = rng.integers(0, 4096, size=(4, 32, 32)).astype(np.uint16)
  frames[:, -2:] = 4095
  path = factory.write_dbt(tmp_path / "v.dcm", frames, photometric="MONOCHROME1",
                           padding_value=4095, window_center=2000, window_width=1500,
                           voi_lut_function="SIGMOID")
  mip, _ = dicom.read_dbt_mip(path)
  ds = pydicom.Dataset()
  ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
  ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2000, 1500, "SIGMOID"
  ref = 4095 - apply_windowing(frames.astype(np.float64), ds)  # MONOCHROME1: inverted
  ref[frames == 4095] = 0
  # max of the mapped frames (the mapping is decreasing in the stored value for MONOCHROME1)
  np.testing.assert_allclose(mip, ref.max(axis=0), atol=0.5 + 1e-6)
  assert (mip[-2:] == 0).all()


# --------------------------------------------------------------------------------------------------
# The issue's done-when: real vendors' narrow ranges keep their contrast.
# --------------------------------------------------------------------------------------------------
def _tissue(shape, seed):
  """Smooth tissue density in [0, 1] inside a half-disc breast against the left edge."""
  rng = np.random.default_rng(seed)
  h, w = shape
  yy, xx = np.mgrid[:h, :w]
  inside = ((yy - h / 2) / (h * 0.45)) ** 2 + (xx / (0.75 * w)) ** 2 < 1
  noise = rng.standard_normal((h // 8 + 1, w // 8 + 1))
  field = np.kron(noise, np.ones((8, 8)))[:h, :w]
  from scipy import ndimage
  field = ndimage.gaussian_filter(field, 3)
  field = (field - field.min()) / (field.max() - field.min())
  edge = np.clip(1 - ((yy - h / 2) / (h * 0.45)) ** 2 - (xx / (0.75 * w)) ** 2, 0, 1) ** 0.3
  return np.clip(0.15 + 0.7 * field * edge, 0, 1), inside


def _spread(image, inside):
  vals = image[inside].astype(np.float64)
  q1, q3 = np.percentile(vals, [25, 75])
  p1, p99 = np.percentile(vals, [1, 99])
  return q3 - q1, p99 - p1


def test_rsna_like_file_keeps_its_contrast(tmp_path):
  """16 bits stored, MONOCHROME1, SIGMOID with four windows, padding, used range 1466..3204."""
  density, inside = _tissue((256, 208), 0)
  stored = np.round(3204 - (3204 - 1466) * density).astype(np.uint16)  # dense = low (MONO1)
  stored[~inside] = 3204                                               # air: bright -> black
  stored[:, -12:] = 0                                                  # padding strip
  path = factory.write_ffdm(tmp_path / "rsna.dcm", stored, bits_stored=16,
                            photometric="MONOCHROME1", padding_value=0,
                            window_center=[2335, 2200, 2450, 2335],
                            window_width=[1738, 1300, 1500, 2400], voi_lut_function="SIGMOID",
                            transfer_syntax=JPEG2000Lossless)
  image, _ = dicom.read_ffdm(path)
  iqr, span = _spread(image, inside & (stored > 0))
  print("RSNA-like: IQR", iqr, "1-99 span", span)
  assert iqr >= 150 and span >= 1200, (iqr, span)
  assert (image[:, -12:] == 0).all()
  assert image[inside].mean() > image[~inside & (stored > 0)].mean()  # dense is bright
  old, _ = dicom.read_ffdm(path, intensity="bits")
  iqr_old, span_old = _spread(old, inside & (stored > 0))
  print("RSNA-like under bits: IQR", iqr_old, "1-99 span", span_old)
  assert iqr_old < 40 and span_old < 100, (iqr_old, span_old)        # the flat blob of before


def test_14bit_monochrome2_using_an_eighth_of_its_range_keeps_its_contrast(tmp_path):
  density, inside = _tissue((256, 208), 1)
  rng = np.random.default_rng(1)
  stored = 9000 + np.round(2048 * density).astype(np.int64)           # 1/8 of 0..16383
  stored[~inside] = 8900 + rng.integers(0, 30, size=(~inside).sum())  # dark air with noise
  path = factory.write_ffdm(tmp_path / "f14.dcm", stored.astype(np.uint16), bits_stored=14)
  image, _ = dicom.read_ffdm(path)
  iqr, span = _spread(image, inside)
  print("14-bit: IQR", iqr, "1-99 span", span)
  assert iqr >= 150 and span >= 1200, (iqr, span)
  assert np.percentile(image[~inside], 99) < 100                      # air stays dark
  old, _ = dicom.read_ffdm(path, intensity="bits")
  print("14-bit under bits: IQR %.0f 1-99 span %.0f" % _spread(old, inside))
  assert _spread(old, inside)[1] < 600


# --------------------------------------------------------------------------------------------------
# Slice folders: an error names the slice's position, never its path.
# --------------------------------------------------------------------------------------------------
def test_slice_folder_error_names_the_slice_position(tmp_path):
  frames = np.stack([_disc((40, 36), 100, 4000, k)[0] for k in range(5)]).astype(np.uint16)
  paths = factory.write_dbt_slices(tmp_path / "d", frames)
  names = sorted(p.name for p in paths)
  bad = tmp_path / "d" / names[2]
  data = bad.read_bytes()
  bad.write_bytes(data[: len(data) - 1000])
  with pytest.raises(DicomError) as info:
    dicom.read_dbt_mip(tmp_path / "d")
  err = info.value
  assert err.reason.startswith("slice 3 of 5: truncated pixel data"), err.reason
  assert Path(err.path) == tmp_path / "d" and names[2] not in str(err)
