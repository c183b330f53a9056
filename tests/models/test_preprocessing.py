"""HistogramMatching / Normalize: same output eagerly, in tf.data, compiled, and after saving."""
import ast

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammo_tf.data import cdf
from mammo_tf.models import preprocessing
from tests import testing


def _lut(seed=0):
  rng = np.random.default_rng(seed)
  def random_cdf(scale):
    counts = rng.poisson(scale * rng.random(4096)) + (rng.random(4096) < 0.5)
    counts[0] = 0
    return np.cumsum(counts) / counts.sum()
  return cdf.hm_lut(random_cdf(3.0), random_cdf(10.0))


def _float_input(seed=1, shape=(3, 16, 16, 1)):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-5.0, 4100.0, size=shape).astype(np.float32)
  x[0, :4] = 0.0
  x[1, 0, :3, 0] = [4095.0, 4095.5, 0.25]
  return x


def _reference(x, lut):
  ref = np.interp(np.clip(x, 0, 4095), np.arange(4096), lut).astype(np.float32)
  return np.where(x > 0, ref, 0.0).astype(np.float32)


def test_integer_lookup_equals_apply_lut_and_float_interpolates():
  lut = _lut()
  layer = preprocessing.HistogramMatching(lut)
  img = np.random.default_rng(0).integers(0, 4096, size=(40, 30)).astype(np.int32)
  img[:5] = 0
  got = np.asarray(layer(img))
  np.testing.assert_array_equal(got, cdf.apply_lut(img, lut, mask=img > 0))
  assert got.dtype == np.float32 and np.all(got[:5] == 0)
  np.testing.assert_array_equal(np.asarray(layer(img.astype(np.uint16))), got)
  x = _float_input()
  np.testing.assert_allclose(np.asarray(layer(x)), _reference(x, lut), rtol=1e-6, atol=1e-3)
  ident = preprocessing.HistogramMatching()          # default: identity table
  np.testing.assert_allclose(np.asarray(ident(x)), np.clip(np.maximum(x, 0), 0, 4095), atol=1e-3)
  with pytest.raises(ValueError, match="shape"):
    preprocessing.HistogramMatching(np.zeros(10))


def _model(lut, jit=False):
  inp = keras.Input((16, 16, 1))
  out = preprocessing.Normalize(scale=2.0, offset=1.0)(preprocessing.HistogramMatching(lut)(inp))
  model = keras.Model(inp, out)
  model.compile(jit_compile=jit)
  return model


def test_same_output_eager_tfdata_compiled_savedmodel_and_keras(tmp_path):
  lut = _lut(3)
  x = _float_input(4)
  ref = _reference(x, lut)
  layer = preprocessing.HistogramMatching(lut)
  eager = np.asarray(layer(x))
  np.testing.assert_allclose(eager, ref, atol=1e-3)
  in_data = np.concatenate(list(tf.data.Dataset.from_tensor_slices(x).batch(2).map(layer)))
  np.testing.assert_array_equal(in_data, eager)
  expected = eager * 2.0 + 1.0
  for jit in (False, True):
    model = _model(lut, jit)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-3)
  # .keras round trip: the table comes back from the saved weights.
  loaded = testing.assert_keras_file_round_trip(model, str(tmp_path / "m.keras"), x)
  assert [w.name for w in loaded.non_trainable_weights] == ["lut"]
  # SavedModel round trip.
  export_dir = str(tmp_path / "export")
  model.export(export_dir, verbose=False)
  served = tf.saved_model.load(export_dir)
  np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, rtol=1e-6, atol=1e-3)


def test_configs_round_trip():
  hm = preprocessing.HistogramMatching(_lut(), name="hm")
  cfg = hm.get_config()
  assert cfg["num_levels"] == 4096 and cfg["name"] == "hm" and "lut" not in cfg
  assert preprocessing.HistogramMatching.from_config(cfg).num_levels == 4096
  norm = preprocessing.Normalize()
  assert norm.get_config()["scale"] == pytest.approx(1 / 4095) and norm.get_config()["offset"] == 0
  again = preprocessing.Normalize.from_config(norm.get_config())
  np.testing.assert_allclose(np.asarray(again(np.array([0, 4095], np.int32))), [0.0, 1.0])
  assert hm.dtype_policy.name == "float32"


def test_layers_use_keras_ops_only():
  tree = ast.parse(open(preprocessing.__file__).read())
  imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
              for a in n.names}
  imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
               if isinstance(n, ast.ImportFrom)}
  assert imported <= {"__future__", "typing", "keras", "numpy"}, imported
  assert not any(isinstance(n, ast.Name) and n.id == "tf" for n in ast.walk(tree))


@pytest.mark.parametrize("backend", testing.BACKENDS)
def test_runs_under_each_keras_backend(backend):
  # Table value 0.5 * v: 11.5 interpolates between 5.5 and 6.0 (a hand-computed 5.75).
  code = ("import numpy as np; from mammo_tf.models import preprocessing as p;"
          "hm = p.HistogramMatching(np.arange(4096, dtype=np.float32) * 0.5);"
          "print(float(np.asarray(hm(np.array([0., 10., 11.5])))[2]))")
  out = testing.run_under_backend(code, backend)
  assert out.strip().splitlines()[-1] == "5.75"
