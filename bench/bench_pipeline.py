"""Training-patch throughput of the tf.data pipeline: host vs device augmentation, and a plain loop.

Paper geometry: stored (half-resolution) images of 2048 x 1664, 512 px patches, augmentation
(flips, noise, translation, rotation) and histogram matching, written as a handful of real
TFRecord examples to a temporary folder, once per codec (PNG-16 and raw). For each codec and reuse
1 and 4, back to back in one process (the machine may be shared, so compare ratios):

* ``host`` mode: `make_train_dataset(..., hm_lut=...)` with ``data.augment_on=host`` -- tf.data
  cuts, transforms, histogram-matches and noises every patch;
* ``device`` mode: the same stream with ``data.augment_on=device`` -- tf.data only decodes, draws
  the geometry and cuts a 704 px window (what an accelerator would pull); for raw, also with
  ``band_decode=True`` (only the window's rows decoded; the default at reuse 1) next to the
  whole-image decode (the default at reuse > 1);
* the device-side cost: `DeviceAugment` (transform, flips, HM, noise) on batches of windows, per
  patch, on this CPU;
* the plain NumPy + PIL + scikit-image loop of the same host-mode steps (1 core).

Prints patches/s (wall clock, and per core = wall / cores) and patches per CPU-second of the
process (the per-core rate of a busy core, robust on a shared machine; the ratios use it), and
``device/host per-core ratio (raw, reuse 4): N.Nx``. The plain loop is single-threaded and measured
per CPU-second too. Asserts nothing about time.

  python bench/bench_pipeline.py [--images 4] [--batches 12] [--plain 12] [--codecs png,raw]
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

import numpy as np
import tensorflow as tf
from PIL import Image
from skimage.transform import rotate

from mammo_tf import config
from mammo_tf.data import patches
from mammo_tf.data import pipeline
from mammo_tf.data import schema
from mammo_tf.models import augment_layer
from tests import tfrecord_factory


def _load():
  la = os.getloadavg()
  return f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {os.cpu_count()} cores"


def bench_pipeline(data_dir, cfg, lut, batches, band_decode=True):
  """(patches per wall second, patches per CPU second of this process) of the host pipeline alone
  (host mode: patches; device mode: windows). The CPU-second rate is the per-core rate of a core
  kept busy, which a shared, overloaded machine does not distort as much as the wall rate."""
  ds = pipeline.make_train_dataset(data_dir, "dbt", "train", cfg, seed=0, hm_lut=lut,
                                   band_decode=band_decode)
  it = iter(ds)
  for _ in range(3):                                  # warm-up: tracing, autotune, prefetch
    next(it)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(batches):
    x, _ = next(it)
  _ = (x["window"] if isinstance(x, dict) else x).numpy()
  dt, dc = time.perf_counter() - t0, time.process_time() - c0
  n = batches * cfg.data.batch_size
  return n / dt, n / dc


def bench_layer(data_dir, cfg, lut, calls=4):
  """Seconds per patch of `DeviceAugment` (transform + flips + HM + noise) on this CPU."""
  cfg = config.override(cfg, {"data.augment_on": "device"})
  x, _ = next(iter(pipeline.make_train_dataset(data_dir, "dbt", "train", cfg, seed=0)))
  layer = augment_layer.for_config(cfg.data, lut)
  fn = tf.function(layer)
  fn(x).numpy()                                       # trace
  t0 = time.perf_counter()
  for _ in range(calls):
    out = fn(x)
  _ = out.numpy()
  return (time.perf_counter() - t0) / (calls * cfg.data.batch_size)


def plain_loop(serialized, cfg, lut, n, seed=0):
  """The same steps one patch at a time: PIL decode, 724 px window, rotate, crop, flip, HM,
  noise."""
  rng = np.random.default_rng(seed)
  p = cfg.data.patch_size
  s = int(math.ceil(p * math.sqrt(2)))                 # 724 for 512
  sigma = cfg.data.translate_std / cfg.data.downsample
  levels = np.arange(4096, dtype=np.float64)
  c0 = time.process_time()
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
  return n / (time.process_time() - c0)            # per CPU-second, like the tf.data figures


def _bench_codec(codec, args, cores, tmp):
  """Per-CPU-second rates of host mode and device mode (whole-image and, raw, row-band decode)
  for one codec, reuse 1 and 4; ``(reuse, "device")`` is the default decode of that reuse."""
  cfg = config.get_config("paper", {"data.num_shards": 2, "data.image_codec": codec})
  t0 = time.perf_counter()
  data_dir = tfrecord_factory.write_dataset(os.path.join(tmp, codec), cfg=cfg,
                                            num_images_per_class=args.images,
                                            domains=("ffdm", "dbt"), splits=("train",),
                                            image_shape=(2048, 1664))
  print(f"wrote {4 * args.images} examples of 2048x1664 ({codec}) in "
        f"{time.perf_counter() - t0:.1f} s")
  lut = pipeline.hm_lut_for(data_dir, "dbt")
  rates = {}
  for reuse in (1, 4):
    for mode, band in (("host", None), ("device", False), ("device", True)):
      if mode == "device" and band and codec != "raw":
        continue                                      # PNG images are always decoded whole
      c = config.override(cfg, {"data.reuse": reuse, "data.augment_on": mode})
      rate, cpu_rate = bench_pipeline(data_dir, c, lut, args.batches, band_decode=band)
      name = mode if band is None else ("device, row-band decode" if band
                                        else "device, whole-image decode")
      rates[(reuse, name)] = cpu_rate
      if mode == "device" and band == (reuse == 1 and codec == "raw"):
        rates[(reuse, "device")] = cpu_rate           # what make_train_dataset picks by default
      print(f"{codec:3s} reuse {reuse} {name:27s} {rate:7.1f} host patches/s "
            f"({rate / cores:6.1f} per core), {cpu_rate:6.1f} per CPU-second; {_load()}")
  per_patch = bench_layer(data_dir, cfg, lut)
  print(f"{codec:3s} DeviceAugment on this CPU (transform + flips + HM + noise, batch "
        f"{cfg.data.batch_size}): {per_patch * 1e3:.2f} ms per patch "
        f"({1 / per_patch:.0f} patches/s); {_load()}")
  return data_dir, lut, cfg, rates


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=4, help="images per class")
  ap.add_argument("--batches", type=int, default=12)
  ap.add_argument("--plain", type=int, default=12, help="patches of the plain loop")
  ap.add_argument("--codecs", default="png,raw", help="comma-separated, from " + str(schema.CODECS))
  args = ap.parse_args()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"TF {tf.__version__}; {_load()}")
  with tempfile.TemporaryDirectory() as tmp:
    results = {}
    for codec in args.codecs.split(","):
      data_dir, lut, cfg, results[codec] = _bench_codec(codec, args, cores, tmp)
    files = tf.io.gfile.glob(schema.shard_pattern(data_dir, "dbt", "train"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(sorted(files))]
    plain, plain_codec = plain_loop(serialized, cfg, lut, args.plain), codec
    print(f"plain NumPy + PIL + skimage loop ({codec}, 1 core): {plain:7.1f} patches per "
          f"CPU-second; {_load()}")
    for codec, rates in results.items():
      for reuse in (1, 4):
        host, dev = rates[(reuse, "host")], rates[(reuse, "device")]
        vs_plain = (f"host mode {host / plain:4.1f}x the plain loop per core; "
                    if codec == plain_codec else "")
        print(f"{codec} reuse {reuse}: {vs_plain}device/host per-core ratio {dev / host:4.1f}x")
        if (reuse, "device, row-band decode") in rates:
          band = rates[(reuse, "device, row-band decode")]
          whole = rates[(reuse, "device, whole-image decode")]
          print(f"{codec} reuse {reuse}: row-band decode / whole-image decode {band / whole:4.2f}x")
    if "raw" in results:
      r = results["raw"]
      print(f"device/host per-core ratio (raw, reuse 4): {r[(4, 'device')] / r[(4, 'host')]:.1f}x"
            f"; device mode {r[(4, 'device')]:.0f} host patches/s per core (per CPU-second)")


if __name__ == "__main__":
  main()
