"""SavedModel export for serving: uint16 12-bit patches in, malignancy probability out.

The exported signature carries the whole preprocessing, so a client needs nothing but
TensorFlow (no mammo_tf import)::

  serving_default(patch: uint16 [None, S, S, 1]) -> {"probability": float32 [None]}

Inside: uint16 -> float32 (12-bit units) -> `HistogramMatching` (DBT models with an HM table) ->
the Keras model (its first layer is `Normalize`) -> probability. The signature's `TensorSpec` pins
dtype and shape, so a float patch or a patch of another size is rejected with an error naming the
expected spec (the concrete function checks the dtype, an explicit assertion the side). Written
with `keras.export.ExportArchive`; the model is called with ``training=False`` (SpotTune: argmax
gates unless the model was built with ``policy_eval="sample"``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from mammo_tf.models.preprocessing import HistogramMatching

SIGNATURE = "serving_default"
INPUT_NAME = "patch"
OUTPUT_NAME = "probability"


def input_spec(input_size: int) -> tf.TensorSpec:
  """The serving input: uint16 12-bit patches ``[batch, S, S, 1]``."""
  return tf.TensorSpec([None, int(input_size), int(input_size), 1], tf.uint16, name=INPUT_NAME)


def _probability(outputs) -> tf.Tensor:
  if isinstance(outputs, dict):
    outputs = outputs[OUTPUT_NAME]
  elif isinstance(outputs, (tuple, list)):
    outputs = outputs[0]
  return tf.reshape(tf.cast(outputs, tf.float32), [-1])


def export_serving(model: keras.Model, export_dir: str, input_size: int,
                   hm_lut: np.ndarray | None = None) -> str:
  """Writes the serving SavedModel to ``export_dir`` (replaced atomically); returns the path.

  Args:
    model: a classifier taking float32 12-bit patches ``[B, S, S, 1]`` (its `Normalize` inside)
      and returning the probability ``[B, 1]`` (or ``(prob, ...)``).
    export_dir: destination folder; an existing export there is replaced.
    input_size: patch side S.
    hm_lut: optional 4096-entry histogram-matching table (DBT models), applied first.
  """
  hm = None
  if hm_lut is not None:
    hm = HistogramMatching(np.asarray(hm_lut, np.float32), name="hm")
    hm.build((None, input_size, input_size, 1))

  side = int(input_size)

  def serve(patch):
    check = tf.debugging.assert_equal(
        tf.shape(patch)[1:], tf.constant([side, side, 1], tf.int32),
        message=f"serving_default expects uint16 patches of shape [batch, {side}, {side}, 1]")
    with tf.control_dependencies([check]):
      x = tf.cast(patch, tf.float32)
    if hm is not None:
      x = hm(x)
    return {OUTPUT_NAME: _probability(model(x, training=False))}

  archive = keras.export.ExportArchive()
  archive.track(model)
  if hm is not None:
    archive.track(hm)
  archive.add_endpoint(SIGNATURE, serve, input_signature=[input_spec(input_size)])
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
  try:
    archive.write_out(tmp, verbose=False)
    if os.path.exists(export_dir):
      shutil.rmtree(export_dir)
    os.replace(tmp, export_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return export_dir


def load_serving(export_dir: str):
  """The ``serving_default`` concrete function of an export (plain `tf.saved_model.load`)."""
  return tf.saved_model.load(export_dir).signatures[SIGNATURE]
