"""Stateless tf augmentations (paper §2.3) and the one projective transform that cuts a patch.

Every random draw takes an explicit stateless seed (int32 [2]); `example_seed` derives one per
example from (run seed, example counter) with `tf.random.experimental.stateless_fold_in`, and
`split_seed` hands out independent sub-seeds. The same seed always gives the same patch.

Augmentation parameters (`sample_params`):
  * translation ~ N(0, translate_std / downsample) stored px per axis (the config gives it in
    original-resolution pixels, as the paper does);
  * rotation ~ U(-rotation_deg, rotation_deg), in radians;
  * horizontal / vertical flip with probability 1/2 each (when enabled);
  * Gaussian noise N(0, noise_std) in 12-bit units, added to every pixel of the patch (`add_noise`).

`extract_patch` does rotation + translation + crop + flips as ONE
`tf.raw_ops.ImageProjectiveTransformV3` of the stored image (bilinear, fill 0). Output pixel
(i, j) of a P x P patch samples the image at::

    (y, x) = centre + R(angle) @ diag(vflip, hflip) @ (i - m, j - m),   m = (P - 1) / 2,
    R(a) = [[cos a, sin a], [-sin a, cos a]]    (acting on (y, x) column vectors),

so a positive angle turns the *image content* counter-clockwise on screen, as
`skimage.transform.rotate` does, and a flip mirrors the patch about its centre. Only a window of
the image that covers the rotated patch is cast to float32 and handed to the op (cheap at paper
geometry: a ~724 px window of a 2048 x 1664 image).
"""

from __future__ import annotations

import math

import tensorflow as tf

from mammo_tf.data import patches as patches_lib

# Sub-seed slots of one example's seed (fixed: changing them changes every patch).
CENTRE, TRANSLATE, ROTATE, FLIP, NOISE = range(5)
NUM_SLOTS = 5


def example_seed(seed, *indices) -> tf.Tensor:
  """Stateless seed (int32 [2]) of one example from the run seed and integer indices."""
  s = tf.stack([tf.cast(seed, tf.int32), tf.constant(0x5EED, tf.int32)])
  for i in indices:
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(i, tf.int64))
  return s


def split_seed(seed: tf.Tensor, num: int = NUM_SLOTS) -> tf.Tensor:
  """int32 [num, 2] independent sub-seeds."""
  return tf.random.experimental.stateless_split(seed, num=num)


def sample_params(seed: tf.Tensor, data_cfg, *, train: bool = True) -> dict[str, tf.Tensor]:
  """Augmentation parameters of one patch (all zeros / False when `train` is False).

  Returns ``translate`` float32 [2] (stored px), ``angle`` float32 (radians), ``hflip`` and
  ``vflip`` bool, and ``centre_u`` float32 [3] (the uniforms of the centre rule).
  """
  sub = split_seed(seed)
  out = {"centre_u": tf.random.stateless_uniform([3], sub[CENTRE], dtype=tf.float32)}
  if not train:
    out.update(translate=tf.zeros([2]), angle=tf.constant(0.0),
               hflip=tf.constant(False), vflip=tf.constant(False))
    return out
  sigma = float(data_cfg.translate_std) / float(data_cfg.downsample)
  out["translate"] = sigma * tf.random.stateless_normal([2], sub[TRANSLATE], dtype=tf.float32)
  max_angle = math.radians(float(data_cfg.rotation_deg))
  out["angle"] = tf.random.stateless_uniform([], sub[ROTATE], -max_angle, max_angle,
                                             dtype=tf.float32)
  flips = tf.random.stateless_uniform([2], sub[FLIP], dtype=tf.float32) < 0.5
  out["hflip"] = tf.logical_and(flips[0], bool(data_cfg.hflip))
  out["vflip"] = tf.logical_and(flips[1], bool(data_cfg.vflip))
  return out


def transform_vector(centre, angle, hflip, vflip, patch_size: int, offset=(0.0, 0.0)):
  """The 8 projective coefficients mapping output (x, y) to input (x', y') (see module doc).

  `offset` (y, x) is subtracted from the centre, for when the input is a window of the image
  starting at `offset`.
  """
  centre = tf.cast(centre, tf.float32) - tf.cast(tf.stack(offset), tf.float32)
  angle = tf.cast(angle, tf.float32)
  c, s = tf.cos(angle), tf.sin(angle)
  fx = tf.where(tf.cast(hflip, tf.bool), -1.0, 1.0)
  fy = tf.where(tf.cast(vflip, tf.bool), -1.0, 1.0)
  m = (patch_size - 1) / 2.0
  # y_in = cy + c*fy*(y - m) + s*fx*(x - m);  x_in = cx - s*fy*(y - m) + c*fx*(x - m)
  a0, a1 = c * fx, -s * fy
  b0, b1 = s * fx, c * fy
  a2 = centre[1] - (a0 + a1) * m
  b2 = centre[0] - (b0 + b1) * m
  return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def window_bounds(centre, angle, image_hw, patch_size: int):
  """int32 ``(y0, x0, y1, x1)``: the image window ``[y0, y1) x [x0, x1)`` holding every bilinear
  neighbour of every sample of the patch at `centre` rotated by `angle` (clipped to the image)."""
  h, w = tf.cast(image_hw[0], tf.int32), tf.cast(image_hw[1], tf.int32)
  centre = tf.cast(centre, tf.float32)
  angle = tf.cast(angle, tf.float32)
  e = (patch_size - 1) / 2.0 * (tf.abs(tf.cos(angle)) + tf.abs(tf.sin(angle)))
  y0 = tf.clip_by_value(tf.cast(tf.floor(centre[0] - e), tf.int32) - 1, 0, h)
  x0 = tf.clip_by_value(tf.cast(tf.floor(centre[1] - e), tf.int32) - 1, 0, w)
  y1 = tf.clip_by_value(tf.cast(tf.floor(centre[0] + e), tf.int32) + 3, y0, h)
  x1 = tf.clip_by_value(tf.cast(tf.floor(centre[1] + e), tf.int32) + 3, x0, w)
  return y0, x0, y1, x1


def extract_patch(image: tf.Tensor, centre, angle, hflip, vflip, patch_size: int) -> tf.Tensor:
  """float32 [P, P, 1] patch of `image` ([H, W, 1], any real dtype) by one projective transform.

  `centre` is used as given (clamp it first with `patches.clamp_centre`). Samples outside the
  image are 0 (bilinear, fill 0).
  """
  centre = tf.cast(centre, tf.float32)
  y0, x0, y1, x1 = window_bounds(centre, angle, tf.shape(image)[:2], patch_size)
  window = tf.cast(image[y0:y1, x0:x1, :], tf.float32)
  window = tf.cond(tf.logical_or(y1 <= y0, x1 <= x0),
                   lambda: tf.zeros([1, 1, 1], tf.float32), lambda: window)
  transform = transform_vector(centre, angle, hflip, vflip, patch_size,
                               offset=(tf.cast(y0, tf.float32), tf.cast(x0, tf.float32)))
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=window[None], transforms=transform[None],
      output_shape=tf.constant([patch_size, patch_size], tf.int32),
      fill_value=tf.constant(0.0, tf.float32), interpolation="BILINEAR", fill_mode="CONSTANT")
  return tf.ensure_shape(out[0], [patch_size, patch_size, 1])


def add_noise(patch: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
  """patch + N(0, std) per pixel (12-bit units); identity when std is 0."""
  if not std:
    return patch
  return patch + float(std) * tf.random.stateless_normal(tf.shape(patch), seed, dtype=patch.dtype)


def patch_geometry(image_hw, mask, mask_downsample, box, has_box, seed, data_cfg, *,
                   train: bool) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """The stateless draws of one patch: (clamped centre float32 [2], `sample_params` dict).

  The one place both augmentation modes take their geometry from (``data.augment_on``: `host`
  cuts the patch here, `device` cuts a window around it, see `mammo_tf.data.windows`).
  """
  p = int(data_cfg.patch_size)
  params = sample_params(seed, data_cfg, train=train)
  centre = patches_lib.choose_centre(mask, mask_downsample, image_hw, box, has_box,
                                     params["centre_u"])
  if train:
    centre = patches_lib.clamp_centre(centre + params["translate"], image_hw, p, params["angle"])
  else:
    centre = tf.cast(patches_lib.window_top_left(centre, image_hw, p), tf.float32) + (p - 1) / 2.0
  return centre, params


def make_patch(image, mask, mask_downsample, box, has_box, seed, data_cfg, *, train: bool,
               hm=None) -> tf.Tensor:
  """Centre rule + (train: augmentation) + one transform + optional HM + (train: noise).

  `hm` is a callable applied to the float patch after the geometric transform and before the
  noise (the `HistogramMatching` layer). Evaluation patches (`train=False`) are exact copies of
  stored pixels (integer window, zero padding beyond the image).
  """
  p = int(data_cfg.patch_size)
  centre, params = patch_geometry(tf.shape(image)[:2], mask, mask_downsample, box, has_box, seed,
                                  data_cfg, train=train)
  patch = extract_patch(image, centre, params["angle"], params["hflip"], params["vflip"], p)
  if hm is not None:
    patch = tf.cast(hm(patch), tf.float32)
  if train:
    patch = add_noise(patch, split_seed(seed)[NOISE], data_cfg.noise_std)
  return patch
