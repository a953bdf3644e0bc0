"""SECOND 2D backbone and SECOND FPN: shapes, strides, channel counts."""

from __future__ import annotations

import pytest
import torch

from distill3d.models.backbones import SECONDBackbone
from distill3d.models.necks import SECONDFPN, upsample_factor


def test_backbone_stage_shapes_and_depth() -> None:
    net = SECONDBackbone(8, layer_nums=[1, 2, 0], layer_strides=[2, 2, 2], num_filters=[8, 16, 32])
    outs = net(torch.randn(2, 8, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 24), (2, 16, 8, 12), (2, 32, 4, 6)]
    assert net.strides == [2, 4, 8]
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in block.modules()) for block in net.blocks]
    assert convs == [2, 3, 1]  # the strided conv + layer_nums[i] convs


def test_backbone_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        SECONDBackbone(8, [1, 1], [2, 2, 2], [8, 16, 32])


@pytest.mark.parametrize("ups, size", [([1, 2, 4], 16), ([0.5, 1, 2], 8), ([0.25, 0.5, 1], 4)])
def test_fpn_brings_stages_to_one_stride(ups: list[float], size: int) -> None:
    net = SECONDBackbone(4, [1, 1, 1], [2, 2, 2], [8, 16, 32])
    neck = SECONDFPN([8, 16, 32], ups, [6, 6, 6])
    out = neck(net(torch.randn(2, 4, 32, 32)))
    assert out.shape == (2, 18, size, size)
    assert neck.out_channels == 18


def test_fpn_disagreeing_strides_fail() -> None:
    neck = SECONDFPN([8, 16], [1, 1], [4, 4])
    with pytest.raises(ValueError, match="disagree"):
        neck([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])


def test_upsample_factor() -> None:
    assert upsample_factor(2) == (2, True)
    assert upsample_factor(0.25) == (4, False)
    for bad in (1.5, 0.3, 0.0):
        with pytest.raises(ValueError):
            upsample_factor(bad)


def test_backward_runs() -> None:
    net = SECONDBackbone(4, [1, 1], [1, 2], [8, 8])
    neck = SECONDFPN([8, 8], [1, 2], [4, 4])
    neck(net(torch.randn(2, 4, 8, 8))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
