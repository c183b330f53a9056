"""`make demo` on the tiny preset: a crash and a Ctrl-C on the way, and the same table at the end.

The main job must survive what users' machines do to it: a training process that dies by a signal
(a fault in a native kernel, the out-of-memory killer) is reported with its log and the other
trainings go on; an interrupted run (Ctrl-C) is finished by running the same command again, which
reuses the cohort (not rewritten), the conversion cache and the finished trainings, and prints the
same Table 2 as a run that was never interrupted.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from tests import train_runs

pytestmark = pytest.mark.slow

REPO = train_runs.REPO


def _make(demo_dir, **popen):
  venv = os.path.join(REPO, ".venv")
  stamp = [n for n in os.listdir(venv) if n.startswith(".installed-")] if os.path.isdir(
      venv) else []
  cmd = ["make", "--no-print-directory", "demo", "PRESET=tiny", f"DEMO={demo_dir}"]
  cmd += [f"--old-file={os.path.join('.venv', n)}" for n in stamp]  # installed already: no pip
  env = dict(train_runs.env(), PYTHONPATH="")
  # Ctrl-C must reach make and its children even when this suite runs as a background job
  # (`pytest ... &` in a script): the shell starts those with SIGINT ignored, and an ignored
  # signal stays ignored through fork and exec (make and Python then never see it).
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint, **popen)


def _default_sigint():
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finish(proc, timeout=1500):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _rows(demo_dir):
  with open(os.path.join(demo_dir, "study", "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  return {r["key"]: (r["aucs"], r["mean"], r["ci"]) for r in results["rows"]}


def _training_pid(job, workdir, deadline):
  """The pid of the `python -m train.<job>` process working in `workdir`, once it runs."""
  while time.monotonic() < deadline:
    for pid in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          argv = f.read().split(b"\0")
      except OSError:
        continue
      if f"train.{job}".encode() in argv and workdir.encode() in argv:
        return int(pid)
    time.sleep(0.2)
  raise AssertionError(f"train.{job} did not start in {workdir}")


def _wait_for(path, deadline):
  while not os.path.exists(path):
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.2)


def test_demo_survives_a_crash_and_ctrl_c_and_prints_the_same_table(tmp_path):
  clean, hurt = str(tmp_path / "clean"), str(tmp_path / "hurt")
  code, out = _finish(_make(clean))
  assert code == 0, out[-3000:]
  expected = _rows(clean)
  assert len(expected) == 7

  # 1. The fine-tune training dies by SIGSEGV, as the oneDNN fault made it do.
  proc = _make(hurt, start_new_session=True)
  deadline = time.monotonic() + 1200
  pid = _training_pid("finetune", os.path.join(hurt, "study", "finetune"), deadline)
  os.kill(pid, signal.SIGSEGV)
  code, out = _finish(proc)
  assert code != 0
  log = os.path.join(hurt, "study", "logs", "finetune.log")
  assert f"training finetune crashed (signal 11 SIGSEGV); log: {log}" in out
  study = os.path.join(hurt, "study")
  for run in ("base", "finetune_hm", "spottune", "spottune_hm"):  # the others went on
    assert os.path.exists(os.path.join(study, run, "done.json")), run
  assert not os.path.exists(os.path.join(study, "finetune", "done.json"))
  dicom = os.path.join(hurt, "cohort", "manifest.csv")
  stamp = os.stat(dicom).st_mtime_ns

  # 2. Rerun, and Ctrl-C (SIGINT to the whole process group) once fine-tuning runs again.
  proc = _make(hurt, start_new_session=True)
  _training_pid("finetune", os.path.join(study, "finetune"), time.monotonic() + 600)
  time.sleep(3)
  os.killpg(proc.pid, signal.SIGINT)
  code, out = _finish(proc)
  assert code != 0, out[-3000:]
  assert not os.path.exists(os.path.join(study, "finetune", "done.json"))

  # 3. The same command finishes the study: cohort reused, conversion from its cache.
  code, out = _finish(_make(hurt))
  assert code == 0, out[-3000:]
  assert "complete cohort for this preset and seed, reused" in out
  assert os.stat(dicom).st_mtime_ns == stamp
  assert "training base         complete, reused" in out
  assert _rows(hurt) == expected
