"""Shared pieces of the dataset-builder tests: small breast images, tables, the two CLIs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
ROWS, COLS = 64, 48


def breast(side: str = "L", lesions=(), seed: int = 0, rows: int = ROWS, cols: int = COLS,
           lesion_value: int = 3600) -> np.ndarray:
  """uint16 12-bit image: a half-disc breast against the `side` edge, brighter towards the chest
  wall (a thickness profile, no flat plateau) with noise, bright squares at `lesions`
  ((x, y, w, h) boxes)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:rows, 0:cols]
  edge = 0 if side == "L" else cols - 1
  r2 = (yy - rows / 2) ** 2 / (rows * 0.45) ** 2 + (xx - edge) ** 2 / (cols * 0.8) ** 2
  thickness = np.sqrt(np.clip(1 - r2, 0, 1))
  img = np.where(r2 <= 1, 400 + 1200 * thickness + rng.integers(0, 150, size=(rows, cols)), 0)
  for x, y, w, h in lesions:
    img[int(y):int(y + h), int(x):int(x + w)] = lesion_value
  return img.astype(np.uint16)


def write_csv(path, header, rows, delimiter=",", newline_in_cells=False) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, delimiter=delimiter, lineterminator="\r\n")
    w.writerow(header)
    for r in rows:
      w.writerow([f"{v}\n" if newline_in_cells and isinstance(v, str) and v else v for v in r])
  return str(path)


def _run(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def make_manifest(dataset, root, out, *extra):
  """Runs the CLI -> (exit status, stdout+stderr, manifest rows by image_id, skipped rows)."""
  p = _run("data_prep.make_manifest", "--dataset", dataset, "--root", root, "--out", out, *extra)
  rows, skipped = {}, []
  if os.path.exists(out):
    with open(out, newline="") as f:
      rows = {r["image_id"]: r for r in csv.DictReader(f)}
    with open(str(out)[:-4] + ".skipped.csv", newline="") as f:
      skipped = list(csv.DictReader(f))
  return p.returncode, p.stdout + p.stderr, rows, skipped


def convert(manifest, out):
  """`data_prep.convert --preset tiny` -> (exit status, output, summary.json)."""
  p = _run("data_prep.convert", "--manifest", manifest, "--out", out, "--preset", "tiny")
  summary = None
  if os.path.exists(os.path.join(out, "summary.json")):
    with open(os.path.join(out, "summary.json")) as f:
      summary = json.load(f)
  return p.returncode, p.stdout + p.stderr, summary


def records(out, domain):
  from mammo_tf.data import schema
  from mammo_tf.data import writer
  recs = []
  folder = os.path.join(out, domain)
  for rel in sorted(os.listdir(folder)):
    recs += [schema.decode_example_numpy(s) for s in writer.iter_shard(os.path.join(folder, rel))]
  return recs


def box(row):
  """The manifest row's box as floats (or None)."""
  if not row["roi_x"]:
    return None
  return tuple(float(row[c]) for c in ("roi_x", "roi_y", "roi_w", "roi_h"))
