"""The Beam conversion (DirectRunner) against the local runner on the same real DICOM cohort.

The cohort is test_convert's (good FFDM / multi-frame and per-slice DBT in several transfer
syntaxes, plus every bad input kind): same shards (examples as sets and byte for byte, in
fact the same files), same c.d.f. files, summary.json, errors.csv and config.json. The CLI is run
once with ``--runner beam -- <pipeline options>`` to check the wiring of the pass-through.
"""
import csv
import os
import shutil
import subprocess
import sys

import pydicom
import pytest

pytest.importorskip("apache_beam")

from mammo_tf.data import beam_pipeline
from mammo_tf.data import convert
from mammo_tf.data import writer
from tests.data import test_convert as tc

REPO = tc.REPO
SALT = tc.SALT


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("beam_cohort"))
  manifest, _, bad = tc._build_cohort(root)
  local = os.path.join(root, "local")
  beam = os.path.join(root, "beam")
  r_local = convert.run_conversion(manifest, local, tc._cfg(), seed=0, workers=1, salt=SALT)
  r_beam = beam_pipeline.run_beam_conversion(manifest, beam, tc._cfg(), seed=0, salt=SALT,
                                             pipeline_args=["--runner=DirectRunner"])
  return {"root": root, "manifest": manifest, "bad": bad, "local": local, "beam": beam,
          "r_local": r_local, "r_beam": r_beam}


def _outputs(out):
  """{relpath: bytes} of the job's outputs (not the local runner's per-image cache)."""
  tree = tc._tree(out)
  return {k: v for k, v in tree.items() if not k.startswith(".cache")}


def _examples(out):
  shards = {}
  for d in ("ffdm", "dbt"):
    for name in sorted(os.listdir(os.path.join(out, d))):
      shards[f"{d}/{name}"] = list(writer.iter_shard(os.path.join(out, d, name)))
  return shards


def test_beam_and_local_write_the_same_examples(runs):
  a, b = _examples(runs["local"]), _examples(runs["beam"])
  assert sorted(a) == sorted(b) and len(a) == 14      # 2 shards x (5 ffdm + 2 dbt groups)
  assert sum(len(v) for v in a.values()) == 9
  for rel in a:
    assert set(a[rel]) == set(b[rel]), rel                      # examples as sets
    assert a[rel] == b[rel], rel                                # same bytes, same order
  assert {len(e) for v in a.values() for e in v} == {len(e) for v in b.values() for e in v}


def test_beam_and_local_write_the_same_cdfs_summary_and_errors(runs):
  a, b = _outputs(runs["local"]), _outputs(runs["beam"])
  assert sorted(a) == sorted(b)
  for name in ("cdf_ffdm.npz", "cdf_dbt.npz", "summary.json", "errors.csv", "config.json"):
    assert a[name] == b[name], name
  assert a == b                                                 # every output file identical
  assert not [p for p in _outputs(runs["beam"]) if ".tmp-" in p]
  rl, rb = runs["r_local"], runs["r_beam"]
  assert (rb.num_rows, rb.num_converted, rb.num_errors, rb.exit_code) == (
      rl.num_rows, rl.num_converted, rl.num_errors, rl.exit_code) == (20, 9, 11, 1)
  assert [tuple(e) + (e.line,) for e in rb.errors] == [tuple(e) + (e.line,) for e in rl.errors]
  assert rb.summary == rl.summary
  with open(os.path.join(runs["beam"], "errors.csv"), newline="") as f:
    for r in csv.DictReader(f):
      path, reason = runs["bad"][int(r["line"])]
      assert "path" not in r and reason.lower() in r["reason"].lower()   # no path by default


def test_a_local_rerun_over_the_beam_output_skips_every_shard(runs):
  """Beam writes the shard digests too: the local runner recognises its shards as complete."""
  state = os.path.join(runs["beam"], convert.CACHE_DIR, "shards")
  for rel in _examples(runs["beam"]):
    assert os.path.exists(os.path.join(state, rel + ".digest")), rel


@pytest.mark.slow
def test_cli_runner_beam_passes_pipeline_options(runs):
  out = os.path.join(runs["root"], "cli_beam")
  salt_file = os.path.join(runs["root"], "salt.bin")
  with open(salt_file, "wb") as f:
    f.write(SALT)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  p = subprocess.run(
      [sys.executable, "-m", "data_prep.convert", "--manifest", runs["manifest"], "--out", out,
       "--preset", "tiny", "--salt_file", salt_file, "--runner", "beam",
       *[f"--override={o}" for o in tc.OVERRIDES],
       "--", "--runner=DirectRunner", "--direct_num_workers=1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-3000:]      # 11 inputs rejected
  assert _outputs(out) == _outputs(runs["local"])
  # Pipeline options without --runner beam are a usage error.
  p = subprocess.run(
      [sys.executable, "-m", "data_prep.convert", "--manifest", runs["manifest"], "--out", out,
       "--preset", "tiny", "--", "--runner=DirectRunner"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and "need --runner beam" in p.stderr


def test_beam_rejects_copies_of_one_image_as_the_local_job_does(tmp_path):
  from tests import dicom_factory as fac
  from tests.data import test_hostile as th
  fac.write_ffdm(tmp_path / "a.dcm", fac.half_ellipse_breast(6, (96, 80)))
  fac.write_ffdm(tmp_path / "b.dcm", fac.half_ellipse_breast(7, (96, 80)))
  shutil.copy(tmp_path / "a.dcm", tmp_path / "copy.dcm")       # same SOPInstanceUID
  for name in ("n1.dcm", "n2.dcm"):                              # no UID, same pixels
    fac.write_ffdm(tmp_path / name, fac.half_ellipse_breast(8, (96, 80)))
    ds = pydicom.dcmread(tmp_path / name)
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / name)
  manifest = th._manifest(tmp_path / "m.csv", [
      "P1,E1,I1,ffdm,a.dcm,normal",       # line 2
      "P4,E4,I5,ffdm,copy.dcm,normal",    # 3: duplicate of line 2 (the same SOPInstanceUID)
      "P1,E1,I6,ffdm,b.dcm,benign",       # 4
      "P5,E5,I7,ffdm,n1.dcm,normal",      # 5
      "P6,E6,I8,ffdm,n2.dcm,normal",      # 6: duplicate of line 5 (the same pixels)
      "P5,E5,I9,ffdm,n2.dcm,normal"])     # 7: duplicate of line 6 (the same file)
  outs = {}
  for runner in ("local", "beam"):
    out = str(tmp_path / runner)
    if runner == "local":
      convert.run_conversion(manifest, out, th._cfg(), seed=0, workers=1, salt=th.SALT)
    else:
      beam_pipeline.run_beam_conversion(manifest, out, th._cfg(), seed=0, salt=th.SALT,
                                        pipeline_args=["--runner=DirectRunner"])
    outs[runner] = out
  reasons = {int(e["line"]): e["reason"] for e in th._errors(outs["beam"])}
  assert reasons == {3: "duplicate of line 2 (the same SOPInstanceUID)",
                     6: "duplicate of line 5 (the same pixels)",
                     7: "duplicate of line 6 (the same file)"}
  assert _outputs(outs["beam"]) == _outputs(outs["local"])
  ffdm = os.path.join(outs["beam"], "ffdm")
  assert sum(len(list(writer.iter_shard(os.path.join(ffdm, n)))) for n in os.listdir(ffdm)) == 3
