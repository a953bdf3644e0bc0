"""``distill3d data index``: KITTI summary and index file, cached re-runs, --rebuild, format
detection, and the nuScenes path (with a stand-in reader, and the real one when present)."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from distill3d.cli import main
from distill3d.commands.data_cmd import detect_format


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL3D_CACHE", str(tmp_path / "user_cache"))
    # these tests read only tmp mirrors of the data, so the default index location
    # (beside the data) is safe to exercise
    monkeypatch.delenv("DISTILL3D_INDEX_DIR", raising=False)


def _mirror(src: Path, dst: Path) -> Path:
    """Top-level symlinks to ``src``'s entries (so the index is written into ``dst``)."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name == "ImageSets":
            shutil.copytree(entry, dst / entry.name)
        elif not entry.name.startswith("."):
            (dst / entry.name).symlink_to(entry)
    return dst


@pytest.fixture()
def kitti_root(synth_kitti: Path, tmp_path: Path) -> Path:
    return _mirror(synth_kitti, tmp_path / "kitti")


def test_index_kitti_prints_summary_and_writes_index(kitti_root: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    train = (kitti_root / "ImageSets" / "train.txt").read_text().split()
    val = (kitti_root / "ImageSets" / "val.txt").read_text().split()
    assert main(["data", "index", str(kitti_root)]) == 0
    out = capsys.readouterr().out
    assert f"split train: {len(train)} frames" in out
    assert f"split val: {len(val)} frames" in out
    assert "Car" in out and "DontCare" in out and "built" in out
    for split in ("train", "val"):
        assert (kitti_root / ".distill3d_index" / f"kitti-{split}.pkl").is_file()

    assert main(["data", "index", str(kitti_root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "split val" in out and "split train" not in out and "up to date" in out

    assert main(["data", "index", str(kitti_root), "--format", "kitti", "--split", "val", "--rebuild"]) == 0
    assert "(built" in capsys.readouterr().out


def test_index_errors_are_one_line(kitti_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "index", str(tmp_path / "empty_nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["data", "index", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset layout" in err and "Traceback" not in err
    assert main(["data", "index", str(kitti_root), "--split", "nosuch"]) == 2
    assert "nosuch.txt: split file not found" in capsys.readouterr().err


def test_detect_format(tmp_path: Path, kitti_root: Path) -> None:
    assert detect_format(kitti_root) == "kitti"
    nus = tmp_path / "nus"
    (nus / "v1.0-mini").mkdir(parents=True)
    (nus / "v1.0-mini" / "sample.json").write_text("[]")
    assert detect_format(nus) == "nuscenes"


def test_nuscenes_path_calls_the_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's side of the contract with ``distill3d.data.nuscenes.build_nuscenes_index``,
    with a stand-in reader."""
    calls = []

    class FakeIndex:
        def __len__(self) -> int:
            return 7

        def class_counts(self) -> dict[str, int]:
            return {"car": 5}

    def build_nuscenes_index(root, version, split, rebuild=False):
        calls.append((Path(root), version, split, rebuild))
        return FakeIndex()

    fake = types.ModuleType("distill3d.data.nuscenes")
    fake.build_nuscenes_index = build_nuscenes_index
    monkeypatch.setitem(sys.modules, "distill3d.data.nuscenes", fake)
    nus = tmp_path / "nus"
    (nus / "v1.0-mini").mkdir(parents=True)
    (nus / "v1.0-mini" / "sample.json").write_text("[]")
    assert main(["data", "index", str(nus)]) == 0
    assert calls == [(nus, "v1.0-mini", "mini_train", False), (nus, "v1.0-mini", "mini_val", False)]
    out = capsys.readouterr().out
    assert "7 samples" in out and "car  5" in out
    calls.clear()
    assert main(["data", "index", str(nus), "--version", "v1.0-mini", "--split", "train", "--rebuild"]) == 0
    assert calls == [(nus, "v1.0-mini", "train", True)]
    (nus / "v1.0-trainval").mkdir()
    (nus / "v1.0-trainval" / "sample.json").write_text("[]")
    assert main(["data", "index", str(nus)]) == 2
    assert "pass --version" in capsys.readouterr().err


def test_nuscenes_real_reader(synth_nuscenes: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    nuscenes = pytest.importorskip("distill3d.data.nuscenes")
    if not hasattr(nuscenes, "build_nuscenes_index"):
        pytest.skip("distill3d.data.nuscenes has no build_nuscenes_index yet")
    root = _mirror(synth_nuscenes, tmp_path / "nus")
    assert main(["data", "index", str(root), "--format", "nuscenes", "--version", "v1.0-mini",
                 "--split", "mini_train"]) == 0
    out = capsys.readouterr().out
    index = nuscenes.build_nuscenes_index(root, "v1.0-mini", "mini_train")
    assert "split mini_train" in out and f"{len(index)} samples" in out
    assert main(["data", "index", str(root), "--split", "no_such_split"]) == 2
    err = capsys.readouterr().err
    assert "no_such_split" in err and "Traceback" not in err
