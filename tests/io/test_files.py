"""Atomic writes: content, permissions, no leftovers, errors that name the file."""
import json
import os
import stat

import pytest

from mammo_tf.io import files


def test_atomic_write_content_mode_and_no_leftovers(tmp_path):
  old = os.umask(0o022)
  try:
    path = tmp_path / "sub" / "a.json"
    files.atomic_write_json(str(path), {"b": 1, "a": [1.5]})
    files.atomic_write(str(tmp_path / "t.txt"), "héllo")
  finally:
    os.umask(old)
  assert path.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
  assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}
  assert (tmp_path / "t.txt").read_bytes() == "héllo".encode()
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644    # not mkstemp's 0600
  assert not [n for n in os.listdir(path.parent) if n.startswith(files.TMP_PREFIX)]


def test_failed_write_names_the_file_and_leaves_nothing(tmp_path):
  def boom(f):
    f.write(b"partial")
    raise OSError(28, "No space left on device")
  path = tmp_path / "x.bin"
  with pytest.raises(OSError, match=r"cannot write .*x\.bin \(No space left on device\)"):
    files.atomic_write_with(str(path), boom)
  assert os.listdir(tmp_path) == []
