"""SECOND's FPN neck (mmdetection3d's ``SECONDFPN``, OpenPCDet's ``BaseBEVBackbone``
deblocks): every backbone stage brought to one common stride and concatenated.

Stage ``i`` with upsampling factor ``u_i``: ``u_i >= 1`` a transposed conv with kernel and
stride ``u_i``; ``u_i < 1`` a conv with kernel and stride ``1 / u_i`` (downsampling);
each followed by BatchNorm (eps 1e-3, momentum 0.01) and ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SECONDFPN", "upsample_factor"]


def upsample_factor(value: float) -> tuple[int, bool]:
    """``(k, up)``: ``value`` as an integer upsampling factor ``k`` (``up`` True) or the
    inverse of an integer downsampling factor (``up`` False).

    Raises:
        ValueError: ``value`` is neither an integer nor ``1 / integer``.
    """
    if value >= 1:
        k = round(value)
        if abs(k - value) > 1e-6:
            raise ValueError(f"an upsampling stride >= 1 must be an integer, got {value}")
        return int(k), True
    if value <= 0:
        raise ValueError(f"an upsampling stride must be > 0, got {value}")
    k = round(1.0 / value)
    if abs(k * value - 1.0) > 1e-6:
        raise ValueError(f"an upsampling stride below 1 must be 1 / integer, got {value}")
    return int(k), False


class SECONDFPN(nn.Module):
    """Upsample each backbone stage to a common stride and concatenate.

    Args:
        in_channels: channels of each backbone stage.
        upsample_strides: factor of each stage (see the module docstring); stage ``i``'s
            output stride divided by its factor must be the same for every stage.
        out_channels: channels of each upsampled stage.

    Attributes:
        out_channels: ``sum(out_channels)``, the concatenation's width.
    """

    def __init__(self, in_channels: Sequence[int], upsample_strides: Sequence[float],
                 out_channels: Sequence[int]) -> None:
        super().__init__()
        if not (len(in_channels) == len(upsample_strides) == len(out_channels)) or not in_channels:
            raise ValueError(f"SECONDFPN: in_channels {list(in_channels)}, upsample_strides "
                             f"{list(upsample_strides)} and out_channels {list(out_channels)} need one "
                             "entry per stage")
        self.deblocks = nn.ModuleList()
        for c_in, u, c_out in zip(in_channels, upsample_strides, out_channels):
            k, up = upsample_factor(float(u))
            conv: nn.Module
            if up:
                conv = nn.ConvTranspose2d(int(c_in), int(c_out), k, stride=k, bias=False)
            else:
                conv = nn.Conv2d(int(c_in), int(c_out), k, stride=k, bias=False)
            self.deblocks.append(nn.Sequential(conv, nn.BatchNorm2d(int(c_out), eps=1e-3, momentum=0.01),
                                               nn.ReLU(inplace=True)))
        self.upsample_strides = [float(u) for u in upsample_strides]
        self.out_channels = int(sum(out_channels))

    def forward(self, features: Sequence[Tensor], return_levels: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """The backbone's stage outputs -> ``(B, sum(out_channels), H', W')``; with
        ``return_levels`` also the upsampled stages ``(B, out_channels[i], H', W')``
        before concatenation."""
        if len(features) != len(self.deblocks):
            raise ValueError(f"SECONDFPN: expected {len(self.deblocks)} stage outputs, got {len(features)}")
        ups = [block(x) for block, x in zip(self.deblocks, features)]
        shapes = {tuple(u.shape[2:]) for u in ups}
        if len(shapes) != 1:
            raise ValueError(f"SECONDFPN: upsampled stages disagree in size: {[tuple(u.shape) for u in ups]}")
        out = torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]
        return (out, ups) if return_levels else out
