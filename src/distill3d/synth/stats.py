"""Dataset statistics of a nuScenes-layout folder, and nuScenes' own figures to compare with.

:func:`dataset_statistics` reads a written nuScenes-layout dataset (SynthDrive's, or any other
with the same 13 tables) straight from its JSON tables and LiDAR files -- no devkit -- and
measures what decides how hard the data is for a detector:

* LiDAR points per keyframe (``LIDAR_TOP`` key sample_data; a ``.pcd.bin`` holds 5 float32
  per point, so points = file size / 20 bytes);
* annotations per detection class (the ten nuScenes detection classes, categories mapped as
  the devkit's ``category_to_detection_name`` does) and their frequencies;
* per class, the share of boxes with fewer than 5 LiDAR points (``num_lidar_pts < 5``) and
  with none;
* points per object against distance: the median ``num_lidar_pts`` per class in horizontal
  distance bins 0-10, 10-20, 20-30, 30-40, 40-50, 50+ m from the ego (the distance between
  the box centre and the ego pose of the keyframe's LiDAR sample_data, which is the devkit
  evaluation's ``ego_dist``);
* objects per keyframe, the visibility-bin shares and the attribute counts.

:func:`format_statistics` renders the result as markdown tables, beside
:func:`nuscenes_reference_statistics` (published nuScenes figures with their sources, and
figures measured on real nuScenes v1.0-mini val annotation records).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill3d.synth.classes import CLASS_NAMES, NUSCENES_TRAIN_COUNTS

__all__ = [
    "DISTANCE_BINS",
    "DISTANCE_LABELS",
    "EVAL_CLASS_RANGE",
    "NEAR_RANGE",
    "POINT_BYTES",
    "category_to_detection_name",
    "dataset_statistics",
    "distance_bin",
    "format_statistics",
    "nuscenes_reference_statistics",
]

#: Bytes per point of a nuScenes ``.pcd.bin``: float32 x, y, z, intensity, ring.
POINT_BYTES = 20

#: Range (m, from the sensor origin) below which points count as "near". Real nuScenes files
#: hold thousands of points within 1 m of the sensor, where there is no real surface.
NEAR_RANGE = 3.0

#: Horizontal distance bins (metres from the ego), ``(lo, hi)`` with ``hi = inf`` for the last.
DISTANCE_BINS: tuple[tuple[float, float], ...] = (
    (0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 40.0), (40.0, 50.0), (50.0, math.inf),
)
DISTANCE_LABELS: tuple[str, ...] = ("0-10", "10-20", "20-30", "30-40", "40-50", "50+")

#: Per-class evaluation range (m) of the nuScenes detection benchmark (``class_range`` of the
#: devkit's ``detection_cvpr_2019`` config): boxes farther from the ego are not evaluated.
EVAL_CLASS_RANGE: Mapping[str, float] = {
    "car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0, "construction_vehicle": 50.0,
    "pedestrian": 40.0, "motorcycle": 40.0, "bicycle": 40.0,
    "traffic_cone": 30.0, "barrier": 30.0,
}

_LIDAR_CHANNEL = "LIDAR_TOP"

_CATEGORY_MAP: Mapping[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}


def category_to_detection_name(category: str) -> str | None:
    """nuScenes detection class of a category name (the devkit's mapping), ``None`` for the
    categories that are not part of the detection benchmark."""
    return _CATEGORY_MAP.get(category)


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------


def _load_table(folder: Path, name: str) -> list[dict[str, Any]]:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"nuScenes table {path} not found")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _summary(values: np.ndarray) -> dict[str, float | None]:
    """mean, median, p5, p95, min, max of a 1-D array (``None`` entries when it is empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {k: None for k in ("mean", "median", "p5", "p95", "min", "max")}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p5": float(np.percentile(v, 5)),
        "p95": float(np.percentile(v, 95)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _share(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if mask.size else None


def distance_bin(distance: np.ndarray) -> np.ndarray:
    """Index into :data:`DISTANCE_BINS` of each distance (m), ``(N,) int64``."""
    edges = np.array([hi for _, hi in DISTANCE_BINS[:-1]])
    return np.searchsorted(edges, np.asarray(distance, dtype=np.float64), side="right")


def dataset_statistics(dataroot: str | os.PathLike, version: str,
                       read_points: bool = True) -> dict[str, Any]:
    """Statistics of a nuScenes-layout dataset, from its tables and LiDAR files.

    Args:
        dataroot: the folder holding ``<version>/``, ``samples/`` and ``sweeps/``.
        version: the version folder, e.g. ``"v1.0-mini"``.
        read_points: also load every keyframe LiDAR file to count the points at least
            :data:`NEAR_RANGE` from the sensor (``points_per_keyframe_beyond_3m``); without
            it that entry is ``None`` and only file sizes are read.

    Returns:
        A JSON-serialisable dict:

        * ``version``, ``num_scenes``, ``num_keyframes``, ``num_annotations`` (boxes of the
          ten detection classes), ``num_other_annotations`` (other categories, left out of
          everything below);
        * ``points_per_keyframe``: ``{mean, median, p5, p95, min, max}`` over the keyframes'
          LIDAR_TOP files (file size / :data:`POINT_BYTES`);
        * ``points_per_keyframe_beyond_3m``: the same over the points at least
          :data:`NEAR_RANGE` (3 m) from the sensor (real nuScenes files also hold points
          within 1 m of the sensor, where there is no real surface);
        * ``objects_per_keyframe``: the same over the detection-class boxes per keyframe;
        * ``classes``: per detection class (all ten, in :data:`CLASS_NAMES` order)
          ``{count, frequency, lt5_share, zero_share, median_pts, eval_range_m,
          in_range_count, in_range_lt5_share, in_range_zero_share}``; frequencies sum to 1
          over the classes; shares are ``None`` for a class without boxes;
        * ``overall``: ``{lt5_share, zero_share, in_range_lt5_share, in_range_zero_share}``
          over all detection-class boxes;
        * ``distance_bins``: :data:`DISTANCE_LABELS`; ``distance_share``: share of the
          detection-class boxes in each distance bin;
        * ``points_vs_distance``: per class ``{"median": [...], "count": [...]}``, one entry
          per distance bin (median ``num_lidar_pts``; ``None`` for an empty bin);
        * ``visibility``: share of detection-class boxes per visibility level
          (``"v0-40"`` ...);
        * ``attributes``: number of detection-class boxes carrying each attribute name.

    Raises:
        FileNotFoundError: a table or a keyframe LiDAR file is missing.
    """
    root = Path(dataroot)
    folder = root / version
    scenes = _load_table(folder, "scene")
    samples = _load_table(folder, "sample")
    sample_data = _load_table(folder, "sample_data")
    annotations = _load_table(folder, "sample_annotation")
    instances = {r["token"]: r for r in _load_table(folder, "instance")}
    categories = {r["token"]: r["name"] for r in _load_table(folder, "category")}
    ego_poses = {r["token"]: r for r in _load_table(folder, "ego_pose")}
    sensors = {r["token"]: r for r in _load_table(folder, "sensor")}
    calibrated = {r["token"]: r for r in _load_table(folder, "calibrated_sensor")}
    visibility = {r["token"]: r["level"] for r in _load_table(folder, "visibility")}
    attributes = {r["token"]: r["name"] for r in _load_table(folder, "attribute")}

    # The key LIDAR_TOP sample_data of every sample: its file and its ego pose.
    lidar_key: dict[str, dict[str, Any]] = {}
    for sd in sample_data:
        if not sd.get("is_key_frame", False):
            continue
        sensor = sensors[calibrated[sd["calibrated_sensor_token"]]["sensor_token"]]
        if sensor["channel"] == _LIDAR_CHANNEL:
            lidar_key[sd["sample_token"]] = sd
    sample_index = {s["token"]: i for i, s in enumerate(samples)}
    points = np.zeros(len(samples), dtype=np.int64)
    far = np.zeros(len(samples), dtype=np.int64)
    ego_xy = np.zeros((len(samples), 2), dtype=np.float64)
    for s in samples:
        i = sample_index[s["token"]]
        sd = lidar_key.get(s["token"])
        if sd is None:
            raise FileNotFoundError(f"sample {s['token']} has no key {_LIDAR_CHANNEL} sample_data")
        path = root / sd["filename"]
        points[i] = path.stat().st_size // POINT_BYTES
        if read_points:
            xyz = np.fromfile(path, dtype="<f4").reshape(-1, 5)[:, :3].astype(np.float64)
            far[i] = int(np.count_nonzero(np.einsum("ij,ij->i", xyz, xyz) >= NEAR_RANGE ** 2))
        ego_xy[i] = ego_poses[sd["ego_pose_token"]]["translation"][:2]

    # Annotations of the detection classes.
    cls_index = {name: k for k, name in enumerate(CLASS_NAMES)}
    ann_cls, ann_pts, ann_dist, ann_sample, ann_vis = [], [], [], [], []
    attr_counts: dict[str, int] = {name: 0 for name in attributes.values()}
    other = 0
    for ann in annotations:
        name = category_to_detection_name(categories[instances[ann["instance_token"]]
                                                      ["category_token"]])
        if name is None:
            other += 1
            continue
        i = sample_index[ann["sample_token"]]
        ann_cls.append(cls_index[name])
        ann_pts.append(int(ann["num_lidar_pts"]))
        ann_dist.append(math.hypot(ann["translation"][0] - ego_xy[i, 0],
                                   ann["translation"][1] - ego_xy[i, 1]))
        ann_sample.append(i)
        ann_vis.append(visibility.get(ann.get("visibility_token", ""), "unknown"))
        for tok in ann.get("attribute_tokens", []):
            attr_counts[attributes[tok]] = attr_counts.get(attributes[tok], 0) + 1
    cls = np.asarray(ann_cls, dtype=np.int64)
    pts = np.asarray(ann_pts, dtype=np.int64)
    dist = np.asarray(ann_dist, dtype=np.float64)
    per_sample = np.bincount(np.asarray(ann_sample, dtype=np.int64), minlength=len(samples))
    bins = distance_bin(dist)
    eval_range = np.array([EVAL_CLASS_RANGE[c] for c in CLASS_NAMES])
    in_range = dist <= eval_range[cls] if cls.size else np.zeros(0, dtype=bool)

    total = int(cls.size)
    classes: dict[str, dict[str, Any]] = {}
    vs_dist: dict[str, dict[str, list]] = {}
    for k, name in enumerate(CLASS_NAMES):
        m = cls == k
        mr = m & in_range
        classes[name] = {
            "count": int(m.sum()),
            "frequency": float(m.sum() / total) if total else 0.0,
            "lt5_share": _share(pts[m] < 5),
            "zero_share": _share(pts[m] == 0),
            "median_pts": float(np.median(pts[m])) if m.any() else None,
            "eval_range_m": float(EVAL_CLASS_RANGE[name]),
            "in_range_count": int(mr.sum()),
            "in_range_lt5_share": _share(pts[mr] < 5),
            "in_range_zero_share": _share(pts[mr] == 0),
        }
        medians: list[float | None] = []
        counts: list[int] = []
        for b in range(len(DISTANCE_BINS)):
            mb = m & (bins == b)
            counts.append(int(mb.sum()))
            medians.append(float(np.median(pts[mb])) if mb.any() else None)
        vs_dist[name] = {"median": medians, "count": counts}

    levels = sorted(set(visibility.values()) | set(ann_vis), key=_visibility_sort_key)
    vis_share = {lv: (sum(1 for v in ann_vis if v == lv) / total if total else 0.0)
                 for lv in levels}
    return {
        "version": version,
        "num_scenes": len(scenes),
        "num_keyframes": len(samples),
        "num_annotations": total,
        "num_other_annotations": other,
        "points_per_keyframe": _summary(points),
        "points_per_keyframe_beyond_3m": _summary(far) if read_points else None,
        "objects_per_keyframe": _summary(per_sample),
        "classes": classes,
        "overall": {
            "lt5_share": _share(pts < 5),
            "zero_share": _share(pts == 0),
            "in_range_lt5_share": _share(pts[in_range] < 5),
            "in_range_zero_share": _share(pts[in_range] == 0),
        },
        "distance_bins": list(DISTANCE_LABELS),
        "distance_share": [float(np.mean(bins == b)) if total else 0.0
                           for b in range(len(DISTANCE_BINS))],
        "points_vs_distance": vs_dist,
        "visibility": vis_share,
        "attributes": attr_counts,
    }


def _visibility_sort_key(level: str) -> tuple[int, str]:
    try:
        return (int(level.split("-")[0].lstrip("v")), level)
    except ValueError:
        return (10_000, level)


# --------------------------------------------------------------------------------------
# nuScenes reference figures
# --------------------------------------------------------------------------------------


# Measured by us (not published) on real nuScenes annotation records: the 81 keyframes of
# v1.0-mini *val* (scene-0103, Boston; scene-0916, Singapore), read from the legacy mmdet3d
# info file nuscenes_infos_val.pkl of github.com/xiaoxiao0725/fastbev21 (commit 1718ae5f,
# data/nuscenes/; a copy sits in the project's shared real-data folder). Its gt_names,
# num_lidar_pts and gt_boxes are the devkit's sample_annotation fields (boxes moved to the
# LiDAR frame; we add lidar2ego_translation to get the ego distance). Detection classes only;
# two scenes are a small sample (no trailer, construction vehicle or barrier at all), so these
# are indicative, not dataset-wide figures. 4,441 boxes.
_MINI_VAL_KEYFRAMES = 81
_MINI_VAL_BOXES = 4441
_MINI_VAL_OBJECTS_PER_KEYFRAME = {"mean": 54.8, "median": 56.0}
_MINI_VAL_OVERALL = {"lt5_share": 0.461, "zero_share": 0.163,
                     # boxes within the class's evaluation range (3,785 boxes)
                     "in_range_lt5_share": 0.374, "in_range_zero_share": 0.117}
# share of the boxes per distance bin (0-10, ..., 50+ m)
_MINI_VAL_DISTANCE_SHARE = [0.079, 0.257, 0.279, 0.169, 0.102, 0.114]
_MINI_VAL_CLASSES: Mapping[str, dict[str, Any]] = {
    # count; share < 5 points; share 0 points; the same within the eval range; median
    # num_lidar_pts per distance bin (0-10, 10-20, 20-30, 30-40, 40-50, 50+ m; None: no box)
    "car": {"count": 2568, "lt5_share": 0.458, "zero_share": 0.225,
            "in_range_lt5_share": 0.380, "in_range_zero_share": 0.166,
            "median_by_distance": [470, 50, 9, 3, 1, 0]},
    "truck": {"count": 124, "lt5_share": 0.153, "zero_share": 0.016,
              "in_range_lt5_share": 0.032, "in_range_zero_share": 0.0,
              "median_by_distance": [945, 334, 56, 33, 16, 3]},
    "bus": {"count": 41, "lt5_share": 0.024, "zero_share": 0.0,
            "in_range_lt5_share": 0.0, "in_range_zero_share": 0.0,
            "median_by_distance": [None, 340, 224, 80, 45, 23]},
    "pedestrian": {"count": 1358, "lt5_share": 0.495, "zero_share": 0.077,
                   "in_range_lt5_share": 0.385, "in_range_zero_share": 0.044,
                   "median_by_distance": [46, 11, 4, 3, 2, 1]},
    "motorcycle": {"count": 259, "lt5_share": 0.479, "zero_share": 0.104,
                   "in_range_lt5_share": 0.397, "in_range_zero_share": 0.049,
                   "median_by_distance": [54, 15, 4, 2, 1, 0]},
    "bicycle": {"count": 52, "lt5_share": 0.558, "zero_share": 0.173,
                "in_range_lt5_share": 0.477, "in_range_zero_share": 0.205,
                "median_by_distance": [24, 19, 2, 2, 3, 2]},
    "traffic_cone": {"count": 39, "lt5_share": 0.692, "zero_share": 0.103,
                     "in_range_lt5_share": 0.676, "in_range_zero_share": 0.108,
                     "median_by_distance": [9, 1, 1, 1, None, None]},
}


def nuscenes_reference_statistics() -> dict[str, Any]:
    """nuScenes figures to compare SynthDrive with, each with its source.

    Returns a dict:

    * ``points_per_keyframe``: about 34,000 LIDAR_TOP points per keyframe (HDL-32E;
      "~34k points/frame" in NVIDIA's NCore nuScenes conversion documentation), and
      ``points_per_keyframe_example``: 34,688, the LIDAR_TOP file of v1.0-mini scene-0061's
      first keyframe (sample ``ca9a282c9e77460f8360f564131a8af5``, mmdetection3d's demo data),
      and ``points_per_keyframe_example_beyond_3m``: 26,162 of them at least 3 m from the
      sensor (measured by us; the file holds exactly 32 x 1084 points, 8,029 of them within
      1 m, where there is no real surface: presumably no-return placeholders and returns
      from the car itself; the devkit's multi-sweep loader drops them with
      ``remove_close``);
    * ``class_counts_train`` and ``class_frequencies``: annotations per detection class in
      the train split (CBGS paper, Table 1) and their shares;
    * ``eval_class_range_m``: the detection benchmark's evaluation range per class;
    * ``mini_val``: figures *measured by us* on the real annotation records of the 81
      v1.0-mini val keyframes (share of boxes with < 5 and with 0 LiDAR points, per class
      and overall; median points per box per distance bin; boxes per keyframe). Two scenes
      only: indicative.
    * ``sources``: where each figure comes from.

    Nothing here is estimated: figures we could not source (e.g. dataset-wide shares of
    sparse boxes) are absent.
    """
    total = float(sum(NUSCENES_TRAIN_COUNTS.values()))
    return {
        "points_per_keyframe": 34_000,
        "points_per_keyframe_example": 34_688,
        "points_per_keyframe_example_beyond_3m": 26_162,
        "class_counts_train": dict(NUSCENES_TRAIN_COUNTS),
        "class_frequencies": {k: v / total for k, v in NUSCENES_TRAIN_COUNTS.items()},
        "eval_class_range_m": dict(EVAL_CLASS_RANGE),
        "mini_val": {
            "num_keyframes": _MINI_VAL_KEYFRAMES,
            "num_annotations": _MINI_VAL_BOXES,
            "objects_per_keyframe": dict(_MINI_VAL_OBJECTS_PER_KEYFRAME),
            "overall": dict(_MINI_VAL_OVERALL),
            "distance_share": list(_MINI_VAL_DISTANCE_SHARE),
            "classes": {k: dict(v) for k, v in _MINI_VAL_CLASSES.items()},
            "distance_bins": list(DISTANCE_LABELS),
        },
        "sources": {
            "points_per_keyframe": "NVIDIA NCore docs, nuScenes conversion: 'Velodyne HDL-32E, "
                                   "32 layers, ~34k points/frame'",
            "points_per_keyframe_example": "v1.0-mini scene-0061 first keyframe LIDAR_TOP "
                                           "(open-mmlab/mmdetection3d demo/data/nuscenes)",
            "points_per_keyframe_example_beyond_3m": "measured by us on that file: 8,526 of "
                                                     "its points lie within 3 m of the sensor "
                                                     "(8,029 within 1 m)",
            "class_counts_train": "Zhu et al., Class-balanced Grouping and Sampling for Point "
                                  "Cloud 3D Object Detection (CBGS), arXiv:1908.09492, Table 1",
            "eval_class_range_m": "nuscenes-devkit, eval/detection/configs/"
                                  "detection_cvpr_2019.json, class_range",
            "mini_val": "measured by us on v1.0-mini val annotation records (81 keyframes, "
                        "scene-0103 and scene-0916; legacy mmdet3d infos of "
                        "xiaoxiao0725/fastbev21@1718ae5f)",
        },
    }


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f} %"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def format_statistics(stats: Mapping[str, Any], with_reference: bool = True) -> str:
    """Markdown tables of :func:`dataset_statistics` output, with nuScenes' figures
    (:func:`nuscenes_reference_statistics`) beside ours when ``with_reference``.

    Tables: summary (points and objects per keyframe, sparse-box shares), per-class
    frequencies and sparse-box shares, median points per object against distance, and the
    visibility-bin shares.
    """
    ref = nuscenes_reference_statistics() if with_reference else None
    mini = ref["mini_val"] if ref else None
    lines: list[str] = []
    ppk = stats["points_per_keyframe"]
    opk = stats["objects_per_keyframe"]
    ov = stats["overall"]

    lines.append(f"**{stats['version']}**: {stats['num_scenes']} scenes, "
                 f"{stats['num_keyframes']} keyframes, {stats['num_annotations']:,} boxes of "
                 f"the 10 detection classes"
                 + (f" ({stats['num_other_annotations']:,} others)"
                    if stats.get("num_other_annotations") else "") + ".")
    lines.append("")
    if ref:
        lines.append("| quantity | ours | nuScenes |")
        lines.append("|---|---|---|")
    else:
        lines.append("| quantity | ours |")
        lines.append("|---|---|")

    def row(label: str, ours: str, theirs: str = "-") -> None:
        lines.append(f"| {label} | {ours} |" + (f" {theirs} |" if ref else ""))

    row("LiDAR points per keyframe, mean", _num(ppk["mean"]),
        f"~{ref['points_per_keyframe']:,} (one real keyframe: "
        f"{ref['points_per_keyframe_example']:,})" if ref else "-")
    row("LiDAR points per keyframe, median [p5, p95]",
        f"{_num(ppk['median'])} [{_num(ppk['p5'])}, {_num(ppk['p95'])}]")
    far = stats.get("points_per_keyframe_beyond_3m")
    if far:
        row("LiDAR points per keyframe at least 3 m from the sensor, mean",
            _num(far["mean"]),
            f"{ref['points_per_keyframe_example_beyond_3m']:,} (the same real keyframe)"
            if ref else "-")
    row("boxes per keyframe, mean / median",
        f"{_num(opk['mean'], 1)} / {_num(opk['median'])}",
        f"{mini['objects_per_keyframe']['mean']:.1f} / "
        f"{mini['objects_per_keyframe']['median']:.0f} (mini val)" if mini else "-")
    row("boxes with < 5 LiDAR points", _pct(ov["lt5_share"]),
        f"{_pct(mini['overall']['lt5_share'])} (mini val)" if mini else "-")
    row("boxes with 0 LiDAR points", _pct(ov["zero_share"]),
        f"{_pct(mini['overall']['zero_share'])} (mini val)" if mini else "-")
    row("boxes with < 5 points, within the eval range", _pct(ov["in_range_lt5_share"]),
        f"{_pct(mini['overall']['in_range_lt5_share'])} (mini val)" if mini else "-")
    row("boxes with 0 points, within the eval range", _pct(ov["in_range_zero_share"]),
        f"{_pct(mini['overall']['in_range_zero_share'])} (mini val)" if mini else "-")
    if "distance_share" in stats:
        ours_d = " / ".join(f"{100 * v:.0f}" for v in stats["distance_share"])
        theirs_d = (" / ".join(f"{100 * v:.0f}" for v in mini["distance_share"])
                    + " (mini val)") if mini else "-"
        row("boxes per distance bin " + "/".join(stats["distance_bins"]) + " m, %",
            ours_d, theirs_d)
    lines.append("")

    # Per-class frequencies.
    if ref:
        lines.append("| class | boxes | frequency | nuScenes train frequency (CBGS) |")
        lines.append("|---|---:|---:|---:|")
    else:
        lines.append("| class | boxes | frequency |")
        lines.append("|---|---:|---:|")
    for name in CLASS_NAMES:
        c = stats["classes"][name]
        lines.append(f"| {name} | {c['count']:,} | {_pct(c['frequency'])} |"
                     + (f" {_pct(ref['class_frequencies'][name])} |" if ref else ""))
    lines.append("")

    # Per-class sparse boxes.
    lines.append("Share of boxes with fewer than 5 / with 0 LiDAR points, all boxes and within "
                 "the class's evaluation range"
                 + ("; ours, then nuScenes mini val (its box count in brackets)." if ref
                    else "."))
    lines.append("")
    if ref:
        lines.append("| class | < 5 pts | < 5 pts, nuScenes | 0 pts | 0 pts, nuScenes "
                     "| range (m) | < 5 pts in range | < 5 pts in range, nuScenes |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    else:
        lines.append("| class | < 5 pts | 0 pts | range (m) | < 5 pts in range |")
        lines.append("|---|---:|---:|---:|---:|")
    for name in CLASS_NAMES:
        c = stats["classes"][name]
        if ref:
            mc = mini["classes"].get(name)
            theirs = f"{_pct(mc['lt5_share'])} ({mc['count']:,})" if mc else "-"
            lines.append(
                f"| {name} | {_pct(c['lt5_share'])} | {theirs} "
                f"| {_pct(c['zero_share'])} | {_pct(mc['zero_share']) if mc else '-'} "
                f"| {c['eval_range_m']:.0f} | {_pct(c['in_range_lt5_share'])} "
                f"| {_pct(mc['in_range_lt5_share']) if mc else '-'} |")
        else:
            lines.append(f"| {name} | {_pct(c['lt5_share'])} | {_pct(c['zero_share'])} "
                         f"| {c['eval_range_m']:.0f} | {_pct(c['in_range_lt5_share'])} |")
    lines.append("")

    # Points vs distance.
    labels = stats["distance_bins"]
    lines.append("Median LiDAR points per box by distance from the ego (m); "
                 + ("ours / nuScenes mini val; " if ref else "")
                 + "box counts of ours in brackets.")
    lines.append("")
    lines.append("| class | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for name in CLASS_NAMES:
        d = stats["points_vs_distance"][name]
        mc = mini["classes"].get(name) if mini else None
        cells = []
        for b in range(len(labels)):
            ours = _num(d["median"][b])
            cell = f"{ours} ({d['count'][b]})"
            if mini:
                theirs = mc["median_by_distance"][b] if mc else None
                cell = f"{ours} / {_num(theirs)} ({d['count'][b]})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")

    # Visibility.
    vis = stats["visibility"]
    lines.append("| visibility (share of the box visible in the six cameras) | "
                 + " | ".join(vis) + " |")
    lines.append("|---|" + "---:|" * len(vis))
    lines.append("| share of boxes | " + " | ".join(_pct(v) for v in vis.values()) + " |")
    return "\n".join(lines) + "\n"
