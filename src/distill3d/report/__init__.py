"""The report of a ``distill3d demo`` run: tables, pictures and ``report.md`` / ``report.json``.

* :mod:`~distill3d.report.tables`: markdown tables, number formats, the gap closed;
* :mod:`~distill3d.report.plots`: headless matplotlib pictures (imported on first use of
  a ``plot_*`` name, so that importing this package does not load matplotlib);
* :mod:`~distill3d.report.run_report`: :func:`write_run_report` and the console table.
"""

from __future__ import annotations

import importlib
from typing import Any

from distill3d.report.run_report import (
    ModelSummary,
    ReportPaths,
    render_console_table,
    write_run_report,
)
from distill3d.report.tables import (
    format_count,
    format_flops,
    gap_closed,
    markdown_table,
)

__all__ = [
    "ModelSummary",
    "ReportPaths",
    "bev_image",
    "format_count",
    "format_flops",
    "gap_closed",
    "markdown_table",
    "plot_bev_detections",
    "plot_bev_heatmaps",
    "plot_importance_points",
    "plot_training_curves",
    "render_console_table",
    "write_run_report",
]

_PLOTS = frozenset({"bev_image", "plot_bev_detections", "plot_bev_heatmaps", "plot_importance_points",
                    "plot_training_curves"})


def __getattr__(name: str) -> Any:
    """The plotting functions, imported from :mod:`distill3d.report.plots` on first use."""
    if name in _PLOTS:
        return getattr(importlib.import_module("distill3d.report.plots"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
