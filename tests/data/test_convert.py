"""End-to-end conversion on real DICOM files (tests/dicom_factory.py), no mocks.

One module-level cohort holds good FFDM / multi-frame DBT / per-slice DBT images in several transfer
syntaxes and every bad input kind. It is converted once (the reference run); the other tests
compare against it: errors.csv rows, golden summary.json, --workers 1 vs 2, resume after SIGKILL,
compute_cdf, and the privacy grep of every output byte and of the logs.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless
from pydicom.uid import JPEGLosslessSV1
from pydicom.uid import RLELossless

from mammo_tf import config as config_lib
from mammo_tf.data import cdf as cdf_lib
from mammo_tf.data import convert
from mammo_tf.data import manifest as manifest_lib
from mammo_tf.data import schema
from mammo_tf.data import writer
from tests import dicom_factory as fac
from tests import trees

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["data.num_shards=2", "data.cdf_samples_ffdm=4", "data.cdf_samples_dbt=4"]
SHAPE = (96, 80)
SALT = b"test-salt-0123456789"
# Manifest identifiers the privacy test greps for (besides the DICOM ones in dicom_factory).
MANIFEST_IDS = ["MRN-QX-01", "MRN-QX-02", "EXAM-QX-11", "IMG-QX-0001"]


def _cfg():
  return config_lib.get_config("tiny", OVERRIDES)


def _breast(seed, shape=SHAPE, side="L", peak=3000):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  x0 = 0 if side == "L" else shape[1]
  inside = ((yy - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + ((xx - x0) / (shape[1] * 0.75)) ** 2 < 1
  img = np.zeros(shape)
  img[inside] = rng.uniform(800, peak, inside.sum())
  return img.astype(np.uint16)


# --------------------------------------------------------------------------------- pure helpers


def test_block_mean_box_and_flip():
  img = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
  out = convert.block_mean(img, 2)
  assert out.shape == (2, 3) and out.dtype == np.uint16
  assert out[0, 0] == 4 and out[1, 2] == (18 + 19 + 25 + 26 + 2) // 4   # 4.0 and 22.0 -> 22
  assert convert.block_mean(np.array([[0, 1], [0, 1]], np.uint16), 2)[0, 0] == 1  # 0.5 rounds up
  with pytest.raises(ValueError, match="smaller than the downsample factor"):
    convert.block_mean(np.zeros((1, 9), np.uint16), 2)
  assert convert.box_to_stored((10, 20, 30, 40), (100, 80), 2, (50, 40)) == (10., 5., 30., 20.)
  assert convert.box_to_stored((-10, 90, 30, 40), (100, 80), 2, (50, 40)) == (45., 0., 50., 10.)
  with pytest.raises(ValueError, match=r"lies outside the image \(100x80\)"):
    convert.box_to_stored((85, 20, 10, 10), (100, 80), 2, (50, 40))
  assert convert.flip_box((10, 20, 30, 40), 80) == (40, 20, 30, 40)


def test_stratified_sample_is_seeded_balanced_and_sorted():
  items = [(f"{i:04x}", config_lib.LABELS[i % 4] if i < 80 else "normal") for i in range(100)]
  a = convert.stratified_sample(items, 9, 0, "ffdm")
  assert a == sorted(a) and len(a) == 9
  assert a == convert.stratified_sample(items[::-1], 9, 0, "ffdm")
  labels = dict(items)
  assert convert.sample_strata(a, labels) == {"normal": 3, "benign": 3, "positive": 3}
  a = convert.stratified_sample(items, 10, 0, "ffdm")
  assert a != convert.stratified_sample(items, 10, 1, "ffdm")
  assert a != convert.stratified_sample(items, 10, 0, "dbt")
  assert len(convert.stratified_sample(items, 500, 0, "ffdm")) == 100


# --------------------------------------------------------------------------------- the cohort

GOOD, BAD = [], []   # manifest lines


def _build_cohort(root):
  """Writes the DICOMs and two manifests; returns (manifest, big_manifest, expected error
  reasons)."""
  d = os.path.join(root, "dicom")
  os.makedirs(d)
  header = ("patient_id,exam_id,image_id,domain,path,label,laterality,view,"
            "roi_x,roi_y,roi_w,roi_h,split\n")
  good = []
  # Patient 01, train: two FFDM (one flipped side) and a multi-frame DBT with a box.
  fac.write_ffdm(f"{d}/p1_lcc.dcm", _breast(1), laterality="L")
  good.append("MRN-QX-01,EXAM-QX-11,IMG-QX-0001,ffdm,dicom/p1_lcc.dcm,normal,,,,,,,train")
  fac.write_ffdm(f"{d}/p1_rcc.dcm", _breast(2, side="R"), laterality="R", view="CC")
  good.append("MRN-QX-01,EXAM-QX-11,IMG-QX-0002,ffdm,dicom/p1_rcc.dcm,benign,,,,,,,train")
  vol = np.stack([_breast(10 + k) for k in range(4)])
  fac.write_dbt(f"{d}/p1_dbt.dcm", vol)
  good.append("MRN-QX-01,EXAM-QX-12,IMG-QX-0003,dbt,dicom/p1_dbt.dcm,malignant,L,CC,10,30,20,16,train")
  # Patient 02, train: FFDM with a box partly outside, per-slice DBT.
  fac.write_ffdm(f"{d}/p2_mlo.dcm", _breast(3), view="MLO", transfer_syntax=JPEGLosslessSV1)
  good.append("MRN-QX-02,EXAM-QX-21,IMG-QX-0004,ffdm,dicom/p2_mlo.dcm,malignant,,,-6,40,20,20,train")
  fac.write_dbt_slices(f"{d}/p2_slices", np.stack([_breast(20 + k) for k in range(3)]))
  good.append("MRN-QX-02,EXAM-QX-21,IMG-QX-0005,dbt,dicom/p2_slices,high_risk,L,CC,,,,,train")
  # Patient 03, val: MONOCHROME1 and JPEG 2000.
  fac.write_ffdm(f"{d}/p3_m1.dcm", 4095 - _breast(4), photometric="MONOCHROME1")
  good.append("MRN-QX-03,EXAM-QX-31,IMG-QX-0006,ffdm,dicom/p3_m1.dcm,normal,,,,,,,val")
  fac.write_ffdm(f"{d}/p3_j2k.dcm", _breast(5), transfer_syntax=JPEG2000Lossless)
  good.append("MRN-QX-03,EXAM-QX-31,IMG-QX-0007,ffdm,dicom/p3_j2k.dcm,high_risk,,,,,,,val")
  # Patient 04, test: RLE FFDM, DBT.
  fac.write_ffdm(f"{d}/p4_rle.dcm", _breast(6), transfer_syntax=RLELossless, bits_stored=16)
  good.append("MRN-QX-04,EXAM-QX-41,IMG-QX-0008,ffdm,dicom/p4_rle.dcm,benign,,,,,,,test")
  fac.write_dbt(f"{d}/p4_dbt.dcm", np.stack([_breast(30 + k) for k in range(3)]),
                transfer_syntax=RLELossless)
  good.append("MRN-QX-04,EXAM-QX-42,IMG-QX-0009,dbt,dicom/p4_dbt.dcm,normal,,,,,,,test")
  # Bad inputs (patient 05 has only bad rows; one bad row belongs to patient 01).
  bad = {}
  def add_bad(line, reason):
    bad[len(good) + len(bad) + 2] = (line.split(",")[4], reason)
    return line
  lines_bad = [
      add_bad("MRN-QX-05,E5,B01,ffdm,dicom/missing.dcm,normal,,,,,,,", "file not found"),
      add_bad("MRN-QX-05,E5,B02,ffdm,dicom/not_dicom.dcm,normal,,,,,,,", "not a DICOM"),
      add_bad("MRN-QX-05,E5,B03,ffdm,dicom/truncated.dcm,normal,,,,,,,", "truncated pixel data"),
      add_bad("MRN-QX-05,E5,B04,ffdm,dicom/no_pixels.dcm,normal,,,,,,,", "no PixelData"),
      add_bad("MRN-QX-05,E5,B05,ffdm,dicom/colour.dcm,normal,,,,,,,", "colour image"),
      add_bad("MRN-QX-05,E5,B06,ffdm,dicom/mpeg.dcm,normal,,,,,,,", "unsupported transfer syntax"),
      add_bad("MRN-QX-05,E5,B07,ffdm,dicom/p1_lcc.dcm,cancer,,,,,,,", "unknown label"),
      add_bad("MRN-QX-01,EXAM-QX-11,B08,ffdm,dicom/p1_lcc_box.dcm,malignant,,,200,10,20,20,",
              "lies outside the image (96x80)"),
      add_bad("MRN-QX-05,E5,IMG-QX-0001,ffdm,dicom/p1_rcc.dcm,normal,,,,,,,",
              "duplicate image_id (first used on line 2)"),
      add_bad("MRN-QX-05,E5,B10,dbt,dicom/mixed,normal,,,,,,,", "mixed slice sizes"),
      add_bad("MRN-QX-05,E5,B11,ffdm,dicom/black.dcm,normal,,,,,,,", "no breast found"),
  ]
  with open(f"{d}/not_dicom.dcm", "w") as f:
    f.write("this is a text file, not a DICOM\n" * 20)
  fac.write_ffdm(f"{d}/p1_lcc_box.dcm", _breast(1), laterality="L")
  fac.write_ffdm(f"{d}/full.dcm", _breast(7))
  data = open(f"{d}/full.dcm", "rb").read()
  open(f"{d}/truncated.dcm", "wb").write(data[:len(data) - 4000])
  fac.write_ffdm(f"{d}/no_pixels.dcm", _breast(8))
  import pydicom
  ds = pydicom.dcmread(f"{d}/no_pixels.dcm")
  del ds.PixelData
  ds.save_as(f"{d}/no_pixels.dcm")
  rgb = np.repeat(_breast(9)[..., None], 3, axis=2).astype(np.uint8)
  fac.write_ffdm(f"{d}/colour.dcm", rgb, samples_per_pixel=3, photometric="RGB", bits_stored=8,
                 bits_allocated=8)
  fac.write_raw_encapsulated(f"{d}/mpeg.dcm", [b"\x00" * 64], rows=96, cols=80,
                             transfer_syntax="1.2.840.10008.1.2.4.100")
  fac.write_dbt_slices(f"{d}/mixed", [_breast(40), _breast(41), _breast(42, shape=(90, 80))])
  fac.write_ffdm(f"{d}/black.dcm", np.zeros(SHAPE, np.uint16))
  manifest = os.path.join(root, "manifest.csv")
  with open(manifest, "w") as f:
    f.write(header + "\n".join(good + lines_bad) + "\n")
  # A bigger manifest (same files, many patients, computed split) for the resume/workers tests.
  big = os.path.join(root, "big.csv")
  with open(big, "w") as f:
    f.write(header)
    for k in range(8):
      for line in good + lines_bad[:2]:
        p = line.split(",")
        p[0], p[1], p[2], p[12] = f"R{k}-{p[0]}", f"{p[1]}", f"R{k}-{p[2]}", ""
        if k and line in good:   # a distinct copy (new SOPInstanceUIDs): not a duplicate
          p[4] = _copy_with_new_uids(root, p[4], f"copy{k}")
        f.write(",".join(p) + "\n")
  return manifest, big, bad


def _copy_with_new_uids(root, rel, tag):
  """Copies a DICOM file (or slice folder) under a new name with fresh SOPInstanceUIDs."""
  import pydicom
  from pydicom.uid import generate_uid
  src = os.path.join(root, rel)
  dst_rel = os.path.join(os.path.dirname(rel), f"{tag}_{os.path.basename(rel)}")
  pairs = [(src, os.path.join(root, dst_rel))]
  if os.path.isdir(src):
    os.makedirs(pairs[0][1])
    pairs = [(os.path.join(src, n), os.path.join(root, dst_rel, n))
             for n in sorted(os.listdir(src))]
  for a, b in pairs:
    ds = pydicom.dcmread(a)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(b)
  return dst_rel


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cohort"))
  manifest, big, bad = _build_cohort(root)
  salt_file = os.path.join(root, "salt.txt")
  with open(salt_file, "wb") as f:
    f.write(SALT)
  out = os.path.join(root, "out")
  report = convert.run_conversion(manifest, out, _cfg(), seed=0, workers=1, salt=SALT)
  return {"root": root, "manifest": manifest, "big": big, "bad": bad, "out": out,
          "report": report, "salt_file": salt_file}


_tree = trees.tree_bytes


def _records(out, domain):
  recs = []
  for rel in sorted(os.listdir(os.path.join(out, domain))):
    recs += [schema.decode_example_numpy(s)
             for s in writer.iter_shard(os.path.join(out, domain, rel))]
  return recs


def _cli(*args, timeout=300, **popen):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


# --------------------------------------------------------------------------------- tests


def test_every_bad_input_gets_a_specific_error_row_and_good_images_convert(cohort):
  report, out = cohort["report"], cohort["out"]
  assert report.exit_code == convert.EXIT_PARTIAL and report.num_converted == 9
  with open(os.path.join(out, "errors.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["line"] for r in rows] == [str(l) for l in sorted(cohort["bad"])]
  for r in rows:
    path, reason = cohort["bad"][int(r["line"])]
    assert "path" not in r and len(r["image"]) == 32   # salted image-id hash, no path
    assert reason.lower() in r["reason"].lower(), (r, reason)
  ffdm, dbt = _records(out, "ffdm"), _records(out, "dbt")
  assert (len(ffdm), len(dbt)) == (6, 3)
  assert sorted(os.listdir(os.path.join(out, "dbt"))) == [
      f"{s}-{c}-0000{i}-of-00002.tfrecord" for s, c in
      [("test", "neg"), ("train", "pos")] for i in range(2)]


def test_records_geometry_boxes_and_masks(cohort):
  recs = {r["image"].tobytes(): r for r in _records(cohort["out"], "ffdm")}
  by_label = {}
  for r in recs.values():
    assert r["image"].shape == (48, 40) and r["mask"].shape == (12, 10)
    assert r["downsample"] == 2 and r["mask_downsample"] == 4
    assert r["mask"].sum() > 10 and r["image"].max() > 0
    by_label.setdefault((r["split"], r["label"]), []).append(r)
  (mlo,) = by_label[("train", "malignant")]
  assert mlo["box"] == (20.0, 0.0, 30.0, 7.0) and mlo["view"] == "MLO" and mlo["laterality"] == "L"
  (rcc,) = by_label[("train", "benign")]
  assert rcc["laterality"] == "R" and rcc["box"] is None
  (dbt,) = [r for r in _records(cohort["out"], "dbt") if r["label"] == "malignant"]
  assert dbt["box"] == (15.0, 5.0, 23.0, 15.0)


def test_canonical_laterality_flips_image_and_box(cohort, tmp_path):
  rows, _ = manifest_lib.read_manifest(cohort["manifest"])
  row = [r for r in rows if r.label == "malignant" and r.domain == "ffdm"][0]
  row = manifest_lib.ManifestRow(**{**row.__dict__, "laterality": "L"})
  cfg = _cfg()
  plain = convert.convert_image(row, "train", cfg, SALT)
  flipped = convert.convert_image(
      row, "train", config_lib.override(cfg, ["data.canonical_laterality=R"]), SALT)
  np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
  ymin, xmin, ymax, xmax = plain["box"]
  assert flipped["box"] == (ymin, 40 - xmax, ymax, 40 - xmin)
  assert flipped["laterality"] == "L"   # anatomy is kept; only the pixels are mirrored


def test_golden_summary(cohort):
  with open(os.path.join(cohort["out"], "summary.json")) as f:
    s = json.load(f)
  def c(p, e, i, classes):
    pos = classes[2] + classes[3]
    return {"patients": p, "exams": e, "images": i, "positive": pos, "negative": i - pos,
            "classes": dict(zip(config_lib.LABELS, classes))}
  assert s["total"] == c(4, 6, 9, [3, 2, 2, 2])
  assert s["splits"] == {"train": c(2, 3, 5, [1, 1, 1, 2]), "val": c(1, 1, 2, [1, 0, 1, 0]),
                         "test": c(1, 2, 2, [1, 1, 0, 0])}
  assert s["domains"]["ffdm"] == dict(c(4, 4, 6, [2, 2, 1, 1]), splits={
      "train": c(2, 2, 3, [1, 1, 0, 1]), "val": c(1, 1, 2, [1, 0, 1, 0]),
      "test": c(1, 1, 1, [0, 1, 0, 0])})
  assert s["domains"]["dbt"] == dict(c(3, 3, 3, [1, 0, 1, 1]), splits={
      "train": c(2, 2, 2, [0, 0, 1, 1]), "val": c(0, 0, 0, [0, 0, 0, 0]),
      "test": c(1, 1, 1, [1, 0, 0, 0])})
  assert (s["schema_version"], s["config"], s["seed"], s["num_errors"], s["manifest_rows"]) == (
      schema.SCHEMA_VERSION, "tiny", 0, 11, 20)
  assert s["cdf_images"] == {"ffdm": 3, "dbt": 2}
  cfg = json.load(open(os.path.join(cohort["out"], "config.json")))
  assert cfg["name"] == "tiny" and cfg["data"]["num_shards"] == 2


def test_cdf_is_over_training_breast_pixels_and_compute_cdf_reproduces_it(cohort):
  out = cohort["out"]
  train = [r for r in _records(out, "ffdm") if r["split"] == "train"]
  cdfs = []
  for r in sorted(train, key=lambda r: r["image_id"]):
    from mammo_tf.data import masks
    m = masks.upsample_mask(r["mask"], 4, r["image"].shape)
    cdfs.append(cdf_lib.image_cdf(r["image"], m))
  saved = cdf_lib.load_cdf(os.path.join(out, "cdf_ffdm.npz"))
  np.testing.assert_array_equal(saved, cdf_lib.average_cdf(cdfs))
  before = {d: open(os.path.join(out, f"cdf_{d}.npz"), "rb").read() for d in ("ffdm", "dbt")}
  for d in ("ffdm", "dbt"):
    os.unlink(os.path.join(out, f"cdf_{d}.npz"))
  p = _cli("data_prep.compute_cdf", "--data", out, "--num", "4", "--domain", "both")
  assert p.wait(timeout=300) == 0, p.stdout.read().decode()
  for d in ("ffdm", "dbt"):
    assert open(os.path.join(out, f"cdf_{d}.npz"), "rb").read() == before[d]


@pytest.mark.slow
def test_workers_and_resume_after_sigkill_are_byte_identical(cohort):
  root, big, salt_file = cohort["root"], cohort["big"], cohort["salt_file"]
  clean = os.path.join(root, "clean")
  r1 = convert.run_conversion(big, clean, _cfg(), seed=0, workers=1, salt=SALT)
  assert r1.exit_code == convert.EXIT_PARTIAL and r1.num_converted == 72
  two = os.path.join(root, "two")
  convert.run_conversion(big, two, _cfg(), seed=0, workers=2, salt=SALT)
  reference = _tree(clean)
  assert _tree(two) == reference
  assert not [p for p in reference if p.endswith(".example") or ".tmp-" in p]

  killed = os.path.join(root, "killed")
  args = ["data_prep.convert", "--manifest", big, "--out", killed, "--preset", "tiny",
          "--salt_file", salt_file] + [f"--override={o}" for o in OVERRIDES]
  p = _cli(*args, "--workers", "2", start_new_session=True)
  cache = os.path.join(killed, ".cache")
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and p.poll() is None:
    if os.path.isdir(cache) and sum(n.endswith(".meta") for n in os.listdir(cache)) >= 12:
      break
    time.sleep(0.005)
  assert p.poll() is None, "conversion finished before it could be killed"
  os.killpg(p.pid, signal.SIGKILL)
  p.wait()
  log1 = p.stdout.read()
  assert not os.path.exists(os.path.join(killed, "summary.json"))
  p = _cli(*args, "--workers", "1")
  assert p.wait(timeout=300) == 1
  log2 = p.stdout.read()
  assert b"cached from an earlier run" in log2
  assert _tree(killed) == reference
  # Privacy: the logs of both runs carry no identifier.
  for needle in _identifiers():
    assert needle.encode() not in log1 + log2, needle


def _identifiers():
  return [fac.PATIENT_NAME, fac.PATIENT_NAME.replace("^", " "), "Zyxwort", fac.PATIENT_ID,
          fac.ACCESSION, fac.STUDY_DATE, "19500101"] + MANIFEST_IDS


def test_no_identifier_in_any_output_byte(cohort):
  tree = _tree(cohort["out"])
  assert "errors.csv" in tree and any(p.endswith(".tfrecord") for p in tree)
  for rel, data in tree.items():
    for needle in _identifiers() + [SALT.decode()]:
      assert needle.encode() not in data, (rel, needle)
      assert needle.encode() not in rel.encode(), (rel, needle)


def test_all_good_is_exit_0_and_nothing_valid_is_a_conversion_error(cohort, tmp_path):
  lines = open(cohort["manifest"]).read().splitlines()
  good = tmp_path / "good.csv"
  good.write_text("\n".join(lines[:10]) + "\n")
  os.symlink(os.path.join(cohort["root"], "dicom"), tmp_path / "dicom")
  report = convert.run_conversion(str(good), str(tmp_path / "o"), _cfg(), seed=0, salt=SALT)
  assert report.exit_code == convert.EXIT_OK and report.num_converted == 9
  assert open(tmp_path / "o" / "errors.csv").read() == "line,image,reason\n"
  bad = tmp_path / "bad.csv"
  bad.write_text(lines[0] + "\n" + "P,E,I,ffdm,x.dcm,cancer,,,,,,,\n")
  with pytest.raises(convert.ConversionError, match="no valid rows"):
    convert.run_conversion(str(bad), str(tmp_path / "o2"), _cfg(), seed=0, salt=SALT)
  black = tmp_path / "black.csv"
  black.write_text(lines[0] + "\n" + "P,E,I,ffdm,dicom/black.dcm,normal,,,,,,,\n")
  report = convert.run_conversion(str(black), str(tmp_path / "o3"), _cfg(), seed=0, salt=SALT)
  assert report.exit_code == convert.EXIT_NOTHING


def test_cli_exit_statuses(cohort, tmp_path):
  p = _cli("data_prep.convert", "--manifest", str(tmp_path / "none.csv"), "--out",
           str(tmp_path / "o"), "--preset", "tiny")
  assert p.wait(timeout=300) == 2
  assert b"manifest not found" in p.stdout.read()


def test_data_fingerprint_depends_only_on_content(cohort, tmp_path):
  """Workers, file times and rewritten c.d.f. files leave it alone; a changed shard does not."""
  from mammo_tf.data import fingerprint
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  convert.run_conversion(cohort["manifest"], one, _cfg(), seed=0, workers=1, salt=SALT)
  convert.run_conversion(cohort["manifest"], two, _cfg(), seed=0, workers=2, salt=SALT)
  reference = fingerprint.data_fingerprint(one)
  assert fingerprint.data_fingerprint(two) == reference
  # New modification times on every file (as a regenerated cohort or a copy gives them), and a
  # c.d.f. file rewritten with the same arrays (its zip entries carry a new time).
  for dirpath, _, names in os.walk(two):
    for name in names:
      os.utime(os.path.join(dirpath, name), (1e9, 1e9))
  cdf_path = os.path.join(two, "cdf_ffdm.npz")
  with np.load(cdf_path) as data:
    arrays = {k: data[k] for k in data.files}
  time.sleep(2.1)  # zip timestamps have a 2 s resolution
  np.savez(cdf_path, **arrays)
  assert fingerprint.data_fingerprint(two) == reference
  # Without shards.json (older converter output) the shard bytes are hashed directly.
  os.remove(os.path.join(two, "shards.json"))
  legacy = fingerprint.data_fingerprint(two)
  shard_dir = os.path.join(two, "ffdm")
  shard = max((os.path.join(shard_dir, n) for n in sorted(os.listdir(shard_dir))),
              key=os.path.getsize)
  with open(shard, "r+b") as f:
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 1]))
  assert fingerprint.data_fingerprint(two) != legacy
