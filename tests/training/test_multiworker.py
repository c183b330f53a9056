"""Two-worker `MultiWorkerMirroredStrategy` training on loopback (docs/distributed.md).

Two processes get a ``TF_CONFIG`` naming two workers on 127.0.0.1 free ports and run the real
epoch loop (`loop.run`) of the base job with ``train.strategy=multi_worker`` on the tiny preset
(tests/tfrecord_factory.py data). Each dumps its final model variables; both must be identical
(synchronous all-reduce), only the chief (worker 0) writes the work dir, and both see the same
validation AUCs. This file is also the worker's entry point::

  python -m tests.training.test_multiworker WORKER_INDEX PORT0,PORT1 DATA_DIR WORKDIR OUT.npz
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 2


def _free_ports(n):
  socks = []
  try:
    for _ in range(n):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(("127.0.0.1", 0))
      socks.append(s)
    return [s.getsockname()[1] for s in socks]
  finally:
    for s in socks:
      s.close()


def _keep_model_task():
  from mammo_tf.training import jobs

  class KeepModelTask(jobs.BaseTask):
    """The base job, keeping a handle on the model it builds."""
    model = None

    def build_model(self, cfg):
      self.model = super().build_model(cfg)
      return self.model

  return KeepModelTask()


def worker_main(index: int, ports: str, data_dir: str, workdir: str, out: str) -> None:
  """One worker: the base job (`jobs.BaseTask`) under `loop.run`, then its weights."""
  ports = ports.split(",")
  os.environ["TF_CONFIG"] = json.dumps({
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
      "task": {"type": "worker", "index": index}})
  from mammo_tf.training import loop
  from mammo_tf.training import runtime
  from tests.training.conftest import tiny_config
  cfg = tiny_config("train.strategy=multi_worker", f"train.epochs={EPOCHS}",
                    "data.samples_per_epoch=24", "data.batch_size=8")
  strategy = runtime.select_strategy(cfg.train.strategy)
  task = _keep_model_task()
  result = loop.run(task, cfg, data_dir, workdir, strategy=strategy, log_images=False)
  model = task.model
  arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
  arrays["replicas"] = np.array(strategy.num_replicas_in_sync)
  arrays["chief"] = np.array(runtime.is_chief(strategy))
  arrays["history"] = np.frombuffer(json.dumps(
      [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]).encode(), np.uint8)
  np.savez(out, **arrays)


@pytest.mark.slow
def test_two_workers_on_loopback_end_with_identical_weights(data_dir, tmp_path):
  ports = ",".join(str(p) for p in _free_ports(2))
  workdir = str(tmp_path / "work")
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  procs, logs = [], []
  for i in range(2):
    log = open(tmp_path / f"worker{i}.log", "w")
    logs.append(tmp_path / f"worker{i}.log")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.training.test_multiworker", str(i), ports, data_dir,
         workdir, str(tmp_path / f"w{i}.npz")], cwd=REPO, env=env, stdout=log,
        stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=400) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert codes == [0, 0], "\n".join(open(l).read()[-3000:] for l in logs)
  w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
  assert int(w0["replicas"]) == int(w1["replicas"]) == 2
  assert bool(w0["chief"]) and not bool(w1["chief"])
  keys = sorted(k for k in w0.files if k.startswith("v"))
  assert keys == sorted(k for k in w1.files if k.startswith("v")) and len(keys) > 50
  for k in keys:
    np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
  h0 = json.loads(bytes(w0["history"]).decode())
  h1 = json.loads(bytes(w1["history"]).decode())
  assert len(h0) == EPOCHS and h0 == h1       # same losses, train and validation AUCs
  assert all(np.isfinite(r["loss"]) for r in h0)
  # Only the chief wrote the work dir; it holds the complete run.
  done = json.load(open(os.path.join(workdir, "done.json")))
  assert done["epochs_run"] == EPOCHS
  history = json.load(open(os.path.join(workdir, "history.json")))
  assert [r["val_auc"] for r in history] == [r["val_auc"] for r in h0]
  # The chief's checkpoint holds the weights both workers ended with.
  with np.load(os.path.join(workdir, "backup", "state.npz")) as state:
    for i, k in enumerate(keys):
      np.testing.assert_array_equal(state[f"model_{i:05d}"], w0[k], err_msg=k)


if __name__ == "__main__":
  worker_main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
