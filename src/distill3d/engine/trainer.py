"""The training loop: AdamW, per-step learning-rate schedules, gradient clipping, AMP on
CUDA, weight EMA, periodic evaluation, checkpoints and resume, on one or many processes.

What the trainer trains
-----------------------
Any ``nn.Module`` that is either

* a **detector** (the :class:`~distill3d.models.base.Detector` contract: ``forward(batch)
  -> DetectorOutput``, ``loss(batch, output) -> dict`` with the total under ``"loss"``,
  ``decode(output) -> list[Detections]``), which the trainer adapts with
  :class:`DetectorTrainStep`; or
* a **train module**: ``forward(batch) -> dict[str, Tensor]`` (named scalar losses, the
  total under ``"loss"``) and ``predict(batch) -> list[Detections]``. A distiller is one:
  its forward runs the frozen teacher and the student and returns the detection losses
  and one entry per distillation term; its ``predict`` runs the student.

The whole loss computation happens inside ``forward`` of the module that
``DistributedDataParallel`` wraps, so gradients of every trainable parameter (student and
adapters alike) are averaged over ranks. Every floating-point entry of the loss dict is
logged on its own (``metrics.jsonl``, TensorBoard ``train/<name>``; the dict must have the
same keys at every step and on every rank, as they are averaged over ranks in one
collective). The checkpoint holds
the given module's ``state_dict`` (adapters included). A module may define
``param_groups() -> list[dict]`` (e.g. another learning rate for adapters); each group's
``lr`` is then scaled by the schedule.

Mid-epoch resume
----------------
A checkpoint records ``epochs_done``, ``step_in_epoch`` and ``global_step``, the schedule,
optimiser, scaler and EMA states, and every rank's RNG states. ``last.pth`` is written
after each epoch and, with ``train.checkpoint_steps``, every that many steps inside an
epoch. Resuming from a mid-epoch checkpoint sets the epoch's sample order (which depends
only on ``(seed, epoch)``) and skips the ``step_in_epoch * batch_size`` samples already
trained on **at the sampler** (:class:`ResumableSampler`; nothing is loaded for them),
so that, in deterministic mode with the same world size, batch size and number of loader
workers, the resumed run sees the same batches, draws the same random numbers and gives
the same losses as an uninterrupted run. (OpenPCDet resumes at epoch boundaries only.)
Loaders without a :class:`ResumableSampler` are fast-forwarded by drawing and dropping
batches, which gives the same batches but loads them.

Known limit: randomness inside *persistent* loader workers that does not come from the
per-sample generators (third-party code using global RNGs) restarts from the worker seed
after a resume.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from distill3d.config.schema import TrainConfig
from distill3d.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_write_bytes,
    capture_rng_state,
    checkpoint_meta,
    list_epoch_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from distill3d.engine.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    default_num_threads,
    reduce_scalars,
    resolve_device,
    wrap_model,
)
from distill3d.engine.logging import TrainLogger
from distill3d.engine.run_dir import RunDir
from distill3d.errors import Distill3DError
from distill3d.structures import Detections

__all__ = [
    "DetectorTrainStep",
    "EvaluateFn",
    "LRSchedule",
    "LRScheduler",
    "ModelEMA",
    "NonFiniteLossError",
    "Prediction",
    "ResumableSampler",
    "TrainModule",
    "TrainResult",
    "Trainer",
    "as_train_module",
    "build_optimizer",
    "gather_predictions",
    "predict",
    "seed_everything",
    "torch_run_settings",
]


class NonFiniteLossError(Distill3DError):
    """The loss became NaN or infinite (training diverged)."""


# ----------------------------------------------------------------------------- modules


@runtime_checkable
class TrainModule(Protocol):
    """What the trainer calls: ``module(batch) -> {name: scalar}`` (total under ``"loss"``)
    and ``module.predict(batch) -> list[Detections]``."""

    def __call__(self, batch: Any) -> dict[str, Tensor]: ...

    def predict(self, batch: Any) -> list[Detections]: ...


class DetectorTrainStep(nn.Module):
    """Adapts a detector to :class:`TrainModule`: ``forward`` = ``loss(batch,
    detector(batch))``, ``predict`` = ``decode(detector(batch))``.

    Its own state-dict keys carry a ``detector.`` prefix; the trainer saves the detector's
    ``state_dict``, never this wrapper's.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, batch: Any) -> dict[str, Tensor]:
        output = self.detector(batch)
        return self.detector.loss(batch, output)

    def predict(self, batch: Any) -> list[Detections]:
        return self.detector.decode(self.detector(batch))


def as_train_module(model: nn.Module) -> nn.Module:
    """``model`` itself when it has ``predict`` (a train module, e.g. a distiller), a
    :class:`DetectorTrainStep` around it when it has ``loss`` and ``decode`` (a detector).

    Raises:
        TypeError: neither.
    """
    model = unwrap_model(model)
    if isinstance(model, DetectorTrainStep) or callable(getattr(model, "predict", None)):
        return model
    if callable(getattr(model, "loss", None)) and callable(getattr(model, "decode", None)):
        return DetectorTrainStep(model)
    raise TypeError(f"{type(model).__name__} cannot be trained: it needs either loss() and decode() "
                    "(a Detector) or forward(batch) -> losses and predict() (a train module)")


# ----------------------------------------------------------------------------- schedules


def _cos_anneal(start: float, end: float, x: float) -> float:
    """Cosine from ``start`` (x = 0) to ``end`` (x = 1)."""
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * min(max(x, 0.0), 1.0)))


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate multiplier (and AdamW beta1) as a pure function of the step.

    ``factor(t)`` multiplies each parameter group's base rate for optimiser step ``t``
    (0-based, ``t < total_steps``). With ``p = t / total_steps``:

    * ``onecycle``: ``p < pct_start``: ``cos(1 / div_factor -> 1, p / pct_start)``; else
      ``cos(1 -> 1 / (div_factor * final_div_factor), (p - pct_start) / (1 - pct_start))``,
      where ``cos(a -> b, x) = b + (a - b) (1 + cos(pi x)) / 2`` (OpenPCDet's
      ``OneCycle``); beta1 goes ``moms[0] -> moms[1]`` then back, the same way.
    * ``cosine``: ``t < W``: ``warmup_ratio + (1 - warmup_ratio) t / W``; then
      ``min_lr_ratio + (1 - min_lr_ratio) (1 + cos(pi (t - W) / (total_steps - W))) / 2``.
    * ``constant``: the same warm-up, then 1.
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    div_factor: float = 10.0
    pct_start: float = 0.4
    final_div_factor: float = 1e4
    moms: tuple[float, float] | None = None
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int) -> LRSchedule:
        """The schedule of ``cfg`` for ``cfg.epochs * steps_per_epoch`` steps."""
        total = max(1, cfg.epochs * steps_per_epoch)
        warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
        return cls(kind=cfg.schedule, total_steps=total, warmup_steps=warmup,
                   div_factor=cfg.div_factor, pct_start=cfg.pct_start,
                   final_div_factor=cfg.final_div_factor,
                   moms=tuple(cfg.moms) if cfg.moms is not None and cfg.schedule == "onecycle" else None,
                   warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio)

    def factor(self, step: int) -> float:
        """The learning-rate multiplier of step ``step``."""
        t = max(0, step)
        if self.kind == "onecycle":
            p = min(t / self.total_steps, 1.0)
            if p < self.pct_start:
                return _cos_anneal(1.0 / self.div_factor, 1.0, p / self.pct_start)
            low = 1.0 / (self.div_factor * self.final_div_factor)
            return _cos_anneal(1.0, low, (p - self.pct_start) / (1.0 - self.pct_start))
        w = self.warmup_steps
        if t < w:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * t / w
        if self.kind == "constant":
            return 1.0
        x = (t - w) / max(1, self.total_steps - w)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(x, 1.0)))

    def momentum(self, step: int) -> float | None:
        """AdamW beta1 of step ``step`` (``None``: leave it as configured)."""
        if self.moms is None or self.kind != "onecycle":
            return None
        hi, lo = self.moms
        p = min(max(step, 0) / self.total_steps, 1.0)
        if p < self.pct_start:
            return _cos_anneal(hi, lo, p / self.pct_start)
        return _cos_anneal(lo, hi, (p - self.pct_start) / (1.0 - self.pct_start))


class LRScheduler:
    """Applies an :class:`LRSchedule` to an optimiser: each group's ``lr`` is its
    ``initial_lr`` times ``factor(step)``; with momentum cycling, ``betas[0]`` follows
    ``momentum(step)``. Call :meth:`step` after each ``optimizer.step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule):
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lrs = []
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            self.base_lrs.append(float(group["initial_lr"]))
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.schedule.factor(self.last_step)
        beta1 = self.schedule.momentum(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
            if beta1 is not None and "betas" in group:
                group["betas"] = (beta1, group["betas"][1])

    def step(self) -> None:
        """Advance to the next optimiser step's rate."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "kind": self.schedule.kind,
                "total_steps": self.schedule.total_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        # the optimiser's saved groups may carry other initial_lr: the config decides
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base
        self._apply()


# ----------------------------------------------------------------------------- EMA


def _ema_names(model: nn.Module) -> list[str]:
    """State-dict names the EMA tracks: trainable parameters, and the floating or integer
    buffers of modules that are not frozen (a frozen teacher's are left out)."""
    keys = set(model.state_dict(keep_vars=True).keys())
    names: list[str] = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        params = list(module.named_parameters(recurse=False))
        frozen = bool(params) and not any(p.requires_grad for _, p in params)
        names.extend(dot + n for n, p in params if p.requires_grad and dot + n in keys)
        if not frozen:
            names.extend(dot + n for n, b in module.named_buffers(recurse=False)
                         if b is not None and dot + n in keys)
    return list(dict.fromkeys(names))


def _named_tensors(model: nn.Module) -> dict[str, Tensor]:
    return dict(model.state_dict(keep_vars=True))


class ModelEMA:
    """Exponential moving average of a model's weights.

    After each optimiser step ``t`` (1-based), every tracked floating tensor is updated as
    ``ema <- d_t * ema + (1 - d_t) * w`` with ``d_t = decay * (1 - exp(-t / tau))``
    (``d_t = decay`` when ``tau == 0``); integer buffers are copied. Tracked: trainable
    parameters and the buffers of modules that are not frozen, so a distiller's frozen
    teacher costs no EMA memory.

    Use :meth:`applied` to run evaluation with the EMA weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 0.0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = 0
        model = unwrap_model(model)
        tensors = _named_tensors(model)
        self.names = _ema_names(model)
        self.shadow: dict[str, Tensor] = {n: tensors[n].detach().clone() for n in self.names}

    def decay_at(self, updates: int) -> float:
        """``d_t`` for update number ``updates``."""
        if self.tau > 0:
            return self.decay * (1.0 - math.exp(-updates / self.tau))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        self.updates += 1
        d = self.decay_at(self.updates)
        tensors = _named_tensors(unwrap_model(model))
        floats_s, floats_w = [], []
        for name in self.names:
            s, w = self.shadow[name], tensors[name].detach()
            if s.dtype.is_floating_point:
                floats_s.append(s)
                floats_w.append(w.to(s.dtype))
            else:
                s.copy_(w)
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_w, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(self.shadow), "updates": self.updates, "decay": self.decay,
                "tau": self.tau}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = state["shadow"]
        missing = [n for n in self.names if n not in shadow]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {missing[:5]}")
        with torch.no_grad():
            for name in self.names:
                self.shadow[name].copy_(shadow[name])
        self.updates = int(state.get("updates", 0))

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Swap the EMA weights into ``model`` for the duration of the block."""
        tensors = _named_tensors(unwrap_model(model))
        backup = {n: tensors[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for name in self.names:
                tensors[name].copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name in self.names:
                    tensors[name].copy_(backup[name])


# ----------------------------------------------------------------------------- sampling


class ResumableSampler(Sampler[int]):
    """A sampler of indices that can start its next pass at position ``n``.

    Wraps another sampler (shuffled, distributed or class-balanced); :meth:`set_start`
    makes the next iteration skip the first ``n`` indices of the epoch's order without
    loading them (mid-epoch resume). :meth:`set_epoch` forwards the epoch and resets the
    start to 0.
    """

    def __init__(self, sampler: Sampler[int] | Iterable[int]):
        self.sampler = sampler
        self.start = 0

    @property
    def rank(self) -> int | None:
        return getattr(self.sampler, "rank", None)

    @property
    def world_size(self) -> int | None:
        return getattr(self.sampler, "num_replicas", getattr(self.sampler, "world_size", None))

    def set_epoch(self, epoch: int) -> None:
        self.start = 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def set_start(self, index: int) -> None:
        """Skip the first ``index`` indices of the next pass."""
        if index < 0:
            raise ValueError(f"start must be >= 0, got {index}")
        self.start = int(index)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)


def _find_resumable(loader: Any) -> ResumableSampler | None:
    for attr in ("index_sampler", "sampler"):
        sampler = getattr(loader, attr, None)
        for candidate in (sampler, getattr(sampler, "sampler", None)):
            if isinstance(candidate, ResumableSampler):
                return candidate
    return None


# ----------------------------------------------------------------------------- inference


@dataclass
class Prediction:
    """One sample's detections and what evaluators need to place them: plain CPU data, what
    the processes send to rank 0 (:func:`gather_predictions`).

    Attributes:
        token: the sample token (nuScenes) or frame id (KITTI).
        detections: on the CPU, in the sample's **original** (un-augmented) key LiDAR frame
            (boxes mapped back with
            :func:`~distill3d.evaluation.evaluator.boxes_to_original_frame` are float64).
        lidar_to_ego: ``(4, 4)`` key LiDAR -> ego.
        ego_to_global: ``(4, 4)`` float64 ego -> global.
        extras: the sample's extras that evaluators read (KITTI ``calib`` and
            ``image_size``; see :func:`~distill3d.evaluation.evaluator.sample_metadata`).
    """

    token: str
    detections: Detections
    lidar_to_ego: Tensor
    ego_to_global: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


#: ``evaluate_fn(predictions by token, output folder or None) -> {metric: value}``; it
#: may have a ``primary_metric`` attribute (the default of ``train.best_metric``). The
#: builders' is :class:`~distill3d.engine.builders.DatasetEvaluator`.
EvaluateFn = Callable[[Mapping[str, Prediction], "Path | None"], Mapping[str, float]]


def _to_original_frame(det: Detections, sample: Any) -> Detections:
    """``det`` (in ``sample``'s possibly augmented frame) in the original frame, mapped back
    with the evaluator's :func:`~distill3d.evaluation.evaluator.boxes_to_original_frame`
    (float64 boxes); ``det`` itself when ``sample.bev_transform`` is the identity."""
    bev = getattr(sample, "bev_transform", None)
    if bev is None or torch.equal(bev.detach().cpu().double(), torch.eye(4, dtype=torch.float64)):
        return det
    from distill3d.evaluation.evaluator import boxes_to_original_frame

    try:
        boxes = boxes_to_original_frame(det.boxes, bev)
    except ValueError as exc:
        raise Distill3DError(f"sample {sample.token}: cannot map the detections back to the original "
                             f"frame: {exc}") from None
    return Detections(torch.from_numpy(boxes), det.scores, det.labels)


def _move(batch: Any, device: torch.device) -> Any:
    return batch.to(device) if hasattr(batch, "to") else batch


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[Any], device: torch.device | str, *,
            amp_dtype: torch.dtype | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Prediction]:
    """Run ``model`` (a detector or train module) in eval mode over ``loader``.

    Args:
        model: the model (not the DDP wrapper: inference needs no gradient sync).
        loader: yields :class:`~distill3d.data.loader.Batch` (with ``samples``).
        device: where to compute.
        amp_dtype: autocast dtype on CUDA (``None``: float32).
        progress: ``callback(done_batches, total_batches)``.

    Returns:
        ``{token: Prediction}`` of this process's share of the loader (detections in each
        sample's original frame; poses and evaluated extras from
        :func:`~distill3d.evaluation.evaluator.sample_metadata`).
    """
    from distill3d.evaluation.evaluator import sample_metadata

    device = torch.device(device)
    module = as_train_module(model)
    was_training = module.training
    module.eval()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    total = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    out: dict[str, Prediction] = {}
    try:
        for i, batch in enumerate(loader):
            moved = _move(batch, device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None and device.type == "cuda"):
                detections = module.predict(moved)
            if len(detections) != len(batch.tokens):
                raise Distill3DError(f"predict returned {len(detections)} results for a batch of "
                                     f"{len(batch.tokens)} samples")
            for b, det in enumerate(detections):
                det = Detections(det.boxes.detach().float().cpu(), det.scores.detach().float().cpu(),
                                 det.labels.detach().cpu())
                sample = batch.samples[b] if getattr(batch, "samples", None) else None
                if sample is not None:
                    meta = sample_metadata(sample)
                    out[batch.tokens[b]] = Prediction(
                        token=batch.tokens[b], detections=_to_original_frame(det, sample),
                        lidar_to_ego=meta["lidar_to_ego"], ego_to_global=meta["ego_to_global"],
                        extras=meta["extras"])
                else:
                    out[batch.tokens[b]] = Prediction(
                        token=batch.tokens[b], detections=det,
                        lidar_to_ego=batch.lidar_to_ego[b].detach().cpu().clone(),
                        ego_to_global=batch.ego_to_global[b].detach().cpu().clone())
            if progress is not None:
                progress(i + 1, total)
    finally:
        module.train(was_training)
    return out


def gather_predictions(predictions: Mapping[str, Prediction], info: DistInfo) -> dict[str, Prediction]:
    """Every rank's predictions merged (by token; the distributed sampler's padding
    duplicates collapse), on every rank. What travels is plain picklable CPU data
    (:class:`Prediction`: token, boxes, scores, labels, poses, KITTI calib and image size),
    never the samples."""
    merged: dict[str, Prediction] = {}
    for part in all_gather_objects(dict(predictions), info):
        merged.update(part)
    return merged


# ----------------------------------------------------------------------------- settings


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_run_settings(*, num_threads: int | None, deterministic: bool,
                       device: torch.device) -> Iterator[None]:
    """Set the process-wide torch switches of a run and restore them afterwards:
    intra-op threads, ``use_deterministic_algorithms`` and cuDNN's ``deterministic`` /
    ``benchmark`` flags."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        if num_threads is not None and num_threads != prev_threads:
            torch.set_num_threads(num_threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = (not deterministic) and device.type == "cuda"
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over ``model.param_groups()`` when the model defines it, else over every
    trainable parameter, with ``cfg.lr``, ``cfg.betas`` and ``cfg.weight_decay`` as
    defaults.

    Raises:
        Distill3DError: no trainable parameter.
    """
    groups_fn = getattr(model, "param_groups", None)
    if callable(groups_fn):
        groups = [dict(g) for g in groups_fn()]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        groups = [g for g in groups if g["params"]]
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params}] if params else []
    if not groups:
        raise Distill3DError(f"{type(model).__name__} has no trainable parameter")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------- trainer


class _Window:
    """Running sums of loss terms (on the device: no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, values: Mapping[str, Tensor], samples: int) -> None:
        for name, value in values.items():
            v = value.detach().to(torch.float64)
            self.sums[name] = self.sums[name] + v if name in self.sums else v
        self.steps += 1
        self.samples += samples

    def means(self) -> dict[str, Tensor]:
        return {k: v / max(1, self.steps) for k, v in self.sums.items()}


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        epochs_done: completed epochs.
        global_step: optimiser steps done.
        history: the ``train`` records logged (rank-averaged), in order.
        eval_history: ``(epoch, metrics)`` of each evaluation.
        best: ``{"metric", "value", "epoch"}`` or None.
    """

    epochs_done: int
    global_step: int
    history: list[dict[str, float]]
    eval_history: list[tuple[int, dict[str, float]]]
    best: dict[str, Any] | None


def _batch_size(batch: Any) -> int:
    size = getattr(batch, "batch_size", None)
    if isinstance(size, int):
        return size
    try:
        return len(batch)
    except TypeError:
        return 1


class Trainer:
    """Trains a detector or train module (see the module docstring).

    Args:
        model: the module to train (its ``state_dict`` is what checkpoints hold).
        config: the ``train`` section.
        train_loader: yields batches (``Batch`` or anything with ``.to(device)``), sized;
            its ``set_epoch(epoch)`` is called before each epoch when it has one.
        dist: from :func:`~distill3d.engine.distributed.init_distributed` (default: one
            process on ``device``).
        device: used when ``dist`` is None (``None``: CUDA when available, else CPU).
        run_dir: the run folder (checkpoints, logs); ``None``: nothing is written.
        val_loader: batches for evaluation (each rank's shard under DDP).
        evaluate_fn: ``(predictions, out_dir) -> metrics``, called on rank 0 every
            ``eval_interval`` epochs and after the last (see :data:`EvaluateFn`).
        logger: the reporting channel (default: a :class:`TrainLogger` on the run folder on
            rank 0, a disabled one elsewhere).
        quiet: for the default logger: plain lines instead of a progress bar.
        seed: base seed; rank ``r`` seeds its RNGs with ``seed + r`` at the start of a new
            run (model initialisation is the caller's, before the trainer).
        config_text: the resolved experiment config (YAML) stored in checkpoints.
        callbacks: ``callback(trainer)`` after every optimiser step (after any checkpoint
            of that step).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_loader: Iterable[Any], *,
                 dist: DistInfo | None = None, device: str | torch.device | None = None,
                 run_dir: RunDir | None = None, val_loader: Iterable[Any] | None = None,
                 evaluate_fn: EvaluateFn | None = None, logger: TrainLogger | None = None,
                 quiet: bool = False, seed: int = 0, config_text: str | None = None,
                 callbacks: Sequence[Callable[[Trainer], None]] = ()):
        self.cfg = config
        self.dist = dist if dist is not None else DistInfo(device=resolve_device(device))
        self.device = self.dist.device
        self.run_dir = run_dir
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.evaluate_fn = evaluate_fn
        self.seed = int(seed)
        self.config_text = config_text
        self.callbacks = list(callbacks)
        self._owns_logger = logger is None
        if logger is None:
            logger = (TrainLogger(run_dir.root if run_dir is not None else None, quiet=quiet)
                      if self.dist.is_main else TrainLogger.disabled())
        self.logger = logger

        try:
            loader_len = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise Distill3DError("the training loader must have a length (a map-style dataset)") from None
        self.steps_per_epoch = min(loader_len, config.max_steps_per_epoch or loader_len)
        if self.steps_per_epoch < 1:
            raise Distill3DError("the training loader yields no batch (is the split empty, or "
                                 "smaller than one batch with drop_last?)")

        self.model = unwrap_model(model).to(self.device)
        self.train_module = as_train_module(self.model)
        self.ddp_module = wrap_model(self.train_module, self.dist, sync_batchnorm=config.sync_batchnorm,
                                     find_unused_parameters=config.find_unused_parameters,
                                     log=self.logger.warning)
        self.optimizer = build_optimizer(self.model, config)
        self.schedule = LRSchedule.from_config(config, self.steps_per_epoch)
        self.scheduler = LRScheduler(self.optimizer, self.schedule)

        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.ema = ModelEMA(self.model, config.ema_decay, config.ema_tau) if config.ema else None

        self.epochs_done = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.eval_history: list[tuple[int, dict[str, float]]] = []
        self.resumed_from: Path | None = None
        self._step_time: float | None = None
        self._nonfinite_in_a_row = 0

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _num_threads(self) -> int | None:
        if self.cfg.num_threads is not None:
            return self.cfg.num_threads
        if self.device.type == "cpu" and self.dist.distributed:
            return default_num_threads(self.dist.local_world_size)
        return None

    def _best_metric_name(self) -> str | None:
        return self.cfg.best_metric or getattr(self.evaluate_fn, "primary_metric", None)

    # -- checkpoints ---------------------------------------------------------------------

    def checkpoint_payload(self, extra_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict of the current state (a collective: every rank calls it,
        as every rank's RNG states are gathered)."""
        rng = all_gather_objects(capture_rng_state(), self.dist)
        meta = {"steps_per_epoch": self.steps_per_epoch, "batch_size": self.cfg.batch_size,
                **dict(extra_meta or {})}
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            "epochs_done": self.epochs_done,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": dict(self.best) if self.best else None,
            "config": self.config_text,
            "meta": checkpoint_meta(meta, self.dist.world_size),
        }

    def save_checkpoint(self, *paths: Path) -> None:
        """Write the current state to ``paths`` (rank 0; every rank must call)."""
        payload = self.checkpoint_payload()
        if self.is_main and paths:
            save_checkpoint(payload, *paths)

    def _prune_epoch_checkpoints(self) -> None:
        keep = self.cfg.keep_checkpoints
        if keep is None or self.run_dir is None or not self.is_main:
            return
        files = list_epoch_checkpoints(self.run_dir.checkpoints)
        for _, path in files[: max(0, len(files) - keep)]:
            path.unlink(missing_ok=True)

    def resume(self, path: str | os.PathLike[str]) -> None:
        """Restore model, optimiser, schedule, scaler, EMA, RNG states and counters from a
        checkpoint written by a trainer (every rank calls it).

        Raises:
            CheckpointError: unreadable, or written for another model (keys listed).
        """
        payload = load_checkpoint(path, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                  scaler=self.scaler, ema=self.ema, weights="model")
        for key in ("epochs_done", "step_in_epoch", "global_step"):
            if not isinstance(payload.get(key), int):
                raise CheckpointError(f"{path}: has no training position ({key}); it holds weights "
                                      "only and cannot be resumed from")
        self.epochs_done = payload["epochs_done"]
        self.step_in_epoch = payload["step_in_epoch"]
        self.global_step = payload["global_step"]
        self.best = payload.get("best")
        if self.ema is not None and payload.get("ema") is None:
            self.logger.warning(f"{path} has no EMA state: the EMA starts from the loaded weights")
        meta = payload.get("meta") or {}
        if self.step_in_epoch and (meta.get("steps_per_epoch") not in (None, self.steps_per_epoch)
                                   or meta.get("world_size", 1) != self.dist.world_size):
            self.logger.warning(
                f"{path} was written mid-epoch with {meta.get('world_size')} process(es) and "
                f"{meta.get('steps_per_epoch')} steps per epoch, this run has {self.dist.world_size} "
                f"and {self.steps_per_epoch}: epoch {self.epochs_done + 1} continues at step "
                f"{self.step_in_epoch}, but its remaining batches differ from the original run's")
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epochs_done += 1
            self.step_in_epoch = 0
        rng = payload.get("rng") or []
        if rng:
            if len(rng) != self.dist.world_size:
                self.logger.warning(f"{path} holds RNG states of {len(rng)} process(es); this run "
                                    f"has {self.dist.world_size}: random streams differ")
            restore_rng_state(rng[self.dist.rank % len(rng)])
        self.resumed_from = Path(path)
        where = (f"epoch {self.epochs_done + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}"
                 if self.epochs_done < self.cfg.epochs else "the end of training")
        self.logger.info(f"resumed from {path} at {where} (global step {self.global_step})")

    # -- training ------------------------------------------------------------------------

    def _epoch_iterator(self, epoch: int, start_step: int) -> Iterator[Any]:
        loader = self.train_loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)  # type: ignore[union-attr]
        sampler = _find_resumable(loader)
        batch_size = getattr(loader, "batch_size", None)
        if start_step and sampler is not None and batch_size:
            sampler.set_start(start_step * int(batch_size))
            return iter(loader)
        iterator = iter(loader)
        if start_step:
            self.logger.info(f"fast-forwarding {start_step} batches (the loader has no ResumableSampler)")
            for _ in range(start_step):
                next(iterator)
        return iterator

    def _train_step(self, batch: Any) -> dict[str, Tensor]:
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            losses = self.ddp_module(batch)
        if not isinstance(losses, Mapping) or "loss" not in losses:
            raise Distill3DError(f"{type(self.train_module).__name__}: the loss dict must hold the total "
                                 f"under 'loss'; got keys {sorted(losses) if isinstance(losses, Mapping) else type(losses).__name__}")
        loss = losses["loss"]
        finite = bool(torch.isfinite(loss.detach()).item())
        if not finite:
            self._nonfinite_in_a_row += 1
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items()
                              if isinstance(v, Tensor) and v.numel() == 1)
            if not self.scaler.is_enabled() or self._nonfinite_in_a_row >= 20:
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {self.epochs_done + 1}, step {self.step_in_epoch + 1} "
                    f"(global step {self.global_step + 1}): {terms}. Lower train.lr, set "
                    "train.grad_clip, or check the data")
            self.logger.warning(f"non-finite loss at global step {self.global_step + 1} ({terms}): "
                                "the AMP scaler skips this step")
        else:
            self._nonfinite_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        logged = {k: v.detach() for k, v in losses.items()
                  if isinstance(v, Tensor) and v.numel() == 1 and v.is_floating_point()}
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return logged

    def _eta(self, steps_left_epoch: int) -> tuple[float, float]:
        if self._step_time is None:
            return float("nan"), float("nan")
        left_run = self.total_steps - self.global_step
        return steps_left_epoch * self._step_time, left_run * self._step_time

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        steps = self.steps_per_epoch
        start = self.step_in_epoch
        iterator = self._epoch_iterator(epoch, start)
        self.logger.start_epoch(epoch + 1, self.cfg.epochs, steps, start)
        self.train_module.train()
        window, whole = _Window(), _Window()
        world = self.dist.world_size
        tick = time.perf_counter()
        for s in range(start, steps):
            try:
                batch = next(iterator)
            except StopIteration:
                self.logger.warning(f"the loader ended after {s} of {steps} batches in epoch {epoch + 1}")
                break
            batch = _move(batch, self.device)
            lr = self.lr
            values = self._train_step(batch)
            self.global_step += 1
            self.step_in_epoch = s + 1
            n = _batch_size(batch)
            window.add(values, n)
            whole.add(values, n)
            now = time.perf_counter()
            dt, tick = now - tick, now
            self._step_time = dt if self._step_time is None else 0.9 * self._step_time + 0.1 * dt
            eta_epoch, eta_run = self._eta(steps - s - 1)
            speed = n * world / self._step_time if self._step_time else None
            self.logger.progress(s + 1, loss=None if not self.history else self.history[-1].get("loss"),
                                 lr=lr, samples_per_s=speed, eta_epoch_s=eta_epoch, eta_run_s=eta_run)
            if (s + 1) % self.cfg.log_interval == 0 or s + 1 == steps:
                elapsed = time.perf_counter() - window.started
                means = reduce_scalars(window.means(), self.dist)
                record = {"epoch": epoch + 1, "step": self.global_step, "time": time.time(), **means,
                          "lr": lr, "samples_per_s": window.samples * world / max(elapsed, 1e-9)}
                self.history.append(record)
                self.logger.progress(s + 1, loss=record.get("loss"), lr=lr, samples_per_s=speed,
                                     eta_epoch_s=eta_epoch, eta_run_s=eta_run)
                self.logger.log_train(record, epoch=epoch + 1, num_epochs=self.cfg.epochs,
                                      step_in_epoch=s + 1, steps=steps, eta_epoch_s=eta_epoch,
                                      eta_run_s=eta_run)
                window = _Window()
            if self.cfg.checkpoint_steps and (s + 1) % self.cfg.checkpoint_steps == 0 and s + 1 < steps:
                self.save_checkpoint(*([self.run_dir.last_checkpoint] if self.run_dir else []))
            for callback in self.callbacks:
                callback(self)
        elapsed = time.perf_counter() - whole.started
        means = reduce_scalars(whole.means(), self.dist) if whole.steps else {}
        return {**means, "time_s": elapsed, "samples_per_s": whole.samples * world / max(elapsed, 1e-9),
                "lr": self.lr}

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, epoch: int | None = None) -> dict[str, float] | None:
        """Predict the validation loader (EMA weights when enabled), gather the predictions
        on rank 0, run ``evaluate_fn`` there and share its metrics with every rank.

        Returns:
            The metrics, or ``None`` without a validation loader or ``evaluate_fn``.
        """
        if self.val_loader is None or self.evaluate_fn is None:
            return None
        label = epoch if epoch is not None else self.epochs_done
        started = time.perf_counter()
        context = self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()
        try:
            batches = len(self.val_loader)  # type: ignore[arg-type]
        except TypeError:
            batches = 0
        self.logger.start_eval(label, batches)
        with context:
            local = predict(self.model, self.val_loader, self.device,
                            amp_dtype=self.amp_dtype if self.use_amp else None,
                            progress=lambda done, total: self.logger.eval_progress(done))
        predictions = gather_predictions(local, self.dist)
        metrics: dict[str, float] | None = None
        if self.is_main:
            out_dir = self.run_dir.eval_epoch_dir(label) if self.run_dir is not None else None
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
            metrics = {k: float(v) for k, v in dict(self.evaluate_fn(predictions, out_dir)).items()
                       if isinstance(v, (int, float, np.floating, np.integer))}
            if out_dir is not None:
                atomic_write_bytes(out_dir / "metrics.json",
                                   json.dumps(metrics, indent=2, default=str).encode("utf-8"))
        metrics = broadcast_object(metrics, self.dist)
        assert metrics is not None
        self.logger.log_eval(metrics, epoch=label, step=self.global_step, primary=self._best_metric_name())
        self.logger.info(f"evaluation of {len(predictions)} samples took "
                         f"{time.perf_counter() - started:.1f} s")
        self.eval_history.append((label, metrics))
        return metrics

    def _update_best(self, metrics: Mapping[str, float] | None, epoch: int) -> bool:
        name = self._best_metric_name()
        if not metrics or not name:
            return False
        if name not in metrics:
            raise Distill3DError(f"train.best_metric {name!r} is not among the evaluation metrics: "
                                 f"{', '.join(sorted(metrics))}")
        value = float(metrics[name])
        if not math.isfinite(value):
            return False
        better = (self.best is None or
                  (value > self.best["value"] if self.cfg.best_mode == "max" else value < self.best["value"]))
        if better:
            self.best = {"metric": name, "value": value, "epoch": epoch}
        return better

    # -- the loop ------------------------------------------------------------------------

    def fit(self, resume_from: str | os.PathLike[str] | None = None) -> TrainResult:
        """Train until ``cfg.epochs`` epochs are done (from ``resume_from`` when given).

        Returns:
            A :class:`TrainResult`.
        """
        cfg = self.cfg
        try:
            with torch_run_settings(num_threads=self._num_threads(), deterministic=cfg.deterministic,
                                    device=self.device):
                if resume_from is not None:
                    self.resume(resume_from)
                elif self.resumed_from is None:
                    seed_everything(self.seed + self.dist.rank)
                self._announce()
                for epoch in range(self.epochs_done, cfg.epochs):
                    summary = self._train_epoch(epoch)
                    self.epochs_done = epoch + 1
                    self.step_in_epoch = 0
                    self.logger.log_epoch({"epoch": epoch + 1, "step": self.global_step,
                                           "time": time.time(), **summary})
                    number = epoch + 1
                    metrics = None
                    if number % cfg.eval_interval == 0 or number == cfg.epochs:
                        metrics = self.evaluate(number)
                    improved = self._update_best(metrics, number)
                    paths: list[Path] = []
                    if self.run_dir is not None:
                        paths.append(self.run_dir.last_checkpoint)
                        keep = cfg.keep_checkpoints
                        if (number % cfg.checkpoint_interval == 0 or number == cfg.epochs) and keep != 0:
                            paths.append(self.run_dir.epoch_checkpoint(number))
                        if improved:
                            paths.append(self.run_dir.best_checkpoint)
                            self.logger.info(f"new best {self.best['metric']} = {self.best['value']:.4f} "
                                             f"at epoch {number}: {self.run_dir.best_checkpoint}")
                    self.save_checkpoint(*paths)
                    self._prune_epoch_checkpoints()
                barrier(self.dist)
        finally:
            if self._owns_logger:
                self.logger.close()
        return TrainResult(self.epochs_done, self.global_step, list(self.history),
                           list(self.eval_history), dict(self.best) if self.best else None)

    def _announce(self) -> None:
        cfg = self.cfg
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        world = self.dist.world_size
        self.logger.info(
            f"training {type(self.model).__name__} ({params / 1e6:.2f} M trainable parameters) on "
            f"{self.device}{f' x {world} processes ({self.dist.backend})' if world > 1 else ''}: "
            f"{cfg.epochs} epochs x {self.steps_per_epoch} steps, batch {cfg.batch_size}"
            f"{f' per process ({cfg.batch_size * world} global)' if world > 1 else ''}, "
            f"{cfg.schedule} schedule, lr {cfg.lr:g}, {torch.get_num_threads()} CPU thread(s)"
            + (", deterministic" if cfg.deterministic else "") + (", EMA" if self.ema else ""))
        if cfg.amp and not self.use_amp:
            self.logger.info(f"AMP is off: mixed precision runs on CUDA only; training in float32 on "
                             f"{self.device.type}")
        elif self.use_amp:
            self.logger.info(f"AMP on: autocast {cfg.amp_dtype}"
                             + (" with loss scaling" if self.scaler.is_enabled() else ""))
        if self.epochs_done >= cfg.epochs:
            self.logger.info(f"nothing to train: {self.epochs_done} of {cfg.epochs} epochs are done")
