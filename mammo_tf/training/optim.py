"""Optimiser construction and weight decay (paper §2.3, §2.4.2-2.4.3).

"Adam with weight decay" in the paper is read the way PyTorch's ``Adam(weight_decay=wd)`` implements
it: *coupled* L2, i.e. ``wd * w`` added to the gradient before Adam's moment estimates. We implement
that as a loss term ``0.5 * wd * sum(w**2)`` over the variables being optimised (its gradient is
exactly ``wd * w``); a loss term composes with loss scaling (mixed float16) and with
`tf.distribute` gradient all-reduce without special cases. Every trainable variable is decayed
(kernels, biases and BatchNorm gamma/beta), as PyTorch does.

With ``train.decoupled_weight_decay`` the optimiser is `keras.optimizers.AdamW` instead, whose
``weight_decay`` is *decoupled* (``w -= lr * wd * w`` outside the adaptive step, as PyTorch's
``AdamW``); no loss term is added then. Note that Keras' ``Adam(weight_decay=...)`` is also
decoupled, which is why the coupled variant is built as a loss term and not through that argument.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import keras
from keras import ops


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """What to build: learning rate, weight decay and its semantics."""
  learning_rate: float
  weight_decay: float
  decoupled: bool = False


def make_optimizer(spec: OptimizerSpec, *, name: str | None = None
                   ) -> keras.optimizers.Optimizer:
  """Adam (coupled L2 is added to the loss by `l2_penalty`) or AdamW (decoupled decay).

  Args:
    spec: learning rate and weight decay.
    name: optimiser name (two optimisers in one job need distinct names).

  Mixed precision runs in ``mixed_bfloat16`` (see `runtime.precision_policy`), which needs no
  loss scaling, so no `LossScaleOptimizer` is built.
  """
  if spec.learning_rate <= 0:
    raise ValueError(f"learning rate must be positive, got {spec.learning_rate}")
  if spec.weight_decay < 0:
    raise ValueError(f"weight decay must be >= 0, got {spec.weight_decay}")
  if spec.decoupled and spec.weight_decay > 0:
    opt = keras.optimizers.AdamW(learning_rate=spec.learning_rate,
                                 weight_decay=spec.weight_decay, name=name)
  else:
    opt = keras.optimizers.Adam(learning_rate=spec.learning_rate, name=name)
  return opt


def coupled_l2(spec: OptimizerSpec) -> float:
  """Coefficient ``wd`` of the coupled L2 loss term (0 when decay is decoupled or off)."""
  return 0.0 if spec.decoupled else float(spec.weight_decay)


def l2_penalty(variables: Iterable, weight_decay: float):
  """``0.5 * weight_decay * sum(w**2)`` in float32; its gradient w.r.t. each ``w`` is ``wd * w``."""
  terms = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in variables]
  if not terms or weight_decay == 0.0:
    return ops.convert_to_tensor(0.0, "float32")
  return 0.5 * float(weight_decay) * ops.sum(ops.stack(terms))


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
  """The optimiser's learning rate as a Python float."""
  return float(ops.convert_to_numpy(optimizer.learning_rate))


def optimizer_variables(optimizers: Sequence[keras.optimizers.Optimizer]) -> list:
  """All state variables of the optimisers (iterations, moments, loss scale), in a fixed order."""
  out = []
  for opt in optimizers:
    out.extend(opt.variables)
  return out
