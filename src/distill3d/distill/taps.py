"""Where a distillation term's inputs come from: a detector's named taps, its head outputs, or
any submodule's output captured by a forward hook.

A term side is written as

* ``<tap>``: a name in ``DetectorOutput.taps`` (``pillars``, ``bev``, ``backbone.0``,
  ``neck``, ...);
* ``heads``: the head outputs as :class:`~distill3d.distill.context.HeadMaps`;
* ``module:<path>``: the output of the submodule at ``<path>`` (as ``named_modules`` names
  it) during the model's forward, so that a detector can be distilled without editing it.
  A 4-D output is taken as a BEV map ``(B, C, H, W)`` covering the model's BEV area (the
  area of its head grid, or of any of its BEV taps), with the output's own ``H x W``; a 2-D
  output ``(V, C)`` is taken as per-item features without coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from distill3d.distill.context import HeadMaps
from distill3d.models.base import DetectorOutput, Tap
from distill3d.structures import BEVGrid

HEADS = "heads"
MODULE_PREFIX = "module:"


@dataclass(frozen=True)
class TapSpec:
    """A parsed term side: ``kind`` is ``tap``, ``heads`` or ``module``; ``name`` the tap
    name or module path."""

    kind: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TapSpec:
        text = text.strip()
        if text == HEADS:
            return cls("heads", HEADS)
        if text.startswith(MODULE_PREFIX):
            path = text[len(MODULE_PREFIX):].strip()
            if not path:
                raise ValueError(f"{text!r}: 'module:' needs a submodule path, e.g. 'module:backbone.blocks.0'")
            return cls("module", path)
        return cls("tap", text)

    def __str__(self) -> str:
        return {"heads": HEADS, "module": f"{MODULE_PREFIX}{self.name}"}.get(self.kind, self.name)


class ModuleRecorder:
    """Forward hooks that keep the latest output of named submodules of one model.

    Args:
        model: the model whose submodules are hooked.
        paths: module paths (``named_modules`` names).

    Raises:
        ValueError: a path that names no submodule, with the closest existing paths.
    """

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, Any] = {}
        self._handles = []
        for path in paths:
            if path not in modules:
                import difflib

                close = difflib.get_close_matches(path, [n for n in modules if n], n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"module path {path!r} is not a submodule of {type(model).__name__}{hint}")
            self._handles.append(modules[path].register_forward_hook(self._hook(path)))

    def _hook(self, path: str) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[path] = output

        return record

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def model_bev_area(model: nn.Module, output: DetectorOutput | None = None) -> BEVGrid | None:
    """A grid giving the BEV area of ``model`` (its head grid, else any BEV tap's grid)."""
    if output is not None and output.head_grid is not None:
        return output.head_grid
    grid = getattr(model, "head_grid", None)
    if isinstance(grid, BEVGrid):
        return grid
    if output is not None:
        for tap in output.taps.values():
            if tap.grid is not None:
                return tap.grid
    return None


def resolve(spec: TapSpec, model: nn.Module, output: DetectorOutput, recorder: ModuleRecorder | None,
            owner: str) -> Tap | HeadMaps:
    """The input of one term side after a forward of ``model``.

    Args:
        spec: the parsed side.
        model: the detector (for module taps' grid and head tasks).
        output: its forward output.
        recorder: the model's module recorder (module taps).
        owner: ``student`` or ``teacher``, for messages.

    Raises:
        KeyError: a tap the output lacks, listing the available ones.
        ValueError: a module output that is not a tensor of a supported rank.
    """
    if spec.kind == "heads":
        if not output.heads or output.head_grid is None:
            raise KeyError(f"the {owner} has no head outputs with a grid, so 'heads' cannot be distilled")
        tasks = [tuple(t) for t in getattr(getattr(model, "head", None), "tasks", ())]
        if not tasks:
            tasks = [tuple(getattr(model, "class_names", ()))]
        return HeadMaps(list(output.heads), output.head_grid, tasks)
    if spec.kind == "tap":
        if spec.name not in output.taps:
            raise KeyError(f"the {owner} has no tap {spec.name!r}; its taps: {', '.join(sorted(output.taps))}, "
                           f"'heads', or 'module:<path>'")
        return output.taps[spec.name]
    if recorder is None or spec.name not in recorder.outputs:
        raise KeyError(f"the {owner}'s module {spec.name!r} did not run in this forward")
    value = recorder.outputs[spec.name]
    if not isinstance(value, Tensor):
        raise ValueError(f"the {owner}'s module {spec.name!r} returned {type(value).__name__}, not a tensor; "
                         "hook a submodule that returns one")
    if value.dim() == 4:
        area = model_bev_area(model, output)
        if area is None:
            raise ValueError(f"the {owner}'s module {spec.name!r} returns a 4-D map but the model has no BEV "
                             "grid to place it on")
        grid = BEVGrid(area.x_min, area.y_min, area.x_max, area.y_max, int(value.shape[2]), int(value.shape[3]))
        return Tap(value, "bev", grid)
    if value.dim() == 2:
        return Tap(value, "other")
    raise ValueError(f"the {owner}'s module {spec.name!r} returns a {value.dim()}-D tensor; module taps must be "
                     "(B, C, H, W) BEV maps or (V, C) features")
