"""The one definition of the TFRecord example format (docs/DESIGN.md, TFRecords).

Writers call `encode_example(record)`; readers call `decode_example(serialized)` (tf, usable inside
``tf.data.Dataset.map``) or `decode_example_numpy` (tests, tools). Feature keys live here only.

A *record* is a plain dict of NumPy/Python values:

=================  =============================================================================
key                value
=================  =============================================================================
image              uint16 [H, W] in 0..4095, stored resolution (original / downsample)
mask               uint8/bool [h, w] breast mask at stored / mask_downsample resolution
label              one of config.LABELS
box                (ymin, xmin, ymax, xmax) float stored-pixel EDGES (pixel i spans [i, i + 1), so
                   an original (x, y, w, h) box is y / f .. (y + h) / f), or None
domain             "ffdm" | "dbt"
split              "train" | "val" | "test"
laterality, view   strings ("" when unknown)
patient, exam,     salted hashes (hex strings); raw identifiers never reach a record
image_id
downsample         int, stored = original / downsample
mask_downsample    int, mask = stored / mask_downsample
=================  =============================================================================
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from mammo_tf import config as config_lib

SCHEMA_VERSION = 1

# Feature keys.
IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
DOWNSAMPLE = "image/downsample"
MASK = "mask/encoded"
MASK_HEIGHT = "mask/height"
MASK_WIDTH = "mask/width"
MASK_DOWNSAMPLE = "mask/downsample"
LABEL = "label/binary"
LABEL_CLASS = "label/class"
BOX = "roi/box"
HAS_BOX = "roi/has_box"
DOMAIN = "meta/domain"
SPLIT = "meta/split"
LATERALITY = "meta/laterality"
VIEW = "meta/view"
PATIENT = "id/patient"
EXAM = "id/exam"
IMAGE_ID = "id/image"
VERSION = "schema/version"

CODECS = ("png", "raw")
# zlib level of the PNG-16 codec: level 1 is 5-7x faster to write than 6 on 2048x1664 images
# for files about 10% larger (bench/bench_convert.py); decoding speed is the same.
PNG_COMPRESSION = 1
NO_BOX = (-1.0, -1.0, -1.0, -1.0)

FEATURES = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    DOWNSAMPLE: tf.io.FixedLenFeature([], tf.int64),
    MASK: tf.io.FixedLenFeature([], tf.string),
    MASK_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    MASK_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    MASK_DOWNSAMPLE: tf.io.FixedLenFeature([], tf.int64),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    LABEL_CLASS: tf.io.FixedLenFeature([], tf.int64),
    BOX: tf.io.FixedLenFeature([4], tf.float32),
    HAS_BOX: tf.io.FixedLenFeature([], tf.int64),
    DOMAIN: tf.io.FixedLenFeature([], tf.string),
    SPLIT: tf.io.FixedLenFeature([], tf.string),
    LATERALITY: tf.io.FixedLenFeature([], tf.string),
    VIEW: tf.io.FixedLenFeature([], tf.string),
    PATIENT: tf.io.FixedLenFeature([], tf.string),
    EXAM: tf.io.FixedLenFeature([], tf.string),
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
    VERSION: tf.io.FixedLenFeature([], tf.int64),
}


def binary_label(label: str) -> int:
  """1 for high_risk or malignant (paper §2.1), 0 for normal or benign."""
  if label not in config_lib.LABELS:
    raise ValueError(f"unknown label {label!r}; expected one of {config_lib.LABELS}")
  return int(label in config_lib.POSITIVE_LABELS)


def _bytes(v: bytes | str) -> tf.train.Feature:
  if isinstance(v, str):
    v = v.encode("utf-8")
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def _floats(v) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in v]))


def encode_image(image: np.ndarray, codec: str = "png") -> bytes:
  """uint16 [H, W] -> bytes (PNG-16, or little-endian raw uint16)."""
  image = np.asarray(image)
  if image.dtype != np.uint16 or image.ndim != 2:
    raise ValueError(f"image must be a 2-D uint16 array, got {image.dtype} {image.shape}")
  if codec == "png":
    return tf.io.encode_png(image[..., None], compression=PNG_COMPRESSION).numpy()
  if codec == "raw":
    return image.astype("<u2").tobytes()
  raise ValueError(f"unknown image codec {codec!r}; expected one of {CODECS}")


def encode_mask(mask: np.ndarray) -> bytes:
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
  return tf.io.encode_png((mask > 0).astype(np.uint8)[..., None],
                          compression=PNG_COMPRESSION).numpy()


def encode_example(record: Mapping[str, Any], codec: str = "png") -> bytes:
  """Serialises one record (see module docstring) to a tf.train.Example."""
  image = np.asarray(record["image"])
  mask = np.asarray(record["mask"])
  box = record.get("box")
  label = record["label"]
  feature = {
      IMAGE: _bytes(encode_image(image, codec)),
      IMAGE_FORMAT: _bytes(codec),
      HEIGHT: _int(image.shape[0]),
      WIDTH: _int(image.shape[1]),
      DOWNSAMPLE: _int(record.get("downsample", 2)),
      MASK: _bytes(encode_mask(mask)),
      MASK_HEIGHT: _int(mask.shape[0]),
      MASK_WIDTH: _int(mask.shape[1]),
      MASK_DOWNSAMPLE: _int(record.get("mask_downsample", 1)),
      LABEL: _int(binary_label(label)),
      LABEL_CLASS: _int(config_lib.LABELS.index(label)),
      BOX: _floats(NO_BOX if box is None else box),
      HAS_BOX: _int(box is not None),
      DOMAIN: _bytes(record["domain"]),
      SPLIT: _bytes(record["split"]),
      LATERALITY: _bytes(record.get("laterality", "") or ""),
      VIEW: _bytes(record.get("view", "") or ""),
      PATIENT: _bytes(record["patient"]),
      EXAM: _bytes(record["exam"]),
      IMAGE_ID: _bytes(record["image_id"]),
      VERSION: _int(SCHEMA_VERSION),
  }
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
  """Parses features without decoding the image (cheap; for filtering and metadata)."""
  return tf.io.parse_single_example(serialized, FEATURES)


def decode_image(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Decodes the stored image to uint16 [H, W, 1] whatever the codec."""
  height = tf.cast(features[HEIGHT], tf.int32)
  width = tf.cast(features[WIDTH], tf.int32)
  fmt = features[IMAGE_FORMAT]
  encoded = features[IMAGE]

  def _png():
    return tf.io.decode_png(encoded, channels=1, dtype=tf.uint16)

  def _raw():
    return tf.reshape(tf.io.decode_raw(encoded, tf.uint16, little_endian=True),
                      [height, width, 1])

  image = tf.cond(tf.equal(fmt, b"raw"), _raw, _png)
  return tf.ensure_shape(tf.reshape(image, [height, width, 1]), [None, None, 1])


def decode_mask(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Decodes the breast mask to uint8 [h, w, 1] with values 0/1."""
  mask = tf.io.decode_png(features[MASK], channels=1, dtype=tf.uint8)
  return tf.ensure_shape(mask, [None, None, 1])


def decode_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
  """Serialised example -> dict of tensors (graph-friendly, for tf.data.map).

  Keys: image (uint16 [H,W,1]), mask (uint8 [h,w,1]), label (int32 0/1), label_class (int32),
  box (float32 [4], ymin xmin ymax xmax in stored pixels), has_box (bool), downsample,
  mask_downsample (int32), domain, split, laterality, view, patient, exam, image_id (string).
  """
  f = parse_example(serialized)
  return {
      "image": decode_image(f),
      "mask": decode_mask(f),
      "label": tf.cast(f[LABEL], tf.int32),
      "label_class": tf.cast(f[LABEL_CLASS], tf.int32),
      "box": f[BOX],
      "has_box": tf.cast(f[HAS_BOX], tf.bool),
      "downsample": tf.cast(f[DOWNSAMPLE], tf.int32),
      "mask_downsample": tf.cast(f[MASK_DOWNSAMPLE], tf.int32),
      "domain": f[DOMAIN],
      "split": f[SPLIT],
      "laterality": f[LATERALITY],
      "view": f[VIEW],
      "patient": f[PATIENT],
      "exam": f[EXAM],
      "image_id": f[IMAGE_ID],
      "version": tf.cast(f[VERSION], tf.int32),
  }


def decode_example_numpy(serialized: bytes) -> dict[str, Any]:
  """Like `decode_example` but returns a record in the writer's format (NumPy, str)."""
  t = decode_example(tf.constant(serialized))
  version = int(t["version"])
  if version != SCHEMA_VERSION:
    raise ValueError(f"schema version {version} != supported {SCHEMA_VERSION}")
  s = lambda k: t[k].numpy().decode("utf-8")
  return {
      "image": t["image"].numpy()[..., 0],
      "mask": t["mask"].numpy()[..., 0],
      "label": config_lib.LABELS[int(t["label_class"])],
      "box": tuple(float(x) for x in t["box"].numpy()) if bool(t["has_box"]) else None,
      "domain": s("domain"),
      "split": s("split"),
      "laterality": s("laterality"),
      "view": s("view"),
      "patient": s("patient"),
      "exam": s("exam"),
      "image_id": s("image_id"),
      "downsample": int(t["downsample"]),
      "mask_downsample": int(t["mask_downsample"]),
  }


def shard_name(split: str, positive: bool, index: int, num_shards: int) -> str:
  """`<split>-<pos|neg>-00003-of-00016.tfrecord` (docs/DESIGN.md); lives under `<out>/<domain>/`."""
  return f"{split}-{'pos' if positive else 'neg'}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(data_dir: str, domain: str, split: str, positive: bool | None = None) -> str:
  """Glob pattern of the shards of one domain/split (optionally one class)."""
  cls = "*" if positive is None else ("pos" if positive else "neg")
  return f"{data_dir}/{domain}/{split}-{cls}-*-of-*.tfrecord"


def cdf_path(data_dir: str, domain: str) -> str:
  return f"{data_dir}/cdf_{domain}.npz"
