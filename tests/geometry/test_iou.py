"""Tests for distill3d.geometry.iou against an independent shapely reference.

The reference polygons are built here from explicit cos/sin (not with box_corners), and
areas come from shapely's (GEOS) exact polygon intersection.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from distill3d.geometry import box_intersection_bev, box_iou_3d, box_iou_bev, overlapping_pairs_bev
from distill3d.geometry import iou as iou_module

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ATOL = 1e-6


# ----------------------------------------------------------------------------- reference


def _polygons(x: np.ndarray, y: np.ndarray, l: np.ndarray, w: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Shapely polygons of rectangles (centre, length along yaw, width), explicit cos/sin."""
    c, s = np.cos(yaw), np.sin(yaw)
    coords = np.empty(np.broadcast(x, y, l, w, yaw).shape + (4, 2))
    for k, (sl, sw) in enumerate([(1, 1), (-1, 1), (-1, -1), (1, -1)]):
        coords[..., k, 0] = x + sl * l / 2 * c - sw * w / 2 * s
        coords[..., k, 1] = y + sl * l / 2 * s + sw * w / 2 * c
    return shapely.polygons(coords)


def _ref_inter_bev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference intersection areas, broadcasting ``a`` and ``b`` ``(..., >=7)`` like numpy.

    Both rectangles are expressed in the frame of ``a`` (``a`` axis-aligned at the origin):
    areas do not change under this rigid motion, and exactly parallel or collinear edges
    stay exactly so, which GEOS's floating-point overlay needs to be reliable.
    """
    a, b = np.broadcast_arrays(a, b)
    dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    ca, sa = np.cos(a[..., 6]), np.sin(a[..., 6])
    bx, by = dx * ca + dy * sa, -dx * sa + dy * ca
    zero = np.zeros_like(bx)
    poly_a = _polygons(zero, zero, a[..., 3], a[..., 4], zero)
    poly_b = _polygons(bx, by, b[..., 3], b[..., 4], b[..., 6] - a[..., 6])
    return shapely.area(shapely.intersection(poly_a, poly_b))


def _ref_iou_bev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = _ref_inter_bev(a, b)
    return inter / (a[..., 3] * a[..., 4] + b[..., 3] * b[..., 4] - inter)


def _ref_iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top = np.minimum(a[..., 2] + a[..., 5] / 2, b[..., 2] + b[..., 5] / 2)
    bottom = np.maximum(a[..., 2] - a[..., 5] / 2, b[..., 2] - b[..., 5] / 2)
    inter = _ref_inter_bev(a, b) * np.clip(top - bottom, 0, None)
    va, vb = a[..., 3] * a[..., 4] * a[..., 5], b[..., 3] * b[..., 4] * b[..., 5]
    return inter / (va + vb - inter)


# ----------------------------------------------------------------------------- random pairs


def _rot(yaw: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return u * np.cos(yaw) - v * np.sin(yaw), u * np.sin(yaw) + v * np.cos(yaw)


def _wrap(yaw: np.ndarray) -> np.ndarray:
    return (yaw + np.pi) % (2 * np.pi) - np.pi


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Boxes with log-uniform sizes (some thin: w = 0.01) and yaw over [-pi, pi)."""
    boxes = np.empty((n, 7))
    boxes[:, :2] = rng.uniform(-50, 50, (n, 2))
    boxes[:, 2] = rng.uniform(-3, 3, n)
    boxes[:, 3] = np.exp(rng.uniform(np.log(0.2), np.log(15.0), n))
    boxes[:, 4] = np.exp(rng.uniform(np.log(0.2), np.log(5.0), n))
    boxes[:, 5] = np.exp(rng.uniform(np.log(0.3), np.log(4.0), n))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    thin = rng.random(n) < 0.15
    boxes[thin, 4] = 0.01
    return boxes


def _make_pairs(seed: int, per_kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned pairs ``(a, b)`` of many kinds: overlapping, identical, nested, touching,
    rotated by exactly 90 degrees, yaw near +-pi, collinear edges, far apart."""
    rng = np.random.default_rng(seed)
    parts_a, parts_b = [], []

    def add(a: np.ndarray, b: np.ndarray) -> None:
        parts_a.append(a)
        parts_b.append(b)

    n = per_kind
    # 1. overlapping: centre offset of the order of the sizes, any yaw (x3 weight).
    a = _random_boxes(rng, 3 * n)
    b = _random_boxes(rng, 3 * n)
    b[:, :2] = a[:, :2] + rng.normal(0, 1, (3 * n, 2)) * 0.4 * (a[:, 3:4] + b[:, 3:4])
    b[:, 2] = a[:, 2] + rng.normal(0, 1, 3 * n)
    add(a, b)
    # 2. identical.
    a = _random_boxes(rng, n)
    add(a, a.copy())
    # 3. nested: b's circumcircle fits inside a's inscribed circle; and the reverse.
    a = _random_boxes(rng, n)
    b = _random_boxes(rng, n)
    inner = 0.5 * np.minimum(a[:, 3], a[:, 4])
    scale = rng.uniform(0.2, 0.9, n) * inner / (0.5 * np.hypot(b[:, 3], b[:, 4]))
    b[:, 3:5] *= scale[:, None]
    room = inner - 0.5 * np.hypot(b[:, 3], b[:, 4])
    ang = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0, 1, n) * room
    b[:, 0], b[:, 1] = a[:, 0] + r * np.cos(ang), a[:, 1] + r * np.sin(ang)
    b[:, 2], b[:, 5] = a[:, 2], a[:, 5] * 0.5
    add(a, b)
    add(b.copy(), a.copy())
    # 4. touching: same yaw, edge to edge along the heading or across it (IoU 0).
    a = _random_boxes(rng, n)
    b = _random_boxes(rng, n)
    b[:, 6] = a[:, 6]
    along = rng.random(n) < 0.5
    u = np.where(along, (a[:, 3] + b[:, 3]) / 2, rng.uniform(-0.4, 0.4, n) * a[:, 3])
    v = np.where(along, rng.uniform(-0.4, 0.4, n) * a[:, 4], (a[:, 4] + b[:, 4]) / 2)
    du, dv = _rot(a[:, 6], u, v)
    b[:, 0], b[:, 1] = a[:, 0] + du, a[:, 1] + dv
    add(a, b)
    # 5. rotated by exactly 90 degrees: crosses around a shared centre or small offsets.
    a = _random_boxes(rng, n)
    b = a.copy()
    b[:, 6] = _wrap(a[:, 6] + np.pi / 2)
    shift = rng.random(n) < 0.5
    b[shift, :2] += rng.normal(0, 0.3, (int(shift.sum()), 2))
    swap = rng.random(n) < 0.3
    b[swap, 3], b[swap, 4] = a[swap, 4], a[swap, 3]  # same footprint, described rotated
    add(a, b)
    # 6. yaw near +-pi on both sides of the wrap.
    a = _random_boxes(rng, n)
    b = a.copy()
    a[:, 6] = np.pi - 10.0 ** rng.uniform(-12, -2, n)
    b[:, 6] = -np.pi + 10.0 ** rng.uniform(-12, -2, n)
    b[:, :2] += rng.normal(0, 0.2, (n, 2))
    b[:, 3:5] *= rng.uniform(0.7, 1.3, (n, 2))
    add(a, b)
    # 7. collinear overlapping edges: same yaw and width, shifted along the heading (or
    #    same length shifted across), so two edges lie on common lines.
    a = _random_boxes(rng, n)
    b = a.copy()
    b[:, 3] *= rng.uniform(0.3, 1.5, n)
    along = rng.random(n) < 0.5
    u = np.where(along, rng.uniform(-0.9, 0.9, n) * a[:, 3], 0.0)
    v = np.where(along, 0.0, rng.uniform(-0.9, 0.9, n) * a[:, 4])
    b[~along, 3] = a[~along, 3]
    du, dv = _rot(a[:, 6], u, v)
    b[:, 0], b[:, 1] = a[:, 0] + du, a[:, 1] + dv
    add(a, b)
    # 8. near-identical: tiny perturbations of yaw and centre.
    a = _random_boxes(rng, n)
    b = a.copy()
    b[:, 6] = _wrap(a[:, 6] + rng.normal(0, 1e-9, n))
    b[:, :2] += rng.normal(0, 1e-9, (n, 2))
    add(a, b)
    # 9. far apart (zero IoU, dropped by the prefilter).
    add(_random_boxes(rng, n), _random_boxes(rng, n))
    return np.concatenate(parts_a), np.concatenate(parts_b)


def _aligned(fn, a: torch.Tensor, b: torch.Tensor, block: int = 125) -> torch.Tensor:
    """Per-pair values from a pairwise function, via small diagonal blocks."""
    return torch.cat([fn(a[k : k + block], b[k : k + block]).diagonal() for k in range(0, len(a), block)])


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    a, b = _make_pairs(seed=0, per_kind=1000)
    assert len(a) >= 10000
    return a, b


# ----------------------------------------------------------------------------- tests


def test_bev_iou_matches_shapely_on_10k_pairs(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pairs
    ours = _aligned(box_iou_bev, torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = _ref_iou_bev(a, b)
    err = np.abs(ours - ref)
    assert err.max() < ATOL, f"worst pair {err.argmax()}: ours {ours[err.argmax()]}, ref {ref[err.argmax()]}"
    assert (ref > 0.01).sum() > 5000  # many overlapping pairs were really tested


def test_bev_intersection_matches_shapely(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pairs
    ours = _aligned(box_intersection_bev, torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = _ref_inter_bev(a, b)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_3d_iou_matches_reference_on_10k_pairs(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pairs
    b = b.copy()
    rng = np.random.default_rng(1)
    # Mix of z relations: same, touching in z, partly overlapping, disjoint.
    kind = rng.integers(0, 4, len(b))
    b[kind == 1, 2] = a[kind == 1, 2] + (a[kind == 1, 5] + b[kind == 1, 5]) / 2
    b[kind == 3, 2] = a[kind == 3, 2] + (a[kind == 3, 5] + b[kind == 3, 5]) / 2 + 1.0
    ours = _aligned(box_iou_3d, torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = _ref_iou_3d(a, b)
    assert np.abs(ours - ref).max() < ATOL
    assert (ref > 0.01).sum() > 2000


def test_identical_boxes_give_one() -> None:
    a, _ = _make_pairs(seed=2, per_kind=50)
    boxes = torch.from_numpy(a)
    for fn in (box_iou_bev, box_iou_3d):
        diag = fn(boxes, boxes).diagonal()
        assert torch.allclose(diag, torch.ones_like(diag), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_touching_gives_zero(dtype: torch.dtype) -> None:
    a = torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0]], dtype=dtype)
    b = torch.tensor(
        [
            [4.0, 0, 0, 4, 2, 1.5, 0],  # shares the front edge
            [0.0, 2, 0, 4, 2, 1.5, 0],  # shares the left edge
            [4.0, 2, 0, 4, 2, 1.5, 0],  # shares one corner
            [3.0, 0, 0, 4, 2, 1.5, math.pi / 2],  # rotated 90 deg, touching the front edge
            [0.0, 0, 1.5, 4, 2, 1.5, 0],  # on top (3D: touching faces)
        ],
        dtype=dtype,
    )
    bev = box_iou_bev(a, b)
    assert bev.dtype == dtype
    assert torch.equal(bev[0, :3], torch.zeros(3, dtype=dtype))
    assert float(bev[0, 3]) < 1e-7
    assert float(bev[0, 4]) == pytest.approx(1.0, abs=1e-6)
    assert float(box_iou_3d(a, b[4:])[0, 0]) == 0.0


def test_hand_computed_values() -> None:
    a = torch.tensor([[0.0, 0, 0, 4, 2, 2, 0]], dtype=torch.float64)
    b = torch.tensor(
        [
            [1.0, 0, 0, 4, 2, 2, 0],  # half-length shift: inter 6, union 10
            [0.0, 0, 0, 4, 2, 2, math.pi / 2],  # cross: inter 4, union 12
            [0.0, 0, 0, 2, 1, 1, 0.3],  # nested: IoU = 2 / 8; 3D: 2 / 16
            [0.0, 0, 0.5, 4, 2, 2, -math.pi],  # same footprint, z shifted by h/4
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        box_intersection_bev(a, b)[0], torch.tensor([6.0, 4.0, 2.0, 8.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        box_iou_bev(a, b)[0], torch.tensor([0.6, 1 / 3, 0.25, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        box_iou_3d(a, b)[0], torch.tensor([0.6, 1 / 3, 2 / 16, 12 / 20], dtype=torch.float64)
    )


def test_thin_collinear_boxes_analytic() -> None:
    # Two 1 cm wide boxes on the same centre line, one inside the other lengthwise: the
    # IoU is the ratio of lengths. (GEOS's overlay in world coordinates returns a
    # MULTIPOINT here, which is why the shapely reference works in the first box's frame.)
    yaw = 2.82686778811519
    la, lb, shift = 8.034238697614692, 10.204216797653546, -0.37
    a = torch.tensor([[-0.2931796107957254, -2.1672662447669637, 0, la, 0.01, 1, yaw]], dtype=torch.float64)
    b = a.clone()
    b[0, 0] += shift * math.cos(yaw)
    b[0, 1] += shift * math.sin(yaw)
    b[0, 3] = lb
    assert float(box_iou_bev(a, b)) == pytest.approx(la / lb, abs=1e-9)
    assert float(box_intersection_bev(a, b)) == pytest.approx(la * 0.01, rel=1e-9)


def test_full_matrix_matches_shapely_and_is_symmetric() -> None:
    rng = np.random.default_rng(3)
    a = _random_boxes(rng, 300)
    b = _random_boxes(rng, 250)
    a[:, :2] = rng.uniform(-15, 15, (300, 2))  # dense: many overlapping pairs
    b[:, :2] = rng.uniform(-15, 15, (250, 2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ours = box_iou_bev(ta, tb).numpy()
    ref = _ref_iou_bev(a[:, None, :], b[None, :, :])
    assert np.abs(ours - ref).max() < ATOL
    assert (ref > 0).sum() > 1000
    np.testing.assert_allclose(box_iou_bev(tb, ta).numpy().T, ours, atol=1e-12)
    ref3 = _ref_iou_3d(a[:, None, :], b[None, :, :])
    assert np.abs(box_iou_3d(ta, tb).numpy() - ref3).max() < ATOL


def test_invariant_to_rigid_motion_of_the_scene() -> None:
    a, b = _make_pairs(seed=5, per_kind=30)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    base = _aligned(box_iou_bev, ta, tb)
    theta, shift = 0.7, np.array([123.0, -45.0])

    def move(boxes: np.ndarray) -> torch.Tensor:
        out = boxes.copy()
        out[:, 0], out[:, 1] = _rot(np.full(len(boxes), theta), boxes[:, 0], boxes[:, 1])
        out[:, :2] += shift
        out[:, 6] = _wrap(boxes[:, 6] + theta)
        return torch.from_numpy(out)

    moved = _aligned(box_iou_bev, move(a), move(b))
    assert float((moved - base).abs().max()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_float32_accuracy(dtype: torch.dtype) -> None:
    a, b = _make_pairs(seed=6, per_kind=40)
    ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
    out = _aligned(box_iou_bev, ta, tb)
    assert out.dtype == dtype
    # Reference on exactly the (possibly rounded) input values.
    ref = _ref_iou_bev(ta.double().numpy(), tb.double().numpy())
    assert np.abs(out.double().numpy() - ref).max() < 1e-6
    mixed = box_iou_bev(ta[:5].float(), tb[:5].double())
    assert mixed.dtype == torch.float64


def test_extra_columns_ignored_and_empty_inputs() -> None:
    a, b = _make_pairs(seed=7, per_kind=5)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with_vel = torch.cat((ta, torch.full((len(ta), 2), float("nan"), dtype=ta.dtype)), dim=1)
    torch.testing.assert_close(box_iou_bev(with_vel, tb), box_iou_bev(ta, tb))
    torch.testing.assert_close(box_iou_3d(with_vel, tb), box_iou_3d(ta, tb))
    assert box_iou_bev(ta[:0], tb).shape == (0, len(tb))
    assert box_iou_3d(ta, tb[:0]).shape == (len(ta), 0)
    assert box_intersection_bev(ta[:0], tb[:0]).shape == (0, 0)


def test_chunked_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    a = _random_boxes(rng, 60)
    b = _random_boxes(rng, 45)
    a[:, :2] = rng.uniform(-8, 8, (60, 2))
    b[:, :2] = rng.uniform(-8, 8, (45, 2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    full = box_iou_3d(ta, tb)
    monkeypatch.setattr(iou_module, "_PREFILTER_PAIRS", 100)
    monkeypatch.setattr(iou_module, "_CLIP_PAIRS", 7)
    torch.testing.assert_close(box_iou_3d(ta, tb), full, atol=0, rtol=0)
    assert float(full.max()) > 0


def test_large_sparse_scene_runs_and_spot_checks() -> None:
    rng = np.random.default_rng(9)
    n = 2000
    a = _random_boxes(rng, n)
    a[:, 3], a[:, 4] = rng.uniform(3.5, 5, n), rng.uniform(1.6, 2.1, n)
    b = a.copy()
    b[:, :2] += rng.normal(0, 1.0, (n, 2))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    out = box_iou_bev(torch.from_numpy(a), torch.from_numpy(b))
    assert out.shape == (n, n)
    rows = rng.choice(n, 20, replace=False)
    ref = _ref_iou_bev(a[rows][:, None, :], b[None, :, :])
    assert np.abs(out.numpy()[rows] - ref).max() < ATOL


def test_overlapping_pairs_match_dense_upper_triangle() -> None:
    rng = np.random.default_rng(11)
    boxes = _random_boxes(rng, 400)
    boxes[:, :2] = rng.uniform(-12, 12, (400, 2))
    tb = torch.from_numpy(boxes)
    dense = torch.triu(box_iou_bev(tb, tb), diagonal=1)
    for thr in (0.0, 0.3):
        i, j, iou = overlapping_pairs_bev(tb, thr)
        expected = (dense > thr).nonzero()
        got = torch.stack((i, j), dim=1)
        got = got[torch.argsort(got[:, 0] * 400 + got[:, 1])]
        assert torch.equal(got, expected)
        torch.testing.assert_close(iou[torch.argsort(i * 400 + j)], dense[expected[:, 0], expected[:, 1]])
    with pytest.raises(ValueError, match="iou_threshold"):
        overlapping_pairs_bev(tb, -1.0)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.zeros(3, 6), torch.ones(2, 7), r"^a must have shape"),
        (torch.ones(3, 7), torch.ones(7), r"^b must have shape"),
        (torch.tensor([[0.0, 0, 0, 1, 1, 1, float("nan")]]), torch.ones(1, 7), r"^a has NaN"),
        (torch.ones(1, 7), torch.tensor([[0.0, 0, 0, 1, 0, 1, 0]]), r"^b has non-positive"),
    ],
)
def test_bad_input_errors(a: torch.Tensor, b: torch.Tensor, match: str) -> None:
    for fn in (box_iou_bev, box_iou_3d, box_intersection_bev):
        with pytest.raises(ValueError, match=match):
            fn(a, b)


@CUDA
def test_cuda_matches_cpu() -> None:
    a, b = _make_pairs(seed=10, per_kind=100)
    ta, tb = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    for fn in (box_iou_bev, box_iou_3d):
        cpu = fn(ta[:500], tb)
        gpu = fn(ta[:500].cuda(), tb.cuda())
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="same device"):
        box_iou_bev(ta.cuda(), tb)
