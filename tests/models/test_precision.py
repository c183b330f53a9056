"""12-bit input precision under the mixed-precision policy the trainer uses (``mixed_bfloat16``).

References are independent of the layers under test: a hand-computed 3x3 convolution of constant
images (interior pixels: kernel sum times the value) and the known bfloat16 rounding of 2000/2001.
"""
import keras
import numpy as np
import pytest

from mammo_tf import config
from mammo_tf.models import resnet
from mammo_tf.training import runtime


@pytest.fixture()
def bf16_model():
  with runtime.dtype_policy("mixed_bfloat16"):
    yield resnet.build_classifier(config.get_config("tiny").model, 32)


def _stem_input_and_output(model):
  stem = model.get_layer("stem_conv")
  return keras.Model(model.inputs[0], [stem.input, stem.output])


def test_bfloat16_would_merge_2000_and_2001():
  # The defect this guards against: a bfloat16 cast (8 significant bits) maps both to 2000.
  as_bf16 = np.asarray(keras.ops.cast(np.array([2000.0, 2001.0, 2003.0], np.float32), "bfloat16"),
                       np.float32)
  assert len(set(as_bf16.tolist())) == 1


def test_2000_and_2001_reach_the_first_convolution_distinct(bf16_model):
  assert bf16_model.get_layer("stage1_unit1").conv1.compute_dtype == "bfloat16"
  probe = _stem_input_and_output(bf16_model)
  x = np.stack([np.full((32, 32, 1), 2000.0, np.float32), np.full((32, 32, 1), 2001.0, np.float32)])
  net_in, conv_out = (np.asarray(t, np.float64) for t in probe(x))
  np.testing.assert_allclose(net_in[0], 2000.0 / 4095.0, rtol=1e-6)
  np.testing.assert_allclose(net_in[1], 2001.0 / 4095.0, rtol=1e-6)
  kernel = np.asarray(bf16_model.get_layer("stem_conv").kernel, np.float64)   # [3, 3, 1, F]
  want = kernel.sum(axis=(0, 1, 2)) / 4095.0          # interior response to a unit step
  got = conv_out[1, 4:-4, 4:-4, :] - conv_out[0, 4:-4, 4:-4, :]
  np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-3, atol=1e-6)


def test_noise_survives_to_the_network_input(bf16_model):
  rng = np.random.default_rng(0)
  patch = 2000.0 + rng.normal(0.0, 1.0, (2, 32, 32, 1)).astype(np.float32)   # sigma-1 noise
  net_in, _ = _stem_input_and_output(bf16_model)(patch)
  back = np.asarray(net_in, np.float64) * 4095.0
  np.testing.assert_allclose(back, patch, rtol=0, atol=2e-3)
  assert np.std(back - 2000.0) == pytest.approx(np.std(patch - 2000.0), rel=1e-4)
