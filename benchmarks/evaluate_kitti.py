"""Benchmark our KITTI evaluation against the reference one (mmdetection3d's ``kitti_eval``).

What is compared
----------------
* **ours**: :func:`distill3d.evaluation.kitti.evaluate_kitti` (numpy + the torch rotated
  intersection of :mod:`distill3d.geometry`), every AP of the reference (bbox, BEV, 3D,
  AOS; easy/moderate/hard; R40 and R11; official and loose thresholds).
* **reference, numba CPU**: mmdetection3d 1.4.0's ``do_eval`` (``evaluation/functional/
  kitti_utils/eval.py``, loaded on its own) with the same arguments, its numba CPU kernels
  compiled before timing. Its rotated IoU (``rotate_iou.py``) is written for numba's CUDA
  target, which has no CPU backend except the Python-level simulator; for a fair CPU
  comparison it is replaced by :func:`_rotate_iou_cpu`, a ``numba.njit`` port of the same
  algorithm (float32 corners, corner-in-box and edge-crossing points, angle sort, fan area)
  written here, and compiled before timing as well.
* **reference, CUDA simulator** (optional, ``--cudasim-frames``): the unmodified reference
  under ``NUMBA_ENABLE_CUDASIM=1`` in a subprocess on the first few frames only (it
  simulates every GPU thread in Python), against ours on the same frames.

Data: ``--scenes x --samples`` SynthDrive KITTI frames (default 4 x 8 at KITTI's 1242 x 375;
or ``--data ROOT --split S`` for an existing KITTI root), cycled to ``--frames`` frames
(default 300), each copy with its own noisy predictions (jitter, dropped objects, false
positives, some in DontCare regions, wrong classes, Vans called Car, near-duplicates).
Times are medians over ``--repeats`` runs, ours and the reference's alternating so that
both see the same machine load; the machine may be shared, so compare ratios within one
run. Both sides use every core they like (numba's ``parallel=True`` kernel, torch
intra-op threads); the numbers printed say how many.

Run::

    python benchmarks/evaluate_kitti.py [--frames 300] [--repeats 5] [--cudasim-frames 12]

Needs ``numba`` and ``mmdet3d==1.4.0`` (``pip install numba && pip install --no-deps
mmdet3d==1.4.0``) for the reference columns; without them only our timing is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_CLASSES = ("Car", "Pedestrian", "Cyclist")
_CLASS_INDEX = {"Car": 0, "Pedestrian": 1, "Cyclist": 2, "Van": 3, "Person_sitting": 4}
# The reference's min_overlaps tables [official, loose] x [bbox, bev, 3d] x 5 classes.
_OFFICIAL = [[0.7, 0.5, 0.5, 0.7, 0.5]] * 3
_LOOSE = [[0.7, 0.5, 0.5, 0.7, 0.5], [0.5, 0.25, 0.25, 0.5, 0.25], [0.5, 0.25, 0.25, 0.5, 0.25]]


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def noisy_predictions(gt_annos: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Plausible detections for each frame: most objects found with jitter, some dropped,
    some renamed, Vans sometimes called Car, near-duplicates, random false positives and
    false positives on DontCare regions; random scores."""
    out = []
    for g in gt_annos:
        real = np.flatnonzero((g["name"] != "DontCare") & (rng.random(len(g["name"])) > 0.15))
        n = real.size
        name = g["name"][real].astype("<U16")
        vans = name == "Van"
        name[vans] = np.where(rng.random(vans.sum()) < 0.5, "Car", "Van")
        swap = rng.random(n) < 0.08
        name[swap] = rng.choice(_CLASSES, swap.sum())
        sigma = rng.choice([0.03, 0.1, 0.3], n)[:, None]
        loc = g["location"][real] + rng.normal(0, 1, (n, 3)) * sigma * [1.0, 0.3, 1.0]
        dims = g["dimensions"][real] * np.exp(rng.normal(0, 1, (n, 3)) * sigma * 0.5)
        ry = g["rotation_y"][real] + rng.normal(0, 1, n) * sigma[:, 0]
        bbox = g["bbox"][real] + rng.normal(0, 1, (n, 4)) * sigma * 20
        alpha = g["alpha"][real] + rng.normal(0, 1, n) * sigma[:, 0]
        dup = rng.random(n) < 0.2
        dc = g["bbox"][g["name"] == "DontCare"]
        k = 3 + dc.shape[0]
        f_loc = np.c_[rng.uniform(-15, 15, k), rng.uniform(1, 2, k), rng.uniform(5, 60, k)]
        f_dims = np.c_[rng.uniform(0.5, 4.5, k), rng.uniform(1.4, 1.9, k), rng.uniform(0.5, 2, k)]
        corner = np.c_[rng.uniform(0, 1000, k), rng.uniform(100, 200, k)]
        f_bbox = np.c_[corner, corner + np.c_[rng.uniform(10, 200, k), rng.uniform(10, 120, k)]]
        f_bbox[3:] = dc + rng.normal(0, 1, dc.shape)
        det = {
            "name": np.concatenate((name, name[dup], rng.choice(_CLASSES, k))),
            "alpha": np.concatenate((alpha, alpha[dup], rng.uniform(-math.pi, math.pi, k))),
            "bbox": np.concatenate((bbox, bbox[dup] + rng.normal(0, 2, (dup.sum(), 4)), f_bbox)),
            "dimensions": np.concatenate((dims, dims[dup], f_dims)),
            "location": np.concatenate((loc, loc[dup] + rng.normal(0, 0.2, (dup.sum(), 3)), f_loc)),
            "rotation_y": np.concatenate((ry, ry[dup], rng.uniform(-math.pi, math.pi, k))),
        }
        m = det["name"].shape[0]
        det["bbox"][:, 2:] = np.maximum(det["bbox"][:, 2:], det["bbox"][:, :2] + 1.0)
        det.update(truncated=np.zeros(m), occluded=np.zeros(m), score=rng.random(m))
        out.append(det)
    return out


def load_frames(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The GT annos of the benchmark set (SynthDrive, generated into a temporary folder, or
    ``--data``)."""
    from distill3d.evaluation.kitti import load_kitti_gt

    if args.data:
        if args.split == "all":
            ids = sorted(p.stem for p in (Path(args.data) / "training" / "label_2").glob("*.txt"))
            return load_kitti_gt(args.data, ids)
        return load_kitti_gt(args.data, args.split)
    # Generated in a child process: the generator's in-process path sets torch to one thread
    # and back, after which small torch ops in this process were seen to stall (our
    # evaluation 2-6x slower on this 2-core machine), which would distort the timing.
    code = ("import sys; from distill3d.synth.generate import generate_dataset; "
            "generate_dataset('kitti', sys.argv[1], preset='mini', scenes=int(sys.argv[2]), "
            "samples_per_scene=int(sys.argv[3]), seed=int(sys.argv[4]), workers=1, progress=False)")
    with tempfile.TemporaryDirectory(prefix="bench_kitti_eval_") as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, tmp, str(args.scenes), str(args.samples), str(args.seed)],
                       check=True)
        ids = sorted(p.stem for p in (Path(tmp) / "training" / "label_2").glob("*.txt"))
        gt = load_kitti_gt(tmp, ids)
        print(f"generated {len(ids)} SynthDrive KITTI frames in {time.perf_counter() - t0:.1f} s")
    return gt


# --------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------


def reference_dir() -> Path | None:
    """mmdetection3d's ``kitti_utils`` folder, or ``None`` without numba/mmdet3d."""
    if importlib.util.find_spec("numba") is None:
        return None
    spec = importlib.util.find_spec("mmdet3d")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "evaluation" / "functional" / "kitti_utils"
    return folder if (folder / "eval.py").is_file() else None


def _build_rotate_iou_cpu() -> Callable[..., np.ndarray]:
    """A ``numba.njit`` CPU port of the reference's rotated IoU (``rotate_iou_gpu_eval``).

    Same algorithm and float32 storage as the CUDA kernel: corners of ``(cx, cy, dx, dy,
    angle)`` (angle clockwise), the corners of each box inside the other (edge-projection
    test) plus the proper crossings of the 16 edge pairs, sorted by a pseudo-angle around
    their mean, and the fan-triangulated area. ``iou[n, k]`` compares query ``k`` with box
    ``n``, as the kernel does.
    """
    import numba

    @numba.njit(cache=False, inline="always")
    def corners_of(box: np.ndarray, out: np.ndarray) -> None:
        c, s = math.cos(box[4]), math.sin(box[4])
        hx, hy = box[2] / 2, box[3] / 2
        lx = (-hx, -hx, hx, hx)
        ly = (-hy, hy, hy, -hy)
        for i in range(4):
            out[2 * i] = c * lx[i] + s * ly[i] + box[0]
            out[2 * i + 1] = -s * lx[i] + c * ly[i] + box[1]

    @numba.njit(cache=False, inline="always")
    def inside(px: float, py: float, q: np.ndarray) -> bool:
        abx, aby = q[2] - q[0], q[3] - q[1]
        adx, ady = q[6] - q[0], q[7] - q[1]
        apx, apy = px - q[0], py - q[1]
        ab_ap = abx * apx + aby * apy
        ad_ap = adx * apx + ady * apy
        return 0 <= ab_ap <= abx * abx + aby * aby and 0 <= ad_ap <= adx * adx + ady * ady

    @numba.njit(cache=False)
    def intersection(b1: np.ndarray, b2: np.ndarray) -> float:
        c1 = np.empty(8, np.float32)
        c2 = np.empty(8, np.float32)
        pts = np.empty(48, np.float32)
        corners_of(b1, c1)
        corners_of(b2, c2)
        n = 0
        for i in range(4):
            if inside(c1[2 * i], c1[2 * i + 1], c2):
                pts[2 * n], pts[2 * n + 1] = c1[2 * i], c1[2 * i + 1]
                n += 1
            if inside(c2[2 * i], c2[2 * i + 1], c1):
                pts[2 * n], pts[2 * n + 1] = c2[2 * i], c2[2 * i + 1]
                n += 1
        for i in range(4):
            ax, ay = c1[2 * i], c1[2 * i + 1]
            bx, by = c1[2 * ((i + 1) % 4)], c1[2 * ((i + 1) % 4) + 1]
            for j in range(4):
                cx, cy = c2[2 * j], c2[2 * j + 1]
                dx, dy = c2[2 * ((j + 1) % 4)], c2[2 * ((j + 1) % 4) + 1]
                acd = (dy - ay) * (cx - ax) > (cy - ay) * (dx - ax)
                bcd = (dy - by) * (cx - bx) > (cy - by) * (dx - bx)
                if acd == bcd:
                    continue
                abc = (cy - ay) * (bx - ax) > (by - ay) * (cx - ax)
                abd = (dy - ay) * (bx - ax) > (by - ay) * (dx - ax)
                if abc == abd:
                    continue
                det = (by - ay) * (dx - cx) - (bx - ax) * (dy - cy)
                cross_ab = ax * by - bx * ay
                cross_cd = cx * dy - dx * cy
                pts[2 * n] = (cross_ab * (dx - cx) - (bx - ax) * cross_cd) / det
                pts[2 * n + 1] = (cross_ab * (dy - cy) - (by - ay) * cross_cd) / det
                n += 1
        if n < 3:
            return 0.0
        mx = np.float32(0.0)
        my = np.float32(0.0)
        for i in range(n):
            mx += pts[2 * i]
            my += pts[2 * i + 1]
        mx /= n
        my /= n
        key = np.empty(n, np.float32)
        for i in range(n):
            vx, vy = pts[2 * i] - mx, pts[2 * i + 1] - my
            norm = math.sqrt(vx * vx + vy * vy)
            vx, vy = vx / norm, vy / norm
            key[i] = -2 - vx if vy < 0 else vx
        order = np.argsort(key, kind="mergesort")
        area = 0.0
        x0, y0 = pts[2 * order[0]], pts[2 * order[0] + 1]
        for i in range(n - 2):
            x1, y1 = pts[2 * order[i + 1]], pts[2 * order[i + 1] + 1]
            x2, y2 = pts[2 * order[i + 2]], pts[2 * order[i + 2] + 1]
            area += abs(((x0 - x2) * (y1 - y2) - (y0 - y2) * (x1 - x2)) / 2.0)
        return area

    @numba.njit(cache=False, parallel=True)
    def rotate_iou_cpu(boxes: np.ndarray, queries: np.ndarray, criterion: int) -> np.ndarray:
        n, k = boxes.shape[0], queries.shape[0]
        iou = np.zeros((n, k), np.float32)
        for i in numba.prange(n):
            for j in range(k):
                inter = intersection(queries[j], boxes[i])
                a1 = queries[j, 2] * queries[j, 3]
                a2 = boxes[i, 2] * boxes[i, 3]
                if criterion == -1:
                    iou[i, j] = inter / (a1 + a2 - inter)
                elif criterion == 0:
                    iou[i, j] = inter / a1
                elif criterion == 1:
                    iou[i, j] = inter / a2
                else:
                    iou[i, j] = inter
        return iou

    def rotate_iou_gpu_eval(boxes: np.ndarray, query_boxes: np.ndarray, criterion: int = -1,
                            device_id: int = 0) -> np.ndarray:
        boxes = np.ascontiguousarray(boxes, dtype=np.float32)
        query_boxes = np.ascontiguousarray(query_boxes, dtype=np.float32)
        if boxes.shape[0] == 0 or query_boxes.shape[0] == 0:
            return np.zeros((boxes.shape[0], query_boxes.shape[0]), np.float32)
        return rotate_iou_cpu(boxes, query_boxes, criterion)

    return rotate_iou_gpu_eval


def load_reference(folder: Path, cpu_rotate_iou: bool) -> types.ModuleType:
    """The reference ``eval.py`` as a module of a private package (its relative import of
    ``rotate_iou`` resolves inside it), optionally with the CPU port as ``rotate_iou``."""
    package = f"_kitti_reference_{'cpu' if cpu_rotate_iou else 'orig'}"
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(folder)]
    sys.modules[package] = pkg
    if cpu_rotate_iou:
        port = types.ModuleType(f"{package}.rotate_iou")
        port.rotate_iou_gpu_eval = _build_rotate_iou_cpu()
        sys.modules[port.__name__] = port
    spec = importlib.util.spec_from_file_location(f"{package}.eval", folder / "eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_reference(module: types.ModuleType, gt: Sequence[dict[str, Any]], dt: Sequence[dict[str, Any]],
                  classes: Sequence[str] = _CLASSES) -> tuple[np.ndarray, ...]:
    """``do_eval`` with both threshold tables and AOS: 8 arrays ``[class, level, table]``
    (R11 bbox, bev, 3d, aos, then R40 bbox, bev, 3d, aos)."""
    index = [_CLASS_INDEX[c] for c in classes]
    overlaps = np.stack([np.array(_OFFICIAL), np.array(_LOOSE)])[:, :, index]
    return module.do_eval(list(gt), list(dt), index, overlaps, ["bbox", "bev", "3d", "aos"])


def max_difference(ours: dict[str, Any], ref: Sequence[np.ndarray], classes: Sequence[str] = _CLASSES) -> float:
    """Largest absolute AP difference (percentage points) over every reported AP."""
    worst = 0.0
    for offset, recall in ((0, "R11"), (4, "R40")):
        for m, metric in enumerate(("bbox", "bev", "3d", "aos")):
            for c, cls in enumerate(classes):
                for k, table in enumerate((ours[recall], ours["loose"][recall])):
                    diff = np.abs(np.asarray(table[cls][metric]) - ref[offset + m][c, :, k])
                    worst = max(worst, float(np.nanmax(diff)))
    return worst


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _cudasim_worker(in_path: str, out_path: str) -> None:
    """Subprocess entry: the unmodified reference under the CUDA simulator."""
    folder = reference_dir()
    assert folder is not None
    module = load_reference(folder, cpu_rotate_iou=False)
    with open(in_path, "rb") as handle:
        gt, dt = pickle.load(handle)
    run_reference(module, gt[:1], dt[:1])  # compile the numba CPU parts first
    t0 = time.perf_counter()
    ref = run_reference(module, gt, dt)
    seconds = time.perf_counter() - t0
    with open(out_path, "wb") as handle:
        pickle.dump((seconds, ref), handle)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames evaluated (GT frames cycled)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="an existing KITTI root instead of SynthDrive")
    parser.add_argument("--split", default="val", help="split of --data ('all': every labelled frame)")
    parser.add_argument("--cudasim-frames", type=int, default=12,
                        help="frames for the unmodified reference under NUMBA_ENABLE_CUDASIM (0: skip)")
    parser.add_argument("--_cudasim-worker", nargs=2, help=argparse.SUPPRESS, dest="worker")
    args = parser.parse_args(argv)
    if args.worker:
        _cudasim_worker(*args.worker)
        return 0

    import torch

    from distill3d.evaluation.kitti import evaluate_kitti

    base = load_frames(args)
    gt = [base[i % len(base)] for i in range(args.frames)]
    dt = noisy_predictions(gt, np.random.default_rng(args.seed))
    n_gt = sum(len(a["name"]) for a in gt)
    n_dt = sum(len(a["name"]) for a in dt)
    print(f"frames: {len(gt)} ({len(base)} distinct GT frames cycled), GT rows {n_gt} (DontCare "
          f"included), detections {n_dt}; classes {', '.join(_CLASSES)}; repeats {args.repeats}")
    print(f"threads: torch {torch.get_num_threads()}, cores {os.cpu_count()}")

    evaluate_kitti(gt[:2], dt[:2])  # warm-up
    folder = reference_dir()
    module = None
    if folder is None:
        print("reference not installed (pip install numba && pip install --no-deps mmdet3d==1.4.0): "
              "only our time is shown")
    else:
        import numba

        module = load_reference(folder, cpu_rotate_iou=True)
        t0 = time.perf_counter()
        run_reference(module, gt[:3], dt[:3])
        print(f"reference numba compilation (excluded): {time.perf_counter() - t0:.1f} s; "
              f"numba threads {numba.get_num_threads()}")
    # Alternate the two so that both see the same machine load.
    times_ours, times_ref = [], []
    ours: dict[str, Any] = {}
    ref: Any = None
    for _ in range(args.repeats):
        seconds, ours = _median_time(lambda: evaluate_kitti(gt, dt), 1)
        times_ours.append(seconds)
        if module is not None:
            seconds, ref = _median_time(lambda: run_reference(module, gt, dt), 1)
            times_ref.append(seconds)
    t_ours = statistics.median(times_ours)
    rows = [("ours (distill3d)", t_ours, None)]
    if module is not None:
        rows.append(("reference, numba CPU (+ njit rotated-IoU port)", statistics.median(times_ref),
                     max_difference(ours, ref)))

    print()
    print(f"{'':<48} {'median s':>9} {'ms/frame':>9} {'vs ours':>8} {'max |dAP|':>10}")
    for label, seconds, diff in rows:
        ratio = seconds / t_ours
        shown = "" if diff is None else f"{diff:.2e}"
        print(f"{label:<48} {seconds:>9.3f} {1000 * seconds / len(gt):>9.2f} {ratio:>7.1f}x {shown:>10}")

    if folder is not None and args.cudasim_frames > 0:
        k = min(args.cudasim_frames, len(gt))
        t_small, ours_small = _median_time(lambda: evaluate_kitti(gt[:k], dt[:k]), args.repeats)
        with tempfile.TemporaryDirectory(prefix="bench_kitti_cudasim_") as tmp:
            in_path, out_path = os.path.join(tmp, "in.pkl"), os.path.join(tmp, "out.pkl")
            with open(in_path, "wb") as handle:
                pickle.dump((gt[:k], dt[:k]), handle)
            env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--_cudasim-worker", in_path, out_path],
                           check=True, env=env)
            with open(out_path, "rb") as handle:
                t_sim, ref_small = pickle.load(handle)
        print()
        print(f"first {k} frames, unmodified reference under NUMBA_ENABLE_CUDASIM=1 (one run, "
              "compilation excluded):")
        print(f"  ours {t_small * 1000:.1f} ms, reference {t_sim:.2f} s: {t_sim / t_small:.0f}x; "
              f"max |dAP| {max_difference(ours_small, ref_small):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
