"""Basic 3D box geometry: angle wrapping, corners and input validation.

Box convention (see ``docs/DESIGN.md`` section 2): a box is one tensor row
``(x, y, z, l, w, h, yaw[, vx, vy, ...])`` in the key LiDAR frame, in metres, z up.

* ``(x, y, z)`` is the **geometric centre** of the box;
* ``l`` runs along the heading, ``w`` across it, ``h`` vertically;
* ``yaw`` is counter-clockwise from +x (seen from above), wrapped to ``[-pi, pi)``.

Columns beyond the seventh (velocity, ...) are ignored by every geometry function.
All functions take and return torch tensors, are batched, and keep the input's device
and dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["box_corners", "box_corners_bev", "check_boxes", "wrap_angle"]

#: Number of geometric columns in a box row: x, y, z, l, w, h, yaw.
BOX_DIM = 7

# Box-frame unit corners, order shared by ``box_corners`` and ``box_corners_bev``:
# front-left, rear-left, rear-right, front-right (counter-clockwise seen from above).
_UNIT_CORNERS_XY = ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))


def wrap_angle(angle: Tensor) -> Tensor:
    """Wrap angles (radians) to ``[-pi, pi)``.

    ``pi`` maps to ``-pi``, ``-pi`` stays ``-pi``, ``3 * pi`` maps to ``-pi``. The result
    is computed in the input's floating dtype (integer input is promoted to the default
    float dtype) and has the input's shape and device. ``pi`` here is ``math.pi``
    rounded to that dtype, so ``wrap_angle(torch.tensor(math.pi, dtype=torch.float32))``
    is exactly ``-float32(pi)``. Values already in ``[-pi, pi)`` are returned unchanged.

    Args:
        angle: tensor of any shape, radians.

    Returns:
        Tensor of the same shape with values in ``[-pi, pi)``.
    """
    if not isinstance(angle, Tensor):
        raise TypeError(f"wrap_angle expects a torch.Tensor, got {type(angle).__name__}")
    if not angle.is_floating_point():
        angle = angle.to(torch.get_default_dtype())
    two_pi = 2.0 * math.pi
    out = torch.remainder(angle + math.pi, two_pi) - math.pi
    # ``remainder`` can round up to exactly 2*pi for tiny negative arguments, which would
    # give +pi; fold such values (and any other rounding spill) back into the interval.
    out = torch.where(out >= math.pi, out - two_pi, out)
    out = torch.where(out < -math.pi, out + two_pi, out)
    # Angles already in range are returned bit-for-bit unchanged.
    in_range = (angle >= -math.pi) & (angle < math.pi)
    return torch.where(in_range, angle, out)


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Validate a box tensor, raising an error that names the argument.

    Checks that ``boxes`` is a floating-point ``torch.Tensor`` of shape ``(N, C)`` with
    ``C >= 7`` (``N == 0`` is allowed), that the seven geometric columns are finite
    (extra columns such as nuScenes velocities may be NaN and are not checked), and that
    the sizes ``l, w, h`` are strictly positive.

    Args:
        boxes: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)``.
        name: argument name used in the error message.

    Raises:
        TypeError: ``boxes`` is not a tensor.
        ValueError: wrong shape or dtype, NaN/inf geometry, or non-positive sizes.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] < BOX_DIM:
        raise ValueError(
            f"{name} must have shape (N, >=7) as (x, y, z, l, w, h, yaw[, ...]), "
            f"got shape {tuple(boxes.shape)}"
        )
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {boxes.dtype}")
    if boxes.shape[0] == 0:
        return
    geometry = boxes[:, :BOX_DIM]
    finite = torch.isfinite(geometry)
    if not bool(finite.all()):
        row = int((~finite).any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"{name} has NaN or inf in its first 7 columns (first bad row: {row}: {geometry[row].tolist()})"
        )
    sizes = geometry[:, 3:6]
    positive = sizes > 0
    if not bool(positive.all()):
        row = int((~positive).any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"{name} has non-positive sizes (l, w, h) (first bad row: {row}: {sizes[row].tolist()})"
        )


def _unit_corners_xy(like: Tensor) -> Tensor:
    """Return the ``(4, 2)`` unit BEV corners on ``like``'s device and dtype."""
    return torch.tensor(_UNIT_CORNERS_XY, dtype=like.dtype, device=like.device)


def box_corners_bev(boxes: Tensor) -> Tensor:
    """Bird's-eye-view corners of boxes, counter-clockwise seen from above.

    Same order as the first four corners of :func:`box_corners`:
    ``0`` front-left, ``1`` rear-left, ``2`` rear-right, ``3`` front-right, where
    "front" is the ``+l/2`` end along the heading and "left" the ``+w/2`` side.

    Args:
        boxes: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` in the LiDAR frame.

    Returns:
        ``(N, 4, 2)`` corner ``(x, y)`` coordinates in the same frame, dtype and device.
    """
    check_boxes(boxes, "boxes")
    local = _unit_corners_xy(boxes) * boxes[:, None, 3:5]  # (N, 4, 2): (+-l/2, +-w/2)
    cos = torch.cos(boxes[:, 6])[:, None]
    sin = torch.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[:, None, 0]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[:, None, 1]
    return torch.stack((x, y), dim=-1)


def box_corners(boxes: Tensor) -> Tensor:
    """Eight 3D corners of boxes.

    Corner order (box frame: ``+x`` along the heading, ``+y`` to the left, ``+z`` up)::

        seen from above (top face 4-7 lies directly above 0-3):

            1 -------------------- 0        ^ +y (left)
            |                      |        |
            |   rear ---> front    |        +---> +x (heading)
            |                      |
            2 -------------------- 3

        projected on the x-z plane (+x to the right):

            5/6 ---------------- 4/7       z + h/2
             |                    |
            1/2 ---------------- 0/3       z - h/2

        0 = front-left-bottom   (+l/2, +w/2, -h/2)
        1 = rear-left-bottom    (-l/2, +w/2, -h/2)
        2 = rear-right-bottom   (-l/2, -w/2, -h/2)
        3 = front-right-bottom  (+l/2, -w/2, -h/2)
        4, 5, 6, 7 = corners 0, 1, 2, 3 moved to the top face (z + h/2).

    The bottom face 0-1-2-3 (and the top face 4-5-6-7) runs counter-clockwise seen from
    above. ``box_corners(b)[:, :4, :2]`` equals ``box_corners_bev(b)``.

    Args:
        boxes: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` in the LiDAR frame.

    Returns:
        ``(N, 8, 3)`` corner coordinates in the same frame, dtype and device.
    """
    bev = box_corners_bev(boxes)  # validates
    bev = torch.cat((bev, bev), dim=1)  # (N, 8, 2)
    half_h = 0.5 * boxes[:, 5:6]
    z_bottom = boxes[:, 2:3] - half_h
    z_top = boxes[:, 2:3] + half_h
    z = torch.cat((z_bottom.expand(-1, 4), z_top.expand(-1, 4)), dim=1)  # (N, 8)
    return torch.cat((bev, z[..., None]), dim=-1)
