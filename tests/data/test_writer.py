"""Sharded, atomic, resumable TFRecord writing."""
import os

import pytest

from mammo_tf.data import writer


def _items():
  return [("ffdm", "train", i % 3 == 0, f"{i * 2654435761 % 2**32:08x}{i:024x}", f"key{i}")
          for i in range(40)]


def test_plan_is_deterministic_sorted_and_complete():
  plan = writer.plan_shards(_items(), 4)
  assert plan == writer.plan_shards(list(reversed(_items())), 4)
  assert list(plan) == sorted(plan) and len(plan) == 8   # pos and neg, 4 shards each
  assert "ffdm/train-pos-00003-of-00004.tfrecord" in plan
  assert sum(len(v) for v in plan.values()) == 40
  for rel, entries in plan.items():
    assert entries == sorted(entries)
    for image_hash, _ in entries:
      assert rel.split("-")[2] == f"{writer.shard_index(image_hash, 4):05d}"
  with pytest.raises(ValueError, match="num_shards"):
    writer.shard_index("00000000", 0)


def test_write_skip_rewrite_and_cleanup(tmp_path):
  out, state = str(tmp_path / "out"), str(tmp_path / "out" / ".cache" / "shards")
  plan = writer.plan_shards(_items(), 2)
  loaded = []
  def load(key):
    loaded.append(key)
    return key.encode()
  assert writer.write_all(out, plan, state, load) == (4, 0)
  assert len(loaded) == 40
  for rel, entries in plan.items():
    assert list(writer.iter_shard(os.path.join(out, rel))) == [k.encode() for _, k in entries]
  before = {rel: open(os.path.join(out, rel), "rb").read() for rel in plan}
  # A rerun skips complete shards; a deleted shard or a changed content list is rewritten.
  loaded.clear()
  first = next(iter(plan))
  os.unlink(os.path.join(out, first))
  changed = dict(plan)
  last = list(plan)[-1]
  changed[last] = plan[last][:-1]
  assert writer.write_all(out, changed, state, load) == (2, 2)
  assert open(os.path.join(out, first), "rb").read() == before[first]
  assert len(list(writer.iter_shard(os.path.join(out, last)))) == len(plan[last]) - 1
  # Leftovers of a killed run and shards of another configuration are removed.
  open(os.path.join(out, "ffdm", ".tmp-train-pos-00000-of-00002.tfrecord"), "wb").write(b"x")
  open(os.path.join(out, "ffdm", "val-neg-00000-of-00007.tfrecord"), "wb").write(b"")
  open(os.path.join(out, "ffdm", "notes.txt"), "w").write("mine")
  assert writer.remove_temp_files(os.path.join(out, "ffdm")) == 1
  assert writer.remove_unplanned_shards(out, ["ffdm", "dbt"], plan) == [
      "ffdm/val-neg-00000-of-00007.tfrecord"]
  assert sorted(os.listdir(os.path.join(out, "ffdm"))) == sorted(
      [r.split("/")[1] for r in plan] + ["notes.txt"])


def test_shard_counts_follow_the_data_or_a_fixed_count():
  mib = 2 ** 20
  sizes = ([("ffdm", "train", False, 10 * mib)] * 100 + [("ffdm", "train", True, 10 * mib)] * 3
           + [("dbt", "val", True, 1000)])
  counts = writer.shard_counts(sizes, shard_size_mb=192)
  # 1000 MiB of negatives -> ceil(1000 / 192) = 6 shards; 30 MiB and 1000 B -> one shard each.
  assert counts == {("dbt", "val", True): 1, ("ffdm", "train", False): 6,
                    ("ffdm", "train", True): 1}
  assert writer.shard_counts(sizes, num_shards=4) == {k: 4 for k in counts}
  assert writer.shards_for_bytes(192 * mib, 192 * mib) == 1
  assert writer.shards_for_bytes(192 * mib + 1, 192 * mib) == 2
  with pytest.raises(ValueError, match="target shard size"):
    writer.shards_for_bytes(10, 0)


def test_sized_plan_writes_shards_near_the_target_and_reports_them(tmp_path):
  import tensorflow as tf  # the reference reader for record counts
  out, state = str(tmp_path / "out"), str(tmp_path / "out" / ".cache" / "shards")
  payload = {f"key{i}": bytes([i % 251]) * 1000 for i in range(40)}
  items = _items()
  sizes = [(d, s, p, len(payload[k])) for d, s, p, _, k in items]
  counts = writer.shard_counts(sizes, shard_size_mb=5000 / 2 ** 20)   # 5,000-byte target
  # 14 positives (14,000 B) -> 3 shards, 26 negatives (26,000 B) -> 6 shards.
  assert counts == {("ffdm", "train", True): 3, ("ffdm", "train", False): 6}
  plan = writer.plan_shards(items, counts)
  assert len(plan) == 9 and "ffdm/train-neg-00005-of-00006.tfrecord" in plan
  writer.write_all(out, plan, state, lambda key: payload[key])
  stats = writer.shard_stats(out, ["ffdm", "dbt"])
  assert set(stats) == {"ffdm/train-pos", "ffdm/train-neg"}
  assert stats["ffdm/train-pos"]["shards"] == 3 and stats["ffdm/train-neg"]["shards"] == 6
  for group, positive in (("ffdm/train-pos", "pos"), ("ffdm/train-neg", "neg")):
    files = [os.path.join(out, rel) for rel in plan if f"-{positive}-" in rel]
    assert stats[group]["records"] == sum(1 for _ in tf.data.TFRecordDataset(files))
    assert stats[group]["bytes"] == sum(os.path.getsize(f) for f in files)
    assert stats[group]["max_shard_bytes"] == max(os.path.getsize(f) for f in files)
  for rel in plan:
    path = os.path.join(out, rel)
    assert writer.count_records(path) == sum(1 for _ in tf.data.TFRecordDataset(path))
