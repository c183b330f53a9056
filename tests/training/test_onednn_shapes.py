"""Training at the shapes that once crashed TensorFlow's oneDNN CPU kernels, in subprocesses.

A strided 1x1 backward-weights kernel of oneDNN corrupted the heap on AVX-512 machines (SIGSEGV or
abort) at patch sizes >= 192 and in SpotTune's policy network at the demo geometry; the process
died, so the check is the exit status of a child process. On a CPU without the fault these pass
either way; on one with it (this project's CI machines) they fail if the fault comes back.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests import tfrecord_factory
from tests import train_runs
from tests.training.conftest import tiny_config

pytestmark = pytest.mark.slow

_STEPS = textwrap.dedent("""
  import sys
  import numpy as np, tensorflow as tf
  from mammo_tf import config
  from mammo_tf.models import resnet, spottune
  preset = sys.argv[1]
  cfg = config.get_config(preset)
  rng = np.random.default_rng(0)
  for size in [int(s) for s in sys.argv[2:]]:
    base = resnet.build_classifier(cfg.model, size)
    models = [base, spottune.build_spottune(base, cfg.model, cfg.train)]
    x = tf.constant(rng.uniform(0, 4095, (4, size, size, 1)).astype("float32"))
    for model in models:
      for _ in range(2):
        with tf.GradientTape() as tape:
          loss = tf.reduce_mean(model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads)
    print("ok", preset, size, flush=True)
""")


def _check(cmd, timeout=900):
  proc = subprocess.run(cmd, env=train_runs.env(), cwd=train_runs.REPO, capture_output=True,
                        text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, (
      f"{' '.join(cmd[:4])} exited with {proc.returncode} (negative = killed by that signal)\n"
      f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return proc.stdout


def test_forward_backward_at_patch_sizes_96_to_256():
  sizes = ["96", "128", "160", "176", "192", "200", "224", "256"]
  out = _check([sys.executable, "-c", _STEPS, "tiny", *sizes])
  assert out.count("ok tiny") == len(sizes)
  out = _check([sys.executable, "-c", _STEPS, "demo", "96", "200"])
  assert out.count("ok demo") == 2


@pytest.mark.parametrize("preset,patch", [("tiny", 200), ("demo", 96)])
def test_every_training_job_runs_at_the_crash_geometry(tmp_path, preset, patch):
  """base, fine-tune and SpotTune (the job that crashed `make demo`) each run real steps."""
  overrides = [f"data.patch_size={patch}", "data.samples_per_epoch=16", "data.batch_size=8",
               "data.eval_batch_size=16"]
  cfg = tiny_config(*overrides[:1])
  data_dir = tfrecord_factory.write_dataset(tmp_path, cfg=cfg, num_images_per_class=2,
                                            image_shape=(patch + 64, patch + 48))
  common = ["--data", data_dir, "--preset", preset, "--seed", "0"]
  for o in overrides:
    common += ["--override", o]
  base = str(tmp_path / "base")
  _check([sys.executable, "-m", "train.train_base", *common, "--workdir", base, "--epochs", "1"])
  best = os.path.join(base, "best.keras")
  for job in ("finetune", "spottune"):
    _check([sys.executable, "-m", f"train.{job}", *common, "--base", best,
            "--workdir", str(tmp_path / job), "--epochs", "1"])
    assert os.path.exists(tmp_path / job / "best.keras")
