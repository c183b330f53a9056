"""Train / eval pipelines on real TFRecords written by tests/tfrecord_factory.py."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mammo_tf import config
from mammo_tf.data import augment
from mammo_tf.data import cdf
from mammo_tf.data import patches
from mammo_tf.data import pipeline
from mammo_tf.data import schema
from tests import tfrecord_factory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  cfg = config.get_config("tiny")
  return tfrecord_factory.write_dataset(tmp_path_factory.mktemp("pipe"), cfg=cfg,
                                        num_images_per_class=5, splits=("train", "val"))


def _take(ds, n):
  return [tuple(np.asarray(t) for t in b) for _, b in zip(range(n), ds)]


def test_factory_layout(data_dir):
  cfg = config.get_config("tiny")
  for domain in ("ffdm", "dbt"):
    for split in ("train", "val"):
      for pos in (True, False):
        files = tf.io.gfile.glob(schema.shard_pattern(data_dir, domain, split, pos))
        assert len(files) == cfg.data.num_shards
        recs = [schema.decode_example_numpy(r.numpy()) for r in tf.data.TFRecordDataset(files)]
        assert len(recs) == 5
        assert all((r["box"] is not None) == pos for r in recs)
        assert all(r["image"].shape == (128, 104) and r["mask"].shape == (32, 26) for r in recs)
    assert cdf.load_cdf(schema.cdf_path(data_dir, domain))[-1] == pytest.approx(1.0)
  index = json.load(open(os.path.join(data_dir, "index.json")))
  assert len(index["domains"]["dbt"]["val"]["pos"]) == 5


def test_train_batches_shapes_determinism_and_seed(data_dir):
  cfg = config.get_config("tiny")
  a = _take(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=0), 4)
  b = _take(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=0), 4)
  c = _take(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=1), 4)
  assert a[0][0].shape == (8, 64, 64, 1) and a[0][0].dtype == np.float32
  assert a[0][1].shape == (8,) and a[0][1].dtype == np.float32
  for (pa, la), (pb, lb) in zip(a, b):
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(la, lb)
  assert not any(np.array_equal(pa, pc) for (pa, _), (pc, _) in zip(a, c))
  assert 0 < a[0][0].max() <= 4095 + 10
  assert pipeline.steps_per_epoch(cfg) == 4


def test_balanced_sampling_over_4000_draws(data_dir):
  cfg = config.get_config("tiny", {"data.batch_size": 200, "data.patch_size": 16})
  labels = np.concatenate([l for _, l in _take(
      pipeline.make_train_dataset(data_dir, "dbt", "train", cfg, seed=3), 20)])
  assert labels.size == 4000
  assert abs(labels.mean() - 0.5) <= 0.03


def test_reuse_gives_several_patches_per_image_and_stays_deterministic(data_dir):
  cfg = config.get_config("tiny", {"data.reuse": 4})
  a = _take(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=0), 3)
  b = _take(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=0), 3)
  for (pa, la), (pb, lb) in zip(a, b):
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(la, lb)
  assert a[0][0].shape == (8, 64, 64, 1)
  assert len(list(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=0,
                                              deterministic=False).take(2))) == 2


def test_hm_applied_after_transform_and_before_noise(data_dir):
  cfg = config.get_config("tiny", {"data.noise_std": 0.0})
  lut = pipeline.hm_lut_for(data_dir, "dbt")
  plain = _take(pipeline.make_train_dataset(data_dir, "dbt", "train", cfg, seed=5), 2)
  hm = _take(pipeline.make_train_dataset(data_dir, "dbt", "train", cfg, seed=5, hm_lut=lut), 2)
  for (p, _), (q, _) in zip(plain, hm):
    ref = np.where(p > 0, np.interp(np.clip(p, 0, 4095), np.arange(4096), lut), 0.0)
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-2)
    assert np.all(q[p == 0] == 0)
  # HM moves MIP intensities towards FFDM's: the breast median gets closer.
  ffdm = _take(pipeline.make_train_dataset(data_dir, "ffdm", "train", cfg, seed=5), 2)
  med = lambda bs: np.median(np.concatenate([p[p > 0] for p, _ in bs]))
  assert abs(med(hm) - med(ffdm)) < 0.5 * abs(med(plain) - med(ffdm))


def test_eval_dataset_one_exact_patch_per_image(data_dir):
  cfg = config.get_config("tiny", {"data.eval_batch_size": 4})
  batches = list(pipeline.make_eval_dataset(data_dir, "ffdm", "val", cfg, seed=0))
  again = list(pipeline.make_eval_dataset(data_dir, "ffdm", "val", cfg, seed=0))
  other = list(pipeline.make_eval_dataset(data_dir, "ffdm", "val", cfg, seed=1))
  got = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
  assert set(got) == {"patch", "label", "label_class", "image_id", "patient"}
  assert [b["patch"].shape[0] for b in batches] == [4, 4, 2]
  assert len(set(got["image_id"])) == 10 and got["label"].sum() == 5
  np.testing.assert_array_equal(np.concatenate([b["patch"] for b in again]), got["patch"])
  files = sorted(tf.io.gfile.glob(schema.shard_pattern(data_dir, "ffdm", "val")))
  recs = [schema.decode_example_numpy(r.numpy()) for r in tf.data.TFRecordDataset(files)]
  assert [r["image_id"].encode() for r in recs] == list(got["image_id"])
  other_patch = np.concatenate([b["patch"] for b in other])
  for i, r in enumerate(recs):
    u = augment.sample_params(pipeline.eval_seed(0, r["image_id"]), cfg.data,
                              train=False)["centre_u"].numpy()
    ref = patches.eval_patch_np(r["image"], r["mask"], r["mask_downsample"], r["box"],
                                r["box"] is not None, u, cfg.data.patch_size)
    np.testing.assert_array_equal(got["patch"][i, ..., 0], ref.astype(np.float32))
    assert got["label_class"][i] == config.LABELS.index(r["label"])
    if r["box"] is not None:
      np.testing.assert_array_equal(other_patch[i], got["patch"][i])   # box centre: seed-free
  assert not np.array_equal(other_patch, got["patch"])               # in-mask centres move


def test_missing_shards_name_the_pattern(tmp_path, data_dir):
  cfg = config.get_config("tiny")
  with pytest.raises(FileNotFoundError, match=r"test-pos-\*-of-\*\.tfrecord"):
    pipeline.make_train_dataset(data_dir, "ffdm", "test", cfg, seed=0)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    pipeline.make_eval_dataset(str(tmp_path / "nowhere"), "dbt", "val", cfg, seed=0)


def test_preview_figures(tmp_path, data_dir):
  from mammo_tf.data import figures
  cfg = config.get_config("tiny")
  ffdm = cdf.load_cdf(schema.cdf_path(data_dir, "ffdm"))
  mip = cdf.load_cdf(schema.cdf_path(data_dir, "dbt"))
  matched = figures.matched_cdf(mip, cdf.hm_lut(mip, ffdm))
  assert cdf.kolmogorov_distance(matched, ffdm) < 0.05 < cdf.kolmogorov_distance(mip, ffdm)
  grid, cdf_png = figures.save_preview(data_dir, "dbt", cfg, str(tmp_path / "fig.png"), num=3)
  assert cdf_png == str(tmp_path / "fig_cdf.png")
  for path in (grid, cdf_png):
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  samples = figures.sample_patches(data_dir, "dbt", cfg, num=3, hm_lut=cdf.hm_lut(mip, ffdm))
  assert samples["plain"].shape == (3, 64, 64) and set(samples) == {
      "plain", "augmented", "plain+HM", "augmented+HM", "label"}
  np.testing.assert_array_equal(samples["plain"] == 0, samples["plain+HM"] == 0)
