"""Schema round trip, field by field, for both codecs."""
import numpy as np
import pytest
import tensorflow as tf

from mammo_tf.data import schema


def _record(rng, box=(3.5, 4.0, 20.0, 30.25)):
  return {
      "image": rng.integers(0, 4096, size=(37, 29), dtype=np.uint16),
      "mask": (rng.random((10, 8)) > 0.5).astype(np.uint8),
      "label": "high_risk", "box": box, "domain": "dbt", "split": "val",
      "laterality": "L", "view": "MLO", "patient": "ab" * 8, "exam": "cd" * 8,
      "image_id": "ef" * 8, "downsample": 2, "mask_downsample": 4,
  }


@pytest.mark.parametrize("codec", ["png", "raw"])
@pytest.mark.parametrize("box", [(3.5, 4.0, 20.0, 30.25), None])
def test_round_trip_field_by_field(codec, box):
  rec = _record(np.random.default_rng(0), box)
  out = schema.decode_example_numpy(schema.encode_example(rec, codec))
  np.testing.assert_array_equal(out.pop("image"), rec["image"])
  np.testing.assert_array_equal(out.pop("mask"), rec["mask"])
  expected = {k: v for k, v in rec.items() if k not in ("image", "mask")}
  assert out == expected


def test_binary_label_and_graph_decode():
  labels = ("normal", "benign", "high_risk", "malignant")
  assert [schema.binary_label(name) for name in labels] == [0, 0, 1, 1]
  with pytest.raises(ValueError, match="unknown label 'cancer'"):
    schema.binary_label("cancer")
  rec = _record(np.random.default_rng(1))
  ds = tf.data.Dataset.from_tensors(schema.encode_example(rec)).map(schema.decode_example)
  (ex,) = list(ds)
  assert ex["image"].dtype == tf.uint16 and ex["image"].shape == (37, 29, 1)
  assert int(ex["label"]) == 1 and int(ex["label_class"]) == 2 and bool(ex["has_box"])


def test_encoding_is_deterministic_and_rejects_bad_images():
  rec = _record(np.random.default_rng(2))
  assert schema.encode_example(rec) == schema.encode_example(dict(rec))
  with pytest.raises(ValueError, match="uint16"):
    schema.encode_image(np.zeros((4, 4), np.float32))
  assert schema.shard_name("train", True, 3, 16) == "train-pos-00003-of-00016.tfrecord"
