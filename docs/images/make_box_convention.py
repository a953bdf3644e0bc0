"""Draw ``box_convention.png``: our box convention in bird's-eye view.

Run from anywhere: ``python docs/images/make_box_convention.py``; the PNG is written
next to this script. Only matplotlib and numpy are needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Arc, FancyArrowPatch, Polygon  # noqa: E402

OUT = Path(__file__).resolve().parent / "box_convention.png"


def main() -> None:
    x, y, length, width, yaw = 5.0, 3.2, 4.4, 2.0, math.radians(32.0)
    c, s = math.cos(yaw), math.sin(yaw)
    heading = np.array([c, s])
    left = np.array([-s, c])
    centre = np.array([x, y])
    corners = [centre + a * length / 2 * heading + b * width / 2 * left
               for a, b in ((1, 1), (-1, 1), (-1, -1), (1, -1))]

    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=100)
    ax.set_aspect("equal")
    ax.set_xlim(-0.8, 9.6)
    ax.set_ylim(-0.8, 6.8)
    ax.axis("off")

    # LiDAR frame axes (seen from above, z out of the page)
    for end, label in (((8.6, 0.0), "x"), ((0.0, 6.3), "y")):
        ax.add_patch(FancyArrowPatch((0, 0), end, arrowstyle="-|>", mutation_scale=16, lw=1.6, color="black"))
        ax.text(end[0] + (0.15 if label == "x" else 0.12), end[1] + (-0.1 if label == "x" else 0.05),
                f"+{label}", fontsize=12, weight="bold")
    ax.plot([0], [0], "o", color="black", ms=5)
    ax.text(0.12, -0.45, "LiDAR origin  (z up, out of the page)", fontsize=9)

    # the box
    ax.add_patch(Polygon(corners, closed=True, fc="#cfe2f3", ec="#1f4e79", lw=2))
    front = [corners[0], corners[3]]
    ax.plot([p[0] for p in front], [p[1] for p in front], color="#c00000", lw=3.5, solid_capstyle="round")
    ax.plot(*centre, "o", color="#1f4e79", ms=6)
    ax.annotate("(x, y, z): geometric centre", centre, xytext=(centre[0] - 3.6, centre[1] + 2.4),
                fontsize=10, arrowprops=dict(arrowstyle="->", color="#1f4e79"))

    # heading arrow and +x reference through the centre
    tip = centre + 0.5 * length * heading + 0.9 * heading
    ax.add_patch(FancyArrowPatch(tuple(centre), tuple(tip), arrowstyle="-|>", mutation_scale=18,
                                 lw=2.2, color="#c00000"))
    ax.text(*(tip + np.array([0.05, 0.15])), "heading", color="#c00000", fontsize=10)
    ax.plot([centre[0], centre[0] + 3.3], [centre[1], centre[1]], ls="--", color="grey", lw=1)
    ax.add_patch(Arc(tuple(centre), 3.0, 3.0, theta1=0, theta2=math.degrees(yaw), color="#7030a0", lw=2))
    ax.text(centre[0] + 2.75, centre[1] + 0.3, "yaw", color="#7030a0", fontsize=12, weight="bold")
    ax.text(centre[0] + 2.75, centre[1] - 0.45, "counter-clockwise\nfrom +x", color="#7030a0", fontsize=8)

    # l and w labels on the box sides
    l_mid = (corners[2] + corners[3]) / 2  # right side
    ax.text(*(l_mid - 0.45 * left), "l (along heading)", rotation=math.degrees(yaw), ha="center",
            va="center", fontsize=10, color="#1f4e79")
    w_mid = (corners[1] + corners[2]) / 2  # rear side
    ax.text(*(w_mid - 0.35 * heading), "w", rotation=math.degrees(yaw) - 90, ha="center", va="center",
            fontsize=11, color="#1f4e79")
    ax.text(5.4, 0.5, "red edge = front face\nh: vertical size, z in the middle of it",
            fontsize=9, color="#333333")

    ax.set_title("distill3d box: (x, y, z, l, w, h, yaw[, vx, vy]) in the key LiDAR frame\n"
                 "yaw in [-pi, pi), metres, velocity in m/s in the same frame", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    plt.close(fig)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
