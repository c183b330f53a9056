"""Fault injection on the converter: kill -9 at seeded points, disk full.

* ``python -m data_prep.convert`` is SIGKILLed at 5 seeded points of its progress (counted in
  cached per-image results and shard files, so kills land in the conversion phase and in the
  shard-writing phase), each time rerun with the same command; the last rerun completes. The
  output folder must then be byte-identical to an uninterrupted run, with no temp file left, and
  after every kill each shard file present must be a complete, CRC-valid TFRecord.
* Disk full: the converter runs (a) under a file-size limit (RLIMIT_FSIZE: the kernel refuses
  writes past N bytes with EFBIG, as a full disk refuses them with ENOSPC) small enough that
  per-image cache files fit and multi-example shards do not, and (b) when running as root with
  mount rights, on a size-capped tmpfs (real ENOSPC). Both must end with exit status 2, a clear
  message naming what could not be written, no temp file and no partial shard in place; a rerun
  with room then completes and equals the clean run.
"""
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mammo_tf import config as config_lib
from mammo_tf.data import convert
from mammo_tf.data import writer
from tests import dicom_factory as fac
from tests import trees

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["data.num_shards=2", "data.cdf_samples_ffdm=4", "data.cdf_samples_dbt=4"]
SALT = b"faults-salt-0123456789"
NUM_FFDM, NUM_DBT = 16, 3
KILL_SEED = 8


def _cfg():
  return config_lib.get_config("tiny", OVERRIDES)


def _breast(seed, shape=(160, 128)):
  return fac.half_ellipse_breast(seed, shape)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("faults_cohort"))
  d = os.path.join(root, "dicom")
  os.makedirs(d)
  lines = ["patient_id,exam_id,image_id,domain,path,label,laterality,view,roi_x,roi_y,roi_w,roi_h"]
  labels = config_lib.LABELS
  for i in range(NUM_FFDM):
    fac.write_ffdm(f"{d}/f{i}.dcm", _breast(i))
    lines.append(f"P{i // 2},E{i // 2},F{i},ffdm,dicom/f{i}.dcm,{labels[i % 4]},L,CC,,,,")
  for i in range(NUM_DBT):
    fac.write_dbt(f"{d}/d{i}.dcm", np.stack([_breast(100 + 3 * i + k) for k in range(3)]))
    lines.append(f"P{i},E{i}d,D{i},dbt,dicom/d{i}.dcm,{labels[(i + 2) % 4]},L,CC,,,,")
  lines.append("P9,E9,BAD,ffdm,dicom/missing.dcm,normal,L,CC,,,,")
  manifest = os.path.join(root, "manifest.csv")
  with open(manifest, "w") as f:
    f.write("\n".join(lines) + "\n")
  salt_file = os.path.join(root, "salt.bin")
  with open(salt_file, "wb") as f:
    f.write(SALT)
  clean = os.path.join(root, "clean")
  report = convert.run_conversion(manifest, clean, _cfg(), seed=0, workers=1, salt=SALT)
  assert report.num_converted == NUM_FFDM + NUM_DBT and report.num_errors == 1
  return {"root": root, "manifest": manifest, "salt_file": salt_file, "clean": clean,
          "reference": _tree(clean)}


_tree = trees.tree_bytes


def _args(cohort, out):
  return ([sys.executable, "-m", "data_prep.convert", "--manifest", cohort["manifest"], "--out",
           out, "--preset", "tiny", "--salt_file", cohort["salt_file"], "--workers", "1"] +
          [f"--override={o}" for o in OVERRIDES])


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")


def _progress(out):
  """Monotonic progress count: cached per-image results + shard files in place."""
  n = 0
  cache = os.path.join(out, convert.CACHE_DIR)
  if os.path.isdir(cache):
    n += sum(name.endswith(".meta") for name in os.listdir(cache))
  for d in config_lib.DOMAINS:
    folder = os.path.join(out, d)
    if os.path.isdir(folder):
      n += sum(name.endswith(".tfrecord") and not name.startswith(writer.TMP_PREFIX)
               for name in os.listdir(folder))
  return n


def _check_shards_complete(out):
  """Every shard file in place parses to the end with valid CRCs (none is torn)."""
  for d in config_lib.DOMAINS:
    folder = os.path.join(out, d)
    if not os.path.isdir(folder):
      continue
    for name in os.listdir(folder):
      if name.endswith(".tfrecord") and not name.startswith(writer.TMP_PREFIX):
        for _ in writer.iter_shard(os.path.join(folder, name)):
          pass


def _temp_files(out):
  return [os.path.join(dp, n) for dp, _, files in os.walk(out) for n in files
          if n.startswith(writer.TMP_PREFIX) or n.endswith(".example")]


@pytest.mark.slow
def test_kill9_at_five_seeded_points_then_rerun_is_identical(cohort):
  out = os.path.join(cohort["root"], "killed")
  reference = cohort["reference"]
  results = sum(p.endswith(".meta") for p in reference)
  shards = sum(p.endswith(".tfrecord") for p in reference)
  summary = json.loads(reference["summary.json"])
  groups = sum(1 for d in config_lib.DOMAINS for s in config_lib.SPLITS for c in ("positive",
               "negative") if summary["domains"][d]["splits"][s][c])   # non-empty groups
  assert (results, shards) == (NUM_FFDM + NUM_DBT + 1, 2 * groups) and shards >= 12
  total = results + shards
  # Three kills while images are converted and cached, two while shards are written.
  rng = np.random.default_rng(KILL_SEED)
  points = (sorted(int(p) for p in rng.choice(np.arange(1, results), 3, replace=False)) +
            sorted(int(p) for p in rng.choice(np.arange(results + 1, total - 3), 2,
                                              replace=False)))
  killed_at = []
  for point in points:
    p = subprocess.Popen(_args(cohort, out), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    while p.poll() is None and _progress(out) < point:
      time.sleep(0.002)
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
      killed_at.append(_progress(out))
    _check_shards_complete(out)
    assert not os.path.exists(os.path.join(out, "summary.json")) or p.returncode == 1
  assert len(killed_at) >= 4, (points, killed_at)   # the kills really interrupted the job
  assert any(k > results for k in killed_at), (points, killed_at)   # one during shard writing
  final = subprocess.run(_args(cohort, out), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=300)
  assert final.returncode == 1, final.stderr[-3000:]           # one input rejected
  assert not _temp_files(out)
  assert _tree(out) == reference


def _fsize_limit(limit):
  def preexec():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return preexec


def test_file_size_limit_gives_a_clear_error_and_no_torn_shard(cohort):
  reference = cohort["reference"]
  # Largest single file the job writes besides shards holding several examples.
  multi = {p for p in reference if p.endswith(".tfrecord") and
           sum(1 for _ in writer.iter_shard(os.path.join(cohort["clean"], p))) > 1}
  assert multi
  # (the c.d.f. files, written after every shard, are left out)
  single_max = max(len(v) for p, v in reference.items()
                   if p not in multi and not p.endswith(".npz"))
  limit = single_max + 64
  assert any(len(reference[p]) > limit for p in multi)
  out = os.path.join(cohort["root"], "fsize")
  p = subprocess.run(_args(cohort, out), cwd=REPO, env=_env(), capture_output=True, text=True,
                     timeout=300, preexec_fn=_fsize_limit(limit))
  assert p.returncode == convert.EXIT_NOTHING, p.stderr[-3000:]
  assert re.search(r"conversion stopped: \[Errno 27\] cannot write shard (ffdm|dbt)/"
                   r"\w+-\w+-\d{5}-of-00002\.tfrecord \(File too large\); no partial shard was "
                   r"left in place, free space and rerun to resume", p.stderr), p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert not [t for t in _temp_files(out) if writer.TMP_PREFIX in t]
  _check_shards_complete(out)
  for rel in multi:   # the shards that did not fit are absent, not torn
    if len(reference[rel]) > limit:
      assert not os.path.exists(os.path.join(out, rel)), rel
  assert not os.path.exists(os.path.join(out, "summary.json"))
  p = subprocess.run(_args(cohort, out), cwd=REPO, env=_env(), capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 1, p.stderr[-3000:]
  assert _tree(out) == reference


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                     capture_output=True, text=True)
  return r.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_tmpfs_gives_a_clear_error_and_a_rerun_with_room_completes(cohort):
  reference = cohort["reference"]
  mnt = os.path.join(cohort["root"], "tmpfs")
  total = sum(len(v) for v in reference.values())
  if not _mount_tmpfs(mnt, total // 2):
    pytest.skip("cannot mount a tmpfs here")
  try:
    out = os.path.join(mnt, "out")
    p = subprocess.run(_args(cohort, out), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == convert.EXIT_NOTHING, p.stderr[-3000:]
    assert re.search(r"conversion stopped: \[Errno 28\] cannot write \S+ \(No space left on "
                     r"device\)", p.stderr), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not [t for t in _temp_files(out) if writer.TMP_PREFIX in t]
    _check_shards_complete(out)
    assert not os.path.exists(os.path.join(out, "summary.json"))
    subprocess.run(["mount", "-o", f"remount,size={total * 4}", mnt], check=True)
    p = subprocess.run(_args(cohort, out), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    assert _tree(out) == reference
  finally:
    subprocess.run(["umount", mnt], capture_output=True)
