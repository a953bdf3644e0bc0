"""Benchmark of ``distill3d.geometry``: exact rotated BEV IoU and points in boxes.

Two measurements, each beside straightforward implementations timed in the same run:

* ``box_iou_bev`` for 2,000 x 2,000 driving boxes (cars, pedestrians, cyclists, trucks)
  spread over a 100 m x 100 m area: the second set is half noisy "detections" of the
  first and half random boxes, so most pairs do not overlap, as in real evaluation and
  NMS. Baselines: a per-pair shapely loop (timed on a subset of rows and scaled to all
  rows, as the output says) and shapely's STRtree query + vectorised intersection.
* ``points_in_boxes`` for 120,000 LiDAR-like points x 100 boxes. Baselines: a per-box
  Python loop of vectorised torch ops over all points, and one dense ``(P, M)``
  broadcast.

Every timing is the median of several repeats; results are checked to agree.

Usage::

    python benchmarks/geometry.py [--repeats 7] [--loop-rows 20] [--seed 0] [--device cpu] [--threads N]

``--threads`` defaults to the number of cores of the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import shapely
import torch

from distill3d.geometry import box_iou_bev, points_in_boxes

from _machine import CpuMonitor  # benchmarks/ is on sys.path when run as a script

# name: (length range, width range, height, share)
_CLASSES = {
    "car": ((3.8, 5.0), (1.6, 2.1), 1.6, 0.6),
    "pedestrian": ((0.4, 0.9), (0.4, 0.9), 1.75, 0.2),
    "cyclist": ((1.5, 1.9), (0.5, 0.8), 1.7, 0.1),
    "truck": ((6.0, 12.0), (2.3, 2.8), 3.2, 0.1),
}


# ----------------------------------------------------------------------------- data


def driving_boxes(rng: np.random.Generator, n: int, half_extent: float = 50.0) -> np.ndarray:
    """``(n, 7)`` float64 boxes of a class mix, uniform over a square of side 2*half_extent."""
    names = list(_CLASSES)
    cls = rng.choice(len(names), n, p=[_CLASSES[k][3] for k in names])
    boxes = np.empty((n, 7))
    boxes[:, :2] = rng.uniform(-half_extent, half_extent, (n, 2))
    for k, name in enumerate(names):
        (l0, l1), (w0, w1), h, _ = _CLASSES[name]
        sel = cls == k
        boxes[sel, 3] = rng.uniform(l0, l1, sel.sum())
        boxes[sel, 4] = rng.uniform(w0, w1, sel.sum())
        boxes[sel, 5] = h
        boxes[sel, 2] = -1.8 + h / 2
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return boxes


def detections_of(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """Half noisy copies of ``gt`` (centre, size and yaw noise), half random boxes."""
    det = driving_boxes(rng, len(gt))
    half = len(gt) // 2
    det[:half] = gt[:half]
    det[:half, :2] += rng.normal(0, 0.4, (half, 2))
    det[:half, 3:6] *= rng.uniform(0.85, 1.15, (half, 3))
    det[:half, 6] = (det[:half, 6] + rng.normal(0, 0.15, half) + np.pi) % (2 * np.pi) - np.pi
    return det


def lidar_points(rng: np.random.Generator, n: int, boxes: np.ndarray) -> np.ndarray:
    """``(n, 4)`` x, y, z, intensity: 80% ground returns (dense near the sensor), 20% on objects."""
    n_obj = n // 5
    n_ground = n - n_obj
    r = 1.5 + 68.5 * rng.random(n_ground) ** 2
    theta = rng.uniform(-np.pi, np.pi, n_ground)
    ground = np.column_stack([r * np.cos(theta), r * np.sin(theta), rng.normal(-1.8, 0.05, n_ground)])
    k = rng.integers(0, len(boxes), n_obj)
    u, v, w = (rng.uniform(-0.55, 0.55, n_obj) for _ in range(3))
    c, s = np.cos(boxes[k, 6]), np.sin(boxes[k, 6])
    du, dv = u * boxes[k, 3], v * boxes[k, 4]
    obj = np.column_stack(
        [boxes[k, 0] + du * c - dv * s, boxes[k, 1] + du * s + dv * c, boxes[k, 2] + w * boxes[k, 5]]
    )
    pts = np.concatenate([ground, obj])
    return np.column_stack([pts, rng.random(n)])


# ----------------------------------------------------------------------------- baselines


def _polygons(boxes: np.ndarray) -> np.ndarray:
    x, y, l, w, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    coords = np.empty((len(boxes), 4, 2))
    for k, (sl, sw) in enumerate([(1, 1), (-1, 1), (-1, -1), (1, -1)]):
        coords[:, k, 0] = x + sl * l / 2 * c - sw * w / 2 * s
        coords[:, k, 1] = y + sl * l / 2 * s + sw * w / 2 * c
    return shapely.polygons(coords)


def iou_shapely_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The obvious implementation: one shapely intersection per pair."""
    pa, pb = _polygons(a), _polygons(b)
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            inter = p.intersection(q).area
            out[i, j] = inter / (p.area + q.area - inter)
    return out


def iou_shapely_strtree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A strong CPU baseline: STRtree candidate query, then vectorised shapely on candidates."""
    pa, pb = _polygons(a), _polygons(b)
    tree = shapely.STRtree(pb)
    ia, ib = tree.query(pa, predicate="intersects")
    inter = shapely.area(shapely.intersection(pa[ia], pb[ib]))
    out = np.zeros((len(a), len(b)))
    out[ia, ib] = inter / (a[ia, 3] * a[ia, 4] + b[ib, 3] * b[ib, 4] - inter)
    return out


def points_in_boxes_loop(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The obvious implementation: for each box, test all points (vectorised over points)."""
    out = torch.zeros(points.shape[0], boxes.shape[0], dtype=torch.bool, device=points.device)
    for m in range(boxes.shape[0]):
        x, y, z, l, w, h, yaw = boxes[m, :7].tolist()
        dx, dy, dz = points[:, 0] - x, points[:, 1] - y, points[:, 2] - z
        c, s = math.cos(yaw), math.sin(yaw)
        u, v = dx * c + dy * s, -dx * s + dy * c
        out[:, m] = (u.abs() <= l / 2) & (v.abs() <= w / 2) & (dz.abs() <= h / 2)
    return out


def points_in_boxes_dense(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """One ``(P, M)`` broadcast of the same test (memory grows with P x M)."""
    d = points[:, None, :3] - boxes[None, :, :3]
    c, s = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    u = d[..., 0] * c + d[..., 1] * s
    v = -d[..., 0] * s + d[..., 1] * c
    return (u.abs() <= boxes[:, 3] / 2) & (v.abs() <= boxes[:, 4] / 2) & (d[..., 2].abs() <= boxes[:, 5] / 2)


# ----------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """Median wall time (s) over ``repeats`` runs after one warm-up; also the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:10.1f} ms" if seconds < 10 else f"{seconds:10.2f} s "


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats for the fast methods")
    parser.add_argument("--loop-rows", type=int, default=20, help="rows of the shapely loop actually timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device for distill3d (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cpu_monitor = CpuMonitor()
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    rows: list[tuple[str, str, float, str]] = []  # task, implementation, seconds, note

    # ---- box_iou_bev 2000 x 2000
    n = 2000
    gt = driving_boxes(rng, n)
    det = detections_of(rng, gt)
    ta = torch.from_numpy(gt).float().to(device)
    tb = torch.from_numpy(det).float().to(device)
    t_ours, iou = median_time(lambda: box_iou_bev(ta, tb), args.repeats, device)
    iou = iou.double().cpu().numpy()
    t_tree, iou_tree = median_time(lambda: iou_shapely_strtree(gt, det), max(3, args.repeats // 2), device)
    sub = rng.choice(n, args.loop_rows, replace=False)
    t_loop_sub, iou_loop = median_time(lambda: iou_shapely_loop(gt[sub], det), 3, device)
    t_loop = t_loop_sub * n / args.loop_rows
    # Reference values are computed from the float32-rounded inputs that distill3d sees.
    a32, b32 = ta.double().cpu().numpy(), tb.double().cpu().numpy()
    err_tree = np.abs(iou - iou_shapely_strtree(a32, b32)).max()
    err_loop = np.abs(iou[sub] - iou_shapely_loop(a32[sub], b32)).max()
    task = f"box_iou_bev {n} x {n}"
    loop_note = f"{args.loop_rows} rows timed (3 repeats), x{n / args.loop_rows:g} scaled"
    rows += [
        (task, "distill3d box_iou_bev", t_ours, f"{int((iou > 0).sum())} overlapping pairs"),
        (task, "shapely STRtree + vectorised", t_tree, f"max |diff| {err_tree:.1e}"),
        (task, "shapely loop per pair", t_loop, f"{loop_note}; max |diff| {err_loop:.1e}"),
    ]
    del iou_tree, iou_loop

    # ---- points_in_boxes 120k x 100
    num_points, num_boxes = 120_000, 100
    boxes = driving_boxes(rng, num_boxes)
    points = lidar_points(rng, num_points, boxes)
    tp = torch.from_numpy(points).float().to(device)
    tbx = torch.from_numpy(boxes).float().to(device)
    t_pib, mask = median_time(lambda: points_in_boxes(tp, tbx), args.repeats, device)
    t_pib_loop, mask_loop = median_time(
        lambda: points_in_boxes_loop(tp, tbx), max(3, args.repeats // 2), device
    )
    t_pib_dense, mask_dense = median_time(
        lambda: points_in_boxes_dense(tp, tbx), max(3, args.repeats // 2), device
    )
    task = f"points_in_boxes {num_points} x {num_boxes}"
    same_loop = bool(torch.equal(mask, mask_loop))
    same_dense = bool(torch.equal(mask, mask_dense))
    rows += [
        (task, "distill3d points_in_boxes", t_pib, f"{int(mask.sum())} inside pairs"),
        (task, "per-box Python loop (torch)", t_pib_loop, f"identical: {same_loop}"),
        (task, "dense (P, M) broadcast (torch)", t_pib_dense, f"identical: {same_dense}"),
    ]

    # ---- report
    print(
        f"distill3d.geometry benchmark: torch {torch.__version__}, shapely {shapely.__version__}, "
        f"device {device}, {torch.get_num_threads()} threads, median of {args.repeats} repeats "
        f"(baselines: fewer, see notes)"
    )
    other = cpu_monitor.other_share()
    cores = os.cpu_count() or 1
    if other is None:
        print(f"machine: {cores} cores")
    else:
        print(f"machine: {cores} cores; other processes used {100 * other:.0f}% of them during the run")
        if other > 0.1:
            print("warning: the CPU was shared, timings (multi-threaded ones most) are noisy")
    header = f"{'task':<30} {'implementation':<32} {'median':>13} {'ours faster by':>15}  notes"
    print(header)
    print("-" * len(header))
    base = {}
    for task, impl, seconds, note in rows:
        base.setdefault(task, seconds)
        ratio = seconds / base[task]
        print(f"{task:<30} {impl:<32} {fmt_time(seconds):>13} {ratio:>14.1f}x  {note}")
    if err_tree > 1e-5 or err_loop > 1e-5 or not (same_loop and same_dense):
        raise SystemExit("results disagree")
    print("all results agree (IoU within 1e-5 of shapely, point masks identical)")


if __name__ == "__main__":
    main()
