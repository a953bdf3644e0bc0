"""CenterPoint head: Gaussian targets, losses, decoding and shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill3d.models.heads import (
    CENTERPOINT_NUSCENES_TASKS,
    CODE_SIZE,
    CenterPointHead,
    box_gaussian_radii,
    build_targets,
    clamp_sigmoid,
    draw_gaussian_heatmaps,
    gather_regression,
    gaussian_focal_loss,
    gaussian_radius,
)
from distill3d.structures import BEVGrid

NUSCENES_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
                    "bicycle", "pedestrian", "traffic_cone")
NAN = float("nan")


# ---------------------------------------------------------------------------- references


def _radius_reference(height: float, width: float, min_overlap: float) -> float:
    """CornerNet/CenterPoint ``gaussian_radius`` written out with ``math``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_reference(centers: list[tuple[int, int]], radii: list[int], labels: list[int], num_classes: int,
                    height: int, width: int) -> np.ndarray:
    """Brute force: every box, every cell of its window, max into the map."""
    heat = np.zeros((num_classes, height, width), dtype=np.float64)
    for (cx, cy), r, c in zip(centers, radii, labels):
        sigma = (2 * r + 1) / 6.0
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                x, y = cx + dx, cy + dy
                if 0 <= x < width and 0 <= y < height:
                    g = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
                    if g < np.finfo(np.float32).eps:
                        g = 0.0
                    heat[c, y, x] = max(heat[c, y, x], g)
    return heat


def _centerpoint_draw(heatmap: np.ndarray, center: tuple[int, int], radius: int) -> None:
    """CenterPoint's ``draw_umich_gaussian`` (numpy), for centres inside the map."""
    diameter = 2 * radius + 1
    m = (diameter - 1.0) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    sigma = diameter / 6
    gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
    cx, cy = center
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    masked_heatmap = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)


def _perfect_heads(targets: list[dict[str, torch.Tensor]], velocity: bool = True,
                   logit: float = 12.0) -> list[dict[str, torch.Tensor]]:
    """Head outputs that reproduce ``targets``: logits +logit at the peaks (-logit
    elsewhere) and the regression targets written at the target cells."""
    heads = []
    for tgt in targets:
        heat = tgt["heatmap"]
        bsz, _, height, width = heat.shape
        maps = torch.zeros(bsz, CODE_SIZE, height * width)
        for b in range(bsz):
            m = tgt["mask"][b]
            maps[b][:, tgt["indices"][b][m]] = tgt["targets"][b][m].T
        maps = maps.view(bsz, CODE_SIZE, height, width)
        head = {
            "heatmap": torch.where(heat == 1.0, logit, -logit),
            "reg": maps[:, 0:2], "height": maps[:, 2:3], "dim": maps[:, 3:6], "rot": maps[:, 6:8],
        }
        if velocity:
            head["vel"] = maps[:, 8:10]
        heads.append(head)
    return heads


def _match(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Index of the nearest predicted centre for every GT box."""
    d = torch.cdist(gt[:, :2].double(), pred[:, :2].double())
    return d.argmin(dim=1)


# ------------------------------------------------------------------------------ radius


def test_gaussian_radius_matches_quadratic_formulas() -> None:
    sizes = [(1.0, 1.0), (4.5, 2.0), (20.0, 3.5), (0.3, 7.0), (55.0, 55.0), (2.0, 40.0)]
    for overlap in (0.1, 0.5, 0.7):
        got = gaussian_radius(torch.tensor([s[0] for s in sizes], dtype=torch.float64),
                              torch.tensor([s[1] for s in sizes], dtype=torch.float64), overlap)
        want = torch.tensor([_radius_reference(h, w, overlap) for h, w in sizes], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # Broadcasting, float32 and Python numbers.
    grid = gaussian_radius(torch.tensor([[2.0], [8.0]]), torch.tensor([1.0, 3.0, 5.0]), 0.1)
    assert grid.shape == (2, 3) and grid.dtype == torch.float32
    assert float(gaussian_radius(3.0, 4.0, 0.1)) == pytest.approx(_radius_reference(3.0, 4.0, 0.1), rel=1e-6)
    # Symmetric in its sizes.
    torch.testing.assert_close(gaussian_radius(torch.tensor(3.0), torch.tensor(9.0)),
                               gaussian_radius(torch.tensor(9.0), torch.tensor(3.0)))


def test_box_gaussian_radii_truncate_and_clamp() -> None:
    grid = BEVGrid(-10, -10, 10, 10, 40, 80)  # cells 0.25 m (x) by 0.5 m (y)
    boxes = torch.tensor([[0, 0, 0, 4.0, 2.0, 1.5, 0.7], [0, 0, 0, 0.5, 0.5, 1.0, 0.0],
                          [0, 0, 0, 20.0, 3.0, 3.0, 1.0]])
    got = box_gaussian_radii(boxes, grid, 0.1, 2)
    want = [max(2, int(_radius_reference(float(b[3]) / 0.25, float(b[4]) / 0.5, 0.1))) for b in boxes]
    assert got.tolist() == want
    assert got.dtype == torch.int64
    assert int(got[1]) == 2  # tiny box: min radius


# --------------------------------------------------------------------------- gaussians


def test_draw_gaussian_matches_brute_force_with_overlaps_and_borders() -> None:
    gen = torch.Generator().manual_seed(0)
    height, width, num_classes = 23, 31, 3
    n = 60
    centers = torch.stack([torch.randint(-3, width + 3, (n,), generator=gen),
                           torch.randint(-3, height + 3, (n,), generator=gen)], dim=1)
    # Explicit border and overlap cases.
    extra = torch.tensor([[0, 0], [width - 1, height - 1], [0, height - 1], [width - 1, 0],
                          [10, 10], [11, 10], [10, 12]])
    centers = torch.cat([centers, extra])
    radii = torch.cat([torch.randint(0, 7, (n,), generator=gen), torch.tensor([2, 3, 5, 0, 4, 4, 6])])
    labels = torch.cat([torch.randint(0, num_classes, (n,), generator=gen), torch.tensor([0, 1, 2, 0, 1, 1, 1])])
    got = draw_gaussian_heatmaps(centers, radii, labels, num_classes, (height, width))
    want = _draw_reference(centers.tolist(), radii.tolist(), labels.tolist(), num_classes, height, width)
    assert got.shape == (num_classes, height, width) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    # Exactly 1 at every centre that lies inside the map.
    inside = (centers[:, 0] >= 0) & (centers[:, 0] < width) & (centers[:, 1] >= 0) & (centers[:, 1] < height)
    c = centers[inside]
    assert bool((got[labels[inside], c[:, 1], c[:, 0]] == 1.0).all())


def test_draw_gaussian_matches_centerpoint_code() -> None:
    gen = torch.Generator().manual_seed(1)
    height, width = 40, 48
    n = 25
    centers = torch.stack([torch.randint(0, width, (n,), generator=gen),
                           torch.randint(0, height, (n,), generator=gen)], dim=1)
    radii = torch.randint(0, 9, (n,), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    want = np.zeros((2, height, width), dtype=np.float32)
    for (cx, cy), r, c in zip(centers.tolist(), radii.tolist(), labels.tolist()):
        _centerpoint_draw(want[c], (cx, cy), r)
    grid = BEVGrid(0.0, 0.0, 48.0, 40.0, height, width)
    got = draw_gaussian_heatmaps(centers, radii, labels, 2, grid)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_draw_gaussian_empty_and_bad_input() -> None:
    empty = draw_gaussian_heatmaps(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                   torch.zeros(0, dtype=torch.long), 2, (4, 5))
    assert empty.shape == (2, 4, 5) and float(empty.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="labels"):
        draw_gaussian_heatmaps(torch.tensor([[1, 1]]), torch.tensor([1]), torch.tensor([2]), 2, (4, 5))


# ----------------------------------------------------------------------------- targets

GRID = BEVGrid(0.0, -4.0, 8.0, 4.0, 16, 16)  # 0.5 m cells, W = H = 16


def test_build_targets_hand_made_boxes() -> None:
    # label order: 0 car, 1 truck, 2 pedestrian
    boxes = torch.tensor([[
        [1.3, 0.7, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0],     # car: col 2.6, row 9.4
        [6.1, -3.9, -1.0, 8.0, 2.5, 3.0, -2.5, NAN, NAN],   # truck: col 12.2, row 0.2, NaN velocity
        [-0.1, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],     # car outside (x < 0)
        [8.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],      # car outside (x = x_max)
        [2.25, 3.99, 1.0, 0.8, 0.6, 1.7, 3.0, 0.5, 0.25],   # pedestrian: col 4.5, row 15.98
        [4.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],      # padding (mask False)
    ]])
    labels = torch.tensor([[0, 1, 0, 0, 2, 0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    tasks = [[0], [1, 2]]
    out = build_targets(boxes, labels, mask, tasks, GRID, max_objects=4)
    assert len(out) == 2
    car, rest = out
    assert car["heatmap"].shape == (1, 1, 16, 16) and rest["heatmap"].shape == (1, 2, 16, 16)
    for key, shape in (("indices", (1, 4)), ("mask", (1, 4)), ("targets", (1, 4, 10)),
                       ("target_mask", (1, 4, 10)), ("box_ids", (1, 4)), ("labels", (1, 4))):
        assert car[key].shape == shape, key

    # Car task: only box 0 (boxes 2 and 3 are outside the grid, box 5 is padding).
    assert car["mask"].tolist() == [[True, False, False, False]]
    assert car["indices"][0, 0].item() == 9 * 16 + 2
    assert car["box_ids"].tolist() == [[0, -1, -1, -1]]
    assert car["labels"].tolist() == [[0, -1, -1, -1]]
    want = torch.tensor([0.1, -0.1, 0.5, math.log(4.0), math.log(2.0), math.log(1.5),
                         math.sin(0.3), math.cos(0.3), 1.0, -2.0])
    torch.testing.assert_close(car["targets"][0, 0], want, rtol=0, atol=1e-5)
    assert bool(car["target_mask"][0, 0].all()) and not bool(car["target_mask"][0, 1:].any())
    assert float(car["targets"][0, 1:].abs().sum()) == 0.0
    assert car["heatmap"][0, 0, 9, 2].item() == 1.0
    assert int((car["heatmap"] == 1.0).sum()) == 1

    # Truck + pedestrian task: slots in box order, compacted.
    assert rest["mask"].tolist() == [[True, True, False, False]]
    assert rest["indices"][0, :2].tolist() == [0 * 16 + 12, 15 * 16 + 4]
    assert rest["box_ids"][0, :2].tolist() == [1, 4]
    assert rest["labels"][0, :2].tolist() == [0, 1]
    truck = rest["targets"][0, 0]
    torch.testing.assert_close(truck[:2], torch.tensor([-0.3, -0.3]), rtol=0, atol=1e-5)
    torch.testing.assert_close(truck[3:6], torch.log(torch.tensor([8.0, 2.5, 3.0])))
    torch.testing.assert_close(truck[6:8], torch.tensor([math.sin(-2.5), math.cos(-2.5)]))
    assert truck[8:].tolist() == [0.0, 0.0]  # NaN velocity -> 0, masked
    assert rest["target_mask"][0, 0].tolist() == [True] * 8 + [False, False]
    ped = rest["targets"][0, 1]
    torch.testing.assert_close(ped[:3], torch.tensor([0.0, 0.48, 1.0]), rtol=0, atol=1e-5)
    assert bool(rest["target_mask"][0, 1].all())
    assert rest["heatmap"][0, 0, 0, 12].item() == 1.0 and rest["heatmap"][0, 1, 15, 4].item() == 1.0
    assert rest["heatmap"][0, 0, 15, 4].item() == 0.0  # classes do not mix


def test_build_targets_batch_equals_per_sample_and_max_objects() -> None:
    gen = torch.Generator().manual_seed(3)
    bsz, m = 3, 12
    xy = torch.rand(bsz, m, 2, generator=gen) * torch.tensor([9.0, 9.0]) + torch.tensor([-0.5, -4.5])
    rest = torch.rand(bsz, m, 7, generator=gen) * 2 + 0.5
    boxes = torch.cat([xy, rest], dim=-1)
    labels = torch.randint(0, 3, (bsz, m), generator=gen)
    mask = torch.rand(bsz, m, generator=gen) > 0.2
    tasks = [[0, 2], [1]]
    batched = build_targets(boxes, labels, mask, tasks, GRID, max_objects=3)
    for b in range(bsz):
        single = build_targets(boxes[b:b + 1], labels[b:b + 1], mask[b:b + 1], tasks, GRID, max_objects=3)
        for t in range(2):
            for key in batched[t]:
                assert torch.equal(batched[t][key][b:b + 1], single[t][key]), key
    # The first three valid boxes of a task fill its slots.
    for b in range(bsz):
        for t, ids in enumerate(tasks):
            cells = GRID.xy_to_cell(boxes[b, :, :2]).floor()
            ok = mask[b] & torch.isin(labels[b], torch.tensor(ids)) & (cells >= 0).all(-1) & (cells < 16).all(-1)
            want = ok.nonzero().flatten()[:3].tolist()
            got = batched[t]["box_ids"][b][batched[t]["mask"][b]].tolist()
            assert got == want
            # Only the kept boxes are drawn.
            assert int((batched[t]["heatmap"][b] == 1.0).sum()) <= len(want)


def test_build_targets_no_boxes() -> None:
    out = build_targets(torch.zeros(2, 0, 9), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
                        [[0], [1]], GRID, max_objects=5)
    assert out[0]["heatmap"].shape == (2, 1, 16, 16) and float(out[0]["heatmap"].sum()) == 0.0
    assert not bool(out[1]["mask"].any())


# ------------------------------------------------------------------------------ losses


def test_gaussian_focal_loss_matches_direct_formula() -> None:
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 5, 6, generator=gen) ** 3
    target[0, 1, 2, 3] = 1.0
    target[1, 2, 0, 0] = 1.0
    target[1, 0, 4, 5] = 1.0
    pred = clamp_sigmoid(torch.randn(2, 3, 5, 6, generator=gen) * 3)
    got = gaussian_focal_loss(pred, target)
    total, num_pos = 0.0, 0
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        if t == 1.0:
            num_pos += 1
            total += -math.log(p + 1e-12) * (1 - p) ** 2
        else:
            total += -math.log(1 - p + 1e-12) * p ** 2 * (1 - t) ** 4
    assert num_pos == 3
    assert float(got) == pytest.approx(total / num_pos, rel=1e-5)
    # No positives: normalised by 1.
    zero_t = target.clamp(max=0.9)
    direct = sum(-math.log(1 - p + 1e-12) * p ** 2 * (1 - t) ** 4
                 for p, t in zip(pred.flatten().tolist(), zero_t.flatten().tolist()))
    assert float(gaussian_focal_loss(pred, zero_t)) == pytest.approx(direct, rel=1e-5)


# ------------------------------------------------------------------------------- head

CLASSES = ("car", "truck", "bus", "pedestrian", "barrier")
TASKS = [["pedestrian", "car"], ["barrier"], ["truck", "bus"]]
BIG_GRID = BEVGrid(-20.0, -16.0, 20.0, 16.0, 64, 80)  # 0.5 m cells


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two samples of well-separated boxes (padded), labels in CLASSES order."""
    s0 = [
        ([-12.3, 5.1, 0.8, 4.5, 1.9, 1.6, 0.4, 3.0, -1.0], 0),   # car
        ([3.7, -8.2, 1.2, 10.0, 2.6, 3.2, -3.1, 0.0, 5.5], 1),   # truck, yaw near -pi
        ([10.2, 10.9, 0.9, 0.7, 0.6, 1.8, 1.5, 0.5, 0.2], 3),    # pedestrian
        ([-5.0, -12.0, 0.5, 2.0, 0.4, 1.0, 2.9, NAN, NAN], 4),   # barrier, NaN velocity
        ([15.0, -3.0, 1.5, 12.0, 2.9, 3.5, -0.9, -2.0, 0.0], 2), # bus
    ]
    s1 = [
        ([0.26, 0.26, 0.0, 4.0, 2.0, 1.5, -1.2, 0.0, 0.0], 0),   # car
        ([-18.0, 14.0, 0.3, 4.2, 1.8, 1.5, 3.14, 1.0, 1.0], 0),  # car near a corner
        ([6.0, -2.0, 0.9, 0.8, 0.8, 1.7, 0.0, 0.0, -1.0], 3),    # pedestrian
    ]
    m = max(len(s0), len(s1))
    boxes = torch.zeros(2, m, 9)
    labels = torch.full((2, m), -1, dtype=torch.long)
    mask = torch.zeros(2, m, dtype=torch.bool)
    for b, sample in enumerate((s0, s1)):
        for i, (box, lab) in enumerate(sample):
            boxes[b, i] = torch.tensor(box)
            labels[b, i] = lab
            mask[b, i] = True
    return boxes, labels, mask


def _head(**kwargs: object) -> CenterPointHead:
    torch.manual_seed(0)
    return CenterPointHead(8, TASKS, CLASSES, BIG_GRID, share_channels=8, head_channels=8, **kwargs)


@pytest.mark.parametrize("nms", ["circle", "rotated", "none"])
def test_decode_recovers_gt_from_perfect_predictions(nms: str) -> None:
    head = _head(nms=nms)
    boxes, labels, mask = _scene()
    heads = _perfect_heads(head.build_targets(boxes, labels, mask))
    dets = head.decode(heads)
    assert len(dets) == 2
    for b, det in enumerate(dets):
        gt = boxes[b][mask[b]]
        gt_labels = labels[b][mask[b]]
        assert len(det) == len(gt)
        assert bool((det.scores[:-1] >= det.scores[1:]).all())
        assert bool((det.scores > 0.99).all())
        j = _match(det.boxes, gt)
        pred = det.boxes[j]
        assert torch.equal(det.labels[j], gt_labels)
        assert (pred[:, :3] - gt[:, :3]).abs().max().item() < 1e-4
        torch.testing.assert_close(pred[:, 3:6], gt[:, 3:6], rtol=1e-5, atol=1e-5)
        dyaw = torch.remainder(pred[:, 6] - gt[:, 6] + math.pi, 2 * math.pi) - math.pi
        assert dyaw.abs().max().item() < 1e-5
        assert bool((pred[:, 6] >= -math.pi).all() and (pred[:, 6] < math.pi).all())
        torch.testing.assert_close(pred[:, 7:9], torch.nan_to_num(gt[:, 7:9]), rtol=0, atol=1e-5)


def test_decode_without_velocity_gives_nan_velocity() -> None:
    head = _head(predict_velocity=False)
    boxes, labels, mask = _scene()
    heads = _perfect_heads(head.build_targets(boxes, labels, mask), velocity=False)
    dets = head.decode(heads)
    assert len(dets[0]) == int(mask[0].sum())
    assert bool(torch.isnan(dets[0].boxes[:, 7:9]).all())
    loss = head.loss(heads, boxes, labels, mask)
    assert float(loss["bbox"]) < 1e-5


def _duplicate_heads(head: CenterPointHead) -> list[dict[str, torch.Tensor]]:
    """One car predicted at two neighbouring cells (scores 0.9 and 0.8) with the same box."""
    boxes = torch.tensor([[[1.1, 2.1, 0.5, 4.5, 2.0, 1.6, 0.3, 0.0, 0.0]]])
    heads = _perfect_heads(head.build_targets(boxes, torch.tensor([[0]]), torch.tensor([[True]])))
    peak = (heads[0]["heatmap"][0, 1] > 0).nonzero()[0]
    r, c = int(peak[0]), int(peak[1])
    heads[0]["heatmap"][0, 1, r, c] = math.log(0.9 / 0.1)
    heads[0]["heatmap"][0, 1, r, c + 1] = math.log(0.8 / 0.2)
    for key in ("reg", "height", "dim", "rot", "vel"):
        heads[0][key][0, :, r, c + 1] = heads[0][key][0, :, r, c]
    heads[0]["reg"][0, 0, r, c + 1] -= 1.0  # same metric centre from the next cell
    return heads


@pytest.mark.parametrize("nms", ["circle", "rotated"])
def test_nms_removes_duplicates(nms: str) -> None:
    head = _head(nms=nms)
    dets = head.decode(_duplicate_heads(head))[0]
    assert len(dets) == 1
    assert dets.scores.item() == pytest.approx(0.9, abs=1e-6)
    assert dets.labels.item() == 0
    torch.testing.assert_close(dets.boxes[0, :2], torch.tensor([1.1, 2.1]), rtol=0, atol=1e-4)
    raw = _head(nms="none").decode(_duplicate_heads(head))[0]
    assert len(raw) == 2 and raw.scores.tolist() == pytest.approx([0.9, 0.8], abs=1e-6)


def test_decode_thresholds_limits_and_empty() -> None:
    head = _head()
    boxes, labels, mask = _scene()
    heads = _perfect_heads(head.build_targets(boxes, labels, mask))
    dets = head.decode(heads, max_detections=2)
    assert [len(d) for d in dets] == [2, 2]
    silent = [{k: (torch.full_like(v, -20.0) if k == "heatmap" else v) for k, v in h.items()} for h in heads]
    dets = head.decode(silent)
    assert all(len(d) == 0 for d in dets) and dets[0].boxes.shape == (0, 9)
    # Everything passes a zero threshold, up to post_max_size per task and max_detections.
    dets = _head(post_max_size=7, max_detections=12, nms="none").decode(silent, score_threshold=0.0)
    assert [len(d) for d in dets] == [12, 12]


def test_loss_zero_for_perfect_predictions_positive_otherwise() -> None:
    head = _head()
    boxes, labels, mask = _scene()
    targets = head.build_targets(boxes, labels, mask)
    perfect = _perfect_heads(targets)
    loss = head.loss(perfect, boxes, labels, mask)
    names = {"heatmap", "bbox", "loss"} | {f"task{t}.{k}" for t in range(3) for k in ("heatmap", "bbox")}
    assert set(loss) == names
    assert float(loss["bbox"]) < 1e-5
    assert float(loss["heatmap"]) < 1e-3
    torch.testing.assert_close(loss["loss"], loss["heatmap"] + loss["bbox"])
    # Precomputed targets give the same numbers.
    again = head.loss(perfect, boxes, labels, mask, targets=targets)
    assert all(torch.equal(again[k], loss[k]) for k in loss)
    # A shifted regression and a random network cost more.
    shifted = [{k: (v + 0.3 if k == "dim" else v) for k, v in h.items()} for h in perfect]
    bad = head.loss(shifted, boxes, labels, mask)
    assert float(bad["bbox"]) == pytest.approx(0.25 * 3 * 0.3 * len(TASKS), rel=1e-4)
    rand = head.loss(head(torch.randn(2, 8, 64, 80)), boxes, labels, mask)
    assert float(rand["heatmap"].detach()) > 0.1 and float(rand["bbox"].detach()) > 0.01


def test_gradients_flow_to_every_parameter() -> None:
    head = _head()
    boxes, labels, mask = _scene()
    bev = torch.randn(2, 8, 64, 80, requires_grad=True)
    loss = head.loss(head(bev), boxes, labels, mask)["loss"]
    loss.backward()
    assert bev.grad is not None and float(bev.grad.abs().sum()) > 0
    branch_grad: dict[str, float] = {}
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        branch = ".".join(name.split(".")[:3]) if name.startswith("task_heads") else "shared"
        branch_grad[branch] = branch_grad.get(branch, 0.0) + float(p.grad.abs().sum())
    assert len(branch_grad) == 1 + 3 * 6
    for branch, g in branch_grad.items():
        if branch == "task_heads.1.vel":
            # The only barrier has a NaN velocity: its velocity loss is masked out.
            assert g == 0.0
        else:
            assert g > 0, branch


def test_gather_regression_order() -> None:
    maps = {"reg": torch.arange(12.0).view(1, 2, 2, 3)}
    maps["height"] = maps["reg"][:, :1] + 100
    maps["dim"] = torch.zeros(1, 3, 2, 3)
    maps["rot"] = torch.ones(1, 2, 2, 3)
    out = gather_regression(maps, torch.tensor([[4, 0]]))
    assert out.shape == (1, 2, 8)
    assert out[0, 0, :3].tolist() == [4.0, 10.0, 104.0]


@pytest.mark.parametrize("tasks,velocity,convs", [
    (CENTERPOINT_NUSCENES_TASKS, True, 2),
    ([["car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
       "pedestrian", "traffic_cone"]], True, 1),
    ([["car"], ["pedestrian", "bicycle"]], False, 3),
])
def test_output_shapes(tasks: list[list[str]], velocity: bool, convs: int) -> None:
    grid = BEVGrid(-51.2, -51.2, 51.2, 51.2, 16, 24)
    head = CenterPointHead(12, tasks, NUSCENES_CLASSES, grid, share_channels=16, head_channels=8,
                           num_head_convs=convs, predict_velocity=velocity)
    out = head(torch.randn(3, 12, 16, 24))
    assert len(out) == len(tasks)
    for t, o in zip(tasks, out):
        want = {"heatmap": len(t), "reg": 2, "height": 1, "dim": 3, "rot": 2}
        if velocity:
            want["vel"] = 2
        assert {k: tuple(v.shape) for k, v in o.items()} == {k: (3, c, 16, 24) for k, c in want.items()}
        torch.testing.assert_close(head.task_heads[0]["heatmap"][-1].bias,
                                   torch.full((len(tasks[0]),), -2.19))
    assert head.task_class_ids[0] == tuple(NUSCENES_CLASSES.index(n) for n in tasks[0])
    with pytest.raises(ValueError, match="expects"):
        head(torch.randn(1, 12, 16, 23))


def test_default_circle_radii_and_validation() -> None:
    head = CenterPointHead(4, CENTERPOINT_NUSCENES_TASKS, NUSCENES_CLASSES, GRID)
    want = [math.sqrt(v) for v in (4, 12, 10, 1, 0.85, 0.175)]
    assert head.nms_radius == pytest.approx(want)
    with pytest.raises(ValueError, match="not in class_names"):
        CenterPointHead(4, [["car"], ["lorry"]], NUSCENES_CLASSES, GRID)
    with pytest.raises(ValueError, match="more than one task"):
        CenterPointHead(4, [["car"], ["car", "bus"]], NUSCENES_CLASSES, GRID)
    with pytest.raises(ValueError, match="one value per task"):
        CenterPointHead(4, [["car"], ["bus"]], NUSCENES_CLASSES, GRID, nms_radius=[1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    head = _head()
    boxes, labels, mask = _scene()
    bev = torch.randn(2, 8, 64, 80)
    head.eval()
    with torch.no_grad():
        out_cpu = head(bev)
        loss_cpu = head.loss(out_cpu, boxes, labels, mask)
        dets_cpu = head.decode(_perfect_heads(head.build_targets(boxes, labels, mask)))
        gpu = head.cuda()
        out_gpu = gpu(bev.cuda())
        loss_gpu = gpu.loss(out_gpu, boxes.cuda(), labels.cuda(), mask.cuda())
        heads_gpu = [{k: v.cuda() for k, v in h.items()}
                     for h in _perfect_heads(head.build_targets(boxes, labels, mask))]
        dets_gpu = gpu.decode(heads_gpu)
    for k in loss_cpu:
        torch.testing.assert_close(loss_gpu[k].cpu(), loss_cpu[k], rtol=1e-3, atol=1e-4)
    for a, b in zip(dets_cpu, dets_gpu):
        assert b.boxes.device.type == "cuda"
        torch.testing.assert_close(b.boxes.cpu(), a.boxes, rtol=1e-5, atol=1e-4, equal_nan=True)
        assert torch.equal(b.labels.cpu(), a.labels)
