"""Tests for distill3d.data.voxelize against a brute-force reference written with Python
dicts over points (independent of the vectorised implementation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill3d.data.voxelize import (
    VoxelGrid,
    dynamic_voxelize,
    dynamic_voxelize_batch,
    hard_voxelize,
    hard_voxelize_batch,
    scatter_max,
    scatter_mean,
    scatter_sum,
    unique_voxels,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------- reference


def _ref_cell(p: np.ndarray, grid: VoxelGrid) -> tuple[int, int, int] | None:
    """Cell (z, y, x) of one point, computed scalar by scalar in the point's dtype (float32
    stays float32, like the kernels), or None when outside ``[min, max)`` / the grid."""
    t = p.dtype.type
    cell = []
    for a in range(3):
        v = p[a]
        lo, hi, d = t(grid.point_cloud_range[a]), t(grid.point_cloud_range[a + 3]), t(grid.voxel_size[a])
        if not (v >= lo and v < hi):  # NaN fails too
            return None
        c = math.floor((v - lo) / d)
        if not 0 <= c < grid.grid_size[a]:
            return None
        cell.append(c)
    return cell[2], cell[1], cell[0]


def ref_hard(points: np.ndarray, grid: VoxelGrid, max_points: int, max_voxels: int):
    """mmdetection3d's CPU loop: one pass over points; a new voxel is opened on a point's
    first appearance while fewer than max_voxels exist; a voxel takes points while it has
    fewer than max_points."""
    voxels: dict[tuple[int, int, int], list[int]] = {}  # insertion order = first appearance
    p2v = [-1] * len(points)
    for i in range(len(points)):
        key = _ref_cell(points[i], grid)
        if key is None:
            continue
        if key not in voxels:
            if len(voxels) >= max_voxels:
                continue
            voxels[key] = []
        if len(voxels[key]) < max_points:
            voxels[key].append(i)
            p2v[i] = list(voxels).index(key)
    c = points.shape[1]
    feats = np.zeros((len(voxels), max_points, c), dtype=points.dtype)
    for v, idx in enumerate(voxels.values()):
        feats[v, : len(idx)] = points[idx]
    coords = np.array(list(voxels.keys()), dtype=np.int32).reshape(-1, 3)
    counts = np.array([len(v) for v in voxels.values()], dtype=np.int32)
    return feats, coords, counts, np.array(p2v, dtype=np.int64)


def assert_matches_ref(points: np.ndarray, grid: VoxelGrid, max_points: int, max_voxels: int) -> None:
    out = hard_voxelize(torch.from_numpy(points), grid, max_points, max_voxels)
    feats, coords, counts, p2v = ref_hard(points, grid, max_points, max_voxels)
    assert out.coords.dtype == torch.int32 and out.num_points.dtype == torch.int32
    assert out.features.dtype == torch.from_numpy(points).dtype
    np.testing.assert_array_equal(out.coords.numpy(), coords)
    np.testing.assert_array_equal(out.num_points.numpy(), counts)
    np.testing.assert_array_equal(out.features.numpy(), feats)
    np.testing.assert_array_equal(out.point_to_voxel.numpy(), p2v)


def random_cloud(rng: np.random.Generator, n: int, grid: VoxelGrid, dtype=np.float32,
                 snap: float = 0.2, extra_cols: int = 1) -> np.ndarray:
    """Points over the range plus a 10 % margin outside it; a share ``snap`` of the
    coordinates are snapped exactly onto voxel boundaries or the range bounds."""
    lo = np.array(grid.point_cloud_range[:3])
    hi = np.array(grid.point_cloud_range[3:])
    d = np.array(grid.voxel_size)
    margin = 0.1 * (hi - lo)
    xyz = rng.uniform(lo - margin, hi + margin, (n, 3))
    snapped = lo + np.round((xyz - lo) / d) * d
    use = rng.random((n, 3)) < snap
    xyz = np.where(use, snapped, xyz)
    bounds = rng.random((n, 3))
    xyz = np.where(bounds < 0.02, lo, xyz)
    xyz = np.where(bounds > 0.98, hi, xyz)
    pts = np.concatenate([xyz, rng.uniform(0, 1, (n, extra_cols))], axis=1)
    return pts.astype(dtype)


GRIDS = {
    "voxels": VoxelGrid((0.5, 0.25, 0.5), (-2.0, -1.0, -1.0, 2.0, 1.5, 1.0)),
    "pillars": VoxelGrid((0.16, 0.16, 4.0), (0.0, -0.96, -3.0, 1.28, 0.96, 1.0)),
    "odd": VoxelGrid((0.3, 0.7, 0.1), (-1.1, -2.3, -0.35, 0.85, 1.0, 0.05)),  # not a whole number of voxels
}


# ----------------------------------------------------------------------------- grid


def test_grid_size_rounding() -> None:
    assert VoxelGrid((0.16, 0.16, 4), (0, -39.68, -3, 69.12, 39.68, 1)).grid_size == (432, 496, 1)
    assert VoxelGrid((0.05, 0.05, 0.1), (0, -40, -3, 70.4, 40, 1)).grid_size == (1408, 1600, 40)
    assert VoxelGrid((0.1, 0.1, 0.2), (-51.2, -51.2, -5, 51.2, 51.2, 3)).grid_size == (1024, 1024, 40)
    # nearest integer: 1 / 0.3 = 3.33 -> 3, 1 / 0.4 = 2.5 -> 2 (ties to even), 1 / 0.36 -> 3
    assert VoxelGrid((0.3, 0.4, 0.36), (0, 0, 0, 1, 1, 1)).grid_size == (3, 2, 3)
    g = GRIDS["pillars"]
    assert g.bev_shape == (12, 8) and g.num_cells == 8 * 12
    with pytest.raises(ValueError, match="voxel_size"):
        VoxelGrid((0.1, 0.0, 0.1), (0, 0, 0, 1, 1, 1))
    with pytest.raises(ValueError, match="max > min"):
        VoxelGrid((0.1, 0.1, 0.1), (0, 0, 0, 1, -1, 1))
    with pytest.raises(ValueError, match="no whole voxel"):
        VoxelGrid((1.0, 1.0, 1.0), (0, 0, 0, 0.4, 1, 1))


def test_voxel_centers() -> None:
    g = GRIDS["voxels"]
    c = g.voxel_centers(torch.tensor([[0, 0, 0], [3, 9, 7]], dtype=torch.int32))
    torch.testing.assert_close(c, torch.tensor([[-1.75, -0.875, -0.75], [1.75, 1.375, 0.75]]))
    c4 = g.voxel_centers(torch.tensor([[5, 3, 9, 7]]))
    torch.testing.assert_close(c4, c[1:])


# ----------------------------------------------------------------------------- hard voxels


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hard_matches_reference(name: str, dtype) -> None:
    grid = GRIDS[name]
    rng = np.random.default_rng([list(GRIDS).index(name), np.dtype(dtype).itemsize])
    for n, max_points, max_voxels in [(1500, 5, 10_000), (1500, 3, 40), (400, 1, 7), (3000, 64, 25)]:
        pts = random_cloud(rng, n, grid, dtype)
        assert_matches_ref(pts, grid, max_points, max_voxels)


def test_hard_limits_are_hit() -> None:
    """The parameters of the reference test really exercise both limits."""
    grid = GRIDS["voxels"]
    pts = random_cloud(np.random.default_rng(0), 1500, grid)
    full = hard_voxelize(torch.from_numpy(pts), grid, 10_000, 10_000)
    assert len(full) > 40 and int(full.num_points.max()) > 3
    lim = hard_voxelize(torch.from_numpy(pts), grid, 3, 40)
    assert len(lim) == 40 and int(lim.num_points.max()) == 3
    # The kept voxels are those whose first point comes first.
    first = [int(torch.nonzero(full.point_to_voxel == v)[0]) for v in range(len(full))]
    assert first == sorted(first)
    torch.testing.assert_close(lim.coords, full.coords[:40])


def test_boundaries_half_open() -> None:
    """[min, max): a point on the lower bound is in cell 0, on the upper bound dropped, on an
    interior boundary lo + k d in cell k (exact binary fractions)."""
    grid = VoxelGrid((0.5, 0.25, 1.0), (-2.0, -1.0, -1.0, 2.0, 1.0, 1.0))  # (8, 8, 2)
    pts = torch.tensor([
        [-2.0, -1.0, -1.0, 0.0],   # all lower bounds -> (0, 0, 0)
        [2.0, 0.0, 0.0, 1.0],      # x on upper bound -> dropped
        [0.0, 1.0, 0.0, 2.0],      # y on upper bound -> dropped
        [0.0, 0.0, 1.0, 3.0],      # z on upper bound -> dropped
        [-0.5, 0.25, 0.0, 4.0],    # interior boundaries: x cell 3, y cell 5, z cell 1
        [1.96875, 0.9375, 0.5, 5.0],  # inside the last cells
        [np.nextafter(-2.0, -3.0), 0.0, 0.0, 6.0],  # just below x min -> dropped
        [float("nan"), 0.0, 0.0, 7.0],  # NaN -> dropped
    ], dtype=torch.float64)
    out = hard_voxelize(pts, grid, 4, 100)
    assert out.coords.tolist() == [[0, 0, 0], [1, 5, 3], [1, 7, 7]]
    assert out.point_to_voxel.tolist() == [0, -1, -1, -1, 1, 2, -1, -1]
    dyn = dynamic_voxelize(pts, grid)
    assert dyn.tolist() == [[0, 0, 0], [-1] * 3, [-1] * 3, [-1] * 3, [1, 5, 3], [1, 7, 7],
                            [-1] * 3, [-1] * 3]
    # float32 gives the same answer (row 6 becomes its float32 neighbour below -2)
    pts32 = pts.float()
    pts32[6, 0] = float(np.nextafter(np.float32(-2.0), np.float32(-3.0)))
    out32 = hard_voxelize(pts32, grid, 4, 100)
    assert out32.coords.tolist() == out.coords.tolist()
    assert out32.point_to_voxel.tolist() == out.point_to_voxel.tolist()


def test_range_not_multiple_of_voxel_drops_top_strip() -> None:
    grid = VoxelGrid((0.3, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0, 1.0, 1.0))  # nx = 3: x in [0, 0.9)
    pts = torch.tensor([[0.85, 0.5, 0.5], [0.95, 0.5, 0.5]], dtype=torch.float64)
    assert dynamic_voxelize(pts, grid).tolist() == [[0, 0, 2], [-1, -1, -1]]


def test_empty_and_single_point() -> None:
    grid = GRIDS["voxels"]
    empty = hard_voxelize(torch.zeros((0, 4)), grid, 5, 100)
    assert empty.features.shape == (0, 5, 4) and empty.coords.shape == (0, 3)
    assert empty.num_points.shape == (0,) and empty.point_to_voxel.shape == (0,)
    outside = hard_voxelize(torch.tensor([[10.0, 0, 0, 1]]), grid, 5, 100)
    assert len(outside) == 0 and outside.point_to_voxel.tolist() == [-1]
    one = hard_voxelize(torch.tensor([[-1.9, 1.3, 0.9, 7.0]]), grid, 5, 100)
    assert one.coords.tolist() == [[3, 9, 0]] and one.num_points.tolist() == [1]
    torch.testing.assert_close(one.features[0, 0], torch.tensor([-1.9, 1.3, 0.9, 7.0]))
    assert float(one.features[0, 1:].abs().sum()) == 0.0
    none = hard_voxelize(torch.tensor([[-1.9, 1.3, 0.9, 7.0]]), grid, 5, 0)
    assert len(none) == 0
    assert dynamic_voxelize(torch.zeros((0, 3)), grid).shape == (0, 3)
    vc, inv = unique_voxels(torch.zeros((0, 3), dtype=torch.int32))
    assert vc.shape == (0, 3) and inv.shape == (0,)


def test_raster_order_when_not_deterministic() -> None:
    grid = GRIDS["voxels"]
    pts = torch.from_numpy(random_cloud(np.random.default_rng(3), 800, grid))
    det = hard_voxelize(pts, grid, 4, 10_000)
    ras = hard_voxelize(pts, grid, 4, 10_000, deterministic=False)

    def key(c: torch.Tensor) -> list[tuple[int, ...]]:
        return [tuple(r) for r in c.tolist()]

    assert sorted(key(det.coords)) == key(ras.coords)  # same voxels, raster order
    order = {k: i for i, k in enumerate(key(det.coords))}
    perm = torch.tensor([order[k] for k in key(ras.coords)])
    torch.testing.assert_close(ras.features, det.features[perm])
    limited = hard_voxelize(pts, grid, 4, 30, deterministic=False)
    assert key(limited.coords) == key(ras.coords)[:30]


def test_extra_columns_and_float16() -> None:
    grid = GRIDS["pillars"]
    pts = random_cloud(np.random.default_rng(5), 500, grid, extra_cols=3)
    assert_matches_ref(pts, grid, 6, 50)
    half = torch.from_numpy(pts).half()
    out = hard_voxelize(half, grid, 6, 50)
    ref = hard_voxelize(half.float(), grid, 6, 50)  # cells computed in float32
    assert out.features.dtype == torch.float16
    torch.testing.assert_close(out.coords, ref.coords)
    torch.testing.assert_close(out.features.float(), ref.features)
    with pytest.raises(TypeError, match="floating"):
        hard_voxelize(torch.zeros((3, 4), dtype=torch.int32), grid, 5, 5)
    with pytest.raises(ValueError, match="x, y, z"):
        hard_voxelize(torch.zeros((3, 2)), grid, 5, 5)


# ----------------------------------------------------------------------------- batched


def test_batch_equals_per_sample() -> None:
    grid = GRIDS["voxels"]
    rng = np.random.default_rng(7)
    clouds = [torch.from_numpy(random_cloud(rng, n, grid)) for n in (600, 0, 1, 900)]
    out = hard_voxelize_batch(clouds, grid, 3, 35)
    parts, offset = [], 0
    for b, cloud in enumerate(clouds):
        single = hard_voxelize(cloud, grid, 3, 35)
        coords = torch.cat([torch.full((len(single), 1), b, dtype=torch.int32), single.coords], 1)
        parts.append((single, coords))
        p2v = out.point_to_voxel[offset: offset + len(cloud)]
        expected = torch.where(single.point_to_voxel >= 0,
                               single.point_to_voxel + sum(len(s) for s, _ in parts[:-1]), -1)
        torch.testing.assert_close(p2v, expected)
        offset += len(cloud)
    torch.testing.assert_close(out.coords, torch.cat([c for _, c in parts]))
    torch.testing.assert_close(out.features, torch.cat([s.features for s, _ in parts]))
    torch.testing.assert_close(out.num_points, torch.cat([s.num_points for s, _ in parts]))

    # A concatenated tensor with an interleaved batch index gives the same voxels: a random
    # sequence of sample labels, filled with each sample's points in their own order.
    cat = torch.cat(clouds)
    bidx = torch.repeat_interleave(torch.arange(4), torch.tensor([len(c) for c in clouds]))
    labels = bidx[torch.from_numpy(rng.permutation(len(cat)))]
    order = torch.empty(len(cat), dtype=torch.long)
    for b in range(4):
        order[labels == b] = torch.nonzero(bidx == b).squeeze(1)
    inter_pts, inter_b = cat[order], bidx[order]
    # per-sample order must be preserved by the interleaving
    for b in range(4):
        torch.testing.assert_close(inter_pts[inter_b == b], clouds[b])
    out2 = hard_voxelize_batch(inter_pts, grid, 3, 35, batch_index=inter_b)
    torch.testing.assert_close(out2.coords, out.coords)
    torch.testing.assert_close(out2.features, out.features)
    torch.testing.assert_close(out2.point_to_voxel, out.point_to_voxel[order])

    dyn = dynamic_voxelize_batch(clouds, grid)
    single = torch.cat([dynamic_voxelize(c, grid) for c in clouds])
    torch.testing.assert_close(dyn[:, 1:], single)
    ok = single[:, 0] >= 0
    torch.testing.assert_close(dyn[ok, 0].long(), bidx[ok])
    assert bool((dyn[~ok] == -1).all())
    torch.testing.assert_close(dynamic_voxelize_batch(inter_pts, grid, batch_index=inter_b), dyn[order])


# ----------------------------------------------------------------------------- dynamic


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dynamic_matches_reference(dtype) -> None:
    grid = GRIDS["odd"]
    rng = np.random.default_rng(11)
    pts = random_cloud(rng, 2000, grid, dtype)
    coords = dynamic_voxelize(torch.from_numpy(pts), grid)
    ref = [_ref_cell(p, grid) for p in pts]
    assert coords.dtype == torch.int32
    assert coords.tolist() == [list(c) if c is not None else [-1, -1, -1] for c in ref]

    vc, inv = unique_voxels(coords)
    cells = sorted({c for c in ref if c is not None})
    assert vc.tolist() == [list(c) for c in cells]
    index = {c: i for i, c in enumerate(cells)}
    assert inv.tolist() == [index[c] if c is not None else -1 for c in ref]

    # scatter helpers against per-voxel Python lists
    feats = torch.from_numpy(pts).double()
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(inv.tolist()):
        if v >= 0:
            groups.setdefault(v, []).append(i)
    mean = scatter_mean(feats, inv)
    mx = scatter_max(feats, inv)
    sm = scatter_sum(feats, inv, num_voxels=len(cells) + 2)
    assert mean.shape == (len(cells), 4) and sm.shape == (len(cells) + 2, 4)
    for v, idx in groups.items():
        rows = pts[idx].astype(np.float64)
        np.testing.assert_allclose(mean[v].numpy(), rows.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(mx[v].numpy(), rows.max(0))
        np.testing.assert_allclose(sm[v].numpy(), rows.sum(0), rtol=1e-12, atol=1e-12)
    assert float(sm[len(cells):].abs().sum()) == 0.0


def test_unique_voxels_batched_coords_and_gradients() -> None:
    coords = torch.tensor([[1, 0, 2, 3], [0, 5, 0, 0], [-1, -1, -1, -1], [1, 0, 2, 3], [0, 0, 9, 1]],
                          dtype=torch.int32)
    vc, inv = unique_voxels(coords)
    assert vc.dtype == torch.int32
    assert vc.tolist() == [[0, 0, 9, 1], [0, 5, 0, 0], [1, 0, 2, 3]]
    assert inv.tolist() == [2, 1, -1, 2, 0]
    x = torch.arange(10.0).view(5, 2).requires_grad_()
    y = scatter_mean(x, inv) * torch.tensor([1.0, 2.0]) + scatter_max(x, inv)
    y.sum().backward()
    # mean: (1, 2) / count; max: 1 for the arg max (voxel 2 = points 0 and 3, max at 3)
    expected = torch.tensor([[0.5, 1.0], [2.0, 3.0], [0.0, 0.0], [1.5, 2.0], [2.0, 3.0]])
    torch.testing.assert_close(x.grad, expected)


# ----------------------------------------------------------------------------- CUDA


@CUDA
def test_cuda_matches_cpu() -> None:
    grid = GRIDS["voxels"]
    rng = np.random.default_rng(13)
    for dtype in (np.float32, np.float64):
        pts = torch.from_numpy(random_cloud(rng, 5000, grid, dtype))
        for det in (True, False):
            cpu = hard_voxelize(pts, grid, 4, 50, det)
            gpu = hard_voxelize(pts.cuda(), grid, 4, 50, det)
            assert gpu.coords.device.type == "cuda"
            for a, b in [(cpu.coords, gpu.coords), (cpu.features, gpu.features),
                         (cpu.num_points, gpu.num_points), (cpu.point_to_voxel, gpu.point_to_voxel)]:
                torch.testing.assert_close(a, b.cpu())
        torch.testing.assert_close(dynamic_voxelize(pts, grid), dynamic_voxelize(pts.cuda(), grid).cpu())
        c = dynamic_voxelize(pts, grid)
        vc, inv = unique_voxels(c)
        vcg, invg = unique_voxels(c.cuda())
        torch.testing.assert_close(vc, vcg.cpu())
        torch.testing.assert_close(inv, invg.cpu())
        torch.testing.assert_close(scatter_mean(pts, inv), scatter_mean(pts.cuda(), invg).cpu())
