"""The generic detection evaluator: our :class:`~distill3d.data.sample.Sample` s and
:class:`~distill3d.structures.Detections` in, the official nuScenes or KITTI metrics out.

The training loop evaluates every N epochs with it::

    evaluator = build_evaluator(val_dataset)        # the suite follows the dataset type
    evaluator.reset()
    for samples, detections in predictions:         # lists of Sample / Detections
        evaluator.add(samples, detections, model_class_names)
    result = evaluator.evaluate()
    print(result.table)                             # the familiar table
    log(result.headline)                            # {"mAP": ..., "NDS": ..., "AP/car": ...}
    result.write(run_dir / f"eval_epoch_{epoch}")   # metrics, results file, distance bands

Under DDP each process sends its detections as plain data with what the evaluator reads from
the samples (:func:`sample_metadata`: poses, augmentation, KITTI calibration and image size),
and the evaluating process adds them with :meth:`DetectionEvaluator.add_detections`, which
gives what :meth:`DetectionEvaluator.add` gives with the samples.

The numbers are by construction those of the file-based path (``distill3d evaluate`` on the
results file that :meth:`EvaluationResult.write` leaves behind): detections are converted
with the suites' own helpers (:func:`~distill3d.evaluation.nuscenes.lidar_detections_to_results`,
:func:`~distill3d.evaluation.kitti.lidar_detections_to_kitti_annos`), the results file is
written so that every number reads back bit for bit, and both paths build their
:class:`EvaluationResult` with :func:`nuscenes_evaluation_result` /
:func:`kitti_evaluation_result`.

Frames: detections are in the sample's key LiDAR frame *as the sample is* (possibly
augmented). Evaluation runs on un-augmented samples; when ``sample.bev_transform`` is not
the identity the boxes are first mapped back to the original frame with its inverse
(:func:`boxes_to_original_frame`: centre, size, yaw and velocity, in float64, the exact
inverse of :func:`~distill3d.data.transforms.apply_bev_transform`), so an augmented sample
and its detections give the metrics of the un-augmented ones.

Suites, chosen by :func:`build_evaluator` from the dataset type:

* :class:`~distill3d.data.nuscenes.NuScenesDataset`: nuScenes ``detection_cvpr_2019``
  metrics, GT from the dataset's tables (:func:`~distill3d.evaluation.nuscenes.load_nuscenes_gt`).
* :class:`~distill3d.data.kitti.KittiDataset`: KITTI AP (R40, R11, official and loose
  thresholds), GT from the dataset's ``label_2`` files
  (:func:`~distill3d.evaluation.kitti.load_kitti_gt`).
* :class:`~distill3d.data.infos.InfoDataset`: KITTI infos (mmdetection3d legacy and v2,
  OpenPCDet) are evaluated with KITTI metrics, GT from the info's annotations (the
  annotation dicts the reference evaluation itself consumes); nuScenes infos with nuScenes
  metrics when the dataroot holds the version's tables and the info's samples are exactly
  one split of it; anything else (Lyft, a partial split, no tables) is a clear error.

Distance bands (``0-20``, ``20-30``, ``30+`` m) come from the suites' own functions: the
nuScenes ego distance (:func:`~distill3d.evaluation.nuscenes.evaluate_nuscenes_by_distance`)
and the KITTI bird's-eye distance from the camera
(:func:`~distill3d.evaluation.kitti.evaluate_kitti_by_distance`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from distill3d.data.errors import DataError
from distill3d.data.index_cache import atomic_write_bytes
from distill3d.errors import Distill3DError
from distill3d.evaluation.kitti import (
    KITTI_EVAL_CLASSES,
    KITTI_LABEL_CLASSES,
    evaluate_kitti,
    evaluate_kitti_by_distance,
    format_kitti_table,
    lidar_detections_to_kitti_annos,
    load_kitti_gt,
    write_kitti_results,
)
from distill3d.evaluation.nuscenes import (
    DISTANCE_BANDS,
    NuScenesEvalConfig,
    NuScenesEvaluator,
    NuScenesGT,
    NuScenesMetrics,
    NuScenesResults,
    evaluate_nuscenes,
    evaluate_nuscenes_by_distance,
    load_nuscenes_gt,
    write_nuscenes_results,
)
from distill3d.geometry.convert import KittiCalib

__all__ = [
    "EVALUATION_FILES",
    "DetectionEvaluator",
    "EvaluationResult",
    "KittiDetectionEvaluator",
    "NuScenesDetectionEvaluator",
    "boxes_to_original_frame",
    "build_evaluator",
    "format_distance_table",
    "kitti_evaluation_result",
    "kitti_headline",
    "nuscenes_evaluation_result",
    "nuscenes_headline",
    "sample_metadata",
]

PathLike = str | os.PathLike[str]

#: Files :meth:`EvaluationResult.write` creates, per suite: the metrics JSON, the results
#: file (nuScenes) or folder (KITTI) that ``distill3d evaluate`` re-evaluates, and the
#: distance breakdown.
EVALUATION_FILES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "nuscenes": MappingProxyType({"metrics": "metrics_summary.json", "results": "results_nusc.json",
                                  "by_distance": "metrics_by_distance.json"}),
    "kitti": MappingProxyType({"metrics": "kitti_metrics.json", "results": "kitti_results",
                               "by_distance": "metrics_by_distance.json"}),
})

#: The submission ``meta`` of LiDAR-only detections.
_LIDAR_META: Mapping[str, bool] = MappingProxyType({
    "use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False})
_TP_SHORT: Mapping[str, str] = MappingProxyType({
    "trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"})
_KITTI_LEVEL_MODERATE = 1
# Structural tolerance of a BEV augmentation matrix (as distill3d.data.transforms checks it).
_BEV_TOL = 1e-5


# --------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------


def _as_float64(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _is_identity(matrix: np.ndarray) -> bool:
    return matrix.shape == (4, 4) and bool(np.array_equal(matrix, np.eye(4)))


def boxes_to_original_frame(boxes: Any, bev_transform: Any) -> np.ndarray:
    """Map boxes from an augmented key LiDAR frame back to the original one.

    ``bev_transform`` maps the original frame to the augmented one (``Sample.bev_transform``,
    a BEV similarity: ``[[s Q, 0, t_xy], [0, 0, s_z, t_z], [0, 0, 0, 1]]`` with ``Q`` a
    rotation or a reflection). Its inverse is applied as
    :func:`~distill3d.data.transforms.apply_bev_transform` applies a matrix: centre by the
    matrix, ``l, w`` by ``1 / s``, ``h`` by ``1 / s_z``, yaw by re-measuring the heading
    mapped by ``Q^T`` (wrapped to ``[-pi, pi)``), velocity ``(vx, vy)`` by the inverse x-y
    block (NaN stays NaN). All in float64; an exact identity returns a plain copy.

    Args:
        boxes: ``(K, 7)`` or ``(K, 9)`` ``(x, y, z, l, w, h, yaw[, vx, vy])``.
        bev_transform: ``(4, 4)`` original -> augmented.

    Returns:
        ``(K, C)`` float64 boxes in the original frame (``C`` as given).

    Raises:
        ValueError: a matrix that is not a BEV similarity with positive scales.
    """
    b = _as_float64(boxes)
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (K, >=7), got {tuple(b.shape)}")
    a = _as_float64(bev_transform)
    if a.shape != (4, 4):
        raise ValueError(f"bev_transform must be (4, 4), got {tuple(a.shape)}")
    if _is_identity(a):
        return b.copy()
    if not np.isfinite(a).all():
        raise ValueError(f"bev_transform has NaN or inf values: {a.tolist()}")
    scale = float(np.abs(a[:3, :3]).max()) + 1e-12
    if (np.abs(a[3] - [0.0, 0.0, 0.0, 1.0]).max() > _BEV_TOL
            or np.abs(np.concatenate((a[2, :2], a[:2, 2]))).max() > _BEV_TOL * scale):
        raise ValueError("bev_transform must be [[s*Q, 0, t], [0, 0, s_z, t_z], [0, 0, 0, 1]] "
                         f"(no x-y/z mixing), got {a.tolist()}")
    inv = np.linalg.inv(a)
    l2 = inv[:2, :2]
    s = math.sqrt(abs(float(np.linalg.det(l2))))
    s_z = float(inv[2, 2])
    if not (s > 0 and s_z > 0):
        raise ValueError(f"bev_transform must have positive scales, got {a.tolist()}")
    q = l2 / s
    if np.abs(q.T @ q - np.eye(2)).max() > _BEV_TOL:
        raise ValueError(f"the x-y block of bev_transform must be a scaled rotation or "
                         f"reflection, got {a[:2, :2].tolist()}")
    out = b.copy()
    if b.shape[0] == 0:
        return out
    out[:, :3] = b[:, :3] @ inv[:3, :3].T + inv[:3, 3]
    out[:, 3:5] = b[:, 3:5] * s
    out[:, 5] = b[:, 5] * s_z
    heading = np.stack((np.cos(b[:, 6]), np.sin(b[:, 6])), axis=1) @ q.T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    out[:, 6] = np.where(yaw >= np.pi, yaw - 2 * np.pi, yaw)
    if b.shape[1] >= 9:
        out[:, 7:9] = b[:, 7:9] @ l2.T
    return out


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


def nuscenes_headline(metrics: NuScenesMetrics) -> dict[str, float]:
    """The key nuScenes numbers, flat: ``mAP``, ``NDS``, the five mean TP errors
    (``mATE`` ... ``mAAE``) and ``AP/<class>`` (AP averaged over the distance thresholds)."""
    out = {"mAP": float(metrics.mean_ap), "NDS": float(metrics.nd_score)}
    out.update({_TP_SHORT[k]: float(v) for k, v in metrics.tp_errors.items()})
    out.update({f"AP/{c}": float(v) for c, v in metrics.mean_dist_aps.items()})
    return out


def kitti_headline(result: Mapping[str, Any]) -> dict[str, float]:
    """The key KITTI numbers, flat: ``<Class>/3d_R40/moderate`` and ``<Class>/bev_R40/moderate``
    (official IoU thresholds, percent) per evaluated class, and their means over the classes
    ``mAP_3d_R40_moderate`` and ``mAP_bev_R40_moderate``."""
    table = result["R40"]
    out: dict[str, float] = {}
    for metric in ("3d", "bev"):
        for cls in table:
            out[f"{cls}/{metric}_R40/moderate"] = float(table[cls][metric][_KITTI_LEVEL_MODERATE])
    for metric in ("3d", "bev"):
        values = [table[c][metric][_KITTI_LEVEL_MODERATE] for c in table]
        out[f"mAP_{metric}_R40_moderate"] = float(np.mean(values)) if values else 0.0
    return out


def format_distance_table(by_distance: Mapping[str, Mapping[str, float]]) -> str:
    """A compact table of headline numbers per distance band (rows: the numbers, columns:
    the bands; ``-`` where a band has no such number, e.g. nuScenes traffic cones beyond
    30 m)."""
    bands = list(by_distance)
    keys: list[str] = []
    for band in bands:
        keys += [k for k in by_distance[band] if k not in keys]
    if not keys:
        return ""
    width = max(len(k) for k in keys) + 2
    lines = [f"{'distance band (m)':<{width}}" + "".join(f"{b:>10}" for b in bands)]
    for key in keys:
        cells = []
        for band in bands:
            value = by_distance[band].get(key)
            cells.append(f"{'-':>10}" if value is None or (isinstance(value, float) and math.isnan(value))
                         else f"{value:>10.4f}")
        lines.append(f"{key:<{width}}" + "".join(cells))
    return "\n".join(lines)


@dataclass(frozen=True)
class _KittiResults:
    """KITTI detections of a split: ``frame_ids`` and one anno dict per frame."""

    frame_ids: tuple[str, ...]
    annos: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one evaluation (either suite).

    Attributes:
        suite: ``"nuscenes"`` or ``"kitti"``.
        metrics: the suite's summary: nuScenes ``NuScenesMetrics.to_summary_dict()`` (the
            devkit's ``metrics_summary.json``), KITTI the ``{"R40", "R11", "loose"}`` dict
            of :func:`~distill3d.evaluation.kitti.evaluate_kitti` (percent).
        headline: the key numbers, flat (:func:`nuscenes_headline` / :func:`kitti_headline`).
        table: the familiar printed table.
        by_distance: band label (``"0-20"``, ``"20-30"``, ``"30+"``) -> that band's summary
            (same structure as ``metrics``); empty when not computed.
        distance_headline: band label -> the band's headline numbers.
        results: what :meth:`write` writes as the results file: a
            :class:`~distill3d.evaluation.nuscenes.NuScenesResults` (nuScenes) or the
            frame ids and anno dicts (KITTI).
    """

    suite: str
    metrics: dict[str, Any]
    headline: dict[str, float]
    table: str
    by_distance: dict[str, dict[str, Any]] = field(default_factory=dict)
    distance_headline: dict[str, dict[str, float]] = field(default_factory=dict)
    results: Any = None

    @property
    def distance_table(self) -> str:
        """:func:`format_distance_table` of :attr:`distance_headline` (``""`` without bands)."""
        return format_distance_table(self.distance_headline) if self.distance_headline else ""

    def write(self, out_dir: PathLike) -> dict[str, Path]:
        """Write the metrics JSON (nuScenes: the devkit's ``metrics_summary.json``; KITTI:
        ``kitti_metrics.json``, ``{"R40", "R11", "loose"}``), the results file
        (``results_nusc.json`` / the ``kitti_results/`` folder of ``<frame>.txt``, which
        ``distill3d evaluate`` re-evaluates to the same numbers) and, when computed, the
        distance breakdown ``metrics_by_distance.json``. Every file is written atomically;
        the KITTI folder is written aside and swapped in whole.

        Returns:
            ``{"metrics": path, "results": path[, "by_distance": path]}``.
        """
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        names = EVALUATION_FILES[self.suite]
        paths = {"metrics": root / names["metrics"], "results": root / names["results"]}
        if self.results is not None:
            if self.suite == "nuscenes":
                results: NuScenesResults = self.results
                write_nuscenes_results(paths["results"], results, dict(results.meta) or dict(_LIDAR_META))
            else:
                _write_kitti_folder(paths["results"], self.results)
        else:
            del paths["results"]
        _write_json(paths["metrics"], self.metrics)
        if self.by_distance:
            paths["by_distance"] = root / names["by_distance"]
            _write_json(paths["by_distance"], self.by_distance)
        for path in paths.values():
            _make_readable(path)
        return paths


def _make_readable(path: Path) -> None:
    """The usual permissions (files 0644, folders 0755) for what was written through
    private temporary files (created 0600 / 0700)."""
    if path.is_dir():
        os.chmod(path, 0o755)
        for child in path.iterdir():
            if child.is_file():
                os.chmod(child, 0o644)
    elif path.is_file():
        os.chmod(path, 0o644)


def _write_json(path: Path, content: Any) -> None:
    """Atomic JSON (indent 2; NaN written as ``NaN`` like the devkit's files)."""
    atomic_write_bytes(path, json.dumps(content, indent=2).encode("utf-8"))


def _write_kitti_folder(folder: Path, results: _KittiResults) -> None:
    """Write the result files into a fresh sibling folder, then swap it in, so the folder
    never mixes files of two evaluations (nor keeps frames of an earlier split)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write_kitti_results(staging, results.frame_ids, results.annos)
        _make_readable(staging)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def nuscenes_evaluation_result(gt: NuScenesGT, results: NuScenesResults,
                               config: NuScenesEvalConfig | None = None,
                               by_distance: bool = True,
                               bands: Sequence[tuple[float, float]] = DISTANCE_BANDS) -> EvaluationResult:
    """Evaluate nuScenes ``results`` against ``gt`` into an :class:`EvaluationResult`
    (what both :class:`NuScenesDetectionEvaluator` and ``distill3d evaluate`` do).

    Raises:
        DataError: results that do not cover exactly the samples of ``gt`` (see
            :func:`~distill3d.evaluation.nuscenes.evaluate_nuscenes`).
    """
    metrics = evaluate_nuscenes(gt, results, config)
    band_metrics = evaluate_nuscenes_by_distance(gt, results, config, bands) if by_distance else {}
    return EvaluationResult(
        suite="nuscenes",
        metrics=metrics.to_summary_dict(),
        headline=nuscenes_headline(metrics),
        table=metrics.format_table(),
        by_distance={band: m.to_summary_dict() for band, m in band_metrics.items()},
        distance_headline={band: nuscenes_headline(m) for band, m in band_metrics.items()},
        results=results,
    )


def kitti_evaluation_result(gt_annos: Sequence[Mapping[str, Any]], dt_annos: Sequence[Mapping[str, Any]],
                            classes: Sequence[str] = KITTI_EVAL_CLASSES, by_distance: bool = True,
                            frame_ids: Sequence[str] | None = None) -> EvaluationResult:
    """Evaluate KITTI detection annos against ``gt_annos`` into an :class:`EvaluationResult`
    (what both :class:`KittiDetectionEvaluator` and ``distill3d evaluate`` do).

    Args:
        gt_annos: one dict per frame (:func:`~distill3d.evaluation.kitti.load_kitti_gt`).
        dt_annos: one dict per frame, same order.
        classes: the evaluated classes (a selection of Car, Pedestrian, Cyclist).
        by_distance: also evaluate the bands 0-20, 20-30 and 30+ m.
        frame_ids: the frames (default: each GT anno's ``frame_id``).

    Raises:
        DataError: bad annos (naming frame, row and field).
    """
    ids = tuple(frame_ids) if frame_ids is not None else tuple(
        str(a.get("frame_id", f"{i:06d}")) for i, a in enumerate(gt_annos))
    result = evaluate_kitti(gt_annos, dt_annos, tuple(classes), frame_ids=ids)
    bands = (evaluate_kitti_by_distance(gt_annos, dt_annos, tuple(classes), frame_ids=ids)
             if by_distance else {})
    return EvaluationResult(
        suite="kitti",
        metrics=result,
        headline=kitti_headline(result),
        table=format_kitti_table(result),
        by_distance=dict(bands),
        distance_headline={band: kitti_headline(r) for band, r in bands.items()},
        results=_KittiResults(ids, tuple(dict(a) for a in dt_annos)),
    )


# --------------------------------------------------------------------------------------
# evaluators
# --------------------------------------------------------------------------------------


def _field(detections: Any, name: str, token: str) -> Any:
    try:
        return getattr(detections, name)
    except AttributeError:
        raise DataError(f"sample {token}: detections have no field {name!r} (expected "
                        f"distill3d.structures.Detections)") from None


#: The ``Sample.extras`` entries the evaluators read (KITTI calibration and image size).
_EVALUATED_EXTRAS = ("calib", "image_size")


def _cpu_copy(value: Any) -> Any:
    """A tensor detached, on the CPU, with its own storage (so that pickling it does not
    carry a whole batch); anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    return value


def sample_metadata(sample: Any) -> dict[str, Any]:
    """What the evaluators read from a sample besides its detections, as plain picklable
    data: ``{"lidar_to_ego", "ego_to_global", "bev_transform", "extras"}`` (CPU tensors;
    ``extras`` holds only the KITTI ``calib`` and ``image_size``, the latter also taken from
    an ``image_2`` camera view).

    ``evaluator.add_detections(sample.token, det, **sample_metadata(sample))`` gives what
    ``evaluator.add([sample], [det])`` gives, so that processes can send their detections
    to the evaluating one without their samples (points, images).
    """
    source = getattr(sample, "extras", None) or {}
    extras = {k: _cpu_copy(source[k]) for k in _EVALUATED_EXTRAS if k in source}
    if extras.get("image_size") is None:
        extras.pop("image_size", None)
        for view in getattr(sample, "cameras", ()):
            if view.name == "image_2" and min(view.original_size) > 0:
                extras["image_size"] = (int(view.original_size[0]), int(view.original_size[1]))
                break
    return {"lidar_to_ego": _cpu_copy(sample.lidar_to_ego), "ego_to_global": _cpu_copy(sample.ego_to_global),
            "bev_transform": _cpu_copy(sample.bev_transform), "extras": extras}


@dataclass(frozen=True)
class _SampleView:
    """The fields of a sample that :meth:`DetectionEvaluator.add_detections` is given."""

    token: str
    lidar_to_ego: Any
    ego_to_global: Any
    bev_transform: Any
    extras: Mapping[str, Any]
    class_names: tuple[str, ...] = ()
    cameras: tuple[Any, ...] = ()


class DetectionEvaluator(ABC):
    """Collects detections of our samples during a validation pass and evaluates them with
    one metric suite. Build one with :func:`build_evaluator`.

    Args:
        class_names: what detection labels index by default (``add`` may override it;
            default: each sample's ``class_names``).
        by_distance: :meth:`evaluate` also computes the distance bands.
        allow_missing: samples of the split never added count as samples without
            detections; by default :meth:`evaluate` refuses an incomplete split (as the
            official evaluations do).
    """

    #: ``"nuscenes"`` or ``"kitti"``.
    suite: ClassVar[str] = ""

    def __init__(self, class_names: Sequence[str] | None = None, by_distance: bool = True,
                 allow_missing: bool = False):
        self.class_names = tuple(class_names) if class_names is not None else None
        self.by_distance = bool(by_distance)
        self.allow_missing = bool(allow_missing)
        self._added: set[str] = set()
        self._split_tokens: frozenset[str] | None = None

    # ---- to implement --------------------------------------------------------------------

    @property
    @abstractmethod
    def sample_tokens(self) -> tuple[str, ...]:
        """The samples of the evaluated split, in split order."""

    @abstractmethod
    def _clear(self) -> None:
        """Drop the collected detections."""

    @abstractmethod
    def _add_one(self, sample: Any, boxes: np.ndarray, scores: np.ndarray, names: list[str]) -> None:
        """Add one sample's detections (original key LiDAR frame, float64, validated)."""

    @abstractmethod
    def _evaluate(self) -> EvaluationResult:
        """Evaluate what was added (coverage already checked)."""

    # ---- shared --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every detection added (call before each validation pass)."""
        self._clear()
        self._added = set()

    def __len__(self) -> int:
        """Samples added so far."""
        return len(self._added)

    def add(self, samples: Sequence[Any], detections: Sequence[Any],
            class_names: Sequence[str] | None = None) -> None:
        """Add the detections of a batch of samples.

        Args:
            samples: :class:`~distill3d.data.sample.Sample` s of the evaluated split
                (possibly augmented: ``bev_transform`` is undone).
            detections: one :class:`~distill3d.structures.Detections` per sample, in that
                sample's (augmented) key LiDAR frame.
            class_names: what ``detections.labels`` index (default: the evaluator's, else
                each sample's ``class_names``).

        Raises:
            ValueError: ``samples`` and ``detections`` differ in length.
            DataError: a sample not in the split or added twice, a detection with a NaN/inf
                box or score, a non-positive size, a label out of range, or a class the suite
                does not know; the message names the sample, the detection and the field.
        """
        samples, detections = list(samples), list(detections)
        if len(samples) != len(detections):
            raise ValueError(f"{len(samples)} samples but {len(detections)} detections")
        for sample, det in zip(samples, detections):
            names = class_names if class_names is not None else (self.class_names or sample.class_names)
            self._add_sample(sample, det, tuple(names))

    def add_detections(self, token: str, detections: Any, *, lidar_to_ego: Any = None,
                       ego_to_global: Any = None, bev_transform: Any = None,
                       extras: Mapping[str, Any] | None = None,
                       class_names: Sequence[str] | None = None) -> None:
        """Add one sample's detections given what the evaluator reads from the sample
        (:func:`sample_metadata`) instead of the sample itself: for detections gathered from
        other processes as plain data. ``add_detections(s.token, det, **sample_metadata(s))``
        is ``add([s], [det])``.

        Args:
            token: the sample token (KITTI: the frame id).
            detections: as for :meth:`add`, in the frame ``bev_transform`` maps to.
            lidar_to_ego, ego_to_global: the sample's ``(4, 4)`` poses (nuScenes needs them).
            bev_transform: ``(4, 4)`` original -> the detections' frame (default: the
                identity: detections in the original key LiDAR frame).
            extras: the sample's KITTI ``calib`` and ``image_size`` (``image_2`` width,
                height; default: read from the image file).
            class_names: what ``detections.labels`` index (default: the evaluator's).

        Raises:
            DataError: as :meth:`add`; nuScenes detections without the poses; no class names.
        """
        token = str(token)
        names = tuple(class_names) if class_names is not None else self.class_names
        if names is None:
            raise DataError(f"sample {token}: no class names for the detection labels (pass class_names "
                            f"or build the evaluator with them)")
        if self.suite == "nuscenes" and (lidar_to_ego is None or ego_to_global is None):
            raise DataError(f"sample {token}: nuScenes detections need the sample's lidar_to_ego and "
                            f"ego_to_global (the results are in the global frame)")
        eye = torch.eye(4, dtype=torch.float64)
        view = _SampleView(token=token,
                           lidar_to_ego=eye if lidar_to_ego is None else lidar_to_ego,
                           ego_to_global=eye if ego_to_global is None else ego_to_global,
                           bev_transform=eye if bev_transform is None else bev_transform,
                           extras=dict(extras or {}), class_names=names)
        self._add_sample(view, detections, names)

    def _add_sample(self, sample: Any, det: Any, class_names: tuple[str, ...]) -> None:
        token = str(sample.token)
        if self._split_tokens is None:
            self._split_tokens = frozenset(self.sample_tokens)
        if token not in self._split_tokens:
            raise DataError(f"sample {token} is not in the evaluated split "
                            f"({len(self.sample_tokens)} samples)")
        if token in self._added:
            raise DataError(f"sample {token}: detections were added twice")
        boxes = _as_float64(_field(det, "boxes", token))
        scores = _as_float64(_field(det, "scores", token)).reshape(-1)
        labels_raw = _field(det, "labels", token)
        labels = (labels_raw.detach().cpu().numpy() if isinstance(labels_raw, torch.Tensor)
                  else np.asarray(labels_raw)).reshape(-1)
        if boxes.ndim != 2 or boxes.shape[1] not in (7, 9):
            raise DataError(f"sample {token}: field 'boxes' must be (K, 9) (or (K, 7)), got "
                            f"{tuple(boxes.shape)}")
        k = boxes.shape[0]
        if scores.shape[0] != k or labels.shape[0] != k:
            raise DataError(f"sample {token}: {k} boxes but {scores.shape[0]} scores and "
                            f"{labels.shape[0]} labels")
        if boxes.shape[1] == 7:
            boxes = np.concatenate((boxes, np.full((k, 2), np.nan)), axis=1)
        if k and labels.dtype.kind not in "iu":
            raise DataError(f"sample {token}: field 'labels' must be integers, got {labels.dtype}")
        checks = (
            ("boxes", ~np.isfinite(boxes[:, :7]).all(axis=1), "NaN or inf in (x, y, z, l, w, h, yaw)"),
            ("boxes", ~(boxes[:, 3:6] > 0).all(axis=1), "sizes l, w, h must be > 0"),
            ("boxes", np.isinf(boxes[:, 7:9]).any(axis=1), "infinite velocity (use NaN for unknown)"),
            ("scores", ~np.isfinite(scores), "NaN or inf score"),
            ("labels", (labels < 0) | (labels >= len(class_names)),
             f"label out of range [0, {len(class_names)}) of classes {list(class_names)}"),
        )
        for name, bad, problem in checks:
            if k and bad.any():
                i = int(np.flatnonzero(bad)[0])
                value = {"boxes": boxes[i].tolist(), "scores": float(scores[i]),
                         "labels": int(labels[i])}[name]
                raise DataError(f"sample {token}: detection {i}: field {name!r} = {value}: {problem}")
        try:
            boxes = boxes_to_original_frame(boxes, sample.bev_transform)
        except ValueError as exc:
            raise DataError(f"sample {token}: field 'bev_transform': {exc}") from None
        self._add_one(sample, boxes, scores, [class_names[int(i)] for i in labels.tolist()])
        self._added.add(token)

    def missing_tokens(self) -> list[str]:
        """Samples of the split without detections added, in split order."""
        return [t for t in self.sample_tokens if t not in self._added]

    def evaluate(self) -> EvaluationResult:
        """The metrics of everything added since the last :meth:`reset`.

        Raises:
            DataError: samples of the split were never added (unless ``allow_missing``).
        """
        if not self.allow_missing:
            missing = self.missing_tokens()
            if missing:
                raise DataError(f"{len(missing)} of {len(self.sample_tokens)} samples of the "
                                f"evaluated split have no detections added, e.g. {missing[0]} "
                                f"(add an empty Detections for a sample without detections, "
                                f"or build the evaluator with allow_missing=True)")
        return self._evaluate()


class NuScenesDetectionEvaluator(DetectionEvaluator):
    """nuScenes ``detection_cvpr_2019`` metrics of our detections (see the module docstring).

    A sample with more detections than ``config.max_boxes_per_sample`` (500, the most the
    submission format allows) keeps its highest-scored ones, as detection heads do
    (mmdetection3d's ``max_num``); the results file holds exactly what was evaluated.

    Args:
        gt: the GT of the evaluated split (:func:`~distill3d.evaluation.nuscenes.load_nuscenes_gt`).
        config: default ``detection_cvpr_2019``.
        meta: the submission ``meta`` (default: LiDAR only).
        class_names, by_distance, allow_missing: see :class:`DetectionEvaluator`.
    """

    suite: ClassVar[str] = "nuscenes"

    def __init__(self, gt: NuScenesGT, config: NuScenesEvalConfig | None = None,
                 meta: Mapping[str, Any] | None = None, class_names: Sequence[str] | None = None,
                 by_distance: bool = True, allow_missing: bool = False):
        super().__init__(class_names, by_distance, allow_missing)
        self.gt = gt
        self.config = config or NuScenesEvalConfig()
        self._collector = NuScenesEvaluator(gt, self.config, meta=meta if meta is not None else _LIDAR_META)

    @property
    def sample_tokens(self) -> tuple[str, ...]:
        return self.gt.sample_tokens

    def _clear(self) -> None:
        self._collector.reset()

    def _add_one(self, sample: Any, boxes: np.ndarray, scores: np.ndarray, names: list[str]) -> None:
        known = set(self.config.class_names)
        bad = [i for i, n in enumerate(names) if n not in known]
        if bad:
            raise DataError(f"sample {sample.token}: detection {bad[0]}: class {names[bad[0]]!r} "
                            f"is not a nuScenes detection class ({', '.join(self.config.class_names)})")
        limit = int(self.config.max_boxes_per_sample)
        if len(names) > limit:   # the submission format allows at most this many per sample
            keep = np.sort(np.argsort(-scores, kind="stable")[:limit])
            boxes, scores, names = boxes[keep], scores[keep], [names[i] for i in keep.tolist()]
        self._collector.add(str(sample.token), boxes, scores, names, sample.lidar_to_ego,
                            sample.ego_to_global)

    def results(self) -> NuScenesResults:
        """The collected detections in the submission format (every sample of the split)."""
        return self._collector.results()

    def _evaluate(self) -> EvaluationResult:
        return nuscenes_evaluation_result(self.gt, self.results(), self.config, self.by_distance)


def _empty_kitti_anno(frame_id: str) -> dict[str, Any]:
    return {"name": np.zeros(0, dtype="<U10"), "truncated": np.zeros(0), "occluded": np.zeros(0, np.int64),
            "alpha": np.zeros(0), "bbox": np.zeros((0, 4)), "dimensions": np.zeros((0, 3)),
            "location": np.zeros((0, 3)), "rotation_y": np.zeros(0), "score": np.zeros(0),
            "frame_id": frame_id}


class KittiDetectionEvaluator(DetectionEvaluator):
    """KITTI AP of our detections (see the module docstring).

    Detections are converted with
    :func:`~distill3d.evaluation.kitti.lidar_detections_to_kitti_annos` using the sample's
    ``extras["calib"]`` and ``image_2`` size (``extras["image_size"]``, else the
    ``image_2`` camera's ``original_size``, else ``image_size_of(token)``); boxes whose 2D
    box falls outside the image are dropped, as mmdetection3d and OpenPCDet do.

    Args:
        gt_annos: one anno dict per frame of the split (:func:`~distill3d.evaluation.kitti.load_kitti_gt`),
            each with its ``frame_id``.
        classes: the evaluated classes (a selection of Car, Pedestrian, Cyclist).
        image_size_of: ``frame_id -> (width, height)`` for samples that do not carry it.
        class_names, by_distance, allow_missing: see :class:`DetectionEvaluator`.
    """

    suite: ClassVar[str] = "kitti"

    def __init__(self, gt_annos: Sequence[Mapping[str, Any]], classes: Sequence[str] = KITTI_EVAL_CLASSES,
                 image_size_of: Callable[[str], tuple[int, int]] | None = None,
                 class_names: Sequence[str] | None = None, by_distance: bool = True,
                 allow_missing: bool = False):
        super().__init__(class_names, by_distance, allow_missing)
        classes = tuple(classes)
        unknown = [c for c in classes if c not in KITTI_EVAL_CLASSES]
        if not classes or unknown:
            raise Distill3DError(f"KITTI evaluation: classes must be a selection of "
                                 f"{', '.join(KITTI_EVAL_CLASSES)}, got {list(classes)}")
        self.gt_annos = list(gt_annos)
        self.classes = classes
        self.image_size_of = image_size_of
        self._frame_ids = tuple(str(a.get("frame_id", f"{i:06d}")) for i, a in enumerate(self.gt_annos))
        self._annos: dict[str, dict[str, Any]] = {}

    @property
    def sample_tokens(self) -> tuple[str, ...]:
        return self._frame_ids

    def _clear(self) -> None:
        self._annos = {}

    def _image_size(self, sample: Any) -> tuple[int, int]:
        size = sample.extras.get("image_size")
        if size is not None:
            return int(size[0]), int(size[1])
        for view in getattr(sample, "cameras", ()):
            if view.name == "image_2" and min(view.original_size) > 0:
                return int(view.original_size[0]), int(view.original_size[1])
        if self.image_size_of is not None:
            return self.image_size_of(str(sample.token))
        raise DataError(f"sample {sample.token}: the image_2 size is unknown (no extras['image_size'], "
                        f"no image_2 camera, no image_size_of): it is needed for the 2D boxes")

    def _add_one(self, sample: Any, boxes: np.ndarray, scores: np.ndarray, names: list[str]) -> None:
        token = str(sample.token)
        calib = sample.extras.get("calib")
        if not isinstance(calib, KittiCalib):
            raise DataError(f"sample {token}: field 'extras[\"calib\"]' is missing (KITTI detections "
                            f"are converted to the camera frame with the frame's calibration)")
        allowed = [c for c in KITTI_LABEL_CLASSES if c != "DontCare"]
        bad = [i for i, n in enumerate(names) if n not in allowed]
        if bad:
            raise DataError(f"sample {token}: detection {bad[0]}: class {names[bad[0]]!r} is not a "
                            f"KITTI class ({', '.join(allowed)})")
        anno = lidar_detections_to_kitti_annos(boxes[:, :7], scores, np.asarray(names, dtype=str).reshape(-1),
                                               calib, self._image_size(sample))
        anno.pop("box_index", None)
        anno["frame_id"] = token
        self._annos[token] = anno

    def annos(self) -> list[dict[str, Any]]:
        """One detection anno dict per frame of the split (empty where none was added)."""
        return [self._annos.get(f, _empty_kitti_anno(f)) for f in self._frame_ids]

    def _evaluate(self) -> EvaluationResult:
        return kitti_evaluation_result(self.gt_annos, self.annos(), self.classes, self.by_distance,
                                       frame_ids=self._frame_ids)


# --------------------------------------------------------------------------------------
# build from a dataset
# --------------------------------------------------------------------------------------


def _kitti_classes(class_names: Iterable[str], where: str) -> tuple[str, ...]:
    names = set(class_names)
    classes = tuple(c for c in KITTI_EVAL_CLASSES if c in names)
    if not classes:
        raise Distill3DError(f"{where}: KITTI evaluation needs one of {', '.join(KITTI_EVAL_CLASSES)} "
                             f"among the dataset's classes {sorted(names)}")
    return classes


def _check_nuscenes_classes(class_names: Sequence[str], config: NuScenesEvalConfig, where: str) -> None:
    unknown = [c for c in class_names if c not in config.class_names]
    if unknown:
        raise Distill3DError(f"{where}: classes {unknown} are not nuScenes detection classes "
                             f"({', '.join(config.class_names)}); nuScenes metrics cannot score them")


def _image_size_reader(paths: Mapping[str, Path]) -> Callable[[str], tuple[int, int]]:
    """``frame_id -> (width, height)`` read from the image header (memoised per evaluator)."""
    sizes: dict[str, tuple[int, int]] = {}

    def image_size_of(frame_id: str) -> tuple[int, int]:
        if frame_id not in sizes:
            from PIL import Image

            path = paths.get(frame_id)
            if path is None:
                raise DataError(f"frame {frame_id}: no image_2 file known for it")
            try:
                with Image.open(path) as image:
                    sizes[frame_id] = (int(image.size[0]), int(image.size[1]))
            except FileNotFoundError:
                raise DataError(f"frame {frame_id}: image_2 file {path} not found (its size is "
                                f"needed for the 2D boxes)") from None
            except OSError as exc:
                raise DataError(f"frame {frame_id}: cannot read {path}: {exc}") from None
        return sizes[frame_id]

    return image_size_of


def _build_kitti(dataset: Any, by_distance: bool, allow_missing: bool) -> KittiDetectionEvaluator:
    index = getattr(dataset, "index", None)
    if index is not None and not getattr(index, "has_labels", True):
        raise Distill3DError(f"{dataset!r}: split {dataset.split!r} has no labels (testing/): "
                             f"write result files instead of evaluating")
    gt = load_kitti_gt(dataset.root, dataset.split)
    tokens = dataset.sample_tokens()
    paths = {t: Path(dataset.root) / dataset.frame_info(i).image for i, t in enumerate(tokens)}
    return KittiDetectionEvaluator(gt, _kitti_classes(dataset.class_names, repr(dataset)),
                                   _image_size_reader(paths), class_names=dataset.class_names,
                                   by_distance=by_distance, allow_missing=allow_missing)


def _build_nuscenes(dataset: Any, by_distance: bool, allow_missing: bool,
                    config: NuScenesEvalConfig | None) -> NuScenesDetectionEvaluator:
    config = config or NuScenesEvalConfig()
    where = f"nuScenes {dataset.root} ({dataset.version}, split {dataset.split})"
    _check_nuscenes_classes(dataset.class_names, config, where)
    if str(dataset.version).endswith("-test"):
        raise Distill3DError(f"{where}: a test version has no annotations to evaluate against")
    try:
        gt = load_nuscenes_gt(dataset.root, dataset.version, dataset.split)
    except ValueError as exc:
        if isinstance(exc, Distill3DError):
            raise
        raise Distill3DError(f"{where}: {exc}") from None
    return NuScenesDetectionEvaluator(gt, config, class_names=dataset.class_names,
                                      by_distance=by_distance, allow_missing=allow_missing)


# ---- info files ------------------------------------------------------------------------


def _arr(value: Any, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    return np.asarray(value, dtype=dtype).reshape(shape)


def _info_kitti_gt(dataset: Any) -> list[dict[str, Any]]:
    """GT anno dicts (``dimensions`` (l, h, w)) of a KITTI info dataset, from the entries'
    ``annos`` (mmdetection3d legacy, OpenPCDet) or ``instances`` (mmdetection3d v2)."""
    from distill3d.data.infos import InfoSchema

    entries = getattr(dataset, "_entries", None)
    if entries is None:
        raise Distill3DError(f"{dataset.info_path}: cannot read the info entries for evaluation")
    tokens = dataset.sample_tokens()
    gt = []
    for i, entry in enumerate(entries):
        where = f"{dataset.info_path}, entry {i} (frame {tokens[i]})"
        try:
            if dataset.schema is InfoSchema.MMDET3D_V2:
                anno = _v2_kitti_anno(entry.get("instances") or [], dataset.source_label_names)
            else:
                annos = entry.get("annos")
                if not isinstance(annos, Mapping):
                    raise DataError(f"{where}: no 'annos' (an info without labels cannot be evaluated)")
                n = int(np.asarray(annos["name"]).reshape(-1).shape[0])
                anno = {
                    "name": np.asarray(annos["name"]).astype(str).reshape(n),
                    "truncated": _arr(annos["truncated"], (n,)),
                    "occluded": _arr(annos["occluded"], (n,), np.int64),
                    "alpha": _arr(annos["alpha"], (n,)),
                    "bbox": _arr(annos["bbox"], (n, 4)),
                    "dimensions": _arr(annos["dimensions"], (n, 3)),
                    "location": _arr(annos["location"], (n, 3)),
                    "rotation_y": _arr(annos["rotation_y"], (n,)),
                }
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{where}: cannot read the KITTI annotations for evaluation "
                            f"({type(exc).__name__}: {exc})") from None
        anno["frame_id"] = tokens[i]
        gt.append(anno)
    return gt


def _v2_kitti_anno(instances: Sequence[Mapping[str, Any]], label_names: Mapping[int, str]) -> dict[str, Any]:
    """An mmdetection3d v2 KITTI ``instances`` list -> a GT anno dict (``bbox_3d`` is the
    camera box ``(x, y, z, l, h, w, ry)``, bottom centre; DontCare instances have label -1
    and keep only their 2D box)."""
    n = len(instances)
    names, bbox, box3d = [], np.zeros((n, 4)), np.full((n, 7), -1000.0)
    truncated, occluded, alpha = np.full(n, -1.0), np.full(n, -1, np.int64), np.full(n, -10.0)
    for i, inst in enumerate(instances):
        label = int(inst.get("bbox_label_3d", inst.get("bbox_label", -1)))
        name = label_names.get(label, "DontCare")
        names.append(name)
        bbox[i] = _arr(inst["bbox"], (4,))
        if name != "DontCare":
            box3d[i] = _arr(inst["bbox_3d"], (7,))
            truncated[i] = float(inst.get("truncated", 0.0))
            occluded[i] = int(inst.get("occluded", 0))
            alpha[i] = float(inst.get("alpha", -10.0))
    return {"name": np.asarray(names, dtype=str).reshape(n), "truncated": truncated,
            "occluded": occluded, "alpha": alpha, "bbox": bbox, "dimensions": box3d[:, 3:6],
            "location": box3d[:, :3], "rotation_y": box3d[:, 6]}


def _info_image_sizes(dataset: Any) -> Callable[[str], tuple[int, int]]:
    """``frame_id -> (width, height)`` of ``image_2`` for a KITTI info dataset: the info's
    ``image.image_shape`` (legacy, OpenPCDet: ``(H, W)``) or ``images.CAM2.width/height``
    (v2), else the image file of a loaded sample."""
    entries = getattr(dataset, "_entries", None) or []
    tokens = dataset.sample_tokens()
    position = {t: i for i, t in enumerate(tokens)}

    def image_size_of(frame_id: str) -> tuple[int, int]:
        i = position.get(frame_id)
        if i is None:
            raise DataError(f"{dataset.info_path}: frame {frame_id} is not in the info")
        entry = entries[i] if i < len(entries) else {}
        image = entry.get("image") if isinstance(entry, Mapping) else None
        if isinstance(image, Mapping) and image.get("image_shape") is not None:
            h, w = (int(v) for v in np.asarray(image["image_shape"]).reshape(-1)[:2])
            return w, h
        cam2 = (entry.get("images") or {}).get("CAM2") if isinstance(entry, Mapping) else None
        if isinstance(cam2, Mapping) and cam2.get("width") and cam2.get("height"):
            return int(cam2["width"]), int(cam2["height"])
        sample = dataset.load_sample(i)
        for view in sample.cameras:
            if view.name == "image_2" and min(view.original_size) > 0:
                return int(view.original_size[0]), int(view.original_size[1])
        raise DataError(f"{dataset.info_path}, frame {frame_id}: the image_2 size is unknown (the "
                        f"info has no image_shape; load the dataset with load_cameras=True)")

    return image_size_of


def _info_nuscenes_gt(dataset: Any, root: Path | None) -> tuple[NuScenesGT, Path, str, str]:
    """The nuScenes GT of the split whose samples are exactly the info's."""
    from distill3d.data.nuscenes import split_scene_names

    meta = getattr(dataset, "_metainfo", {}) or {}
    base = Path(root) if root is not None else Path(dataset.data_root)
    version = str(meta.get("version", "")) or None
    if version is None:
        found = sorted(p.name for p in base.glob("v1.0-*") if (p / "sample.json").is_file())
        if len(found) != 1:
            raise Distill3DError(f"{dataset.info_path}: the info names no nuScenes version and "
                                 f"{base} holds {found or 'no'} table folders; nuScenes metrics "
                                 f"need the tables (pass nuscenes_root)")
        version = found[0]
    if not (base / version / "sample.json").is_file():
        raise Distill3DError(f"{dataset.info_path}: nuScenes metrics need the {version} tables "
                             f"(sample.json, sample_annotation.json, ...) under {base} (pass "
                             f"nuscenes_root=the dataroot)")
    tokens = set(dataset.sample_tokens())
    candidates = ["val", "train", "mini_val", "mini_train", "all"]
    for split in candidates:
        try:
            split_scene_names(version, split)
        except ValueError:
            continue
        gt = load_nuscenes_gt(base, version, split)
        if set(gt.sample_tokens) == tokens:
            return gt, base, version, split
    raise Distill3DError(f"{dataset.info_path}: its {len(tokens)} samples are not exactly one split "
                         f"of {base / version}; nuScenes metrics need a whole split (the devkit "
                         f"requires every sample of it)")


def _build_info(dataset: Any, by_distance: bool, allow_missing: bool,
                config: NuScenesEvalConfig | None, nuscenes_root: PathLike | None) -> DetectionEvaluator:
    kind = getattr(dataset, "dataset_kind", None)
    if kind == "kitti":
        gt = _info_kitti_gt(dataset)
        classes = _kitti_classes(dataset.class_names, str(dataset.info_path))
        return KittiDetectionEvaluator(gt, classes, _info_image_sizes(dataset), class_names=dataset.class_names,
                                       by_distance=by_distance, allow_missing=allow_missing)
    if kind == "nuscenes":
        config = config or NuScenesEvalConfig()
        _check_nuscenes_classes(dataset.class_names, config, str(dataset.info_path))
        gt, _, _, _ = _info_nuscenes_gt(dataset, Path(nuscenes_root) if nuscenes_root else None)
        return NuScenesDetectionEvaluator(gt, config, class_names=dataset.class_names,
                                          by_distance=by_distance, allow_missing=allow_missing)
    raise Distill3DError(f"{getattr(dataset, 'info_path', dataset)}: {kind or 'this'} info files have "
                         f"no official metric suite here (supported: KITTI and nuScenes infos)")


def build_evaluator(dataset: Any, *, by_distance: bool = True, allow_missing: bool = False,
                    config: NuScenesEvalConfig | None = None,
                    nuscenes_root: PathLike | None = None) -> DetectionEvaluator:
    """The evaluator of a dataset's split, the metric suite chosen from the dataset type.

    Args:
        dataset: a :class:`~distill3d.data.nuscenes.NuScenesDataset` (nuScenes metrics, GT
            from its tables), :class:`~distill3d.data.kitti.KittiDataset` (KITTI metrics, GT
            from its ``label_2`` files) or :class:`~distill3d.data.infos.InfoDataset` (KITTI
            infos: KITTI metrics from the info's annotations; nuScenes infos: nuScenes
            metrics when ``nuscenes_root`` (default: the info's ``data_root``) holds the
            tables and the info covers exactly one split).
        by_distance: :meth:`DetectionEvaluator.evaluate` also computes the distance bands.
        allow_missing: samples never added count as samples without detections (default:
            an error, as in the official evaluations).
        config: the nuScenes configuration (default ``detection_cvpr_2019``).
        nuscenes_root: the nuScenes dataroot of an info dataset.

    Raises:
        Distill3DError: a dataset type or split without an official suite (a test split,
            Lyft, classes the suite cannot score), or GT that cannot be read (a
            :class:`~distill3d.data.errors.DataError` naming the file).
    """
    from distill3d.data.infos import InfoDataset
    from distill3d.data.kitti import KittiDataset
    from distill3d.data.nuscenes import NuScenesDataset

    if isinstance(dataset, NuScenesDataset):
        return _build_nuscenes(dataset, by_distance, allow_missing, config)
    if isinstance(dataset, KittiDataset):
        return _build_kitti(dataset, by_distance, allow_missing)
    if isinstance(dataset, InfoDataset):
        return _build_info(dataset, by_distance, allow_missing, config, nuscenes_root)
    raise Distill3DError(f"no evaluator for {type(dataset).__name__}: supported datasets are "
                         f"NuScenesDataset, KittiDataset and InfoDataset (KITTI or nuScenes infos)")
