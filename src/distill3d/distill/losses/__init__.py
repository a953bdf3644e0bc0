"""Distillation losses, built by name (:func:`build_loss`)."""

from distill3d.distill.losses.base import (
    KDLoss,
    build_loss,
    loss_class,
    loss_names,
    loss_parameters,
    register_loss,
)

__all__ = ["KDLoss", "build_loss", "loss_class", "loss_names", "loss_parameters", "register_loss"]
