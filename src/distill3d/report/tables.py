"""Plain-text pieces of a run report: markdown tables, number formats, the gap closed.

* :func:`markdown_table`: a GitHub-flavoured markdown table of dict rows;
* :func:`format_count` (``5_260_000 -> "5.26M"``) and :func:`format_flops`
  (``8.75e9 -> "8.75 G"``);
* :func:`gap_closed`: the share of the teacher-student gap that distillation closes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MISSING", "format_count", "format_flops", "format_value", "gap_closed", "markdown_table"]

#: What a table shows for a missing value (absent key, ``None`` or NaN).
MISSING = "—"

_COUNT_UNITS = ("", "K", "M", "B", "T")
_FLOP_UNITS = ("", "K", "M", "G", "T", "P", "E")


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (numpy and torch scalars included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_missing(value: Any) -> bool:
    """``None`` or a NaN."""
    if value is None:
        return True
    return _is_number(value) and not isinstance(value, numbers.Integral) and math.isnan(float(value))


def _scaled(value: float, units: Sequence[str], digits: int) -> tuple[str, str]:
    """``value`` scaled by powers of 1000 to below 1000, as ``(number, unit)``; the unit
    goes up when rounding would print ``1000.00``."""
    sign = "-" if value < 0 else ""
    magnitude = abs(float(value))
    index = 0
    while index < len(units) - 1 and magnitude >= 1000.0:
        magnitude /= 1000.0
        index += 1
    if index < len(units) - 1 and round(magnitude, digits) >= 1000.0:
        magnitude /= 1000.0
        index += 1
    if index == 0 and float(value).is_integer():
        return f"{sign}{int(magnitude)}", units[0]
    return f"{sign}{magnitude:.{digits}f}", units[index]


def format_count(n: float | None, digits: int = 2) -> str:
    """A count with a K / M / B / T suffix: ``5_260_000 -> "5.26M"``, ``1_500 -> "1.50K"``,
    ``999 -> "999"``; ``None`` or NaN -> :data:`MISSING`."""
    if _is_missing(n):
        return MISSING
    if math.isinf(float(n)):
        return str(float(n))
    number, unit = _scaled(float(n), _COUNT_UNITS, digits)
    return number + unit


def format_flops(f: float | None, digits: int = 2) -> str:
    """FLOPs with an SI prefix and a space: ``8.75e9 -> "8.75 G"``, ``1.2e12 -> "1.20 T"``,
    ``512 -> "512"``; ``None`` or NaN -> :data:`MISSING`."""
    if _is_missing(f):
        return MISSING
    if math.isinf(float(f)):
        return str(float(f))
    number, unit = _scaled(float(f), _FLOP_UNITS, digits)
    return f"{number} {unit}" if unit else number


def format_value(value: Any, floatfmt: str = ".4f", thousands: bool = True) -> str:
    """One table cell: floats with ``floatfmt``, ints with thousands separators (when
    ``thousands``), strings as they are, missing values (``None``, NaN) as
    :data:`MISSING`."""
    if _is_missing(value):
        return MISSING
    if _is_number(value):
        if isinstance(value, numbers.Integral):
            return f"{int(value):,}" if thousands else str(int(value))
        return format(float(value), floatfmt)
    return str(value)


def _escape(text: str) -> str:
    """A cell's text with the characters that would break a markdown row escaped."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] | None = None,
                   floatfmt: str = ".4f", thousands: bool = True, align: Mapping[str, str] | None = None) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        rows: one mapping per row.
        columns: ``(key, header)`` pairs, in order; ``None``: the keys of the first row,
            as their own headers.
        floatfmt: the format of float cells (pre-formatted strings are kept as they are).
        thousands: ints with thousands separators (``5,260,000``).
        align: key -> ``"left"`` or ``"right"`` for columns whose alignment should not be
            guessed (e.g. numbers given as pre-formatted strings).

    Returns:
        The table (header, separator, rows), without a trailing newline. Missing values
        (absent keys, ``None``, NaN) read :data:`MISSING`; columns whose present values are
        all numbers are right-aligned unless ``align`` says otherwise. ``""`` when there are no columns.
    """
    if columns is None:
        columns = [(str(k), str(k)) for k in rows[0]] if rows else []
    if not columns:
        return ""
    header = "| " + " | ".join(_escape(str(h)) for _, h in columns) + " |"
    aligns = []
    for key, _ in columns:
        if align and key in align:
            if align[key] not in ("left", "right"):
                raise ValueError(f"markdown_table: align of {key!r} must be 'left' or 'right', got {align[key]!r}")
            right = align[key] == "right"
        else:
            present = [row.get(key) for row in rows if not _is_missing(row.get(key))]
            right = bool(present) and all(_is_number(v) for v in present)
        aligns.append("---:" if right else "---")
    lines = [header, "| " + " | ".join(aligns) + " |"]
    for row in rows:
        cells = [_escape(format_value(row.get(key), floatfmt, thousands)) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_closed(teacher: float, student: float, distilled: float) -> float | None:
    """The share of the teacher-student gap that distillation closes:
    ``(distilled - student) / (teacher - student)``.

    1.0 means the distilled student matches the teacher, 0.0 no gain, negative values a
    loss, values above 1 a distilled student better than its teacher.

    Returns:
        The share, or ``None`` when the gap is undefined: the teacher is not above the
        student (``teacher <= student``) or a number is missing / not finite.
    """
    values = (teacher, student, distilled)
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    teacher, student, distilled = (float(v) for v in values)
    if teacher <= student:
        return None
    return (distilled - student) / (teacher - student)
