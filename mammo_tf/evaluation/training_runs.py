"""The study's trainings, each in its own process, so that a crash is a message and not the end.

A training that dies inside a native library (a segmentation fault or an abort in a CPU kernel,
the out-of-memory killer) takes its process with it. The study therefore runs each training as a
child process (``python -m train.<job>`` with the study's exact config, given as a JSON file), tees
its output to ``W/logs/<run>.log`` and turns a death by signal into `TrainingFailed`: "training
spottune crashed (signal 11); log: W/logs/spottune.log". Everything finished before stays on disk
(a training's own checkpoints included), so rerunning the study resumes from there.

The children get the parent's determinism setting (``--deterministic``), and the same config,
data and work dirs that an in-process training gets (`mammo_tf.training`), so both give the same
models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from absl import logging

from mammo_tf import config as config_lib
from mammo_tf.io import files
from mammo_tf.io import workdir_names as names

LOG_DIR = names.LOG_DIR
_MODULES = {"base": "train.train_base", "finetune": "train.finetune",
            "spottune": "train.spottune"}


class TrainingFailed(RuntimeError):
  """A training process exited with an error or was killed by a signal."""

  def __init__(self, run: str, returncode: int, log_path: str):
    self.run, self.returncode, self.log_path = run, returncode, log_path
    if returncode < 0:
      try:
        name = f" {signal.Signals(-returncode).name}"
      except ValueError:
        name = ""
      what = f"crashed (signal {-returncode}{name})"
    else:
      what = f"failed (exit {returncode})"
    super().__init__(f"training {run} {what}; log: {log_path}")


class TrainingsFailed(RuntimeError):
  """One or more trainings of a study failed; ``failures`` lists them (`TrainingFailed`)."""

  def __init__(self, failures: list[TrainingFailed]):
    self.failures = list(failures)
    super().__init__("; ".join(str(f) for f in self.failures)
                     + ". Finished trainings are kept: rerun the same command to resume.")


def _command(job: str, config_path: str, data_dir: str, workdir: str, base: str | None,
             hm: bool, deterministic: bool) -> list[str]:
  cmd = [sys.executable, "-m", _MODULES[job], "--config", config_path, "--data", data_dir,
         "--workdir", workdir, "--deterministic" if deterministic else "--nodeterministic"]
  if base is not None:
    cmd += ["--base", base, "--hm" if hm else "--nohm"]
  return cmd


def run_training(run: str, job: str, cfg: config_lib.ExperimentConfig, data_dir: str,
                 workdir: str, *, logs_dir: str, base: str | None = None, hm: bool = False,
                 deterministic: bool = True) -> None:
  """Runs one training job in a child process; raises `TrainingFailed` when it does not exit 0.

  The child's stdout and stderr go, line by line, to ``<logs_dir>/<run>.log`` (appended: each
  attempt starts with a header line) and to this process's stderr.
  """
  os.makedirs(logs_dir, exist_ok=True)
  config_path = os.path.join(logs_dir, f"{run}.config.json")
  files.atomic_write(config_path, config_lib.to_json(cfg))
  log_path = os.path.join(logs_dir, f"{run}.log")
  cmd = _command(job, config_path, data_dir, workdir, base, hm, deterministic)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"==== training {run}: {' '.join(cmd[1:3])} (attempt log)\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, errors="replace")
    try:
      for line in proc.stdout:
        log.write(line)
        log.flush()
        sys.stderr.write(line)
      returncode = proc.wait()
    except BaseException:
      proc.kill()
      proc.wait()
      raise
  if returncode != 0:
    raise TrainingFailed(run, returncode, log_path)
  logging.info("training %s finished (log %s)", run, log_path)


def subprocess_trainers(workdir: str, deterministic: bool = True) -> Any:
  """`study.Trainers` whose three jobs run in child processes (logs in ``workdir/logs``)."""
  from mammo_tf.evaluation import study
  logs_dir = os.path.join(workdir, LOG_DIR)

  def base(cfg, data_dir, run_workdir):
    run_training(os.path.basename(run_workdir), "base", cfg, data_dir, run_workdir,
                 logs_dir=logs_dir, deterministic=deterministic)

  def adapt(job):
    def train(cfg, data_dir, base_path, run_workdir, hm):
      run_training(os.path.basename(run_workdir), job, cfg, data_dir, run_workdir,
                   logs_dir=logs_dir, base=base_path, hm=hm, deterministic=deterministic)
    return train

  return study.Trainers(base, adapt("finetune"), adapt("spottune"))
