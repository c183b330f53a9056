"""Host side of ``data.augment_on = "device"``: cut a fixed-size window around each training patch.

In `device` mode tf.data does only what needs the whole stored image: it draws the patch's
geometry with the same stateless draws as `host` mode (`augment.patch_geometry`: centre rule,
translation, clamping, angle, flips), cuts a ``window_size(data_cfg)`` square window of the image
that holds every bilinear neighbour of the rotated, translated patch, and hands the window and the
per-example parameters to the model. `mammo_tf.models.augment_layer.DeviceAugment` then does the
projective transform, flips, histogram matching and noise on the batch, on the accelerator.

Window placement: its top-left corner is the corner `augment.window_bounds` gives in `host` mode
(``floor(centre - e) - 1``, clipped to the image), so both modes sample the image at the same
window-relative coordinates and give the same patch up to float rounding. Rows and columns past
the image are zeros (the transform's fill value). The window side is ``ceil(2 E) + 5`` where
``E = (P - 1) / 2 * (|cos a| + |sin a|)`` maximised over the allowed angles: 704 px for 512 px
patches and +-30 degrees (the host-mode window is at most ``2 e + 4``).

Raw-codec images need not be decoded whole: `band_from_raw` decodes only the window's rows
(``tf.strings.substr`` of the stored bytes), a third of a 2048-row image at paper geometry; used
when ``data.reuse`` is 1 (BUILD_NOTES.md: it saves memory more than time, since reading and
parsing the 6.8 MB record cost more than the decode, a memory copy).

Per-example outputs (`cut_window`): ``window`` uint16 [S, S, 1], ``centre`` float32 [2] (patch
centre in window coordinates, y then x), ``angle`` float32 (radians), ``flip`` float32 [2]
(h, v; 1 = flip), ``noise_seed`` int64 [2] (the stateless seed of the Gaussian noise).
"""

from __future__ import annotations

import math

import tensorflow as tf

from mammo_tf.data import augment
from mammo_tf.data import schema

WINDOW_KEYS = ("window", "centre", "angle", "flip", "noise_seed")


def max_half_extent(data_cfg) -> float:
  """Largest axis-aligned reach of a patch from its centre over the allowed rotations."""
  a = min(abs(math.radians(float(data_cfg.rotation_deg))), math.pi / 4)
  return (int(data_cfg.patch_size) - 1) / 2.0 * (math.cos(a) + math.sin(a))


def window_size(data_cfg) -> int:
  """Side S of the device-mode window (704 at paper geometry)."""
  return int(math.ceil(2.0 * max_half_extent(data_cfg))) + 5


def _pad_to(window: tf.Tensor, size: int) -> tf.Tensor:
  """Zero-pads [h, w, 1] (h, w <= size) at the bottom and right to [size, size, 1]."""
  shape = tf.shape(window)
  window = tf.pad(window, [[0, size - shape[0]], [0, size - shape[1]], [0, 0]])
  return tf.ensure_shape(window, [size, size, 1])


def window_from_image(image: tf.Tensor, y0, x0, size: int) -> tf.Tensor:
  """uint16 [size, size, 1] window of a decoded image [H, W, 1] at (y0, x0), zero past the end."""
  return _pad_to(image[y0:y0 + size, x0:x0 + size, :], size)


def band_from_raw(encoded: tf.Tensor, image_hw, y0, x0, size: int) -> tf.Tensor:
  """The same window, decoding only rows ``[y0, y0 + size)`` of a raw-codec (little-endian uint16,
  row-major) image."""
  h, w = tf.cast(image_hw[0], tf.int32), tf.cast(image_hw[1], tf.int32)
  y1 = tf.minimum(y0 + size, h)
  rows = tf.strings.substr(encoded, y0 * w * 2, (y1 - y0) * w * 2)
  band = tf.reshape(tf.io.decode_raw(rows, tf.uint16, little_endian=True), [y1 - y0, w, 1])
  return _pad_to(band[:, x0:x0 + size, :], size)


def cut_window(image_hw, mask, mask_downsample, box, has_box, seed, data_cfg, *,
               read_window) -> dict[str, tf.Tensor]:
  """One training example of `device` mode (see module docstring).

  `read_window(y0, x0, size)` returns the uint16 [size, size, 1] window at (y0, x0) (from a
  decoded image or from the raw bytes). `seed` is the example's stateless seed, as in
  `augment.make_patch`.
  """
  p = int(data_cfg.patch_size)
  centre, params = augment.patch_geometry(image_hw, mask, mask_downsample, box, has_box, seed,
                                          data_cfg, train=True)
  y0, x0, _, _ = augment.window_bounds(centre, params["angle"], image_hw, p)
  size = window_size(data_cfg)
  # The same float32 subtraction `augment.transform_vector` does for the host-mode window.
  rel = centre - tf.cast(tf.stack([y0, x0]), tf.float32)
  flip = tf.cast(tf.stack([params["hflip"], params["vflip"]]), tf.float32)
  return {"window": read_window(y0, x0, size), "centre": rel, "angle": params["angle"],
          "flip": flip, "noise_seed": augment.split_seed(seed)[augment.NOISE]}


def parse_for_windows(serialized: tf.Tensor, band_decode: bool = True) -> dict[str, tf.Tensor]:
  """Parses a record for `cut_window`: mask, box, label, image size and the image.

  With `band_decode`, a raw-codec image stays encoded (``encoded``; `window_example` decodes only
  the window's rows) and a PNG image is decoded whole (``image``); without, every image is decoded
  whole.
  """
  f = schema.parse_example(serialized)
  is_raw = tf.equal(f[schema.IMAGE_FORMAT], b"raw")
  if band_decode:
    image = tf.cond(is_raw, lambda: tf.zeros([0, 0, 1], tf.uint16),
                    lambda: schema.decode_image(f))
  else:
    image, is_raw = schema.decode_image(f), tf.constant(False)
  return {"image": image, "encoded": f[schema.IMAGE], "is_raw": is_raw,
          "hw": tf.cast(tf.stack([f[schema.HEIGHT], f[schema.WIDTH]]), tf.int32),
          "mask": schema.decode_mask(f),
          "mask_downsample": tf.cast(f[schema.MASK_DOWNSAMPLE], tf.int32),
          "box": f[schema.BOX], "has_box": tf.cast(f[schema.HAS_BOX], tf.bool),
          "label": tf.cast(f[schema.LABEL], tf.int32)}


def window_example(ex: dict[str, tf.Tensor], seed, data_cfg) -> dict[str, tf.Tensor]:
  """`cut_window` of a `parse_for_windows` record (raw bytes band-decoded, or a decoded image)."""

  def read(y0, x0, size):
    return tf.cond(ex["is_raw"],
                   lambda: band_from_raw(ex["encoded"], ex["hw"], y0, x0, size),
                   lambda: window_from_image(ex["image"], y0, x0, size))

  return cut_window(ex["hw"], ex["mask"], ex["mask_downsample"], ex["box"], ex["has_box"], seed,
                    data_cfg, read_window=read)


def device_batches(records: tf.data.Dataset, cfg, example_seed: int, reuse_shuffle_seed: int, *,
                   deterministic: bool = True, band_decode: bool | None = None
                   ) -> tf.data.Dataset:
  """Batches of `device` mode from the training stream of ``(k, serialized)`` records.

  Mirrors the `host` pipeline stage for stage (parse, `reuse` windows per image with seeds from
  (example_seed, k, r), the same reuse shuffle, batch), so the batch order and every draw are
  those of `host` mode and ``DeviceAugment(windows)`` equals the `host` patches. Elements:
  ``({"window", "centre", "angle", "flip", "noise_seed"} batched, label float32 [B])``.

  `band_decode` (raw codec): decode only each window's rows (`band_from_raw`) instead of the
  whole image once. None picks it when ``reuse`` is 1: with several windows per image, their
  bands together copy more bytes than one whole decode.
  """
  data_cfg = cfg.data
  reuse = max(1, int(data_cfg.reuse))
  band_decode = reuse == 1 if band_decode is None else bool(band_decode)
  ds = records.map(lambda k, s: (k, parse_for_windows(s, band_decode)),
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  ds = ds.flat_map(lambda k, ex: tf.data.Dataset.from_tensors((k, ex)).repeat(reuse).enumerate()
                   .map(lambda r, kex: (kex[0], tf.cast(r, tf.int64), kex[1])))

  def cut(k, r, ex):
    s = augment.example_seed(example_seed, k)
    if reuse > 1:
      s = augment.example_seed(s[0], s[1], r)
    return window_example(ex, s, data_cfg), tf.cast(ex["label"], tf.float32)

  ds = ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if reuse > 1:
    ds = ds.shuffle(max(data_cfg.batch_size, 2 * reuse), seed=reuse_shuffle_seed)
  ds = ds.batch(data_cfg.batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic)
  options = tf.data.Options()
  options.deterministic = deterministic
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
