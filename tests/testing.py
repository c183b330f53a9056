"""Helpers shared by the tests: Keras round trips, SavedModel serving in a fresh process, and
running a snippet under another Keras backend.

The round trips follow keras-hub's test case: a model or layer rebuilt from its config with the
same weights, and a model saved to ``.keras`` and loaded again, must give exactly the outputs of
the original. Each helper asserts and returns the rebuilt object, so that a test can check more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import keras
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Keras backends the Keras-3-only code (mammo_tf/models) must run under.
BACKENDS = ("tensorflow", "jax")


def outputs_of(obj: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:
  """``obj(*args, **kwargs)`` as a list of NumPy arrays (a tuple/list output gives several)."""
  out = obj(*args, **kwargs)
  if isinstance(out, dict):
    return [np.asarray(out[k]) for k in sorted(out)]
  if isinstance(out, (tuple, list)):
    return [np.asarray(t) for t in out]
  return [np.asarray(out)]


def assert_same_outputs(a: Any, b: Any, *args: Any, **kwargs: Any) -> None:
  """``a`` and ``b`` give bit-identical outputs on the same inputs."""
  want = outputs_of(a, *args, **kwargs)
  got = outputs_of(b, *args, **kwargs)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def assert_config_round_trip(obj: Any, *args: Any, **kwargs: Any) -> Any:
  """Rebuilds a model or layer with ``type(obj).from_config(obj.get_config())``, copies the
  weights and checks that both give the same outputs on ``args`` (called with ``kwargs``).

  A layer clone is built by calling it once on ``args`` before the weights are copied.
  Returns the clone.
  """
  clone = type(obj).from_config(obj.get_config())
  if not isinstance(obj, keras.Model):
    clone(*args, **kwargs)
  clone.set_weights(obj.get_weights())
  assert_same_outputs(obj, clone, *args, **kwargs)
  return clone


def assert_keras_file_round_trip(model: keras.Model, path: str, *args: Any,
                                 **kwargs: Any) -> keras.Model:
  """Saves ``model`` to ``path`` (``.keras``), loads it back and checks the same class, the same
  config and the same outputs on ``args``. Returns the loaded model."""
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert type(loaded) is type(model), (type(loaded), type(model))
  assert _as_lists(loaded.get_config()) == _as_lists(model.get_config())
  assert_same_outputs(model, loaded, *args, **kwargs)
  return loaded


def _as_lists(value: Any) -> Any:
  """A config with tuples as lists (a reloaded config holds lists where the original had tuples)."""
  if isinstance(value, dict):
    return {k: _as_lists(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_as_lists(v) for v in value]
  return value


_SERVE = r"""
import json, sys
import numpy as np
import tensorflow as tf
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
x = np.load(sys.argv[2])
out = fn(patch=tf.constant(x))
errors = {}
for name, bad in (("dtype", tf.constant(x.astype(np.float32))),
                  ("shape", tf.constant(x[:, :-8, :-8]))):
  try:
    fn(patch=bad)
    errors[name] = ""
  except Exception as e:
    errors[name] = f"{type(e).__name__}: {e}"
np.save(sys.argv[3], out["probability"].numpy())
json.dump({"keys": sorted(out), "dtype": out["probability"].dtype.name, "errors": errors,
           "mammo_tf": any(m.startswith("mammo_tf") for m in sys.modules),
           "path": [p for p in sys.path if "work/main" in p and "site-packages" not in p]},
          open(sys.argv[4], "w"))
"""


def serve_in_fresh_process(export_dir: str, x: np.ndarray, tmp_path: Any
                           ) -> tuple[np.ndarray, dict[str, Any]]:
  """Loads the serving SavedModel in a fresh, isolated interpreter (``python -I``, no
  PYTHONPATH, run from ``tmp_path``: this repo cannot be imported) and calls
  ``serving_default(patch=x)``, then with a float32 and a wrongly shaped patch.

  Returns ``(probability, info)``; ``info`` has ``keys`` and ``dtype`` of the outputs, the two
  ``errors`` messages, ``mammo_tf`` (whether any module of this package got imported) and
  ``path`` (any repo folder on ``sys.path``).
  """
  tmp = str(tmp_path)
  np.save(os.path.join(tmp, "serve_x.npy"), x)
  script = os.path.join(tmp, "serve.py")
  with open(script, "w") as f:
    f.write(_SERVE)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  y_path, info_path = os.path.join(tmp, "serve_y.npy"), os.path.join(tmp, "serve_info.json")
  subprocess.run([sys.executable, "-I", script, export_dir, os.path.join(tmp, "serve_x.npy"),
                  y_path, info_path], cwd=tmp, env=env, check=True, timeout=300)
  with open(info_path) as f:
    return np.load(y_path), json.load(f)


def run_under_backend(code: str, backend: str, timeout: int = 600) -> str:
  """Runs ``code`` in a fresh interpreter with ``KERAS_BACKEND=backend`` (the repo importable,
  CPU only) and returns its stdout; a failure shows the end of its stderr."""
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
  assert out.returncode == 0, f"KERAS_BACKEND={backend}:\n{out.stderr[-3000:]}"
  return out.stdout
