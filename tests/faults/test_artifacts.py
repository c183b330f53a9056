"""Damaged run files give one clear line naming the file and what to do (exit status 2).

* a truncated ``best.keras`` (Keras itself says "File not found" for it);
* a corrupt ``backup/state.npz`` (through `checkpoint.load_state`);
* a flipped byte in a TFRecord shard: TensorFlow's ``DataLossError`` names no file; the entry
  points' wrapper names the shard (found by its sha256 in ``shards.json``).
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammo_tf import cli
from mammo_tf import config as config_lib
from mammo_tf.data import convert
from mammo_tf.training import artifacts
from mammo_tf.training import checkpoint
from tests import dicom_factory as fac


def _model():
  inp = keras.Input((4,))
  return keras.Model(inp, keras.layers.Dense(1)(inp))


def test_truncated_keras_file_is_named_with_what_to_do(tmp_path):
  path = str(tmp_path / "best.keras")
  _model().save(path)
  assert isinstance(artifacts.load_keras_model(path), keras.Model)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])
  with pytest.raises(cli.UserError, match="truncated or corrupt Keras model") as e:
    artifacts.load_keras_model(path)
  assert path in str(e.value) and "backup/" in str(e.value)
  assert cli.exit_code(e.value) == 2
  with pytest.raises(cli.UserError, match="model file not found"):
    artifacts.load_keras_model(str(tmp_path / "none.keras"))


def test_corrupt_checkpoint_is_named_with_what_to_do(tmp_path):
  var = tf.Variable(np.zeros((3, 3), np.float32))
  backup = str(tmp_path / "backup")
  path = checkpoint.save_state(backup, [np.arange(9, dtype=np.float32).reshape(3, 3)], [],
                               {"epoch": 1})
  assert checkpoint.load_state(backup, [var], []) == {"epoch": 1}
  np.testing.assert_array_equal(var.numpy(), np.arange(9).reshape(3, 3))
  data = bytearray(open(path, "rb").read())
  data[len(data) // 3: len(data) // 3 + 16] = b"\xff" * 16
  open(path, "wb").write(bytes(data))
  with pytest.raises(cli.UserError, match="corrupt training checkpoint") as e:
    checkpoint.load_state(backup, [var], [])
  assert path in str(e.value) and "delete the run's backup/ folder" in str(e.value)


def test_data_loss_error_names_the_damaged_shard(tmp_path, capsys):
  rows = []
  for k in range(3):
    img = np.zeros((96, 80), np.uint16)
    img[10:80, :50] = 1500 + 100 * k
    fac.write_ffdm(tmp_path / f"i{k}.dcm", img)
    rows.append(f"P{k},E{k},I{k},ffdm,i{k}.dcm,normal")
  manifest = tmp_path / "m.csv"
  manifest.write_text("patient_id,exam_id,image_id,domain,path,label\n" + "\n".join(rows) + "\n")
  out = str(tmp_path / "o")
  cfg = config_lib.get_config("tiny", ["data.num_shards=1"])
  convert.run_conversion(str(manifest), out, cfg, seed=0, salt=b"artifact-salt-0123")
  shard = next(os.path.join(out, "ffdm", n) for n in sorted(os.listdir(os.path.join(out, "ffdm")))
               if os.path.getsize(os.path.join(out, "ffdm", n)))
  data = bytearray(open(shard, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(data))

  def main(argv):
    for _ in tf.data.TFRecordDataset(shard):   # what the input pipeline does
      pass
    return 0

  code = cli.wrap(main)([])   # no data folder flag: still one line, exit 2
  err = capsys.readouterr().err
  assert code == 2 and "corrupt TFRecord data" in err and "Traceback" not in err
  e = artifacts.data_loss_error(tf.errors.DataLossError(None, None, "corrupted record at 12"),
                                [out])
  assert shard in str(e) and "rerun data_prep.convert" in str(e)
  assert cli.exit_code(e) == 2
