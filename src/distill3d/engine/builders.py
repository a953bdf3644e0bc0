"""Datasets, loaders, models and evaluators from an :class:`ExperimentConfig`.

Datasets by ``data.dataset``:

* ``synthdrive``: SynthDrive in the nuScenes layout read with
  :class:`~distill3d.data.NuScenesDataset`. With ``data.root`` empty the set lives in the
  user cache (``$DISTILL3D_CACHE`` or ``~/.cache/distill3d``, under ``synthdrive/``) and
  is generated there on first use (rank 0 generates, the others wait): ``v1.0-mini`` is
  the ``mini`` preset (10 scenes x 40 samples), ``v1.0-trainval`` the ``small`` one. With
  ``data.sweeps == 1`` a set without sweeps is generated (faster), otherwise one with
  nuScenes' 9 sweeps between keyframes. A ``data.root`` that does not exist (or is empty)
  is generated there.
* ``nuscenes``: :class:`~distill3d.data.NuScenesDataset` on ``data.root`` /
  ``data.version``.
* ``kitti``: :class:`~distill3d.data.KittiDataset` on ``data.root``.
* ``mmdet3d_infos`` / ``openpcdet_infos``: :class:`~distill3d.data.InfoDataset`; the
  splits (``data.train_split``, ``data.val_split``) name the info ``.pkl`` files
  (absolute, or relative to ``data.root``), and ``data.root`` is the data root.

``data.sweeps`` counts LiDAR sweeps **including** the key frame (nuScenes' "10 sweeps"),
so the readers merge ``data.sweeps - 1`` previous sweeps.

Training samples get the range filters of ``data.point_cloud_range`` and, with
``train.augment``, mmdetection3d's CenterPoint augmentation (global rotation of
+-22.5 degrees, scaling 0.95-1.05, random flips; KITTI: flips across the x axis only) and
a point shuffle.

Loaders: the training loader shards one permutation per epoch over the processes
(``DistributedSampler`` with as many replicas as processes, one in a single-process run),
so that the global batches are the same whatever the number of processes; it is wrapped in
a :class:`~distill3d.engine.trainer.ResumableSampler` for mid-epoch resume.

Evaluators (:data:`~distill3d.engine.trainer.EvaluateFn`): :class:`DatasetEvaluator` feeds
the predictions gathered on rank 0 to the generic evaluator of the dataset
(:func:`distill3d.evaluation.evaluator.build_evaluator`: nuScenes metrics for ``synthdrive``,
``nuscenes`` and nuScenes infos, KITTI AP for ``kitti`` and KITTI infos; the numbers of
``distill3d evaluate``). It writes the suite's metrics file, the official results file and
the distance breakdown into the evaluation folder it is given. Splits without labels have no
evaluator; :func:`write_results` writes their official results file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from distill3d.config.schema import DataConfig, ExperimentConfig
from distill3d.engine.checkpoint import atomic_write_bytes
from distill3d.engine.distributed import DistInfo, available_cpus, barrier, broadcast_object
from distill3d.engine.trainer import Prediction, ResumableSampler
from distill3d.errors import ConfigError, Distill3DError

__all__ = [
    "PRIMARY_METRICS",
    "DatasetEvaluator",
    "build_dataset",
    "build_eval_loader",
    "build_evaluator",
    "build_model",
    "build_train_loader",
    "build_transforms",
    "evaluation_suite",
    "flat_metrics",
    "save_predictions_json",
    "synthdrive_root",
    "write_results",
]

_SYNTH_PRESET = {"v1.0-mini": "mini", "v1.0-trainval": "small"}


# ----------------------------------------------------------------------------- SynthDrive


def _synth_preset(version: str) -> str:
    try:
        return _SYNTH_PRESET[version]
    except KeyError:
        raise ConfigError(f"data.version {version!r}: SynthDrive is generated as v1.0-mini (preset "
                          "mini) or v1.0-trainval (preset small)") from None


def _has_dataset(root: Path, version: str) -> bool:
    return (root / version / "sample.json").is_file()


def synthdrive_root(data: DataConfig, dist: DistInfo | None = None, *, log: Any = None) -> Path:
    """The nuScenes dataroot of the SynthDrive set ``data`` asks for, generated on first use.

    Only rank 0 (local rank 0) generates, into a temporary folder renamed into place when
    complete, while the other processes wait at a barrier.

    Raises:
        ConfigError: a version SynthDrive does not generate.
    """
    from distill3d.data.index_cache import user_cache_dir

    dist = dist or DistInfo()
    version = data.version
    preset = _synth_preset(version)
    if data.root:
        candidates = [Path(data.root)]
        target = Path(data.root)
        sweeps = 0 if data.sweeps <= 1 else None
    else:
        base = user_cache_dir() / "synthdrive"
        size = ""
        if data.synth_scenes is not None or data.synth_samples_per_scene is not None:
            size = f"_{data.synth_scenes or 'preset'}x{data.synth_samples_per_scene or 'preset'}"
        with_sweeps = base / f"nuscenes_{preset}{size}"
        without = base / f"nuscenes_{preset}{size}_nosweeps"
        candidates = [with_sweeps] + ([without] if data.sweeps <= 1 else [])
        target = without if data.sweeps <= 1 else with_sweeps
        sweeps = 0 if data.sweeps <= 1 else None
    for root in candidates:
        if _has_dataset(root, version):
            return root
    if dist.local_rank == 0:
        if target.exists() and any(target.iterdir()) and not _has_dataset(target, version):
            raise Distill3DError(f"data.root {target} exists but holds no SynthDrive {version} set "
                                 f"({target / version / 'sample.json'} is missing); empty it or point "
                                 "data.root elsewhere")
        from distill3d.synth.generate import generate_dataset

        if log is not None:
            log(f"generating SynthDrive ({preset} preset, {version}) into {target}; this happens once")
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            generate_dataset("nuscenes", tmp, preset=preset, sweeps=sweeps, scenes=data.synth_scenes,
                             samples_per_scene=data.synth_samples_per_scene,
                             workers=max(1, min(available_cpus(), 8)), progress=log is not None)
            if target.exists() and not any(target.iterdir()):
                target.rmdir()
            if _has_dataset(target, version):  # another job finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier(dist)
    if not _has_dataset(target, version):
        raise Distill3DError(f"SynthDrive set {target} is missing after generation")
    return target


# ----------------------------------------------------------------------------- datasets


def build_transforms(data: DataConfig, *, training: bool, augment: bool) -> list[Any]:
    """The sample transforms of a split (see the module docstring)."""
    from distill3d.data.transforms import (
        GlobalRotScaleTrans,
        ObjectRangeFilter,
        PointRangeFilter,
        PointShuffle,
        RandomFlip3D,
    )

    pcr = list(data.point_cloud_range)
    if not training:
        return [PointRangeFilter(pcr)]
    out: list[Any] = []
    if augment:
        flip_y = 0.0 if data.dataset == "kitti" else 0.5
        out += [GlobalRotScaleTrans(rot_range=(-math.pi / 8, math.pi / 8), scale_range=(0.95, 1.05)),
                RandomFlip3D(flip_x_prob=0.5, flip_y_prob=flip_y)]
    out += [PointRangeFilter(pcr), ObjectRangeFilter(pcr)]
    if augment:
        out.append(PointShuffle())
    return out


def _info_path(data: DataConfig, split: str) -> Path:
    path = Path(split)
    if not path.is_absolute() and data.root:
        path = Path(data.root) / path
    if not path.is_file():
        raise ConfigError(f"data.dataset {data.dataset}: the split {split!r} must name an info .pkl "
                          f"file (absolute or relative to data.root); {path} does not exist")
    return path


def build_dataset(cfg: ExperimentConfig, split: str, *, training: bool,
                  dist: DistInfo | None = None, log: Any = None) -> Dataset:
    """The dataset of ``split`` described by ``cfg.data`` (augmented when ``training``
    and ``cfg.train.augment``).

    Raises:
        ConfigError: a missing root or an unknown split.
        DataError: unreadable data (from the readers).
    """
    from distill3d.data import InfoDataset, KittiDataset, NuScenesDataset

    data = cfg.data
    transforms = build_transforms(data, training=training, augment=training and cfg.train.augment)
    seed = cfg.seed
    sweeps = max(0, data.sweeps - 1)
    kind = data.dataset
    try:
        if kind in ("synthdrive", "nuscenes"):
            if kind == "synthdrive":
                root = synthdrive_root(data, dist, log=log)
            else:
                if not data.root:
                    raise ConfigError("data.root must be set for data.dataset: nuscenes (the dataroot)")
                root = Path(data.root)
            return NuScenesDataset(root, data.version, split, class_names=data.class_names, sweeps=sweeps,
                                   load_cameras=data.use_cameras, transforms=transforms, seed=seed)
        if kind == "kitti":
            if not data.root:
                raise ConfigError("data.root must be set for data.dataset: kitti (the object root)")
            return KittiDataset(data.root, split, class_names=data.class_names, transforms=transforms,
                                seed=seed, load_images=data.use_cameras)
        if kind in ("mmdet3d_infos", "openpcdet_infos"):
            return InfoDataset(_info_path(data, split), data_root=data.root or None,
                               class_names=data.class_names, load_cameras=data.use_cameras,
                               sweeps=sweeps, transforms=transforms, seed=seed)
    except ValueError as exc:
        if isinstance(exc, Distill3DError):
            raise
        raise ConfigError(f"data ({kind}, split {split!r}): {exc}") from exc
    raise ConfigError(f"unknown data.dataset {kind!r}")


# ----------------------------------------------------------------------------- loaders


def build_train_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int,
                       dist: DistInfo | None = None) -> Any:
    """The training loader: one shuffled order per ``(seed, epoch)`` split over the
    processes, ``drop_last``, resumable mid-epoch (see the module docstring)."""
    from distill3d.data.loader import build_dataloader

    dist = dist or DistInfo()
    base = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                              seed=seed, drop_last=True)
    return build_dataloader(dataset, batch_size, shuffle=True, num_workers=num_workers, seed=seed,
                            distributed=dist.distributed, sampler=ResumableSampler(base),  # type: ignore[arg-type]
                            drop_last=True, rank=dist.rank, world_size=dist.world_size)


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int,
                      dist: DistInfo | None = None) -> Any:
    """An inference loader in dataset order (each process its shard; the last batch may be
    short)."""
    from distill3d.data.loader import build_dataloader

    dist = dist or DistInfo()
    return build_dataloader(dataset, batch_size, shuffle=False, num_workers=num_workers, seed=seed,
                            distributed=dist.distributed, drop_last=False, rank=dist.rank,
                            world_size=dist.world_size)


# ----------------------------------------------------------------------------- model


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The detector of ``cfg.model`` for ``cfg.data`` (``distill3d.models.build_detector``).

    Raises:
        ConfigError: an unknown or unavailable model type.
    """
    try:
        from distill3d.models import build_detector
    except ImportError as exc:  # pragma: no cover - only while the models package is missing
        raise ConfigError(f"the detectors (distill3d.models) cannot be imported: {exc}") from exc
    return build_detector(cfg.model, cfg.data)


# ----------------------------------------------------------------------------- evaluators


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=float).encode("utf-8"))


#: ``train.best_metric``'s default per suite.
PRIMARY_METRICS = {"nuscenes": "NDS", "kitti": "mAP_3d_R40_moderate"}


def evaluation_suite(dataset: Any, split: str | None = None) -> str | None:
    """The official metric suite of a dataset's split (``"nuscenes"``, ``"kitti"``) or
    ``None`` where there is none: a nuScenes ``-test`` version, a KITTI split without
    labels, info files of another dataset (Lyft, ...), a dataset type without a suite. Cheap:
    nothing is read."""
    from distill3d.data import InfoDataset, KittiDataset, NuScenesDataset

    if isinstance(dataset, NuScenesDataset):
        return None if str(dataset.version).endswith("-test") else "nuscenes"
    if isinstance(dataset, KittiDataset):
        labelled = getattr(getattr(dataset, "index", None), "has_labels", True)
        return "kitti" if labelled and (split or dataset.split) != "test" else None
    if isinstance(dataset, InfoDataset):
        kind = getattr(dataset, "dataset_kind", None)
        return kind if kind in PRIMARY_METRICS else None
    return None


def flat_metrics(result: Any) -> dict[str, float]:
    """The numbers the trainer logs from an
    :class:`~distill3d.evaluation.evaluator.EvaluationResult`: nuScenes ``mAP``, ``NDS``,
    ``mATE`` ... ``mAAE``, ``AP/<class>``; KITTI ``<Class>/3d_R40/<level>`` and
    ``<Class>/bev_R40/<level>`` (levels easy, moderate, hard) per evaluated class, then
    ``mAP_3d_R40_moderate`` and ``mAP_bev_R40_moderate`` (means over the classes)."""
    if result.suite == "nuscenes":
        return {k: float(v) for k, v in result.headline.items()}
    table = result.metrics["R40"]
    flat: dict[str, float] = {}
    for cls in table:
        for metric in ("3d", "bev"):
            for level, value in zip(("easy", "moderate", "hard"), table[cls][metric]):
                flat[f"{cls}/{metric}_R40/{level}"] = float(value)
    for metric in ("3d", "bev"):
        key = f"mAP_{metric}_R40_moderate"
        flat[key] = float(result.headline[key])
    return flat


class DatasetEvaluator:
    """The :data:`~distill3d.engine.trainer.EvaluateFn` of a split: gathered predictions
    (:class:`~distill3d.engine.trainer.Prediction` by token) fed to the generic evaluator
    of the dataset (:func:`distill3d.evaluation.evaluator.build_evaluator`, so the numbers
    are those of ``distill3d evaluate`` and the devkit) with
    :meth:`~distill3d.evaluation.evaluator.DetectionEvaluator.add_detections`.

    Calling it evaluates every sample of the split (a missing or foreign token is an
    error), writes into the output folder what
    :meth:`~distill3d.evaluation.evaluator.EvaluationResult.write` writes (nuScenes
    ``metrics_summary.json`` and ``results_nusc.json``; KITTI ``kitti_metrics.json`` and
    ``kitti_results/``; both ``metrics_by_distance.json``) and returns :func:`flat_metrics`.

    The generic evaluator, and with it the GT, is built on first use (:meth:`prepare`), so
    that only the evaluating process (rank 0) loads it.

    Args:
        dataset: the evaluated split (un-augmented or not: predictions are in the original frame).
        class_names: what the predictions' labels index (the model's classes).
        suite: :func:`evaluation_suite` of ``dataset``.
        by_distance: also evaluate the distance bands.
    """

    def __init__(self, dataset: Any, class_names: Sequence[str], suite: str, *, by_distance: bool = True):
        if suite not in PRIMARY_METRICS:
            raise ValueError(f"unknown suite {suite!r}")
        self.dataset = dataset
        self.class_names = tuple(class_names)
        self.suite = suite
        self.primary_metric = PRIMARY_METRICS[suite]
        self.by_distance = by_distance
        self._evaluator: Any = None

    def prepare(self) -> Any:
        """The generic :class:`~distill3d.evaluation.evaluator.DetectionEvaluator` (built,
        and the GT read, on the first call).

        Raises:
            Distill3DError: a split the suite cannot evaluate, unreadable GT.
        """
        if self._evaluator is None:
            from distill3d.evaluation.evaluator import build_evaluator as build_detection_evaluator

            self._evaluator = build_detection_evaluator(self.dataset, by_distance=self.by_distance)
        return self._evaluator

    def evaluate(self, predictions: Mapping[str, Prediction]) -> Any:
        """The :class:`~distill3d.evaluation.evaluator.EvaluationResult` of ``predictions``."""
        evaluator = self.prepare()
        evaluator.reset()
        for token, pred in predictions.items():
            evaluator.add_detections(token, pred.detections, lidar_to_ego=pred.lidar_to_ego,
                                     ego_to_global=pred.ego_to_global, extras=pred.extras,
                                     class_names=self.class_names)
        return evaluator.evaluate()

    def __call__(self, predictions: Mapping[str, Prediction], out_dir: Path | None) -> dict[str, float]:
        result = self.evaluate(predictions)
        if out_dir is not None:
            result.write(out_dir)
        return flat_metrics(result)


def build_evaluator(cfg: ExperimentConfig, split: str, dataset: Dataset, *, dist: DistInfo | None = None,
                    log: Any = None) -> DatasetEvaluator | None:
    """The evaluator of ``dataset`` (the split ``split`` of ``cfg.data``), or ``None`` where
    there is no official suite (:func:`evaluation_suite`; info files whose GT cannot be
    evaluated, the reason passed to ``log``).

    A collective under DDP (every rank calls it and gets the same decision): rank 0 builds
    the generic evaluator now (so a split the suite refuses or unreadable GT fail before
    training), the other ranks never load the GT.

    Raises:
        Distill3DError: a nuScenes or KITTI split the suite cannot evaluate (classes it
            cannot score, ...), unreadable GT.
    """
    dist = dist or DistInfo()
    suite = evaluation_suite(dataset, split)
    if suite is None:
        return None
    evaluator = DatasetEvaluator(dataset, cfg.data.class_names, suite)
    failure: BaseException | None = None
    if dist.is_main:
        try:
            evaluator.prepare()
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not only rank 0
            failure = exc
    report = None if failure is None else (str(failure), isinstance(failure, Distill3DError))
    report = broadcast_object(report, dist)
    if report is None:
        return evaluator
    message, refused = report
    if refused and cfg.data.dataset in ("mmdet3d_infos", "openpcdet_infos"):
        if log is not None:
            log(f"no evaluation of split {split!r}: {message}")
        return None
    if failure is not None:
        raise failure
    raise Distill3DError(f"evaluation of split {split!r} (rank 0): {message}")


def _kitti_image_size(dataset: Any, index: int) -> tuple[int, int]:
    from PIL import Image

    path = Path(dataset.root) / dataset.frame_info(index).image
    try:
        with Image.open(path) as image:
            return int(image.size[0]), int(image.size[1])
    except OSError as exc:
        raise Distill3DError(f"frame {dataset.sample_tokens()[index]}: cannot read {path} (its size is "
                             f"needed for the 2D boxes): {exc}") from None


def write_results(cfg: ExperimentConfig, dataset: Dataset, predictions: Mapping[str, Prediction],
                  out_dir: Path) -> Path:
    """Write the predictions of a split that is not evaluated (no labels) in the official
    format, with the suites' own converters: nuScenes layouts ``results_nusc.json`` (the
    500 best boxes per sample, as evaluation keeps), KITTI ``kitti_results/<frame>.txt``;
    other datasets ``predictions.json`` (:func:`save_predictions_json`). Returns the path.

    Raises:
        Distill3DError: predictions missing for samples of the split.
    """
    names = tuple(cfg.data.class_names)
    kind = cfg.data.dataset
    tokens = list(dataset.sample_tokens()) if hasattr(dataset, "sample_tokens") else sorted(predictions)
    if kind in ("synthdrive", "nuscenes", "kitti"):
        missing = [t for t in tokens if t not in predictions]
        if missing:
            raise Distill3DError(f"results: no predictions for {len(missing)} of the {len(tokens)} samples, "
                                 f"e.g. {missing[0]}")
    if kind in ("synthdrive", "nuscenes"):
        from distill3d.evaluation.nuscenes import (
            NuScenesResults,
            lidar_detections_to_results,
            write_nuscenes_results,
        )

        meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                "use_external": False}
        submission = {}
        for token in tokens:
            pred = predictions[token]
            det = pred.detections
            keep = torch.argsort(det.scores, descending=True, stable=True)[:500].sort().values
            submission[token] = lidar_detections_to_results(
                det.boxes[keep], det.scores[keep], det.labels[keep].numpy(), pred.lidar_to_ego,
                pred.ego_to_global, token, class_names=names)
        path = out_dir / "results_nusc.json"
        write_nuscenes_results(path, NuScenesResults.from_submission(submission, meta, tokens), meta)
        return path
    if kind == "kitti":
        from distill3d.evaluation.kitti import lidar_detections_to_kitti_annos, write_kitti_results

        annos = []
        for i, token in enumerate(tokens):
            pred = predictions[token]
            calib = pred.extras.get("calib")
            if calib is None:
                raise Distill3DError(f"KITTI results: frame {token} has no calib")
            size = pred.extras.get("image_size") or _kitti_image_size(dataset, i)
            det = pred.detections
            labels = np.asarray([names[int(label)] for label in det.labels.tolist()], dtype=str)
            anno = lidar_detections_to_kitti_annos(det.boxes[:, :7].double(), det.scores, labels, calib,
                                                   (int(size[0]), int(size[1])))
            anno.pop("box_index", None)
            annos.append(anno)
        path = out_dir / "kitti_results"
        write_kitti_results(path, tokens, annos)
        return path
    path = out_dir / "predictions.json"
    save_predictions_json(path, predictions, names)
    return path


def save_predictions_json(path: Path, predictions: Mapping[str, Prediction],
                          class_names: Sequence[str]) -> None:
    """Predictions in our own frame and convention (one JSON record per sample), for
    datasets without an official results format."""
    out = {token: {"boxes": pred.detections.boxes.tolist(), "scores": pred.detections.scores.tolist(),
                   "labels": [class_names[int(i)] for i in pred.detections.labels.tolist()]}
           for token, pred in predictions.items()}
    _write_json(path, out)
