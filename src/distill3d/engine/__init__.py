"""The training engine: trainer, checkpoints, distributed helpers, logging, run folders.

* :class:`Trainer` trains a detector or any train module (a distiller) with AdamW, a
  one-cycle / cosine / constant schedule stepped per iteration, gradient clipping, AMP on
  CUDA, an optional weight EMA, evaluation every N epochs and best/last checkpoints, on
  one process or many (torchrun, DDP).
* :mod:`~distill3d.engine.checkpoint`: atomic checkpoints with every state needed to
  resume exactly, and strict loading that lists mismatched keys.
* :mod:`~distill3d.engine.distributed`: torchrun process groups, DDP wrapping, rank-averaged
  metrics.
* :mod:`~distill3d.engine.logging`: ``metrics.jsonl``, TensorBoard and the progress bar.
* :mod:`~distill3d.engine.run_dir`: the run folder layout and its refusal rules.
* :mod:`~distill3d.engine.builders`: datasets, loaders, models and evaluators from a config.
"""

from distill3d.engine.checkpoint import (
    CheckpointError,
    find_last_checkpoint,
    load_checkpoint,
    load_model_state,
    read_checkpoint,
    save_checkpoint,
)
from distill3d.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from distill3d.engine.logging import TrainLogger, read_metrics
from distill3d.engine.run_dir import RunDir, RunDirError, default_run_dir, prepare_run_dir
from distill3d.engine.trainer import (
    DetectorTrainStep,
    EvaluateFn,
    LRSchedule,
    LRScheduler,
    ModelEMA,
    NonFiniteLossError,
    Prediction,
    ResumableSampler,
    Trainer,
    TrainResult,
    as_train_module,
    predict,
    seed_everything,
)

__all__ = [
    "CheckpointError", "DetectorTrainStep", "DistInfo", "EvaluateFn", "LRSchedule", "LRScheduler",
    "ModelEMA", "NonFiniteLossError", "Prediction", "ResumableSampler", "RunDir", "RunDirError",
    "TrainLogger", "TrainResult", "Trainer", "as_train_module", "cleanup_distributed",
    "default_run_dir", "find_last_checkpoint", "init_distributed", "load_checkpoint",
    "load_model_state", "predict", "prepare_run_dir", "read_checkpoint", "read_metrics",
    "save_checkpoint", "seed_everything",
]
