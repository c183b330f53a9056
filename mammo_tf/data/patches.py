"""Patch geometry (paper §2.2): centre choice and clamping, NumPy reference + tf twin.

Coordinates are *stored-image pixel indices* (row y, column x): pixel (i, j) has its centre at
(i, j), so an image of height H spans [-0.5, H - 0.5] and a P-pixel window starting at row `top`
has its centre at ``top + (P - 1) / 2``. Finding boxes are stored as ``(ymin, xmin, ymax,
xmax)`` pixel EDGES (pixel i spans ``[i, i + 1)``: an original ``(x, y, w, h)`` box becomes
``y / f .. (y + h) / f`` at downsample f), so the box centre ``x + w / 2`` (original edges) lies at
index ``(ymin + ymax) / 2 - 0.5`` in these coordinates.

Centre rule
  * annotated image (``has_box``): the box centre;
  * otherwise a uniformly random in-mask pixel. The breast mask is stored at
    ``1 / mask_downsample`` resolution, so we draw a breast *cell* uniformly (cells in row-major
    order, index ``floor(u0 * n)``), then a uniform stored pixel inside that cell
    (``cell * md + floor(u * cell_extent)``, the extent cut at the image border);
  * an empty mask falls back to the image centre.
  The three uniforms ``u = (u0, u1, u2)`` are inputs, so the NumPy reference and the tf twin make
  the same choice from the same draws.

Clamping ("the patch is always inside the image, translated to fit")
  A P-pixel patch rotated by ``angle`` reaches ``e = (P - 1) / 2 * (|cos| + |sin|)`` from its
  centre along each axis (sample positions of its corner pixels). The centre is clipped to
  ``[e, H - 1 - e]`` (and likewise in x), so every sample lies inside the image. When the image is
  too small for that (``H - 1 < 2 e``) the centre is the image centre ``(H - 1) / 2`` and the
  part of the patch beyond the image is filled with 0 (background) — e.g. a 64 px patch of a
  50-row image has 7 rows of zeros above and below.
  For un-rotated (evaluation) patches the window's top-left corner is then rounded to a whole
  pixel (``floor(x + 0.5)``), so the patch is an exact copy of stored pixels.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# ----------------------------------------------------------------------------- NumPy reference


def box_centre_np(box) -> np.ndarray:
  """(ymin, xmin, ymax, xmax) pixel edges -> float32 [2] (y, x) centre in pixel indices."""
  b = np.asarray(box, np.float32)
  return np.array([(b[0] + b[2]) / 2 - 0.5, (b[1] + b[3]) / 2 - 0.5], np.float32)


def random_mask_pixel_np(mask: np.ndarray, mask_downsample: int, image_hw, u) -> np.ndarray:
  """Uniform in-mask stored pixel from three uniforms `u` in [0, 1); float32 [2] (y, x)."""
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = mask[..., 0]
  h, w = int(image_hw[0]), int(image_hw[1])
  u = np.asarray(u, np.float32)
  cells = np.argwhere(mask > 0)
  if len(cells) == 0:
    return np.array([(h - 1) / 2, (w - 1) / 2], np.float32)
  n = np.float32(len(cells))
  k = min(int(np.floor(u[0] * n)), len(cells) - 1)
  cy, cx = cells[k]
  md = int(mask_downsample)
  ext_y = max(1, min(md, h - cy * md))
  ext_x = max(1, min(md, w - cx * md))
  y = cy * md + min(int(np.floor(u[1] * np.float32(ext_y))), ext_y - 1)
  x = cx * md + min(int(np.floor(u[2] * np.float32(ext_x))), ext_x - 1)
  return np.array([y, x], np.float32)


def choose_centre_np(mask, mask_downsample, image_hw, box, has_box, u) -> np.ndarray:
  """Box centre when `has_box`, else `random_mask_pixel_np`."""
  if has_box:
    return box_centre_np(box)
  return random_mask_pixel_np(mask, mask_downsample, image_hw, u)


def half_extent(patch_size: int, angle: float = 0.0) -> float:
  """Axis-aligned reach of a P-pixel patch rotated by `angle` radians, from its centre."""
  return (patch_size - 1) / 2.0 * (abs(math.cos(angle)) + abs(math.sin(angle)))


def clamp_centre_np(centre, image_hw, patch_size: int, angle: float = 0.0) -> np.ndarray:
  """Moves `centre` so the (rotated) patch lies inside the image; see the module docstring."""
  c = np.asarray(centre, np.float64).copy()
  e = half_extent(patch_size, angle)
  for axis in (0, 1):
    size = float(image_hw[axis])
    if size - 1.0 >= 2.0 * e:
      c[axis] = min(max(c[axis], e), size - 1.0 - e)
    else:
      c[axis] = (size - 1.0) / 2.0
  return c.astype(np.float32)


def window_top_left_np(centre, image_hw, patch_size: int) -> np.ndarray:
  """Integer top-left (y, x) of the un-rotated window around the clamped `centre`."""
  c = clamp_centre_np(centre, image_hw, patch_size, 0.0).astype(np.float64)
  return np.floor(c - (patch_size - 1) / 2.0 + 0.5).astype(np.int64)


def crop_np(image: np.ndarray, top_left, patch_size: int) -> np.ndarray:
  """P x P window at `top_left` (may be negative / past the end: zero padded)."""
  image = np.asarray(image)
  out = np.zeros((patch_size, patch_size) + image.shape[2:], image.dtype)
  t, l = int(top_left[0]), int(top_left[1])
  h, w = image.shape[:2]
  y0, y1 = max(t, 0), min(t + patch_size, h)
  x0, x1 = max(l, 0), min(l + patch_size, w)
  if y1 > y0 and x1 > x0:
    out[y0 - t:y1 - t, x0 - l:x1 - l] = image[y0:y1, x0:x1]
  return out


def eval_patch_np(image, mask, mask_downsample, box, has_box, u, patch_size) -> np.ndarray:
  """Reference un-augmented patch: centre rule, clamp, integer crop with zero padding."""
  image = np.asarray(image)
  centre = choose_centre_np(mask, mask_downsample, image.shape[:2], box, has_box, u)
  return crop_np(image, window_top_left_np(centre, image.shape[:2], patch_size), patch_size)


# ----------------------------------------------------------------------------- tf twin


def box_centre(box: tf.Tensor) -> tf.Tensor:
  """tf twin of `box_centre_np`."""
  box = tf.cast(box, tf.float32)
  return tf.stack([(box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5])


def random_mask_pixel(mask: tf.Tensor, mask_downsample, image_hw, u: tf.Tensor) -> tf.Tensor:
  """tf twin of `random_mask_pixel_np` (mask [h, w] or [h, w, 1]); float32 [2]."""
  if mask.shape.rank == 3:
    mask = mask[..., 0]
  h = tf.cast(image_hw[0], tf.int32)
  w = tf.cast(image_hw[1], tf.int32)
  md = tf.cast(mask_downsample, tf.int32)
  u = tf.cast(u, tf.float32)
  cells = tf.cast(tf.where(mask > 0), tf.int32)
  n = tf.shape(cells)[0]

  def _pick():
    k = tf.minimum(tf.cast(tf.floor(u[0] * tf.cast(n, tf.float32)), tf.int32), n - 1)
    cy, cx = cells[k, 0], cells[k, 1]
    ext_y = tf.maximum(1, tf.minimum(md, h - cy * md))
    ext_x = tf.maximum(1, tf.minimum(md, w - cx * md))
    y = cy * md + tf.minimum(tf.cast(tf.floor(u[1] * tf.cast(ext_y, tf.float32)), tf.int32),
                             ext_y - 1)
    x = cx * md + tf.minimum(tf.cast(tf.floor(u[2] * tf.cast(ext_x, tf.float32)), tf.int32),
                             ext_x - 1)
    return tf.cast(tf.stack([y, x]), tf.float32)

  def _middle():
    return tf.stack([tf.cast(h - 1, tf.float32) / 2, tf.cast(w - 1, tf.float32) / 2])

  return tf.cond(n > 0, _pick, _middle)


def choose_centre(mask, mask_downsample, image_hw, box, has_box, u) -> tf.Tensor:
  """tf twin of `choose_centre_np`."""
  return tf.cond(tf.cast(has_box, tf.bool),
                 lambda: box_centre(box),
                 lambda: random_mask_pixel(mask, mask_downsample, image_hw, u))


def clamp_centre(centre, image_hw, patch_size: int, angle=0.0) -> tf.Tensor:
  """tf twin of `clamp_centre_np` (float32 [2])."""
  centre = tf.cast(centre, tf.float32)
  angle = tf.cast(angle, tf.float32)
  e = (patch_size - 1) / 2.0 * (tf.abs(tf.cos(angle)) + tf.abs(tf.sin(angle)))
  size = tf.cast(tf.stack([image_hw[0], image_hw[1]]), tf.float32)
  fits = size - 1.0 >= 2.0 * e
  clipped = tf.minimum(tf.maximum(centre, e), size - 1.0 - e)
  return tf.where(fits, clipped, (size - 1.0) / 2.0)


def window_top_left(centre, image_hw, patch_size: int) -> tf.Tensor:
  """tf twin of `window_top_left_np` (int32 [2])."""
  c = clamp_centre(centre, image_hw, patch_size, 0.0)
  return tf.cast(tf.floor(c - (patch_size - 1) / 2.0 + 0.5), tf.int32)
