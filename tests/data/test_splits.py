"""Patient split with scarce DBT: each domain's val and test get both classes when data allows."""
import collections

from mammo_tf.data import manifest


def _cohort(num_ffdm, dbt_pos, dbt_neg):
  rows = []
  for p in range(num_ffdm):
    rows.append(manifest.ManifestRow(f"f{p}", "e", f"f{p}-i", "ffdm", "/x",
                                     "malignant" if p % 4 == 0 else "normal"))
  for p in range(dbt_pos + dbt_neg):
    pid = f"d{p}"
    label = "malignant" if p < dbt_pos else "benign"
    rows.append(manifest.ManifestRow(pid, "e", f"{pid}-f", "ffdm", "/x", label))
    rows.append(manifest.ManifestRow(pid, "e", f"{pid}-d", "dbt", "/x", label))
  return rows


def _holders(rows, splits):
  """{(domain, positive): Counter(split -> patients)} counted from the rows (the reference)."""
  out = collections.defaultdict(collections.Counter)
  seen = set()
  for r in rows:
    key = (r.domain, r.positive, r.patient_id)
    if key not in seen:
      seen.add(key)
      out[(r.domain, r.positive)][splits[r.patient_id]] += 1
  return out


def test_three_dbt_positives_reach_train_val_and_test_for_every_seed():
  rows = _cohort(60, dbt_pos=3, dbt_neg=5)
  for seed in range(30):
    splits = manifest.assign_splits(rows, seed, (0.8, 0.1, 0.1))
    for key, per_split in _holders(rows, splits).items():
      assert all(per_split[s] >= 1 for s in ("train", "val", "test")), (seed, key, per_split)
    assert splits == manifest.assign_splits(list(reversed(rows)), seed, (0.8, 0.1, 0.1))


def test_two_dbt_positives_keep_one_for_training_and_one_for_validation():
  rows = _cohort(60, dbt_pos=2, dbt_neg=5)
  for seed in range(10):
    per_split = _holders(rows, manifest.assign_splits(rows, seed, (0.8, 0.1, 0.1)))
    dbt_pos = per_split[("dbt", True)]
    assert dbt_pos["train"] == 1 and dbt_pos["val"] + dbt_pos["test"] == 1


def test_plenty_of_data_is_left_as_cut():
  rows = _cohort(400, dbt_pos=40, dbt_neg=60)
  splits = manifest.assign_splits(rows, 3, (0.8, 0.1, 0.1))
  assert collections.Counter(splits.values()) == {"train": 400, "val": 50, "test": 50}
