"""Resume after SIGKILL: `python -m train.train_base` killed after its first epoch checkpoint and
restarted with the same command ends with exactly the weights and metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 4


def _command(data_dir, workdir):
  return [sys.executable, "-m", "train.train_base", "--data", data_dir, "--workdir", workdir,
          "--preset", "tiny", "--seed", "7", "--epochs", str(EPOCHS), "--deterministic",
          "--override", "data.samples_per_epoch=32", "--override", "data.batch_size=8",
          "--override", "data.eval_batch_size=16"]


def _env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


def _metrics(history):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(data_dir, tmp_path):
  full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
  log = open(tmp_path / "logs.txt", "w")
  full = subprocess.Popen(_command(data_dir, full_dir), cwd=REPO, env=_env(), stdout=log,
                          stderr=subprocess.STDOUT)
  victim = subprocess.Popen(_command(data_dir, killed_dir), cwd=REPO, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT)
  state = os.path.join(killed_dir, "backup", "state.npz")
  deadline = time.time() + 400
  while not os.path.exists(state) and victim.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  victim.send_signal(signal.SIGKILL)
  victim.wait(timeout=60)
  assert victim.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(killed_dir, "done.json"))
  with np.load(state) as data:
    next_epoch = json.loads(bytes(data["meta"]).decode())["next_epoch"]
  assert 2 <= next_epoch <= EPOCHS, next_epoch          # killed with epochs left to run
  resumed = subprocess.run(_command(data_dir, killed_dir), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=400)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert f"resuming {killed_dir} from epoch {next_epoch}" in resumed.stderr
  assert full.wait(timeout=400) == 0

  def load(workdir):
    with np.load(os.path.join(workdir, "backup", "state.npz")) as data:
      arrays = {k: data[k] for k in data.files if k != "meta"}
    history = json.load(open(os.path.join(workdir, "history.json")))
    done = json.load(open(os.path.join(workdir, "done.json")))
    return arrays, history, done

  a_arrays, a_history, a_done = load(full_dir)
  b_arrays, b_history, b_done = load(killed_dir)
  assert len(a_history) == EPOCHS
  assert _metrics(a_history) == _metrics(b_history)
  assert a_done == b_done
  assert sorted(a_arrays) == sorted(b_arrays)
  for key in a_arrays:        # model weights, BN statistics and Adam state: bit-identical
    np.testing.assert_array_equal(a_arrays[key], b_arrays[key], err_msg=key)
