"""Fault injection on training: SIGKILL mid-epoch twice, then rerun to the end.

``python -m train.train_base --deterministic`` is killed a seeded fraction of a second after an
epoch checkpoint appears (that is, while the next epoch is running), restarted with the same
command, killed the same way one epoch later, and restarted again. It must resume from the last
completed epoch each time and end with the history (losses, AUCs), ``done.json`` and checkpoint
(weights, BatchNorm statistics, Adam state) of an uninterrupted run, bit for bit.
"""
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests import tfrecord_factory
from tests import train_runs
from tests.training.conftest import tiny_config

REPO = train_runs.REPO
EPOCHS = 4
KILL_SEED = 3


def _command(data_dir, workdir):
  return train_runs.command(data_dir, workdir, seed=11, epochs=EPOCHS, samples_per_epoch=64)


_env = train_runs.env
_next_epoch = train_runs.next_epoch


@pytest.mark.slow
def test_two_mid_epoch_kills_then_rerun_matches_a_clean_run(tmp_path):
  data_dir = tfrecord_factory.write_dataset(tmp_path / "data", cfg=tiny_config(),
                                            num_images_per_class=4)
  clean_dir, work = str(tmp_path / "clean"), str(tmp_path / "killed")
  log = open(tmp_path / "logs.txt", "w")
  clean = subprocess.Popen(_command(data_dir, clean_dir), cwd=REPO, env=_env(), stdout=log,
                           stderr=subprocess.STDOUT)
  state = os.path.join(work, "backup", "state.npz")
  rng = np.random.default_rng(KILL_SEED)
  resumed_from = []
  for kill, after_epoch in enumerate((1, 2)):
    victim = subprocess.Popen(_command(data_dir, work), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while (_next_epoch(state) <= after_epoch and victim.poll() is None and
           time.time() < deadline):
      time.sleep(0.01)
    time.sleep(float(rng.uniform(0.05, 0.25)))           # into the next epoch
    victim.send_signal(signal.SIGKILL)
    out = victim.communicate(timeout=60)[0].decode()
    assert victim.returncode == -signal.SIGKILL, out[-3000:]
    # Killed mid-epoch: the checkpoint is still the one of the epoch that had completed.
    assert _next_epoch(state) == after_epoch + 1, (kill, out[-2000:])
    assert not os.path.exists(os.path.join(work, "done.json"))
    if kill:
      resumed_from.append(out)
  assert f"resuming {work} from epoch 2" in resumed_from[0]
  final = subprocess.run(_command(data_dir, work), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=400)
  assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
  assert f"resuming {work} from epoch 3" in final.stderr
  assert clean.wait(timeout=400) == 0

  train_runs.assert_runs_identical(clean_dir, work, EPOCHS)
