"""The KITTI object-detection dataset (raw files) as :class:`~distill3d.data.sample.Sample` s.

Layout read (the KITTI object benchmark, as OpenPCDet and mmdetection3d expect it)::

    <root>/ImageSets/{train,val,trainval,test}.txt   frame ids, one per line
    <root>/training/velodyne/XXXXXX.bin             float32 (x, y, z, reflectance), velodyne frame
    <root>/training/image_2/XXXXXX.png              left colour camera
    <root>/training/calib/XXXXXX.txt                P0..P3, R0_rect, Tr_velo_to_cam[, Tr_imu_to_velo]
    <root>/training/label_2/XXXXXX.txt              labels (rectified camera frame)
    <root>/testing/{velodyne,image_2,calib}/        the ``test`` split, no labels

Frames: every 3D quantity of a sample is in the **velodyne frame** (x forward, y left,
z up, metres), our key LiDAR frame for KITTI. GT boxes are ``(x, y, z, l, w, h, yaw,
vx, vy)`` with the geometric centre (``docs/conventions.md``), converted from the labels
with :func:`~distill3d.geometry.convert.kitti_camera_to_lidar_boxes`; KITTI has no
velocity, so ``vx, vy`` are NaN.

Index: the frame list, the file of each frame, and the parsed labels and calibration are
read once and cached with :func:`~distill3d.data.index_cache.load_or_build_index` (kind
``kitti-<split>``, schema :data:`INDEX_SCHEMA_VERSION`). The fingerprint is cheap: the
content of the split file plus the size and modification time of the ``velodyne``,
``image_2``, ``calib`` and ``label_2`` **folders** (not of every file). Adding, deleting or
renaming a file (including an atomic ``os.replace`` rewrite, as every well-behaved writer
does) changes the folder's mtime and triggers a rebuild; a label or calib file edited
*in place* does not: pass ``rebuild=True`` (``distill3d data index ROOT --rebuild``) after
such an edit. Point clouds and images are not part of the index; they are read (and
checked) when a sample is loaded.

Errors: a missing or corrupt file raises :class:`~distill3d.data.errors.DataError` naming
the file and the problem (the index build reports every bad label/calib file and missing
frame it finds, up to :data:`_MAX_REPORTED_PROBLEMS`, in one error).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distill3d.data.dataset import DetectionDataset, SampleTransform
from distill3d.data.errors import DataError
from distill3d.data.index_cache import (
    IndexKey,
    fingerprint_files,
    index_locations,
    load_or_build_index,
)
from distill3d.data.kitti_files import (
    kitti_objects_to_arrays,
    read_kitti_calib,
    read_kitti_labels,
    read_velodyne,
)
from distill3d.data.sample import BASE_POINT_FEATURES, CameraView, Sample
from distill3d.geometry.convert import KittiCalib, kitti_camera_to_lidar_boxes
from distill3d.geometry.points import count_points_in_boxes

__all__ = [
    "INDEX_SCHEMA_VERSION",
    "KITTI_CLASSES",
    "KITTI_DIFFICULTY_NAMES",
    "KittiDataset",
    "KittiFrameInfo",
    "KittiIndex",
    "build_kitti_index",
    "kitti_difficulty",
    "kitti_fov_mask",
    "kitti_image2_camera",
    "kitti_index_path",
]

#: The classes of the KITTI 3D detection benchmark, in the usual label order.
KITTI_CLASSES: tuple[str, ...] = ("Car", "Pedestrian", "Cyclist")
#: Version of the cached index layout; bump it whenever :class:`KittiIndex` or
#: :class:`KittiFrameInfo` changes, so that stale caches are rebuilt.
INDEX_SCHEMA_VERSION = 2
#: Names of the difficulty levels 0, 1, 2 (-1 is "ignored").
KITTI_DIFFICULTY_NAMES: tuple[str, ...] = ("easy", "moderate", "hard")

# Official KITTI object devkit (cpp/evaluate_object.cpp): per level easy/moderate/hard.
_MIN_HEIGHT = (40.0, 25.0, 25.0)
_MAX_OCCLUSION = (0, 1, 2)
_MAX_TRUNCATION = (0.15, 0.3, 0.5)

_SUBDIRS = ("velodyne", "image_2", "calib", "label_2")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DONTCARE = "DontCare"
_MAX_REPORTED_PROBLEMS = 20
_POINT_FEATURES = 4  # x, y, z, reflectance


# --------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KittiFrameInfo:
    """One frame of the index (a view built by :meth:`KittiIndex.frame`).

    Attributes:
        frame_id: the KITTI id, e.g. ``"000042"``.
        velodyne: path of the ``.bin`` relative to the dataset root (posix).
        image: path of the ``image_2`` image relative to the root (may not exist; checked
            when the image is read).
        calib: the calibration as float64 arrays: ``P0..P3`` (3, 4), ``R0_rect`` (3, 3),
            ``Tr_velo_to_cam`` (3, 4) and, when the file has it, ``Tr_imu_to_velo`` (3, 4).
        labels: every label line (DontCare included), as
            :func:`~distill3d.data.kitti_files.kitti_objects_to_arrays` stacks them
            (``type`` (L,) str, ``truncated``, ``occluded``, ``alpha`` (L,), ``bbox``
            (L, 4) ``image_2`` pixels, ``dimensions`` (L, 3) ``(h, w, l)``, ``location``
            (L, 3) rectified camera bottom centres, ``rotation_y`` (L,)); ``None`` for
            frames without labels (``testing/``).
    """

    frame_id: str
    velodyne: str
    image: str
    calib: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] | None

    def kitti_calib(self) -> KittiCalib:
        """The calibration as a :class:`~distill3d.geometry.convert.KittiCalib`."""
        return KittiCalib(**self.calib)


#: Calib matrices packed in one row of :attr:`KittiIndex.calib`, in this order.
_CALIB_LAYOUT: tuple[tuple[str, tuple[int, int]], ...] = (
    ("P0", (3, 4)), ("P1", (3, 4)), ("P2", (3, 4)), ("P3", (3, 4)), ("R0_rect", (3, 3)),
    ("Tr_velo_to_cam", (3, 4)), ("Tr_imu_to_velo", (3, 4)),
)
_CALIB_WIDTH = sum(r * c for _, (r, c) in _CALIB_LAYOUT)
#: Per-object label columns of :attr:`KittiIndex.labels`.
_LABEL_KEYS = ("type", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y")


def _pack_calib(calib: KittiCalib) -> np.ndarray:
    row = np.full(_CALIB_WIDTH, np.nan)
    at = 0
    for name, (r, c) in _CALIB_LAYOUT:
        value = getattr(calib, name)
        if value is not None:
            row[at:at + r * c] = value.numpy().reshape(-1)
        at += r * c
    return row


def _unpack_calib(row: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    at = 0
    for name, (r, c) in _CALIB_LAYOUT:
        block = row[at:at + r * c]
        at += r * c
        if name == "Tr_imu_to_velo" and np.isnan(block).all():
            continue
        out[name] = block.reshape(r, c).copy()
    return out


@dataclass(frozen=True)
class KittiIndex:
    """The cached index of one split, stored column-wise (a few arrays, whatever the number
    of frames, so that reading it back takes milliseconds).

    Attributes:
        split: the split name (``train``, ``val``, ...), or ``ids:<hash>`` for an explicit
            list of frame ids.
        folder: ``"training"`` or ``"testing"``.
        frame_ids: the frame ids in split-file order, ``F`` of them.
        image_names: file name of each frame's ``image_2`` image.
        calib: ``(F, 81)`` float64, each row ``P0, P1, P2, P3, R0_rect, Tr_velo_to_cam,
            Tr_imu_to_velo`` flattened row-major (NaN where ``Tr_imu_to_velo`` is absent).
        label_offsets: ``(F + 1,)`` int64: frame ``i``'s label lines are rows
            ``label_offsets[i]:label_offsets[i + 1]`` of ``labels``; ``None`` without labels.
        labels: the label lines of all frames concatenated (keys as in
            :class:`KittiFrameInfo`), ``None`` without labels.
    """

    split: str
    folder: str
    frame_ids: tuple[str, ...]
    image_names: tuple[str, ...]
    calib: np.ndarray
    label_offsets: np.ndarray | None
    labels: dict[str, np.ndarray] | None

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def has_labels(self) -> bool:
        """Whether the frames carry labels (``training/``)."""
        return self.labels is not None

    def frame(self, index: int) -> KittiFrameInfo:
        """The record of frame ``index`` (files, calib, labels)."""
        frame_id = self.frame_ids[index]
        labels = None
        if self.labels is not None and self.label_offsets is not None:
            lo, hi = int(self.label_offsets[index]), int(self.label_offsets[index + 1])
            labels = {key: value[lo:hi] for key, value in self.labels.items()}
        return KittiFrameInfo(
            frame_id=frame_id,
            velodyne=f"{self.folder}/velodyne/{frame_id}.bin",
            image=f"{self.folder}/image_2/{self.image_names[index]}",
            calib=_unpack_calib(self.calib[index]),
            labels=labels,
        )

    def class_counts(self) -> dict[str, int]:
        """Number of label lines per ``type`` over the split (DontCare included), sorted by
        decreasing count."""
        if self.labels is None:
            return {}
        names, num = np.unique(self.labels["type"], return_counts=True)
        counts = {str(name): int(n) for name, n in zip(names.tolist(), num.tolist())}
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """A few lines: frames, and label lines per class."""
        lines = [f"KITTI {self.folder}, split {self.split}: {len(self)} frames"]
        if not self.has_labels:
            lines[0] += " (no labels)"
            return "\n".join(lines)
        counts = self.class_counts()
        total = sum(n for name, n in counts.items() if name != _DONTCARE)
        lines[0] += f", {total} labelled objects"
        width = max((len(name) for name in counts), default=0)
        lines += [f"  {name:<{width}}  {n}" for name, n in counts.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class _SplitSpec:
    """What identifies a split: index kind, data folder, ids, where they came from, and the
    bytes the fingerprint hashes for them."""

    kind: str
    name: str
    folder: str
    ids: tuple[str, ...]
    source: str
    id_bytes: bytes


def _check_frame_id(frame_id: object, where: str) -> str:
    if not isinstance(frame_id, str) or not frame_id or any(c.isspace() for c in frame_id) \
            or "/" in frame_id or "\\" in frame_id or frame_id in (".", ".."):
        raise DataError(f"{where}: invalid frame id {frame_id!r} (expected a word like '000042')")
    return frame_id


def _read_split_file(path: Path) -> tuple[tuple[str, ...], bytes]:
    """Frame ids of an ``ImageSets`` file (one per line, blank lines skipped) and its bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        folder = path.parent
        have = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise DataError(
            f"{path}: split file not found (available splits: {have or 'none'}; "
            f"pass split as a list of frame ids to read training/ without ImageSets)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read split file ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: split file is not UTF-8 text ({exc})") from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != 1:
            raise DataError(f"{path}:{lineno}: expected one frame id per line, got {raw.strip()[:60]!r}")
        frame_id = _check_frame_id(tokens[0], f"{path}:{lineno}")
        if frame_id in first_line:
            raise DataError(f"{path}:{lineno}: frame {frame_id} listed twice (first on line "
                            f"{first_line[frame_id]})")
        first_line[frame_id] = lineno
        ids.append(frame_id)
    if not ids:
        raise DataError(f"{path}: split file names no frames")
    return tuple(ids), data


def _split_spec(root: Path, split: str | Sequence[str]) -> _SplitSpec:
    if isinstance(split, str):
        name = split.strip()
        if not name or "/" in name or "\\" in name:
            raise ValueError(f"split must be a split name like 'train' or a list of frame ids, got {split!r}")
        path = root / "ImageSets" / f"{name}.txt"
        ids, data = _read_split_file(path)
        folder = "testing" if name == "test" else "training"
        return _SplitSpec(kind=f"kitti-{name}", name=name, folder=folder, ids=ids, source=str(path),
                          id_bytes=data)
    try:
        ids = tuple(split)
    except TypeError:
        raise ValueError(f"split must be a split name or a sequence of frame ids, got "
                         f"{type(split).__name__}") from None
    if not ids:
        raise ValueError("split: the list of frame ids is empty")
    seen: set[str] = set()
    for frame_id in ids:
        _check_frame_id(frame_id, "split")
        if frame_id in seen:
            raise ValueError(f"split: frame id {frame_id!r} listed twice")
        seen.add(frame_id)
    data = "\n".join(ids).encode("utf-8")
    tag = hashlib.sha256(data).hexdigest()[:12]
    return _SplitSpec(kind=f"kitti-ids-{tag}", name=f"ids:{tag}", folder="training", ids=ids,
                      source=f"the list of {len(ids)} frame ids", id_bytes=data)


def _fingerprint(root: Path, spec: _SplitSpec) -> str:
    """Content hash of the split plus size/mtime of the four data folders (cheap: 4 stats)."""
    digest = hashlib.sha256()
    digest.update(f"{spec.name}|{spec.folder}|".encode())
    digest.update(hashlib.sha256(spec.id_bytes).digest())
    digest.update(fingerprint_files(root / spec.folder / sub for sub in _SUBDIRS).encode())
    return digest.hexdigest()


def _listing(folder: Path) -> set[str] | None:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc})") from None


def _build_index(root: Path, spec: _SplitSpec) -> KittiIndex:
    """Check that every frame of the split has its files, parse labels and calibs."""
    base = root / spec.folder
    listings = {sub: _listing(base / sub) for sub in _SUBDIRS}
    needs_labels = spec.folder == "training"
    required = ("velodyne", "calib", "label_2") if needs_labels else ("velodyne", "calib")
    absent = [sub for sub in required if listings[sub] is None]
    if absent:
        raise DataError(f"{base}: missing folder(s) {absent} (KITTI layout: {spec.folder}/"
                        f"{{{','.join(_SUBDIRS)}}})")
    with_labels = listings["label_2"] is not None
    images = listings["image_2"] or set()
    problems: list[str] = []
    image_names: list[str] = []
    calib_rows: list[np.ndarray] = []
    label_parts: list[dict[str, np.ndarray]] = []
    for frame_id in spec.ids:
        missing = [f"{sub}/{frame_id}{ext}" for sub, ext in
                   (("velodyne", ".bin"), ("calib", ".txt"), ("label_2", ".txt"))
                   if (sub != "label_2" or with_labels) and f"{frame_id}{ext}" not in listings[sub]]
        if missing:
            problems.append(f"frame {frame_id} (named by {spec.source}) has no file "
                            f"{', '.join(str(base / m) for m in missing)}")
            continue
        try:
            calib = read_kitti_calib(base / "calib" / f"{frame_id}.txt")
        except (OSError, ValueError) as exc:
            problems.append(f"calib: {exc}")
            continue
        if with_labels:
            try:
                arrays = kitti_objects_to_arrays(read_kitti_labels(base / "label_2" / f"{frame_id}.txt"))
            except (OSError, ValueError) as exc:
                problems.append(f"label: {exc}")
                continue
            label_parts.append({key: arrays[key] for key in _LABEL_KEYS})
        calib_rows.append(_pack_calib(calib))
        image_names.append(next((frame_id + ext for ext in _IMAGE_EXTENSIONS if frame_id + ext in images),
                                frame_id + ".png"))
    if problems:
        shown = problems[:_MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise DataError(f"KITTI dataset {root}, split {spec.name}: {len(problems)} problem(s):\n  "
                        + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))
    labels = offsets = None
    if with_labels:
        sizes = [part["type"].shape[0] for part in label_parts]
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        labels = {key: np.concatenate([part[key] for part in label_parts]) for key in _LABEL_KEYS}
        labels["type"] = labels["type"].astype(str)
    return KittiIndex(split=spec.name, folder=spec.folder, frame_ids=spec.ids,
                      image_names=tuple(image_names), calib=np.stack(calib_rows),
                      label_offsets=offsets, labels=labels)


def kitti_index_path(root: str | os.PathLike[str], split: str | Sequence[str] = "train") -> Path | None:
    """Where the cached index of ``split`` lives (beside the data or in the user cache), or
    ``None`` if none has been written."""
    root = Path(root)
    spec = _split_spec(root, split)
    return next((p for p in index_locations(root, spec.kind) if p.is_file()), None)


def build_kitti_index(root: str | os.PathLike[str], split: str | Sequence[str] = "train",
                      rebuild: bool = False) -> KittiIndex:
    """Load the cached index of a KITTI split, building (and caching) it when missing or stale.

    Args:
        root: the KITTI object root (holding ``training/``, ``testing/``, ``ImageSets/``).
        split: a split name (``train``, ``val``, ``trainval``, ``test``: reads
            ``ImageSets/<split>.txt``; ``test`` reads ``testing/``), or a sequence of frame
            ids of ``training/`` (no ``ImageSets`` needed).
        rebuild: ignore (and replace) a cached index, e.g. after label files were edited
            in place.

    Returns:
        The index.

    Raises:
        DataError: the split file is missing or malformed, a frame has no velodyne/calib/
            label file, a label or calib file is malformed (all problems found are listed).
        ValueError: ``split`` is neither a name nor a list of ids.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: KITTI root folder not found")
    spec = _split_spec(root, split)
    key = IndexKey(kind=spec.kind, schema_version=INDEX_SCHEMA_VERSION,
                   fingerprint=_fingerprint(root, spec))
    return load_or_build_index(root, key, lambda: _build_index(root, spec), rebuild=rebuild)


# --------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------


def kitti_difficulty(bbox: np.ndarray, truncated: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """KITTI difficulty of labelled objects, with the official devkit's rules.

    ``cpp/evaluate_object.cpp`` ignores an object at level ``d`` when ``occlusion >
    MAX_OCCLUSION[d]``, ``truncation > MAX_TRUNCATION[d]`` or ``y2 - y1 < MIN_HEIGHT[d]``
    with ``MIN_HEIGHT = (40, 25, 25)`` px, ``MAX_OCCLUSION = (0, 1, 2)``,
    ``MAX_TRUNCATION = (0.15, 0.3, 0.5)``. The levels are nested (an easy object also
    counts for moderate and hard), so the result is the *easiest* level an object
    qualifies for: evaluating level ``L`` uses the objects with ``0 <= difficulty <= L``.
    (The Python ports in second.pytorch / mmdetection3d / OpenPCDet differ only exactly on
    the height boundary, ``<=`` instead of ``<``, or ``+ 1`` to the height.)

    Args:
        bbox: ``(N, 4)`` ``(x1, y1, x2, y2)`` in ``image_2`` pixels.
        truncated: ``(N,)`` in ``[0, 1]``.
        occluded: ``(N,)`` 0..3 (3 = unknown never qualifies).

    Returns:
        ``(N,)`` int64: 0 easy, 1 moderate, 2 hard, -1 ignored (in no level).
    """
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 4)
    truncated = np.asarray(truncated, dtype=np.float64).reshape(-1)
    occluded = np.asarray(occluded).reshape(-1)
    if not truncated.shape[0] == occluded.shape[0] == bbox.shape[0]:
        raise ValueError(f"bbox {bbox.shape}, truncated {truncated.shape} and occluded "
                         f"{occluded.shape} must have the same length")
    height = bbox[:, 3] - bbox[:, 1]
    out = np.full(bbox.shape[0], -1, dtype=np.int64)
    for level in (2, 1, 0):  # the easiest qualifying level wins
        ok = ((height >= _MIN_HEIGHT[level]) & (occluded <= _MAX_OCCLUSION[level])
              & (truncated <= _MAX_TRUNCATION[level]))
        out[ok] = level
    return out


def kitti_image2_camera(calib: KittiCalib) -> tuple[Tensor, Tensor]:
    """Pinhole intrinsics and LiDAR -> camera transform of ``image_2``.

    ``P2 = [K | K t]``: its first three columns are the intrinsics ``K`` and its fourth
    column the offset ``t`` of camera 2 from the rectified reference camera 0 (6 cm on
    KITTI), seen through ``K``. Folding ``t`` into the extrinsics gives a true camera-2
    frame (x right, y down, z forward, origin at camera 2)::

        lidar_to_camera = [I | t] @ pad(R0_rect) @ pad(Tr_velo_to_cam),  t = K^-1 P2[:, 3]

    so ``K @ lidar_to_camera[:3] == P2 @ R0_rect @ Tr_velo_to_cam`` (to float64 rounding).
    The camera z of a point is the depth ``KittiCalib.rect_to_image`` returns.

    Args:
        calib: the frame's calibration.

    Returns:
        ``(intrinsics (3, 3), lidar_to_camera (4, 4))``, float64.
    """
    p2 = calib.P2.to(torch.float64)
    intrinsics = p2[:, :3].clone()
    offset = torch.linalg.solve(intrinsics, p2[:, 3])
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = offset
    return intrinsics, shift @ calib.lidar_to_rect_matrix()


def kitti_fov_mask(points: Tensor, lidar_to_image: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Which points project inside the image with positive depth (the "reduced" KITTI
    point cloud of OpenPCDet's ``get_fov_flag`` and mmdetection3d's
    ``create_reduced_point_cloud``).

    Args:
        points: ``(N, >=3)`` points in the LiDAR frame.
        lidar_to_image: ``(3, 4)`` projection to homogeneous pixels (``P2 @ R0_rect @
            Tr_velo_to_cam`` for KITTI's ``image_2``).
        image_size: ``(width, height)`` in pixels.

    Returns:
        ``(N,)`` bool: ``depth > 0`` and ``0 <= u < width``, ``0 <= v < height``, with
        ``(u, v) = (x/w, y/w)`` of the projection and ``depth = w``; computed in float64.
    """
    xyz = points[:, :3].to(torch.float64)
    proj = torch.as_tensor(lidar_to_image, dtype=torch.float64)
    uvw = xyz @ proj[:, :3].T + proj[:, 3]
    depth = uvw[:, 2]
    front = depth > 0
    safe = torch.where(front, depth, torch.ones_like(depth))
    u, v = uvw[:, 0] / safe, uvw[:, 1] / safe
    width, height = image_size
    return front & (u >= 0) & (u < width) & (v >= 0) & (v < height)


# --------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------


class KittiDataset(DetectionDataset):
    """KITTI object detection frames as :class:`~distill3d.data.sample.Sample` s.

    Each sample holds:

    * ``points`` ``(N, 4)`` float32 ``(x, y, z, intensity)`` in the velodyne frame
      (intensity = KITTI reflectance in [0, 1]); with ``reduced=True`` only the points that
      project inside ``image_2`` with positive depth.
    * ``boxes`` ``(M, 9)`` float32 in the velodyne frame (velocity NaN), ``labels`` ``(M,)``
      indexing ``class_names``; label lines of other classes are not in ``boxes`` (see
      ``extras['other_*']``), DontCare lines are in ``extras['dontcare_bbox2d']``.
    * ``num_points`` ``(M,)``: points of ``points`` inside each box (KITTI records none).
    * ``cameras``: ``[CameraView('image_2')]`` (image ``(3, H, W)`` uint8, intrinsics
      ``P2[:, :3]``, ``lidar_to_camera`` from :func:`kitti_image2_camera`) when
      ``load_images``; otherwise empty (no image file is touched unless ``reduced``).
    * ``extras``:

      - ``calib``: the frame's :class:`~distill3d.geometry.convert.KittiCalib` (to write
        KITTI-format results with ``lidar_to_kitti_camera_boxes``);
      - ``bbox2d`` ``(M, 4)`` float32 ``image_2`` pixels, ``truncated`` ``(M,)`` float32,
        ``occluded`` ``(M,)`` int64, ``alpha`` ``(M,)`` float32, ``difficulty`` ``(M,)``
        int64 (0 easy, 1 moderate, 2 hard, -1 in no level; :func:`kitti_difficulty`);
      - ``dontcare_bbox2d`` ``(K, 4)`` float32: the DontCare regions;
      - ``other_names`` (list of J str), ``other_boxes`` ``(J, 7)`` float32 (velodyne
        frame), ``other_bbox2d``, ``other_truncated``, ``other_occluded``, ``other_alpha``,
        ``other_difficulty``: labelled objects of classes not in ``class_names`` (e.g.
        Van, Truck, Person_sitting, Misc), which KITTI's evaluation needs for its
        neighbouring-class rule (a Van is ignored, not a false positive, for Car).
      - ``image_size`` ``(width, height)`` when the image was opened.

    Args:
        root: the KITTI object root (``training/``, ``testing/``, ``ImageSets/``).
        split: ``train``, ``val``, ``trainval``, ``test`` (``ImageSets/<split>.txt``;
            ``test`` reads ``testing/``, which has no labels: empty boxes), or a sequence
            of frame ids of ``training/`` (no ``ImageSets`` needed).
        class_names: the classes ``labels`` index (KITTI ``type`` strings).
        reduced: keep only the points in the ``image_2`` view (needs the image files,
            for their size).
        transforms: augmentations applied by :meth:`__getitem__`.
        seed: base seed of the augmentation generators.
        load_images: decode ``image_2`` into ``cameras``.
        rebuild: rebuild the cached index even if it looks up to date.

    Raises:
        DataError: see :func:`build_kitti_index` (at construction) and :meth:`load_sample`.
    """

    def __init__(self, root: str | os.PathLike[str], split: str | Sequence[str] = "train",
                 class_names: Sequence[str] = KITTI_CLASSES, reduced: bool = False,
                 transforms: Sequence[SampleTransform] = (), seed: int = 0,
                 load_images: bool = True, rebuild: bool = False):
        super().__init__(class_names, transforms, seed)
        if _DONTCARE in self.class_names:
            raise ValueError("class_names must not contain 'DontCare' (DontCare regions are in "
                             "extras['dontcare_bbox2d'])")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        self.root = Path(root)
        self.reduced = bool(reduced)
        self.load_images = bool(load_images)
        self.index = build_kitti_index(self.root, split, rebuild=rebuild)
        self.split = self.index.split

    def __len__(self) -> int:
        return len(self.index)

    def sample_tokens(self) -> list[str]:
        """The KITTI frame ids, in index order."""
        return list(self.index.frame_ids)

    def frame_info(self, index: int) -> KittiFrameInfo:
        """The index record of frame ``index`` (files, raw labels, calib)."""
        return self.index.frame(index)

    def calib(self, index: int) -> KittiCalib:
        """The calibration of frame ``index``."""
        return self.index.frame(index).kitti_calib()

    # -- file readers ------------------------------------------------------------------

    def _read_points(self, info: KittiFrameInfo) -> np.ndarray:
        path = self.root / info.velodyne
        try:
            points = read_velodyne(path, _POINT_FEATURES)
        except FileNotFoundError:
            raise DataError(f"{path}: velodyne file not found (the cached index lists it; was "
                            f"it deleted? rebuild the index)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read velodyne points: {exc}") from None
        finite = np.isfinite(points).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DataError(f"{path}: {bad.size} point(s) with NaN or inf values (first at "
                            f"point {int(bad[0])} of {points.shape[0]}, byte offset "
                            f"{int(bad[0]) * 4 * _POINT_FEATURES})")
        return points

    def _open_image(self, info: KittiFrameInfo, decode: bool) -> tuple[Tensor | None, tuple[int, int]]:
        """``(image (3, H, W) uint8 or None, (width, height))``."""
        path = self.root / info.image
        try:
            with Image.open(path) as img:
                size = (int(img.size[0]), int(img.size[1]))
                if not decode:
                    return None, size
                rgb = np.array(img.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"{path}: missing image_2 image of frame {info.frame_id}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode image: {exc}") from None
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), size

    # -- sample ------------------------------------------------------------------------

    def load_sample(self, index: int) -> Sample:
        """Read frame ``index`` (no transforms); see the class docstring for the fields.

        Raises:
            DataError: the ``.bin`` is missing, its size is not a multiple of 16 bytes, or
                it holds NaN/inf values; the image is missing or cannot be decoded (when
                ``load_images`` or ``reduced``).
        """
        info = self.index.frame(index)
        calib = info.kitti_calib()
        points = torch.from_numpy(self._read_points(info))
        intrinsics, lidar_to_camera = kitti_image2_camera(calib)

        cameras: list[CameraView] = []
        extras: dict[str, object] = {"calib": calib}
        if self.load_images or self.reduced:
            image, size = self._open_image(info, decode=self.load_images)
            extras["image_size"] = size
            if self.reduced:
                points = points[kitti_fov_mask(points, calib.lidar_to_image_matrix()[:3], size)]
            if image is not None:
                cameras.append(CameraView(
                    name="image_2", image=image, intrinsics=intrinsics.to(torch.float32),
                    lidar_to_camera=lidar_to_camera.to(torch.float32),
                    image_transform=torch.eye(3), original_size=size))

        boxes, labels = self._annotations(info, calib, extras)
        num_points = (count_points_in_boxes(points, boxes[:, :7]) if boxes.shape[0] and points.shape[0]
                      else torch.zeros(boxes.shape[0], dtype=torch.int64))
        return Sample(
            token=info.frame_id,
            points=points,
            boxes=boxes,
            labels=labels,
            class_names=self.class_names,
            point_features=BASE_POINT_FEATURES,
            num_points=num_points,
            cameras=cameras,
            extras=extras,
        )

    def _annotations(self, info: KittiFrameInfo, calib: KittiCalib,
                     extras: dict[str, object]) -> tuple[Tensor, Tensor]:
        """Boxes ``(M, 9)`` and labels ``(M,)`` of the kept classes; fills ``extras``."""
        lab = info.labels
        if lab is None or lab["type"].shape[0] == 0:
            types = np.zeros(0, dtype=str)
            lab = {"type": types, "truncated": np.zeros(0), "occluded": np.zeros(0, np.int64),
                   "alpha": np.zeros(0), "bbox": np.zeros((0, 4)), "dimensions": np.zeros((0, 3)),
                   "location": np.zeros((0, 3)), "rotation_y": np.zeros(0)}
        types = lab["type"]
        dontcare = types == _DONTCARE
        keep = np.isin(types, np.array(self.class_names, dtype=str)) & ~dontcare
        other = ~keep & ~dontcare
        objects = ~dontcare
        boxes7 = kitti_camera_to_lidar_boxes(lab["location"][objects], lab["dimensions"][objects],
                                             lab["rotation_y"][objects], calib)
        boxes7 = boxes7.to(torch.float32).reshape(-1, 7)
        difficulty = kitti_difficulty(lab["bbox"], lab["truncated"], lab["occluded"])
        obj_types = types[objects]
        in_keep = keep[objects]

        def f32(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        def i64(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

        boxes = torch.cat((boxes7[torch.from_numpy(in_keep)],
                           torch.full((int(keep.sum()), 2), float("nan"))), dim=1)
        lookup = {name: i for i, name in enumerate(self.class_names)}
        labels = torch.tensor([lookup[t] for t in obj_types[in_keep].tolist()], dtype=torch.int64)
        extras.update({
            "bbox2d": f32(lab["bbox"][keep]).reshape(-1, 4),
            "truncated": f32(lab["truncated"][keep]),
            "occluded": i64(lab["occluded"][keep]),
            "alpha": f32(lab["alpha"][keep]),
            "difficulty": i64(difficulty[keep]),
            "dontcare_bbox2d": f32(lab["bbox"][dontcare]).reshape(-1, 4),
            "other_names": obj_types[~in_keep].tolist(),
            "other_boxes": boxes7[torch.from_numpy(~in_keep)].clone(),
            "other_bbox2d": f32(lab["bbox"][other]).reshape(-1, 4),
            "other_truncated": f32(lab["truncated"][other]),
            "other_occluded": i64(lab["occluded"][other]),
            "other_alpha": f32(lab["alpha"][other]),
            "other_difficulty": i64(difficulty[other]),
        })
        return boxes, labels

    def __repr__(self) -> str:
        return (f"KittiDataset(root={str(self.root)!r}, split={self.split!r}, frames={len(self)}, "
                f"classes={self.class_names}, reduced={self.reduced})")
