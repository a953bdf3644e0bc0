"""Report pictures: valid PNGs in every case, BEV orientation, box drawing, curves input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill3d.report import plots
from distill3d.report.plots import (
    bev_image,
    box_segments,
    load_records,
    plot_bev_detections,
    plot_bev_heatmaps,
    plot_importance_points,
    plot_training_curves,
)
from distill3d.structures import BEVGrid, Detections

CLASSES = ("car", "pedestrian")
GRID = BEVGrid(-8.0, -4.0, 8.0, 4.0, 8, 16)  # 1 m cells, wider than tall


def _gt() -> torch.Tensor:
    return torch.tensor([[3.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0],
                         [-4.0, -1.0, 0.0, 0.8, 0.8, 1.7, -1.2, math.nan, math.nan]])


def _detections() -> Detections:
    boxes = _gt() + torch.tensor([0.2, -0.1, 0, 0, 0, 0, 0.05, 0, 0])
    return Detections(boxes, torch.tensor([0.9, 0.4]), torch.tensor([0, 1]))


def _check_png(path: Path, min_size: tuple[int, int] = (200, 150)) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        size = image.size
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write
    return size


def test_bev_detections_png(tmp_path: Path) -> None:
    points = torch.randn(40_000, 4) * 10.0  # more than the 30k drawn
    out = plot_bev_detections(tmp_path / "sub" / "bev.png", points, _gt(),
                              {"teacher": _detections(), "student": Detections.empty(), "distilled": _detections()},
                              class_names=CLASSES, extent=(-10, -10, 10, 10), title="sample 0")
    assert out == tmp_path / "sub" / "bev.png"
    width, height = _check_png(out)
    assert width > 2 * height  # one row of three panels


def test_bev_detections_without_points_gt_or_detections(tmp_path: Path) -> None:
    out = plot_bev_detections(tmp_path / "empty.png", None, None, {"teacher": Detections.empty()},
                              class_names=CLASSES)
    _check_png(out)
    out = plot_bev_detections(tmp_path / "numpy.png", np.zeros((0, 3)), np.zeros((0, 9)),
                              {"a": _detections()}, class_names=(), score_threshold=0.95)
    _check_png(out)


def test_box_segments_outline_and_heading_tick() -> None:
    box = np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 1.0, 0.0]])
    segments = box_segments(box)
    assert segments.shape == (1, 5, 2, 2)
    corners = segments[0, :4, 0]
    np.testing.assert_allclose(np.sort(corners[:, 0]), [-1, -1, 3, 3])
    np.testing.assert_allclose(np.sort(corners[:, 1]), [1, 1, 3, 3])
    np.testing.assert_allclose(segments[0, :4, 1], np.roll(corners, -1, axis=0))  # closed outline
    np.testing.assert_allclose(segments[0, 4], [[1.0, 2.0], [3.0, 2.0]])  # tick towards +x at yaw 0
    rotated = box_segments(torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, math.pi / 2]]))
    np.testing.assert_allclose(rotated[0, 4], [[0.0, 0.0], [0.0, 2.0]], atol=1e-6)  # CCW: towards +y
    assert box_segments(None).shape == (0, 5, 2, 2)


def test_bev_image_orientation() -> None:
    bev = torch.zeros(GRID.shape)
    centres = GRID.cell_centers()
    bev[(centres[..., 0] > 0) & (centres[..., 1] > 0)] = 1.0  # the x > 0, y > 0 quadrant
    image = bev_image(bev, GRID)
    assert image.shape == GRID.shape
    h, w = image.shape
    assert np.all(image[: h // 2, w // 2:] == 1.0)  # upper right of the picture
    assert image.sum() == (h // 2) * (w // 2)
    with pytest.raises(ValueError, match="does not match"):
        bev_image(torch.zeros(4, 4), GRID)
    assert bev_image(bev[None], GRID).shape == GRID.shape  # (1, H, W) accepted


def test_rendered_heatmap_is_bright_where_the_map_is(tmp_path: Path) -> None:
    """The drawn figure: the pixel at metric (5.5, 2.5) (map 1) is bright and the pixel at
    (-5.5, -2.5) (map 0) is dark."""
    bev = np.zeros(GRID.shape)
    row, col = GRID.xy_to_cell(torch.tensor([5.5, 2.5])).long().tolist()[::-1]
    bev[row, col] = 1.0
    fig = plots._heatmap_figure({"one cell": bev}, GRID, boxes=None, title=None, cmap="gray",
                                panel_size=3.0, dpi=100)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float).mean(axis=-1)
    ax = fig.axes[0]

    def brightness(x: float, y: float) -> float:
        px, py = ax.transData.transform((x, y))
        return pixels[round(pixels.shape[0] - py), round(px)]

    assert brightness(5.5, 2.5) > 200
    assert brightness(-5.5, -2.5) < 50
    assert brightness(5.5, -2.5) < 50  # not flipped vertically
    assert brightness(-5.5, 2.5) < 50  # not flipped horizontally


def test_bev_heatmaps_png(tmp_path: Path) -> None:
    coarse = GRID.downsample(2)
    out = plot_bev_heatmaps(tmp_path / "maps.png",
                            {"GT box mask": np.eye(8, 16), "teacher score": torch.rand(1, 4, 8),
                             "constant": np.full(GRID.shape, np.nan)},
                            {"GT box mask": GRID, "teacher score": coarse, "constant": GRID},
                            boxes=_gt(), title="maps")
    _check_png(out)
    with pytest.raises(KeyError):
        plot_bev_heatmaps(tmp_path / "x.png", {"a": np.zeros(GRID.shape)}, {"b": GRID})


def _records() -> list[dict]:
    train = [{"kind": "train", "epoch": 1, "step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 6)]
    train.append({"kind": "train", "epoch": 1, "step": 6, "loss": None})
    evals = [{"kind": "eval", "epoch": e, "step": 5 * e, "mAP": 0.1 * e, "NDS": 0.2 * e} for e in (1, 2)]
    return [*train, {"kind": "epoch", "epoch": 1, "step": 5, "loss": 0.5}, *evals]


def test_training_curves_from_files_and_lists(tmp_path: Path) -> None:
    run = tmp_path / "run_a"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    assert len(load_records(run)) == len(_records())
    assert load_records(run / "metrics.jsonl") == load_records(run)
    out = plot_training_curves(tmp_path / "curves.png",
                               {"a": run, "b": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]},
                               keys=("loss", "missing_key"), log_y=True)
    _check_png(out)


def test_training_curves_with_nothing_to_draw(tmp_path: Path) -> None:
    _check_png(plot_training_curves(tmp_path / "none.png", {"a": []}), min_size=(100, 100))
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "x.png", {"a": tmp_path / "no_such_run"})


def test_series_skips_other_kinds_and_missing_values() -> None:
    xs, ys = plots._series(_records(), ("train", None), "step", "loss")
    assert xs == [1.0, 2.0, 3.0, 4.0, 5.0] and ys[0] == 2.0
    xs, ys = plots._series(_records(), ("eval",), "epoch", "NDS")
    assert xs == [1.0, 2.0] and ys == pytest.approx([0.2, 0.4])


def test_importance_points_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = plot_importance_points(tmp_path / "imp.png", torch.rand(50, 2) * 10, torch.rand(50),
                                 points=rng.normal(size=(1000, 3)) * 5, boxes=_gt(), title="top-50 pillars")
    _check_png(out)
    _check_png(plot_importance_points(tmp_path / "none.png", np.zeros((0, 2)), np.zeros(0)))
    _check_png(plot_importance_points(tmp_path / "ext.png", np.ones((3, 2)), np.ones(3), extent=(-5, -5, 5, 5)))
    with pytest.raises(ValueError):
        plot_importance_points(tmp_path / "bad.png", np.ones((3, 2)), np.ones(4))
