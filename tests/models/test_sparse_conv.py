"""Pure-PyTorch sparse convolution: equal to a dense ``conv3d`` (forward and gradients),
the sparse voxel encoder's shapes and map_to_bev, and equal to spconv when installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill3d.data.voxelize import VoxelGrid
from distill3d.models.encoders.sparse_voxel import (
    HeightCompression,
    SparseConv3d,
    SparseVoxelEncoder,
    SparseVoxels,
    SubMConv3d,
    spconv_available,
)


def random_sparse(batch: int, shape: tuple[int, int, int], channels: int, density: float, seed: int,
                  dtype: torch.dtype = torch.float64) -> tuple[SparseVoxels, torch.Tensor, torch.Tensor]:
    """A random sparse tensor, its dense ``(B, C, D, H, W)`` form and its active mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, *shape, generator=g) < density
    idx = mask.nonzero()
    idx = idx[torch.randperm(idx.shape[0], generator=g)]  # any row order
    feats = torch.randn(idx.shape[0], channels, generator=g, dtype=dtype)
    dense = torch.zeros(batch, channels, *shape, dtype=dtype)
    dense[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]] = feats
    return SparseVoxels(feats, idx, shape, batch), dense, mask


def dense_reference(conv: SparseConv3d, dense: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense conv3d with the same weights, masked to the sites a sparse conv keeps."""
    weight = conv.weight.permute(0, 4, 1, 2, 3)  # (C_out, C_in, kz, ky, kx)
    out = F.conv3d(dense, weight, conv.bias, stride=conv.stride, padding=conv.padding)
    if conv.subm:
        active = mask
    else:
        ones = torch.ones(1, 1, *conv.kernel_size, dtype=dense.dtype)
        active = F.conv3d(mask[:, None].to(dense.dtype), ones, stride=conv.stride, padding=conv.padding)[:, 0] > 0
    return out * active[:, None], active


CONVS = [
    {"subm": True, "kernel_size": 3, "padding": 1},
    {"subm": True, "kernel_size": (3, 1, 3), "padding": (1, 0, 1)},
    {"subm": False, "kernel_size": 3, "stride": 2, "padding": 1},
    {"subm": False, "kernel_size": 3, "stride": 2, "padding": (0, 1, 1)},
    {"subm": False, "kernel_size": (3, 1, 1), "stride": (2, 1, 1), "padding": 0},
    {"subm": False, "kernel_size": 2, "stride": 2, "padding": 0},
    {"subm": False, "kernel_size": 3, "stride": 1, "padding": 1},
]


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("bias", [False, True])
def test_sparse_conv_equals_dense_conv(spec: dict, bias: bool) -> None:
    torch.manual_seed(0)
    x, dense, mask = random_sparse(2, (7, 9, 8), 3, 0.25, seed=1)
    conv = SparseConv3d(3, 5, bias=bias, **spec).double()
    if bias:
        torch.nn.init.uniform_(conv.bias, -1, 1)
    y = conv(x)
    ref, active = dense_reference(conv, dense, mask)
    assert y.spatial_shape == tuple(ref.shape[2:])
    assert y.indices.shape[0] == int(active.sum())
    assert torch.equal(y.dense()[:, :1] != 0, active[:, None] & (y.dense()[:, :1] != 0))  # no site outside
    torch.testing.assert_close(y.dense(), ref, rtol=1e-5, atol=1e-5)
    if spec["subm"]:
        assert torch.equal(y.indices, x.indices)


@pytest.mark.parametrize("spec", [CONVS[0], CONVS[2]])
def test_sparse_conv_gradients_equal_dense(spec: dict) -> None:
    x, dense, _ = random_sparse(2, (6, 7, 7), 4, 0.3, seed=3)
    conv = SparseConv3d(4, 3, **spec).double()
    feats = x.features.clone().requires_grad_(True)
    y = conv(x.replace_features(feats))
    g = torch.Generator().manual_seed(5)
    upstream = torch.randn(y.features.shape, generator=g, dtype=torch.float64)
    (y.features * upstream).sum().backward()

    dense_in = dense.clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    ref = F.conv3d(dense_in, weight.permute(0, 4, 1, 2, 3), stride=conv.stride, padding=conv.padding)
    up_dense = torch.zeros_like(ref)
    i = y.indices
    up_dense[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]] = upstream
    (ref * up_dense).sum().backward()
    xi = x.indices
    torch.testing.assert_close(feats.grad, dense_in.grad[xi[:, 0], :, xi[:, 1], xi[:, 2], xi[:, 3]],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-5, atol=1e-5)


def test_submanifold_map_is_cached_by_indice_key() -> None:
    x, _, _ = random_sparse(1, (5, 5, 5), 2, 0.3, seed=4, dtype=torch.float32)
    a = SubMConv3d(2, 2, 3, indice_key="k")
    b = SubMConv3d(2, 2, 3, indice_key="k")
    y = a(x)
    assert "k" in x.maps and y.maps is x.maps
    cached = x.maps["k"]
    b(y)
    assert x.maps["k"] is cached


def test_empty_input() -> None:
    x = SparseVoxels(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.long), (5, 6, 6), 2)
    for conv in (SubMConv3d(3, 4), SparseConv3d(3, 4, 3, stride=2, padding=1)):
        y = conv(x)
        assert y.features.shape == (0, 4)
        assert y.dense().shape[:2] == (2, 4)


def test_encoder_shapes_and_height_compression() -> None:
    grid = VoxelGrid((0.5, 0.5, 0.25), (0.0, 0.0, -3.0, 16.0, 16.0, 3.0))  # 32 x 32 x 24
    enc = SparseVoxelEncoder(4, grid, channels=(4, 4, 8, 8, 16, 8), blocks=(1, 1, 1, 1), residual=True)
    assert enc.input_shape == (25, 32, 32)  # one more z cell, as OpenPCDet
    x, _, _ = random_sparse(2, enc.input_shape, 4, 0.05, seed=6, dtype=torch.float32)
    outs = enc(x.features, x.indices, 2)
    shapes = {k: outs[k].spatial_shape for k in ("conv1", "conv2", "conv3", "conv4")}
    assert shapes == {"conv1": (25, 32, 32), "conv2": (13, 16, 16), "conv3": (7, 8, 8), "conv4": (3, 4, 4)}
    assert list(shapes.values()) == enc.stage_shapes
    assert [outs[k].features.shape[1] for k in shapes] == [4, 8, 8, 16]
    out = outs["out"]
    assert out.spatial_shape == enc.out_shape
    bev = enc.map_to_bev(out)
    assert bev.shape == (2, enc.bev_channels, 4, 4)
    dense = out.dense()  # (B, C, D, H, W) -> channel c * D + d
    b, c, d, h, w = dense.shape
    torch.testing.assert_close(bev, dense.reshape(b, c * d, h, w))
    torch.testing.assert_close(HeightCompression()(out)[:, 1 * d + 0], dense[:, 1, 0])
    bev.sum().backward()
    assert enc.conv_input.conv.weight.grad is not None


needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv is not installed (optional)")


@needs_spconv
@pytest.mark.parametrize("spec", [CONVS[0], CONVS[2], CONVS[3], CONVS[4]])
def test_spconv_path_equals_pure_path(spec: dict) -> None:
    """Same weights, same outputs (forward only: spconv's CPU backward is not used). One
    thread: spconv's CPU regular conv is unreliable with several threads (see the module
    docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        x, _, _ = random_sparse(2, (7, 9, 8), 3, 0.25, seed=7, dtype=torch.float32)
        pure = SparseConv3d(3, 5, **spec)
        sp = SparseConv3d(3, 5, **spec, use_spconv=True)
        sp.load_state_dict(pure.state_dict())
        assert set(sp.state_dict()) == {"weight"}
        with torch.no_grad():
            a = pure(x)
            b = sp(SparseVoxels(x.features, x.indices, x.spatial_shape, x.batch_size))
        assert a.spatial_shape == b.spatial_shape
        torch.testing.assert_close(b.dense(), a.dense(), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


@needs_spconv
def test_spconv_encoder_equals_pure_encoder() -> None:
    """The whole sparse encoder (eval mode) with spconv layers and the same state dict."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        grid = VoxelGrid((0.5, 0.5, 0.25), (0.0, 0.0, -3.0, 16.0, 16.0, 3.0))
        pure = SparseVoxelEncoder(4, grid, channels=(4, 4, 8, 8, 16, 8), blocks=(1, 1, 1, 1)).eval()
        sp = SparseVoxelEncoder(4, grid, channels=(4, 4, 8, 8, 16, 8), blocks=(1, 1, 1, 1), use_spconv=True).eval()
        assert set(sp.state_dict()) == set(pure.state_dict())
        for m in pure.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
        sp.load_state_dict(pure.state_dict())
        x, _, _ = random_sparse(2, pure.input_shape, 4, 0.05, seed=8, dtype=torch.float32)
        with torch.no_grad():
            a = pure(x.features, x.indices, 2)
            b = sp(x.features, x.indices, 2)
            for name in ("conv1", "conv2", "conv3", "conv4", "out"):
                torch.testing.assert_close(b[name].dense(), a[name].dense(), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(sp.map_to_bev(b["out"]), pure.map_to_bev(a["out"]), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)
