"""Tests for distill3d.geometry.nms against brute-force greedy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from distill3d.geometry import circle_nms, nms_bev

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------- reference


def _polygons(boxes: np.ndarray) -> np.ndarray:
    """Shapely footprints from explicit cos/sin (independent of box_corners)."""
    x, y, l, w, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    coords = np.empty((len(boxes), 4, 2))
    for k, (sl, sw) in enumerate([(1, 1), (-1, 1), (-1, -1), (1, -1)]):
        coords[:, k, 0] = x + sl * l / 2 * c - sw * w / 2 * s
        coords[:, k, 1] = y + sl * l / 2 * s + sw * w / 2 * c
    return shapely.polygons(coords)


def _shapely_iou_matrix(boxes: np.ndarray) -> np.ndarray:
    polys = _polygons(boxes)
    inter = shapely.area(shapely.intersection(polys[:, None], polys[None, :]))
    area = boxes[:, 3] * boxes[:, 4]
    return inter / (area[:, None] + area[None, :] - inter)


def _greedy(suppresses: np.ndarray, scores: list[float], pre: int | None, post: int | None) -> list[int]:
    """Textbook greedy NMS; ``suppresses[i][j]`` says kept ``i`` removes ``j``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if pre is not None:
        order = order[:pre]
    kept: list[int] = []
    for j in order:
        if not any(suppresses[i][j] for i in kept):
            kept.append(j)
    return kept if post is None else kept[:post]


def _brute_nms_bev(
    boxes: np.ndarray, scores: np.ndarray, thr: float, pre: int | None = None, post: int | None = None
) -> list[int]:
    iou = _shapely_iou_matrix(boxes)
    return _greedy((iou > thr).tolist(), scores.tolist(), pre, post)


def _brute_circle_nms(
    centers: np.ndarray, scores: np.ndarray, radius: float, post: int | None = None
) -> list[int]:
    n = len(centers)
    close = [
        [math.hypot(centers[i, 0] - centers[j, 0], centers[i, 1] - centers[j, 1]) < radius for j in range(n)]
        for i in range(n)
    ]
    return _greedy(close, scores.tolist(), None, post)


def _clustered_boxes(seed: int, n: int, clusters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Detections around a few objects (so suppression happens), scores with ties."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-30, 30, (clusters, 2))
    size = np.column_stack([rng.uniform(1, 6, clusters), rng.uniform(0.5, 2.5, clusters)])
    yaw = rng.uniform(-np.pi, np.pi, clusters)
    k = rng.integers(0, clusters, n)
    boxes = np.empty((n, 9))
    boxes[:, :2] = centre[k] + rng.normal(0, 0.5, (n, 2))
    boxes[:, 2] = rng.normal(0, 0.2, n)
    boxes[:, 3:5] = size[k] * rng.uniform(0.8, 1.25, (n, 2))
    boxes[:, 5] = 1.5
    boxes[:, 6] = (yaw[k] + rng.normal(0, 0.3, n) + np.pi) % (2 * np.pi) - np.pi
    boxes[:, 7:] = rng.normal(0, 1, (n, 2))
    scores = np.round(rng.random(n), 1)  # many exact ties
    return boxes, scores


# ----------------------------------------------------------------------------- nms_bev


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.25, 0.5, 0.7, 0.95])
def test_nms_bev_matches_brute_force(threshold: float) -> None:
    boxes, scores = _clustered_boxes(seed=int(threshold * 100), n=300)
    kept = nms_bev(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
    assert kept.dtype == torch.long
    assert kept.tolist() == _brute_nms_bev(boxes, scores, threshold)


def test_nms_bev_pre_and_post_max_size() -> None:
    boxes, scores = _clustered_boxes(seed=11, n=250)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    for pre, post in [(100, None), (None, 7), (60, 5), (0, None), (1000, 1000)]:
        kept = nms_bev(tb, ts, 0.3, pre_max_size=pre, post_max_size=post)
        assert kept.tolist() == _brute_nms_bev(boxes, scores, 0.3, pre, post), (pre, post)


def test_nms_bev_order_ties_and_float32() -> None:
    boxes, scores = _clustered_boxes(seed=12, n=200)
    kept = nms_bev(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), 0.2)
    s = scores[kept.numpy()]
    assert np.all(np.diff(s) <= 0)
    # Identical boxes with equal scores: the lowest index survives.
    same = np.repeat(boxes[:1], 4, axis=0)
    kept = nms_bev(torch.from_numpy(same), torch.tensor([0.5, 0.9, 0.9, 0.9], dtype=torch.float64), 0.5)
    assert kept.tolist() == [1]


def test_nms_bev_chain_and_edge_cases() -> None:
    # A chain of boxes, each overlapping its neighbours: greedy keeps every other one.
    n = 40
    chain = np.zeros((n, 7))
    chain[:, 0] = np.arange(n) * 2.5
    chain[:, 3:6] = [4.0, 2.0, 1.5]
    scores = np.linspace(1.0, 0.5, n)
    kept = nms_bev(torch.from_numpy(chain), torch.from_numpy(scores), 0.1)
    assert kept.tolist() == _brute_nms_bev(chain, scores, 0.1) == list(range(0, n, 2))
    # Touching boxes (IoU 0) are never suppressed, even at threshold 0.
    touching = chain.copy()
    touching[:, 0] = np.arange(n) * 4.0
    kept = nms_bev(torch.from_numpy(touching), torch.from_numpy(scores), 0.0)
    assert kept.tolist() == list(range(n))
    empty = nms_bev(torch.zeros(0, 7), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"iou_threshold": -0.1}, ValueError, "iou_threshold"),
        ({"iou_threshold": float("nan")}, ValueError, "iou_threshold"),
        ({"scores": torch.rand(4)}, ValueError, r"scores must have shape \(5,\)"),
        ({"scores": torch.tensor([0.1, float("nan"), 0.2, 0.3, 0.4])}, ValueError, "scores has NaN"),
        ({"boxes": torch.ones(5, 6)}, ValueError, "boxes must have shape"),
        ({"pre_max_size": -1}, ValueError, "pre_max_size"),
        ({"post_max_size": 2.5}, ValueError, "post_max_size"),
    ],
)
def test_nms_bev_bad_inputs(kwargs: dict, error: type, match: str) -> None:
    args = {"boxes": torch.ones(5, 7), "scores": torch.rand(5), "iou_threshold": 0.5} | kwargs
    with pytest.raises(error, match=match):
        nms_bev(**args)


# ----------------------------------------------------------------------------- circle_nms


@pytest.mark.parametrize("radius", [0.0, 0.5, 1.0, 2.0, 4.0])
def test_circle_nms_matches_brute_force(radius: float) -> None:
    boxes, scores = _clustered_boxes(seed=20 + int(radius * 10), n=300)
    for centers in (boxes[:, :2], boxes[:, :3], boxes):
        kept = circle_nms(torch.from_numpy(centers), torch.from_numpy(scores), radius)
        assert kept.tolist() == _brute_circle_nms(boxes, scores, radius)


def test_circle_nms_post_max_size_strictness_and_float32() -> None:
    boxes, scores = _clustered_boxes(seed=30, n=200)
    kept = circle_nms(
        torch.from_numpy(boxes[:, :2]).float(), torch.from_numpy(scores).float(), 1.5, post_max_size=9
    )
    ref = _brute_circle_nms(torch.from_numpy(boxes[:, :2]).float().double().numpy(), scores, 1.5, post=9)
    assert kept.tolist() == ref
    # Exactly at the radius: kept (strict "<"); CenterPoint's squared "<=" would suppress.
    centers = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.9]], dtype=torch.float64)
    assert circle_nms(centers, torch.tensor([0.9, 0.8, 0.7]).double(), 5.0).tolist() == [0, 1]
    assert circle_nms(centers[:0], torch.zeros(0, dtype=torch.float64), 1.0).tolist() == []


def test_circle_nms_bad_inputs() -> None:
    with pytest.raises(ValueError, match="radius"):
        circle_nms(torch.zeros(3, 2), torch.rand(3), -1.0)
    with pytest.raises(ValueError, match=r"centers must have shape \(N, >=2\)"):
        circle_nms(torch.zeros(3), torch.rand(3), 1.0)
    with pytest.raises(ValueError, match="centers has NaN"):
        circle_nms(torch.tensor([[0.0, float("nan")]]), torch.rand(1), 1.0)
    with pytest.raises(ValueError, match=r"scores must have shape \(3,\)"):
        circle_nms(torch.zeros(3, 2), torch.rand(2), 1.0)


@CUDA
def test_nms_on_cuda() -> None:
    boxes, scores = _clustered_boxes(seed=40, n=300)
    tb, ts = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
    kept = nms_bev(tb, ts, 0.3)
    assert kept.device.type == "cuda"
    assert kept.cpu().tolist() == _brute_nms_bev(boxes, scores, 0.3)
    kept = circle_nms(tb, ts, 1.0)
    assert kept.device.type == "cuda"
    assert kept.cpu().tolist() == _brute_circle_nms(boxes, scores, 1.0)
