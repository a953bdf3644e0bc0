"""The report of a distillation run: teacher, student without KD and student with KD.

:func:`write_run_report` writes, atomically, into the run folder:

* ``report.json``::

      {"method": "...",
       "teacher": {"name", "mAP", "NDS", "params", "flops", "latency_ms",
                   "metrics_by_distance", ...extra},
       "student": {...}, "distilled": {...},
       "gap_closed": {"mAP": share or null, "NDS": share or null},
       "figures": {name: path relative to the folder},
       "notes": [...],
       "config": {...}}            # only when a config is given

  (non-finite numbers as ``null``);
* ``report.md``: a title, the summary table (role, model, mAP, NDS, parameters, FLOPs,
  latency, mAP per distance band), the share of the teacher-student gap closed, the
  figures (relative links), the notes and the configuration.

:func:`render_console_table` gives the summary as a :class:`rich.table.Table` for the CLI.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from distill3d.atomic_io import atomic_write_text
from distill3d.report.tables import (
    MISSING,
    format_count,
    format_flops,
    gap_closed,
    markdown_table,
)

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["UNDEFINED_GAP", "ModelSummary", "ReportPaths", "gap_lines", "render_console_table",
           "render_markdown", "report_dict", "summary_rows", "write_run_report"]

#: The three models of a report, in table order.
ROLES = ("teacher", "student", "distilled")
_ROLE_LABELS = {"teacher": "teacher", "student": "student (no KD)", "distilled": "student + KD"}
_CORE_KEYS = ("name", "mAP", "NDS", "params", "flops", "latency_ms", "metrics_by_distance")
UNDEFINED_GAP = "undefined: the student is not below the teacher"


@dataclass
class ModelSummary:
    """The numbers of one evaluated model.

    Attributes:
        name: the model (e.g. the config name).
        mAP, NDS: headline metrics (fractions, as the evaluators give them).
        params: parameter count.
        flops: FLOPs of one forward pass per sample.
        latency_ms: forward latency, milliseconds.
        metrics_by_distance: distance band (``"0-20"``, ``"20-30"``, ``"30+"``) -> mAP.
        extra: anything else to keep in ``report.json`` (merged into the model's entry;
            must not reuse the keys above).
    """

    name: str
    mAP: float
    NDS: float
    params: int
    flops: float
    latency_ms: float
    metrics_by_distance: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The model's ``report.json`` entry: the fields, then :attr:`extra` merged in."""
        clash = sorted(set(self.extra) & set(_CORE_KEYS))
        if clash:
            raise ValueError(f"ModelSummary {self.name!r}: extra keys {clash} clash with the summary's fields")
        out: dict[str, Any] = {"name": self.name, "mAP": self.mAP, "NDS": self.NDS, "params": self.params,
                               "flops": self.flops, "latency_ms": self.latency_ms,
                               "metrics_by_distance": (dict(self.metrics_by_distance)
                                                       if self.metrics_by_distance is not None else None)}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSummary:
        """The inverse of :meth:`to_dict` (``null`` numbers read back as NaN); keys other
        than the fields go to :attr:`extra`."""
        def number(key: str) -> float:
            value = data.get(key)
            return float("nan") if value is None else float(value)

        params = data.get("params")
        return cls(name=str(data.get("name", "")), mAP=number("mAP"), NDS=number("NDS"),
                   params=int(params) if params is not None else 0, flops=number("flops"),
                   latency_ms=number("latency_ms"),
                   metrics_by_distance=(None if data.get("metrics_by_distance") is None else
                                        {str(k): (float("nan") if v is None else float(v))
                                         for k, v in data["metrics_by_distance"].items()}),
                   extra={k: v for k, v in data.items() if k not in _CORE_KEYS})


class ReportPaths(NamedTuple):
    """The files :func:`write_run_report` wrote."""

    markdown: Path
    json: Path


# --------------------------------------------------------------------------- content


def _jsonable(value: Any) -> Any:
    """``value`` as strict JSON content: non-finite floats -> ``None``, paths -> strings,
    numpy / torch scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _models(teacher: ModelSummary, student: ModelSummary, distilled: ModelSummary
            ) -> dict[str, ModelSummary]:
    return {"teacher": teacher, "student": student, "distilled": distilled}


def _gaps(teacher: ModelSummary, student: ModelSummary, distilled: ModelSummary) -> dict[str, float | None]:
    return {metric: gap_closed(getattr(teacher, metric), getattr(student, metric), getattr(distilled, metric))
            for metric in ("mAP", "NDS")}


def _relative_figure(path: str | os.PathLike[str], out_dir: Path) -> str:
    """A figure's link from ``out_dir`` (POSIX separators): relative paths are taken as
    relative to ``out_dir`` already; absolute ones are made relative to it."""
    figure = Path(path)
    if figure.is_absolute():
        figure = Path(os.path.relpath(figure, out_dir.resolve()))
    return figure.as_posix()


def report_dict(*, method: str, teacher: ModelSummary, student: ModelSummary, distilled: ModelSummary,
                figures: Mapping[str, str | os.PathLike[str]] | None = None, notes: Sequence[str] = (),
                config: Mapping[str, Any] | None = None, out_dir: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """The content of ``report.json`` (strict JSON: non-finite numbers are ``None``)."""
    root = Path(out_dir)
    content: dict[str, Any] = {"method": method}
    content.update({role: model.to_dict() for role, model in _models(teacher, student, distilled).items()})
    content["gap_closed"] = _gaps(teacher, student, distilled)
    content["figures"] = {str(name): _relative_figure(p, root) for name, p in (figures or {}).items()}
    content["notes"] = [str(n) for n in notes]
    if config is not None:
        content["config"] = dict(config)
    return _jsonable(content)


def _bands(models: Sequence[ModelSummary]) -> list[str]:
    """The distance bands of any model, in order of first appearance."""
    bands: list[str] = []
    for model in models:
        bands += [b for b in (model.metrics_by_distance or {}) if b not in bands]
    return bands


def _metric(value: Any, spec: str) -> str:
    if value is None or not math.isfinite(float(value)):
        return MISSING
    return format(float(value), spec)


def summary_rows(teacher: ModelSummary, student: ModelSummary, distilled: ModelSummary
                 ) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """The summary table as ``(columns, rows)``: ``(key, header)`` pairs and one dict of
    formatted cells per model (teacher, student, distilled), for :func:`markdown_table`
    and :func:`render_console_table`."""
    models = _models(teacher, student, distilled)
    bands = _bands(list(models.values()))
    columns = [("role", "role"), ("name", "model"), ("mAP", "mAP"), ("NDS", "NDS"), ("params", "params"),
               ("flops", "FLOPs"), ("latency_ms", "latency (ms)")]
    columns += [(f"band:{b}", f"mAP {b} m") for b in bands]
    rows = []
    for role, model in models.items():
        row = {"role": _ROLE_LABELS[role], "name": model.name, "mAP": _metric(model.mAP, ".4f"),
               "NDS": _metric(model.NDS, ".4f"), "params": format_count(model.params),
               "flops": format_flops(model.flops), "latency_ms": _metric(model.latency_ms, ".1f")}
        for band in bands:
            row[f"band:{band}"] = _metric((model.metrics_by_distance or {}).get(band), ".4f")
        rows.append(row)
    return columns, rows


def gap_lines(teacher: ModelSummary, student: ModelSummary, distilled: ModelSummary) -> list[str]:
    """One line per metric: the share of the teacher-student gap closed, e.g.
    ``mAP: 42.0% of the gap closed (teacher 0.5000, student 0.3000, student + KD 0.3840)``."""
    lines = []
    for metric, share in _gaps(teacher, student, distilled).items():
        values = (f"teacher {_metric(getattr(teacher, metric), '.4f')}, "
                  f"student {_metric(getattr(student, metric), '.4f')}, "
                  f"student + KD {_metric(getattr(distilled, metric), '.4f')}")
        text = f"{share:.1%} of the gap closed" if share is not None else UNDEFINED_GAP
        lines.append(f"{metric}: {text} ({values})")
    return lines


def render_markdown(*, method: str, teacher: ModelSummary, student: ModelSummary, distilled: ModelSummary,
                    figures: Mapping[str, str] | None = None, notes: Sequence[str] = (),
                    config: Mapping[str, Any] | None = None) -> str:
    """The text of ``report.md``; ``figures`` maps names to links relative to the report."""
    columns, rows = summary_rows(teacher, student, distilled)
    parts = [f"# Distillation report: {method}", "",
             (f"Teacher `{teacher.name}`, student `{student.name}` trained without and with "
              f"knowledge distillation (`{method}`)."), "",
             "## Summary", "", markdown_table(rows, columns, align={k: "right" for k, _ in columns[2:]}), "",
             "FLOPs per sample (one forward pass); latency: forward pass, milliseconds.", "",
             "## Teacher-student gap closed", "",
             "Share of the gap closed = (student + KD − student) / (teacher − student).", ""]
    parts += [f"- {line}" for line in gap_lines(teacher, student, distilled)]
    if figures:
        parts += ["", "## Figures"]
        for name, link in figures.items():
            parts += ["", f"### {name}", "", f"![{name}]({link})"]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    if config is not None:
        parts += ["", "## Configuration", "", "```json",
                  json.dumps(_jsonable(dict(config)), indent=2, allow_nan=False), "```"]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- outputs


def _write_text(path: Path, text: str) -> None:
    """Write atomically, then make the file readable (0644) like the rest of a run."""
    atomic_write_text(path, text)
    os.chmod(path, 0o644)


def write_run_report(out_dir: str | os.PathLike[str], *, method: str, teacher: ModelSummary,
                     student: ModelSummary, distilled: ModelSummary,
                     figures: Mapping[str, str | os.PathLike[str]] | None = None, notes: Sequence[str] = (),
                     config: Mapping[str, Any] | None = None) -> ReportPaths:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (created when missing),
    each atomically.

    Args:
        out_dir: the run folder.
        method: the distillation method (e.g. ``"pointdistiller"``).
        teacher, student, distilled: the three models' numbers.
        figures: name -> picture path; relative paths are relative to ``out_dir``,
            absolute ones are linked relative to it.
        notes: free lines listed at the end.
        config: the run's configuration (kept in both files) or ``None``.

    Returns:
        ``ReportPaths(markdown, json)``, a ``(report.md, report.json)`` tuple.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    content = report_dict(method=method, teacher=teacher, student=student, distilled=distilled,
                          figures=figures, notes=notes, config=config, out_dir=root)
    paths = ReportPaths(root / "report.md", root / "report.json")
    _write_text(paths.json, json.dumps(content, indent=2, allow_nan=False) + "\n")
    _write_text(paths.markdown, render_markdown(method=method, teacher=teacher, student=student,
                                                distilled=distilled, figures=content["figures"],
                                                notes=content["notes"], config=config))
    return paths


def render_console_table(*, method: str, teacher: ModelSummary, student: ModelSummary,
                         distilled: ModelSummary) -> Table:
    """The summary table for the terminal (a :class:`rich.table.Table`), with the gap
    closed as its caption."""
    from rich.table import Table

    columns, rows = summary_rows(teacher, student, distilled)
    table = Table(title=f"Distillation report: {method}", caption="\n".join(gap_lines(teacher, student, distilled)),
                  caption_justify="left")
    for index, (_, header) in enumerate(columns):
        table.add_column(header, justify="left" if index < 2 else "right", no_wrap=index >= 2)
    for row in rows:
        table.add_row(*(row[key] for key, _ in columns))
    return table
