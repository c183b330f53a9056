"""Gumbel gate and SpotTune model: the model parts and their tests."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammo_tf.config import get_config
from mammo_tf.models import resnet
from mammo_tf.models import spottune
from tests import testing

SIDE = 32


def _patches(n, side=SIDE, seed=0):
  return np.random.default_rng(seed).uniform(0, 4095, (n, side, side, 1)).astype(np.float32)


def _count(weights):
  return sum(int(np.prod(w.shape)) for w in weights)


# --- GumbelSoftmax ------------------------------------------------------------


def test_gumbel_forward_values_are_exactly_one_hot():
  layer = spottune.GumbelSoftmax(tau=5.0, seed=1)
  logits = np.random.default_rng(0).normal(scale=3.0, size=(64, 12, 2)).astype(np.float32)
  for training in (True, False):
    gate = np.asarray(layer(logits, training=training))
    assert gate.dtype == np.float32 and gate.shape == (64, 12, 2)
    assert set(np.unique(gate)) <= {0.0, 1.0}
    np.testing.assert_array_equal(gate.sum(-1), np.ones((64, 12), np.float32))


def test_gumbel_gradients_reach_the_logits():
  layer = spottune.GumbelSoftmax(tau=5.0, seed=2)
  logits = tf.Variable(np.random.default_rng(1).normal(size=(16, 12, 2)).astype(np.float32))
  weights = tf.constant(np.random.default_rng(2).normal(size=(16, 12, 2)).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(logits, training=True) * weights)
  grad = tape.gradient(loss, logits).numpy()
  assert np.all(np.isfinite(grad))
  assert np.count_nonzero(grad) == grad.size
  # Straight-through: the gradient is that of the soft sample, antisymmetric over the 2 classes.
  np.testing.assert_allclose(grad[..., 0], -grad[..., 1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tau", [0.5, 5.0])
def test_gumbel_choice_frequency_matches_softmax(tau):
  logit_pairs = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, -1.0], [-2.0, 0.5], [3.0, 0.0]], np.float32)
  n = 20000
  logits = np.broadcast_to(logit_pairs[None], (n,) + logit_pairs.shape)
  gate = np.asarray(spottune.GumbelSoftmax(tau=tau, seed=3)(logits, training=True))
  freq = gate[..., 1].mean(axis=0)
  expected = np.exp(logit_pairs[:, 1]) / np.exp(logit_pairs).sum(axis=1)
  np.testing.assert_allclose(freq, expected, rtol=0, atol=0.02)


def test_gumbel_is_finite_for_extreme_logits_and_temperatures():
  logits = np.array([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4], [0.0, 1e4]],
                    np.float32)[:, None, :]
  for tau in (0.1, 0.5, 1.0, 5.0, 10.0):
    layer = spottune.GumbelSoftmax(tau=tau, seed=4)
    var = tf.Variable(np.tile(logits, (50, 1, 1)))
    with tf.GradientTape() as tape:
      gate = layer(var, training=True)
      loss = tf.reduce_sum(gate[..., 1])
    grad = tape.gradient(loss, var).numpy()
    gate = gate.numpy()
    assert np.all(np.isfinite(gate)) and np.all(np.isfinite(grad)), tau
    assert set(np.unique(gate)) <= {0.0, 1.0}
    assert np.all(gate[0::5, 0, 0] == 1.0) and np.all(gate[1::5, 0, 1] == 1.0)
  # The uniform draws at and beyond the clipping bounds stay finite too.
  layer = spottune.GumbelSoftmax(tau=0.1)
  u = np.array([0.0, np.finfo(np.float32).tiny, 0.5, 1.0 - 2.0 ** -24, 1.0], np.float32)
  u = np.stack([u, u[::-1]], axis=-1)[:, None, :]
  for scale in (0.0, 1e4):
    out = layer.relax(np.full(u.shape, scale, np.float32) * np.array([1, -1], np.float32), u)
    out = np.asarray(out)
    assert np.all(np.isfinite(out)) and set(np.unique(out)) <= {0.0, 1.0}


def test_gumbel_same_seed_same_draws_and_deterministic_eval():
  logits = np.random.default_rng(5).normal(size=(32, 12, 2)).astype(np.float32)
  a = spottune.GumbelSoftmax(seed=7)
  b = spottune.GumbelSoftmax(seed=7)
  first = [np.asarray(a(logits, training=True)) for _ in range(3)]
  second = [np.asarray(b(logits, training=True)) for _ in range(3)]
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(first[0], first[1])       # the generator advances
  other = np.asarray(spottune.GumbelSoftmax(seed=8)(logits, training=True))
  assert not np.array_equal(first[0], other)
  # Inference with argmax: the one-hot of argmax(logits), no noise, every time.
  want = np.eye(2, dtype=np.float32)[np.argmax(logits, axis=-1)]
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(a(logits, training=False)), want)
  # Inference with "sample" draws noise.
  sampler = spottune.GumbelSoftmax(seed=7, policy_eval="sample")
  draws = [np.asarray(sampler(logits, training=False)) for _ in range(2)]
  np.testing.assert_array_equal(draws[0], first[0])
  assert not np.array_equal(draws[0], draws[1])


def test_gumbel_config_round_trip_and_validation():
  layer = spottune.GumbelSoftmax(tau=2.5, hard=False, policy_eval="sample", seed=3, name="g")
  clone = spottune.GumbelSoftmax.from_config(layer.get_config())
  assert (clone.tau, clone.hard, clone.policy_eval, clone.seed, clone.name) == (
      2.5, False, "sample", 3, "g")
  soft = np.asarray(clone(np.zeros((4, 3, 2), np.float32), training=True))
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="tau"):
    spottune.GumbelSoftmax(tau=0.0)
  with pytest.raises(ValueError, match="policy_eval"):
    spottune.GumbelSoftmax(policy_eval="mean")


# --- SpotTune model -----------------------------------------------------------


def _tiny_cfg(**train):
  cfg = get_config("tiny")
  return cfg.model, dataclasses.replace(cfg.train, **train)


def _trained_looking_base(model_cfg, seed=0):
  """A tiny base classifier whose BN parameters and statistics are not at their initial values."""
  keras.utils.set_random_seed(seed)
  base = resnet.build_classifier(model_cfg, SIDE)
  rng = np.random.default_rng(seed)
  for layer in base.layers:
    bns = layer.batch_norms if isinstance(layer, resnet.ResidualUnit) else (
        [layer] if isinstance(layer, keras.layers.BatchNormalization) else [])
    for bn in bns:
      c = bn.gamma.shape[0]
      bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                      rng.uniform(0.5, 2.0, c)])
  return base


@pytest.fixture(scope="module")
def base():
  return _trained_looking_base(get_config("tiny").model)


def test_structure_and_trainable_split(base):
  model_cfg, train_cfg = _tiny_cfg()
  model = spottune.build_spottune(base, model_cfg, train_cfg)
  assert model.unit_names == resnet.unit_names(model_cfg) and model.num_units == 12
  assert model.policy_net.output.shape == (None, 12, 2)
  trainable = {id(v) for v in model.trainable_variables}
  for gated in model.gated_units:
    assert not any(id(v) in trainable for v in gated.frozen_unit.weights)
    assert all(id(v) in trainable for v in gated.tuned_unit.trainable_weights)
    assert len(gated.tuned_unit.trainable_weights) == (9 if gated.tuned_unit.project else 6)
  for name in ("stem_conv", "stem_bn", "final_bn"):
    assert not getattr(model, name).trainable
  assert model.head.trainable and model.policy_variables
  np.testing.assert_array_equal(model.head.get_weights()[0],
                                base.get_layer("head").get_weights()[0])
  assert len(model.network_variables) + len(model.policy_variables) == len(
      model.trainable_variables)
  # Paper width counts, as reported in the docs: see test_paper_width_parameter_counts.

  live = spottune.build_spottune(base, *_tiny_cfg(frozen_bn="live", train_stem=True))
  trainable = {id(v) for v in live.trainable_variables}
  for gated in live.gated_units:
    assert not any(id(c.kernel) in trainable for c in gated.frozen_unit.convs)
    assert all(id(bn.gamma) in trainable for bn in gated.frozen_unit.batch_norms)
  assert live.stem_conv.trainable and live.stem_bn.trainable and live.final_bn.trainable


def test_paper_width_parameter_counts():
  cfg = get_config("paper")
  base = resnet.build_classifier(cfg.model, 512)
  model = spottune.build_spottune(base, cfg.model, cfg.train)
  assert _count(model.trainable_weights) == 7_071_353
  assert _count(model.non_trainable_weights) == 5_877_984
  assert _count(model.policy_net.trainable_weights) == 1_213_944
  assert spottune.spottune_flops(cfg.model, 512) == 15_146_693_120


def test_forced_gates_reproduce_the_base_model_exactly(base):
  model_cfg, train_cfg = _tiny_cfg()
  x = _patches(6)
  want = np.asarray(base(x, training=False))
  for frozen_bn in ("frozen", "live"):
    model = spottune.build_spottune(base, model_cfg,
                                    dataclasses.replace(train_cfg, frozen_bn=frozen_bn))
    for force in (0, 1):
      np.testing.assert_array_equal(np.asarray(model(x, training=False, force_gate=force)), want)
    model.force_gate = 1
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), want)
    model.force_gate = None
    # Right after initialisation both copies are equal, so any policy gives the base outputs.
    prob, gates = model(x, training=False, return_gates=True)
    np.testing.assert_array_equal(np.asarray(prob), want)
    gates = np.asarray(gates)
    assert gates.shape == (6, 12) and set(np.unique(gates)) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(model.policy(x, training=False)), gates)
  with pytest.raises(ValueError, match="force_gate"):
    model(x, force_gate=0.5)


def _step(model, optimizer, x, y):
  with tf.GradientTape() as tape:
    prob, gates = model(x, training=True, return_gates=True)
    loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, prob))
  variables = model.trainable_variables
  grads = tape.gradient(loss, variables)
  optimizer.apply(grads, variables)
  return np.asarray(gates), grads


def _snapshot(layer):
  return [np.array(w) for w in layer.get_weights()]


@pytest.mark.parametrize("frozen_bn", ["frozen", "live"])
def test_training_step_updates_only_tuned_copies_and_feeds_the_policy(base, frozen_bn):
  model_cfg, train_cfg = _tiny_cfg(frozen_bn=frozen_bn)
  model = spottune.build_spottune(base, model_cfg, train_cfg, seed=3)
  x = _patches(8, seed=1)
  y = np.array([[0], [1]] * 4, np.float32)
  frozen_before = [_snapshot(g.frozen_unit) for g in model.gated_units]
  tuned_before = [[np.array(c.kernel) for c in g.tuned_unit.convs] for g in model.gated_units]
  stem_before = _snapshot(model.stem_conv)
  head_before = _snapshot(model.head)

  optimizer = keras.optimizers.Adam(learning_rate=1e-2)
  gates, grads = _step(model, optimizer, x, y)
  assert all(g is not None and np.all(np.isfinite(np.asarray(g))) for g in grads)

  changed_units = 0
  for t, gated in enumerate(model.gated_units):
    after = _snapshot(gated.frozen_unit)
    for c, conv in enumerate(gated.frozen_unit.convs):     # kernels never move
      np.testing.assert_array_equal(np.asarray(conv.kernel), np.asarray(
          base.get_layer(gated.name).convs[c].kernel))
    if frozen_bn == "frozen":                               # nothing in the frozen copy moves
      for w0, w1 in zip(frozen_before[t], after):
        np.testing.assert_array_equal(w0, w1)
    else:                     # live BN: gamma/beta train and the moving statistics update
      bn = gated.frozen_unit.bn1
      assert gated.frozen_unit.weights[3] is bn.moving_mean
      assert not np.array_equal(np.asarray(bn.moving_mean), frozen_before[t][3])
    tuned_after = [np.asarray(c.kernel) for c in gated.tuned_unit.convs]
    moved = [not np.array_equal(a, b) for a, b in zip(tuned_before[t], tuned_after)]
    if gates[:, t].any():      # a tuned copy gets gradient only from samples routed to it
      assert all(moved), (gated.name, gates[:, t])
      changed_units += 1
    else:
      assert not any(moved)
  assert changed_units >= 6
  for w0, w1 in zip(stem_before, _snapshot(model.stem_conv)):
    np.testing.assert_array_equal(w0, w1)
  assert not np.array_equal(head_before[0], model.head.get_weights()[0])

  # Now that the copies differ, the policy gets a non-zero gradient through the soft gate.
  with tf.GradientTape() as tape:
    prob = model(x, training=True)
    loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, prob))
  grads = tape.gradient(loss, model.policy_variables)
  assert all(g is not None for g in grads)
  grads = [np.asarray(g) for g in grads]
  assert all(np.all(np.isfinite(g)) for g in grads)
  kernel = model.policy_net.get_layer("policy_logits").kernel
  logits_grad = grads[[id(v) for v in model.policy_variables].index(id(kernel))]
  assert np.abs(logits_grad).max() > 0


def test_keras_file_round_trip(base, tmp_path):
  model_cfg, train_cfg = _tiny_cfg()
  model = spottune.build_spottune(base, model_cfg, train_cfg, seed=5)
  x = _patches(8, seed=2)
  y = np.array([[1], [0]] * 4, np.float32)
  _step(model, keras.optimizers.Adam(learning_rate=1e-2), x, y)   # make the copies differ
  loaded = testing.assert_keras_file_round_trip(model, str(tmp_path / "spottune.keras"), x,
                                                training=False, return_gates=True)
  assert isinstance(loaded, spottune.SpotTuneModel)
  assert _count(loaded.trainable_weights) == _count(model.trainable_weights)
  assert not loaded.gated_units[0].frozen_unit.trainable


def test_gated_unit_config_round_trip():
  kwargs = dict(filters=8, strides=2, project=True)
  unit = spottune.GatedResidualUnit(resnet.ResidualUnit(**kwargs, name="frozen"),
                                    resnet.ResidualUnit(**kwargs, name="tuned"),
                                    name="stage1_unit1")
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 4)).astype(np.float32)
  gate = np.array([0.0, 1.0, 0.0], np.float32)
  unit(x, gate)
  testing.assert_config_round_trip(unit, x, gate)
  f = np.asarray(unit.frozen_unit(x))
  t = np.asarray(unit.tuned_unit(x))
  np.testing.assert_array_equal(np.asarray(unit(x, gate)), np.stack([f[0], t[1], f[2]]))


def test_mismatched_base_model_is_rejected(base):
  model_cfg, train_cfg = _tiny_cfg()
  wider = dataclasses.replace(model_cfg, stage_filters=(8, 16, 64))
  with pytest.raises(ValueError, match="stage3_unit1"):
    spottune.build_spottune(base, wider, train_cfg)
  with pytest.raises(ValueError, match="frozen_bn"):
    spottune.build_spottune(base, model_cfg, dataclasses.replace(train_cfg, frozen_bn="half"))


def test_sampled_policy_at_inference_is_stochastic(base):
  model_cfg, train_cfg = _tiny_cfg(policy_eval="sample")
  model = spottune.build_spottune(base, model_cfg, train_cfg, seed=1)
  x = _patches(16, seed=3)
  a = np.asarray(model.policy(x, training=False))
  b = np.asarray(model.policy(x, training=False))
  assert not np.array_equal(a, b) and set(np.unique(a)) <= {0.0, 1.0}


def test_mixed_precision_keeps_the_gate_and_output_in_float32(base):
  model_cfg, train_cfg = _tiny_cfg()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = spottune.build_spottune(base, model_cfg, train_cfg)
    prob, gates = model(_patches(4), training=True, return_gates=True)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert model.gated_units[0].tuned_unit.conv1.compute_dtype == "bfloat16"
  assert model.gumbel.compute_dtype == "float32"
  std = keras.backend.standardize_dtype
  assert std(prob.dtype) == "float32" and std(gates.dtype) == "float32"
  assert set(np.unique(np.asarray(gates))) <= {0.0, 1.0}
