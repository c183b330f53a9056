"""The malformed / hostile input corpus (tests/data/bad/make_bad_corpus.py).

41 bad rows (truncated and zero-length files, random bytes behind a DICM preamble, wrong VR
lengths, 60000 x 60000 and 100000-frame declarations, mismatched frame counts, RGB, signed,
float, NaN rescale, path traversal, duplicated ids, negative / outside / NaN boxes, ...) and 5
good rows go through one conversion, run in a subprocess so that its peak RSS can be read:

* every bad row is in errors.csv with its specific reason (substring pinned per case);
* the good rows all convert;
* peak RSS stays within 100 MB of the same job over the good rows only (the huge declared sizes
  are rejected from the header, never allocated);
* a non-UTF-8 manifest is a file-level error (exit 2, byte and line named), as documented in
  `mammo_tf.data.manifest`.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

from tests.data.bad import make_bad_corpus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RSS_MARGIN_MB = 100

_RUNNER = """
import json, resource, sys
from mammo_tf import config
from mammo_tf.data import convert
cfg = config.get_config("tiny", ["data.num_shards=1"])
r = convert.run_conversion(sys.argv[1], sys.argv[2], cfg, seed=0, salt=b"bad-corpus-salt-0123",
                          errors_with_paths=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"converted": r.num_converted, "errors": r.num_errors, "peak_mb": peak}))
"""


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")


def _convert(manifest, out):
  p = subprocess.run([sys.executable, "-c", _RUNNER, manifest, out], cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bad_corpus"))
  expected = make_bad_corpus.make(root)
  result = _convert(os.path.join(root, "manifest.csv"), os.path.join(root, "out"))
  with open(os.path.join(root, "manifest.csv")) as f:
    lines = f.read().splitlines()
  good_only = os.path.join(root, "good.csv")
  with open(good_only, "w") as f:
    f.write("\n".join(lines[:1 + len(expected["good"])]) + "\n")
  baseline = _convert(good_only, os.path.join(root, "out_good"))
  return {"root": root, "expected": expected, "result": result, "baseline": baseline}


def test_corpus_has_at_least_25_bad_inputs(corpus):
  assert len(corpus["expected"]["bad"]) >= 25
  assert len(corpus["expected"]["bad"]) + len(corpus["expected"]["file_level"]) == 42


def test_every_bad_input_is_rejected_with_its_specific_reason(corpus):
  with open(os.path.join(corpus["root"], "out", "errors.csv"), newline="") as f:
    rows = {int(r["line"]): r for r in csv.DictReader(f)}
  expected = {int(k): v for k, v in corpus["expected"]["bad"].items()}
  assert sorted(rows) == sorted(expected)            # nothing else rejected, nothing missed
  for line, (path, reason) in expected.items():
    assert rows[line]["path"] == path, (line, rows[line])
    assert reason in rows[line]["reason"], (line, path, rows[line]["reason"])
  assert corpus["result"]["errors"] == len(expected)


def test_good_inputs_in_the_same_run_all_convert(corpus):
  assert corpus["result"]["converted"] == len(corpus["expected"]["good"]) == 5
  with open(os.path.join(corpus["root"], "out", "summary.json")) as f:
    summary = json.load(f)
  assert summary["total"]["images"] == 5 and summary["num_errors"] == 41
  assert summary["domains"]["dbt"]["images"] == 1
  assert corpus["baseline"]["converted"] == 5 and corpus["baseline"]["errors"] == 0


def test_memory_stays_bounded(corpus):
  peak, base = corpus["result"]["peak_mb"], corpus["baseline"]["peak_mb"]
  assert peak <= base + RSS_MARGIN_MB, (peak, base)


def test_non_utf8_manifest_is_a_file_level_error(corpus, tmp_path):
  p = subprocess.run(
      [sys.executable, "-m", "data_prep.convert", "--manifest",
       os.path.join(corpus["root"], "latin1.csv"), "--out", str(tmp_path / "o"), "--preset",
       "tiny"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert p.returncode == 2
  assert corpus["expected"]["file_level"]["latin1.csv"] in p.stderr
  assert "Traceback" not in p.stderr
  with open(tmp_path / "o" / "errors.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and "path" not in rows[0] and "latin1" not in rows[0]["reason"]
  assert corpus["expected"]["file_level"]["latin1.csv"] in rows[0]["reason"]
