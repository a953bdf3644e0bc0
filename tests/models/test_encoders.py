"""Pillar encoder: dynamic (real points only) PFN equals a padded-pillar reference with the
same weights; hard voxelisation's limits are emulated exactly; the BEV scatter."""

from __future__ import annotations

import copy

import pytest
import torch

from distill3d.data.voxelize import VoxelGrid, hard_voxelize_batch
from distill3d.models.encoders import PillarFeatureNet, PointPillarsScatter, assign_voxels

RANGE = (-8.0, -6.4, -3.0, 8.0, 6.4, 1.0)


def random_cloud(n: int, seed: int, batch: int = 2, channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A clustered random cloud (many points per pillar, some out of range), sample-major."""
    g = torch.Generator().manual_seed(seed)
    pts, idx = [], []
    for b in range(batch):
        centres = (torch.rand(12, 3, generator=g) - 0.5) * torch.tensor([18.0, 15.0, 5.0])
        which = torch.randint(0, 12, (n,), generator=g)
        xyz = centres[which] + torch.randn(n, 3, generator=g) * torch.tensor([0.8, 0.8, 0.5])
        extra = torch.rand(n, channels - 3, generator=g)
        pts.append(torch.cat([xyz, extra], dim=1))
        idx.append(torch.full((n,), b, dtype=torch.long))
    return torch.cat(pts), torch.cat(idx)


def padded_reference(net: PillarFeatureNet, points: torch.Tensor, batch_index: torch.Tensor,
                     max_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook padded PointPillars PFN (OpenPCDet's PillarVFE) on hard voxels, with its
    padding masked out of BatchNorm statistics and of the max. Returns features and
    coordinates sorted by ``(b, y, x)``."""
    grid = net.grid
    vox = hard_voxelize_batch(points, grid, max_points, 10**9, batch_index=batch_index)
    feats, coords, num = vox.features, vox.coords.long(), vox.num_points.long()
    n = feats.shape[1]
    mask = torch.arange(n)[None, :] < num[:, None]  # (V, N)
    xyz = feats[..., :3]
    mean = (xyz * mask[..., None]).sum(1) / num[:, None]
    f_cluster = xyz - mean[:, None]
    vx, vy, vz = grid.voxel_size
    x0, y0, z0 = grid.point_cloud_range[:3]
    c = coords.to(feats.dtype)
    centre = torch.stack([c[:, 3] * vx + x0 + vx / 2, c[:, 2] * vy + y0 + vy / 2,
                          c[:, 1] * vz + z0 + vz / 2], dim=1)
    k = 3 if net.center_z else 2
    parts = [feats, f_cluster, xyz[..., :k] - centre[:, None, :k]]
    if net.with_distance:
        parts.append(xyz.norm(dim=-1, keepdim=True))
    x = torch.cat(parts, dim=-1) * mask[..., None]
    for layer in net.layers:
        y = layer.linear(x)
        real = torch.relu(layer.norm(y[mask]))  # BatchNorm over real points only
        y = torch.zeros_like(y)
        y[mask] = real
        y_max = y.masked_fill(~mask[..., None], float("-inf")).max(dim=1).values
        x = y_max if layer.last_layer else torch.cat([y, y_max[:, None].expand_as(y)], dim=-1)
    key = (coords[:, 0] * grid.grid_size[1] + coords[:, 2]) * grid.grid_size[0] + coords[:, 3]
    order = torch.argsort(key)
    return x[order], coords[order]


@pytest.mark.parametrize("channels, with_distance, center_z, train", [
    ((64,), False, True, False),
    ((32, 16), True, False, True),
    ((16,), False, True, True),
])
def test_dynamic_pfn_equals_padded_reference(channels: tuple[int, ...], with_distance: bool, center_z: bool,
                                             train: bool) -> None:
    torch.manual_seed(0)
    grid = VoxelGrid((0.8, 0.8, 4.0), RANGE)
    points, bidx = random_cloud(3000, seed=1)
    net = PillarFeatureNet(4, grid, channels, with_distance=with_distance, center_z=center_z, max_points=12)
    net = net.double()
    for layer in net.layers:  # non-trivial BatchNorm state
        layer.norm.running_mean.uniform_(-0.5, 0.5)
        layer.norm.running_var.uniform_(0.5, 2.0)
        torch.nn.init.uniform_(layer.norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(layer.norm.bias, -0.2, 0.2)
    net.train(train)
    ref_net = copy.deepcopy(net)
    points = points.double()
    out = net(points, bidx, 2)
    ref, ref_coords = padded_reference(ref_net, points, bidx, max_points=12)
    assert torch.equal(out.coords, ref_coords)
    assert out.features.shape == (ref_coords.shape[0], channels[-1])
    torch.testing.assert_close(out.features, ref, rtol=1e-9, atol=1e-9)
    if train:  # the same batch statistics were used
        for a, b in zip(net.layers, ref_net.layers):
            torch.testing.assert_close(a.norm.running_mean, b.norm.running_mean)
            torch.testing.assert_close(a.norm.running_var, b.norm.running_var)


@pytest.mark.parametrize("max_points, max_voxels", [(3, 10**9), (5, 17), (None, 40), (1, 1)])
def test_assign_voxels_keeps_what_hard_voxelisation_keeps(max_points: int | None, max_voxels: int) -> None:
    grid = VoxelGrid((0.8, 0.8, 4.0), RANGE)
    points, bidx = random_cloud(800, seed=2, batch=3)
    a = assign_voxels(points, bidx, 3, grid, max_points, None if max_voxels == 10**9 else max_voxels)
    hard = hard_voxelize_batch(points, grid, max_points or 10**4, max_voxels, batch_index=bidx)
    # the same voxels
    key = lambda c: (c[:, 0].long() * 10**6 + c[:, 2].long() * 1000 + c[:, 3].long())
    order = torch.argsort(key(hard.coords))
    assert torch.equal(a.coords, hard.coords[order].long())
    assert torch.equal(a.num_points, hard.num_points[order].long())
    # the same points in each voxel
    kept_hard = hard.point_to_voxel >= 0
    assert torch.equal(a.inverse >= 0, kept_hard)
    remap = torch.empty_like(order)
    remap[order] = torch.arange(order.numel())
    assert torch.equal(a.inverse[kept_hard], remap[hard.point_to_voxel[kept_hard]])


def test_pfn_gradients_flow_and_empty_samples() -> None:
    grid = VoxelGrid((0.8, 0.8, 4.0), RANGE)
    points, bidx = random_cloud(300, seed=3, batch=1)
    net = PillarFeatureNet(4, grid, (8,))
    scatter = PointPillarsScatter(grid.bev_shape)
    out = net(points, bidx, 3)  # samples 1 and 2 have no point
    bev = scatter(out.features, out.coords, 3)
    assert bev.shape == (3, 8, grid.bev_shape[0], grid.bev_shape[1])
    assert bev[1:].abs().sum() == 0
    bev.square().sum().backward()
    assert net.layers[0].linear.weight.grad is not None
    assert torch.isfinite(net.layers[0].linear.weight.grad).all()


def test_scatter_places_pillars_at_their_cells() -> None:
    scatter = PointPillarsScatter((3, 4))
    feats = torch.arange(6, dtype=torch.float32).view(3, 2)
    coords = torch.tensor([[0, 0, 2, 3], [1, 0, 0, 1], [1, 0, 1, 0]])
    bev = scatter(feats, coords, 2)
    expected = torch.zeros(2, 2, 3, 4)
    expected[0, :, 2, 3] = feats[0]
    expected[1, :, 0, 1] = feats[1]
    expected[1, :, 1, 0] = feats[2]
    assert torch.equal(bev, expected)


def test_pillar_grid_must_be_one_cell_high() -> None:
    with pytest.raises(ValueError, match="one cell in z"):
        PillarFeatureNet(4, VoxelGrid((0.8, 0.8, 1.0), RANGE), (8,))
