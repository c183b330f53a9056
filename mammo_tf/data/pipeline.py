"""tf.data input pipelines: class-balanced augmented training patches and evaluation patches.

Training (paper §2.2-2.3, DESIGN §5)::

  per class: shard files (shuffled, seeded) -> repeat -> parallel interleave of TFRecordDatasets
             -> shuffle(cfg.data.shuffle_buffer, seeded)
  sample_from_datasets([pos, neg], weights=[0.5, 0.5], seed)     # balanced, infinite
  zip with a counter k                                           # example index, across epochs
  map: decode (parallel, ordered); each decoded image handed to cfg.data.reuse patch calls
  map: centre rule + augmentation + ONE projective transform -> HistogramMatching (optional)
       -> Gaussian noise                                            (parallel, ordered)
  [reuse > 1: a small seeded shuffle so a batch mixes images]
  batch(cfg.data.batch_size, drop_remainder=True) -> prefetch

Every random draw of example k comes from ``stateless_fold_in((seed, k))`` (and the patch index
for reuse), so the same seed yields identical batches and another seed different ones.
``deterministic=False`` lets the parallel stages return elements out of order (faster, not
reproducible). An epoch is `steps_per_epoch(cfg)` batches (cfg.data.samples_per_epoch samples),
not a pass over the data.

Evaluation: every image of the split once, in shard-file order, one un-augmented patch each; the
in-mask centre (images without a finding box) is drawn from (seed, image_id), so it does not depend
on the order or on the other images.
"""

from __future__ import annotations

import tensorflow as tf

from mammo_tf.data import augment
from mammo_tf.data import schema

AUTOTUNE = tf.data.AUTOTUNE

# Seed offsets of the independent random streams of one run.
_FILES_POS, _FILES_NEG, _SHUFFLE_POS, _SHUFFLE_NEG, _SAMPLE, _EXAMPLES, _REUSE_SHUFFLE = range(7)


def steps_per_epoch(cfg) -> int:
  """Batches per epoch: cfg.data.samples_per_epoch // cfg.data.batch_size."""
  return max(1, cfg.data.samples_per_epoch // cfg.data.batch_size)


def _stream_seed(seed: int, stream: int) -> int:
  return (int(seed) * 1_000_003 + 7919 * (stream + 1)) % (2 ** 31 - 1)


def _shard_files(data_dir: str, domain: str, split: str, positive: bool | None) -> list[str]:
  pattern = schema.shard_pattern(data_dir, domain, split, positive)
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"no TFRecord shards match {pattern}")
  if all(tf.io.gfile.stat(f).length == 0 for f in files):
    raise ValueError(f"every shard matching {pattern} is empty (no examples)")
  return files


def _hm_layer(hm_lut):
  if hm_lut is None:
    return None
  from mammo_tf.models.preprocessing import HistogramMatching  # pylint: disable=g-import-not-at-top
  if isinstance(hm_lut, HistogramMatching):
    return hm_lut
  return HistogramMatching(hm_lut, name="hm")


def _class_stream(files, cfg, seed, files_stream, shuffle_stream, deterministic):
  ds = tf.data.Dataset.from_tensor_slices(files)
  ds = ds.shuffle(len(files), seed=_stream_seed(seed, files_stream), reshuffle_each_iteration=True)
  ds = ds.repeat()
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8), block_length=1,
                     num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  return ds.shuffle(cfg.data.shuffle_buffer, seed=_stream_seed(seed, shuffle_stream),
                    reshuffle_each_iteration=True)


_DECODED_KEYS = ("image", "mask", "mask_downsample", "box", "has_box", "label")


def _decode(index, serialized):
  ex = schema.decode_example(serialized)
  return index, {k: ex[k] for k in _DECODED_KEYS}


def _train_patch(cfg, seed, hm):
  """(image index k, patch index r, decoded example) -> (patch, label); seed from (seed, k, r)."""
  data_cfg = cfg.data

  def fn(index, r, ex):
    s = augment.example_seed(seed, index)
    if data_cfg.reuse > 1:
      s = augment.example_seed(s[0], s[1], r)
    patch = augment.make_patch(ex["image"], ex["mask"], ex["mask_downsample"], ex["box"],
                               ex["has_box"], s, data_cfg, train=True, hm=hm)
    return patch, tf.cast(ex["label"], tf.float32)

  return fn


def make_train_dataset(data_dir: str, domain: str, split: str, cfg, seed: int, *,
                       hm_lut=None, deterministic: bool = True) -> tf.data.Dataset:
  """Infinite class-balanced batches ``(patch float32 [B, P, P, 1] 12-bit, label float32 [B])``.

  Args:
    data_dir: converter output folder (``<data_dir>/<domain>/<split>-<pos|neg>-*.tfrecord``).
    domain, split: which shards.
    cfg: ExperimentConfig (geometry, augmentation, batch size, reuse, shuffle buffer).
    seed: run seed; every random choice derives from it.
    hm_lut: optional histogram-matching table (float [4096]) or `HistogramMatching` layer,
      applied after the geometric transform and before the noise.
    deterministic: keep element order (and so exact batches) reproducible.

  Raises:
    FileNotFoundError: no shard of one class (the message names the glob pattern).
  """
  pos_files = _shard_files(data_dir, domain, split, True)
  neg_files = _shard_files(data_dir, domain, split, False)
  hm = _hm_layer(hm_lut)
  pos = _class_stream(pos_files, cfg, seed, _FILES_POS, _SHUFFLE_POS, deterministic)
  neg = _class_stream(neg_files, cfg, seed, _FILES_NEG, _SHUFFLE_NEG, deterministic)
  ds = tf.data.Dataset.sample_from_datasets([pos, neg], weights=[0.5, 0.5],
                                            seed=_stream_seed(seed, _SAMPLE))
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
  ds = ds.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  reuse = max(1, int(cfg.data.reuse))
  # Each decoded image is handed to `reuse` patch calls (the tensor is shared, not copied), so
  # patches are cut in parallel whatever the reuse.
  ds = ds.flat_map(lambda k, ex: tf.data.Dataset.from_tensors((k, ex)).repeat(reuse).enumerate()
                   .map(lambda r, kex: (kex[0], tf.cast(r, tf.int64), kex[1])))
  ds = ds.map(_train_patch(cfg, _stream_seed(seed, _EXAMPLES), hm),
              num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if reuse > 1:   # mix the patches of several images in a batch
    ds = ds.shuffle(max(cfg.data.batch_size, 2 * reuse), seed=_stream_seed(seed, _REUSE_SHUFFLE))
  ds = ds.batch(cfg.data.batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
  options = tf.data.Options()
  options.deterministic = deterministic
  return ds.prefetch(AUTOTUNE).with_options(options)


def eval_seed(seed: int, image_id) -> tf.Tensor:
  """Stateless seed of an image's evaluation patch: a function of (seed, image_id) only."""
  key = tf.strings.to_hash_bucket_fast(tf.convert_to_tensor(image_id, tf.string), 2 ** 62)
  return augment.example_seed(seed, key)


def _eval_patch(cfg, seed, hm):
  data_cfg = cfg.data

  def fn(serialized):
    ex = schema.decode_example(serialized)
    s = eval_seed(seed, ex["image_id"])
    patch = augment.make_patch(ex["image"], ex["mask"], ex["mask_downsample"], ex["box"],
                               ex["has_box"], s, data_cfg, train=False, hm=hm)
    return {"patch": patch, "label": tf.cast(ex["label"], tf.float32),
            "label_class": ex["label_class"], "image_id": ex["image_id"],
            "patient": ex["patient"]}

  return fn


def make_eval_dataset(data_dir: str, domain: str, split: str, cfg, seed: int, *,
                      hm_lut=None) -> tf.data.Dataset:
  """Finite batches of dicts ``{"patch", "label", "label_class", "image_id", "patient"}``.

  One un-augmented patch (float32 [P, P, 1], 12-bit units, exact stored pixels) per image, in a
  fixed order (sorted shard files, records in file order), batched by cfg.data.eval_batch_size
  (last batch may be smaller). `label` is float32 0/1, `label_class` int32 index into
  config.LABELS. The random in-mask centre of an image without a box depends only on
  (seed, image_id).
  """
  files = _shard_files(data_dir, domain, split, None)
  hm = _hm_layer(hm_lut)
  ds = tf.data.TFRecordDataset(files)
  ds = ds.map(_eval_patch(cfg, seed, hm), num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.batch(cfg.data.eval_batch_size).prefetch(AUTOTUNE)


def hm_lut_for(data_dir: str, src_domain: str, ref_domain: str = "ffdm"):
  """The HM table `cdf_<src>.npz` -> `cdf_<ref>.npz` of a converter output folder."""
  from mammo_tf.data import cdf  # pylint: disable=g-import-not-at-top
  return cdf.lut_from_files(schema.cdf_path(data_dir, src_domain),
                            schema.cdf_path(data_dir, ref_domain))


