"""Sparse 3D voxel encoder for voxel detectors (CenterPoint-Voxel), in pure PyTorch.

The encoder is OpenPCDet's ``VoxelResBackBone8x`` (or, with ``residual=False``,
``VoxelBackBone8x``, SECOND's middle encoder): submanifold 3x3x3 convolutions and strided
regular sparse convolutions down to 1/8 of the voxel grid in x and y, a compressed z, then
``map_to_bev`` (``HeightCompression``): the dense ``(B, C * D, ny / 8, nx / 8)`` BEV map.

Sparse convolution without compiled ops
---------------------------------------
A :class:`SparseVoxels` holds the features ``(N, C)`` of the active sites and their integer
coordinates ``(N, 4)`` ``(b, z, y, x)``. A convolution builds a *kernel map*: for every
kernel offset, the pairs ``(input row, output row)`` that it connects. Coordinates are
linearised to int64 keys ``((b * D + z) * H + y) * W + x``; the input keys are sorted once
and a neighbour is found with :func:`torch.searchsorted` (a coordinate hash without a hash
table). The convolution is then "gather, GEMM, scatter": the input rows of all pairs are
gathered once, each offset's block is multiplied by that offset's ``(C_in, C_out)`` weight,
and the products are summed into the output rows with one ``index_add``.

* **Submanifold** convolution (``subm=True``): the output sites are the input sites; only
  neighbours that are active contribute. Equal to a dense ``conv3d`` of the densified input
  read at the active sites.
* **Regular** (strided) sparse convolution: an output site is active when any input site
  falls in its receptive field; output coordinates are computed from the input
  coordinates: ``o = (i + padding - k) / stride`` for every offset ``k`` where that is a
  whole number inside the output grid. Equal to a dense ``conv3d`` at those sites (zero
  elsewhere).

The convention is cross-correlation (``torch.nn.functional.conv3d``, spconv):
``out[o] = sum_k W[k] in[o * stride - padding + k]``. Weights are stored as
``(C_out, kz, ky, kx, C_in)``, spconv 2.x's layout, so that a state dict loads into either
path. Kernel maps are cached per ``indice_key`` on the tensor (as spconv does): layers with
the same key at the same resolution reuse them.

spconv
------
With ``use_spconv=True`` and ``spconv`` importable, the convolutions run in
``spconv.pytorch`` with the same weight tensors (the same outputs up to float rounding;
tested). It is off by default: the team measured that spconv 2.3's CPU backward is broken
and that its regular (strided) convolution returns wrong outputs on CPU with 2 threads, so
use it only on CUDA. The pure path needs nothing compiled and runs on any device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from distill3d.data.voxelize import VoxelGrid, scatter_mean
from distill3d.models.encoders.pillar import assign_voxels

__all__ = [
    "HeightCompression",
    "KernelMap",
    "MeanVFE",
    "SparseBasicBlock",
    "SparseConv3d",
    "SparseVoxelEncoder",
    "SparseVoxels",
    "SubMConv3d",
    "spconv_available",
]

Triple = tuple[int, int, int]


def _triple(value: int | tuple[int, ...] | list[int]) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    if len(value) != 3:
        raise ValueError(f"expected an int or 3 ints (z, y, x), got {value}")
    return (int(value[0]), int(value[1]), int(value[2]))


def spconv_available() -> bool:
    """Whether ``spconv.pytorch`` imports."""
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001  # pragma: no cover - a broken install may raise anything
        return False
    return True


# ----------------------------------------------------------------------------- tensors


@dataclass
class KernelMap:
    """The pairs a sparse convolution connects.

    Attributes:
        in_rows: ``(T,)`` int64 input rows, grouped by kernel offset.
        out_rows: ``(T,)`` int64 output rows, aligned with ``in_rows``.
        splits: ``K + 1`` Python ints: offset ``k`` owns pairs ``splits[k]:splits[k + 1]``.
        out_indices: ``(M, 4)`` int64 output coordinates ``(b, z, y, x)``.
        out_shape: ``(D, H, W)`` of the output grid.
        identity_offset: for a submanifold map, the offset that maps every site to itself
            (its pairs are not stored; the convolution applies it as a plain matmul).
    """

    in_rows: Tensor
    out_rows: Tensor
    splits: list[int]
    out_indices: Tensor
    out_shape: Triple
    identity_offset: int | None = None


@dataclass
class SparseVoxels:
    """Features on active sites of a 3D grid (a sparse tensor).

    Attributes:
        features: ``(N, C)``.
        indices: ``(N, 4)`` int64 ``(b, z, y, x)``, distinct rows.
        spatial_shape: ``(D, H, W)`` = ``(nz, ny, nx)`` of the grid.
        batch_size: ``B``.
        maps: kernel maps cached by ``indice_key``, shared by the tensors derived from this
            one (the same dict object).
        backend: the ``spconv.pytorch.SparseConvTensor`` of these sites when the spconv
            path produced them (kept to reuse its index pairs), else ``None``.
    """

    features: Tensor
    indices: Tensor
    spatial_shape: Triple
    batch_size: int
    maps: dict[str, Any] = field(default_factory=dict)
    backend: Any = None

    def replace_features(self, features: Tensor) -> SparseVoxels:
        """The same sites with new ``(N, C')`` features."""
        if features.shape[0] != self.features.shape[0]:
            raise ValueError(f"replace_features: expected {self.features.shape[0]} rows, got {features.shape[0]}")
        return replace(self, features=features)

    def dense(self) -> Tensor:
        """``(B, C, D, H, W)`` with zeros at inactive sites."""
        d, h, w = self.spatial_shape
        c = self.features.shape[1]
        idx = self.indices.long()
        flat = ((idx[:, 0] * d + idx[:, 1]) * h + idx[:, 2]) * w + idx[:, 3]
        canvas = self.features.new_zeros((self.batch_size * d * h * w, c)).index_put((flat,), self.features)
        return canvas.view(self.batch_size, d, h, w, c).permute(0, 4, 1, 2, 3).contiguous()


def _linear_keys(indices: Tensor, shape: Triple) -> Tensor:
    d, h, w = shape
    idx = indices.long()
    return ((idx[..., 0] * d + idx[..., 1]) * h + idx[..., 2]) * w + idx[..., 3]


def _kernel_offsets(kernel: Triple, device: torch.device) -> Tensor:
    """``(K, 3)`` int64 ``(kz, ky, kx)`` of every kernel position, raster order (the order
    of the weight's kernel dimensions)."""
    grids = torch.meshgrid(*(torch.arange(k, device=device) for k in kernel), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _in_bounds(coords: Tensor, shape: Triple) -> Tensor:
    """``coords`` ``(..., 3)`` ``(z, y, x)``: inside ``[0, shape)`` on every axis."""
    bound = torch.tensor(shape, device=coords.device)
    return ((coords >= 0) & (coords < bound)).all(dim=-1)


def _pairs_to_map(valid: Tensor, out_rows: Tensor, in_rows: Tensor, num_offsets: int, out_indices: Tensor,
                  out_shape: Triple, identity_offset: int | None = None) -> KernelMap:
    """Build a :class:`KernelMap` from ``(K, N)`` validity and row tables."""
    k_idx, n_idx = torch.nonzero(valid, as_tuple=True)  # k-major: grouped by offset
    counts = torch.bincount(k_idx, minlength=num_offsets)
    splits = [0] + torch.cumsum(counts, 0).tolist()
    return KernelMap(in_rows[k_idx, n_idx], out_rows[k_idx, n_idx], splits, out_indices, out_shape,
                     identity_offset)


def submanifold_map(indices: Tensor, shape: Triple, kernel: Triple, padding: Triple) -> KernelMap:
    """Kernel map of a submanifold convolution (stride 1, output sites = input sites).

    Args:
        indices: ``(N, 4)`` ``(b, z, y, x)`` active sites.
        shape: ``(D, H, W)``.
        kernel, padding: per axis ``(z, y, x)``.
    """
    dev = indices.device
    idx = indices.long()
    n = idx.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        num_k = kernel[0] * kernel[1] * kernel[2]
        return KernelMap(empty, empty, [0] * (num_k + 1), idx, shape, None)
    keys = _linear_keys(idx, shape)
    sorted_keys, order = torch.sort(keys)
    offsets = _kernel_offsets(kernel, dev) - torch.tensor(padding, device=dev)  # (K, 3)
    num_k = offsets.shape[0]
    identity = None
    zero = (offsets == 0).all(dim=1).nonzero()
    if zero.numel():
        identity = int(zero[0, 0])
    query = idx[None, :, 1:] + offsets[:, None, :]  # (K, N, 3)
    inside = _in_bounds(query, shape)
    qkeys = _linear_keys(torch.cat([idx[None, :, :1].expand(num_k, n, 1), query], dim=2), shape)
    pos = torch.searchsorted(sorted_keys, qkeys).clamp_(max=n - 1)
    hit = inside & (sorted_keys[pos] == qkeys)
    if identity is not None:
        hit[identity] = False
    in_rows = order[pos]
    out_rows = torch.arange(n, device=dev).expand(num_k, n)
    return _pairs_to_map(hit, out_rows, in_rows, num_k, idx, shape, identity)


def regular_map(indices: Tensor, shape: Triple, kernel: Triple, stride: Triple, padding: Triple) -> KernelMap:
    """Kernel map of a regular sparse convolution; output sites are computed from the input
    sites (every output site whose receptive field holds an active input site).

    Args:
        indices: ``(N, 4)`` ``(b, z, y, x)`` active input sites.
        shape: input ``(D, H, W)``.
        kernel, stride, padding: per axis ``(z, y, x)``.
    """
    dev = indices.device
    idx = indices.long()
    n = idx.shape[0]
    out_shape = tuple((shape[a] + 2 * padding[a] - kernel[a]) // stride[a] + 1 for a in range(3))
    if min(out_shape) < 1:
        raise ValueError(f"sparse conv: input grid {shape} is too small for kernel {kernel}, "
                         f"stride {stride}, padding {padding}")
    out_shape = (int(out_shape[0]), int(out_shape[1]), int(out_shape[2]))
    offsets = _kernel_offsets(kernel, dev)  # (K, 3)
    num_k = offsets.shape[0]
    s = torch.tensor(stride, device=dev)
    num = idx[None, :, 1:] + torch.tensor(padding, device=dev) - offsets[:, None, :]  # (K, N, 3)
    out_c = torch.div(num, s, rounding_mode="floor")
    valid = ((num - out_c * s) == 0).all(dim=2) & _in_bounds(out_c, out_shape)
    cand = torch.cat([idx[None, :, :1].expand(num_k, n, 1), out_c], dim=2)  # (K, N, 4)
    keys = _linear_keys(cand, out_shape)
    ukeys, inverse = torch.unique(keys[valid], sorted=True, return_inverse=True)
    out_rows = torch.full((num_k, n), -1, dtype=torch.long, device=dev)
    out_rows[valid] = inverse
    d, h, w = out_shape
    out_indices = torch.stack([ukeys // (d * h * w), (ukeys // (h * w)) % d, (ukeys // w) % h, ukeys % w], dim=1)
    in_rows = torch.arange(n, device=dev).expand(num_k, n)
    return _pairs_to_map(valid, out_rows, in_rows, num_k, out_indices, out_shape)


class _KernelMapConv(torch.autograd.Function):
    """Gather-GEMM-scatter sparse convolution with a hand-written backward.

    Forward: ``out[o] = sum_k W_k x[i]`` over the pairs ``(i, o)`` of offset ``k``.
    Backward (the transposed convolution on the same pairs, and the weight gradient):
    ``dx[i] += dout[o] W_k`` and ``dW_k = sum dout[o]^T x[i]``. Gathers are redone per
    offset in backward instead of saving the ``(pairs, C_in)`` gathered input, and every
    accumulation is an in-place ``index_add_``: no full-size zero tensor per offset and no
    concatenation (what autograd would build for the same ops).
    """

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:  # type: ignore[override]
        c_out, c_in = weight.shape[0], weight.shape[-1]
        # computed in the features' dtype (float32 under AMP too: no mixed-dtype index_add)
        with torch.autocast(device_type=features.device.type, enabled=False):
            w = weight.to(features.dtype).reshape(c_out, -1, c_in)  # (C_out, K, C_in)
            if kmap.identity_offset is not None:
                out = features @ w[:, kmap.identity_offset].t()
            else:
                out = features.new_zeros((kmap.out_indices.shape[0], c_out))
            for k in range(w.shape[1]):
                lo, hi = kmap.splits[k], kmap.splits[k + 1]
                if hi > lo:
                    block = features.index_select(0, kmap.in_rows[lo:hi])
                    out.index_add_(0, kmap.out_rows[lo:hi], block @ w[:, k].t())
        ctx.save_for_backward(features, weight)
        ctx.kmap = kmap
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        features, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        c_out, c_in = weight.shape[0], weight.shape[-1]
        w = weight.to(features.dtype).reshape(c_out, -1, c_in)
        grad_out = grad_out.to(features.dtype).contiguous()
        grad_x = grad_w = None
        if need_w:
            grad_w = torch.zeros_like(w)
        if need_x:
            if kmap.identity_offset is not None:
                grad_x = grad_out @ w[:, kmap.identity_offset]
            else:
                grad_x = features.new_zeros(features.shape)
        if need_w and kmap.identity_offset is not None:
            grad_w[:, kmap.identity_offset] = grad_out.t() @ features
        for k in range(w.shape[1]):
            lo, hi = kmap.splits[k], kmap.splits[k + 1]
            if hi == lo:
                continue
            g = grad_out.index_select(0, kmap.out_rows[lo:hi])  # (T_k, C_out)
            if need_x:
                grad_x.index_add_(0, kmap.in_rows[lo:hi], g @ w[:, k])
            if need_w:
                grad_w[:, k] = g.t() @ features.index_select(0, kmap.in_rows[lo:hi])
        if grad_w is not None:
            grad_w = grad_w.view(weight.shape).to(weight.dtype)
        return grad_x, grad_w, None


def apply_kernel_map(features: Tensor, kmap: KernelMap, weight: Tensor) -> Tensor:
    """Sparse convolution through a kernel map ("gather, GEMM, scatter"), differentiable
    in ``features`` and ``weight``.

    Args:
        features: ``(N, C_in)`` input features.
        kmap: the pairs.
        weight: ``(C_out, kz, ky, kx, C_in)``.

    Returns:
        ``(M, C_out)`` output features (``features``' dtype).
    """
    return _KernelMapConv.apply(features, weight, kmap)


# ----------------------------------------------------------------------------- layers


class SparseConv3d(nn.Module):
    """A sparse 3D convolution (regular, or submanifold with ``subm=True``).

    Args:
        in_channels, out_channels: feature widths.
        kernel_size, stride, padding: int or ``(z, y, x)``; a submanifold conv has stride 1.
        subm: submanifold (output sites = input sites).
        bias: add a bias.
        indice_key: cache key of the kernel map (layers with the same key at the same
            resolution share it).
        use_spconv: run in ``spconv.pytorch`` (falls back to the pure path, with a warning,
            when spconv does not import).

    ``weight``: ``(C_out, kz, ky, kx, C_in)`` (spconv 2.x's layout).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...] = 3,
                 stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] = 0, subm: bool = False,
                 bias: bool = False, indice_key: str | None = None, use_spconv: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        self.subm = subm
        if subm and self.stride != (1, 1, 1):
            raise ValueError(f"a submanifold convolution has stride 1, got {self.stride}")
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # fan_in = K * C_in for this layout
        self.use_spconv = bool(use_spconv)
        if self.use_spconv and not spconv_available():
            warnings.warn("use_spconv=True but spconv does not import: using the pure-PyTorch "
                          "sparse convolution", RuntimeWarning, stacklevel=2)
            self.use_spconv = False

    def extra_repr(self) -> str:
        kind = "subm" if self.subm else f"stride={self.stride}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {kind}, "
                f"padding={self.padding}, indice_key={self.indice_key}, spconv={self.use_spconv}")

    def _map(self, x: SparseVoxels) -> KernelMap:
        key = self.indice_key
        if self.subm:
            cached = x.maps.get(key) if key is not None else None
            if isinstance(cached, KernelMap) and cached.out_indices.shape[0] == x.indices.shape[0] \
                    and cached.out_shape == x.spatial_shape:
                return cached
            kmap = submanifold_map(x.indices, x.spatial_shape, self.kernel_size, self.padding)
            if key is not None:
                x.maps[key] = kmap
            return kmap
        return regular_map(x.indices, x.spatial_shape, self.kernel_size, self.stride, self.padding)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        """``x`` ``(N, C_in)`` features -> ``(M, C_out)`` on the output sites."""
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv3d: expected {self.in_channels} input channels, got {x.features.shape[1]}")
        if self.use_spconv:
            return self._forward_spconv(x)
        kmap = self._map(x)
        out = apply_kernel_map(x.features, kmap, self.weight)
        if self.bias is not None:
            out = out + self.bias
        return SparseVoxels(out, kmap.out_indices, kmap.out_shape, x.batch_size, x.maps)

    def _forward_spconv(self, x: SparseVoxels) -> SparseVoxels:
        import spconv.pytorch as spconv

        if x.backend is not None:
            st = x.backend.replace_feature(x.features)
        else:
            st = spconv.SparseConvTensor(x.features, x.indices.int(), list(x.spatial_shape), x.batch_size,
                                         indice_dict=x.maps)
        layer = self.__dict__.get("_spconv_layer")
        if layer is None:
            layer_cls = spconv.SubMConv3d if self.subm else spconv.SparseConv3d
            with torch.random.fork_rng(devices=[]):  # spconv's own init must not consume our RNG
                layer = layer_cls(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                                  padding=self.padding, bias=False, indice_key=self.indice_key)
            # a throwaway view sharing this module's parameter, kept out of the module tree
            # (so it is neither in the state dict nor moved by .to())
            self.__dict__["_spconv_layer"] = layer
        layer.weight = self.weight
        out = layer(st)
        features = out.features if self.bias is None else out.features + self.bias
        return SparseVoxels(features, out.indices.long(), tuple(int(s) for s in out.spatial_shape),  # type: ignore[arg-type]
                            x.batch_size, x.maps, backend=out)


def SubMConv3d(in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...] = 3,
               padding: int | tuple[int, ...] | None = None, bias: bool = False, indice_key: str | None = None,
               use_spconv: bool = False) -> SparseConv3d:
    """A submanifold :class:`SparseConv3d` (``padding`` defaults to ``kernel_size // 2``)."""
    k = _triple(kernel_size)
    pad = tuple(v // 2 for v in k) if padding is None else padding
    return SparseConv3d(in_channels, out_channels, k, 1, pad, subm=True, bias=bias, indice_key=indice_key,
                        use_spconv=use_spconv)


class _NormAct(nn.Module):
    """BatchNorm1d (eps 1e-3, momentum 0.01, as OpenPCDet) and ReLU on sparse features."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.act = act

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        f = self.norm(x.features)
        return x.replace_features(torch.relu(f) if self.act else f)


class _ConvBlock(nn.Module):
    """Sparse conv -> BatchNorm1d -> ReLU."""

    def __init__(self, conv: SparseConv3d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = _NormAct(conv.out_channels)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        return self.bn(self.conv(x))


class SparseBasicBlock(nn.Module):
    """Residual block of two submanifold 3x3x3 convs (OpenPCDet's ``SparseBasicBlock``;
    its convs carry a bias before BatchNorm, redundant, left out here)."""

    def __init__(self, channels: int, indice_key: str, use_spconv: bool = False) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, indice_key=indice_key, use_spconv=use_spconv)
        self.bn1 = _NormAct(channels)
        self.conv2 = SubMConv3d(channels, channels, 3, indice_key=indice_key, use_spconv=use_spconv)
        self.bn2 = _NormAct(channels, act=False)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return out.replace_features(torch.relu(out.features + x.features))


class MeanVFE(nn.Module):
    """Voxel features = the mean of the point features of each voxel (OpenPCDet's
    ``MeanVFE``), on dynamic voxels with hard voxelisation's limits emulated.

    Args:
        in_channels: point columns.
        grid: the voxel grid.
        max_points, max_voxels: see :func:`~distill3d.models.encoders.pillar.assign_voxels`.
    """

    def __init__(self, in_channels: int, grid: VoxelGrid, max_points: int | None = None,
                 max_voxels: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.grid = grid
        self.max_points = max_points
        self.max_voxels = max_voxels

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Args: ``points`` ``(P, C)``, ``batch_index`` ``(P,)`` non-decreasing, ``B``.
        Returns ``(V, C)`` mean features, ``(V, 4)`` int64 ``(b, z, y, x)`` coordinates and
        ``(V,)`` point counts."""
        a = assign_voxels(points, batch_index, batch_size, self.grid, self.max_points, self.max_voxels)
        keep = a.inverse >= 0
        feats = scatter_mean(points[keep], a.inverse[keep], a.coords.shape[0])
        return feats, a.coords, a.num_points


class HeightCompression(nn.Module):
    """``map_to_bev``: a sparse ``(N, C)`` tensor on ``(D, H, W)`` -> dense
    ``(B, C * D, H, W)`` (channel ``c * D + d``, OpenPCDet's ``HeightCompression``)."""

    def forward(self, x: SparseVoxels) -> Tensor:
        dense = x.dense()
        b, c, d, h, w = dense.shape
        return dense.view(b, c * d, h, w)


class SparseVoxelEncoder(nn.Module):
    """SECOND-style sparse 3D encoder to stride 8 (OpenPCDet ``VoxelResBackBone8x`` /
    ``VoxelBackBone8x``).

    Args:
        in_channels: voxel feature width (the VFE's output).
        grid: the voxel grid; the encoder's input grid is ``(nz + 1, ny, nx)`` (OpenPCDet
            adds one z cell). ``nx`` and ``ny`` should be divisible by 8.
        channels: 6 widths ``[input, conv1, conv2, conv3, conv4, out]``.
        blocks: 4 block counts for ``conv1..conv4`` (residual blocks or submanifold convs).
        residual: residual blocks (``VoxelResBackBone8x``) or plain submanifold convs.
        use_spconv: see :class:`SparseConv3d`.

    ``forward`` returns the output of each stage: ``conv1`` (stride 1), ``conv2`` (2),
    ``conv3`` (4), ``conv4`` (8, z reduced), ``out`` (z compressed further by a
    ``(3, 1, 1)`` stride-``(2, 1, 1)`` conv). ``bev_channels = channels[5] * out_depth``.
    """

    def __init__(self, in_channels: int, grid: VoxelGrid, channels: tuple[int, ...] | list[int] = (16, 16, 32, 64, 128, 128),
                 blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2), residual: bool = True,
                 use_spconv: bool = False) -> None:
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"SparseVoxelEncoder: channels needs 6 widths, got {list(channels)}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"SparseVoxelEncoder: blocks needs 4 counts >= 1, got {list(blocks)}")
        nx, ny, nz = grid.grid_size
        self.grid = grid
        self.input_shape: Triple = (nz + 1, ny, nx)
        self.channels = [int(c) for c in channels]
        self.residual = residual
        c = self.channels
        sp = use_spconv
        self.conv_input = _ConvBlock(SubMConv3d(in_channels, c[0], 3, indice_key="subm1", use_spconv=sp))
        stages = []
        paddings: list[Triple] = [(1, 1, 1), (1, 1, 1), (0, 1, 1)]
        shape = self.input_shape
        self.stage_shapes: list[Triple] = []
        for s in range(4):
            layers: list[nn.Module] = []
            c_in, c_out, key = c[s], c[s + 1], f"subm{s + 1}"
            if s > 0:
                down = SparseConv3d(c_in, c_out, 3, stride=2, padding=paddings[s - 1], indice_key=f"spconv{s + 1}",
                                    use_spconv=sp)
                shape = tuple((shape[a] + 2 * down.padding[a] - 3) // 2 + 1 for a in range(3))  # type: ignore[assignment]
                layers.append(_ConvBlock(down))
            elif c_in != c_out:
                layers.append(_ConvBlock(SubMConv3d(c_in, c_out, 3, indice_key=key, use_spconv=sp)))
            for _ in range(blocks[s]):
                if residual:
                    layers.append(SparseBasicBlock(c_out, key, use_spconv=sp))
                else:
                    layers.append(_ConvBlock(SubMConv3d(c_out, c_out, 3, indice_key=key, use_spconv=sp)))
            stages.append(nn.Sequential(*layers))
            self.stage_shapes.append(shape)
        self.conv1, self.conv2, self.conv3, self.conv4 = stages
        self.conv_out = _ConvBlock(SparseConv3d(c[4], c[5], (3, 1, 1), stride=(2, 1, 1), padding=0,
                                                indice_key="spconv_down2", use_spconv=sp))
        if shape[0] < 3:
            raise ValueError(f"SparseVoxelEncoder: the z grid ({nz} cells + 1) is too small: it has "
                             f"{shape[0]} cells at stride 8 and conv_out needs 3; use smaller z voxels")
        self.out_shape: Triple = ((shape[0] - 3) // 2 + 1, shape[1], shape[2])
        self.bev_channels = c[5] * self.out_shape[0]
        self.map_to_bev = HeightCompression()

    def forward(self, features: Tensor, coords: Tensor, batch_size: int) -> dict[str, SparseVoxels]:
        """Args: ``features`` ``(V, C_in)`` voxel features; ``coords`` ``(V, 4)``
        ``(b, z, y, x)`` on the voxel grid; ``batch_size`` ``B``. Returns the sparse output
        of ``conv1..conv4`` and ``out``."""
        x = SparseVoxels(features, coords.long(), self.input_shape, batch_size)
        x = self.conv_input(x)
        outs: dict[str, SparseVoxels] = {}
        for name in ("conv1", "conv2", "conv3", "conv4"):
            x = getattr(self, name)(x)
            outs[name] = x
        outs["out"] = self.conv_out(x)
        return outs
