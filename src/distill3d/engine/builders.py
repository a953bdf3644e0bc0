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

Evaluators (:data:`~distill3d.engine.trainer.EvaluateFn`): nuScenes layouts (``synthdrive``,
``nuscenes``) use :mod:`distill3d.evaluation.nuscenes` (results JSON, mAP/NDS); ``kitti``
uses :mod:`distill3d.evaluation.kitti` (result ``.txt`` files, AP R40). Each writes the
official results file into the evaluation folder it is given.
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
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from distill3d.config.schema import DataConfig, ExperimentConfig
from distill3d.engine.checkpoint import atomic_write_bytes
from distill3d.engine.distributed import DistInfo, available_cpus, barrier
from distill3d.engine.trainer import EvaluateFn, Prediction, ResumableSampler
from distill3d.errors import ConfigError, Distill3DError

__all__ = [
    "KittiEvaluator",
    "NuScenesEvaluator",
    "build_dataset",
    "build_eval_loader",
    "build_evaluator",
    "build_model",
    "build_train_loader",
    "build_transforms",
    "save_predictions_json",
    "synthdrive_root",
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
        with_sweeps = base / f"nuscenes_{preset}"
        without = base / f"nuscenes_{preset}_nosweeps"
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
            generate_dataset("nuscenes", tmp, preset=preset, sweeps=sweeps,
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


class NuScenesEvaluator:
    """nuScenes detection metrics of predictions on a split of a nuScenes dataroot.

    Writes ``results_nusc.json`` (the official submission format) and
    ``metrics_summary.json`` into the output folder; returns ``mAP``, ``NDS``, the five TP
    errors (``mATE``, ``mASE``, ``mAOE``, ``mAVE``, ``mAAE``) and ``AP/<class>``.
    ``primary_metric`` is ``NDS``.

    Args:
        root, version, split: the dataroot, table version and split (GT source).
        class_names: what the predictions' labels index (nuScenes detection names).
    """

    primary_metric = "NDS"

    def __init__(self, root: str | os.PathLike[str], version: str, split: str,
                 class_names: Sequence[str]):
        from distill3d.evaluation.nuscenes import NUSCENES_DETECTION_CLASSES

        unknown = [c for c in class_names if c not in NUSCENES_DETECTION_CLASSES]
        if unknown:
            raise ConfigError(f"nuScenes evaluation: classes {unknown} are not nuScenes detection "
                              f"classes ({', '.join(NUSCENES_DETECTION_CLASSES)})")
        self.root = Path(root)
        self.version = version
        self.split = split
        self.class_names = tuple(class_names)
        self._gt: Any = None

    def results(self, predictions: Mapping[str, Prediction]) -> dict[str, list[dict[str, Any]]]:
        """``{sample_token: [box dict, ...]}`` in the global frame."""
        from distill3d.evaluation.nuscenes import lidar_detections_to_results

        out = {}
        for token, pred in predictions.items():
            det = pred.detections
            out[token] = lidar_detections_to_results(
                det.boxes, det.scores, det.labels.numpy(), pred.lidar_to_ego.double().numpy(),
                pred.ego_to_global.double().numpy(), token, class_names=self.class_names)
        return out

    def __call__(self, predictions: Mapping[str, Prediction], out_dir: Path | None) -> dict[str, float]:
        from distill3d.evaluation.nuscenes import (
            NuScenesResults,
            evaluate_nuscenes,
            load_nuscenes_gt,
            write_nuscenes_metrics,
            write_nuscenes_results,
        )

        if self._gt is None:
            self._gt = load_nuscenes_gt(self.root, self.version, self.split)
        submission = self.results(predictions)
        meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                "use_external": False}
        results = NuScenesResults.from_submission(submission, meta, sample_tokens=self._gt.sample_tokens)
        metrics = evaluate_nuscenes(self._gt, results)
        if out_dir is not None:
            write_nuscenes_results(out_dir / "results_nusc.json", results, meta)
            write_nuscenes_metrics(out_dir / "metrics_summary.json", metrics)
        errors = metrics.tp_errors
        flat = {"mAP": metrics.mean_ap, "NDS": metrics.nd_score,
                **{f"m{_TP_SHORT.get(k, k)}": v for k, v in errors.items()}}
        flat.update({f"AP/{c}": v for c, v in metrics.mean_dist_aps.items()})
        return flat


_TP_SHORT = {"trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE", "vel_err": "AVE",
             "attr_err": "AAE"}


class KittiEvaluator:
    """KITTI AP of predictions on a split of a KITTI object root.

    Writes one result ``.txt`` per frame into ``out_dir/kitti_results/`` (the official
    format) and ``kitti_metrics.json``; returns ``<Class>/3d_R40/<level>`` and
    ``<Class>/bev_R40/<level>`` for the evaluated classes and levels easy, moderate, hard,
    plus ``mAP_3d_R40_moderate`` (the primary metric): the mean over classes of the
    moderate 3D AP R40.
    """

    primary_metric = "mAP_3d_R40_moderate"

    def __init__(self, root: str | os.PathLike[str], split: str, class_names: Sequence[str]):
        from distill3d.evaluation.kitti import KITTI_EVAL_CLASSES

        self.root = Path(root)
        self.split = split
        self.class_names = tuple(class_names)
        self.eval_classes = [c for c in class_names if c in KITTI_EVAL_CLASSES]
        if not self.eval_classes:
            raise ConfigError(f"KITTI evaluation needs one of {', '.join(KITTI_EVAL_CLASSES)} in "
                              f"data.class_names, got {list(class_names)}")
        self._gt: list[dict[str, Any]] | None = None
        self._image_sizes: dict[str, tuple[int, int]] = {}

    def _image_size(self, frame_id: str, pred: Prediction) -> tuple[int, int]:
        size = pred.extras.get("image_size")
        if size is not None:
            return int(size[0]), int(size[1])
        if frame_id not in self._image_sizes:
            from PIL import Image

            path = self.root / "training" / "image_2" / f"{frame_id}.png"
            with Image.open(path) as image:
                self._image_sizes[frame_id] = image.size
        return self._image_sizes[frame_id]

    def annos(self, predictions: Mapping[str, Prediction], frame_ids: Sequence[str]) -> list[dict[str, Any]]:
        """KITTI detection anno dicts of ``frame_ids`` (camera frame, 2D boxes)."""
        from distill3d.evaluation.kitti import lidar_detections_to_kitti_annos

        missing = [f for f in frame_ids if f not in predictions]
        if missing:
            raise Distill3DError(f"KITTI results: no predictions for {len(missing)} frames of split "
                                 f"{self.split!r}, e.g. {missing[:5]}")
        annos = []
        for frame_id in frame_ids:
            pred = predictions[frame_id]
            calib = pred.extras.get("calib")
            if calib is None:
                raise Distill3DError(f"KITTI results: frame {frame_id} has no calib in its extras")
            det = pred.detections
            names = np.asarray([self.class_names[int(i)] for i in det.labels.tolist()], dtype=str)
            anno = lidar_detections_to_kitti_annos(det.boxes[:, :7], det.scores, names, calib,
                                                   self._image_size(frame_id, pred))
            anno.pop("box_index", None)
            anno["frame_id"] = frame_id
            annos.append(anno)
        return annos

    def write_results(self, predictions: Mapping[str, Prediction], out_dir: Path) -> Path:
        """Write ``out_dir/kitti_results/<frame>.txt`` for every predicted frame (no GT
        needed: also for the test split); returns the folder."""
        from distill3d.evaluation.kitti import write_kitti_results

        frame_ids = sorted(predictions)
        folder = out_dir / "kitti_results"
        write_kitti_results(folder, frame_ids, self.annos(predictions, frame_ids))
        return folder

    def __call__(self, predictions: Mapping[str, Prediction], out_dir: Path | None) -> dict[str, float]:
        from distill3d.evaluation.kitti import evaluate_kitti, load_kitti_gt, write_kitti_results

        if self._gt is None:
            self._gt = load_kitti_gt(self.root, self.split)
        frame_ids = [a["frame_id"] for a in self._gt]
        annos = self.annos(predictions, frame_ids)
        result = evaluate_kitti(self._gt, annos, self.eval_classes)
        if out_dir is not None:
            write_kitti_results(out_dir / "kitti_results", frame_ids, annos)
            _write_json(out_dir / "kitti_metrics.json", result)
        flat: dict[str, float] = {}
        levels = ("easy", "moderate", "hard")
        for cls in self.eval_classes:
            for metric in ("3d", "bev"):
                for level, value in zip(levels, result["R40"][cls][metric]):
                    flat[f"{cls}/{metric}_R40/{level}"] = float(value)
        flat["mAP_3d_R40_moderate"] = float(np.mean([result["R40"][c]["3d"][1] for c in self.eval_classes]))
        return flat


def build_evaluator(cfg: ExperimentConfig, split: str, dataset: Dataset | None = None) -> EvaluateFn | None:
    """The evaluator of ``cfg.data`` on ``split`` (``None`` where there is none: info
    files, or a split without labels)."""
    data = cfg.data
    if data.dataset in ("synthdrive", "nuscenes"):
        root = getattr(dataset, "root", None) or data.root
        if data.version.endswith("-test"):
            return None
        return NuScenesEvaluator(root, data.version, split, data.class_names)
    if data.dataset == "kitti":
        if split == "test":
            return None
        return KittiEvaluator(getattr(dataset, "root", None) or data.root, split, data.class_names)
    return None


def save_predictions_json(path: Path, predictions: Mapping[str, Prediction],
                          class_names: Sequence[str]) -> None:
    """Predictions in our own frame and convention (one JSON record per sample), for
    datasets without an official results format."""
    out = {token: {"boxes": pred.detections.boxes.tolist(), "scores": pred.detections.scores.tolist(),
                   "labels": [class_names[int(i)] for i in pred.detections.labels.tolist()]}
           for token, pred in predictions.items()}
    _write_json(path, out)
