"""Detection heads on BEV maps."""

from distill3d.models.heads.centerpoint import (
    CENTERPOINT_CIRCLE_NMS_RADIUS,
    CENTERPOINT_NUSCENES_TASKS,
    CODE_SIZE,
    DEFAULT_CODE_WEIGHTS,
    REGRESSION_HEADS,
    TARGET_FIELDS,
    CenterPointHead,
    box_gaussian_radii,
    build_targets,
    clamp_sigmoid,
    draw_gaussian_heatmaps,
    gather_regression,
    gaussian_focal_loss,
    gaussian_radius,
    weighted_l1_loss,
)

__all__ = [
    "CENTERPOINT_CIRCLE_NMS_RADIUS",
    "CENTERPOINT_NUSCENES_TASKS",
    "CODE_SIZE",
    "DEFAULT_CODE_WEIGHTS",
    "REGRESSION_HEADS",
    "TARGET_FIELDS",
    "CenterPointHead",
    "box_gaussian_radii",
    "build_targets",
    "clamp_sigmoid",
    "draw_gaussian_heatmaps",
    "gather_regression",
    "gaussian_focal_loss",
    "gaussian_radius",
    "weighted_l1_loss",
]
