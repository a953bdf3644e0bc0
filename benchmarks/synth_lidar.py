"""Benchmark the SynthDrive LiDAR ray caster on a dense synthetic street.

Builds a dense urban scene of about 1500 yaw-only primitives (buildings along a street with
a cross street, parked and moving cars made of body/cabin/wheels, pedestrians, cyclists,
poles with lamps, trees, cones, barriers, bins) without the world generator, then times
:func:`distill3d.synth.lidar.scan_lidar` for each preset with angular culling and with the
brute-force reference (every ray against every primitive, same kernel) in the same run. It
reports the median of several repeats, the speed-up and the points per frame, and checks
that both methods return byte-identical points.

Run::

    python benchmarks/synth_lidar.py [--repeats 7] [--brute-repeats 3] [--seed 0]

Single-threaded by construction (numpy element-wise kernels); BLAS threads are pinned to 1
so that the timings are per core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from distill3d.synth.lidar import (  # noqa: E402
    LIDAR_PRESETS,
    LidarScan,
    lidar_preset,
    scan_lidar_detailed,
)
from distill3d.synth.types import FrameState, GroundMap, Material, Primitives  # noqa: E402

M = Material


class _SceneBuilder:
    """Accumulates primitives (world frame boxes) with material and instance ids."""

    def __init__(self) -> None:
        self.boxes: list[tuple[float, ...]] = []
        self.material: list[int] = []
        self.instance: list[int] = []
        self.n_instances = 0

    def add(self, box: tuple[float, ...], material: Material, instance: int = -1) -> None:
        self.boxes.append(tuple(float(v) for v in box))
        self.material.append(int(material))
        self.instance.append(instance)

    def new_instance(self) -> int:
        self.n_instances += 1
        return self.n_instances - 1

    def part(
        self,
        cx: float,
        cy: float,
        yaw: float,
        local: tuple[float, float, float],
        size: tuple[float, float, float],
        material: Material,
        inst: int,
    ) -> None:
        """Add a part at ``local`` (x, y, z-bottom) in an object's frame at (cx, cy, yaw)."""
        c, s = np.cos(yaw), np.sin(yaw)
        lx, ly, lz = local
        x = cx + c * lx - s * ly
        y = cy + s * lx + c * ly
        self.add((x, y, lz + size[2] / 2, size[0], size[1], size[2], yaw), material, inst)

    def car(self, x: float, y: float, yaw: float, rng: np.random.Generator) -> None:
        inst = self.new_instance()
        length, width = rng.normal(4.6, 0.3), rng.normal(1.95, 0.1)
        height = rng.normal(1.7, 0.15)
        wheel = 0.65
        body = (length, width, 0.55 * height - 0.3)
        cabin = (0.5 * length, 0.9 * width, 0.45 * height)
        self.part(x, y, yaw, (0, 0, 0.3), body, M.VEHICLE_PAINT, inst)
        self.part(x, y, yaw, (-0.2, 0, 0.55 * height), cabin, M.GLASS, inst)
        for sx in (-1, 1):
            for sy in (-1, 1):
                self.part(
                    x, y, yaw, (sx * 0.32 * length, sy * (width / 2 - 0.12), 0.0),
                    (wheel, 0.24, wheel), M.TIRE, inst,
                )

    def pedestrian(self, x: float, y: float, yaw: float, rng: np.random.Generator) -> None:
        inst = self.new_instance()
        h = rng.normal(1.75, 0.1)
        for sy in (-0.1, 0.1):
            self.part(x, y, yaw, (0, sy, 0), (0.2, 0.15, 0.47 * h), M.CLOTH, inst)
        self.part(x, y, yaw, (0, 0, 0.47 * h), (0.3, 0.5, 0.4 * h), M.CLOTH, inst)
        self.part(x, y, yaw, (0, 0, 0.87 * h), (0.2, 0.18, 0.13 * h), M.SKIN, inst)

    def cyclist(self, x: float, y: float, yaw: float) -> None:
        inst = self.new_instance()
        for sx in (-0.55, 0.55):
            self.part(x, y, yaw, (sx, 0, 0), (0.68, 0.05, 0.68), M.TIRE, inst)
        self.part(x, y, yaw, (0, 0, 0.45), (1.0, 0.06, 0.3), M.METAL, inst)
        self.part(x, y, yaw, (-0.1, 0, 0.8), (0.35, 0.4, 0.65), M.CLOTH, inst)
        self.part(x, y, yaw, (-0.05, 0, 1.45), (0.2, 0.18, 0.22), M.SKIN, inst)


def dense_street_scene(seed: int = 0) -> FrameState:
    """A dense urban street (about 1500 primitives) with the ego at the origin heading +x.

    Street along world x (road |y| < 7 m, sidewalks to 10 m, buildings beyond 11 m) and a
    cross street at x = 45 m. Returns a FrameState with ego_to_world = identity.
    """
    rng = np.random.default_rng(seed)
    sb = _SceneBuilder()
    extent = 150.0

    # Buildings: blocks along both sides of both streets (3 primitives each).
    for side in (-1, 1):
        x = -extent
        while x < extent:
            length = rng.uniform(10, 30)
            if abs(x + length / 2 - 45) < 7 + length / 2:  # leave the cross street open
                x += length + 2
                continue
            depth = rng.uniform(10, 20)
            h = rng.uniform(6, 30)
            y0 = side * (11 + rng.uniform(0, 3))
            cy = y0 + side * depth / 2
            sb.add((x + length / 2, cy, h / 2, length, depth, h, 0.0), M.BUILDING)
            sb.add((x + length / 2, cy, h + 1, 0.6 * length, 0.6 * depth, 2, 0.0), M.CONCRETE)
            sb.add((x + length / 2, y0 + side * 0.3, 1.5, length, 0.6, 3.0, 0.0), M.WALL)
            x += length + rng.uniform(0.5, 4)
    for side in (-1, 1):
        y = 14.0
        while y < extent:
            length = rng.uniform(10, 30)
            h = rng.uniform(6, 30)
            depth = rng.uniform(10, 20)
            cx = 45 + side * (11 + depth / 2)
            sb.add((cx, side * (y + length / 2), h / 2, depth, length, h, 0.0), M.BUILDING)
            sb.add((cx, -side * (y + length / 2), h / 2, depth, length, h, 0.0), M.BUILDING)
            y += length + rng.uniform(0.5, 4)

    # Parked cars along both curbs, moving cars in the lanes, some on the cross street.
    for side in (-1, 1):
        x = -extent
        while x < extent:
            if abs(x - 45) > 9 and rng.random() < 0.8:
                heading = rng.normal(0, 0.05) + (np.pi if rng.random() < 0.3 else 0.0)
                sb.car(x, side * 5.6, heading, rng)
            x += rng.uniform(5.5, 8)
    for _ in range(30):
        lane = rng.choice([-5.25, -1.75, 1.75])
        x = rng.uniform(-extent, extent)
        if abs(x) > 6:
            sb.car(x, lane, 0.0 if lane > 0 else np.pi, rng)
    for _ in range(12):
        sb.car(45 + rng.choice([-1.75, 1.75]), rng.uniform(-extent, extent), np.pi / 2, rng)

    # Pedestrians and cyclists.
    for _ in range(70):
        sb.pedestrian(rng.uniform(-extent, extent), rng.choice([-1, 1]) * rng.uniform(7.3, 9.8),
                      rng.uniform(-np.pi, np.pi), rng)
    for _ in range(12):
        sb.cyclist(rng.uniform(-extent, extent), rng.choice([-6.6, 6.6]), 0.0)

    # Street furniture: poles with lamps, trees, cones, barriers, bins.
    for side in (-1, 1):
        for x in np.arange(-extent, extent, 18.0):
            sb.add((x, side * 9.6, 3.5, 0.18, 0.18, 7.0, 0.0), M.POLE)
            sb.add((x, side * 8.8, 7.0, 0.15, 1.6, 0.12, 0.0), M.POLE)
            sb.add((x, side * 8.1, 6.85, 0.5, 0.3, 0.2, 0.0), M.METAL)
        for x in np.arange(-extent + 9, extent, 15.0):
            trunk_h = rng.uniform(2, 3.5)
            sb.add((x, side * 8.6, trunk_h / 2, 0.35, 0.35, trunk_h, 0.0), M.TRUNK)
            crown = rng.uniform(2.5, 5)
            sb.add((x, side * 8.6, trunk_h + crown / 2, crown, crown, crown, rng.uniform(0, 1)),
                   M.VEGETATION)
            sb.add((x + 3, side * 9.2, 0.5, 1.2, 0.8, 1.0, 0.0), M.VEGETATION)
    for _ in range(40):
        inst = sb.new_instance()
        x, y = rng.uniform(-60, 60), rng.uniform(-6.8, 6.8)
        if abs(x) > 5 or abs(y) > 3:
            sb.add((x, y, 0.35, 0.4, 0.4, 0.7, 0.0), M.RETROREFLECTOR, inst)
    for _ in range(25):
        inst = sb.new_instance()
        sb.add((rng.uniform(-extent, extent), rng.choice([-7.2, 7.2]), 0.5, 2.0, 0.5, 1.0, 0.0),
               M.CONCRETE, inst)
    for _ in range(30):
        sb.add((rng.uniform(-extent, extent), rng.choice([-1, 1]) * rng.uniform(9, 10.5),
                0.6, 0.6, 0.6, 1.2, rng.uniform(0, 3)), M.PLASTIC)
    for side in (-1, 1):  # fence segments in front of some buildings
        for x in np.arange(-extent, extent, 6.0):
            if rng.random() < 0.35:
                sb.add((x, side * 10.6, 0.6, 5.8, 0.05, 1.2, 0.0), M.FENCE)

    boxes = np.asarray(sb.boxes, dtype=np.float64)
    n = boxes.shape[0]
    prims = Primitives(
        boxes=boxes,
        material=np.asarray(sb.material, dtype=np.int16),
        color=np.full((n, 3), 128, dtype=np.uint8),
        instance=np.asarray(sb.instance, dtype=np.int32),
    )

    # Ground raster: road, lane markings, sidewalks, grass.
    res = 0.2
    xs = -extent - 10 + (np.arange(int((2 * extent + 20) / res)) + 0.5) * res
    gx, gy = np.meshgrid(xs, xs)
    mat = np.full(gx.shape, int(M.GRASS), dtype=np.uint8)
    sidewalk = (np.abs(gy) < 10.5) | (np.abs(gx - 45) < 10.5)
    mat[sidewalk] = int(M.SIDEWALK)
    road = (np.abs(gy) < 7) | (np.abs(gx - 45) < 7)
    mat[road] = int(M.ROAD)
    dashes = (np.abs(np.abs(gy) - 3.5) < 0.08) & (np.mod(gx, 9.0) < 3.0) & (np.abs(gx - 45) > 7)
    mat[dashes | ((np.abs(gy) < 0.1) & (np.abs(gx - 45) > 7))] = int(M.LANE_MARKING)
    ground = GroundMap(material=mat, x_min=-extent - 10, y_min=-extent - 10, resolution=res)
    return FrameState(timestamp_us=0, ego_to_world=np.eye(4), primitives=prims, ground=ground)


def _time(fn: Callable[[], LidarScan], repeats: int) -> tuple[float, LidarScan]:
    """Median wall time of ``repeats`` calls of ``fn`` and its last result."""
    times: list[float] = []
    out = None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--brute-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", nargs="*", default=list(LIDAR_PRESETS))
    args = parser.parse_args()

    state = dense_street_scene(args.seed)
    print(f"scene: {len(state.primitives)} primitives, "
          f"{int(np.max(state.primitives.instance)) + 1} instances")
    header = (f"{'preset':<11} {'rays':>7} {'points':>7} {'ret%':>5} {'obj pts':>7} "
              f"{'culled ms':>9} {'brute ms':>9} {'speed-up':>8} identical")
    print(header)
    print("-" * len(header))
    for name in args.presets:
        cfg = lidar_preset(name)
        t_c, scan = _time(
            lambda: scan_lidar_detailed(state, cfg, np.random.default_rng(args.seed)),
            args.repeats,
        )
        t_b, scan_b = _time(
            lambda: scan_lidar_detailed(
                state, cfg, np.random.default_rng(args.seed), method="brute"
            ),
            args.brute_repeats,
        )
        same = scan.points.tobytes() == scan_b.points.tobytes()
        n = scan.points.shape[0]
        n_obj = int(np.sum(scan.instance >= 0))
        print(f"{name:<11} {cfg.num_rays:>7} {n:>7} {100 * n / cfg.num_rays:>5.1f} {n_obj:>7} "
              f"{1e3 * t_c:>9.1f} {1e3 * t_b:>9.1f} {t_b / t_c:>7.1f}x {same}")


if __name__ == "__main__":
    main()
