"""Detectors and their building blocks (DESIGN.md section 2, "Detectors").

``build_detector(model_cfg, data_cfg)`` builds a detector by ``model.type``:
``centerpoint_pillar`` (:class:`CenterPointPillar`) or ``centerpoint_voxel``
(:class:`CenterPointVoxel`). Every detector implements :class:`Detector`.
"""

from distill3d.models.base import Detector, DetectorOutput, Tap
from distill3d.models.centerpoint import CenterPointPillar, CenterPointVoxel, default_tasks
from distill3d.models.registry import DETECTOR_TYPES, build_detector

__all__ = [
    "DETECTOR_TYPES",
    "CenterPointPillar",
    "CenterPointVoxel",
    "Detector",
    "DetectorOutput",
    "Tap",
    "build_detector",
    "default_tasks",
]
