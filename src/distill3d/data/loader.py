"""Batching and loading of :class:`~distill3d.data.sample.Sample` objects.

* :func:`collate_samples` turns a list of samples into one :class:`Batch`: points
  concatenated with per-sample offsets (the layout the voxelisers in
  :mod:`distill3d.data.voxelize` take), boxes padded with a mask, cameras stacked.
* :func:`build_dataloader` makes a :class:`DetectionDataLoader` whose order and
  augmentation depend only on ``(seed, epoch)``, never on the number of workers.
* :class:`ClassBalancedSampler` is class-balanced grouping and sampling (CBGS, Zhu et al.
  2019), as mmdetection3d's ``CBGSDataset``, usable alone or sharded over ranks.

Reproducibility
---------------
Augmentation draws come from ``sample_rng(dataset.seed, epoch, index)``
(:mod:`distill3d.data.dataset`), so a sample is augmented the same way whichever worker
loads it. For that the dataset copy in each worker must know the epoch; with
``persistent_workers`` those copies are made once, so calling ``dataset.set_epoch`` in the
main process would not reach them. :func:`build_dataloader` therefore has its sampler yield
``(epoch, index)`` pairs and wraps the dataset so that each worker sets the epoch of its own
copy before loading; ``loader.set_epoch(epoch)`` (or ``loader.sampler.set_epoch``) is the
one call a training loop makes per epoch. Any *other* randomness in a worker (global
``torch`` / ``numpy`` / ``random`` state used by third-party code) is seeded by
:func:`worker_init_fn` from ``(seed, rank, worker_id)``: reproducible from run to run with
the same number of workers, but, unlike the augmentation, not identical across worker
counts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from distill3d.data.sample import Sample

__all__ = [
    "Batch",
    "ClassBalancedSampler",
    "DetectionDataLoader",
    "EpochShuffleSampler",
    "build_dataloader",
    "collate_samples",
    "worker_init_fn",
]


# ----------------------------------------------------------------------------- batch


@dataclass
class Batch:
    """A batch of ``B`` samples as tensors. All 3D quantities are in each sample's key LiDAR
    frame after augmentation (see :class:`~distill3d.data.sample.Sample`).

    Attributes:
        tokens: ``B`` sample tokens.
        points: ``(P, C)`` float32, the samples' points concatenated (``P = sum N_b``).
        point_offsets: ``(B + 1,)`` int64; sample ``b`` owns
            ``points[point_offsets[b]:point_offsets[b + 1]]``.
        point_batch_index: ``(P,)`` int64 sample of each point (non-decreasing).
        point_features: names of the ``C`` point columns (the same for every sample).
        boxes: ``(B, M, 9)`` float32 GT boxes ``(x, y, z, l, w, h, yaw, vx, vy)``, zero
            rows after each sample's ``M_b`` boxes (``M = max M_b``, may be 0).
        box_mask: ``(B, M)`` bool, True for real boxes.
        labels: ``(B, M)`` int64 class indices, ``-1`` in padding.
        num_points: ``(B, M)`` int64 LiDAR points per box as recorded by the source,
            ``-1`` where unknown and in padding.
        boxes_list: ``B`` tensors ``(M_b, 9)``, the unpadded boxes.
        labels_list: ``B`` tensors ``(M_b,)`` int64, the unpadded labels.
        class_names: the class list ``labels`` index (the same for every sample).
        bev_transform: ``(B, 4, 4)`` float32 original key LiDAR frame -> augmented frame.
        lidar_to_ego: ``(B, 4, 4)`` float32 key LiDAR -> ego.
        ego_to_global: ``(B, 4, 4)`` float64 ego -> global.
        timestamps_us: ``(B,)`` int64 LiDAR timestamps.
        camera_names: the ``Ncam`` camera names, in order (empty for LiDAR-only batches).
        images: ``(B, Ncam, 3, H, W)`` uint8 RGB, or None without cameras.
        intrinsics: ``(B, Ncam, 3, 3)`` float32 pinhole matrices of the (augmented)
            images, or None.
        lidar_to_camera: ``(B, Ncam, 4, 4)`` float32 augmented key LiDAR -> camera
            (x right, y down, z forward), or None.
        image_transform: ``(B, Ncam, 3, 3)`` float32 original -> augmented pixel
            coordinates, or None.
        image_original_size: ``(B, Ncam, 2)`` int64 ``(width, height)`` on disk, or None.
        samples: the ``B`` original :class:`Sample` objects (for evaluation and
            visualisation); never moved by :meth:`to`.
    """

    tokens: list[str]
    points: torch.Tensor
    point_offsets: torch.Tensor
    point_batch_index: torch.Tensor
    point_features: tuple[str, ...]
    boxes: torch.Tensor
    box_mask: torch.Tensor
    labels: torch.Tensor
    num_points: torch.Tensor
    boxes_list: list[torch.Tensor]
    labels_list: list[torch.Tensor]
    class_names: tuple[str, ...]
    bev_transform: torch.Tensor
    lidar_to_ego: torch.Tensor
    ego_to_global: torch.Tensor
    timestamps_us: torch.Tensor
    camera_names: tuple[str, ...] = ()
    images: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    lidar_to_camera: torch.Tensor | None = None
    image_transform: torch.Tensor | None = None
    image_original_size: torch.Tensor | None = None
    samples: list[Sample] = dataclasses.field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """``B``."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        """Device of the batch tensors."""
        return self.points.device

    def points_of(self, b: int) -> torch.Tensor:
        """``(N_b, C)`` the points of sample ``b`` (a view of :attr:`points`)."""
        lo, hi = self.point_offsets[b:b + 2].tolist()
        return self.points[lo:hi]

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "samples":
                continue
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                changes[f.name] = [fn(v) for v in value]
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy with every tensor (padded and list fields) on ``device`` (dtypes kept;
        ``non_blocking`` copies overlap with compute when the batch is in pinned memory).
        :attr:`samples` stays where it is."""
        device = torch.device(device)
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy with every tensor in page-locked memory (called by the DataLoader when
        ``pin_memory=True``); :attr:`samples` is not pinned."""
        return self._map_tensors(lambda t: t.pin_memory())


def _check_same(samples: Sequence[Sample], what: str, get: Callable[[Sample], Any]) -> Any:
    first = get(samples[0])
    for s in samples[1:]:
        if get(s) != first:
            raise ValueError(f"collate_samples: sample {s.token!r} has {what} {get(s)!r} but "
                             f"sample {samples[0].token!r} has {first!r}; a batch needs one {what}")
    return first


def _stack_cameras(samples: Sequence[Sample]) -> dict[str, Any]:
    names = [tuple(c.name for c in s.cameras) for s in samples]
    if not any(names):
        return {}
    for s, n in zip(samples, names):
        if n != names[0]:
            raise ValueError(
                f"collate_samples: cannot stack cameras: sample {s.token!r} has cameras {list(n)} "
                f"but sample {samples[0].token!r} has {list(names[0])}; every sample of a batch "
                "needs the same cameras in the same order")
    shape0 = tuple(samples[0].cameras[0].image.shape)
    for s in samples:
        for c in s.cameras:
            if tuple(c.image.shape) != shape0 or c.image.dtype != torch.uint8:
                raise ValueError(
                    f"collate_samples: cannot stack images: sample {s.token!r} camera {c.name!r} "
                    f"is {tuple(c.image.shape)} {c.image.dtype}, sample {samples[0].token!r} camera "
                    f"{samples[0].cameras[0].name!r} is {shape0} torch.uint8; resize every image "
                    "to one (3, H, W) uint8 size (an image transform) before batching")
    return {
        "camera_names": names[0],
        "images": torch.stack([torch.stack([c.image for c in s.cameras]) for s in samples]),
        "intrinsics": torch.stack([torch.stack([c.intrinsics.float() for c in s.cameras])
                                   for s in samples]),
        "lidar_to_camera": torch.stack([torch.stack([c.lidar_to_camera.float() for c in s.cameras])
                                        for s in samples]),
        "image_transform": torch.stack([torch.stack([c.image_transform.float() for c in s.cameras])
                                        for s in samples]),
        "image_original_size": torch.tensor([[list(c.original_size) for c in s.cameras]
                                             for s in samples], dtype=torch.int64),
    }


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Batch samples into a :class:`Batch` (the ``collate_fn`` of the loaders here).

    Raises:
        ValueError: on an empty list, or when samples disagree on point features, class
            names, cameras (names and order) or image size, naming the samples.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("collate_samples: empty list of samples")
    point_features = _check_same(samples, "point features", lambda s: tuple(s.point_features))
    class_names = _check_same(samples, "class names", lambda s: tuple(s.class_names))
    b = len(samples)
    counts = torch.tensor([s.points.shape[0] for s in samples], dtype=torch.int64)
    offsets = torch.zeros(b + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    points = torch.cat([s.points.float() for s in samples], dim=0)
    point_batch_index = torch.repeat_interleave(torch.arange(b), counts)

    m = max(s.boxes.shape[0] for s in samples)
    boxes = torch.zeros((b, m, 9), dtype=torch.float32)
    labels = torch.full((b, m), -1, dtype=torch.int64)
    num_points = torch.full((b, m), -1, dtype=torch.int64)
    box_mask = torch.zeros((b, m), dtype=torch.bool)
    for i, s in enumerate(samples):  # loop over samples, not boxes
        k = s.boxes.shape[0]
        boxes[i, :k] = s.boxes
        labels[i, :k] = s.labels
        num_points[i, :k] = s.num_points
        box_mask[i, :k] = True

    return Batch(
        tokens=[s.token for s in samples],
        points=points,
        point_offsets=offsets,
        point_batch_index=point_batch_index,
        point_features=point_features,
        boxes=boxes,
        box_mask=box_mask,
        labels=labels,
        num_points=num_points,
        boxes_list=[s.boxes.float() for s in samples],
        labels_list=[s.labels.long() for s in samples],
        class_names=class_names,
        bev_transform=torch.stack([s.bev_transform.float() for s in samples]),
        lidar_to_ego=torch.stack([s.lidar_to_ego.float() for s in samples]),
        ego_to_global=torch.stack([s.ego_to_global.double() for s in samples]),
        timestamps_us=torch.tensor([s.timestamp_us for s in samples], dtype=torch.int64),
        samples=samples,
        **_stack_cameras(samples),
    )


# ----------------------------------------------------------------------------- seeding


def _derive_seed(*words: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: nearby inputs give
    unrelated outputs)."""
    state = np.random.SeedSequence([w & 0xFFFFFFFF for w in words]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def worker_init_fn(worker_id: int, seed: int = 0, rank: int = 0) -> None:
    """Seed ``torch``, ``numpy`` (legacy global) and ``random`` in a loader worker from
    ``(seed, rank, worker_id)``, so that randomness outside ``sample_rng`` is reproducible.

    Pass it as ``functools.partial(worker_init_fn, seed=seed, rank=rank)`` (picklable, so it
    also works with the ``spawn`` start method); :func:`build_dataloader` does.
    """
    s = _derive_seed(0x5EED, seed, rank, worker_id)
    torch.manual_seed(s)
    np.random.seed(s & 0xFFFFFFFF)
    random.seed(s)


# ----------------------------------------------------------------------------- samplers


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        r, w = rank, world_size
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r = torch.distributed.get_rank() if rank is None else rank
        w = torch.distributed.get_world_size() if world_size is None else world_size
    else:
        r, w = rank or 0, world_size or 1
    if not (w >= 1 and 0 <= r < w):
        raise ValueError(f"invalid rank {r} for world size {w}")
    return r, w


class EpochShuffleSampler(Sampler[int]):
    """All indices ``0..n-1``, shuffled by a ``torch.Generator`` seeded from
    ``(seed, epoch)`` (or in order when ``shuffle`` is False). The order depends only on
    ``(seed, epoch)``: iterating twice in one epoch gives the same order."""

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        g = torch.Generator()
        g.manual_seed(_derive_seed(0x5A3F, self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=g).tolist())


class ClassBalancedSampler(Sampler[int]):
    """Class-balanced grouping and sampling (CBGS, Zhu et al. 2019, "Class-balanced
    Grouping and Sampling for Point Cloud 3D Object Detection"), as mmdetection3d's
    ``CBGSDataset``.

    Let ``S_c`` be the samples containing class ``c`` and ``D = sum_c |S_c|`` (a sample
    counts once per class it contains). Each epoch, for every class with ``S_c`` non-empty,
    ``max(1, D // num_classes)`` indices are drawn uniformly *with replacement* from
    ``S_c`` (so rare-class samples are duplicated and common-class samples subsampled),
    and all draws are shuffled. Every class thus gets the same number of draws; with
    single-class samples the class frequencies of an epoch are exactly uniform, with
    multi-class samples they are much flatter than the original but not uniform (common
    classes ride along in other classes' draws). Samples with no class are never drawn.

    Differences from mmdetection3d: the draws are redone every epoch from
    ``(seed, epoch)`` (mmdetection3d draws once at start-up from the global numpy state),
    and classes absent from the data are skipped (mmdetection3d divides by zero).

    Distributed: every rank computes the same epoch list, pads it to a multiple of
    ``world_size`` by repeating its head (as ``DistributedSampler``) and takes every
    ``world_size``-th index from ``rank``.

    Args:
        class_ids: for each sample, the set of class indices it contains; or a callable
            ``index -> iterable of class indices`` (then ``num_samples`` is required); read
            once, at construction.
        num_classes: number of classes (``len(class_names)``).
        seed: base seed of the draws.
        num_samples: dataset length when ``class_ids`` is a callable.
        rank, world_size: shard of this process; default to ``torch.distributed`` when it
            is initialised, else 0 and 1.
    """

    def __init__(self, class_ids: Sequence[Iterable[int]] | Callable[[int], Iterable[int]],
                 num_classes: int, seed: int = 0, num_samples: int | None = None,
                 rank: int | None = None, world_size: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"ClassBalancedSampler: num_classes must be >= 1, got {num_classes}")
        if callable(class_ids):
            if num_samples is None:
                raise ValueError("ClassBalancedSampler: num_samples is required when class_ids "
                                 "is a callable")
            sets = [set(class_ids(i)) for i in range(num_samples)]
        else:
            sets = [set(c) for c in class_ids]
        self.num_classes = num_classes
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        members: list[list[int]] = [[] for _ in range(num_classes)]
        for i, cs in enumerate(sets):
            for c in cs:
                if not 0 <= int(c) < num_classes:
                    raise ValueError(f"ClassBalancedSampler: sample {i} has class {c}, "
                                     f"outside 0..{num_classes - 1}")
                members[int(c)].append(i)
        #: ``num_classes`` arrays: the samples containing each class.
        self.class_members: list[np.ndarray] = [np.asarray(m, dtype=np.int64) for m in members]
        total = sum(len(m) for m in members)
        if total == 0:
            raise ValueError("ClassBalancedSampler: no sample contains any class")
        #: draws per (present) class and epoch.
        self.draws_per_class = max(1, total // num_classes)
        present = sum(1 for m in members if m)
        self.total_size = present * self.draws_per_class
        self.num_samples_per_rank = math.ceil(self.total_size / self.world_size)

    @classmethod
    def from_dataset(cls, dataset: Dataset, seed: int = 0, rank: int | None = None,
                     world_size: int | None = None) -> ClassBalancedSampler:
        """From a :class:`~distill3d.data.dataset.DetectionDataset`: uses
        ``dataset.sample_class_ids(index)`` when the dataset provides it (cheap, from its
        index), else loads every sample with ``load_sample`` once (slow on large sets)."""
        num_classes = len(dataset.class_names)  # type: ignore[attr-defined]
        getter = getattr(dataset, "sample_class_ids", None)
        if getter is None:
            def getter(i: int) -> set[int]:
                return set(dataset.load_sample(i).labels.tolist())  # type: ignore[attr-defined]
        return cls(getter, num_classes, seed=seed, num_samples=len(dataset),  # type: ignore[arg-type]
                   rank=rank, world_size=world_size)

    @property
    def samples_per_class(self) -> list[int]:
        """Number of samples containing each class (the original distribution)."""
        return [len(m) for m in self.class_members]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The full (unsharded) ``(total_size,)`` int64 list of ``epoch`` (default: the
        current one), shuffled."""
        e = self.epoch if epoch is None else epoch
        rng = np.random.default_rng(np.random.SeedSequence([0xCB65, self.seed & 0xFFFFFFFF, e]))
        draws = [rng.choice(m, self.draws_per_class, replace=True)
                 for m in self.class_members if len(m)]
        return rng.permutation(np.concatenate(draws))

    def __len__(self) -> int:
        return self.num_samples_per_rank

    def __iter__(self) -> Iterator[int]:
        idx = self.epoch_indices()
        pad = self.num_samples_per_rank * self.world_size - len(idx)
        if pad:
            idx = np.concatenate([idx, np.resize(idx, pad)])
        return iter(idx[self.rank::self.world_size].tolist())


class _EpochIndexSampler(Sampler[tuple[int, int]]):
    """Wraps a sampler of indices to yield ``(epoch, index)`` so that the epoch travels
    with each index to the (possibly persistent) workers."""

    def __init__(self, sampler: Sampler[int] | Iterable[int]) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)


class _EpochDataset(Dataset):
    """Wraps a dataset: ``dataset[(epoch, index)]`` sets the epoch of this (worker's) copy,
    then loads ``index``. Plain integer keys load with the current epoch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            epoch, index = key
            if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
                self.dataset.set_epoch(epoch)
        else:
            index = key
        return self.dataset[index]


class DetectionDataLoader(DataLoader):
    """A ``DataLoader`` built by :func:`build_dataloader`: call :meth:`set_epoch` before
    each epoch; :attr:`base_dataset` is the dataset it loads from (``dataset`` is a thin
    wrapper that carries the epoch to the workers)."""

    @property
    def base_dataset(self) -> Dataset:
        """The wrapped dataset."""
        return self.dataset.dataset  # type: ignore[attr-defined]

    @property
    def index_sampler(self) -> Sampler[int] | Iterable[int]:
        """The sampler of dataset indices (shuffle, distributed, CBGS or the caller's)."""
        return self.sampler.sampler  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation draws of ``epoch``, in the main process and in
        every worker (persistent or not)."""
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        base = self.base_dataset
        if hasattr(base, "set_epoch"):
            base.set_epoch(epoch)


def build_dataloader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                     seed: int, distributed: bool = False, sampler: Sampler[int] | None = None,
                     drop_last: bool = False, *, rank: int | None = None,
                     world_size: int | None = None,
                     collate_fn: Callable[[list[Any]], Any] = collate_samples
                     ) -> DetectionDataLoader:
    """A loader of :class:`Batch` whose order and augmentation depend only on
    ``(seed, epoch)``.

    Args:
        dataset: a map-style dataset of samples (a ``DetectionDataset`` or any dataset with
            optional ``set_epoch``).
        batch_size: samples per batch (per rank when distributed).
        shuffle: shuffle each epoch (a ``torch.Generator`` seeded from ``(seed, epoch)``);
            ignored when ``sampler`` is given (the sampler decides the order).
        num_workers: loader processes; when > 0 they are persistent and seeded by
            :func:`worker_init_fn` from ``(seed, rank, worker_id)``.
        seed: base seed of the order, the workers and ``DistributedSampler``. (The
            augmentation seed is the dataset's own ``seed``.)
        distributed: shard with ``torch.utils.data.DistributedSampler`` (its ``seed`` and
            ``set_epoch``); a ``sampler`` given by the caller must shard itself (e.g.
            :class:`ClassBalancedSampler` with ``rank`` and ``world_size``).
        sampler: a sampler of indices replacing the default one.
        drop_last: drop the last incomplete batch (and, distributed, the tail that does not
            divide evenly, as ``DistributedSampler(drop_last=True)``).
        rank, world_size: the shard when distributed; default to the process group.
        collate_fn: defaults to :func:`collate_samples`.

    ``pin_memory`` is on only when CUDA is available. Call ``loader.set_epoch(epoch)``
    before each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"build_dataloader: batch_size must be >= 1, got {batch_size}")
    r, w = (0, 1)
    if sampler is None:
        if distributed:
            r, w = _dist_rank_world(rank, world_size)
            sampler = DistributedSampler(dataset, num_replicas=w, rank=r, shuffle=shuffle,
                                         seed=seed, drop_last=drop_last)
        else:
            sampler = EpochShuffleSampler(len(dataset), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    elif distributed:
        r, w = _dist_rank_world(getattr(sampler, "rank", rank), getattr(sampler, "world_size", world_size))
    generator = torch.Generator()
    generator.manual_seed(_derive_seed(0x10AD, seed, r))
    workers = max(0, int(num_workers))
    return DetectionDataLoader(
        _EpochDataset(dataset),
        batch_size=batch_size,
        sampler=_EpochIndexSampler(sampler),
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        worker_init_fn=functools.partial(worker_init_fn, seed=seed, rank=r) if workers else None,
        persistent_workers=workers > 0,
        generator=generator,
    )
