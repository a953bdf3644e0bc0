"""Build a detector by name from the config (``model.type``)."""

from __future__ import annotations

from collections.abc import Callable

from distill3d.config.schema import DataConfig, ModelConfig
from distill3d.errors import ConfigError
from distill3d.models.base import Detector

__all__ = ["DETECTOR_TYPES", "build_detector"]


def _pillar(model_cfg: ModelConfig, data_cfg: DataConfig) -> Detector:
    from distill3d.models.centerpoint import CenterPointPillar, detector_from_config

    return detector_from_config(CenterPointPillar, model_cfg, data_cfg)


def _voxel(model_cfg: ModelConfig, data_cfg: DataConfig) -> Detector:
    from distill3d.models.centerpoint import CenterPointVoxel, detector_from_config

    return detector_from_config(CenterPointVoxel, model_cfg, data_cfg)


def _bevdepth(model_cfg: ModelConfig, data_cfg: DataConfig) -> Detector:
    raise ConfigError("model.type 'bevdepth' is not available yet: the camera detector arrives with the "
                      "camera issue. Use 'centerpoint_pillar' or 'centerpoint_voxel'.")


#: ``model.type`` -> builder.
DETECTOR_TYPES: dict[str, Callable[[ModelConfig, DataConfig], Detector]] = {
    "centerpoint_pillar": _pillar,
    "centerpoint_voxel": _voxel,
    "bevdepth": _bevdepth,
}


def build_detector(model_cfg: ModelConfig, data_cfg: DataConfig) -> Detector:
    """The detector of ``model_cfg.type``, sized by ``model_cfg`` for ``data_cfg``'s classes
    and (unless the model sets its own) point-cloud range.

    Raises:
        ConfigError: an unknown or unavailable type, or settings that do not fit together
            (e.g. a grid not divisible by the network's strides), with the reason.
    """
    builder = DETECTOR_TYPES.get(model_cfg.type)
    if builder is None:
        raise ConfigError(f"unknown model.type {model_cfg.type!r}; known: {sorted(DETECTOR_TYPES)}")
    try:
        return builder(model_cfg, data_cfg)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"model ({model_cfg.type}): {exc}") from exc
