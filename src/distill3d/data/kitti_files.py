"""Minimal, strict readers and writers for the KITTI object-detection file formats.

* ``calib/XXXXXX.txt``: lines ``KEY: v1 v2 ...`` -> :class:`~distill3d.geometry.convert.KittiCalib`.
* ``label_2/XXXXXX.txt``: one object per line, 15 columns (16 with a score for
  detection results) -> :class:`KittiObject`.
* ``velodyne/XXXXXX.bin``: flat little-endian float32 points ``(x, y, z, reflectance)``
  in the velodyne frame (x forward, y left, z up).

Every error is a ``ValueError`` whose message names the file (and the line number and
key where there is one), so a broken file in a large dataset is found at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from distill3d.atomic_io import atomic_write_text
from distill3d.geometry.convert import KittiCalib

__all__ = [
    "KittiObject",
    "read_kitti_calib",
    "read_kitti_labels",
    "write_kitti_labels",
    "kitti_objects_to_arrays",
    "read_velodyne",
]

PathLike = str | os.PathLike[str]

#: calib keys, number of values, and whether the key is required.
_CALIB_KEYS: dict[str, tuple[int, bool]] = {
    "P0": (12, True),
    "P1": (12, True),
    "P2": (12, True),
    "P3": (12, True),
    "R0_rect": (9, True),
    "Tr_velo_to_cam": (12, True),
    "Tr_imu_to_velo": (12, False),
}


def read_kitti_calib(path: PathLike) -> KittiCalib:
    """Read a KITTI object calibration file.

    Lines look like ``P2: 7.07e+02 0.0 ...``; blank lines are skipped and keys other
    than ``P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo`` are ignored.
    ``Tr_imu_to_velo`` is optional.

    Args:
        path: the ``.txt`` file.

    Returns:
        The calibration (float64 tensors, shapes as in :class:`KittiCalib`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a required key is missing, a key appears twice, a line has no ``:``,
            a value is not a number, or a key has the wrong number of values; the
            message names the file, the line number and the key.
    """
    path = Path(path)
    values: dict[str, np.ndarray] = {}
    lines_of: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            if ":" not in line:
                raise ValueError(f"{path}:{lineno}: expected 'KEY: values', got {line[:60]!r}")
            key, _, rest = line.partition(":")
            key = key.strip()
            if key not in _CALIB_KEYS:
                continue
            if key in values:
                raise ValueError(
                    f"{path}:{lineno}: key {key!r} appears twice (first on line {lines_of[key]})"
                )
            try:
                numbers = np.array([float(tok) for tok in rest.split()], dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: key {key!r}: non-numeric value ({exc})") from None
            expected = _CALIB_KEYS[key][0]
            if numbers.size != expected:
                raise ValueError(
                    f"{path}:{lineno}: key {key!r} must have {expected} values, got {numbers.size}"
                )
            if not np.isfinite(numbers).all():
                raise ValueError(f"{path}:{lineno}: key {key!r} has NaN or inf values")
            values[key] = numbers
            lines_of[key] = lineno
    missing = [k for k, (_, required) in _CALIB_KEYS.items() if required and k not in values]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing} (line: none, file has "
                         f"{sorted(values)})")
    imu = values.get("Tr_imu_to_velo")
    return KittiCalib(
        P0=values["P0"].reshape(3, 4),
        P1=values["P1"].reshape(3, 4),
        P2=values["P2"].reshape(3, 4),
        P3=values["P3"].reshape(3, 4),
        R0_rect=values["R0_rect"].reshape(3, 3),
        Tr_velo_to_cam=values["Tr_velo_to_cam"].reshape(3, 4),
        Tr_imu_to_velo=None if imu is None else imu.reshape(3, 4),
    )


@dataclass(frozen=True)
class KittiObject:
    """One line of a KITTI ``label_2`` file (ground truth or detection result).

    Frames and units: ``bbox`` in ``image_2`` pixels; ``dimensions``, ``location`` in
    metres in the rectified camera frame (x right, y down, z forward); ``location`` is
    the **bottom centre**; angles in radians. Use
    :func:`distill3d.geometry.convert.kitti_camera_to_lidar_boxes` to get LiDAR boxes.

    Attributes:
        type: class name (``Car``, ``Pedestrian``, ``DontCare``, ...).
        truncated: 0 (fully visible) .. 1 (fully truncated); -1 for DontCare.
        occluded: 0 visible, 1 partly, 2 largely occluded, 3 unknown; -1 for DontCare.
        alpha: observation angle in ``[-pi, pi]``.
        bbox: ``(x1, y1, x2, y2)`` 2-D box, shape ``(4,)``.
        dimensions: ``(h, w, l)``, shape ``(3,)``.
        location: ``(x, y, z)`` bottom centre, shape ``(3,)``.
        rotation_y: rotation about camera +y in ``[-pi, pi]``.
        score: detection confidence (16th column), ``None`` for ground truth.
    """

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    dimensions: tuple[float, float, float]
    location: tuple[float, float, float]
    rotation_y: float
    score: float | None = None

    def __post_init__(self) -> None:
        if not self.type or any(c.isspace() for c in self.type):
            raise ValueError(f"KittiObject.type must be a non-empty word, got {self.type!r}")
        for name, size in (("bbox", 4), ("dimensions", 3), ("location", 3)):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != size:
                raise ValueError(f"KittiObject.{name} must have {size} values, got {len(value)}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "truncated", float(self.truncated))
        object.__setattr__(self, "occluded", int(self.occluded))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "rotation_y", float(self.rotation_y))
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))


def _parse_label_line(tokens: Sequence[str]) -> KittiObject:
    if len(tokens) not in (15, 16):
        raise ValueError(f"expected 15 or 16 columns, got {len(tokens)}")
    nums = [float(t) for t in tokens[1:]]
    if not all(math.isfinite(v) for v in nums):
        raise ValueError("NaN or inf value")
    occluded = nums[1]
    if occluded != int(occluded):
        raise ValueError(f"occluded must be an integer, got {tokens[2]!r}")
    return KittiObject(
        type=tokens[0],
        truncated=nums[0],
        occluded=int(occluded),
        alpha=nums[2],
        bbox=(nums[3], nums[4], nums[5], nums[6]),
        dimensions=(nums[7], nums[8], nums[9]),
        location=(nums[10], nums[11], nums[12]),
        rotation_y=nums[13],
        score=nums[14] if len(nums) == 15 else None,
    )


def read_kitti_labels(path: PathLike) -> list[KittiObject]:
    """Read a KITTI ``label_2`` file (15 columns, or 16 with a trailing score).

    Blank lines are skipped; ``DontCare`` entries are kept (filter on ``type``).

    Args:
        path: the ``.txt`` file.

    Returns:
        The objects in file order (empty list for an empty file).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line (wrong column count, non-numeric or non-finite
            value); the message names the file and the line number.
    """
    path = Path(path)
    objects: list[KittiObject] = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            tokens = raw.split()
            if not tokens:
                continue
            try:
                objects.append(_parse_label_line(tokens))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: malformed KITTI label line: {exc}") from None
    return objects


def _format_number(value: float, precision: int | None) -> str:
    if precision is None:
        text = repr(float(value))
        return text[:-2] if text.endswith(".0") else text
    return f"{value:.{precision}f}"


def write_kitti_labels(path: PathLike, objects: Iterable[KittiObject],
                       precision: int | None = None) -> None:
    """Write objects as a KITTI ``label_2`` file, atomically.

    The text goes to a temporary file in the same directory, which is flushed, synced
    and then moved over ``path`` with :func:`os.replace`, so readers never see a
    half-written file. A score column is written for objects that have one.

    Args:
        path: destination ``.txt`` file (its directory must exist).
        objects: the objects.
        precision: decimals for every float, e.g. ``2`` as in the KITTI ground truth;
            ``None`` (default) writes the shortest text that reads back to the exact same
            float, so ``read_kitti_labels(write_kitti_labels(objs)) == objs``.
    """
    path = Path(path)
    lines = []
    for obj in objects:
        if not isinstance(obj, KittiObject):
            raise ValueError(f"objects must be KittiObject instances, got {type(obj).__name__}")
        cols = [obj.type, _format_number(obj.truncated, precision), str(obj.occluded)]
        numbers = [obj.alpha, *obj.bbox, *obj.dimensions, *obj.location, obj.rotation_y]
        if obj.score is not None:
            numbers.append(obj.score)
        cols += [_format_number(v, precision) for v in numbers]
        lines.append(" ".join(cols) + "\n")
    atomic_write_text(path, "".join(lines))


def kitti_objects_to_arrays(objects: Sequence[KittiObject]) -> dict[str, np.ndarray]:
    """Stack objects into arrays for the batched converters.

    Returns:
        dict with ``type`` ``(N,)`` str, ``truncated`` ``(N,)``, ``occluded`` ``(N,)``
        int64, ``alpha`` ``(N,)``, ``bbox`` ``(N, 4)``, ``dimensions`` ``(N, 3)`` (h, w, l),
        ``location`` ``(N, 3)``, ``rotation_y`` ``(N,)``, ``score`` ``(N,)`` (NaN where
        absent); floats are float64.
    """
    n = len(objects)
    return {
        "type": np.array([o.type for o in objects], dtype=str),
        "truncated": np.array([o.truncated for o in objects], dtype=np.float64),
        "occluded": np.array([o.occluded for o in objects], dtype=np.int64),
        "alpha": np.array([o.alpha for o in objects], dtype=np.float64),
        "bbox": np.array([o.bbox for o in objects], dtype=np.float64).reshape(n, 4),
        "dimensions": np.array([o.dimensions for o in objects], dtype=np.float64).reshape(n, 3),
        "location": np.array([o.location for o in objects], dtype=np.float64).reshape(n, 3),
        "rotation_y": np.array([o.rotation_y for o in objects], dtype=np.float64),
        "score": np.array([np.nan if o.score is None else o.score for o in objects],
                          dtype=np.float64),
    }


def read_velodyne(path: PathLike, num_features: int = 4) -> np.ndarray:
    """Read a KITTI-style point file of little-endian float32 values.

    Args:
        path: the ``.bin`` file (KITTI ``velodyne``: 4 features x, y, z, reflectance;
            nuScenes ``.pcd.bin``: 5 features).
        num_features: values per point.

    Returns:
        ``(N, num_features)`` float32 array (a fresh, writable array).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ``num_features < 3``, or the file size is not a multiple of
            ``4 * num_features`` bytes; the message names the file.
    """
    path = Path(path)
    if not isinstance(num_features, int) or num_features < 3:
        raise ValueError(f"num_features must be an integer >= 3, got {num_features!r}")
    size = path.stat().st_size
    point_bytes = 4 * num_features
    if size % point_bytes:
        raise ValueError(
            f"{path}: size {size} bytes is not a multiple of the point size "
            f"{point_bytes} bytes ({num_features} float32 features); wrong num_features "
            "or truncated file?"
        )
    data = np.fromfile(path, dtype="<f4")
    return data.reshape(-1, num_features).astype(np.float32, copy=False)
