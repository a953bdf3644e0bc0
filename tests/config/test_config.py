"""Config loading: _base_ inheritance, typed validation, overrides and error messages."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from distill3d.config import (
    PACKAGED_CONFIG_DIR, ExperimentConfig, dump_config, from_dict, load_config, parse_override,
)
from distill3d.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_base_inheritance_merges_in_order_child_wins(tmp_path: Path) -> None:
    write(tmp_path / "base/a.yaml", """
        name: from_a
        train: {lr: 0.1, epochs: 3}
        model: {blocks_per_stage: [1, 1, 1]}
        """)
    write(tmp_path / "base/b.yaml", """
        name: from_b
        train: {lr: 0.2}
        """)
    child = write(tmp_path / "exp/child.yaml", """
        _base_: [../base/a.yaml, ../base/b.yaml]
        train: {batch_size: 7}
        model: {blocks_per_stage: [2]}
        """)
    cfg = load_config(child)
    assert cfg.name == "from_b"  # b after a
    assert cfg.train.lr == 0.2
    assert cfg.train.epochs == 3  # kept from a
    assert cfg.train.batch_size == 7  # child
    assert cfg.model.blocks_per_stage == [2]  # lists are replaced, not merged
    assert cfg.model.width_multiplier == 1.0  # schema default


def test_unknown_key_names_file_line_key_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        name: x
        train:
          epochs: 2
          learning_rat: 0.1
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path.resolve()}:5" in message
    assert "'learning_rat'" in message and "'train'" in message
    assert "lr" in message  # the valid keys are listed


def test_misspelt_key_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "train: {weight_decy: 0.1}\n")
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        load_config(path)


def test_unknown_key_in_base_file_points_at_base(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "data:\n  sweps: 3\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nname: y\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert f"{base.resolve()}:2" in str(info.value)
    assert "did you mean 'sweeps'" in str(info.value)


@pytest.mark.parametrize("text, expected, given", [
    ("train: {epochs: 1.5}", "expected int", "float 1.5"),
    ("train: {lr: fast}", "expected float", "str 'fast'"),
    ("train: {amp: 1}", "expected bool", "int 1"),
    ("model: {blocks_per_stage: 3}", "expected a list", "int"),
    ("train: {schedule: linear}", "expected one of 'onecycle' | 'cosine' | 'constant'", "'linear'"),
    ("train: {epochs: true}", "expected int", "bool True"),
])
def test_wrong_type_names_key_expected_and_given(tmp_path: Path, text: str, expected: str, given: str) -> None:
    path = write(tmp_path / "c.yaml", text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message and given in message
    assert f"{path.resolve()}:1" in message


def test_int_is_accepted_for_float(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", "train: {lr: 1}\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_cross_field_check_points_at_the_field(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  point_cloud_range: [0, 0, 0, -1, 1, 1]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path.resolve()}:2" in str(info.value)
    assert "data.point_cloud_range" in str(info.value)


def test_overrides_apply_with_type_checks(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "train: {lr: 0.1}\n")
    cfg = load_config(path, ["train.lr=0.5", "model.voxel_size=[0.1, 0.1, 4]", "distill.method=fitnet"])
    assert cfg.train.lr == 0.5
    assert cfg.model.voxel_size == (0.1, 0.1, 4.0)
    assert cfg.distill is not None and cfg.distill.method == "fitnet"
    with pytest.raises(ConfigError, match=r"--set train\.lr=abc: key 'train\.lr': expected float"):
        load_config(path, ["train.lr=abc"])
    with pytest.raises(ConfigError, match=r"--set trian\.lr=1: unknown key 'trian'.*did you mean 'train'"):
        load_config(path, ["trian.lr=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="has no key"):
        load_config(path, ["train.lr.x=1"])


def test_override_value_parsing() -> None:
    assert parse_override("a.b=null") == (("a", "b"), None)
    assert parse_override("a=[1, 2]") == (("a",), [1, 2])
    assert parse_override("a=x=y") == (("a",), "x=y")


def test_yaml_never_executes_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path / "c.yaml",
                 f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="c.yaml:1"):
        load_config(path)
    assert not marker.exists()


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(path)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "train:\n  lr: [0.1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_base_cycle_and_missing_base(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match="'nope.yaml'"):
        load_config(tmp_path / "c.yaml")


@dataclass
class _Term:
    name: str
    weight: float = 1.0


@dataclass
class _Root:
    terms: list[_Term] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"


def test_missing_required_key() -> None:
    Root = _Root
    assert from_dict(Root, {"terms": [{"name": "t", "weight": 2}]}).terms[0].weight == 2.0
    with pytest.raises(ConfigError, match=r"key 'terms\[0\]\.name': required key is missing"):
        from_dict(Root, {"terms": [{"weight": 2}]})


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config("synthdrive/centerpoint_pillar_student_x0.5", ["train.lr=0.003"])
    text = dump_config(cfg)
    again = load_config(write(tmp_path / "resolved.yaml", text))
    assert again == cfg


def test_every_shipped_config_loads() -> None:
    shipped = [p for p in PACKAGED_CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts]
    assert shipped
    for path in shipped:
        assert isinstance(load_config(path), ExperimentConfig)


def test_unknown_config_name_lists_shipped() -> None:
    with pytest.raises(ConfigError, match="synthdrive/centerpoint_pillar_teacher"):
        load_config("no/such/config")


def test_default_classes_are_the_devkit_order() -> None:
    from distill3d.config.schema import NUSCENES_CLASSES
    from distill3d.data.nuscenes import NUSCENES_DETECTION_CLASSES
    from distill3d.synth.classes import CLASS_NAMES

    assert NUSCENES_CLASSES == NUSCENES_DETECTION_CLASSES == CLASS_NAMES
