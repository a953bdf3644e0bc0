"""The detector contract (DESIGN.md section 2, "Detectors").

Every detector is an ``nn.Module`` with

* ``forward(batch) -> DetectorOutput``: it prepares the batch its own way (voxelisation,
  image normalisation: preprocessing belongs to the model), runs, and returns
  - named features (**taps**), each with its kind and, for BEV maps, its :class:`BEVGrid`,
    so that another model's map can be aligned to it;
  - head outputs per task (heatmap logits and regression maps);
* ``loss(batch, output) -> dict[str, Tensor]``: named scalar losses, with the total under
  ``"loss"``;
* ``decode(output) -> list[Detections]``: boxes per sample in the key LiDAR frame of the
  (augmented) input.

Width, depth, input and BEV resolution are config knobs: a student is the teacher's
config with smaller numbers, never a new class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from distill3d.data.loader import Batch
from distill3d.structures import BEVGrid, Detections

TapKind = Literal["bev", "image", "points", "voxels", "depth", "other"]


@dataclass
class Tap:
    """One named intermediate result.

    Attributes:
        tensor: the feature; layout by kind:
            ``bev``: (B, C, H, W) on ``grid``;
            ``voxels``/``points``: (V, C) features with ``index`` (V, 4) int ``(b, z, y, x)``
            voxel coordinates or (V,) batch indices;
            ``image``: (B * N_cam, C, H, W);
            ``depth``: (B * N_cam, D, H, W) depth-bin probabilities.
        kind: one of :data:`TapKind`.
        grid: the BEV geometry for ``bev`` taps (and the voxel grid's BEV for ``voxels``).
        index: per-row coordinates for ``voxels``/``points`` taps.
    """

    tensor: Tensor
    kind: TapKind
    grid: BEVGrid | None = None
    index: Tensor | None = None


@dataclass
class DetectorOutput:
    """What ``Detector.forward`` returns.

    Attributes:
        taps: named features, e.g. ``pillars``, ``bev``, ``backbone.0``, ``neck``.
        heads: one dict per task group, e.g. ``{"heatmap": (B, n_cls_task, H, W) logits,
            "reg": (B, 2, H, W), "height": (B, 1, H, W), "dim": (B, 3, H, W),
            "rot": (B, 2, H, W), "vel": (B, 2, H, W)}``.
        head_grid: the BEV grid of the head maps.
    """

    taps: dict[str, Tap] = field(default_factory=dict)
    heads: list[dict[str, Tensor]] = field(default_factory=list)
    head_grid: BEVGrid | None = None


class Detector(nn.Module):
    """Base class of every detector (see the module docstring)."""

    class_names: tuple[str, ...]

    def forward(self, batch: Batch) -> DetectorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch, output: DetectorOutput) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def decode(self, output: DetectorOutput) -> list[Detections]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tap_names(self) -> list[str]:
        """Names of the taps ``forward`` fills (for validating distillation terms)."""
        raise NotImplementedError
