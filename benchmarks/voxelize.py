"""Benchmark of ``distill3d.data.voxelize`` on a ~120k-point LiDAR scan.

The cloud is one SynthDrive frame scanned with the ``kitti64`` preset (an HDL-64-like
sensor, about 115-120k points, ``x, y, z, intensity``). It is voxelised with the two
standard KITTI settings:

* PointPillars: 0.16 m pillars over ``[0, -39.68, -3, 69.12, 39.68, 1]``, at most 32 points
  per pillar and 16,000 pillars;
* SECOND-style voxels: 0.1 m over ``[0, -40, -3, 70.4, 40, 1]``, at most 5 points per
  voxel and 16,000 (test) / 40,000 (train) voxels;

and, to exercise the voxel limit, a 360-degree 0.1 m x 0.1 m x 0.2 m grid over
``[-51.2, -51.2, -5, 51.2, 51.2, 3]`` (CenterPoint-nuScenes-like) with at most 10 points and
only 16,000 voxels, where more cells are occupied than kept; plus dynamic voxelisation (cell
of every point, the occupied voxels and each point's voxel) on the 0.1 m grids. Each is
timed beside, in the same run:

* a straightforward numpy reference written here (``np.unique`` over linear cell keys,
  first-appearance order, vectorised);
* spconv's ``spconv.pytorch.utils.PointToVoxel`` (the CPU point-to-voxel generator that
  OpenPCDet uses), when the ``spconv`` package is importable (it is not a dependency of
  distill3d: ``pip install --no-deps spconv cumm pccm ccimport pybind11 ninja lark``, never
  letting it pull another torch). Its generator is built once, outside the timing.

The implementations of a task run round-robin (one warm-up each, then ``--repeats``
rounds), so load from other processes on a shared machine hits them alike; the table gives
the median and the minimum, and ratios of medians (the other implementation's time over
distill3d's: > 1 means distill3d is faster). The results are checked to agree: the numpy
reference and spconv must give the same voxels (coordinates) in the same first-appearance
order, with the same point counts and features.

Usage::

    python benchmarks/voxelize.py [--repeats 15] [--seed 0] [--device cpu] [--threads 1]

``--threads`` (torch intra-op threads) defaults to 1: numpy and spconv's CPU generator are
single-threaded, so this compares per-core work; pass the number of cores to see torch's
threaded time.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distill3d.data.voxelize import (

    VoxelGrid,
    dynamic_voxelize,
    hard_voxelize,
    unique_voxels,
)

from _machine import CpuMonitor  # benchmarks/ is on sys.path when run as a script

_PP_GRID = VoxelGrid((0.16, 0.16, 4.0), (0, -39.68, -3, 69.12, 39.68, 1))
_SECOND_GRID = VoxelGrid((0.1, 0.1, 0.1), (0, -40, -3, 70.4, 40, 1))
# (task, grid, max points per voxel, max voxels)
PILLARS = ("pillars 0.16 m, 32 pts, 16000", _PP_GRID, 32, 16000)
VOX16K = ("voxels 0.1 m, 5 pts, 16000", _SECOND_GRID, 5, 16000)
VOX40K = ("voxels 0.1 m, 5 pts, 40000", _SECOND_GRID, 5, 40000)
# 360 degrees, CenterPoint-nuScenes-like 0.1 m grid with a small voxel budget: the limit bites.
VOX360 = ("voxels 0.1 m 360 deg, 10 pts, 16000",
          VoxelGrid((0.1, 0.1, 0.2), (-51.2, -51.2, -5, 51.2, 51.2, 3)), 10, 16000)
TASKS = (PILLARS, VOX16K, VOX40K, VOX360)


# ----------------------------------------------------------------------------- data


def synthdrive_scan(seed: int) -> np.ndarray:
    """``(N, 4)`` float32 ``x, y, z, intensity`` of one SynthDrive ``kitti64`` scan."""
    from distill3d.synth.lidar import lidar_preset, scan_lidar
    from distill3d.synth.world import Scene, SceneConfig

    scene = Scene(SceneConfig(seed=seed, num_keyframes=1))
    pts = scan_lidar(scene.state_at(0.0), lidar_preset("kitti64"), np.random.default_rng(seed))
    return np.ascontiguousarray(pts[:, :4], dtype=np.float32)


# ----------------------------------------------------------------------------- references


def numpy_hard_voxelize(points: np.ndarray, grid: VoxelGrid, max_points: int, max_voxels: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hard voxels with ``np.unique``: features (V, max_points, C), coords (V, 3) int32
    (z, y, x), counts (V,) int32, voxels in order of first appearance, the first
    ``max_voxels`` kept, the first ``max_points`` points of each voxel kept."""
    dt = points.dtype
    lo = np.asarray(grid.point_cloud_range[:3], dtype=dt)
    hi = np.asarray(grid.point_cloud_range[3:], dtype=dt)
    d = np.asarray(grid.voxel_size, dtype=dt)
    n = np.asarray(grid.grid_size)
    xyz = points[:, :3]
    idx = np.floor((xyz - lo) / d)
    valid = np.all((xyz >= lo) & (xyz < hi) & (idx < n), axis=1)
    pts = points[valid]
    cell = idx[valid].astype(np.int64)
    key = (cell[:, 2] * n[1] + cell[:, 1]) * n[0] + cell[:, 0]
    uniq, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True,
                                             return_counts=True)
    order = np.argsort(first)[:max_voxels]  # first appearance
    out_row = np.full(len(uniq), -1)
    out_row[order] = np.arange(len(order))
    by_voxel = np.argsort(inverse, kind="stable")  # points grouped by voxel, input order
    starts = np.cumsum(counts) - counts
    slot = np.empty(len(key), dtype=np.int64)
    slot[by_voxel] = np.arange(len(key)) - starts[inverse[by_voxel]]
    row = out_row[inverse]
    keep = (row >= 0) & (slot < max_points)
    feats = np.zeros((len(order), max_points, points.shape[1]), dtype=dt)
    feats[row[keep], slot[keep]] = pts[keep]
    k = uniq[order]
    coords = np.stack([k // (n[0] * n[1]), (k // n[0]) % n[1], k % n[0]], axis=1).astype(np.int32)
    return feats, coords, np.minimum(counts[order], max_points).astype(np.int32)


def numpy_dynamic(points: np.ndarray, grid: VoxelGrid) -> tuple[np.ndarray, np.ndarray]:
    """Occupied cells (V, 3) (z, y, x) in raster order and each point's voxel (-1 outside)."""
    dt = points.dtype
    lo = np.asarray(grid.point_cloud_range[:3], dtype=dt)
    hi = np.asarray(grid.point_cloud_range[3:], dtype=dt)
    d = np.asarray(grid.voxel_size, dtype=dt)
    n = np.asarray(grid.grid_size)
    xyz = points[:, :3]
    idx = np.floor((xyz - lo) / d)
    valid = np.all((xyz >= lo) & (xyz < hi) & (idx < n), axis=1)
    cell = idx[valid].astype(np.int64)
    key = (cell[:, 2] * n[1] + cell[:, 1]) * n[0] + cell[:, 0]
    uniq, inv = np.unique(key, return_inverse=True)
    inverse = np.full(len(points), -1)
    inverse[valid] = inv
    coords = np.stack([uniq // (n[0] * n[1]), (uniq // n[0]) % n[1], uniq % n[0]], axis=1)
    return coords, inverse


def make_spconv(grid: VoxelGrid, max_points: int, max_voxels: int, channels: int,
                device: torch.device) -> Callable[[torch.Tensor], Any] | str:
    """spconv's generator, or a string saying why it is unavailable."""
    try:
        from spconv.pytorch.utils import PointToVoxel
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken binary
        return f"spconv not available ({type(exc).__name__}: {exc})"
    try:
        gen = PointToVoxel(vsize_xyz=list(grid.voxel_size),
                           coors_range_xyz=list(grid.point_cloud_range),
                           num_point_features=channels, max_num_voxels=max_voxels,
                           max_num_points_per_voxel=max_points, device=device)
    except Exception as exc:  # noqa: BLE001 - e.g. a CPU-only build asked for CUDA
        return f"spconv PointToVoxel unavailable on {device} ({type(exc).__name__}: {exc})"
    return gen


# ----------------------------------------------------------------------------- timing


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
                     ) -> dict[str, tuple[float, float, Any]]:
    """Wall times of several implementations of one task, run round-robin (one warm-up
    each, then ``repeats`` rounds) so that load from other processes hits all of them
    alike. Returns ``name -> (median s, min s, last result)``."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            results[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), min(times[name]), results[name]) for name in fns}


def same_voxels(ours_coords: np.ndarray, ours_counts: np.ndarray, ours_feats: np.ndarray,
                coords: np.ndarray, counts: np.ndarray, feats: np.ndarray) -> str:
    """'identical' (order, counts, features), 'same set', or what differs."""
    if ours_coords.shape == coords.shape and np.array_equal(ours_coords, coords):
        if np.array_equal(ours_counts, counts) and np.array_equal(ours_feats, feats):
            return "identical"
        return "same voxels, order; counts/features DIFFER"
    a = {tuple(r) for r in ours_coords.tolist()}
    b = {tuple(r) for r in coords.tolist()}
    if a == b:
        return "same set, other order"
    return f"DIFFER: {len(a - b)} only ours, {len(b - a)} only theirs"


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="SynthDrive scene and scan seed")
    parser.add_argument("--device", default="cpu", help="torch device for distill3d (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    monitor = CpuMonitor()

    cloud = synthdrive_scan(args.seed)
    pts = torch.from_numpy(cloud).to(device)
    pts_cpu = torch.from_numpy(cloud)
    print(f"cloud: SynthDrive kitti64 scan, seed {args.seed}: {len(cloud):,} points x "
          f"{cloud.shape[1]} (x, y, z, intensity), float32")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__} on {device}, {torch.get_num_threads()} thread(s); "
          f"numpy {np.__version__}; {args.repeats} interleaved repeats")

    # task -> [(implementation, median s, min s, voxels, agreement)]
    table: dict[str, list[tuple[str, float, float, str, str]]] = {}
    notes: list[str] = []
    for task, grid, max_pts, max_vox in TASKS:
        occupied = len(unique_voxels(dynamic_voxelize(pts_cpu, grid))[0])
        in_range = int(dynamic_voxelize(pts_cpu, grid)[:, 0].ge(0).sum())
        fns: dict[str, Callable[[], Any]] = {
            "distill3d hard_voxelize": lambda g=grid, p=max_pts, v=max_vox: hard_voxelize(pts, g, p, v),
            "numpy np.unique reference":
                lambda g=grid, p=max_pts, v=max_vox: numpy_hard_voxelize(cloud, g, p, v),
        }
        gen = make_spconv(grid, max_pts, max_vox, cloud.shape[1], device)
        if isinstance(gen, str):
            notes.append(gen)
        else:
            fns["spconv PointToVoxel"] = lambda f=gen: f(pts)
        res = time_interleaved(fns, args.repeats, device)
        med, best, vox = res["distill3d hard_voxelize"]
        of, oc, on = (vox.features.cpu().numpy(), vox.coords.cpu().numpy(), vox.num_points.cpu().numpy())
        limit = "limit hit" if occupied > max_vox else "under limit"
        label = (f"{task} (grid {grid.grid_size}; {in_range:,} pts in range, {occupied:,} "
                 f"voxels occupied: {limit})")
        rows = [("distill3d hard_voxelize", med, best, f"{len(oc):,}", "-")]
        med, best, ref = res["numpy np.unique reference"]
        rows.append(("numpy np.unique reference", med, best, f"{len(ref[1]):,}",
                     same_voxels(oc, on, of, ref[1], ref[2], ref[0])))
        if "spconv PointToVoxel" in res:
            med, best, out = res["spconv PointToVoxel"]
            sf, sc, sn = (r.cpu().numpy() for r in out)
            rows.append(("spconv PointToVoxel", med, best, f"{len(sc):,}",
                         same_voxels(oc, on, of, sc, sn, sf)))
        else:
            rows.append(("spconv PointToVoxel", math.nan, math.nan, "-", "not installed"))
        table[label] = rows

    # Dynamic voxelisation: cell per point + occupied voxels + point -> voxel index.
    for task, grid, _, _ in (VOX40K, VOX360):
        res = time_interleaved({
            "distill3d dynamic+unique": lambda g=grid: unique_voxels(dynamic_voxelize(pts, g)),
            "numpy np.unique reference": lambda g=grid: numpy_dynamic(cloud, g),
        }, args.repeats, device)
        med, best, (dc, dinv) = res["distill3d dynamic+unique"]
        nmed, nbest, (nc, ninv) = res["numpy np.unique reference"]
        agree = ("identical" if np.array_equal(dc.cpu().numpy(), nc)
                 and np.array_equal(dinv.cpu().numpy(), ninv) else "DIFFER")
        label = f"dynamic {task.split(',')[0]} (grid {grid.grid_size}): cells + unique + inverse"
        table[label] = [("distill3d dynamic+unique", med, best, f"{len(dc):,}", "-"),
                        ("numpy np.unique reference", nmed, nbest, f"{len(nc):,}", agree)]

    # ---- table
    print()
    width = max(len(r[0]) for rows in table.values() for r in rows)
    for label, rows in table.items():
        print(label)
        print(f"  {'implementation':<{width}}  {'median':>10}  {'min':>10}  {'vs distill3d':>12}  "
              f"{'voxels':>7}  agreement")
        ours = rows[0][1]
        for impl, med, best, nvox, agree in rows:
            t = "n/a" if math.isnan(med) else f"{med * 1e3:7.2f} ms"
            b = "n/a" if math.isnan(best) else f"{best * 1e3:7.2f} ms"
            ratio = "-" if impl.startswith("distill3d") else (
                "n/a" if math.isnan(med) else f"x{med / ours:.2f}")
            print(f"  {impl:<{width}}  {t:>10}  {b:>10}  {ratio:>12}  {nvox:>7}  {agree}")
    print("\nratio = that implementation's median time / distill3d's (> 1: distill3d faster); "
          "agreement 'identical' = same voxels in the same order, same counts and features")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    other = monitor.other_share()
    if other is not None:
        print(f"other processes used {other:.0%} of the machine's CPU time during the run")


if __name__ == "__main__":
    main()
