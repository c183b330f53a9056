"""Shared fixtures of the training tests: one tiny real TFRecord dataset and one base run."""

import os

import pytest

from mammo_tf import config
from tests import tfrecord_factory

TINY_OVERRIDES = ["data.samples_per_epoch=16", "data.batch_size=8", "data.eval_batch_size=16"]


def tiny_config(*extra: str) -> config.ExperimentConfig:
  return config.get_config("tiny", TINY_OVERRIDES + list(extra))


@pytest.fixture(scope="session")
def tiny_cfg():
  return tiny_config("train.epochs=3", "train.finetune_epochs=1", "train.spottune_epochs=1")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, tiny_cfg):
  return tfrecord_factory.write_dataset(tmp_path_factory.mktemp("training_data"), cfg=tiny_cfg,
                                        num_images_per_class=4)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, tiny_cfg, data_dir):
  """A finished 3-epoch train_base run (2 steps per epoch)."""
  from mammo_tf import training
  workdir = os.path.join(str(tmp_path_factory.mktemp("base_run")), "base")
  return training.train_base(tiny_cfg, data_dir, workdir)
