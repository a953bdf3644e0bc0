"""Composite shape builders of SynthDrive: tight boxes, ground contact, animation, placement."""

from __future__ import annotations

import numpy as np
import pytest

from distill3d.synth import shapes as S
from distill3d.synth.classes import sample_size
from distill3d.synth.types import Material


def _corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of boxes (N, 7), computed independently of shapes.py."""
    sx = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * 0.5
    sy = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sz = np.array([1, -1, 1, -1, 1, -1, 1, -1]) * 0.5
    lx = sx[None] * boxes[:, 3:4]
    ly = sy[None] * boxes[:, 4:5]
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + c * lx - s * ly
    y = boxes[:, 1:2] + s * lx + c * ly
    z = boxes[:, 2:3] + sz[None] * boxes[:, 5:6]
    return np.stack([x, y, z], axis=-1)


def _check_valid(shape: S.Shape) -> None:
    k = len(shape)
    assert k >= 1
    assert shape.boxes.shape == (k, 7) and shape.boxes.dtype == np.float64
    assert shape.material.shape == (k,) and shape.material.dtype == np.int16
    assert shape.color.shape == (k, 3) and shape.color.dtype == np.uint8
    assert shape.swing.shape == (k,) and shape.in_box.shape == (k,)
    assert np.all(shape.boxes[:, 3:6] > 0), "every part has positive size"
    assert np.all(np.isfinite(shape.boxes))
    valid = {int(m) for m in Material}
    assert set(np.unique(shape.material).tolist()) <= valid


def _exact_builders() -> list[tuple[str, object]]:
    return [
        ("car", lambda r, sz: S.build_car(r, sz)),
        ("car", lambda r, sz: S.build_van(r, (5.0, 2.0, 2.2))),
        ("truck", lambda r, sz: S.build_truck(r, sz, "box")),
        ("truck", lambda r, sz: S.build_truck(r, sz, "flatbed")),
        ("truck", lambda r, sz: S.build_truck(r, sz, "dump")),
        ("truck", lambda r, sz: S.build_truck(r, sz, "tractor")),
        ("truck", lambda r, sz: S.build_truck(r, (5.4, 2.0, 1.9), "pickup")),
        ("bus", lambda r, sz: S.build_bus(r, sz)),
        ("bus", lambda r, sz: S.build_bus(r, (11.0, 2.55, 4.2))),
        ("trailer", lambda r, sz: S.build_trailer(r, sz, "semi")),
        ("trailer", lambda r, sz: S.build_trailer(r, (7.0, 2.5, 3.2), "drawbar")),
        ("trailer", lambda r, sz: S.build_trailer(r, (3.5, 1.8, 1.4), "small")),
        ("traffic_cone", lambda r, sz: S.build_traffic_cone(r, sz)),
        ("barrier", lambda r, sz: S.build_barrier(r, sz, "jersey")),
        ("barrier", lambda r, sz: S.build_barrier(r, sz, "water")),
        ("barrier", lambda r, sz: S.build_barrier(r, sz, "aframe")),
    ]


@pytest.mark.parametrize("idx", range(len(_exact_builders())))
def test_exact_builders_match_requested_size(idx: int) -> None:
    name, build = _exact_builders()[idx]
    for seed in range(12):
        rng = np.random.default_rng(seed)
        size = sample_size(name, rng)
        shape = build(rng, size)
        _check_valid(shape)
        tb = shape.tight_box()
        boxes = shape.boxes[shape.in_box]
        cs = _corners(boxes).reshape(-1, 3)
        lo, hi = cs.min(axis=0), cs.max(axis=0)
        np.testing.assert_allclose(hi - lo, tb[3:6], atol=1e-9)
        np.testing.assert_allclose((hi + lo) / 2, tb[:3], atol=1e-9)
        assert lo[2] == pytest.approx(0.0, abs=1e-9), "stands on the ground"
        requested = {
            1: (5.0, 2.0, 2.2), 6: (5.4, 2.0, 1.9), 8: (11.0, 2.55, 4.2), 10: (7.0, 2.5, 3.2),
            11: (3.5, 1.8, 1.4)}.get(idx, tuple(size))
        np.testing.assert_allclose(tb[3:6], requested, atol=1e-9)
        np.testing.assert_allclose(tb[:2], 0.0, atol=1e-9)


def test_mirrors_are_outside_the_box() -> None:
    rng = np.random.default_rng(0)
    shape = S.build_car(rng, (4.6, 1.95, 1.7), mirrors=True)
    assert (~shape.in_box).sum() == 2
    tb = shape.tight_box()
    mir = _corners(shape.boxes[~shape.in_box]).reshape(-1, 3)
    assert np.abs(mir[:, 1]).max() > tb[4] / 2 + 0.05, "mirrors stick out of the box"
    assert S.tight_box_of(shape.boxes)[4] > tb[4]


@pytest.mark.parametrize("rider", [False, True])
def test_cycles(rider: bool) -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        for name, build in (("bicycle", S.build_bicycle), ("motorcycle", S.build_motorcycle)):
            size = sample_size(name, rng)
            shape = build(rng, size, rider)
            _check_valid(shape)
            tb = shape.tight_box()
            np.testing.assert_allclose(tb[3:5], size[:2], atol=1e-9)
            assert tb[2] - tb[5] / 2 == pytest.approx(0.0, abs=1e-9)
            if rider:
                assert tb[5] > 1.4, "a rider makes the cycle tall"
                assert (shape.material == Material.CLOTH).any()
            else:
                assert tb[5] < 1.4


def test_pedestrian_walking_animation_keeps_box_centred() -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        shape = S.recenter(S.build_pedestrian(rng, sample_size("pedestrian", rng), "walking",
                                              ["adult", "child", "worker"][seed % 3]))
        _check_valid(shape)
        assert shape.animated
        lengths = []
        for phase in np.linspace(0, 2 * np.pi, 17):
            tb = shape.tight_box(phase)
            assert abs(tb[0]) < 1e-12 and abs(tb[1]) < 1e-12, "centre must not move"
            assert tb[2] - tb[5] / 2 == pytest.approx(0.0, abs=1e-12)
            lengths.append(tb[3])
        assert max(lengths) - min(lengths) > 0.1, "the stride changes the length"


@pytest.mark.parametrize("pose", ["standing", "sitting"])
def test_pedestrian_rigid_poses(pose: str) -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        size = sample_size("pedestrian", rng)
        shape = S.build_pedestrian(rng, size, pose)
        _check_valid(shape)
        assert not shape.animated
        tb = S.recenter(shape).tight_box()
        assert tb[2] - tb[5] / 2 == pytest.approx(0.0, abs=1e-9)
        if pose == "sitting":
            assert tb[5] < 0.85 * size[2]
        else:
            assert tb[5] == pytest.approx(size[2], abs=1e-9)


def test_construction_vehicles_and_recenter() -> None:
    for seed in range(12):
        rng = np.random.default_rng(seed)
        kind = ["excavator", "loader", "roller"][seed % 3]
        shape = S.build_construction_vehicle(rng, sample_size("construction_vehicle", rng), kind)
        _check_valid(shape)
        rc = S.recenter(shape)
        tb = rc.tight_box()
        np.testing.assert_allclose(tb[:2], 0.0, atol=1e-9)
        assert tb[2] - tb[5] / 2 == pytest.approx(0.0, abs=1e-9)
        assert 2.0 < tb[3] < 12.0 and 1.5 < tb[4] < 5.0 and 2.0 < tb[5] < 4.5


def test_scenery_and_clutter_builders() -> None:
    rng = np.random.default_rng(3)
    shapes = [
        S.build_building(rng, 20.0, 15.0, 25.0), S.build_wall(rng, 12.0, 1.8),
        S.build_fence(rng, 15.0, 1.5), S.build_hedge(rng, 6.0, 1.2, 0.8),
        S.build_street_light(rng), S.build_sign(rng), S.build_traffic_light(rng, 5.0),
        S.build_tree(rng, 2.5, 3.0), S.build_bush(rng), S.build_bench(rng),
        S.build_bus_shelter(rng), S.build_bike_rack(rng, 3.0), S.build_shipping_container(rng),
        S.build_portable_toilet(rng), S.build_material_pile(rng), S.build_dumpster(rng),
    ]
    shapes += [b(rng) for b in S.SMALL_CLUTTER.values()]
    shapes += [b(rng) for b in S.LARGE_CLUTTER.values()]
    for shape in shapes:
        _check_valid(shape)
        cs = _corners(shape.boxes).reshape(-1, 3)
        assert cs[:, 2].min() >= -1e-9
    for name, b in S.SMALL_CLUTTER.items():
        tb = S.recenter(b(np.random.default_rng(1))).tight_box()
        assert min(tb[3], tb[4]) < 0.95, f"{name} must fit the furniture zone"
    # trees respect the canopy limits
    for seed in range(10):
        tree = S.build_tree(np.random.default_rng(seed), max_radius=2.0, min_canopy_z=4.5)
        canopy = tree.boxes[tree.material == Material.VEGETATION]
        cs = _corners(canopy)
        assert cs[..., 2].min() >= 4.5 - 1e-9
        assert np.abs(cs[..., :2]).max() <= 2.0 + 1e-9


def test_place_matches_manual_rotation() -> None:
    rng = np.random.default_rng(5)
    shape = S.build_car(rng, (4.5, 1.9, 1.6))
    x, y, yaw = 10.0, -3.0, 0.7
    placed = S.place(shape, x, y, yaw)
    c, s = np.cos(yaw), np.sin(yaw)
    local = _corners(shape.boxes)
    manual = np.stack([x + c * local[..., 0] - s * local[..., 1],
                       y + s * local[..., 0] + c * local[..., 1], local[..., 2]], axis=-1)
    np.testing.assert_allclose(_corners(placed), manual, atol=1e-9)


def test_builders_are_deterministic() -> None:
    a = S.build_truck(np.random.default_rng(42), (7.0, 2.5, 3.0))
    b = S.build_truck(np.random.default_rng(42), (7.0, 2.5, 3.0))
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.color, b.color)
    c = S.build_truck(np.random.default_rng(43), (7.0, 2.5, 3.0))
    assert not np.array_equal(a.boxes, c.boxes)
