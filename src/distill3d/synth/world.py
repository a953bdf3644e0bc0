"""SynthDrive world: a procedural street scene with moving agents, sampled at any instant.

``Scene(SceneConfig(seed=...))`` builds, from the seed alone, a street layout around the ego
vehicle's drive and everything in it; ``Scene.state_at(t)`` returns the world at time ``t``
(seconds since the first keyframe) as a :class:`~distill3d.synth.types.FrameState`.

What a scene contains
---------------------
* **Roads.** A main road (the ego's, 1-2 lanes per direction) and, in most scenes, one or two
  cross streets (4-way or T junctions), with optional bike lanes and parking lanes, drawn in the
  :class:`~distill3d.synth.types.GroundMap` as ROAD, LANE_MARKING (dashed lane dividers, solid
  edge and centre lines, stop lines, zebra crosswalks), SIDEWALK, CURB and GRASS. Right- or
  left-hand traffic (Boston or Singapore style). Curbs are also 0.13 m primitives (cut at the
  crosswalks).
* **Blocks.** Buildings with set-back upper tiers, storefront glass and awnings, walls,
  fences, hedges, parking lots with perpendicular stalls, green lots, plazas and the odd
  construction site behind a row of barriers.
* **Street furniture** in a 1 m zone along each curb: street lights, signs, traffic lights at
  the corners, trees, bins, bollards, pedestrian-sized posts, mailboxes, electrical boxes,
  hydrants, benches, bus shelters, bicycle racks, and car-sized dumpsters and skips in the
  parking lanes. None of these is annotated: they are the look-alikes a detector must reject.
* **Agents.** Parked vehicles along the curbs and in lots; traffic in every lane at one
  constant speed per lane (so no one ever catches up with anyone); on the road that has the
  red light, queues that brake to a stop behind the stop line (same deceleration per lane, so
  queues never collide); cyclists in bike lanes; pedestrians walking along the sidewalks on
  concentric "walking lanes" around each block (one speed per lane), crossing at the
  crosswalks of the red road, waiting at the curb, sitting on benches; construction zones
  (lane closures with cone tapers, parking-lane works, closed side streets, building sites)
  with cones, barriers, construction vehicles and workers.
* **The ego** drives along a lane of the main road at 3.5-11 m/s; when the main road has the
  red light it brakes and waits in the queue (sometimes for the whole scene).

Frames, time and determinism
----------------------------
Everything is generated in a local *map* frame where roads are axis-aligned, then moved to the
*world* frame by a random rotation and an offset of a few hundred metres (so ego poses have
arbitrary yaw, like nuScenes' global frame). ``state_at`` computes poses analytically from
paths (polylines) and piecewise-constant-acceleration speed profiles, so velocities are the
exact time derivatives of the box centres. All randomness is drawn in ``Scene.__init__`` from
one ``np.random.Generator`` seeded with ``SceneConfig.seed``; ``state_at`` is a pure function
of ``t``.

Notes for the sensor and writer code
------------------------------------
* The ego is not in the primitives. Its body (for anyone who needs it) is the box
  :data:`EGO_BOX` in the ego frame; the ego frame's origin is the rear axle on the ground.
* Side mirrors of cars are emitted as primitives with ``instance == -1`` (nuScenes boxes exclude
  mirrors), so a few LiDAR points next to a car are not the car's.
* Riders are part of their bicycle / motorcycle (nuScenes convention); they are never separate
  pedestrians.
* Pedestrian boxes are tight at every instant, so a walker's length breathes with its stride.
* Objects and primitives farther than ``SceneConfig.render_radius`` from the ego at ``t`` are
  left out of that frame.
* ``AnnotatedObject.subtype`` is ``"van"`` for van-shaped cars (KITTI ``Van``), ``"sitting"``,
  ``"child"``, ``"worker"`` for pedestrians, and the builder kind for trucks, trailers,
  construction vehicles; :func:`distill3d.synth.classes.kitti_class` maps it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distill3d.synth import shapes as S
from distill3d.synth.classes import attribute_for, class_spec, sample_size
from distill3d.synth.types import (
    AnnotatedObject,
    FrameState,
    GroundMap,
    Material,
    Primitives,
)

__all__ = [
    "BASE_TIME_US",
    "EGO_BOX",
    "SCENE_TIME_STRIDE_US",
    "InstanceInfo",
    "Scene",
    "SceneConfig",
    "wrap_angle",
]

M = Material

BASE_TIME_US = 1_533_151_603_547_590
"""Timestamp (microseconds since the epoch) of the first keyframe of scene index 0
(2018-08-01, like early nuScenes logs)."""

SCENE_TIME_STRIDE_US = 3_600_000_000
"""Scene ``i`` starts ``i`` hours after scene 0, so timestamps never collide."""

EGO_BOX = np.array([1.35, 0.0, 0.78, 4.5, 1.9, 1.56, 0.0])
"""The ego body as ``(x, y, z, l, w, h, yaw)`` in the ego frame (origin at the rear axle)."""

_EGO_REAR = EGO_BOX[3] / 2 - EGO_BOX[0]  # rear overhang behind the origin: 0.9 m
_FAR = 5000.0  # lanes and walking paths extend this far in map units
_CURB_H = 0.13
_FURN_DEPTH = 0.7  # centre of the furniture zone, metres from the curb face
_WALK_MIN_DEPTH = 1.75  # walking-lane centres are at least this far from the curb


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi if isinstance(a, np.ndarray) else \
        float((a + math.pi) % (2 * math.pi) - math.pi)


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """What to generate. Everything random is derived from ``seed``.

    Attributes:
        seed: the scene's random seed (the only source of randomness).
        scene_index: position of the scene in its dataset; only shifts the timestamps
            (``BASE_TIME_US + scene_index * SCENE_TIME_STRIDE_US``), never the content.
        num_keyframes: annotated samples; the scene lasts ``(num_keyframes - 1) / keyframe_hz``.
        keyframe_hz: keyframe rate (nuScenes: 2 Hz).
        sweep_hz: LiDAR sweep rate (nuScenes: 20 Hz); a multiple of ``keyframe_hz``.
        area_radius: objects and scenery are generated only within this distance (metres,
            BEV) of the ego's path: the "area" of the scene.
        render_radius: a frame holds only the objects and primitives within this distance of
            the ego at that instant.
        ground_margin: the ground raster covers the ego's path plus this margin (beyond it
            the ground is GRASS).
        ground_resolution: ground raster cell size, metres.
        traffic_density, parked_density, pedestrian_density, clutter_density: multipliers
            (1.0 = defaults tuned to nuScenes-like counts).
        construction_rate: multiplier of the expected number of construction zones.
        base_time_us: timestamp of scene 0's first keyframe.
    """

    seed: int = 0
    scene_index: int = 0
    num_keyframes: int = 40
    keyframe_hz: float = 2.0
    sweep_hz: float = 20.0
    area_radius: float = 80.0
    render_radius: float = 100.0
    ground_margin: float = 80.0
    ground_resolution: float = 0.1
    traffic_density: float = 1.0
    parked_density: float = 1.0
    pedestrian_density: float = 1.0
    clutter_density: float = 1.0
    construction_rate: float = 1.0
    base_time_us: int = BASE_TIME_US

    def __post_init__(self) -> None:
        if self.num_keyframes < 1:
            raise ValueError(f"num_keyframes must be >= 1, got {self.num_keyframes}")
        if self.keyframe_hz <= 0 or self.sweep_hz <= 0:
            raise ValueError("keyframe_hz and sweep_hz must be positive")
        ratio = self.sweep_hz / self.keyframe_hz
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(
                f"sweep_hz ({self.sweep_hz}) must be an integer multiple of keyframe_hz "
                f"({self.keyframe_hz})")
        if self.area_radius <= 0 or self.render_radius <= 0 or self.ground_resolution <= 0:
            raise ValueError("area_radius, render_radius and ground_resolution must be > 0")
        for name in ("traffic_density", "parked_density", "pedestrian_density",
                     "clutter_density", "construction_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class InstanceInfo:
    """One annotated instance of a scene (a nuScenes ``instance``)."""

    instance_id: int
    name: str
    category: str
    subtype: str


# ------------------------------------------------------------------------------------------
# Small geometry helpers
# ------------------------------------------------------------------------------------------


def _seg_dist(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (N,) from points (N, 2) to the segment a-b."""
    ab = b - a
    den = float(ab @ ab)
    if den < 1e-12:
        return np.linalg.norm(pts - a, axis=1)
    t = np.clip(((pts - a) @ ab) / den, 0.0, 1.0)
    return np.linalg.norm(pts - (a + t[:, None] * ab), axis=1)


def _obb_overlap(a: np.ndarray, b: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Whether BEV boxes overlap, pairwise rows of a, b (N, 5) ``(x, y, l, w, yaw)`` -> (N,)."""
    d = b[:, :2] - a[:, :2]
    sep = np.zeros(a.shape[0], dtype=bool)
    ca, sa = np.cos(a[:, 4]), np.sin(a[:, 4])
    cb, sb = np.cos(b[:, 4]), np.sin(b[:, 4])
    axes = [(ca, sa), (-sa, ca), (cb, sb), (-sb, cb)]
    for ux, uy in axes:
        ra = (np.abs(a[:, 2] * 0.5 * (ca * ux + sa * uy))
              + np.abs(a[:, 3] * 0.5 * (-sa * ux + ca * uy)))
        rb = (np.abs(b[:, 2] * 0.5 * (cb * ux + sb * uy))
              + np.abs(b[:, 3] * 0.5 * (-sb * ux + cb * uy)))
        sep |= np.abs(d[:, 0] * ux + d[:, 1] * uy) > ra + rb + margin
    return ~sep


class _Intervals:
    """Occupied sub-intervals of a 1D range (for placing things along a curb)."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.used: list[tuple[float, float]] = []

    def free(self, a0: float, a1: float) -> bool:
        if a0 < self.lo or a1 > self.hi:
            return False
        return all(a1 <= u0 or a0 >= u1 for u0, u1 in self.used)

    def take(self, a0: float, a1: float) -> None:
        self.used.append((a0, a1))

    def try_take(self, a0: float, a1: float) -> bool:
        if self.free(a0, a1):
            self.take(a0, a1)
            return True
        return False


# ------------------------------------------------------------------------------------------
# Layout: roads, junctions, curbs (edges), blocks
# ------------------------------------------------------------------------------------------


@dataclass
class _Road:
    """A straight road in the map frame. Road coordinates: ``u`` along, ``v`` across (left of
    +u positive). ``axis`` 0 runs along map x (u = x, v = y - center); axis 1 along map y
    (u = y, v = center - x)."""

    axis: int
    center: float
    u_lo: float
    u_hi: float
    lanes: dict[int, int]
    lane_w: float
    median: float
    bike_w: dict[int, float]
    park_w: dict[int, float]
    sw: dict[int, float]
    keep: int  # -1: right-hand traffic (+u lanes at v < 0), +1: left-hand
    red: bool = False
    speed: float = 10.0

    @property
    def u_vec(self) -> np.ndarray:
        return np.array([1.0, 0.0]) if self.axis == 0 else np.array([0.0, 1.0])

    @property
    def v_vec(self) -> np.ndarray:
        return np.array([0.0, 1.0]) if self.axis == 0 else np.array([-1.0, 0.0])

    def dir_of_side(self, side: int) -> int:
        return side * self.keep

    def side_of_dir(self, d: int) -> int:
        return d * self.keep

    def hw(self, side: int) -> float:
        """Distance from the centre line to the curb on ``side`` (+1 left, -1 right)."""
        return (self.median / 2 + self.lanes[self.dir_of_side(side)] * self.lane_w
                + self.bike_w[side] + self.park_w[side])

    def to_map(self, u: float | np.ndarray, v: float | np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if self.axis == 0:
            return np.stack(np.broadcast_arrays(u, self.center + v), axis=-1)
        return np.stack(np.broadcast_arrays(self.center - v, u), axis=-1)

    def heading(self, d: int) -> float:
        vec = self.u_vec * d
        return math.atan2(vec[1], vec[0])

    def lane_v(self, d: int, i: int) -> float:
        return self.side_of_dir(d) * (self.median / 2 + (i + 0.5) * self.lane_w)

    def bike_v(self, side: int) -> float:
        n = self.lanes[self.dir_of_side(side)]
        return side * (self.median / 2 + n * self.lane_w + self.bike_w[side] / 2)

    def park_v(self, side: int) -> float:
        n = self.lanes[self.dir_of_side(side)]
        return side * (self.median / 2 + n * self.lane_w + self.bike_w[side]
                       + self.park_w[side] / 2)


@dataclass
class _Junction:
    x: float  # road B's centre line (map x); road A's u at the junction
    road_b: _Road
    arms: tuple[int, ...]  # B's u directions that exist: +1 north (A side +1), -1 south
    cw: float  # crosswalk width
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 of the shared road area
    closed_arm: int = 0  # an arm closed by barriers (0: none)


@dataclass
class _Crosswalk:
    road: _Road
    junction: _Junction
    arm_dir: int  # the arm lies at larger u (+1) or smaller u (-1) than the junction
    u_lo: float
    u_hi: float
    crossable: bool  # no vehicle drives over it during the scene

    @property
    def outer(self) -> float:
        return self.u_hi if self.arm_dir > 0 else self.u_lo


@dataclass
class _Edge:
    """A straight curb segment: the road side ``side`` of ``road`` for u in [u0, u1]."""

    road: _Road
    side: int
    u0: float
    u1: float
    res0: float  # length kept free (crosswalk landing, corner) at the u0 end
    res1: float
    park_res0: float
    park_res1: float
    furniture: _Intervals = field(init=False)
    parking: _Intervals = field(init=False)

    def __post_init__(self) -> None:
        self.furniture = _Intervals(self.res0, self.length - self.res1)
        self.parking = _Intervals(self.park_res0, self.length - self.park_res1)

    @property
    def length(self) -> float:
        return self.u1 - self.u0

    @property
    def sw(self) -> float:
        return self.road.sw[self.side]

    @property
    def park_w(self) -> float:
        return self.road.park_w[self.side]

    @property
    def normal(self) -> np.ndarray:
        """Map unit vector from the road into the sidewalk."""
        return self.road.v_vec * self.side

    @property
    def tangent(self) -> np.ndarray:
        return self.road.u_vec

    @property
    def traffic_dir(self) -> int:
        return self.road.dir_of_side(self.side)

    def pt(self, a: float, depth: float) -> np.ndarray:
        """Map point at distance ``a`` along the curb from u0 and ``depth`` metres from the
        curb face (positive into the sidewalk, negative into the road)."""
        return self.road.to_map(self.u0 + a, self.side * (self.road.hw(self.side) + depth))


@dataclass
class _Block:
    """A block (land between roads) ``[x0, x1] x [y0, y1]`` in the map frame; ``facing``
    maps a side name (S, E, N, W) to the sidewalk width in front of it (absent: no road)."""

    x0: float
    x1: float
    y0: float
    y1: float
    facing: dict[str, float]


_SIDES = ("S", "E", "N", "W")


def _block_side(b: _Block, s: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, outward normal) of side ``s`` of a block, counter-clockwise."""
    if s == "S":
        return np.array([b.x0, b.y0]), np.array([b.x1, b.y0]), np.array([0.0, -1.0])
    if s == "E":
        return np.array([b.x1, b.y0]), np.array([b.x1, b.y1]), np.array([1.0, 0.0])
    if s == "N":
        return np.array([b.x1, b.y1]), np.array([b.x0, b.y1]), np.array([0.0, 1.0])
    return np.array([b.x0, b.y1]), np.array([b.x0, b.y0]), np.array([-1.0, 0.0])


def _facing_run(b: _Block) -> list[str]:
    """The road-facing sides of a block as one counter-clockwise run."""
    flags = [s in b.facing for s in _SIDES]
    if all(flags):
        return list(_SIDES)
    start = next(i for i in range(4) if not flags[i])
    run = []
    for k in range(1, 5):
        i = (start + k) % 4
        if flags[i]:
            run.append(_SIDES[i])
        elif run:
            break
    return run


def _walk_path(b: _Block, d: float, n_arc: int = 12) -> np.ndarray:
    """Walking lane at ``d`` metres outside block ``b`` along its road-facing sides, with
    arcs of radius ``d`` around its corners: (P, 2) map polyline, counter-clockwise."""
    run = _facing_run(b)
    pts: list[np.ndarray] = []
    for k, s in enumerate(run):
        a, e, n = _block_side(b, s)
        if k == 0:
            pts.append(a + n * d)
        if k + 1 < len(run):
            # counter-clockwise: the next side's normal is this one's turned by +90 degrees
            th0 = math.atan2(n[1], n[0])
            ths = th0 + np.linspace(0.0, math.pi / 2, n_arc + 1)
            pts.extend(e + d * np.stack([np.cos(ths), np.sin(ths)], axis=1))
        else:
            pts.append(e + n * d)
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _clip_segment(p: np.ndarray, q: np.ndarray, box: tuple[float, float, float, float]
                  ) -> tuple[float, float] | None:
    """Liang-Barsky: parameter range [t0, t1] of segment p->q inside the box, or None."""
    x0, x1, y0, y1 = box
    d = q - p
    t0, t1 = 0.0, 1.0
    for pp, dd, lo, hi in ((p[0], d[0], x0, x1), (p[1], d[1], y0, y1)):
        if abs(dd) < 1e-12:
            if pp < lo or pp > hi:
                return None
            continue
        ta, tb = (lo - pp) / dd, (hi - pp) / dd
        if ta > tb:
            ta, tb = tb, ta
        t0, t1 = max(t0, ta), min(t1, tb)
        if t0 > t1:
            return None
    return t0, t1


# ------------------------------------------------------------------------------------------
# Motion: speed profiles and agents
# ------------------------------------------------------------------------------------------

_Seg = tuple[float, float, float, float, float]  # (t_switch, t_ref, s_ref, v_ref, a_ref)


def _profile_const(s0: float, v: float) -> list[_Seg]:
    """Constant speed ``v`` with ``s(0) = s0`` (v = 0: standing still)."""
    return [(-math.inf, 0.0, s0, v, 0.0)]


def _profile_stop(s_final: float, v: float, a: float, t_stop: float) -> list[_Seg]:
    """Cruise at ``v``, brake at ``a`` and come to rest at ``s_final`` at time ``t_stop``
    (which may be negative: then the agent is already waiting)."""
    if v <= 0 or a <= 0:
        return _profile_const(s_final, 0.0)
    tb = t_stop - v / a
    sb = s_final - v * v / (2 * a)
    return [(-math.inf, tb, sb, v, 0.0), (tb, tb, sb, v, -a), (t_stop, t_stop, s_final, 0.0, 0.0)]


def _profile_go_stop(s0: float, s1: float, v: float, a: float, t_go: float) -> list[_Seg]:
    """Wait at ``s0`` until ``t_go``, accelerate at ``a`` to ``v``, cruise, brake at ``a`` and
    stop at ``s1`` (``s1 - s0 >= v**2 / a``)."""
    ta = v / a
    da = v * v / (2 * a)
    t1 = t_go + ta
    t2 = t1 + (s1 - s0 - 2 * da) / v
    return [(-math.inf, 0.0, s0, 0.0, 0.0), (t_go, t_go, s0, 0.0, a), (t1, t1, s0 + da, v, 0.0),
            (t2, t2, s1 - da, v, -a), (t2 + ta, t2 + ta, s1, 0.0, 0.0)]


def _stop_dist(t_stop: float, v: float, a: float) -> float:
    """g: distance still needed at t = 0 by an agent (cruise ``v``, brake ``a``) that comes to
    rest at time ``t_stop`` (0 if ``t_stop <= 0``)."""
    if t_stop <= 0:
        return 0.0
    if t_stop <= v / a:
        return 0.5 * a * t_stop * t_stop
    return v * v / (2 * a) + v * (t_stop - v / a)


def _time_to_stop_dist(D: float, v: float, a: float) -> float:
    """Inverse of g: time until rest for an agent that needs distance ``D`` to stop (cruising
    at ``v`` then braking at ``a``)."""
    db = v * v / (2 * a)
    if D <= 0:
        return 0.0
    if D <= db:
        return math.sqrt(2 * D / a)
    return v / a + (D - db) / v


@dataclass
class _Agent:
    name: str
    category: str
    subtype: str
    shape: S.Shape
    priority: int
    path: int = -1  # index into Scene paths, -1 for a static pose
    lat: float = 0.0  # lateral offset from the path, left positive
    profile: list[_Seg] = field(default_factory=lambda: _profile_const(0.0, 0.0))
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0)  # static (x, y, yaw), map frame
    parked: bool = False
    sitting: bool = False
    rider: bool = True
    step: float = 0.0  # gait: phase = phase0 + pi * s / step (0: rigid)
    phase0: float = 0.0


# ------------------------------------------------------------------------------------------
# The scene
# ------------------------------------------------------------------------------------------


class Scene:
    """One SynthDrive scene. See the module docstring.

    Args:
        config: what to generate; the content depends on ``config.seed`` (and the density
            knobs) only.

    Public attributes:
        config: the configuration.
        drive_side: ``"right"`` (Boston-like) or ``"left"`` (Singapore-like) traffic.
        description: a short human description (for nuScenes' ``scene.description``).
        instances: every annotated instance of the scene, in instance-id order.
    """

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        rng = self._rng
        self._T = self.duration_s
        self._tags: list[str] = []
        self._paths: list[np.ndarray] = []
        self._agents: list[_Agent] = []
        # scenery, map frame: list of (boxes (K,7), material (K,), color (K,3))
        self._scenery: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._footprints: list[tuple[float, float, float, float]] = []  # building AABBs
        self._ground_cache: GroundMap | None = None
        self._markings: list[tuple[float, float, float, float]] = []
        self._lots_ground: list[tuple[float, float, float, float, int]] = []

        self._layout(rng)
        self._setup_ego(rng)
        self._setup_extents()
        self._setup_edges_blocks()
        self._world_transform(rng)
        self._zones(rng)
        self._bus_stop(rng)
        self._blocks_scenery(rng)
        self._street_furniture(rng)
        self._curbs_and_lights(rng)
        self._parked(rng)
        self._traffic(rng)
        self._walkers(rng)
        self._crossers(rng)
        self._resolve_conflicts()
        self._compile()
        self.description = ", ".join(self._tags)

    # -------------------------------------------------------------------- public API

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last keyframe."""
        return (self.config.num_keyframes - 1) / self.config.keyframe_hz

    @property
    def drive_side(self) -> str:
        return "right" if self._keep < 0 else "left"

    def keyframe_times(self) -> np.ndarray:
        """(K,) float64 keyframe times in seconds: 0, 0.5, ... (``1 / keyframe_hz`` apart)."""
        return np.arange(self.config.num_keyframes, dtype=np.float64) / self.config.keyframe_hz

    def sweep_times(self) -> np.ndarray:
        """(N,) float64 LiDAR sweep times (``1 / sweep_hz`` apart) from the first to the last
        keyframe inclusive; every keyframe time is one of them (every
        ``sweep_hz / keyframe_hz``-th)."""
        ratio = round(self.config.sweep_hz / self.config.keyframe_hz)
        n = (self.config.num_keyframes - 1) * ratio + 1
        return np.arange(n, dtype=np.float64) / self.config.sweep_hz

    def timestamp_us(self, t: float) -> int:
        """Microsecond timestamp of scene time ``t`` (seconds)."""
        return int(self.config.base_time_us + self.config.scene_index * SCENE_TIME_STRIDE_US
                   + round(t * 1e6))

    @property
    def ground(self) -> GroundMap:
        """The ground material raster (world frame), built on first use and cached."""
        if self._ground_cache is None:
            self._ground_cache = self._build_ground()
        return self._ground_cache

    @property
    def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo(i, a.name, a.category, a.subtype) for i, a in
                enumerate(self._agents)]

    def ego_pose(self, t: float) -> np.ndarray:
        """(4, 4) float64 ego -> world transform at time ``t``."""
        x, y, yaw, _ = self._ego_state(t)
        c, s = math.cos(yaw), math.sin(yaw)
        T = np.eye(4)
        T[:2, :2] = [[c, -s], [s, c]]
        T[0, 3], T[1, 3] = x, y
        return T

    def ego_speed(self, t: float) -> float:
        """Ego speed (m/s) at time ``t``."""
        return self._ego_state(t)[3]

    def state_at(self, t: float) -> FrameState:
        """Everything at scene time ``t`` (seconds; any real t, typically in
        ``[0, duration_s]``): world-frame primitives, annotated objects, ego pose, ground."""
        t = float(t)
        ego = self.ego_pose(t)
        exy = ego[:2, 3]
        c = self._c
        s, v = self._eval_profiles(t)
        px, py, hx, hy = self._eval_paths(s)
        moving = c.path >= 0
        cx = np.where(moving, px + c.lat * -hy, c.sx)
        cy = np.where(moving, py + c.lat * hx, c.sy)
        yaw = np.where(moving, np.arctan2(hy, hx), c.syaw)
        vx = np.where(moving, v * hx, 0.0)
        vy = np.where(moving, v * hy, 0.0)
        phase = c.phase0 + np.where(c.step > 0, np.pi * s / np.where(c.step > 0, c.step, 1.0),
                                    0.0)
        keep = np.hypot(cx - exy[0], cy - exy[1]) <= self.config.render_radius
        idx = np.flatnonzero(keep)
        # tight boxes (local frame): rigid precomputed, animated recomputed
        tb = c.rest_box.copy()
        if c.anim_agents.size:
            ai = c.anim_agents
            dx = c.a_swing * np.sin(phase[c.a_owner])
            x = c.a_x + dx
            lo = np.full(self._n_agents, np.inf)
            hi = np.full(self._n_agents, -np.inf)
            np.minimum.at(lo, c.a_owner, x - c.a_ex)
            np.maximum.at(hi, c.a_owner, x + c.a_ex)
            tb[ai, 0] = (lo[ai] + hi[ai]) * 0.5
            tb[ai, 3] = hi[ai] - lo[ai]
        cyaw, syaw = np.cos(yaw), np.sin(yaw)
        bx = cx + cyaw * tb[:, 0] - syaw * tb[:, 1]
        by = cy + syaw * tb[:, 0] + cyaw * tb[:, 1]
        wyaw = wrap_angle(yaw)
        objects: list[AnnotatedObject] = []
        speed = np.hypot(vx, vy)
        for k, i in enumerate(idx):
            a = self._agents[i]
            box = np.array([bx[i], by[i], tb[i, 2], tb[i, 3], tb[i, 4], tb[i, 5], wyaw[i],
                            vx[i], vy[i]], dtype=np.float64)
            attr = attribute_for(a.name, float(speed[i]), parked=a.parked, sitting=a.sitting,
                                 rider=a.rider)
            objects.append(AnnotatedObject(int(i), a.name, a.category, attr, box, a.subtype))
        # primitives of kept agents
        pm = keep[c.p_owner]
        po = c.p_owner[pm]
        lb = c.p_local[pm]
        lx = lb[:, 0] + c.p_swing[pm] * np.sin(phase[po])
        ly = lb[:, 1]
        ca, sa = cyaw[po], syaw[po]
        dyn = np.empty_like(lb)
        dyn[:, 0] = cx[po] + ca * lx - sa * ly
        dyn[:, 1] = cy[po] + sa * lx + ca * ly
        dyn[:, 2:6] = lb[:, 2:6]
        dyn[:, 6] = wrap_angle(yaw[po] + lb[:, 6])
        remap = np.full(self._n_agents, -1, dtype=np.int32)
        remap[idx] = np.arange(idx.size, dtype=np.int32)
        dyn_inst = np.where(c.p_inbox[pm], remap[po], -1).astype(np.int32)
        # static scenery within range
        sd = np.hypot(c.s_boxes[:, 0] - exy[0], c.s_boxes[:, 1] - exy[1]) - c.s_rad
        sm = sd <= self.config.render_radius
        prims = Primitives(
            boxes=np.concatenate([c.s_boxes[sm], dyn], axis=0),
            material=np.concatenate([c.s_mat[sm], c.p_mat[pm]]),
            color=np.concatenate([c.s_col[sm], c.p_col[pm]], axis=0),
            instance=np.concatenate([np.full(int(sm.sum()), -1, dtype=np.int32), dyn_inst]),
        )
        return FrameState(timestamp_us=self.timestamp_us(t), ego_to_world=ego, primitives=prims,
                          objects=objects, ground=self.ground)

    # -------------------------------------------------------------------- map <-> world

    def _world_transform(self, rng: np.random.Generator) -> None:
        """Random rotation and offset map -> world. The offset keeps the whole scene extent
        (and so the ground raster) at world x, y >= 50 m: nuScenes map masks start at the
        global origin."""
        self._theta = float(rng.uniform(-math.pi, math.pi))
        c, s = math.cos(self._theta), math.sin(self._theta)
        self._R = np.array([[c, -s], [s, c]])
        x0, x1, y0, y1 = self._ext
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ self._R.T
        base = np.maximum(0.0, 50.0 - corners.min(axis=0))
        self._offset = base + np.array([rng.uniform(300.0, 2500.0), rng.uniform(300.0, 2500.0)])

    def _to_world(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) @ self._R.T + self._offset

    # -------------------------------------------------------------------- layout

    def _new_road(self, rng: np.random.Generator, axis: int, center: float, u_lo: float,
                  u_hi: float, main: bool) -> _Road:
        two = rng.random() < (0.5 if main else 0.3)
        lanes = {1: 2 if two else 1, -1: 2 if two else 1}
        if two and rng.random() < 0.2:
            lanes[int(rng.choice([-1, 1]))] = 1
        bike = rng.random() < 0.25
        park_p = 0.8 if main else 0.7
        park = {sd: (float(rng.uniform(2.4, 2.8)) if rng.random() < park_p else 0.0)
                for sd in (1, -1)}
        bike_w = {sd: (float(rng.uniform(1.5, 1.8)) if bike else 0.0) for sd in (1, -1)}
        sw = {sd: float(rng.uniform(3.6, 6.0)) for sd in (1, -1)}
        median = 0.3 if (lanes[1] + lanes[-1]) >= 3 else 0.15
        return _Road(axis=axis, center=center, u_lo=u_lo, u_hi=u_hi, lanes=lanes,
                     lane_w=float(rng.uniform(3.2, 3.7)), median=median, bike_w=bike_w,
                     park_w=park, sw=sw, keep=self._keep,
                     speed=float(rng.uniform(7.0, 12.0)))

    def _layout(self, rng: np.random.Generator) -> None:
        self._keep = -1 if rng.random() < 0.6 else 1
        self._tags.append("right-hand traffic" if self._keep < 0 else "left-hand traffic")
        self._road_a = self._new_road(rng, 0, 0.0, -_FAR, _FAR, True)
        A = self._road_a
        self._junctions: list[_Junction] = []
        r = rng.random()
        n_j = 0 if r < 0.12 else (1 if r < 0.72 else 2)
        xs: list[float] = []
        if n_j >= 1:
            xs.append(0.0)
        if n_j == 2:
            xs.append(float(rng.choice([-1.0, 1.0]) * rng.uniform(75.0, 130.0)))
        for k, xc in enumerate(sorted(xs)):
            tee = rng.random() < 0.25
            arms = (int(rng.choice([-1, 1])),) if tee else (1, -1)
            u_lo = -_FAR if -1 in arms else -A.hw(-1)
            u_hi = _FAR if 1 in arms else A.hw(1)
            B = self._new_road(rng, 1, xc, u_lo, u_hi, False)
            box = (xc - B.hw(1), xc + B.hw(-1), -A.hw(-1), A.hw(1))
            self._junctions.append(_Junction(xc, B, arms, float(rng.uniform(3.0, 4.5)), box))
        self._a_red = bool(n_j > 0 and rng.random() < 0.35)
        A.red = self._a_red
        for j in self._junctions:
            j.road_b.red = not self._a_red
        if n_j == 0:
            self._tags.append("straight road")
        else:
            kinds = ["T junction" if len(j.arms) == 1 else "intersection"
                     for j in self._junctions]
            self._tags.append(" and ".join(kinds))
        # crosswalks
        self._crosswalks: list[_Crosswalk] = []
        for j in self._junctions:
            x0, x1, y0, y1 = j.box
            tee = len(j.arms) == 1
            for arm_dir, lo, hi in ((-1, x0 - 0.5 - j.cw, x0 - 0.5), (1, x1 + 0.5, x1 + 0.5 + j.cw)):
                self._crosswalks.append(_Crosswalk(A, j, arm_dir, lo, hi, A.red))
            for arm in j.arms:
                lo, hi = ((y1 + 0.5, y1 + 0.5 + j.cw) if arm > 0 else (y0 - 0.5 - j.cw, y0 - 0.5))
                self._crosswalks.append(_Crosswalk(j.road_b, j, arm, lo, hi,
                                                   j.road_b.red or tee))

    def _setup_ego(self, rng: np.random.Generator) -> None:
        """Ego lane, speed and profile. The ego drives +x (map) on road A; when A has the red
        light it brakes into the queue of the junction at x = 0 (maybe waiting all along)."""
        A = self._road_a
        T = self._T
        self._ego_lane = int(rng.integers(0, A.lanes[1]))
        self._ego_v = float(rng.uniform(3.5, 11.0))
        self._ego_a = float(rng.uniform(1.5, 2.8))
        self._ego_lane_y = A.lane_v(1, self._ego_lane)
        first = min(self._junctions, key=lambda j: abs(j.x)) if self._junctions else None
        self._ego_junction = first
        v, acc = self._ego_v, self._ego_a
        ego_len = float(EGO_BOX[3])
        if self._a_red and first is not None:
            cw = next(c for c in self._crosswalks if c.road is A and c.junction is first
                      and c.arm_dir == -1)
            rank = int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
            front = cw.outer - 1.8 - float(rng.uniform(0.0, 1.2))
            for _ in range(rank):
                front -= float(rng.uniform(4.2, 6.0)) + float(rng.uniform(1.5, 3.0))
            self._ego_stop_front = front
            t_stop = float(rng.uniform(-0.2 * T - 1.0, 0.85 * T))
            D = _stop_dist(t_stop, v, acc)
            # never start behind another (red) junction to the west
            west = [j for j in self._junctions if j.x < first.x]
            if west:
                jw = max(west, key=lambda j: j.x)
                cw_w = next(c for c in self._crosswalks if c.road is A and c.junction is jw
                            and c.arm_dir == 1)
                D = min(D, max(0.0, front - ego_len - (cw_w.outer + 4.0)))
                t_stop = _time_to_stop_dist(D, v, acc) if D > 0 else min(t_stop, 0.0)
            centre_final = front - ego_len / 2
            self._ego_profile = (_profile_stop(centre_final + _FAR, v, acc, t_stop) if D > 0
                                 else _profile_const(centre_final + _FAR, 0.0))
            self._tags.append("ego waits at a red light" if D <= 0 else
                              "ego stops at a red light")
        else:
            if first is not None:
                u_stop = first.box[0] - 0.5 - first.cw
                u0 = u_stop - 10.0 - float(rng.uniform(0.1, 0.75)) * v * max(T, 1.0)
                if self._a_red:  # cannot happen (red implies a junction); kept for clarity
                    u0 = u_stop - 10.0
            else:
                u0 = -float(rng.uniform(0.2, 0.6)) * v * max(T, 1.0)
            self._ego_profile = _profile_const(u0 + _FAR, v)
            self._tags.append("ego drives through" if first is not None else "ego cruises")

    def _ego_centre_u(self, t: float) -> tuple[float, float]:
        seg = self._ego_profile
        k = max(i for i in range(len(seg)) if t >= seg[i][0])
        _, tr, sr, vr, ar = seg[k]
        dt = t - tr
        return sr + vr * dt + 0.5 * ar * dt * dt - _FAR, vr + ar * dt

    def _ego_state(self, t: float) -> tuple[float, float, float, float]:
        """World (x, y, yaw, speed) of the ego origin (rear axle) at time t."""
        u, v = self._ego_centre_u(t)
        origin = np.array([u - EGO_BOX[0], self._ego_lane_y])
        w = self._to_world(origin[None])[0]
        return float(w[0]), float(w[1]), float(wrap_angle(self._theta)), float(v)

    def _setup_extents(self) -> None:
        ts = np.linspace(0.0, self._T, max(2, int(self._T * 2) + 1))
        us = np.array([self._ego_centre_u(float(t))[0] for t in ts])
        self._ego_u0, self._ego_u1 = float(us.min()), float(us.max())
        self._cap_a = np.array([self._ego_u0, self._ego_lane_y])
        self._cap_b = np.array([self._ego_u1, self._ego_lane_y])
        R = self.config.area_radius
        m = max(R, self.config.ground_margin) + 40.0
        self._ext = (self._ego_u0 - m, self._ego_u1 + m, -m, m)

    def _near(self, xy: np.ndarray | Sequence[float], extra: float = 0.0) -> bool:
        p = np.asarray(xy, dtype=np.float64).reshape(1, 2)
        return bool(_seg_dist(p, self._cap_a, self._cap_b)[0] <= self.config.area_radius + extra)

    def _dist_path(self, xy: np.ndarray) -> np.ndarray:
        return _seg_dist(np.asarray(xy, dtype=np.float64).reshape(-1, 2), self._cap_a,
                         self._cap_b)

    def _setup_edges_blocks(self) -> None:
        A = self._road_a
        x_lo, x_hi, y_lo, y_hi = self._ext
        self._edges: list[_Edge] = []
        js = sorted(self._junctions, key=lambda j: j.x)
        for side in (1, -1):
            cuts = [j for j in js if side in j.arms]
            u = x_lo
            prev: _Junction | None = None
            for j in cuts + [None]:
                u_end = j.box[0] if j is not None else x_hi
                if u_end - u > 4.0:
                    self._edges.append(self._make_edge(A, side, u, u_end, prev, j))
                if j is not None:
                    u = j.box[1]
                    prev = j
        for j in js:
            B = j.road_b
            for arm in j.arms:
                for side in (1, -1):
                    if arm > 0:
                        self._edges.append(self._make_edge(B, side, j.box[3], y_hi, j, None))
                    else:
                        self._edges.append(self._make_edge(B, side, y_lo, j.box[2], None, j))
        # keep crosswalk landings free of furniture and parking wherever a crosswalk meets a
        # curb (the ends of edges at junctions are reserved already; this covers the far side
        # of T junctions)
        for e in self._edges:
            for cw in self._crosswalks:
                if cw.road is e.road and cw.u_hi > e.u0 and cw.u_lo < e.u1:
                    a0, a1 = cw.u_lo - e.u0, cw.u_hi - e.u0
                    e.furniture.take(a0 - 1.5, a1 + 1.5)
                    e.parking.take(a0 - 9.0, a1 + 9.0)
        # blocks
        self._blocks: list[_Block] = []
        for side in (1, -1):
            cuts = [j for j in js if side in j.arms]
            bounds = [-_FAR]
            facing_w: list[float | None] = [None]
            for j in cuts:
                B = j.road_b
                # B side +1 is map -x (west), side -1 is east
                bounds.append(j.x - B.hw(1) - B.sw[1])
                facing_w.append(B.sw[1])
                bounds.append(j.x + B.hw(-1) + B.sw[-1])
                facing_w.append(B.sw[-1])
            bounds.append(_FAR)
            facing_w.append(None)
            for k in range(0, len(bounds), 2):
                x0, x1 = bounds[k], bounds[k + 1]
                facing: dict[str, float] = {}
                if facing_w[k] is not None:
                    facing["W"] = float(facing_w[k])
                if facing_w[k + 1] is not None:
                    facing["E"] = float(facing_w[k + 1])
                if side > 0:
                    y0 = A.hw(1) + A.sw[1]
                    facing["S"] = A.sw[1]
                    self._blocks.append(_Block(x0, x1, y0, _FAR, facing))
                else:
                    y1 = -(A.hw(-1) + A.sw[-1])
                    facing["N"] = A.sw[-1]
                    self._blocks.append(_Block(x0, x1, -_FAR, y1, facing))

    def _make_edge(self, road: _Road, side: int, u0: float, u1: float,
                   j0: _Junction | None, j1: _Junction | None) -> _Edge:
        def res(j: _Junction | None) -> tuple[float, float]:
            if j is None:
                return 0.0, 0.0
            return 0.5 + j.cw + 1.5, 0.5 + j.cw + 1.8 + 7.0
        r0, p0 = res(j0)
        r1, p1 = res(j1)
        return _Edge(road, side, u0, u1, r0, r1, p0, p1)

    def _edge_window(self, e: _Edge, extra: float = 0.0) -> tuple[float, float] | None:
        """Range of ``a`` along edge e whose curb point is within the area (+ extra)."""
        a = np.arange(0.0, e.length + 0.5, 1.0)
        pts = e.pt(a, 0.0)
        ok = self._dist_path(pts) <= self.config.area_radius + extra
        if not ok.any():
            return None
        return float(a[ok].min()), float(a[ok].max())

    # -------------------------------------------------------------------- scenery helpers

    def _add_scenery(self, shape: S.Shape, x: float, y: float, yaw: float) -> None:
        self._scenery.append((S.place(shape, x, y, yaw), shape.material, shape.color))

    def _add_static_agent(self, name: str, shape: S.Shape, x: float, y: float, yaw: float,
                          priority: int, category: str | None = None, subtype: str = "",
                          parked: bool = False, sitting: bool = False, rider: bool = True
                          ) -> _Agent:
        spec = class_spec(name)
        if category is None:
            category = spec.categories[int(self._rng.choice(len(spec.categories),
                                                            p=spec.category_weights))]
        ag = _Agent(name, category, subtype, S.recenter(shape), priority, pose=(x, y, yaw),
                    parked=parked, sitting=sitting, rider=rider)
        self._agents.append(ag)
        return ag

    def _vehicle_shape(self, rng: np.random.Generator, name: str, max_w: float | None = None,
                       kind: str | None = None, max_h: float | None = None
                       ) -> tuple[S.Shape, str]:
        """Build a vehicle of class ``name`` (size from the prior, width clipped to
        ``max_w``); returns the recentred shape and its subtype."""
        size = sample_size(name, rng)
        if max_w is not None:
            size[1] = min(size[1], max_w)
        if max_h is not None:
            size[2] = min(size[2], max_h)
        if name == "car":
            if kind == "van" or (kind is None and rng.random() < 0.12):
                size = np.array([rng.normal(5.0, 0.3), rng.normal(2.0, 0.07),
                                 rng.normal(2.15, 0.15)])
                size = np.clip(size, [4.4, 1.8, 1.85], [5.8, 2.2 if max_w is None else
                                                       min(2.2, max_w), 2.5])
                return S.recenter(S.build_van(rng, size)), "van"
            return S.recenter(S.build_car(rng, size)), ""
        if name == "truck":
            if kind is None:
                kind = ("pickup" if (size[0] < 5.3 or size[2] < 2.0) else
                        ["box", "flatbed", "dump"][int(rng.choice(3, p=[0.6, 0.25, 0.15]))])
            if kind == "pickup":
                size = np.array([rng.uniform(5.0, 5.9), min(rng.uniform(1.85, 2.1), size[1]),
                                 rng.uniform(1.75, 2.0)])
            if kind == "tractor":
                size[0] = rng.uniform(5.6, 7.0)
                size[2] = max(size[2], 2.9)
            return S.recenter(S.build_truck(rng, size, kind)), kind
        if name == "bus":
            return S.recenter(S.build_bus(rng, size)), ""
        if name == "trailer":
            if kind is None:
                kind = "small" if size[0] < 5.0 else ("drawbar" if size[0] < 9.0 else "semi")
            if kind == "small":
                size = np.array([rng.uniform(2.5, 4.5), rng.uniform(1.5, 2.1),
                                 rng.uniform(1.0, 2.2)])
                if max_w is not None:
                    size[1] = min(size[1], max_w)
            elif kind == "drawbar":
                size[0] = float(np.clip(size[0], 5.5, 9.0))
            return S.recenter(S.build_trailer(rng, size, kind)), kind
        if name == "construction_vehicle":
            kind = kind or ["excavator", "loader", "roller"][int(rng.choice(3, p=[0.5, 0.3,
                                                                                 0.2]))]
            return S.recenter(S.build_construction_vehicle(rng, size, kind)), kind
        if name == "motorcycle":
            return S.recenter(S.build_motorcycle(rng, size, rider=True)), ""
        raise ValueError(name)

    def _ped_shape(self, rng: np.random.Generator, pose: str, kind: str | None = None
                   ) -> tuple[S.Shape, str, str]:
        """(shape, category, subtype) of a pedestrian."""
        if kind is None:
            r = rng.random()
            kind = "child" if r < 0.05 else "adult"
        size = sample_size("pedestrian", rng)
        size[0] = min(size[0], 0.9)
        size[1] = min(size[1], 0.84)
        cat = "human.pedestrian.adult"
        if kind == "child":
            size[2] = rng.uniform(1.0, 1.45)
            size[1] = min(size[1], 0.55)
            size[0] = min(size[0], 0.6)
            cat = "human.pedestrian.child"
        elif kind == "worker":
            cat = "human.pedestrian.construction_worker"
        shp = S.recenter(S.build_pedestrian(rng, size, pose, kind))
        subtype = "sitting" if pose == "sitting" else ("" if kind == "adult" else kind)
        return shp, cat, subtype

    def _bevs_clear(self, boxes: list[np.ndarray], cand: np.ndarray, margin: float = 0.2
                    ) -> bool:
        if not boxes:
            return True
        arr = np.asarray(boxes)
        c = np.repeat(cand[None], len(arr), axis=0)
        return not bool(_obb_overlap(arr, c, margin).any())

    # -------------------------------------------------------------------- construction zones

    def _zones(self, rng: np.random.Generator) -> None:
        """Construction zones: lane closures, parking-lane works, closed side streets; building
        sites are placed later with the blocks (``self._n_sites``)."""
        self._lane_closures: dict[tuple[int, int, int], float] = {}
        self._closed_u: dict[int, tuple[int, float]] = {}
        self._n_sites = 0
        n = int(rng.poisson(1.8 * self.config.construction_rate))
        for _ in range(min(n, 4)):
            k = ["site", "closure", "parking", "road_closed", "barrier_row"][
                int(rng.choice(5, p=[0.33, 0.2, 0.15, 0.1, 0.22]))]
            ok = False
            if k == "closure":
                ok = self._zone_lane_closure(rng)
            elif k == "parking":
                ok = self._zone_parking_works(rng)
            elif k == "road_closed":
                ok = self._zone_road_closed(rng)
            elif k == "barrier_row":
                ok = self._zone_barrier_row(rng)
            if not ok:
                self._n_sites += 1

    def _cone(self, rng: np.random.Generator, x: float, y: float, small: bool = False) -> None:
        size = sample_size("traffic_cone", rng)
        if small:
            size[:2] = np.minimum(size[:2], 0.42)
            size[2] = min(size[2], 0.95)
        self._add_static_agent("traffic_cone", S.build_traffic_cone(rng, size), x, y,
                               float(rng.uniform(-math.pi, math.pi)), 3)

    def _barrier(self, rng: np.random.Generator, x: float, y: float, heading: float,
                 w: float | None = None, style: str | None = None) -> float:
        size = sample_size("barrier", rng)
        if w is not None:
            size[1] = w
        self._add_static_agent("barrier", S.build_barrier(rng, size, style), x, y,
                               heading + float(rng.normal(0.0, 0.02)), 3)
        return float(size[1])

    def _workers(self, rng: np.random.Generator, spots: list[tuple[float, float]], n: int
                 ) -> None:
        for (x, y) in spots[:n]:
            shp, cat, sub = self._ped_shape(rng, "standing", "worker")
            self._add_static_agent("pedestrian", shp, x, y, float(rng.uniform(-math.pi,
                                                                              math.pi)), 3,
                                   category=cat, subtype=sub)

    def _zone_lane_closure(self, rng: np.random.Generator) -> bool:
        """Close the outer lane of a 2-lane direction over 25-45 m with a cone taper."""
        cands = []
        roads = [self._road_a] + [j.road_b for j in self._junctions]
        for ri, road in enumerate(roads):
            for d in (1, -1):
                if road.lanes[d] >= 2 and not (ri == 0 and d == 1 and
                                                self._ego_lane == road.lanes[d] - 1):
                    cands.append((ri, road, d))
        if not cands:
            return False
        ri, road, d = cands[int(rng.integers(len(cands)))]
        side = road.side_of_dir(d)
        edges = [e for e in self._edges if e.road is road and e.side == side]
        if not edges:
            return False
        e = edges[int(rng.integers(len(edges)))]
        win = self._edge_window(e)
        if win is None:
            return False
        length = float(rng.uniform(25.0, 45.0))
        taper = float(rng.uniform(10.0, 16.0))
        lo = max(win[0], e.park_res0 + 2)
        hi = min(win[1], e.length - e.park_res1 - 2)
        if hi - lo < length + taper + 4:
            return False
        a0 = float(rng.uniform(lo, hi - length - taper - 4))
        # a increases with u; for d = -1 upstream is at larger a
        if d > 0:
            za0, za1 = a0 + taper, a0 + taper + length
            taper_a = (a0, a0 + taper)
        else:
            za0, za1 = a0, a0 + length
            taper_a = (a0 + length + taper, a0 + length)
        lane = road.lanes[d] - 1
        lv = road.lane_v(d, lane)
        inner_v = lv - side * road.lane_w / 2
        outer_v = lv + side * road.lane_w / 2
        cone_v = inner_v + side * 0.4
        # taper cones: from the outer lane edge to the inner line
        n_t = max(3, int(taper / 2.5))
        for k in range(n_t + 1):
            f = k / n_t
            a = taper_a[0] + (taper_a[1] - taper_a[0]) * f
            vv = outer_v - side * 0.5 + (cone_v - (outer_v - side * 0.5)) * f
            p = road.to_map(e.u0 + a, vv)
            self._cone(rng, float(p[0]), float(p[1]), small=True)
        a = za0 + 3.0
        while a < za1 - 1.0:
            p = road.to_map(e.u0 + a, cone_v)
            self._cone(rng, float(p[0]), float(p[1]), small=True)
            a += float(rng.uniform(3.0, 5.0))
        # barriers across the closed lane at the upstream end of the work area
        up_a = za0 + 1.0 if d > 0 else za1 - 1.0
        span = road.lane_w - 0.9
        nb = max(1, int(span / 2.2))
        bw = span / nb
        for k in range(nb):
            vv = cone_v + side * (0.35 + bw * (k + 0.5))
            p = road.to_map(e.u0 + up_a, vv)
            self._barrier(rng, float(p[0]), float(p[1]), road.heading(d), w=bw - 0.1)
        # work area: construction vehicle, workers
        work_w = road.lane_w - 1.0 + road.bike_w[side] + road.park_w[side]
        mid_a = (za0 + za1) / 2
        shp, sub = self._vehicle_shape(rng, "construction_vehicle", max_w=work_w - 0.2)
        tb = shp.tight_box()
        if tb[3] < length - 6 and tb[4] < work_w:
            vv = cone_v + side * (0.4 + tb[4] / 2 + 0.2)
            p = road.to_map(e.u0 + mid_a, vv)
            self._add_static_agent("construction_vehicle", shp, float(p[0]), float(p[1]),
                                   road.heading(d) + float(rng.normal(0, 0.05)), 3, subtype=sub,
                                   parked=True)
            spots = []
            for off in (tb[3] / 2 + 1.5, -tb[3] / 2 - 1.5, tb[3] / 2 + 3.0):
                if za0 + 1.5 < mid_a + off < za1 - 1.5:
                    q = road.to_map(e.u0 + mid_a + off, cone_v + side * 1.3)
                    spots.append((float(q[0]), float(q[1])))
            self._workers(rng, spots, int(rng.integers(1, 4)))
        rid = 0 if road is self._road_a else 1 + [j.road_b for j in self._junctions].index(road)
        # vehicles of this lane (and of the bike lane) only downstream of the zone
        s_end = d * (e.u0 + (za1 if d > 0 else za0)) + _FAR + 3.0
        self._lane_closures[(rid, d, lane)] = s_end
        self._lane_closures[(rid, d, -1)] = s_end
        e.parking.take(min(taper_a) - 2, max(za1, taper_a[0]) + 2)
        self._tags.append("lane closure")
        return True

    def _zone_parking_works(self, rng: np.random.Generator) -> bool:
        """Works in a parking-lane stretch: barriers along the lane line, cones, workers."""
        edges = [e for e in self._edges if e.park_w > 0]
        if not edges:
            return False
        e = edges[int(rng.integers(len(edges)))]
        win = self._edge_window(e)
        if win is None:
            return False
        length = float(rng.uniform(14.0, 30.0))
        lo = max(win[0], e.parking.lo)
        hi = min(win[1], e.parking.hi)
        if hi - lo < length + 2:
            return False
        a0 = float(rng.uniform(lo, hi - length))
        if not e.parking.free(a0, a0 + length):
            return False
        e.parking.take(a0, a0 + length)
        pw = e.park_w
        line_depth = -(pw - 0.35)
        a = a0 + 1.5
        heading = math.atan2(-e.normal[1], -e.normal[0])  # facing the traffic lane
        while a < a0 + length - 1.5:
            size_w = min(float(rng.uniform(1.6, 2.6)), a0 + length - 1.0 - a)
            if size_w < 1.2:
                break
            p = e.pt(a + size_w / 2, line_depth)
            self._barrier(rng, float(p[0]), float(p[1]), heading, w=size_w - 0.05,
                          style=["water", "aframe"][int(rng.integers(2))])
            a += size_w + float(rng.uniform(0.05, 0.5))
        for aa in (a0 + 0.5, a0 + length - 0.5):
            for dd in (-0.5, -(pw - 0.6)):
                p = e.pt(aa, dd)
                self._cone(rng, float(p[0]), float(p[1]), small=True)
        spots = []
        for f in (0.3, 0.55, 0.8):
            p = e.pt(a0 + length * f, -(pw / 2 - 0.15))
            spots.append((float(p[0]), float(p[1])))
        self._workers(rng, spots, int(rng.integers(1, 3)))
        if rng.random() < 0.5:
            shp = S.recenter(S.build_material_pile(rng))
            tb = shp.tight_box()
            if max(tb[3], tb[4]) < pw - 0.8:
                p = e.pt(a0 + length * 0.42, -pw / 2)
                self._add_scenery(shp, float(p[0]), float(p[1]), 0.0)
        self._tags.append("parking-lane works")
        return True

    def _zone_barrier_row(self, rng: np.random.Generator) -> bool:
        """A long row of barriers along a curb (closed sidewalk / road-side works), in the
        parking lane if there is one, else in the furniture zone."""
        edges = [e for e in self._edges if self._edge_window(e) is not None]
        if not edges:
            return False
        e = edges[int(rng.integers(len(edges)))]
        win = self._edge_window(e)
        assert win is not None
        length = float(rng.uniform(20.0, 60.0))
        in_parking = e.park_w > 0
        ivl = e.parking if in_parking else e.furniture
        lo, hi = max(win[0], ivl.lo), min(win[1], ivl.hi)
        if hi - lo < 12.0:
            return False
        length = min(length, hi - lo - 1.0)
        a0 = float(rng.uniform(lo, hi - length))
        if not ivl.try_take(a0, a0 + length):
            return False
        depth = -(0.25 + 0.35) if in_parking else _FURN_DEPTH
        heading = math.atan2(-e.normal[1], -e.normal[0])
        style = ["jersey", "water", "aframe"][int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        a = a0
        gap = float(rng.uniform(0.0, 0.4))
        while a < a0 + length - 1.2:
            w = min(float(sample_size("barrier", rng)[1]), a0 + length - a)
            if w < 1.2:
                break
            p = e.pt(a + w / 2, depth)
            self._barrier(rng, float(p[0]), float(p[1]), heading, w=w - 0.05, style=style)
            a += w + gap
        if in_parking and rng.random() < 0.6:
            for aa in (a0 - 1.0, a0 + length + 1.0):
                if e.parking.try_take(aa - 0.3, aa + 0.3):
                    p = e.pt(aa, -0.6)
                    self._cone(rng, float(p[0]), float(p[1]), small=True)
        self._tags.append("barriers along the road")
        return True

    def _zone_road_closed(self, rng: np.random.Generator) -> bool:
        """Close one arm of a side street with a row of barriers and cones."""
        cands = [(j, arm) for j in self._junctions for arm in j.arms if j.closed_arm == 0]
        if not cands:
            return False
        j, arm = cands[int(rng.integers(len(cands)))]
        B = j.road_b
        cw = next(c for c in self._crosswalks if c.road is B and c.junction is j
                  and c.arm_dir == arm)
        u_bar = cw.outer + arm * float(rng.uniform(8.0, 14.0))
        if not self._near(B.to_map(u_bar, 0.0)):
            return False
        j.closed_arm = arm
        v_lo, v_hi = -B.hw(-1) + 0.3, B.hw(1) - 0.3
        v = v_lo
        heading = B.heading(-arm)
        while v < v_hi - 1.0:
            w = min(float(rng.uniform(2.0, 2.6)), v_hi - v)
            p = B.to_map(u_bar, v + w / 2)
            self._barrier(rng, float(p[0]), float(p[1]), heading, w=w - 0.08)
            v += w + float(rng.uniform(0.0, 0.2))
        for vv in np.linspace(v_lo + 0.6, v_hi - 0.6, int(rng.integers(2, 5))):
            p = B.to_map(u_bar - arm * float(rng.uniform(1.5, 3.0)), float(vv))
            self._cone(rng, float(p[0]), float(p[1]))
        self._closed_u[id(B)] = (arm, u_bar)
        self._tags.append("closed side street")
        return True

    # -------------------------------------------------------------------- blocks

    def _blocks_scenery(self, rng: np.random.Generator) -> None:
        urban = float(rng.uniform(0.0, 1.0))  # 0: suburban, 1: downtown
        self._urban = urban
        self._tags.append("downtown" if urban > 0.66 else ("suburban" if urban < 0.33 else
                                                          "city street"))
        extra = 35.0
        site_left = self._n_sites
        for b in self._blocks:
            for s in _facing_run(b):
                a, e, n = _block_side(b, s)
                t = (e - a) / np.linalg.norm(e - a)
                L = float(np.linalg.norm(e - a))
                # window along the side within the area
                samp = np.arange(0.0, min(L, 4 * _FAR), 2.0)
                # only the part of the side inside the map extents
                pts = a + samp[:, None] * t
                x0, x1, y0, y1 = self._ext
                inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & \
                         (pts[:, 1] <= y1)
                near = self._dist_path(pts) <= self.config.area_radius + extra
                ok = inside & near
                if not ok.any():
                    continue
                lo, hi = float(samp[ok].min()), float(samp[ok].max())
                # start exactly at a block corner when it is inside the window
                if lo <= 2.0:
                    lo = 0.0
                self._side_end = L
                pos = lo
                while pos < min(hi, L - 6.0):
                    r = rng.random()
                    if site_left > 0 and r < 0.25 and hi - pos > 30:
                        used = self._site(rng, b, a, t, n, pos)
                        site_left -= 1
                    elif r < 0.10 + 0.05 * (1 - urban):
                        used = self._parking_lot(rng, a, t, n, pos)
                    elif r < 0.22 + 0.12 * (1 - urban):
                        used = self._green_lot(rng, a, t, n, pos)
                    elif r < 0.27 + 0.1 * urban:
                        used = self._plaza(rng, a, t, n, pos)
                    else:
                        used = self._building(rng, a, t, n, pos, urban)
                    pos += used + (float(rng.uniform(0.0, 4.0)) if rng.random() < 0.6 else 0.0)

    def _lot_frame(self, a: np.ndarray, t: np.ndarray, n: np.ndarray, pos: float,
                   frontage: float, depth: float, setback: float = 0.0
                   ) -> tuple[np.ndarray, float]:
        """Centre (map) and yaw of a lot whose front edge starts ``pos`` along a block side."""
        centre = a + t * (pos + frontage / 2) - n * (setback + depth / 2)
        inward = -n
        yaw = math.atan2(-inward[0], inward[1])
        return centre, yaw

    def _footprint_free(self, centre: np.ndarray, frontage: float, depth: float,
                        t: np.ndarray) -> bool:
        ex = abs(t[0]) * frontage / 2 + abs(t[1]) * depth / 2
        ey = abs(t[1]) * frontage / 2 + abs(t[0]) * depth / 2
        box = (centre[0] - ex, centre[0] + ex, centre[1] - ey, centre[1] + ey)
        for f in self._footprints:
            if box[0] < f[1] and box[1] > f[0] and box[2] < f[3] and box[3] > f[2]:
                return False
        self._footprints.append(box)
        return True

    def _building(self, rng: np.random.Generator, a: np.ndarray, t: np.ndarray, n: np.ndarray,
                  pos: float, urban: float) -> float:
        frontage = min(float(rng.uniform(8.0, 32.0)), self._side_end - pos)
        depth = float(rng.uniform(10.0, 24.0))
        setback = 0.0 if rng.random() < 0.5 + 0.4 * urban else float(rng.uniform(1.0, 6.0))
        h_med = 6.0 + 22.0 * urban
        height = float(np.clip(rng.lognormal(math.log(h_med), 0.45), 3.5, 70.0))
        centre, yaw = self._lot_frame(a, t, n, pos, frontage, depth, setback)
        if not self._footprint_free(centre, frontage, depth + setback, t):
            return frontage
        self._add_scenery(S.build_building(rng, frontage, depth, height), float(centre[0]),
                          float(centre[1]), yaw)
        if setback > 1.2:
            # forecourt: bushes, a hedge or a bike rack
            for _ in range(int(rng.integers(0, 3))):
                p = a + t * (pos + float(rng.uniform(1.0, frontage - 1.0))) - n * float(
                    rng.uniform(0.6, max(0.7, setback - 0.6)))
                self._add_scenery(S.build_bush(rng, min(1.2, setback - 0.3)), float(p[0]),
                                  float(p[1]), float(rng.uniform(0, math.pi)))
            self._lots_ground.append((*self._aabb(a, t, n, pos, frontage, 0.0, setback),
                                      int(M.GRASS if rng.random() < 0.5 else M.SIDEWALK)))
        return frontage

    def _aabb(self, a: np.ndarray, t: np.ndarray, n: np.ndarray, pos: float, frontage: float,
              d0: float, d1: float) -> tuple[float, float, float, float]:
        pts = np.array([a + t * pos - n * d0, a + t * (pos + frontage) - n * d0,
                        a + t * pos - n * d1, a + t * (pos + frontage) - n * d1])
        return (float(pts[:, 0].min()), float(pts[:, 0].max()), float(pts[:, 1].min()),
                float(pts[:, 1].max()))

    def _green_lot(self, rng: np.random.Generator, a: np.ndarray, t: np.ndarray, n: np.ndarray,
                   pos: float) -> float:
        frontage = min(float(rng.uniform(10.0, 30.0)), self._side_end - pos)
        if frontage < 5.0:
            return max(frontage, 1.0)
        depth = 20.0
        centre, _ = self._lot_frame(a, t, n, pos, frontage, depth)
        if not self._footprint_free(centre, frontage, depth, t):
            return frontage
        self._lots_ground.append((*self._aabb(a, t, n, pos, frontage, 0.0, depth),
                                  int(M.GRASS)))
        front_kind = rng.random()
        fy = 0.3
        p = a + t * (pos + frontage / 2) - n * fy
        if front_kind < 0.35:
            self._add_scenery(S.build_fence(rng, frontage - 0.5, float(rng.uniform(1.0, 2.0))),
                              float(p[0]), float(p[1]), math.atan2(t[1], t[0]))
        elif front_kind < 0.6:
            self._add_scenery(S.build_wall(rng, frontage - 0.5, float(rng.uniform(0.6, 2.2))),
                              float(p[0]), float(p[1]), math.atan2(t[1], t[0]))
        elif front_kind < 0.8:
            self._add_scenery(S.build_hedge(rng, frontage - 0.5, float(rng.uniform(0.8, 1.8)),
                                            float(rng.uniform(0.6, 1.2))),
                              float(p[0]) - n[0] * 0.4, float(p[1]) - n[1] * 0.4,
                              math.atan2(t[1], t[0]))
        for _ in range(int(rng.integers(1, 5))):
            q = a + t * (pos + float(rng.uniform(2.0, frontage - 2.0))) - n * float(
                rng.uniform(3.0, depth - 3.0))
            self._add_scenery(S.build_tree(rng, 3.5, 2.0), float(q[0]), float(q[1]),
                              float(rng.uniform(0, math.pi)))
        for _ in range(int(rng.integers(0, 4))):
            q = a + t * (pos + float(rng.uniform(1.0, frontage - 1.0))) - n * float(
                rng.uniform(1.5, depth - 1.0))
            self._add_scenery(S.build_bush(rng), float(q[0]), float(q[1]),
                              float(rng.uniform(0, math.pi)))
        return frontage

    def _plaza(self, rng: np.random.Generator, a: np.ndarray, t: np.ndarray, n: np.ndarray,
               pos: float) -> float:
        """Paved forecourt with planters, benches (some with people), standing people and a
        building set back behind it."""
        frontage = min(float(rng.uniform(14.0, 30.0)), self._side_end - pos)
        if frontage < 8.0:
            return self._green_lot(rng, a, t, n, pos)
        depth_open = float(rng.uniform(6.0, 12.0))
        centre, yaw = self._lot_frame(a, t, n, pos, frontage, depth_open)
        if not self._footprint_free(centre, frontage, depth_open, t):
            return frontage
        self._lots_ground.append((*self._aabb(a, t, n, pos, frontage, 0.0, depth_open),
                                  int(M.SIDEWALK)))
        bd = float(rng.uniform(10.0, 20.0))
        bc, byaw = self._lot_frame(a, t, n, pos, frontage, bd, depth_open)
        if self._footprint_free(bc, frontage, bd, t):
            self._add_scenery(S.build_building(rng, frontage, bd, float(rng.uniform(8.0, 40.0))),
                              float(bc[0]), float(bc[1]), byaw)
        placed: list[np.ndarray] = []
        dens = self.config.pedestrian_density
        tyaw = math.atan2(t[1], t[0])
        for _ in range(int(rng.integers(2, 6))):
            q = a + t * (pos + float(rng.uniform(1.5, frontage - 1.5))) - n * float(
                rng.uniform(1.2, depth_open - 1.2))
            r = rng.random()
            if r < 0.35:
                bench = S.recenter(S.build_bench(rng))
                tb = bench.tight_box()
                cand = np.array([q[0], q[1], tb[3] + 0.8, tb[4] + 1.2, tyaw])
                if not self._bevs_clear(placed, cand):
                    continue
                placed.append(cand)
                # bench faces local -y; rotate so it faces the street (-y -> +n)
                self._add_scenery(bench, float(q[0]), float(q[1]), yaw)
                if rng.random() < 0.6 * dens:
                    shp, cat, sub = self._ped_shape(rng, "sitting")
                    fwd = n  # the sitter faces the street
                    pq = q + fwd * 0.28
                    self._add_static_agent("pedestrian", shp, float(pq[0]), float(pq[1]),
                                           math.atan2(fwd[1], fwd[0]), 1, category=cat,
                                           subtype=sub, sitting=True)
            elif r < 0.55:
                shp = S.recenter(S.SMALL_CLUTTER["planter"](rng))
                cand = np.array([q[0], q[1], 1.2, 1.2, 0.0])
                if self._bevs_clear(placed, cand):
                    placed.append(cand)
                    self._add_scenery(shp, float(q[0]), float(q[1]), 0.0)
            else:
                cand = np.array([q[0], q[1], 1.0, 1.0, 0.0])
                if self._bevs_clear(placed, cand) and rng.random() < min(1.0, 0.6 * dens):
                    placed.append(cand)
                    shp, cat, sub = self._ped_shape(rng, "standing")
                    self._add_static_agent("pedestrian", shp, float(q[0]), float(q[1]),
                                           float(rng.uniform(-math.pi, math.pi)), 1,
                                           category=cat, subtype=sub)
        return frontage

    def _parking_lot(self, rng: np.random.Generator, a: np.ndarray, t: np.ndarray,
                     n: np.ndarray, pos: float) -> float:
        """Asphalt lot with one or two rows of perpendicular stalls."""
        stall = float(rng.uniform(2.5, 2.8))
        n_st = min(int(rng.integers(5, 12)), int((self._side_end - pos - 4.0) / stall))
        if n_st < 3:
            return self._green_lot(rng, a, t, n, pos)
        frontage = n_st * stall + 4.0
        rows = 1 if rng.random() < 0.5 else 2
        depth = 6.0 + rows * 5.5
        centre, _ = self._lot_frame(a, t, n, pos, frontage, depth)
        if not self._footprint_free(centre, frontage, depth, t):
            return frontage
        self._lots_ground.append((*self._aabb(a, t, n, pos, frontage, 0.0, depth), int(M.ROAD)))
        occ = float(np.clip(rng.uniform(0.4, 0.9) * self.config.parked_density, 0.0, 1.0))
        for row in range(rows):
            d_row = 1.0 + 2.75 + row * (5.5 + 6.0 - 1.0) if rows == 2 else depth - 3.0
            d_row = min(d_row, depth - 2.8)
            facing = -n if row == 0 else n  # nose in / out
            if rng.random() < 0.5:
                facing = -facing
            for k in range(n_st):
                sa = pos + 2.0 + stall * (k + 0.5)
                self._markings.append(tuple(np.concatenate([
                    a + t * (pos + 2.0 + stall * k) - n * (d_row - 2.6),
                    a + t * (pos + 2.0 + stall * k) - n * (d_row + 2.6)])))
                if rng.random() > occ:
                    continue
                q = a + t * sa - n * d_row
                r = rng.random()
                name = "car" if r < 0.9 else ("truck" if r < 0.97 else "trailer")
                if name == "car":
                    shp, sub = self._vehicle_shape(rng, "car", max_w=stall - 0.3)
                elif name == "truck":
                    shp, sub = self._vehicle_shape(rng, "truck", max_w=stall - 0.3,
                                                   kind="pickup")
                else:
                    shp, sub = self._vehicle_shape(rng, "trailer", max_w=stall - 0.3,
                                                   kind="small")
                tb = shp.tight_box()
                if tb[3] > 5.3 or tb[4] > stall - 0.25:
                    continue
                yaw_v = math.atan2(facing[1], facing[0]) + float(rng.normal(0, 0.03))
                self._add_static_agent(name, shp, float(q[0]), float(q[1]), yaw_v, 2,
                                       subtype=sub, parked=True)
        return frontage

    def _site(self, rng: np.random.Generator, b: _Block, a: np.ndarray, t: np.ndarray,
              n: np.ndarray, pos: float) -> float:
        """Building site behind a row of barriers: construction vehicles, workers, cones,
        a container, material piles."""
        frontage = min(float(rng.uniform(26.0, 45.0)), self._side_end - pos)
        if frontage < 20.0:
            return self._green_lot(rng, a, t, n, pos)
        depth = float(rng.uniform(16.0, 26.0))
        centre, _ = self._lot_frame(a, t, n, pos, frontage, depth)
        if not self._footprint_free(centre, frontage, depth, t):
            return frontage
        self._lots_ground.append((*self._aabb(a, t, n, pos, frontage, 0.0, depth),
                                  int(M.GRASS)))
        heading = math.atan2(n[1], n[0])  # barriers face the street
        gap_at = float(rng.uniform(0.2, 0.8)) * frontage if rng.random() < 0.6 else -100.0
        x = 0.4
        while x < frontage - 1.0:
            if gap_at <= x < gap_at + 5.0:
                x += 5.0
                continue
            w = min(float(sample_size("barrier", rng)[1]), frontage - 0.4 - x)
            if w < 1.2:
                break
            p = a + t * (pos + x + w / 2) - n * 0.4
            self._barrier(rng, float(p[0]), float(p[1]), heading, w=w - 0.05)
            x += w + float(rng.uniform(0.02, 0.25))
        for sx in (0.15, frontage - 0.15):
            p = a + t * (pos + sx) - n * (depth / 2 + 0.5)
            self._add_scenery(S.build_fence(rng, depth - 2.0, float(rng.uniform(1.6, 2.2))),
                              float(p[0]), float(p[1]), math.atan2(n[1], n[0]))
        placed: list[np.ndarray] = []

        def spot(ll: float, ww: float, tries: int = 12) -> tuple[float, float, float] | None:
            for _ in range(tries):
                u = float(rng.uniform(ll / 2 + 1.0, max(ll / 2 + 1.1, frontage - ll / 2 - 1.0)))
                d = float(rng.uniform(max(ll, ww) / 2 + 1.5,
                                      max(max(ll, ww) / 2 + 1.6, depth - max(ll, ww) / 2 - 0.5)))
                q = a + t * (pos + u) - n * d
                yy = float(rng.uniform(-math.pi, math.pi))
                cand = np.array([q[0], q[1], ll, ww, yy])
                if self._bevs_clear(placed, cand, 0.5):
                    placed.append(cand)
                    return float(q[0]), float(q[1]), yy
            return None

        for _ in range(int(rng.integers(1, 4))):
            shp, sub = self._vehicle_shape(rng, "construction_vehicle")
            tb = shp.tight_box()
            sp = spot(tb[3], tb[4])
            if sp is not None:
                self._add_static_agent("construction_vehicle", shp, *sp, 3, subtype=sub,
                                       parked=True)
        for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15]))):
            shp, sub = self._vehicle_shape(rng, "trailer", kind="semi")
            tb = shp.tight_box()
            sp = spot(tb[3], tb[4])
            if sp is not None:
                self._add_static_agent("trailer", shp, *sp, 3, subtype=sub, parked=True)
        if rng.random() < 0.4:
            shp, sub = self._vehicle_shape(rng, "truck", kind="dump")
            tb = shp.tight_box()
            sp = spot(tb[3], tb[4])
            if sp is not None:
                self._add_static_agent("truck", shp, *sp, 3, subtype=sub, parked=True)
        for builder in (S.build_shipping_container, S.build_portable_toilet,
                        S.build_material_pile, S.build_material_pile):
            if rng.random() < 0.6:
                shp = S.recenter(builder(rng))
                tb = shp.tight_box()
                sp = spot(tb[3], tb[4])
                if sp is not None:
                    self._add_scenery(shp, *sp)
        for _ in range(int(rng.integers(1, 5))):
            sp = spot(0.9, 0.9)
            if sp is not None:
                shp, cat, sub = self._ped_shape(rng, "standing", "worker")
                self._add_static_agent("pedestrian", shp, *sp, 3, category=cat, subtype=sub)
        for _ in range(int(rng.integers(2, 9))):
            sp = spot(0.6, 0.6)
            if sp is not None:
                self._cone(rng, sp[0], sp[1])
        self._tags.append("construction site")
        return frontage

    # -------------------------------------------------------------------- bus stop

    def _bus_stop(self, rng: np.random.Generator) -> None:
        self._stop_edge: tuple[_Edge, float] | None = None
        if rng.random() > 0.3:
            return
        edges = [e for e in self._edges if e.park_w >= 2.5]
        if not edges:
            return
        e = edges[int(rng.integers(len(edges)))]
        win = self._edge_window(e, -15.0)
        if win is None:
            return
        size = sample_size("bus", rng)
        size[1] = min(size[1], e.park_w - 0.15)
        L = float(size[0])
        lo, hi = max(win[0], e.parking.lo), min(win[1], e.parking.hi)
        if hi - lo < L + 4:
            return
        a0 = float(rng.uniform(lo, hi - L - 2))
        if not e.parking.try_take(a0, a0 + L + 2):
            return
        shp = S.recenter(S.build_bus(rng, size))
        p = e.pt(a0 + 1 + L / 2, -(0.15 + size[1] / 2))
        d = e.traffic_dir
        self._add_static_agent("bus", shp, float(p[0]), float(p[1]), e.road.heading(d), 3)
        sl = float(rng.uniform(3.0, 4.5))
        sa = a0 + 1 + L * 0.3
        if e.furniture.try_take(sa - sl / 2 - 0.2, sa + sl / 2 + 0.2):
            sh = S.build_bus_shelter(rng, sl, 1.0)
            q = e.pt(sa, _FURN_DEPTH)
            # shelter back (local +y) away from the road
            self._add_scenery(sh, float(q[0]), float(q[1]),
                              math.atan2(-e.normal[0], e.normal[1]))
            self._queue_standing(rng, e, sa + sl / 2 + 0.6, int(rng.integers(1, 5)))
        self._tags.append("bus stop")

    def _queue_standing(self, rng: np.random.Generator, e: _Edge, a_start: float, n: int
                        ) -> None:
        a = a_start
        for _ in range(n):
            if not e.furniture.try_take(a, a + 0.9):
                break
            p = e.pt(a + 0.45, _FURN_DEPTH)
            shp, cat, sub = self._ped_shape(rng, "standing")
            yaw = math.atan2(-e.normal[1], -e.normal[0]) + float(rng.normal(0, 0.4))
            self._add_static_agent("pedestrian", shp, float(p[0]), float(p[1]), yaw, 1,
                                   category=cat, subtype=sub)
            a += float(rng.uniform(0.95, 1.4))

    # -------------------------------------------------------------------- street furniture

    def _street_furniture(self, rng: np.random.Generator) -> None:
        cd = self.config.clutter_density
        pd = self.config.pedestrian_density
        for e in self._edges:
            win = self._edge_window(e, 25.0)
            if win is None:
                continue
            lo, hi = win
            tree_lined = rng.random() < 0.45
            tyaw = math.atan2(e.tangent[1], e.tangent[0])
            to_road = math.atan2(-e.normal[1], -e.normal[0])
            # street lights
            a = lo + float(rng.uniform(0, 20))
            spacing = float(rng.uniform(24.0, 40.0))
            while a < hi:
                if e.furniture.try_take(a - 0.3, a + 0.3):
                    p = e.pt(a, 0.45)
                    self._add_scenery(S.build_street_light(rng), float(p[0]), float(p[1]),
                                      to_road)
                a += spacing
            if tree_lined:
                a = lo + float(rng.uniform(0, 6))
                while a < hi:
                    if e.furniture.try_take(a - 0.4, a + 0.4):
                        max_r = 1.2 + e.park_w + e.road.bike_w[e.side]
                        p = e.pt(a, _FURN_DEPTH)
                        # canopies clear the tallest vehicles (4.2 m) where they overhang
                        self._add_scenery(S.build_tree(rng, min(3.2, max(1.3, max_r)), 4.4),
                                          float(p[0]), float(p[1]), tyaw)
                    a += float(rng.uniform(7.0, 13.0))
            # signs
            a = lo + float(rng.uniform(0, 30))
            while a < hi:
                if e.furniture.try_take(a - 0.4, a + 0.4):
                    p = e.pt(a, 0.35)
                    self._add_scenery(S.build_sign(rng), float(p[0]), float(p[1]),
                                      tyaw + (math.pi if e.traffic_dir < 0 else 0.0))
                a += float(rng.uniform(25.0, 60.0))
            # clutter, standing people, parked bicycles
            a = lo
            while a < hi:
                a += float(rng.exponential(14.0 / max(cd, 1e-3)))
                r = rng.random()
                if r < 0.85:
                    name = list(S.SMALL_CLUTTER)[int(rng.integers(len(S.SMALL_CLUTTER)))]
                    shp = S.recenter(S.SMALL_CLUTTER[name](rng))
                    tb = shp.tight_box()
                    along, across = (tb[3], tb[4]) if tb[3] >= tb[4] else (tb[4], tb[3])
                    if across > 0.95:
                        continue
                    if e.furniture.try_take(a - along / 2 - 0.15, a + along / 2 + 0.15):
                        p = e.pt(a, _FURN_DEPTH)
                        yy = tyaw if tb[3] >= tb[4] else tyaw + math.pi / 2
                        self._add_scenery(shp, float(p[0]), float(p[1]),
                                          yy + (math.pi if rng.random() < 0.5 else 0.0))
                elif r < 0.99:
                    if rng.random() < 0.35 * pd:
                        self._queue_standing(rng, e, a, int(rng.integers(1, 4)))
                else:
                    self._parked_bikes(rng, e, a)

    def _parked_bikes(self, rng: np.random.Generator, e: _Edge, a: float) -> None:
        n = int(rng.integers(1, 3))
        tyaw = math.atan2(e.tangent[1], e.tangent[0])
        rack = rng.random() < 0.5
        start = a
        for _ in range(n):
            size = sample_size("bicycle", rng)
            L = float(size[0])
            if not e.furniture.try_take(a, a + L + 0.25):
                break
            p = e.pt(a + L / 2 + 0.1, _FURN_DEPTH + 0.05)
            shp = S.build_bicycle(rng, size, rider=False)
            self._add_static_agent("bicycle", shp, float(p[0]), float(p[1]),
                                   tyaw + (math.pi if rng.random() < 0.5 else 0.0), 1,
                                   rider=False, parked=True)
            a += L + 0.3
        if rack and a > start + 1.0:
            p = e.pt((start + a) / 2, _FURN_DEPTH + 0.4)
            self._add_scenery(S.build_bike_rack(rng, a - start), float(p[0]), float(p[1]),
                              tyaw)

    def _curbs_and_lights(self, rng: np.random.Generator) -> None:
        """Curb primitives (cut at crosswalk landings) and traffic lights at the corners."""
        curb_col = np.array([180, 178, 172], dtype=np.uint8)
        for e in self._edges:
            cuts: list[tuple[float, float]] = []
            for cw in self._crosswalks:
                if cw.road is e.road:
                    cuts.append((cw.u_lo - e.u0, cw.u_hi - e.u0))
            cuts.sort()
            a = 0.0
            pieces = []
            for c0, c1 in cuts + [(e.length, e.length)]:
                c0 = max(0.0, min(e.length, c0))
                c1 = max(0.0, min(e.length, c1))
                if c0 - a > 0.3:
                    pieces.append((a, c0))
                a = max(a, c1)
            for p0, p1 in pieces:
                mid = e.pt((p0 + p1) / 2, 0.1)
                box = np.array([[mid[0], mid[1], _CURB_H / 2, p1 - p0, 0.2, _CURB_H,
                                 math.atan2(e.tangent[1], e.tangent[0])]])
                self._scenery.append((box, np.array([M.CURB], dtype=np.int16),
                                      curb_col[None].copy()))
        # traffic lights at the corners of junctions
        for j in self._junctions:
            A, B = self._road_a, j.road_b
            x0, x1, y0, y1 = j.box
            corners = []
            for sx, xe in ((-1, x0), (1, x1)):
                for sy, ye in ((-1, y0), (1, y1)):
                    if sy in j.arms:
                        corners.append((sx, sy, xe, ye))
            for sx, sy, xe, ye in corners:
                pole = np.array([xe + sx * 0.55, ye + sy * 0.55])
                if not self._near(pole, 20.0):
                    continue
                # mast arm over the road whose traffic approaches this corner
                if rng.random() < 0.5:
                    arm_dir = np.array([0.0, -sy])  # over road A
                    span = A.hw(sy)
                else:
                    arm_dir = np.array([-sx, 0.0])  # over road B
                    span = B.hw(1 if sx < 0 else -1)
                arm = float(np.clip(span * 0.7, 3.0, 7.5))
                self._add_scenery(S.build_traffic_light(rng, arm), float(pole[0]),
                                  float(pole[1]), math.atan2(arm_dir[1], arm_dir[0]))

    # -------------------------------------------------------------------- parked vehicles

    def _parked(self, rng: np.random.Generator) -> None:
        dens = self.config.parked_density
        for e in self._edges:
            if e.park_w <= 0:
                continue
            win = self._edge_window(e, 10.0)
            if win is None:
                continue
            a = max(win[0], e.parking.lo) + float(rng.uniform(0.0, 5.0))
            hi = min(win[1], e.parking.hi)
            d = e.traffic_dir
            heading = e.road.heading(d)
            occupancy = float(np.clip(rng.uniform(0.1, 0.55) * dens, 0.0, 1.0))
            max_w = e.park_w - 0.3
            while a < hi:
                if rng.random() > occupancy:
                    a += float(rng.uniform(3.0, 12.0))
                    continue
                r = rng.random()
                if r < 0.06:
                    name = "large_clutter"
                elif r < 0.08:
                    self._parked_motorcycles(rng, e, a, hi)
                    a += 4.0
                    continue
                elif r < 0.255:
                    name = "truck"
                elif r < 0.315:
                    name = "trailer"
                elif r < 0.34:
                    name = "construction_vehicle"
                else:
                    name = "car"
                if name == "large_clutter":
                    key = list(S.LARGE_CLUTTER)[int(rng.integers(len(S.LARGE_CLUTTER)))]
                    shp = S.recenter(S.LARGE_CLUTTER[key](rng))
                    tb = shp.tight_box()
                    if tb[4] > max_w:
                        a += 2.0
                        continue
                    L = tb[3]
                    if e.parking.try_take(a, a + L + 0.4):
                        p = e.pt(a + L / 2 + 0.2, -(0.2 + tb[4] / 2))
                        self._add_scenery(shp, float(p[0]), float(p[1]), heading)
                    a += L + float(rng.uniform(0.8, 3.0))
                    continue
                kind = "semi" if name == "trailer" and rng.random() < 0.8 else None
                if name == "trailer" and kind is None:
                    kind = "small"
                if name == "truck":
                    kind = ["pickup", "box", "flatbed"][int(rng.choice(3, p=[0.3, 0.5, 0.2]))]
                if name == "construction_vehicle":
                    kind = ["loader", "roller", "excavator"][int(rng.choice(3, p=[0.4, 0.4,
                                                                                 0.2]))]
                shp, sub = self._vehicle_shape(rng, name, max_w=max_w, kind=kind)
                tb = shp.tight_box()
                if tb[4] > max_w + 0.01:
                    a += 2.0
                    continue
                L = tb[3]
                if not e.parking.try_take(a, a + L + 0.2):
                    a += 2.0
                    continue
                depth = -(float(rng.uniform(0.1, 0.3)) + tb[4] / 2)
                p = e.pt(a + L / 2 + 0.1, depth)
                self._add_static_agent(name, shp, float(p[0]), float(p[1]),
                                       heading + float(rng.normal(0.0, 0.012)), 2, subtype=sub,
                                       parked=True)
                a += L + float(rng.uniform(0.6, 2.8))
            # the odd cone next to a parked truck / driveway
            if rng.random() < 0.5 * self.config.construction_rate:
                c_lo = max(win[0], e.furniture.lo)
                c_hi = min(win[1], e.furniture.hi)
                a = float(rng.uniform(c_lo, max(c_lo, c_hi)))
                for _ in range(int(rng.integers(1, 4))):
                    if e.furniture.try_take(a - 0.3, a + 0.3):
                        p = e.pt(a, 0.5)
                        self._cone(rng, float(p[0]), float(p[1]), small=True)
                    a += float(rng.uniform(0.8, 3.0))

    def _parked_motorcycles(self, rng: np.random.Generator, e: _Edge, a: float, hi: float
                            ) -> None:
        n = int(rng.integers(1, 5))
        heading = e.road.heading(e.traffic_dir)
        perp = math.atan2(e.normal[1], e.normal[0])
        for _ in range(n):
            size = sample_size("motorcycle", rng)
            size[0] = min(size[0], e.park_w - 0.35)
            if size[0] < 1.6:
                return
            rider = False
            shp = S.recenter(S.build_motorcycle(rng, size, rider))
            tb = shp.tight_box()
            wid = tb[4]
            if a + wid + 0.3 > hi or not e.parking.try_take(a, a + wid + 0.35):
                return
            p = e.pt(a + wid / 2 + 0.15, -(0.2 + tb[3] / 2))
            yaw = (perp if rng.random() < 0.5 else perp + math.pi) + float(rng.normal(0, 0.08))
            self._add_static_agent("motorcycle", shp, float(p[0]), float(p[1]), yaw, 2,
                                   rider=False, parked=True)
            a += wid + 0.4
        del heading

    # -------------------------------------------------------------------- traffic

    def _add_path(self, pts: np.ndarray) -> int:
        self._paths.append(np.asarray(pts, dtype=np.float64).reshape(-1, 2))
        return len(self._paths) - 1

    def _lane_window(self, road: _Road, d: int, v: float) -> tuple[float, float] | None:
        """s-range of a lane (s = d * u + FAR) whose points are within the area."""
        x0, x1, y0, y1 = self._ext
        lo, hi = (x0, x1) if road.axis == 0 else (y0, y1)
        u = np.arange(max(lo, road.u_lo), min(hi, road.u_hi), 1.0)
        if u.size == 0:
            return None
        ok = self._dist_path(road.to_map(u, v)) <= self.config.area_radius
        if not ok.any():
            return None
        s = d * u[ok] + _FAR
        return float(s.min()), float(s.max())

    def _lane_constraints(self, road: _Road, d: int, lane: int
                          ) -> tuple[list[tuple[float, float, _Junction]], float, bool]:
        """(barriers [(s_front_max, s_clear, junction)], s_min_rear, usable) of a lane (lane
        -1: the bike lane). Barriers are stop lines of red junctions, in travel order."""
        js = self._junctions if road is self._road_a else [
            j for j in self._junctions if j.road_b is road]
        barriers: list[tuple[float, float, _Junction]] = []
        s_min_rear = -math.inf
        for j in sorted(js, key=lambda jj: d * (jj.x if road is self._road_a else 0.0)):
            if road is self._road_a:
                has_up, has_down = True, True
            else:
                has_up = (-d) in j.arms
                has_down = d in j.arms
            cws = {c.arm_dir: c for c in self._crosswalks if c.road is road and c.junction is j}
            if has_down:
                s_clear = d * cws[d].outer + _FAR + 2.5
            else:
                s_clear = math.inf
            if has_up:
                s_stop = d * cws[-d].outer + _FAR - 1.8
                if road.red:
                    barriers.append((s_stop, s_clear, j))
                elif not has_down:
                    return [], 0.0, False
            else:
                s_min_rear = max(s_min_rear, s_clear)
            if road is not self._road_a and j.closed_arm != 0:
                arm, u_bar = self._closed_u[id(road)]
                if arm == -d:  # the closed arm is upstream: nothing comes from there
                    s_min_rear = max(s_min_rear, s_clear)
                else:  # heading into the closed arm: only vehicles beyond the barriers
                    s_min_rear = max(s_min_rear, d * u_bar + _FAR + 3.0)
        rid = 0 if road is self._road_a else 1 + [j.road_b for j in self._junctions].index(road)
        if (rid, d, lane) in self._lane_closures:
            s_min_rear = max(s_min_rear, self._lane_closures[(rid, d, lane)])
        barriers = [b for b in barriers if b[1] > s_min_rear]
        return barriers, s_min_rear, True

    def _traffic(self, rng: np.random.Generator) -> None:
        roads = [self._road_a] + [j.road_b for j in self._junctions]
        dens = self.config.traffic_density
        for road in roads:
            for d in (1, -1):
                for lane in range(road.lanes[d]):
                    is_ego = road is self._road_a and d == 1 and lane == self._ego_lane
                    v_lane = self._ego_v if is_ego else float(np.clip(
                        road.speed + rng.normal(0.0, 1.2) - 0.8 * lane, 4.0, 14.0))
                    a_lane = self._ego_a if is_ego else float(rng.uniform(1.5, 2.8))
                    outer = lane == road.lanes[d] - 1
                    self._fill_lane(rng, road, d, lane, road.lane_v(d, lane), v_lane, a_lane,
                                    is_ego, outer, dens, "vehicle")
                side = road.side_of_dir(d)
                if road.bike_w[side] > 0:
                    v_b = float(rng.uniform(3.0, 6.0))
                    self._fill_lane(rng, road, d, -1, road.bike_v(side), v_b,
                                    float(rng.uniform(1.2, 2.0)), False, False, dens, "bike")

    def _next_vehicle(self, rng: np.random.Generator, outer: bool, kind: str, road: _Road
                      ) -> list[tuple[str, S.Shape, str, float]]:
        """One traffic unit (a vehicle, or a vehicle towing a trailer): list of
        (name, shape, subtype, gap to the previous unit member)."""
        lane_w = road.lane_w
        if kind == "bike":
            size = sample_size("bicycle", rng)
            size[2] = rng.uniform(1.55, 1.9)
            return [("bicycle", S.recenter(S.build_bicycle(rng, size, rider=True)), "", 0.0)]
        max_w = lane_w - 0.35
        r = rng.random()
        p_bus = 0.07 if outer else 0.012
        if r < p_bus:
            shp, sub = self._vehicle_shape(rng, "bus", max_w=max_w, max_h=4.2)
            return [("bus", shp, sub, 0.0)]
        r -= p_bus
        if r < 0.18:
            shp, sub = self._vehicle_shape(rng, "truck", max_w=max_w, max_h=4.1)
            unit = [("truck", shp, sub, 0.0)]
            if sub in ("box", "flatbed") and rng.random() < 0.3:
                tshp, tsub = self._vehicle_shape(rng, "trailer", max_w=max_w, kind="drawbar",
                                                 max_h=4.1)
                unit.append(("trailer", tshp, tsub, float(rng.uniform(0.2, 0.4))))
            return unit
        r -= 0.18
        if r < 0.028:
            return [("motorcycle", *self._vehicle_shape(rng, "motorcycle"), 0.0)]
        shp, sub = self._vehicle_shape(rng, "car", max_w=max_w)
        unit = [("car", shp, sub, 0.0)]
        if rng.random() < 0.006:
            tshp, tsub = self._vehicle_shape(rng, "trailer", max_w=max_w, kind="small")
            unit.append(("trailer", tshp, tsub, float(rng.uniform(0.25, 0.45))))
        return unit

    def _fill_lane(self, rng: np.random.Generator, road: _Road, d: int, lane: int, v_off: float,
                   v: float, a: float, is_ego: bool, outer: bool, dens: float, kind: str
                   ) -> None:
        """Spawn the traffic of one lane (``lane`` -1: the bike lane).

        ``s`` (the path coordinate of box centres) is ``d * u + FAR``. Every vehicle of the
        lane shares the cruise speed ``v`` and the braking deceleration ``a``; queues at red
        lights are built so that the distance each vehicle still needs to stop grows from the
        stop line backwards, which keeps all gaps at or above their final value.
        """
        barriers, s_min_rear, usable = self._lane_constraints(road, d, lane)
        if not usable and not is_ego:
            return
        win = self._lane_window(road, d, v_off)
        if win is None and not is_ego:
            return
        if win is None:
            win = (self._ego_front_s(0.0), self._ego_front_s(0.0))
        T = self._T
        s_lo = win[0] - v * T - 5.0
        s_hi = win[1] + 20.0
        p0 = road.to_map(-d * _FAR, v_off)
        p1 = road.to_map(d * _FAR, v_off)
        path = self._add_path(np.stack([p0, p1]))
        lane_w = road.lane_w if lane >= 0 else road.bike_w[road.side_of_dir(d)]
        headway_mean = (5.0 if kind == "vehicle" else 70.0) / max(dens, 1e-3)
        ego_len = float(EGO_BOX[3])
        if dens <= 0:
            return

        def unit_len(unit: list[tuple[str, S.Shape, str, float]]) -> float:
            return float(sum(sh.tight_box()[3] + g for _, sh, _, g in unit))

        def add_unit(unit: list[tuple[str, S.Shape, str, float]], front: float,
                     D: float | None) -> float:
            """Place a unit whose first vehicle's front is at ``front`` (its final front when
            ``D`` is given: then the unit brakes to a stop, needing ``D`` metres at t = 0).
            Returns the unit's rear."""
            f = front
            t_stop = _time_to_stop_dist(D, v, a) if D is not None else 0.0
            for name, shp, sub, gap in unit:
                f -= gap
                tb = shp.tight_box()
                c = f - tb[3] / 2
                room = max(0.0, (lane_w - tb[4]) / 2 - 0.12)
                jit = 0.0 if name == "bicycle" else float(
                    np.clip(rng.normal(0.0, 0.4), -1.0, 1.0)) * room
                if D is None:
                    prof = _profile_const(c, v)
                elif D <= 1e-9:
                    prof = _profile_const(c, 0.0)
                else:
                    prof = _profile_stop(c, v, a, t_stop)
                cat = class_spec(name).categories[0]
                self._agents.append(_Agent(name, cat, sub, shp, 5, path=path, lat=jit,
                                           profile=prof))
                f = c - tb[3] / 2
            return f

        def headway() -> float:
            return max(2.0, v * float(rng.gamma(2.0, headway_mean / 2.0))) + (
                float(rng.uniform(10.0, 40.0)) if rng.random() < 0.15 else 0.0)

        def fill_free(rear: float, hi: float) -> None:
            while rear < hi:
                unit = self._next_vehicle(rng, outer, kind, road)
                total = unit_len(unit)
                add_unit(unit, rear + total, None)
                rear += total + headway()

        if not barriers:
            if is_ego:
                ec = self._ego_front_s(0.0) - ego_len / 2
                fill_free(ec + ego_len / 2 + headway(), s_hi)
                f = ec - ego_len / 2 - headway()
                while f > max(s_lo, s_min_rear):
                    unit = self._next_vehicle(rng, outer, kind, road)
                    if f - unit_len(unit) < s_min_rear:
                        break
                    f = add_unit(unit, f, None) - headway()
            else:
                fill_free(max(s_lo, s_min_rear) + float(rng.uniform(0.0, 10.0)), s_hi)
            return
        prev_clear = s_min_rear
        for s_stop, s_clear, jn in barriers:
            lo_bound = max(prev_clear, s_lo, s_min_rear)
            if is_ego and jn is self._ego_junction:
                F_e = self._ego_stop_front + _FAR
                D_e = max(0.0, F_e - self._ego_front_s(0.0))
                ahead: list[tuple[list[tuple[str, S.Shape, str, float]], float]] = []
                r = F_e + float(rng.uniform(1.5, 3.0))
                while True:
                    unit = self._next_vehicle(rng, outer, kind, road)
                    total = unit_len(unit)
                    if r + total > s_stop:
                        break
                    ahead.append((unit, r + total))
                    r += total + float(rng.uniform(1.5, 3.0))
                Ds = np.sort(rng.uniform(0.0, D_e, len(ahead)))
                if len(ahead):
                    Ds[rng.random(len(ahead)) < 0.5] = 0.0
                    Ds = np.sort(Ds)
                for (unit, fr), Dk in zip(reversed(ahead), Ds):
                    add_unit(unit, fr, float(Dk))
                D = D_e
                f_final = F_e - ego_len - float(rng.uniform(1.5, 3.0))
                n_q0 = 0
            else:
                D = 0.0
                f_final = s_stop - float(rng.uniform(0.0, 1.2))
                n_q0 = int(rng.poisson(0.8 * dens))
            rank = 0
            while rank < 100:
                unit = self._next_vehicle(rng, outer, kind, road)
                total = unit_len(unit)
                if rank >= n_q0:
                    D += v * float(rng.gamma(2.0, headway_mean / 2.0))
                if f_final - D - total < lo_bound:
                    break
                f_final = add_unit(unit, f_final, D) - float(rng.uniform(1.5, 3.0))
                rank += 1
            prev_clear = s_clear
        fill_free(max(prev_clear, s_min_rear, s_lo) + float(rng.uniform(0.0, 10.0)), s_hi)

    def _ego_front_s(self, t: float) -> float:
        u, _ = self._ego_centre_u(t)
        return u + _FAR + EGO_BOX[3] / 2

    # -------------------------------------------------------------------- pedestrians

    def _walkers(self, rng: np.random.Generator) -> None:
        dens = self.config.pedestrian_density
        busy = float(rng.uniform(0.3, 1.0)) * dens
        if busy > 0.8:
            self._tags.append("many pedestrians")
        x0, x1, y0, y1 = self._ext
        box = (x0, x1, y0, y1)
        for b in self._blocks:
            if not b.facing:
                continue
            min_sw = min(b.facing.values())
            d = 0.6
            while d <= min_sw - _WALK_MIN_DEPTH + 1e-9:
                pts = _walk_path(b, d)
                direction = 1 if rng.random() < 0.5 else -1
                if direction < 0:
                    pts = pts[::-1].copy()
                v = float(rng.uniform(1.0, 1.6))
                seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
                cum = np.concatenate([[0.0], np.cumsum(seg_len)])
                # candidate spawn ranges: parts of the path inside the extents and area
                windows = []
                for k in range(len(seg_len)):
                    cl = _clip_segment(pts[k], pts[k + 1], box)
                    if cl is None:
                        continue
                    ss = np.arange(cum[k] + cl[0] * seg_len[k], cum[k] + cl[1] * seg_len[k],
                                   1.0)
                    if ss.size == 0:
                        continue
                    pp = pts[k] + ((ss - cum[k]) / max(seg_len[k], 1e-9))[:, None] * (
                        pts[k + 1] - pts[k])
                    ok = self._dist_path(pp) <= self.config.area_radius
                    windows.extend(ss[ok].tolist())
                if windows:
                    path = self._add_path(pts)
                    ws = np.array(sorted(windows))
                    s = float(ws[0]) - v * self._T
                    s_end = float(ws[-1])
                    rate = 0.0075 * busy
                    while True:
                        s += max(1.9, float(rng.exponential(1.0 / max(rate, 1e-4))))
                        if s > s_end:
                            break
                        # only spawn where the walker will be inside the area at some time
                        if not (np.abs(ws - s).min() < 1.5 or
                                np.abs(ws - (s + v * self._T)).min() < 1.5 or
                                ((ws > s) & (ws < s + v * self._T)).any()):
                            continue
                        shp, cat, sub = self._ped_shape(rng, "walking")
                        tb = shp.tight_box(math.pi / 2)
                        if tb[3] > 0.9 or tb[4] > 0.86:
                            continue
                        ag = _Agent("pedestrian", cat, sub, shp, 4, path=path, lat=0.0,
                                    profile=_profile_const(s, v),
                                    step=float(0.38 * shp.tight_box()[5] * rng.uniform(0.9, 1.1)),
                                    phase0=float(rng.uniform(0, 2 * math.pi)))
                        self._agents.append(ag)
                        s += 1.2
                d += 1.1

    def _crossers(self, rng: np.random.Generator) -> None:
        dens = self.config.pedestrian_density
        T = self._T
        for cw in self._crosswalks:
            road = cw.road
            mid = (cw.u_lo + cw.u_hi) / 2
            if not self._near(road.to_map(mid, 0.0), 0.0):
                continue
            for lane_sign in (-1, 1):
                u = mid + lane_sign * min(0.6, (cw.u_hi - cw.u_lo) / 2 - 0.45)
                # lane_sign -1 walks towards +v, +1 towards -v
                vdir = 1 if lane_sign < 0 else -1
                v_start = -vdir * (road.hw(-vdir) + 0.7)
                v_end = vdir * (road.hw(vdir) + 0.7)
                if not cw.crossable:
                    # waiting at the curb (standing)
                    if rng.random() < 0.25 * dens:
                        p = road.to_map(u, v_start)
                        shp, cat, sub = self._ped_shape(rng, "standing")
                        yaw = math.atan2(*(road.v_vec * vdir)[::-1])
                        self._add_static_agent("pedestrian", shp, float(p[0]), float(p[1]),
                                               yaw + float(rng.normal(0, 0.2)), 1, category=cat,
                                               subtype=sub)
                    continue
                if rng.random() > 0.75 * min(1.0, dens):
                    continue
                pts = np.stack([road.to_map(u, v_start), road.to_map(u, v_end)])
                length = float(np.linalg.norm(pts[1] - pts[0]))
                v = float(rng.uniform(1.1, 1.6))
                acc = 1.5
                if length < v * v / acc + 1.0:
                    continue
                t_cross = length / v + v / acc
                t_go = float(rng.uniform(-t_cross * 0.8, max(T, 1.0) * 0.8))
                shp, cat, sub = self._ped_shape(rng, "walking")
                tb = shp.tight_box(math.pi / 2)
                if tb[3] > 0.9 or tb[4] > 0.86:
                    continue
                path = self._add_path(pts)
                self._agents.append(_Agent(
                    "pedestrian", cat, sub, shp, 4, path=path, lat=0.0,
                    profile=_profile_go_stop(0.0, length, v, acc, t_go),
                    step=float(0.38 * shp.tight_box()[5]),
                    phase0=float(rng.uniform(0, 2 * math.pi))))
                if "pedestrians crossing" not in self._tags:
                    self._tags.append("pedestrians crossing")

    # -------------------------------------------------------------------- consistency

    def _agent_boxes_at(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BEV boxes (T, N, 5) ``(x, y, l, w, yaw)`` and heights (N,) of all agents (map
        frame, before compilation) at times ``ts``; uses the max stride length for walkers."""
        n = len(self._agents)
        out = np.zeros((len(ts), n, 5))
        hs = np.zeros(n)
        for i, ag in enumerate(self._agents):
            tb = ag.shape.tight_box(math.pi / 2 if ag.step > 0 else 0.0)
            hs[i] = tb[5]
            if ag.path < 0:
                out[:, i] = (ag.pose[0], ag.pose[1], tb[3], tb[4], ag.pose[2])
                continue
            pts = self._paths[ag.path]
            seg = np.diff(pts, axis=0)
            sl = np.linalg.norm(seg, axis=1)
            cum = np.concatenate([[0.0], np.cumsum(sl)])
            for k, t in enumerate(ts):
                s = _eval_profile_scalar(ag.profile, float(t))
                j = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(sl) - 1))
                dirv = seg[j] / max(sl[j], 1e-12)
                p = pts[j] + (s - cum[j]) * dirv
                p = p + ag.lat * np.array([-dirv[1], dirv[0]])
                out[k, i] = (p[0], p[1], tb[3], tb[4], math.atan2(dirv[1], dirv[0]))
        return out, hs

    def _resolve_conflicts(self) -> None:
        """Safety net: drop agents whose BEV box overlaps the ego, a building / wall / fence /
        pole / trunk, or a higher-priority agent at any keyframe (0.5 s) or half-keyframe."""
        if not self._agents:
            return
        ts = np.arange(0.0, self._T + 1e-9, 0.25)
        boxes, hs = self._agent_boxes_at(ts)
        n = len(self._agents)
        drop = np.zeros(n, dtype=bool)
        pri = np.array([a.priority for a in self._agents])
        order = np.lexsort((np.arange(n), -pri))  # high priority first
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        rad = 0.5 * np.hypot(boxes[0, :, 2], boxes[0, :, 3])
        # ego
        for k, t in enumerate(ts):
            u, _ = self._ego_centre_u(float(t))
            ego = np.array([u - EGO_BOX[0] + EGO_BOX[0], self._ego_lane_y, EGO_BOX[3] + 0.4,
                            EGO_BOX[4] + 0.2, 0.0])
            near = np.flatnonzero(np.hypot(boxes[k, :, 0] - ego[0], boxes[k, :, 1] - ego[1])
                                  < rad + 3.0)
            if near.size:
                hit = _obb_overlap(np.repeat(ego[None], near.size, 0), boxes[k, near])
                drop[near[hit]] = True
        # hard scenery
        hard = {int(M.BUILDING), int(M.WALL), int(M.FENCE), int(M.POLE), int(M.TRUNK)}
        sb = [(b, m) for b, m, _ in self._scenery]
        if sb:
            allb = np.concatenate([b for b, _ in sb])
            allm = np.concatenate([m for _, m in sb])
            mask = np.isin(allm, sorted(hard))
            hb = allb[mask]
            hrad = 0.5 * np.hypot(hb[:, 3], hb[:, 4])
            hz0 = hb[:, 2] - hb[:, 5] / 2
            for k in range(len(ts)):
                dd = np.hypot(boxes[k, :, None, 0] - hb[None, :, 0],
                              boxes[k, :, None, 1] - hb[None, :, 1])
                ii, jj = np.nonzero(dd < rad[:, None] + hrad[None, :])
                if ii.size == 0:
                    continue
                ok = hz0[jj] < hs[ii]
                ii, jj = ii[ok], jj[ok]
                if ii.size == 0:
                    continue
                hit = _obb_overlap(boxes[k, ii], hb[jj][:, [0, 1, 3, 4, 6]])
                drop[ii[hit]] = True
        # agent pairs
        for k in range(len(ts)):
            bk = boxes[k]
            dd = np.hypot(bk[:, None, 0] - bk[None, :, 0], bk[:, None, 1] - bk[None, :, 1])
            ii, jj = np.nonzero(np.triu(dd < rad[:, None] + rad[None, :], 1))
            if ii.size == 0:
                continue
            hit = _obb_overlap(bk[ii], bk[jj])
            for i, j in zip(ii[hit], jj[hit]):
                if drop[i] or drop[j]:
                    continue
                drop[i if rank[i] > rank[j] else j] = True
        self._n_dropped = int(drop.sum())
        self._agents = [a for a, d in zip(self._agents, drop) if not d]

    # -------------------------------------------------------------------- compilation

    def _compile(self) -> None:
        """Move everything to the world frame and pack it into arrays for ``state_at``."""
        c = _Compiled()
        th = self._theta
        # paths (world frame), concatenated with a gap so searchsorted never crosses paths
        starts, offs, lens = [], [], []
        all_pts, all_cum = [], []
        base = 0.0
        for pts in self._paths:
            w = self._to_world(pts)
            sl = np.linalg.norm(np.diff(w, axis=0), axis=1)
            cum = np.concatenate([[0.0], np.cumsum(sl)])
            starts.append(sum(len(p) for p in all_pts))
            offs.append(base)
            lens.append(float(cum[-1]))
            all_pts.append(w)
            all_cum.append(cum + base)
            base += float(cum[-1]) + 10.0
        if all_pts:
            c.pts = np.concatenate(all_pts)
            c.cum = np.concatenate(all_cum)
        else:
            c.pts = np.zeros((1, 2))
            c.cum = np.zeros(1)
        seg = np.diff(c.pts, axis=0, append=c.pts[-1:])
        sl = np.linalg.norm(seg, axis=1)
        c.dir = seg / np.where(sl > 0, sl, 1.0)[:, None]
        c.path_first = np.array(starts + [0], dtype=np.int64)
        c.path_off = np.array(offs + [0.0])
        c.path_len = np.array(lens + [0.0])
        c.path_nv = np.array([len(p) for p in all_pts] + [1], dtype=np.int64)
        n = len(self._agents)
        self._n_agents = n
        c.path = np.array([a.path for a in self._agents], dtype=np.int64).reshape(n)
        c.lat = np.array([a.lat for a in self._agents]).reshape(n)
        sxy = self._to_world(np.array([a.pose[:2] for a in self._agents]).reshape(n, 2)) \
            if n else np.zeros((0, 2))
        c.sx, c.sy = sxy[:, 0].copy(), sxy[:, 1].copy()
        c.syaw = np.array([a.pose[2] + th for a in self._agents]).reshape(n)
        K = max([len(a.profile) for a in self._agents] + [1])
        c.p_sw = np.full((n, K), math.inf)
        c.p_tr = np.zeros((n, K))
        c.p_s = np.zeros((n, K))
        c.p_v = np.zeros((n, K))
        c.p_a = np.zeros((n, K))
        for i, a in enumerate(self._agents):
            for k, (tsw, tr, sr, vr, ar) in enumerate(a.profile):
                c.p_sw[i, k] = tsw
                c.p_tr[i, k] = tr
                c.p_s[i, k] = sr
                c.p_v[i, k] = vr
                c.p_a[i, k] = ar
        c.step = np.array([a.step for a in self._agents]).reshape(n)
        c.phase0 = np.array([a.phase0 for a in self._agents]).reshape(n)
        # rest tight boxes and primitives
        c.rest_box = np.zeros((n, 6))
        owners, local, swing, mat, col, inbox = [], [], [], [], [], []
        a_owner, a_x, a_ex, a_swing = [], [], [], []
        anim = []
        for i, a in enumerate(self._agents):
            shp = a.shape
            c.rest_box[i] = shp.tight_box(0.0)
            owners.append(np.full(len(shp), i, dtype=np.int64))
            local.append(shp.boxes)
            swing.append(shp.swing)
            mat.append(shp.material)
            col.append(shp.color)
            inbox.append(shp.in_box)
            if shp.animated:
                anim.append(i)
                sel = shp.in_box
                ext = S.local_half_extents(shp.boxes[sel])
                a_owner.append(np.full(int(sel.sum()), i, dtype=np.int64))
                a_x.append(shp.boxes[sel, 0])
                a_ex.append(ext[:, 0])
                a_swing.append(shp.swing[sel])
        cat = lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt)
        c.p_owner = cat(owners, (0,), np.int64)
        c.p_local = cat(local, (0, 7), np.float64)
        c.p_swing = cat(swing, (0,), np.float64)
        c.p_mat = cat(mat, (0,), np.int16)
        c.p_col = cat(col, (0, 3), np.uint8)
        c.p_inbox = cat(inbox, (0,), bool)
        c.anim_agents = np.array(anim, dtype=np.int64)
        c.a_owner = cat(a_owner, (0,), np.int64)
        c.a_x = cat(a_x, (0,), np.float64)
        c.a_ex = cat(a_ex, (0,), np.float64)
        c.a_swing = cat(a_swing, (0,), np.float64)
        # static scenery -> world
        if self._scenery:
            sb = np.concatenate([b for b, _, _ in self._scenery]).astype(np.float64)
            sm = np.concatenate([m for _, m, _ in self._scenery]).astype(np.int16)
            sc = np.concatenate([cc for _, _, cc in self._scenery]).astype(np.uint8)
        else:
            sb, sm, sc = np.zeros((0, 7)), np.zeros(0, np.int16), np.zeros((0, 3), np.uint8)
        sb = sb.copy()
        sb[:, :2] = self._to_world(sb[:, :2])
        sb[:, 6] = wrap_angle(sb[:, 6] + th)
        c.s_boxes, c.s_mat, c.s_col = sb, sm, sc
        c.s_rad = 0.5 * np.hypot(sb[:, 3], sb[:, 4])
        self._c = c

    def _eval_profiles(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        c = self._c
        if self._n_agents == 0:
            return np.zeros(0), np.zeros(0)
        k = (t >= c.p_sw).sum(axis=1) - 1
        k = np.maximum(k, 0)
        r = np.arange(self._n_agents)
        dt = t - c.p_tr[r, k]
        a = c.p_a[r, k]
        s = c.p_s[r, k] + c.p_v[r, k] * dt + 0.5 * a * dt * dt
        v = c.p_v[r, k] + a * dt
        return s, v

    def _eval_paths(self, s: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        c = self._c
        pid = np.where(c.path >= 0, c.path, len(c.path_first) - 1)
        ss = np.clip(s, 0.0, c.path_len[pid])
        g = ss + c.path_off[pid]
        j = np.searchsorted(c.cum, g, side="right") - 1
        first = c.path_first[pid]
        j = np.clip(j, first, first + np.maximum(c.path_nv[pid] - 2, 0))
        d = c.dir[j]
        p = c.pts[j] + (g - c.cum[j])[:, None] * d
        return p[:, 0], p[:, 1], d[:, 0], d[:, 1]

    # -------------------------------------------------------------------- ground raster

    def _build_ground(self) -> GroundMap:
        res = self.config.ground_resolution
        gm = self.config.ground_margin
        x0, x1 = self._ego_u0 - gm, self._ego_u1 + gm
        y0, y1 = self._ego_lane_y - gm, self._ego_lane_y + gm
        mr = _Raster(x0, x1, y0, y1, res)
        self._paint_map(mr)
        # world raster covering the rotated map raster
        corners = self._to_world(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        wx0 = math.floor(corners[:, 0].min() / res) * res
        wy0 = math.floor(corners[:, 1].min() / res) * res
        wx1 = corners[:, 0].max()
        wy1 = corners[:, 1].max()
        W = math.ceil((wx1 - wx0) / res)
        H = math.ceil((wy1 - wy0) / res)
        out = np.full((H, W), int(M.GRASS), dtype=np.uint8)
        xs = wx0 + (np.arange(W) + 0.5) * res - self._offset[0]
        Rt = self._R  # map = R^T (w - offset)
        chunk = max(1, 4_000_000 // max(W, 1))
        for r0 in range(0, H, chunk):
            r1 = min(H, r0 + chunk)
            ys = wy0 + (np.arange(r0, r1) + 0.5) * res - self._offset[1]
            mx = Rt[0, 0] * xs[None, :] + Rt[1, 0] * ys[:, None]
            my = Rt[0, 1] * xs[None, :] + Rt[1, 1] * ys[:, None]
            cc = np.floor((mx - mr.x0) / res).astype(np.int64)
            rr = np.floor((my - mr.y0) / res).astype(np.int64)
            ok = (cc >= 0) & (cc < mr.a.shape[1]) & (rr >= 0) & (rr < mr.a.shape[0])
            blk = out[r0:r1]
            blk[ok] = mr.a[rr[ok], cc[ok]]
        return GroundMap(material=out, x_min=float(wx0), y_min=float(wy0), resolution=res)

    def _paint_map(self, mr: _Raster) -> None:
        A = self._road_a
        js = self._junctions
        G, SW, RD, LM, CB = int(M.GRASS), int(M.SIDEWALK), int(M.ROAD), int(M.LANE_MARKING), \
            int(M.CURB)
        del G
        for (bx0, bx1, by0, by1, mat) in self._lots_ground:
            mr.rect(bx0, bx1, by0, by1, mat)
        # sidewalks
        mr.rect(mr.x0, mr.x1, A.hw(1), A.hw(1) + A.sw[1], SW)
        mr.rect(mr.x0, mr.x1, -A.hw(-1) - A.sw[-1], -A.hw(-1), SW)
        for j in js:
            B = j.road_b
            for arm in j.arms:
                ylo, yhi = (A.hw(1), mr.y1) if arm > 0 else (mr.y0, -A.hw(-1))
                mr.rect(j.x - B.hw(1) - B.sw[1], j.x - B.hw(1), ylo, yhi, SW)
                mr.rect(j.x + B.hw(-1), j.x + B.hw(-1) + B.sw[-1], ylo, yhi, SW)
        # roads
        mr.rect(mr.x0, mr.x1, -A.hw(-1), A.hw(1), RD)
        for j in js:
            B = j.road_b
            for arm in j.arms:
                ylo, yhi = (A.hw(1), mr.y1) if arm > 0 else (mr.y0, -A.hw(-1))
                mr.rect(j.x - B.hw(1), j.x + B.hw(-1), ylo, yhi, RD)
        # curbs (ground strip under the curb primitives)
        for e in self._edges:
            p0 = e.pt(0.0, 0.0)
            p1 = e.pt(e.length, 0.2)
            mr.rect(min(p0[0], p1[0]), max(p0[0], p1[0]), min(p0[1], p1[1]),
                    max(p0[1], p1[1]), CB)
        # markings, per road and stretch between junction areas
        roads: list[tuple[_Road, list[tuple[float, float]]]] = []
        cuts_a = []
        for j in js:
            cws = [c for c in self._crosswalks if c.road is A and c.junction is j]
            lo = min(c.u_lo for c in cws) - 1.3
            hi = max(c.u_hi for c in cws) + 1.3
            cuts_a.append((lo, hi))
        roads.append((A, self._stretches(mr.x0, mr.x1, cuts_a)))
        for j in js:
            B = j.road_b
            for arm in j.arms:
                cw = next(c for c in self._crosswalks if c.road is B and c.junction is j
                          and c.arm_dir == arm)
                if arm > 0:
                    roads.append((B, [(cw.u_hi + 1.3, mr.y1)]))
                else:
                    roads.append((B, [(mr.y0, cw.u_lo - 1.3)]))
        for road, stretches in roads:
            for u0, u1 in stretches:
                self._paint_road_lines(mr, road, u0, u1)
        # stop lines and crosswalks
        for cw in self._crosswalks:
            road = cw.road
            d = -cw.arm_dir  # approaching traffic
            side = road.side_of_dir(d)
            u_line = cw.outer + cw.arm_dir * 0.8
            vv = sorted([0.0, side * (road.median / 2 + road.lanes[d] * road.lane_w)])
            self._road_rect(mr, road, min(u_line, u_line + cw.arm_dir * 0.4),
                            max(u_line, u_line + cw.arm_dir * 0.4), vv[0], vv[1], LM)
            v = -road.hw(-1) + 0.3
            while v < road.hw(1) - 0.5:
                self._road_rect(mr, road, cw.u_lo, cw.u_hi, v, v + 0.5, LM)
                v += 1.0
        for m in self._markings:
            mr.line(m[0], m[1], m[2], m[3], 0.1, LM)

    @staticmethod
    def _stretches(lo: float, hi: float, cuts: list[tuple[float, float]]
                   ) -> list[tuple[float, float]]:
        out, a = [], lo
        for c0, c1 in sorted(cuts):
            if c0 > a:
                out.append((a, c0))
            a = max(a, c1)
        if hi > a:
            out.append((a, hi))
        return out

    def _road_rect(self, mr: _Raster, road: _Road, u0: float, u1: float, v0: float, v1: float,
                   mat: int) -> None:
        p = road.to_map(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        mr.rect(float(p[:, 0].min()), float(p[:, 0].max()), float(p[:, 1].min()),
                float(p[:, 1].max()), mat)

    def _paint_road_lines(self, mr: _Raster, road: _Road, u0: float, u1: float) -> None:
        LM = int(M.LANE_MARKING)
        lw = 0.12
        # centre line: double solid for multi-lane roads, dashed for 1 + 1
        if road.lanes[1] + road.lanes[-1] >= 3:
            for off in (-road.median / 2, road.median / 2):
                self._road_rect(mr, road, u0, u1, off - lw / 2, off + lw / 2, LM)
        else:
            self._dashed(mr, road, u0, u1, 0.0, lw, 3.0, 6.0)
        for side in (1, -1):
            d = road.dir_of_side(side)
            n = road.lanes[d]
            for i in range(1, n):
                v = side * (road.median / 2 + i * road.lane_w)
                self._dashed(mr, road, u0, u1, v, lw, 3.0, 6.0)
            if road.bike_w[side] > 0 or road.park_w[side] > 0:
                v = side * (road.median / 2 + n * road.lane_w)
                self._road_rect(mr, road, u0, u1, v - lw / 2, v + lw / 2, LM)
            if road.bike_w[side] > 0 and road.park_w[side] > 0:
                v = side * (road.median / 2 + n * road.lane_w + road.bike_w[side])
                self._road_rect(mr, road, u0, u1, v - lw / 2, v + lw / 2, LM)

    def _dashed(self, mr: _Raster, road: _Road, u0: float, u1: float, v: float, lw: float,
                dash: float, gap: float) -> None:
        period = dash + gap
        u = math.floor(u0 / period) * period
        while u < u1:
            a, b = max(u, u0), min(u + dash, u1)
            if b > a:
                self._road_rect(mr, road, a, b, v - lw / 2, v + lw / 2, int(M.LANE_MARKING))
            u += period


def _eval_profile_scalar(profile: list[_Seg], t: float) -> float:
    k = max(i for i in range(len(profile)) if t >= profile[i][0])
    _, tr, sr, vr, ar = profile[k]
    dt = t - tr
    return sr + vr * dt + 0.5 * ar * dt * dt


class _Compiled:
    """Packed world-frame arrays used by ``Scene.state_at`` (see ``Scene._compile``)."""

    pts: np.ndarray
    cum: np.ndarray
    dir: np.ndarray
    path_first: np.ndarray
    path_off: np.ndarray
    path_len: np.ndarray
    path_nv: np.ndarray
    path: np.ndarray
    lat: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    syaw: np.ndarray
    p_sw: np.ndarray
    p_tr: np.ndarray
    p_s: np.ndarray
    p_v: np.ndarray
    p_a: np.ndarray
    step: np.ndarray
    phase0: np.ndarray
    rest_box: np.ndarray
    p_owner: np.ndarray
    p_local: np.ndarray
    p_swing: np.ndarray
    p_mat: np.ndarray
    p_col: np.ndarray
    p_inbox: np.ndarray
    anim_agents: np.ndarray
    a_owner: np.ndarray
    a_x: np.ndarray
    a_ex: np.ndarray
    a_swing: np.ndarray
    s_boxes: np.ndarray
    s_mat: np.ndarray
    s_col: np.ndarray
    s_rad: np.ndarray


class _Raster:
    """Axis-aligned material raster in the map frame (row = y, col = x)."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, res: float) -> None:
        self.x0, self.y0, self.res = x0, y0, res
        self.W = math.ceil((x1 - x0) / res)
        self.H = math.ceil((y1 - y0) / res)
        self.x1, self.y1 = x0 + self.W * res, y0 + self.H * res
        self.a = np.full((self.H, self.W), int(M.GRASS), dtype=np.uint8)

    def _c(self, x: float) -> int:
        return int(np.clip(math.ceil((x - self.x0) / self.res - 0.5), 0, self.W))

    def _r(self, y: float) -> int:
        return int(np.clip(math.ceil((y - self.y0) / self.res - 0.5), 0, self.H))

    def rect(self, xa: float, xb: float, ya: float, yb: float, mat: int) -> None:
        c0, c1 = self._c(min(xa, xb)), self._c(max(xa, xb))
        r0, r1 = self._r(min(ya, yb)), self._r(max(ya, yb))
        if c1 > c0 and r1 > r0:
            self.a[r0:r1, c0:c1] = mat

    def line(self, xa: float, ya: float, xb: float, yb: float, width: float, mat: int) -> None:
        """Axis-aligned line segment of ``width``."""
        if abs(xa - xb) < abs(ya - yb):
            self.rect(xa - width / 2, xa + width / 2, ya, yb, mat)
        else:
            self.rect(xa, xb, ya - width / 2, ya + width / 2, mat)
