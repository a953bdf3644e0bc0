"""Bird's-eye preview of one SynthDrive keyframe (ground raster, primitives, boxes, ego).

Usage::

    python benchmarks/synth_world_preview.py OUT.png [--seed S] [--keyframe K] [--range R]

The plot is in the ego frame (x forward to the right, y left up). Ground materials are
coloured, primitives drawn as filled footprints (colour by material, darker when taller),
annotated boxes outlined by class with a velocity arrow, the ego in black. Prints counts and
``state_at`` timing.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection

from distill3d.synth.classes import CLASS_NAMES
from distill3d.synth.types import Material
from distill3d.synth.world import EGO_BOX, Scene, SceneConfig

GROUND_RGB = {
    Material.ROAD: (0.36, 0.36, 0.38),
    Material.SIDEWALK: (0.72, 0.70, 0.66),
    Material.GRASS: (0.55, 0.68, 0.45),
    Material.LANE_MARKING: (0.97, 0.97, 0.97),
    Material.CURB: (0.85, 0.84, 0.80),
}
CLASS_COLORS = dict(zip(CLASS_NAMES, plt.get_cmap("tab10").colors))


def corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) BEV corners of boxes (N, >=7) ``(x, y, z, l, w, h, yaw, ...)``."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    dx = np.array([0.5, 0.5, -0.5, -0.5])[None] * boxes[:, 3:4]
    dy = np.array([0.5, -0.5, -0.5, 0.5])[None] * boxes[:, 4:5]
    x = boxes[:, 0:1] + c[:, None] * dx - s[:, None] * dy
    y = boxes[:, 1:2] + s[:, None] * dx + c[:, None] * dy
    return np.stack([x, y], axis=-1)


def to_ego(world_to_ego: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    xy = boxes[:, :2] @ world_to_ego[:2, :2].T + world_to_ego[:2, 3]
    out[:, :2] = xy
    yaw_off = np.arctan2(world_to_ego[1, 0], world_to_ego[0, 0])
    out[:, 6] = boxes[:, 6] + yaw_off
    if boxes.shape[1] >= 9:
        out[:, 7:9] = boxes[:, 7:9] @ world_to_ego[:2, :2].T
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keyframe", type=int, default=10)
    ap.add_argument("--range", type=float, default=60.0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    scene = Scene(SceneConfig(seed=args.seed))
    t_build = time.perf_counter() - t0
    t_kf = float(scene.keyframe_times()[min(args.keyframe, scene.config.num_keyframes - 1)])
    t0 = time.perf_counter()
    state = scene.state_at(t_kf)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweeps = scene.sweep_times()
    for t in sweeps:
        scene.state_at(float(t))
    t_state = (time.perf_counter() - t0) / len(sweeps)

    w2e = np.linalg.inv(state.ego_to_world)
    R = args.range
    fig, ax = plt.subplots(figsize=(13, 13))
    # ground, resampled in the ego frame
    res = 0.2
    g = np.arange(-R, R, res) + res / 2
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size), np.ones(gx.size)], axis=1)
    wxy = (pts @ state.ego_to_world.T)[:, :2]
    mat = state.ground.material_at(wxy).reshape(gx.shape)
    img = np.zeros(mat.shape + (3,))
    for m, rgb in GROUND_RGB.items():
        img[mat == m] = rgb
    ax.imshow(img, origin="lower", extent=(-R, R, -R, R), interpolation="nearest")
    # primitives
    prims = state.primitives
    pb = to_ego(w2e, prims.boxes)
    near = (np.abs(pb[:, 0]) < R + 30) & (np.abs(pb[:, 1]) < R + 30)
    order = np.argsort(pb[near, 2] + pb[near, 5] / 2)  # draw low things first
    pc = corners(pb[near][order])
    cols = prims.color[near][order] / 255.0
    top = (pb[near, 2] + pb[near, 5] / 2)[order]
    shade = np.clip(1.0 - top / 60.0, 0.45, 1.0)[:, None]
    ax.add_collection(PolyCollection(pc, facecolors=cols * shade, edgecolors=(0, 0, 0, 0.25),
                                     linewidths=0.3))
    # annotated boxes
    counts: Counter[str] = Counter()
    for obj in state.objects:
        b = to_ego(w2e, obj.box[None])[0]
        if abs(b[0]) > R or abs(b[1]) > R:
            continue
        if np.hypot(b[0], b[1]) <= 50:
            counts[obj.name] += 1
        c = corners(b[None])[0]
        col = CLASS_COLORS[obj.name]
        ax.add_patch(plt.Polygon(c, fill=False, edgecolor=col, linewidth=1.6))
        front = (c[0] + c[1]) / 2
        ax.plot([b[0], front[0]], [b[1], front[1]], color=col, linewidth=1.0)
        if np.hypot(b[7], b[8]) > 0.2:
            ax.arrow(b[0], b[1], b[7] * 0.5, b[8] * 0.5, color=col, width=0.05,
                     head_width=0.5, length_includes_head=True)
    ego = corners(EGO_BOX[None])[0]
    ax.add_patch(plt.Polygon(ego, fill=True, facecolor="black", edgecolor="yellow"))
    for name in CLASS_NAMES:
        ax.plot([], [], color=CLASS_COLORS[name], label=f"{name} ({counts.get(name, 0)})")
    ax.legend(loc="upper right", fontsize=9, title="within 50 m")
    ax.set_xlim(-R, R)
    ax.set_ylim(-R, R)
    ax.set_aspect("equal")
    ax.set_title(f"seed {args.seed}, t = {t_kf:.1f} s: {scene.description}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"scene build {t_build:.2f} s, first state_at (ground raster) {t_first:.2f} s, "
          f"state_at {t_state * 1e3:.2f} ms avg over {len(sweeps)} sweeps")
    print(f"primitives {len(prims)}, objects {len(state.objects)}, within 50 m: "
          f"{sum(counts.values())} {dict(counts)}")


if __name__ == "__main__":
    main()
