"""Preprocessing layers that travel inside the model: histogram matching and 12-bit scaling.

`keras.layers` / `keras.ops` only (no `tf.`), so they run on whatever device and backend the model
runs on (TensorFlow, or JAX with ``KERAS_BACKEND=jax``), inside `tf.data.Dataset.map` (TF backend),
and serialise inside `.keras` files and exported SavedModels.

Intensity pipeline (docs/DESIGN.md, "Intensities"): stored patches are in 12-bit units 0..4095
with background 0 -> `HistogramMatching` (MIP -> FFDM, Algorithm 1; still 12-bit units) ->
`Normalize` (``x * scale + offset``; default ``1 / 4095`` and 0, i.e. [0, 1]) -> the network.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

NUM_LEVELS = 4096  # = mammo_tf.config.NUM_LEVELS (12-bit grid)


@keras.saving.register_keras_serializable(package="mammo_tf")
class HistogramMatching(keras.layers.Layer):
  """Applies a 4096-entry histogram-matching lookup table (paper Algorithm 1).

  Args:
    lut: float array [num_levels], ``lut[k]`` = matched value of level k (from
      `mammo_tf.data.cdf.hm_lut`). ``None`` gives the identity table (``lut[k] = k``); a model
      loaded from `.keras` gets its table back from the saved weights.
    num_levels: table size (4096 for 12-bit images).

  The table is a non-trainable weight named ``lut``, so it is saved with the model.
  Integer inputs are looked up (gather); float inputs (e.g. a bilinearly rotated patch) are
  linearly interpolated between the two neighbouring entries. Inputs are clipped to
  [0, num_levels - 1]; values <= 0 (background) give exactly 0. Output float32, same shape.
  """

  def __init__(self, lut=None, num_levels: int = NUM_LEVELS, **kwargs):
    kwargs.setdefault("dtype", "float32")  # 12-bit values need float32, even under mixed precision
    super().__init__(**kwargs)
    self.num_levels = int(num_levels)
    if lut is None:
      lut = np.arange(self.num_levels, dtype=np.float32)
    lut = np.asarray(lut, np.float32)
    if lut.shape != (self.num_levels,):
      raise ValueError(f"lut must have shape ({self.num_levels},), got {lut.shape}")
    self.lut = self.add_weight(
        name="lut", shape=(self.num_levels,),
        initializer=keras.initializers.Constant(lut), trainable=False, dtype="float32")

  def call(self, inputs):
    top = self.num_levels - 1
    lut = ops.convert_to_tensor(self.lut)
    if "int" in str(inputs.dtype):  # integer (incl. uint16): plain lookup
      idx = ops.clip(ops.cast(inputs, "int32"), 0, top)
      out = ops.take(lut, idx, axis=0)
      return ops.where(idx > 0, out, ops.zeros_like(out))
    x = ops.cast(inputs, "float32")
    xc = ops.clip(x, 0.0, float(top))
    i0 = ops.cast(xc, "int32")                       # floor: xc >= 0
    frac = xc - ops.cast(i0, "float32")
    # One gather of (value, slope) rows instead of two gathers (measurably faster on CPU).
    slope = ops.concatenate([lut[1:] - lut[:-1], ops.zeros((1,), "float32")], axis=0)
    rows = ops.take(ops.stack([lut, slope], axis=1), i0, axis=0)
    out = rows[..., 0] + frac * rows[..., 1]
    return ops.where(x > 0.0, out, ops.zeros_like(out))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(num_levels=self.num_levels)
    return config


@keras.saving.register_keras_serializable(package="mammo_tf")
class Normalize(keras.layers.Layer):
  """``x * scale + offset``: 12-bit units to the network's input scale.

  Defaults map 0..4095 to [0, 1] (``scale = 1 / 4095``, ``offset = 0``); background stays 0.
  The layer computes in float32 under any mixed-precision policy (as `HistogramMatching` does):
  a 12-bit value cast to bfloat16 first would lose its last 4 bits (2000, 2001 and 2003 all
  become 2000) and the sigma-1 noise augmentation with them. The first convolution of the
  network takes this float32 output as it is (see `mammo_tf.models.resnet.stem_layers`).
  """

  def __init__(self, scale: float = 1.0 / 4095.0, offset: float = 0.0, **kwargs):
    kwargs.setdefault("dtype", "float32")  # full 12-bit precision whatever the global policy
    super().__init__(**kwargs)
    self.scale = float(scale)
    self.offset = float(offset)

  def call(self, inputs):
    x = ops.cast(inputs, self.compute_dtype)
    return x * ops.cast(self.scale, self.compute_dtype) + ops.cast(self.offset, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(scale=self.scale, offset=self.offset)
    return config
