"""CenterPoint detectors: CenterPoint-Pillar (PointPillars encoder) and CenterPoint-Voxel
(sparse 3D voxel encoder), both with the SECOND 2D backbone, the SECOND FPN neck and the
CenterPoint head (Yin, Zhou, Krahenbuhl, CVPR 2021).

Each detector is OpenPCDet's chain of named stages, as submodules:

=============  ==========================================  =====================================
stage          CenterPoint-Pillar                          CenterPoint-Voxel
=============  ==========================================  =====================================
``encoder``    voxelisation, :class:`PillarFeatureNet`,    voxelisation, :class:`MeanVFE`,
               :class:`PointPillarsScatter`                :class:`SparseVoxelEncoder`, map_to_bev
``backbone``   :class:`SECONDBackbone`                     :class:`SECONDBackbone`
``neck``       :class:`SECONDFPN`                          :class:`SECONDFPN`
``head``       :class:`CenterPointHead`                    :class:`CenterPointHead`
=============  ==========================================  =====================================

Preprocessing belongs to the model: ``forward(batch)`` reads the point columns it needs
from the batch by name (``x, y, z, intensity`` and, with ``use_time_lag``, ``time_lag``) and
voxelises them on its own grid (its own voxel size and point-cloud range).

Taps (``DetectorOutput.taps``; every BEV grid in the key LiDAR frame):

* pillar: ``pillars`` (voxels: ``(V, C_pfn)`` per-pillar features, ``index`` ``(V, 4)``
  ``(b, z, y, x)``, grid = the pillar grid), ``pillars.num_points`` (voxels: ``(V, 1)``
  float point counts, PointDistiller's importance), ``bev`` (``(B, C_pfn, ny, nx)``);
* voxel: ``voxels`` (voxels: ``(V, C_point)`` mean point features, grid = the voxel grid's
  BEV), ``voxels.num_points``, ``encoder.conv1`` .. ``encoder.conv4`` (voxels: sparse
  features at strides 1, 2, 4, 8 in x, y with their ``index`` on that level and its BEV
  grid), ``bev`` (``(B, C_out * D, ny / 8, nx / 8)``);
* both: ``backbone.0``, ``backbone.1``, ... (each stage's output), ``neck.0``,
  ``neck.1``, ... (each stage upsampled by the FPN, before concatenation), ``neck`` (the
  FPN concatenation; all on the head grid) and ``head.shared`` (the head's shared conv
  output).

Scaling (``ModelConfig``): every channel count is multiplied by ``width_multiplier`` (at
least 1 channel), every block count by ``depth_multiplier`` (rounded up).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill3d.config.schema import DataConfig, ModelConfig
from distill3d.data.loader import Batch
from distill3d.data.voxelize import VoxelGrid
from distill3d.models.backbones.second import SECONDBackbone
from distill3d.models.base import Detector, DetectorOutput, Tap
from distill3d.models.encoders.pillar import PillarFeatureNet, PointPillarsScatter
from distill3d.models.encoders.sparse_voxel import MeanVFE, SparseVoxelEncoder
from distill3d.models.heads.centerpoint import CENTERPOINT_NUSCENES_TASKS, CenterPointHead
from distill3d.models.necks.second_fpn import SECONDFPN, upsample_factor
from distill3d.structures import BEVGrid, Detections

__all__ = [
    "BASE_POINT_FEATURES",
    "CenterPointPillar",
    "CenterPointVoxel",
    "PillarEncoder",
    "VoxelEncoder",
    "default_tasks",
    "scale_depth",
    "scale_width",
]

#: Point columns every CenterPoint detector reads (``time_lag`` is added with ``use_time_lag``).
BASE_POINT_FEATURES: tuple[str, ...] = ("x", "y", "z", "intensity")

_PILLAR_DEFAULTS: dict[str, Any] = {
    "encoder_channels": [64], "blocks_per_stage": [3, 5, 5], "backbone_strides": [2, 2, 2],
    "backbone_filters": [64, 128, 256], "neck_filters": [128, 128, 128],
}
_VOXEL_DEFAULTS: dict[str, Any] = {
    "encoder_channels": [16, 16, 32, 64, 128, 128], "blocks_per_stage": [5, 5], "backbone_strides": [1, 2],
    "backbone_filters": [128, 256], "neck_filters": [256, 256],
}


def scale_width(channels: int, multiplier: float, divisor: int = 1) -> int:
    """``channels * multiplier`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, round(channels * multiplier / divisor) * divisor)


def scale_depth(blocks: int, multiplier: float) -> int:
    """``blocks * multiplier`` rounded up (0 stays 0)."""
    return math.ceil(blocks * multiplier - 1e-9)


def default_tasks(class_names: Sequence[str]) -> list[list[str]]:
    """The default task groups of ``class_names``: CenterPoint's six nuScenes groups
    (restricted to the given classes, empty groups dropped) when every class is a nuScenes
    class; otherwise one task with all classes (OpenPCDet's KITTI / Waymo CenterPoint)."""
    names = list(class_names)
    nuscenes = {n for group in CENTERPOINT_NUSCENES_TASKS for n in group}
    if names and all(n in nuscenes for n in names):
        groups = [[n for n in group if n in names] for group in CENTERPOINT_NUSCENES_TASKS]
        return [g for g in groups if g]
    return [names]


def _cumprod(values: Sequence[int]) -> list[int]:
    """Cumulative products of ``values``."""
    out, acc = [], 1
    for v in values:
        acc *= int(v)
        out.append(acc)
    return out


def _base_grid(grid: VoxelGrid) -> BEVGrid:
    """The BEV grid of a voxel grid (one cell per voxel column)."""
    nx, ny, _ = grid.grid_size
    vx, vy, _ = grid.voxel_size
    x0, y0 = grid.point_cloud_range[:2]
    return BEVGrid(x0, y0, x0 + nx * vx, y0 + ny * vy, ny, nx)


def _level_grid(base: BEVGrid, stride: int, shape: tuple[int, int]) -> BEVGrid:
    """The grid of a map at ``stride`` cells of ``base`` with ``shape`` ``(H, W)`` (which
    may overhang ``base`` when its size is not divisible by ``stride``)."""
    cx, cy = base.cell_size
    h, w = shape
    return BEVGrid(base.x_min, base.y_min, base.x_min + w * cx * stride, base.y_min + h * cy * stride, h, w)


class PillarEncoder(nn.Module):
    """The ``encoder`` stage of CenterPoint-Pillar: :class:`PillarFeatureNet` on dynamic
    pillars and :class:`PointPillarsScatter` to the BEV map."""

    def __init__(self, in_channels: int, grid: VoxelGrid, channels: Sequence[int], with_distance: bool,
                 center_z: bool, max_points: int | None, max_voxels: int | None) -> None:
        super().__init__()
        self.vfe = PillarFeatureNet(in_channels, grid, list(channels), with_distance=with_distance,
                                    center_z=center_z, max_points=max_points, max_voxels=max_voxels)
        self.scatter = PointPillarsScatter(grid.bev_shape)
        self.grid = _base_grid(grid)
        self.out_channels = self.vfe.out_channels
        self.stride = 1

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int) -> tuple[Tensor, dict[str, Tap]]:
        """``(P, C)`` points -> ``(B, C_pfn, ny, nx)`` BEV map and the encoder taps."""
        pillars = self.vfe(points, batch_index, batch_size)
        bev = self.scatter(pillars.features, pillars.coords, batch_size)
        taps = {
            "pillars": Tap(pillars.features, "voxels", self.grid, pillars.coords),
            "pillars.num_points": Tap(pillars.num_points.to(pillars.features.dtype)[:, None], "voxels", self.grid,
                                      pillars.coords),
            "bev": Tap(bev, "bev", self.grid),
        }
        return bev, taps


class VoxelEncoder(nn.Module):
    """The ``encoder`` stage of CenterPoint-Voxel: :class:`MeanVFE` on dynamic voxels, the
    sparse :class:`SparseVoxelEncoder` and ``map_to_bev`` (height compression)."""

    def __init__(self, in_channels: int, grid: VoxelGrid, channels: Sequence[int], blocks: Sequence[int],
                 residual: bool, use_spconv: bool, max_points: int | None, max_voxels: int | None) -> None:
        super().__init__()
        self.vfe = MeanVFE(in_channels, grid, max_points=max_points, max_voxels=max_voxels)
        self.sparse = SparseVoxelEncoder(in_channels, grid, list(channels), list(blocks), residual=residual,
                                         use_spconv=use_spconv)
        self.voxel_grid = _base_grid(grid)
        self.stride = 8
        self.grid = _level_grid(self.voxel_grid, 8, self.sparse.out_shape[1:])
        self.level_grids = {f"conv{i + 1}": _level_grid(self.voxel_grid, 2 ** i, self.sparse.stage_shapes[i][1:])
                            for i in range(4)}
        self.out_channels = self.sparse.bev_channels

    def forward(self, points: Tensor, batch_index: Tensor, batch_size: int) -> tuple[Tensor, dict[str, Tap]]:
        """``(P, C)`` points -> ``(B, C_out * D, ny / 8, nx / 8)`` BEV map and the encoder taps."""
        feats, coords, num_points = self.vfe(points, batch_index, batch_size)
        outs = self.sparse(feats, coords, batch_size)
        bev = self.sparse.map_to_bev(outs["out"])
        taps = {
            "voxels": Tap(feats, "voxels", self.voxel_grid, coords),
            "voxels.num_points": Tap(num_points.to(feats.dtype)[:, None], "voxels", self.voxel_grid, coords),
        }
        for name, grid in self.level_grids.items():
            taps[f"encoder.{name}"] = Tap(outs[name].features, "voxels", grid, outs[name].indices)
        taps["bev"] = Tap(bev, "bev", self.grid)
        return bev, taps


class _CenterPoint(Detector):
    """What both CenterPoint detectors share: point selection, 2D backbone, neck, head,
    loss, decoding and taps. Subclasses build ``self.encoder``."""

    _defaults: dict[str, Any] = _PILLAR_DEFAULTS

    def __init__(self, cfg: ModelConfig, class_names: Sequence[str], point_cloud_range: Sequence[float],
                 predict_velocity: bool = True) -> None:
        super().__init__()
        self.config = dataclasses.replace(cfg)
        self.class_names = tuple(class_names)
        self.point_features: tuple[str, ...] = BASE_POINT_FEATURES + (("time_lag",) if cfg.use_time_lag else ())
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_grid = VoxelGrid(tuple(cfg.voxel_size), self.point_cloud_range)  # type: ignore[arg-type]
        self.encoder: PillarEncoder | VoxelEncoder = self._build_encoder(cfg)
        self._build_2d(cfg, predict_velocity)

    # -- construction ------------------------------------------------------------------

    def _resolved(self, name: str) -> Any:
        value = getattr(self.config, name)
        return self._defaults[name] if value is None else value

    def _w(self, channels: int, divisor: int = 1) -> int:
        return scale_width(channels, self.config.width_multiplier, divisor)

    def _build_encoder(self, cfg: ModelConfig) -> PillarEncoder | VoxelEncoder:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_2d(self, cfg: ModelConfig, predict_velocity: bool) -> None:
        layer_nums = [scale_depth(n, cfg.depth_multiplier) for n in self._resolved("blocks_per_stage")]
        strides = [int(s) for s in self._resolved("backbone_strides")]
        filters = [self._w(c) for c in self._resolved("backbone_filters")]
        neck_filters = [self._w(c) for c in self._resolved("neck_filters")]
        lengths = {"blocks_per_stage": len(layer_nums), "backbone_strides": len(strides),
                   "backbone_filters": len(filters), "neck_filters": len(neck_filters)}
        if len(set(lengths.values())) != 1:
            raise ValueError("the 2D backbone lists need one entry per stage (with the defaults of "
                             f"{cfg.type} for the unset ones), got lengths {lengths}")
        in_stride = self.encoder.stride
        cum = list(_cumprod(strides))
        ups = cfg.neck_upsample_strides
        if ups is None:
            head_stride = cfg.head_stride if cfg.head_stride is not None else in_stride * cum[0]
            ups = [c * in_stride / head_stride for c in cum]
        elif len(ups) != len(strides):
            raise ValueError(f"model.neck_upsample_strides needs {len(strides)} values, got {list(ups)}")
        heads_at = {c * in_stride / u for c, u in zip(cum, ups)}
        if len(heads_at) != 1:
            raise ValueError(f"model.neck_upsample_strides {list(ups)} do not bring the backbone stages "
                             f"(strides {[c * in_stride for c in cum]}) to one stride")
        head_stride_f = heads_at.pop()
        head_stride = round(head_stride_f)
        if abs(head_stride - head_stride_f) > 1e-6 or head_stride < 1:
            raise ValueError(f"the head stride {head_stride_f} must be a whole number of voxels")
        if cfg.head_stride is not None and cfg.head_stride != head_stride:
            raise ValueError(f"model.head_stride {cfg.head_stride} disagrees with neck_upsample_strides "
                             f"{list(ups)} (which give {head_stride})")
        for u in ups:
            try:
                upsample_factor(float(u))
            except ValueError as exc:
                raise ValueError(f"model.neck_upsample_strides: {exc} (head stride {head_stride}, backbone "
                                 f"strides {[c * in_stride for c in cum]})") from None
        base = _base_grid(self.voxel_grid)
        need = in_stride * cum[-1]
        if base.height % need or base.width % need or base.height % head_stride or base.width % head_stride:
            raise ValueError(
                f"the voxel grid is {base.height}x{base.width} cells (range {self.point_cloud_range}, "
                f"voxel size {tuple(self.config.voxel_size)}); it must be divisible by the deepest stride "
                f"{need} and the head stride {head_stride}: change the range, the voxel size or the strides")
        self.backbone = SECONDBackbone(self.encoder.out_channels, layer_nums, strides, filters)
        self.neck = SECONDFPN(filters, [float(u) for u in ups], neck_filters)
        self.backbone_grids = [base.downsample(in_stride * c) for c in cum]
        self.head_stride = head_stride
        self.head_grid = base.downsample(head_stride)
        tasks = self.config.tasks if self.config.tasks is not None else default_tasks(self.class_names)
        unknown = sorted({n for g in tasks for n in g} - set(self.class_names))
        if unknown:
            raise ValueError(f"model.tasks names classes {unknown} that are not in the data's class names "
                             f"{list(self.class_names)}")
        head_kwargs: dict[str, Any] = {
            "share_channels": self._w(cfg.head_channels), "head_channels": self._w(cfg.head_channels),
            "predict_velocity": predict_velocity, "score_threshold": cfg.score_threshold,
            "pre_max_size": cfg.pre_nms_top_k, "nms": cfg.nms_type, "max_detections": cfg.max_detections,
            # per task after NMS: the same cap (CenterPoint's 83 per task is nuScenes' 500 / 6)
            "post_max_size": cfg.max_detections,
        }
        if cfg.nms_threshold is not None:
            head_kwargs["nms_radius" if cfg.nms_type == "circle" else "nms_iou_threshold"] = cfg.nms_threshold
        extra = cfg.options.get("head", {})
        if not isinstance(extra, dict):
            raise ValueError(f"model.options.head must be a mapping of CenterPointHead arguments, got {extra!r}")  # noqa: TRY004
        head_kwargs.update(extra)
        self.tasks = [list(g) for g in tasks]
        self.head = CenterPointHead(self.neck.out_channels, self.tasks, self.class_names, self.head_grid,
                                    **head_kwargs)

    # -- the contract ------------------------------------------------------------------

    def stages(self) -> dict[str, nn.Module]:
        """The named stages, in order: ``encoder``, ``backbone``, ``neck``, ``head``."""
        return {"encoder": self.encoder, "backbone": self.backbone, "neck": self.neck, "head": self.head}

    def select_points(self, batch: Batch) -> Tensor:
        """``(P, C)`` the batch's point columns this model reads (:attr:`point_features`).

        Raises:
            ValueError: the batch lacks a column, naming it and how to fix it.
        """
        names = tuple(batch.point_features)
        missing = [n for n in self.point_features if n not in names]
        if missing:
            hint = (" (multi-sweep input: load the data with sweeps > 1, or set model.use_time_lag=false)"
                    if "time_lag" in missing else "")
            raise ValueError(f"{type(self).__name__} reads point features {list(self.point_features)} but the "
                             f"batch has {list(names)}: missing {missing}{hint}")
        cols = [names.index(n) for n in self.point_features]
        if cols == list(range(len(cols))):
            return batch.points[:, :len(cols)]
        return batch.points[:, cols]

    def forward(self, batch: Batch) -> DetectorOutput:
        """Run the detector on a batch (its tensors on this model's device).

        Returns:
            :class:`DetectorOutput` with the taps of the module docstring, the head
            outputs (one dict per task, see :class:`CenterPointHead`) and the head grid.
        """
        points = self.select_points(batch)
        bev, taps = self.encoder(points, batch.point_batch_index, batch.batch_size)
        stages = self.backbone(bev)
        for i, (x, grid) in enumerate(zip(stages, self.backbone_grids)):
            taps[f"backbone.{i}"] = Tap(x, "bev", grid)
        neck, levels = self.neck(stages, return_levels=True)
        for i, x in enumerate(levels):
            taps[f"neck.{i}"] = Tap(x, "bev", self.head_grid)
        taps["neck"] = Tap(neck, "bev", self.head_grid)
        captured: dict[str, Tensor] = {}
        handle = self.head.shared_conv.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
        try:
            heads = self.head(neck)
        finally:
            handle.remove()
        taps["head.shared"] = Tap(captured["x"], "bev", self.head_grid)
        return DetectorOutput(taps=taps, heads=heads, head_grid=self.head_grid)

    def _labels(self, batch: Batch) -> Tensor:
        """The batch's labels in this model's class order (``-1`` for other classes)."""
        if tuple(batch.class_names) == self.class_names:
            return batch.labels
        lut = torch.full((len(batch.class_names) + 1,), -1, dtype=torch.long, device=batch.labels.device)
        for i, name in enumerate(batch.class_names):
            if name in self.class_names:
                lut[i] = self.class_names.index(name)
        return lut[torch.where(batch.labels >= 0, batch.labels, len(batch.class_names))]

    def loss(self, batch: Batch, output: DetectorOutput) -> dict[str, Tensor]:
        """CenterPoint's loss (:meth:`CenterPointHead.loss`): ``loss`` (total),
        ``heatmap``, ``bbox`` and per task ``task{t}.heatmap`` / ``task{t}.bbox``. GT boxes
        whose centre is outside the head grid are ignored."""
        return self.head.loss(output.heads, batch.boxes, self._labels(batch), batch.box_mask)

    def decode(self, output: DetectorOutput) -> list[Detections]:
        """Detections per sample (key LiDAR frame of the augmented input; labels index
        :attr:`class_names`)."""
        return self.head.decode(output.heads)

    def tap_names(self) -> list[str]:
        names = list(self._encoder_tap_names())
        names += [f"backbone.{i}" for i in range(len(self.backbone_grids))]
        names += [f"neck.{i}" for i in range(len(self.backbone_grids))]
        return names + ["neck", "head.shared"]

    def _encoder_tap_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tap_grids(self) -> dict[str, BEVGrid]:
        """The BEV grid of every tap (known before any forward)."""
        grids: dict[str, BEVGrid] = {}
        enc = self.encoder
        if isinstance(enc, VoxelEncoder):
            grids.update({"voxels": enc.voxel_grid, "voxels.num_points": enc.voxel_grid})
            grids.update({f"encoder.{k}": g for k, g in enc.level_grids.items()})
        else:
            grids.update({"pillars": enc.grid, "pillars.num_points": enc.grid})
        grids["bev"] = enc.grid
        grids.update({f"backbone.{i}": g for i, g in enumerate(self.backbone_grids)})
        grids.update({f"neck.{i}": self.head_grid for i in range(len(self.backbone_grids))})
        grids["neck"] = self.head_grid
        grids["head.shared"] = self.head_grid
        return grids


class CenterPointPillar(_CenterPoint):
    """PointPillars encoder + SECOND backbone + SECOND FPN + CenterPoint head.

    Args:
        cfg: the model config (``type`` ``centerpoint_pillar``); ``voxel_size[2]`` must
            span the z range (one pillar cell in z).
        class_names: the detected classes (decoded labels index them).
        point_cloud_range: the model's range, key LiDAR frame.
        predict_velocity: regress velocities.

    Defaults (full width): PFN ``[64]``, backbone ``[3, 5, 5]`` blocks at strides
    ``[2, 2, 2]`` with ``[64, 128, 256]`` channels, FPN ``[128, 128, 128]`` to the head
    stride (default 2 pillars), head 64 channels.
    """

    _defaults = _PILLAR_DEFAULTS

    def _build_encoder(self, cfg: ModelConfig) -> PillarEncoder:
        channels = list(self._resolved("encoder_channels"))
        # inner PFN layers split their width in two halves: keep it even
        widths = [self._w(c, 1 if i == len(channels) - 1 else 2) for i, c in enumerate(channels)]
        if self.voxel_grid.grid_size[2] != 1:
            raise ValueError(f"centerpoint_pillar: model.voxel_size z ({cfg.voxel_size[2]}) must span the "
                             f"point-cloud range's height ({self.point_cloud_range[5] - self.point_cloud_range[2]}) "
                             "so that a pillar is one cell in z")
        return PillarEncoder(len(self.point_features), self.voxel_grid, widths, cfg.pillar_with_distance,
                             cfg.pillar_center_z, cfg.max_points_per_voxel, cfg.max_voxels)

    def _encoder_tap_names(self) -> list[str]:
        return ["pillars", "pillars.num_points", "bev"]


class CenterPointVoxel(_CenterPoint):
    """Sparse voxel encoder (``VoxelResBackBone8x``) + SECOND backbone + FPN + CenterPoint
    head.

    Args: as :class:`CenterPointPillar` (``type`` ``centerpoint_voxel``).

    Defaults (full width): mean VFE, sparse encoder ``[16, 16, 32, 64, 128, 128]`` with
    ``[2, 2, 2, 2]`` residual blocks (``[1, 2, 2, 2]`` plain), backbone ``[5, 5]`` blocks at
    strides ``[1, 2]`` with ``[128, 256]`` channels, FPN ``[256, 256]`` to the head stride
    (default 8 voxels), head 64 channels.
    """

    _defaults = _VOXEL_DEFAULTS

    def _build_encoder(self, cfg: ModelConfig) -> VoxelEncoder:
        channels = [self._w(c) for c in self._resolved("encoder_channels")]
        if len(channels) != 6:
            raise ValueError(f"centerpoint_voxel: model.encoder_channels needs 6 widths [input, conv1, conv2, "
                             f"conv3, conv4, out], got {cfg.encoder_channels}")
        blocks = cfg.encoder_blocks or ([2, 2, 2, 2] if cfg.encoder_residual else [1, 2, 2, 2])
        blocks = [max(1, scale_depth(b, cfg.depth_multiplier)) for b in blocks]
        nx, ny, _ = self.voxel_grid.grid_size
        if nx % 8 or ny % 8:
            raise ValueError(f"centerpoint_voxel: the voxel grid ({nx}x{ny} in x, y) must be divisible by 8")
        return VoxelEncoder(len(self.point_features), self.voxel_grid, channels, blocks, cfg.encoder_residual,
                            cfg.use_spconv, cfg.max_points_per_voxel, cfg.max_voxels)

    def _encoder_tap_names(self) -> list[str]:
        return ["voxels", "voxels.num_points", "encoder.conv1", "encoder.conv2", "encoder.conv3",
                "encoder.conv4", "bev"]


def detector_from_config(cls: type[_CenterPoint], model_cfg: ModelConfig, data_cfg: DataConfig) -> _CenterPoint:
    """Build ``cls`` from the model and data sections (range: the model's, else the data's;
    velocity: the model's setting, else all datasets but KITTI)."""
    pcr = model_cfg.point_cloud_range if model_cfg.point_cloud_range is not None else data_cfg.point_cloud_range
    velocity = model_cfg.predict_velocity
    if velocity is None:
        velocity = data_cfg.dataset != "kitti"
    return cls(model_cfg, data_cfg.class_names, pcr, predict_velocity=velocity)
