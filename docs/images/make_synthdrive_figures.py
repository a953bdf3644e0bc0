"""Draw the SynthDrive figures of ``docs/synthdrive.md`` and print its statistics tables.

Generates a SynthDrive set in the nuScenes layout in a temporary folder (by default the
``mini`` preset, 10 scenes x 40 keyframes, without sweeps: keyframe files do not depend on
the sweeps, so this is the keyframe data of ``distill3d synth --preset mini``), then reads it
back from its JSON tables and files (no devkit) and writes, next to this script:

* ``synthdrive_bev.png``: one keyframe's LiDAR points seen from above with the GT boxes
  coloured by class;
* ``synthdrive_cameras.png``: the six camera images of the same sample with the GT boxes
  projected as 3D wireframes (2x3 sheet, the nuScenes layout);
* ``synthdrive_points_vs_distance.png``: median LiDAR points per box against distance per
  class, beside real nuScenes v1.0-mini val, and the share of boxes with < 5 points.

It prints the markdown tables of :func:`distill3d.synth.stats.format_statistics`.

Run::

    python docs/images/make_synthdrive_figures.py [--workers 2] [--scenes 10] [--samples 40]
        [--dataroot EXISTING_NUSCENES_ROOT --version v1.0-mini]

(``--dataroot`` reuses a set already on disk instead of generating one.)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw

from distill3d.synth.classes import CLASS_NAMES
from distill3d.synth.stats import (
    DISTANCE_LABELS,
    category_to_detection_name,
    dataset_statistics,
    format_statistics,
    nuscenes_reference_statistics,
)

HERE = Path(__file__).resolve().parent
CAMERA_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                 ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
CLASS_COLOURS = {
    "car": "#2050ff", "truck": "#ff7f0e", "bus": "#d62728", "trailer": "#8c564b",
    "construction_vehicle": "#e6b800", "pedestrian": "#2ca02c", "motorcycle": "#9467bd",
    "bicycle": "#e377c2", "traffic_cone": "#ff4500", "barrier": "#17becf",
}


# --------------------------------------------------------------------------- data access


def quat_to_matrix(q: list[float]) -> np.ndarray:
    """(w, x, y, z) unit quaternion -> (3, 3) rotation."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose(record: dict) -> np.ndarray:
    """(4, 4) transform of a nuScenes ego_pose / calibrated_sensor record (child -> parent)."""
    out = np.eye(4)
    out[:3, :3] = quat_to_matrix(record["rotation"])
    out[:3, 3] = record["translation"]
    return out


class Tables:
    """The JSON tables of a nuScenes-layout folder, indexed by token."""

    def __init__(self, root: Path, version: str) -> None:
        self.root = root
        folder = root / version

        def load(name: str) -> list[dict]:
            return json.loads((folder / f"{name}.json").read_text())

        self.samples = load("sample")
        self.sample_data = load("sample_data")
        self.annotations = load("sample_annotation")
        self.ego_pose = {r["token"]: r for r in load("ego_pose")}
        self.calib = {r["token"]: r for r in load("calibrated_sensor")}
        self.sensor = {r["token"]: r for r in load("sensor")}
        category = {r["token"]: r["name"] for r in load("category")}
        self.instance_class = {r["token"]: category_to_detection_name(category[r["category_token"]])
                               for r in load("instance")}
        self.key_data: dict[str, dict[str, dict]] = {}
        for sd in self.sample_data:
            if sd["is_key_frame"]:
                channel = self.sensor[self.calib[sd["calibrated_sensor_token"]]["sensor_token"]][
                    "channel"]
                self.key_data.setdefault(sd["sample_token"], {})[channel] = sd
        self.anns_of: dict[str, list[dict]] = {}
        for a in self.annotations:
            self.anns_of.setdefault(a["sample_token"], []).append(a)

    def boxes(self, sample_token: str) -> list[tuple[str, np.ndarray, int]]:
        """(class, (x, y, z, w, l, h, yaw) global, num_lidar_pts) of a sample's
        detection-class annotations."""
        out = []
        for a in self.anns_of.get(sample_token, []):
            name = self.instance_class[a["instance_token"]]
            if name is None:
                continue
            w, q = a["rotation"][0], a["rotation"][3]
            yaw = 2.0 * math.atan2(q, w)
            out.append((name, np.array([*a["translation"], *a["size"], yaw]),
                        int(a["num_lidar_pts"])))
        return out


def box_corners(box: np.ndarray) -> np.ndarray:
    """(8, 3) corners of a (x, y, z, w, l, h, yaw) box: bottom 0-3, top 4-7, 0-1 the front."""
    x, y, z, w, l, h, yaw = box
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([x + c * sx - s * sy, y + s * sx + c * sy, z + sz], axis=1)


_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4),
          (0, 4), (1, 5), (2, 6), (3, 7), (0, 5), (1, 4))  # last two: a cross on the front


def pick_sample(tables: Tables) -> str:
    """The keyframe with the most detection classes that have boxes with >= 5 points
    within 40 m (ties: the most such boxes, then dataset order)."""
    best, best_key = tables.samples[0]["token"], (-1, -1)
    for s in tables.samples:
        sd = tables.key_data[s["token"]]["LIDAR_TOP"]
        ego = np.array(tables.ego_pose[sd["ego_pose_token"]]["translation"][:2])
        near = [(n, p) for n, b, p in tables.boxes(s["token"])
                if np.hypot(*(b[:2] - ego)) < 40 and p >= 5]
        key = (len({n for n, _ in near}), len(near))
        if key > best_key:
            best, best_key = s["token"], key
    return best


# --------------------------------------------------------------------------- figures


def draw_bev(tables: Tables, sample_token: str, out: Path, extent: float = 45.0) -> None:
    sd = tables.key_data[sample_token]["LIDAR_TOP"]
    pts = np.fromfile(tables.root / sd["filename"], dtype="<f4").reshape(-1, 5)
    lidar_to_ego = pose(tables.calib[sd["calibrated_sensor_token"]])
    world_to_ego = np.linalg.inv(pose(tables.ego_pose[sd["ego_pose_token"]]))
    xyz = pts[:, :3].astype(np.float64) @ lidar_to_ego[:3, :3].T + lidar_to_ego[:3, 3]
    keep = (np.abs(xyz[:, 0]) < extent) & (np.abs(xyz[:, 1]) < extent)
    xyz = xyz[keep]

    fig, ax = plt.subplots(figsize=(8.0, 8.0), dpi=100)
    order = np.argsort(xyz[:, 2])
    ax.scatter(xyz[order, 0], xyz[order, 1], s=1.0, c=np.clip(xyz[order, 2], 0.0, 3.0),
               cmap="Greys", vmin=-2.5, vmax=3.0, linewidths=0, rasterized=True)
    used = set()
    for name, box, npts in tables.boxes(sample_token):
        corners = box_corners(box)
        corners = corners @ world_to_ego[:3, :3].T + world_to_ego[:3, 3]
        if np.all(np.abs(corners[:, :2]) > extent):
            continue
        colour = CLASS_COLOURS[name]
        poly = corners[[0, 1, 2, 3, 0], :2]
        ax.plot(poly[:, 0], poly[:, 1], color=colour, lw=1.0,
                ls="-" if npts >= 5 else ":")
        front = corners[[0, 1], :2].mean(axis=0)
        centre = corners[:4, :2].mean(axis=0)
        ax.plot([centre[0], front[0]], [centre[1], front[1]], color=colour, lw=0.8)
        used.add(name)
    ax.add_patch(plt.Rectangle((-0.9, -0.95), 4.5, 1.9, color="black", zorder=5))
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("ego x (forward), m")
    ax.set_ylabel("ego y (left), m")
    handles = [Line2D([], [], color=CLASS_COLOURS[n], lw=2, label=n) for n in CLASS_NAMES
               if n in used]
    handles.append(Line2D([], [], color="grey", lw=1, ls=":", label="box with < 5 points"))
    ax.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.9)
    ax.set_title(f"SynthDrive keyframe: {pts.shape[0]:,} LiDAR points (32 beams), "
                 f"GT boxes by class", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _project_edges(corners_cam: np.ndarray, k: np.ndarray, near: float = 0.2
                   ) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Pixel segments of the box edges, clipped to the plane z = near (camera frame)."""
    segs = []
    for i, j in _EDGES:
        a, b = corners_cam[i], corners_cam[j]
        if a[2] < near and b[2] < near:
            continue
        if a[2] < near or b[2] < near:
            t = (near - a[2]) / (b[2] - a[2])
            p = a + t * (b - a)
            a, b = (p, b) if a[2] < near else (a, p)
        ua, ub = k @ a, k @ b
        segs.append(((ua[0] / ua[2], ua[1] / ua[2]), (ub[0] / ub[2], ub[1] / ub[2])))
    return segs


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def draw_cameras(tables: Tables, sample_token: str, out: Path, scale: float = 0.66,
                 colours: int = 128) -> None:
    tiles = []
    for row in CAMERA_LAYOUT:
        row_tiles = []
        for channel in row:
            sd = tables.key_data[sample_token][channel]
            img = Image.open(tables.root / sd["filename"]).convert("RGB")
            w, h = img.size
            big = img.resize((int(w * 2), int(h * 2)), Image.BILINEAR)  # drawn at 2x, then down
            draw = ImageDraw.Draw(big)
            calib = tables.calib[sd["calibrated_sensor_token"]]
            k = np.asarray(calib["camera_intrinsic"], dtype=np.float64)
            world_to_cam = np.linalg.inv(pose(tables.ego_pose[sd["ego_pose_token"]]) @ pose(calib))
            boxes = tables.boxes(sample_token)
            # far boxes first so that near wireframes are drawn on top
            depth = [np.linalg.norm((world_to_cam[:3, :3] @ b[:3]) + world_to_cam[:3, 3])
                     for _, b, _ in boxes]
            for idx in np.argsort(depth)[::-1]:
                name, box, npts = boxes[idx]
                corners = box_corners(box) @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
                if np.all(corners[:, 2] < 0.2) or depth[idx] > 70:
                    continue
                colour = _hex_rgb(CLASS_COLOURS[name])
                for (u0, v0), (u1, v1) in _project_edges(corners, k):
                    if max(u0, u1) < -w or min(u0, u1) > 2 * w or max(v0, v1) < -h \
                            or min(v0, v1) > 2 * h:
                        continue
                    draw.line([(2 * u0 + 0.5, 2 * v0 + 0.5), (2 * u1 + 0.5, 2 * v1 + 0.5)],
                              fill=colour, width=4 if npts >= 5 else 2)
            tile = big.resize((int(w * scale), int(h * scale)), Image.LANCZOS)
            label = ImageDraw.Draw(tile)
            x0, y0, x1, y1 = label.textbbox((6, 4), channel)
            label.rectangle((x0 - 3, y0 - 2, x1 + 3, y1 + 2), fill=(0, 0, 0))
            label.text((6, 4), channel, fill=(255, 255, 255))
            row_tiles.append(tile)
        tiles.append(row_tiles)
    tw, th = tiles[0][0].size
    gap = 4
    sheet = Image.new("RGB", (3 * tw + 2 * gap, 2 * th + gap), (255, 255, 255))
    for r, row_tiles in enumerate(tiles):
        for c, tile in enumerate(row_tiles):
            sheet.paste(tile, (c * (tw + gap), r * (th + gap)))
    # A palette keeps the PNG small despite the simulated sensor noise.
    sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(out, optimize=True)


def draw_points_vs_distance(stats: dict, out: Path) -> None:
    ref = nuscenes_reference_statistics()["mini_val"]["classes"]
    centres = np.array([5, 15, 25, 35, 45, 60], dtype=np.float64)
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.6), dpi=100,
                             gridspec_kw={"width_ratios": [1.0, 1.0, 0.95]})
    groups = (("vehicles", CLASS_NAMES[:5]), ("people, cycles, cones, barriers", CLASS_NAMES[5:]))
    for ax, (title, names) in zip(axes[:2], groups):
        for name in names:
            colour = CLASS_COLOURS[name]
            med = np.array([np.nan if v is None else v
                            for v in stats["points_vs_distance"][name]["median"]])
            ax.plot(centres, med, "-o", color=colour, ms=4, lw=1.8, label=name)
            if name in ref:
                rm = np.array([np.nan if v is None else v
                               for v in ref[name]["median_by_distance"]])
                ax.plot(centres, rm, "--", color=colour, lw=1.2, alpha=0.9)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(0, 5000)
        ax.axhline(5, color="grey", lw=0.8, ls=":")
        ax.text(0.5, 5.8, "5 points", fontsize=7, color="grey")
        ax.set_xticks(centres)
        ax.set_xticklabels(list(DISTANCE_LABELS))
        ax.set_xlabel("distance of the box centre from the ego, m")
        ax.set_ylabel("median LiDAR points in the box")
        ax.set_title(f"{title}: SynthDrive (solid), nuScenes mini val (dashed)", fontsize=9)
        ax.legend(fontsize=7.5, loc="upper right")
        ax.grid(alpha=0.3)

    bx = axes[2]
    y = np.arange(len(CLASS_NAMES))
    ours = [stats["classes"][n]["in_range_lt5_share"] or 0.0 for n in CLASS_NAMES]
    theirs = [ref[n]["in_range_lt5_share"] if n in ref else np.nan for n in CLASS_NAMES]
    bx.barh(y - 0.2, ours, height=0.4, color=[CLASS_COLOURS[n] for n in CLASS_NAMES],
            label="SynthDrive (class colour)")
    bx.barh(y + 0.2, theirs, height=0.4, color="lightgrey", edgecolor="grey",
            label="nuScenes mini val")
    bx.set_yticks(y)
    bx.set_yticklabels([f"{n} ({stats['classes'][n]['eval_range_m']:.0f} m)"
                        for n in CLASS_NAMES], fontsize=8)
    bx.invert_yaxis()
    bx.set_xlim(0, 1)
    bx.set_xlabel("share of boxes with < 5 LiDAR points")
    bx.set_title("sparse boxes within the class's eval range", fontsize=9)
    bx.legend(fontsize=7, loc="lower right")
    bx.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataroot", type=Path, default=None,
                        help="use this nuScenes-layout set instead of generating one")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="synthdrive_figures_") as tmp:
        root = args.dataroot
        version = args.version
        if root is None:
            from distill3d.synth.generate import generate_dataset

            report = generate_dataset("nuscenes", tmp, preset="mini", scenes=args.scenes,
                                      samples_per_scene=args.samples, seed=args.seed,
                                      workers=args.workers, sweeps=0, progress=True)
            root, version = Path(tmp), str(report.version)
        tables = Tables(root, version)
        sample = pick_sample(tables)
        draw_bev(tables, sample, args.out / "synthdrive_bev.png")
        draw_cameras(tables, sample, args.out / "synthdrive_cameras.png")
        stats = dataset_statistics(root, version)
        draw_points_vs_distance(stats, args.out / "synthdrive_points_vs_distance.png")
        print(f"figures written to {args.out} (sample {sample})\n")
        print(format_statistics(stats))


if __name__ == "__main__":
    main()
