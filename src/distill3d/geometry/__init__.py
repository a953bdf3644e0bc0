"""Box geometry in the key LiDAR frame: corners, exact rotated IoU, NMS, points in boxes,
rigid transforms and the converters to and from every outside box convention.

A box is a tensor row ``(x, y, z, l, w, h, yaw[, vx, vy])`` (geometric centre, metres,
yaw counter-clockwise from +x in ``[-pi, pi)``); see ``docs/conventions.md``. Every
function takes and returns torch tensors, is batched, and runs on the input's device.
"""

from distill3d.geometry.boxes import box_corners, box_corners_bev, check_boxes, wrap_angle
from distill3d.geometry.convert import (
    KittiCalib,
    boxes_to_mmdet3d_lidar,
    boxes_to_openpcdet,
    kitti_alpha,
    kitti_camera_to_lidar_boxes,
    lidar_to_kitti_camera_boxes,
    lidar_to_nuscenes_global_boxes,
    mmdet3d_lidar_to_boxes,
    nuscenes_global_to_lidar_boxes,
    openpcdet_to_boxes,
)
from distill3d.geometry.iou import (
    box_intersection_bev,
    box_iou_3d,
    box_iou_bev,
    overlapping_pairs_bev,
)
from distill3d.geometry.nms import circle_nms, nms_bev
from distill3d.geometry.points import (
    count_points_in_boxes,
    points_in_boxes,
    points_in_boxes_indices,
)
from distill3d.geometry.transforms import (
    Pose,
    invert_transform,
    make_transform,
    matrix_to_quaternion,
    quaternion_to_matrix,
    transform_points,
    yaw_to_quaternion,
)

__all__ = [
    "KittiCalib",
    "Pose",
    "box_corners",
    "box_corners_bev",
    "box_intersection_bev",
    "box_iou_3d",
    "box_iou_bev",
    "boxes_to_mmdet3d_lidar",
    "boxes_to_openpcdet",
    "check_boxes",
    "circle_nms",
    "count_points_in_boxes",
    "invert_transform",
    "kitti_alpha",
    "kitti_camera_to_lidar_boxes",
    "lidar_to_kitti_camera_boxes",
    "lidar_to_nuscenes_global_boxes",
    "make_transform",
    "matrix_to_quaternion",
    "mmdet3d_lidar_to_boxes",
    "nms_bev",
    "nuscenes_global_to_lidar_boxes",
    "openpcdet_to_boxes",
    "overlapping_pairs_bev",
    "points_in_boxes",
    "points_in_boxes_indices",
    "quaternion_to_matrix",
    "transform_points",
    "wrap_angle",
    "yaw_to_quaternion",
]
