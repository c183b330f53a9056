"""Training jobs: FFDM base model, FC-only fine-tuning and SpotTune (paper §2.3-2.4).

Each job is a `loop.Task` (`jobs.BaseTask`, `jobs.FinetuneTask`, `spottune_train.SpotTuneTask`)
run by the generic `loop.run`. The shortcuts `train_base(cfg, data_dir, workdir)`,
`finetune(cfg, data_dir, base_path, workdir, hm)` and
`train_spottune(cfg, data_dir, base_path, workdir, hm)` return a `TrainResult`; see `loop` for the
work-dir layout and the resume semantics.
"""

from mammo_tf.training.jobs import finetune
from mammo_tf.training.jobs import train_base
from mammo_tf.training.loop import TrainResult
from mammo_tf.training.spottune_train import train_spottune

__all__ = ["TrainResult", "finetune", "train_base", "train_spottune"]
