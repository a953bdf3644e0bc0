"""The command line: verbs, --help, --version, and clear errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distill3d import __version__
from distill3d.cli import build_parser, main

VERBS = ["config", "synth", "train", "distill", "test", "evaluate", "demo", "bench", "export", "profile"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert f"distill3d {verb}" in capsys.readouterr().out


def test_config_show_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "synthdrive/centerpoint_pillar_student_x0.25", "--set", "train.lr=0.004"]) == 0
    out = capsys.readouterr().out
    assert "width_multiplier: 0.25" in out
    assert "lr: 0.004" in out


def test_config_error_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "synthdrive/centerpoint_pillar_teacher", "--set", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'lr'" in err
    assert "Traceback" not in err


def test_console_script_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "distill3d", "--version"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and __version__ in result.stdout


def test_parser_has_all_verbs() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(VERBS) <= set(sub.choices)
