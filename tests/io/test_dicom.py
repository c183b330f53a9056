"""mammo_tf.io.dicom on REAL DICOM files written by tests/dicom_factory.py (pydicom, no mocks)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import apply_voi_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.uid import JPEG2000Lossless
from pydicom.uid import JPEGLossless
from pydicom.uid import JPEGLosslessSV1
from pydicom.uid import RLELossless

from mammo_tf.io import dicom
from mammo_tf.io.dicom import DicomError
from tests import dicom_factory as factory

ROOT = Path(__file__).resolve().parents[2]
IDENTIFIERS = (factory.PATIENT_NAME, factory.PATIENT_ID, factory.STUDY_DATE, factory.ACCESSION,
               "Zyxwort", "Quenby")
ALL_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                RLELossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless]
COMPRESSED = [RLELossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless]


def _breast(shape, bits, seed=0):
  """A stored-value image: a bright half-disc against the left edge, noise, black background."""
  rng = np.random.default_rng(seed)
  h, w = shape
  yy, xx = np.mgrid[:h, :w]
  inside = ((yy - h / 2) / (h / 2)) ** 2 + (xx / (0.8 * w)) ** 2 < 1
  top = 2 ** bits - 1
  img = np.where(inside, rng.integers(top // 4, top, size=shape), 0)
  img[0, 0] = top  # the extremes always appear
  img[-1, -1] = 0
  return img.astype(np.uint16 if bits > 8 else np.uint8)


# --------------------------------------------------------------------------------------------------
# to_12bit: golden values computed by hand.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["direct", "table"])
class TestTo12BitGolden:

  @staticmethod
  def run(values, size, dtype=np.uint16, **rule):
    arr = np.asarray(values, dtype=dtype)
    if size == "table":  # big enough to take the lookup-table path
      arr = np.tile(arr, 40000)
      out = dicom.to_12bit(arr, **rule)
      return out[: len(values)]
    return dicom.to_12bit(arr, **rule)

  def test_12bit_monochrome2_is_identity(self, size):
    out = self.run([0, 1, 2048, 4095], size, bits_stored=12)
    np.testing.assert_array_equal(out, [0, 1, 2048, 4095])
    assert out.dtype == np.uint16

  def test_12bit_monochrome1_inverts_about_bits_stored_max(self, size):
    out = self.run([0, 1, 2048, 4095], size, bits_stored=12, photometric="MONOCHROME1")
    np.testing.assert_array_equal(out, [4095, 4094, 2047, 0])

  def test_16bit_scales_and_rounds(self, size):
    # y = floor(s * 4095 / 65535 + 0.5): 8 -> 0.49989 -> 0, 9 -> 0.5624 -> 1,
    # 32768 -> 2047.53 -> 2048
    out = self.run([0, 1, 8, 9, 32768, 65535], size, bits_stored=16)
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 2048, 4095])

  def test_14bit_scales(self, size):
    # 8191 * 4095 / 16383 = 2047.375 -> 2047; 8192 -> 2047.62 -> 2048
    out = self.run([0, 8191, 8192, 16383], size, bits_stored=14)
    np.testing.assert_array_equal(out, [0, 2047, 2048, 4095])

  def test_10bit_monochrome1(self, size):
    # MONOCHROME1 about 1023, then * 4095 / 1023: 1023 -> 0, 0 -> 4095,
    # 511 -> 512*4.00293 = 2049.5 -> 2050
    out = self.run([1023, 0, 511], size, bits_stored=10, photometric="MONOCHROME1")
    np.testing.assert_array_equal(out, [0, 4095, 2050])

  def test_rescale_then_clip(self, size):
    # v = 2 s - 100: [-100, 0, 2, 100, 3900, 4100] -> clip
    out = self.run([0, 50, 51, 100, 2000, 2100], size, bits_stored=12, slope=2, intercept=-100)
    np.testing.assert_array_equal(out, [0, 0, 2, 100, 3900, 4095])

  def test_round_half_up(self, size):
    out = self.run([1, 3, 5], size, bits_stored=12, slope=0.5)
    np.testing.assert_array_equal(out, [1, 2, 3])  # 0.5, 1.5, 2.5 -> 1, 2, 3

  def test_padding_is_compared_with_the_stored_value_before_rescale(self, size):
    # slope 2, intercept 10, PixelPaddingValue 10: stored 10 is padding (-> 0); stored 0 rescales
    # to 10 but is not padding.
    out = self.run([0, 10, 11], size, bits_stored=12, slope=2, intercept=10, padding_value=10)
    np.testing.assert_array_equal(out, [10, 0, 32])

  def test_padding_stays_zero_after_inversion(self, size):
    # MONOCHROME1 with padding 0: without padding stored 0 would become 4095.
    out = self.run([0, 1, 4095], size, bits_stored=12, photometric="MONOCHROME1", padding_value=0)
    np.testing.assert_array_equal(out, [0, 4094, 0])

  def test_padding_range_limit(self, size):
    out = self.run([3999, 4000, 4050, 4095], size, bits_stored=12, padding_value=4095,
                   padding_range_limit=4000)
    np.testing.assert_array_equal(out, [3999, 0, 0, 0])

  def test_monochrome1_after_rescale(self, size):
    # v = s + 100 -> inverted 4095 - v: 0 -> 3995, 3995 -> 0, 4000 -> -5 -> clipped 0
    out = self.run([0, 3995, 4000], size, bits_stored=12, photometric="MONOCHROME1",
                   intercept=100)
    np.testing.assert_array_equal(out, [3995, 0, 0])

  def test_signed_values(self, size):
    # signed 12-bit with intercept 2048: -2048 -> 0, 0 -> 2048, 2047 -> 4095
    out = self.run([-2048, 0, 2047], size, dtype=np.int16, bits_stored=12, intercept=2048)
    np.testing.assert_array_equal(out, [0, 2048, 4095])

  def test_voi_and_value_range(self, size):
    # a VOI that halves; output range [0, 2047.5] mapped onto [0, 4095]
    out = self.run([0, 100, 4095], size, bits_stored=12, voi=lambda v: v / 2,
                   value_range=(0, 2047.5))
    np.testing.assert_array_equal(out, [0, 100, 4095])


def test_to_12bit_table_and_direct_paths_agree_on_random_inputs():
  rng = np.random.default_rng(3)
  for dtype, bits in ((np.uint16, 12), (np.uint16, 16), (np.int16, 15), (np.uint8, 8),
                      (np.uint16, 14)):
    info = np.iinfo(dtype)
    small = rng.integers(info.min, info.max, size=1000, endpoint=True).astype(dtype)
    big = np.tile(small, 100)
    for rule in (dict(), dict(photometric="MONOCHROME1"), dict(slope=1.7, intercept=-33.2),
                 dict(slope=-0.5, intercept=3000, padding_value=int(small[0])),
                 dict(padding_value=int(small[1]), padding_range_limit=int(small[2]))):
      a = dicom.to_12bit(small, bits_stored=bits, **rule)
      b = dicom.to_12bit(big, bits_stored=bits, **rule)[:1000]
      np.testing.assert_array_equal(a, b)
      assert a.min() >= 0 and a.max() <= 4095


def test_to_12bit_rejects_bad_arguments():
  x = np.zeros(3, np.uint16)
  with pytest.raises(ValueError):
    dicom.to_12bit(x, bits_stored=12, slope=float("nan"))
  with pytest.raises(ValueError):
    dicom.to_12bit(x, bits_stored=12, slope=0)
  with pytest.raises(ValueError):
    dicom.to_12bit(x, bits_stored=12, photometric="RGB")
  with pytest.raises(TypeError):
    dicom.to_12bit(x.astype(np.float32), bits_stored=12)


# --------------------------------------------------------------------------------------------------
# FFDM files.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_ffdm_matches_the_rule_on_the_stored_values(tmp_path, photometric, bits):
  stored = _breast((64, 48), bits)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, bits_stored=bits, photometric=photometric)
  image, meta = dicom.read_ffdm(path, intensity="bits")
  assert image.dtype == np.uint16 and image.shape == (64, 48)
  np.testing.assert_array_equal(image, dicom.to_12bit(stored, bits_stored=bits,
                                                      photometric=photometric))
  top = 2 ** bits - 1
  assert image[0, 0] == (4095 if photometric == "MONOCHROME2" else 0)  # stored max
  assert image[-1, -1] == (0 if photometric == "MONOCHROME2" else 4095)  # stored 0
  if bits == 12:
    expected = stored if photometric == "MONOCHROME2" else top - stored.astype(np.int64)
    np.testing.assert_array_equal(image, expected)
  assert (meta.rows, meta.cols, meta.frames, meta.bits_stored) == (64, 48, 1, bits)
  assert meta.photometric == photometric


def test_ffdm_8bit(tmp_path):
  stored = _breast((40, 40), 8)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, bits_stored=8, bits_allocated=8)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  # y = floor(s * 4095 / 255 + 0.5): 255 -> 4095, 1 -> 16.06 -> 16, 128 -> 2055.5 -> 2056
  np.testing.assert_array_equal(image, np.floor(stored * (4095 / 255) + 0.5).astype(np.uint16))


def test_ffdm_rescale_slope_intercept_and_padding(tmp_path):
  stored = np.array([[0, 50, 51, 100], [2000, 2100, 7, 7]], np.uint16).repeat(8, 0).repeat(8, 1)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, slope=2, intercept=-100, padding_value=7)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image[::8, ::8], [[0, 0, 2, 100], [3900, 4095, 0, 0]])


def test_ffdm_monochrome1_padding_is_background(tmp_path):
  # A MONOCHROME1 export whose air is padding at the stored maximum and outside-collimator at 0.
  stored = _breast((48, 40), 12)
  stored[:, -5:] = 0
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, photometric="MONOCHROME1",
                            padding_value=0)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  assert (image[:, -5:] == 0).all()  # would be 4095 without the padding rule
  inside = stored > 0
  np.testing.assert_array_equal(image[inside], 4095 - stored[inside].astype(np.int64))


def test_ffdm_padding_range_limit(tmp_path):
  stored = np.array([[10, 3999, 4000, 4095]], np.uint16).repeat(4, 0)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, padding_value=4095,
                            padding_range_limit=4000)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image[0], [10, 3999, 0, 0])


def test_signed_pixels(tmp_path):
  # Signed with an intercept that places them on the scale: accepted.
  stored = np.array([[-2048, 0, 2047]], np.int16).repeat(4, 0)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, pixel_representation=1, intercept=2048)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image[0], [0, 2048, 4095])
  # Signed with only non-negative values and no rescale: read like unsigned.
  path = factory.write_ffdm(tmp_path / "b.dcm", np.array([[2000, 0, 2047]] * 4, np.int16),
                            pixel_representation=1)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image[0], [2000, 0, 2047])
  # Signed with negative values and a padding value at the negative end: padding is background.
  stored = np.array([[-2048, 5, 100]], np.int16).repeat(4, 0)
  path = factory.write_ffdm(tmp_path / "c.dcm", stored, pixel_representation=1,
                            padding_value=-2048)
  image, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image[0], [0, 5, 100])


@pytest.mark.parametrize("syntax", ALL_SYNTAXES[1:], ids=lambda u: u.name[:28])
@pytest.mark.parametrize("case", ["12bit-mono1-padding", "16bit-mono2-rescale"])
def test_every_transfer_syntax_decodes_to_the_same_12bit_image(tmp_path, syntax, case):
  if case == "12bit-mono1-padding":
    kw = dict(bits_stored=12, photometric="MONOCHROME1", padding_value=0)
    stored = _breast((72, 56), 12)
  else:
    kw = dict(bits_stored=16, slope=1, intercept=-300)
    stored = _breast((72, 56), 16, seed=1)
  reference, _ = dicom.read_ffdm(factory.write_ffdm(tmp_path / "ref.dcm", stored, **kw),
                                 intensity="bits")
  path = factory.write_ffdm(tmp_path / "x.dcm", stored, transfer_syntax=syntax, **kw)
  assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
  image, meta = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image, reference)
  assert meta.transfer_syntax_uid == syntax


# --------------------------------------------------------------------------------------------------
# The test utility's lossless JPEG encoder, checked against libjpeg.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", [2, 8, 12, 16])
def test_jpeg_lossless_encoder_round_trips_through_libjpeg(precision):
  from libjpeg import decode
  rng = np.random.default_rng(precision)
  top = 2 ** precision - 1
  cases = [rng.integers(0, top, size=(37, 53), endpoint=True),
           np.zeros((8, 8), np.int64), np.full((9, 7), top),
           np.tile([0, top], (6, 5))]  # extreme differences (SSSS = 16 at 16 bits)
  for arr in cases:
    arr = arr.astype(np.uint16)
    codestream = factory.encode_jpeg_lossless(arr, precision)
    assert codestream[:2] == b"\xff\xd8" and codestream[-2:] == b"\xff\xd9"
    assert codestream[2:4] == b"\xff\xc3"  # SOF3: lossless, Huffman
    np.testing.assert_array_equal(decode(codestream).astype(np.uint16), arr)


def test_jpeg_lossless_huffman_table_is_length_limited():
  # Fibonacci-like category counts force a Huffman tree deeper than 16 (T.81 K.3 must adjust it).
  fib = [1, 1]
  while len(fib) < 17:
    fib.append(fib[-1] + fib[-2])
  categories = np.repeat(np.arange(17), fib)
  bits, huffval, table = factory._build_huffman_table(categories)
  lengths = [n for _, n in table.values()]
  assert max(lengths) <= 16 and sorted(huffval) == list(range(17))
  assert sum(2.0 ** -n for n in lengths) < 1  # the all-ones code point stays free
  codes = [format(c, f"0{n}b") for c, n in table.values()]
  assert not any(a != b and b.startswith(a) for a in codes for b in codes)  # prefix-free
  # The same distribution of differences as pixels: one row, 16-bit, decoded exactly by libjpeg.
  from libjpeg import decode
  diffs = np.array([0 if s == 0 else 2 ** (s - 1) for s in categories], np.int64)
  np.random.default_rng(0).shuffle(diffs)
  row = ((32768 + np.cumsum(diffs)) % 65536).astype(np.uint16)[None, :]
  np.testing.assert_array_equal(decode(factory.encode_jpeg_lossless(row, 16)), row)


def test_jpeg_lossless_files_decode_with_pylibjpeg(tmp_path):
  stored = _breast((50, 45), 12)
  for syntax in (JPEGLosslessSV1, JPEGLossless):
    path = factory.write_ffdm(tmp_path / "j.dcm", stored, transfer_syntax=syntax)
    np.testing.assert_array_equal(pixel_array(path, decoding_plugin="pylibjpeg"), stored)


# --------------------------------------------------------------------------------------------------
# DBT: multi-frame files and slice directories.
# --------------------------------------------------------------------------------------------------
def _volume(frames=7, shape=(40, 36), bits=12, seed=0):
  return np.stack([_breast(shape, bits, seed=seed + k) for k in range(frames)])


def _decoded_volume_mip(path, **rule):
  """np.max over the whole decoded volume (pydicom's pixel_array), each frame through to_12bit."""
  volume = pydicom.dcmread(path).pixel_array
  return np.max(dicom.to_12bit(volume, **rule), axis=0)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian] + COMPRESSED, ids=lambda u: u.name[:28])
@pytest.mark.parametrize("photometric,padding", [("MONOCHROME2", None), ("MONOCHROME1", None),
                                                 ("MONOCHROME2", 4095), ("MONOCHROME1", 0)])
def test_multiframe_mip_equals_max_over_decoded_volume(tmp_path, syntax, photometric, padding):
  volume = _volume()
  path = factory.write_dbt(tmp_path / "v.dcm", volume, transfer_syntax=syntax,
                           photometric=photometric, padding_value=padding, slope=1.25,
                           intercept=-40)
  mip, meta = dicom.read_dbt_mip(path, intensity="bits")
  rule = dict(bits_stored=12, photometric=photometric, slope=1.25, intercept=-40,
              padding_value=padding)
  np.testing.assert_array_equal(mip, _decoded_volume_mip(path, **rule))
  np.testing.assert_array_equal(mip, np.max(dicom.to_12bit(volume, **rule), axis=0))
  assert meta.frames == 7 and meta.sop_class_uid == factory.DBT_SOP_CLASS
  assert mip.dtype == np.uint16


@pytest.mark.parametrize("location", ["shared", "top", "per_frame"])
def test_multiframe_rescale_locations(tmp_path, location):
  volume = _volume(frames=4, bits=14)
  slopes = [1.0, 0.5, 2.0, 1.5] if location == "per_frame" else 2.0
  intercepts = [0, 100, -50, 7] if location == "per_frame" else -50
  path = factory.write_dbt(tmp_path / "v.dcm", volume, bits_stored=14, slope=slopes,
                           intercept=intercepts, rescale_location=location)
  mip, _ = dicom.read_dbt_mip(path, intensity="bits")
  per_frame = [dicom.to_12bit(volume[k], bits_stored=14,
                              slope=slopes[k] if location == "per_frame" else slopes,
                              intercept=intercepts[k] if location == "per_frame" else intercepts)
               for k in range(4)]
  np.testing.assert_array_equal(mip, np.max(per_frame, axis=0))


def test_single_frame_file_as_dbt(tmp_path):
  stored = _breast((40, 36), 12)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored)
  mip, meta = dicom.read_dbt_mip(path, intensity="bits")
  np.testing.assert_array_equal(mip, stored)
  assert meta.frames == 1


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLosslessSV1],
                         ids=lambda u: u.name[:28])
def test_slice_directory_mip_and_order(tmp_path, syntax):
  volume = _volume(frames=6)
  # Positions decrease with the slice index: slice 5 is first along the normal.
  paths = factory.write_dbt_slices(tmp_path / "slices", volume, positions=[5, 4, 3, 2, 1, 0],
                                   transfer_syntax=syntax, photometric="MONOCHROME1")
  assert sorted(p.name for p in paths) != [p.name for p in paths]  # names are shuffled
  assert dicom.list_dbt_slices(tmp_path / "slices") == paths[::-1]
  mip, meta = dicom.read_dbt_mip(tmp_path / "slices", intensity="bits")
  stack = np.stack([pydicom.dcmread(p).pixel_array for p in paths])
  np.testing.assert_array_equal(stack, volume)
  np.testing.assert_array_equal(
    mip, np.max(dicom.to_12bit(stack, bits_stored=12, photometric="MONOCHROME1"), axis=0))
  assert meta.frames == 6 and (meta.rows, meta.cols) == (40, 36)


def test_slice_directory_sorting_along_an_oblique_normal_and_by_instance_number(tmp_path):
  volume = _volume(frames=5, shape=(34, 34))
  # Oblique orientation: the normal is not z; positions along it are [2, 0, 3, 1, 4].
  c, s = np.cos(0.3), np.sin(0.3)
  paths = factory.write_dbt_slices(tmp_path / "a", volume, positions=[2, 0, 3, 1, 4],
                                   orientation=(c, s, 0.0, -s, c, 0.0),
                                   instance_numbers=[5, 4, 3, 2, 1])
  assert dicom.list_dbt_slices(tmp_path / "a") == [paths[i] for i in (1, 3, 0, 2, 4)]
  # No positions: InstanceNumber decides.
  paths = factory.write_dbt_slices(tmp_path / "b", volume, write_positions=False,
                                   instance_numbers=[3, 1, 5, 2, 4])
  assert dicom.list_dbt_slices(tmp_path / "b") == [paths[i] for i in (1, 3, 0, 4, 2)]
  mip, _ = dicom.read_dbt_mip(tmp_path / "b", intensity="bits")
  np.testing.assert_array_equal(mip, volume.max(axis=0))


def test_slice_directory_ignores_non_dicom_files(tmp_path):
  volume = _volume(frames=3)
  factory.write_dbt_slices(tmp_path / "s", volume)
  (tmp_path / "s" / "README.txt").write_text("exported slices")
  (tmp_path / "s" / ".DS_Store").write_bytes(b"\0" * 200)
  mip, meta = dicom.read_dbt_mip(tmp_path / "s", intensity="bits")
  np.testing.assert_array_equal(mip, volume.max(axis=0))
  assert meta.frames == 3


@pytest.mark.parametrize("intensity", ["bits", "auto"])
def test_dbt_mip_memory_is_one_frame_not_the_volume(tmp_path, intensity):
  """~100 MB multi-frame file: the MIP's peak RSS increase stays far below the volume size.

  "auto" on a file without a VOI is the range rule: the volume's used range is only known after
  the last frame, so this also checks that it needs no second pass and no float volume."""
  frames, h, w = 50, 1024, 1024  # 104.9 MB of pixel data

  def frame(k):
    base = np.arange(h * w, dtype=np.uint32).reshape(h, w)
    return ((base * (2 * k + 3) + k) % 4096).astype(np.uint16)

  path = factory.write_native_volume(tmp_path / "big.dcm", (frames, h, w), value_fn=frame)
  volume_mb = frames * h * w * 2 / 2 ** 20
  assert os.path.getsize(path) > frames * h * w * 2
  expected = frame(0)
  for k in range(1, frames):
    np.maximum(expected, frame(k), out=expected)
  if intensity == "auto":  # range rule, by hand: percentiles of every value of the volume
    lo, hi = np.percentile(np.stack([frame(k) for k in range(frames)]),
                           dicom.RANGE_PERCENTILES, method="inverted_cdf")
    y = np.floor((expected - lo) * 4095.0 / (hi - lo) + 0.5)
    expected = np.clip(y, 0, 4095).astype(np.uint16)
  np.save(tmp_path / "expected.npy", expected)
  del expected
  script = textwrap.dedent(f"""
    import resource, sys
    import numpy as np
    from mammo_tf.io import dicom
    def peak_mb():
      return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.zeros(1)
    before = peak_mb()
    mip, meta = dicom.read_dbt_mip({str(path)!r}, intensity={intensity!r})
    increase = peak_mb() - before
    ok = np.array_equal(mip, np.load({str(tmp_path / "expected.npy")!r}))
    print(f"{{increase:.1f}} {{int(ok)}} {{meta.frames}}")
  """)
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       check=True, timeout=300)
  increase, ok, n = out.stdout.split()
  assert ok == "1" and int(n) == frames
  # One frame is 2 MB; the volume 100 MB. Allow for a few frame-sized buffers and the table.
  assert float(increase) < volume_mb / 4, out.stdout


# --------------------------------------------------------------------------------------------------
# VOI LUT.
# --------------------------------------------------------------------------------------------------
def test_voi_window_only_with_the_flag(tmp_path):
  stored = np.array([[1000, 1536, 2048, 2559, 2560]], np.uint16).repeat(4, 0)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, window_center=2048, window_width=1025)
  off, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(off, stored)
  on, _ = dicom.read_ffdm(path, apply_voi_lut=True, intensity="bits")
  # LINEAR: c' = 2047.5, w' = 1024; y = ((v - c') / w' + 0.5) * 4095 inside, 0 / 4095 outside.
  np.testing.assert_array_equal(on[0], [0, 2, 2049, 4093, 4095])
  # Same as pydicom's apply_voi_lut on the whole image, rounded.
  ds = pydicom.dcmread(path)
  ref = apply_voi_lut(ds.pixel_array.astype(np.float64), ds)
  np.testing.assert_array_equal(on, np.floor(ref + 0.5).astype(np.uint16))
  # MONOCHROME1 is inverted about the VOI output range.
  path1 = factory.write_ffdm(tmp_path / "b.dcm", stored, window_center=2048, window_width=1025,
                             photometric="MONOCHROME1")
  on1, _ = dicom.read_ffdm(path1, apply_voi_lut=True, intensity="bits")
  np.testing.assert_array_equal(on1, 4095 - on.astype(np.int64))


def test_voi_lut_sequence_only_with_the_flag(tmp_path):
  lut = np.arange(4096) // 16  # 8-bit LUT over the 12-bit range
  stored = np.array([[0, 16, 100, 4095]], np.uint16).repeat(4, 0)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, voi_lut=(0, 8, lut))
  off, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(off, stored)
  on, _ = dicom.read_ffdm(path, apply_voi_lut=True, intensity="bits")
  # 255 -> 4095; 1 -> 16.06 -> 16; 6 -> 96.35 -> 96
  np.testing.assert_array_equal(on[0], [0, 16, 96, 4095])


def test_voi_on_dbt_from_the_shared_functional_groups(tmp_path):
  volume = _volume(frames=3)
  window = pydicom.Dataset()
  window.WindowCenter = 2048
  window.WindowWidth = 1025
  path = factory.write_dbt(tmp_path / "v.dcm", volume)
  ds = pydicom.dcmread(path)
  ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence = pydicom.Sequence([window])
  ds.save_as(path)
  off, _ = dicom.read_dbt_mip(path, intensity="bits")
  np.testing.assert_array_equal(off, volume.max(axis=0))
  on, _ = dicom.read_dbt_mip(path, apply_voi_lut=True, intensity="bits")
  ref_ds = pydicom.Dataset()
  ref_ds.BitsStored, ref_ds.PixelRepresentation = 12, 0
  ref_ds.PhotometricInterpretation = "MONOCHROME2"
  ref_ds.WindowCenter, ref_ds.WindowWidth = 2048, 1025
  ref = np.floor(apply_voi_lut(volume.astype(np.float64), ref_ds) + 0.5).astype(np.uint16)
  np.testing.assert_array_equal(on, ref.max(axis=0))


# --------------------------------------------------------------------------------------------------
# Laterality, view, metadata, flips.
# --------------------------------------------------------------------------------------------------
def test_laterality_and_view_from_tags(tmp_path):
  img = _breast((40, 36), 12)
  read = lambda p: dicom.read_ffdm(p, intensity="bits")[1]
  m = read(factory.write_ffdm(tmp_path / "a.dcm", img, laterality="R", view="MLO"))
  assert (m.laterality, m.view) == ("R", "MLO")
  m = read(factory.write_ffdm(tmp_path / "b.dcm", img, laterality=None, view=None, Laterality="L"))
  assert (m.laterality, m.view) == ("L", "")
  m = read(factory.write_ffdm(tmp_path / "c.dcm", img, laterality="B"))
  assert m.laterality == ""
  code = pydicom.Dataset()
  code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399368009", "SCT", "x"
  m = read(factory.write_ffdm(tmp_path / "d.dcm", img, view=None,
                              ViewCodeSequence=pydicom.Sequence([code])))
  assert m.view == "MLO"
  code2 = pydicom.Dataset()
  code2.CodeValue, code2.CodingSchemeDesignator, code2.CodeMeaning = "X", "99", "cranio-caudal"
  m = read(factory.write_ffdm(tmp_path / "e.dcm", img, view=None,
                              ViewCodeSequence=pydicom.Sequence([code2])))
  assert m.view == "CC"
  # DBT: only the frame functional groups carry the laterality.
  m = dicom.read_dbt_mip(factory.write_dbt(tmp_path / "f.dcm", _volume(2), laterality=None,
                                           frame_laterality="R"))[1]
  assert m.laterality == "R"


def test_meta_has_no_patient_identifiers(tmp_path):
  path = factory.write_ffdm(tmp_path / "a.dcm", _breast((40, 36), 12), manufacturer="ACME")
  _, meta = dicom.read_ffdm(path, intensity="bits")
  fields = {f.name for f in __import__("dataclasses").fields(meta)}
  assert not any(k in fields for k in ("patient_name", "patient_id", "study_date", "accession"))
  text = repr(meta)
  assert not any(i in text for i in IDENTIFIERS)
  assert meta.manufacturer == "ACME" and meta.pixel_spacing == (0.07, 0.07)
  assert meta.sop_class_uid == factory.FFDM_SOP_CLASS
  assert meta.transfer_syntax_uid == ExplicitVRLittleEndian


def test_flip_to_canonical():
  img = np.zeros((4, 6), np.uint16)
  img[:, :2] = 1000  # tissue against the left edge: looks like a left breast
  assert dicom.flip_to_canonical(img, "L", "L") is img
  assert dicom.flip_to_canonical(img, "R", "") is img
  flipped = dicom.flip_to_canonical(img, "L", "R")
  np.testing.assert_array_equal(flipped, img[:, ::-1])
  assert flipped.flags.c_contiguous
  np.testing.assert_array_equal(dicom.flip_to_canonical(flipped, "R", "L"), img)
  # Unknown laterality: inferred from the image.
  assert dicom.infer_laterality(img) == "L"
  np.testing.assert_array_equal(dicom.flip_to_canonical(img, "", "R"), img[:, ::-1])
  assert dicom.flip_to_canonical(img[:, ::-1], "", "R") is not None
  np.testing.assert_array_equal(dicom.flip_to_canonical(img[:, ::-1], "", "R"), img[:, ::-1])
  with pytest.raises(ValueError):
    dicom.flip_to_canonical(img, "L", "X")


def test_read_image_dispatches(tmp_path):
  stored = _breast((40, 36), 12)
  f = factory.write_ffdm(tmp_path / "a.dcm", stored)
  v = factory.write_dbt(tmp_path / "v.dcm", _volume(3))
  np.testing.assert_array_equal(dicom.read_image(f, "ffdm", intensity="bits")[0], stored)
  np.testing.assert_array_equal(dicom.read_image(v, "dbt", intensity="bits")[0],
                                _volume(3).max(axis=0))
  with pytest.raises(ValueError):
    dicom.read_image(f, "mri", intensity="bits")


# --------------------------------------------------------------------------------------------------
# Bad input: a DicomError with a specific reason that names the file.
# --------------------------------------------------------------------------------------------------
def _truncate(path: Path, fraction: float) -> Path:
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * fraction)])
  return path


def _garbage_after_dicm(tmp_path):
  p = tmp_path / "g.dcm"
  p.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(400))
  return p


def _float_pixels(tmp_path):
  path = factory.write_ffdm(tmp_path / "f.dcm", _breast((40, 36), 12))
  ds = pydicom.dcmread(path)
  del ds.PixelData
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
  ds.FloatPixelData = np.zeros((40, 36), np.float32).tobytes()
  ds.save_as(path)
  return path


def _bad_rescale_text(tmp_path):
  path = factory.write_ffdm(tmp_path / "t.dcm", _breast((40, 36), 12), slope="9.99999")
  path.write_bytes(path.read_bytes().replace(b"9.99999 ", b"abcdefg "))
  return path


def _slices(tmp_path, shapes):
  d = tmp_path / "slices"
  factory.write_dbt_slices(d, [_breast(s, 12, seed=i) for i, s in enumerate(shapes)])
  return d


_V = lambda: _volume(frames=5)
BAD_INPUTS = {
  # name: (builder(tmp_path) -> path, reader, reason substring)
  "missing file": (lambda t: t / "nope.dcm", dicom.read_ffdm, "file not found"),
  "directory as FFDM": (lambda t: t, dicom.read_ffdm, "is a directory"),
  "text file": (lambda t: (t / "x.txt").write_text("hello " * 100) and t / "x.txt",
                dicom.read_ffdm, "not a DICOM file"),
  "empty file": (lambda t: (t / "e.dcm").write_bytes(b"") or t / "e.dcm", dicom.read_ffdm,
                 "not a DICOM file"),
  "garbage after DICM": (_garbage_after_dicm, dicom.read_ffdm, "unreadable DICOM"),
  "truncated native pixel data": (
    lambda t: _truncate(factory.write_ffdm(t / "a.dcm", _breast((64, 64), 12)), 0.6),
    dicom.read_ffdm, "truncated pixel data"),
  "truncated encapsulated (RLE)": (
    lambda t: _truncate(factory.write_dbt(t / "a.dcm", _V(), transfer_syntax=RLELossless), 0.7),
    dicom.read_dbt_mip, "truncated encapsulated pixel data"),
  "truncated encapsulated (JPEG 2000)": (
    lambda t: _truncate(factory.write_ffdm(t / "a.dcm", _breast((64, 64), 12),
                                           transfer_syntax=JPEG2000Lossless), 0.8),
    dicom.read_ffdm, "truncated encapsulated pixel data"),
  "corrupt codestream": (
    lambda t: factory.write_raw_encapsulated(t / "c.dcm", [b"\xff\xd8" + b"\x12" * 300], rows=40,
                                             cols=36, transfer_syntax=JPEGLosslessSV1),
    dicom.read_ffdm, "cannot decode frame 0"),
  "no PixelData": (lambda t: factory.write_ffdm(t / "a.dcm", _breast((40, 36), 12),
                                                PixelData=None),
                   dicom.read_ffdm, "no PixelData"),
  "float pixels": (_float_pixels, dicom.read_ffdm, "float pixel data"),
  "colour RGB": (lambda t: factory.write_ffdm(t / "a.dcm", np.zeros((40, 36, 3), np.uint8),
                                              bits_stored=8, bits_allocated=8, samples_per_pixel=3,
                                              photometric="RGB"),
                 dicom.read_ffdm, "colour image"),
  "palette colour": (lambda t: factory.write_ffdm(t / "a.dcm", _breast((40, 36), 12),
                                                  photometric="PALETTE COLOR"),
                     dicom.read_ffdm, "colour image"),
  "unsupported transfer syntax (MPEG2)": (
    lambda t: factory.write_raw_encapsulated(t / "m.dcm", [b"\0" * 64], rows=40, cols=36,
                                             transfer_syntax="1.2.840.10008.1.2.4.100"),
    dicom.read_ffdm, "unsupported transfer syntax 1.2.840.10008.1.2.4.100"),
  "unsupported transfer syntax (private)": (
    lambda t: factory.write_raw_encapsulated(t / "p.dcm", [b"\0" * 64], rows=40, cols=36,
                                             transfer_syntax="1.2.826.0.1.3680043.8.498.77"),
    dicom.read_ffdm, "no decoder available"),
  "signed with negative values and no rescale": (
    lambda t: factory.write_ffdm(t / "s.dcm", np.array([[-5, 3]] * 8, np.int16),
                                 pixel_representation=1),
    dicom.read_ffdm, "signed pixel data"),
  "NaN rescale slope": (lambda t: factory.write_ffdm(t / "n.dcm", _breast((40, 36), 12),
                                                     slope="NaN"),
                        dicom.read_ffdm, "RescaleSlope is nan"),
  "inf rescale intercept": (lambda t: factory.write_ffdm(t / "n.dcm", _breast((40, 36), 12),
                                                         intercept="-inf"),
                            dicom.read_ffdm, "RescaleIntercept is -inf"),
  "NaN slope in the DBT functional groups": (
    lambda t: factory.write_dbt(t / "n.dcm", _V(), slope="NaN"), dicom.read_dbt_mip,
    "RescaleSlope is nan"),
  "zero rescale slope": (lambda t: factory.write_ffdm(t / "z.dcm", _breast((40, 36), 12), slope=0),
                         dicom.read_ffdm, "RescaleSlope is 0"),
  "non-numeric rescale slope": (_bad_rescale_text, dicom.read_ffdm, "RescaleSlope"),
  "huge declared dimensions (native)": (
    lambda t: factory.write_ffdm(t / "h.dcm", _breast((40, 36), 12), Rows=20000, Columns=20000),
    dicom.read_ffdm, "declared dimensions 20000 x 20000"),
  "huge declared frames (native)": (
    lambda t: factory.write_dbt(t / "h.dcm", _V(), number_of_frames=10 ** 6),
    dicom.read_dbt_mip, "frame-count mismatch: NumberOfFrames=1000000 but PixelData holds 5"),
  "huge declared frame (encapsulated)": (
    lambda t: factory.write_ffdm(t / "h.dcm", _breast((40, 36), 12), transfer_syntax=RLELossless,
                                 Rows=65535, Columns=65535),
    dicom.read_ffdm, "exceeds the limit"),
  "too few frames declared (native)": (
    lambda t: factory.write_dbt(t / "f.dcm", _V(), number_of_frames=3), dicom.read_dbt_mip,
    "frame-count mismatch: NumberOfFrames=3 but PixelData holds 5"),
  "too many frames declared (native)": (
    lambda t: factory.write_dbt(t / "f.dcm", _V(), number_of_frames=7), dicom.read_dbt_mip,
    "frame-count mismatch: NumberOfFrames=7 but PixelData holds 5"),
  "frame-count mismatch (offset table)": (
    lambda t: factory.write_dbt(t / "f.dcm", _V(), number_of_frames=4,
                                transfer_syntax=JPEGLosslessSV1),
    dicom.read_dbt_mip, "frame-count mismatch: NumberOfFrames=4 but the Basic Offset Table"),
  "frame-count mismatch (fragments)": (
    lambda t: factory.write_raw_encapsulated(
      t / "f.dcm", [factory.encode_jpeg_lossless(_breast((40, 36), 12), 12)], rows=40, cols=36,
      transfer_syntax=JPEGLosslessSV1, number_of_frames=3),
    dicom.read_dbt_mip, "frame-count mismatch: NumberOfFrames=3 but the pixel data holds 1"),
  "multi-frame file as FFDM": (lambda t: factory.write_dbt(t / "v.dcm", _V()), dicom.read_ffdm,
                               "expected a single-frame image"),
  "DBT directory with mixed sizes": (lambda t: _slices(t, [(40, 36), (40, 36), (40, 30)]),
                                     dicom.read_dbt_mip, "mixed slice sizes"),
  "DBT directory without DICOMs": (
    lambda t: (t / "d").mkdir() or (t / "d" / "a.txt").write_text("x") and t / "d",
    dicom.read_dbt_mip, "holds no DICOM files"),
  "missing DBT path": (lambda t: t / "nothing", dicom.read_dbt_mip, "file not found"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_dicom_error_with_a_specific_reason(tmp_path, name):
  build, reader, reason = BAD_INPUTS[name]
  path = build(tmp_path)
  with pytest.raises(DicomError) as info:
    reader(path)
  err = info.value
  assert reason in err.reason, err.reason
  assert str(err) == f"{err.path}: {err.reason}"
  assert Path(err.path) == Path(path) or Path(err.path).parent == Path(path), err.path
  assert str(path) in str(err)
  assert not any(i in str(err) for i in IDENTIFIERS)
  assert isinstance(err, ValueError)


def test_dicom_error_pickles():
  import pickle
  err = pickle.loads(pickle.dumps(DicomError("/x/y.dcm", "no PixelData element")))
  assert (err.path, err.reason, str(err)) == ("/x/y.dcm", "no PixelData element",
                                              "/x/y.dcm: no PixelData element")


def test_reading_never_parses_patient_elements(tmp_path, caplog, recwarn):
  path = factory.write_ffdm(tmp_path / "a.dcm", _breast((40, 36), 12), slope="NaN")
  with pytest.raises(DicomError) as info:
    dicom.read_ffdm(path, intensity="bits")
  logged = caplog.text + " ".join(str(w.message) for w in recwarn) + str(info.value)
  assert not any(i in logged for i in IDENTIFIERS)
  src = dicom._open_source(factory.write_ffdm(tmp_path / "b.dcm", _breast((40, 36), 12)))
  assert "PatientName" not in src.ds and "PatientID" not in src.ds and "StudyDate" not in src.ds


def test_modality_lut_sequence(tmp_path):
  item = pydicom.Dataset()
  item.LUTDescriptor = [4096, 0, 12]
  item.ModalityLUTType = "US"
  item.add_new(0x00283006, "US", [4095 - i for i in range(4096)])
  stored = np.array([[0, 100, 4095, 2000]], np.uint16).repeat(4, 0)
  path = factory.write_ffdm(tmp_path / "a.dcm", stored, rescale=False,
                            ModalityLUTSequence=pydicom.Sequence([item]))
  image, _ = dicom.read_ffdm(path, intensity="bits")
  np.testing.assert_array_equal(image[0], [4095, 3995, 0, 2095])
