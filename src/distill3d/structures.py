"""Small typed structures shared by models, evaluation and distillation.

* :class:`BEVGrid`: the geometry of a bird's-eye-view feature map in the key LiDAR frame,
  so that maps of different models (different ranges, cell sizes, strides) can be
  aligned by resampling.
* :class:`Detections`: one sample's detected boxes.

BEV tensor layout everywhere: ``(B, C, H, W)`` with rows along +y and columns along +x:
cell ``(row i, col j)`` covers ``x in [x_min + j * cell_x, x_min + (j + 1) * cell_x)`` and
``y in [y_min + i * cell_y, ...)`` (the layout of OpenPCDet and mmdetection3d's
``(ny, nx)`` spatial features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BEVGrid:
    """Geometry of a BEV map.

    Attributes:
        x_min, y_min, x_max, y_max: the covered area in the key LiDAR frame, metres.
        height, width: the map's rows (along y) and columns (along x).
    """

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    height: int
    width: int

    def __post_init__(self) -> None:
        if not (self.x_max > self.x_min and self.y_max > self.y_min):
            raise ValueError(f"BEVGrid: empty area x [{self.x_min}, {self.x_max}) y [{self.y_min}, {self.y_max})")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"BEVGrid: shape must be positive, got {self.height}x{self.width}")

    @classmethod
    def from_range(cls, point_cloud_range: tuple[float, ...] | list[float], cell_size: tuple[float, float],
                   stride: int = 1) -> BEVGrid:
        """The grid of a point-cloud range ``(x0, y0, z0, x1, y1, z1)`` at ``cell_size``
        (metres, x and y) times ``stride``; sizes rounded as the voxel grid rounds them."""
        x0, y0, _, x1, y1, _ = (float(v) for v in point_cloud_range)
        nx = int(round((x1 - x0) / cell_size[0]))
        ny = int(round((y1 - y0) / cell_size[1]))
        if nx % stride or ny % stride:
            raise ValueError(f"BEVGrid: grid {ny}x{nx} is not divisible by stride {stride}")
        return cls(x0, y0, x1, y1, ny // stride, nx // stride)

    @property
    def cell_size(self) -> tuple[float, float]:
        """Metres per cell along x and y."""
        return ((self.x_max - self.x_min) / self.width, (self.y_max - self.y_min) / self.height)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    def downsample(self, factor: int) -> BEVGrid:
        """The same area at ``factor`` times coarser cells."""
        if self.height % factor or self.width % factor:
            raise ValueError(f"BEVGrid {self.height}x{self.width} is not divisible by {factor}")
        return BEVGrid(self.x_min, self.y_min, self.x_max, self.y_max, self.height // factor, self.width // factor)

    def xy_to_cell(self, xy: Tensor) -> Tensor:
        """Continuous cell coordinates ``(col, row)`` of metric points ``xy`` (..., 2);
        cell centres are at integer + 0.5."""
        cx, cy = self.cell_size
        return torch.stack([(xy[..., 0] - self.x_min) / cx, (xy[..., 1] - self.y_min) / cy], dim=-1)

    def cell_centers(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """(H, W, 2) metric ``(x, y)`` of every cell centre."""
        cx, cy = self.cell_size
        xs = self.x_min + (torch.arange(self.width, device=device, dtype=dtype) + 0.5) * cx
        ys = self.y_min + (torch.arange(self.height, device=device, dtype=dtype) + 0.5) * cy
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y], dim=-1)


@dataclass
class Detections:
    """Detected boxes of one sample, in that sample's (augmented) key LiDAR frame.

    Attributes:
        boxes: (K, 9) ``(x, y, z, l, w, h, yaw, vx, vy)``, geometric centre; velocity is
            NaN for models that do not predict it.
        scores: (K,) confidences in [0, 1], sorted in decreasing order.
        labels: (K,) int64 indices into the model's class names.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        k = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 9:
            raise ValueError(f"Detections.boxes must be (K, 9), got {tuple(self.boxes.shape)}")
        if self.scores.shape != (k,) or self.labels.shape != (k,):
            raise ValueError(f"Detections: scores {tuple(self.scores.shape)} and labels "
                             f"{tuple(self.labels.shape)} must both be ({k},)")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Detections:
        return cls(torch.zeros(0, 9, device=device), torch.zeros(0, device=device),
                   torch.zeros(0, dtype=torch.int64, device=device))
