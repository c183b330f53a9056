"""ResNet patch classifier: counts, names, round trips, FLOPs, both Keras backends."""

import textwrap

import keras
import numpy as np
import pytest

from mammo_tf.config import ModelConfig
from mammo_tf.config import get_config
from mammo_tf.models import resnet
from mammo_tf.models.preprocessing import Normalize
from tests import testing


def _count(weights):
  return sum(int(np.prod(w.shape)) for w in weights)


def _patches(n, side, seed=0):
  return np.random.default_rng(seed).uniform(0, 4095, (n, side, side, 1)).astype(np.float32)


@pytest.mark.parametrize("preset,size,trainable,non_trainable", [
    ("paper", 512, 5_858_273, 8_640),
    ("demo", 96, 1_466_865, 4_320),
    ("tiny", 64, 92_905, 1_088),
])
def test_parameter_and_layer_counts_are_pinned(preset, size, trainable, non_trainable):
  cfg = get_config(preset)
  assert cfg.input_size == size
  model = resnet.build_classifier(cfg.model, size)
  weight_layers = resnet.weight_layers(model)
  convs = [l for l in weight_layers if isinstance(l, keras.layers.Conv2D)]
  dense = [l for l in weight_layers if isinstance(l, keras.layers.Dense)]
  # 1 stem + 24 unit convs + 3 projections = 28 convs, + 1 dense = 29 weight layers.
  assert (len(convs), len(dense), len(weight_layers)) == (28, 1, 29)
  assert sum(1 for c in convs if c.kernel_size == (1, 1)) == 3
  assert _count(model.trainable_weights) == trainable
  assert _count(model.non_trainable_weights) == non_trainable
  # Non-trainable = the BatchNorm moving mean and variance, nothing else.
  bn_channels = sum(int(np.prod(l.moving_mean.shape)) for l in _batch_norms(model))
  assert 2 * bn_channels == non_trainable
  assert model.output.shape == (None, 1) and model.input.shape == (None, size, size, 1)


def _batch_norms(model):
  out = []
  for layer in model.layers:
    if isinstance(layer, resnet.ResidualUnit):
      out.extend(layer.batch_norms)
    elif isinstance(layer, keras.layers.BatchNormalization):
      out.append(layer)
  return out


def test_paper_architecture_layers_and_hyperparameters():
  model = resnet.build_classifier(ModelConfig(), 512)
  names = [l.name for l in model.layers]
  units = [f"stage{i}_unit{j}" for i in (1, 2, 3) for j in (1, 2, 3, 4)]
  assert names == (["patch", "normalize", "stem_conv", "stem_bn", "stem_relu", "stem_pool"] + units
                   + ["final_bn", "final_relu", "pool", "head", "prob"])
  assert isinstance(model.get_layer("normalize"), Normalize)
  assert resnet.unit_names(ModelConfig()) == units
  stem = model.get_layer("stem_conv")
  assert (stem.filters, stem.strides, stem.kernel_size) == (32, (2, 2), (3, 3))
  for name, filters in (("stage1_unit1", 64), ("stage2_unit1", 128), ("stage3_unit1", 256)):
    unit = model.get_layer(name)
    assert (unit.filters, unit.strides, unit.project) == (filters, 2, True)
    # The stride-2 projection is a subsample + unit-stride 1x1 conv (see the next test).
    assert unit.proj_conv.kernel_size == (1, 1) and unit.proj_conv.strides == (1, 1)
  for name in ("stage1_unit2", "stage2_unit4", "stage3_unit3"):
    unit = model.get_layer(name)
    assert (unit.strides, unit.project, unit.proj_conv) == (1, False, None)
  for layer in resnet.weight_layers(model)[:-1]:
    assert layer.use_bias is False
    assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
  for bn in _batch_norms(model):
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
  # Final feature map 16x16 at 512 px (total stride 32).
  assert model.get_layer("stage3_unit4").output.shape == (None, 16, 16, 256)
  assert model.get_layer("head").units == 1
  assert [v.path for v in model.get_layer("stage1_unit1").weights][:2] == [
      "stage1_unit1/conv1/kernel", "stage1_unit1/bn1/gamma"]


def test_backbone_returns_pooled_features():
  cfg = get_config("tiny").model
  backbone = resnet.build_backbone(cfg, 64)
  assert backbone.output.shape == (None, cfg.stage_filters[-1])
  assert backbone.get_layer("stage3_unit4") is not None


def test_outputs_are_probabilities_and_size_agnostic():
  keras.utils.set_random_seed(0)   # unseeded, about one initialisation in three saturated at 1.0
  cfg = get_config("tiny").model
  model = resnet.build_classifier(cfg, None)
  for side in (32, 64, 96):
    prob = model(_patches(3, side), training=False)
    assert prob.shape == (3, 1) and keras.backend.standardize_dtype(prob.dtype) == "float32"
    p = np.asarray(prob)
    assert np.all((p > 0) & (p < 1))


def test_config_and_keras_file_round_trips(tmp_path):
  cfg = get_config("tiny").model
  keras.utils.set_random_seed(1)
  model = resnet.build_classifier(cfg, 32)
  x = _patches(4, 32)
  # Move the BN statistics away from their initial values, so that the round trip checks them.
  for _ in range(2):
    model(x, training=True)
  want = np.asarray(model(x, training=False))

  clone = testing.assert_config_round_trip(model, x, training=False)
  assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
  loaded = testing.assert_keras_file_round_trip(model, str(tmp_path / "m.keras"), x,
                                                training=False)
  np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), want)
  assert isinstance(loaded.get_layer("stage2_unit1"), resnet.ResidualUnit)


def test_residual_unit_config_clone():
  unit = resnet.ResidualUnit(16, strides=2, project=True, bn_momentum=0.9, bn_epsilon=1e-5,
                             name="stage2_unit1")
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype(np.float32)
  unit(x)
  clone = testing.assert_config_round_trip(unit, x)
  assert clone.compute_output_shape((None, 8, 8, 8)) == (None, 4, 4, 16)
  with pytest.raises(ValueError, match="identity shortcut"):
    resnet.ResidualUnit(16, strides=2, project=False)


def test_analytic_flops_match_the_built_layers():
  for preset in ("tiny", "demo"):
    cfg = get_config(preset)
    model = resnet.build_classifier(cfg.model, cfg.input_size)
    macs = 0
    for layer in model.layers:
      if isinstance(layer, resnet.ResidualUnit):
        _, h, w, _ = layer.output.shape
        macs += sum(h * w * int(np.prod(c.kernel.shape)) for c in layer.convs)
      elif isinstance(layer, keras.layers.Conv2D):
        _, h, w, _ = layer.output.shape
        macs += h * w * int(np.prod(layer.kernel.shape))
      elif isinstance(layer, keras.layers.Dense):
        macs += int(np.prod(layer.kernel.shape))
    assert resnet.classifier_flops(cfg.model, cfg.input_size) == 2 * macs
  # Paper width: 3.44 G multiply-adds per 512 px patch.
  assert resnet.classifier_flops(ModelConfig(), 512) == 6_882_853_376


def test_mixed_precision_output_is_float32():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = resnet.build_classifier(get_config("tiny").model, 32)
    prob = model(_patches(2, 32), training=False)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert keras.backend.standardize_dtype(prob.dtype) == "float32"
  assert model.get_layer("stage1_unit1").conv1.compute_dtype == "bfloat16"
  assert model.get_layer("stem_conv").compute_dtype == "float32"
  assert model.get_layer("normalize").compute_dtype == "float32"


BACKEND_SCRIPT = textwrap.dedent("""
  import os
  import numpy as np
  import keras
  assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
  from mammo_tf.config import get_config
  from mammo_tf.models import resnet, spottune
  cfg = get_config("tiny")
  x = np.random.default_rng(0).uniform(0, 4095, (2, 32, 32, 1)).astype("float32")
  base = resnet.build_classifier(cfg.model, 32)
  p = np.asarray(base(x, training=False))
  model = spottune.build_spottune(base, cfg.model, cfg.train)
  q = np.asarray(model(x, training=False, force_gate=0))
  np.testing.assert_allclose(p, q, rtol=0, atol=1e-6)
  prob, gates = model(x, training=True, return_gates=True)
  assert np.asarray(prob).shape == (2, 1) and np.asarray(gates).shape == (2, 12)
  print("BACKEND_OK")
""")


@pytest.mark.parametrize("backend", testing.BACKENDS)
def test_models_run_under_each_keras_backend(backend):
  """The classifier and SpotTune (keras.layers / keras.ops only): forced frozen gates give the
  base model's output, and a training call returns probabilities and gates, under each backend."""
  assert "BACKEND_OK" in testing.run_under_backend(BACKEND_SCRIPT, backend)


@pytest.mark.parametrize("side", [48, 49, 50, 64])
def test_projection_shortcut_equals_a_strided_1x1_convolution(side):
  """The subsample + 1x1 form of the projection is Keras' own strided 1x1 'same' convolution."""
  unit = resnet.ResidualUnit(8, strides=2, project=True)
  x = np.random.default_rng(side).normal(size=(2, side, side, 4)).astype("float32")
  unit(x)
  reference = keras.layers.Conv2D(8, 1, strides=2, padding="same", use_bias=False)
  reference.build(x.shape)
  reference.set_weights(unit.proj_conv.get_weights())
  expected = keras.ops.convert_to_numpy(reference(x))
  got = keras.ops.convert_to_numpy(unit.proj_conv(x[:, ::2, ::2, :]))
  assert got.shape == expected.shape == (2, -(-side // 2), -(-side // 2), 8)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
