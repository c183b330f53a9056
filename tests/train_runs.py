"""Shared helpers for tests that run `python -m train.train_base` in subprocesses and compare
work directories (resume after SIGKILL, fault injection)."""

import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(data_dir, workdir, *, seed, epochs, samples_per_epoch):
  """The tiny-preset, deterministic base-training command used by the resume tests."""
  return [sys.executable, "-m", "train.train_base", "--data", data_dir, "--workdir", workdir,
          "--preset", "tiny", "--seed", str(seed), "--epochs", str(epochs), "--deterministic",
          "--override", f"data.samples_per_epoch={samples_per_epoch}",
          "--override", "data.batch_size=8", "--override", "data.eval_batch_size=16"]


def env():
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def next_epoch(state_path):
  """The checkpoint's next epoch, or 0 when it does not exist (yet) or is unreadable."""
  try:
    with np.load(state_path) as data:
      return int(json.loads(bytes(data["meta"]).decode())["next_epoch"])
  except (OSError, ValueError, KeyError):
    return 0


def _metrics(history):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _load(workdir):
  with np.load(os.path.join(workdir, "backup", "state.npz")) as data:
    arrays = {k: data[k] for k in data.files if k != "meta"}
  with open(os.path.join(workdir, "history.json")) as f:
    history = json.load(f)
  with open(os.path.join(workdir, "done.json")) as f:
    done = json.load(f)
  return arrays, history, done


def assert_runs_identical(expected_dir, actual_dir, epochs):
  """History (losses, AUCs), done.json and every checkpointed array (weights, BatchNorm statistics,
  optimiser state) are bit-identical; no temp file is left in the backup folder."""
  a_arrays, a_history, a_done = _load(expected_dir)
  b_arrays, b_history, b_done = _load(actual_dir)
  assert len(a_history) == epochs
  assert _metrics(a_history) == _metrics(b_history)
  assert a_done == b_done
  assert sorted(a_arrays) == sorted(b_arrays)
  for key in a_arrays:
    np.testing.assert_array_equal(a_arrays[key], b_arrays[key], err_msg=key)
  assert not [n for n in os.listdir(os.path.join(actual_dir, "backup")) if n.startswith(".tmp-")]
