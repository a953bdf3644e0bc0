"""Benchmark SynthDrive generation: samples per second per worker, and where the time goes.

Generates the same small nuScenes-layout set (default 4 scenes x 10 samples, 32-beam LiDAR,
six 704x256 cameras) with :func:`distill3d.synth.generate.generate_dataset`

* with the default 9 LiDAR sweeps between keyframes (nuScenes' 20 Hz) and with
  ``sweeps=0`` (keyframes only),
* each with 1 worker and with 2 workers, in the same run, alternating 1 and 2 workers
  ``--repeats`` times so both see the same machine load,

and prints wall-clock samples/s, ms per sample, samples/s per worker and the speed-up of 2
workers over 1 (medians over the repeats). Then it times the stages directly, in this
process and on one core, by calling the world, LiDAR, camera and writer helpers on the same
scenes (same seeds) the way the nuScenes writer does: world state (scene construction plus
``state_at`` of keyframes and sweeps), LiDAR keyframe, LiDAR sweeps, cameras (rasterise,
shade, noise, visibility), JPEG encoding, writing the files, and the points-in-box work
(moving points off box faces, counting points per box). For comparison it also prints the
per-stage CPU seconds the writer itself reports (``GenerationReport.timings``) for the
1-worker run. Nothing is asserted.

Run::

    python benchmarks/synth.py [--scenes 4] [--samples 10] [--repeats 2] [--seed 0]

The machine may be shared, so compare numbers within one run (ratios), not across runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from distill3d.synth.camera import (
    nuscenes_camera_rig,
    render_cameras,
    visibility_from_renders,
)
from distill3d.synth.generate import PRESETS, generate_dataset, plan_scenes
from distill3d.synth.lidar import lidar_sensor_to_world, scan_lidar_detailed
from distill3d.synth.nuscenes_writer import (
    count_points_world,
    drivable_mask_png,
    encode_jpeg,
    nuscenes_lidar_config,
    settle_boundary_points,
    sweep_times,
)
from distill3d.synth.world import Scene, SceneConfig

IMAGE_SIZE = (704, 256)
BEAMS = 32
DEFAULT_SWEEPS = 9


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _generate(out: Path, scenes: int, samples: int, sweeps: int, workers: int,
              seed: int) -> tuple[float, float, dict[str, float]]:
    """One generation into an empty folder; returns (wall s, CPU s of all processes, writer
    stage timings)."""
    if out.exists():
        shutil.rmtree(out)
    cpu0 = _cpu_seconds()
    tic = time.perf_counter()
    report = generate_dataset("nuscenes", out, preset="mini", scenes=scenes,
                              samples_per_scene=samples, beams=BEAMS, image_size=IMAGE_SIZE,
                              seed=seed, workers=workers, sweeps=sweeps, progress=False)
    wall = time.perf_counter() - tic
    cpu = _cpu_seconds() - cpu0
    shutil.rmtree(out)
    return wall, cpu, dict(report.timings)


def measure_generation(tmp: Path, scenes: int, samples: int, sweeps: int, repeats: int,
                       seed: int) -> dict[str, object]:
    """Wall and CPU times of 1 and 2 workers, alternated ``repeats`` times."""
    walls: dict[int, list[float]] = {1: [], 2: []}
    cpus: dict[int, list[float]] = {1: [], 2: []}
    timings: dict[str, float] = {}
    for r in range(repeats):
        for workers in (1, 2):
            wall, cpu, stage = _generate(tmp / f"gen_s{sweeps}_w{workers}", scenes, samples,
                                         sweeps, workers, seed)
            walls[workers].append(wall)
            cpus[workers].append(cpu)
            if workers == 1 and r == 0:
                timings = stage
            print(f"  sweeps={sweeps} workers={workers} repeat {r + 1}/{repeats}: "
                  f"{wall:.1f} s wall, {cpu:.1f} s CPU, load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    return {"walls": walls, "cpus": cpus, "timings": timings}


def measure_stages(tmp: Path, scenes: int, samples: int, sweeps: int,
                   seed: int) -> dict[str, float]:
    """CPU seconds per stage (``time.process_time``, so other jobs on the machine do not
    inflate them), summed over all samples, timed directly in this process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp / "stages"
    out.mkdir(parents=True, exist_ok=True)
    t = {k: 0.0 for k in ("world", "lidar", "sweeps", "cameras", "encode", "write",
                          "in_box", "map")}
    lidar = nuscenes_lidar_config(BEAMS)
    cameras = nuscenes_camera_rig(IMAGE_SIZE)
    plans = plan_scenes(PRESETS["mini"], scenes, seed)
    try:
        for plan in plans:
            tic = time.process_time()
            scene = Scene(SceneConfig(seed=plan.seed, num_keyframes=samples,
                                      scene_index=plan.index))
            key_times = [float(x) for x in scene.keyframe_times()]
            t["world"] += time.process_time() - tic
            plan_sweeps = sweep_times(key_times, sweeps)
            for k, t_key in enumerate(key_times):
                if k > 0:
                    for j, ts in enumerate(plan_sweeps[k - 1]):
                        tic = time.process_time()
                        state = scene.state_at(ts)
                        t["world"] += time.process_time() - tic
                        tic = time.process_time()
                        pts = scan_lidar_detailed(state, lidar,
                                                  _rng(plan.seed, 3, k - 1, j)).points
                        t["sweeps"] += time.process_time() - tic
                        tic = time.process_time()
                        (out / f"sweep_{plan.index}_{k}_{j}.bin").write_bytes(
                            np.ascontiguousarray(pts, dtype="<f4").tobytes())
                        t["write"] += time.process_time() - tic
                tic = time.process_time()
                state = scene.state_at(t_key)
                t["world"] += time.process_time() - tic
                tic = time.process_time()
                scan = scan_lidar_detailed(state, lidar, _rng(plan.seed, 1, k))
                t["lidar"] += time.process_time() - tic
                tic = time.process_time()
                gt = (np.stack([o.box for o in state.objects]) if state.objects
                      else np.zeros((0, 9)))
                s2w = lidar_sensor_to_world(state, lidar)
                points, _ = settle_boundary_points(scan.points, s2w, gt[:, :7])
                count_points_world(points, s2w, gt[:, :7])
                t["in_box"] += time.process_time() - tic
                tic = time.process_time()
                renders = render_cameras(state, cameras, _rng(plan.seed, 2, k))
                if state.objects:
                    visibility_from_renders(renders)
                t["cameras"] += time.process_time() - tic
                tic = time.process_time()
                jpegs = [encode_jpeg(r.image) for r in renders]
                t["encode"] += time.process_time() - tic
                tic = time.process_time()
                (out / f"key_{plan.index}_{k}.bin").write_bytes(
                    np.ascontiguousarray(points, dtype="<f4").tobytes())
                for c, data in enumerate(jpegs):
                    (out / f"key_{plan.index}_{k}_{c}.jpg").write_bytes(data)
                t["write"] += time.process_time() - tic
                if k == 0:
                    tic = time.process_time()
                    (out / f"map_{plan.index}.png").write_bytes(drivable_mask_png(state.ground))
                    t["map"] += time.process_time() - tic
    finally:
        shutil.rmtree(out, ignore_errors=True)
        torch.set_num_threads(threads)
    return t


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10, help="keyframes per scene")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating 1-worker / 2-worker generations per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.scenes * args.samples
    print(f"SynthDrive generation benchmark: nuScenes layout, {BEAMS}-beam LiDAR, six "
          f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} cameras, {args.scenes} scenes x {args.samples} "
          f"samples = {n} samples; {os.cpu_count()} CPUs visible")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synthdrive_bench_") as tmpdir:
        tmp = Path(tmpdir)
        gens = {}
        for sweeps in (DEFAULT_SWEEPS, 0):
            gens[sweeps] = measure_generation(tmp, args.scenes, args.samples, sweeps,
                                              args.repeats, args.seed)
        print("  timing the stages in-process (1 core) ...", flush=True)
        stages = measure_stages(tmp, args.scenes, args.samples, DEFAULT_SWEEPS, args.seed)

    print()
    print(f"Generation, median of {args.repeats} (1 and 2 workers alternated). CPU: user + "
          f"system seconds of all processes (workers included); cores busy = CPU / wall.")
    print()
    print("| setting | workers | wall s | samples/s | ms/sample | samples/s per worker "
          "| speed-up vs 1 worker | CPU ms/sample | cores busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sweeps, res in gens.items():
        walls, cpus = res["walls"], res["cpus"]
        w1 = _median(walls[1])
        for workers in (1, 2):
            w = _median(walls[workers])
            c = _median(cpus[workers])
            label = f"sweeps={sweeps}" + (" (default)" if sweeps == DEFAULT_SWEEPS else "")
            print(f"| {label} | {workers} | {w:.1f} | {n / w:.2f} | {1000 * w / n:.0f} "
                  f"| {n / w / workers:.2f} | {w1 / w:.2f}x | {1000 * c / n:.0f} "
                  f"| {c / w:.2f} |")
    print()

    total = sum(stages.values())
    writer = gens[DEFAULT_SWEEPS]["timings"]
    rows = [
        ("world state (scene build + state_at, keyframes and sweeps)", "world"),
        ("LiDAR keyframe (ray casting)", "lidar"),
        (f"LiDAR sweeps ({DEFAULT_SWEEPS} per keyframe, ray casting)", "sweeps"),
        ("cameras (6 x rasterise + shade + noise, visibility)", "cameras"),
        ("JPEG encoding (6 images)", "encode"),
        ("writing files (.pcd.bin, .jpg)", "write"),
        ("points-in-box (boundary settle + count)", "in_box"),
        ("map mask PNG (once per scene)", "map"),
    ]
    print(f"Where the time goes, per sample (sweeps={DEFAULT_SWEEPS}; CPU time of each stage, "
          f"timed directly in this process on one core, {n} samples):")
    print()
    print("| stage | CPU ms/sample | share |")
    print("|---|---:|---:|")
    for label, key in rows:
        print(f"| {label} | {1000 * stages[key] / n:.0f} | {100 * stages[key] / total:.0f} % |")
    print(f"| **total** | **{1000 * total / n:.0f}** | 100 % |")
    print()
    print("The writer's own stage timers (wall clock inside the worker, 1-worker run, repeat 1; "
          "inflated when the machine is busy), ms/sample: "
          + ", ".join(f"{k} {1000 * v / n:.0f}" for k, v in writer.items()))
    print()
    w1 = _median(gens[DEFAULT_SWEEPS]["walls"][1])
    w2 = _median(gens[DEFAULT_SWEEPS]["walls"][2])
    c1 = _median(gens[DEFAULT_SWEEPS]["cpus"][1])
    k1 = _median(gens[0]["walls"][1])
    kc1 = _median(gens[0]["cpus"][1])
    print(f"Summary: default settings {n / w1:.2f} samples/s on 1 worker, {n / w2:.2f} on 2 "
          f"(speed-up {w1 / w2:.2f}x, {n / w2 / 2:.2f} samples/s per worker); "
          f"{n / c1:.2f} samples per CPU-second. Keyframes only (sweeps=0): {n / k1:.2f} "
          f"samples/s on 1 worker, {n / kc1:.2f} samples per CPU-second "
          f"({c1 / kc1:.2f}x less CPU than with sweeps). 2 workers cost "
          f"{_median(gens[DEFAULT_SWEEPS]['cpus'][2]) - c1:.1f} CPU s more than 1 (start-up of "
          f"the spawned workers: imports of numpy, torch and distill3d, the progress manager), "
          f"so with two free cores the speed-up could be at most "
          f"{2 * c1 / _median(gens[DEFAULT_SWEEPS]['cpus'][2]):.2f}x on this {n}-sample set "
          f"(2 x CPU(1 worker) / CPU(2 workers)); cores busy below the worker count means "
          f"other jobs took the rest. "
          f"In-process stage sum "
          f"{1000 * total / n:.0f} CPU ms/sample vs {1000 * c1 / n:.0f} CPU ms/sample for the "
          f"1-worker generation (the rest: imports, table building, JSON, file system). "
          f"Load average now {os.getloadavg()[0]:.1f}. Benchmark took "
          f"{time.perf_counter() - start:.0f} s.")

if __name__ == "__main__":
    main()
