"""Point-cloud encoders: the pillar feature net with its BEV scatter, and the sparse 3D
voxel encoder with its pure-PyTorch sparse convolution and ``map_to_bev``."""

from distill3d.models.encoders.pillar import (
    PFNLayer,
    PillarFeatureNet,
    PillarFeatures,
    PointPillarsScatter,
    VoxelAssignment,
    assign_voxels,
)
from distill3d.models.encoders.sparse_voxel import (
    HeightCompression,
    KernelMap,
    MeanVFE,
    SparseBasicBlock,
    SparseConv3d,
    SparseVoxelEncoder,
    SparseVoxels,
    SubMConv3d,
    spconv_available,
)

__all__ = [
    "HeightCompression", "KernelMap", "MeanVFE", "PFNLayer", "PillarFeatureNet", "PillarFeatures",
    "PointPillarsScatter", "SparseBasicBlock", "SparseConv3d", "SparseVoxelEncoder", "SparseVoxels",
    "SubMConv3d", "VoxelAssignment", "assign_voxels", "spconv_available",
]
