"""A split without a class stops training / Table 2 at the start with one line naming it."""
import glob
import os
import subprocess
import sys

import pytest

from mammo_tf import config
from mammo_tf.data import convert
from mammo_tf.data import pipeline
from mammo_tf.evaluation import study
from tests import tfrecord_factory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def no_dbt_val_positives(tmp_path_factory):
  cfg = config.get_config("tiny")
  data_dir = tfrecord_factory.write_dataset(tmp_path_factory.mktemp("split"), cfg=cfg,
                                            num_images_per_class=3)
  for path in glob.glob(os.path.join(data_dir, "dbt", "val-pos-*.tfrecord")):
    os.unlink(path)
  return data_dir


def test_require_split_names_the_domain_split_and_class(no_dbt_val_positives):
  pipeline.require_split(no_dbt_val_positives, "ffdm", "val", both_classes=True)
  pipeline.require_split(no_dbt_val_positives, "dbt", "val", both_classes=False)
  with pytest.raises(pipeline.MissingSplitError, match=r"^dbt/val has no positive images"):
    pipeline.require_split(no_dbt_val_positives, "dbt", "val", both_classes=True)
  with pytest.raises(pipeline.MissingSplitError, match=r"^ffdm/nosuch has no images"):
    pipeline.require_split(no_dbt_val_positives, "ffdm", "nosuch", both_classes=True)
  with pytest.raises(pipeline.MissingSplitError, match="dbt/val"):
    study.check_splits(no_dbt_val_positives, "test")


def test_table2_exits_2_with_one_line_before_training(no_dbt_val_positives, tmp_path):
  workdir = tmp_path / "study"
  proc = subprocess.run(
      [sys.executable, "-m", "eval.table2", "--preset", "tiny", "--data", no_dbt_val_positives,
       "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: dbt/val has no positive images"), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()                     # stopped before any work


def test_convert_names_each_domain_split_lacking_a_class():
  ok = ([{"domain": "ffdm", "split": s, "label": l} for s in ("train", "val", "test")
         for l in ("normal", "malignant")]
        + [{"domain": "dbt", "split": "train", "label": l} for l in ("normal", "malignant")]
        + [{"domain": "dbt", "split": "val", "label": "benign"}])
  lines = convert.warn_missing_classes(ok)
  assert [line.split(" (")[0] for line in lines] == [
      "dbt/val has no positive images", "dbt/test has no positive and no negative images"]
