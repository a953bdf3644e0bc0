"""The SECOND 2D BEV backbone (Yan, Mao, Li 2018; OpenPCDet's ``BaseBEVBackbone`` blocks,
mmdetection3d's ``SECOND``), used by PointPillars and CenterPoint.

Stage ``i``: a 3x3 conv with stride ``layer_strides[i]`` to ``num_filters[i]`` channels,
then ``layer_nums[i]`` 3x3 convs at that stride; every conv is followed by BatchNorm
(eps 1e-3, momentum 0.01, as OpenPCDet) and ReLU. The output of every stage is returned
(``(B, num_filters[i], H / s_i, W / s_i)`` with ``s_i`` the cumulative stride), for the
FPN neck and for distillation taps ``backbone.i``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["SECONDBackbone", "conv_bn_relu"]


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    """3x3 conv (padding 1, no bias) -> BatchNorm2d -> ReLU."""
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01),
            nn.ReLU(inplace=True)]


class SECONDBackbone(nn.Module):
    """SECOND's multi-stage 2D backbone on a BEV map.

    Args:
        in_channels: channels of the input BEV map.
        layer_nums: 3x3 conv blocks after the strided conv of each stage (``>= 0``).
        layer_strides: stride of each stage's first conv.
        num_filters: channels of each stage.

    Attributes:
        out_channels: ``num_filters``.
        strides: cumulative stride of each stage's output w.r.t. the input map.
    """

    def __init__(self, in_channels: int, layer_nums: Sequence[int], layer_strides: Sequence[int],
                 num_filters: Sequence[int]) -> None:
        super().__init__()
        if not (len(layer_nums) == len(layer_strides) == len(num_filters)) or not layer_nums:
            raise ValueError(f"SECONDBackbone: layer_nums {list(layer_nums)}, layer_strides "
                             f"{list(layer_strides)} and num_filters {list(num_filters)} need one "
                             "entry per stage")
        self.blocks = nn.ModuleList()
        c_in = in_channels
        stride = 1
        self.strides: list[int] = []
        for n, s, c in zip(layer_nums, layer_strides, num_filters):
            layers = conv_bn_relu(c_in, int(c), int(s))
            for _ in range(int(n)):
                layers += conv_bn_relu(int(c), int(c))
            self.blocks.append(nn.Sequential(*layers))
            c_in = int(c)
            stride *= int(s)
            self.strides.append(stride)
        self.in_channels = in_channels
        self.out_channels = [int(c) for c in num_filters]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, C_in, H, W)`` -> the output of every stage, ``(B, C_i, H / s_i, W / s_i)``."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs
