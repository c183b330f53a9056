"""Hostile inputs and faults on the converter: one test per probe, real files and processes.

* a ~1 MB deflated DICOM that inflates to 1 GiB: refused, peak RSS within the baseline + 300 MB;
* a pool worker killed (SIGKILL, as the OOM killer would) during ``--workers 2``: the run finishes;
* a FIFO as an input or as the manifest, ``/dev/zero`` as the manifest: refused, never blocks;
* identifiers in manifest paths and fields: never in ``errors.csv`` (paths only on request);
* one image under two rows (same path, ``./`` variant, a link, a byte copy, same pixels);
* a MemoryError while decoding (an address-space limit): reported, not cached, a rerun converts;
* exit codes: bad overrides and unusable manifests exit 2 without a traceback, crashes exit 3;
* a flipped byte in a shard: found by its sha256 and rewritten by the next run;
* a DBT slice folder with a truncated slice: the reason names the slice by position;
* paths beginning with ``= + - @``: neutralised in ``errors.csv``.
"""
import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from mammo_tf import cli
from mammo_tf import config as config_lib
from mammo_tf.data import convert
from mammo_tf.data import privacy
from mammo_tf.data import writer
from mammo_tf.io import guard
from tests import dicom_factory as fac

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SALT = b"hostile-salt-0123456789"
HEADER = "patient_id,exam_id,image_id,domain,path,label\n"
OVERRIDES = ["data.num_shards=1", "data.cdf_samples_ffdm=4", "data.cdf_samples_dbt=4"]
MIB = 1 << 20
# Runs data_prep.convert in this child and reports its peak virtual size and peak RSS (kB).
_MEASURED = (
    "import runpy, sys\n"
    "sys.argv = ['convert'] + sys.argv[1:]\n"
    "try:\n"
    "  runpy.run_module('data_prep.convert', run_name='__main__')\n"
    "finally:\n"
    "  st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
    "  sys.stderr.write('PEAK %s %s\\n' % (st['VmPeak'].split()[0], st['VmHWM'].split()[0]))\n")


def _cfg():
  return config_lib.get_config("tiny", OVERRIDES)


def _breast(seed, shape=(96, 80)):
  return fac.half_ellipse_breast(seed, shape)


def _manifest(path, rows):
  with open(path, "w") as f:
    f.write(HEADER + "".join(r + "\n" for r in rows))
  return str(path)


def _errors(out):
  with open(os.path.join(out, "errors.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)


def _convert_cli(*args, timeout=300, preexec_fn=None):
  """data_prep.convert in a child -> (exit code, output, peak VM kB, peak RSS kB)."""
  r = subprocess.run([sys.executable, "-c", _MEASURED, *args, "--preset", "tiny",
                      *[f"--override={o}" for o in OVERRIDES]], cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)
  out = r.stdout + r.stderr
  peak = [line.split()[1:] for line in out.splitlines() if line.startswith("PEAK ")]
  vm, rss = (int(peak[-1][0]), int(peak[-1][1])) if peak else (0, 0)
  return r.returncode, out, vm, rss


def _in_thread(fn, timeout=120):
  """Runs fn() in a daemon thread; fails the test (instead of hanging) past `timeout`."""
  box = {}

  def target():
    try:
      box["value"] = fn()
    except BaseException as e:
      box["error"] = e

  t = threading.Thread(target=target, daemon=True)
  t.start()
  t.join(timeout)
  assert not t.is_alive(), f"blocked for {timeout} s"
  return box


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """One good FFDM and its conversion in a child process (the memory baseline)."""
  root = tmp_path_factory.mktemp("small")
  fac.write_ffdm(root / "a.dcm", _breast(1))
  manifest = _manifest(root / "m.csv", ["P1,E1,I1,ffdm,a.dcm,normal"])
  rc, out, vm, rss = _convert_cli("--manifest", manifest, "--out", str(root / "o"))
  assert rc == 0, out
  assert vm and rss
  return {"root": root, "vm_kb": vm, "rss_kb": rss}


def _deflate_bomb(template, path, inflated_bytes):
  """A valid small deflated FFDM followed, inside the deflate stream, by `inflated_bytes` zeros
  (a trailing padding element): a ~1 MB file per GiB."""
  data = open(template, "rb").read()
  with open(template, "rb") as f:
    meta = guard.read_file_meta(f, template)
  body = zlib.decompress(data[meta.end:], -15)
  z = zlib.compressobj(9, zlib.DEFLATED, -15)
  with open(path, "wb") as out:
    out.write(data[:meta.end])
    trailer = b"\xfc\xff\xfc\xffOB\x00\x00" + inflated_bytes.to_bytes(4, "little")
    out.write(z.compress(body + trailer))
    block = bytes(16 * MIB)
    for _ in range(inflated_bytes // len(block)):
      out.write(z.compress(block))
    out.write(z.flush())
  return path


# --------------------------------------------------------------------------------- memory


def test_deflate_bomb_is_refused_within_baseline_plus_300mb(small, tmp_path):
  fac.write_ffdm(tmp_path / "t.dcm", _breast(2, (512, 512)),
                 transfer_syntax=DeflatedExplicitVRLittleEndian)
  bomb = _deflate_bomb(tmp_path / "t.dcm", tmp_path / "bomb.dcm", 1 << 30)
  assert os.path.getsize(bomb) < 2 * MIB
  shutil.copy(small["root"] / "a.dcm", tmp_path / "a.dcm")
  manifest = _manifest(tmp_path / "m.csv", ["P1,E1,I1,ffdm,a.dcm,normal",
                                            "P2,E2,I2,ffdm,bomb.dcm,normal"])
  rc, out, _, rss = _convert_cli("--manifest", manifest, "--out", str(tmp_path / "o"))
  assert rc == 1, out
  (err,) = _errors(tmp_path / "o")
  assert err["line"] == "3" and "inflates past" in err["reason"], err
  grown_mb = (rss - small["rss_kb"]) / 1024
  assert grown_mb < 300, f"peak RSS grew by {grown_mb:.0f} MB over the baseline"


def test_guard_bounds_inflation_by_the_declared_size(tmp_path):
  """The cap follows Rows x Columns x Frames x BitsAllocated: an honest file passes with exactly
  its size, an oversized PixelData length is refused before inflating, a FIFO before open."""
  p = fac.write_ffdm(tmp_path / "ok.dcm", _breast(3, (64, 48)),
                     transfer_syntax=DeflatedExplicitVRLittleEndian)
  inflated = guard.inflate_deflated(p, keep=True)
  assert inflated.header.Rows == 64 and inflated.size == len(inflated.data)
  ds = guard.read_deflated(p)
  np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(p).pixel_array)
  bomb = _deflate_bomb(p, tmp_path / "b.dcm", 64 * MIB)
  with pytest.raises(guard.UnsafeInput, match="inflates past"):
    guard.inflate_deflated(bomb, keep=False)
  os.mkfifo(tmp_path / "fifo")
  with pytest.raises(guard.UnsafeInput, match="FIFO"):
    guard.check_input(str(tmp_path / "fifo"), "ffdm")
  # The reader's one open function and its deflated path go through the guard too.
  from mammo_tf.io import dicom
  for bad, reason in ((tmp_path / "fifo", "FIFO"), (bomb, "inflates past")):
    box = _in_thread(lambda bad=bad: dicom.read_ffdm(str(bad)))
    assert isinstance(box.get("error"), dicom.DicomError) and reason in str(box["error"])
  image, _ = dicom.read_ffdm(str(p))
  assert image.shape == (64, 48)


def test_memory_error_is_not_cached_and_a_rerun_converts(small, tmp_path):
  """An address-space limit makes decoding a large (honest) image fail with MemoryError: the
  row is reported, nothing is cached for it, and the same command without the limit converts it."""
  big = np.zeros((16384, 8192), np.uint16)
  big[:, :3000] = 2000
  fac.write_ffdm(tmp_path / "big.dcm", big, transfer_syntax=DeflatedExplicitVRLittleEndian)
  del big
  shutil.copy(small["root"] / "a.dcm", tmp_path / "a.dcm")
  manifest = _manifest(tmp_path / "m.csv", ["P1,E1,I1,ffdm,a.dcm,normal",
                                            "P2,E2,I2,ffdm,big.dcm,normal"])
  limit = (small["vm_kb"] * 1024) + 200 * MIB   # the baseline's peak + 200 MB < one 256 MB copy

  def cap():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

  args = ("--manifest", manifest, "--out", str(tmp_path / "o"))
  rc, out, _, _ = _convert_cli(*args, preexec_fn=cap)
  assert rc == 1, out
  (err,) = _errors(tmp_path / "o")
  assert err["line"] == "3" and "not cached" in err["reason"], err
  rc, out, _, _ = _convert_cli(*args)
  assert rc == 0, out
  assert "1 images cached from an earlier run, 1 to convert" in out
  assert _errors(tmp_path / "o") == []


# --------------------------------------------------------------------------------- no hangs


def test_killed_worker_is_replaced_and_the_run_finishes(tmp_path):
  n = 16
  for k in range(n):
    fac.write_ffdm(tmp_path / f"i{k}.dcm", _breast(k, (1536, 1280)))
  manifest = _manifest(tmp_path / "m.csv",
                       [f"P{k},E{k},I{k},ffdm,i{k}.dcm,normal" for k in range(n)])
  out_dir = tmp_path / "o"
  p = subprocess.Popen([sys.executable, "-m", "data_prep.convert", "--manifest", manifest,
                        "--out", str(out_dir), "--workers", "2", "--preset", "tiny",
                        *[f"--override={o}" for o in OVERRIDES]], cwd=REPO, env=_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
  killed = None
  deadline = time.monotonic() + 300
  try:
    while killed is None and time.monotonic() < deadline and p.poll() is None:
      cache = out_dir / ".cache"
      if cache.is_dir() and any(x.endswith(".meta") for x in os.listdir(cache)):
        workers = _spawned_children(p.pid)
        if workers:
          os.kill(workers[0], signal.SIGKILL)
          killed = workers[0]
      time.sleep(0.01)
    assert killed is not None, "no worker to kill before the run ended"
    rc = p.wait(timeout=300)
  finally:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
  log = p.stdout.read().decode()
  assert rc == 0, log
  assert "worker process died" in log
  import json
  summary = json.load(open(out_dir / "summary.json"))
  assert summary["total"]["images"] == n


def _spawned_children(pid):
  out = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{name}/cmdline", "rb") as f:
        cmd = f.read()
    except OSError:
      continue
    if ppid == pid and b"spawn_main" in cmd:
      out.append(int(name))
  return sorted(out)


def test_fifo_and_device_are_refused_without_blocking(tmp_path):
  fac.write_ffdm(tmp_path / "a.dcm", _breast(4))
  os.mkfifo(tmp_path / "pipe.dcm")
  os.mkfifo(tmp_path / "manifest_fifo.csv")
  manifest = _manifest(tmp_path / "m.csv", ["P1,E1,I1,ffdm,a.dcm,normal",
                                            "P2,E2,I2,ffdm,pipe.dcm,normal"])
  box = _in_thread(lambda: convert.run_conversion(manifest, str(tmp_path / "o"), _cfg(), seed=0,
                                                  salt=SALT))
  report = box["value"]
  assert report.exit_code == convert.EXIT_PARTIAL
  (err,) = _errors(tmp_path / "o")
  assert err["line"] == "3" and "FIFO" in err["reason"]
  for bad, what in ((tmp_path / "manifest_fifo.csv", "FIFO"), ("/dev/zero", "character device")):
    box = _in_thread(lambda bad=bad: convert.run_conversion(str(bad), str(tmp_path / "o2"),
                                                            _cfg(), seed=0, salt=SALT))
    assert isinstance(box.get("error"), convert.ConversionError) and what in str(box["error"])


# --------------------------------------------------------------------------------- identifiers


def test_errors_csv_holds_no_identifier_and_neutralises_formulas(tmp_path):
  fac.write_ffdm(tmp_path / "a.dcm", _breast(5))
  rows = ["P1,E1,I1,ffdm,a.dcm,normal",
          "MRN-ZQ-1,E2,IMG-ZQ-2,ffdm,MRN-ZQ-1/missing.dcm,normal",
          "P3,E3,I3,ffdm,a2.dcm,MRN-ZQ-3",
          "P4,E4,I4,ffdm,=HYPERLINK(1).dcm,normal",
          "P5,E5,I5,ffdm,+1.dcm,normal", "P6,E6,I6,ffdm,-1.dcm,normal",
          "P7,E7,I7,ffdm,@SUM(1).dcm,normal"]
  manifest = _manifest(tmp_path / "m.csv", rows)
  convert.run_conversion(manifest, str(tmp_path / "o"), _cfg(), seed=0, salt=SALT)
  text = open(tmp_path / "o" / "errors.csv").read()
  assert text.splitlines()[0] == "line,image,reason"
  for needle in ("MRN", "ZQ", "missing.dcm", "HYPERLINK", "SUM("):
    assert needle not in text, needle
  errs = _errors(tmp_path / "o")
  assert [e["line"] for e in errs] == ["3", "4", "5", "6", "7", "8"]
  assert errs[0]["image"] == privacy.hash_image(SALT, "IMG-ZQ-2")
  assert "unknown label" in errs[1]["reason"]
  # With --errors_with_paths the user sees the paths, formula cells neutralised.
  convert.run_conversion(manifest, str(tmp_path / "o"), _cfg(), seed=0, salt=SALT,
                         errors_with_paths=True)
  paths = [e["path"] for e in _errors(tmp_path / "o")]
  assert paths[0] == "MRN-ZQ-1/missing.dcm"
  assert paths[2:] == ["'=HYPERLINK(1).dcm", "'+1.dcm", "'-1.dcm", "'@SUM(1).dcm"]
  for e in _errors(tmp_path / "o"):
    assert not any(c.startswith(("=", "+", "-", "@")) for c in e.values())


def test_duplicates_are_rejected_with_the_first_line(tmp_path, caplog):
  fac.write_ffdm(tmp_path / "a.dcm", _breast(6))
  fac.write_ffdm(tmp_path / "b.dcm", _breast(7))
  shutil.copy(tmp_path / "a.dcm", tmp_path / "copy.dcm")
  os.symlink(tmp_path / "a.dcm", tmp_path / "link.dcm")   # what a case variant is on macOS/Windows
  for name in ("n1.dcm", "n2.dcm"):   # no SOPInstanceUID, same pixels
    fac.write_ffdm(tmp_path / name, _breast(8))
    ds = pydicom.dcmread(tmp_path / name)
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / name)
  rows = ["P1,E1,I1,ffdm,a.dcm,normal",        # line 2
          "P2,E2,I2,ffdm,a.dcm,normal",        # 3: same path, another patient id
          "P1,E1,I3,ffdm,./a.dcm,normal",      # 4
          "P3,E3,I4,ffdm,link.dcm,normal",     # 5
          "P4,E4,I5,ffdm,copy.dcm,normal",     # 6: byte copy (same SOPInstanceUID)
          " P1 ,E1,I6,ffdm,b.dcm,benign",      # 7: trimmed: patient P1
          "P5,E5,I7,ffdm,n1.dcm,normal",       # 8
          "P6,E6,I8,ffdm,n2.dcm,normal"]       # 9: same pixels, no UID
  manifest = _manifest(tmp_path / "m.csv", rows)
  with caplog.at_level(logging.WARNING):
    report = convert.run_conversion(manifest, str(tmp_path / "o"), _cfg(), seed=0, salt=SALT)
  assert report.num_converted == 3 and report.exit_code == convert.EXIT_PARTIAL
  reasons = {int(e["line"]): e["reason"] for e in _errors(tmp_path / "o")}
  assert reasons == {3: "duplicate of line 2 (the same file)",
                     4: "duplicate of line 2 (the same file)",
                     5: "duplicate of line 2 (the same file)",
                     6: "duplicate of line 2 (the same SOPInstanceUID)",
                     9: "duplicate of line 8 (the same pixels)"}
  assert "may belong to one person" in caplog.text
  assert "lines 2 and 4" not in caplog.text   # same patient id: no warning
  summary = report.summary
  assert summary["total"]["patients"] == 2   # P1 (with " P1 ") and P5


# --------------------------------------------------------------------------------- exit codes


def test_exit_codes_user_error_2_crash_3(capsys):
  def bad_value(argv):
    raise ValueError("data.patch_size must be positive, got 0")

  def bug(argv):
    raise RuntimeError("boom")

  assert cli.wrap(bad_value)([]) == 2
  err = capsys.readouterr().err
  assert err.strip() == "error: data.patch_size must be positive, got 0"
  assert cli.wrap(bug)([]) == 3
  err = capsys.readouterr().err
  assert "Traceback" in err and "RuntimeError: boom" in err
  assert cli.wrap(lambda argv: 1)([]) == 1


@pytest.mark.parametrize("override", ["data.mask_downsample=0", "data.downsample=(1",
                                      "data.downsample=[2,3]", "train.batch_size=0",
                                      "train.epochs=0", "data.batch_size=-1",
                                      "train.learning_rate=nan", "train.no_such_key=1"])
def test_bad_overrides_fail_when_the_config_is_built(override):
  with pytest.raises(ValueError):
    config_lib.get_config("tiny", [override])


def test_convert_cli_exit_2_without_traceback(small, tmp_path):
  manifest = str(small["root"] / "m.csv")
  for args in (["--manifest", manifest, "--out", str(tmp_path / "o"),
                "--override=data.mask_downsample=0"],
               ["--manifest", "/dev/zero", "--out", str(tmp_path / "o")],
               ["--manifest", manifest, "--out", str(tmp_path / "o"), "--no_such_flag"]):
    rc, out, _, _ = _convert_cli(*args)
    assert rc == 2, (args, out)
    assert "Traceback" not in out, out


# --------------------------------------------------------------------------------- corruption


def test_flipped_byte_in_a_shard_is_found_and_rewritten(tmp_path, caplog):
  for k in range(3):
    fac.write_ffdm(tmp_path / f"i{k}.dcm", _breast(10 + k))
  manifest = _manifest(tmp_path / "m.csv",
                       [f"P{k},E{k},I{k},ffdm,i{k}.dcm,normal" for k in range(3)])
  out = str(tmp_path / "o")
  convert.run_conversion(manifest, out, _cfg(), seed=0, salt=SALT)
  shards = [os.path.join(d, n) for d in ("ffdm",) for n in sorted(os.listdir(os.path.join(out, d)))
            if os.path.getsize(os.path.join(out, d, n))]
  rel = shards[0]
  good = open(os.path.join(out, rel), "rb").read()
  bad = bytearray(good)
  bad[len(bad) // 2] ^= 0xFF
  open(os.path.join(out, rel), "wb").write(bytes(bad))
  assert writer.find_corrupt_shards(out) == [rel]
  with caplog.at_level(logging.WARNING):
    convert.run_conversion(manifest, out, _cfg(), seed=0, salt=SALT)
  assert "does not match its recorded sha256" in caplog.text
  assert open(os.path.join(out, rel), "rb").read() == good
  assert writer.find_corrupt_shards(out) == []


# --------------------------------------------------------------------------------- DBT slices


def test_truncated_slice_is_named_by_position(tmp_path):
  vol = np.stack([_breast(20 + k) for k in range(3)])
  fac.write_dbt_slices(tmp_path / "vol", vol)
  names = sorted(os.listdir(tmp_path / "vol"))
  victim = tmp_path / "vol" / names[1]
  data = open(victim, "rb").read()
  open(victim, "wb").write(data[:len(data) - 2000])
  manifest = _manifest(tmp_path / "m.csv", ["P1,E1,I1,dbt,vol,normal"])
  report = convert.run_conversion(manifest, str(tmp_path / "o"), _cfg(), seed=0, salt=SALT)
  assert report.num_converted == 0
  (err,) = _errors(tmp_path / "o")
  assert "slice" in err["reason"] and "2 of 3" in err["reason"], err
  assert names[1] not in err["reason"]


# --------------------------------------------------------------------------------- heat map


def test_heatmap_refuses_tiny_flat_and_non_dicom_inputs_in_one_line(tmp_path):
  """Each fails before any model is loaded, with a ValueError naming the input (exit 2)."""
  from mammo_tf.evaluation import heatmap
  cfg = config_lib.get_config("tiny")
  fac.write_ffdm(tmp_path / "one.dcm", np.full((1, 1), 2000, np.uint16))
  fac.write_ffdm(tmp_path / "black.dcm", np.zeros((96, 80), np.uint16))
  (tmp_path / "notes.dcm").write_text("not a DICOM file\n" * 20)
  os.mkfifo(tmp_path / "pipe.dcm")
  cases = {"one.dcm": "smaller than the downsample factor", "black.dcm": "no breast found",
           "notes.dcm": "not a DICOM file", "pipe.dcm": "FIFO"}
  for name, reason in cases.items():
    path = str(tmp_path / name)
    box = _in_thread(lambda path=path: heatmap.heatmap_for_dicom(
        str(tmp_path / "no_model.keras"), path, str(tmp_path / "h.png"), cfg))
    e = box.get("error")
    assert isinstance(e, ValueError) and reason in str(e) and name in str(e), (name, e)
    assert cli.exit_code(e) == 2


def test_per_image_time_limit_stops_the_image_and_is_not_cached(tmp_path):
  fac.write_ffdm(tmp_path / "a.dcm", _breast(30, (1536, 1280)))
  manifest = _manifest(tmp_path / "m.csv", ["P1,E1,I1,ffdm,a.dcm,normal"])
  out = str(tmp_path / "o")
  report = convert.run_conversion(manifest, out, _cfg(), seed=0, salt=SALT,
                                  image_time_limit=0.001)   # no real image converts in 1 ms
  assert report.num_converted == 0
  (err,) = _errors(out)
  assert "time limit of 0.001 s per image exceeded" in err["reason"]
  assert not [n for n in os.listdir(os.path.join(out, ".cache")) if n.endswith(".meta")]
  report = convert.run_conversion(manifest, out, _cfg(), seed=0, salt=SALT)
  assert report.exit_code == convert.EXIT_OK and _errors(out) == []
