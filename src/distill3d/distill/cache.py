"""The teacher cache: the teacher's outputs computed once per sample and augmentation seed,
stored on disk and read back during distillation instead of running the teacher.

Layout of a cache folder::

    manifest.json                 what the cache holds and what it was made from
    samples/<token>__<k>.npz      one sample under augmentation seed k (compressed npz)

Each ``.npz`` holds, in float16, the teacher taps the distillation terms read (BEV maps
``(C, H, W)``; voxel features ``(V, C)`` with their ``(V, 3)`` ``(z, y, x)`` coordinates) and
every head map ``(C, H, W)``, plus a fingerprint of the sample's points (count and the sum
of x, y, z in float64) that catches a sample that changed since.

``manifest.json`` records the SHA-256 of the teacher checkpoint, the teacher's model config,
the data config, the seed, the augmentation setting, the teacher's BN mode and the number of
augmentation seeds ``K``. :meth:`TeacherCache.open` refuses a cache whose teacher, data or
augmentation differ from the run's, and a run whose terms need a tap the cache lacks, saying
what differs.
The manifest is written last, so an interrupted ``cache-teacher`` leaves no usable cache.

During distillation with a cache, the training set draws the augmentation of epoch
``e % K`` (``DetectionDataset.augmentation_cycle``), so every augmented sample the student
sees has its teacher outputs on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill3d.atomic_io import atomic_write_bytes, atomic_write_text
from distill3d.config import dump_config
from distill3d.config.schema import ExperimentConfig
from distill3d.config.typed import to_dict
from distill3d.data.loader import Batch
from distill3d.errors import ConfigError
from distill3d.models.base import DetectorOutput, Tap

__all__ = ["CACHE_FORMAT", "TeacherCache", "cached_tap_names", "file_sha256", "write_teacher_cache"]

CACHE_FORMAT = "distill3d-teacher-cache"
CACHE_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_tap_names(cfg: ExperimentConfig, teacher_taps: Iterable[str]) -> list[str]:
    """The teacher taps a run's terms read: the teacher side of every term that names a tap,
    any loss parameter that names a teacher tap (e.g. PointDistiller's ``importance_tap``),
    and the point counts of voxel taps.

    Raises:
        ConfigError: a term reads a ``module:`` tap, which cannot be cached.
    """
    available = set(teacher_taps)
    names: list[str] = []
    for term in (cfg.distill.terms if cfg.distill else []):
        side = term.teacher.strip()
        if side.startswith("module:"):
            raise ConfigError(f"distill.terms[{term.name}].teacher: module taps ({side}) cannot be cached; "
                              "name a detector tap, or distil without a cache")
        wanted = [] if side == "heads" else [side]
        wanted += [v for v in term.params.values() if isinstance(v, str) and v in available]
        for name in wanted:
            if name not in names:
                names.append(name)
    for name in list(names):
        base = name.split(".")[0]
        if f"{base}.num_points" in available and f"{base}.num_points" not in names:
            names.append(f"{base}.num_points")
    return names


def _fingerprint(points: Tensor) -> tuple[int, float]:
    xyz = points[:, :3].detach().to("cpu", torch.float64)
    return int(points.shape[0]), float(xyz.sum())


def _sample_key(token: str, seed_index: int) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in token)
    return f"{safe}__{seed_index}"


def _split_sample(output: DetectorOutput, taps: Sequence[str], b: int) -> dict[str, np.ndarray]:
    """Sample ``b``'s cached arrays of a batched teacher output."""
    arrays: dict[str, np.ndarray] = {}
    for name in taps:
        tap = output.taps[name]
        if tap.kind == "bev":
            arrays[f"tap/{name}"] = tap.tensor[b].detach().to("cpu", torch.float16).numpy()
        else:
            if tap.index is None:
                raise ConfigError(f"teacher tap {name!r} ({tap.kind}) has no coordinates and cannot be cached")
            rows = tap.index[:, 0] == b
            arrays[f"tap/{name}"] = tap.tensor[rows].detach().to("cpu", torch.float16).numpy()
            arrays[f"index/{name}"] = tap.index[rows][:, 1:].detach().to("cpu", torch.int32).numpy()
    for t, head in enumerate(output.heads):
        for key, value in head.items():
            arrays[f"head/{t}/{key}"] = value[b].detach().to("cpu", torch.float16).numpy()
    return arrays


def _manifest_identity(cfg: ExperimentConfig, teacher_cfg: ExperimentConfig, teacher_sha: str) -> dict[str, Any]:
    """What a cache must agree with to be used."""
    return {
        "teacher_checkpoint_sha256": teacher_sha,
        "teacher_model": to_dict(teacher_cfg.model),
        "data": to_dict(cfg.data),
        "seed": cfg.seed,
        "augment": cfg.train.augment,
        "teacher_bn_mode": cfg.distill.teacher_bn_mode if cfg.distill else "eval",
    }


@dataclass
class TeacherCache:
    """An opened, validated teacher cache (see the module docstring)."""

    root: Path
    manifest: dict[str, Any]

    @property
    def augmentation_cycle(self) -> int:
        return int(self.manifest["augmentation_seeds"])

    @classmethod
    def open(cls, root: str | Path, cfg: ExperimentConfig, teacher_checkpoint: str | Path | None) -> TeacherCache:
        """Open the cache at ``root`` for the run ``cfg`` with the teacher checkpoint.

        Raises:
            ConfigError: no cache there, or a stale one (naming what differs).
        """
        from distill3d.distill.build import teacher_experiment

        folder = Path(root)
        path = folder / "manifest.json"
        if not path.is_file():
            raise ConfigError(f"no teacher cache at {folder} (no manifest.json): build it with "
                              "'distill3d cache-teacher CONFIG --teacher-ckpt PATH'")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable teacher-cache manifest: {exc}") from None
        if manifest.get("format") != CACHE_FORMAT or int(manifest.get("version", 0)) > CACHE_VERSION:
            raise ConfigError(f"{path}: not a distill3d teacher cache of a version this distill3d reads")
        if teacher_checkpoint is None:
            raise ConfigError("a teacher cache needs the teacher checkpoint to check it against (--teacher-ckpt)")
        expected = _manifest_identity(cfg, teacher_experiment(cfg), file_sha256(teacher_checkpoint))
        stale = [key for key, value in expected.items() if manifest.get(key) != json.loads(json.dumps(value))]
        if stale:
            what = {"teacher_checkpoint_sha256": "the teacher checkpoint", "teacher_model": "the teacher's model config",
                    "data": "the data config", "seed": "the seed", "augment": "train.augment",
                    "teacher_bn_mode": "distill.teacher_bn_mode"}
            raise ConfigError(f"stale teacher cache {folder}: {', '.join(what[k] for k in stale)} changed since it "
                              "was written; rebuild it with 'distill3d cache-teacher' (or remove distill.cache_dir)")
        return cls(folder, manifest)

    def check_taps(self, needed: Iterable[str]) -> None:
        """Raise ConfigError when the run needs taps the cache lacks."""
        missing = [n for n in needed if n not in self.manifest["taps"]]
        if missing:
            raise ConfigError(f"teacher cache {self.root} lacks the teacher taps {missing} that the terms read "
                              f"(it has {self.manifest['taps']}); rebuild it with 'distill3d cache-teacher'")

    def load(self, token: str, seed_index: int) -> dict[str, np.ndarray]:
        """The arrays of one cached sample.

        Raises:
            ConfigError: the sample is not in the cache.
        """
        path = self.root / "samples" / f"{_sample_key(token, seed_index)}.npz"
        if not path.is_file():
            raise ConfigError(f"teacher cache {self.root} has no entry for sample {token} under augmentation seed "
                              f"{seed_index}; rebuild it with 'distill3d cache-teacher'")
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    def reader(self, teacher: nn.Module) -> Callable[[Batch], DetectorOutput]:
        """A teacher source for :class:`~distill3d.distill.distiller.Distiller`: the cached
        outputs of a batch, as a :class:`DetectorOutput` on the batch's device (float32)."""
        grids: dict[str, Any] = teacher.tap_grids() if hasattr(teacher, "tap_grids") else {}
        head_grid = getattr(teacher, "head_grid", None)
        taps = list(self.manifest["taps"])
        kinds = dict(self.manifest["tap_kinds"])
        num_tasks = int(self.manifest["num_tasks"])

        def read(batch: Batch) -> DetectorOutput:
            device = batch.points.device
            per_sample = []
            for b, token in enumerate(batch.tokens):
                sample = batch.samples[b] if batch.samples else None
                if sample is None or "augmentation_epoch" not in sample.extras:
                    raise ConfigError("the batch does not record its augmentation seed (Sample.extras"
                                      "['augmentation_epoch']); the teacher cache cannot be matched to it")
                arrays = self.load(token, int(sample.extras["augmentation_epoch"]))
                count, total = _fingerprint(batch.points[batch.point_offsets[b]:batch.point_offsets[b + 1]])
                if int(arrays["fingerprint_count"]) != count or not np.isclose(float(arrays["fingerprint_sum"]), total,
                                                                                rtol=1e-6, atol=1e-3):
                    raise ConfigError(f"stale teacher cache {self.root}: sample {token} has other points than when it "
                                      "was cached; rebuild it with 'distill3d cache-teacher'")
                per_sample.append(arrays)
            out = DetectorOutput(head_grid=head_grid)
            for name in taps:
                if kinds[name] == "bev":
                    tensor = torch.stack([torch.from_numpy(a[f"tap/{name}"]) for a in per_sample])
                    out.taps[name] = Tap(tensor.to(device, torch.float32), "bev", grids.get(name))
                else:
                    feats = [torch.from_numpy(a[f"tap/{name}"]) for a in per_sample]
                    index = [torch.cat([torch.full((a[f"index/{name}"].shape[0], 1), b, dtype=torch.int64),
                                        torch.from_numpy(a[f"index/{name}"]).long()], 1)
                             for b, a in enumerate(per_sample)]
                    out.taps[name] = Tap(torch.cat(feats).to(device, torch.float32), kinds[name], grids.get(name),
                                         torch.cat(index).to(device))
            for t in range(num_tasks):
                keys = sorted({k.split("/", 2)[2] for k in per_sample[0] if k.startswith(f"head/{t}/")})
                out.heads.append({key: torch.stack([torch.from_numpy(a[f"head/{t}/{key}"]) for a in per_sample])
                                  .to(device, torch.float32) for key in keys})
            return out

        return read


def write_teacher_cache(cfg: ExperimentConfig, teacher_checkpoint: str | Path, out_dir: str | Path, *,
                        augmentation_seeds: int = 1, batch_size: int | None = None, device: str | None = None,
                        num_workers: int | None = None, log: Callable[[str], Any] | None = None) -> TeacherCache:
    """Run the teacher over the training split under ``augmentation_seeds`` augmentation
    seeds and store the outputs the terms of ``cfg`` need (``distill3d cache-teacher``).

    Returns:
        The written cache, opened.
    """
    from distill3d.distill.build import build_teacher, teacher_experiment
    from distill3d.engine.builders import build_dataset, build_eval_loader
    from distill3d.engine.trainer import torch_run_settings

    if augmentation_seeds < 1:
        raise ConfigError(f"--augmentation-seeds must be >= 1, got {augmentation_seeds}")
    say = log or (lambda _text: None)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = build_teacher(cfg, teacher_checkpoint, log=say).to(dev).eval()
    from distill3d.distill.distiller import freeze_teacher

    freeze_teacher(teacher, cfg.distill.teacher_bn_mode if cfg.distill else "eval")
    available = teacher.tap_names() if hasattr(teacher, "tap_names") else []
    taps = cached_tap_names(cfg, available)
    root = Path(out_dir)
    (root / "samples").mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # the folder is being rewritten: not a valid cache until the end
    dataset = build_dataset(cfg, cfg.data.train_split, training=True, log=say)
    dataset.augmentation_cycle = augmentation_seeds  # type: ignore[attr-defined]
    loader = build_eval_loader(dataset, batch_size or cfg.train.batch_size,
                               cfg.train.num_workers if num_workers is None else num_workers, cfg.seed)
    kinds: dict[str, str] = {}
    num_tasks = 0
    written = 0
    with torch_run_settings(num_threads=cfg.train.num_threads, deterministic=False, device=dev):
        for seed_index in range(augmentation_seeds):
            dataset.set_epoch(seed_index)  # type: ignore[attr-defined]
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(seed_index)
            for batch in loader:
                batch = batch.to(dev)
                with torch.no_grad():
                    output = teacher(batch)
                num_tasks = len(output.heads)
                for name in taps:
                    kinds[name] = output.taps[name].kind
                for b, token in enumerate(batch.tokens):
                    arrays = _split_sample(output, taps, b)
                    count, total = _fingerprint(batch.points[batch.point_offsets[b]:batch.point_offsets[b + 1]])
                    arrays["fingerprint_count"] = np.array(count, dtype=np.int64)
                    arrays["fingerprint_sum"] = np.array(total, dtype=np.float64)
                    buffer = io.BytesIO()
                    np.savez_compressed(buffer, **arrays)
                    atomic_write_bytes(root / "samples" / f"{_sample_key(token, seed_index)}.npz", buffer.getvalue())
                    written += 1
            say(f"cached augmentation seed {seed_index + 1}/{augmentation_seeds}: {written} samples so far")
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        **_manifest_identity(cfg, teacher_experiment(cfg), file_sha256(teacher_checkpoint)),
        "teacher_config_text": dump_config(teacher_experiment(cfg)),
        "augmentation_seeds": augmentation_seeds,
        "taps": taps,
        "tap_kinds": kinds,
        "num_tasks": num_tasks,
        "samples": written,
        "split": cfg.data.train_split,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    say(f"teacher cache: {written} entries, taps {taps} + heads, in {root}")
    return TeacherCache(root, json.loads(manifest_path.read_text(encoding="utf-8")))
