"""Load check of the serving SavedModel: latency percentiles and throughput per batch size.

Loads an export (``--export DIR``, e.g. ``<workdir>/export`` of a training job) or builds an
untrained classifier of the preset's width and exports it with
`mammo_tf.training.export.export_serving` (nothing is trained), then, for every batch size in
``--batches`` (default 1..64), calls ``serving_default`` from ``--threads`` threads for
``--seconds`` seconds on random uint16 12-bit patches. It prints p50/p90/p99 latency per call,
patches/s, the ratio against the same batch size on one thread (the baseline, run first in the
same process), checks that every call returned ``[batch]`` finite probabilities in [0, 1] (exit
status 1 otherwise), and prints the resident memory after warm-up and at the end (stable memory:
no growth across the run). Asserts nothing about time.

  python bench/bench_serving.py [--preset demo] [--export DIR] [--threads 2] [--seconds 2]
      [--batches 1,2,4,8,16,32,64]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import tensorflow as tf

from mammo_tf import config as config_lib
from mammo_tf.models import resnet
from mammo_tf.training import export as export_lib


def rss_mb() -> float:
  """Current resident set size of this process (MB)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_export(preset: str, directory: str) -> tuple[str, int]:
  cfg = config_lib.get_config(preset)
  model = resnet.build_classifier(cfg.model, cfg.input_size)
  lut = np.clip(np.arange(4096, dtype=np.float32) * 0.9 + 100.0, 0, 4095)   # an HM table too
  path = export_lib.export_serving(model, os.path.join(directory, "export"), cfg.input_size,
                                   hm_lut=lut)
  return path, cfg.input_size


def input_side(fn) -> int:
  spec = fn.structured_input_signature[1][export_lib.INPUT_NAME]
  return int(spec.shape[1])


def run_load(fn, batch: int, side: int, threads: int, seconds: float, seed: int):
  """Calls `fn` from `threads` threads for `seconds`; returns (latencies s, patches, errors)."""
  rng = np.random.default_rng(seed)
  inputs = [tf.constant(rng.integers(0, 4096, (batch, side, side, 1), dtype=np.uint16))
            for _ in range(4)]
  latencies: list[list[float]] = [[] for _ in range(threads)]
  errors: list[str] = []
  stop = time.monotonic() + seconds

  def worker(k):
    i = k
    while time.monotonic() < stop:
      x = inputs[i % len(inputs)]
      t0 = time.perf_counter()
      try:
        out = fn(patch=x)[export_lib.OUTPUT_NAME].numpy()
      except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
        return
      latencies[k].append(time.perf_counter() - t0)
      if out.shape != (batch,) or not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1:
        errors.append(f"bad output shape {out.shape} / values [{out.min()}, {out.max()}]")
        return
      i += 1

  start = time.monotonic()
  pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
  for t in pool:
    t.start()
  for t in pool:
    t.join()
  wall = time.monotonic() - start
  lat = np.array([v for per in latencies for v in per])
  return lat, len(lat) * batch / wall, errors


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="demo", choices=sorted(config_lib.PRESETS))
  parser.add_argument("--export", default=None, help="existing serving SavedModel")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=2.0)
  parser.add_argument("--batches", default="1,2,4,8,16,32,64")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  tmp = tempfile.TemporaryDirectory()
  if args.export:
    path = args.export
  else:
    path, _ = make_export(args.preset, tmp.name)
  fn = export_lib.load_serving(path)
  side = input_side(fn)
  print(f"export {path if args.export else f'(untrained {args.preset} classifier + HM)'}: "
        f"uint16 [batch, {side}, {side}, 1]; {args.threads} threads x {args.seconds:g} s per "
        f"batch size; TF {tf.__version__}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}")
  for b in batches:                                   # warm-up: trace/compile every shape
    run_load(fn, b, side, 1, 0.0, seed=0)
    fn(patch=tf.zeros((b, side, side, 1), tf.uint16))
  rss_start = rss_mb()
  print(f"RSS after warm-up {rss_start:.1f} MB")
  print(f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'calls':>6} "
        f"{'patches/s':>10} {'1-thread':>10} {'ratio':>6}")
  all_errors = []
  rss_series = []
  for b in batches:
    _, base_tput, err1 = run_load(fn, b, side, 1, args.seconds / 2, seed=b)
    lat, tput, err = run_load(fn, b, side, args.threads, args.seconds, seed=b + 1000)
    all_errors += err1 + err
    p50, p90, p99 = (np.percentile(lat, q) * 1e3 for q in (50, 90, 99)) if len(lat) else (
        float("nan"),) * 3
    print(f"{b:>5} {p50:>9.2f} {p90:>9.2f} {p99:>9.2f} {len(lat):>6} {tput:>10.1f} "
          f"{base_tput:>10.1f} {tput / max(base_tput, 1e-9):>6.2f}")
    rss_series.append(rss_mb())
  # A second pass over every batch size: memory must not keep growing once warm.
  for b in batches:
    _, _, err = run_load(fn, b, side, args.threads, args.seconds / 4, seed=b + 2000)
    all_errors += err
  rss_end = rss_mb()
  print(f"RSS start {rss_start:.1f} MB, after first pass {rss_series[-1]:.1f} MB, end "
        f"{rss_end:.1f} MB (drift over the second pass {rss_end - rss_series[-1]:+.1f} MB), "
        f"peak {peak_rss_mb():.1f} MB")
  if all_errors:
    print(f"ERRORS: {len(all_errors)}; first: {all_errors[0]}")
    return 1
  print("errors: 0")
  return 0


if __name__ == "__main__":
  sys.exit(main())
