"""The typed schema of an experiment config (what a YAML config file may contain).

Each section is a dataclass; unknown keys and wrong types are rejected by
:func:`distill3d.config.typed.from_dict`. Checks that involve several fields live in
``__post_init__`` and raise :class:`~distill3d.config.typed.FieldError`, which the loader
reports with the file and line (or ``--set`` override) that set the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distill3d.config.typed import FieldError

#: The 10 nuScenes detection classes in the official devkit's order (``DETECTION_NAMES``);
#: the same tuple as ``distill3d.data.nuscenes.NUSCENES_DETECTION_CLASSES`` (a test checks),
#: kept here so that reading a config does not import the data layer.
NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "bus", "trailer", "construction_vehicle",
    "pedestrian", "motorcycle", "bicycle", "traffic_cone", "barrier",
)


def _check_range(name: str, values: tuple[float, ...], size: int) -> None:
    if len(values) != 2 * size:
        raise FieldError(name, f"expected {2 * size} numbers (mins then maxes), got {len(values)}")
    for axis in range(size):
        if not values[axis] < values[axis + size]:
            raise FieldError(name, f"min {values[axis]} must be below max {values[axis + size]} on axis {axis}")


@dataclass
class DataConfig:
    """Where samples come from and what is detected.

    ``point_cloud_range`` is ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in metres,
    in the key LiDAR frame.

    ``synth_scenes`` / ``synth_samples_per_scene`` (``dataset: synthdrive``): generate the
    SynthDrive set with this many scenes / keyframes per scene instead of the preset's
    (``version`` picks the preset: ``v1.0-mini`` mini, ``v1.0-trainval`` small); more
    scenes with fewer keyframes give more varied data for the same number of samples.
    """

    dataset: Literal["synthdrive", "nuscenes", "kitti", "mmdet3d_infos", "openpcdet_infos"] = "synthdrive"
    root: str = ""
    version: str = "v1.0-mini"
    train_split: str = "train"
    val_split: str = "val"
    class_names: list[str] = field(default_factory=lambda: list(NUSCENES_CLASSES))
    point_cloud_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    sweeps: int = 1
    use_cameras: bool = False
    synth_scenes: int | None = None
    synth_samples_per_scene: int | None = None

    def __post_init__(self) -> None:
        _check_range("point_cloud_range", self.point_cloud_range, 3)
        for name in ("synth_scenes", "synth_samples_per_scene"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(name, f"must be >= 1 or null (the preset's), got {value}")
        if self.sweeps < 1:
            raise FieldError("sweeps", f"must be >= 1, got {self.sweeps}")
        if not self.class_names:
            raise FieldError("class_names", "must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise FieldError("class_names", f"has duplicates: {self.class_names}")


@dataclass
class ModelConfig:
    """A detector: its type and the scaling knobs that make a student from a teacher.

    Fields left ``None`` take the default of the detector ``type`` (listed per field,
    pillar / voxel), so that a config names only what it changes. Channel counts are the
    full-width ones: every channel count (encoder, 2D backbone, neck, head) is multiplied by
    ``width_multiplier`` and rounded (at least 1); block counts are multiplied by
    ``depth_multiplier`` and rounded up (timm's width/depth multipliers). A student is the
    teacher's config with smaller numbers (PointDistiller's 4x / 16x students: half and
    quarter width).

    Attributes:
        type: ``centerpoint_pillar`` (PointPillars encoder + CenterPoint head),
            ``centerpoint_voxel`` (sparse 3D voxel encoder + CenterPoint head) or
            ``bevdepth`` (camera, arrives with the camera issue).
        width_multiplier: channel multiplier (> 0).
        depth_multiplier: block-count multiplier (> 0) of ``blocks_per_stage`` and
            ``encoder_blocks``.
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres, key LiDAR
            frame, of the model's own voxel grid; ``None``: ``data.point_cloud_range``.
        voxel_size: ``(dx, dy, dz)`` metres. For pillars ``dz`` must span the whole z range
            (one cell in z).
        max_points_per_voxel: points a pillar/voxel keeps (its first ones in input order,
            as hard voxelisation keeps them); ``None``: all.
        max_voxels: pillars/voxels kept per sample (the first ones by first appearance);
            ``None``: all.
        use_time_lag: feed the ``time_lag`` point column (multi-sweep input) to the
            encoder; the batch must then have it (an error says so otherwise). Without it
            the encoder reads ``x, y, z, intensity``.
        use_spconv: run the sparse 3D convolutions with ``spconv`` when it is importable
            (same weights, same outputs); the default pure-PyTorch path needs nothing
            compiled (voxel detectors only).
        encoder_channels: pillar: the PFN layer widths (default ``[64]``); voxel: the
            sparse encoder widths ``[input, conv1, conv2, conv3, conv4, out]`` (default
            ``[16, 16, 32, 64, 128, 128]``, OpenPCDet's ``VoxelResBackBone8x``).
        encoder_blocks: voxel: blocks of ``conv1..conv4`` (default ``[2, 2, 2, 2]``
            residual, ``[1, 2, 2, 2]`` plain); unused by pillars.
        encoder_residual: voxel: residual blocks (``VoxelResBackBone8x``) or plain
            submanifold convs (``VoxelBackBone8x``).
        pillar_with_distance: pillar: add the point's distance to the sensor as a feature.
        pillar_center_z: pillar: the offset to the pillar centre includes z (``zp``,
            OpenPCDet) besides ``xp, yp`` (mmdetection3d's default leaves it out).
        blocks_per_stage: 3x3 conv blocks after the strided conv of each 2D backbone
            stage (OpenPCDet's ``LAYER_NUMS``; default ``[3, 5, 5]`` / ``[5, 5]``).
        backbone_strides: stride of each 2D backbone stage (default ``[2, 2, 2]`` /
            ``[1, 2]``).
        backbone_filters: channels of each stage (default ``[64, 128, 256]`` /
            ``[128, 256]``).
        neck_upsample_strides: upsampling factor of each stage in the FPN (values below 1
            downsample); ``None``: derived from ``head_stride``.
        neck_filters: channels of each upsampled stage, concatenated (default
            ``[128, 128, 128]`` / ``[256, 256]``).
        head_stride: stride of the head's BEV map in cells of ``voxel_size`` (the "BEV
            stride"; default 2 / 8; a voxel detector's 2D input is already at stride 8);
            must agree with ``neck_upsample_strides`` when both are given.
        head_channels: the CenterPoint head's shared conv channels (64).
        tasks: class-name groups, one head branch each. ``None``: when every class of
            ``data.class_names`` is a nuScenes class, CenterPoint's six groups (car | truck,
            construction_vehicle | bus, trailer | barrier | motorcycle, bicycle |
            pedestrian, traffic_cone) restricted to those classes; otherwise one task with
            all classes (as OpenPCDet's KITTI and Waymo CenterPoint configs).
        score_threshold: detections below this score are dropped at decoding.
        nms_type: ``rotated`` (rotated BEV IoU NMS), ``circle`` (centre distance) or
            ``none``.
        nms_threshold: IoU above which (rotated), or centre distance in metres below which
            (circle), a lower-scored box is suppressed; ``None``: 0.2 IoU (rotated) or
            CenterPoint's nuScenes radius of each task's classes (circle).
        pre_nms_top_k: candidates per task kept (by score) before NMS.
        max_detections: detections kept per sample after NMS, all tasks together (500:
            nuScenes' limit).
        predict_velocity: regress ``(vx, vy)``; ``None``: unless ``data.dataset`` is
            ``kitti`` (KITTI has no velocities).
        options: extra keyword arguments by component, e.g. ``{head: {min_radius: 2}}``
            are passed to the CenterPoint head.
    """

    type: Literal["centerpoint_pillar", "centerpoint_voxel", "bevdepth"] = "centerpoint_pillar"
    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    point_cloud_range: tuple[float, ...] | None = None
    voxel_size: tuple[float, float, float] = (0.2, 0.2, 8.0)
    max_points_per_voxel: int | None = 20
    max_voxels: int | None = 30000
    use_time_lag: bool = False
    use_spconv: bool = False
    encoder_channels: list[int] | None = None
    encoder_blocks: list[int] | None = None
    encoder_residual: bool = True
    pillar_with_distance: bool = False
    pillar_center_z: bool = True
    blocks_per_stage: list[int] | None = None
    backbone_strides: list[int] | None = None
    backbone_filters: list[int] | None = None
    neck_upsample_strides: list[float] | None = None
    neck_filters: list[int] | None = None
    head_stride: int | None = None
    head_channels: int = 64
    tasks: list[list[str]] | None = None
    score_threshold: float = 0.1
    nms_type: Literal["rotated", "circle", "none"] = "rotated"
    nms_threshold: float | None = None
    pre_nms_top_k: int = 1000
    max_detections: int = 500
    predict_velocity: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("width_multiplier", "depth_multiplier"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"must be > 0, got {getattr(self, name)}")
        if self.point_cloud_range is not None:
            _check_range("point_cloud_range", self.point_cloud_range, 3)
        if any(v <= 0 for v in self.voxel_size):
            raise FieldError("voxel_size", f"must be positive, got {list(self.voxel_size)}")
        for name in ("max_points_per_voxel", "max_voxels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(name, f"must be >= 1 or null (no limit), got {value}")
        for name in ("encoder_channels", "backbone_filters", "neck_filters"):
            values = getattr(self, name)
            if values is not None and (not values or any(c < 1 for c in values)):
                raise FieldError(name, f"must be a non-empty list of channel counts >= 1, got {values}")
        if self.encoder_blocks is not None and (len(self.encoder_blocks) != 4
                                                or any(b < 1 for b in self.encoder_blocks)):
            raise FieldError("encoder_blocks", f"must be 4 block counts >= 1 (conv1..conv4), "
                                               f"got {self.encoder_blocks}")
        if self.blocks_per_stage is not None and (not self.blocks_per_stage
                                                  or any(b < 0 for b in self.blocks_per_stage)):
            raise FieldError("blocks_per_stage", f"must be a non-empty list of counts >= 0, "
                                                 f"got {self.blocks_per_stage}")
        if self.backbone_strides is not None and (not self.backbone_strides
                                                  or any(s < 1 for s in self.backbone_strides)):
            raise FieldError("backbone_strides", f"must be a non-empty list of strides >= 1, "
                                                 f"got {self.backbone_strides}")
        if self.neck_upsample_strides is not None and any(s <= 0 for s in self.neck_upsample_strides):
            raise FieldError("neck_upsample_strides", f"must be > 0 each, got {self.neck_upsample_strides}")
        lengths = {name: len(v) for name in ("blocks_per_stage", "backbone_strides", "backbone_filters",
                                             "neck_upsample_strides", "neck_filters")
                   if (v := getattr(self, name)) is not None}
        if len(set(lengths.values())) > 1:
            name = next(n for n in reversed(list(lengths)) if lengths[n] != next(iter(lengths.values())))
            raise FieldError(name, "the 2D backbone lists need one entry per stage, got lengths "
                                   + ", ".join(f"{k}={v}" for k, v in lengths.items()))
        if self.head_stride is not None and self.head_stride < 1:
            raise FieldError("head_stride", f"must be >= 1, got {self.head_stride}")
        if self.head_channels < 1:
            raise FieldError("head_channels", f"must be >= 1, got {self.head_channels}")
        if self.tasks is not None:
            if not self.tasks or any(not group for group in self.tasks):
                raise FieldError("tasks", f"must be a non-empty list of non-empty class-name groups, got {self.tasks}")
            names = [n for group in self.tasks for n in group]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise FieldError("tasks", f"a class may be in one task only, repeated: {repeated}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise FieldError("score_threshold", f"must be in [0, 1), got {self.score_threshold}")
        if self.nms_threshold is not None and self.nms_threshold < 0:
            raise FieldError("nms_threshold", f"must be >= 0, got {self.nms_threshold}")
        for name in ("pre_nms_top_k", "max_detections"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Optimisation, schedule and bookkeeping of a training run (``distill3d train``).

    Steps are optimiser steps (one batch per rank each); the learning rate is updated every
    step. ``epochs * steps_per_epoch`` is the schedule's length, where ``steps_per_epoch``
    is the loader's length per rank, capped by ``max_steps_per_epoch``.

    Attributes:
        epochs: passes over the training split.
        batch_size: samples per step **per process** (the global batch is
            ``batch_size * world_size`` under torchrun).
        val_batch_size: samples per inference step (``None``: ``batch_size``).
        num_workers: data-loader processes per rank.
        optimizer: ``adamw`` (decoupled weight decay).
        lr: the peak learning rate (one-cycle's ``max_lr``; cosine/constant: the rate after
            warm-up).
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's ``(beta1, beta2)``; with one-cycle and ``moms``, beta1 follows
            ``moms`` instead.
        schedule: ``onecycle`` (OpenPCDet / mmdetection3d "cyclic": cosine from
            ``lr / div_factor`` up to ``lr`` over ``pct_start`` of the steps, then cosine down
            to ``lr / div_factor / final_div_factor``), ``cosine`` (linear warm-up over
            ``warmup_epochs`` from ``lr * warmup_ratio``, then cosine down to
            ``lr * min_lr_ratio``) or ``constant`` (with the same optional warm-up).
        div_factor: one-cycle: initial rate is ``lr / div_factor``.
        pct_start: one-cycle: share of the steps spent going up, in (0, 1).
        final_div_factor: one-cycle: final rate is ``lr / div_factor / final_div_factor``.
        moms: one-cycle: AdamW beta1 goes ``moms[0] -> moms[1]`` while the rate goes up and
            back while it goes down (OpenPCDet's ``MOMS``); ``null``: beta1 stays ``betas[0]``.
        warmup_epochs: cosine/constant: length of the linear warm-up in epochs (may be
            fractional; 0: none).
        warmup_ratio: cosine/constant: the warm-up starts at ``lr * warmup_ratio``.
        min_lr_ratio: cosine: the final rate is ``lr * min_lr_ratio``.
        grad_clip: clip the global gradient L2 norm to this value (``null``: no clipping).
        amp: mixed precision (``torch.autocast`` + ``GradScaler``) on CUDA; ignored, with a
            log line, on CPU.
        amp_dtype: autocast dtype on CUDA (``bfloat16`` needs no loss scaling).
        ema: keep an exponential moving average of the weights, used for evaluation and
            saved in checkpoints (``test`` uses it when present).
        ema_decay: EMA decay ``d``; the weights average over about ``1 / (1 - d)`` steps.
        ema_tau: EMA warm-up: step ``t`` uses ``d * (1 - exp(-t / ema_tau))`` (YOLOv5's
            ramp), so early averages do not keep the random init; 0: constant ``d``.
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under torchrun on CUDA (it does
            not run on CPU: ignored there with a warning).
        find_unused_parameters: DistributedDataParallel's option, for models whose forward
            leaves some trainable parameters unused (slower; off unless needed).
        deterministic: ``torch.use_deterministic_algorithms(True)``, no cuDNN benchmark;
            with the seeded RNGs, a run and its resumed copy give the same losses.
        num_threads: intra-op CPU threads per process (``null``: the CPUs this process may
            use, divided among the processes of the node under torchrun).
        augment: standard LiDAR training augmentation (random flips, global rotation and
            scaling); the range filters are always applied.
        eval_interval: evaluate every this many epochs (and after the last one).
        eval_split: the split evaluated during training and by ``test`` by default
            (``null``: ``data.val_split``).
        best_metric: the metric that selects ``best.pth`` (e.g. ``NDS`` or ``mAP``;
            ``null``: the evaluator's primary metric, if it has one).
        best_mode: ``max`` or ``min``: which direction of ``best_metric`` is better.
        log_interval: steps between progress lines, ``metrics.jsonl`` and TensorBoard points.
        checkpoint_interval: write ``epoch_N.pth`` every this many epochs (``last.pth`` is
            written after every epoch).
        checkpoint_steps: also write ``last.pth`` every this many steps within an epoch, so
            that ``--resume`` continues mid-epoch (``null``: epoch ends only).
        keep_checkpoints: how many ``epoch_N.pth`` to keep (the newest; ``null``: all;
            ``last.pth`` and ``best.pth`` are always kept).
        max_steps_per_epoch: cap on the steps of an epoch (quick runs, smoke tests).
    """

    epochs: int = 20
    batch_size: int = 4
    val_batch_size: int | None = None
    num_workers: int = 2
    optimizer: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    div_factor: float = 10.0
    pct_start: float = 0.4
    final_div_factor: float = 1e4
    moms: tuple[float, float] | None = (0.95, 0.85)
    warmup_epochs: float = 0.0
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 1e-3
    grad_clip: float | None = 35.0
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    ema: bool = False
    ema_decay: float = 0.999
    ema_tau: float = 500.0
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    deterministic: bool = False
    num_threads: int | None = None
    augment: bool = True
    eval_interval: int = 1
    eval_split: str | None = None
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    log_interval: int = 10
    checkpoint_interval: int = 1
    checkpoint_steps: int | None = None
    keep_checkpoints: int | None = 5
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_interval", "log_interval", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("val_batch_size", "num_threads", "checkpoint_steps", "max_steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(name, f"must be >= 1 or null, got {value}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 0:
            raise FieldError("keep_checkpoints", f"must be >= 0 or null (keep all), got {self.keep_checkpoints}")
        if self.num_workers < 0:
            raise FieldError("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.lr <= 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise FieldError("betas", f"must be two values in [0, 1), got {list(self.betas)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise FieldError("grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        if self.div_factor < 1.0:
            raise FieldError("div_factor", f"must be >= 1, got {self.div_factor}")
        if not 0.0 < self.pct_start < 1.0:
            raise FieldError("pct_start", f"must be in (0, 1), got {self.pct_start}")
        if self.final_div_factor < 1.0:
            raise FieldError("final_div_factor", f"must be >= 1, got {self.final_div_factor}")
        if self.moms is not None and not all(0.0 <= m < 1.0 for m in self.moms):
            raise FieldError("moms", f"must be two values in [0, 1) or null, got {list(self.moms)}")
        if self.warmup_epochs < 0:
            raise FieldError("warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs > self.epochs:
            raise FieldError("warmup_epochs", f"must not exceed epochs ({self.epochs}), got {self.warmup_epochs}")
        if not 0.0 < self.warmup_ratio <= 1.0:
            raise FieldError("warmup_ratio", f"must be in (0, 1], got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise FieldError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.ema_decay < 1.0:
            raise FieldError("ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        if self.ema_tau < 0:
            raise FieldError("ema_tau", f"must be >= 0, got {self.ema_tau}")
        if self.best_metric is not None and not self.best_metric.strip():
            raise FieldError("best_metric", "must be a metric name or null, got an empty string")
        if self.eval_split is not None and not self.eval_split.strip():
            raise FieldError("eval_split", "must be a split name or null, got an empty string")


@dataclass
class TermConfig:
    """One distillation term: student tap -> adapter -> alignment -> loss against a teacher tap.

    Attributes:
        name: the term's name; its value is logged as ``kd.<name>``.
        student: the student's input: a tap name of the detector (``pillars``, ``bev``,
            ``backbone.0``, ``neck``, ...), ``heads`` (the head outputs) or
            ``module:<path>`` (the output of any submodule, by its ``named_modules`` path,
            captured with a forward hook).
        teacher: the teacher's input, in the same forms.
        loss: a registered loss name (``distill3d distill --list-losses`` lists them).
        weight: multiplies the loss.
        adapter: KD-only module applied to the student's input first (``conv1x1``,
            ``conv3x3``, ``conv1x1_bn_relu``, ``upsample_conv``, ``mlp``, ``linear``;
            ``null``: none).
        adapter_upsample: ``upsample_conv``'s factor.
        align: which grid BEV maps of different grids are resampled to: ``teacher``,
            ``student``, ``finer`` or ``coarser``.
        params: the loss's own parameters.
    """

    name: str
    student: str
    teacher: str
    loss: str
    weight: float = 1.0
    adapter: str | None = None
    adapter_upsample: int = 1
    align: Literal["teacher", "student", "finer", "coarser"] = "teacher"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise FieldError("weight", f"term '{self.name}': must be >= 0, got {self.weight}")
        for side in ("student", "teacher"):
            if not getattr(self, side).strip():
                raise FieldError(side, f"term '{self.name}': must name a tap, 'heads' or 'module:<path>'")
        if self.adapter_upsample < 1:
            raise FieldError("adapter_upsample", f"term '{self.name}': must be >= 1, got {self.adapter_upsample}")


@dataclass
class LabelKDConfig:
    """SparseKD's label KD: confident teacher boxes join the student's GT targets.

    Attributes:
        score_threshold: a teacher box joins when its score is at least this; one number
            for every class or ``{class name: threshold}`` (classes not listed never join).
        dedup: drop a teacher box whose centre lies in the same head cell as a GT centre
            (the GT keeps the slot).
    """

    score_threshold: float | dict[str, float] = 0.6
    dedup: bool = True

    def __post_init__(self) -> None:
        values = self.score_threshold.values() if isinstance(self.score_threshold, dict) else [self.score_threshold]
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise FieldError("score_threshold", f"must be in [0, 1], got {self.score_threshold}")


@dataclass
class StudentInputConfig:
    """A transformation of the student's copy of each batch (the teacher sees the original).

    Attributes:
        beam_keep_every: LiDAR beam-gap distillation: the student keeps every n-th beam
            of the scan (beams assigned by elevation angle), 1 = all beams.
        beams: the sensor's beam count (32 for nuScenes, 64 for KITTI HDL-64E; SynthDrive
            in the nuScenes layout: 32).
        beam_offset: which beam of each group of ``beam_keep_every`` is kept.
    """

    beam_keep_every: int = 1
    beams: int = 32
    beam_offset: int = 0

    def __post_init__(self) -> None:
        if self.beam_keep_every < 1:
            raise FieldError("beam_keep_every", f"must be >= 1, got {self.beam_keep_every}")
        if self.beams < 1:
            raise FieldError("beams", f"must be >= 1, got {self.beams}")
        if not 0 <= self.beam_offset < self.beam_keep_every:
            raise FieldError("beam_offset", f"must be in [0, beam_keep_every), got {self.beam_offset}")


@dataclass
class DistillConfig:
    """Knowledge distillation: the teacher and the terms that connect it to the student.

    Attributes:
        method: the method's name (a preset under ``configs/methods`` when given with
            ``--method``), recorded in reports.
        teacher_config: the teacher's config (a shipped name such as
            ``synthdrive/centerpoint_pillar_teacher`` or a path); its ``model`` section
            builds the teacher, the student's ``data`` section is used for both.
        teacher_checkpoint: the teacher's weights (``--teacher-ckpt`` overrides).
        teacher_bn_mode: ``eval`` (running statistics) or ``train`` (batch statistics,
            as PointDistiller's and SparseKD's code run their teachers); either way the
            teacher's weights and running statistics never change.
        teacher_guided_init: SparseKD's TGI: initialise the student with the teacher's
            weights narrowed to its shapes.
        label_kd: SparseKD's label KD (``null``: off).
        student_input: a transformation of the student's input (beam-gap KD).
        cache_dir: a teacher cache written by ``distill3d cache-teacher``; read when it
            matches the teacher and the data, refused when stale.
        terms: the distillation terms.
    """

    method: str | None = None
    teacher_config: str | None = None
    teacher_checkpoint: str | None = None
    teacher_bn_mode: Literal["eval", "train"] = "eval"
    teacher_guided_init: bool = False
    label_kd: LabelKDConfig | None = None
    student_input: StudentInputConfig | None = None
    cache_dir: str | None = None
    terms: list[TermConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [t.name for t in self.terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise FieldError("terms", f"term names must be unique, repeated: {duplicates}")


@dataclass
class ExperimentConfig:
    """The root of every config file."""

    name: str = "experiment"
    seed: int = 0
    work_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig | None = None
