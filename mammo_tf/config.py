"""Frozen experiment configuration and the named presets `tiny`, `demo` and `paper`.

The library receives an `ExperimentConfig`; it never reads flags. Entry points build one with
`get_config(preset, overrides)` where overrides are ``"section.field=value"`` strings (or a
mapping), write it to the work directory with `to_json`, and pass it down.

Geometry conventions (paper §2.2): images are stored at ``1/data.downsample`` of the original
resolution (2x2 mean = the paper's 1024 -> 512 bilinear downsample). A patch is a
``data.patch_size`` window of the *stored* image, i.e. a ``patch_size * downsample`` window of the
original image. Translations are given in original-resolution pixels as in the paper.

Presets: ``tiny`` (the tests), ``demo`` (``make demo``) and ``paper`` (the paper's settings). As in
big_vision's configs, each preset function's docstring gives the command that runs it, its run time
and the result to expect. ``--preset`` defaults to ``paper`` in every entry point
(docs/DESIGN.md, "Entry points and defaults").
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any, Mapping, Sequence

LABELS = ("normal", "benign", "high_risk", "malignant")
POSITIVE_LABELS = ("high_risk", "malignant")
DOMAINS = ("ffdm", "dbt")
SPLITS = ("train", "val", "test")
MAX_INTENSITY = 4095  # 12-bit scale of the paper's Fig. 2
NUM_LEVELS = MAX_INTENSITY + 1
AUGMENT_ON = ("host", "device")   # data.augment_on


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Synthetic cohort geometry and composition (see mammo_tf/synthetic)."""
  num_patients: int = 24
  ffdm_shape: tuple[int, int] = (256, 208)   # original-resolution rows, cols
  dbt_shape: tuple[int, int] = (256, 208)    # MIP plane rows, cols
  dbt_slices: int = 8
  dbt_projections: int = 9
  dbt_angle_deg: float = 15.0                # total arc (+-7.5 deg)
  dbt_share: float = 0.5                     # fraction of patients who also have DBT
  dbt_only_share: float = 0.0                # fraction of patients with DBT but no FFDM
  per_slice_share: float = 0.25              # DBT studies written as one file per slice
  monochrome1_share: float = 0.25
  # Class proportions per exam (normal, benign, high_risk, malignant); enriched by default.
  class_probs: tuple[float, float, float, float] = (0.35, 0.2, 0.15, 0.3)
  lesion_scale: float = 1.0                  # multiplies every lesion size
  prior_exam_share: float = 0.25             # patients with an earlier (normal) FFDM exam
  benign_box_share: float = 0.5              # benign findings that carry a box
  phantom_layers: int = 8                    # tissue slabs through the compressed thickness
  phantom_max_side: int = 256                # tissue grid long side (texture resolution cap)
  # "all": each patient drawn from every fake vendor (a multi-site robustness setting);
  # "single": one site, one FFDM system and a DBT system of the same manufacturer (the paper).
  vendors: str = "all"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Ingest, patch geometry, augmentation and sampling (paper §2.1-2.3, §2.4.1)."""
  downsample: int = 2                         # stored image = original / downsample
  patch_size: int = 512                       # patch side in stored pixels (paper: 512)
  mask_downsample: int = 8                    # breast mask stored at stored / mask_downsample
  image_codec: str = "png"                    # png (PNG-16) | raw (uint16 bytes)
  num_shards: int = 0                         # > 0: fixed shards per (domain, split, class)
  shard_size_mb: float = 192.0                # num_shards = 0: shards of about this size (MiB)
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  cdf_samples_ffdm: int = 1200
  cdf_samples_dbt: int = 600
  canonical_laterality: str = ""              # "" keeps images as acquired; "L" or "R" flips to it
  # DICOM -> 0..4095 (mammo_tf.io.rules): auto = the file's VOI window, else its robust used range;
  # window | range | bits ([0, 2**BitsStored - 1], the original rule).
  intensity: str = "auto"
  voi_index: int = 0                          # which window / VOI LUT of a file `window` applies
  apply_voi_lut: bool = False                 # legacy, intensity=bits only: apply the VOI if any
  # Augmentation (paper §2.3).
  hflip: bool = True
  vflip: bool = True
  noise_std: float = 1.0                      # 12-bit units
  translate_std: float = 20.0                 # original-resolution pixels
  rotation_deg: float = 30.0                  # U(-rotation_deg, rotation_deg)
  # Sampling.
  batch_size: int = 32
  samples_per_epoch: int = 40000
  eval_batch_size: int = 64
  reuse: int = 1                              # patches cut from one decoded image (1 = paper)
  # Where the training augmentation runs: "host" (tf.data cuts the finished patch) or "device"
  # (tf.data cuts a window, the train step's DeviceAugment layer transforms it; same patches).
  augment_on: str = "host"
  shuffle_buffer: int = 256
  eval_seeds: tuple[int, ...] = (0, 1, 2)

  def __post_init__(self):
    if self.augment_on not in AUGMENT_ON:
      raise ValueError(f"data.augment_on={self.augment_on!r}: expected one of {AUGMENT_ON}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """SpotTune-style ResNet-26 with 1x1 projections: 29 weight layers (docs/DESIGN.md)."""
  stem_filters: int = 32
  stage_filters: tuple[int, ...] = (64, 128, 256)
  blocks_per_stage: int = 4
  stem_stride: int = 2
  stem_pool: bool = True
  bn_momentum: float = 0.9                    # = PyTorch momentum 0.1
  bn_epsilon: float = 1e-5
  # SpotTune policy network: a ResNet-8 (one block per stage) on a downsampled patch.
  policy_stem_filters: int = 32
  policy_stage_filters: tuple[int, ...] = (64, 128, 256)
  policy_downsample: int = 4
  gumbel_tau: float = 5.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation (paper §2.3, §2.4.2-2.4.3)."""
  epochs: int = 100
  learning_rate: float = 5e-5
  weight_decay: float = 5e-4
  decoupled_weight_decay: bool = False        # False: coupled L2 (Adam + L2); True: AdamW
  early_stopping_patience: int = 0            # 0 = off
  finetune_epochs: int = 100
  finetune_learning_rate: float = 5e-5
  finetune_weight_decay: float = 1e-4
  spottune_epochs: int = 100
  spottune_learning_rate: float = 5e-5
  spottune_weight_decay: float = 1e-4
  policy_learning_rate: float = 0.0           # 0 = same as spottune_learning_rate
  frozen_bn: str = "frozen"                   # frozen | live (SpotTune code: live)
  train_stem: bool = False                    # SpotTune code quirk: stem conv trainable
  policy_eval: str = "argmax"                 # argmax | sample
  mixed_precision: bool = False
  xla: bool = False
  strategy: str = "auto"                      # auto | default | mirrored | multi_worker


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = "paper"
  seed: int = 0
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()
  synthetic: SyntheticConfig = SyntheticConfig()

  @property
  def input_size(self) -> int:
    """Network input side in pixels (the stored-resolution patch)."""
    return self.data.patch_size


def _paper() -> ExperimentConfig:
  """The paper's settings (§2.2-2.4), meant for real data on a GPU.

  512 px patches from 1024 px windows of images stored at half resolution, 40000-sample epochs,
  100 epochs per job, Adam lr 5e-5 with weight decay 5e-4 (FFDM) and 1e-4 (fine-tuning and
  SpotTune), paper-width ResNet-26 (5,858,273 trainable parameters). Command::

    python -m data_prep.convert --manifest M.csv --out DATA --preset paper --workers 8
    python -m eval.table2 --data DATA --workdir STUDY --preset paper

  Run time: dominated by the five trainings of 100 x 40000 patches each; on one GPU the input
  pipeline sets the pace (README, "Training on a GPU"). Expected result: the paper's Table 2
  (FFDM -> FFDM 0.909 ± 0.001, FFDM -> MIP 0.751, SpotTune on MIP 0.825) on a cohort like the
  paper's; not yet run on one.
  """
  return ExperimentConfig(
      name="paper",
      synthetic=SyntheticConfig(
          num_patients=400, ffdm_shape=(4096, 3328), dbt_shape=(2457, 1996),
          dbt_slices=70, dbt_projections=15, dbt_angle_deg=15.0,
          class_probs=(0.9, 0.05, 0.02, 0.03), phantom_layers=16, phantom_max_side=512))


def _demo() -> ExperimentConfig:
  """The synthetic demo on a CPU: ``make demo``.

  320 synthetic patients (about 1500 FFDM images and 770 DBT volumes, 512x416 original pixels),
  96 px patches, a half-width network, 2048-sample epochs: 40 base epochs, 8 fine-tune and 8
  SpotTune epochs. Command::

    make demo   # make_synthetic_cohort, convert and eval.table2, all with --preset demo --seed 0

  Run time: 15 min on 2 CPU cores, install included (README, "Results"). Expected result:
  Table 2 with FFDM -> FFDM ROC AUC about 0.83 and the MIP rows between 0.84 and 0.87, patient
  bootstrap intervals about ±0.07 wide (README, "Results", for the exact table and what it does
  and does not say).
  """
  return ExperimentConfig(
      name="demo",
      # 60/20/20 so that the demo's DBT val/test splits hold enough positives for an AUC.
      data=DataConfig(patch_size=96, mask_downsample=4, num_shards=4, translate_std=6.0,
                      split_fractions=(0.6, 0.2, 0.2),
                      batch_size=32, samples_per_epoch=2048, eval_batch_size=128,
                      shuffle_buffer=128, cdf_samples_ffdm=1200, cdf_samples_dbt=600),
      model=ModelConfig(stem_filters=16, stage_filters=(32, 64, 128),
                        policy_stem_filters=8, policy_stage_filters=(16, 32, 64),
                        policy_downsample=2),
      train=TrainConfig(epochs=40, learning_rate=1e-3, finetune_epochs=8,
                        finetune_learning_rate=1e-3, spottune_epochs=8,
                        spottune_learning_rate=3e-4),
      synthetic=SyntheticConfig(
          num_patients=320, ffdm_shape=(512, 416), dbt_shape=(512, 416),
          dbt_slices=12, dbt_projections=9, dbt_angle_deg=30.0, dbt_share=0.55,
          dbt_only_share=0.05, phantom_layers=8, phantom_max_side=256, vendors="single"))


def _tiny() -> ExperimentConfig:
  """The tests: a 16-patient synthetic cohort, 64 px patches, a narrow network, 2 base epochs of
  32 samples, 1 fine-tune and 1 SpotTune epoch. Command::

    python -m data_prep.make_synthetic_cohort --out T/cohort --preset tiny --seed 0
    python -m data_prep.convert --manifest T/cohort/manifest.csv --out T/data --preset tiny
    python -m eval.table2 --data T/data --workdir T/study --preset tiny

  Run time: 27 s, 163 s (``--workers 2``) and 265 s, measured on a 2-core machine shared with
  other jobs. Expected result: every file of a real run (shards, c.d.f.s, five work dirs,
  exports, report) and a Table 2 whose AUCs mean nothing: 16 patients, 64 training patches, a
  handful of test images (measured: 0.80 ± 0.08 FFDM -> FFDM, 0.58-0.75 on MIP).
  """
  return ExperimentConfig(
      name="tiny",
      data=DataConfig(patch_size=64, mask_downsample=4, num_shards=2, translate_std=4.0,
                      batch_size=8, samples_per_epoch=32, eval_batch_size=32,
                      shuffle_buffer=16, cdf_samples_ffdm=40, cdf_samples_dbt=20),
      model=ModelConfig(stem_filters=8, stage_filters=(8, 16, 32),
                        policy_stem_filters=4, policy_stage_filters=(4, 8, 8),
                        policy_downsample=2),
      train=TrainConfig(epochs=2, learning_rate=1e-3, finetune_epochs=1,
                        finetune_learning_rate=1e-3, spottune_epochs=1,
                        spottune_learning_rate=1e-3),
      synthetic=SyntheticConfig(
          num_patients=16, ffdm_shape=(256, 208), dbt_shape=(256, 208), dbt_slices=6,
          dbt_projections=7, dbt_angle_deg=30.0, phantom_layers=6, phantom_max_side=128))


PRESETS = {"tiny": _tiny, "demo": _demo, "paper": _paper}


def _coerce(value: Any, current: Any) -> Any:
  """Converts an override value (often a string from a flag) to the type of `current`."""
  if isinstance(value, str) and not isinstance(current, str):
    if isinstance(current, bool):
      low = value.strip().lower()
      if low not in ("true", "false", "1", "0"):
        raise ValueError(f"expected a boolean, got {value!r}")
      return low in ("true", "1")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      if isinstance(current, (int, float, tuple)):
        raise ValueError(f"expected a {type(current).__name__}, got {value!r}") from None
  if isinstance(value, (list, tuple, dict, set)) and not isinstance(current, tuple):
    raise ValueError(f"expected a single {type(current).__name__}, got {value!r}")
  if isinstance(current, bool):
    return bool(value)
  if isinstance(current, int):
    if isinstance(value, float) and not value.is_integer():
      raise ValueError(f"expected an integer, got {value!r}")
    return int(value)
  if isinstance(current, float):
    return float(value)
  if isinstance(current, tuple):
    if not isinstance(value, (list, tuple)):
      value = (value,)
    if current:
      return tuple(_coerce(v, current[0]) for v in value)
    return tuple(value)
  return value


def override(cfg: Any, overrides: Mapping[str, Any] | Sequence[str] | None) -> Any:
  """Returns `cfg` with dotted-path overrides applied, e.g. ``{"train.epochs": 3}``.

  Accepts ``"a.b=value"`` strings as well. Unknown keys raise ``KeyError`` naming the key.
  """
  if not overrides:
    return cfg
  if not isinstance(overrides, Mapping):
    pairs = {}
    for item in overrides:
      if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form section.field=value")
      key, value = item.split("=", 1)
      pairs[key.strip()] = value.strip()
    overrides = pairs
  for key, value in overrides.items():
    cfg = _set_path(cfg, key.split("."), value, key)
  return cfg


class UnknownConfigKey(KeyError, ValueError):
  """An override naming no config field (a KeyError, and a ValueError for the entry points)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def _set_path(obj: Any, path: list[str], value: Any, full_key: str) -> Any:
  names = {f.name for f in dataclasses.fields(obj)}
  head = path[0]
  if head not in names:
    raise UnknownConfigKey(f"unknown config key {full_key!r} (no field {head!r} in "
                   f"{type(obj).__name__}; fields: {sorted(names)})")
  current = getattr(obj, head)
  if len(path) == 1:
    if dataclasses.is_dataclass(current):
      raise UnknownConfigKey(f"config key {full_key!r} names a section, not a field")
    try:
      coerced = _coerce(value, current)
    except (ValueError, TypeError, OverflowError) as e:
      raise ValueError(f"override {full_key}: {e}") from None
    return dataclasses.replace(obj, **{head: coerced})
  if not dataclasses.is_dataclass(current):
    raise UnknownConfigKey(f"config key {full_key!r}: {head!r} is not a section")
  return dataclasses.replace(obj, **{head: _set_path(current, path[1:], value, full_key)})


def get_config(preset: str = "paper",
               overrides: Mapping[str, Any] | Sequence[str] | None = None) -> ExperimentConfig:
  """Returns the named preset with overrides applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
  return validate(override(PRESETS[preset](), overrides))


_POSITIVE = {
    "data": ("downsample", "patch_size", "mask_downsample", "batch_size", "shard_size_mb",
             "samples_per_epoch", "eval_batch_size", "reuse", "shuffle_buffer"),
    "model": ("stem_filters", "blocks_per_stage", "stem_stride", "policy_stem_filters",
              "policy_downsample"),
    "train": ("epochs", "finetune_epochs", "spottune_epochs", "learning_rate",
              "finetune_learning_rate", "spottune_learning_rate"),
}
_NON_NEGATIVE = {
    "data": ("cdf_samples_ffdm", "cdf_samples_dbt", "noise_std", "translate_std", "rotation_deg",
             "num_shards"),
    "train": ("weight_decay", "finetune_weight_decay", "spottune_weight_decay",
              "policy_learning_rate", "early_stopping_patience"),
}
_ENUMS = {
    ("data", "image_codec"): ("png", "raw"),
    ("data", "canonical_laterality"): ("", "L", "R"),
    ("train", "frozen_bn"): ("frozen", "live"),
    ("train", "policy_eval"): ("argmax", "sample"),
    ("train", "strategy"): ("auto", "default", "mirrored", "multi_worker"),
}


class ConfigError(ValueError):
  """An invalid configuration value (raised when the config is built)."""


def _check_numbers(section: str, obj: Any) -> None:
  import math
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    for v in (value if isinstance(value, tuple) else (value,)):
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{section}.{f.name} must be a finite number, got {v!r}")
  for name in _POSITIVE.get(section, ()):
    if hasattr(obj, name) and not getattr(obj, name) > 0:
      raise ConfigError(f"{section}.{name} must be positive, got {getattr(obj, name)!r}")
  for name in _NON_NEGATIVE.get(section, ()):
    if hasattr(obj, name) and not getattr(obj, name) >= 0:
      raise ConfigError(f"{section}.{name} must be >= 0, got {getattr(obj, name)!r}")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
  """Checks sizes, enums and numbers when a config is built; raises `ConfigError` (a ValueError)
  naming the field. Returns `cfg`."""
  for section in ("data", "model", "train", "synthetic"):
    if hasattr(cfg, section):
      _check_numbers(section, getattr(cfg, section))
  for (section, name), allowed in _ENUMS.items():
    value = getattr(getattr(cfg, section), name, None)
    if value not in allowed:
      raise ConfigError(f"{section}.{name} must be one of {allowed}, got {value!r}")
  d = cfg.data
  fractions = d.split_fractions
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
    raise ConfigError(f"data.split_fractions must be 3 non-negative numbers summing to 1, got "
                      f"{fractions!r}")
  if not d.eval_seeds:
    raise ConfigError("data.eval_seeds must list at least one seed")
  if not cfg.model.stage_filters or min(cfg.model.stage_filters) <= 0:
    raise ConfigError(f"model.stage_filters must be positive, got {cfg.model.stage_filters!r}")
  return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
  return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(d: Mapping[str, Any], cls: type = ExperimentConfig) -> Any:
  """Inverse of `to_dict` (lists become tuples again)."""
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in d:
      continue
    value = d[f.name]
    default = getattr(cls(), f.name)
    if dataclasses.is_dataclass(default):
      value = from_dict(value, type(default))
    elif isinstance(default, tuple):
      value = tuple(value)
    kwargs[f.name] = value
  return cls(**kwargs)


def from_json(text: str) -> ExperimentConfig:
  return validate(from_dict(json.loads(text)))
