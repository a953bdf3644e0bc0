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

    def __post_init__(self) -> None:
        _check_range("point_cloud_range", self.point_cloud_range, 3)
        if self.sweeps < 1:
            raise FieldError("sweeps", f"must be >= 1, got {self.sweeps}")
        if not self.class_names:
            raise FieldError("class_names", "must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise FieldError("class_names", f"has duplicates: {self.class_names}")


@dataclass
class ModelConfig:
    """A detector: its type and the scaling knobs that make a student from a teacher."""

    type: Literal["centerpoint_pillar", "centerpoint_voxel", "bevdepth"] = "centerpoint_pillar"
    width_multiplier: float = 1.0
    blocks_per_stage: list[int] = field(default_factory=lambda: [3, 5, 5])
    voxel_size: tuple[float, float, float] = (0.2, 0.2, 8.0)
    max_points_per_voxel: int = 20
    max_voxels: int = 30000
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.width_multiplier <= 0:
            raise FieldError("width_multiplier", f"must be > 0, got {self.width_multiplier}")
        if any(v <= 0 for v in self.voxel_size):
            raise FieldError("voxel_size", f"must be positive, got {list(self.voxel_size)}")
        if any(b < 1 for b in self.blocks_per_stage):
            raise FieldError("blocks_per_stage", f"must be >= 1 each, got {self.blocks_per_stage}")


@dataclass
class TrainConfig:
    """Optimisation, schedule and bookkeeping of a training run."""

    epochs: int = 20
    batch_size: int = 4
    num_workers: int = 2
    optimizer: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    grad_clip: float | None = 35.0
    amp: bool = True
    ema: bool = False
    sync_batchnorm: bool = False
    deterministic: bool = False
    eval_interval: int = 1
    log_interval: int = 10
    checkpoint_interval: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_interval", "log_interval", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise FieldError("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.lr <= 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise FieldError("grad_clip", f"must be > 0 or null, got {self.grad_clip}")


@dataclass
class TermConfig:
    """One distillation term: student tap -> adapter -> loss against a teacher tap."""

    name: str
    student: str
    teacher: str
    loss: str
    weight: float = 1.0
    adapter: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise FieldError("weight", f"term '{self.name}': must be >= 0, got {self.weight}")


@dataclass
class DistillConfig:
    """Knowledge distillation: the teacher and the terms that connect it to the student."""

    method: str | None = None
    teacher_config: str | None = None
    teacher_checkpoint: str | None = None
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
