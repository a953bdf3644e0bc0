"""The SynthDrive orchestrator and ``distill3d synth``: presets and scene names, determinism
across worker counts, refusal of non-empty folders, and the command line end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from distill3d.cli import main
from distill3d.errors import Distill3DError
from distill3d.synth import splits as our_splits
from distill3d.synth.generate import (
    PRESETS,
    generate_dataset,
    parse_image_size,
    plan_scenes,
    scene_seed,
)

TINY = dict(scenes=3, samples_per_scene=2, image_size=(176, 64), seed=21, progress=False)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- planning


def test_split_lists_equal_the_devkit_lists() -> None:
    splits = pytest.importorskip("nuscenes.utils.splits")
    assert list(our_splits.TRAIN) == splits.train
    assert list(our_splits.VAL) == splits.val
    assert list(our_splits.MINI_TRAIN) == splits.mini_train
    assert list(our_splits.MINI_VAL) == splits.mini_val


def test_mini_preset_uses_the_v1_0_mini_names() -> None:
    plans = plan_scenes(PRESETS["mini"], 10, seed=0)
    assert [p.name for p in plans] == list(our_splits.MINI_TRAIN) + list(our_splits.MINI_VAL)
    assert [p.split for p in plans] == ["mini_train"] * 8 + ["mini_val"] * 2
    two = plan_scenes(PRESETS["mini"], 2, seed=0)
    assert [p.split for p in two] == ["mini_train", "mini_val"]
    assert [p.split for p in plan_scenes(PRESETS["mini"], 1, seed=0)] == ["mini_train"]
    with pytest.raises(Distill3DError, match="v1.0-mini"):
        plan_scenes(PRESETS["mini"], 11, seed=0)


def test_trainval_presets_use_train_and_val_names() -> None:
    splits = pytest.importorskip("nuscenes.utils.splits")
    official = splits.create_splits_scenes()
    plans = plan_scenes(PRESETS["small"], 50, seed=0)
    assert len({p.name for p in plans}) == 50
    val = [p for p in plans if p.split == "val"]
    assert 6 <= len(val) <= 9  # ~15 %
    for p in plans:
        assert p.name in official[p.split]
    large = plan_scenes(PRESETS["large"], 850, seed=0)
    assert sum(p.split == "val" for p in large) == 150
    with pytest.raises(Distill3DError):
        plan_scenes(PRESETS["large"], 851, seed=0)


def test_scene_seeds_are_deterministic_and_distinct() -> None:
    seeds = [scene_seed(7, i) for i in range(200)]
    assert seeds == [scene_seed(7, i) for i in range(200)]
    assert len(set(seeds)) == 200
    assert scene_seed(8, 0) != scene_seed(7, 0)
    assert all(0 <= s < 2**31 for s in seeds)


def test_parse_image_size() -> None:
    assert parse_image_size("704x256") == (704, 256)
    assert parse_image_size("1242X375") == (1242, 375)
    for bad in ("704", "704x", "axb", "704x256x3", "8x8"):
        with pytest.raises(Distill3DError, match="image-size"):
            parse_image_size(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="waymo"), "--format"),
    (dict(preset="huge"), "--preset"),
    (dict(beams=40), "--beams"),
    (dict(samples_per_scene=0), "--samples-per-scene"),
    (dict(workers=0), "--workers"),
    (dict(format="kitti", sweeps=3), "--sweeps"),
    (dict(image_size=(704, 400)), "at most 396"),
])
def test_bad_arguments_are_clear_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(format="nuscenes", out_dir=tmp_path / "out", progress=False) | kwargs
    with pytest.raises(Distill3DError, match=message):
        generate_dataset(**args)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_trees_whatever_the_workers(tmp_path: Path) -> None:
    one = generate_dataset("nuscenes", tmp_path / "w1", sweeps=1, workers=1, **TINY)
    two = generate_dataset("nuscenes", tmp_path / "w2", sweeps=1, workers=2, **TINY)
    hashes_one, hashes_two = _tree_hashes(one.out_dir), _tree_hashes(two.out_dir)
    assert len(hashes_one) > 50
    assert hashes_one == hashes_two
    manifest = json.loads((one.out_dir / "synthdrive.json").read_text())
    assert "workers" not in manifest and manifest["seed"] == TINY["seed"]
    other = generate_dataset("nuscenes", tmp_path / "s2", sweeps=1, workers=1,
                             **(TINY | dict(seed=22, scenes=1)))
    lidar = [k for k in hashes_one if k.startswith("samples/LIDAR_TOP")]
    assert not set(hashes_one[k] for k in lidar) & set(_tree_hashes(other.out_dir).values())


@pytest.mark.slow
def test_kitti_identical_whatever_the_workers(tmp_path: Path) -> None:
    kwargs = TINY | dict(image_size=(311, 94))
    one = generate_dataset("kitti", tmp_path / "w1", workers=1, **kwargs)
    two = generate_dataset("kitti", tmp_path / "w2", workers=2, **kwargs)
    assert _tree_hashes(one.out_dir) == _tree_hashes(two.out_dir)


# ----------------------------------------------------------------------------- output folder


def test_non_empty_folder_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    small = dict(scenes=1, samples_per_scene=1, image_size=(311, 94), progress=False)
    with pytest.raises(Distill3DError, match="not empty.*--overwrite"):
        generate_dataset("kitti", out, **small)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    stale = out / "training" / "velodyne" / "999999.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    generate_dataset("kitti", out, overwrite=True, **small)
    assert not stale.exists()  # SynthDrive's folders are replaced, not merged
    assert (out / "notes.txt").read_text() == "mine"  # other files are left alone
    assert (out / "training" / "velodyne" / "000000.bin").is_file()
    assert (out / "synthdrive.json").is_file()
    file_path = tmp_path / "a_file"
    file_path.write_text("x")
    with pytest.raises(Distill3DError, match="not a directory"):
        generate_dataset("kitti", file_path, **small)


# ----------------------------------------------------------------------------- command line


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["synth", "--format", "nuscenes", "--out", str(out), "--scenes", "1",
                 "--samples-per-scene", "2", "--image-size", "176x64", "--sweeps", "0",
                 "--seed", "3", "--workers", "1", "--quiet"])
    assert code == 0
    assert capsys.readouterr().out == ""
    manifest = json.loads((out / "synthdrive.json").read_text())
    assert manifest["image_size"] == [176, 64] and manifest["sweeps"] == 0
    assert manifest["scene_names"] == ["scene-0061"]
    assert len(list((out / "samples" / "CAM_FRONT").iterdir())) == 2
    assert not (out / "sweeps" / "LIDAR_TOP").exists() or not any((out / "sweeps" / "LIDAR_TOP").iterdir())
    assert (out / "v1.0-mini" / "sample.json").is_file()
    # the same folder again: refused, one clear line, exit status 2
    code = main(["synth", "--format", "nuscenes", "--out", str(out), "--scenes", "1", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "distill3d synth: error:" in err and "--overwrite" in err and "Traceback" not in err


def test_cli_reports_bad_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["synth", "--format", "kitti", "--out", str(tmp_path / "k"), "--image-size", "big",
                 "--quiet"])
    assert code == 2
    assert "--image-size must look like WIDTHxHEIGHT" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


@pytest.mark.slow
def test_mini_preset_loads_in_the_devkit(tmp_path: Path) -> None:
    """The whole ``--preset mini`` (10 scenes x 40 samples, 9 sweeps, 704x256) with 2 workers:
    the devkit loads it and agrees with every num_lidar_pts."""
    nuscenes = pytest.importorskip("nuscenes.nuscenes")
    data_classes = pytest.importorskip("nuscenes.utils.data_classes")
    geometry_utils = pytest.importorskip("nuscenes.utils.geometry_utils")
    report = generate_dataset("nuscenes", tmp_path / "mini", preset="mini", workers=2,
                              progress=False)
    nusc = nuscenes.NuScenes(version="v1.0-mini", dataroot=str(report.out_dir), verbose=False)
    assert len(nusc.scene) == 10 and len(nusc.sample) == 400
    assert len(nusc.sample_data) == 400 * 7 + 10 * 39 * 9
    for sample in nusc.sample:
        path, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
        cloud = data_classes.LidarPointCloud.from_file(path)
        for box in boxes:
            count = int(geometry_utils.points_in_box(box, cloud.points[:3]).sum())
            assert count == nusc.get("sample_annotation", box.token)["num_lidar_pts"]
