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


def test_errors_csv_and_logs_hold_no_identifier(tmp_path, caplog):
  """The privacy grep over errors.csv (and every other output byte and the log) when manifest
  paths and fields carry identifiers: an MRN folder, an id as a label, a patient-named file."""
  import logging

  import numpy as np

  from mammo_tf import config as config_lib
  from mammo_tf.data import convert
  from tests import dicom_factory as fac
  from tests import trees
  img = np.zeros((96, 80), np.uint16)
  img[10:86, :50] = 2100
  os.makedirs(tmp_path / "MRN4417" / "DOE_JANE")
  fac.write_ffdm(tmp_path / "MRN4417" / "DOE_JANE" / "lcc.dcm", img)
  fac.write_ffdm(tmp_path / "MRN4417" / "black.dcm", np.zeros((96, 80), np.uint16))
  rows = ["MRN4417,ACC5521,IMG8812,ffdm,MRN4417/DOE_JANE/lcc.dcm,normal",
          "MRN4417,ACC5521,IMG8813,ffdm,MRN4417/DOE_JANE/rcc.dcm,normal",    # missing file
          "MRN4417,ACC5521,IMG8814,ffdm,MRN4417/black.dcm,normal",           # no breast
          "MRN4417,ACC5521,IMG8815,ffdm,MRN4417/DOE_JANE/lcc.dcm,MRN4417",   # id as a label
          "MRN9999,ACC5521,IMG8816,ffdm,MRN4417/DOE_JANE/lcc.dcm,normal"]    # duplicate file
  manifest = tmp_path / "m.csv"
  manifest.write_text("patient_id,exam_id,image_id,domain,path,label\n" + "\n".join(rows) + "\n")
  cfg = config_lib.get_config("tiny", ["data.num_shards=1"])
  with caplog.at_level(logging.DEBUG):
    report = convert.run_conversion(str(manifest), str(tmp_path / "o"), cfg, seed=0,
                                    salt=b"privacy-salt-0123")
  assert report.num_converted == 1 and report.num_errors == 4
  tree = trees.tree_bytes(str(tmp_path / "o"))
  needles = ["MRN4417", "MRN9999", "ACC5521", "IMG881", "DOE", "JANE", "rcc.dcm", "black.dcm",
             fac.PATIENT_ID, fac.ACCESSION, fac.STUDY_DATE]
  assert len(tree["errors.csv"].splitlines()) == 5
  for rel, data in tree.items():
    for needle in needles:
      assert needle.encode() not in data, (rel, needle)
  for needle in needles:
    assert needle not in caplog.text, needle
