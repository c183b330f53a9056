"""Resume after SIGKILL: `python -m train.train_base` killed after its first epoch checkpoint and
restarted with the same command ends with exactly the weights and metrics of an uninterrupted
run."""

import os
import signal
import subprocess
import time

import pytest

from tests import train_runs

EPOCHS = 4
REPO = train_runs.REPO


def _command(data_dir, workdir):
  return train_runs.command(data_dir, workdir, seed=7, epochs=EPOCHS, samples_per_epoch=32)


_env = train_runs.env


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
  next_epoch = train_runs.next_epoch(state)
  assert 2 <= next_epoch <= EPOCHS, next_epoch          # killed with epochs left to run
  resumed = subprocess.run(_command(data_dir, killed_dir), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=400)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert f"resuming {killed_dir} from epoch {next_epoch}" in resumed.stderr
  assert full.wait(timeout=400) == 0

  train_runs.assert_runs_identical(full_dir, killed_dir, EPOCHS)
