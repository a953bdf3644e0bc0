"""Tests for distill3d.data.loader: collate, reproducible multi-worker loading, CBGS."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from distill3d.data.dataset import DetectionDataset
from distill3d.data.loader import (
    Batch,
    ClassBalancedSampler,
    EpochShuffleSampler,
    build_dataloader,
    collate_samples,
    worker_init_fn,
)
from distill3d.data.sample import CameraView, Sample
from distill3d.data.voxelize import VoxelGrid, hard_voxelize, hard_voxelize_batch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CLASSES = ("car", "pedestrian", "cyclist")


# ----------------------------------------------------------------------------- fixtures


def make_sample(i: int, num_points: int | None = None, num_boxes: int | None = None,
                cameras: tuple[str, ...] = (), image_hw: tuple[int, int] = (8, 12)) -> Sample:
    """A hand-built sample whose content is a function of ``i``."""
    g = torch.Generator().manual_seed(1000 + i)
    n = 20 + 7 * i if num_points is None else num_points
    m = i % 4 if num_boxes is None else num_boxes
    boxes = torch.rand((m, 9), generator=g)
    cams = []
    for k, name in enumerate(cameras):
        h, w = image_hw
        cams.append(CameraView(
            name=name,
            image=torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            intrinsics=torch.eye(3) * (k + 1),
            lidar_to_camera=torch.eye(4) + k,
            image_transform=torch.eye(3) * 2,
            original_size=(w * 2, h * 2),
        ))
    return Sample(
        token=f"tok{i}",
        points=torch.rand((n, 4), generator=g) * 10,
        boxes=boxes,
        labels=torch.arange(m) % len(CLASSES),
        class_names=CLASSES,
        num_points=torch.arange(m) * 3,
        cameras=cams,
        bev_transform=torch.eye(4) * (i + 1),
        ego_to_global=torch.eye(4, dtype=torch.float64) + i,
        timestamp_us=10 * i,
    )


def jitter(sample: Sample, rng: np.random.Generator) -> Sample:
    """A random transform that draws only from the rng it is given; also records draws of
    the global generators (seeded per worker) in ``extras``."""
    noise = torch.from_numpy(rng.normal(0.0, 0.1, sample.points.shape).astype(np.float32))
    sample.points = sample.points + noise
    sample.extras["draw"] = float(rng.random())
    sample.extras["global"] = (float(torch.rand(())), float(np.random.random()), random.random())
    return sample


class TinyDataset(DetectionDataset):
    def __init__(self, n: int = 10, seed: int = 0, cameras: tuple[str, ...] = ()) -> None:
        super().__init__(CLASSES, transforms=[jitter], seed=seed)
        self.n = n
        self.cameras = cameras

    def __len__(self) -> int:
        return self.n

    def load_sample(self, index: int) -> Sample:
        return make_sample(index, cameras=self.cameras)

    def sample_tokens(self) -> list[str]:
        return [f"tok{i}" for i in range(self.n)]

    def sample_class_ids(self, index: int) -> set[int]:
        return {int(c) for c in (torch.arange(index % 4) % len(CLASSES)).tolist()}


# ----------------------------------------------------------------------------- collate


def test_collate_shapes_and_offsets() -> None:
    samples = [make_sample(i, cameras=("CAM_FRONT", "CAM_BACK")) for i in range(4)]
    batch = collate_samples(samples)
    b, counts = 4, [s.points.shape[0] for s in samples]
    assert batch.batch_size == len(batch) == b and batch.tokens == ["tok0", "tok1", "tok2", "tok3"]
    assert batch.points.shape == (sum(counts), 4) and batch.points.dtype == torch.float32
    assert batch.point_offsets.tolist() == [0] + np.cumsum(counts).tolist()
    assert batch.point_batch_index.tolist() == [k for k, c in enumerate(counts) for _ in range(c)]
    for k, s in enumerate(samples):
        assert torch.equal(batch.points_of(k), s.points)
    assert batch.point_features == ("x", "y", "z", "intensity") and batch.class_names == CLASSES

    m = max(s.boxes.shape[0] for s in samples)  # 3
    assert batch.boxes.shape == (b, m, 9) and batch.box_mask.shape == (b, m)
    assert batch.labels.shape == (b, m) and batch.num_points.shape == (b, m)
    for k, s in enumerate(samples):
        mk = s.boxes.shape[0]
        assert torch.equal(batch.boxes[k, :mk], s.boxes) and float(batch.boxes[k, mk:].abs().sum()) == 0
        assert batch.box_mask[k].tolist() == [True] * mk + [False] * (m - mk)
        assert batch.labels[k].tolist() == s.labels.tolist() + [-1] * (m - mk)
        assert batch.num_points[k].tolist() == s.num_points.tolist() + [-1] * (m - mk)
        assert torch.equal(batch.boxes_list[k], s.boxes) and torch.equal(batch.labels_list[k], s.labels)

    assert batch.camera_names == ("CAM_FRONT", "CAM_BACK")
    assert batch.images.shape == (b, 2, 3, 8, 12) and batch.images.dtype == torch.uint8
    assert batch.intrinsics.shape == (b, 2, 3, 3) and batch.lidar_to_camera.shape == (b, 2, 4, 4)
    assert batch.image_transform.shape == (b, 2, 3, 3)
    assert batch.image_original_size.tolist()[0] == [[24, 16], [24, 16]]
    assert torch.equal(batch.images[2, 1], samples[2].cameras[1].image)
    assert torch.equal(batch.lidar_to_camera[1, 1], torch.eye(4) + 1)
    assert batch.bev_transform.shape == (b, 4, 4) and torch.equal(batch.bev_transform[3], torch.eye(4) * 4)
    assert batch.ego_to_global.dtype == torch.float64 and batch.ego_to_global.shape == (b, 4, 4)
    assert batch.lidar_to_ego.shape == (b, 4, 4)
    assert batch.timestamps_us.tolist() == [0, 10, 20, 30]
    assert batch.samples == samples


def test_collate_edge_cases() -> None:
    # no boxes anywhere, an empty point cloud, no cameras
    samples = [make_sample(0, num_points=0, num_boxes=0), make_sample(1, num_boxes=0)]
    batch = collate_samples(samples)
    assert batch.boxes.shape == (2, 0, 9) and batch.labels.shape == (2, 0)
    assert batch.point_offsets.tolist() == [0, 0, 27]
    assert batch.images is None and batch.camera_names == ()
    assert batch.points_of(0).shape == (0, 4)
    with pytest.raises(ValueError, match="empty"):
        collate_samples([])


def test_collate_camera_mismatch_errors() -> None:
    a = make_sample(0, cameras=("CAM_FRONT", "CAM_BACK"))
    with pytest.raises(ValueError, match="same cameras in the same order"):
        collate_samples([a, make_sample(1, cameras=("CAM_BACK", "CAM_FRONT"))])
    with pytest.raises(ValueError, match="tok1"):
        collate_samples([a, make_sample(1)])
    with pytest.raises(ValueError, match="resize every image"):
        collate_samples([a, make_sample(1, cameras=("CAM_FRONT", "CAM_BACK"), image_hw=(8, 10))])
    other = make_sample(1)
    other.point_features = ("x", "y", "z", "time_lag")
    with pytest.raises(ValueError, match="point features"):
        collate_samples([make_sample(0), other])


def test_batch_to_and_voxelize() -> None:
    batch = collate_samples([make_sample(i) for i in range(3)])
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.samples is batch.samples
    assert torch.equal(moved.points, batch.points) and moved.device.type == "cpu"
    # The batch layout feeds the batched voxeliser directly.
    grid = VoxelGrid((1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 10.0, 10.0, 10.0))
    vox = hard_voxelize_batch(batch.points, grid, 4, 100, batch_index=batch.point_batch_index)
    per = [hard_voxelize(batch.points_of(k), grid, 4, 100) for k in range(3)]
    assert vox.coords.shape[0] == sum(len(v) for v in per)
    assert vox.coords[:, 0].bincount().tolist() == [len(v) for v in per]


@CUDA
def test_batch_to_cuda() -> None:
    batch = collate_samples([make_sample(i, cameras=("CAM_FRONT",)) for i in range(2)])
    pinned = batch.pin_memory()
    assert pinned.points.is_pinned() and pinned.images.is_pinned()
    gpu = pinned.to("cuda")
    torch.cuda.synchronize()
    assert gpu.points.is_cuda and gpu.images.is_cuda and gpu.boxes_list[0].is_cuda
    assert gpu.ego_to_global.dtype == torch.float64
    assert not gpu.samples[0].points.is_cuda
    assert torch.equal(gpu.points.cpu(), batch.points)


# ----------------------------------------------------------------------------- loader


def _collect(loader, epochs: int) -> list[list[tuple]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out.append([(b.tokens, b.points.clone(), [s.extras["draw"] for s in b.samples])
                    for b in loader])
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for (ta, pa, da), (tb, pb, db) in zip(ea, eb):
            assert ta == tb and da == db
            assert torch.equal(pa, pb)


def test_workers_give_same_batches_as_main_process() -> None:
    ds = TinyDataset(n=10, seed=5)
    ref = _collect(build_dataloader(ds, batch_size=3, shuffle=True, num_workers=0, seed=7), 2)
    loader = build_dataloader(TinyDataset(n=10, seed=5), batch_size=3, shuffle=True,
                              num_workers=2, seed=7)
    assert loader.persistent_workers and loader.num_workers == 2
    assert loader.pin_memory == torch.cuda.is_available()
    got = _collect(loader, 2)
    _assert_same(ref, got)
    # epochs differ in order and in augmentation draws; batches cover the dataset
    tokens = [[tok for t, _, _ in epoch for tok in t] for epoch in got]
    assert sorted(tokens[0]) == sorted(tokens[1]) == sorted(ds.sample_tokens())
    assert tokens[0] != tokens[1]
    draws = [{t: d for tt, _, dd in epoch for t, d in zip(tt, dd)} for epoch in got]
    assert all(draws[0][t] != draws[1][t] for t in draws[0])
    # a given (seed, epoch) is reproducible: epoch 0 again, on the same persistent workers
    loader.set_epoch(0)
    _assert_same(got[:1], [[(b.tokens, b.points, [s.extras["draw"] for s in b.samples])
                            for b in loader]])


def test_worker_global_seeding_is_reproducible() -> None:
    def run() -> dict[str, tuple]:
        loader = build_dataloader(TinyDataset(n=8), batch_size=2, shuffle=False, num_workers=2, seed=3)
        loader.set_epoch(0)
        return {s.token: s.extras["global"] for b in loader for s in b.samples}

    first, second = run(), run()
    assert first == second
    # the two workers draw different streams (batch 0 -> worker 0, batch 1 -> worker 1)
    assert first["tok0"] != first["tok2"]
    worker_init_fn(0, seed=3)
    a = (float(torch.rand(())), float(np.random.random()), random.random())
    worker_init_fn(0, seed=3)
    assert a == (float(torch.rand(())), float(np.random.random()), random.random())
    worker_init_fn(1, seed=3)
    assert a != (float(torch.rand(())), float(np.random.random()), random.random())


def test_shuffle_sampler_and_distributed() -> None:
    s = EpochShuffleSampler(20, shuffle=True, seed=1)
    e0 = list(s)
    assert list(s) == e0 and sorted(e0) == list(range(20)) and e0 != list(range(20))
    s.set_epoch(1)
    assert list(s) != e0 and sorted(s) == list(range(20))
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]

    ds = TinyDataset(n=11)
    shards = []
    for rank in range(3):
        loader = build_dataloader(ds, batch_size=2, shuffle=True, num_workers=0, seed=4,
                                  distributed=True, rank=rank, world_size=3)
        assert isinstance(loader.index_sampler, torch.utils.data.DistributedSampler)
        loader.set_epoch(2)
        shards.append([t for b in loader for t in b.tokens])
    assert [len(x) for x in shards] == [4, 4, 4]  # 11 padded to 12
    assert {t for shard in shards for t in shard} == set(ds.sample_tokens())


def test_drop_last() -> None:
    loader = build_dataloader(TinyDataset(n=7), batch_size=3, shuffle=False, num_workers=0, seed=0,
                              drop_last=True)
    assert [b.batch_size for b in loader] == [3, 3]


# ----------------------------------------------------------------------------- CBGS


def _imbalanced_single(rng: np.random.Generator) -> list[set[int]]:
    # 4 classes with 1000 / 200 / 40 / 8 samples, one class each, plus 30 empty samples
    ids = [{c} for c, n in enumerate([1000, 200, 40, 8]) for _ in range(n)] + [set()] * 30
    return [ids[i] for i in rng.permutation(len(ids))]


def test_cbgs_uniform_on_single_class_samples() -> None:
    ids = _imbalanced_single(np.random.default_rng(0))
    s = ClassBalancedSampler(ids, num_classes=4, seed=0)
    assert s.samples_per_class == [1000, 200, 40, 8]
    assert s.draws_per_class == 1248 // 4 and len(s) == 4 * 312
    idx = list(s)
    assert len(idx) == len(s) and all(0 <= i < len(ids) for i in idx)
    freq = np.bincount([next(iter(ids[i])) for i in idx], minlength=4)
    assert freq.tolist() == [312] * 4  # exactly uniform (was 1000 : 8)
    assert all(ids[i] for i in idx)  # empty samples are never drawn
    # the rare class is duplicated, the common class subsampled
    rare = [i for i in idx if ids[i] == {3}]
    assert len(set(rare)) == 8


def test_cbgs_flattens_multi_class_distribution() -> None:
    rng = np.random.default_rng(1)
    p = [0.9, 0.3, 0.05, 0.01]
    ids = [{c for c in range(4) if rng.random() < p[c]} for _ in range(3000)]
    s = ClassBalancedSampler(ids, num_classes=4, seed=2)
    before = np.array(s.samples_per_class, dtype=float) / len(ids)
    idx = s.epoch_indices(0)
    after = np.array([sum(c in ids[i] for i in idx) for c in range(4)], dtype=float) / len(idx)
    assert before.max() / before.min() > 50
    assert after.max() / after.min() < 5  # much flatter
    assert after[3] > 0.2  # the rarest class now appears in every ~4th sample (was 1 %)


def test_cbgs_determinism_epochs_callable_and_sharding() -> None:
    ids = _imbalanced_single(np.random.default_rng(3))
    a = ClassBalancedSampler(ids, num_classes=4, seed=9)
    b = ClassBalancedSampler(lambda i: ids[i], num_classes=4, seed=9, num_samples=len(ids))
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    e1 = list(a)
    assert e1 == list(b) and e1 != list(ClassBalancedSampler(ids, 4, seed=9))
    assert list(ClassBalancedSampler(ids, 4, seed=10)) != list(ClassBalancedSampler(ids, 4, seed=9))

    full = a.epoch_indices(1)
    shards = []
    for rank in range(3):
        s = ClassBalancedSampler(ids, 4, seed=9, rank=rank, world_size=3)
        s.set_epoch(1)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == -(-len(full) // 3)
    merged = [shards[k % 3][k // 3] for k in range(3 * len(shards[0]))]
    padded = np.concatenate([full, full[: 3 * len(shards[0]) - len(full)]])
    assert merged == padded.tolist()

    with pytest.raises(ValueError, match="outside"):
        ClassBalancedSampler([{0}, {5}], num_classes=4)
    with pytest.raises(ValueError, match="num_samples"):
        ClassBalancedSampler(lambda i: {0}, num_classes=4)
    with pytest.raises(ValueError, match="no sample"):
        ClassBalancedSampler([set(), set()], num_classes=4)


def test_cbgs_in_dataloader() -> None:
    ds = TinyDataset(n=12)
    sampler = ClassBalancedSampler.from_dataset(ds, seed=0)
    loader = build_dataloader(ds, batch_size=4, shuffle=True, num_workers=0, seed=0, sampler=sampler)
    loader.set_epoch(0)
    tokens = [t for b in loader for t in b.tokens]
    assert tokens == [f"tok{i}" for i in sampler.epoch_indices(0)]
    # samples with index % 4 == 0 have no boxes: never drawn
    assert all(int(t[3:]) % 4 for t in tokens)
    # from_dataset without sample_class_ids loads the samples
    class Plain(TinyDataset):
        sample_class_ids = None  # type: ignore[assignment]

    assert ClassBalancedSampler.from_dataset(Plain(n=12)).samples_per_class == sampler.samples_per_class
