"""SpotTune (Guo et al. 2019) on the ResNet patch classifier, as the paper uses it (§2.4.3).

Every residual unit ``stage{i}_unit{j}`` of the trained FFDM classifier becomes a
`GatedResidualUnit` holding a **frozen** copy and a **tuned** (trainable) copy, both clones of the
base unit (rebuilt from its ``get_config`` and loaded with its weights). A small policy ResNet sees
the normalised patch, average-pooled by ``model.policy_downsample``, and emits 2 logits per unit
(``[B, T, 2]``); a `GumbelSoftmax` gate turns them into a hard per-sample, per-unit decision
``a[:, t]`` (index 1 = the tuned copy). Both copies are computed for every sample and mixed after
their ReLU: ``(1 - a) * frozen + a * tuned`` (docs/DESIGN.md, "Models"). Frozen and tuned copies
gate the whole unit, 1x1 projection shortcut included.

What trains (``TrainConfig`` flags; the defaults are discussed in docs/DESIGN.md):

* tuned copies: everything (convs, BN gamma/beta, BN statistics in training mode);
* frozen copies: conv kernels never. ``frozen_bn="frozen"`` (default) makes the whole frozen unit
  ``trainable=False``, so its BN runs in inference mode with fixed gamma/beta/statistics;
  ``frozen_bn="live"`` freezes only its convolutions, as SpotTune's released code does (BN
  gamma/beta trained, batch statistics used and moving statistics updated in training);
* stem (``stem_conv`` + ``stem_bn``, shared by both paths): trainable iff ``train_stem``; with
  ``train_stem=False`` the stem conv is frozen and ``stem_bn`` follows ``frozen_bn``;
* ``final_bn`` (shared): follows ``frozen_bn`` (frozen: inference mode; live: trainable);
* ``head``: initialised from the base model's head (same binary task) and **trainable**; the
  released code instead starts a new head;
* policy network: random initialisation, trainable.

Freezing is re-applied by the model's constructor, so it survives ``.keras`` save/load; setting
``model.trainable = True`` afterwards would undo it.

Inference: ``training=False`` uses ``policy_eval="argmax"`` (one-hot of the argmax of the logits; no
noise) by default, or ``"sample"`` (Gumbel-sampled as the released code does).

How the training code gets the hard decisions (policy statistics, paper Fig. 3):
``prob, gates = model(x, training=..., return_gates=True)`` returns them from the same forward pass
(``gates`` float32 ``[B, T]`` in {0, 1}, 1 = the tuned copy ran), and ``model.policy(x,
training=False)`` computes only the policy. ``model.policy_variables`` / ``model.network_variables``
split the trainable variables for a separate policy learning rate. ``force_gate`` (call argument, or
the ``model.force_gate`` attribute read when the call is traced) forces every gate to 0 (frozen) or
1 (tuned) for tests and analysis.

Only ``keras.layers`` / ``keras.ops`` / ``keras.random`` are used (runs under the JAX backend too).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import keras
import numpy as np
from keras import layers
from keras import ops

from mammo_tf.config import ModelConfig
from mammo_tf.config import TrainConfig
from mammo_tf.models.preprocessing import Normalize
from mammo_tf.models.resnet import ResidualUnit
from mammo_tf.models.resnet import as_model_config
from mammo_tf.models.resnet import batch_norm
from mammo_tf.models.resnet import ceil_div
from mammo_tf.models.resnet import conv2d
from mammo_tf.models.resnet import flops_breakdown
from mammo_tf.models.resnet import head_layers
from mammo_tf.models.resnet import stem_layers
from mammo_tf.models.resnet import unit_kwargs
from mammo_tf.models.resnet import unit_names

_PACKAGE = "mammo_tf"
_TINY = float(np.finfo(np.float32).tiny)
_ONE_MINUS = float(1.0 - 2.0 ** -24)   # largest float32 below 1
FROZEN_BN_MODES = ("frozen", "live")
POLICY_EVAL_MODES = ("argmax", "sample")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GumbelSoftmax(layers.Layer):
  """Gumbel-softmax gate with a hard straight-through estimator, computed in float32.

  Input logits ``[..., K]`` (K = 2 for SpotTune), output ``[..., K]``:

  * training: ``u ~ U[0, 1)`` from a seeded ``keras.random.SeedGenerator``, clipped to
    ``[float32 tiny, 1 - 2**-24]``; ``g = -log(-log u)``; ``y = softmax((logits + g) / tau)``.
    With ``hard`` the output is ``one_hot(argmax(logits + g)) + (y - stop_gradient(y))``: exactly
    0/1 in the forward pass, the gradient of the soft ``y`` in the backward pass. Without
    ``hard`` it is ``y``.
  * inference (``training`` false): ``policy_eval="argmax"`` returns ``one_hot(argmax(logits))``
    (deterministic, no noise); ``"sample"`` samples as in training.

  By the Gumbel-max property the hard choice of class k has probability ``softmax(logits)[k]``
  whatever ``tau`` is; ``tau`` only shapes the gradient (SpotTune keeps 5).
  """

  def __init__(self, tau: float = 5.0, hard: bool = True, policy_eval: str = "argmax",
               seed: int | None = None, **kwargs: Any):
    kwargs["dtype"] = "float32"
    super().__init__(**kwargs)
    if not tau > 0:
      raise ValueError(f"{self.name}: tau must be positive, got {tau}")
    if policy_eval not in POLICY_EVAL_MODES:
      raise ValueError(f"{self.name}: policy_eval must be one of {POLICY_EVAL_MODES}, "
                       f"got {policy_eval!r}")
    self.tau = float(tau)
    self.hard = bool(hard)
    self.policy_eval = policy_eval
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed, name="gumbel_seed")

  def call(self, logits: Any, training: bool | None = None) -> Any:
    logits = ops.cast(logits, "float32")
    if not training and self.policy_eval == "argmax":
      return ops.one_hot(ops.argmax(logits, axis=-1), ops.shape(logits)[-1], dtype="float32")
    u = keras.random.uniform(ops.shape(logits), minval=0.0, maxval=1.0, dtype="float32",
                             seed=self.seed_generator)
    return self.relax(logits, u)

  def relax(self, logits: Any, u: Any) -> Any:
    """The gate for given uniform draws `u` (same shape as `logits`); deterministic."""
    logits = ops.cast(logits, "float32")
    u = ops.clip(ops.cast(u, "float32"), _TINY, _ONE_MINUS)
    perturbed = logits + (-ops.log(-ops.log(u)))
    y = ops.softmax(perturbed / self.tau, axis=-1)
    if not self.hard:
      return y
    hard = ops.one_hot(ops.argmax(perturbed, axis=-1), ops.shape(logits)[-1], dtype="float32")
    # This operand order keeps the forward value exactly 0/1: hard + (y - y) is hard exactly,
    # whereas (hard - stop_gradient(y)) + y can round away from 0/1 in float32.
    return hard + (y - ops.stop_gradient(y))

  def compute_output_shape(self, input_shape: tuple) -> tuple:
    return tuple(input_shape)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.pop("dtype", None)
    config.update(tau=self.tau, hard=self.hard, policy_eval=self.policy_eval, seed=self.seed)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GatedResidualUnit(layers.Layer):
  """Runs a frozen and a tuned `ResidualUnit` and mixes their (post-ReLU) outputs per sample.

  ``call(x, gate)`` with ``gate`` of shape ``[B]`` (1 = tuned copy) returns
  ``(1 - gate) * frozen(x) + gate * tuned(x)``; with a 0/1 gate the result equals one copy exactly.
  """

  def __init__(self, frozen_unit: ResidualUnit | dict, tuned_unit: ResidualUnit | dict,
               **kwargs: Any):
    super().__init__(**kwargs)
    if isinstance(frozen_unit, dict):
      frozen_unit = keras.saving.deserialize_keras_object(frozen_unit)
    if isinstance(tuned_unit, dict):
      tuned_unit = keras.saving.deserialize_keras_object(tuned_unit)
    self.frozen_unit = frozen_unit
    self.tuned_unit = tuned_unit

  def build(self, inputs_shape: tuple, gate_shape: tuple | None = None) -> None:
    for unit in (self.frozen_unit, self.tuned_unit):
      if not unit.built:   # units deserialised from a config arrive built
        unit.build(tuple(inputs_shape))
    self.built = True

  def call(self, inputs: Any, gate: Any, training: bool | None = None) -> Any:
    frozen = self.frozen_unit(inputs, training=training)
    tuned = self.tuned_unit(inputs, training=training)
    a = ops.reshape(ops.cast(gate, frozen.dtype), (-1, 1, 1, 1))
    return (1.0 - a) * frozen + a * tuned

  def compute_output_shape(self, inputs_shape: tuple, gate_shape: tuple | None = None) -> tuple:
    return self.frozen_unit.compute_output_shape(tuple(inputs_shape))

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(frozen_unit=keras.saving.serialize_keras_object(self.frozen_unit),
                  tuned_unit=keras.saving.serialize_keras_object(self.tuned_unit))
    return config


def build_policy_network(model_cfg: ModelConfig | Mapping[str, Any], input_size: int | None,
                         num_units: int, name: str = "policy_net") -> keras.Model:
  """The policy ("agent"): a ResNet-8 on the normalised patch -> logits ``[B, num_units, 2]``.

  Input: the *normalised* patch ``[B, S, S, 1]``. ``policy_avgpool`` average-pools it by
  ``model.policy_downsample`` (skipped at 1), then ``policy_stem_conv`` 3x3/1 with
  ``policy_stem_filters`` + BN + ReLU, one projected stride-2 `ResidualUnit` per entry of
  ``policy_stage_filters``, BN + ReLU, global average pool and ``policy_logits`` Dense(2 *
  num_units) reshaped to ``[B, T, 2]`` (float32). Random (He-normal / Glorot) initialisation.
  """
  cfg = as_model_config(model_cfg)
  if num_units <= 0:
    raise ValueError(f"num_units must be positive, got {num_units}")
  side = None if input_size is None else int(input_size)
  inputs = keras.Input(shape=(side, side, 1), name="policy_input")
  x = inputs
  if cfg.policy_downsample > 1:
    x = layers.AveragePooling2D(cfg.policy_downsample, name="policy_avgpool")(x)
  x = conv2d(cfg.policy_stem_filters, 3, 1, "policy_stem_conv")(x)
  x = batch_norm(cfg.bn_momentum, cfg.bn_epsilon, "policy_stem_bn")(x)
  x = layers.ReLU(name="policy_stem_relu")(x)
  for i, filters in enumerate(cfg.policy_stage_filters):
    x = ResidualUnit(filters, strides=2, project=True, bn_momentum=cfg.bn_momentum,
                     bn_epsilon=cfg.bn_epsilon, name=f"policy_stage{i + 1}_unit1")(x)
  x = batch_norm(cfg.bn_momentum, cfg.bn_epsilon, "policy_final_bn")(x)
  x = layers.ReLU(name="policy_final_relu")(x)
  x = layers.GlobalAveragePooling2D(name="policy_pool")(x)
  x = layers.Dense(2 * num_units, dtype="float32", name="policy_logits")(x)
  x = layers.Reshape((num_units, 2), dtype="float32", name="policy_reshape")(x)
  return keras.Model(inputs, x, name=name)


def policy_flops(model_cfg: ModelConfig | Mapping[str, Any], input_size: int,
                 num_units: int) -> int:
  """Analytic forward FLOPs per sample of `build_policy_network` (2 x multiply-adds)."""
  cfg = as_model_config(model_cfg)
  side = int(input_size) // max(1, cfg.policy_downsample)
  macs = side * side * 9 * cfg.policy_stem_filters
  channels = cfg.policy_stem_filters
  for filters in cfg.policy_stage_filters:
    side = ceil_div(side, 2)
    macs += side * side * (9 * channels * filters + 9 * filters * filters + channels * filters)
    channels = filters
  macs += channels * 2 * num_units
  return 2 * macs


def spottune_flops(model_cfg: ModelConfig | Mapping[str, Any], input_size: int) -> int:
  """Analytic forward FLOPs per sample of the SpotTune model: both copies of every unit run."""
  parts = flops_breakdown(model_cfg, input_size)
  return (parts["stem"] + 2 * parts["units"] + parts["head"]
          + policy_flops(model_cfg, input_size, len(unit_names(model_cfg))))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpotTuneModel(keras.Model):
  """The SpotTune classifier: patch ``[B, S, S, 1]`` (12-bit units) -> probability ``[B, 1]``.

  Build it with `build_spottune` (which copies the base weights); the constructor alone builds a
  randomly initialised model of the same structure (that is what ``.keras`` loading does before it
  restores the weights). Layers: ``normalize``, ``stem_conv``/``stem_bn``/``stem_relu``
  (/``stem_pool``), one `GatedResidualUnit` ``stage{i}_unit{j}`` per base unit (sublayers ``frozen``
  and ``tuned``), ``final_bn``, ``final_relu``, ``pool``, ``head``, ``prob``, ``policy_net`` and
  ``gumbel``.

  Call: ``model(x, training=None, force_gate=None, return_gates=False)``; see the module docstring.
  """

  def __init__(self, model_cfg: ModelConfig | Mapping[str, Any], input_size: int | None,
               frozen_bn: str = "frozen", train_stem: bool = False,
               policy_eval: str = "argmax", seed: int | None = 0,
               normalize_config: Mapping[str, Any] | None = None, **kwargs: Any):
    super().__init__(**kwargs)
    cfg = as_model_config(model_cfg)
    if frozen_bn not in FROZEN_BN_MODES:
      raise ValueError(f"frozen_bn must be one of {FROZEN_BN_MODES}, got {frozen_bn!r}")
    if policy_eval not in POLICY_EVAL_MODES:
      raise ValueError(f"policy_eval must be one of {POLICY_EVAL_MODES}, got {policy_eval!r}")
    self.model_config = cfg
    self.input_size = None if input_size is None else int(input_size)
    self.frozen_bn = frozen_bn
    self.train_stem = bool(train_stem)
    self.policy_eval = policy_eval
    self.seed = seed
    self.force_gate = None

    self.normalize_config = dict(normalize_config or {})
    self.normalize = Normalize(**self.normalize_config, name="normalize")
    stem = stem_layers(cfg)
    self.stem_conv, self.stem_bn, self.stem_relu = stem[:3]
    self.stem_pool = stem[3] if len(stem) > 3 else None
    self.gated_units = []
    for kwargs_ in unit_kwargs(cfg):
      unit_name = kwargs_.pop("name")
      self.gated_units.append(GatedResidualUnit(
          ResidualUnit(**kwargs_, name="frozen"), ResidualUnit(**kwargs_, name="tuned"),
          name=unit_name))
    self.final_bn, self.final_relu, self.pool, self.head, self.prob = head_layers(cfg)
    self.num_units = len(self.gated_units)
    self.policy_net = build_policy_network(cfg, self.input_size, self.num_units)
    self.gumbel = GumbelSoftmax(tau=cfg.gumbel_tau, hard=True, policy_eval=policy_eval,
                                seed=seed, name="gumbel")
    self.build((None, self.input_size, self.input_size, 1))
    self._apply_freezing()

  # -- structure -------------------------------------------------------------------------------

  def _apply_freezing(self) -> None:
    frozen = self.frozen_bn == "frozen"
    for gated in self.gated_units:
      if frozen:
        gated.frozen_unit.trainable = False
      else:
        for conv in gated.frozen_unit.convs:
          conv.trainable = False
    if not self.train_stem:
      self.stem_conv.trainable = False
      if frozen:
        self.stem_bn.trainable = False
    if frozen:
      self.final_bn.trainable = False

  def build(self, input_shape: tuple) -> None:
    shape = (None,) + tuple(input_shape[1:])
    if not self.normalize.built:
      self.normalize.build(shape)
    self.gumbel.build((None, self.num_units, 2))
    self.stem_conv.build(shape)
    shape = self.stem_conv.compute_output_shape(shape)
    self.stem_bn.build(shape)
    if self.stem_pool is not None:
      shape = self.stem_pool.compute_output_shape(shape)
    for gated in self.gated_units:
      gated.build(shape)
      shape = gated.compute_output_shape(shape)
    self.final_bn.build(shape)
    self.head.build((None, shape[-1]))
    self.built = True

  @property
  def unit_names(self) -> list[str]:
    return [g.name for g in self.gated_units]

  @property
  def policy_variables(self) -> list[Any]:
    """Trainable variables of the policy network."""
    return list(self.policy_net.trainable_variables)

  @property
  def network_variables(self) -> list[Any]:
    """Trainable variables outside the policy network (tuned units, head, ...)."""
    policy_ids = {id(v) for v in self.policy_variables}
    return [v for v in self.trainable_variables if id(v) not in policy_ids]

  # -- forward ---------------------------------------------------------------------------------

  def _decisions(self, x: Any, training: bool | None) -> Any:
    logits = self.policy_net(x, training=training)
    return self.gumbel(logits, training=training)[:, :, 1]

  def policy(self, inputs: Any, training: bool = False) -> Any:
    """Hard decisions float32 ``[B, T]`` in {0, 1} (1 = tuned copy) for a patch batch.

    ``training=False`` follows ``policy_eval``; ``training=True`` samples (and runs the policy's
    BN in training mode).
    """
    return self._decisions(self.normalize(inputs), training)

  def call(self, inputs: Any, training: bool | None = None, force_gate: float | None = None,
           return_gates: bool = False) -> Any:
    x = self.normalize(inputs)
    force = self.force_gate if force_gate is None else force_gate
    if force is None:
      gates = self._decisions(x, training)
    else:
      if force not in (0, 1):
        raise ValueError(f"force_gate must be 0, 1 or None, got {force!r}")
      base = ops.zeros_like(ops.cast(x[:, 0, 0, 0], "float32")) + float(force)
      gates = ops.stack([base] * self.num_units, axis=1)
    h = self.stem_relu(self.stem_bn(self.stem_conv(x), training=training))
    if self.stem_pool is not None:
      h = self.stem_pool(h)
    for t, gated in enumerate(self.gated_units):
      h = gated(h, gates[:, t], training=training)
    h = self.pool(self.final_relu(self.final_bn(h, training=training)))
    prob = self.prob(self.head(h))
    if return_gates:
      return prob, gates
    return prob

  def compute_output_shape(self, input_shape: tuple) -> tuple:
    return (input_shape[0], 1)

  def get_config(self) -> dict[str, Any]:
    cfg = dataclasses.asdict(self.model_config)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return {"name": self.name, "trainable": self.trainable, "model_cfg": cfg,
            "input_size": self.input_size, "frozen_bn": self.frozen_bn,
            "train_stem": self.train_stem, "policy_eval": self.policy_eval, "seed": self.seed,
            "normalize_config": dict(self.normalize_config)}


def _unit_signature(config: Mapping[str, Any]) -> dict[str, Any]:
  return {k: config[k] for k in ("filters", "strides", "project", "bn_momentum", "bn_epsilon")}


def build_spottune(base_classifier: keras.Model, model_cfg: ModelConfig | Mapping[str, Any],
                   train_cfg: TrainConfig, seed: int | None = 0) -> SpotTuneModel:
  """SpotTune model initialised from a trained `build_classifier` model.

  Clones ``normalize`` (by config, and weights if any); copies ``stem_conv``, ``stem_bn``, every
  ``stage{i}_unit{j}`` into both its frozen and its tuned copy, ``final_bn`` and ``head``; the
  policy network stays randomly initialised. Uses ``train_cfg.frozen_bn``,
  ``train_cfg.train_stem`` and ``train_cfg.policy_eval``; ``seed`` seeds the Gumbel noise (and
  nothing else: Keras initialisers follow ``keras.utils.set_random_seed``). The input size is the
  base model's.

  Raises ValueError naming the layer when the base model does not match `model_cfg`.
  """
  cfg = as_model_config(model_cfg)
  input_size = base_classifier.input_shape[1]

  def base_layer(name: str) -> layers.Layer:
    try:
      return base_classifier.get_layer(name)
    except ValueError as e:
      raise ValueError(f"base model {base_classifier.name!r} has no layer {name!r}; "
                       "is it a build_classifier model?") from e

  def copy(src: layers.Layer, dst: layers.Layer) -> None:
    try:
      dst.set_weights(src.get_weights())
    except ValueError as e:
      raise ValueError(f"base layer {src.name!r} does not match the SpotTune layer "
                       f"{dst.name!r} built from the model config: {e}") from e

  normalize_config = {k: v for k, v in base_layer("normalize").get_config().items()
                      if k not in ("name", "trainable", "dtype")}
  model = SpotTuneModel(cfg, input_size, frozen_bn=train_cfg.frozen_bn,
                        train_stem=train_cfg.train_stem, policy_eval=train_cfg.policy_eval,
                        seed=seed, normalize_config=normalize_config, name="spottune")
  base_units = [l for l in base_classifier.layers if isinstance(l, ResidualUnit)]
  if len(base_units) != model.num_units:
    raise ValueError(f"base model has {len(base_units)} residual units, the model config "
                     f"{model.num_units}")
  if model.normalize.weights:
    copy(base_layer("normalize"), model.normalize)
  for name in ("stem_conv", "stem_bn"):
    copy(base_layer(name), getattr(model, name))
  for gated in model.gated_units:
    src = base_layer(gated.name)
    want = _unit_signature(gated.frozen_unit.get_config())
    have = _unit_signature(src.get_config())
    if want != have:
      raise ValueError(f"base unit {gated.name!r} is {have}, the model config gives {want}")
    copy(src, gated.frozen_unit)
    copy(src, gated.tuned_unit)
  for name in ("final_bn", "head"):
    copy(base_layer(name), getattr(model, name))
  return model
