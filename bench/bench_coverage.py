"""Training-stream coverage: distinct records drawn vs what uniform sampling would reach.

Writes (once, into --data_dir) a converter-layout FFDM training set of tiny images, ~20,000
negatives and ~2,000 positives in shards sized by the converter's writer, then draws --epochs
epochs the way the trainer does (the stream rebuilt per epoch from the run seed and the epoch
number, `pipeline.train_records`, the records `make_train_dataset` decodes) and prints

  coverage: negatives R1 positives R2 of uniform expectation

where R = distinct records drawn / N (1 - (1 - 1/N)^D), the distinct count uniform sampling with
replacement reaches in the same D draws of a class of N records (>= 1 when no record repeats
before the class is exhausted). A detail line gives N, D and the distinct counts.

  python bench/bench_coverage.py [--negatives 20000] [--positives 2000] [--epochs 5]
      [--samples_per_epoch 4000] [--data_dir DIR]

The "before" figure: the same data read by an older checkout (whose pipeline had no
`train_records`: per-epoch `interleave` of 8 shard heads + a 256-record shuffle buffer), e.g.
``git archive <commit> mammo_tf | tar -x -C /tmp/old`` then
``MAMMO_TF_SRC=/tmp/old python bench/bench_coverage.py --data_dir DIR`` (DIR written by a run of
the current code).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.environ.get("MAMMO_TF_SRC", _REPO))

import tensorflow as tf  # noqa: E402

from mammo_tf import config  # noqa: E402
from mammo_tf.data import pipeline  # noqa: E402
from mammo_tf.data import schema  # noqa: E402

_MARKER = "coverage_layout.done"


def _ids(ds, n):
  """(image id, label) of the first n (k, serialized) elements."""
  ds = ds.take(n).map(lambda k, s: (schema.parse_example(s)[schema.IMAGE_ID],
                                    schema.parse_example(s)[schema.LABEL]))
  return [(i.decode(), int(y)) for i, y in ds.as_numpy_iterator()]


def _epoch_current(data_dir, cfg, seed, epoch):
  return _ids(pipeline.train_records(data_dir, "ffdm", "train", cfg, seed, epoch=epoch),
              pipeline.images_per_epoch(cfg))


def _epoch_before(data_dir, cfg, seed, epoch):
  """The older trainer's epoch: streams rebuilt from epoch_seed(seed, epoch), 0.5/0.5 sampling."""
  from mammo_tf.training import runtime
  s = runtime.epoch_seed(seed, epoch)
  p = pipeline
  streams = [p._class_stream(p._shard_files(data_dir, "ffdm", "train", pos), cfg, s, fs, ss, True)
             for pos, fs, ss in ((True, p._FILES_POS, p._SHUFFLE_POS),
                                 (False, p._FILES_NEG, p._SHUFFLE_NEG))]
  ds = tf.data.Dataset.sample_from_datasets(streams, weights=[0.5, 0.5],
                                            seed=p._stream_seed(s, p._SAMPLE))
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
  return _ids(ds, pipeline.steps_per_epoch(cfg) * cfg.data.batch_size)


def uniform_expectation(n: int, draws: int) -> float:
  return n * (1.0 - (1.0 - 1.0 / n) ** draws)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--negatives", type=int, default=20000)
  ap.add_argument("--positives", type=int, default=2000)
  ap.add_argument("--epochs", type=int, default=5)
  ap.add_argument("--samples_per_epoch", type=int, default=4000)
  ap.add_argument("--shard_size_mb", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--data_dir", default=None, help="reuse / keep the written layout here")
  args = ap.parse_args()
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_coverage_")
  if not os.path.exists(os.path.join(data_dir, _MARKER)):
    from tests import coverage_layout
    shards = coverage_layout.write_layout(data_dir, args.negatives, args.positives,
                                          shard_size_mb=args.shard_size_mb)
    with open(os.path.join(data_dir, _MARKER), "w", encoding="ascii") as f:
      f.write(f"{args.negatives} {args.positives} {shards['neg']} {shards['pos']}\n")
  with open(os.path.join(data_dir, _MARKER), encoding="ascii") as f:
    num_neg, num_pos, shards_neg, shards_pos = (int(v) for v in f.read().split())
  cfg = config.get_config("paper", {"data.batch_size": 32,
                                    "data.samples_per_epoch": args.samples_per_epoch})
  current = hasattr(pipeline, "train_records")
  epoch_fn = _epoch_current if current else _epoch_before
  drawn = collections.defaultdict(list)
  for epoch in range(1, args.epochs + 1):
    for image_id, label in epoch_fn(data_dir, cfg, args.seed, epoch):
      drawn[label].append(image_id)
  ratios = {}
  for label, n in ((0, num_neg), (1, num_pos)):
    d, distinct = len(drawn[label]), len(set(drawn[label]))
    ratios[label] = distinct / uniform_expectation(n, d)
    shards = shards_neg if label == 0 else shards_pos
    print(f"{'negatives' if label == 0 else 'positives'}: N {n} in {shards} "
          f"shards, {d} draws, {distinct} distinct, uniform {uniform_expectation(n, d):.0f} "
          f"({'current pipeline' if current else 'before: ' + os.environ.get('MAMMO_TF_SRC', '')})",
          file=sys.stderr)
  print(f"coverage: negatives {ratios[0]:.2f} positives {ratios[1]:.2f} of uniform expectation")


if __name__ == "__main__":
  main()
