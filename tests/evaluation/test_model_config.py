"""Evaluation takes the patch geometry and preprocessing from the model's own training files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mammo_tf import config
from mammo_tf.evaluation import evaluate
from mammo_tf.models import resnet
from tests import tfrecord_factory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training work dir as the trainer leaves it: config.json, best.keras, hm_lut.npy, export/."""
  root = tmp_path_factory.mktemp("run")
  cfg = config.get_config("tiny", {"data.eval_batch_size": 7, "data.patch_size": 32})
  (root / "config.json").write_text(config.to_json(cfg))
  resnet.build_classifier(cfg.model, 32).save(str(root / "best.keras"))
  np.save(root / "hm_lut.npy", np.arange(4096, dtype=np.float32) * 0.5)
  (root / "export").mkdir()
  (root / "export" / "saved_model.pb").write_bytes(b"")
  return root


def test_config_and_hm_table_come_from_the_work_dir(workdir):
  cfg, source = evaluate.config_for_model(str(workdir / "best.keras"), None)
  assert source == str(workdir / "config.json")
  assert (cfg.name, cfg.data.patch_size, cfg.data.eval_batch_size) == ("tiny", 32, 7)
  cfg, _ = evaluate.config_for_model(str(workdir / "export"), None, ["data.eval_batch_size=5"])
  assert (cfg.name, cfg.data.patch_size, cfg.data.eval_batch_size) == ("tiny", 32, 5)
  cfg, source = evaluate.config_for_model(str(workdir / "best.keras"), "demo")
  assert source == "preset demo" and cfg.name == "demo"
  lut = evaluate.model_hm_lut(str(workdir / "best.keras"))
  np.testing.assert_array_equal(lut[:4], [0.0, 0.5, 1.0, 1.5])
  assert evaluate.model_hm_lut(str(workdir / "export")) is None     # the export carries HM


def test_a_model_without_config_falls_back_to_the_paper_preset(tmp_path):
  cfg, source = evaluate.config_for_model(str(tmp_path / "m.keras"), None)
  assert source == "preset paper" and cfg.data.patch_size == 512


def test_eval_evaluate_uses_the_saved_config_without_flags(workdir, tmp_path):
  cfg = config.get_config("tiny")
  data_dir = tfrecord_factory.write_dataset(tmp_path / "data", cfg=cfg, num_images_per_class=3,
                                            splits=("test",))
  out = tmp_path / "res.json"
  proc = subprocess.run([sys.executable, "-m", "eval.evaluate", "--model",
                         str(workdir / "best.keras"), "--data", data_dir, "--domain", "dbt",
                         "--seeds", "0", "--bootstrap", "10", "--out", str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["preset"] == "tiny" and result["n_images"] == 6
  assert "histogram matching on (the model's hm_lut.npy)" in proc.stderr
  assert f"configuration: {workdir / 'config.json'}" in proc.stderr
