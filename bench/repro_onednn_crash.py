"""Reproducer of the oneDNN heap corruption that crashed `make demo` on AVX-512 CPUs.

  .venv/bin/python bench/repro_onednn_crash.py [--reps 2]

Each case runs in its own subprocess (a corrupted heap kills the process: SIGSEGV, or an abort from
glibc's malloc checks) with oneDNN on (`TF_ENABLE_ONEDNN_OPTS=1`) and off, and prints the exit
status. Cases:

* ``op``: the bare `Conv2DBackpropFilter` (gradient of a 1x1 convolution's kernel) with stride 2,
  NHWC, batch 8, for input sides and channel counts around the fault;
* ``unit``: a Keras model whose projection shortcut is a strided 1x1 `Conv2D` (the formulation the
  classifier used before) next to `mammo_tf`'s `ResidualUnit` (subsample + unit-stride 1x1), with
  a forward and backward pass.

What it showed on this project's 2-core AMD EPYC (AVX-512 with BF16/VNNI), TensorFlow 2.21:
the strided 1x1 backward-weights kernel corrupts the heap when the input has fewer channels than the
kernel's channel block (16) and an even side of 48 or more; 16 or more channels, odd sides, stride 1
and oneDNN off are fine. The fault is nondeterministic (`ONEDNN_VERBOSE=1` can hide it).
"""

import argparse
import os
import subprocess
import sys

_OP = """
import sys
import numpy as np, tensorflow as tf
side, channels = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
x = tf.constant(rng.normal(size=(8, side, side, channels)).astype("float32"))
w = tf.constant(rng.normal(size=(1, 1, channels, 8)).astype("float32"))
dy = tf.ones_like(tf.nn.conv2d(x, w, 2, "SAME"))
for _ in range(20):
  tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(w), out_backprop=dy,
                                  strides=[1, 2, 2, 1], padding="SAME")
  _ = [tf.random.normal([1000]) for _ in range(50)]
"""

_UNIT = """
import sys
import numpy as np, tensorflow as tf, keras
from mammo_tf.models.resnet import ResidualUnit
side, channels, form = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
inputs = keras.Input((side, side, channels))
if form == "strided_1x1":
  y = keras.layers.Conv2D(8, 1, strides=2, padding="same", use_bias=False)(inputs)
else:
  y = ResidualUnit(8, strides=2, project=True)(inputs)
model = keras.Model(inputs, y)
x = tf.constant(np.random.default_rng(0).normal(size=(8, side, side, channels)).astype("float32"))
for _ in range(10):
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(model(x, training=True)))
  tape.gradient(loss, model.trainable_variables)
"""


def _run(code: str, args: list[str], onednn: bool, reps: int) -> str:
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn else "0", TF_CPP_MIN_LOG_LEVEL="3",
             CUDA_VISIBLE_DEVICES="")
  codes = []
  for _ in range(reps):
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          timeout=600, check=False)
    codes.append(proc.returncode)
  bad = [c for c in codes if c != 0]
  return "ok" if not bad else f"CRASH (exit {bad[0]}; {len(bad)}/{reps})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=2, help="runs per case (the fault is random)")
  args = parser.parse_args()
  print(f"{'case':44s} {'oneDNN on':24s} oneDNN off")
  for side, channels in ((44, 8), (48, 8), (49, 8), (64, 4), (64, 8), (64, 16), (64, 32)):
    name = f"op Conv2DBackpropFilter 1x1/2 side {side} C {channels}"
    print(f"{name:44s} {_run(_OP, [str(side), str(channels)], True, args.reps):24s} "
          f"{_run(_OP, [str(side), str(channels)], False, args.reps)}", flush=True)
  for form in ("strided_1x1", "residual_unit"):
    name = f"unit {form} side 50 C 8"
    print(f"{name:44s} {_run(_UNIT, ['50', '8', form], True, args.reps):24s} "
          f"{_run(_UNIT, ['50', '8', form], False, args.reps)}", flush=True)


if __name__ == "__main__":
  main()
