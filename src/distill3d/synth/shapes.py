"""Composite shape builders for SynthDrive: objects and scenery as yaw-only cuboids.

Every builder returns a :class:`Shape` in the object's **local frame**: x forward, y left,
z up, origin on the ground (z = 0) at the object's centre. A primitive row is
``(x, y, z, l, w, h, yaw)`` with ``(x, y, z)`` its geometric centre in that frame and ``yaw``
its rotation about local z (most parts have yaw 0). ``Shape.tight_box`` gives the tight box
(geometric centre and ``l, w, h``) of the primitives that belong to the annotation.

Conventions:

* Annotated builders (car ... barrier) honour the requested ``(l, w, h)`` exactly where the
  shape allows it (cars, vans, trucks, buses, trailers, cones, barriers, the length and width of
  cycles): the tight box of the in-box primitives is then ``[-l/2, l/2] x [-w/2, w/2] x [0, h]``.
  Pedestrians, riders and construction vehicles keep their natural proportions, so their tight
  box only approximates the request. The world re-centres every shape with :func:`recenter`.
* Side mirrors are built with ``in_box = False``: nuScenes boxes exclude them (the world emits
  them as unannotated primitives).
* Walking pedestrians are animated: a primitive's local x is shifted by
  ``swing * sin(phase)``; legs and arms swing in opposite pairs so that the tight box stays
  centred (its length changes with the stride, its centre does not).
* Scenery builders (buildings, walls, poles, trees, clutter) follow the same frame. For
  things with a front (buildings, walls, benches, shelters) the front faces local **-y**
  (towards the street when placed with +y pointing into the lot).

All sizes in metres, float64; colours RGB uint8; every random draw from the caller's
``np.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distill3d.synth.types import Material

__all__ = [
    "LARGE_CLUTTER",
    "SMALL_CLUTTER",
    "Shape",
    "build_barrier",
    "build_bench",
    "build_bicycle",
    "build_bike_rack",
    "build_building",
    "build_bus",
    "build_bus_shelter",
    "build_bush",
    "build_car",
    "build_construction_vehicle",
    "build_fence",
    "build_hedge",
    "build_material_pile",
    "build_motorcycle",
    "build_pedestrian",
    "build_portable_toilet",
    "build_shipping_container",
    "build_sign",
    "build_street_light",
    "build_traffic_cone",
    "build_traffic_light",
    "build_trailer",
    "build_tree",
    "build_truck",
    "build_van",
    "build_wall",
    "concat_shapes",
    "local_half_extents",
    "place",
    "random_paint",
    "recenter",
    "tight_box_of",
]

M = Material


# --------------------------------------------------------------------------------------------
# Shape container and geometry helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Shape:
    """A composite object in its local frame.

    Attributes:
        boxes: (K, 7) float64 ``(x, y, z, l, w, h, yaw)`` local frame, geometric centres.
        material: (K,) int16 :class:`Material` values.
        color: (K, 3) uint8 RGB albedo.
        swing: (K,) float64 gait amplitude: local x offset ``swing * sin(phase)``; zeros for
            rigid shapes.
        in_box: (K,) bool, whether the primitive belongs to the annotated box (False for side
            mirrors).
    """

    boxes: np.ndarray
    material: np.ndarray
    color: np.ndarray
    swing: np.ndarray
    in_box: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def animated(self) -> bool:
        """True if any primitive swings with the gait phase."""
        return bool(np.any(self.swing != 0.0))

    def posed(self, phase: float = 0.0) -> np.ndarray:
        """(K, 7) boxes at gait ``phase`` (radians)."""
        boxes = self.boxes.copy()
        if self.animated:
            boxes[:, 0] += self.swing * np.sin(phase)
        return boxes

    def tight_box(self, phase: float = 0.0) -> np.ndarray:
        """(6,) ``(cx, cy, cz, l, w, h)`` local tight box of the in-box primitives."""
        return tight_box_of(self.posed(phase)[self.in_box])


def local_half_extents(boxes: np.ndarray) -> np.ndarray:
    """(K, 3) half extents along the parent frame's axes of boxes (K, 7) rotated by yaw."""
    c = np.abs(np.cos(boxes[:, 6]))
    s = np.abs(np.sin(boxes[:, 6]))
    hl = boxes[:, 3] * 0.5
    hw = boxes[:, 4] * 0.5
    return np.stack([hl * c + hw * s, hl * s + hw * c, boxes[:, 5] * 0.5], axis=1)


def tight_box_of(boxes: np.ndarray) -> np.ndarray:
    """(6,) ``(cx, cy, cz, l, w, h)`` axis-aligned tight box of boxes (K, 7) in their frame."""
    ext = local_half_extents(boxes)
    lo = (boxes[:, :3] - ext).min(axis=0)
    hi = (boxes[:, :3] + ext).max(axis=0)
    return np.concatenate([(lo + hi) * 0.5, hi - lo])


def recenter(shape: Shape) -> Shape:
    """Shift ``shape`` so that its rest-pose tight box is centred on x = y = 0 with bottom z = 0."""
    tb = shape.tight_box(0.0)
    boxes = shape.boxes.copy()
    boxes[:, 0] -= tb[0]
    boxes[:, 1] -= tb[1]
    boxes[:, 2] -= tb[2] - tb[5] * 0.5
    return Shape(boxes, shape.material.copy(), shape.color.copy(), shape.swing.copy(),
                 shape.in_box.copy())


def place(shape: Shape, x: float, y: float, yaw: float, z: float = 0.0,
          phase: float = 0.0) -> np.ndarray:
    """(K, 7) boxes of ``shape`` posed at ``phase`` and placed at ``(x, y, z)`` with ``yaw``.

    The result is in the parent frame (usually the world or map frame); yaws are not wrapped.
    """
    b = shape.posed(phase)
    c, s = np.cos(yaw), np.sin(yaw)
    out = b.copy()
    out[:, 0] = x + c * b[:, 0] - s * b[:, 1]
    out[:, 1] = y + s * b[:, 0] + c * b[:, 1]
    out[:, 2] = z + b[:, 2]
    out[:, 6] = b[:, 6] + yaw
    return out


def concat_shapes(shapes: Sequence[Shape], poses: Sequence[tuple[float, float, float]]) -> Shape:
    """One shape made of ``shapes`` each placed at ``(x, y, yaw)`` in a common local frame."""
    boxes = [place(s, *p) for s, p in zip(shapes, poses)]
    return Shape(
        np.concatenate(boxes, axis=0),
        np.concatenate([s.material for s in shapes]),
        np.concatenate([s.color for s in shapes], axis=0),
        np.concatenate([s.swing for s in shapes]),
        np.concatenate([s.in_box for s in shapes]),
    )


class _Parts:
    """Accumulates primitives given by their *bottom* z (``z0``) for readability."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, ...]] = []
        self.mats: list[int] = []
        self.cols: list[tuple[int, int, int]] = []
        self.swings: list[float] = []
        self.inbox: list[bool] = []

    def add(self, x: float, y: float, z0: float, l: float, w: float, h: float, mat: int,
            color: Sequence[int] | np.ndarray, yaw: float = 0.0, swing: float = 0.0,
            in_box: bool = True) -> None:
        """Add a cuboid centred at ``(x, y)`` spanning ``z0 .. z0 + h``."""
        if l <= 0 or w <= 0 or h <= 0:
            raise ValueError(f"degenerate part l={l} w={w} h={h}")
        self.rows.append((float(x), float(y), float(z0) + float(h) * 0.5, float(l), float(w),
                          float(h), float(yaw)))
        self.mats.append(int(mat))
        c = np.asarray(color).astype(np.int64)
        self.cols.append((int(c[0]), int(c[1]), int(c[2])))
        self.swings.append(float(swing))
        self.inbox.append(bool(in_box))

    def span(self, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, mat: int,
             color: Sequence[int] | np.ndarray, swing: float = 0.0, in_box: bool = True) -> None:
        """Add an axis-aligned cuboid given by its extents."""
        self.add((x0 + x1) * 0.5, (y0 + y1) * 0.5, z0, x1 - x0, y1 - y0, z1 - z0, mat, color,
                 swing=swing, in_box=in_box)

    def shape(self) -> Shape:
        return Shape(
            np.array(self.rows, dtype=np.float64).reshape(-1, 7),
            np.array(self.mats, dtype=np.int16),
            np.clip(np.array(self.cols, dtype=np.int64), 0, 255).astype(np.uint8).reshape(-1, 3),
            np.array(self.swings, dtype=np.float64),
            np.array(self.inbox, dtype=bool),
        )


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------

_PAINTS = np.array([
    (236, 236, 232), (22, 22, 24), (104, 106, 110), (172, 175, 180), (28, 55, 120),
    (140, 18, 24), (30, 68, 44), (128, 102, 76), (214, 176, 34), (206, 96, 28), (96, 140, 186),
    (60, 32, 70),
], dtype=np.float64)
_PAINT_P = np.array([0.24, 0.19, 0.16, 0.12, 0.08, 0.08, 0.03, 0.03, 0.02, 0.01, 0.03, 0.01])

_CLOTHES = np.array([
    (25, 25, 28), (32, 40, 70), (90, 90, 95), (225, 225, 220), (150, 30, 35), (40, 80, 150),
    (50, 90, 50), (170, 150, 110), (100, 70, 45), (60, 80, 120), (210, 120, 150),
    (220, 190, 40), (120, 30, 90), (200, 100, 40), (150, 160, 170),
], dtype=np.float64)
_SKIN = np.array([(241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
                  (255, 219, 172), (110, 70, 40)], dtype=np.float64)
_HAIR = np.array([(20, 16, 14), (70, 45, 25), (180, 150, 90), (130, 130, 130), (110, 50, 20)],
                 dtype=np.float64)
_HIVIS = np.array([(255, 120, 10), (205, 235, 30)], dtype=np.float64)
_FACADES = np.array([
    (212, 192, 160), (150, 72, 52), (162, 162, 156), (226, 224, 218), (84, 84, 90),
    (190, 170, 130), (96, 112, 132), (200, 205, 210), (120, 100, 80), (176, 140, 110),
], dtype=np.float64)
_GREENS = np.array([(48, 96, 38), (70, 118, 48), (38, 78, 34), (92, 128, 58), (60, 90, 45)],
                   dtype=np.float64)
_CONSTRUCTION = np.array([(232, 180, 24), (226, 120, 22), (236, 236, 230), (190, 40, 30)],
                         dtype=np.float64)

_GLASS = (38, 48, 58)
_TIRE = (24, 24, 24)
_DARK_METAL = (52, 52, 55)
_METAL = (128, 130, 134)
_CONCRETE = (168, 166, 160)
_ORANGE = (236, 96, 18)
_WHITE = (238, 238, 238)
_RED_LIGHT = (190, 24, 24)
_HEAD_LIGHT = (232, 232, 214)


def _jitter(rng: np.random.Generator, base: Sequence[float] | np.ndarray,
            amount: float = 8.0) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _pick(rng: np.random.Generator, palette: np.ndarray, p: np.ndarray | None = None,
          amount: float = 10.0) -> np.ndarray:
    i = int(rng.choice(len(palette), p=p))
    return _jitter(rng, palette[i], amount)


def random_paint(rng: np.random.Generator) -> np.ndarray:
    """A realistic car paint colour (white, black, grey and silver dominate), (3,) float."""
    return _pick(rng, _PAINTS, _PAINT_P, 8.0)


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


# --------------------------------------------------------------------------------------------
# Vehicles
# --------------------------------------------------------------------------------------------


def _add_lights_and_mirrors(p: _Parts, rng: np.random.Generator, l: float, w: float,
                            z_light: float, mirror_x: float, mirror_z: float,
                            mirrors: bool, paint: np.ndarray) -> None:
    """Head-light bar at +l/2, tail-light bar at -l/2, optional side mirrors (not in box)."""
    lh = _u(rng, 0.08, 0.16)
    p.span(l / 2 - 0.04, l / 2, -w / 2 + 0.12, w / 2 - 0.12, z_light, z_light + lh, M.GLASS,
           _HEAD_LIGHT)
    p.span(-l / 2, -l / 2 + 0.04, -w / 2 + 0.1, w / 2 - 0.1, z_light, z_light + lh,
           M.RETROREFLECTOR, _RED_LIGHT)
    if mirrors:
        m = _u(rng, 0.1, 0.16)
        col = paint if rng.random() < 0.6 else np.array(_DARK_METAL, dtype=np.float64)
        for sgn in (-1.0, 1.0):
            p.add(mirror_x, sgn * (w / 2 + m / 2), mirror_z, 0.12, m, 0.12, M.VEHICLE_PAINT, col,
                  in_box=False)


def _wheels(p: _Parts, xs: Sequence[float], y_abs: float, r: float, tw: float) -> None:
    for x in xs:
        for sgn in (-1.0, 1.0):
            p.add(x, sgn * y_abs, 0.0, 2 * r, tw, 2 * r, M.TIRE, _TIRE)


def build_car(rng: np.random.Generator, size: Sequence[float], paint: np.ndarray | None = None,
              style: str | None = None, mirrors: bool | None = None) -> Shape:
    """Passenger car: body, glass cabin set back and narrower, roof, 4 tyres, light bars and
    optional side mirrors. Tight box exactly ``size = (l, w, h)``.

    ``style`` is one of ``"sedan"``, ``"hatchback"``, ``"suv"``, ``"wagon"`` (random if None).
    """
    l, w, h = (float(v) for v in size)
    paint = random_paint(rng) if paint is None else np.asarray(paint, dtype=np.float64)
    if style is None:
        p_suv = 0.55 if h > 1.78 else 0.12
        styles = ["sedan", "hatchback", "suv", "wagon"]
        probs = np.array([0.55, 0.25, 0.0, 0.2]) * (1 - p_suv)
        probs[2] = p_suv
        style = styles[int(rng.choice(4, p=probs / probs.sum()))]
    if mirrors is None:
        mirrors = bool(rng.random() < 0.8)
    r = float(np.clip(0.30 + 0.12 * (h - 1.5) + rng.normal(0, 0.012), 0.27, 0.40))
    tw = _u(rng, 0.18, 0.25)
    clear = _u(rng, 0.17, 0.26) if style == "suv" else _u(rng, 0.11, 0.17)
    belt = h * (_u(rng, 0.52, 0.58) if style == "suv" else _u(rng, 0.50, 0.57))
    belt = max(belt, clear + 0.35, 2 * r * 0.85)
    roof_t = _u(rng, 0.05, 0.08)
    belt = min(belt, h - roof_t - 0.25)
    p = _Parts()
    p.span(-l / 2 + 0.02, l / 2 - 0.02, -w / 2, w / 2, clear, belt, M.VEHICLE_PAINT, paint)
    if style == "sedan":
        lc = l * _u(rng, 0.42, 0.50)
        xc = -l * _u(rng, 0.02, 0.09)
    elif style == "hatchback":
        lc = l * _u(rng, 0.50, 0.57)
        xc = -l / 2 + _u(rng, 0.12, 0.25) + lc / 2
    else:
        lc = l * _u(rng, 0.56, 0.66)
        xc = -l / 2 + _u(rng, 0.05, 0.15) + lc / 2
    wc = w - 2 * _u(rng, 0.05, 0.12)
    p.add(xc, 0.0, belt, lc, wc, h - roof_t - belt, M.GLASS, _jitter(rng, _GLASS, 6))
    roof_col = paint if rng.random() < 0.9 else np.array((20.0, 20.0, 22.0))
    p.add(xc - _u(rng, 0.0, 0.1), 0.0, h - roof_t, lc - _u(rng, 0.15, 0.35), wc - 0.04, roof_t,
          M.VEHICLE_PAINT, roof_col)
    wb = l * _u(rng, 0.57, 0.63)
    shift = _u(rng, -0.04, 0.04) * l
    xf = min(shift + wb / 2, l / 2 - r - 0.05)
    xr = max(shift - wb / 2, -l / 2 + r + 0.05)
    _wheels(p, (xf, xr), w / 2 - tw / 2 - _u(rng, 0.0, 0.03), r, tw)
    _add_lights_and_mirrors(p, rng, l, w, belt - _u(rng, 0.12, 0.2), xc + lc / 2 - 0.12,
                            belt - 0.02, mirrors, paint)
    return p.shape()


def build_van(rng: np.random.Generator, size: Sequence[float],
              paint: np.ndarray | None = None, mirrors: bool | None = None) -> Shape:
    """Van / minibus (nuScenes ``vehicle.car``, KITTI Van): tall box body, short hood,
    windshield, side windows, tyres. Tight box exactly ``size``."""
    l, w, h = (float(v) for v in size)
    paint = random_paint(rng) if paint is None else np.asarray(paint, dtype=np.float64)
    if mirrors is None:
        mirrors = bool(rng.random() < 0.85)
    clear = _u(rng, 0.15, 0.22)
    belt = min(_u(rng, 0.9, 1.05), h - 0.6)
    hood = _u(rng, 0.45, 0.9)
    p = _Parts()
    p.span(-l / 2 + 0.02, l / 2 - 0.02, -w / 2, w / 2, clear, belt, M.VEHICLE_PAINT, paint)
    front = l / 2 - hood
    p.span(-l / 2 + 0.02, front - 0.1, -w / 2 + 0.02, w / 2 - 0.02, belt, h, M.VEHICLE_PAINT,
           paint)
    p.span(front - 0.1, front, -w / 2 + 0.08, w / 2 - 0.08, belt + 0.05, h - 0.12, M.GLASS,
           _jitter(rng, _GLASS, 6))
    win_len = _u(rng, 1.0, min(2.6, l - hood - 1.0))
    p.span(front - 0.1 - win_len, front - 0.15, -w / 2, w / 2, belt + 0.1,
           belt + 0.1 + 0.5 * (h - belt), M.GLASS, _jitter(rng, _GLASS, 6))
    r = _u(rng, 0.31, 0.36)
    tw = _u(rng, 0.19, 0.24)
    wb = l * _u(rng, 0.55, 0.62)
    _wheels(p, (min(wb / 2 + 0.2, l / 2 - r - 0.05), max(-wb / 2 + 0.2, -l / 2 + r + 0.05)),
            w / 2 - tw / 2 - 0.02, r, tw)
    _add_lights_and_mirrors(p, rng, l, w, belt - 0.2, front - 0.25, belt, mirrors, paint)
    return p.shape()


def _truck_cab(p: _Parts, rng: np.random.Generator, l: float, cab_len: float, cab_w: float,
               cab_h: float, paint: np.ndarray) -> None:
    """Cab at the front of a truck: body, windshield reaching +l/2, bumper."""
    x0 = l / 2 - cab_len
    p.span(x0, l / 2 - 0.06, -cab_w / 2, cab_w / 2, _u(rng, 0.45, 0.6), cab_h, M.VEHICLE_PAINT,
           paint)
    p.span(l / 2 - 0.06, l / 2, -cab_w / 2 + 0.1, cab_w / 2 - 0.1, cab_h * 0.55, cab_h - 0.12,
           M.GLASS, _jitter(rng, _GLASS, 6))
    p.span(l / 2 - 0.3, l / 2, -cab_w / 2 + 0.02, cab_w / 2 - 0.02, 0.3, 0.72, M.METAL,
           _DARK_METAL)


def build_truck(rng: np.random.Generator, size: Sequence[float], kind: str | None = None,
                paint: np.ndarray | None = None, mirrors: bool | None = None) -> Shape:
    """Truck (nuScenes ``vehicle.truck``). ``kind``: ``"pickup"``, ``"box"``, ``"flatbed"``,
    ``"dump"`` or ``"tractor"`` (semi-trailer tractor). Random (from the size) if None.
    Tight box exactly ``size`` (for ``pickup``, width and height are taken as given too)."""
    l, w, h = (float(v) for v in size)
    if kind is None:
        if l < 5.8 or h < 2.25:
            kind = "pickup"
        else:
            kind = ["box", "flatbed", "dump", "tractor"][int(rng.choice(4, p=[0.5, 0.2, 0.15,
                                                                            0.15]))]
    paint = random_paint(rng) if paint is None else np.asarray(paint, dtype=np.float64)
    if kind == "pickup":
        return _build_pickup(rng, (l, w, h), paint, mirrors)
    p = _Parts()
    r = _u(rng, 0.45, 0.52)
    cab_w = w - _u(rng, 0.0, 0.15)
    if kind == "tractor":
        cab_len = min(_u(rng, 2.2, 2.9), l * 0.5)
        _truck_cab(p, rng, l, cab_len, w, h, paint)
        x_back = l / 2 - cab_len
        p.span(-l / 2, x_back, -w * 0.3, w * 0.3, 0.6, 1.1, M.METAL, _DARK_METAL)
        p.span(-l / 2 + 0.3, -l / 2 + 1.3, -0.6, 0.6, 1.1, 1.25, M.METAL, _DARK_METAL)
        p.span(x_back - 1.3, x_back - 0.1, -w / 2 + 0.02, -w / 2 + 0.6, 0.45, 0.95, M.METAL,
               _METAL)
        rear = [-l / 2 + 1.0 + r, -l / 2 + 2.3 + r] if l > 6.2 else [-l / 2 + 0.8 + r]
        front_x = l / 2 - cab_len * 0.5
        _wheels(p, [front_x], w / 2 - 0.17, r, 0.32)
        _wheels(p, rear, w / 2 - 0.27, r, 0.52)
        _add_lights_and_mirrors(p, rng, l, w, 0.8, l / 2 - cab_len + 0.2, cab_h_mirror(h),
                                bool(rng.random() < 0.5) if mirrors is None else mirrors, paint)
        return p.shape()
    cab_len = min(_u(rng, 1.8, 2.4), l * 0.35)
    cab_h = min(h, _u(rng, 2.4, 3.0))
    _truck_cab(p, rng, l, cab_len, cab_w, cab_h, paint)
    gap = _u(rng, 0.1, 0.3)
    x_front = l / 2 - cab_len - gap
    bed = _u(rng, 1.0, 1.3)
    p.span(-l / 2 + 0.3, l / 2 - 0.35, -w * 0.22, w * 0.22, 0.5, bed, M.METAL, _DARK_METAL)
    cargo_col = (_jitter(rng, _WHITE, 10) if rng.random() < 0.5 else random_paint(rng))
    if kind == "box":
        p.span(-l / 2, x_front, -w / 2, w / 2, bed, h, M.VEHICLE_PAINT, cargo_col)
    elif kind == "flatbed":
        p.span(-l / 2, x_front, -w / 2, w / 2, bed, bed + 0.15, M.METAL, _METAL)
        room = x_front + l / 2
        ll = _u(rng, 0.3, 0.7) * room
        p.span(-l / 2 + 0.1, -l / 2 + 0.1 + ll, -w / 2 + 0.15, w / 2 - 0.15, bed + 0.15,
               max(h, bed + 0.4), M.PLASTIC, _jitter(rng, (150, 120, 80), 30))
        if room - ll > 1.5 and rng.random() < 0.6:
            hh = _u(rng, 0.4, max(0.5, h - bed - 0.2))
            p.span(-l / 2 + 0.4 + ll, x_front - 0.2, -w / 2 + 0.3, w / 2 - 0.3, bed + 0.15,
                   min(h, bed + 0.15 + hh), M.PLASTIC, _jitter(rng, (90, 110, 140), 30))
    else:  # dump
        t = 0.1
        p.span(-l / 2, x_front, -w / 2, w / 2, bed, bed + 0.2, M.METAL, cargo_col)
        p.span(-l / 2, x_front, -w / 2, -w / 2 + t, bed + 0.2, h, M.METAL, cargo_col)
        p.span(-l / 2, x_front, w / 2 - t, w / 2, bed + 0.2, h, M.METAL, cargo_col)
        p.span(x_front - t, x_front, -w / 2 + t, w / 2 - t, bed + 0.2, h, M.METAL, cargo_col)
        p.span(-l / 2, -l / 2 + t, -w / 2 + t, w / 2 - t, bed + 0.2, h - 0.2, M.METAL,
               cargo_col)
    front_x = l / 2 - cab_len * 0.55
    n_rear = 1 if l < 8.0 else 2
    x_r1 = -l / 2 + max(1.1, 0.2 * l)
    rear = [x_r1 + 1.3 * k for k in range(n_rear)]
    _wheels(p, [front_x], cab_w / 2 - 0.17, r, 0.3)
    _wheels(p, rear, w / 2 - 0.28, r, 0.52)
    _add_lights_and_mirrors(p, rng, l, w, 0.75, l / 2 - cab_len + 0.2, cab_h_mirror(cab_h),
                            bool(rng.random() < 0.5) if mirrors is None else mirrors, paint)
    return p.shape()


def cab_h_mirror(cab_h: float) -> float:
    """Height of a truck's mirror bottom for a cab of height ``cab_h``."""
    return max(1.2, cab_h - 1.0)


def _build_pickup(rng: np.random.Generator, size: Sequence[float], paint: np.ndarray,
                  mirrors: bool | None) -> Shape:
    l, w, h = (float(v) for v in size)
    if mirrors is None:
        mirrors = bool(rng.random() < 0.85)
    clear = _u(rng, 0.2, 0.3)
    belt = min(_u(rng, 0.95, 1.12), h - 0.55)
    p = _Parts()
    p.span(-l / 2 + 0.02, l / 2 - 0.02, -w / 2, w / 2, clear, belt, M.VEHICLE_PAINT, paint)
    hood = _u(rng, 1.2, 1.6)
    cab_len = min(_u(rng, 1.5, 2.2), l - hood - 1.2)
    cab_x1 = l / 2 - hood
    cab_x0 = cab_x1 - cab_len
    wc = w - 0.16
    p.span(cab_x0, cab_x1, -wc / 2, wc / 2, belt, h - 0.06, M.GLASS, _jitter(rng, _GLASS, 6))
    p.span(cab_x0 + 0.05, cab_x1 - 0.25, -wc / 2 + 0.02, wc / 2 - 0.02, h - 0.06, h,
           M.VEHICLE_PAINT, paint)
    wall_h = min(_u(rng, 0.35, 0.5), h - belt - 0.05)
    bx0 = -l / 2 + 0.02
    bx1 = cab_x0 - 0.05
    p.span(bx0, bx1, -w / 2, -w / 2 + 0.06, belt, belt + wall_h, M.VEHICLE_PAINT, paint)
    p.span(bx0, bx1, w / 2 - 0.06, w / 2, belt, belt + wall_h, M.VEHICLE_PAINT, paint)
    p.span(bx0, bx0 + 0.06, -w / 2 + 0.06, w / 2 - 0.06, belt, belt + wall_h, M.VEHICLE_PAINT,
           paint)
    r = _u(rng, 0.36, 0.42)
    tw = _u(rng, 0.24, 0.3)
    wb = l * _u(rng, 0.58, 0.63)
    _wheels(p, (min(wb / 2, l / 2 - r - 0.1), max(-wb / 2, -l / 2 + r + 0.1)),
            w / 2 - tw / 2 - 0.02, r, tw)
    _add_lights_and_mirrors(p, rng, l, w, belt - 0.2, cab_x1 - 0.15, belt, mirrors, paint)
    return p.shape()


def build_bus(rng: np.random.Generator, size: Sequence[float],
              paint: np.ndarray | None = None) -> Shape:
    """City bus: lower body, window band with pillars, roof (optional A/C unit), windshield,
    tail lights, 2-3 axles; a double-decker when ``h > 3.9``. Tight box exactly ``size``."""
    l, w, h = (float(v) for v in size)
    if paint is None:
        palette = np.array([(236, 236, 230), (200, 40, 36), (40, 90, 160), (60, 140, 70),
                            (230, 180, 40), (120, 120, 128)], dtype=np.float64)
        paint = _pick(rng, palette, amount=10.0)
    p = _Parts()
    belt = _u(rng, 1.0, 1.2)
    p.span(-l / 2 + 0.02, l / 2 - 0.02, -w / 2, w / 2, 0.3, belt, M.VEHICLE_PAINT, paint)
    ac = rng.random() < 0.6
    ac_h = _u(rng, 0.2, 0.3) if ac else 0.0
    roof_t = 0.3
    top = h - ac_h
    glass_col = _jitter(rng, _GLASS, 6)
    if h > 3.9:
        mid = belt + 1.15
        p.span(-l / 2 + 0.05, l / 2 - 0.05, -w / 2 + 0.015, w / 2 - 0.015, belt, mid, M.GLASS,
               glass_col)
        p.span(-l / 2 + 0.03, l / 2 - 0.03, -w / 2, w / 2, mid, mid + 0.4, M.VEHICLE_PAINT,
               paint)
        p.span(-l / 2 + 0.05, l / 2 - 0.05, -w / 2 + 0.015, w / 2 - 0.015, mid + 0.4,
               top - roof_t, M.GLASS, glass_col)
    else:
        p.span(-l / 2 + 0.05, l / 2 - 0.05, -w / 2 + 0.015, w / 2 - 0.015, belt, top - roof_t,
               M.GLASS, glass_col)
    n_pillars = max(2, int(l / _u(rng, 2.4, 3.2)))
    for k in range(n_pillars):
        x = -l / 2 + 0.4 + (l - 0.8) * (k + 0.5) / n_pillars
        p.span(x - 0.09, x + 0.09, -w / 2, w / 2, belt, top - roof_t, M.VEHICLE_PAINT, paint)
    p.span(-l / 2 + 0.03, l / 2 - 0.03, -w / 2, w / 2, top - roof_t, top, M.VEHICLE_PAINT, paint)
    if ac:
        ac_l = min(_u(rng, 2.0, 3.5), l * 0.4)
        xa = _u(rng, -l / 4, l / 8)
        p.span(xa - ac_l / 2, xa + ac_l / 2, -_u(rng, 0.6, 0.95), _u(rng, 0.6, 0.95), top, h,
               M.METAL, _jitter(rng, (200, 200, 200), 10))
    p.span(l / 2 - 0.05, l / 2, -w / 2 + 0.06, w / 2 - 0.06, 0.9, top - roof_t - 0.05, M.GLASS,
           glass_col)
    p.span(-l / 2, -l / 2 + 0.03, -w / 2 + 0.15, w / 2 - 0.15, 0.55, 0.85, M.RETROREFLECTOR,
           _RED_LIGHT)
    r = _u(rng, 0.48, 0.53)
    xf = l / 2 - min(_u(rng, 2.2, 2.7), l * 0.25)
    xr = -l / 2 + min(_u(rng, 2.6, 3.4), l * 0.28)
    xs = [xf, xr] + ([xr + 1.4] if l > 13.0 else [])
    _wheels(p, xs, w / 2 - 0.2, r, 0.36)
    return p.shape()


def build_trailer(rng: np.random.Generator, size: Sequence[float], kind: str | None = None,
                  paint: np.ndarray | None = None) -> Shape:
    """Trailer (nuScenes ``vehicle.trailer``). ``kind``:

    * ``"semi"``: semi-trailer parked on its landing legs (box or container on a platform);
    * ``"drawbar"``: full trailer with a drawbar at +x (towed behind a truck);
    * ``"small"``: utility / cargo trailer with a drawbar (towed behind a car).

    Random (from the length) if None. Tight box exactly ``size``.
    """
    l, w, h = (float(v) for v in size)
    if kind is None:
        kind = "small" if l < 5.0 else ("drawbar" if l < 9.0 else "semi")
    if paint is None:
        paint = (_jitter(rng, _WHITE, 12) if rng.random() < 0.5 else random_paint(rng))
    p = _Parts()
    if kind == "semi":
        bed = _u(rng, 1.1, 1.35)
        if rng.random() < 0.7:
            p.span(-l / 2, l / 2, -w / 2, w / 2, bed, h, M.VEHICLE_PAINT, paint)
        else:
            p.span(-l / 2, l / 2, -w / 2, w / 2, bed, bed + 0.2, M.METAL, _DARK_METAL)
            cl = l - _u(rng, 0.0, 1.2)
            p.span(-l / 2, -l / 2 + cl, -w / 2 + 0.03, w / 2 - 0.03, bed + 0.2, h, M.METAL,
                   _pick(rng, _FACADES, amount=20))
        for sgn in (-1.0, 1.0):
            p.add(l / 2 - _u(rng, 1.6, 2.4), sgn * (w / 2 - 0.35), 0.0, 0.16, 0.16, bed,
                  M.METAL, _DARK_METAL)
        r = _u(rng, 0.47, 0.52)
        n_ax = 3 if l > 13 else 2
        _wheels(p, [-l / 2 + 1.3 + r + 1.3 * k for k in range(n_ax)], w / 2 - 0.27, r, 0.5)
        p.span(-l / 2 + 0.05, -l / 2 + 0.2, -w / 2 + 0.1, w / 2 - 0.1, 0.45, 0.62, M.METAL,
               _DARK_METAL)
        return p.shape()
    if kind == "drawbar":
        bar = _u(rng, 1.2, 1.8)
        bed = _u(rng, 0.9, 1.2)
        x_front = l / 2 - bar
        p.span(-l / 2, x_front, -w / 2, w / 2, bed, h, M.VEHICLE_PAINT, paint)
        p.span(-l / 2 + 0.3, x_front - 0.2, -w * 0.25, w * 0.25, 0.55, bed, M.METAL, _DARK_METAL)
        p.span(x_front, l / 2, -0.06, 0.06, 0.45, 0.6, M.METAL, _DARK_METAL)
        p.span(x_front, x_front + 0.25, -w * 0.3, w * 0.3, 0.45, 0.6, M.METAL, _DARK_METAL)
        r = _u(rng, 0.44, 0.5)
        _wheels(p, [x_front - 1.0 - r * 0.5, -l / 2 + 0.8 + r], w / 2 - 0.25, r, 0.45)
        return p.shape()
    # small utility / cargo trailer
    bar = _u(rng, 0.9, 1.3)
    bed = _u(rng, 0.45, 0.6)
    x_front = l / 2 - bar
    r = _u(rng, 0.25, 0.33)
    p.span(-l / 2, x_front, -w / 2 + 0.12, w / 2 - 0.12, bed, bed + 0.08, M.METAL, _DARK_METAL)
    if h > bed + 1.0 or rng.random() < 0.3:
        p.span(-l / 2, x_front, -w / 2 + 0.12, w / 2 - 0.12, bed + 0.08, h, M.VEHICLE_PAINT,
               paint)
    else:
        t = 0.05
        for y0, y1 in ((-w / 2 + 0.12, -w / 2 + 0.12 + t), (w / 2 - 0.12 - t, w / 2 - 0.12)):
            p.span(-l / 2, x_front, y0, y1, bed + 0.08, h, M.METAL, paint)
        p.span(-l / 2, -l / 2 + t, -w / 2 + 0.17, w / 2 - 0.17, bed + 0.08, h, M.METAL, paint)
        p.span(x_front - t, x_front, -w / 2 + 0.17, w / 2 - 0.17, bed + 0.08, h, M.METAL, paint)
    p.span(x_front, l / 2, -0.05, 0.05, 0.38, 0.48, M.METAL, _DARK_METAL)
    for sgn in (-1.0, 1.0):
        p.add(-0.1 * l, sgn * (w / 2 - 0.1), 0.0, 2 * r, 0.2, 2 * r, M.TIRE, _TIRE)
        p.add(-0.1 * l, sgn * (w / 2 - 0.1), 2 * r, 2 * r + 0.15, 0.2, 0.05, M.METAL, _DARK_METAL)
    return p.shape()


def build_construction_vehicle(rng: np.random.Generator, size: Sequence[float],
                               kind: str | None = None) -> Shape:
    """Construction vehicle (nuScenes ``vehicle.construction``). ``kind``: ``"excavator"``
    (tracks, slewed house, staircase boom, bucket), ``"loader"`` (wheel loader with front
    bucket) or ``"roller"`` (road roller). Proportions follow ``size`` approximately; the
    tight box is whatever the parts span."""
    l, w, h = (float(v) for v in size)
    if kind is None:
        kind = ["excavator", "loader", "roller"][int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
    col = _pick(rng, _CONSTRUCTION, amount=12)
    p = _Parts()
    if kind == "excavator":
        lt = min(l * 0.62, _u(rng, 3.0, 4.4))
        tw = _u(rng, 0.5, 0.7)
        th = _u(rng, 0.7, 0.95)
        for sgn in (-1.0, 1.0):
            p.add(0.0, sgn * (w / 2 - tw / 2), 0.0, lt, tw, th, M.METAL, _DARK_METAL)
        slew = 0.0 if rng.random() < 0.5 else _u(rng, -0.6, 0.6)
        c, s = np.cos(slew), np.sin(slew)
        lh = _u(rng, 2.6, 3.3)
        wh = w * _u(rng, 0.85, 0.98)
        z_h = th + 0.1
        house_top = min(z_h + _u(rng, 1.0, 1.3), h - 0.9)

        def add_rot(x: float, y: float, z0: float, ll: float, ww: float, hh: float, mat: int,
                    color: np.ndarray | Sequence[int]) -> None:
            p.add(c * x - s * y, s * x + c * y, z0, ll, ww, hh, mat, color, yaw=slew)

        add_rot(-0.3, 0.0, z_h, lh, wh, house_top - z_h, M.VEHICLE_PAINT, col)
        add_rot(-0.3 - lh / 2 + 0.35, 0.0, z_h, 0.7, wh, house_top - z_h + 0.15, M.METAL,
                _DARK_METAL)
        add_rot(-0.3 + lh / 2 - 0.55, wh / 2 - 0.5, house_top, 1.0, 0.9, h - house_top,
                M.GLASS, _jitter(rng, _GLASS, 6))
        reach = max(1.5, l / 2 - (-0.3 + lh / 2) + 0.3)
        b1 = reach * 0.55
        b2 = reach - b1
        x_b = -0.3 + lh / 2 - 0.3
        peak = min(h, house_top + _u(rng, 0.5, 1.0))
        add_rot(x_b + b1 / 2, -0.4, house_top - 0.4, b1, 0.35, 0.55, M.VEHICLE_PAINT, col)
        add_rot(x_b + b1 + b2 / 2 - 0.2, -0.4, peak - 0.5, b2 + 0.4, 0.3, 0.5, M.VEHICLE_PAINT,
                col)
        x_end = x_b + reach
        bucket_z = 0.0 if rng.random() < 0.5 else _u(rng, 0.2, 1.0)
        add_rot(x_end - 0.2, -0.4, bucket_z + 0.6, 0.3, 0.25, peak - 0.5 - bucket_z - 0.6,
                M.VEHICLE_PAINT, col)
        add_rot(x_end - 0.35, -0.4, bucket_z, 0.9, _u(rng, 0.8, 1.2), 0.8, M.METAL, _DARK_METAL)
        return p.shape()
    if kind == "loader":
        r = min(_u(rng, 0.6, 0.8), h * 0.25)
        body_top = _u(rng, 1.8, 2.2)
        lr = l * 0.4
        p.span(-l / 2, -l / 2 + lr, -w * 0.42, w * 0.42, 0.6, body_top, M.VEHICLE_PAINT, col)
        p.span(-l / 2 + lr - 1.3, -l / 2 + lr, -0.6, 0.6, body_top, h, M.GLASS,
               _jitter(rng, _GLASS, 6))
        p.span(-l / 2 + lr - 1.35, -l / 2 + lr + 0.05, -0.65, 0.65, h - 0.08, h,
               M.VEHICLE_PAINT, col)
        p.span(-l / 2 + lr, l / 2 - 1.1, -w * 0.3, w * 0.3, 0.6, 1.3, M.VEHICLE_PAINT, col)
        for sgn in (-1.0, 1.0):
            p.span(l / 2 - 2.2, l / 2 - 1.0, sgn * 0.5 - 0.1, sgn * 0.5 + 0.1, 0.8, 1.6,
                   M.METAL, col)
        bz = 0.0 if rng.random() < 0.5 else _u(rng, 0.3, 1.2)
        p.span(l / 2 - 1.1, l / 2, -w / 2, w / 2, bz, bz + _u(rng, 0.8, 1.1), M.METAL,
               _DARK_METAL)
        _wheels(p, [-l / 2 + lr * 0.5, l / 2 - 2.0], w * 0.42 - 0.25, r, 0.5)
        return p.shape()
    # roller
    d = min(_u(rng, 1.2, 1.5), h * 0.5)
    p.span(l / 2 - 1.5, l / 2 - 0.1, -w / 2, w / 2, 0.0, d, M.METAL, _DARK_METAL)
    p.span(l / 2 - 1.65, l / 2, -w / 2 + 0.05, w / 2 - 0.05, d - 0.15, d + 0.1, M.VEHICLE_PAINT,
           col)
    body_top = min(_u(rng, 1.7, 2.1), h - 0.8)
    p.span(-l / 2, l / 2 - 1.65, -w * 0.42, w * 0.42, 0.5, body_top, M.VEHICLE_PAINT, col)
    p.span(-l / 2 + 0.3, -l / 2 + 1.6, -0.6, 0.6, body_top, h - 0.1, M.GLASS,
           _jitter(rng, _GLASS, 6))
    p.span(-l / 2 + 0.2, -l / 2 + 1.7, -0.75, 0.75, h - 0.1, h, M.VEHICLE_PAINT, col)
    r = _u(rng, 0.6, 0.75)
    _wheels(p, [-l / 2 + 0.9], w * 0.42 - 0.25, r, 0.5)
    return p.shape()


# --------------------------------------------------------------------------------------------
# People and cycles
# --------------------------------------------------------------------------------------------


@dataclass
class _Outfit:
    shirt: np.ndarray
    pants: np.ndarray
    skin: np.ndarray
    hair: np.ndarray


def _outfit(rng: np.random.Generator, worker: bool = False) -> _Outfit:
    shirt = _pick(rng, _HIVIS, amount=6) if worker else _pick(rng, _CLOTHES, amount=14)
    pants = _pick(rng, _CLOTHES[[0, 1, 2, 7, 8, 9]], amount=10)
    return _Outfit(shirt, pants, _pick(rng, _SKIN, amount=8), _pick(rng, _HAIR, amount=8))


def build_pedestrian(rng: np.random.Generator, size: Sequence[float], pose: str = "walking",
                     kind: str = "adult") -> Shape:
    """Pedestrian: two legs, pelvis, torso, two arms, head (+ hair or a helmet).

    Args:
        size: requested ``(l, w, h)``: ``h`` is the standing height (the sitting pose is about
            0.7 h tall), ``w`` sets the shoulder span (arms included), ``l`` the largest
            stride of a walker.
        pose: ``"walking"`` (animated: legs and arms swing in opposite pairs, see
            :attr:`Shape.swing`), ``"standing"`` (rigid, random stance, maybe a phone,
            backpack or bag) or ``"sitting"`` (rigid, thighs forward; for benches).
        kind: ``"adult"``, ``"child"`` or ``"worker"`` (hi-vis vest with a reflective band and
            a helmet).
    """
    l, w, h = (float(v) for v in size)
    o = _outfit(rng, kind == "worker")
    p = _Parts()
    head_h = h * (0.165 if kind == "child" else _u(rng, 0.125, 0.14))
    torso_h = h * _u(rng, 0.29, 0.32)
    leg_h = h - head_h - torso_h
    arm_w = _u(rng, 0.07, 0.1)
    gap = _u(rng, 0.01, 0.05)
    sw = float(np.clip(w - 2 * (arm_w + gap), 0.24, 0.56))
    td = _u(rng, 0.19, 0.28) * (0.8 if kind == "child" else 1.0)
    lw = _u(rng, 0.12, 0.16) * (0.8 if kind == "child" else 1.0)
    ld = _u(rng, 0.12, 0.17)
    hip = sw * _u(rng, 0.7, 0.8)
    hd = _u(rng, 0.18, 0.22) * (0.9 if kind == "child" else 1.0)
    hw = _u(rng, 0.15, 0.18) * (0.9 if kind == "child" else 1.0)
    shoulder = leg_h + torso_h - 0.03
    arm_len = 0.36 * h
    y_leg = hip / 2 - lw / 2
    y_arm = sw / 2 + gap + arm_w / 2
    ad = _u(rng, 0.08, 0.1)

    def head(z_top: float, x: float = 0.0) -> None:
        if kind == "worker":
            p.add(x, 0.0, z_top - head_h, hd, hw, head_h - 0.06, M.SKIN, o.skin)
            p.add(x, 0.0, z_top - 0.09, hd + 0.06, hw + 0.06, 0.09, M.PLASTIC,
                  _jitter(rng, (235, 225, 40) if rng.random() < 0.6 else _WHITE, 8))
        else:
            p.add(x, 0.0, z_top - head_h, hd, hw, head_h - 0.03, M.SKIN, o.skin)
            p.add(x, 0.0, z_top - 0.06, hd + 0.01, hw + 0.01, 0.06, M.CLOTH, o.hair)

    def torso(z0: float, x: float = 0.0) -> None:
        p.add(x, 0.0, z0, td, sw, torso_h, M.CLOTH, o.shirt)
        if kind == "worker":
            p.add(x, 0.0, z0 + torso_h * 0.45, td + 0.01, sw + 0.01, 0.06, M.RETROREFLECTOR,
                  _jitter(rng, (220, 220, 220), 8))

    if pose == "sitting":
        seat = _u(rng, 0.42, 0.48)
        thigh = 0.245 * h
        z_shoulder = seat + torso_h
        p.add(0.0, 0.0, seat, td, sw, torso_h, M.CLOTH, o.shirt)
        for sgn in (-1.0, 1.0):
            p.add(thigh / 2, sgn * y_leg, seat - 0.13, thigh + td / 2, lw, 0.14, M.CLOTH, o.pants)
            p.add(thigh + td / 2 - ld / 2, sgn * y_leg, 0.0, ld, lw, seat - 0.13, M.CLOTH,
                  o.pants)
            p.add(0.02, sgn * y_arm, z_shoulder - 0.3, ad, arm_w, 0.3, M.CLOTH, o.shirt)
            p.add(0.17, sgn * y_arm, z_shoulder - 0.36, 0.3, arm_w, 0.07, M.SKIN, o.skin)
        head(z_shoulder + head_h)
        return p.shape()

    leg_z0 = 0.0
    if pose == "walking":
        a_leg = float(np.clip((l - ld) / 2, 0.1, 0.38))
        a_arm = a_leg * _u(rng, 0.45, 0.75)
        for sgn in (-1.0, 1.0):
            p.add(0.0, sgn * y_leg, leg_z0, ld, lw, leg_h, M.CLOTH, o.pants, swing=sgn * a_leg)
            p.add(0.0, sgn * y_arm, shoulder - arm_len, ad, arm_w, arm_len, M.CLOTH, o.shirt,
                  swing=-sgn * a_arm)
        p.add(0.0, 0.0, leg_h - 0.12, td * 0.9, hip, 0.14, M.CLOTH, o.pants)
        torso(leg_h)
        head(h)
        if rng.random() < 0.15:
            side = 1.0 if rng.random() < 0.5 else -1.0
            bw = _u(rng, 0.08, 0.14)
            p.add(0.0, side * (y_arm + arm_w / 2 + bw / 2 + 0.01), leg_h - 0.1, _u(rng, 0.25, 0.4),
                  bw, _u(rng, 0.25, 0.35), M.CLOTH, _pick(rng, _CLOTHES, amount=15))
        return p.shape()
    # standing
    stance = _u(rng, 0.0, 0.12)
    for sgn in (-1.0, 1.0):
        p.add(sgn * stance * _u(rng, 0.3, 1.0), sgn * y_leg, 0.0, ld, lw, leg_h, M.CLOTH, o.pants)
    p.add(0.0, 0.0, leg_h - 0.12, td * 0.9, hip, 0.14, M.CLOTH, o.pants)
    torso(leg_h)
    head(h)
    phone = rng.random() < 0.25
    for sgn in (-1.0, 1.0):
        if phone and sgn > 0:
            p.add(0.0, sgn * y_arm, shoulder - 0.3, ad, arm_w, 0.3, M.CLOTH, o.shirt)
            p.add(0.14, sgn * (y_arm - 0.05), shoulder - 0.38, 0.3, arm_w, 0.08, M.SKIN, o.skin)
        else:
            p.add(_u(rng, -0.06, 0.06), sgn * y_arm, shoulder - arm_len, ad, arm_w, arm_len,
                  M.CLOTH, o.shirt)
    if rng.random() < 0.2:
        bd = _u(rng, 0.12, 0.22)
        p.add(-td / 2 - bd / 2, 0.0, leg_h + 0.05, bd, sw * 0.8, torso_h * 0.8, M.CLOTH,
              _pick(rng, _CLOTHES, amount=15))
    return p.shape()


def _add_rider(p: _Parts, rng: np.random.Generator, o: _Outfit, seat_x: float, seat_z: float,
               bar_x: float, bar_z: float, top: float, helmet: bool, foot_z: float,
               foot_x: float, leg_y: float, max_w: float) -> None:
    """A seated rider: legs to the pedals/pegs, leaning torso, arms to the bars, head. The
    rider stays within the width ``max_w`` (the handlebar's)."""
    head_h = _u(rng, 0.22, 0.26)
    top = max(top, seat_z + 0.6 + head_h)
    z_head = top - head_h
    torso_top = z_head - 0.02
    lean_x = seat_x + 0.55 * (bar_x - seat_x)
    lw = min(_u(rng, 0.12, 0.15), max_w / 2 - leg_y)
    for sgn, dx in ((-1.0, -0.08), (1.0, 0.1)):
        p.span(foot_x + dx - 0.07, foot_x + dx + 0.07, sgn * leg_y - lw / 2, sgn * leg_y + lw / 2,
               foot_z, seat_z + 0.05, M.CLOTH, o.pants)
    sw = min(_u(rng, 0.34, 0.42), max_w - 0.1)
    p.span(seat_x - 0.14, seat_x + 0.14, -sw / 2 * 0.8, sw / 2 * 0.8, seat_z + 0.03,
           seat_z + 0.35, M.CLOTH, o.shirt)
    p.span(min(seat_x, lean_x) - 0.1, max(seat_x, lean_x) + 0.12, -sw / 2, sw / 2,
           seat_z + 0.3, torso_top, M.CLOTH, o.shirt)
    for sgn in (-1.0, 1.0):
        p.span(lean_x, bar_x, sgn * sw / 2 - 0.045, sgn * sw / 2 + 0.045, bar_z,
               max(bar_z + 0.1, torso_top - 0.12), M.CLOTH, o.shirt)
    if helmet:
        p.add(lean_x + 0.05, 0.0, z_head, 0.26, 0.22, head_h, M.PLASTIC,
              _pick(rng, _CLOTHES, amount=20))
    else:
        p.add(lean_x + 0.05, 0.0, z_head, 0.2, 0.16, head_h - 0.03, M.SKIN, o.skin)
        p.add(lean_x + 0.04, 0.0, top - 0.05, 0.21, 0.17, 0.05, M.CLOTH, o.hair)


def build_bicycle(rng: np.random.Generator, size: Sequence[float], rider: bool) -> Shape:
    """Bicycle: two thin wheels, frame tubes, saddle, fork, handlebar; optional rider.

    ``l`` and ``w`` (the handlebar) of ``size`` are exact. Without a rider the height is the
    handlebar's (about 1.0 m); with one it is ``max(size h, 1.45)`` (the rider's head).
    """
    l, w, h = (float(v) for v in size)
    frame_col = _pick(rng, np.vstack([_PAINTS, _CLOTHES]), amount=15)
    r = _u(rng, 0.31, 0.36)
    r = min(r, l * 0.25)
    wb = l - 2 * r
    bar_z = _u(rng, 0.95, 1.08)
    saddle_z = min(bar_z - 0.02, _u(rng, 0.86, 1.0))
    p = _Parts()
    for x in (-wb / 2, wb / 2):
        p.add(x, 0.0, 0.0, 2 * r, 0.05, 2 * r, M.TIRE, _TIRE)
    seat_x = -wb / 2 + 0.28 * wb
    p.span(seat_x, wb / 2 - 0.08, -0.02, 0.02, r + 0.3, r + 0.34, M.METAL, frame_col)
    p.span(seat_x - 0.02, wb / 2 - 0.1, -0.02, 0.02, r - 0.03, r + 0.05, M.METAL, frame_col)
    p.span(-wb / 2, seat_x, -0.025, 0.025, r - 0.03, r + 0.03, M.METAL, frame_col)
    p.span(seat_x - 0.02, seat_x + 0.02, -0.02, 0.02, r, saddle_z, M.METAL, frame_col)
    p.span(seat_x - 0.12, seat_x + 0.12, -0.07, 0.07, saddle_z, saddle_z + 0.05, M.PLASTIC,
           (25, 25, 25))
    p.span(wb / 2 - 0.03, wb / 2 + 0.01, -0.03, 0.03, r, bar_z, M.METAL, frame_col)
    p.span(wb / 2 - 0.13, wb / 2 - 0.07, -w / 2, w / 2, bar_z - 0.04, bar_z, M.METAL,
           _DARK_METAL)
    if rider:
        top = max(h, 1.45)
        _add_rider(p, rng, _outfit(rng), seat_x, saddle_z + 0.05, wb / 2 - 0.1, bar_z - 0.02,
                   top, bool(rng.random() < 0.5), _u(rng, 0.1, 0.3), seat_x + 0.2, 0.11, w)
    return p.shape()


def build_motorcycle(rng: np.random.Generator, size: Sequence[float], rider: bool) -> Shape:
    """Motorcycle or scooter: wheels, engine, tank and seat, front fairing, handlebar,
    exhaust; optional helmeted rider. ``l`` and ``w`` exact; height from the parts."""
    l, w, h = (float(v) for v in size)
    col = random_paint(rng)
    scooter = rng.random() < 0.4
    r = min(_u(rng, 0.27, 0.33), l * 0.17)
    wb = l - 2 * r
    tyre = _u(rng, 0.1, 0.14)
    p = _Parts()
    for x in (-wb / 2, wb / 2):
        p.add(x, 0.0, 0.0, 2 * r, tyre, 2 * r, M.TIRE, _TIRE)
    bar_z = _u(rng, 1.0, 1.12)
    seat_z = _u(rng, 0.75, 0.85)
    if scooter:
        p.span(-wb / 2 + 0.1, wb / 2 - 0.35, -0.17, 0.17, 0.25, 0.38, M.PLASTIC, col)
        p.span(-wb / 2 - 0.1, -0.05, -0.18, 0.18, 0.4, seat_z, M.PLASTIC, col)
        p.span(wb / 2 - 0.38, wb / 2 - 0.2, -0.22, 0.22, 0.3, bar_z - 0.05, M.PLASTIC, col)
    else:
        p.span(-0.25 * wb, 0.3 * wb, -0.18, 0.18, 0.25, 0.65, M.METAL, _DARK_METAL)
        p.span(-wb / 2 + 0.05, wb / 2 - 0.3, -0.15, 0.15, 0.6, seat_z, M.VEHICLE_PAINT, col)
        p.span(wb / 2 - 0.35, wb / 2 - 0.12, -0.2, 0.2, 0.65, bar_z - 0.05, M.VEHICLE_PAINT, col)
        p.span(-wb / 2 - 0.25, 0.1, -w / 2 + 0.05, -w / 2 + 0.16, 0.22, 0.34, M.METAL,
               (150, 150, 155))
    p.span(-wb / 2 - r * 0.8, -wb / 2 + 0.25, -0.1, 0.1, 2 * r + 0.02, 2 * r + 0.08, M.PLASTIC,
           col)
    p.span(wb / 2 - 0.03, wb / 2 + 0.03, -0.04, 0.04, r, bar_z, M.METAL, _DARK_METAL)
    p.span(wb / 2 - 0.2, wb / 2 - 0.14, -w / 2, w / 2, bar_z - 0.05, bar_z, M.METAL,
           _DARK_METAL)
    p.span(-wb / 2 - 0.2, -wb / 2 - 0.15, -0.08, 0.08, 0.55, 0.65, M.RETROREFLECTOR, _RED_LIGHT)
    if rider:
        top = max(h, 1.4)
        _add_rider(p, rng, _outfit(rng), -wb * 0.12, seat_z + 0.03, wb / 2 - 0.18, bar_z - 0.03,
                   top, True, 0.3, wb * 0.12, min(0.2, w / 2 - 0.07), w)
    return p.shape()


# --------------------------------------------------------------------------------------------
# Cones and barriers
# --------------------------------------------------------------------------------------------


def build_traffic_cone(rng: np.random.Generator, size: Sequence[float]) -> Shape:
    """Traffic cone (square base, 4-5 stacked shrinking boxes with white reflective bands) or,
    for wide tall ones, a channelizer drum. Tight box exactly ``size``."""
    l, w, h = (float(v) for v in size)
    p = _Parts()
    base_h = _u(rng, 0.03, 0.05)
    p.add(0.0, 0.0, 0.0, l, w, base_h, M.PLASTIC, _jitter(rng, (30, 30, 30) if rng.random() < 0.5
                                                          else _ORANGE, 8))
    orange = _jitter(rng, _ORANGE, 10)
    drum = min(l, w) > 0.5 and h > 0.85
    n = 4 if drum else int(rng.integers(4, 6))
    zs = np.linspace(base_h, h, n + 1)
    for k in range(n):
        if drum:
            f = 0.86 - 0.04 * k
        else:
            f = 0.72 - (0.72 - 0.2) * k / (n - 1)
        band = (k % 2 == 1)
        p.add(0.0, 0.0, zs[k], l * f, w * f, zs[k + 1] - zs[k],
              M.RETROREFLECTOR if band else M.PLASTIC, _WHITE if band else orange)
    return p.shape()


def build_barrier(rng: np.random.Generator, size: Sequence[float], style: str | None = None
                  ) -> Shape:
    """Temporary traffic barrier, nuScenes convention: local x (``l``) is the *thin* side
    (the heading faces traffic), y (``w``) the long side. ``style``: ``"jersey"`` (concrete,
    stepped profile), ``"water"`` (plastic block) or ``"aframe"`` (reflective planks on two
    A-frame legs). Tight box exactly ``size``."""
    l, w, h = (float(v) for v in size)
    if style is None:
        style = ["jersey", "water", "aframe"][int(rng.choice(3, p=[0.4, 0.25, 0.35]))]
    p = _Parts()
    if style == "jersey":
        col = _jitter(rng, _CONCRETE, 12)
        p.add(0.0, 0.0, 0.0, l, w, 0.25, M.CONCRETE, col)
        p.add(0.0, 0.0, 0.25, l * 0.7, w, 0.35, M.CONCRETE, col)
        p.add(0.0, 0.0, 0.6, l * 0.42, w, h - 0.6, M.CONCRETE, col)
    elif style == "water":
        col = _jitter(rng, [(200, 30, 30), _WHITE, _ORANGE][int(rng.integers(3))], 10)
        p.add(0.0, 0.0, 0.0, l, w, h * 0.6, M.PLASTIC, col)
        p.add(0.0, 0.0, h * 0.6, l * 0.6, w * 0.95, h * 0.4, M.PLASTIC, col)
    else:
        leg_col = _jitter(rng, (200, 200, 200) if rng.random() < 0.5 else _ORANGE, 10)
        plank_col = _jitter(rng, _WHITE if rng.random() < 0.5 else (220, 60, 40), 10)
        for sgn in (-1.0, 1.0):
            y = sgn * (w / 2 - 0.2)
            p.add(0.0, y, 0.0, l, 0.14, 0.05, M.METAL, leg_col)
            p.add(0.0, y, 0.05, l * 0.35, 0.06, h - 0.05, M.METAL, leg_col)
        ph = _u(rng, 0.2, 0.3)
        p.add(0.0, 0.0, h - ph, 0.04, w, ph, M.RETROREFLECTOR, plank_col)
        if rng.random() < 0.6:
            p.add(0.0, 0.0, h * 0.42, 0.04, w, ph * 0.8, M.RETROREFLECTOR, plank_col)
    return p.shape()


# --------------------------------------------------------------------------------------------
# Scenery
# --------------------------------------------------------------------------------------------


def build_building(rng: np.random.Generator, frontage: float, depth: float, height: float,
                   color: np.ndarray | None = None) -> Shape:
    """Building: base block, optional set-back upper tiers, storefront glass, awning, window
    bands and a roof unit. Local x along the street (``frontage``), +y into the lot
    (``depth``), front face at ``y = -depth / 2``. Awnings (PLASTIC) and glass protrude in
    front of the face (awnings by up to 1.6 m, above 2.6 m)."""
    color = _pick(rng, _FACADES, amount=12) if color is None else color
    p = _Parts()
    fy = -depth / 2
    base_h = height if rng.random() < 0.4 else min(height, _u(rng, 3.5, 12.0))
    p.add(0.0, 0.0, 0.0, frontage, depth, base_h, M.BUILDING, color)
    top = base_h
    if height - base_h > 2.5 and frontage > 8 and depth > 8:
        inset_f = _u(rng, 1.0, min(4.0, depth * 0.3))
        inset_s = _u(rng, 0.0, min(3.0, frontage * 0.2))
        up_col = color if rng.random() < 0.5 else _pick(rng, _FACADES, amount=12)
        p.span(-frontage / 2 + inset_s, frontage / 2 - inset_s, fy + inset_f,
               depth / 2 - _u(rng, 0.0, 2.0), base_h, height, M.BUILDING, up_col)
        top = height
    if base_h > 3.3 and rng.random() < 0.6:
        sl = frontage * _u(rng, 0.4, 0.85)
        sx = _u(rng, -(frontage - sl) / 2, (frontage - sl) / 2)
        z1 = min(base_h - 0.3, _u(rng, 2.5, 3.2))
        p.span(sx - sl / 2, sx + sl / 2, fy - 0.06, fy + 0.02, 0.3, z1, M.GLASS,
               _jitter(rng, _GLASS, 10))
        if rng.random() < 0.35 and base_h > 3.6:
            za = max(z1 + 0.05, 2.7)
            p.span(sx - sl / 2, sx + sl / 2, fy - _u(rng, 0.9, 1.6), fy, za, za + 0.15,
                   M.PLASTIC, _pick(rng, _CLOTHES, amount=20))
    if base_h > 7.0 and rng.random() < 0.6:
        n = int(rng.integers(1, 4))
        for k in range(n):
            z = 4.0 + k * (base_h - 5.0) / max(n, 1)
            if z + 1.4 < base_h:
                p.span(-frontage / 2 + 0.8, frontage / 2 - 0.8, fy - 0.04, fy + 0.02, z, z + 1.4,
                       M.GLASS, _jitter(rng, _GLASS, 10))
    if rng.random() < 0.4 and frontage > 6:
        ru = _u(rng, 1.5, min(5.0, frontage * 0.4))
        p.add(_u(rng, -frontage / 4, frontage / 4), depth * 0.1, top, ru, ru * _u(rng, 0.5, 1.0),
              _u(rng, 1.0, 2.5), M.METAL, _METAL)
    return p.shape()


def build_wall(rng: np.random.Generator, length: float, height: float,
               thickness: float | None = None) -> Shape:
    """Garden / boundary wall along local x (1-2 primitives)."""
    t = _u(rng, 0.2, 0.35) if thickness is None else thickness
    col = _jitter(rng, [_CONCRETE, (150, 72, 52), (200, 190, 170)][int(rng.integers(3))], 10)
    p = _Parts()
    p.add(0.0, 0.0, 0.0, length, t, height, M.WALL, col)
    if rng.random() < 0.3:
        p.add(0.0, 0.0, height, length, t + 0.08, 0.08, M.CONCRETE, _CONCRETE)
    return p.shape()


def build_fence(rng: np.random.Generator, length: float, height: float) -> Shape:
    """Fence along local x: posts every 2-3 m and two rails."""
    col = _jitter(rng, [(60, 60, 62), (120, 90, 60), (40, 70, 45)][int(rng.integers(3))], 10)
    p = _Parts()
    n = max(2, int(np.ceil(length / _u(rng, 2.0, 3.0))) + 1)
    for x in np.linspace(-length / 2 + 0.04, length / 2 - 0.04, n):
        p.add(float(x), 0.0, 0.0, 0.08, 0.08, height, M.FENCE, col)
    for z in (height * 0.3, height - 0.12):
        p.add(0.0, 0.0, z, length, 0.04, 0.06, M.FENCE, col)
    return p.shape()


def build_hedge(rng: np.random.Generator, length: float, height: float, depth: float) -> Shape:
    """Hedge along local x (one or two vegetation boxes)."""
    p = _Parts()
    col = _pick(rng, _GREENS, amount=10)
    p.add(0.0, 0.0, 0.0, length, depth, height, M.VEGETATION, col)
    if rng.random() < 0.5 and length > 2:
        p.add(_u(rng, -length / 4, length / 4), 0.0, height, length * 0.4, depth * 0.8,
              _u(rng, 0.1, 0.3), M.VEGETATION, col)
    return p.shape()


def build_street_light(rng: np.random.Generator, arm: float | None = None) -> Shape:
    """Street light: pole at the origin, arm along +x (towards the road), lamp head."""
    h = _u(rng, 6.0, 9.0)
    arm = _u(rng, 1.2, 2.6) if arm is None else arm
    col = _jitter(rng, [(110, 112, 115), (40, 44, 40), (170, 170, 165)][int(rng.integers(3))], 6)
    p = _Parts()
    pw = _u(rng, 0.16, 0.24)
    p.add(0.0, 0.0, 0.0, pw + 0.12, pw + 0.12, 0.5, M.POLE, col)
    p.add(0.0, 0.0, 0.5, pw, pw, h - 0.5, M.POLE, col)
    p.add(arm / 2, 0.0, h - 0.25, arm, 0.1, 0.1, M.POLE, col)
    p.add(arm - 0.2, 0.0, h - 0.4, 0.55, 0.25, 0.15, M.METAL, (200, 200, 190))
    return p.shape()


def build_sign(rng: np.random.Generator) -> Shape:
    """Traffic sign: thin post and a reflective plate facing local +x."""
    h = _u(rng, 2.2, 3.0)
    p = _Parts()
    p.add(0.0, 0.0, 0.0, 0.07, 0.07, h, M.POLE, (150, 150, 150))
    ps = _u(rng, 0.5, 0.9)
    col = [(200, 30, 30), (30, 70, 170), (235, 235, 235), (240, 200, 30)][int(rng.integers(4))]
    p.add(0.05, 0.0, h - ps, 0.04, ps, ps, M.RETROREFLECTOR, _jitter(rng, col, 8))
    if rng.random() < 0.3:
        p.add(0.05, 0.0, h - ps - 0.35, 0.04, ps * 0.8, 0.3, M.RETROREFLECTOR, _WHITE)
    return p.shape()


def build_traffic_light(rng: np.random.Generator, arm: float) -> Shape:
    """Traffic-light pole at the origin with a mast arm of length ``arm`` along +x, hanging
    signal heads (bottom at 4.6 m or higher, above any truck) and a pedestrian signal on the
    pole."""
    h = _u(rng, 5.8, 7.0)
    col = _jitter(rng, (90, 92, 95), 8)
    p = _Parts()
    p.add(0.0, 0.0, 0.0, 0.28, 0.28, h, M.POLE, col)
    p.add(arm / 2, 0.0, h - 0.4, arm, 0.14, 0.14, M.POLE, col)
    n = 2 if arm > 5 else 1
    for k in range(n):
        x = arm * (0.95 - 0.4 * k)
        p.add(x, 0.0, h - 1.2, 0.35, 0.35, 1.0, M.PLASTIC, (30, 30, 30))
    p.add(0.22, 0.0, 2.4, 0.25, 0.3, 0.5, M.PLASTIC, (30, 30, 30))
    return p.shape()


def build_tree(rng: np.random.Generator, max_radius: float = 3.0,
               min_canopy_z: float = 2.6) -> Shape:
    """Tree: trunk and 3-6 vegetation boxes forming a rough canopy of horizontal radius at
    most ``max_radius`` with its bottom at or above ``min_canopy_z``."""
    p = _Parts()
    trunk_h = max(min_canopy_z + 0.3, _u(rng, 2.5, 4.0))
    tw = _u(rng, 0.22, 0.45)
    p.add(0.0, 0.0, 0.0, tw, tw, trunk_h + 0.5, M.TRUNK, _jitter(rng, (92, 68, 44), 12))
    col = _pick(rng, _GREENS, amount=12)
    rad = _u(rng, 1.2, max(1.3, max_radius))
    ch = _u(rng, 2.0, 5.0)
    z0 = max(min_canopy_z, trunk_h - 0.5)
    n = int(rng.integers(3, 7))
    for k in range(n):
        s = rad * _u(rng, 0.6, 1.0)
        cx = _u(rng, -rad + s / 2, rad - s / 2) if rad > s / 2 else 0.0
        cy = _u(rng, -rad + s / 2, rad - s / 2) if rad > s / 2 else 0.0
        zz = z0 + _u(rng, 0.0, ch * 0.4)
        p.add(cx, cy, zz, s, s * _u(rng, 0.8, 1.0), ch * _u(rng, 0.5, 0.9), M.VEGETATION,
              _jitter(rng, col, 10))
    return p.shape()


def build_bush(rng: np.random.Generator, size: float | None = None) -> Shape:
    """Bush: 1-3 vegetation boxes, 0.4-1.6 m tall."""
    p = _Parts()
    s = _u(rng, 0.6, 2.2) if size is None else size
    col = _pick(rng, _GREENS, amount=12)
    for _ in range(int(rng.integers(1, 4))):
        ss = s * _u(rng, 0.5, 1.0)
        p.add(_u(rng, -(s - ss) / 2, (s - ss) / 2), _u(rng, -(s - ss) / 2, (s - ss) / 2), 0.0,
              ss, ss * _u(rng, 0.7, 1.0), _u(rng, 0.4, 1.6), M.VEGETATION, _jitter(rng, col, 10))
    return p.shape()


# -- street clutter (unannotated look-alikes) ---------------------------------------------------


def _trash_bin(rng: np.random.Generator) -> Shape:
    p = _Parts()
    s = _u(rng, 0.45, 0.7)
    h = _u(rng, 0.85, 1.2)
    col = _jitter(rng, [(40, 90, 50), (40, 40, 45), (30, 70, 140), (120, 120, 120)]
                  [int(rng.integers(4))], 10)
    p.add(0.0, 0.0, 0.0, s, s * _u(rng, 0.8, 1.0), h - 0.05, M.PLASTIC, col)
    p.add(0.0, 0.0, h - 0.05, s + 0.04, s * 0.9 + 0.04, 0.05, M.PLASTIC, col)
    return p.shape()


def _bollard(rng: np.random.Generator) -> Shape:
    p = _Parts()
    s = _u(rng, 0.14, 0.3)
    h = _u(rng, 0.75, 1.2)
    p.add(0.0, 0.0, 0.0, s, s, h, M.METAL if rng.random() < 0.6 else M.CONCRETE,
          _jitter(rng, (90, 90, 95), 20))
    p.add(0.0, 0.0, h - 0.2, s + 0.01, s + 0.01, 0.08, M.RETROREFLECTOR, _WHITE)
    return p.shape()


def _post(rng: np.random.Generator) -> Shape:
    """Pedestrian-sized post (info pillar, pay station, utility post): the classic
    pedestrian look-alike."""
    p = _Parts()
    w = _u(rng, 0.25, 0.5)
    d = _u(rng, 0.2, 0.45)
    h = _u(rng, 1.4, 2.0)
    col = _jitter(rng, [(70, 70, 75), (150, 150, 150), (30, 60, 110), (110, 40, 40)]
                  [int(rng.integers(4))], 12)
    p.add(0.0, 0.0, 0.0, d, w, h - 0.15, M.METAL, col)
    p.add(0.0, 0.0, h - 0.15, d + 0.06, w + 0.06, 0.15, M.METAL, col)
    if rng.random() < 0.5:
        p.add(d / 2 + 0.02, 0.0, h * 0.5, 0.04, w * 0.7, h * 0.3, M.GLASS, (200, 210, 220))
    return p.shape()


def _mailbox(rng: np.random.Generator) -> Shape:
    p = _Parts()
    col = _jitter(rng, [(30, 60, 140), (190, 30, 30), (230, 190, 40)][int(rng.integers(3))], 8)
    d, w = _u(rng, 0.4, 0.55), _u(rng, 0.45, 0.6)
    p.add(0.0, 0.0, 0.0, d * 0.6, w * 0.6, 0.3, M.METAL, col)
    p.add(0.0, 0.0, 0.3, d, w, _u(rng, 0.8, 1.0), M.METAL, col)
    return p.shape()


def _electrical_box(rng: np.random.Generator) -> Shape:
    p = _Parts()
    d, w, h = _u(rng, 0.4, 0.7), _u(rng, 0.8, 1.6), _u(rng, 1.1, 1.7)
    col = _jitter(rng, [(150, 155, 150), (60, 90, 60), (200, 200, 190)][int(rng.integers(3))], 8)
    p.add(0.0, 0.0, 0.0, d + 0.1, w + 0.1, 0.12, M.CONCRETE, _CONCRETE)
    p.add(0.0, 0.0, 0.12, d, w, h - 0.12, M.METAL, col)
    return p.shape()


def _hydrant(rng: np.random.Generator) -> Shape:
    p = _Parts()
    col = _jitter(rng, [(200, 30, 30), (230, 190, 40), (200, 200, 200)][int(rng.integers(3))], 8)
    p.add(0.0, 0.0, 0.0, 0.28, 0.28, 0.6, M.METAL, col)
    p.add(0.0, 0.0, 0.6, 0.2, 0.2, _u(rng, 0.1, 0.2), M.METAL, col)
    p.add(0.0, 0.0, 0.35, 0.12, 0.42, 0.1, M.METAL, col)
    return p.shape()


def _parking_meter(rng: np.random.Generator) -> Shape:
    p = _Parts()
    h = _u(rng, 1.2, 1.45)
    p.add(0.0, 0.0, 0.0, 0.1, 0.1, h - 0.35, M.POLE, (80, 80, 80))
    p.add(0.0, 0.0, h - 0.35, 0.22, 0.28, 0.35, M.METAL, _jitter(rng, (60, 60, 70), 15))
    return p.shape()


def _newspaper_box(rng: np.random.Generator) -> Shape:
    p = _Parts()
    col = _jitter(rng, [(30, 60, 140), (190, 30, 30), (30, 110, 60), (230, 230, 230)]
                  [int(rng.integers(4))], 8)
    p.add(0.0, 0.0, 0.0, 0.45, 0.5, _u(rng, 0.9, 1.2), M.METAL, col)
    return p.shape()


def _planter(rng: np.random.Generator) -> Shape:
    p = _Parts()
    s = _u(rng, 0.6, 0.9)
    h = _u(rng, 0.4, 0.7)
    p.add(0.0, 0.0, 0.0, s, s, h, M.CONCRETE, _jitter(rng, _CONCRETE, 15))
    p.add(0.0, 0.0, h, s * 0.85, s * 0.85, _u(rng, 0.3, 1.0), M.VEGETATION,
          _pick(rng, _GREENS, amount=12))
    return p.shape()


def _vending(rng: np.random.Generator) -> Shape:
    p = _Parts()
    p.add(0.0, 0.0, 0.0, _u(rng, 0.7, 0.9), _u(rng, 0.9, 1.2), _u(rng, 1.7, 1.95), M.METAL,
          _jitter(rng, [(200, 30, 30), (30, 60, 140), (230, 230, 230)][int(rng.integers(3))], 8))
    return p.shape()


def build_bench(rng: np.random.Generator) -> Shape:
    """Bench along local x, seat facing local -y (backrest at +y)."""
    p = _Parts()
    L = _u(rng, 1.4, 2.0)
    col = _jitter(rng, [(110, 80, 50), (60, 60, 65), (40, 80, 45)][int(rng.integers(3))], 10)
    for sgn in (-1.0, 1.0):
        p.add(sgn * (L / 2 - 0.1), 0.0, 0.0, 0.08, 0.5, 0.42, M.METAL, (50, 50, 50))
    p.add(0.0, 0.0, 0.42, L, 0.5, 0.05, M.PLASTIC, col)
    p.add(0.0, 0.22, 0.47, L, 0.06, 0.4, M.PLASTIC, col)
    return p.shape()


def build_bus_shelter(rng: np.random.Generator, length: float | None = None,
                      depth: float = 1.0) -> Shape:
    """Bus shelter along local x: glass back wall (+y side), side panel, roof, bench."""
    p = _Parts()
    L = _u(rng, 3.0, 4.5) if length is None else length
    h = _u(rng, 2.4, 2.7)
    col = _jitter(rng, (70, 75, 80), 10)
    p.add(0.0, depth / 2 - 0.04, 0.1, L, 0.06, h - 0.3, M.GLASS, (190, 200, 210))
    p.add(L / 2 - 0.04, 0.0, 0.1, 0.06, depth - 0.1, h - 0.3, M.GLASS, (190, 200, 210))
    for sgn in (-1.0, 1.0):
        p.add(sgn * (L / 2 - 0.05), depth / 2 - 0.05, 0.0, 0.1, 0.1, h, M.POLE, col)
    p.add(0.0, 0.0, h - 0.12, L, depth, 0.12, M.METAL, col)
    p.add(0.0, depth / 2 - 0.3, 0.0, L * 0.6, 0.35, 0.45, M.PLASTIC, col)
    return p.shape()


def build_bike_rack(rng: np.random.Generator, length: float) -> Shape:
    """Bicycle rack along local x: low hoops (thin bars)."""
    p = _Parts()
    n = max(2, int(length / 0.8))
    for x in np.linspace(-length / 2 + 0.1, length / 2 - 0.1, n):
        p.add(float(x), 0.0, 0.0, 0.05, 0.6, 0.8, M.METAL, (140, 140, 145))
    return p.shape()


def build_dumpster(rng: np.random.Generator) -> Shape:
    """Waste container about the size of a small car's front half: body, lid, castors."""
    p = _Parts()
    L, W, H = _u(rng, 1.3, 2.1), _u(rng, 0.9, 1.5), _u(rng, 1.1, 1.5)
    col = _jitter(rng, [(40, 90, 50), (30, 60, 130), (80, 80, 85), (160, 60, 30)]
                  [int(rng.integers(4))], 10)
    p.add(0.0, 0.0, 0.15, L, W, H - 0.2, M.METAL, col)
    p.add(0.0, 0.0, H - 0.05, L + 0.05, W + 0.05, 0.05, M.PLASTIC, (30, 30, 30))
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            p.add(sx * (L / 2 - 0.12), sy * (W / 2 - 0.12), 0.0, 0.12, 0.12, 0.15, M.TIRE, _TIRE)
    return p.shape()


def _skip_container(rng: np.random.Generator) -> Shape:
    """Open skip, car-sized: floor, four sloped-looking walls (stepped)."""
    p = _Parts()
    L, W, H = _u(rng, 3.2, 4.6), _u(rng, 1.7, 2.1), _u(rng, 1.1, 1.6)
    col = _jitter(rng, [(230, 170, 30), (220, 110, 20), (40, 90, 150), (60, 110, 60)]
                  [int(rng.integers(4))], 10)
    t = 0.12
    p.add(0.0, 0.0, 0.0, L - 0.6, W, 0.3, M.METAL, col)
    p.add(0.0, 0.0, 0.3, L, W, 0.2, M.METAL, col)
    p.span(-L / 2, L / 2, -W / 2, -W / 2 + t, 0.5, H, M.METAL, col)
    p.span(-L / 2, L / 2, W / 2 - t, W / 2, 0.5, H, M.METAL, col)
    p.span(-L / 2, -L / 2 + t, -W / 2 + t, W / 2 - t, 0.5, H, M.METAL, col)
    p.span(L / 2 - t, L / 2, -W / 2 + t, W / 2 - t, 0.5, H, M.METAL, col)
    return p.shape()


def build_shipping_container(rng: np.random.Generator) -> Shape:
    """Shipping container (20 ft) or site office: truck-sized, unannotated."""
    p = _Parts()
    L = 6.06 if rng.random() < 0.7 else _u(rng, 3.0, 6.0)
    H = _u(rng, 2.4, 2.9)
    col = _jitter(rng, [(160, 50, 40), (40, 80, 140), (60, 110, 60), (200, 200, 195),
                        (200, 140, 40)][int(rng.integers(5))], 12)
    p.add(0.0, 0.0, 0.0, L, 2.44, H, M.METAL, col)
    if rng.random() < 0.4:
        p.add(0.0, -1.24, 0.9, L * 0.3, 0.04, 1.0, M.GLASS, _GLASS)
    return p.shape()


def build_portable_toilet(rng: np.random.Generator) -> Shape:
    """Portable toilet: a pedestrian-height plastic booth."""
    p = _Parts()
    s = _u(rng, 1.1, 1.25)
    col = _jitter(rng, [(40, 90, 170), (40, 120, 60), (200, 120, 30)][int(rng.integers(3))], 10)
    p.add(0.0, 0.0, 0.0, s, s, _u(rng, 2.2, 2.35), M.PLASTIC, col)
    p.add(0.0, 0.0, 2.35, s * 0.9, s * 0.9, 0.1, M.PLASTIC, (230, 230, 230))
    return p.shape()


def build_material_pile(rng: np.random.Generator) -> Shape:
    """Pallets / sand heap / pipes on a construction site: 1-3 low boxes."""
    p = _Parts()
    L, W = _u(rng, 1.0, 3.0), _u(rng, 1.0, 2.5)
    col = _jitter(rng, [(170, 150, 110), (120, 120, 120), (150, 110, 70)][int(rng.integers(3))],
                  15)
    p.add(0.0, 0.0, 0.0, L, W, _u(rng, 0.4, 1.2), M.CONCRETE, col)
    if rng.random() < 0.5:
        p.add(_u(rng, -L / 4, L / 4), _u(rng, -W / 4, W / 4), 0.0, L * 0.5, W * 0.5,
              _u(rng, 0.8, 1.6), M.CONCRETE, col)
    return p.shape()


SMALL_CLUTTER: dict[str, Callable[[np.random.Generator], Shape]] = {
    "trash_bin": _trash_bin,
    "bollard": _bollard,
    "post": _post,
    "mailbox": _mailbox,
    "electrical_box": _electrical_box,
    "hydrant": _hydrant,
    "parking_meter": _parking_meter,
    "newspaper_box": _newspaper_box,
    "planter": _planter,
    "vending_machine": _vending,
}
"""Street furniture that fits a 1 m furniture zone (the shorter footprint side is below
0.95 m). These are deliberately pedestrian- and cone-sized, never annotated."""

LARGE_CLUTTER: dict[str, Callable[[np.random.Generator], Shape]] = {
    "dumpster": build_dumpster,
    "skip_container": _skip_container,
    "portable_toilet": build_portable_toilet,
}
"""Car-sized, unannotated objects for parking lanes, lots and construction sites."""
