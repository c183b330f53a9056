"""Patch geometry: the tf twin against the NumPy reference, near every edge and corner."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mammo_tf import config
from mammo_tf.data import augment
from mammo_tf.data import patches

P = 32


def _cases(seed, n):
  """Random images/masks/boxes; boxes and mask cells pushed to edges and corners."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    h, w = int(rng.integers(20, 120)), int(rng.integers(20, 120))   # some smaller than P
    md = int(rng.choice([1, 2, 4, 8]))
    mh, mw = -(-h // md), -(-w // md)
    mask = np.zeros((mh, mw), np.uint8)
    kind = i % 4
    if kind == 0:                       # a corner cell only
      mask[rng.choice([0, mh - 1]), rng.choice([0, mw - 1])] = 1
    elif kind == 1:                     # an edge strip
      mask[:, rng.choice([0, mw - 1])] = 1
    elif kind == 2:                     # random blob
      mask[rng.random((mh, mw)) < 0.4] = 1
    # kind 3: empty mask -> image centre
    y0, x0 = rng.uniform(-2, h + 1), rng.uniform(-2, w + 1)
    corner = rng.integers(0, 4)
    if corner == 0:
      y0, x0 = rng.uniform(0, 3), rng.uniform(0, 3)
    elif corner == 1:
      y0, x0 = rng.uniform(h - 4, h - 1), rng.uniform(w - 4, w - 1)
    box = np.array([y0, x0, y0 + rng.uniform(0, 3), x0 + rng.uniform(0, 3)], np.float32)
    image = rng.integers(0, 4096, size=(h, w), dtype=np.uint16)
    u = rng.random(3).astype(np.float32)
    yield image, mask, md, box, bool(rng.random() < 0.5), u, float(rng.uniform(-0.6, 0.6))


def test_centre_choice_and_clamping_match_numpy():
  for image, mask, md, box, has_box, u, angle in _cases(0, 160):
    hw = image.shape
    ref = patches.choose_centre_np(mask, md, hw, box, has_box, u)
    got = patches.choose_centre(tf.constant(mask[..., None]), md, tf.constant(hw), box, has_box, u)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)
    if not has_box and mask.any():
      cy, cx = (ref // md).astype(int)
      assert mask[cy, cx] == 1 and 0 <= ref[0] < hw[0] and 0 <= ref[1] < hw[1]
    for a in (0.0, angle):
      cref = patches.clamp_centre_np(box[:2] * 1.7 - 5, hw, P, a)
      cgot = patches.clamp_centre(box[:2] * 1.7 - 5, tf.constant(hw), P, a).numpy()
      np.testing.assert_allclose(cgot, cref, atol=1e-3)
      e = patches.half_extent(P, a)
      for axis in (0, 1):
        if hw[axis] - 1 >= 2 * e:   # the rotated patch's sample positions are inside the image
          assert e - 1e-3 <= cref[axis] <= hw[axis] - 1 - e + 1e-3
        else:
          assert cref[axis] == pytest.approx((hw[axis] - 1) / 2)
    tl_ref = patches.window_top_left_np(ref, hw, P)
    tl_got = patches.window_top_left(tf.constant(ref), tf.constant(hw), P).numpy()
    np.testing.assert_array_equal(tl_got, tl_ref)


def _coordinate_image(h, w):
  """Each pixel holds 1 + its (row, column) code, so a patch tells where each pixel came from."""
  return (1 + np.arange(h * w, dtype=np.int64).reshape(h, w)).astype(np.uint16)


def test_eval_patch_is_an_exact_crop_with_zero_padding():
  """Independent of the NumPy twin: every patch pixel is decoded back to its source pixel."""
  cfg = config.get_config("tiny", {"data.patch_size": P}).data
  checked_centres = 0
  for i, (image, mask, md, box, has_box, _, _) in enumerate(_cases(1, 60)):
    h, w = image.shape
    image = _coordinate_image(h, w)
    seed = augment.example_seed(3, i)
    got = augment.make_patch(tf.constant(image[..., None]), tf.constant(mask[..., None]), md,
                             box, has_box, seed, cfg, train=False).numpy()[..., 0]
    code = got.astype(np.int64) - 1
    inside = code >= 0
    assert inside.any()
    rows, cols = np.nonzero(inside)
    src_r, src_c = code[inside] // w, code[inside] % w
    top, left = set(src_r - rows), set(src_c - cols)
    assert len(top) == 1 and len(left) == 1            # one integer translation: an exact crop
    top, left = top.pop(), left.pop()
    rr, cc = np.meshgrid(np.arange(P) + top, np.arange(P) + left, indexing="ij")
    in_image = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    np.testing.assert_array_equal(inside, in_image)    # zeros exactly beyond the image
    # A box far enough from every edge: the window is centred on the box (hand formula: the
    # stored box holds pixel edges, so its centre index is the mean edge - 0.5).
    cy, cx = (box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5
    e = (P - 1) / 2
    if has_box and e <= cy <= h - 1 - e and e <= cx <= w - 1 - e:
      assert abs(top + e - cy) <= 0.5 and abs(left + e - cx) <= 0.5
      checked_centres += 1
  assert checked_centres >= 1


def _marker_file(tmp_path, name, marker_rc, size=4, shape=(160, 140)):
  """A uniform breast with a bright square marker whose top-left original pixel is `marker_rc`."""
  from tests import dicom_factory as factory
  img = np.zeros(shape, np.uint16)
  img[:, : shape[1] * 3 // 4] = 1000
  r, c = marker_rc
  img[r:r + size, c:c + size] = 4000
  return factory.write_ffdm(tmp_path / f"{name}.dcm", img)


@pytest.mark.parametrize("patch_size", [16, 15])
def test_eval_patch_is_centred_on_a_hand_placed_finding(tmp_path, patch_size):
  """A finding drawn at known original pixels, converted at downsample 2: the evaluation patch is
  centred on the marker (intensity centroid) within 0.5 stored pixels."""
  from mammo_tf.data import convert
  from mammo_tf.data import manifest
  cfg = config.get_config("tiny", {"data.patch_size": patch_size, "data.downsample": 2,
                                   "data.intensity": "bits"})
  placed = 0
  for k, (r, c) in enumerate([(100, 60), (101, 61), (57, 33), (80, 90)]):
    path = _marker_file(tmp_path, f"m{k}", (r, c))
    row = manifest.ManifestRow(patient_id="p", exam_id="e", image_id=f"i{k}", domain="ffdm",
                               path=str(path), label="malignant", box=(c, r, 4, 4))
    rec = convert.convert_image(row, "test", cfg, b"salt")
    patch = augment.make_patch(
        tf.constant(rec["image"][..., None]), tf.constant(rec["mask"][..., None]),
        rec["mask_downsample"], np.asarray(rec["box"], np.float32), True,
        augment.example_seed(0, k), cfg.data, train=False).numpy()[..., 0]
    weight = np.clip(patch - 1000.0, 0, None)          # the marker above the uniform breast
    assert weight.sum() > 0
    yy, xx = np.mgrid[:patch_size, :patch_size]
    centroid = np.array([(weight * yy).sum(), (weight * xx).sum()]) / weight.sum()
    np.testing.assert_allclose(centroid, [(patch_size - 1) / 2] * 2, atol=0.5)
    placed += 1
  assert placed == 4


def test_small_image_is_centred_and_padded():
  image = np.arange(1, 51 * 40 + 1, dtype=np.uint16).reshape(51, 40) % 4000 + 1
  tl = patches.window_top_left_np([0.0, 100.0], image.shape, 64)
  np.testing.assert_array_equal(tl, [-6, -12])          # (51-64)/2 = -6.5 -> -6; (40-64)/2 = -12
  out = patches.crop_np(image, tl, 64)
  assert out[:6].max() == 0 and out[57:].max() == 0 and out[:, :12].max() == 0
  np.testing.assert_array_equal(out[6:57, 12:52], image)


def test_random_mask_pixel_is_uniform_over_breast_pixels():
  mask = np.array([[1, 0, 0], [0, 0, 1]], np.uint8)     # 2 cells of 4x4, right one cut to 2 cols
  rng = np.random.default_rng(0)
  counts = {}
  for _ in range(4000):
    y, x = patches.random_mask_pixel_np(mask, 4, (8, 10), rng.random(3).astype(np.float32))
    counts[(int(y), int(x))] = counts.get((int(y), int(x)), 0) + 1
  cells = {(0, 0): 0, (1, 2): 0}
  for (y, x), c in counts.items():
    cells[(y // 4, x // 4)] += c
    assert x < 10
  assert set(cells) == {(0, 0), (1, 2)}
  assert abs(cells[(0, 0)] / 4000 - 0.5) < 0.03
  assert len([k for k in counts if k[0] >= 4]) == 8  # 4 rows x 2 columns inside the image
  assert patches.half_extent(10, math.pi / 4) == pytest.approx(4.5 * math.sqrt(2))
