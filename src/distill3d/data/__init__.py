"""Datasets, the Sample record, augmentation, voxelisation and loading.

Every reader yields :class:`Sample` in our conventions (key LiDAR frame, geometric-centre
boxes; see ``docs/conventions.md`` and ``docs/data.md``).
"""

from distill3d.data.dataset import DetectionDataset, sample_rng
from distill3d.data.errors import DataError
from distill3d.data.infos import InfoDataset, InfoSchema, load_info_file
from distill3d.data.kitti import KittiDataset
from distill3d.data.loader import Batch, ClassBalancedSampler, build_dataloader, collate_samples
from distill3d.data.nuscenes import NUSCENES_DETECTION_CLASSES, NuScenesDataset, build_nuscenes_index
from distill3d.data.sample import CameraView, Sample
from distill3d.data.voxelize import VoxelGrid, Voxels, dynamic_voxelize, hard_voxelize

__all__ = [
    "Batch", "CameraView", "ClassBalancedSampler", "DataError", "DetectionDataset", "InfoDataset",
    "InfoSchema", "KittiDataset", "NUSCENES_DETECTION_CLASSES", "NuScenesDataset", "Sample", "VoxelGrid",
    "Voxels", "build_dataloader", "build_nuscenes_index", "collate_samples", "dynamic_voxelize",
    "hard_voxelize", "load_info_file", "sample_rng",
]
