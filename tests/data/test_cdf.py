"""HM lookup table: equal to skimage on one pair, and to Algorithm 1 written out naively."""
import numpy as np
import pytest
from skimage.exposure import match_histograms

from mammo_tf.data import cdf


def test_lut_reproduces_skimage_match_histograms_on_one_pair():
  rng = np.random.default_rng(0)
  src = np.clip(rng.gamma(4.0, 300.0, size=(64, 48)), 1, 4095).astype(np.uint16)
  ref = np.clip(rng.normal(2500, 400, size=(50, 40)), 0, 4095).astype(np.uint16)
  lut = cdf.hm_lut(cdf.image_cdf(src), cdf.image_cdf(ref))
  ours = cdf.apply_lut(src, lut)
  theirs = match_histograms(src, ref)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)  # float32 table vs float64


def _naive_algorithm_1(src_cdf, ref_cdf):
  """Algorithm 1 of the paper, one level at a time, no vectorisation; below the first populated
  source level a straight line from (0, 0) to (that level, first populated reference level)."""
  levels = [l for l in range(len(ref_cdf)) if ref_cdf[l] > (ref_cdf[l - 1] if l else 0.0)]
  first_src = next(k for k in range(len(src_cdf)) if src_cdf[k] > 0)
  out = []
  for k in range(len(src_cdf)):
    q = src_cdf[k]
    if k == 0:
      out.append(0.0)
      continue
    if k < first_src:
      out.append(levels[0] * k / first_src)
      continue
    if q <= ref_cdf[levels[0]]:
      out.append(float(levels[0]))
      continue
    if q >= ref_cdf[levels[-1]]:
      out.append(float(levels[-1]))
      continue
    for a, b in zip(levels[:-1], levels[1:]):
      if ref_cdf[a] <= q <= ref_cdf[b]:
        out.append(a + (q - ref_cdf[a]) * (b - a) / (ref_cdf[b] - ref_cdf[a]))
        break
  return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lut_equals_naive_algorithm_on_random_cdfs(seed):
  rng = np.random.default_rng(seed)
  def random_cdf():
    counts = rng.integers(0, 5, size=4096) * (rng.random(4096) < 0.3)
    counts[rng.integers(0, 4096)] += 1
    return np.cumsum(counts) / counts.sum()
  src, ref = random_cdf(), random_cdf()
  np.testing.assert_allclose(cdf.hm_lut(src, ref), _naive_algorithm_1(src, ref), atol=1e-3)


def test_average_cdf_weights_images_equally_and_masks_background(tmp_path):
  a = np.full((4, 4), 10, np.uint16)
  b = np.full((2, 2), 20, np.uint16)
  avg = cdf.average_cdf([cdf.image_cdf(a), cdf.image_cdf(b)])
  assert avg[9] == 0 and avg[10] == 0.5 and avg[19] == 0.5 and avg[20] == 1.0
  mask = np.zeros((4, 4), bool)
  mask[0, 0] = True
  img = np.zeros((4, 4), np.uint16)
  img[0, 0] = 7
  c = cdf.image_cdf(img, mask)
  assert c[6] == 0 and c[7] == 1
  path = str(tmp_path / "cdf_ffdm.npz")
  cdf.save_cdf(path, avg, domain="ffdm", num_images=2)
  np.testing.assert_array_equal(cdf.load_cdf(path), avg)
  with pytest.raises(ValueError, match="empty mask"):
    cdf.image_cdf(img, np.zeros((4, 4), bool))
  with pytest.raises(FileNotFoundError, match="cdf_dbt.npz"):
    cdf.load_cdf(str(tmp_path / "cdf_dbt.npz"))
  assert cdf.kolmogorov_distance(cdf.image_cdf(a), cdf.image_cdf(b)) == 1.0


def test_dark_non_zero_background_ramps_instead_of_jumping_to_the_reference_minimum():
  rng = np.random.default_rng(4)
  # Source breast 1000..2000, reference breast 500..3500; the source patch also holds a dark
  # non-zero background (levels 1..60: e.g. a rotated patch's interpolated border) and zeros.
  src_breast = rng.integers(1000, 2001, size=5000)
  ref_breast = rng.integers(500, 3501, size=5000)
  lut = cdf.hm_lut(cdf.image_cdf(src_breast), cdf.image_cdf(ref_breast))
  r0 = int(ref_breast.min())
  assert lut[0] == 0
  # Hand-computed: level k < 1000 -> k * r0 / 1000.
  for k in (1, 30, 60, 500, 999):
    assert lut[k] == pytest.approx(k * r0 / 1000, abs=1e-3)
  assert r0 <= lut[1000] <= r0 + 5                    # continuous at the first breast level
  assert np.all(np.diff(lut) >= 0)
  patch = np.concatenate([np.zeros(10, np.uint16), np.arange(1, 61, dtype=np.uint16)])
  out = cdf.apply_lut(patch, lut)
  assert (out[:10] == 0).all() and out[10:].max() < r0 * 0.07   # background stays dark
