"""CenterPoint-Pillar and CenterPoint-Voxel: the detector contract (taps, grids, loss,
decode), config knobs, multi-sweep input, building every shipped config, and overfitting
two SynthDrive frames until the decoded boxes match the GT (AP 1 at BEV IoU 0.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from distill3d.config import PACKAGED_CONFIG_DIR, DataConfig, ModelConfig, load_config
from distill3d.data import Batch, NuScenesDataset, collate_samples
from distill3d.errors import ConfigError
from distill3d.geometry import box_iou_bev
from distill3d.models import CenterPointPillar, CenterPointVoxel, Detector, build_detector, default_tasks
from distill3d.structures import BEVGrid, Detections

RANGE = (-25.6, -25.6, -5.0, 25.6, 25.6, 3.0)


@pytest.fixture(scope="module")
def dataset(synth_nuscenes: Path) -> NuScenesDataset:
    return NuScenesDataset(synth_nuscenes, split="train", sweeps=0, load_cameras=False)


@pytest.fixture(scope="module")
def batch(dataset: NuScenesDataset) -> Batch:
    """Two frames of different scenes."""
    return collate_samples([dataset[0], dataset[len(dataset) - 1]])


def tiny(type_: str = "centerpoint_pillar", **changes: object) -> ModelConfig:
    """A small, coarse detector for CPU tests (one task for all classes)."""
    base: dict[str, object] = {"type": type_, "width_multiplier": 0.25, "point_cloud_range": RANGE,
                               "max_points_per_voxel": None, "max_voxels": None,
                               "tasks": [list(DataConfig().class_names)]}
    if type_ == "centerpoint_pillar":
        base.update(voxel_size=(0.8, 0.8, 8.0), blocks_per_stage=[1, 1, 1])
    else:
        base.update(voxel_size=(0.2, 0.2, 0.2), blocks_per_stage=[1, 1], encoder_blocks=[1, 1, 1, 1])
    base.update(changes)
    return ModelConfig(**base)  # type: ignore[arg-type]


def build(cfg: ModelConfig, data: DataConfig | None = None) -> Detector:
    return build_detector(cfg, data or DataConfig())


# ----------------------------------------------------------------------------- contract


def test_pillar_taps_grids_loss_decode(batch: Batch) -> None:
    torch.manual_seed(0)
    model = build(tiny(width_multiplier=0.5))
    assert isinstance(model, CenterPointPillar)
    out = model(batch)
    assert set(out.taps) == set(model.tap_names())
    grid = BEVGrid(*RANGE[:2], *RANGE[3:5], 64, 64)
    expected = {  # name: (kind, shape, grid)
        "bev": ("bev", (2, 32, 64, 64), grid),
        "backbone.0": ("bev", (2, 32, 32, 32), grid.downsample(2)),
        "backbone.1": ("bev", (2, 64, 16, 16), grid.downsample(4)),
        "backbone.2": ("bev", (2, 128, 8, 8), grid.downsample(8)),
        "neck": ("bev", (2, 192, 32, 32), grid.downsample(2)),
        "neck.0": ("bev", (2, 64, 32, 32), grid.downsample(2)),
        "neck.2": ("bev", (2, 64, 32, 32), grid.downsample(2)),
        "head.shared": ("bev", (2, 32, 32, 32), grid.downsample(2)),
    }
    for name, (kind, shape, g) in expected.items():
        tap = out.taps[name]
        assert (tap.kind, tuple(tap.tensor.shape), tap.grid) == (kind, shape, g), name
    assert model.tap_grids() == {k: t.grid for k, t in out.taps.items()}
    pillars = out.taps["pillars"]
    assert pillars.kind == "voxels" and pillars.grid == grid
    v = pillars.tensor.shape[0]
    assert pillars.tensor.shape == (v, 32) and pillars.index.shape == (v, 4)
    assert bool((pillars.index[:, 1] == 0).all())
    counts = out.taps["pillars.num_points"].tensor
    assert counts.shape == (v, 1) and bool((counts >= 1).all())
    # the pillar features are the BEV map at the pillars' cells
    i = pillars.index
    torch.testing.assert_close(out.taps["bev"].tensor[i[:, 0], :, i[:, 2], i[:, 3]], pillars.tensor)
    assert out.head_grid == grid.downsample(2)
    assert len(out.heads) == 1 and out.heads[0]["heatmap"].shape == (2, 10, 32, 32)

    losses = model.loss(batch, out)
    assert {"loss", "heatmap", "bbox"} <= set(losses)
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        dets = model.decode(model(batch))
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    # a student with the same pillars has the same pillar set, row for row (PointDistiller)
    student = build(tiny(width_multiplier=0.25))
    s_out = student(batch)
    assert torch.equal(s_out.taps["pillars"].index, pillars.index)
    assert s_out.taps["pillars"].tensor.shape == (v, 16)


def test_voxel_taps_grids_loss_decode(batch: Batch) -> None:
    torch.manual_seed(0)
    model = build(tiny("centerpoint_voxel"))
    assert isinstance(model, CenterPointVoxel)
    out = model(batch)
    assert set(out.taps) == set(model.tap_names())
    grid = BEVGrid(*RANGE[:2], *RANGE[3:5], 256, 256)
    channels = {"encoder.conv1": 4, "encoder.conv2": 8, "encoder.conv3": 16, "encoder.conv4": 32}
    for level, (name, c) in enumerate(channels.items()):
        tap = out.taps[name]
        assert tap.kind == "voxels" and tap.tensor.shape[1] == c, name
        assert tap.grid == grid.downsample(2 ** level), name
        assert tap.index.shape == (tap.tensor.shape[0], 4)
        h, w = tap.grid.shape
        assert int(tap.index[:, 2].max()) < h and int(tap.index[:, 3].max()) < w
    voxels = out.taps["voxels"]
    assert voxels.tensor.shape[1] == 4 and voxels.grid == grid  # mean of x, y, z, intensity
    bev = out.taps["bev"]
    d = model.encoder.sparse.out_shape[0]
    assert bev.tensor.shape == (2, 32 * d, 32, 32) and bev.grid == grid.downsample(8)
    assert out.taps["neck"].grid == grid.downsample(8) == out.head_grid
    losses = model.loss(batch, out)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    model.eval()
    with torch.no_grad():
        assert len(model.decode(model(batch))) == 2


def test_width_and_depth_multipliers() -> None:
    full = build(tiny(width_multiplier=1.0))
    half = build(tiny(width_multiplier=0.5, depth_multiplier=2.0))
    assert full.backbone.out_channels == [64, 128, 256] and half.backbone.out_channels == [32, 64, 128]
    assert full.neck.out_channels == 384 and half.neck.out_channels == 192
    assert full.encoder.out_channels == 64 and half.encoder.out_channels == 32
    assert full.head.shared_conv[0].out_channels == 64 and half.head.shared_conv[0].out_channels == 32
    convs = lambda m: [sum(isinstance(x, torch.nn.Conv2d) for x in b.modules()) for b in m.backbone.blocks]
    assert convs(full) == [2, 2, 2] and convs(half) == [3, 3, 3]
    n_full = sum(p.numel() for p in full.parameters())
    n_half = sum(p.numel() for p in build(tiny(width_multiplier=0.5)).parameters())
    assert 3.0 < n_full / n_half < 4.5  # about 4x fewer parameters at half width
    voxel = build(tiny("centerpoint_voxel", width_multiplier=0.5))
    assert voxel.encoder.sparse.channels == [8, 8, 16, 32, 64, 64]


def test_head_stride_and_neck_strides() -> None:
    model = build(tiny(head_stride=4))
    assert model.neck.upsample_strides == [0.5, 1.0, 2.0]
    assert model.head_grid.shape == (16, 16)
    model = build(tiny(neck_upsample_strides=[2.0, 4.0, 8.0]))
    assert model.head_grid.shape == (64, 64)
    with pytest.raises(ConfigError, match="one stride"):
        build(tiny(neck_upsample_strides=[1.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="disagrees"):
        build(tiny(head_stride=4, neck_upsample_strides=[1.0, 2.0, 4.0]))


def test_build_errors() -> None:
    with pytest.raises(ConfigError, match="camera issue"):
        build(ModelConfig(type="bevdepth"))
    with pytest.raises(ConfigError, match="one cell in z"):
        build(tiny(voxel_size=(0.8, 0.8, 1.0)))
    with pytest.raises(ConfigError, match="divisible"):
        build(tiny(voxel_size=(0.8, 0.8, 8.0), point_cloud_range=(-24.0, -24.0, -5.0, 24.0, 24.0, 3.0)))
    with pytest.raises(ConfigError, match="not in the data's class names"):
        build(tiny(tasks=[["car"], ["spaceship"]]))


def test_default_tasks() -> None:
    nus = list(DataConfig().class_names)
    assert default_tasks(nus) == [["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"],
                                  ["motorcycle", "bicycle"], ["pedestrian", "traffic_cone"]]
    assert default_tasks(["pedestrian", "car"]) == [["car"], ["pedestrian"]]
    assert default_tasks(["Car", "Pedestrian", "Cyclist"]) == [["Car", "Pedestrian", "Cyclist"]]
    model = build(dataclasses.replace(tiny(), tasks=None))
    assert len(model.head.tasks) == 6


def test_time_lag_input(synth_nuscenes: Path, batch: Batch) -> None:
    swept = NuScenesDataset(synth_nuscenes, split="train", sweeps=2, load_cameras=False)
    multi = collate_samples([swept[0]])
    assert multi.point_features[-1] == "time_lag"
    with_lag = build(tiny(use_time_lag=True))
    assert with_lag.encoder.vfe.in_channels == 5
    out = with_lag(multi)
    assert torch.isfinite(out.taps["bev"].tensor).all()
    plain = build(tiny())
    assert plain.encoder.vfe.in_channels == 4
    plain(multi)  # the time lag column is not read
    with pytest.raises(ValueError, match=r"time_lag.*sweeps"):
        with_lag(batch)


def test_labels_are_mapped_by_class_name(batch: Batch) -> None:
    torch.manual_seed(0)
    model = build(tiny(tasks=None), DataConfig(class_names=["pedestrian", "car"]))
    assert model.head.tasks == (("car",), ("pedestrian",))
    labels = model._labels(batch)  # batch labels index the 10 nuScenes classes
    names = batch.class_names
    expected = torch.tensor([{"car": 1, "pedestrian": 0}.get(names[i], -1) if i >= 0 else -1
                             for i in batch.labels.flatten().tolist()]).view_as(batch.labels)
    assert torch.equal(labels, expected)
    targets = model.head.build_targets(batch.boxes, labels, batch.box_mask)
    inside = (batch.boxes[..., :2].abs() < 25.6).all(-1) & batch.box_mask
    assert int(targets[0]["mask"].sum()) == int((inside & (batch.labels == names.index("car"))).sum())
    assert int(targets[1]["mask"].sum()) == int((inside & (batch.labels == names.index("pedestrian"))).sum())
    assert torch.isfinite(model.loss(batch, model(batch))["loss"])


def test_every_shipped_config_builds() -> None:
    shipped = sorted(p for p in PACKAGED_CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts)
    built = 0
    for path in shipped:
        cfg = load_config(path)
        if cfg.model.type == "bevdepth":
            continue
        model = build_detector(cfg.model, cfg.data)
        assert model.tap_names(), path
        built += 1
    assert built >= 3


# ----------------------------------------------------------------------------- overfitting


def bev_ap(dets: list[Detections], batch: Batch, class_count: int, point_range: tuple[float, ...],
           iou_threshold: float = 0.5) -> dict[int, float]:
    """All-point-interpolated AP per class (VOC style), greedy matching by score at BEV IoU
    ``iou_threshold``, on the GT boxes whose centre lies in ``point_range``."""
    aps = {}
    for c in range(class_count):
        gts, records, npos = [], [], 0
        for b, d in enumerate(dets):
            g, gl = batch.boxes_list[b], batch.labels_list[b]
            inside = ((g[:, 0] >= point_range[0]) & (g[:, 0] < point_range[3]) & (g[:, 1] >= point_range[1])
                      & (g[:, 1] < point_range[4]))
            g = g[(gl == c) & inside]
            gts.append(g)
            npos += len(g)
            sel = d.labels == c
            records += [(float(s), b, box) for s, box in zip(d.scores[sel], d.boxes[sel])]
        if npos == 0:
            continue
        records.sort(key=lambda r: -r[0])
        used = [torch.zeros(len(g), dtype=torch.bool) for g in gts]
        tp = []
        for _, b, box in records:
            if len(gts[b]) == 0:
                tp.append(0.0)
                continue
            iou = box_iou_bev(box[None, :7], gts[b][:, :7])[0]
            iou[used[b]] = -1.0
            j = int(iou.argmax())
            hit = bool(iou[j] >= iou_threshold)
            if hit:
                used[b][j] = True
            tp.append(float(hit))
        ctp = torch.cumsum(torch.tensor(tp), 0)
        precision = ctp / torch.arange(1, len(tp) + 1)
        recall = ctp / npos
        mprec = torch.cat([torch.zeros(1), precision, torch.zeros(1)])
        mrec = torch.cat([torch.zeros(1), recall, torch.ones(1)])
        mprec = torch.flip(torch.cummax(torch.flip(mprec, [0]), 0).values, [0])
        idx = torch.nonzero(mrec[1:] != mrec[:-1]).squeeze(1)
        aps[c] = float(((mrec[idx + 1] - mrec[idx]) * mprec[idx + 1]).sum())
    return aps


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The tiny test models run faster on one thread (their ops are too small to split,
    and a busy machine makes multi-thread barriers slow); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def overfit(model: Detector, batch: Batch, steps: int, lr: float) -> list[float]:
    """Train on one batch; then recalibrate BatchNorm statistics on it and switch to eval."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.3)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model.loss(batch, model(batch))["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    for m in model.modules():  # BN momentum 0.01 needs ~500 steps to settle: recalibrate
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(2):
            model(batch)
    model.eval()
    return losses


def test_pillar_detector_overfits_two_frames(batch: Batch, one_thread: None) -> None:
    torch.manual_seed(0)
    model = build(tiny())
    losses = overfit(model, batch, steps=80, lr=5e-3)
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        dets = model.decode(model(batch))
    aps = bev_ap(dets, batch, len(batch.class_names), RANGE)
    assert aps and sum(aps.values()) / len(aps) > 0.95, aps


def test_voxel_detector_overfits_two_frames(batch: Batch, one_thread: None) -> None:
    torch.manual_seed(0)
    model = build(tiny("centerpoint_voxel"))
    losses = overfit(model, batch, steps=80, lr=5e-3)
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        dets = model.decode(model(batch))
    aps = bev_ap(dets, batch, len(batch.class_names), RANGE)
    assert aps and sum(aps.values()) / len(aps) > 0.95, aps


@pytest.mark.parametrize("type_", ["centerpoint_pillar", "centerpoint_voxel"])
def test_runs_under_autocast(batch: Batch, type_: str) -> None:
    """Mixed precision (bfloat16 autocast on CPU, as float16 AMP on CUDA): finite loss and
    gradients; the sparse convolutions stay in float32."""
    torch.manual_seed(0)
    model = build(tiny(type_))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(batch)
        losses = model.loss(batch, out)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
