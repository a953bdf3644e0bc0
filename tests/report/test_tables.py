"""Markdown tables, number formats and the share of the teacher-student gap closed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill3d.report.tables import (
    MISSING,
    format_count,
    format_flops,
    format_value,
    gap_closed,
    markdown_table,
)


def test_markdown_table_columns_headers_and_cells() -> None:
    rows = [{"model": "teacher", "mAP": 0.51234, "params": 5_260_000},
            {"model": "student", "mAP": 0.3, "params": 1_200}]
    text = markdown_table(rows, [("model", "Model"), ("mAP", "mAP"), ("params", "Params")])
    lines = text.splitlines()
    assert lines[0] == "| Model | mAP | Params |"
    assert lines[1] == "| --- | ---: | ---: |"  # numeric columns right-aligned
    assert lines[2] == "| teacher | 0.5123 | 5,260,000 |"
    assert lines[3] == "| student | 0.3000 | 1,200 |"
    assert not text.endswith("\n")


def test_markdown_table_defaults_missing_values_and_escaping() -> None:
    rows = [{"a": 1.0, "b": "x|y"}, {"a": None}, {"a": float("nan"), "b": "z"}]
    lines = markdown_table(rows, floatfmt=".1f", thousands=False).splitlines()
    assert lines[0] == "| a | b |"  # keys of the first row
    assert lines[2] == "| 1.0 | x\\|y |"
    assert lines[3] == f"| {MISSING} | {MISSING} |"
    assert lines[4] == f"| {MISSING} | z |"
    assert markdown_table([]) == ""


def test_markdown_table_explicit_alignment() -> None:
    lines = markdown_table([{"a": "0.5", "b": 1}], align={"a": "right", "b": "left"}).splitlines()
    assert lines[1] == "| ---: | --- |"
    with pytest.raises(ValueError):
        markdown_table([{"a": 1}], align={"a": "centre"})


def test_format_value() -> None:
    assert format_value(1234567) == "1,234,567"
    assert format_value(1234567, thousands=False) == "1234567"
    assert format_value(np.float32(0.5), ".2f") == "0.50"
    assert format_value(np.int64(12)) == "12"
    assert format_value(True) == "True"
    assert format_value(None) == MISSING


@pytest.mark.parametrize("n, expected", [
    (0, "0"), (999, "999"), (1_500, "1.50K"), (5_260_000, "5.26M"), (999_999, "1.00M"),
    (2.3e9, "2.30B"), (None, MISSING), (float("nan"), MISSING)])
def test_format_count(n: float | None, expected: str) -> None:
    assert format_count(n) == expected


@pytest.mark.parametrize("f, expected", [
    (512, "512"), (8.75e9, "8.75 G"), (1.2e12, "1.20 T"), (3.5e6, "3.50 M"), (None, MISSING)])
def test_format_flops(f: float | None, expected: str) -> None:
    assert format_flops(f) == expected


def test_gap_closed() -> None:
    assert gap_closed(0.5, 0.3, 0.4) == pytest.approx(0.5)
    assert gap_closed(0.5, 0.3, 0.5) == pytest.approx(1.0)
    assert gap_closed(0.5, 0.3, 0.3) == pytest.approx(0.0)
    assert gap_closed(0.5, 0.3, 0.2) == pytest.approx(-0.5)  # distillation hurt
    assert gap_closed(0.5, 0.3, 0.6) == pytest.approx(1.5)  # better than the teacher
    assert gap_closed(0.3, 0.3, 0.4) is None  # no gap
    assert gap_closed(0.2, 0.3, 0.4) is None  # the student beats the teacher
    assert gap_closed(math.nan, 0.3, 0.4) is None
