"""BEV necks."""

from distill3d.models.necks.second_fpn import SECONDFPN, upsample_factor

__all__ = ["SECONDFPN", "upsample_factor"]
