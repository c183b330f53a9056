r"""Conversion benchmark: paper-size FFDM (4096x3328, 12-bit) and DBT (2457x1996x70) volumes.

  python bench/bench_convert.py [--dir TMP] [--reps 3] [--skip_j2k]

Writes the inputs with pydicom into a temporary folder (content generated frame by frame, so the
benchmark itself stays lean), then measures each case in a FRESH subprocess that first imports
TensorFlow and the converter:

* seconds per image (wall, best of --reps) and images per second per core (1 / CPU seconds);
* peak RSS increase over the post-import baseline (VmHWM reset through /proc/self/clear_refs where
  the kernel allows it, else getrusage's ru_maxrss);
* the same for bare pydicom decoding of the same file in the same process
  (``dcmread(path).pixel_array``; for DBT also ``.max(axis=0)``), and the ratio ours / bare.

"ours" = `convert_image` (read + MIP, flip, 2x2 mean, breast mask, box) and, separately, with
`schema.encode_example` (PNG-16), i.e. the whole per-image work of a conversion worker.
Goals: DBT peak RSS increase < 400 MB; FFDM conversion within 2x of bare decoding.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FFDM_SHAPE = (4096, 3328)
DBT_SHAPE = (70, 2457, 1996)


def _phantom_frame(shape, k, seed=0):
  """A breast-like 12-bit frame: an ellipse of smooth texture plus noise, background 0."""
  import numpy as np
  h, w = shape
  rng = np.random.default_rng([seed, k])
  yy, xx = np.ogrid[:h, :w]
  inside = ((yy - h / 2) / (h * 0.45)) ** 2 + (xx / (w * 0.8)) ** 2 < 1
  coarse = rng.normal(0, 1, (h // 64 + 2, w // 64 + 2))
  tex = np.kron(coarse, np.ones((64, 64)))[:h, :w]
  frame = 1800 + 500 * tex + rng.normal(0, 40, (h, w))
  frame = np.where(inside, np.clip(frame, 1, 4095), 0)
  return frame.astype(np.uint16)


def write_inputs(folder: str, j2k: bool) -> dict[str, str]:
  sys.path.insert(0, REPO)
  from pydicom.uid import JPEG2000Lossless

  from tests import dicom_factory as fac
  paths = {}
  img = _phantom_frame(FFDM_SHAPE, 0)
  paths["ffdm"] = str(fac.write_ffdm(os.path.join(folder, "ffdm.dcm"), img))
  if j2k:
    paths["ffdm_j2k"] = str(fac.write_ffdm(os.path.join(folder, "ffdm_j2k.dcm"), img,
                                           transfer_syntax=JPEG2000Lossless))
  del img
  paths["dbt"] = str(fac.write_native_volume(
      os.path.join(folder, "dbt.dcm"), DBT_SHAPE,
      value_fn=lambda k: _phantom_frame(DBT_SHAPE[1:], k, seed=1)))
  return paths


def _rss_mb(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _measure(fn, reps: int):
  """(best wall s, CPU s of that rep, peak RSS increase MB over the RSS before the first rep)."""
  import gc
  gc.collect()
  resettable = _reset_peak()
  base = (_rss_mb("VmRSS") if resettable
          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  best = (float("inf"), 0.0)
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    del out
    best = min(best, (wall, cpu))
  peak = (_rss_mb("VmHWM") if resettable
          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  return best[0], best[1], peak - base


def child(path: str, domain: str, reps: int) -> dict:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import pydicom

  from mammo_tf import config as config_lib
  from mammo_tf.data import convert
  from mammo_tf.data import manifest
  from mammo_tf.data import schema
  cfg = config_lib.get_config("paper")
  row = manifest.ManifestRow("p", "e", "i", domain, path, "malignant", "L", "CC",
                             box=(1000.0, 1200.0, 300.0, 250.0))
  salt = b"bench-salt-0000"
  after_import = _rss_mb("VmRSS")

  def ours():
    return convert.convert_image(row, "train", cfg, salt)

  def ours_encoded():
    return schema.encode_example(convert.convert_image(row, "train", cfg, salt), "png")

  def bare():
    a = pydicom.dcmread(path).pixel_array
    return a.max(axis=0) if a.ndim == 3 else a

  ours()  # warm-up (pydicom/pylibjpeg plugin discovery, TF PNG kernel)
  res = {"after_import_rss_mb": after_import}
  for name, fn in (("ours", ours), ("ours_encoded", ours_encoded), ("bare", bare)):
    wall, cpu, peak = _measure(fn, reps)
    res[name] = {"s_per_image": wall, "cpu_s": cpu, "peak_rss_increase_mb": peak}
  return res


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dir", default=None)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--skip_j2k", action="store_true")
  ap.add_argument("--child", nargs=3, metavar=("PATH", "DOMAIN", "REPS"), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print("RESULT " + json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
    return
  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    t0 = time.perf_counter()
    paths = write_inputs(tmp, not args.skip_j2k)
    print(f"inputs written in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{k} {os.path.getsize(p) / 2**20:.0f} MB" for k, p in paths.items()))
    print(f"{'case':10s} {'what':13s} {'s/image':>8s} {'img/s/core':>10s} {'peak RSS +MB':>12s}"
          f" {'ratio/bare':>10s}")
    for case, path in paths.items():
      domain = "dbt" if case.startswith("dbt") else "ffdm"
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
      proc = subprocess.run([sys.executable, __file__, "--child", path, domain, str(args.reps)],
                            capture_output=True, text=True, env=env, cwd=REPO, check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode != 0 or not lines:
        print(f"{case}: child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        continue
      res = json.loads(lines[-1][7:])
      bare = res["bare"]["s_per_image"]
      for what in ("ours", "ours_encoded", "bare"):
        r = res[what]
        print(f"{case:10s} {what:13s} {r['s_per_image']:8.3f} {1 / max(r['cpu_s'], 1e-9):10.2f} "
              f"{r['peak_rss_increase_mb']:12.0f} {r['s_per_image'] / bare:10.2f}")
      print(f"{case:10s} (RSS after importing TF + converter: {res['after_import_rss_mb']:.0f} MB)")


if __name__ == "__main__":
  main()
