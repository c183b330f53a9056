r"""Generates the malformed / hostile input corpus into a folder (no binaries in git).

  python tests/data/bad/make_bad_corpus.py OUT_DIR

Writes, under OUT_DIR:
  dicom/...          real DICOM files (tests/dicom_factory.py) and byte-level corruptions of them
  manifest.csv       good rows (they must all convert) mixed with one row per bad case
  latin1.csv         a manifest that is not UTF-8 (rejected as a whole, file-level error)
  expected.json      {"good": [image ids], "bad": {line: [path as written, reason substring]},
                      "file_level": {"latin1.csv": reason substring}}

Every bad case is deterministic (seeded), small on disk, and some declare huge sizes
(60000 x 60000 pixels, 100000 frames) that a reader must reject from the header without
allocating them.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

import pydicom  # noqa: E402  (runnable as a script: the repo goes on sys.path first)
from pydicom.uid import RLELossless  # noqa: E402

from tests import dicom_factory as fac  # noqa: E402

SHAPE = (96, 80)
HEADER = ("patient_id,exam_id,image_id,domain,path,label,laterality,view,roi_x,roi_y,roi_w,"
          "roi_h,split")


def breast(seed: int, shape=SHAPE, side: str = "L") -> np.ndarray:
  """A half-ellipse 'breast' of uniform noise against the left (or right) edge, uint16."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  x0 = 0 if side == "L" else shape[1]
  inside = (((yy - shape[0] / 2) / (shape[0] * 0.42)) ** 2 +
            ((xx - x0) / (shape[1] * 0.75)) ** 2) < 1
  img = np.zeros(shape)
  img[inside] = rng.uniform(800, 3000, inside.sum())
  return img.astype(np.uint16)


def _patch_element_length(data: bytes, tag: tuple[int, int], new_length: int) -> bytes:
  """Rewrites the 2-byte length of an explicit-VR short element (e.g. LO) in a file's bytes."""
  key = struct.pack("<HH", *tag)
  pos = data.index(key, 132)
  return data[:pos + 6] + struct.pack("<H", new_length) + data[pos + 8:]


def _rewrite(path: str, **changes) -> None:
  """Sets header elements of an existing file (lenient: values may be invalid)."""
  ds = pydicom.dcmread(path)
  for key, value in changes.items():
    setattr(ds, key, value)
  with fac._lenient_writing():
    ds.save_as(path, enforce_file_format=True)


def make(out: str) -> dict:
  """Writes the corpus; returns the expectations (also saved as expected.json)."""
  d = os.path.join(out, "dicom")
  os.makedirs(d, exist_ok=True)
  rng = np.random.default_rng(8)
  good_rows, good_ids = [], []

  def good(name, image_id, domain="ffdm", label="normal", extra=",,,,,,"):
    good_rows.append(f"G{len(good_rows) // 2},GE{len(good_rows)},{image_id},{domain},"
                     f"dicom/{name},{label}{extra}")
    good_ids.append(image_id)

  # --- good inputs: they must all convert in the same run.
  fac.write_ffdm(f"{d}/good_0.dcm", breast(1))
  good("good_0.dcm", "OK-0")
  fac.write_ffdm(f"{d}/good_1.dcm", breast(2, side="R"), laterality="R")
  good("good_1.dcm", "OK-1", label="malignant", extra=",R,CC,50,30,10,12,")
  fac.write_ffdm(f"{d}/good_2.dcm", breast(3), transfer_syntax=RLELossless)
  good("good_2.dcm", "OK-2", label="benign")
  fac.write_dbt(f"{d}/good_3.dcm", np.stack([breast(10 + k) for k in range(3)]))
  good("good_3.dcm", "OK-3", domain="dbt", label="high_risk")
  fac.write_ffdm(f"{d}/good_4.dcm", breast(4), pixel_representation=1, bits_stored=16)
  good("good_4.dcm", "OK-4")   # signed storage, non-negative values: valid

  # --- bad inputs: (manifest row after the path, reason substring).
  bad: list[tuple[str, str, str, str]] = []   # (domain, path as written, row tail, reason)

  def add(name, reason, domain="ffdm", tail="normal,,,,,,,", path=None):
    bad.append((domain, path if path is not None else f"dicom/{name}", tail, reason))

  full = open(f"{d}/good_0.dcm", "rb").read()
  open(f"{d}/zero_length.dcm", "wb").close()
  add("zero_length.dcm", "not a DICOM file (no 'DICM' marker")
  open(f"{d}/truncated_header.dcm", "wb").write(full[:300])
  add("truncated_header.dcm", "no PixelData element")      # the header stops mid-way
  open(f"{d}/truncated_pixels.dcm", "wb").write(full[:len(full) - 5000])
  add("truncated_pixels.dcm", "truncated pixel data")
  open(f"{d}/random_dicm.dcm", "wb").write(
      b"\0" * 128 + b"DICM" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
  add("random_dicm.dcm", "unreadable DICOM")
  open(f"{d}/text.dcm", "w").write("patient,notes\nthis is a CSV, not a DICOM\n" * 10)
  add("text.dcm", "not a DICOM file")
  open(f"{d}/wrong_vr_length.dcm", "wb").write(
      _patch_element_length(full, (0x0008, 0x0070), 0xFFF0))  # Manufacturer runs past the file
  add("wrong_vr_length.dcm", "no PixelData element")       # the bad length swallows the rest
  pos = full.index(struct.pack("<HH", 0x0028, 0x0010) + b"US", 132)   # Rows: US, 2 bytes
  open(f"{d}/wrong_us_length.dcm", "wb").write(   # 4 bytes long, 2 zero bytes inserted
      full[:pos + 6] + struct.pack("<H", 4) + full[pos + 8:pos + 10] + b"\0\0" + full[pos + 10:])
  add("wrong_us_length.dcm", "Rows has 2 values, expected 1")
  # Huge declared dimensions: a 60000 x 60000 frame (7.2 GB) with 15 KB of pixel data.
  fac.write_ffdm(f"{d}/huge_dims.dcm", breast(5))
  _rewrite(f"{d}/huge_dims.dcm", Rows=60000, Columns=60000)
  add("huge_dims.dcm", "declared frame size 60000 x 60000 x 16 bits (7200000000 bytes) exceeds")
  fac.write_dbt(f"{d}/huge_frames.dcm", np.stack([breast(20 + k) for k in range(2)]),
                number_of_frames=100000)
  add("huge_frames.dcm", "frame-count mismatch: NumberOfFrames=100000", domain="dbt")
  fac.write_dbt(f"{d}/frames_mismatch.dcm", np.stack([breast(30 + k) for k in range(3)]),
                number_of_frames=5)
  add("frames_mismatch.dcm", "frame-count mismatch: NumberOfFrames=5", domain="dbt")
  fac.write_dbt(f"{d}/frames_mismatch_rle.dcm", np.stack([breast(40 + k) for k in range(3)]),
                number_of_frames=2, transfer_syntax=RLELossless)
  add("frames_mismatch_rle.dcm", "frame-count mismatch: NumberOfFrames=2", domain="dbt")
  rgb = np.repeat((breast(6) >> 4).astype(np.uint8)[..., None], 3, axis=2)
  fac.write_ffdm(f"{d}/rgb.dcm", rgb, samples_per_pixel=3, photometric="RGB", bits_stored=8,
                 bits_allocated=8)
  add("rgb.dcm", "colour image (SamplesPerPixel=3")
  signed = breast(7).astype(np.int16) - 1000
  fac.write_ffdm(f"{d}/signed_negative.dcm", signed, pixel_representation=1, bits_stored=16)
  add("signed_negative.dcm", "signed pixel data (PixelRepresentation=1) with negative")
  fac.write_ffdm(f"{d}/float_pixels.dcm", breast(8))
  ds = pydicom.dcmread(f"{d}/float_pixels.dcm")
  ds.FloatPixelData = breast(8).astype(np.float32).tobytes()
  del ds.PixelData
  ds.BitsAllocated = 32
  ds.BitsStored = 32
  ds.HighBit = 31
  with fac._lenient_writing():
    ds.save_as(f"{d}/float_pixels.dcm", enforce_file_format=True)
  add("float_pixels.dcm", "float pixel data")
  fac.write_ffdm(f"{d}/nan_rescale.dcm", breast(9), slope="NaN")
  add("nan_rescale.dcm", "RescaleSlope")
  fac.write_ffdm(f"{d}/zero_slope.dcm", breast(10), slope=0)
  add("zero_slope.dcm", "RescaleSlope is 0")
  fac.write_ffdm(f"{d}/bits_allocated_12.dcm", breast(11))
  _rewrite(f"{d}/bits_allocated_12.dcm", BitsAllocated=12)
  add("bits_allocated_12.dcm", "BitsAllocated=12 is not supported")
  fac.write_ffdm(f"{d}/bits_stored_20.dcm", breast(12))
  _rewrite(f"{d}/bits_stored_20.dcm", BitsStored=20, HighBit=19)
  add("bits_stored_20.dcm", "BitsStored=20 is not in 1..BitsAllocated (16)")
  fac.write_raw_encapsulated(f"{d}/mpeg.dcm", [b"\0" * 64], rows=96, cols=80,
                             transfer_syntax="1.2.840.10008.1.2.4.100")
  add("mpeg.dcm", "unsupported transfer syntax")
  fac.write_raw_encapsulated(f"{d}/garbage_rle.dcm", [rng.bytes(256)], rows=96, cols=80,
                             transfer_syntax=RLELossless)
  add("garbage_rle.dcm", "cannot decode frame 0")
  fac.write_ffdm(f"{d}/no_pixels.dcm", breast(13))
  ds = pydicom.dcmread(f"{d}/no_pixels.dcm")
  del ds.PixelData
  ds.save_as(f"{d}/no_pixels.dcm")
  add("no_pixels.dcm", "no PixelData")
  fac.write_ffdm(f"{d}/black.dcm", np.zeros(SHAPE, np.uint16))
  add("black.dcm", "no breast found")
  fac.write_ffdm(f"{d}/one_pixel.dcm", np.full((1, 1), 100, np.uint16))
  add("one_pixel.dcm", "smaller than the downsample factor")
  fac.write_dbt(f"{d}/multiframe_as_ffdm.dcm", np.stack([breast(50 + k) for k in range(2)]))
  add("multiframe_as_ffdm.dcm", "expected a single-frame image")
  os.makedirs(f"{d}/empty_slices", exist_ok=True)
  add("empty_slices", "DBT slice directory holds no DICOM files", domain="dbt")
  fac.write_dbt_slices(f"{d}/mixed_slices", [breast(60), breast(61, shape=(90, 80))])
  add("mixed_slices", "mixed slice sizes", domain="dbt")
  os.makedirs(f"{d}/a_folder")   # its own folder: the same path twice is a duplicate row
  add("a_folder", "is a directory, expected a DICOM file")
  add("missing.dcm", "file not found")
  # Manifest-level hostility.
  add(None, "path escapes the manifest folder", path="../../etc/passwd")
  add(None, "path escapes the manifest folder", path="dicom/../../../good_0.dcm")
  add(None, "not a DICOM file", path="/etc/passwd")
  add("good_0.dcm", "duplicate image_id (first used on line 2)")    # image id of line 2
  add("good_0.dcm", "non-positive size (roi_w=-10", tail="malignant,,,20,20,-10,5,")
  # Box errors need their own files: the same file on a second row is a duplicate row.
  fac.write_ffdm(f"{d}/box_a.dcm", breast(1))
  fac.write_ffdm(f"{d}/box_b.dcm", breast(1))
  add("box_a.dcm", "lies outside the image (96x80)", tail="malignant,,,500,500,10,10,")
  add("box_b.dcm", "lies outside the image (96x80)", tail="malignant,,,-50,-50,10,10,")
  add("good_0.dcm", "roi_x is not finite", tail="malignant,,,nan,10,10,10,")
  add("good_0.dcm", "incomplete finding box", tail="malignant,,,10,10,,,")
  # Reasons never echo the field's value (errors.csv): "(value withheld)".
  add("good_0.dcm", "unknown label (value withheld)", tail="cancer,,,,,,,")
  add("good_0.dcm", "unknown domain (value withheld)", domain="mri")
  add("good_0.dcm", "laterality (value withheld) is not L or R", tail="normal,X,,,,,,")
  add("good_0.dcm", "row has 14 fields, header has 13", tail="normal,,,,,,,,surplus")

  lines = [HEADER] + good_rows
  expected_bad = {}
  for k, (domain, path, tail, reason) in enumerate(bad):
    line = len(lines) + 1
    image_id = "OK-0" if "duplicate" in reason else f"BAD-{k:02d}"
    lines.append(f"B{k},BE{k},{image_id},{domain or 'ffdm'},{path},{tail}")
    expected_bad[line] = [path, reason]
  with open(os.path.join(out, "manifest.csv"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(out, "latin1.csv"), "wb") as f:
    f.write((HEADER + "\n" + good_rows[0] + "\nP,E,I,ffdm,dicom/caf\u00e9.dcm,normal,,,,,,,\n"
             ).encode("latin-1"))
  expected = {"good": good_ids, "bad": expected_bad,
              "file_level": {"latin1.csv": "not UTF-8 text (byte 0xe9 on line 3)"}}
  with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
  return expected


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  e = make(sys.argv[1])
  print(f"{len(e['good'])} good rows, {len(e['bad'])} bad rows, "
        f"{len(e['file_level'])} file-level case(s) in {sys.argv[1]}")
