"""KD adapters: shapes per kind and input kind, hidden width, initialisation, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill3d.distill.adapters import ADAPTER_KINDS, build_adapter

DENSE_CASES = [
    ("conv1x1", {}, (2, 8, 5, 6)),
    ("conv3x3", {}, (2, 8, 5, 6)),
    ("conv1x1_bn_relu", {}, (2, 8, 5, 6)),
    ("upsample_conv", {"upsample": 2}, (2, 8, 10, 12)),
    ("upsample_conv", {"upsample": 4}, (2, 8, 20, 24)),
    ("mlp", {}, (2, 8, 5, 6)),
    ("linear", {}, (2, 8, 5, 6)),
]


def test_adapter_kinds_listed() -> None:
    assert set(ADAPTER_KINDS) == {"identity", "conv1x1", "conv3x3", "conv1x1_bn_relu", "upsample_conv",
                                  "mlp", "linear"}


@pytest.mark.parametrize(("kind", "kwargs", "out_shape"), DENSE_CASES)
def test_dense_output_shapes_and_trainable(kind: str, kwargs: dict, out_shape: tuple[int, ...]) -> None:
    adapter = build_adapter(kind, 4, 8, input_kind="bev", **kwargs)
    x = torch.randn(2, 4, 5, 6)
    y = adapter(x)
    assert y.shape == out_shape
    params = list(adapter.parameters())
    assert params and all(p.requires_grad for p in params)
    y.square().mean().backward()
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("input_kind", ["voxels", "points"])
@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_sparse_output_shapes(kind: str, input_kind: str) -> None:
    adapter = build_adapter(kind, 4, 16, input_kind=input_kind)
    y = adapter(torch.randn(37, 4))
    assert y.shape == (37, 16)
    assert not any(isinstance(m, nn.Conv2d) for m in adapter.modules())
    y.sum().backward()
    assert all(p.grad is not None for p in adapter.parameters())


def test_identity() -> None:
    x = torch.randn(2, 4, 3, 3)
    for kind in (None, "identity"):
        adapter = build_adapter(kind, 4, 4)
        assert isinstance(adapter, nn.Identity) and adapter(x) is x
    assert isinstance(build_adapter(None, 6, 6, input_kind="voxels"), nn.Identity)
    with pytest.raises(ValueError, match="conv1x1"):
        build_adapter(None, 4, 8)
    with pytest.raises(ValueError, match="linear"):
        build_adapter("identity", 4, 8, input_kind="voxels")


def test_mlp_hidden_width() -> None:
    sparse = build_adapter("mlp", 4, 16, input_kind="voxels")
    linears = [m for m in sparse.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 16), (16, 16)]  # max(in, out)
    sparse = build_adapter("mlp", 4, 16, input_kind="points", hidden=7)
    linears = [m for m in sparse.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 7), (7, 16)]
    assert any(isinstance(m, nn.ReLU) for m in sparse.modules())
    dense = build_adapter("mlp", 12, 3, hidden=5)
    convs = [m for m in dense.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [(12, 5, (1, 1)), (5, 3, (1, 1))]


def test_layer_structure() -> None:
    conv = build_adapter("conv1x1", 4, 8)
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None
    conv3 = build_adapter("conv3x3", 4, 8)
    assert conv3.kernel_size == (3, 3) and conv3.padding == (1, 1)
    bn = build_adapter("conv1x1_bn_relu", 4, 8)
    assert [type(m) for m in bn] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    up = build_adapter("upsample_conv", 4, 8, upsample=2)
    assert up[0].mode == "nearest" and up[1].kernel_size == (3, 3)
    # nearest upsampling: the conv sees each input cell repeated 2x2
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(up(x), up[1](x.repeat_interleave(2, 2).repeat_interleave(2, 3)))


def test_initialisation_kaiming_fan_out_zero_bias() -> None:
    torch.manual_seed(0)
    conv = build_adapter("conv3x3", 64, 128)
    assert torch.all(conv.bias == 0)
    fan_out = 128 * 3 * 3
    expected_std = (2.0 / fan_out) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1.0) < 0.05
    lin = build_adapter("linear", 256, 512, input_kind="voxels")
    assert torch.all(lin.bias == 0)
    assert abs(lin.weight.std().item() / (2.0 / 512) ** 0.5 - 1.0) < 0.05


@pytest.mark.parametrize("kind", ["conv1x1", "conv3x3", "conv1x1_bn_relu", "upsample_conv"])
def test_conv_kinds_reject_sparse_inputs(kind: str) -> None:
    with pytest.raises(ValueError, match="'mlp' or 'linear'"):
        build_adapter(kind, 4, 8, input_kind="voxels", upsample=2 if kind == "upsample_conv" else 1)


def test_unknown_kind_lists_valid_and_closest() -> None:
    with pytest.raises(ValueError) as info:
        build_adapter("conv1x", 4, 8)
    msg = str(info.value)
    assert "did you mean 'conv1x1'" in msg
    assert all(k in msg for k in ADAPTER_KINDS)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="upsample >= 2"):
        build_adapter("upsample_conv", 4, 8)
    with pytest.raises(ValueError, match="upsample_conv"):
        build_adapter("conv1x1", 4, 8, upsample=2)
    with pytest.raises(ValueError, match="hidden"):
        build_adapter("conv1x1", 4, 8, hidden=16)
    with pytest.raises(ValueError, match="input_kind"):
        build_adapter("conv1x1", 4, 8, input_kind="pixels")
    with pytest.raises(ValueError, match="in_channels"):
        build_adapter("conv1x1", 0, 8)
