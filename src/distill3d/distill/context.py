"""What a distillation loss sees besides its two features: :class:`KDContext`.

The distiller builds one context per training step. It carries the (augmented) batch, both
models' outputs and lazily computed, cached views of them that masks need (GT boxes per
sample, the teacher's decoded detections), so that a mask is computed once per step however
many terms use it.

Frames: every box is in the key LiDAR frame of the augmented sample, ``(x, y, z, l, w, h,
yaw, vx, vy)`` with the geometric centre (see :mod:`distill3d.structures`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from distill3d.data.loader import Batch
from distill3d.models.base import DetectorOutput
from distill3d.structures import BEVGrid, Detections


@dataclass
class HeadMaps:
    """A model's dense head outputs as one distillation input (the tap name ``heads``).

    Attributes:
        heads: one dict per task group: ``heatmap`` ``(B, n_cls_t, H, W)`` logits and the
            regression maps ``reg`` (B, 2, H, W), ``height`` (B, 1, H, W), ``dim``
            (B, 3, H, W) log sizes, ``rot`` (B, 2, H, W) ``(sin, cos)``, optionally ``vel``
            (B, 2, H, W).
        grid: the BEV grid of every map.
        tasks: the class names of each task group, in heatmap-channel order.
    """

    heads: list[dict[str, Tensor]]
    grid: BEVGrid
    tasks: list[tuple[str, ...]]


@dataclass
class KDContext:
    """Per-step inputs shared by every term of a distiller.

    Attributes:
        batch: the augmented batch both models ran on (the student's copy when the student
            sees a transformed input, e.g. beam-downsampled points: boxes are the same).
        student: the student's :class:`DetectorOutput`.
        teacher: the teacher's :class:`DetectorOutput` (live or read from the cache).
        class_names: the student's class order (GT labels in ``batch`` are mapped to it).
        decode_teacher: returns the teacher's detections per sample (called at most once
            per step, see :meth:`teacher_detections`).
        cache: scratch space for masks computed once per step, keyed by the caller.
    """

    batch: Batch
    student: DetectorOutput
    teacher: DetectorOutput
    class_names: tuple[str, ...]
    decode_teacher: Callable[[], list[Detections]] | None = None
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def gt_boxes(self) -> list[Tensor]:
        """``B`` tensors ``(M_b, 9)`` of GT boxes (key LiDAR frame, augmented)."""
        return self.batch.boxes_list

    def gt_labels(self) -> list[Tensor]:
        """``B`` tensors ``(M_b,)`` int64 GT labels (indices into ``batch.class_names``)."""
        return self.batch.labels_list

    def teacher_detections(self) -> list[Detections]:
        """The teacher's decoded detections per sample, decoded once per step.

        Raises:
            RuntimeError: the distiller gave no decoder (a term that needs teacher boxes is
                then wired to a teacher without a ``decode``).
        """
        if "teacher_detections" not in self.cache:
            if self.decode_teacher is None:
                raise RuntimeError("this distillation step has no teacher decoder, but a term asked for the "
                                   "teacher's detections")
            self.cache["teacher_detections"] = self.decode_teacher()
        return self.cache["teacher_detections"]
