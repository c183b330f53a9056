"""The patch classifier: a SpotTune-style ResNet-26 with 1x1 projection shortcuts.

Architecture (docs/DESIGN.md, "Models"), for a single-channel patch
``[B, S, S, 1]`` in 12-bit units:

* ``normalize``: `Normalize` (12-bit -> network scale; no trainable weights).
* stem: ``stem_conv`` 3x3 conv, ``model.stem_filters`` filters (32 at paper width), stride
  ``model.stem_stride`` (2) -> ``stem_bn`` -> ``stem_relu`` -> ``stem_pool`` 3x3/2 max-pool (when
  ``model.stem_pool``).
* ``len(model.stage_filters)`` stages (64/128/256) of ``model.blocks_per_stage`` (4) basic
  residual units each. A unit is ONE `ResidualUnit` layer named ``stage{i}_unit{j}`` (1-based):
  conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU (post-activation, ResNet
  v1). The first unit of every stage has stride 2 and a 1x1 conv + BN projection shortcut; the
  others use the identity.
* ``final_bn`` -> ``final_relu`` -> ``pool`` (global average) -> ``head`` Dense(1) -> ``prob``
  sigmoid (float32): the malignancy probability ``[B, 1]``. A 1-logit sigmoid is the 2-class softmax
  cross-entropy of the paper with one redundant logit removed.

Counting convention: weight layers are convolutions and dense layers, projections included:
1 stem + 12 x 2 unit convs + 3 projections + 1 dense = 29. At paper width (`ModelConfig` defaults)
the classifier has 5,858,273 trainable parameters and 8,640 non-trainable ones (BatchNorm moving
mean/variance), whatever the input size. Convolutions have no bias and He-normal initialisation;
BatchNorm uses ``model.bn_momentum`` (0.9 = PyTorch's 0.1) and ``model.bn_epsilon`` (1e-5).

Only ``keras.layers`` / ``keras.ops`` are used, so the model also runs under Keras' JAX backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import keras
from keras import layers

from mammo_tf.config import ModelConfig
from mammo_tf.models.preprocessing import Normalize

_PACKAGE = "mammo_tf"


def as_model_config(model_cfg: ModelConfig | Mapping[str, Any]) -> ModelConfig:
  """Accepts a `ModelConfig` or its dict form (as stored in a saved model's config)."""
  if isinstance(model_cfg, ModelConfig):
    return model_cfg
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(model_cfg).items()
            if k in names}
  return ModelConfig(**kwargs)


def conv2d(filters: int, kernel_size: int, strides: int, name: str, dtype: Any = None
           ) -> layers.Conv2D:
  """The network's convolution: "same" padding, no bias (BatchNorm follows), He-normal init."""
  return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                       kernel_initializer="he_normal", name=name, dtype=dtype)


def batch_norm(momentum: float, epsilon: float, name: str, dtype: Any = None
               ) -> layers.BatchNormalization:
  """BatchNorm with the config's momentum (Keras convention: weight of the old statistic)."""
  return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualUnit(layers.Layer):
  """A basic post-activation residual unit: ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)).

  Sublayers (named, so weight paths read ``stage1_unit1/conv1/kernel``): ``conv1`` (3x3, stride
  `strides`), ``bn1``, ``relu1``, ``conv2`` (3x3), ``bn2``, ``add``, ``relu_out`` and, when
  `project`, the shortcut ``proj_conv`` (1x1, stride `strides`) + ``proj_bn``. Without projection
  the shortcut is the identity, which needs ``strides == 1`` and as many input as output channels.

  The strided 1x1 projection is computed as ``x[:, ::s, ::s, :]`` followed by a unit-stride 1x1
  convolution with the same kernel. For a 1x1 kernel with ``padding="same"`` the two are the same
  function (no padding is ever added; output pixel ``i`` reads input pixel ``s * i``), so the
  weights, the outputs and saved models are unchanged. The reformulation keeps oneDNN
  (TensorFlow's CPU kernels on AVX-512 machines) off its strided 1x1 backward-weights kernel, which
  corrupts the heap when a unit has fewer input channels than the kernel's channel block
  (BUILD_NOTES.md, "oneDNN crash"; reproducer: ``bench/repro_onednn_crash.py``).

  The unit is rebuilt from ``get_config()`` alone, which is how SpotTune clones it (then copies
  the weights with ``set_weights``).
  """

  def __init__(self, filters: int, strides: int = 1, project: bool = False,
               bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, **kwargs: Any):
    super().__init__(**kwargs)
    if not project and strides != 1:
      raise ValueError(f"{self.name}: an identity shortcut needs strides=1, got {strides}")
    self.filters = int(filters)
    self.strides = int(strides)
    self.project = bool(project)
    self.bn_momentum = float(bn_momentum)
    self.bn_epsilon = float(bn_epsilon)
    dt = self.dtype_policy
    self.conv1 = conv2d(self.filters, 3, self.strides, "conv1", dt)
    self.bn1 = batch_norm(self.bn_momentum, self.bn_epsilon, "bn1", dt)
    self.relu1 = layers.ReLU(name="relu1", dtype=dt)
    self.conv2 = conv2d(self.filters, 3, 1, "conv2", dt)
    self.bn2 = batch_norm(self.bn_momentum, self.bn_epsilon, "bn2", dt)
    if self.project:
      self.proj_conv = conv2d(self.filters, 1, 1, "proj_conv", dt)
      self.proj_bn = batch_norm(self.bn_momentum, self.bn_epsilon, "proj_bn", dt)
    else:
      self.proj_conv = None
      self.proj_bn = None
    self.add = layers.Add(name="add", dtype=dt)
    self.relu_out = layers.ReLU(name="relu_out", dtype=dt)

  @property
  def convs(self) -> list[layers.Conv2D]:
    """The unit's convolutions (weight layers), projection included."""
    return [c for c in (self.conv1, self.conv2, self.proj_conv) if c is not None]

  @property
  def batch_norms(self) -> list[layers.BatchNormalization]:
    return [b for b in (self.bn1, self.bn2, self.proj_bn) if b is not None]

  def build(self, input_shape: tuple) -> None:
    input_shape = tuple(input_shape)
    if not self.project and input_shape[-1] is not None and input_shape[-1] != self.filters:
      raise ValueError(f"{self.name}: identity shortcut with {input_shape[-1]} input channels "
                       f"and {self.filters} filters; set project=True")
    self.conv1.build(input_shape)
    shape = self.conv1.compute_output_shape(input_shape)
    self.bn1.build(shape)
    self.conv2.build(shape)
    self.bn2.build(shape)
    if self.project:
      self.proj_conv.build(_subsampled_shape(input_shape, self.strides))
      self.proj_bn.build(shape)
    self.built = True

  def call(self, inputs: Any, training: bool | None = None) -> Any:
    y = self.conv1(inputs)
    y = self.bn1(y, training=training)
    y = self.relu1(y)
    y = self.conv2(y)
    y = self.bn2(y, training=training)
    if self.project:
      strided = inputs if self.strides == 1 else inputs[:, ::self.strides, ::self.strides, :]
      shortcut = self.proj_bn(self.proj_conv(strided), training=training)
    else:
      shortcut = inputs
    return self.relu_out(self.add([y, shortcut]))

  def compute_output_shape(self, input_shape: tuple) -> tuple:
    return self.conv1.compute_output_shape(tuple(input_shape))

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, strides=self.strides, project=self.project,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    return config


def _subsampled_shape(shape: tuple, strides: int) -> tuple:
  """Shape of ``x[:, ::strides, ::strides, :]`` for an NHWC shape (``None`` sides stay ``None``)."""
  h, w = (None if n is None else ceil_div(n, strides) for n in shape[1:3])
  return (shape[0], h, w, shape[3])


def unit_names(model_cfg: ModelConfig | Mapping[str, Any]) -> list[str]:
  """``["stage1_unit1", ..., "stage{S}_unit{N}"]`` in forward order (the SpotTune gate order)."""
  cfg = as_model_config(model_cfg)
  return [f"stage{i + 1}_unit{j + 1}" for i in range(len(cfg.stage_filters))
          for j in range(cfg.blocks_per_stage)]


def unit_kwargs(model_cfg: ModelConfig | Mapping[str, Any]) -> list[dict[str, Any]]:
  """Constructor arguments of every residual unit, in forward order (name included)."""
  cfg = as_model_config(model_cfg)
  out = []
  for i, filters in enumerate(cfg.stage_filters):
    for j in range(cfg.blocks_per_stage):
      first = j == 0
      out.append(dict(filters=filters, strides=2 if first else 1, project=first,
                      bn_momentum=cfg.bn_momentum, bn_epsilon=cfg.bn_epsilon,
                      name=f"stage{i + 1}_unit{j + 1}"))
  return out


def stem_layers(model_cfg: ModelConfig | Mapping[str, Any], prefix: str = "stem"
                ) -> list[layers.Layer]:
  """The stem: conv 3x3/stem_stride, BN, ReLU and (if ``stem_pool``) max-pool 3x3/2.

  The stem conv computes in float32 under any mixed-precision policy, so the 12-bit input (and
  its sigma-1 noise) reaches the first convolution at full precision; the layers after it follow
  the global policy (bfloat16 compute under ``mixed_bfloat16``).
  """
  cfg = as_model_config(model_cfg)
  out = [conv2d(cfg.stem_filters, 3, cfg.stem_stride, f"{prefix}_conv", dtype="float32"),
         batch_norm(cfg.bn_momentum, cfg.bn_epsilon, f"{prefix}_bn"),
         layers.ReLU(name=f"{prefix}_relu")]
  if cfg.stem_pool:
    out.append(layers.MaxPooling2D(3, strides=2, padding="same", name=f"{prefix}_pool"))
  return out


def head_layers(model_cfg: ModelConfig | Mapping[str, Any]) -> list[layers.Layer]:
  """Final BN + ReLU, global average pool (features), Dense(1) ``head``, float32 sigmoid
  ``prob``."""
  cfg = as_model_config(model_cfg)
  return [batch_norm(cfg.bn_momentum, cfg.bn_epsilon, "final_bn"),
          layers.ReLU(name="final_relu"),
          layers.GlobalAveragePooling2D(name="pool"),
          layers.Dense(1, name="head"),
          layers.Activation("sigmoid", dtype="float32", name="prob")]


def _features(inputs: Any, cfg: ModelConfig) -> Any:
  """Normalize -> stem -> residual units -> final BN/ReLU -> global average pool."""
  x = Normalize(name="normalize")(inputs)
  for layer in stem_layers(cfg):
    x = layer(x)
  for kwargs in unit_kwargs(cfg):
    x = ResidualUnit(**kwargs)(x)
  final_bn, final_relu, pool = head_layers(cfg)[:3]
  return pool(final_relu(final_bn(x)))


def _input(input_size: int | None) -> Any:
  if input_size is not None and int(input_size) <= 0:
    raise ValueError(f"input_size must be positive or None, got {input_size}")
  side = None if input_size is None else int(input_size)
  return keras.Input(shape=(side, side, 1), dtype="float32", name="patch")


def build_backbone(model_cfg: ModelConfig | Mapping[str, Any], input_size: int | None,
                   name: str = "backbone") -> keras.Model:
  """The feature extractor: patch ``[B, S, S, 1]`` (12-bit units) -> pooled features ``[B, C]``.

  ``C = model_cfg.stage_filters[-1]``. ``input_size=None`` accepts any side; a side divisible by
  the total stride (``stem_stride * (2 if stem_pool) * 2**len(stage_filters)``, 32 at paper
  settings) keeps every feature map exactly aligned.
  """
  cfg = as_model_config(model_cfg)
  inputs = _input(input_size)
  return keras.Model(inputs, _features(inputs, cfg), name=name)


def build_classifier(model_cfg: ModelConfig | Mapping[str, Any], input_size: int | None,
                     name: str = "resnet_classifier") -> keras.Model:
  """The patch classifier: patch ``[B, S, S, 1]`` float32 in 12-bit units -> probability ``[B, 1]``.

  One flat functional model (no nested sub-model), so ``model.get_layer("stage2_unit1")``,
  ``"stem_conv"``, ``"head"`` etc. work. Train it with binary cross-entropy on the probability.
  """
  cfg = as_model_config(model_cfg)
  inputs = _input(input_size)
  x = _features(inputs, cfg)
  head, prob = head_layers(cfg)[3:]
  return keras.Model(inputs, prob(head(x)), name=name)


def weight_layers(model: keras.Model) -> list[layers.Layer]:
  """Convolution and dense layers of a classifier (residual units expanded), in forward order."""
  out = []
  for layer in model.layers:
    if isinstance(layer, ResidualUnit):
      out.extend(layer.convs)
    elif isinstance(layer, (layers.Conv2D, layers.Dense)):
      out.append(layer)
  return out


def flops_breakdown(model_cfg: ModelConfig | Mapping[str, Any], input_size: int
                    ) -> dict[str, int]:
  """Analytic forward FLOPs per sample (2 x multiply-adds) of the classifier, by part.

  Keys: ``stem`` (stem conv), ``units`` (all residual units, projections included), ``head``
  (Dense(1)). BatchNorm, ReLU, pooling and additions are not counted (under 1% here). A training
  step costs about 3x the forward pass.
  """
  cfg = as_model_config(model_cfg)
  side = ceil_div(input_size, cfg.stem_stride)
  stem = side * side * 9 * 1 * cfg.stem_filters
  if cfg.stem_pool:
    side = ceil_div(side, 2)
  units = _units_macs(side, cfg.stem_filters, unit_kwargs(cfg))
  return {"stem": 2 * stem, "units": 2 * units, "head": 2 * cfg.stage_filters[-1]}


def _units_macs(side: int, channels: int, kwargs_list: list[dict[str, Any]]) -> int:
  macs = 0
  for kwargs in kwargs_list:
    filters, strides = kwargs["filters"], kwargs["strides"]
    side = ceil_div(side, strides)
    macs += side * side * 9 * channels * filters    # conv1
    macs += side * side * 9 * filters * filters     # conv2
    if kwargs["project"]:
      macs += side * side * channels * filters      # 1x1 projection
    channels = filters
  return macs


def classifier_flops(model_cfg: ModelConfig | Mapping[str, Any], input_size: int) -> int:
  """Analytic forward FLOPs per sample of `build_classifier` (see `flops_breakdown`)."""
  return sum(flops_breakdown(model_cfg, input_size).values())


def ceil_div(a: int, b: int) -> int:
  """``ceil(a / b)`` for integers (the output side of a "same"-padded strided layer)."""
  return -(-int(a) // int(b))
