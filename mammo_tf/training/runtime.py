"""Run-time set-up shared by the training jobs: distribution strategy, precision, seeds, files.

Nothing here reads flags; the jobs pass `TrainConfig` fields.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf

from mammo_tf.io import files

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def select_strategy(name: str) -> tf.distribute.Strategy:
  """The `tf.distribute` strategy named by ``train.strategy``.

  * ``auto``: `MirroredStrategy` over the visible GPUs when there are more than one, else the
    default (single-device) strategy;
  * ``default``: the default strategy;
  * ``mirrored``: `MirroredStrategy` over all visible GPUs (or the CPU when there is none);
  * ``multi_worker``: `MultiWorkerMirroredStrategy`, cluster from the ``TF_CONFIG`` environment
    variable (every worker runs the same command; worker 0 is the chief that writes files).
  """
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
  if name == "multi_worker":
    if not os.environ.get("TF_CONFIG"):
      raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable")
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices("GPU")
  if name == "mirrored" or (name == "auto" and len(gpus) > 1):
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes files (always True outside multi-worker training)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not getattr(resolver, "cluster_spec", None):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if not task_type:
    return True
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                  "chief" not in resolver.cluster_spec().as_dict())


def precision_policy(mixed_precision: bool) -> str:
  """Keras dtype policy for ``train.mixed_precision``: ``float32`` or ``mixed_bfloat16``.

  bfloat16 has float32's exponent range, so training needs no loss scaling (one code path for
  one or two optimisers); it runs natively on current GPUs (A100, H100), TPUs and AVX512-BF16 CPUs.
  ``mixed_float16`` (older GPUs) would need a `LossScaleOptimizer`, which the loop does not build.
  Variables stay float32; the sigmoid output is float32 (see `models.resnet`).
  """
  return "mixed_bfloat16" if mixed_precision else "float32"


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
  """Sets the global Keras dtype policy for the models built inside, then restores it."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def epoch_seed(seed: int, epoch: int) -> int:
  """The data seed of one epoch: a fixed function of (run seed, epoch), in [0, 2**31)."""
  state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)
  return int(state[0] & 0x7FFFFFFF)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to ``path`` through a temporary file and a rename (never a half-written file)."""
  files.atomic_write_json(path, obj, default=_json_default)


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def json_round_trip(obj: Any) -> Any:
  """``obj`` as it reads back from JSON (tuples become lists), for comparisons with files."""
  return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def set_determinism(seed: int, op_determinism: bool = False) -> None:
  """Seeds Keras' global generators (weight initialisers) and optionally TF op determinism.

  `keras.utils.set_random_seed` seeds Python, NumPy and TF's global generators, which Keras
  initialisers without an explicit seed draw from; the jobs call it before building a model so that
  the initial weights are a function of the run seed. ``op_determinism`` turns on
  `tf.config.experimental.enable_op_determinism` (bit-exact reruns and resumes; slower on GPU).

  TF's own global seed is then set to `tf_global_seed(seed)`, never 0: with a global seed of 0,
  TF resolves an op seed by comparing the pair with ``(0, 0)`` in Python, which fails for a
  tensor op seed (the training stream's per-epoch shuffle seed) inside `tf.data` functions.
  Keras initialisers do not read TF's global seed, so the initial weights do not change.
  """
  keras.utils.set_random_seed(int(seed))
  tf.random.set_seed(tf_global_seed(seed))
  if op_determinism:
    tf.config.experimental.enable_op_determinism()


def tf_global_seed(seed: int) -> int:
  """TF's global seed for run seed ``seed``: a fixed function of it, in [1, 2**31 - 1)."""
  state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x7F5EED]).generate_state(1)
  return int(state[0] % (2 ** 31 - 2)) + 1
