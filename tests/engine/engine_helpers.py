"""A tiny detector and a synthetic dataset for the engine tests.

They implement the real contracts (``Detector``: forward -> DetectorOutput, loss, decode;
``DetectionDataset`` of ``Sample``) so the tests exercise the trainer exactly as the real
detectors will, without depending on them.

* :class:`TinyBEVDetector`: a BEV occupancy / height map of the points -> two convs (with
  dropout, so RNG state matters) -> a class heatmap and 8 regression channels. The loss is
  a per-sample mean (BCE on the heatmap, L1 at GT centre cells), so the mean over ranks of
  per-rank losses equals the loss of the whole batch (what the DDP test needs). No
  BatchNorm.
* :class:`BoxWorld`: deterministic samples (cars and pedestrians with points on them and a
  ground plane), generated from the index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill3d.data.dataset import DetectionDataset
from distill3d.data.sample import Sample
from distill3d.models.base import Detector, DetectorOutput, Tap
from distill3d.structures import BEVGrid, Detections

CLASS_NAMES = ("car", "pedestrian")
RANGE = (-8.0, -8.0, -2.0, 8.0, 8.0, 2.0)
SIZES = {0: (4.0, 1.8, 1.6), 1: (0.7, 0.7, 1.7)}


class BoxWorld(DetectionDataset):
    """``n`` synthetic LiDAR frames: 1-3 objects each, points on them and on the ground."""

    def __init__(self, n: int = 16, seed: int = 0, transforms: Any = (), prefix: str = "frame"):
        super().__init__(CLASS_NAMES, transforms, seed)
        self.n = n
        self.prefix = prefix

    def __len__(self) -> int:
        return self.n

    def sample_tokens(self) -> list[str]:
        return [f"{self.prefix}-{i:04d}" for i in range(self.n)]

    def load_sample(self, index: int) -> Sample:
        rng = np.random.default_rng(10_000 + index)
        m = int(rng.integers(1, 4))
        labels = rng.integers(0, 2, size=m)
        boxes = np.zeros((m, 9), dtype=np.float32)
        pts = [np.column_stack([rng.uniform(-8, 8, 150), rng.uniform(-8, 8, 150),
                                np.full(150, -1.0), rng.uniform(0, 0.2, 150)])]
        for j in range(m):
            l, w, h = SIZES[int(labels[j])]
            x, y = rng.uniform(-6, 6, 2)
            yaw = rng.uniform(-math.pi, math.pi)
            boxes[j] = (x, y, -1.0 + h / 2, l, w, h, yaw, 0.0, 0.0)
            local = rng.uniform(-0.5, 0.5, (60, 3)) * np.array([l, w, h])
            c, s = math.cos(yaw), math.sin(yaw)
            xy = local[:, :2] @ np.array([[c, s], [-s, c]]) + np.array([x, y])
            pts.append(np.column_stack([xy, local[:, 2] - 1.0 + h / 2, rng.uniform(0.5, 1.0, 60)]))
        points = torch.from_numpy(np.concatenate(pts).astype(np.float32))
        return Sample(token=self.sample_tokens()[index], points=points, boxes=torch.from_numpy(boxes),
                      labels=torch.from_numpy(labels.astype(np.int64)), class_names=CLASS_NAMES)


class TinyBEVDetector(Detector):
    """A small conv net over a BEV occupancy map (see the module docstring)."""

    def __init__(self, width: int = 8, cell: float = 0.5, dropout: float = 0.1):
        super().__init__()
        self.class_names = CLASS_NAMES
        self.grid = BEVGrid.from_range(RANGE, (cell, cell))
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.heatmap = nn.Conv2d(width, len(CLASS_NAMES), 1)
        self.reg = nn.Conv2d(width, 8, 1)
        nn.init.constant_(self.heatmap.bias, -2.0)

    def tap_names(self) -> list[str]:
        return ["bev", "neck"]

    def _bev(self, batch: Any) -> Tensor:
        g = self.grid
        h, w = g.shape
        b = batch.batch_size
        pts = batch.points
        cx, cy = g.cell_size
        col = ((pts[:, 0] - g.x_min) / cx).floor().long()
        row = ((pts[:, 1] - g.y_min) / cy).floor().long()
        keep = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        idx = batch.point_batch_index[keep] * h * w + row[keep] * w + col[keep]
        flat = torch.zeros(3, b * h * w, device=pts.device)
        flat[0].index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        flat[1].index_add_(0, idx, pts[keep, 2])
        flat[2].index_add_(0, idx, pts[keep, 3])
        count = flat[0].clamp(min=1.0)
        feats = torch.stack([torch.log1p(flat[0]), flat[1] / count, flat[2] / count])
        return feats.view(3, b, h, w).permute(1, 0, 2, 3).contiguous()

    def forward(self, batch: Any) -> DetectorOutput:
        bev = self._bev(batch)
        x = F.relu(self.conv1(bev))
        x = self.drop(x)
        x = F.relu(self.conv2(x))
        return DetectorOutput(taps={"bev": Tap(bev, "bev", self.grid), "neck": Tap(x, "bev", self.grid)},
                              heads=[{"heatmap": self.heatmap(x), "reg": self.reg(x)}],
                              head_grid=self.grid)

    def _targets(self, batch: Any) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        g = self.grid
        h, w = g.shape
        cx, cy = g.cell_size
        heat = torch.zeros(batch.batch_size, len(CLASS_NAMES), h, w, device=batch.points.device)
        cells = []
        for b, (boxes, labels) in enumerate(zip(batch.boxes_list, batch.labels_list)):
            col = ((boxes[:, 0] - g.x_min) / cx).floor().long().clamp(0, w - 1)
            row = ((boxes[:, 1] - g.y_min) / cy).floor().long().clamp(0, h - 1)
            heat[b, labels, row, col] = 1.0
            cells.append((row, col, boxes))
        return heat, cells

    def _encode(self, boxes: Tensor, row: Tensor, col: Tensor) -> Tensor:
        g = self.grid
        cx, cy = g.cell_size
        dx = (boxes[:, 0] - g.x_min) / cx - col.float() - 0.5
        dy = (boxes[:, 1] - g.y_min) / cy - row.float() - 0.5
        return torch.stack([dx, dy, boxes[:, 2], boxes[:, 3].log(), boxes[:, 4].log(), boxes[:, 5].log(),
                            boxes[:, 6].sin(), boxes[:, 6].cos()], dim=1)

    def loss(self, batch: Any, output: DetectorOutput) -> dict[str, Tensor]:
        head = output.heads[0]
        heat, cells = self._targets(batch)
        per_sample_heat = F.binary_cross_entropy_with_logits(head["heatmap"], heat,
                                                             reduction="none").mean(dim=(1, 2, 3))
        reg_terms = []
        for b, (row, col, boxes) in enumerate(cells):
            if boxes.shape[0] == 0:
                reg_terms.append(head["reg"].sum() * 0.0)
                continue
            pred = head["reg"][b, :, row, col].t()
            reg_terms.append(F.l1_loss(pred, self._encode(boxes, row, col)))
        loss_heatmap = per_sample_heat.mean() * 10.0
        loss_reg = torch.stack(reg_terms).mean() * 0.5
        return {"loss": loss_heatmap + loss_reg, "loss_heatmap": loss_heatmap, "loss_reg": loss_reg}

    @torch.no_grad()
    def decode(self, output: DetectorOutput) -> list[Detections]:
        head = output.heads[0]
        g = self.grid
        cx, cy = g.cell_size
        scores_all = head["heatmap"].sigmoid()
        b, k, h, w = scores_all.shape
        out = []
        for i in range(b):
            scores, flat = scores_all[i].reshape(-1).topk(min(20, k * h * w))
            keep = scores > 0.1
            scores, flat = scores[keep], flat[keep]
            labels = flat // (h * w)
            row = (flat % (h * w)) // w
            col = flat % w
            reg = head["reg"][i, :, row, col].t()
            x = g.x_min + (col.float() + 0.5 + reg[:, 0]) * cx
            y = g.y_min + (row.float() + 0.5 + reg[:, 1]) * cy
            size = reg[:, 3:6].clamp(-3, 3).exp()
            yaw = torch.atan2(reg[:, 6], reg[:, 7])
            nan = torch.full_like(x, float("nan"))
            boxes = torch.stack([x, y, reg[:, 2], size[:, 0], size[:, 1], size[:, 2], yaw, nan, nan], dim=1)
            out.append(Detections(boxes, scores, labels.long()))
        return out


def centre_recall_evaluator(dataset: BoxWorld, radius: float = 1.0) -> Any:
    """An ``evaluate_fn``: the share of GT boxes with a same-class detection of score >= 0.3
    within ``radius`` metres (``recall``, the primary metric), and the mean detections per
    sample (``dets_per_sample``). Writes ``recall.txt`` into the output folder."""
    gt = {dataset.sample_tokens()[i]: dataset.load_sample(i) for i in range(len(dataset))}

    def evaluate(predictions: Mapping[str, Any], out_dir: Path | None) -> dict[str, float]:
        hit = total = dets = 0
        for token, sample in gt.items():
            det = predictions[token].detections
            dets += len(det)
            for box, label in zip(sample.boxes, sample.labels):
                total += 1
                sel = (det.labels == label) & (det.scores >= 0.3)
                if sel.any() and (det.boxes[sel, :2] - box[:2]).norm(dim=1).min() <= radius:
                    hit += 1
        metrics = {"recall": hit / max(1, total), "dets_per_sample": dets / max(1, len(gt))}
        if out_dir is not None:
            (out_dir / "recall.txt").write_text(f"{metrics['recall']}\n")
        return metrics

    evaluate.primary_metric = "recall"  # type: ignore[attr-defined]
    return evaluate
