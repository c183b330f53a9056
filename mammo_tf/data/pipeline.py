"""tf.data input pipelines: class-balanced augmented training patches and evaluation patches.

Training (paper §2.2-2.3, docs/DESIGN.md), built for one epoch of a run and continuing after it::

  per class: an endless stream of passes; pass p reads every shard of the class once, front to
             back, in a stateless seeded order of (seed, p); epoch e is the run of that stream
             at positions [(e-1) n, e n) -> (shard, skip, take) segments -> parallel interleave
             -> each run of cfg.data.shuffle_buffer records permuted (stateless, (seed, e, run))
  choose_from_datasets([pos, neg]): exactly half of each epoch's images positive, seeded order
  zip with a counter k                                           # image index in the run
  map: decode (parallel, ordered); each decoded image handed to cfg.data.reuse patch calls
  map: centre rule + augmentation + ONE projective transform -> HistogramMatching (optional)
       -> Gaussian noise                                            (parallel, ordered)
  [reuse > 1: a small seeded shuffle so a batch mixes images]
  batch(cfg.data.batch_size, drop_remainder=True) -> prefetch

Coverage: every record of a class is drawn once before any is drawn twice, whatever the number
or size of the shards, and epochs continue where the previous one stopped (docs/ARCHITECTURE.md,
"Training-stream coverage"). Positions are computed from per-shard record counts (read from the
TFRecord length headers once per process), so epoch e is a function of (seed, e) alone: the
trainer rebuilds the dataset per epoch and a run resumed after a kill replays the same records.
Only the first segment of an epoch starts inside a shard (`skip` reads that shard's prefix).

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
from mammo_tf.data import writer

AUTOTUNE = tf.data.AUTOTUNE

# Seed offsets of the independent random streams of one run.
_FILES_POS, _FILES_NEG, _SHUFFLE_POS, _SHUFFLE_NEG, _SAMPLE, _EXAMPLES, _REUSE_SHUFFLE = range(7)


def steps_per_epoch(cfg) -> int:
  """Batches per epoch: cfg.data.samples_per_epoch // cfg.data.batch_size."""
  return max(1, cfg.data.samples_per_epoch // cfg.data.batch_size)


def _stream_seed(seed: int, stream: int) -> int:
  return (int(seed) * 1_000_003 + 7919 * (stream + 1)) % (2 ** 31 - 1)


class MissingSplitError(ValueError):
  """A (domain, split) has no shard of a class the caller needs (one line, names the split)."""


def _shard_files(data_dir: str, domain: str, split: str, positive: bool | None) -> list[str]:
  pattern = schema.shard_pattern(data_dir, domain, split, positive)
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"no TFRecord shards match {pattern}")
  if all(tf.io.gfile.stat(f).length == 0 for f in files):
    raise ValueError(f"every shard matching {pattern} is empty (no examples)")
  return files


def require_split(data_dir: str, domain: str, split: str, *, both_classes: bool) -> None:
  """Checks before any work that a split exists (and holds both classes when asked).

  Raises:
    MissingSplitError: one line naming the domain, the split and the missing class(es), e.g.
      ``dbt/val has no positive images``; callers turn it into an exit status 2 message.
  """
  missing = []
  for positive in (True, False):
    pattern = schema.shard_pattern(data_dir, domain, split, positive)
    if not any(_record_counts(tuple(sorted(tf.io.gfile.glob(pattern))))):
      missing.append("positive" if positive else "negative")
  if len(missing) == 2:
    raise MissingSplitError(f"{domain}/{split} has no images in {data_dir} (the converter's "
                            "patient split left it empty; see its summary.json)")
  if missing and both_classes:
    raise MissingSplitError(f"{domain}/{split} has no {missing[0]} images in {data_dir}: it needs "
                            "both classes (too few patients of that class for the split; convert "
                            "more data or change data.split_fractions)")


_COUNT_CACHE: dict[tuple, int] = {}


def _count_records(path: str) -> int:
  """`writer.count_records`, cached per process by (path, size, mtime)."""
  st = tf.io.gfile.stat(path)
  key = (path, st.length, st.mtime_nsec)
  if key not in _COUNT_CACHE:
    _COUNT_CACHE[key] = writer.count_records(path)
  return _COUNT_CACHE[key]


def _record_counts(files: tuple[str, ...]) -> list[int]:
  return [_count_records(f) for f in files]


def images_per_epoch(cfg) -> int:
  """Decoded images of one epoch: steps * batch patches, `reuse` patches per image."""
  reuse = max(1, int(cfg.data.reuse))
  return -(-steps_per_epoch(cfg) * cfg.data.batch_size // reuse)


def _pass_order(seed: int, num_files: int, pass_index) -> tf.Tensor:
  """Shard order of one pass over a class: a stateless permutation of (seed, pass)."""
  keys = tf.random.stateless_uniform([num_files], seed=tf.stack([tf.constant(seed, tf.int64),
                                                                 pass_index]),
                                     minval=None, maxval=None, dtype=tf.int64)
  return tf.argsort(keys, stable=True)


def _window_shuffle(ds: tf.data.Dataset, window: int, seed: int, epoch) -> tf.data.Dataset:
  """Shuffles each run of `window` consecutive elements by a stateless permutation of
  (seed, epoch, window index). Unlike `Dataset.shuffle` it takes a tensor epoch without touching
  the global seed (a tensor op seed next to ``tf.random.set_seed(0)`` fails to trace)."""
  def permute(index, block):
    keys = tf.random.stateless_uniform(
        tf.shape(block)[:1], seed=tf.stack([tf.constant(seed, tf.int64) * 7_919 + epoch, index]),
        minval=None, maxval=None, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices(tf.gather(block, tf.argsort(keys, stable=True)))
  return ds.batch(window).enumerate().flat_map(permute)


def _class_epoch(files, counts, per_epoch, cfg, seed, files_stream, shuffle_stream, deterministic):
  """epoch -> the records at positions [(epoch-1) n, epoch n) of the class's endless stream.

  The stream is pass after pass over every record of the class; pass p reads the shards in the
  order ``_pass_order(seed, p)``, each shard front to back. An epoch is a contiguous run of that
  stream, cut into (shard, skip, take) segments, read by a parallel interleave and shuffled in
  windows of ``cfg.data.shuffle_buffer`` records (`_window_shuffle`).
  """
  names = tf.constant(files)
  sizes = tf.constant(counts, tf.int64)
  total = int(sum(counts))
  n = int(per_epoch)
  pass_seed = _stream_seed(seed, files_stream)

  def segments(epoch, t0, t1):
    def of_pass(p):
      order = _pass_order(pass_seed, len(files), p)
      cnt = tf.gather(sizes, order)
      end = p * total + tf.cumsum(cnt)
      start = end - cnt
      lo, hi = tf.maximum(start, t0), tf.minimum(end, t1)
      return tf.data.Dataset.from_tensor_slices(
          (tf.gather(names, order), lo - start, hi - lo)).filter(lambda f, s, t: t > 0)
    return tf.data.Dataset.range(t0 // total, (t1 - 1) // total + 1).flat_map(of_pass)

  def fn(epoch):
    t0 = (epoch - 1) * n
    ds = segments(epoch, t0, t0 + n).interleave(
        lambda f, s, t: tf.data.TFRecordDataset(f).skip(s).take(t),
        cycle_length=min(len(files), 8), block_length=1, num_parallel_calls=AUTOTUNE,
        deterministic=deterministic)
    return _window_shuffle(ds, max(1, cfg.data.shuffle_buffer), _stream_seed(seed, shuffle_stream),
                           epoch)

  return fn


def _class_choices(n_pos: int, n_neg: int, seed: int):
  """epoch -> 0 (positive) / 1 (negative) per image: n_pos zeros, n_neg ones, in a seeded order."""
  values = tf.constant([0] * n_pos + [1] * n_neg, tf.int64)

  def fn(epoch):
    keys = tf.random.stateless_uniform([n_pos + n_neg], seed=tf.stack([tf.constant(seed, tf.int64),
                                                                       epoch]),
                                       minval=None, maxval=None, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices(tf.gather(values, tf.argsort(keys, stable=True)))

  return fn


def train_records(data_dir: str, domain: str, split: str, cfg, seed: int, *, epoch: int = 1,
                  deterministic: bool = True) -> tf.data.Dataset:
  """The training stream from the start of `epoch` on: endless ``(k, serialized example)``.

  Each epoch holds ``images_per_epoch(cfg)`` images, exactly half positive (odd: one more
  negative) in a seeded order; k is the image's index in the run (``(epoch-1) * images + i``).
  Each class is read as an endless stream of passes: a pass reaches every record of the class
  once (shards in a fresh seeded order), and an epoch continues where the previous one stopped.
  Everything is a function of (seed, epoch), so a restarted epoch replays the same records.
  """
  epoch = int(epoch)
  if epoch < 1:
    raise ValueError(f"epoch must be >= 1, got {epoch}")
  per_epoch = images_per_epoch(cfg)
  n_pos = per_epoch // 2
  n_neg = per_epoch - n_pos
  streams = []
  for positive, n, files_stream, shuffle_stream in ((True, n_pos, _FILES_POS, _SHUFFLE_POS),
                                                    (False, n_neg, _FILES_NEG, _SHUFFLE_NEG)):
    files = _shard_files(data_dir, domain, split, positive)
    counts = _record_counts(tuple(files))
    if not sum(counts):
      pattern = schema.shard_pattern(data_dir, domain, split, positive)
      raise ValueError(f"every shard matching {pattern} is empty (no examples)")
    fn = _class_epoch(files, counts, n, cfg, seed, files_stream, shuffle_stream, deterministic)
    streams.append(tf.data.Dataset.counter(start=epoch).flat_map(fn))
  choice = tf.data.Dataset.counter(start=epoch).flat_map(
      _class_choices(n_pos, n_neg, _stream_seed(seed, _SAMPLE)))
  ds = tf.data.Dataset.choose_from_datasets(streams, choice)
  return tf.data.Dataset.zip(tf.data.Dataset.counter(start=(epoch - 1) * per_epoch), ds)


def _hm_layer(hm_lut):
  if hm_lut is None:
    return None
  from mammo_tf.models.preprocessing import HistogramMatching
  if isinstance(hm_lut, HistogramMatching):
    return hm_lut
  return HistogramMatching(hm_lut, name="hm")


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
                       epoch: int = 1, hm_lut=None, deterministic: bool = True,
                       band_decode: bool | None = None) -> tf.data.Dataset:
  """Endless class-balanced batches ``(patch float32 [B, P, P, 1] 12-bit, label float32 [B])``.

  With ``cfg.data.augment_on == "device"`` the elements are ``(windows dict, label)`` instead
  (`_device_train_batches`): `hm_lut` is then not applied here but by the train step's
  `mammo_tf.models.augment_layer.DeviceAugment`, and `band_decode` (None: when ``data.reuse``
  is 1) decodes only the window's rows of raw-codec images instead of whole images.

  The first `steps_per_epoch(cfg)` batches are epoch `epoch`; later ones continue into the next
  epochs. The trainer rebuilds the dataset per epoch with the same `seed` and the epoch number,
  which gives the same batches as one continuous stream would, so a resumed run is identical.

  Args:
    data_dir: converter output folder (``<data_dir>/<domain>/<split>-<pos|neg>-*.tfrecord``).
    domain, split: which shards.
    cfg: ExperimentConfig (geometry, augmentation, batch size, reuse, shuffle buffer).
    seed: run seed; every random choice derives from it (and from the epoch).
    epoch: first epoch of the stream (1-based).
    hm_lut: optional histogram-matching table (float [4096]) or `HistogramMatching` layer,
      applied after the geometric transform and before the noise.
    deterministic: keep element order (and so exact batches) reproducible.

  Raises:
    FileNotFoundError: no shard of one class (the message names the glob pattern).
  """
  hm = _hm_layer(hm_lut)
  ds = train_records(data_dir, domain, split, cfg, seed, epoch=epoch, deterministic=deterministic)
  if cfg.data.augment_on == "device":
    return _device_train_batches(ds, cfg, seed, epoch, deterministic, band_decode)
  ds = ds.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  reuse = max(1, int(cfg.data.reuse))
  # Each decoded image is handed to `reuse` patch calls (the tensor is shared, not copied), so
  # patches are cut in parallel whatever the reuse.
  ds = ds.flat_map(lambda k, ex: tf.data.Dataset.from_tensors((k, ex)).repeat(reuse).enumerate()
                   .map(lambda r, kex: (kex[0], tf.cast(r, tf.int64), kex[1])))
  ds = ds.map(_train_patch(cfg, _stream_seed(seed, _EXAMPLES), hm),
              num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if reuse > 1:   # mix the patches of several images in a batch
    ds = ds.shuffle(max(cfg.data.batch_size, 2 * reuse),
                    seed=_stream_seed(_stream_seed(seed, _REUSE_SHUFFLE), epoch))
  ds = ds.batch(cfg.data.batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
  options = tf.data.Options()
  options.deterministic = deterministic
  return ds.prefetch(AUTOTUNE).with_options(options)


def _device_train_batches(records, cfg, seed, epoch, deterministic, band_decode):
  """``data.augment_on == "device"``: windows + augmentation parameters instead of patches.

  Same record stream, example seeds and reuse shuffle as the `host` stages above, so
  ``DeviceAugment`` of these batches equals the `host` batches (see `mammo_tf.data.windows`).
  """
  from mammo_tf.data import windows
  return windows.device_batches(
      records, cfg, _stream_seed(seed, _EXAMPLES),
      _stream_seed(_stream_seed(seed, _REUSE_SHUFFLE), epoch),
      deterministic=deterministic, band_decode=band_decode)


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
  from mammo_tf.data import cdf
  return cdf.lut_from_files(schema.cdf_path(data_dir, src_domain),
                            schema.cdf_path(data_dir, ref_domain))


