"""Salted hashing and the salt file (the end-to-end grep test lives in test_convert.py)."""
import os
import stat

import pytest

from mammo_tf.data import privacy


def test_hashes_are_salted_keyed_and_separated_by_kind():
  a = privacy.hash_patient(b"salt-one", "12345")
  assert len(a) == 32 and int(a, 16) >= 0
  assert a == privacy.hash_patient(b"salt-one", "12345")
  assert a != privacy.hash_patient(b"salt-two", "12345")
  assert a != privacy.hash_image(b"salt-one", "12345")
  assert privacy.hash_exam(b"salt-one", "P1", "E1") != privacy.hash_exam(b"salt-one", "P2", "E1")
  assert "12345" not in a


def test_salt_file_is_created_once_private_and_reused(tmp_path):
  out = str(tmp_path / "out")
  s1 = privacy.load_or_create_salt(out)
  path = os.path.join(out, ".salt")
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(s1) == 64
  assert privacy.load_or_create_salt(out) == s1
  assert os.listdir(out) == [".salt"]
  other = tmp_path / "salt.txt"
  other.write_bytes(b"  my-project-salt\n")
  assert privacy.load_or_create_salt(str(tmp_path / "o2"), str(other)) == b"my-project-salt"
  assert not os.path.exists(tmp_path / "o2")
  (tmp_path / "short").write_bytes(b"abc")
  with pytest.raises(privacy.SaltError, match="need at least 8"):
    privacy.load_or_create_salt(out, str(tmp_path / "short"))
  with pytest.raises(privacy.SaltError, match="cannot read salt file"):
    privacy.load_or_create_salt(out, str(tmp_path / "missing"))
