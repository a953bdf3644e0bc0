"""The teacher cache: losses read from the cache equal the live teacher's, stale caches are
refused with the reason, the manifest and the stored arrays, and the augmentation cycle a
cached run imposes on the training set.

A tiny CenterPoint-Pillar teacher (half width) is trained for one epoch on a tiny
SynthDrive set in the nuScenes layout; the student is quarter width, on the same pillar grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill3d.cli import main
from distill3d.config import load_config
from distill3d.config.schema import ExperimentConfig, TermConfig
from distill3d.data.loader import collate_samples
from distill3d.distill.build import build_distiller
from distill3d.distill.cache import TeacherCache, cached_tap_names, write_teacher_cache
from distill3d.engine.builders import build_dataset
from distill3d.errors import ConfigError

RANGE = [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]
SEEDS = 2  # augmentation seeds of the cache

#: Tolerance of the cached losses (relative; no absolute slack: the head terms of a barely
#: trained teacher are ~1e-5). float16 rounds each cached teacher value x to within
#: |x| * 2**-11 ~ 4.9e-4 |x|. Feature terms (FitNet's MSE, PointDistiller) move by about that
#: relative amount (measured: < 5e-4). Logit terms see it through the teacher's heatmap
#: logits: sigmoid(x) moves by (1 - sigmoid(x)) dx ~ |x| * 4.9e-4 relative, up to ~5e-3 for the
#: logits around -8 of a young teacher (measured: up to 4e-3 for pp_logit, whose mask is the
#: teacher's score). 1e-2 covers logits up to |x| ~ 20, while another sample, augmentation,
#: tap or voxel order changes the losses by far more.
RTOL = 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _data(root: Path, point_cloud_range=RANGE) -> dict:
    return {"dataset": "nuscenes", "root": str(root), "version": "v1.0-mini",
            "point_cloud_range": list(point_cloud_range)}


def _model(width: float) -> dict:
    return {"type": "centerpoint_pillar", "width_multiplier": width, "voxel_size": [0.8, 0.8, 8.0],
            "blocks_per_stage": [1, 1, 1], "nms_type": "circle"}


TRAIN = {"epochs": 1, "batch_size": 2, "num_workers": 0, "num_threads": 1, "log_interval": 1}

TERMS = [
    {"name": "neck", "student": "neck", "teacher": "neck", "loss": "fitnet", "adapter": "conv1x1", "weight": 1.0},
    {"name": "local", "student": "pillars", "teacher": "pillars", "loss": "pointdistiller", "weight": 1.0,
     "params": {"num_samples": 64, "knn": 8, "temperature": 4.0, "importance_tap": "pillars.num_points"}},
    {"name": "pp_logit", "student": "heads", "teacher": "heads", "loss": "pp_logit", "weight": 15.0},
]


@pytest.fixture(scope="module")
def teacher(synth_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher config, its checkpoint after one epoch)."""
    folder = tmp_path_factory.mktemp("cache_teacher")
    cfg_path = folder / "teacher.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "tiny_teacher", "seed": 0, "data": _data(synth_nuscenes),
                                        "model": _model(0.5), "train": TRAIN}))
    run = folder / "run"
    assert main(["train", str(cfg_path), "--work-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    return cfg_path, run / "checkpoints" / "last.pth"


@pytest.fixture(scope="module")
def student_cfg(teacher: tuple[Path, Path], synth_nuscenes: Path) -> ExperimentConfig:
    path = teacher[0].parent / "student.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny_student", "seed": 0, "data": _data(synth_nuscenes),
                                    "model": _model(0.25), "train": TRAIN,
                                    "distill": {"teacher_config": str(teacher[0]), "terms": TERMS}}))
    return load_config(path)


@pytest.fixture(scope="module")
def cache_dir(student_cfg: ExperimentConfig, teacher: tuple[Path, Path]) -> Path:
    out = teacher[0].parent / "cache"
    cache = write_teacher_cache(student_cfg, teacher[1], out, augmentation_seeds=SEEDS, device="cpu")
    assert cache.augmentation_cycle == SEEDS
    return out


def _with_cache(cfg: ExperimentConfig, cache_dir: Path | None) -> ExperimentConfig:
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, cache_dir=str(cache_dir) if cache_dir
                                                                  else None))


@pytest.fixture(scope="module")
def distillers(student_cfg: ExperimentConfig, teacher: tuple[Path, Path], cache_dir: Path):
    """(live, cached): the same student and adapters, eval mode."""
    live = build_distiller(student_cfg, teacher[1], use_cache=False)
    cached = build_distiller(_with_cache(student_cfg, cache_dir), teacher[1], use_cache=True)
    assert live.teacher_source is None and cached.teacher_source is not None
    cached.load_state_dict(live.state_dict())
    return live.eval(), cached.eval()


def _train_set(cfg: ExperimentConfig):
    dataset = build_dataset(cfg, "train", training=True)
    dataset.augmentation_cycle = SEEDS
    return dataset


# ----------------------------------------------------------------------------- equality


def test_cached_losses_equal_the_live_teachers(distillers, student_cfg: ExperimentConfig) -> None:
    live, cached = distillers
    dataset = _train_set(student_cfg)
    n = len(dataset)
    assert n >= 4
    compared = 0
    for epoch in range(SEEDS + 1):  # epoch 2 draws seed 0 again
        dataset.set_epoch(epoch)
        for start in range(0, n, 3):
            batch = collate_samples([dataset[i] for i in range(start, min(start + 3, n))])
            assert {s.extras["augmentation_epoch"] for s in batch.samples} == {epoch % SEEDS}
            with torch.no_grad():
                want, got = live(batch), cached(batch)
            kd = sorted(k for k in want if k.startswith("kd."))
            assert kd == ["kd.local", "kd.neck", "kd.pp_logit"] and sorted(k for k in got if k.startswith("kd.")) == kd
            for key in kd:
                assert float(want[key]) > 0, key  # a term that distils something
                assert float(got[key]) == pytest.approx(float(want[key]), rel=RTOL, abs=0.0), (epoch, start, key)
            for key in [k for k in want if k.startswith("det")]:  # the student alone: identical
                assert torch.equal(got[key], want[key]), key
            compared += 1
    assert compared >= 2 * (SEEDS + 1)


def test_cached_teacher_output_matches_the_live_one(distillers, student_cfg: ExperimentConfig) -> None:
    """The reader rebuilds the taps with the live teacher's kinds, grids, voxel rows and
    head keys (the losses above could hide a misordered voxel index)."""
    live, cached = distillers
    dataset = _train_set(student_cfg)
    dataset.set_epoch(1)
    batch = collate_samples([dataset[0], dataset[1]])
    with torch.no_grad():
        ref = live.teacher(batch)
    out = cached.teacher_source(batch)
    assert set(out.taps) == {"neck", "pillars", "pillars.num_points"}
    for name, tap in out.taps.items():
        assert tap.kind == ref.taps[name].kind and tap.tensor.dtype == torch.float32
        assert tap.grid == ref.taps[name].grid
        torch.testing.assert_close(tap.tensor, ref.taps[name].tensor, rtol=1e-3, atol=1e-3)
        if tap.index is not None:
            assert torch.equal(tap.index, ref.taps[name].index.long())
    assert torch.equal(out.taps["pillars.num_points"].tensor, ref.taps["pillars.num_points"].tensor.float())
    assert len(out.heads) == len(ref.heads)
    for head, ref_head in zip(out.heads, ref.heads):
        assert head.keys() == ref_head.keys()
        for key in head:
            torch.testing.assert_close(head[key], ref_head[key], rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- refusals


def test_another_teacher_checkpoint_is_refused(student_cfg: ExperimentConfig, teacher: tuple[Path, Path],
                                               cache_dir: Path, tmp_path: Path) -> None:
    payload = torch.load(teacher[1], map_location="cpu", weights_only=False)
    key = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][key] = payload["model"][key] + 0.01
    other = tmp_path / "other.pth"
    torch.save(payload, other)
    with pytest.raises(ConfigError, match="the teacher checkpoint changed") as info:
        build_distiller(_with_cache(student_cfg, cache_dir), other, use_cache=True)
    assert "stale teacher cache" in str(info.value) and "data config" not in str(info.value)
    # use_cache=False ignores distill.cache_dir
    assert build_distiller(_with_cache(student_cfg, cache_dir), other, use_cache=False).teacher_source is None


def test_another_data_config_is_refused(student_cfg: ExperimentConfig, teacher: tuple[Path, Path],
                                        cache_dir: Path) -> None:
    moved = dataclasses.replace(student_cfg, data=dataclasses.replace(
        student_cfg.data, point_cloud_range=(-19.2, -19.2, -5.0, 19.2, 19.2, 3.0)))
    with pytest.raises(ConfigError, match="the data config changed") as info:
        TeacherCache.open(cache_dir, moved, teacher[1])
    assert "teacher checkpoint" not in str(info.value)
    other_seed = dataclasses.replace(student_cfg, seed=1)  # other augmentation draws
    with pytest.raises(ConfigError, match="the seed changed"):
        TeacherCache.open(cache_dir, other_seed, teacher[1])


def test_another_teacher_bn_mode_is_refused(student_cfg: ExperimentConfig, teacher: tuple[Path, Path],
                                           cache_dir: Path) -> None:
    """Batch statistics give other teacher outputs than the running ones the cache holds."""
    train_bn = dataclasses.replace(student_cfg, distill=dataclasses.replace(student_cfg.distill,
                                                                            teacher_bn_mode="train"))
    with pytest.raises(ConfigError, match="distill.teacher_bn_mode changed"):
        TeacherCache.open(cache_dir, train_bn, teacher[1])


def test_a_missing_cache_is_refused(student_cfg: ExperimentConfig, teacher: tuple[Path, Path],
                                    cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no teacher cache") as info:
        build_distiller(_with_cache(student_cfg, tmp_path / "nowhere"), teacher[1], use_cache=True)
    assert "cache-teacher" in str(info.value)
    # a cache being rewritten (samples, no manifest yet) is no cache
    partial = tmp_path / "partial"
    shutil.copytree(cache_dir, partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="no teacher cache"):
        TeacherCache.open(partial, student_cfg, teacher[1])


def test_a_tap_the_cache_lacks_is_refused(student_cfg: ExperimentConfig, teacher: tuple[Path, Path],
                                          cache_dir: Path) -> None:
    cache = TeacherCache.open(cache_dir, student_cfg, teacher[1])
    cache.check_taps(["neck", "pillars"])  # held: fine
    with pytest.raises(ConfigError, match=r"lacks the teacher taps \['backbone.1'\]"):
        cache.check_taps(["neck", "backbone.1"])
    extra = TermConfig(name="att", student="backbone.1", teacher="backbone.1", loss="attention_transfer")
    more = dataclasses.replace(student_cfg, distill=dataclasses.replace(
        student_cfg.distill, cache_dir=str(cache_dir), terms=[*student_cfg.distill.terms, extra]))
    with pytest.raises(ConfigError, match="backbone.1"):
        build_distiller(more, teacher[1], use_cache=True)
    # module taps cannot be cached at all
    hooked = dataclasses.replace(student_cfg, distill=dataclasses.replace(student_cfg.distill, terms=[
        TermConfig(name="m", student="module:neck", teacher="module:neck", loss="fitnet", adapter="conv1x1")]))
    with pytest.raises(ConfigError, match="cannot be cached"):
        cached_tap_names(hooked, [])


def test_a_sample_with_other_points_is_refused(distillers, student_cfg: ExperimentConfig) -> None:
    _, cached = distillers
    dataset = _train_set(student_cfg)
    dataset.set_epoch(0)
    batch = collate_samples([dataset[0], dataset[1]])
    cached.teacher_source(batch)  # as cached: fine
    batch.points[batch.point_offsets[1], 0] += 0.5  # one point of sample 1 moved
    with pytest.raises(ConfigError, match=f"sample {batch.tokens[1]} has other points"), torch.no_grad():
        cached(batch)
    # a sample without its augmentation seed cannot be matched
    plain = build_dataset(student_cfg, "train", training=True)
    unmarked = collate_samples([plain[0]])
    unmarked.samples[0].extras.pop("augmentation_epoch")
    with pytest.raises(ConfigError, match="augmentation seed"):
        cached.teacher_source(unmarked)


def test_an_edited_fingerprint_or_a_missing_entry_is_refused(student_cfg: ExperimentConfig,
                                                             teacher: tuple[Path, Path], cache_dir: Path,
                                                             tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    dataset = _train_set(student_cfg)
    dataset.set_epoch(1)
    batch = collate_samples([dataset[0]])
    cache = TeacherCache.open(copy, student_cfg, teacher[1])
    read = cache.reader(build_distiller(student_cfg, teacher[1], use_cache=False).teacher)
    read(batch)
    entry = copy / "samples" / f"{batch.tokens[0]}__1.npz"
    with np.load(entry) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["fingerprint_count"] = np.array(int(arrays["fingerprint_count"]) + 1, dtype=np.int64)
    np.savez_compressed(entry, **arrays)
    with pytest.raises(ConfigError, match="has other points"):
        read(batch)
    entry.unlink()
    with pytest.raises(ConfigError, match="no entry for sample"):
        read(batch)


# ----------------------------------------------------------------------------- contents


def test_manifest_and_arrays(cache_dir: Path, teacher: tuple[Path, Path], student_cfg: ExperimentConfig) -> None:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["teacher_checkpoint_sha256"] == hashlib.sha256(teacher[1].read_bytes()).hexdigest()
    assert manifest["taps"] == ["neck", "pillars", "pillars.num_points"]
    assert manifest["tap_kinds"] == {"neck": "bev", "pillars": "voxels", "pillars.num_points": "voxels"}
    assert manifest["augmentation_seeds"] == SEEDS
    n = len(build_dataset(student_cfg, "train", training=False))
    files = sorted((cache_dir / "samples").glob("*.npz"))
    assert manifest["samples"] == len(files) == SEEDS * n
    assert manifest["data"]["point_cloud_range"] == RANGE
    assert manifest["teacher_model"]["width_multiplier"] == 0.5
    with np.load(files[0]) as data:
        keys = set(data.files)
        assert {"tap/neck", "tap/pillars", "index/pillars", "tap/pillars.num_points"} <= keys
        heads = [k for k in keys if k.startswith("head/")]
        assert heads and any(k.endswith("/heatmap") for k in heads)
        for key in keys:
            if key.startswith(("tap/", "head/")):
                assert data[key].dtype == np.float16, key
        assert data["index/pillars"].dtype == np.int32 and data["index/pillars"].shape[1] == 3
        assert data["tap/pillars"].shape[0] == data["index/pillars"].shape[0] == data["tap/pillars.num_points"].shape[0]
        assert data["tap/neck"].ndim == 3
        assert int(data["fingerprint_count"]) > 0


# ----------------------------------------------------------------------------- augmentation cycle


def test_configure_train_dataset_cycles_the_cached_seeds(distillers, student_cfg: ExperimentConfig) -> None:
    live, cached = distillers
    assert cached.augmentation_cycle == SEEDS and live.augmentation_cycle is None
    dataset = build_dataset(student_cfg, "train", training=True)
    live.configure_train_dataset(dataset)
    assert dataset.augmentation_cycle is None
    dataset.set_epoch(3)
    assert dataset[0].extras["augmentation_epoch"] == 3
    cached.configure_train_dataset(dataset)
    assert dataset.augmentation_cycle == SEEDS
    third = dataset[0]
    assert third.extras["augmentation_epoch"] == 1  # epoch 3 of a 2-seed cache: seed 1
    dataset.set_epoch(1)
    assert torch.equal(dataset[0].points, third.points)
    dataset.set_epoch(0)
    assert not torch.equal(dataset[0].points, third.points)


def test_writing_the_cache_uses_the_configured_threads(student_cfg: ExperimentConfig, teacher: tuple[Path, Path],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cache-teacher`` runs the teacher with ``train.num_threads`` intra-op threads, as
    ``train`` and ``test`` do (more threads than free cores slow small convolutions a lot)."""
    from distill3d.distill import build

    seen: list[int] = []
    real = build.build_teacher

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
        return model

    monkeypatch.setattr(build, "build_teacher", recording)
    assert student_cfg.train.num_threads == 1
    torch.set_num_threads(2)
    try:
        write_teacher_cache(student_cfg, teacher[1], tmp_path / "c", augmentation_seeds=1, device="cpu")
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(1)
    assert seen and set(seen) == {1}
