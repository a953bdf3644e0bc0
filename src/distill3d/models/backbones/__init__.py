"""2D BEV backbones."""

from distill3d.models.backbones.second import SECONDBackbone, conv_bn_relu

__all__ = ["SECONDBackbone", "conv_bn_relu"]
