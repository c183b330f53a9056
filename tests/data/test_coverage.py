"""Training-stream coverage: every record of a class is drawn before any is drawn twice.

Uniform sampling with replacement reaches ``N (1 - (1 - 1/N)^D)`` distinct records in D draws
(the reference); the stream must reach ``min(D, N)`` (each pass over the class is complete), and
epochs rebuilt from (seed, epoch) must continue the stream exactly.
"""
import collections

import pytest
import tensorflow as tf

from mammo_tf import config
from mammo_tf.data import pipeline
from mammo_tf.data import schema
from tests import coverage_layout

NUM_NEG, NUM_POS = 240, 24


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("coverage"))
  shards = coverage_layout.write_layout(out, NUM_NEG, NUM_POS, shard_size_mb=4000 / 2 ** 20)
  assert shards["neg"] >= 2
  return out


def _cfg(**extra):
  # 40 images per epoch: 20 negatives, 20 positives (the small case: buffer 16).
  return config.get_config("tiny", {"data.batch_size": 8, "data.samples_per_epoch": 40,
                                    "data.shuffle_buffer": 16, **extra})


def _epoch_ids(data_dir, cfg, seed, epoch):
  """What the trainer draws in `epoch`: the stream rebuilt for that epoch, one epoch long."""
  ds = pipeline.train_records(data_dir, "ffdm", "train", cfg, seed, epoch=epoch)
  ds = ds.take(pipeline.images_per_epoch(cfg)).map(
      lambda k, s: (k, schema.parse_example(s)[schema.IMAGE_ID],
                    schema.parse_example(s)[schema.LABEL]))
  return [(int(k), i.decode(), int(y)) for k, i, y in ds.as_numpy_iterator()]


def _uniform_expectation(n, draws):
  return n * (1.0 - (1.0 - 1.0 / n) ** draws)


def test_ten_epochs_reach_every_negative_once_before_repeating(layout):
  cfg = _cfg()
  drawn = [d for e in range(1, 11) for d in _epoch_ids(layout, cfg, 0, e)]
  neg = [i for _, i, y in drawn if y == 0]
  pos = [i for _, i, y in drawn if y == 1]
  assert len(neg) == len(pos) == 200                      # exact balance, 20 + 20 per epoch
  assert [k for k, _, _ in drawn] == list(range(400))     # image index k runs on across epochs
  assert len(set(neg)) == 200                             # no negative twice in 200 < 240 draws
  assert len(set(neg)) / _uniform_expectation(NUM_NEG, 200) >= 0.9   # uniform reaches ~136
  # Positives: 200 draws over 24 records = 8 complete passes and 8 of the 9th: 8 or 9 each.
  assert set(collections.Counter(pos).values()) == {8, 9}
  all_ids = {coverage_layout.image_hash("ffdm", i) for i in range(NUM_NEG + NUM_POS)}
  assert set(neg) | set(pos) <= all_ids


def test_a_rebuilt_epoch_continues_the_stream(layout):
  cfg = _cfg()
  one_stream = pipeline.train_records(layout, "ffdm", "train", cfg, 5, epoch=2).take(120)
  one_stream = [(int(k), bytes(s)) for k, s in one_stream.as_numpy_iterator()]
  rebuilt = []
  for epoch in (2, 3, 4):
    ds = pipeline.train_records(layout, "ffdm", "train", cfg, 5, epoch=epoch).take(40)
    rebuilt += [(int(k), bytes(s)) for k, s in ds.as_numpy_iterator()]
  assert rebuilt == one_stream
  again = _epoch_ids(layout, cfg, 5, 3)
  assert again == _epoch_ids(layout, cfg, 5, 3)           # a restarted epoch replays it
  assert again != _epoch_ids(layout, cfg, 6, 3)           # another seed, another stream


def test_shard_order_differs_between_passes(layout):
  cfg = _cfg(**{"data.samples_per_epoch": 480})            # one negative pass per epoch
  first = [i for _, i, y in _epoch_ids(layout, cfg, 0, 1) if y == 0]
  second = [i for _, i, y in _epoch_ids(layout, cfg, 0, 2) if y == 0]
  assert sorted(first) == sorted(second) and len(set(first)) == NUM_NEG
  assert first != second


def test_empty_class_fails_with_the_pattern(tmp_path):
  coverage_layout.write_layout(str(tmp_path), 10, 0)
  with pytest.raises(FileNotFoundError, match=r"train-pos-\*"):
    pipeline.train_records(str(tmp_path), "ffdm", "train", _cfg(), 0)


def test_builds_under_a_global_seed_of_zero(layout):
  # The trainer calls tf.random.set_seed(run seed); seed 0 once broke a tensor-seeded shuffle.
  tf.random.set_seed(0)
  cfg = _cfg()
  a = _epoch_ids(layout, cfg, 0, 2)
  tf.random.set_seed(0)
  assert a == _epoch_ids(layout, cfg, 0, 2) and len(a) == 40
