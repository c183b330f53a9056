"""Training-patch throughput of the tf.data pipeline vs a plain NumPy + PIL + scikit-image loop.

Paper geometry: stored (half-resolution) images of 2048 x 1664, 512 px patches, augmentation
(flips, noise, translation, rotation) and histogram matching, written as a handful of real
TFRecord examples (PNG-16) to a temporary folder. Measures patches/s of
`make_train_dataset(..., hm_lut=...)` with reuse 1 and 4, then the same steps done one patch at a
time in plain Python in the same process (PIL PNG decode, 724 px window, skimage rotate, crop
512, flips, HM by np.interp, noise), and prints the ratios. Asserts nothing about time.

  python bench/bench_pipeline.py [--images 6] [--batches 12] [--plain 12] [--codec png]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.transform import rotate  # noqa: E402

from mammo_tf import config  # noqa: E402
from mammo_tf.data import patches, pipeline, schema  # noqa: E402
from tests import tfrecord_factory  # noqa: E402


def _load():
  la = os.getloadavg()
  return f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {os.cpu_count()} cores"


def bench_pipeline(data_dir, cfg, lut, batches):
  ds = pipeline.make_train_dataset(data_dir, "dbt", "train", cfg, seed=0, hm_lut=lut)
  it = iter(ds)
  for _ in range(3):                                  # warm-up: tracing, autotune, prefetch
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    patch, _ = next(it)
  _ = patch.numpy()
  dt = time.perf_counter() - t0
  return batches * cfg.data.batch_size / dt


def plain_loop(serialized, cfg, lut, n, seed=0):
  """The same steps one patch at a time: PIL decode, 724 px window, rotate, crop, flip, HM, noise."""
  rng = np.random.default_rng(seed)
  p = cfg.data.patch_size
  s = int(math.ceil(p * math.sqrt(2)))                 # 724 for 512
  sigma = cfg.data.translate_std / cfg.data.downsample
  levels = np.arange(4096, dtype=np.float64)
  t0 = time.perf_counter()
  for i in range(n):
    ex = tf.train.Example.FromString(serialized[i % len(serialized)]).features.feature
    encoded = ex[schema.IMAGE].bytes_list.value[0]
    if ex[schema.IMAGE_FORMAT].bytes_list.value[0] == b"raw":
      shape = (ex[schema.HEIGHT].int64_list.value[0], ex[schema.WIDTH].int64_list.value[0])
      image = np.frombuffer(encoded, "<u2").reshape(shape).astype(np.float32)
    else:
      image = np.array(Image.open(io.BytesIO(encoded)), np.float32)
    mask = np.array(Image.open(io.BytesIO(ex[schema.MASK].bytes_list.value[0])))
    md = ex[schema.MASK_DOWNSAMPLE].int64_list.value[0]
    box = np.array(ex[schema.BOX].float_list.value, np.float32)
    has_box = bool(ex[schema.HAS_BOX].int64_list.value[0])
    centre = patches.choose_centre_np(mask, md, image.shape, box, has_box,
                                      rng.random(3).astype(np.float32))
    angle = rng.uniform(-cfg.data.rotation_deg, cfg.data.rotation_deg)
    centre = patches.clamp_centre_np(centre + rng.normal(0, sigma, 2), image.shape, p,
                                     math.radians(angle))
    window = patches.crop_np(image, patches.window_top_left_np(centre, image.shape, s), s)
    rotated = rotate(window, angle, order=1, preserve_range=True)
    m = (s - p) // 2
    out = rotated[m:m + p, m:m + p]
    if rng.random() < 0.5:
      out = out[:, ::-1]
    if rng.random() < 0.5:
      out = out[::-1, :]
    out = np.where(out > 0, np.interp(out, levels, lut), 0.0)
    out = (out + rng.normal(0.0, cfg.data.noise_std, out.shape)).astype(np.float32)
  return n / (time.perf_counter() - t0)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=6, help="images per class")
  ap.add_argument("--batches", type=int, default=12)
  ap.add_argument("--plain", type=int, default=12, help="patches of the plain loop")
  ap.add_argument("--codec", default="png", choices=schema.CODECS)
  args = ap.parse_args()
  cores = os.cpu_count() or 1
  cfg = config.get_config("paper", {"data.num_shards": 2, "data.image_codec": args.codec})
  print(f"TF {tf.__version__}; {_load()}")
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    data_dir = tfrecord_factory.write_dataset(tmp, cfg=cfg, num_images_per_class=args.images,
                                              domains=("ffdm", "dbt"), splits=("train",),
                                              image_shape=(2048, 1664))
    print(f"wrote {4 * args.images} examples of 2048x1664 ({args.codec}) in "
          f"{time.perf_counter() - t0:.1f} s")
    lut = pipeline.hm_lut_for(data_dir, "dbt")
    results = {}
    for reuse in (1, 4):
      c = config.override(cfg, {"data.reuse": reuse})
      results[reuse] = bench_pipeline(data_dir, c, lut, args.batches)
      print(f"tf.data, augmentation + HM, reuse {reuse}: {results[reuse]:7.1f} patches/s "
            f"({results[reuse] / cores:6.1f} per core); {_load()}")
    files = tf.io.gfile.glob(schema.shard_pattern(data_dir, "dbt", "train"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(sorted(files))]
    plain = plain_loop(serialized, cfg, lut, args.plain)
    print(f"plain NumPy + PIL + skimage loop (1 core):  {plain:7.1f} patches/s; {_load()}")
    for reuse, rate in results.items():
      print(f"ratio reuse {reuse}: {rate / plain:5.1f}x total, {rate / cores / plain:5.1f}x per core")


if __name__ == "__main__":
  main()
