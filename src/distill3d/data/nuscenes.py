"""nuScenes (and Lyft Level 5) reader: JSON tables -> cached index -> :class:`Sample`.

The official ``nuscenes-devkit`` is **not** used: the relational tables of
``<root>/<version>/*.json`` are read directly by :class:`NuScenesTables`, turned once into a
compact per-sample index by :func:`build_nuscenes_index` (cached beside the data with
:func:`~distill3d.data.index_cache.load_or_build_index`), and :class:`NuScenesDataset` loads
samples from that index alone, so loader workers never parse the tables.

Frames (see ``docs/conventions.md``): everything a :class:`Sample` holds is in the **key
LIDAR_TOP frame** of the sample (x right, y forward, z up, roughly). Poses in the index are
``(4, 4)`` float64 matrices acting on column vectors: ``lidar_to_ego`` / ``camera_to_ego``
from ``calibrated_sensor`` and ``ego_to_global`` from the ``ego_pose`` record **of that
sample_data** (i.e. at the sensor's own timestamp).

What the reader reproduces (and from where):

* GT boxes: the devkit's ``NuScenes.get_sample_data`` (global -> ego at the LiDAR
  timestamp -> LiDAR) with ``quaternion_yaw``, through
  :func:`~distill3d.geometry.convert.nuscenes_global_to_lidar_boxes`; velocity is the
  devkit's ``NuScenes.box_velocity`` (centred difference over the neighbouring annotations
  of the instance, ``max_time_diff = 1.5`` s, doubled for a centred difference, NaN with no
  neighbour or a too large gap), the full 3-D global velocity rotated into the LiDAR frame as
  the devkit's ``Box.rotate`` does (mmdetection3d drops ``vz`` *before* rotating; the two
  differ by ``vz`` times the sensor tilt, well below 1 cm/s on nuScenes).
* Class mapping: the devkit's ``category_to_detection_name``
  (:data:`NUSCENES_CATEGORY_TO_DETECTION`).
* Sweeps: mmdetection3d's converter and ``LoadPointsFromMultiSweeps``: the previous LiDAR
  sample_data of the channel (sweeps *and* earlier keyframes, following ``prev``), each
  mapped sweep LiDAR -> ego(sweep time) -> global -> ego(key time) -> key LiDAR, with the
  points within 1 m of the sensor (``|x| < 1 and |y| < 1`` in the sweep's own frame,
  mmdetection3d's ``_remove_close``) removed, and ``time_lag = t_key - t_sweep`` in seconds.
* Cameras: mmdetection3d's ``lidar2cam``: key LiDAR -> ego(key) -> global -> ego(camera
  time) -> camera.

Lyft Level 5 uses the same schema (``v1.01-train``): its 9 category names are detection
names already; by default they map to themselves (:data:`LYFT_CATEGORY_TO_DETECTION`, chosen
automatically when every category of the table is a Lyft name) and any other mapping can be
passed as ``category_map``. Lyft records carry float timestamps (rounded to integer
microseconds here), ``num_lidar_pts = -1`` (unknown, so ``filter_empty`` keeps them) and an
empty ``visibility_token``.

Robustness: a missing or invalid table file, a record without a required field, or a
*structural* reference to a missing record (``sample.scene_token``,
``sample_data.{sample,ego_pose,calibrated_sensor}_token``, ``calibrated_sensor.sensor_token``,
``sample_annotation.{sample,instance,attribute,visibility}_token(s)``,
``instance.category_token``) raise :class:`~distill3d.data.errors.DataError` naming the table,
field and token. *Chain* links (``prev``/``next``, ``first_/last_sample_token``,
``first_/last_annotation_token``) that point outside the tables are treated as the end of the
chain (trimmed subsets such as mmdetection3d's Lyft test tables have them) and counted in
:attr:`NuScenesTables.dangling_links`. Test versions (``*-test``) may lack
``sample_annotation.json`` and ``instance.json`` (then there is no GT). ``log.json`` and
``map.json`` are not read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from distill3d.data.dataset import DetectionDataset, SampleTransform
from distill3d.data.errors import DataError
from distill3d.data.index_cache import (
    IndexKey,
    fingerprint_files,
    load_or_build_index,
)
from distill3d.data.sample import BASE_POINT_FEATURES, CameraView, Sample
from distill3d.geometry.convert import nuscenes_global_to_lidar_boxes
from distill3d.geometry.transforms import quaternion_to_matrix
from distill3d.synth import splits as _splits

__all__ = [
    "INDEX_SCHEMA_VERSION",
    "LYFT_CATEGORY_TO_DETECTION",
    "LYFT_CLASSES",
    "NUSCENES_CAMERAS",
    "NUSCENES_CATEGORY_TO_DETECTION",
    "NUSCENES_DETECTION_CLASSES",
    "NUSCENES_TABLES",
    "NuScenesDataset",
    "NuScenesTables",
    "build_nuscenes_index",
    "category_to_detection_name",
    "default_category_map",
    "lidar_to_camera_matrix",
    "read_nuscenes_points",
    "split_scene_names",
    "sweep_to_key_matrix",
]

PathLike = str | os.PathLike[str]

#: The 10 nuScenes detection classes in the devkit's order (``DETECTION_NAMES``; also the
#: order of :data:`distill3d.synth.classes.CLASS_NAMES`).
NUSCENES_DETECTION_CLASSES: tuple[str, ...] = (
    "car", "truck", "bus", "trailer", "construction_vehicle",
    "pedestrian", "motorcycle", "bicycle", "traffic_cone", "barrier",
)

#: The 23 nuScenes category names -> detection class (``None``: not a detection class), as
#: the devkit's ``nuscenes.eval.detection.utils.category_to_detection_name``. Pedestrians do
#: not include personal mobility, strollers and wheelchairs.
NUSCENES_CATEGORY_TO_DETECTION: Mapping[str, str | None] = MappingProxyType({
    "animal": None,
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.personal_mobility": None,
    "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.stroller": None,
    "human.pedestrian.wheelchair": None,
    "movable_object.barrier": "barrier",
    "movable_object.debris": None,
    "movable_object.pushable_pullable": None,
    "movable_object.trafficcone": "traffic_cone",
    "static_object.bicycle_rack": None,
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.emergency.ambulance": None,
    "vehicle.emergency.police": None,
    "vehicle.motorcycle": "motorcycle",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
})

#: Lyft Level 5 classes (mmdetection3d's ``LyftDataset.METAINFO['classes']`` order); Lyft's
#: category names are these names.
LYFT_CLASSES: tuple[str, ...] = (
    "car", "truck", "bus", "emergency_vehicle", "other_vehicle",
    "motorcycle", "bicycle", "pedestrian", "animal",
)

#: Lyft category name -> detection name (identity).
LYFT_CATEGORY_TO_DETECTION: Mapping[str, str | None] = MappingProxyType({c: c for c in LYFT_CLASSES})

#: The six nuScenes cameras, in mmdetection3d's order.
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
    "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)

#: The 13 tables of a nuScenes version folder.
NUSCENES_TABLES: tuple[str, ...] = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
    "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)

#: Version of the index layout below; bump when it changes (old caches are then rebuilt).
INDEX_SCHEMA_VERSION = 1

#: Default number of previous LiDAR sweeps recorded per sample in the index (mmdetection3d's
#: ``max_sweeps``); a dataset asking for more builds a separate index.
DEFAULT_MAX_SWEEPS = 10

#: Floats per point in a ``.pcd.bin``: x, y, z, intensity, ring index.
PCD_BIN_DIM = 5

#: Sweep points closer than this to the sweep's sensor in x and y are dropped (ego car).
SWEEP_EGO_RADIUS = 1.0

LIDAR_CHANNEL = "LIDAR_TOP"

# Tables read, and which of their fields are required (beyond "token").
_REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "scene": ("name",),
    "sample": ("timestamp", "scene_token"),
    "sample_data": ("sample_token", "ego_pose_token", "calibrated_sensor_token", "timestamp",
                    "is_key_frame", "filename"),
    "calibrated_sensor": ("sensor_token", "translation", "rotation"),
    "sensor": ("channel",),
    "ego_pose": ("translation", "rotation"),
    "category": ("name",),
    "attribute": ("name",),
    "visibility": (),
    "sample_annotation": ("sample_token", "instance_token", "translation", "size", "rotation"),
    "instance": ("category_token",),
})
_ANNOTATION_TABLES = ("sample_annotation", "instance")

# Structural references: (table, field, target table, is a list). Checked strictly.
_REFERENCES: tuple[tuple[str, str, str, bool], ...] = (
    ("sample", "scene_token", "scene", False),
    ("sample_data", "sample_token", "sample", False),
    ("sample_data", "ego_pose_token", "ego_pose", False),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor", False),
    ("calibrated_sensor", "sensor_token", "sensor", False),
    ("sample_annotation", "sample_token", "sample", False),
    ("sample_annotation", "instance_token", "instance", False),
    ("sample_annotation", "attribute_tokens", "attribute", True),
    ("sample_annotation", "visibility_token", "visibility", False),
    ("instance", "category_token", "category", False),
)

# Chain links: (table, field, target table). A dangling one ends the chain.
_LINKS: tuple[tuple[str, str, str], ...] = (
    ("sample", "prev", "sample"), ("sample", "next", "sample"),
    ("sample_data", "prev", "sample_data"), ("sample_data", "next", "sample_data"),
    ("sample_annotation", "prev", "sample_annotation"),
    ("sample_annotation", "next", "sample_annotation"),
    ("scene", "first_sample_token", "sample"), ("scene", "last_sample_token", "sample"),
    ("instance", "first_annotation_token", "sample_annotation"),
    ("instance", "last_annotation_token", "sample_annotation"),
)


# --------------------------------------------------------------------------------------
# class mapping and splits
# --------------------------------------------------------------------------------------


def category_to_detection_name(category_name: str) -> str | None:
    """The nuScenes detection class of a category name, or ``None`` (as the devkit)."""
    return NUSCENES_CATEGORY_TO_DETECTION.get(category_name)


def default_category_map(category_names: Iterable[str]) -> Mapping[str, str | None]:
    """The category map to use for a category table: Lyft's identity map when every name
    is a Lyft class name (and there is at least one), else the nuScenes map."""
    names = set(category_names)
    if names and names <= set(LYFT_CLASSES):
        return LYFT_CATEGORY_TO_DETECTION
    return NUSCENES_CATEGORY_TO_DETECTION


def split_scene_names(version: str, split: str) -> tuple[str, ...] | None:
    """The scene names of ``split`` for ``version``, or ``None`` for "every scene".

    * ``v1.0-mini``: ``train``/``mini_train`` and ``val``/``mini_val`` (devkit lists);
    * ``v1.0-trainval``: ``train``, ``val``;
    * ``v1.0-test``: ``test`` (every scene of the version is a test scene);
    * any version: ``all`` (every scene; the only choice for versions without official
      split lists, e.g. Lyft's ``v1.01-train``).

    Raises:
        ValueError: a split that ``version`` does not have (the message lists the valid ones).
    """
    table: dict[str, tuple[str, ...] | None] = {"all": None}
    if version == "v1.0-mini":
        table.update(train=_splits.MINI_TRAIN, mini_train=_splits.MINI_TRAIN,
                     val=_splits.MINI_VAL, mini_val=_splits.MINI_VAL)
    elif version == "v1.0-trainval":
        table.update(train=_splits.TRAIN, val=_splits.VAL)
    elif version.endswith("-test"):
        table["test"] = None
    if split not in table:
        raise ValueError(f"split {split!r} is not defined for version {version!r}; "
                         f"valid splits: {sorted(table)}")
    return table[split]


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _timestamp_us(value: Any) -> int:
    """Integer microseconds (Lyft stores float timestamps such as ``1556675185903083.2``)."""
    return round(float(value))


def _rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a ``(4, 4)`` rigid transform, ``[[R^T, -R^T t], [0, 1]]``."""
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


class NuScenesTables:
    """The relational tables of ``<root>/<version>/`` with token lookups.

    Reads the 11 tables the reader needs (``log.json`` and ``map.json`` are not read), checks
    required fields and structural references, and builds the reverse lookups the index
    needs. Use :meth:`get` for records; all other attributes are read-only views.

    Args:
        root: the nuScenes ``dataroot`` (the folder holding ``<version>/``, ``samples/``,
            ``sweeps/``).
        version: e.g. ``"v1.0-mini"``, ``"v1.0-trainval"``, ``"v1.0-test"``, ``"v1.01-train"``.
        require_annotations: whether ``sample_annotation.json`` and ``instance.json`` must
            exist; default: yes unless ``version`` ends with ``-test``.

    Raises:
        DataError: missing version folder or table file, invalid JSON, a table that is not
            a list of records, a record without a required field, a duplicate token, or a
            structural reference to a missing record (message: table, field, token).
    """

    def __init__(self, root: PathLike, version: str, require_annotations: bool | None = None):
        self.root = Path(root)
        self.version = version
        self.folder = self.root / version
        if not self.folder.is_dir():
            raise DataError(f"nuScenes tables folder not found: {self.folder} "
                            f"(root={self.root}, version={version!r})")
        if require_annotations is None:
            require_annotations = not version.endswith("-test")
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.files_read: list[Path] = []
        for name in _REQUIRED_FIELDS:
            path = self.folder / f"{name}.json"
            if name in _ANNOTATION_TABLES and not require_annotations and not path.exists():
                self._tables[name] = {}
                continue
            self._tables[name] = self._read_table(name, path)
            self.files_read.append(path)
        self._check_references()
        self.dangling_links: dict[str, int] = self._count_dangling_links()
        self._build_lookups()

    # ---- reading ------------------------------------------------------------------

    @staticmethod
    def _read_table(name: str, path: Path) -> dict[str, dict[str, Any]]:
        if not path.is_file():
            raise DataError(f"nuScenes table file missing: {path}")
        try:
            with path.open("rb") as handle:
                records = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                            f"{exc.msg}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot be read: {exc}") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
        by_token: dict[str, dict[str, Any]] = {}
        required = _REQUIRED_FIELDS[name]
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("token"), str):
                raise DataError(f"{path}: record {i} is not an object with a string 'token'")
            token = record["token"]
            for field_name in required:
                if field_name not in record:
                    raise DataError(f"{path}: record {token} has no field {field_name!r}")
            if token in by_token:
                raise DataError(f"{path}: token {token} appears twice")
            by_token[token] = record
        return by_token

    def _check_references(self) -> None:
        for table, field_name, target, is_list in _REFERENCES:
            targets = self._tables[target]
            for token, record in self._tables[table].items():
                value = record.get(field_name)
                values = (value or []) if is_list else [value]
                if is_list and not isinstance(value, (list, type(None))):
                    raise DataError(f"{self.folder / (table + '.json')}: record {token} field "
                                    f"{field_name!r} must be a list of tokens, got {value!r}")
                for ref in values:
                    if field_name == "visibility_token" and ref in (None, ""):
                        continue  # Lyft leaves it empty
                    if ref not in targets:
                        raise DataError(
                            f"{self.folder / (table + '.json')}: record {token} field "
                            f"{field_name!r} refers to token {ref!r}, which is not in "
                            f"{target}.json")

    def _count_dangling_links(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, field_name, target in _LINKS:
            targets = self._tables[target]
            n = sum(1 for r in self._tables[table].values()
                    if r.get(field_name) and r[field_name] not in targets)
            if n:
                counts[f"{table}.{field_name}"] = n
        return counts

    def _build_lookups(self) -> None:
        sensors = self._tables["sensor"]
        calibs = self._tables["calibrated_sensor"]
        self._channel_of_calib = {tok: sensors[c["sensor_token"]]["channel"] for tok, c in calibs.items()}
        self._modality_of_calib = {tok: sensors[c["sensor_token"]].get("modality", "")
                                   for tok, c in calibs.items()}
        keyframes: dict[str, dict[str, str]] = {}
        for tok, sd in self._tables["sample_data"].items():
            if sd["is_key_frame"]:
                channel = self._channel_of_calib[sd["calibrated_sensor_token"]]
                keyframes.setdefault(sd["sample_token"], {})[channel] = tok
        self._keyframes = keyframes
        anns: dict[str, list[str]] = {}
        for tok, ann in self._tables["sample_annotation"].items():
            anns.setdefault(ann["sample_token"], []).append(tok)
        self._anns_of_sample = anns
        samples_of_scene: dict[str, list[str]] = {}
        for tok, s in self._tables["sample"].items():
            samples_of_scene.setdefault(s["scene_token"], []).append(tok)
        for toks in samples_of_scene.values():
            toks.sort(key=lambda t: _timestamp_us(self._tables["sample"][t]["timestamp"]))
        self._samples_of_scene = samples_of_scene

    # ---- access -------------------------------------------------------------------

    def table(self, name: str) -> Mapping[str, dict[str, Any]]:
        """Token -> record of table ``name`` (read-only view)."""
        if name not in self._tables:
            raise KeyError(f"table {name!r} is not read; tables: {sorted(self._tables)}")
        return MappingProxyType(self._tables[name])

    def get(self, table: str, token: str) -> dict[str, Any]:
        """The record ``token`` of ``table``.

        Raises:
            DataError: no such record (names the table file and the token).
        """
        try:
            return self._tables[table][token]
        except KeyError:
            if table not in self._tables:
                raise KeyError(f"table {table!r} is not read; tables: {sorted(self._tables)}") from None
            raise DataError(f"{self.folder / (table + '.json')}: no record with token {token!r}") from None

    def link(self, table: str, record: Mapping[str, Any], field_name: str) -> dict[str, Any] | None:
        """The record a chain link (``prev``, ``next``, ...) points to, or ``None`` at the end
        of the chain (empty, absent, or pointing outside the table)."""
        token = record.get(field_name)
        if not token:
            return None
        return self._tables[table].get(token)

    def channel(self, sample_data: Mapping[str, Any]) -> str:
        """The sensor channel (``LIDAR_TOP``, ``CAM_FRONT``, ...) of a sample_data record."""
        return self._channel_of_calib[sample_data["calibrated_sensor_token"]]

    def modality(self, sample_data: Mapping[str, Any]) -> str:
        """The sensor modality (``lidar``, ``camera``, ``radar``; ``""`` if not recorded)."""
        return self._modality_of_calib[sample_data["calibrated_sensor_token"]]

    def keyframe_data(self, sample_token: str) -> dict[str, str]:
        """Channel -> key-frame sample_data token of a sample."""
        return dict(self._keyframes.get(sample_token, {}))

    def sample_annotations(self, sample_token: str) -> list[str]:
        """The sample_annotation tokens of a sample, in table order."""
        return list(self._anns_of_sample.get(sample_token, []))

    def scene_tokens(self) -> list[str]:
        """Scene tokens in table order."""
        return list(self._tables["scene"])

    def scene_samples(self, scene_token: str) -> list[str]:
        """The sample tokens of a scene, in time order."""
        return list(self._samples_of_scene.get(scene_token, []))

    def sample_time_s(self, sample_token: str) -> float:
        """A sample's timestamp in seconds (``1e-6 * timestamp``, as the devkit)."""
        return 1e-6 * float(self.get("sample", sample_token)["timestamp"])

    def category_name(self, annotation: Mapping[str, Any]) -> str:
        """The category name of a sample_annotation record (through its instance)."""
        instance = self._tables["instance"][annotation["instance_token"]]
        return self._tables["category"][instance["category_token"]]["name"]

    def category_names(self) -> list[str]:
        """All category names of the category table."""
        return [c["name"] for c in self._tables["category"].values()]

    def box_velocity(self, annotation_token: str, max_time_diff: float = 1.5) -> np.ndarray:
        """Global velocity ``(3,)`` m/s of an annotation, as the devkit's ``box_velocity``.

        Centred difference of the translations of the previous and next annotations of the
        instance over their samples' time difference (a one-sided difference at a track end);
        NaN when the annotation has no neighbour or the time difference exceeds
        ``max_time_diff`` (``2 * max_time_diff`` for a centred difference). A link pointing
        outside the table counts as no neighbour.
        """
        current = self.get("sample_annotation", annotation_token)
        prev = self.link("sample_annotation", current, "prev")
        nxt = self.link("sample_annotation", current, "next")
        if prev is None and nxt is None:
            return np.full(3, np.nan)
        first = prev if prev is not None else current
        last = nxt if nxt is not None else current
        pos_diff = np.asarray(last["translation"], dtype=np.float64) - np.asarray(first["translation"], dtype=np.float64)
        time_diff = self.sample_time_s(last["sample_token"]) - self.sample_time_s(first["sample_token"])
        if prev is not None and nxt is not None:
            max_time_diff *= 2
        if time_diff > max_time_diff or time_diff == 0:
            return np.full(3, np.nan)
        return pos_diff / time_diff


# --------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------


def _pose_matrices(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(N, 4, 4)`` float64 child -> parent matrices of pose-like records
    (``translation``, ``rotation`` as ``(w, x, y, z)``), converted in one batch."""
    if not records:
        return np.zeros((0, 4, 4))
    q = np.asarray([r["rotation"] for r in records], dtype=np.float64)
    t = np.asarray([r["translation"] for r in records], dtype=np.float64)
    out = np.zeros((len(records), 4, 4))
    out[:, :3, :3] = quaternion_to_matrix(torch.from_numpy(q)).numpy()
    out[:, :3, 3] = t
    out[:, 3, 3] = 1.0
    return out


class _PoseCache:
    """Matrices of ``ego_pose`` / ``calibrated_sensor`` records, converted in batches."""

    def __init__(self, tables: NuScenesTables):
        self._tables = tables
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def prefetch(self, table: str, tokens: Iterable[str]) -> None:
        todo = sorted({t for t in tokens if (table, t) not in self._cache})
        mats = _pose_matrices([self._tables.get(table, t) for t in todo])
        for token, m in zip(todo, mats):
            self._cache[(table, token)] = m

    def __call__(self, table: str, token: str) -> np.ndarray:
        if (table, token) not in self._cache:
            self.prefetch(table, [token])
        return self._cache[(table, token)]


def _sensor_record(tables: NuScenesTables, poses: _PoseCache, sd_token: str) -> dict[str, Any]:
    sd = tables.get("sample_data", sd_token)
    return {
        "sample_data_token": sd_token,
        "path": sd["filename"],
        "timestamp_us": _timestamp_us(sd["timestamp"]),
        "is_key_frame": bool(sd["is_key_frame"]),
        "sensor_to_ego": poses("calibrated_sensor", sd["calibrated_sensor_token"]),
        "ego_to_global": poses("ego_pose", sd["ego_pose_token"]),
    }


def _ground_truth(tables: NuScenesTables, sample_token: str, lidar_to_ego: np.ndarray,
                  ego_to_global: np.ndarray, category_map: Mapping[str, str | None]) -> dict[str, Any]:
    ann_tokens = tables.sample_annotations(sample_token)
    anns = [tables.get("sample_annotation", t) for t in ann_tokens]
    n = len(anns)
    if n:
        centers = np.asarray([a["translation"] for a in anns], dtype=np.float64)
        sizes = np.asarray([a["size"] for a in anns], dtype=np.float64)
        rotations = np.asarray([a["rotation"] for a in anns], dtype=np.float64)
        velocities = np.stack([tables.box_velocity(t) for t in ann_tokens])
        boxes = nuscenes_global_to_lidar_boxes(
            torch.from_numpy(centers), torch.from_numpy(sizes), torch.from_numpy(rotations),
            torch.from_numpy(ego_to_global), torch.from_numpy(lidar_to_ego),
            velocities=torch.from_numpy(velocities)).numpy()
    else:
        boxes = np.zeros((0, 9))
    categories = [tables.category_name(a) for a in anns]
    attribute_names = [[tables.get("attribute", t)["name"] for t in (a.get("attribute_tokens") or [])]
                       for a in anns]
    return {
        "annotation_tokens": ann_tokens,
        "boxes": boxes.astype(np.float64),
        "category": categories,
        "name": [category_map.get(c) for c in categories],
        "num_lidar_pts": np.asarray([int(a.get("num_lidar_pts", -1)) for a in anns], dtype=np.int64),
        "num_radar_pts": np.asarray([int(a.get("num_radar_pts", -1)) for a in anns], dtype=np.int64),
        "attributes": attribute_names,
        "instance_tokens": [a["instance_token"] for a in anns],
        "visibility": [a.get("visibility_token") or "" for a in anns],
    }


def _build_index(tables: NuScenesTables, split: str, max_sweeps: int) -> list[dict[str, Any]]:
    """The index entries of ``split`` (see :func:`build_nuscenes_index`)."""
    names = split_scene_names(tables.version, split)
    wanted = None if names is None else set(names)
    category_map = default_category_map(tables.category_names())
    samples: list[tuple[str, str]] = []  # (scene token, sample token)
    for scene_token in tables.scene_tokens():
        scene = tables.get("scene", scene_token)
        if wanted is not None and scene["name"] not in wanted:
            continue
        samples.extend((scene_token, s) for s in tables.scene_samples(scene_token))

    # Collect every sample_data of interest first, then convert all poses in two batches.
    plan: list[tuple[str, str, str, list[str], dict[str, str]]] = []
    for scene_token, sample_token in samples:
        key = tables.keyframe_data(sample_token)
        lidar_token = key.get(LIDAR_CHANNEL)
        if lidar_token is None:
            raise DataError(f"{tables.folder / 'sample_data.json'}: sample {sample_token} has no "
                            f"key-frame {LIDAR_CHANNEL} sample_data")
        sweep_tokens: list[str] = []
        record = tables.get("sample_data", lidar_token)
        while len(sweep_tokens) < max_sweeps:
            record = tables.link("sample_data", record, "prev")
            if record is None:
                break
            sweep_tokens.append(record["token"])
        cameras = {ch: tok for ch, tok in key.items()
                   if tables.modality(tables.get("sample_data", tok)) == "camera"
                   or (tables.modality(tables.get("sample_data", tok)) == "" and ch.startswith("CAM"))}
        plan.append((scene_token, sample_token, lidar_token, sweep_tokens, cameras))
    poses = _PoseCache(tables)
    all_sd = [tables.get("sample_data", t) for _, _, lid, sw, cams in plan
              for t in [lid, *sw, *cams.values()]]
    poses.prefetch("ego_pose", (sd["ego_pose_token"] for sd in all_sd))
    poses.prefetch("calibrated_sensor", (sd["calibrated_sensor_token"] for sd in all_sd))

    index: list[dict[str, Any]] = []
    for scene_token, sample_token, lidar_token, sweep_tokens, cameras in plan:
        lidar = _sensor_record(tables, poses, lidar_token)
        lidar["lidar_to_ego"] = lidar.pop("sensor_to_ego")
        sweeps = []
        for token in sweep_tokens:
            sweep = _sensor_record(tables, poses, token)
            sweep["lidar_to_ego"] = sweep.pop("sensor_to_ego")
            sweeps.append(sweep)
        cams: dict[str, dict[str, Any]] = {}
        for channel, token in cameras.items():
            cam = _sensor_record(tables, poses, token)
            cam["camera_to_ego"] = cam.pop("sensor_to_ego")
            sd = tables.get("sample_data", token)
            calib = tables.get("calibrated_sensor", sd["calibrated_sensor_token"])
            intrinsics = np.asarray(calib.get("camera_intrinsic") or [], dtype=np.float64)
            if intrinsics.shape != (3, 3):
                raise DataError(f"{tables.folder / 'calibrated_sensor.json'}: record "
                                f"{calib['token']} ({channel}) field 'camera_intrinsic' must be "
                                f"3x3, got shape {intrinsics.shape}")
            cam["intrinsics"] = intrinsics
            cam["width"] = int(sd.get("width") or 0)
            cam["height"] = int(sd.get("height") or 0)
            cams[channel] = cam
        sample = tables.get("sample", sample_token)
        index.append({
            "token": sample_token,
            "scene_token": scene_token,
            "scene_name": tables.get("scene", scene_token)["name"],
            "timestamp_us": _timestamp_us(sample["timestamp"]),
            "lidar": lidar,
            "sweeps": sweeps,
            "cameras": cams,
            "gt": _ground_truth(tables, sample_token, lidar["lidar_to_ego"], lidar["ego_to_global"],
                                category_map),
        })
    return index


def _index_kind(version: str, split: str, max_sweeps: int) -> str:
    kind = f"nuscenes-{version}-{split}"
    return kind if max_sweeps == DEFAULT_MAX_SWEEPS else f"{kind}-sweeps{max_sweeps}"


def _table_fingerprint(folder: Path) -> str:
    return fingerprint_files(folder / f"{name}.json" for name in _REQUIRED_FIELDS)


def build_nuscenes_index(root: PathLike, version: str = "v1.0-mini", split: str = "train",
                         rebuild: bool = False, max_sweeps: int = DEFAULT_MAX_SWEEPS) -> list[dict[str, Any]]:
    """The per-sample index of ``split``, built from the tables once and cached.

    The cache (kind ``nuscenes-<version>-<split>``, see :mod:`distill3d.data.index_cache`)
    is keyed by :data:`INDEX_SCHEMA_VERSION` and a fingerprint (name, size, mtime) of the
    table files, so an edited table rebuilds it. Samples come scene by scene (scene table
    order; scenes of the split only), in time order within a scene.

    Each entry is a dict of plain Python / numpy values (paths relative to ``root``; all
    matrices ``(4, 4)`` float64, column vectors):

    * ``token``, ``scene_token``, ``scene_name``, ``timestamp_us`` (sample timestamp);
    * ``lidar``: the key LIDAR_TOP sample_data: ``sample_data_token``, ``path``,
      ``timestamp_us``, ``is_key_frame``, ``lidar_to_ego``, ``ego_to_global`` (at the LiDAR
      timestamp);
    * ``sweeps``: up to ``max_sweeps`` previous LIDAR_TOP sample_data (newest first,
      earlier keyframes included, as mmdetection3d), same fields;
    * ``cameras``: channel -> ``sample_data_token``, ``path``, ``timestamp_us``,
      ``camera_to_ego``, ``ego_to_global`` (at the camera timestamp), ``intrinsics``
      ``(3, 3)``, ``width``, ``height``;
    * ``gt``: ``annotation_tokens`` (M), ``boxes`` ``(M, 9)`` float64 in the key LiDAR frame
      ``(x, y, z, l, w, h, yaw, vx, vy)`` (velocity NaN where the devkit gives none),
      ``category`` (raw category names), ``name`` (detection class by
      :func:`default_category_map`, or ``None``), ``num_lidar_pts``, ``num_radar_pts``
      ``(M,)`` int64 (-1 when the table does not say), ``attributes`` (list of attribute
      names per box), ``instance_tokens``, ``visibility`` (visibility token, ``""`` if none).

    Args:
        root: the dataroot.
        version: the version folder name.
        split: see :func:`split_scene_names`.
        rebuild: build even if a valid cached index exists (and overwrite it).
        max_sweeps: previous sweeps recorded per sample.

    Raises:
        ValueError: unknown split for the version, negative ``max_sweeps``.
        DataError: unreadable or inconsistent tables (see :class:`NuScenesTables`).
    """
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    split_scene_names(version, split)  # validate before any I/O
    root = Path(root)
    folder = root / version
    if not folder.is_dir():
        raise DataError(f"nuScenes tables folder not found: {folder} (root={root}, version={version!r})")
    key = IndexKey(kind=_index_kind(version, split, max_sweeps), schema_version=INDEX_SCHEMA_VERSION,
                   fingerprint=_table_fingerprint(folder))

    def build() -> list[dict[str, Any]]:
        return _build_index(NuScenesTables(root, version), split, max_sweeps)

    return load_or_build_index(root, key, build, rebuild=rebuild)


# --------------------------------------------------------------------------------------
# poses of an index entry
# --------------------------------------------------------------------------------------


def lidar_to_camera_matrix(entry: Mapping[str, Any], channel: str) -> np.ndarray:
    """``(4, 4)`` float64 key LiDAR -> camera ``channel`` of an index entry:
    ``inv(camera_to_ego) @ inv(ego_to_global at camera time) @ ego_to_global at LiDAR time
    @ lidar_to_ego`` (mmdetection3d's ``lidar2cam``)."""
    cam = entry["cameras"][channel]
    lidar = entry["lidar"]
    return (_rigid_inverse(cam["camera_to_ego"]) @ _rigid_inverse(cam["ego_to_global"])
            @ lidar["ego_to_global"] @ lidar["lidar_to_ego"])


def sweep_to_key_matrix(entry: Mapping[str, Any], sweep: Mapping[str, Any]) -> np.ndarray:
    """``(4, 4)`` float64 sweep LiDAR -> key LiDAR: sweep LiDAR -> ego(sweep time) ->
    global -> ego(key time) -> key LiDAR."""
    lidar = entry["lidar"]
    return (_rigid_inverse(lidar["lidar_to_ego"]) @ _rigid_inverse(lidar["ego_to_global"])
            @ sweep["ego_to_global"] @ sweep["lidar_to_ego"])


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------


def read_nuscenes_points(path: PathLike, point_dim: int = PCD_BIN_DIM) -> np.ndarray:
    """Read a nuScenes / Lyft LiDAR ``.pcd.bin`` / ``.bin`` file.

    Args:
        path: the file: flat little-endian float32, ``point_dim`` values per point
            (nuScenes: x, y, z, intensity, ring index), sensor frame.
        point_dim: floats per point.

    Returns:
        ``(N, 4)`` float32 ``(x, y, z, intensity)``.

    Raises:
        DataError: missing file, a size that is not a multiple of ``4 * point_dim`` bytes,
            or a non-finite x, y, z or intensity (message names the file and the point).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"LiDAR file not found: {path}") from None
    record = 4 * point_dim
    if size % record:
        raise DataError(f"{path}: size {size} bytes is not a multiple of {record} "
                        f"({point_dim} float32 per point); the file is truncated or not a "
                        f"nuScenes LiDAR file")
    try:
        raw = np.fromfile(path, dtype="<f4")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    points = raw.reshape(-1, point_dim)[:, :4]
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{path}: point {bad} of {points.shape[0]} has a non-finite value "
                        f"{points[bad].tolist()} (x, y, z, intensity)")
    return np.ascontiguousarray(points, dtype=np.float32)


def _read_image(path: Path, expected_size: tuple[int, int]) -> torch.Tensor:
    """``(3, H, W)`` uint8 RGB of an image file; ``expected_size`` ``(W, H)`` (0 = unknown)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"camera image not found: {path}")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image: {exc}") from None
    height, width = rgb.shape[:2]
    if all(expected_size) and (width, height) != tuple(expected_size):
        raise DataError(f"{path}: image is {width}x{height} but its sample_data record says "
                        f"{expected_size[0]}x{expected_size[1]} (the intrinsics would not match)")
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Selection:
    """Indices (into an entry's GT) of the boxes a dataset keeps, and their labels."""

    keep: np.ndarray
    labels: np.ndarray


class NuScenesDataset(DetectionDataset):
    """nuScenes (or Lyft) samples read straight from the dataroot.

    Args:
        root: the dataroot (holding ``<version>/``, ``samples/``, ``sweeps/``).
        version: table folder, e.g. ``"v1.0-mini"``.
        split: see :func:`split_scene_names`.
        class_names: the classes ``labels`` index; boxes of other classes are dropped.
        sweeps: previous LiDAR sweeps merged into each sample (0: keyframe only). With
            ``sweeps > 0`` the points get a fifth column ``time_lag`` (s).
        load_cameras: load the camera images.
        camera_names: the cameras to load, in this order.
        filter_empty: drop boxes with ``num_lidar_pts + num_radar_pts == 0`` (as the devkit's
            evaluation; Lyft's unknown ``-1`` counts are kept).
        transforms: augmentation steps (see :class:`DetectionDataset`).
        seed: augmentation seed.
        category_map: category name -> detection name (``None``: not a detection class);
            default: :func:`default_category_map` of the category table (nuScenes' official
            mapping, or Lyft's identity).
        rebuild_index: rebuild the cached index.

    Raises:
        ValueError: bad arguments (unknown split, a class name twice, negative sweeps).
        DataError: unreadable tables, or a split that selects no sample.
    """

    def __init__(self, root: PathLike, version: str = "v1.0-mini", split: str = "train",
                 class_names: Sequence[str] = NUSCENES_DETECTION_CLASSES, sweeps: int = 0,
                 load_cameras: bool = True, camera_names: Sequence[str] = NUSCENES_CAMERAS,
                 filter_empty: bool = True, transforms: Sequence[SampleTransform] = (),
                 seed: int = 0, category_map: Mapping[str, str | None] | None = None,
                 rebuild_index: bool = False):
        super().__init__(class_names, transforms, seed)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if sweeps < 0:
            raise ValueError(f"sweeps must be >= 0, got {sweeps}")
        self.root = Path(root)
        self.version = version
        self.split = split
        self.sweeps = int(sweeps)
        self.load_cameras = bool(load_cameras)
        self.camera_names = tuple(camera_names)
        self.filter_empty = bool(filter_empty)
        # a plain dict (not a MappingProxyType): the dataset must pickle for loader workers
        self.category_map: dict[str, str | None] | None = (
            None if category_map is None else dict(category_map))
        self.index = build_nuscenes_index(self.root, version, split, rebuild=rebuild_index,
                                          max_sweeps=max(DEFAULT_MAX_SWEEPS, self.sweeps))
        if not self.index:
            raise DataError(f"{self.root / version}: split {split!r} selects no sample "
                            f"(scenes of the split are not in scene.json)")
        self._label_of = {name: i for i, name in enumerate(self.class_names)}

    @property
    def point_features(self) -> tuple[str, ...]:
        """Names of the point columns this dataset yields."""
        return BASE_POINT_FEATURES + (("time_lag",) if self.sweeps > 0 else ())

    def __len__(self) -> int:
        return len(self.index)

    def sample_tokens(self) -> list[str]:
        """The sample token of every sample, in index order."""
        return [entry["token"] for entry in self.index]

    def sample_class_ids(self, index: int) -> set[int]:
        """Labels present in sample ``index``, read from the index (no file is opened)."""
        return set(self._select(self.index[index]["gt"]).labels.tolist())

    # ---- pieces of a sample ------------------------------------------------------

    def _select(self, gt: Mapping[str, Any]) -> _Selection:
        if self.category_map is None:
            names = gt["name"]
        else:
            names = [self.category_map.get(c) for c in gt["category"]]
        keep, labels = [], []
        for i, name in enumerate(names):
            label = self._label_of.get(name) if name is not None else None
            if label is None:
                continue
            if self.filter_empty and int(gt["num_lidar_pts"][i]) + int(gt["num_radar_pts"][i]) == 0:
                continue
            keep.append(i)
            labels.append(label)
        return _Selection(np.asarray(keep, dtype=np.int64), np.asarray(labels, dtype=np.int64))

    def load_points(self, entry: Mapping[str, Any]) -> np.ndarray:
        """``(N, 4)`` or, with sweeps, ``(N, 5)`` float32 points of an index entry in the key
        LiDAR frame: the keyframe first (time lag 0), then each sweep (ego motion compensated,
        points within :data:`SWEEP_EGO_RADIUS` of the sweep's sensor removed)."""
        key = read_nuscenes_points(self.root / entry["lidar"]["path"])
        if self.sweeps == 0:
            return key
        parts = [np.concatenate((key, np.zeros((key.shape[0], 1), np.float32)), axis=1)]
        key_ts = entry["lidar"]["timestamp_us"]
        for sweep in entry["sweeps"][: self.sweeps]:
            pts = read_nuscenes_points(self.root / sweep["path"]).astype(np.float64)
            close = (np.abs(pts[:, 0]) < SWEEP_EGO_RADIUS) & (np.abs(pts[:, 1]) < SWEEP_EGO_RADIUS)
            pts = pts[~close]
            m = sweep_to_key_matrix(entry, sweep)
            pts[:, :3] = pts[:, :3] @ m[:3, :3].T + m[:3, 3]
            lag = np.full((pts.shape[0], 1), (key_ts - sweep["timestamp_us"]) * 1e-6)
            parts.append(np.concatenate((pts, lag), axis=1).astype(np.float32))
        return np.concatenate(parts, axis=0)

    def load_cameras_of(self, entry: Mapping[str, Any]) -> list[CameraView]:
        """The :class:`CameraView` of each of ``camera_names`` for an index entry."""
        views = []
        for channel in self.camera_names:
            cam = entry["cameras"].get(channel)
            if cam is None:
                raise DataError(f"{self.root / self.version / 'sample_data.json'}: sample "
                                f"{entry['token']} has no key-frame {channel} image "
                                f"(cameras: {sorted(entry['cameras'])})")
            image = _read_image(self.root / cam["path"], (cam["width"], cam["height"]))
            views.append(CameraView(
                name=channel,
                image=image,
                intrinsics=torch.from_numpy(cam["intrinsics"].astype(np.float32)),
                lidar_to_camera=torch.from_numpy(lidar_to_camera_matrix(entry, channel).astype(np.float32)),
                image_transform=torch.eye(3),
                original_size=(int(image.shape[2]), int(image.shape[1])),
            ))
        return views

    def load_sample(self, index: int) -> Sample:
        """The sample at ``index``, before any transform.

        Returns:
            A :class:`Sample` in the key LIDAR_TOP frame: ``points`` ``(N, 4)`` (or
            ``(N, 5)`` with ``time_lag`` when ``sweeps > 0``) float32; ``boxes`` ``(M, 9)``
            float32 ``(x, y, z, l, w, h, yaw, vx, vy)`` (velocity NaN where the devkit has
            none); ``labels`` into ``class_names``; ``num_points`` = ``num_lidar_pts``
            (-1 unknown); ``cameras`` in ``camera_names`` order; ``lidar_to_ego`` (float32),
            ``ego_to_global`` (float64, at the LiDAR timestamp); ``timestamp_us`` of the key
            LiDAR sample_data; ``extras``: ``attributes`` (list of attribute names per box),
            ``instance_tokens``, ``annotation_tokens``, ``category_names`` (raw categories),
            ``num_radar_pts`` ``(M,)`` int64, ``visibility`` ``(M,)`` int64 (1..4 for
            0-40/40-60/60-80/80-100 % visible, 0 unknown), ``scene_token``,
            ``lidar_sample_data_token``.

        Raises:
            DataError: a missing or corrupt LiDAR file or image (names the file), or a
                requested camera that the sample does not have.
        """
        entry = self.index[index]
        points = torch.from_numpy(self.load_points(entry))
        gt = entry["gt"]
        sel = self._select(gt)
        keep = sel.keep
        boxes = torch.from_numpy(gt["boxes"][keep].astype(np.float32).reshape(-1, 9))
        cameras = self.load_cameras_of(entry) if self.load_cameras else []
        visibility = [gt["visibility"][i] for i in keep]
        return Sample(
            token=entry["token"],
            points=points,
            point_features=self.point_features,
            boxes=boxes,
            labels=torch.from_numpy(sel.labels),
            class_names=self.class_names,
            num_points=torch.from_numpy(gt["num_lidar_pts"][keep].astype(np.int64)),
            cameras=cameras,
            lidar_to_ego=torch.from_numpy(entry["lidar"]["lidar_to_ego"].astype(np.float32)),
            ego_to_global=torch.from_numpy(entry["lidar"]["ego_to_global"].copy()),
            timestamp_us=int(entry["lidar"]["timestamp_us"]),
            extras={
                "attributes": [list(gt["attributes"][i]) for i in keep],
                "instance_tokens": [gt["instance_tokens"][i] for i in keep],
                "annotation_tokens": [gt["annotation_tokens"][i] for i in keep],
                "category_names": [gt["category"][i] for i in keep],
                "num_radar_pts": torch.from_numpy(gt["num_radar_pts"][keep].astype(np.int64)),
                "visibility": torch.tensor([_visibility_level(v) for v in visibility], dtype=torch.int64),
                "scene_token": entry["scene_token"],
                "lidar_sample_data_token": entry["lidar"]["sample_data_token"],
            },
        )


def _visibility_level(token: str) -> int:
    """nuScenes visibility token ``'1'..'4'`` -> 1..4 (0-40 %, 40-60 %, 60-80 %, 80-100 %);
    0 when the token is empty or not numeric."""
    return int(token) if token.isdigit() else 0
