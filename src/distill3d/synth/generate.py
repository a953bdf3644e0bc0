"""Generate a SynthDrive dataset on disk: presets, per-scene seeds, worker processes, manifest.

:func:`generate_dataset` is what ``distill3d synth`` runs. It plans the scenes (names from the
official nuScenes split lists, one seed per scene derived from the dataset seed and the
scene's index), has ``workers`` processes simulate and write the scenes' sensor files, and
then writes what depends on all scenes (the nuScenes tables, KITTI's ``ImageSets``) in scene
order, and a ``synthdrive.json`` manifest at the root.

Determinism: a scene's files depend only on the dataset seed, the scene's index and the
sensor settings, never on which process wrote it or when; tables are assembled in scene order
from the workers' results; images are encoded with fixed settings. So the same arguments give
byte-identical trees whatever ``workers`` is (the manifest does not record ``workers``).

Presets (``samples_per_scene`` keyframes at 2 Hz per scene; nuScenes scenes are 20 s = 40):

=========  ======  =================  =============================================
preset     scenes  samples per scene  nuScenes version / scene names
=========  ======  =================  =============================================
mini       10      40                 ``v1.0-mini``: the 8 mini_train + 2 mini_val
small      50      40                 ``v1.0-trainval``: ~85 % train, ~15 % val names
medium     200     40                 ``v1.0-trainval``
large      850     40                 ``v1.0-trainval``: all 700 train + 150 val names
=========  ======  =================  =============================================

``scenes`` and ``samples_per_scene`` override a preset's numbers. KITTI output uses the same
presets, one frame per keyframe; its val split is the same share of whole scenes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_module
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill3d.errors import Distill3DError
from distill3d.synth import splits as official_splits
from distill3d.synth.kitti_writer import (
    KITTI_IMAGE_SIZE,
    KittiSceneJob,
    KittiSceneResult,
    write_image_sets,
    write_kitti_scene,
)
from distill3d.synth.nuscenes_writer import (
    NuScenesSceneJob,
    NuScenesSceneResult,
    atomic_write_bytes,
    build_nuscenes_tables,
    write_nuscenes_scene,
    write_nuscenes_tables,
)

__all__ = [
    "FORMATS",
    "GENERATOR_VERSION",
    "PRESETS",
    "GenerationReport",
    "Preset",
    "ScenePlan",
    "generate_dataset",
    "parse_image_size",
    "plan_scenes",
    "scene_seed",
]

#: Version of the generator's output; bump when the same arguments give different files.
GENERATOR_VERSION = "1.0"
FORMATS: tuple[str, ...] = ("nuscenes", "kitti")
_DEFAULT_BEAMS = {"nuscenes": 32, "kitti": 64}
_DEFAULT_IMAGE_SIZE = {"nuscenes": (704, 256), "kitti": KITTI_IMAGE_SIZE}
_DEFAULT_SWEEPS = 9
# What a run writes at the root of its output folder (removed first with overwrite=True).
_OWNED = {
    "nuscenes": ("v1.0-mini", "v1.0-trainval", "samples", "sweeps", "maps", "synthdrive.json"),
    "kitti": ("training", "ImageSets", "synthdrive.json"),
}


@dataclass(frozen=True)
class Preset:
    """A dataset size: scene count, keyframes per scene, nuScenes version, val share."""

    name: str
    scenes: int
    samples_per_scene: int
    version: str
    val_fraction: float


PRESETS: dict[str, Preset] = {
    "mini": Preset("mini", 10, 40, "v1.0-mini", 0.2),
    "small": Preset("small", 50, 40, "v1.0-trainval", 0.15),
    "medium": Preset("medium", 200, 40, "v1.0-trainval", 0.15),
    "large": Preset("large", 850, 40, "v1.0-trainval", 0.15),
}


@dataclass(frozen=True)
class ScenePlan:
    """One scene to generate: its index, official name, split and world seed."""

    index: int
    name: str
    split: str
    seed: int


@dataclass
class GenerationReport:
    """What :func:`generate_dataset` wrote.

    Attributes:
        out_dir: the output root.
        format: ``"nuscenes"`` or ``"kitti"``.
        version: the nuScenes version folder (``None`` for KITTI).
        scenes: the scene plans, in dataset order.
        num_samples: keyframes written.
        elapsed_s: wall-clock seconds.
        timings: CPU seconds per stage, summed over scenes (world, lidar, sweeps, cameras,
            jpeg/png, boundary, count, io, ...) plus ``tables``.
        results: the per-scene writer results (nuScenes or KITTI), in scene order.
        manifest: the content of ``synthdrive.json``.
    """

    out_dir: Path
    format: str
    version: str | None
    scenes: list[ScenePlan]
    num_samples: int
    elapsed_s: float
    timings: dict[str, float]
    results: list[Any] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def parse_image_size(text: str) -> tuple[int, int]:
    """``"704x256"`` -> ``(704, 256)``; raises :class:`Distill3DError` on bad text."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        width, height = int(parts[0]), int(parts[1])
    except ValueError:
        raise Distill3DError(f"--image-size must look like WIDTHxHEIGHT (e.g. 704x256), "
                             f"got {text!r}") from None
    if width < 16 or height < 16 or width > 8192 or height > 8192:
        raise Distill3DError(f"--image-size {text!r}: width and height must be in 16..8192")
    return width, height


def scene_seed(seed: int, index: int) -> int:
    """World seed of scene ``index`` of a dataset generated with ``seed`` (31 bits)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def plan_scenes(preset: Preset, num_scenes: int, seed: int) -> list[ScenePlan]:
    """Names, splits and seeds of ``num_scenes`` scenes of a preset.

    ``v1.0-mini`` presets take names from ``mini_train`` and ``mini_val`` (at most 10 scenes),
    others from ``train`` and ``val``; about ``preset.val_fraction`` of the scenes (at least
    one when there are two or more) are val scenes, listed after the train scenes.
    """
    if num_scenes < 1:
        raise Distill3DError(f"--scenes must be >= 1, got {num_scenes}")
    if preset.version == "v1.0-mini":
        limit = len(official_splits.MINI_TRAIN) + len(official_splits.MINI_VAL)
        if num_scenes > limit:
            raise Distill3DError(
                f"preset {preset.name!r} writes v1.0-mini, which has {limit} scene names; asked "
                f"for {num_scenes} scenes (use --preset small or larger for more)")
        num_val = max(1, int(round(num_scenes * preset.val_fraction))) if num_scenes >= 2 else 0
        num_val = min(num_val, len(official_splits.MINI_VAL))
        named = ([(n, "mini_train") for n in official_splits.MINI_TRAIN[: num_scenes - num_val]]
                 + [(n, "mini_val") for n in official_splits.MINI_VAL[:num_val]])
    else:
        try:
            named = official_splits.trainval_scene_names(num_scenes, preset.val_fraction)
        except ValueError as exc:
            raise Distill3DError(str(exc)) from None
    return [ScenePlan(index=i, name=n, split=s, seed=scene_seed(seed, i))
            for i, (n, s) in enumerate(named)]


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite``; then clear what this run writes."""
    if out.exists() and not out.is_dir():
        raise Distill3DError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise Distill3DError(
                f"output directory {out} is not empty; choose another --out or pass "
                f"--overwrite to replace the SynthDrive files in it")
        for name in _OWNED["nuscenes"] + _OWNED["kitti"]:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------


def _worker_init() -> None:
    """Per-process setup: one thread per worker (the parallelism is across processes)."""
    import torch

    torch.set_num_threads(1)


def _dispatch(job: NuScenesSceneJob | KittiSceneJob,
              report: Callable[[int], None] | None) -> NuScenesSceneResult | KittiSceneResult:
    """Simulate and write one scene with the writer of its format."""
    if isinstance(job, NuScenesSceneJob):
        return write_nuscenes_scene(job, report)
    return write_kitti_scene(job, report)


def _run_job(job: NuScenesSceneJob | KittiSceneJob, progress_queue: Any = None) -> Any:
    """Worker-process entry point: one scene, progress sent through ``progress_queue``."""
    return _dispatch(job, None if progress_queue is None else progress_queue.put)


def _run_jobs(jobs: Sequence[Any], workers: int, advance: Callable[[int], None]) -> list[Any]:
    """Run scene jobs on ``workers`` processes (in this process for 1); results in job order.

    Each scene runs single-threaded (torch included): the work items are small, so extra
    threads only add contention, and parallelism comes from the processes.
    """
    if workers <= 1 or len(jobs) <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [_dispatch(job, advance) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        progress_queue = manager.Queue()
        results: list[Any] = [None] * len(jobs)
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                 initializer=_worker_init) as pool:
            pending: dict[Future, int] = {pool.submit(_run_job, job, progress_queue): i
                                          for i, job in enumerate(jobs)}
            try:
                while pending:
                    done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(progress_queue, advance)
                    for fut in done:
                        results[pending.pop(fut)] = fut.result()
            except BaseException:
                for fut in pending:  # a failed scene or Ctrl-C: do not start the others
                    fut.cancel()
                raise
            _drain(progress_queue, advance)
    return results


def _drain(progress_queue: Any, advance: Callable[[int], None]) -> None:
    while True:
        try:
            advance(int(progress_queue.get_nowait()))
        except queue_module.Empty:
            return


class _Progress:
    """A rich progress bar over samples on stderr, or nothing (stderr not a terminal, or
    disabled)."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=False)
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def generate_dataset(
    format: str,
    out_dir: str | os.PathLike,
    preset: str = "mini",
    scenes: int | None = None,
    samples_per_scene: int | None = None,
    beams: int | None = None,
    image_size: tuple[int, int] | str | None = None,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    sweeps: int | None = None,
    progress: bool = True,
) -> GenerationReport:
    """Generate a SynthDrive dataset in the nuScenes or KITTI layout.

    Args:
        format: ``"nuscenes"`` or ``"kitti"``.
        out_dir: output root (the nuScenes ``dataroot`` / the KITTI object root).
        preset: ``mini``, ``small``, ``medium`` or ``large`` (see the module docstring).
        scenes: number of scenes (default: the preset's).
        samples_per_scene: keyframes per scene (default: the preset's).
        beams: LiDAR beams, 32, 64 or 16 (default 32 for nuScenes, 64 for KITTI).
        image_size: ``(width, height)`` or ``"WxH"`` (default 704x256 for nuScenes, 1242x375
            for KITTI).
        seed: dataset seed.
        workers: processes (1: everything in this process). Workers are started with
            ``spawn``, so a script that calls this with ``workers > 1`` needs the usual
            ``if __name__ == "__main__":`` guard.
        overwrite: allow a non-empty ``out_dir``; what SynthDrive writes there (the nuScenes
            version folders, ``samples``, ``sweeps``, ``maps``, KITTI's ``training`` and
            ``ImageSets``, ``synthdrive.json``) is deleted first, other files are kept.
        sweeps: nuScenes LiDAR sweeps between keyframes (default 9, i.e. 20 Hz; 0 allowed).
        progress: show a progress bar (only on a terminal).

    Returns:
        A :class:`GenerationReport`.

    Raises:
        Distill3DError: a bad argument, or a non-empty ``out_dir`` without ``overwrite``.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise Distill3DError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if preset not in PRESETS:
        raise Distill3DError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    num_scenes = spec.scenes if scenes is None else int(scenes)
    num_samples = spec.samples_per_scene if samples_per_scene is None else int(samples_per_scene)
    if num_samples < 1:
        raise Distill3DError(f"--samples-per-scene must be >= 1, got {num_samples}")
    beams = _DEFAULT_BEAMS[format] if beams is None else int(beams)
    if beams not in (16, 32, 64):
        raise Distill3DError(f"--beams must be 16, 32 or 64, got {beams}")
    if image_size is None:
        size = _DEFAULT_IMAGE_SIZE[format]
    elif isinstance(image_size, str):
        size = parse_image_size(image_size)
    else:
        size = (int(image_size[0]), int(image_size[1]))
        parse_image_size(f"{size[0]}x{size[1]}")
    if format == "nuscenes" and size[1] > round(900 * size[0] / 1600):
        raise Distill3DError(
            f"--image-size {size[0]}x{size[1]}: for nuScenes cameras the height may be at most "
            f"{round(900 * size[0] / 1600)} for width {size[0]} (the 1600x900 images are resized "
            f"to the width, then cropped from the top)")
    if format == "kitti" and sweeps not in (None, 0):
        raise Distill3DError("--sweeps applies to --format nuscenes only (KITTI has no sweeps)")
    num_sweeps = _DEFAULT_SWEEPS if sweeps is None else int(sweeps)
    if num_sweeps < 0:
        raise Distill3DError(f"--sweeps must be >= 0, got {num_sweeps}")
    if int(workers) < 1:
        raise Distill3DError(f"--workers must be >= 1, got {workers}")
    plans = plan_scenes(spec, num_scenes, seed)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)

    jobs: list[Any]
    if format == "nuscenes":
        jobs = [NuScenesSceneJob(root=str(out), scene_index=p.index, scene_name=p.name,
                                 scene_seed=p.seed, token_seed=int(seed),
                                 num_keyframes=num_samples, sweeps=num_sweeps, beams=beams,
                                 image_size=size) for p in plans]
    else:
        jobs = [KittiSceneJob(root=str(out), scene_index=p.index, scene_seed=p.seed,
                              first_frame=p.index * num_samples, num_keyframes=num_samples,
                              beams=beams, image_size=size) for p in plans]
    total = num_scenes * num_samples
    with _Progress(total, f"SynthDrive {format} ({num_scenes} scenes)", progress) as bar:
        results = _run_jobs(jobs, int(workers), bar.advance)

    tic = time.perf_counter()
    version: str | None = None
    if format == "nuscenes":
        version = spec.version
        tables = build_nuscenes_tables(results, int(seed))
        write_nuscenes_tables(out, version, tables)
    else:
        train_ids = [f.frame_id for r, p in zip(results, plans) if p.split in ("train", "mini_train")
                     for f in r.frames]
        val_ids = [f.frame_id for r, p in zip(results, plans) if p.split in ("val", "mini_val")
                   for f in r.frames]
        write_image_sets(out, train_ids, val_ids)
    timings: dict[str, float] = {}
    for res in results:
        for key, value in res.timings.items():
            timings[key] = timings.get(key, 0.0) + float(value)
    timings["tables"] = time.perf_counter() - tic

    manifest = {
        "generator": "distill3d.synth (SynthDrive)",
        "generator_version": GENERATOR_VERSION,
        "format": format,
        "nuscenes_version": version,
        "preset": preset,
        "scenes": num_scenes,
        "samples_per_scene": num_samples,
        "beams": beams,
        "image_size": [size[0], size[1]],
        "sweeps": num_sweeps if format == "nuscenes" else 0,
        "seed": int(seed),
        "scene_names": [p.name for p in plans],
        "scene_splits": [p.split for p in plans],
        "scene_seeds": [p.seed for p in plans],
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(out / "synthdrive.json", text.encode("utf-8"))
    return GenerationReport(out_dir=out, format=format, version=version, scenes=plans,
                            num_samples=total, elapsed_s=time.perf_counter() - start,
                            timings=timings, results=results, manifest=manifest)
