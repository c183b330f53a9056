"""`DeviceAugment`: the training augmentation of ``data.augment_on = "device"``, on the batch.

The host pipeline (`mammo_tf.data.windows`) hands over, per example, a fixed-size uint16 window of
the stored image and the augmentation parameters drawn exactly as in `host` mode. This layer does
the rest on whatever device and backend the train step runs on (`keras.ops` only; TensorFlow, or
JAX with ``KERAS_BACKEND=jax``):

1. rotation + translation + crop + flips as one projective map of output pixel (i, j) to window
   coordinates (the map of `mammo_tf.data.augment.transform_vector`)::

     x' = (a0 j + a1 i) + a2,   y' = (b0 j + b1 i) + b2,
     a0 = c fx, a1 = -s fy, b0 = s fx, b1 = c fy,  c, s = cos, sin(angle),  f = -1 when flipped,
     a2 = cx - (a0 + a1) m, b2 = cy - (b0 + b1) m,  m = (P - 1) / 2, (cy, cx) = ``centre``;

2. bilinear sampling with zero fill outside the window, in the order of operations of
   TensorFlow's ``ImageProjectiveTransformV3`` (what `host` mode uses), so both modes agree to
   float rounding;
3. optional histogram matching (the `HistogramMatching` layer, same table as `host` mode);
4. optional Gaussian noise N(0, noise_std) from each example's ``noise_seed``: under TensorFlow the
   very stateless normal draw of `host` mode (same values); under JAX ``jax.random.normal`` of the
   same seed (same distribution, other values: the two backends' generators differ).

Inputs: a dict with ``window`` [B, S, S, 1] (uint16 or float), ``centre`` float32 [B, 2] (y, x in
window pixels), ``angle`` float32 [B] (radians), ``flip`` float32 [B, 2] (h, v; 1 = flip) and
``noise_seed`` int64 [B, 2] (the dtype of `mammo_tf.data.augment.split_seed`). Output: float32
[B, P, P, 1] patches in 12-bit units, what the `host` pipeline would have produced. The layer has
no trainable weights and is not part of the saved or exported model: evaluation and serving take
plain patches.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from mammo_tf.models.preprocessing import HistogramMatching


def _stateless_normal(seeds, shape: tuple[int, ...]):
  """float32 [B, *shape]: one stateless standard-normal draw per row of integer `seeds` [B, 2]."""
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf
    return tf.map_fn(lambda s: tf.random.stateless_normal(shape, s, dtype=tf.float32),
                     seeds, fn_output_signature=tf.float32)
  if backend == "jax":
    import jax
    import jax.numpy as jnp
    keys = jnp.asarray(seeds).astype(jnp.uint32)     # int64 seeds arrive as int32 without x64
    draw = lambda k: jax.random.normal(jax.random.wrap_key_data(k), shape, jnp.float32)
    return jax.vmap(draw)(keys)
  raise NotImplementedError(f"DeviceAugment noise has no stateless generator for the {backend!r} "
                            "Keras backend (use tensorflow or jax, or data.noise_std=0)")


def bilinear_sample(window, ys, xs):
  """Samples [B, S, S, 1] `window` at float [B, P, P] (`ys`, `xs`); 0 outside -> [B, P, P]."""
  batch, size, width = ops.shape(window)[0], ops.shape(window)[1], ops.shape(window)[2]
  # One flat gather per neighbour (a batched take_along_axis is several times slower on CPU).
  flat = ops.reshape(ops.cast(window, "float32"), (-1,))
  base = (ops.arange(batch, dtype="int32") * (size * width))[:, None, None]
  y_floor, x_floor = ops.floor(ys), ops.floor(xs)
  y_ceil, x_ceil = y_floor + 1.0, x_floor + 1.0

  def read(yy, xx):
    yi, xi = ops.cast(yy, "int32"), ops.cast(xx, "int32")
    inside = (yi >= 0) & (yi < size) & (xi >= 0) & (xi < width)
    idx = ops.where(inside, base + yi * width + xi, ops.zeros_like(yi))
    got = ops.take(flat, idx, axis=0)
    return ops.where(inside, got, ops.zeros_like(got))

  top = (x_ceil - xs) * read(y_floor, x_floor) + (xs - x_floor) * read(y_floor, x_ceil)
  bottom = (x_ceil - xs) * read(y_ceil, x_floor) + (xs - x_floor) * read(y_ceil, x_ceil)
  return (y_ceil - ys) * top + (ys - y_floor) * bottom


def sample_coordinates(centre, angle, flip, patch_size: int):
  """Window coordinates (ys, xs), float32 [B, P, P], of every output pixel (module docstring)."""
  centre = ops.cast(centre, "float32")
  angle = ops.cast(angle, "float32")
  flip = ops.cast(flip, "float32")
  c, s = ops.cos(angle), ops.sin(angle)
  fx = ops.where(flip[:, 0] > 0.5, -1.0, 1.0)
  fy = ops.where(flip[:, 1] > 0.5, -1.0, 1.0)
  m = (patch_size - 1) / 2.0
  a0, a1 = c * fx, -s * fy
  b0, b1 = s * fx, c * fy
  a2 = centre[:, 1] - (a0 + a1) * m
  b2 = centre[:, 0] - (b0 + b1) * m
  grid = ops.arange(patch_size, dtype="float32")
  i = grid[None, :, None]                       # output row (y)
  j = grid[None, None, :]                       # output column (x)
  col = lambda v: v[:, None, None]
  xs = (col(a0) * j + col(a1) * i) + col(a2)
  ys = (col(b0) * j + col(b1) * i) + col(b2)
  return ys, xs


@keras.saving.register_keras_serializable(package="mammo_tf")
class DeviceAugment(keras.layers.Layer):
  """Projective transform + flips + histogram matching + noise of device-mode windows (see module
  docstring).

  Args:
    patch_size: output side P (``data.patch_size``).
    noise_std: Gaussian noise std in 12-bit units (``data.noise_std``; 0 = none).
    hm_lut: optional histogram-matching table (float [4096]); None = no histogram matching.
  """

  def __init__(self, patch_size: int, noise_std: float = 0.0, hm_lut=None, **kwargs):
    kwargs.setdefault("dtype", "float32")   # 12-bit values need float32 under mixed precision
    super().__init__(**kwargs)
    self.patch_size = int(patch_size)
    self.noise_std = float(noise_std)
    self.has_hm = hm_lut is not None
    self.hm = HistogramMatching(np.asarray(hm_lut, np.float32), name="hm") if self.has_hm else None

  def call(self, inputs):
    p = self.patch_size
    ys, xs = sample_coordinates(inputs["centre"], inputs["angle"], inputs["flip"], p)
    patch = bilinear_sample(inputs["window"], ys, xs)[..., None]
    if self.hm is not None:
      patch = ops.cast(self.hm(patch), "float32")
    if self.noise_std:
      patch = patch + self.noise_std * _stateless_normal(inputs["noise_seed"], (p, p, 1))
    return patch

  def compute_output_shape(self, input_shape):
    batch = input_shape["window"][0]
    return (batch, self.patch_size, self.patch_size, 1)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(patch_size=self.patch_size, noise_std=self.noise_std)
    return config


def for_config(data_cfg, hm_lut=None) -> DeviceAugment:
  """The `DeviceAugment` of a `DataConfig` (patch size, noise) and an optional HM table."""
  return DeviceAugment(int(data_cfg.patch_size), float(data_cfg.noise_std), hm_lut=hm_lut,
                       name="device_augment")
