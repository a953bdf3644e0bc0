"""Read the info ``.pkl`` files of mmdetection3d and OpenPCDet into :class:`Sample` objects.

Users often arrive with the info files that mmdetection3d or OpenPCDet generated for
them. :func:`load_info_file` opens such a file **without executing code** (a restricted
unpickler that only builds containers, scalars and numpy arrays) and names its schema;
:class:`InfoDataset` reads every supported schema into the same :class:`Sample`, in our
conventions (key LiDAR frame, geometric-centre boxes ``(x, y, z, l, w, h, yaw, vx, vy)``,
``docs/conventions.md``).

Supported schemas (:class:`InfoSchema`; ``docs/data.md`` has the full field lists):

===========================  ===========================================================
``mmdet3d_v2``               ``{metainfo, data_list}`` (mmdetection3d >= 1.1).
                             nuScenes/Lyft: ``instances[].bbox_3d`` are LiDAR boxes with
                             the **geometric** centre; KITTI: camera-frame boxes
                             ``(x, y, z_bottom, l, h, w, ry)`` plus the calibration.
``mmdet3d_legacy_nuscenes``  ``{infos, metadata}`` (mmdetection3d <= 1.0, BEVDet, BEVDepth,
                             BEVFusion, FastBEV): ``gt_boxes`` LiDAR boxes, geometric centre,
                             either ``(w, l, h, -yaw - pi/2)`` (< 1.0) or ``(l, w, h, yaw)``
                             (1.0rc), told apart from the vehicles' sizes.
``mmdet3d_legacy_kitti``     list of ``{point_cloud, image, calib, annos}`` with
                             ``point_cloud.velodyne_path`` (mmdetection3d < 1.1).
``openpcdet_kitti``          the same list with ``point_cloud.lidar_idx`` (OpenPCDet).
``openpcdet_nuscenes``       list of ``{lidar_path, sweeps, ref_from_car, car_from_global,
                             gt_boxes (x, y, z, dx, dy, dz, heading, vx, vy), ...}``.
===========================  ===========================================================

Every problem (a forbidden pickle global, an unknown or outdated schema, a missing key, a
missing sensor file) is a :class:`~distill3d.data.errors.DataError` whose message names
the file, the entry and what to do.
"""

from __future__ import annotations

import collections
import enum
import importlib
import io
import os
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from distill3d.data.dataset import DetectionDataset, SampleTransform
from distill3d.data.errors import DataError
from distill3d.data.kitti_files import read_velodyne
from distill3d.data.sample import BASE_POINT_FEATURES, CameraView, Sample
from distill3d.geometry.convert import (
    KittiCalib,
    kitti_camera_to_lidar_boxes,
    mmdet3d_lidar_to_boxes,
    openpcdet_to_boxes,
)
from distill3d.geometry.transforms import Pose

__all__ = [
    "InfoSchema",
    "load_info_file",
    "detect_info_schema",
    "InfoDataset",
    "KITTI_CLASSES",
    "NUSCENES_CLASSES",
    "LYFT_CLASSES",
    "SWEEP_CLOSE_RADIUS",
]

PathLike = str | os.PathLike[str]

#: mmdetection3d's KITTI classes (``KittiDataset.METAINFO``, ``update_infos_to_v2.py``);
#: KITTI v2 info labels index this tuple, ``-1`` is DontCare.
KITTI_CLASSES: tuple[str, ...] = (
    "Pedestrian", "Cyclist", "Car", "Van", "Truck", "Person_sitting", "Tram", "Misc",
)
#: The 10 nuScenes detection classes in mmdetection3d's order.
NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
    "pedestrian", "traffic_cone", "barrier",
)
#: mmdetection3d's Lyft classes.
LYFT_CLASSES: tuple[str, ...] = (
    "car", "truck", "bus", "emergency_vehicle", "other_vehicle", "motorcycle", "bicycle",
    "pedestrian", "animal",
)

#: Classes whose objects are clearly longer along their heading than across it; used to
#: tell ``(l, w, h)`` from ``(w, l, h)`` size columns (barriers are *not* in here: nuScenes
#: annotates them with ``w`` along the barrier).
_ELONGATED_CLASSES = frozenset({
    "car", "truck", "bus", "trailer", "construction_vehicle", "bicycle", "motorcycle",
    "emergency_vehicle", "other_vehicle", "van", "tram", "cyclist",
})
_ELONGATION_RATIO = 1.3

#: Sweep points with ``|x| < r`` and ``|y| < r`` (metres, sweep frame) are dropped.
SWEEP_CLOSE_RADIUS = 1.0

_KITTI_LIDAR_DIRS = ("training/velodyne", "testing/velodyne", "training/velodyne_reduced",
                     "testing/velodyne_reduced", "velodyne", "velodyne_reduced")
_KITTI_IMAGE_DIRS = ("training/image_2", "testing/image_2", "image_2")
_NUSCENES_LIDAR_DIRS = ("samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "lidar")
_NUSCENES_SWEEP_DIRS = ("sweeps/LIDAR_TOP", "samples/LIDAR_TOP", "lidar")


# --------------------------------------------------------------------------------------
# schema and safe loading
# --------------------------------------------------------------------------------------


class InfoSchema(str, enum.Enum):
    """The info-file layouts :class:`InfoDataset` reads (see the module docstring)."""

    MMDET3D_V2 = "mmdet3d_v2"
    MMDET3D_LEGACY_NUSCENES = "mmdet3d_legacy_nuscenes"
    MMDET3D_LEGACY_KITTI = "mmdet3d_legacy_kitti"
    OPENPCDET_KITTI = "openpcdet_kitti"
    OPENPCDET_NUSCENES = "openpcdet_nuscenes"

    def __str__(self) -> str:
        return self.value


def _numpy_attr(modules: Sequence[str], name: str) -> Callable[[], Any]:
    """Deferred lookup of ``name`` in the first importable module of ``modules``
    (numpy 2 moved ``numpy.core`` to ``numpy._core``; importing the old alias warns)."""

    def resolve() -> Any:
        for module in modules:
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise AttributeError(f"none of {modules} provides {name}")

    return resolve


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

#: Every global a plain info file may reference, mapped to a resolver. Nothing here can
#: run arbitrary code: containers, scalars, numpy array/scalar/dtype reconstruction and
#: ``_codecs.encode`` (which protocol-2 pickles use to store raw bytes).
_ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable[[], Any]] = types.MappingProxyType({
    **{("builtins", name): (lambda n=name: getattr(__import__("builtins"), n))
       for name in ("list", "dict", "set", "frozenset", "tuple", "int", "float", "complex",
                    "bool", "str", "bytes", "bytearray", "slice", "range")},
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("collections", "defaultdict"): lambda: collections.defaultdict,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    **{(module, name): _numpy_attr(_MULTIARRAY, name)
       for module in _MULTIARRAY for name in ("_reconstruct", "scalar")},
    **{(module, "_frombuffer"): _numpy_attr(_NUMERIC, "_frombuffer") for module in _NUMERIC},
})
_MODULE_ALIASES = types.MappingProxyType({"__builtin__": "builtins", "copy_reg": "copyreg"})


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the globals in :data:`_ALLOWED_GLOBALS`."""

    def __init__(self, handle: io.BufferedIOBase, path: Path):
        super().__init__(handle, fix_imports=False, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        key = (_MODULE_ALIASES.get(module, module), name)
        resolver = _ALLOWED_GLOBALS.get(key)
        if resolver is None:
            hint = ""
            if module.startswith("mmdet3d") or module.startswith("pcdet"):
                hint = (" (objects of mmdetection3d/OpenPCDet classes, e.g. prediction "
                        "results or box structures, are not info files)")
            raise DataError(f"{self._path}: this info file references {module}.{name}; "
                            f"distill3d reads plain info files only{hint}")
        return resolver()


def _describe(payload: Any) -> str:
    """A short description of the top level of an unpickled payload, for error messages."""

    def keys_of(d: Mapping[Any, Any]) -> str:
        keys = [repr(k) for k in list(d.keys())[:12]]
        more = ", ..." if len(d) > 12 else ""
        return "{" + ", ".join(keys) + more + "}"

    if isinstance(payload, Mapping):
        text = f"a dict with keys {keys_of(payload)}"
        for key in ("data_list", "infos"):
            value = payload.get(key)
            if isinstance(value, list) and value and isinstance(value[0], Mapping):
                text += f"; first {key} entry has keys {keys_of(value[0])}"
        return text
    if isinstance(payload, list):
        if not payload:
            return "an empty list"
        first = payload[0]
        if isinstance(first, Mapping):
            return f"a list of {len(payload)} dicts, the first with keys {keys_of(first)}"
        return f"a list of {len(payload)} {type(first).__name__} objects"
    return f"a {type(payload).__name__}"


def _is_kitti_entry(entry: Mapping[str, Any]) -> bool:
    return all(k in entry for k in ("point_cloud", "image", "calib"))


def detect_info_schema(payload: Any, path: PathLike = "<info>") -> InfoSchema:
    """Name the schema of an unpickled info payload.

    Args:
        payload: what the ``.pkl`` file holds.
        path: the file, for error messages.

    Returns:
        The schema.

    Raises:
        DataError: an unknown, unsupported or outdated layout; the message says which
            layout was found (its top-level keys / first entry's keys) and what to do.
    """
    where = f"{path}: "
    found = _describe(payload)
    if isinstance(payload, Mapping):
        if "data_list" in payload and "metainfo" in payload:
            if not isinstance(payload["data_list"], list):
                raise DataError(f"{where}'data_list' must be a list of frame dicts, got "
                                f"{type(payload['data_list']).__name__}")
            return InfoSchema.MMDET3D_V2
        if "data_list" in payload:
            raise DataError(
                f"{where}found {found}: an mmdetection3d-style info without 'metainfo' "
                "(an intermediate pre-1.1 format). Regenerate it with mmdetection3d >= 1.1 "
                "(tools/create_data.py) or convert the original infos with "
                "tools/dataset_converters/update_infos_to_v2.py.")
        if "infos" in payload and "metadata" in payload:
            infos = payload["infos"]
            if isinstance(infos, list) and (not infos or (
                    isinstance(infos[0], Mapping) and "lidar_path" in infos[0])):
                return InfoSchema.MMDET3D_LEGACY_NUSCENES
            raise DataError(
                f"{where}found {found}: an mmdetection3d legacy {{infos, metadata}} file "
                "whose entries are not nuScenes-style frames (no 'lidar_path'); only "
                "nuScenes/Lyft legacy infos are supported. Convert it with mmdetection3d's "
                "tools/dataset_converters/update_infos_to_v2.py.")
        if "infos" in payload:
            raise DataError(
                f"{where}found {found}: 'infos' without 'metadata' is not a known layout. "
                "mmdetection3d legacy infos are {'infos': [...], 'metadata': {'version': "
                "...}}; regenerate with mmdetection3d's tools/create_data.py.")
        values = list(payload.values())
        if values and all(isinstance(v, list) for v in values) and any(
                v and isinstance(v[0], Mapping) and "box3d_lidar" in v[0] for v in values):
            raise DataError(
                f"{where}found {found}: this is a ground-truth database (dbinfos, for GT "
                "sampling), not an info file. Pass the *_infos_<split>.pkl file instead.")
        raise DataError(
            f"{where}unknown info schema: found {found}. distill3d reads mmdetection3d v2 "
            "({metainfo, data_list}), mmdetection3d legacy nuScenes ({infos, metadata}), "
            "KITTI-style lists ({point_cloud, image, calib, annos}) and OpenPCDet nuScenes "
            "lists; regenerate the infos with mmdetection3d (tools/create_data.py) or "
            "OpenPCDet (create_<dataset>_infos).")
    if isinstance(payload, list):
        if not payload:
            raise DataError(f"{where}the info file holds an empty list: no frames to read")
        first = payload[0]
        if isinstance(first, Mapping):
            if _is_kitti_entry(first):
                point_cloud = first["point_cloud"]
                if isinstance(point_cloud, Mapping) and "velodyne_path" in point_cloud:
                    return InfoSchema.MMDET3D_LEGACY_KITTI
                if isinstance(point_cloud, Mapping) and "lidar_idx" in point_cloud:
                    return InfoSchema.OPENPCDET_KITTI
                raise DataError(
                    f"{where}found {found}: a KITTI-style info whose 'point_cloud' has "
                    "neither 'velodyne_path' (mmdetection3d) nor 'lidar_idx' (OpenPCDet); "
                    "regenerate it with OpenPCDet's create_kitti_infos or mmdetection3d's "
                    "tools/create_data.py kitti.")
            if "lidar_path" in first and (
                    "ref_from_car" in first or "car_from_global" in first):
                return InfoSchema.OPENPCDET_NUSCENES
            if "lidar_path" in first and "lidar2ego_rotation" in first:
                raise DataError(
                    f"{where}found {found}: mmdetection3d legacy nuScenes entries without "
                    "their container. Wrap them as {'infos': entries, 'metadata': "
                    "{'version': 'v1.0-trainval'}} or regenerate with tools/create_data.py.")
            if {"cam_infos", "lidar_infos"} <= set(first):
                raise DataError(
                    f"{where}found {found}: BEVDepth's own info format (cam_infos, "
                    "lidar_infos, ann_infos) is not supported. Generate mmdetection3d "
                    "nuScenes infos (tools/create_data.py nuscenes) for the same data.")
            if "velodyne_path" in first or any(str(k).startswith("calib/") for k in first):
                raise DataError(
                    f"{where}found {found}: an outdated SECOND-era KITTI info (flat keys "
                    "such as 'velodyne_path', 'calib/P2'). Regenerate it with OpenPCDet "
                    "(python -m pcdet.datasets.kitti.kitti_dataset create_kitti_infos ...) "
                    "or mmdetection3d (tools/create_data.py kitti).")
    raise DataError(
        f"{where}unknown info schema: found {found}. distill3d reads mmdetection3d v2 "
        "({metainfo, data_list}), mmdetection3d legacy nuScenes ({infos, metadata}), "
        "KITTI-style lists ({point_cloud, image, calib, annos}) and OpenPCDet nuScenes lists; "
        "regenerate the infos with mmdetection3d (tools/create_data.py) or OpenPCDet "
        "(create_<dataset>_infos).")


def load_info_file(path: PathLike) -> tuple[InfoSchema, Any]:
    """Load an info ``.pkl`` safely and name its schema.

    The file is unpickled with a restricted unpickler that only builds builtin containers
    and scalars, numpy arrays, dtypes and scalars, and ``collections.OrderedDict`` /
    ``defaultdict``: any other global (a class, a function such as ``os.system``) is
    refused before it is imported.

    Args:
        path: the ``.pkl`` file.

    Returns:
        ``(schema, payload)``: the detected :class:`InfoSchema` and the unpickled object,
        unchanged.

    Raises:
        DataError: the file is missing or not a pickle, references a forbidden global
            ("this info file references X; distill3d reads plain info files only"), or
            has an unknown or outdated schema.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: info file not found")
    try:
        with path.open("rb") as handle:
            payload = _RestrictedUnpickler(handle, path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable info pickle "
                        f"({type(exc).__name__}: {exc})") from None
    return detect_info_schema(payload, path), payload


# --------------------------------------------------------------------------------------
# small parsing helpers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Location of a value in the info file, for error messages."""

    path: Path
    index: int
    token: str = ""

    def __str__(self) -> str:
        token = f" ({self.token})" if self.token else ""
        return f"{self.path}: entry {self.index}{token}"


def _get(d: Any, key: str, where: _Where, what: str = "entry") -> Any:
    if not isinstance(d, Mapping):
        raise DataError(f"{where}: expected a dict for {what}, got {type(d).__name__}")
    if key not in d:
        keys = ", ".join(repr(k) for k in list(d)[:20])
        raise DataError(f"{where}: {what} has no key {key!r} (keys: {keys})")
    return d[key]


def _array(value: Any, where: _Where, what: str, shape: tuple[int | None, ...] | None = None,
           dtype: Any = np.float64) -> np.ndarray:
    """``value`` as a numpy array of ``dtype`` with a checked shape (None = any size)."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {what} is not numeric ({exc})") from None
    if shape is not None:
        ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
        if not ok:
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            raise DataError(f"{where}: {what} must have shape {want}, got {arr.shape}")
    return arr


def _matrix(value: Any, where: _Where, what: str, rows: Sequence[int] = (3, 4),
            cols: Sequence[int] = (3, 4)) -> np.ndarray:
    """A 2-D float64 matrix whose shape is among ``rows x cols``."""
    arr = _array(value, where, what)
    if arr.ndim != 2 or arr.shape[0] not in rows or arr.shape[1] not in cols:
        raise DataError(f"{where}: {what} must be a matrix with {rows} rows and {cols} "
                        f"columns, got shape {arr.shape}")
    return arr


def _pad4(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix[:4, :4]
    return out


def _rigid(rotation: Any, translation: Any, where: _Where, what: str) -> np.ndarray:
    """``(4, 4)`` from a ``(3, 3)`` rotation and a ``(3,)`` translation."""
    out = np.eye(4)
    out[:3, :3] = _array(rotation, where, f"{what} rotation", (3, 3))
    out[:3, 3] = _array(translation, where, f"{what} translation", (3,)).reshape(3)
    return out


def _pose(rotation: Any, translation: Any, where: _Where, what: str) -> np.ndarray:
    """``(4, 4)`` from a quaternion ``(w, x, y, z)`` and a translation (nuScenes records)."""
    q = _array(rotation, where, f"{what} rotation", (4,))
    t = _array(translation, where, f"{what} translation").reshape(-1)
    if t.shape != (3,):
        raise DataError(f"{where}: {what} translation must have 3 values, got {t.shape}")
    try:
        return Pose(translation=t, rotation=q).matrix().numpy()
    except ValueError as exc:
        raise DataError(f"{where}: {what}: {exc}") from None


def _inverse(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(matrix)


def _token(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return f"{int(value):06d}"
    return str(value)


def _names_array(value: Any, n: int, where: _Where, what: str) -> list[str]:
    names = [str(x) for x in np.asarray(value).reshape(-1).tolist()]
    if len(names) != n:
        raise DataError(f"{where}: {what} has {len(names)} names for {n} boxes")
    return names


# --------------------------------------------------------------------------------------
# normalised frame records
# --------------------------------------------------------------------------------------


@dataclass
class _FileRef:
    """A file named by the info, resolved lazily against the data root."""

    raw: str
    standard_dirs: tuple[str, ...]
    prefix_keys: tuple[str, ...]
    what: str


@dataclass
class _CameraRecord:
    name: str
    image: _FileRef
    intrinsics: np.ndarray        # (3, 3)
    lidar_to_camera: np.ndarray   # (4, 4)


@dataclass
class _SweepRecord:
    lidar: _FileRef
    sweep_to_key: np.ndarray      # (4, 4)
    time_lag: float               # seconds, key time - sweep time
    num_features: int


@dataclass
class _FrameRecord:
    """One info entry in our conventions, before any file is read."""

    token: str
    lidar: _FileRef | None
    num_features: int
    boxes: np.ndarray             # (M, 9) ours
    names: list[str]              # source class names, one per box
    num_points: np.ndarray        # (M,) int64, -1 unknown
    valid: np.ndarray             # (M,) bool (False: the info marks it invalid/empty)
    instance_index: np.ndarray    # (M,) int64 index in the info's instance list
    cameras: list[_CameraRecord] = field(default_factory=list)
    sweeps: list[_SweepRecord] = field(default_factory=list)
    lidar_to_ego: np.ndarray = field(default_factory=lambda: np.eye(4))
    ego_to_global: np.ndarray = field(default_factory=lambda: np.eye(4))
    timestamp_us: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    box_extras: dict[str, np.ndarray] = field(default_factory=dict)   # (M, ...) per box


def _empty_gt() -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros((0, 9)), [], np.zeros(0, np.int64), np.zeros(0, bool),
            np.zeros(0, np.int64))


def _radar_counts(entry: Mapping[str, Any], n: int, where: _Where) -> np.ndarray:
    """``num_radar_pts`` of a legacy/OpenPCDet nuScenes entry (-1 where not recorded)."""
    if n and "num_radar_pts" in entry:
        return _array(entry["num_radar_pts"], where, "num_radar_pts", dtype=np.int64).reshape(n)
    return np.full(n, -1, np.int64)


def _projection_to_camera(projection: np.ndarray, lidar_to_cam: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``P @ lidar_to_cam`` (``P`` 3x3, 3x4 or 4x4) into ``K (3, 3)`` and a
    ``(4, 4)`` LiDAR -> camera transform with ``K @ T[:3] == P[:3] @ lidar_to_cam``.

    KITTI's ``P2`` has a fourth column (the offset of camera 2 from the rectified
    reference camera); it is folded into the transform as ``K^-1 @ P[:3, 3]``.
    """
    p = np.zeros((3, 4))
    p[:, : min(projection.shape[1], 4)] = projection[:3, :4]
    k = p[:, :3].copy()
    offset = np.eye(4)
    if np.any(p[:, 3] != 0):
        offset[:3, 3] = np.linalg.solve(k, p[:, 3])
    return k, offset @ lidar_to_cam


def _kitti_calib(p_mats: Mapping[str, np.ndarray | None], r0: np.ndarray, tr: np.ndarray,
                 imu: np.ndarray | None) -> KittiCalib:
    """A :class:`KittiCalib` from (possibly padded) matrices; projection matrices the
    info does not record are NaN."""
    nan = np.full((3, 4), np.nan)
    return KittiCalib(
        P0=nan if p_mats.get("P0") is None else p_mats["P0"][:3, :4],
        P1=nan if p_mats.get("P1") is None else p_mats["P1"][:3, :4],
        P2=p_mats["P2"][:3, :4],
        P3=nan if p_mats.get("P3") is None else p_mats["P3"][:3, :4],
        R0_rect=r0[:3, :3],
        Tr_velo_to_cam=tr[:3, :4],
        Tr_imu_to_velo=None if imu is None else imu[:3, :4],
    )


def _kitti_boxes(location: np.ndarray, dims_lhw: np.ndarray, rotation_y: np.ndarray,
                 calib: KittiCalib) -> np.ndarray:
    """KITTI camera boxes (bottom centre, ``(l, h, w)`` as both toolboxes store them)
    -> ``(M, 9)`` ours with NaN velocity."""
    out = np.full((location.shape[0], 9), np.nan)
    if location.shape[0]:
        boxes = kitti_camera_to_lidar_boxes(location, dims_lhw[:, [1, 2, 0]], rotation_y, calib)
        out[:, :7] = boxes.numpy()
    return out


# --------------------------------------------------------------------------------------
# path resolution
# --------------------------------------------------------------------------------------


def _candidate_paths(ref: _FileRef, data_root: Path, data_prefix: Mapping[str, str]
                     ) -> list[Path]:
    """Where the file ``ref`` may be, in the order tried (see :class:`InfoDataset`)."""
    raw = PurePosixPath(ref.raw.replace("\\", "/"))
    parts = [p for p in raw.parts if p not in ("/", ".", "")]
    name = raw.name
    candidates: list[Path] = []
    if raw.is_absolute():
        candidates.append(Path(str(raw)))
    for key in ref.prefix_keys:
        prefix = data_prefix.get(key)
        if prefix:
            candidates.append(data_root / prefix / name)
    # as-is relative to the data root, then ever shorter trailing parts of the path
    # ('./data/nuscenes/samples/X/f' -> 'data/nuscenes/samples/X/f' -> ... -> 'X/f')
    for i in range(len(parts) - 1):
        candidates.append(data_root.joinpath(*parts[i:]))
    for folder in ref.standard_dirs:
        candidates.append(data_root / folder / name)
    candidates.append(data_root / name)
    unique: list[Path] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


# --------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------


class InfoDataset(DetectionDataset):
    """A detection dataset read from an mmdetection3d or OpenPCDet info ``.pkl``.

    Every supported :class:`InfoSchema` is read into the same :class:`Sample`: points and
    boxes in the key LiDAR frame, boxes ``(x, y, z, l, w, h, yaw, vx, vy)`` with the
    geometric centre (NaN velocity where the source has none), cameras with intrinsics
    and LiDAR -> camera transforms, ``num_points`` from the info's ``num_lidar_pts`` /
    ``num_points_in_gt`` (-1 where not recorded).

    **Paths.** Files named by the info are resolved against ``data_root`` (default: the
    info file's folder), trying in order: the path itself if absolute;
    ``data_root / data_prefix[kind] / file name`` when a prefix is given for that kind;
    the path as written relative to ``data_root`` (a leading ``./`` dropped), then ever
    shorter trailing parts of it (so ``./data/nuscenes/samples/LIDAR_TOP/f.pcd.bin``
    finds ``data_root/samples/LIDAR_TOP/f.pcd.bin`` when ``data_root`` is the nuScenes
    folder); then the file name in the standard subfolders (nuScenes:
    ``samples/LIDAR_TOP``, ``sweeps/LIDAR_TOP``, ``samples/CAM_*``; KITTI:
    ``training/velodyne``, ``testing/velodyne``, ``training/velodyne_reduced``, ...,
    ``training/image_2``); finally the file name directly in ``data_root``. A file found
    nowhere is a :class:`DataError` naming the entry and every path tried. Prefix kinds:
    ``"pts"`` (key LiDAR), ``"sweeps"``, ``"img"`` (every camera) or a camera name
    (``"CAM_FRONT"``, ``"image_2"``), as in mmdetection3d's ``data_prefix``.

    **Boxes.** mmdetection3d v2 nuScenes/Lyft ``bbox_3d`` and legacy ``gt_boxes`` hold the
    geometric centre (their converters store the devkit's ``box.center``). Their size
    columns are ``(l, w, h)`` with our yaw (mmdetection3d >= 1.0) or ``(w, l, h)`` with
    ``yaw_legacy = -yaw - pi/2`` (< 1.0, still found in BEVDet/BEVFusion/FastBEV infos and
    in some v2 test fixtures); ``legacy_boxes=None`` tells them apart from the vehicles'
    sizes (cars are longer than wide), ``True``/``False`` forces one. KITTI boxes (every
    KITTI schema) are converted from the camera frame with the frame's calibration
    (:func:`~distill3d.geometry.convert.kitti_camera_to_lidar_boxes`). OpenPCDet boxes are
    ours already.

    **Classes.** A box's source name (mmdetection3d v2: from ``metainfo['categories']`` /
    ``classes`` and its label; otherwise the stored name) is mapped through ``name_map``
    (if given) and kept when it is in ``class_names``; other boxes are dropped. KITTI
    ``DontCare`` regions go to ``extras['dontcare_bbox2d']``.

    **Extras.** ``info_schema``; ``instance_index`` (each kept box's index in the info's
    instance list); nuScenes/Lyft ``num_radar_pts`` (-1 unknown); KITTI ``calib``
    (:class:`~distill3d.geometry.convert.KittiCalib`, NaN for projection matrices the info
    lacks), ``bbox2d``, ``difficulty``, ``dontcare_bbox2d`` (the same keys as
    :class:`~distill3d.data.kitti.KittiDataset`).

    Args:
        info_path: the ``.pkl`` file.
        data_root: folder the info's paths are relative to (default: the info's folder).
        class_names: classes of ``Sample.labels``; default: the info's classes
            (``metainfo``) or the dataset's standard list (:data:`KITTI_CLASSES`,
            :data:`NUSCENES_CLASSES`, :data:`LYFT_CLASSES`).
        load_cameras: read the camera images (with their calibration).
        sweeps: number of previous LiDAR sweeps merged into the key frame, most recent
            first, with a ``time_lag`` point column (key time - sweep time, seconds; 0 for
            the key frame); fewer are merged where the info lists fewer. Sweep points
            within :data:`SWEEP_CLOSE_RADIUS` of their sensor (``|x|, |y| < 1`` m, the ego
            vehicle) are dropped, as mmdetection3d and OpenPCDet do. ``0``: key frame
            only, no time-lag column.
        transforms: augmentation applied to each sample.
        seed: base seed of the augmentation generators.
        load_points: read the LiDAR files; ``False`` gives ``(0, C)`` points and touches
            no point file (metadata-only use, e.g. an info without its sensor data).
        name_map: optional ``{source name: class name}``, applied before the class check
            (e.g. ``{"Van": "Car"}``).
        drop_empty: drop boxes that the info marks invalid (mmdetection3d
            ``bbox_3d_isvalid`` / ``valid_flag``: no LiDAR and no radar point), as
            mmdetection3d's ``use_valid_flag`` and the nuScenes devkit do.
        legacy_boxes: size/yaw convention of nuScenes/Lyft LiDAR boxes: ``None`` detect,
            ``True`` ``(w, l, h, -yaw - pi/2)``, ``False`` ``(l, w, h, yaw)``.
        data_prefix: optional ``{kind: subfolder}`` tried first (see **Paths**).
        load_dim: values per point in the LiDAR files; default 5 for nuScenes/Lyft
            (``x, y, z, intensity, ring``) and the info's ``num_features`` (4) for KITTI.

    Raises:
        DataError: unreadable or unsupported info file, inconsistent boxes (see
            ``legacy_boxes``), or, when a sample is loaded, a missing or corrupt file.
    """

    def __init__(self, info_path: PathLike, data_root: PathLike | None = None,
                 class_names: Sequence[str] | None = None, load_cameras: bool = True,
                 sweeps: int = 0, transforms: Sequence[SampleTransform] = (), seed: int = 0,
                 *, load_points: bool = True, name_map: Mapping[str, str] | None = None,
                 drop_empty: bool = True, legacy_boxes: bool | None = None,
                 data_prefix: Mapping[str, str] | None = None, load_dim: int | None = None):
        self.info_path = Path(info_path)
        self.schema, payload = load_info_file(self.info_path)
        self.data_root = Path(data_root) if data_root is not None else self.info_path.parent
        if not isinstance(sweeps, int) or sweeps < 0:
            raise ValueError(f"sweeps must be an integer >= 0, got {sweeps!r}")
        if load_dim is not None and (not isinstance(load_dim, int) or load_dim < 4):
            raise ValueError(f"load_dim must be an integer >= 4, got {load_dim!r}")
        self.load_cameras = bool(load_cameras)
        self.load_points = bool(load_points)
        self.sweeps = sweeps
        self.name_map = dict(name_map or {})
        self.drop_empty = bool(drop_empty)
        self.data_prefix = dict(data_prefix or {})
        self.load_dim = load_dim

        self.dataset_kind, self._entries, self._metainfo = self._unpack(payload)
        self.source_label_names = self._label_names()
        if class_names is None:
            class_names = self._default_class_names()
        super().__init__(class_names, transforms=transforms, seed=seed)
        self._class_index = {name: i for i, name in enumerate(self.class_names)}
        self.legacy_boxes = self._decide_legacy(legacy_boxes)

    # ---- schema-level set-up ----------------------------------------------------------

    def _unpack(self, payload: Any) -> tuple[str, list[Any], dict[str, Any]]:
        """``(dataset kind, entries, metainfo)``; kind is ``"kitti"``, ``"nuscenes"`` or
        ``"lyft"``."""
        path = self.info_path
        if self.schema is InfoSchema.MMDET3D_V2:
            metainfo = dict(payload["metainfo"] or {})
            entries = payload["data_list"]
            name = str(metainfo.get("dataset", metainfo.get("DATASET", ""))).lower()
            classes = metainfo.get("classes", metainfo.get("CLASSES"))
            if name in ("kitti",):
                kind = "kitti"
            elif name in ("nuscenes", "lyft"):
                kind = name
                if classes is not None and tuple(classes) == LYFT_CLASSES:
                    kind = "lyft"   # mmdetection3d's Lyft test infos say 'Nuscenes'
            elif name in ("", "custom"):
                first = entries[0] if entries else {}
                lidar = first.get("lidar_points", {}) if isinstance(first, Mapping) else {}
                kind = "kitti" if isinstance(lidar, Mapping) and "Tr_velo_to_cam" in lidar \
                    else "nuscenes"
            else:
                raise DataError(
                    f"{path}: mmdetection3d v2 info of dataset {name!r}, which distill3d "
                    "does not read (supported: kitti, nuscenes, lyft). Use a dataset-"
                    "specific reader or convert the data to one of these layouts.")
            return kind, entries, metainfo
        if self.schema is InfoSchema.MMDET3D_LEGACY_NUSCENES:
            metadata = dict(payload["metadata"] or {})
            version = str(metadata.get("version", ""))
            kind = "lyft" if "v1.01" in version else "nuscenes"
            return kind, payload["infos"], metadata
        if self.schema in (InfoSchema.MMDET3D_LEGACY_KITTI, InfoSchema.OPENPCDET_KITTI):
            return "kitti", payload, {}
        return "nuscenes", payload, {}

    def _label_names(self) -> dict[int, str]:
        """mmdetection3d v2 label -> source class name (``-1``: the ignored name)."""
        meta = self._metainfo
        categories = meta.get("categories")
        classes = meta.get("classes", meta.get("CLASSES"))
        names: dict[int, str] = {}
        if isinstance(categories, Mapping):
            ignored = [str(k) for k, v in categories.items() if int(v) == -1]
            names = {int(v): str(k) for k, v in categories.items() if int(v) >= 0}
            if len(ignored) == 1:
                names[-1] = ignored[0]
        elif classes is not None:
            names = {i: str(c) for i, c in enumerate(classes)}
        else:
            default = {"kitti": KITTI_CLASSES, "lyft": LYFT_CLASSES}.get(
                self.dataset_kind, NUSCENES_CLASSES)
            names = dict(enumerate(default))
        if -1 not in names:
            # KITTI v2 infos label only DontCare -1 (update_infos_to_v2.py)
            names[-1] = "DontCare" if self.dataset_kind == "kitti" else "ignore"
        return names

    def _default_class_names(self) -> tuple[str, ...]:
        if self.schema is InfoSchema.MMDET3D_V2:
            return tuple(self.source_label_names[i]
                         for i in sorted(k for k in self.source_label_names if k >= 0))
        return {"kitti": KITTI_CLASSES, "lyft": LYFT_CLASSES}.get(self.dataset_kind,
                                                                  NUSCENES_CLASSES)

    def _raw_lidar_boxes(self, entry: Any) -> tuple[np.ndarray, list[str]] | None:
        """Size columns and names of a nuScenes/Lyft entry's stored boxes (for
        :meth:`_decide_legacy`); None when the entry has none."""
        if not isinstance(entry, Mapping):
            return None
        if self.schema is InfoSchema.MMDET3D_V2:
            instances = entry.get("instances") or []
            rows, names = [], []
            for inst in instances:
                if isinstance(inst, Mapping) and "bbox_3d" in inst:
                    box = np.asarray(inst["bbox_3d"], dtype=np.float64).reshape(-1)
                    if box.size >= 7:
                        rows.append(box[3:6])
                        label = int(inst.get("bbox_label_3d", inst.get("bbox_label", -1)))
                        names.append(self.source_label_names.get(label, "ignore"))
            return (np.asarray(rows).reshape(-1, 3), names) if rows else None
        if "gt_boxes" in entry and "gt_names" in entry:
            boxes = np.asarray(entry["gt_boxes"], dtype=np.float64)
            if boxes.ndim == 2 and boxes.shape[1] >= 7 and boxes.shape[0]:
                names = [str(x) for x in np.asarray(entry["gt_names"]).reshape(-1).tolist()]
                return boxes[:, 3:6], names
        return None

    def _decide_legacy(self, legacy_boxes: bool | None) -> bool | None:
        """Decide the size/yaw convention of nuScenes/Lyft mmdetection3d boxes."""
        needs = self.dataset_kind in ("nuscenes", "lyft") and self.schema in (
            InfoSchema.MMDET3D_V2, InfoSchema.MMDET3D_LEGACY_NUSCENES)
        if not needs:
            return None
        if legacy_boxes is not None:
            return bool(legacy_boxes)
        votes_lwh = votes_wlh = 0
        any_boxes = False
        for entry in self._entries:
            found = self._raw_lidar_boxes(entry)
            if found is None:
                continue
            any_boxes = True
            sizes, names = found
            mask = np.array([n.lower().split(".")[-1] in _ELONGATED_CLASSES
                             or n.lower().startswith("vehicle.") for n in names], dtype=bool)
            a, b = sizes[mask, 0], sizes[mask, 1]
            votes_lwh += int(np.sum(a > _ELONGATION_RATIO * b))
            votes_wlh += int(np.sum(b > _ELONGATION_RATIO * a))
            if votes_lwh + votes_wlh >= 200:
                break
        total = votes_lwh + votes_wlh
        if total == 0:
            if any_boxes and self.schema is InfoSchema.MMDET3D_LEGACY_NUSCENES:
                raise DataError(
                    f"{self.info_path}: cannot tell whether gt_boxes are mmdetection3d < 1.0 "
                    "(w, l, h, -yaw - pi/2) or 1.0rc (l, w, h, yaw): no vehicle boxes to "
                    "compare. Pass legacy_boxes=True or legacy_boxes=False.")
            return False  # v2's documented convention (or no boxes at all)
        if min(votes_lwh, votes_wlh) > 0.1 * total:
            raise DataError(
                f"{self.info_path}: inconsistent box sizes: {votes_lwh} vehicle boxes are "
                f"longer along size column 3 and {votes_wlh} along column 4; pass "
                "legacy_boxes=True (w, l, h, -yaw - pi/2) or False (l, w, h, yaw) explicitly.")
        return votes_wlh > votes_lwh

    # ---- Dataset API ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def sample_tokens(self) -> list[str]:
        """The token of every entry (nuScenes sample token, KITTI frame id)."""
        return [self._entry_token(i) for i in range(len(self))]

    def _entry_token(self, index: int) -> str:
        entry = self._entries[index]
        if not isinstance(entry, Mapping):
            return str(index)
        if self.schema is InfoSchema.MMDET3D_V2:
            if "token" in entry:
                return str(entry["token"])
            for key in ("sample_idx", "sample_id"):   # the KITTI demo info says sample_id
                if key in entry:
                    return _token(entry[key])
            return _token(index)
        if self.schema in (InfoSchema.MMDET3D_LEGACY_KITTI, InfoSchema.OPENPCDET_KITTI):
            image = entry.get("image", {})
            point_cloud = entry.get("point_cloud", {})
            if isinstance(image, Mapping) and "image_idx" in image:
                return _token(image["image_idx"])
            if isinstance(point_cloud, Mapping) and "lidar_idx" in point_cloud:
                return _token(point_cloud["lidar_idx"])
            return _token(index)
        return str(entry.get("token", index))

    def _frame_record(self, index: int) -> _FrameRecord:
        """The entry ``index`` parsed into our conventions (no file is read)."""
        where = _Where(self.info_path, index, self._entry_token(index))
        entry = self._entries[index]
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: expected a dict, got {type(entry).__name__}")
        try:
            if self.schema is InfoSchema.MMDET3D_V2:
                if self.dataset_kind == "kitti":
                    return self._parse_v2_kitti(entry, where)
                return self._parse_v2_nuscenes(entry, where)
            if self.schema is InfoSchema.MMDET3D_LEGACY_NUSCENES:
                return self._parse_legacy_nuscenes(entry, where)
            if self.schema is InfoSchema.OPENPCDET_NUSCENES:
                return self._parse_openpcdet_nuscenes(entry, where)
            return self._parse_kitti_list(entry, where)
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, np.linalg.LinAlgError) as exc:
            raise DataError(f"{where}: malformed {self.schema} entry "
                            f"({type(exc).__name__}: {exc})") from None

    def load_sample(self, index: int) -> Sample:
        """Read entry ``index`` (and its files) into a :class:`Sample`."""
        record = self._frame_record(index)
        where = _Where(self.info_path, index, record.token)
        keep, labels = self._select(record)
        features = BASE_POINT_FEATURES + (("time_lag",) if self.sweeps > 0 else ())
        if self.load_points:
            points = self._load_points(record, where)
        else:
            points = np.zeros((0, len(features)), np.float32)
        cameras = self._load_cameras(record, where) if self.load_cameras else []
        extras = dict(record.extras)
        extras["info_schema"] = self.schema.value
        extras["instance_index"] = torch.from_numpy(record.instance_index[keep].copy())
        for key, values in record.box_extras.items():
            extras[key] = torch.from_numpy(np.ascontiguousarray(values[keep]))
        return Sample(
            token=record.token,
            points=torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            boxes=torch.from_numpy(record.boxes[keep].astype(np.float32)),
            labels=torch.as_tensor(labels, dtype=torch.int64),
            class_names=self.class_names,
            point_features=features,
            num_points=torch.from_numpy(record.num_points[keep].astype(np.int64)),
            cameras=cameras,
            lidar_to_ego=torch.from_numpy(record.lidar_to_ego.astype(np.float32)),
            ego_to_global=torch.from_numpy(record.ego_to_global.astype(np.float64)),
            timestamp_us=int(record.timestamp_us),
            extras=extras,
        )

    # ---- class selection ----------------------------------------------------------------

    def _select(self, record: _FrameRecord) -> tuple[np.ndarray, list[int]]:
        keep, labels = [], []
        for i, name in enumerate(record.names):
            mapped = self.name_map.get(name, name)
            label = self._class_index.get(mapped)
            if label is None or (self.drop_empty and not record.valid[i]):
                continue
            keep.append(i)
            labels.append(label)
        return np.asarray(keep, dtype=np.int64), labels

    # ---- file loading -------------------------------------------------------------------

    def _resolve(self, ref: _FileRef, where: _Where | str) -> Path:
        """The existing path of a file named by the info (see the class docstring)."""
        candidates = _candidate_paths(ref, self.data_root, self.data_prefix)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = "\n  ".join(str(c) for c in candidates)
        raise DataError(f"{where}: {ref.what} {ref.raw!r} not found; tried:\n  {tried}\n"
                        f"(set data_root to the dataset folder, or data_prefix)")

    def _read_points(self, ref: _FileRef, num_features: int, where: _Where) -> np.ndarray:
        path = self._resolve(ref, where)
        load_dim = self.load_dim or num_features
        try:
            points = read_velodyne(path, load_dim)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not np.isfinite(points[:, :4]).all():
            bad = int((~np.isfinite(points[:, :4])).any(axis=1).sum())
            raise DataError(f"{where}: {path}: {bad} points with NaN/inf coordinates or "
                            "intensity")
        return points[:, :4]

    def _load_points(self, record: _FrameRecord, where: _Where) -> np.ndarray:
        if record.lidar is None:
            raise DataError(f"{where}: the info names no LiDAR file; use load_points=False")
        key = self._read_points(record.lidar, record.num_features, where)
        if self.sweeps == 0:
            return key
        chunks = [np.concatenate([key, np.zeros((len(key), 1), np.float32)], axis=1)]
        for sweep in record.sweeps[: self.sweeps]:
            pts = self._read_points(sweep.lidar, sweep.num_features, where).astype(np.float64)
            # points on the ego vehicle, in the sweep's own frame (mmdetection3d's
            # _remove_close, OpenPCDet's remove_ego_points, our NuScenesDataset)
            radius = SWEEP_CLOSE_RADIUS
            pts = pts[~((np.abs(pts[:, 0]) < radius) & (np.abs(pts[:, 1]) < radius))]
            xyz = pts[:, :3] @ sweep.sweep_to_key[:3, :3].T + sweep.sweep_to_key[:3, 3]
            lag = np.full((len(pts), 1), sweep.time_lag)
            chunks.append(np.concatenate([xyz, pts[:, 3:4], lag], axis=1).astype(np.float32))
        return np.concatenate(chunks, axis=0)

    def _load_cameras(self, record: _FrameRecord, where: _Where) -> list[CameraView]:
        from PIL import Image, UnidentifiedImageError

        views = []
        for cam in record.cameras:
            path = self._resolve(cam.image, where)
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{where}: {path}: unreadable image ({exc})") from None
            height, width = rgb.shape[:2]
            views.append(CameraView(
                name=cam.name,
                image=torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
                intrinsics=torch.from_numpy(cam.intrinsics.astype(np.float32)),
                lidar_to_camera=torch.from_numpy(cam.lidar_to_camera.astype(np.float32)),
                original_size=(int(width), int(height)),
            ))
        return views

    # ---- per-schema parsers ---------------------------------------------------------------

    def _lidar_dim(self, stored: Any = None) -> int:
        """Values per point: nuScenes/Lyft files always hold 5 (mmdetection3d's
        ``num_pts_feats`` is not reliable for them); KITTI the stored count (4)."""
        if self.dataset_kind in ("nuscenes", "lyft"):
            return 5
        try:
            return int(stored) if stored is not None else 4
        except (TypeError, ValueError):
            return 4

    def _nus_lidar_ref(self, raw: str, sweep: bool = False) -> _FileRef:
        return _FileRef(str(raw), _NUSCENES_SWEEP_DIRS if sweep else _NUSCENES_LIDAR_DIRS,
                        ("sweeps", "pts") if sweep else ("pts",),
                        "LiDAR sweep file" if sweep else "LiDAR file")

    @staticmethod
    def _nus_image_ref(raw: str, cam: str) -> _FileRef:
        return _FileRef(str(raw), (f"samples/{cam}", "images", f"sweeps/{cam}"), (cam, "img"),
                        f"{cam} image")

    def _lidar_boxes(self, raw: np.ndarray, where: _Where, what: str) -> np.ndarray:
        """nuScenes/Lyft mmdetection3d LiDAR boxes (geometric centre) -> ``(M, 7)`` ours."""
        if raw.shape[0] == 0:
            return np.zeros((0, 7))
        if raw.ndim != 2 or raw.shape[1] < 7:
            raise DataError(f"{where}: {what} must have shape (N, >=7), got {raw.shape}")
        return mmdet3d_lidar_to_boxes(raw[:, :7], legacy=bool(self.legacy_boxes),
                                      origin_z=0.5).numpy()

    def _parse_v2_nuscenes(self, e: Mapping[str, Any], where: _Where) -> _FrameRecord:
        lidar_points = _get(e, "lidar_points", where)
        lidar_to_ego = _matrix(lidar_points.get("lidar2ego", np.eye(4)), where,
                               "lidar_points.lidar2ego", (4,), (4,))
        ego_to_global = _matrix(e.get("ego2global", np.eye(4)), where, "ego2global", (4,), (4,))
        timestamp = float(e.get("timestamp", 0.0))
        instances = e.get("instances") or []
        n = len(instances)
        raw = np.full((n, 9), np.nan)
        names: list[str] = []
        num_points = np.full(n, -1, np.int64)
        num_radar = np.full(n, -1, np.int64)
        valid = np.ones(n, bool)
        for i, inst in enumerate(instances):
            box = _array(_get(inst, "bbox_3d", where, f"instance {i}"), where,
                         f"instance {i} bbox_3d").reshape(-1)
            if box.size < 7:
                raise DataError(f"{where}: instance {i} bbox_3d has {box.size} values, need 7")
            raw[i, : min(box.size, 9)] = box[:9]
            if "velocity" in inst and inst["velocity"] is not None:
                raw[i, 7:9] = _array(inst["velocity"], where, f"instance {i} velocity"
                                     ).reshape(-1)[:2]
            label = int(inst.get("bbox_label_3d", inst.get("bbox_label", -1)))
            names.append(self.source_label_names.get(label, "ignore"))
            if inst.get("num_lidar_pts") is not None:
                num_points[i] = int(inst["num_lidar_pts"])
            if inst.get("num_radar_pts") is not None:
                num_radar[i] = int(inst["num_radar_pts"])
            if inst.get("bbox_3d_isvalid") is not None:
                valid[i] = bool(inst["bbox_3d_isvalid"])
        boxes = np.full((n, 9), np.nan)
        boxes[:, :7] = self._lidar_boxes(raw[:, :7], where, "bbox_3d")
        boxes[:, 7:9] = raw[:, 7:9]
        cameras = []
        for cam, info in (e.get("images") or {}).items():
            if not isinstance(info, Mapping) or not info.get("img_path"):
                continue
            if info.get("lidar2cam") is None or info.get("cam2img") is None:
                raise DataError(f"{where}: camera {cam} has an image but no lidar2cam/cam2img")
            k, lidar_to_cam = _projection_to_camera(
                _matrix(info["cam2img"], where, f"{cam} cam2img", (3, 4), (3, 4)),
                _matrix(info["lidar2cam"], where, f"{cam} lidar2cam", (4,), (4,)))
            cameras.append(_CameraRecord(str(cam), self._nus_image_ref(info["img_path"], cam),
                                         k, lidar_to_cam))
        key_to_global = ego_to_global @ lidar_to_ego
        sweeps = []
        for j, sw in enumerate(e.get("lidar_sweeps") or []):
            sw_lidar = _get(sw, "lidar_points", where, f"lidar_sweeps[{j}]")
            if "lidar2ego" in sw_lidar and "ego2global" in sw:
                sweep_to_global = (_matrix(sw["ego2global"], where, "sweep ego2global", (4,), (4,))
                                   @ _matrix(sw_lidar["lidar2ego"], where, "sweep lidar2ego",
                                             (4,), (4,)))
                sweep_to_key = _inverse(key_to_global) @ sweep_to_global
            elif "lidar2sensor" in sw_lidar:
                sweep_to_key = _inverse(_matrix(sw_lidar["lidar2sensor"], where,
                                                "sweep lidar2sensor", (4,), (4,)))
            else:
                raise DataError(f"{where}: lidar_sweeps[{j}] has neither lidar2ego + "
                                "ego2global nor lidar2sensor")
            sweeps.append(_SweepRecord(
                self._nus_lidar_ref(_get(sw_lidar, "lidar_path", where, "sweep"), sweep=True),
                sweep_to_key, timestamp - float(sw.get("timestamp", timestamp)),
                self._lidar_dim()))
        return _FrameRecord(
            token=where.token,
            lidar=self._nus_lidar_ref(_get(lidar_points, "lidar_path", where, "lidar_points")),
            num_features=self._lidar_dim(lidar_points.get("num_pts_feats")),
            boxes=boxes, names=names, num_points=num_points, valid=valid,
            instance_index=np.arange(n, dtype=np.int64), cameras=cameras, sweeps=sweeps,
            lidar_to_ego=lidar_to_ego, ego_to_global=ego_to_global,
            timestamp_us=int(round(timestamp * 1e6)), box_extras={"num_radar_pts": num_radar})

    def _parse_v2_kitti(self, e: Mapping[str, Any], where: _Where) -> _FrameRecord:
        images = _get(e, "images", where)
        lidar_points = _get(e, "lidar_points", where)
        p_mats: dict[str, np.ndarray | None] = {}
        for i in range(4):
            cam = images.get(f"CAM{i}")
            p_mats[f"P{i}"] = (None if not isinstance(cam, Mapping) or cam.get("cam2img") is None
                               else _pad4(_matrix(cam["cam2img"], where, f"CAM{i} cam2img")))
        if p_mats["P2"] is None:
            raise DataError(f"{where}: images.CAM2.cam2img (P2) is missing")
        cam2 = images["CAM2"]
        if "Tr_velo_to_cam" in lidar_points:
            tr = _pad4(_matrix(lidar_points["Tr_velo_to_cam"], where, "Tr_velo_to_cam"))
            r0 = _pad4(_matrix(images.get("R0_rect", np.eye(4)), where, "R0_rect"))
        elif cam2.get("lidar2cam") is not None:
            tr = _pad4(_matrix(cam2["lidar2cam"], where, "CAM2 lidar2cam"))
            r0 = np.eye(4)
        else:
            raise DataError(f"{where}: neither lidar_points.Tr_velo_to_cam nor "
                            "images.CAM2.lidar2cam is recorded")
        imu = lidar_points.get("Tr_imu_to_velo")
        calib = _kitti_calib(p_mats, r0, tr,
                             None if imu is None else _pad4(_matrix(imu, where, "Tr_imu_to_velo")))
        instances = e.get("instances") or []
        loc, dims, ry, names, num_points, bbox2d, difficulty, index = [], [], [], [], [], [], [], []
        dontcare = []
        for i, inst in enumerate(instances):
            label = int(inst.get("bbox_label_3d", inst.get("bbox_label", -1)))
            name = self.source_label_names.get(label, "DontCare")
            box2d = _array(inst.get("bbox", [np.nan] * 4), where, f"instance {i} bbox").reshape(-1)
            if name == "DontCare":
                dontcare.append(box2d[:4])
                continue
            box = _array(_get(inst, "bbox_3d", where, f"instance {i}"), where,
                         f"instance {i} bbox_3d", (7,))
            loc.append(box[:3])
            dims.append(box[3:6])
            ry.append(box[6])
            names.append(name)
            num_points.append(int(inst.get("num_lidar_pts", -1)))
            bbox2d.append(box2d[:4])
            difficulty.append(int(inst.get("difficulty", -1)))
            index.append(i)
        boxes = _kitti_boxes(np.asarray(loc).reshape(-1, 3), np.asarray(dims).reshape(-1, 3),
                             np.asarray(ry).reshape(-1), calib)
        cameras = []
        if cam2.get("img_path"):
            k, lidar_to_cam = _projection_to_camera(calib.P2.numpy(),
                                                    calib.lidar_to_rect_matrix().numpy())
            cameras.append(_CameraRecord("image_2", _FileRef(
                str(cam2["img_path"]), _KITTI_IMAGE_DIRS, ("image_2", "img"), "image_2 image"),
                k, lidar_to_cam))
        m = len(names)
        return _FrameRecord(
            token=where.token,
            lidar=_FileRef(str(_get(lidar_points, "lidar_path", where, "lidar_points")),
                           _KITTI_LIDAR_DIRS, ("pts",), "LiDAR file"),
            num_features=self._lidar_dim(lidar_points.get("num_pts_feats")),
            boxes=boxes, names=names, num_points=np.asarray(num_points, np.int64).reshape(m),
            valid=np.ones(m, bool), instance_index=np.asarray(index, np.int64).reshape(m),
            cameras=cameras,
            extras={"calib": calib,
                    "dontcare_bbox2d": torch.as_tensor(np.asarray(dontcare).reshape(-1, 4),
                                                       dtype=torch.float32)},
            box_extras={"bbox2d": np.asarray(bbox2d, np.float32).reshape(m, 4),
                        "difficulty": np.asarray(difficulty, np.int64).reshape(m)})

    def _parse_legacy_nuscenes(self, e: Mapping[str, Any], where: _Where) -> _FrameRecord:
        lidar_to_ego = _pose(_get(e, "lidar2ego_rotation", where),
                             _get(e, "lidar2ego_translation", where), where, "lidar2ego")
        ego_to_global = _pose(_get(e, "ego2global_rotation", where),
                              _get(e, "ego2global_translation", where), where, "ego2global")
        timestamp_us = int(round(float(e.get("timestamp", 0))))
        if "gt_boxes" in e:
            raw = _array(e["gt_boxes"], where, "gt_boxes")
            raw = raw.reshape(-1, raw.shape[-1] if raw.ndim == 2 else 7)
            n = raw.shape[0]
            boxes = np.full((n, 9), np.nan)
            boxes[:, :7] = self._lidar_boxes(raw, where, "gt_boxes")
            if e.get("gt_velocity") is not None:
                boxes[:, 7:9] = _array(e["gt_velocity"], where, "gt_velocity").reshape(n, -1)[:, :2]
            elif raw.shape[1] >= 9:
                boxes[:, 7:9] = raw[:, 7:9]
            names = _names_array(_get(e, "gt_names", where), n, where, "gt_names")
            num_points = (_array(e["num_lidar_pts"], where, "num_lidar_pts", dtype=np.int64
                                 ).reshape(n) if "num_lidar_pts" in e else np.full(n, -1, np.int64))
            valid = (_array(e["valid_flag"], where, "valid_flag", dtype=bool).reshape(n)
                     if "valid_flag" in e else np.ones(n, bool))
            index = np.arange(n, dtype=np.int64)
        else:   # test-split infos carry no GT
            boxes, names, num_points, valid, index = _empty_gt()
        num_radar = _radar_counts(e, len(names), where)
        cameras = []
        for cam, info in (e.get("cams") or {}).items():
            sensor_to_lidar = _rigid(_get(info, "sensor2lidar_rotation", where, cam),
                                     _get(info, "sensor2lidar_translation", where, cam),
                                     where, f"{cam} sensor2lidar")
            k = _matrix(_get(info, "cam_intrinsic", where, cam), where, f"{cam} cam_intrinsic",
                        (3,), (3,))
            cameras.append(_CameraRecord(str(cam), self._nus_image_ref(
                _get(info, "data_path", where, cam), str(cam)), k, _inverse(sensor_to_lidar)))
        key_name = PurePosixPath(str(_get(e, "lidar_path", where))).name
        sweeps = []
        for j, sw in enumerate(e.get("sweeps") or []):
            data_path = str(_get(sw, "data_path", where, f"sweeps[{j}]"))
            sw_ts = float(sw.get("timestamp", timestamp_us))
            if PurePosixPath(data_path).name == key_name:
                continue   # some converters list the key frame itself as a sweep
            sweeps.append(_SweepRecord(
                self._nus_lidar_ref(data_path, sweep=True),
                _rigid(_get(sw, "sensor2lidar_rotation", where, f"sweeps[{j}]"),
                       _get(sw, "sensor2lidar_translation", where, f"sweeps[{j}]"),
                       where, f"sweeps[{j}] sensor2lidar"),
                (timestamp_us - sw_ts) / 1e6, self._lidar_dim()))
        return _FrameRecord(
            token=where.token, lidar=self._nus_lidar_ref(str(e["lidar_path"])),
            num_features=self._lidar_dim(), boxes=boxes, names=names, num_points=num_points,
            valid=valid, instance_index=index, cameras=cameras, sweeps=sweeps,
            lidar_to_ego=lidar_to_ego, ego_to_global=ego_to_global, timestamp_us=timestamp_us,
            box_extras={"num_radar_pts": num_radar})

    def _parse_openpcdet_nuscenes(self, e: Mapping[str, Any], where: _Where) -> _FrameRecord:
        lidar_to_ego = (_inverse(_matrix(e["ref_from_car"], where, "ref_from_car", (4,), (4,)))
                        if e.get("ref_from_car") is not None else np.eye(4))
        ego_to_global = (_inverse(_matrix(e["car_from_global"], where, "car_from_global",
                                          (4,), (4,)))
                         if e.get("car_from_global") is not None else np.eye(4))
        if "gt_boxes" in e:
            raw = _array(e["gt_boxes"], where, "gt_boxes")
            raw = raw.reshape(-1, raw.shape[-1] if raw.ndim == 2 else 9)
            if raw.shape[1] < 7:
                raise DataError(f"{where}: gt_boxes must have shape (N, >=7), got {raw.shape}")
            n = raw.shape[0]
            boxes = np.full((n, 9), np.nan)
            if n:
                boxes[:, :7] = openpcdet_to_boxes(raw[:, :7]).numpy()
            if raw.shape[1] >= 9:
                boxes[:, 7:9] = raw[:, 7:9]
            elif e.get("gt_boxes_velocity") is not None:
                boxes[:, 7:9] = _array(e["gt_boxes_velocity"], where, "gt_boxes_velocity"
                                       ).reshape(n, -1)[:, :2]
            names = _names_array(_get(e, "gt_names", where), n, where, "gt_names")
            num_points = (_array(e["num_lidar_pts"], where, "num_lidar_pts", dtype=np.int64
                                 ).reshape(n) if "num_lidar_pts" in e else np.full(n, -1, np.int64))
            valid = np.ones(n, bool)
            index = np.arange(n, dtype=np.int64)
        else:
            boxes, names, num_points, valid, index = _empty_gt()
        num_radar = _radar_counts(e, len(names), where)
        cameras = []
        for cam, info in (e.get("cams") or {}).items():
            sensor_to_lidar = _rigid(_get(info, "sensor2lidar_rotation", where, cam),
                                     _get(info, "sensor2lidar_translation", where, cam),
                                     where, f"{cam} sensor2lidar")
            intr = info.get("camera_intrinsics", info.get("cam_intrinsic"))
            if intr is None:
                raise DataError(f"{where}: camera {cam} has no camera_intrinsics")
            k = _matrix(intr, where, f"{cam} camera_intrinsics", (3,), (3,))
            cameras.append(_CameraRecord(str(cam), self._nus_image_ref(
                _get(info, "data_path", where, cam), str(cam)), k, _inverse(sensor_to_lidar)))
        sweeps = []
        for j, sw in enumerate(e.get("sweeps") or []):
            tm = sw.get("transform_matrix") if isinstance(sw, Mapping) else None
            if tm is None:
                continue   # OpenPCDet pads scene starts with copies of the key frame
            sweeps.append(_SweepRecord(
                self._nus_lidar_ref(str(_get(sw, "lidar_path", where, f"sweeps[{j}]")),
                                    sweep=True),
                _matrix(tm, where, f"sweeps[{j}] transform_matrix", (4,), (4,)),
                float(sw.get("time_lag", 0.0)), self._lidar_dim()))
        return _FrameRecord(
            token=where.token, lidar=self._nus_lidar_ref(str(_get(e, "lidar_path", where))),
            num_features=self._lidar_dim(), boxes=boxes, names=names, num_points=num_points,
            valid=valid, instance_index=index, cameras=cameras, sweeps=sweeps,
            lidar_to_ego=lidar_to_ego, ego_to_global=ego_to_global,
            timestamp_us=int(round(float(e.get("timestamp", 0.0)) * 1e6)),
            box_extras={"num_radar_pts": num_radar})

    def _parse_kitti_list(self, e: Mapping[str, Any], where: _Where) -> _FrameRecord:
        """mmdetection3d legacy and OpenPCDet KITTI entries (the same ``annos``)."""
        calib_info = _get(e, "calib", where)
        p_mats = {f"P{i}": (_pad4(_matrix(calib_info[f"P{i}"], where, f"calib.P{i}"))
                            if calib_info.get(f"P{i}") is not None else None) for i in range(4)}
        if p_mats["P2"] is None:
            raise DataError(f"{where}: calib has no P2")
        r0 = _pad4(_matrix(_get(calib_info, "R0_rect", where, "calib"), where, "calib.R0_rect"))
        tr = _pad4(_matrix(_get(calib_info, "Tr_velo_to_cam", where, "calib"), where,
                           "calib.Tr_velo_to_cam"))
        imu = calib_info.get("Tr_imu_to_velo")
        calib = _kitti_calib(p_mats, r0, tr,
                             None if imu is None else _pad4(_matrix(imu, where, "Tr_imu_to_velo")))
        point_cloud = _get(e, "point_cloud", where)
        image = _get(e, "image", where)
        if self.schema is InfoSchema.MMDET3D_LEGACY_KITTI:
            lidar_raw = str(point_cloud["velodyne_path"])
            image_raw = str(image.get("image_path", f"{where.token}.png"))
        else:
            lidar_raw = f"{_token(point_cloud.get('lidar_idx', where.token))}.bin"
            image_raw = f"{_token(image.get('image_idx', where.token))}.png"
        annos = e.get("annos")
        dontcare = np.zeros((0, 4))
        extras: dict[str, Any] = {"calib": calib}
        box_extras: dict[str, np.ndarray] = {}
        if isinstance(annos, Mapping):
            names_all = [str(x) for x in np.asarray(_get(annos, "name", where, "annos")
                                                    ).reshape(-1).tolist()]
            n_all = len(names_all)
            loc = _array(_get(annos, "location", where, "annos"), where, "annos.location"
                         ).reshape(n_all, 3)
            dims = _array(_get(annos, "dimensions", where, "annos"), where, "annos.dimensions"
                          ).reshape(n_all, 3)
            ry = _array(_get(annos, "rotation_y", where, "annos"), where, "annos.rotation_y"
                        ).reshape(n_all)
            bbox = (_array(annos["bbox"], where, "annos.bbox").reshape(n_all, 4)
                    if "bbox" in annos else np.full((n_all, 4), np.nan))
            npts = (_array(annos["num_points_in_gt"], where, "annos.num_points_in_gt",
                           dtype=np.int64).reshape(n_all)
                    if "num_points_in_gt" in annos else np.full(n_all, -1, np.int64))
            diff = (_array(annos["difficulty"], where, "annos.difficulty", dtype=np.int64
                           ).reshape(n_all) if "difficulty" in annos else np.full(n_all, -1))
            is_object = np.array([n != "DontCare" for n in names_all], dtype=bool)
            sel = np.flatnonzero(is_object)
            boxes = _kitti_boxes(loc[sel], dims[sel], ry[sel], calib)
            names = [names_all[i] for i in sel]
            num_points, valid, index = npts[sel], np.ones(len(sel), bool), sel.astype(np.int64)
            dontcare = bbox[~is_object]
            box_extras = {"bbox2d": bbox[sel].astype(np.float32),
                          "difficulty": diff[sel].astype(np.int64)}
        else:
            boxes, names, num_points, valid, index = _empty_gt()
        extras["dontcare_bbox2d"] = torch.as_tensor(dontcare.reshape(-1, 4),
                                                      dtype=torch.float32)
        k, lidar_to_cam = _projection_to_camera(calib.P2.numpy(),
                                                calib.lidar_to_rect_matrix().numpy())
        cameras = [_CameraRecord("image_2", _FileRef(image_raw, _KITTI_IMAGE_DIRS,
                                                     ("image_2", "img"), "image_2 image"),
                                 k, lidar_to_cam)]
        return _FrameRecord(
            token=where.token,
            lidar=_FileRef(lidar_raw, _KITTI_LIDAR_DIRS, ("pts",), "LiDAR file"),
            num_features=self._lidar_dim(point_cloud.get("num_features")),
            boxes=boxes, names=names, num_points=num_points, valid=valid,
            instance_index=index, cameras=cameras, extras=extras, box_extras=box_extras)
