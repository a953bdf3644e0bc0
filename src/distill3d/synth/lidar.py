"""Simulated spinning LiDAR for SynthDrive: exact ray casting against yaw-only cuboids.

A :class:`LidarConfig` describes a spinning multi-beam LiDAR (Velodyne-like): ``beams``
lasers at fixed elevation angles, fired together at ``azimuth_steps`` evenly spaced
azimuths per revolution. :func:`scan_lidar` casts every ``beam x azimuth`` ray of one
revolution against all primitives of a :class:`~distill3d.synth.types.FrameState` and the
ground plane z = 0 (world frame), and returns the first hit of every ray as a point in the
**LiDAR frame**.

Conventions (what the writers must know)
----------------------------------------
* **Frames.** Rays start at the sensor origin ``sensor_to_world = ego_to_world @
  sensor_to_ego``. Returned ``x, y, z`` are in the LiDAR (sensor) frame given by
  ``config.sensor_to_ego``. For the ``"nuscenes32"`` preset that frame is nuScenes'
  LIDAR_TOP: x right, y forward, z up. For ``"kitti64"`` and ``"vlp16"`` it is x forward,
  y left, z up (KITTI velodyne).
* **Azimuth.** Column ``k`` (0 .. ``azimuth_steps``-1) fires at LiDAR-frame azimuth
  ``phi_k = -pi + (k + 0.5) * 2 pi / azimuth_steps`` (counter-clockwise from LiDAR +x), so
  no column sits exactly on the +-pi seam.
* **Ring index.** Ring 0 is the **lowest** beam and ring ``beams - 1`` the highest: rings are
  the beams sorted by ascending elevation (the ROS velodyne driver convention, and the
  ascending ring -> elevation table commonly used with nuScenes' HDL-32E). An explicit
  ``elevations_deg`` list in any order is sorted the same way.
* **Columns of the output.** ``(N, 5) float32``: ``x, y, z`` (m, LiDAR frame),
  ``intensity`` (whole numbers in [0, 255], like nuScenes), ``ring`` (as float, like the
  5th column of nuScenes ``.pcd.bin``). Points come in firing order: by azimuth column, then
  by ring within a column (nuScenes files are likewise stored column by column).
* **No motion distortion.** The whole revolution is cast against the single instant
  ``state`` (ego and objects frozen), i.e. every sweep is perfectly "motion compensated".
* **Near hits block.** The first surface along a ray is the hit; if it is closer than
  ``min_range`` (e.g. the ego's own body) the ray returns nothing rather than passing
  through. A sensor inside a primitive sees that primitive's inner faces.
* **Misses** (sky, or first hit beyond ``max_range``) give no point; nothing is written for
  them (no zero placeholders).

Physics model (cheap, plausible)
--------------------------------
* Range noise: Gaussian, ``range_noise_std`` metres, along the ray; a noisy range outside
  ``[min_range, max_range]`` is not reported.
* Intensity: ``255 * reflectivity * (retro + (1 - retro) * cos(incidence)) / (1 + (r /
  intensity_falloff_m)^2)`` plus Gaussian noise, rounded and clipped to [0, 255]. The
  reflectivity and retro-reflective share come from a per-:class:`Material` table (lane
  markings and retro-reflectors bright, tyres and asphalt dark, glass dark).
* Dropout: a base rate ``dropout_prob``; a per-material rate (glass mostly transmits:
  :data:`MATERIAL_DROPOUT`); and a weak-return rate for dark, far or grazing returns:
  ``weak_return_dropout * clip(1 - s / weak_return_threshold, 0, 1)`` with detection signal
  ``s = reflectivity * (retro + (1 - retro) * sqrt(cos)) / (1 + (r / detection_falloff_m)^2)``.
* Beam jitter: each ray's elevation and azimuth get N(0, ``beam_jitter_deg``) noise.

Speed
-----
Rays are only tested against primitives whose angular footprint (azimuth interval, exact
with the +-pi wrap and with primitives above/below the sensor, and a conservative elevation
interval) covers them, as contiguous runs of ray indices per ``(primitive, ring)``. The
candidate pairs are slab-tested in float32 in bounded chunks, nearest primitives first, and
pairs whose primitive lies farther than the ray's best hit so far are skipped. The first hit
of a ray is reduced with one ``np.minimum.at`` on a packed ``(float32 range bits, primitive
index)`` key, so ties break towards the lower primitive index; the winner's range and hit
face are then recomputed in float64. ``method="brute"`` tests every ray against every
primitive through the same kernel and gives byte-identical output (used by the tests and the
benchmark). Everything is single-threaded numpy and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Literal, Mapping

import numpy as np

from distill3d.synth.types import FrameState, Material

__all__ = [
    "LidarConfig",
    "LidarScan",
    "MATERIAL_DROPOUT",
    "MATERIAL_REFLECTIVITY",
    "MATERIAL_RETRO",
    "lidar_preset",
    "lidar_sensor_to_world",
    "make_mount",
    "scan_lidar",
    "scan_lidar_detailed",
    "scan_lidar_with_labels",
    "LIDAR_PRESETS",
]

# --------------------------------------------------------------------------------------
# Material tables (read-only).
# --------------------------------------------------------------------------------------

#: Diffuse reflectivity at 905 nm, in [0, 1].
MATERIAL_REFLECTIVITY: Mapping[Material, float] = MappingProxyType(
    {
        Material.ROAD: 0.10,
        Material.SIDEWALK: 0.20,
        Material.GRASS: 0.35,
        Material.LANE_MARKING: 0.60,
        Material.CURB: 0.25,
        Material.BUILDING: 0.30,
        Material.WALL: 0.28,
        Material.FENCE: 0.25,
        Material.POLE: 0.35,
        Material.VEGETATION: 0.45,
        Material.TRUNK: 0.20,
        Material.VEHICLE_PAINT: 0.25,
        Material.GLASS: 0.05,
        Material.TIRE: 0.03,
        Material.METAL: 0.40,
        Material.CLOTH: 0.25,
        Material.SKIN: 0.35,
        Material.PLASTIC: 0.20,
        Material.RETROREFLECTOR: 0.95,
        Material.CONCRETE: 0.25,
    }
)

#: Share of the return that is retro-reflective (independent of the incidence angle).
MATERIAL_RETRO: Mapping[Material, float] = MappingProxyType(
    {m: 0.0 for m in Material}
    | {Material.LANE_MARKING: 0.5, Material.RETROREFLECTOR: 1.0, Material.VEHICLE_PAINT: 0.05}
)

#: Extra per-material dropout probability (glass mostly transmits the beam).
MATERIAL_DROPOUT: Mapping[Material, float] = MappingProxyType(
    {m: 0.0 for m in Material} | {Material.GLASS: 0.6}
)


def _material_table(table: Mapping[Material, float]) -> np.ndarray:
    """Dense ``(len(Material),) float64`` lookup array of a material table."""
    out = np.zeros(max(int(m) for m in Material) + 1, dtype=np.float64)
    for m, v in table.items():
        out[int(m)] = v
    return out


# --------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------


def _rot_z(deg: float) -> np.ndarray:
    """(3, 3) rotation about +z by ``deg`` degrees (counter-clockwise)."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    if abs(deg) % 90.0 == 0.0:  # exact entries for the axis-aligned mounts
        c, s = float(np.round(c)), float(np.round(s))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_mount(translation: tuple[float, float, float], yaw_deg: float = 0.0) -> np.ndarray:
    """(4, 4) sensor->ego transform: rotation ``yaw_deg`` about z, then ``translation`` (m)."""
    t = np.eye(4)
    t[:3, :3] = _rot_z(yaw_deg)
    t[:3, 3] = translation
    return t


@dataclass
class LidarConfig:
    """A spinning multi-beam LiDAR.

    Attributes:
        name: free-form label (the preset name for presets).
        beams: number of lasers (rings).
        elevation_min_deg, elevation_max_deg: lowest / highest beam elevation, degrees, used
            with uniform spacing when ``elevations_deg`` is None.
        elevations_deg: optional explicit per-beam elevations (degrees, any order, length
            ``beams``); ring ``i`` is the ``i``-th lowest.
        azimuth_steps: firings (columns) per revolution.
        max_range, min_range: reported measured range window, metres.
        range_noise_std: Gaussian range noise, metres.
        dropout_prob: base probability that a return is lost.
        weak_return_dropout: maximum extra dropout for weak (dark, far, grazing) returns.
        weak_return_threshold: detection signal below which weak-return dropout starts.
        detection_falloff_m: range scale of the detection signal falloff.
        intensity_noise_std: Gaussian intensity noise, in intensity units (0-255 scale).
        intensity_falloff_m: range scale of the intensity falloff.
        beam_jitter_deg: per-ray Gaussian jitter of elevation and azimuth, degrees.
        sensor_to_ego: (4, 4) float64 LiDAR->ego mount transform.
        chunk_pairs: maximum candidate (ray, primitive) pairs tested at once (memory bound,
            about 60 bytes per pair); does not change the output.

    Two configs compare equal when all fields are equal (``sensor_to_ego`` elementwise).
    """

    name: str = "custom"
    beams: int = 32
    elevation_min_deg: float = -30.67
    elevation_max_deg: float = 10.67
    elevations_deg: tuple[float, ...] | None = None
    azimuth_steps: int = 1084
    max_range: float = 100.0
    min_range: float = 1.0
    range_noise_std: float = 0.02
    dropout_prob: float = 0.02
    weak_return_dropout: float = 0.7
    weak_return_threshold: float = 0.03
    detection_falloff_m: float = 60.0
    intensity_noise_std: float = 1.5
    intensity_falloff_m: float = 80.0
    beam_jitter_deg: float = 0.01
    sensor_to_ego: np.ndarray = field(default_factory=lambda: np.eye(4))
    chunk_pairs: int = 1 << 19

    def __post_init__(self) -> None:
        self.sensor_to_ego = np.array(self.sensor_to_ego, dtype=np.float64, copy=True)
        if self.sensor_to_ego.shape != (4, 4):
            raise ValueError(f"sensor_to_ego must be (4, 4), got {self.sensor_to_ego.shape}")
        if self.elevations_deg is not None:
            self.elevations_deg = tuple(float(e) for e in self.elevations_deg)
            if len(self.elevations_deg) != self.beams:
                raise ValueError(
                    f"elevations_deg has {len(self.elevations_deg)} entries, beams={self.beams}"
                )
        if self.beams < 1 or self.azimuth_steps < 1:
            raise ValueError("beams and azimuth_steps must be >= 1")
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError("need 0 <= min_range < max_range")
        for name in ("dropout_prob", "weak_return_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LidarConfig):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if f.name == "sensor_to_ego"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def elevations_rad(self) -> np.ndarray:
        """(beams,) float64 beam elevations in radians, ascending: entry ``i`` is ring ``i``."""
        if self.elevations_deg is not None:
            deg = np.sort(np.asarray(self.elevations_deg, dtype=np.float64))
        elif self.beams == 1:
            deg = np.array([0.5 * (self.elevation_min_deg + self.elevation_max_deg)])
        else:
            deg = np.linspace(self.elevation_min_deg, self.elevation_max_deg, self.beams)
        return np.deg2rad(deg)

    def azimuths_rad(self) -> np.ndarray:
        """(azimuth_steps,) float64 column azimuths in the LiDAR frame, ascending in (-pi, pi)."""
        a = self.azimuth_steps
        return -np.pi + (np.arange(a, dtype=np.float64) + 0.5) * (2.0 * np.pi / a)

    @property
    def num_rays(self) -> int:
        """Rays per revolution, ``beams * azimuth_steps``."""
        return self.beams * self.azimuth_steps


def _hdl64_elevations() -> tuple[float, ...]:
    """HDL-64E-like elevations: 32 upper lasers +2 .. -8.33 deg (1/3 deg), 32 lower to -24.9."""
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    return tuple(float(e) for e in np.concatenate([upper, lower]))


#: Names accepted by :func:`lidar_preset`.
LIDAR_PRESETS: tuple[str, ...] = ("nuscenes32", "kitti64", "vlp16")


def lidar_preset(name: str) -> LidarConfig:
    """A fresh :class:`LidarConfig` for a named sensor.

    * ``"nuscenes32"``: Velodyne HDL-32E as nuScenes LIDAR_TOP: 32 beams from -30.67 to
      +10.67 deg (4/3 deg spacing), 1084 columns (20 Hz), 100 m. Mounted at
      (0.943713, 0.0, 1.84023) m in ego, rotated -90 deg about z so LiDAR +x = ego right
      (-y) and LiDAR +y = ego forward (+x), as the nuScenes calibration (small tilts dropped).
    * ``"kitti64"``: Velodyne HDL-64E as KITTI: 64 beams, +2.0 .. -8.33 deg at 1/3 deg and
      -8.83 .. -24.9 deg at ~0.52 deg, 2083 columns (10 Hz), 120 m. x forward, y left;
      mounted at (0.81, -0.32, 1.73) m: 1.73 m high (KITTI setup) and at KITTI's
      IMU->velodyne offset with the IMU taken above the rear axle.
    * ``"vlp16"``: Velodyne VLP-16: 16 beams -15 .. +15 deg (2 deg), 1800 columns (10 Hz),
      100 m, x forward, y left, mounted at (1.0, 0.0, 1.80) m.
    """
    if name == "nuscenes32":
        return LidarConfig(
            name=name,
            beams=32,
            elevation_min_deg=-30.67,
            elevation_max_deg=10.67,
            azimuth_steps=1084,
            max_range=100.0,
            min_range=1.0,
            range_noise_std=0.02,
            sensor_to_ego=make_mount((0.943713, 0.0, 1.84023), yaw_deg=-90.0),
        )
    if name == "kitti64":
        return LidarConfig(
            name=name,
            beams=64,
            elevations_deg=_hdl64_elevations(),
            elevation_min_deg=-24.9,
            elevation_max_deg=2.0,
            azimuth_steps=2083,
            max_range=120.0,
            min_range=1.0,
            range_noise_std=0.02,
            sensor_to_ego=make_mount((0.81, -0.32, 1.73)),
        )
    if name == "vlp16":
        return LidarConfig(
            name=name,
            beams=16,
            elevation_min_deg=-15.0,
            elevation_max_deg=15.0,
            azimuth_steps=1800,
            max_range=100.0,
            min_range=0.5,
            range_noise_std=0.03,
            sensor_to_ego=make_mount((1.0, 0.0, 1.80)),
        )
    raise ValueError(f"unknown LiDAR preset {name!r}; choose one of {LIDAR_PRESETS}")


# --------------------------------------------------------------------------------------
# Ray casting.
# --------------------------------------------------------------------------------------

_LOW32 = np.int64(0xFFFFFFFF)
_ANGLE_PAD = 1e-5  # radians added to every culling interval (float32 slab-test slop)
_BOX_CORNER_SIGNS = np.array(
    [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
)
# The 12 edges of a box as pairs of corner indices into _BOX_CORNER_SIGNS.
_BOX_EDGES = np.array(
    [
        (i, j)
        for i in range(8)
        for j in range(i + 1, 8)
        if int(np.sum(_BOX_CORNER_SIGNS[i] != _BOX_CORNER_SIGNS[j])) == 1
    ],
    dtype=np.int64,
)


def lidar_sensor_to_world(state: FrameState, config: LidarConfig) -> np.ndarray:
    """(4, 4) float64 LiDAR->world transform, ``state.ego_to_world @ config.sensor_to_ego``."""
    return np.asarray(state.ego_to_world, dtype=np.float64) @ config.sensor_to_ego


@dataclass
class _BoxFrames:
    """Per-primitive quantities for the slab test (M primitives).

    ``lo``/``hi`` are the slab planes relative to the ray origin expressed in the box frame:
    a point ``o + t d`` is inside iff ``lo <= t * R^T d <= hi`` componentwise.
    """

    cos: np.ndarray  # (M,) cos(yaw)
    sin: np.ndarray  # (M,) sin(yaw)
    lo: np.ndarray  # (M, 3)
    hi: np.ndarray  # (M, 3)
    dist_min: np.ndarray  # (M,) Euclidean distance from the ray origin to the box (0 inside)


def _box_frames(boxes: np.ndarray, origin: np.ndarray) -> _BoxFrames:
    """Slab planes of ``boxes`` (M, 7) world for rays from ``origin`` (3,) world."""
    yaw = boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    rel = origin[None, :] - boxes[:, :3]
    # Ray origin in the box frame (rotate world offset by -yaw).
    ox = c * rel[:, 0] + s * rel[:, 1]
    oy = -s * rel[:, 0] + c * rel[:, 1]
    o = np.stack([ox, oy, rel[:, 2]], axis=1)
    half = 0.5 * boxes[:, 3:6]
    gap = np.maximum(np.abs(o) - half, 0.0)
    return _BoxFrames(
        cos=c,
        sin=s,
        lo=-half - o,
        hi=half - o,
        dist_min=np.sqrt(np.sum(gap * gap, axis=1)),
    )


def _slab_f32(
    dx: np.ndarray,
    dy: np.ndarray,
    invz: np.ndarray,
    c: np.ndarray,
    s: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ray/box slab test, float32, one entry per (ray, box) pair.

    Args:
        dx, dy: (P,) world-frame ray direction x, y. invz: (P,) 1 / world direction z.
        c, s: (P,) cos / sin of the box yaw. lo, hi: (3, P) slab planes (see _BoxFrames).

    Returns:
        (hit (P,) bool, t (P,) float32 first-surface range; inner exit face if the ray starts
        inside the box). ``t`` is only meaningful where ``hit``.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ix = 1.0 / (c * dx + s * dy)
        iy = 1.0 / (c * dy - s * dx)
        ax = lo[0] * ix
        bx = hi[0] * ix
        ay = lo[1] * iy
        by = hi[1] * iy
        az = lo[2] * invz
        bz = hi[2] * invz
        tnear = np.maximum(np.maximum(np.minimum(ax, bx), np.minimum(ay, by)), np.minimum(az, bz))
        tfar = np.minimum(np.minimum(np.maximum(ax, bx), np.maximum(ay, by)), np.maximum(az, bz))
        hit = (tnear <= tfar) & (tfar >= 0)
        t = np.where(tnear >= 0, tnear, tfar)
    return hit, t


def _pack_keys(t: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """Order-preserving int64 key ``(float32 bits of t >= 0) << 32 | prim``."""
    t32 = np.asarray(t, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    return (t32.view(np.int32).astype(np.int64) << 32) | prim.astype(np.int64)


@dataclass
class _RayGrid:
    """The rays of one revolution, ring-major: ray ``r * A + k`` is ring ``r``, column ``k``."""

    beams: int
    steps: int
    elev: np.ndarray  # (B,) nominal ring elevations, ascending (sensor frame)
    azim: np.ndarray  # (A,) nominal column azimuths (sensor frame)
    dirs_sensor: np.ndarray  # (R, 3) float64 unit directions in the sensor frame (jittered)
    dirs_world: np.ndarray  # (R, 3) float64 unit directions in the world frame
    origin: np.ndarray  # (3,) ray origin, world
    pad_elev: float  # culling pad: max |elevation jitter| + slop
    pad_azim: float  # culling pad: max |azimuth jitter| + slop


def _make_rays(config: LidarConfig, s2w: np.ndarray, rng: np.random.Generator) -> _RayGrid:
    """Ray directions for one revolution (draws the beam jitter from ``rng``)."""
    elev = config.elevations_rad()
    azim = config.azimuths_rad()
    b, a = elev.size, azim.size
    e = np.repeat(elev, a)
    p = np.tile(azim, b)
    pad_e = pad_a = _ANGLE_PAD
    if config.beam_jitter_deg > 0.0:
        sigma = np.deg2rad(config.beam_jitter_deg)
        je = rng.normal(0.0, sigma, e.size)
        ja = rng.normal(0.0, sigma, e.size)
        e = e + je
        p = p + ja
        pad_e += float(np.max(np.abs(je)))
        pad_a += float(np.max(np.abs(ja)))
    ce = np.cos(e)
    d_s = np.stack([ce * np.cos(p), ce * np.sin(p), np.sin(e)], axis=1)
    d_w = d_s @ s2w[:3, :3].T
    return _RayGrid(
        beams=b,
        steps=a,
        elev=elev,
        azim=azim,
        dirs_sensor=d_s,
        dirs_world=d_w,
        origin=s2w[:3, 3].copy(),
        pad_elev=pad_e,
        pad_azim=pad_a,
    )


def _angular_footprint(
    boxes: np.ndarray, s2w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Conservative sensor-frame angular footprint of each box.

    Args:
        boxes: (M, 7) world boxes. s2w: (4, 4) sensor->world.

    Returns:
        ``az_start, az_span, full, el_lo, el_hi`` (all (M,)): the azimuth interval
        ``[az_start, az_start + az_span]`` (exact, radians, may extend past +pi), ``full`` true
        when the box's projection on the sensor xy-plane contains (or nearly touches) the
        sensor's z-axis so every azimuth is needed, and an elevation interval containing the
        elevation of every point of the box. Valid for any sensor orientation.
    """
    m = boxes.shape[0]
    yaw = boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    local = 0.5 * boxes[:, None, 3:6] * _BOX_CORNER_SIGNS[None]  # (M, 8, 3)
    corners = np.empty_like(local)
    corners[..., 0] = boxes[:, None, 0] + c[:, None] * local[..., 0] - s[:, None] * local[..., 1]
    corners[..., 1] = boxes[:, None, 1] + s[:, None] * local[..., 0] + c[:, None] * local[..., 1]
    corners[..., 2] = boxes[:, None, 2] + local[..., 2]
    rot = s2w[:3, :3]
    cs = (corners - s2w[:3, 3]) @ rot  # world -> sensor: R^T (p - o)
    x, y, z = cs[..., 0], cs[..., 1], cs[..., 2]

    # Azimuth interval: complement of the largest angular gap between corner azimuths.
    ang = np.sort(np.arctan2(y, x), axis=1)
    gaps = np.empty_like(ang)
    gaps[:, :-1] = ang[:, 1:] - ang[:, :-1]
    gaps[:, -1] = ang[:, 0] + 2.0 * np.pi - ang[:, -1]
    gi = np.argmax(gaps, axis=1)
    gmax = gaps[np.arange(m), gi]
    full = gmax <= np.pi + 1e-9
    az_start = ang[np.arange(m), (gi + 1) % 8]
    az_span = 2.0 * np.pi - gmax

    # Horizontal distance range from the sensor z-axis.
    rho_max = np.max(np.hypot(x, y), axis=1)
    p0 = cs[:, _BOX_EDGES[:, 0], :2]  # (M, 12, 2)
    p1 = cs[:, _BOX_EDGES[:, 1], :2]
    seg = p1 - p0
    seg_len2 = np.sum(seg * seg, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.clip(-np.sum(p0 * seg, axis=2) / seg_len2, 0.0, 1.0)
    u = np.where(seg_len2 > 0, u, 0.0)
    near = p0 + u[..., None] * seg
    rho_min = np.min(np.hypot(near[..., 0], near[..., 1]), axis=1)
    rho_min = np.where(full, 0.0, rho_min)

    zmin, zmax = np.min(z, axis=1), np.max(z, axis=1)
    el_lo = np.where(zmin >= 0, np.arctan2(zmin, rho_max), np.arctan2(zmin, rho_min))
    el_hi = np.where(zmax >= 0, np.arctan2(zmax, rho_min), np.arctan2(zmax, rho_max))
    return az_start, az_span, full, el_lo, el_hi


def _candidate_runs(
    grid: _RayGrid, boxes: np.ndarray, s2w: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of consecutive ray indices each primitive must be tested against.

    Args:
        active: (M,) bool, primitives to consider (e.g. within range).

    Returns:
        ``run_box (K,), run_start (K,), run_len (K,)`` int64: primitive ``run_box[i]`` must be
        tested against rays ``run_start[i] .. run_start[i] + run_len[i] - 1``. Runs are
        grouped by primitive (ascending index).
    """
    a = grid.steps
    az_start, az_span, full, el_lo, el_hi = _angular_footprint(boxes, s2w)
    step = 2.0 * np.pi / a
    # Columns k with azim_k = -pi + (k + .5) step inside the padded interval (unwrapped k).
    k0 = np.ceil((az_start - grid.pad_azim + np.pi) / step - 0.5)
    k1 = np.floor((az_start + az_span + grid.pad_azim + np.pi) / step - 0.5)
    ncol = k1 - k0 + 1
    full = full | (ncol >= a)
    k0 = np.where(full, 0, k0).astype(np.int64)
    ncol = np.where(full, a, np.maximum(ncol, 0)).astype(np.int64)
    k0 = np.mod(k0, a)
    r0 = np.searchsorted(grid.elev, el_lo - grid.pad_elev, side="left")
    r1 = np.searchsorted(grid.elev, el_hi + grid.pad_elev, side="right")
    nring = np.maximum(r1 - r0, 0)
    keep = active & (ncol > 0) & (nring > 0)
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    k0, ncol, r0, nring = k0[idx], ncol[idx], r0[idx], nring[idx]
    # Split column ranges that wrap past the last column into two non-wrapping pieces.
    first_len = np.minimum(ncol, a - k0)
    second_len = ncol - first_len
    pieces_box = np.concatenate([idx, idx])
    pieces_k0 = np.concatenate([k0, np.zeros_like(k0)])
    pieces_len = np.concatenate([first_len, second_len])
    pieces_r0 = np.concatenate([r0, r0])
    pieces_nr = np.concatenate([nring, nring])
    ok = pieces_len > 0
    order = np.argsort(pieces_box[ok], kind="stable")
    pieces_box, pieces_k0, pieces_len, pieces_r0, pieces_nr = (
        arr[ok][order] for arr in (pieces_box, pieces_k0, pieces_len, pieces_r0, pieces_nr)
    )
    # One run per (piece, ring).
    run_piece = np.repeat(np.arange(pieces_box.size), pieces_nr)
    ring_off = np.arange(run_piece.size) - np.repeat(np.cumsum(pieces_nr) - pieces_nr, pieces_nr)
    ring = pieces_r0[run_piece] + ring_off
    run_box = pieces_box[run_piece]
    run_start = ring * a + pieces_k0[run_piece]
    run_len = pieces_len[run_piece]
    return run_box, run_start, run_len


def _cast_rays(
    grid: _RayGrid,
    boxes: np.ndarray,
    s2w: np.ndarray,
    max_range: float,
    method: Literal["culled", "brute"],
    chunk_pairs: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First hit of every ray against ``boxes`` and the ground plane z = 0.

    Returns:
        ``prim (R,) int64`` (box index, ``M`` for ground, ``-1`` for no hit within about
        ``max_range``), ``t (R,) float64`` range (metres, world == sensor scale),
        ``cos_inc (R,) float64`` |cos| of the incidence angle, ``normal_axis (R,) int8``
        (0/1/2 box axis of the hit face, 3 for ground, -1 for none).
    """
    if method not in ("culled", "brute"):
        raise ValueError(f"unknown method {method!r}")
    m = boxes.shape[0]
    r_total = grid.beams * grid.steps
    d_w = grid.dirs_world
    o = grid.origin
    cap = float(np.float32(max_range * (1.0 + 1e-6) + 1e-3))

    # Initial best key: ground hit (prim M) or the "nothing before max range" sentinel (M+1).
    best = np.full(r_total, _pack_keys(np.array([cap]), np.array([m + 1]))[0], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d_w[:, 2] < 0, -o[2] / d_w[:, 2], np.inf)
    g = np.flatnonzero((t_ground <= cap) & (t_ground >= 0))
    best[g] = _pack_keys(t_ground[g], np.full(g.size, m))

    if m > 0:
        frames = _box_frames(boxes, o)
        dx32 = d_w[:, 0].astype(np.float32)
        dy32 = d_w[:, 1].astype(np.float32)
        with np.errstate(divide="ignore"):
            invz32 = (1.0 / d_w[:, 2]).astype(np.float32)
        c32 = frames.cos.astype(np.float32)
        s32 = frames.sin.astype(np.float32)
        lo32 = frames.lo.T.astype(np.float32)  # (3, M)
        hi32 = frames.hi.T.astype(np.float32)
        active = frames.dist_min <= cap

        if method == "brute":
            _cast_brute(best, dx32, dy32, invz32, c32, s32, lo32, hi32, active, chunk_pairs)
        else:
            _cast_culled(
                best, grid, boxes, s2w, frames, dx32, dy32, invz32, c32, s32, lo32, hi32,
                active, chunk_pairs,
            )

    prim = (best & _LOW32).astype(np.int64)
    prim[prim == m + 1] = -1
    t = np.full(r_total, np.inf)
    cos_inc = np.zeros(r_total)
    axis = np.full(r_total, -1, dtype=np.int8)
    gi = np.flatnonzero(prim == m)
    t[gi] = t_ground[gi]
    cos_inc[gi] = np.abs(d_w[gi, 2])
    axis[gi] = 3
    bi = np.flatnonzero((prim >= 0) & (prim < m))
    if bi.size:
        t_b, cos_b, ax_b = _refine_box_hits(d_w[bi], boxes[prim[bi]], o)
        t[bi] = t_b
        cos_inc[bi] = cos_b
        axis[bi] = ax_b
    return prim, t, cos_inc, axis


def _cast_brute(
    best: np.ndarray,
    dx32: np.ndarray,
    dy32: np.ndarray,
    invz32: np.ndarray,
    c32: np.ndarray,
    s32: np.ndarray,
    lo32: np.ndarray,
    hi32: np.ndarray,
    active: np.ndarray,
    chunk_pairs: int,
) -> None:
    """Every ray against every (in-range) primitive, same kernel; updates ``best`` in place."""
    r_total = best.size
    boxes_per_chunk = max(1, chunk_pairs // r_total)
    boxes_idx = np.flatnonzero(active)
    all_rays = np.arange(r_total, dtype=np.int64)
    for i in range(0, boxes_idx.size, boxes_per_chunk):
        bsel = boxes_idx[i : i + boxes_per_chunk]
        box = np.repeat(bsel, r_total)
        ray = np.tile(all_rays, bsel.size)
        hit, t = _slab_f32(
            dx32[ray], dy32[ray], invz32[ray], c32[box], s32[box], lo32[:, box], hi32[:, box]
        )
        h = np.flatnonzero(hit)
        np.minimum.at(best, ray[h], _pack_keys(t[h], box[h]))


def _cast_culled(
    best: np.ndarray,
    grid: _RayGrid,
    boxes: np.ndarray,
    s2w: np.ndarray,
    frames: _BoxFrames,
    dx32: np.ndarray,
    dy32: np.ndarray,
    invz32: np.ndarray,
    c32: np.ndarray,
    s32: np.ndarray,
    lo32: np.ndarray,
    hi32: np.ndarray,
    active: np.ndarray,
    chunk_pairs: int,
) -> None:
    """Angular-footprint culling, nearest primitives first; updates ``best`` in place."""
    run_box, run_start, run_len = _candidate_runs(grid, boxes, s2w, active)
    if run_box.size == 0:
        return
    # Process primitives nearest first so that far pairs can be skipped once a ray is hit.
    near_order = np.argsort(frames.dist_min, kind="stable")
    rank = np.empty_like(near_order)
    rank[near_order] = np.arange(near_order.size)
    order = np.argsort(rank[run_box], kind="stable")
    run_box, run_start, run_len = run_box[order], run_start[order], run_len[order]
    # Skip threshold per primitive: a pair cannot win if the primitive's nearest point is
    # farther than the ray's best hit so far (float32 slop margin).
    dmin32 = (frames.dist_min * (1.0 - 1e-5) - 1e-4).astype(np.float32)

    cum = np.cumsum(run_len)
    n_runs = run_box.size
    lo_run = 0
    while lo_run < n_runs:
        base = cum[lo_run - 1] if lo_run > 0 else 0
        hi_run = int(np.searchsorted(cum, base + chunk_pairs, side="right"))
        hi_run = max(hi_run, lo_run + 1)
        lens = run_len[lo_run:hi_run]
        total = int(lens.sum())
        offs = np.cumsum(lens) - lens
        ray = np.repeat(run_start[lo_run:hi_run] - offs, lens) + np.arange(total, dtype=np.int64)
        box = np.repeat(run_box[lo_run:hi_run], lens)
        # Occlusion pruning against the best hit so far.
        best_t = (best[ray] >> 32).astype(np.int32).view(np.float32)
        keep = np.flatnonzero(dmin32[box] <= best_t)
        if keep.size < total:
            ray, box = ray[keep], box[keep]
        if ray.size:
            hit, t = _slab_f32(
                dx32[ray], dy32[ray], invz32[ray], c32[box], s32[box], lo32[:, box], hi32[:, box]
            )
            h = np.flatnonzero(hit)
            np.minimum.at(best, ray[h], _pack_keys(t[h], box[h]))
        lo_run = hi_run


def _refine_box_hits(
    d: np.ndarray, boxes: np.ndarray, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 slab test of one ray per box (the winners).

    Args:
        d: (H, 3) world ray directions; boxes: (H, 7) the hit boxes; origin: (3,) world.

    Returns:
        ``t (H,)`` range, ``cos (H,)`` |cos incidence| on the hit face, ``axis (H,) int8``.
    """
    yaw = boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    rx, ry, rz = (origin[k] - boxes[:, k] for k in range(3))
    o = (c * rx + s * ry, -s * rx + c * ry, rz)
    dl = (c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2])
    tmin, tmax = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            half = 0.5 * boxes[:, 3 + k]
            inv = 1.0 / dl[k]
            a = (-half - o[k]) * inv
            b = (half - o[k]) * inv
            tmin.append(np.fmin(a, b))
            tmax.append(np.fmax(a, b))
    tnear = np.fmax(np.fmax(tmin[0], tmin[1]), tmin[2])
    tfar = np.fmin(np.fmin(tmax[0], tmax[1]), tmax[2])
    inside = tnear < 0
    t = np.where(inside, tfar, tnear)
    # Hit face: the axis that set tnear (entering) or tfar (starting inside the box).
    axis = np.where(tmin[1] == tnear, 1, 0)
    axis = np.where(tmin[2] == tnear, 2, axis)
    axis_in = np.where(tmax[1] == tfar, 1, 0)
    axis_in = np.where(tmax[2] == tfar, 2, axis_in)
    axis = np.where(inside, axis_in, axis).astype(np.int8)
    # A float32 winner may sit a hair outside the float64 interval: clamp to a sane range.
    t = np.maximum(t, 0.0)
    cos = np.abs(np.where(axis == 0, dl[0], np.where(axis == 1, dl[1], dl[2])))
    return t, cos, axis


# --------------------------------------------------------------------------------------
# Public scan API.
# --------------------------------------------------------------------------------------


@dataclass
class LidarScan:
    """One revolution, with per-point labels (N returned points).

    Attributes:
        points: (N, 5) float32 ``x, y, z`` (LiDAR frame, m), intensity (0-255), ring.
        instance: (N,) int32 ``primitives.instance`` of the hit primitive, -1 for ground and
            unannotated primitives.
        primitive: (N,) int64 index of the hit primitive, -1 for the ground.
        material: (N,) int16 :class:`Material` of the hit surface.
        column: (N,) int32 azimuth column (firing index) of each point.
        range_m: (N,) float64 measured (noisy) range.
    """

    points: np.ndarray
    instance: np.ndarray
    primitive: np.ndarray
    material: np.ndarray
    column: np.ndarray
    range_m: np.ndarray


def scan_lidar_detailed(
    state: FrameState,
    config: LidarConfig,
    rng: np.random.Generator,
    *,
    method: Literal["culled", "brute"] = "culled",
) -> LidarScan:
    """Simulate one LiDAR revolution of ``state`` and return points with labels.

    Args:
        state: the scene at one instant (world frame geometry, ego pose).
        config: the sensor.
        rng: random generator for jitter, noise and dropout (advanced deterministically).
        method: ``"culled"`` (fast, default) or ``"brute"`` (every ray against every
            primitive; identical output, for tests and benchmarks).

    Returns:
        :class:`LidarScan` with points in firing order (column, then ring ascending).
    """
    s2w = lidar_sensor_to_world(state, config)
    grid = _make_rays(config, s2w, rng)
    prims = state.primitives
    boxes = np.asarray(prims.boxes, dtype=np.float64).reshape(-1, 7)
    m = boxes.shape[0]
    prim, t, cos_inc, _axis = _cast_rays(
        grid, boxes, s2w, config.max_range, method, max(1024, int(config.chunk_pairs))
    )

    # Rays with a surface hit, in firing order (column-major over the ring x column grid).
    b, a = grid.beams, grid.steps
    hit_grid = (prim >= 0).reshape(b, a)
    flat_cm = np.flatnonzero(hit_grid.T)  # index = column * B + ring
    ring = (flat_cm % b).astype(np.int64)
    col = (flat_cm // b).astype(np.int64)
    ray = ring * a + col
    p = prim[ray]
    n = ray.size

    is_ground = p == m
    material = np.empty(n, dtype=np.int16)
    if m:
        material[~is_ground] = np.asarray(prims.material)[p[~is_ground]]
    if np.any(is_ground):
        gi = np.flatnonzero(is_ground)
        xy = grid.origin[None, :2] + t[ray[gi], None] * grid.dirs_world[ray[gi], :2]
        if state.ground is not None:
            material[gi] = state.ground.material_at(xy)
        else:
            material[gi] = int(Material.ROAD)

    refl = _material_table(MATERIAL_REFLECTIVITY)[material]
    retro = _material_table(MATERIAL_RETRO)[material]
    mat_drop = _material_table(MATERIAL_DROPOUT)[material]
    cos = np.clip(cos_inc[ray], 0.0, 1.0)
    true_t = t[ray]

    # Noise and dropout, drawn in a fixed order from rng.
    if config.range_noise_std > 0:
        r_meas = true_t + rng.normal(0.0, config.range_noise_std, n)
    else:
        r_meas = true_t.copy()
    signal = refl * (retro + (1.0 - retro) * np.sqrt(cos))
    signal = signal / (1.0 + (true_t / config.detection_falloff_m) ** 2)
    p_weak = config.weak_return_dropout * np.clip(
        1.0 - signal / max(config.weak_return_threshold, 1e-12), 0.0, 1.0
    )
    p_keep = (1.0 - config.dropout_prob) * (1.0 - mat_drop) * (1.0 - p_weak)
    keep = rng.random(n) < p_keep
    intensity = 255.0 * refl * (retro + (1.0 - retro) * cos)
    intensity = intensity / (1.0 + (true_t / config.intensity_falloff_m) ** 2)
    if config.intensity_noise_std > 0:
        intensity = intensity + rng.normal(0.0, config.intensity_noise_std, n)
    intensity = np.clip(np.rint(intensity), 0.0, 255.0)
    keep &= (r_meas >= config.min_range) & (r_meas <= config.max_range)

    k = np.flatnonzero(keep)
    ray_k = ray[k]
    xyz = r_meas[k, None] * grid.dirs_sensor[ray_k]
    points = np.empty((k.size, 5), dtype=np.float32)
    points[:, :3] = xyz
    points[:, 3] = intensity[k]
    points[:, 4] = ring[k]
    pk = p[k]
    box_hit = pk < m
    primitive = np.where(box_hit, pk, -1).astype(np.int64)
    instance = np.full(k.size, -1, dtype=np.int32)
    if m:
        instance[box_hit] = np.asarray(prims.instance, dtype=np.int32)[pk[box_hit]]
    return LidarScan(
        points=points,
        instance=instance,
        primitive=primitive,
        material=material[k],
        column=col[k].astype(np.int32),
        range_m=r_meas[k],
    )


def scan_lidar_with_labels(
    state: FrameState,
    config: LidarConfig,
    rng: np.random.Generator,
    *,
    method: Literal["culled", "brute"] = "culled",
) -> tuple[np.ndarray, np.ndarray]:
    """One revolution: ``(points (N, 5) float32, instance (N,) int32)``.

    ``points`` as :func:`scan_lidar`; ``instance[i]`` is the ``primitives.instance`` of the
    primitive that point ``i`` hit (an index into ``state.objects``), -1 for the ground and
    for static or unannotated primitives.
    """
    scan = scan_lidar_detailed(state, config, rng, method=method)
    return scan.points, scan.instance


def scan_lidar(
    state: FrameState,
    config: LidarConfig,
    rng: np.random.Generator,
    *,
    method: Literal["culled", "brute"] = "culled",
) -> np.ndarray:
    """One LiDAR revolution of ``state``.

    Args:
        state: the scene at one instant.
        config: the sensor (beams, ranges, noise, mount).
        rng: random generator for jitter, noise and dropout; the same inputs and generator
            state give byte-identical output.
        method: ``"culled"`` (default) or ``"brute"`` (reference, identical output).

    Returns:
        (N, 5) float32: ``x, y, z`` in the LiDAR frame (m), intensity (whole numbers in
        [0, 255]), ring index (0 = lowest beam), in firing order (column, then ring).
    """
    return scan_lidar_detailed(state, config, rng, method=method).points
