"""Writes small REAL TFRecord datasets in the converter's output layout, for tests and benchmarks.

Shared test helper (data pipeline, training and evaluation tests reuse it). It does not go through
DICOM: it draws synthetic stored-resolution images with NumPy and writes them with
`mammo_tf.data.schema.encode_example`, exactly as the converter would, into

    <data_dir>/<domain>/<split>-<pos|neg>-NNNNN-of-MMMMM.tfrecord  (cfg.data.num_shards per class)
    <data_dir>/cdf_ffdm.npz, <data_dir>/cdf_dbt.npz                  (mammo_tf.data.cdf.save_cdf)
    <data_dir>/index.json                                             (what was written; tests only)

Images (uint16, 0..4095, background exactly 0):
  * a breast: a half ellipse against the left (or right, by laterality) edge, smooth texture, a
    skin-line fall-off; FFDM and DBT (MIP) have deliberately different intensity distributions
    (MIP brighter and lower-contrast) so histogram matching visibly changes them;
  * positives (labels ``high_risk`` / ``malignant``) carry a bright Gaussian blob lesion inside the
    breast and its finding box ``(ymin, xmin, ymax, xmax)`` in stored pixels, so a patch classifier
    can learn them; negatives (``normal`` / ``benign``) carry no lesion and no box;
  * the breast mask is stored at ``1/cfg.data.mask_downsample`` resolution (a cell is breast when
    any of its pixels is).

Typical use::

    from tests import tfrecord_factory
    cfg = config.get_config("tiny")
    data_dir = tfrecord_factory.write_dataset(tmp_path, cfg=cfg, num_images_per_class=6)
    ds = pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=0)

Everything is deterministic given `seed` (the same call writes byte-identical files).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from scipy import ndimage

from mammo_tf import config as config_lib
from mammo_tf.data import cdf as cdf_lib
from mammo_tf.data import schema

POSITIVE_LABELS = ("malignant", "high_risk")
NEGATIVE_LABELS = ("normal", "benign")


def _hash(*parts) -> str:
  return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:16]


def stored_shape(cfg: config_lib.ExperimentConfig, domain: str) -> tuple[int, int]:
  """Stored (half-resolution) image shape implied by the preset's synthetic geometry."""
  rows, cols = cfg.synthetic.ffdm_shape if domain == "ffdm" else cfg.synthetic.dbt_shape
  ds = cfg.data.downsample
  return rows // ds, cols // ds


def downsample_mask(breast: np.ndarray, factor: int) -> np.ndarray:
  """bool [H, W] -> uint8 [ceil(H/f), ceil(W/f)]: a cell is 1 when any of its pixels is breast."""
  h, w = breast.shape
  hh, ww = -(-h // factor), -(-w // factor)
  padded = np.zeros((hh * factor, ww * factor), bool)
  padded[:h, :w] = breast
  return padded.reshape(hh, factor, ww, factor).any(axis=(1, 3)).astype(np.uint8)


def make_image(rng: np.random.Generator, shape: Sequence[int], domain: str, *,
               lesion: bool, lesion_sigma: float, laterality: str = "L"
               ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float] | None]:
  """One synthetic stored image: (uint16 [H, W], bool breast [H, W], box or None)."""
  h, w = int(shape[0]), int(shape[1])
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  # Half ellipse against the chest wall at x = 0 (flipped afterwards for "R").
  cy = h * rng.uniform(0.45, 0.55)
  ry = h * rng.uniform(0.40, 0.48)
  rx = w * rng.uniform(0.70, 0.90)
  r = np.sqrt(((yy - cy) / ry) ** 2 + (xx / rx) ** 2)
  breast = r < 1.0
  # Smooth texture: low-resolution noise upsampled and blurred (cheap at any size).
  small = rng.standard_normal((max(2, h // 16), max(2, w // 16))).astype(np.float32)
  texture = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
  texture = (texture - texture.mean()) / (texture.std() + 1e-6)
  falloff = np.clip((1.0 - r) * 6.0, 0.0, 1.0)   # skin line
  if domain == "ffdm":
    tissue = 1400.0 + 350.0 * texture
  else:                                           # MIP: brighter, compressed contrast
    tissue = 2500.0 + 150.0 * texture
  img = tissue * (0.55 + 0.45 * falloff)
  box = None
  if lesion:
    # Lesion centre well inside the breast.
    inside = np.argwhere(r < 0.6)
    ly, lx = inside[rng.integers(len(inside))].astype(np.float64)
    ly += rng.uniform(0, 1)
    lx += rng.uniform(0, 1)
    amp = 1300.0 if domain == "ffdm" else 900.0
    img = img + amp * np.exp(-(((yy - ly) ** 2 + (xx - lx) ** 2) / (2.0 * lesion_sigma ** 2)))
    half = 2.0 * lesion_sigma
    box = (float(max(0.0, ly - half)), float(max(0.0, lx - half)),
           float(min(h - 1.0, ly + half)), float(min(w - 1.0, lx + half)))
  img = img + rng.normal(0.0, 8.0, size=img.shape)
  img = np.where(breast, np.clip(np.rint(img), 1, config_lib.MAX_INTENSITY), 0).astype(np.uint16)
  if laterality == "R":
    img, breast = img[:, ::-1].copy(), breast[:, ::-1].copy()
    if box is not None:
      box = (box[0], w - 1.0 - box[3], box[2], w - 1.0 - box[1])
  return img, breast, box


def make_record(rng: np.random.Generator, cfg: config_lib.ExperimentConfig, *, domain: str,
                split: str, label: str, index: int, shape: Sequence[int] | None = None,
                seed: int = 0) -> dict:
  """A record in `schema.encode_example`'s format (see its module docstring)."""
  positive = label in config_lib.POSITIVE_LABELS
  shape = tuple(shape) if shape is not None else stored_shape(cfg, domain)
  laterality = "L" if index % 2 == 0 else "R"
  lesion_sigma = max(1.5, cfg.data.patch_size / 12.0)
  image, breast, box = make_image(rng, shape, domain, lesion=positive,
                                  lesion_sigma=lesion_sigma, laterality=laterality)
  pid = _hash(seed, "patient", domain, split, index // 2, positive)
  return {
      "image": image,
      "mask": downsample_mask(breast, cfg.data.mask_downsample),
      "label": label,
      "box": box,
      "domain": domain,
      "split": split,
      "laterality": laterality,
      "view": "CC" if index % 3 else "MLO",
      "patient": pid,
      "exam": _hash(seed, "exam", pid, index % 2),
      "image_id": _hash(seed, "image", domain, split, label, index),
      "downsample": cfg.data.downsample,
      "mask_downsample": cfg.data.mask_downsample,
  }


def write_dataset(tmp_dir, *, cfg: config_lib.ExperimentConfig, num_images_per_class: int = 6,
                  domains: Iterable[str] = ("ffdm", "dbt"),
                  splits: Iterable[str] = ("train", "val", "test"), seed: int = 0,
                  image_shape: Sequence[int] | None = None, codec: str | None = None,
                  num_shards: int | None = None) -> str:
  """Writes a dataset and returns its directory (``<tmp_dir>/tfrecords``).

  Args:
    tmp_dir: parent folder (e.g. pytest's ``tmp_path``).
    cfg: experiment config; uses ``data.downsample``, ``data.mask_downsample``,
      ``data.patch_size`` (lesion size), ``data.num_shards``, ``data.image_codec`` and the
      synthetic image shapes (stored shape = original shape / downsample).
    num_images_per_class: images per (domain, split, class); classes alternate labels
      (positives malignant/high_risk with a lesion and a box, negatives normal/benign).
    domains, splits: what to write.
    seed: everything is a function of it.
    image_shape: stored (rows, cols) override for every image (e.g. (2048, 1664) for benchmarks).
    codec, num_shards: override cfg.data.image_codec / cfg.data.num_shards.

  ``cdf_<domain>.npz`` is the average c.d.f. (breast pixels) of the domain's *train* images, or of
  all its images when no train split was written.
  """
  data_dir = os.path.join(str(tmp_dir), "tfrecords")
  codec = codec or cfg.data.image_codec
  num_shards = num_shards or cfg.data.num_shards
  index = {"domains": {}, "seed": seed}
  for domain in domains:
    os.makedirs(os.path.join(data_dir, domain), exist_ok=True)
    cdfs, cdfs_all = [], []
    index["domains"][domain] = {}
    for split in splits:
      index["domains"][domain][split] = {}
      for positive in (True, False):
        labels = POSITIVE_LABELS if positive else NEGATIVE_LABELS
        shards: list[list[bytes]] = [[] for _ in range(num_shards)]
        ids = []
        for i in range(num_images_per_class):
          rng = np.random.default_rng([seed, config_lib.DOMAINS.index(domain),
                                       config_lib.SPLITS.index(split), int(positive), i])
          rec = make_record(rng, cfg, domain=domain, split=split, label=labels[i % 2],
                            index=i, shape=image_shape, seed=seed)
          breast_cdf = cdf_lib.image_cdf(rec["image"], rec["image"] > 0)
          cdfs_all.append(breast_cdf)
          if split == "train":
            cdfs.append(breast_cdf)
          shards[i % num_shards].append(schema.encode_example(rec, codec))
          ids.append(rec["image_id"])
        for s, examples in enumerate(shards):
          path = os.path.join(data_dir, domain, schema.shard_name(split, positive, s, num_shards))
          with tf.io.TFRecordWriter(path) as w:
            for ex in examples:
              w.write(ex)
        index["domains"][domain][split]["pos" if positive else "neg"] = ids
    avg = cdf_lib.average_cdf(cdfs or cdfs_all)
    cdf_lib.save_cdf(schema.cdf_path(data_dir, domain), avg, domain=domain,
                     num_images=len(cdfs or cdfs_all))
  with open(os.path.join(data_dir, "index.json"), "w") as f:
    json.dump(index, f, indent=1, sort_keys=True)
  return data_dir
