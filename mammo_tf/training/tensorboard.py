"""TensorBoard logging for the training jobs, with no dependency on the tensorboard package.

TF 2.21 does not install ``tensorboard``, and without it `tf.summary.scalar` / `tf.summary.image`
raise ``TBNotInstalledError``. We therefore write summaries with the low-level `tf.summary.write`
and the plugin metadata TensorBoard expects (``scalars``: a float32 scalar tensor; ``images``: a
string tensor ``[width, height, png...]``; ``pr_curves``: a float32 ``[6, thresholds]`` tensor). The
event files are the ones `tf.summary.scalar` etc. would write and read normally in TensorBoard.

Tags written by the jobs (``tb/train`` and ``tb/val`` runs):

============================  =====  ===============================================================
tag                           run    content
============================  =====  ===============================================================
``loss``                      train  mean cross-entropy of the epoch (without the L2 term)
``total_loss``                train  cross-entropy + coupled L2 term
``auc``                       train  `keras.metrics.AUC` over the epoch's training batches
``learning_rate``             train  the optimiser's learning rate (``policy_learning_rate`` too)
``patches``                   train  a grid of the epoch's first patches (bright frame: positive)
``auc``                       val    ROC AUC (scikit-learn) on the fixed-seed validation patches
``roc_curve``                 val    the validation ROC curve as an image
``pr_curve``                  val    precision/recall curve in TensorBoard's PR-curves plugin format
``policy/...``                val    SpotTune: fraction of inputs routed to each unit's tuned copy
============================  =====  ===============================================================
"""

from __future__ import annotations

import io
import math
import os
from typing import Mapping

import matplotlib
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

matplotlib.use("Agg")
from matplotlib import pyplot as plt
from sklearn import metrics as sk_metrics

from mammo_tf.config import MAX_INTENSITY

PR_CURVE_PLUGIN = "pr_curves"
SCALARS_PLUGIN = "scalars"
IMAGES_PLUGIN = "images"


def patch_grid(patches: np.ndarray, labels: np.ndarray | None = None, max_patches: int = 16,
               border: int = 2) -> np.ndarray:
  """Tiles up to ``max_patches`` patches [B, S, S, 1] (12-bit units) into one float image in [0, 1].

  Returns [1, H, W, 1] (a batch of one image for `tf.summary.image`). Each patch gets a frame
  of ``border`` pixels: 1.0 for a positive label, 0.3 for a negative one, 0 when unlabelled.
  """
  patches = np.asarray(patches, np.float32)
  n = min(max_patches, patches.shape[0])
  if n == 0:
    raise ValueError("no patches to tile")
  side_h, side_w = patches.shape[1], patches.shape[2]
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  cell_h, cell_w = side_h + 2 * border, side_w + 2 * border
  grid = np.zeros((rows * cell_h, cols * cell_w), np.float32)
  for k in range(n):
    r, c = divmod(k, cols)
    frame = 0.0 if labels is None else (1.0 if float(np.asarray(labels)[k]) > 0.5 else 0.3)
    y0, x0 = r * cell_h, c * cell_w
    grid[y0:y0 + cell_h, x0:x0 + cell_w] = frame
    grid[y0 + border:y0 + border + side_h, x0 + border:x0 + border + side_w] = np.clip(
        patches[k, :, :, 0] / MAX_INTENSITY, 0.0, 1.0)
  return grid[None, :, :, None]


def figure_to_image(fig) -> np.ndarray:
  """A matplotlib figure as uint8 [1, H, W, 4] (then closed)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=80)
  plt.close(fig)
  return tf.io.decode_png(buf.getvalue(), channels=4).numpy()[None]


def _plugin_metadata(plugin: str, display_name: str = "", content: bytes = b""
                     ) -> summary_pb2.SummaryMetadata:
  return summary_pb2.SummaryMetadata(
      display_name=display_name,
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content))


def _image_tensor(image: np.ndarray) -> tf.Tensor:
  """[1, H, W, C] (uint8, or float in [0, 1]) -> the images plugin's ``[w, h, png]`` strings."""
  image = np.asarray(image)[0]
  if image.dtype != np.uint8:
    image = np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
  png = tf.io.encode_png(image)
  return tf.stack([tf.constant(str(image.shape[1])), tf.constant(str(image.shape[0])), png])


def roc_figure(labels: np.ndarray, scores: np.ndarray, title: str = "validation ROC"):
  """A matplotlib figure of the ROC curve (empty axes with a note when only one class exists)."""
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
  labels = np.asarray(labels).reshape(-1)
  if len(np.unique(labels)) == 2:
    fpr, tpr, _ = sk_metrics.roc_curve(labels, np.asarray(scores).reshape(-1))
    auc = sk_metrics.auc(fpr, tpr)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    ax.legend(loc="lower right")
  else:
    ax.text(0.5, 0.5, "one class only", ha="center")
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title(title)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  fig.tight_layout()
  return fig


def pr_curve_data(labels: np.ndarray, scores: np.ndarray, num_thresholds: int = 101
                  ) -> np.ndarray:
  """float32 [6, num_thresholds]: TP, FP, TN, FN, precision, recall at thresholds i/(n-1).

  A prediction is positive when ``score >= threshold`` (the PR-curves plugin's layout).
  """
  labels = np.asarray(labels).reshape(-1) > 0.5
  scores = np.asarray(scores, np.float64).reshape(-1)
  thresholds = np.linspace(0.0, 1.0, num_thresholds)
  predicted = scores[None, :] >= thresholds[:, None]
  tp = (predicted & labels[None]).sum(axis=1).astype(np.float64)
  fp = (predicted & ~labels[None]).sum(axis=1).astype(np.float64)
  fn = labels.sum() - tp
  tn = (~labels).sum() - fp
  precision = tp / np.maximum(tp + fp, 1.0)
  recall = tp / np.maximum(tp + fn, 1.0)
  return np.stack([tp, fp, tn, fn, precision, recall]).astype(np.float32)


def _pr_metadata(num_thresholds: int, display_name: str) -> summary_pb2.SummaryMetadata:
  # PrCurvePluginData {int32 version = 1; uint32 num_thresholds = 2;}, version 0 (omitted).
  return _plugin_metadata(PR_CURVE_PLUGIN, display_name, bytes([0x10]) + _varint(num_thresholds))


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


class SummaryLogger:
  """Writers for the ``train`` and ``val`` runs under ``<workdir>/tb`` (no-op when disabled)."""

  def __init__(self, logdir: str, enabled: bool = True):
    self.logdir = logdir
    self.enabled = enabled
    self._writers: dict[str, tf.summary.SummaryWriter] = {}

  def _writer(self, run: str) -> tf.summary.SummaryWriter:
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self.logdir, run))
    return self._writers[run]

  def scalars(self, run: str, values: Mapping[str, float], step: int) -> None:
    """One scalar per tag (NaN values are skipped)."""
    if not self.enabled:
      return
    with self._writer(run).as_default():
      for tag, value in values.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
          continue
        tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                         metadata=_plugin_metadata(SCALARS_PLUGIN, tag))

  def image(self, run: str, tag: str, image: np.ndarray, step: int) -> None:
    if not self.enabled:
      return
    with self._writer(run).as_default():
      tf.summary.write(tag, _image_tensor(image), step=step,
                       metadata=_plugin_metadata(IMAGES_PLUGIN, tag))

  def patches(self, run: str, patches: np.ndarray, labels: np.ndarray, step: int,
              tag: str = "patches") -> None:
    self.image(run, tag, patch_grid(patches, labels), step)

  def roc_curve(self, run: str, labels: np.ndarray, scores: np.ndarray, step: int,
                tag: str = "roc_curve") -> None:
    if not self.enabled:
      return
    self.image(run, tag, figure_to_image(roc_figure(labels, scores)), step)

  def pr_curve(self, run: str, labels: np.ndarray, scores: np.ndarray, step: int,
               tag: str = "pr_curve", num_thresholds: int = 101) -> None:
    if not self.enabled:
      return
    data = pr_curve_data(labels, scores, num_thresholds)
    with self._writer(run).as_default():
      tf.summary.write(tag, tf.constant(data), step=step,
                       metadata=_pr_metadata(num_thresholds, tag))

  def flush(self) -> None:
    for w in self._writers.values():
      w.flush()

  def close(self) -> None:
    for w in self._writers.values():
      w.close()
    self._writers = {}


def read_tags(logdir: str) -> dict[str, set[str]]:
  """{run: {tag, ...}} found in the event files under ``logdir`` (for tests and tools)."""
  out: dict[str, set[str]] = {}
  for root, _, files in os.walk(logdir):
    for name in files:
      if not name.startswith("events.out.tfevents"):
        continue
      run = os.path.relpath(root, logdir)
      for record in tf.data.TFRecordDataset(os.path.join(root, name)):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
          out.setdefault(run, set()).add(value.tag)
  return out
