"""Fixtures shared across test folders: the real sample frames and tiny SynthDrive sets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a whole test module, restored afterwards. Modules that
    train or run tiny models use it (``pytestmark = pytest.mark.usefixtures("one_thread")``)
    so that it is set before their module fixtures train: on a busy 2-core machine, more
    threads than cores make small convolutions and ``index_add_`` far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _index_cache_outside_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dataset indexes go to a session tmp folder, so no test writes into a dataset folder
    (``../shared`` is writable when tests run as root). Tests of the default locations
    unset ``DISTILL3D_INDEX_DIR`` with monkeypatch."""
    from distill3d.data.index_cache import INDEX_DIR_ENV

    old = os.environ.get(INDEX_DIR_ENV)
    os.environ[INDEX_DIR_ENV] = str(tmp_path_factory.mktemp("dataset_indexes"))
    yield
    if old is None:
        os.environ.pop(INDEX_DIR_ENV, None)
    else:
        os.environ[INDEX_DIR_ENV] = old


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` (read in place, never copied); skips when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_nuscenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SynthDrive set in the nuScenes layout (v1.0-mini: 2 train + ... scenes),
    written once per test session. Returns the dataroot."""
    from distill3d.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("synth_nuscenes_shared")
    generate_dataset("nuscenes", root, preset="mini", scenes=3, samples_per_scene=3, sweeps=2,
                     image_size=(352, 128), seed=11, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_kitti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SynthDrive set in the KITTI object layout, written once per test session."""
    from distill3d.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("synth_kitti_shared")
    generate_dataset("kitti", root, preset="mini", scenes=2, samples_per_scene=3,
                     image_size=(621, 188), seed=12, workers=1, progress=False)
    return root
