"""The c.d.f. sample: equal normal / benign / positive shares, shortfall filled from the others."""
import collections

import pytest

from mammo_tf import config as config_lib
from mammo_tf.data import convert


def _items(normal, benign, high_risk, malignant):
  labels = ["normal"] * normal + ["benign"] * benign + ["high_risk"] * high_risk + (
      ["malignant"] * malignant)
  return [(f"{i * 2654435761 % 2 ** 32:08x}", label) for i, label in enumerate(labels)]


def _strata(sample, items):
  labels = dict(items)
  counts = collections.Counter("positive" if labels[h] in config_lib.POSITIVE_LABELS else labels[h]
                               for h in sample)
  return {k: counts[k] for k in ("normal", "benign", "positive")}


def test_paper_sizes_when_every_class_is_large_enough():
  items = _items(5000, 800, 300, 500)
  ffdm = convert.stratified_sample(items, 1200, 0, "ffdm")
  mip = convert.stratified_sample(items, 600, 0, "dbt")
  assert _strata(ffdm, items) == {"normal": 400, "benign": 400, "positive": 400}
  assert _strata(mip, items) == {"normal": 200, "benign": 200, "positive": 200}
  assert convert.sample_strata(ffdm, dict(items)) == _strata(ffdm, items)
  assert len(set(ffdm)) == 1200 and ffdm == sorted(ffdm)


def test_table1_mix_takes_every_scarce_image_and_fills_the_rest():
  # Table 1's proportions: the proportional allocation gave 1,095 / 102 / 3 (issue text).
  items = _items(60_000, 5_600, 150, 120)
  got = _strata(convert.stratified_sample(items, 1200, 3, "ffdm"), items)
  # All 270 positives; the 130 missing go half and half to normal and benign.
  assert got == {"normal": 465, "benign": 465, "positive": 270}


@pytest.mark.parametrize("sizes,num,want", [
    ((10, 10, 10), 9, [3, 3, 3]),
    ((10, 10, 10), 10, [4, 3, 3]),
    ((100, 2, 1), 30, [27, 2, 1]),
    ((5, 0, 50), 40, [5, 0, 35]),
    ((3, 3, 3), 20, [3, 3, 3]),
])
def test_balanced_counts(sizes, num, want):
  assert convert.balanced_counts(num, list(sizes)) == want
