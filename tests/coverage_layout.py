"""A converter-layout training set of many tiny images, for coverage tests and bench_coverage.

The shards are planned and written by the converter's own writer (`writer.shard_counts`,
`writer.plan_shards`, `writer.write_all`):
``<out>/<domain>/train-<pos|neg>-NNNNN-of-MMMMM.tfrecord``
sized by ``shard_size_mb``, records sorted by image hash inside a shard. Images are 8 x 8 (stored)
so that tens of thousands of records take seconds to write and to read.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from mammo_tf.data import schema
from mammo_tf.data import writer


def image_hash(domain: str, index: int) -> str:
  return hashlib.sha256(f"{domain}/{index}".encode()).hexdigest()[:32]


def _example(domain: str, index: int, positive: bool) -> bytes:
  rng = np.random.default_rng(index)
  record = {
      "image": rng.integers(1, 4096, (8, 8)).astype(np.uint16),
      "mask": np.ones((2, 2), np.uint8), "mask_downsample": 4, "downsample": 2,
      "label": "malignant" if positive else "normal",
      "box": (1.0, 1.0, 6.0, 6.0) if positive else None,
      "domain": domain, "split": "train",
      "patient": f"p{index}", "exam": f"e{index}", "image_id": image_hash(domain, index),
  }
  return schema.encode_example(record, "png")


def write_layout(out_dir: str, num_neg: int, num_pos: int, *, domain: str = "ffdm",
                 shard_size_mb: float = 0.25) -> dict[str, int]:
  """Writes the training shards of one domain; returns ``{"pos": shards, "neg": shards}``."""
  examples, items = {}, []
  for i in range(num_neg + num_pos):
    positive = i >= num_neg
    key = f"k{i}"
    examples[key] = _example(domain, i, positive)
    items.append((domain, "train", positive, image_hash(domain, i), key))
  counts = writer.shard_counts(((d, s, p, len(examples[k])) for d, s, p, _, k in items),
                               shard_size_mb=shard_size_mb)
  plan = writer.plan_shards(items, counts)
  writer.write_all(out_dir, plan, os.path.join(out_dir, ".cache", "shards"), examples.__getitem__)
  return {"pos": counts.get((domain, "train", True), 0),
          "neg": counts.get((domain, "train", False), 0)}
