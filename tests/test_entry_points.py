"""Every absl entry point: ``--help`` prints its flags and exits 0; an unknown flag exits 2."""

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(
    os.path.relpath(p, REPO)[:-3].replace(os.sep, ".")
    for folder in ("data_prep", "train", "eval")
    for p in glob.glob(os.path.join(REPO, folder, "*.py"))
    if "cli.run(" in open(p).read())


def _run(module, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=300, cwd=REPO, env=env)


def test_every_entry_point_is_found():
  assert len(MODULES) >= 13 and "eval.shift_study" in MODULES and "data_prep.convert" in MODULES


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_help_prints_the_flags_and_exits_0(module):
  proc = _run(module, "--help")
  assert proc.returncode == 0, proc.stderr[-1000:]
  # The module's own docstring, then its flags with their help.
  module_file = os.path.join(REPO, *module.split(".")) + ".py"
  first_doc_line = open(module_file).read().split('"""')[1].strip().splitlines()[0]
  assert proc.stdout.startswith(first_doc_line.strip()), proc.stdout[:200]
  assert "\nflags:\n" in proc.stdout and "Try --helpfull" in proc.stdout


@pytest.mark.parametrize("module", ["eval.shift_study", "data_prep.convert"])
def test_unknown_flag_exits_2_in_one_line(module):
  proc = _run(module, "--no_such_flag=1")
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "no_such_flag" in lines[0] and "Traceback" not in proc.stderr
