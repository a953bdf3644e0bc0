"""Pictures of a run report, drawn headless with matplotlib's object API.

Every figure is a :class:`matplotlib.figure.Figure` on its own
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg` (no pyplot, no global state, no
display), rendered to PNG in memory and written with
:func:`~distill3d.atomic_io.atomic_write_bytes`. Each ``plot_*`` function returns the path
it wrote.

* :func:`plot_bev_detections`: LiDAR points, GT boxes and each model's detections from
  above, one panel per model;
* :func:`plot_training_curves`: losses against steps and evaluation metrics against
  epochs, from ``metrics.jsonl`` (:mod:`distill3d.engine.logging`);
* :func:`plot_bev_heatmaps`: BEV maps (:class:`~distill3d.structures.BEVGrid` layout) in
  metric coordinates;
* :func:`plot_importance_points`: selected items (e.g. PointDistiller's top-N pillars)
  coloured by weight.

Coordinates are the key LiDAR frame, metres: x to the right, y up (seen from above).
Boxes are rows ``(x, y, z, l, w, h, yaw, ...)`` (geometric centre, yaw counter-clockwise
from +x; see :mod:`distill3d.geometry.boxes`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from distill3d.atomic_io import atomic_write_bytes
from distill3d.engine.logging import read_metrics
from distill3d.geometry.boxes import box_corners_bev
from distill3d.structures import BEVGrid, Detections

__all__ = [
    "CLASS_COLOURS",
    "GT_COLOUR",
    "bev_image",
    "box_segments",
    "class_colour",
    "load_records",
    "plot_bev_detections",
    "plot_bev_heatmaps",
    "plot_importance_points",
    "plot_training_curves",
    "save_figure",
]

ArrayLike = torch.Tensor | np.ndarray
Extent = tuple[float, float, float, float]

#: Colours of the nuScenes detection classes (those of ``docs/images`` where they do not
#: clash with :data:`GT_COLOUR`: pedestrians are pink here, not green).
CLASS_COLOURS: Mapping[str, str] = {
    "car": "#2050ff", "truck": "#ff7f0e", "bus": "#d62728", "trailer": "#8c564b",
    "construction_vehicle": "#e6b800", "pedestrian": "#ff1493", "motorcycle": "#9467bd",
    "bicycle": "#8b008b", "traffic_cone": "#ff4500", "barrier": "#17becf",
}
#: Colour of the GT boxes.
GT_COLOUR = "#00b000"
_FALLBACK_COLOURS = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                     "#bcbd22", "#17becf", "#7f7f7f", "#000000")
_RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")
_POINT_COLOUR = "#9a9a9a"
DEFAULT_EXTENT: Extent = (-51.2, -51.2, 51.2, 51.2)


# --------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically (readable, 0644) to
    ``path``; missing folders are created. Returns the path."""
    target = Path(path)
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(target, buffer.getvalue())
    os.chmod(target, 0o644)
    return target


def _new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure on an Agg canvas with constrained layout."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _numpy(value: ArrayLike | Sequence[Any] | None, name: str) -> np.ndarray | None:
    """``value`` as a float64 numpy array (tensors detached and moved to the CPU)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a tensor or array, got {type(value).__name__}") from exc


def class_colour(label: int, class_names: Sequence[str]) -> str:
    """The colour of class index ``label``: :data:`CLASS_COLOURS` for the nuScenes names,
    a fixed palette by index otherwise."""
    if 0 <= label < len(class_names) and class_names[label] in CLASS_COLOURS:
        return CLASS_COLOURS[class_names[label]]
    return _FALLBACK_COLOURS[label % len(_FALLBACK_COLOURS)]


def _class_name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label] if 0 <= label < len(class_names) else f"class {label}"


def box_segments(boxes: ArrayLike | None) -> np.ndarray:
    """Line segments that draw boxes from above: the four edges and a heading tick from
    the centre to the middle of the front edge.

    Args:
        boxes: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` (tensor or array), or
            ``None``.

    Returns:
        ``(N, 5, 2, 2)`` float64: per box, 5 segments of 2 ``(x, y)`` end points (edges
        front-left -> rear-left -> rear-right -> front-right -> front-left, then the tick).
    """
    array = _numpy(boxes, "boxes")
    if array is None or array.size == 0:
        return np.zeros((0, 5, 2, 2))
    corners = box_corners_bev(torch.from_numpy(np.atleast_2d(array))).numpy()  # (N, 4, 2)
    edges = np.stack([corners, np.roll(corners, -1, axis=1)], axis=2)  # (N, 4, 2, 2)
    centre = corners.mean(axis=1)
    front = 0.5 * (corners[:, 0] + corners[:, 3])
    tick = np.stack([centre, front], axis=1)[:, None]  # (N, 1, 2, 2)
    return np.concatenate([edges, tick], axis=1)


def _draw_boxes(ax: Any, boxes: ArrayLike | None, colours: str | np.ndarray, lw: float = 1.0,
                zorder: float = 3.0) -> int:
    """Outline boxes (with heading ticks) on ``ax``; ``colours`` is one colour or an
    ``(N, 4)`` RGBA array, one row per box. Returns the number of boxes drawn."""
    segments = box_segments(boxes)
    if not len(segments):
        return 0
    per_segment = colours if isinstance(colours, str) else np.repeat(np.asarray(colours, float), 5, axis=0)
    ax.add_collection(LineCollection(segments.reshape(-1, 2, 2), colors=per_segment, linewidths=lw,
                                     zorder=zorder))
    return len(segments)


def _subsample_points(points: ArrayLike | None, extent: Extent | None, max_points: int) -> np.ndarray:
    """The ``(x, y)`` of the points inside ``extent``, at most ``max_points`` of them (a
    fixed-seed random subset, so the picture is reproducible)."""
    array = _numpy(points, "points")
    if array is None or array.size == 0:
        return np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"points must be (N, >=2), got shape {array.shape}")
    xy = array[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    if extent is not None:
        x0, y0, x1, y1 = extent
        xy = xy[(xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)]
    if len(xy) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(xy), size=max_points, replace=False))
        xy = xy[keep]
    return xy


def _draw_points(ax: Any, xy: np.ndarray, size: float = 0.5, alpha: float = 1.0) -> None:
    if len(xy):
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=_POINT_COLOUR, alpha=alpha, linewidths=0, zorder=1)


def _set_metric_axes(ax: Any, extent: Extent) -> None:
    x0, y0, x1, y1 = extent
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("x, m")
    ax.set_ylabel("y, m")
    ax.grid(alpha=0.2, lw=0.5)


def _check_extent(extent: Sequence[float]) -> Extent:
    x0, y0, x1, y1 = (float(v) for v in extent)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"extent must be (x_min, y_min, x_max, y_max) with max > min, got {tuple(extent)}")
    return (x0, y0, x1, y1)


def _score_alpha(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Outline opacity of detections: 0.35 at the threshold, 1.0 at score 1."""
    span = max(1.0 - threshold, 1e-6)
    return 0.35 + 0.65 * np.clip((scores - threshold) / span, 0.0, 1.0)


# --------------------------------------------------------------------------- detections


def _detections_above(det: Detections, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes, scores, labels)`` of the detections with ``score >= threshold``, lowest
    score first (so that confident boxes are drawn on top)."""
    scores = det.scores.detach().to("cpu", torch.float64).numpy()
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(scores[keep], kind="stable")]
    boxes = det.boxes.detach().to("cpu", torch.float64).numpy()[keep]
    labels = det.labels.detach().cpu().numpy().astype(np.int64)[keep]
    return boxes, scores[keep], labels


def plot_bev_detections(path: str | os.PathLike[str], points: ArrayLike | None, gt_boxes: ArrayLike | None,
                        panels: Mapping[str, Detections], *, class_names: Sequence[str],
                        score_threshold: float = 0.3, extent: Sequence[float] = DEFAULT_EXTENT,
                        title: str | None = None, max_points: int = 30_000, panel_size: float = 5.0,
                        dpi: int = 100) -> Path:
    """One sample seen from above: one panel per model (e.g. ``teacher``, ``student``,
    ``distilled``), each with the LiDAR points (grey dots, at most ``max_points``), the
    GT boxes (green outlines with a heading tick) and that model's detections with
    ``score >= score_threshold`` (outlined in their class colour, more opaque when more
    confident).

    Args:
        path: the PNG to write.
        points: ``(N, >=2)`` points (x, y first) or ``None``.
        gt_boxes: ``(M, >=7)`` GT boxes or ``None``.
        panels: model name -> its detections of this sample (same frame as the points).
        class_names: what detection labels index.
        extent: ``(x_min, y_min, x_max, y_max)`` shown, metres.

    Returns:
        ``path``.
    """
    extent = _check_extent(extent)
    names = list(panels) or ["(no model)"]
    xy = _subsample_points(points, extent, max_points)
    fig = _new_figure(panel_size * len(names), panel_size + 0.4, dpi)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        _draw_points(ax, xy)
        n_gt = _draw_boxes(ax, gt_boxes, GT_COLOUR, lw=1.4, zorder=3)
        handles = [Line2D([], [], color=GT_COLOUR, lw=1.6, label=f"GT ({n_gt})")]
        n_det = 0
        if name in panels:
            boxes, scores, labels = _detections_above(panels[name], score_threshold)
            n_det = len(boxes)
            if n_det:
                rgba = np.array([to_rgba(class_colour(int(c), class_names)) for c in labels])
                rgba[:, 3] = _score_alpha(scores, score_threshold)
                _draw_boxes(ax, boxes, rgba, lw=1.0, zorder=4)
            for label in sorted(set(labels.tolist())):
                handles.append(Line2D([], [], color=class_colour(label, class_names), lw=1.6,
                                      label=_class_name(label, class_names)))
        _set_metric_axes(ax, extent)
        ax.set_title(f"{name}: {n_det} detections, score ≥ {score_threshold:g}", fontsize=10)
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi)


# --------------------------------------------------------------------------- training curves


def load_records(source: str | os.PathLike[str] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records of a run: a ``metrics.jsonl`` file, a run folder holding one, or a list
    of records (returned as a list of dicts)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no metrics file at {path}")
        return read_metrics(path)
    return [dict(record) for record in source]


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: Sequence[Mapping[str, Any]], kinds: tuple[str | None, ...], x: str, key: str
            ) -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of ``key`` against ``x`` over the records of ``kinds`` (``None``: a
    record without ``kind``) where both are finite numbers."""
    xs: list[float] = []
    ys: list[float] = []
    for record in records:
        if record.get("kind") not in kinds:
            continue
        xv, yv = record.get(x), record.get(key)
        if _finite_number(xv) and _finite_number(yv):
            xs.append(float(xv))
            ys.append(float(yv))
    return xs, ys


def plot_training_curves(path: str | os.PathLike[str],
                         runs: Mapping[str, str | os.PathLike[str] | Sequence[Mapping[str, Any]]], *,
                         keys: Sequence[str] = ("loss",), x: str = "step",
                         eval_keys: Sequence[str] = ("mAP", "NDS"), log_y: bool = False,
                         title: str | None = None, dpi: int = 100) -> Path:
    """Training curves of one or more runs: one subplot per training key (``train``
    records of ``metrics.jsonl``, or records without ``kind``, against ``x``), then one per
    evaluation metric of ``eval_keys`` found in ``eval`` records (against ``epoch``).

    Keys no run recorded get no subplot; runs without a key are left out of its subplot;
    ``null`` / non-finite values are skipped. Without anything to draw, the picture says
    so.

    Args:
        path: the PNG to write.
        runs: run name -> ``metrics.jsonl`` path, run folder, or list of records.
        keys: training record keys (``loss``, loss terms, ``lr``, ...).
        x: the training records' x axis (``step`` or ``epoch``).
        eval_keys: evaluation metrics to plot by epoch when present.
        log_y: log scale for the training keys (symlog when a value is not positive).

    Returns:
        ``path``.
    """
    records = {name: load_records(source) for name, source in runs.items()}
    colours = {name: _RUN_COLOURS[i % len(_RUN_COLOURS)] for i, name in enumerate(records)}
    plots: list[tuple[str, str, bool, dict[str, tuple[list[float], list[float]]]]] = []
    for key in keys:
        series = {n: _series(r, ("train", None), x, key) for n, r in records.items()}
        plots.append((key, x, log_y, {n: s for n, s in series.items() if s[0]}))
    for key in eval_keys:
        series = {n: _series(r, ("eval",), "epoch", key) for n, r in records.items()}
        plots.append((key, "epoch", False, {n: s for n, s in series.items() if s[0]}))
    plots = [p for p in plots if p[3]]
    fig = _new_figure(4.6 * max(len(plots), 1), 3.6, dpi)
    if not plots:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no values of {', '.join([*keys, *eval_keys])} recorded", ha="center",
                va="center", fontsize=10)
    else:
        axes = fig.subplots(1, len(plots), squeeze=False)[0]
        for ax, (key, xname, log, series) in zip(axes, plots, strict=True):
            _draw_series(ax, key, xname, log, series, colours, markers=xname == "epoch")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi)


def _draw_series(ax: Any, key: str, xname: str, log: bool,
                 series: Mapping[str, tuple[list[float], list[float]]], colours: Mapping[str, str],
                 markers: bool) -> None:
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, "-o" if markers else "-", color=colours[name], lw=1.4, ms=4, label=name)
    if log:
        values = [v for _, ys in series.values() for v in ys]
        ax.set_yscale("log" if min(values) > 0 else "symlog")
    ax.set_xlabel(xname)
    ax.set_title(key, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# --------------------------------------------------------------------------- BEV maps


def bev_image(bev_map: ArrayLike, grid: BEVGrid) -> np.ndarray:
    """A BEV map as the image array to display with ``imshow(origin="upper",
    extent=(x_min, x_max, y_min, y_max))``: row 0 of the result is the top of the picture
    (the largest y), column 0 its left (the smallest x).

    Maps follow :class:`~distill3d.structures.BEVGrid`: row ``i`` covers the ``i``-th
    band of y from ``y_min`` (rows along +y), so the rows are flipped.

    Args:
        bev_map: ``(H, W)`` (or ``(1, H, W)``) map of ``grid``'s shape.
        grid: the map's geometry.

    Returns:
        ``(H, W)`` float64 array.
    """
    array = _numpy(bev_map, "bev_map")
    assert array is not None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != grid.shape:
        raise ValueError(f"BEV map of shape {array.shape} does not match its grid {grid.shape} (H, W)")
    return np.ascontiguousarray(array[::-1])


def _grid_of(name: str, grid: BEVGrid | Mapping[str, BEVGrid]) -> BEVGrid:
    if isinstance(grid, BEVGrid):
        return grid
    if name not in grid:
        raise KeyError(f"no BEVGrid given for map {name!r}")
    return grid[name]


def _heatmap_figure(maps: Mapping[str, ArrayLike], grid: BEVGrid | Mapping[str, BEVGrid], *,
                    boxes: ArrayLike | None, title: str | None, cmap: str, panel_size: float,
                    dpi: int) -> Figure:
    """The figure of :func:`plot_bev_heatmaps` (not saved)."""
    names = list(maps)
    if not names:
        raise ValueError("plot_bev_heatmaps: no maps given")
    fig = _new_figure(panel_size * len(names) + 0.6 * len(names), panel_size + 0.4, dpi)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        g = _grid_of(name, grid)
        image = bev_image(maps[name], g)
        finite = image[np.isfinite(image)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax <= vmin:
            vmax = vmin + 1.0
        shown = ax.imshow(np.ma.masked_invalid(image), origin="upper", cmap=cmap, vmin=vmin, vmax=vmax,
                          extent=(g.x_min, g.x_max, g.y_min, g.y_max), interpolation="nearest")
        _draw_boxes(ax, boxes, GT_COLOUR, lw=1.0, zorder=3)
        _set_metric_axes(ax, (g.x_min, g.y_min, g.x_max, g.y_max))
        ax.grid(False)
        ax.set_title(name, fontsize=10)
        fig.colorbar(shown, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_bev_heatmaps(path: str | os.PathLike[str], maps: Mapping[str, ArrayLike],
                      grid: BEVGrid | Mapping[str, BEVGrid], *, boxes: ArrayLike | None = None,
                      title: str | None = None, cmap: str = "magma", panel_size: float = 4.5,
                      dpi: int = 100) -> Path:
    """BEV maps side by side in metric coordinates, each with its own colour bar.

    Args:
        path: the PNG to write.
        maps: panel name (e.g. ``"GT box mask"``, ``"teacher score"``, ``"PointDistiller
            importance"``) -> ``(H, W)`` map in the :class:`~distill3d.structures.BEVGrid`
            layout (rows along +y). NaN cells are left blank.
        grid: the maps' geometry, or one grid per map name (maps at different strides).
        boxes: ``(M, >=7)`` GT boxes outlined on top, or ``None``.

    Returns:
        ``path``.
    """
    fig = _heatmap_figure(maps, grid, boxes=boxes, title=title, cmap=cmap, panel_size=panel_size, dpi=dpi)
    return save_figure(fig, path, dpi)


# --------------------------------------------------------------------------- selected items


def _auto_extent(*arrays: np.ndarray | None, margin: float = 2.0) -> Extent:
    """A square-ish extent around every ``(x, y)`` given (``(-1, -1, 1, 1)`` without any)."""
    xy = [a[:, :2] for a in arrays if a is not None and a.size]
    if not xy:
        return (-1.0, -1.0, 1.0, 1.0)
    stacked = np.concatenate(xy)
    stacked = stacked[np.isfinite(stacked).all(axis=1)]
    if not len(stacked):
        return (-1.0, -1.0, 1.0, 1.0)
    lo, hi = stacked.min(axis=0) - margin, stacked.max(axis=0) + margin
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def plot_importance_points(path: str | os.PathLike[str], xy: ArrayLike, weights: ArrayLike, *,
                           points: ArrayLike | None = None, boxes: ArrayLike | None = None,
                           extent: Sequence[float] | None = None, title: str | None = None,
                           cmap: str = "viridis", max_points: int = 30_000, dpi: int = 100) -> Path:
    """Selected items (e.g. the top-N pillars PointDistiller distils) at their ``(x, y)``,
    coloured by weight, over faint LiDAR points and GT box outlines.

    Args:
        path: the PNG to write.
        xy: ``(N, >=2)`` item positions, metres.
        weights: ``(N,)`` item weights (importance).
        points: ``(P, >=2)`` LiDAR points or ``None``.
        boxes: ``(M, >=7)`` GT boxes or ``None``.
        extent: ``(x_min, y_min, x_max, y_max)``; ``None``: around everything drawn.

    Returns:
        ``path``.
    """
    items = _numpy(xy, "xy")
    values = _numpy(weights, "weights")
    assert items is not None and values is not None
    items = items.reshape(-1, items.shape[-1]) if items.size else np.zeros((0, 2))
    values = values.reshape(-1)
    if items.shape[1] < 2 or len(values) != len(items):
        raise ValueError(f"xy must be (N, >=2) and weights (N,), got {items.shape} and {values.shape}")
    if extent is not None:
        shown = _check_extent(extent)
    elif len(items) or box_segments(boxes).size:
        shown = _auto_extent(items, box_segments(boxes).reshape(-1, 2))
    else:
        shown = _auto_extent(_subsample_points(points, None, max_points))
    cloud = _subsample_points(points, shown, max_points)
    fig = _new_figure(6.4, 5.6, dpi)
    ax = fig.subplots()
    _draw_points(ax, cloud, size=0.4, alpha=0.35)
    _draw_boxes(ax, boxes, GT_COLOUR, lw=1.2, zorder=2)
    if len(items):
        order = np.argsort(values, kind="stable")  # heaviest on top
        scatter = ax.scatter(items[order, 0], items[order, 1], c=values[order], s=9, cmap=cmap,
                             linewidths=0, zorder=4)
        fig.colorbar(scatter, ax=ax, shrink=0.85, label="weight")
    _set_metric_axes(ax, shown)
    ax.legend(handles=[Line2D([], [], color=GT_COLOUR, lw=1.4, label="GT"),
                       Line2D([], [], ls="", marker="o", ms=4, color="#440154", label=f"selected ({len(items)})")],
              loc="upper right", fontsize=7, framealpha=0.85)
    ax.set_title(title or f"{len(items)} selected items by weight", fontsize=10)
    return save_figure(fig, path, dpi)
