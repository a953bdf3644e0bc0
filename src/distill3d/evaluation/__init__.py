"""Detection metrics equal to the official implementations (nuScenes devkit, KITTI)."""

from distill3d.evaluation.nuscenes import (
    DISTANCE_BANDS,
    NUSCENES_ATTRIBUTE_NAMES,
    NuScenesEvalConfig,
    NuScenesEvaluator,
    NuScenesGT,
    NuScenesMetrics,
    NuScenesResults,
    default_attribute,
    evaluate_nuscenes,
    evaluate_nuscenes_by_distance,
    lidar_detections_to_results,
    load_nuscenes_gt,
    load_nuscenes_results,
    write_nuscenes_metrics,
    write_nuscenes_results,
)

__all__ = [
    "DISTANCE_BANDS",
    "NUSCENES_ATTRIBUTE_NAMES",
    "NuScenesEvalConfig",
    "NuScenesEvaluator",
    "NuScenesGT",
    "NuScenesMetrics",
    "NuScenesResults",
    "default_attribute",
    "evaluate_nuscenes",
    "evaluate_nuscenes_by_distance",
    "lidar_detections_to_results",
    "load_nuscenes_gt",
    "load_nuscenes_results",
    "write_nuscenes_metrics",
    "write_nuscenes_results",
]
