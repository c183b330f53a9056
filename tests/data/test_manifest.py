"""Manifest validation and the patient-level split."""
import collections
import os

import pytest

from mammo_tf.data import manifest

HEADER = ("patient_id,exam_id,image_id,domain,path,label,laterality,view,"
          "roi_x,roi_y,roi_w,roi_h,split\n")


def _write(tmp_path, text, name="m.csv", encoding="utf-8"):
  p = tmp_path / name
  p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
  return str(p)


def test_valid_rows_bom_whitespace_case_and_paths(tmp_path):
  text = ("\ufeff" + " Patient_ID , exam_id,image_id,domain,path,label,laterality,view,"
          "roi_x,roi_y,roi_w,roi_h,split,extra\n"
          " P1 , E1, I1 , FFDM , a/b.dcm , Malignant , l , cc ,10,20,30,40, ,x\n"
          "P1,E2,I2,dbt,/abs/vol.dcm,normal,,,,,,,Test,\n"
          "\n")
  rows, errors = manifest.read_manifest(_write(tmp_path, text))
  assert errors == []
  a, b = rows
  assert (a.patient_id, a.exam_id, a.image_id, a.domain, a.label) == ("P1", "E1", "I1", "ffdm",
                                                                     "malignant")
  assert (a.laterality, a.view, a.box, a.split, a.line) == ("L", "CC", (10., 20., 30., 40.), "", 2)
  assert a.path == os.path.join(str(tmp_path), "a", "b.dcm") and a.given_path == "a/b.dcm"
  assert a.positive and not b.positive
  assert (b.path, b.split, b.box, b.line) == ("/abs/vol.dcm", "test", None, 3)


@pytest.mark.parametrize("row, reason", [
    ("P,E,I,mri,x.dcm,normal,,,,,,,", "unknown domain 'mri'"),
    ("P,E,I,ffdm,x.dcm,cancer,,,,,,,", "unknown label 'cancer'"),
    ("P,E,I,ffdm,x.dcm,normal,X,,,,,,", "laterality 'X' is not L or R"),
    ("P,E,I,ffdm,x.dcm,normal,,,1,2,3,,", "incomplete finding box: roi_h missing"),
    ("P,E,I,ffdm,x.dcm,normal,,,1,2,0,4,", "non-positive size"),
    ("P,E,I,ffdm,x.dcm,normal,,,a,2,3,4,", "roi_x is not a number"),
    ("P,E,I,ffdm,x.dcm,normal,,,,,,,dev", "unknown split 'dev'"),
    (",E,I,ffdm,x.dcm,normal,,,,,,,", "empty patient_id"),
    ("P,E,I,ffdm,,normal,,,,,,,", "empty path"),
])
def test_row_errors_are_specific_and_the_rest_is_kept(tmp_path, row, reason):
  text = HEADER + "Q,E,J,ffdm,ok.dcm,benign,,,,,,,\n" + row + "\n"
  rows, errors = manifest.read_manifest(_write(tmp_path, text))
  assert [r.image_id for r in rows] == ["J"]
  (err,) = errors
  where, why = err
  assert reason in why and err.line == 3
  assert where == ("" if "empty path" in reason else "x.dcm")


def test_duplicate_image_id_rejects_second_occurrence_without_echoing_it(tmp_path):
  text = HEADER + "P,E,SECRET1,ffdm,a.dcm,normal,,,,,,,\nQ,F,SECRET1,ffdm,b.dcm,normal,,,,,,,\n"
  rows, errors = manifest.read_manifest(_write(tmp_path, text))
  assert [r.given_path for r in rows] == ["a.dcm"]
  assert errors[0].where == "b.dcm"
  assert errors[0].reason == "duplicate image_id (first used on line 2)"
  assert "SECRET1" not in errors[0].reason


def test_conflicting_overrides_reject_all_rows_of_the_patient(tmp_path):
  text = HEADER + ("P,E,I1,ffdm,a.dcm,normal,,,,,,,train\nP,E,I2,dbt,b.dcm,normal,,,,,,,test\n"
                   "P,E,I3,ffdm,c.dcm,normal,,,,,,,\nQ,E,I4,ffdm,d.dcm,normal,,,,,,,val\n")
  rows, errors = manifest.read_manifest(_write(tmp_path, text))
  assert [r.image_id for r in rows] == ["I4"]
  assert [e.line for e in errors] == [2, 3, 4]
  want = "conflicting split overrides for this patient (test, train)"
  assert all(e.reason == want for e in errors)


def test_file_level_errors(tmp_path):
  with pytest.raises(manifest.ManifestError, match="manifest not found"):
    manifest.read_manifest(str(tmp_path / "nope.csv"))
  with pytest.raises(manifest.ManifestError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
    manifest.read_manifest(_write(tmp_path, HEADER + "P,E,I,ffdm,caf\u00e9.dcm,normal\n",
                                  encoding="latin-1"))
  with pytest.raises(manifest.ManifestError, match="missing required column.*: label"):
    manifest.read_manifest(_write(tmp_path, "patient_id,exam_id,image_id,domain,path\n"))
  with pytest.raises(manifest.ManifestError, match="empty"):
    manifest.read_manifest(_write(tmp_path, ""))


def _rows(n_patients, seed=0, dbt_every=2, pos_every=3):
  rows = []
  for p in range(n_patients):
    pid = f"patient-{p:04d}"
    label = "malignant" if p % pos_every == 0 else "normal"
    rows.append(manifest.ManifestRow(pid, "e", f"{pid}-f", "ffdm", "/x", label))
    if p % dbt_every == 0:
      rows.append(manifest.ManifestRow(pid, "e", f"{pid}-d", "dbt", "/x", label))
  return rows


def test_split_is_deterministic_exact_and_patient_level():
  rows = _rows(1000)
  a = manifest.assign_splits(rows, seed=3)
  assert a == manifest.assign_splits(list(reversed(rows)), seed=3)   # order does not matter
  assert a != manifest.assign_splits(rows, seed=4)
  assert collections.Counter(a.values()) == {"train": 800, "val": 100, "test": 100}
  # Each domain and class is close to 80/10/10 too (stratified).
  for domain in ("ffdm", "dbt"):
    for pos in (True, False):
      pids = {r.patient_id for r in rows if r.domain == domain and r.positive == pos}
      c = collections.Counter(a[p] for p in pids)
      assert abs(c["train"] / len(pids) - 0.8) < 0.02 and abs(c["val"] / len(pids) - 0.1) < 0.02
  # One split per patient whatever the domain.
  per_patient = collections.defaultdict(set)
  for r in rows:
    per_patient[r.patient_id].add(a[r.patient_id])
  assert all(len(s) == 1 for s in per_patient.values())


def test_small_cohort_gets_every_split_and_overrides_are_honoured():
  rows = _rows(16)
  a = manifest.assign_splits(rows, seed=0)
  # The 13/2/1 cut, then training patients moved until val and test hold both classes of both
  # domains (tests/data/test_splits.py).
  assert collections.Counter(a.values()) == {"train": 10, "val": 4, "test": 2}
  for split in ("val", "test"):
    assert {(r.domain, r.positive) for r in rows if a[r.patient_id] == split} == {
        (d, p) for d in ("ffdm", "dbt") for p in (True, False)}
  rows = [r if r.patient_id != "patient-0000" else
          manifest.ManifestRow(r.patient_id, "e", r.image_id, r.domain, "/x", r.label, split="test")
          for r in _rows(11)]
  b = manifest.assign_splits(rows, seed=0)
  assert b["patient-0000"] == "test"
  # 8/1/1 cut of the other ten, then one training patient moved to give val its negatives.
  assert collections.Counter(v for k, v in b.items() if k != "patient-0000") == {
      "train": 7, "val": 2, "test": 1}


def test_allocate():
  assert manifest.allocate(16, (0.8, 0.1, 0.1)) == [13, 2, 1]
  assert manifest.allocate(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
  assert manifest.allocate(0, (0.8, 0.1, 0.1)) == [0, 0, 0]
