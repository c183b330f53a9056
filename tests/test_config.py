import dataclasses

import pytest

from mammo_tf import config


def test_presets_and_json_round_trip():
  for name in config.PRESETS:
    cfg = config.get_config(name)
    assert cfg.name == name
    assert config.from_json(config.to_json(cfg)) == cfg


def test_paper_preset_matches_the_paper():
  cfg = config.get_config("paper")
  assert cfg.data.patch_size == 512 and cfg.data.downsample == 2   # 1024 window -> 512
  assert cfg.data.samples_per_epoch == 40000 and cfg.train.epochs == 100
  assert cfg.train.learning_rate == 5e-5 and cfg.train.weight_decay == 5e-4
  assert cfg.train.finetune_weight_decay == 1e-4 and cfg.train.spottune_weight_decay == 1e-4
  assert (cfg.data.translate_std, cfg.data.rotation_deg, cfg.data.noise_std) == (20.0, 30.0, 1.0)
  assert cfg.model.gumbel_tau == 5.0 and cfg.data.eval_seeds == (0, 1, 2)


def test_overrides_coerce_and_reject_unknown_keys():
  cfg = config.get_config("tiny", ["train.epochs=7", "data.hflip=false",
                                   "model.stage_filters=(4,8,16)", "train.learning_rate=1e-2"])
  assert cfg.train.epochs == 7 and cfg.data.hflip is False
  assert cfg.model.stage_filters == (4, 8, 16) and cfg.train.learning_rate == 0.01
  with pytest.raises(KeyError, match="train.epoch"):
    config.get_config("tiny", {"train.epoch": 1})
  with pytest.raises(ValueError, match="unknown preset"):
    config.get_config("huge")
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 3  # type: ignore[misc]
