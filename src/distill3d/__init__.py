"""distill3d: knowledge distillation for 3D object detectors, in pure PyTorch."""

__version__ = "0.1.0"
