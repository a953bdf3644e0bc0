"""Knowledge distillation: the distiller, adapters, alignment, masks, losses, methods and the teacher cache."""
