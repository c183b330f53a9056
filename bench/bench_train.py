"""Training-step throughput on this machine's CPU, and what a GPU would need from the input
pipeline.

  python bench/bench_train.py [--steps N] [--geometries demo,paper] [--batch B]

For the `demo` (96 px, narrow) and `paper` (512 px, paper width) geometries it times the real
training step of `mammo_tf.training.loop.Trainer` (forward, backward, coupled L2, Adam) on
in-memory patches -- no input pipeline, so the figure is the model's own cost -- in four variants:
float32, float32 + XLA, mixed bfloat16, mixed bfloat16 + XLA. It prints samples/s, the ratio to the
float32 baseline measured in the same process, the analytic FLOPs per sample (forward; a training
step is ~3x) and the achieved GFLOP/s, then the input-pipeline rate a modern GPU would need.
It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from mammo_tf import config as config_lib
from mammo_tf.models import resnet
from mammo_tf.training import loop
from mammo_tf.training import optim
from mammo_tf.training import runtime

VARIANTS = (("float32", False, False), ("float32+XLA", False, True),
            ("bf16", True, False), ("bf16+XLA", True, True))
# Dense bf16 tensor-core peak (no sparsity) of current data-centre GPUs, and a realistic fraction.
GPU_PEAK_TFLOPS = {"A100": 312.0, "H100 SXM": 989.0}
GPU_UTILISATION = 0.35


def time_steps(cfg: config_lib.ExperimentConfig, batch: int, steps: int, warmup: int = 2
               ) -> float:
  """Samples/s of the training step for `cfg` (mixed precision / XLA from cfg.train)."""
  keras.utils.set_random_seed(0)
  with runtime.dtype_policy(runtime.precision_policy(cfg.train.mixed_precision)):
    model = resnet.build_classifier(cfg.model, cfg.input_size)
  spec = optim.OptimizerSpec(cfg.train.learning_rate, cfg.train.weight_decay)
  group = loop.VariableGroup("all", list(model.trainable_variables), optim.make_optimizer(spec),
                             optim.coupled_l2(spec))
  trainer = loop.Trainer(model, [group], cfg, tf.distribute.get_strategy())
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(0, 4095, (batch, cfg.input_size, cfg.input_size, 1))
                  .astype(np.float32))
  y = tf.constant((np.arange(batch) % 2).astype(np.float32))
  for _ in range(warmup):
    float(trainer._train_fn(x, y)[0])
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = trainer._train_fn(x, y)[0]
  float(loss)
  return batch * steps / (time.perf_counter() - t0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--geometries", default="demo,paper")
  parser.add_argument("--batch", type=int, default=0, help="0 = 32 for demo, 8 for paper")
  args = parser.parse_args()
  print(f"TF {tf.__version__}, Keras {keras.__version__}, CPU cores visible: {os.cpu_count()}")
  paper_rate = {}
  for name in args.geometries.split(","):
    base = config_lib.get_config(name)
    batch = args.batch or (32 if name != "paper" else 8)
    flops = resnet.classifier_flops(base.model, base.input_size)
    print(f"\n== {name}: {base.input_size} px patches, stage widths {base.model.stage_filters}, "
          f"batch {batch}, {args.steps} timed steps")
    print(f"   forward FLOPs/sample {flops / 1e9:.3f} G; training step ~3x = "
          f"{3 * flops / 1e9:.3f} G")
    baseline = None
    for label, mixed, xla in VARIANTS:
      cfg = config_lib.override(base, {"train.mixed_precision": mixed, "train.xla": xla})
      try:
        rate = time_steps(cfg, batch, args.steps)
      except Exception as e:
        print(f"   {label:12s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        continue
      baseline = baseline or rate
      print(f"   {label:12s} {rate:8.2f} samples/s  x{rate / baseline:4.2f} vs float32  "
            f"{rate * 3 * flops / 1e9:7.1f} GFLOP/s")
      if name == "paper":
        paper_rate[label] = rate
  cfg = config_lib.get_config("paper")
  flops = resnet.classifier_flops(cfg.model, cfg.input_size)
  step_flops = 3 * flops
  print("\n== what a GPU needs from the input pipeline (paper geometry)")
  print(f"   training FLOPs/sample = 3 x {flops / 1e9:.2f} G = {step_flops / 1e9:.2f} G")
  for gpu, peak in GPU_PEAK_TFLOPS.items():
    rate = peak * 1e12 * GPU_UTILISATION / step_flops
    epoch_s = cfg.data.samples_per_epoch / rate
    print(f"   {gpu}: {peak:.0f} TFLOP/s bf16 x {GPU_UTILISATION:.0%} utilisation / "
          f"{step_flops / 1e9:.2f} GFLOP = {rate:,.0f} patches/s "
          f"(one 40000-sample epoch in {epoch_s:.1f} s; "
          f"100 epochs in {100 * epoch_s / 60:.1f} min)")
    print(f"      input pipeline must deliver {rate:,.0f} augmented 512x512 patches/s = "
          f"{rate * 512 * 512 * 4 / 1e9:.2f} GB/s of float32 patches; at the ~19 "
          f"patches/s per core (NumPy loop) that is {rate / 19:,.0f} cores")
  if paper_rate:
    best = max(paper_rate.values())
    print(f"   this CPU trains {best:.2f} patches/s at paper geometry: one paper epoch takes "
          f"{cfg.data.samples_per_epoch / best / 3600:.1f} h here")


if __name__ == "__main__":
  main()
