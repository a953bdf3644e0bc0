"""BEV feature-distillation losses (distill3d.distill.losses.feature) against brute-force
references written here with loops and plain formulas.

Grid: 8x8 cells of 1 m over [-4, 4)^2, cell (row i, col j) centred at
``(x, y) = (-3.5 + j, -3.5 + i)``. Every test box has its edges on cell boundaries, so which
cell centres it contains is unambiguous and its cell count equals its area in cells.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from distill3d.distill.losses import base as loss_base
from distill3d.distill.losses.feature import (
    AttentionTransferLoss,
    BoxRegionMimicLoss,
    FGDLoss,
    FitNetLoss,
)
from distill3d.models.base import Tap
from distill3d.structures import BEVGrid, Detections

GRID = BEVGrid(-4, -4, 4, 4, 8, 8)
B, C = 2, 4


def _box(x: float, y: float, length: float, width: float, yaw: float = 0.0) -> list[float]:
    return [x, y, 0.0, length, width, 1.5, yaw, 0.0, 0.0]


# sample 0: A (2x2 at the origin: rows 3-4, cols 3-4) and B (4 m along y after yaw pi/2:
# rows 4-7, cols 1-2); sample 1: C (4x4: rows 1-4, cols 3-6) containing D (= A).
BOX_A = _box(0.0, 0.0, 2.0, 2.0)
BOX_B = _box(-2.0, 2.0, 4.0, 2.0, math.pi / 2)
BOX_C = _box(1.0, -1.0, 4.0, 4.0)
BOX_D = _box(0.0, 0.0, 2.0, 2.0)
BOX_FAR = _box(-2.5, -2.5, 1.0, 1.0)  # a low-score teacher box (row 1, col 1)


# FGD's references use boxes that do not overlap: where boxes overlap, masks.box_area_scale
# divides by the cells a box *owns* after the smallest-box-wins resolution, whereas FGD's code
# uses the full box area; both agree on disjoint boxes.
FGD_BOXES = [[BOX_A, BOX_B], [BOX_C, BOX_FAR]]


def gt_boxes() -> list[Tensor]:
    return [torch.tensor([BOX_A, BOX_B]), torch.tensor([BOX_C, BOX_D])]


def fgd_context() -> FakeContext:
    return FakeContext([torch.tensor(sample) for sample in FGD_BOXES])


def teacher_dets() -> list[Detections]:
    first = Detections(torch.tensor([BOX_A, BOX_FAR]), torch.tensor([0.9, 0.1]), torch.tensor([0, 0]))
    return [first, Detections.empty()]


@dataclass
class FakeContext:
    """The part of KDContext the feature losses use."""

    gt: list[Tensor]
    dets: list[Detections] = field(default_factory=lambda: [Detections.empty(), Detections.empty()])
    cache: dict[Any, Any] = field(default_factory=dict)

    def gt_boxes(self) -> list[Tensor]:
        return self.gt

    def teacher_detections(self) -> list[Detections]:
        return self.dets


def taps(c_s: int = C, c_t: int = C, seed: int = 0) -> tuple[Tap, Tap]:
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(B, c_s, 8, 8, generator=gen).requires_grad_(True)
    t = torch.randn(B, c_t, 8, 8, generator=gen).requires_grad_(True)
    return Tap(s, "bev", GRID), Tap(t, "bev", GRID)


def same_taps() -> tuple[Tap, Tap]:
    s, _ = taps()
    return s, Tap(s.tensor.detach().clone().requires_grad_(True), "bev", GRID)


# ---------------------------------------------------------------------------------------------
# brute-force references
# ---------------------------------------------------------------------------------------------


def cells_in_box(box: list[float]) -> list[tuple[int, int]]:
    """(row, col) of every cell whose centre lies in the rotated BEV footprint of ``box``."""
    x, y, _, length, width, _, yaw = box[:7]
    out = []
    for i in range(8):
        for j in range(8):
            dx, dy = -3.5 + j - x, -3.5 + i - y
            lx = math.cos(yaw) * dx + math.sin(yaw) * dy
            ly = -math.sin(yaw) * dx + math.cos(yaw) * dy
            if abs(lx) < length / 2 and abs(ly) < width / 2:
                out.append((i, j))
    return out


def ref_region_weights(boxes: list[list[list[float]]]) -> Tensor:
    """(B, 8, 8) sum over containing boxes of 1/cells."""
    m = torch.zeros(len(boxes), 8, 8)
    for b, sample in enumerate(boxes):
        for box in sample:
            cells = cells_in_box(box)
            for i, j in cells:
                m[b, i, j] += 1.0 / len(cells)
    return m


def ref_fg_scale(boxes: list[list[list[float]]]) -> Tensor:
    """(B, 8, 8) 1/cells of the smallest containing box, 0 outside."""
    m = torch.zeros(len(boxes), 8, 8)
    for b, sample in enumerate(boxes):
        for box in sample:
            cells = cells_in_box(box)
            for i, j in cells:
                m[b, i, j] = max(float(m[b, i, j]), 1.0 / len(cells))
    return m


def ref_mimic(s: Tensor, t: Tensor, boxes: list[list[list[float]]]) -> Tensor:
    m = ref_region_weights(boxes)
    n = sum(len(sample) for sample in boxes)
    total = torch.zeros(())
    for b in range(s.shape[0]):
        for i in range(8):
            for j in range(8):
                total = total + m[b, i, j] * torch.sqrt(((s[b, :, i, j] - t[b, :, i, j]) ** 2).sum())
    return total / (s.shape[0] * max(n, 1))


def ref_softmax(v: Tensor) -> Tensor:
    e = torch.exp(v - v.max())
    return e / e.sum()


def ref_attentions(f: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """Per-sample spatial (B, H, W) and channel (B, C) FGD attentions."""
    b, c, h, w = f.shape
    spatial = torch.stack([h * w * ref_softmax(f[k].abs().sum(0).flatten() / c / temp).view(h, w)
                           for k in range(b)])
    channel = torch.stack([c * ref_softmax(f[k].abs().sum((1, 2)) / (h * w) / temp) for k in range(b)])
    return spatial, channel


def ref_gc(block: torch.nn.Module, f: Tensor) -> Tensor:
    """GcBlock with plain matrix products on the block's own weights."""
    b, c, h, w = f.shape
    out = []
    for k in range(b):
        x = f[k].reshape(c, h * w)  # (C, HW)
        logits = block.conv_mask.weight.view(1, c) @ x + block.conv_mask.bias.view(1, 1)
        ctx = x @ ref_softmax(logits.flatten())  # (C,)
        conv1, norm, _, conv2 = block.channel_add
        hid = conv1.weight.view(-1, c) @ ctx + conv1.bias
        hid = (hid - hid.mean()) / torch.sqrt(hid.var(unbiased=False) + norm.eps)
        hid = torch.relu(hid * norm.weight.flatten() + norm.bias.flatten())
        add = conv2.weight.view(c, -1) @ hid + conv2.bias
        out.append(f[k] + add.view(c, 1, 1))
    return torch.stack(out)


def ref_fgd(loss: FGDLoss, s: Tensor, t: Tensor, boxes: list[list[list[float]]]) -> dict[str, Tensor]:
    temp = loss.temperature
    fg = ref_fg_scale(boxes)
    bg = torch.zeros_like(fg)
    for b in range(fg.shape[0]):
        n_bg = int((fg[b] == 0).sum())
        bg[b] = (fg[b] == 0).float() / max(n_bg, 1)
    sp_t, ch_t = ref_attentions(t, temp)
    sp_s, ch_s = ref_attentions(s, temp)
    fg_sum = bg_sum = torch.zeros(())
    for b in range(s.shape[0]):
        for ch in range(s.shape[1]):
            w = sp_t[b] * ch_t[b, ch] * (s[b, ch] - t[b, ch]) ** 2
            fg_sum = fg_sum + (fg[b] * w).sum()
            bg_sum = bg_sum + (bg[b] * w).sum()
    n = s.shape[0]
    return {
        "focal_fg": loss.alpha * fg_sum / n,
        "focal_bg": loss.beta * bg_sum / n,
        "attention": loss.gamma * ((ch_s - ch_t).abs().sum() + (sp_s - sp_t).abs().sum()) / n,
        "global": loss.lam * ((ref_gc(loss.gc_student, s) - ref_gc(loss.gc_teacher, t)) ** 2).sum() / n,
    }


# ---------------------------------------------------------------------------------------------
# registry and shape checks
# ---------------------------------------------------------------------------------------------


def test_registered_names() -> None:
    expected = {"fitnet": FitNetLoss, "attention_transfer": AttentionTransferLoss, "fgd": FGDLoss,
                "box_region_mimic": BoxRegionMimicLoss}
    for name, cls in expected.items():
        assert loss_base._REGISTRY[name] is cls
        assert cls.input_kind == "bev"
    assert AttentionTransferLoss.needs_same_channels is False
    assert FitNetLoss.needs_same_channels and FGDLoss.needs_same_channels and BoxRegionMimicLoss.needs_same_channels


@pytest.mark.parametrize("make", [
    lambda: FitNetLoss(4, 6),
    lambda: FGDLoss(6, 6),
    lambda: BoxRegionMimicLoss(4, 6, boxes="gt"),
])
def test_channel_mismatch_names_both_shapes(make: Any) -> None:
    s, t = taps(c_s=4, c_t=6)
    with pytest.raises(ValueError, match=re.escape("(2, 4, 8, 8)") + ".*" + re.escape("(2, 6, 8, 8)")):
        make()(s, t, FakeContext(gt_boxes(), teacher_dets()))


def test_attention_transfer_needs_same_cells() -> None:
    s = Tap(torch.randn(2, 4, 8, 8), "bev", GRID)
    t = Tap(torch.randn(2, 4, 4, 4), "bev", GRID.downsample(2))
    with pytest.raises(ValueError, match=re.escape("(2, 4, 4, 4)")):
        AttentionTransferLoss(4, 4)(s, t, FakeContext(gt_boxes()))


# ---------------------------------------------------------------------------------------------
# fitnet and attention transfer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_fitnet_matches_reference(normalize: bool) -> None:
    s, t = taps()
    x, y = s.tensor.detach(), t.tensor.detach()
    if normalize:
        x = x / torch.sqrt((x ** 2).sum(1, keepdim=True))
        y = y / torch.sqrt((y ** 2).sum(1, keepdim=True))
    ref = ((x - y) ** 2).sum() / x.numel()
    out = FitNetLoss(C, C, normalize=normalize)(s, t, FakeContext(gt_boxes()))
    assert out.dtype == torch.float32 and out.ndim == 0
    torch.testing.assert_close(out, ref)


def test_fitnet_half_inputs_give_float32() -> None:
    s, t = taps()
    out = FitNetLoss(C, C)(Tap(s.tensor.half(), "bev", GRID), Tap(t.tensor.half(), "bev", GRID), None)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ((s.tensor.half().float() - t.tensor.half().float()) ** 2).mean())


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_attention_transfer_matches_reference(p: float) -> None:
    s, t = taps(c_s=3, c_t=5)
    total = torch.zeros(())
    for b in range(B):
        qs = (s.tensor[b].detach().abs() ** p).mean(0).flatten()
        qt = (t.tensor[b].detach().abs() ** p).mean(0).flatten()
        qs, qt = qs / qs.norm(), qt / qt.norm()
        total = total + ((qs - qt) ** 2).sum()
    ref = total / (B * 64)
    out = AttentionTransferLoss(3, 5, p=p)(s, t, FakeContext(gt_boxes()))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("make", [lambda: FitNetLoss(C, C), lambda: AttentionTransferLoss(C, C)])
def test_simple_losses_zero_when_equal_and_grad_to_student_only(make: Any) -> None:
    loss = make()
    s, t = same_taps()
    assert loss(s, t, FakeContext(gt_boxes())).item() == pytest.approx(0.0, abs=1e-12)
    s, t = taps()
    loss(s, t, FakeContext(gt_boxes())).backward()
    assert s.tensor.grad is not None and s.tensor.grad.abs().sum() > 0
    assert t.tensor.grad is None


# ---------------------------------------------------------------------------------------------
# FGD
# ---------------------------------------------------------------------------------------------


def _randomize_gc(loss: FGDLoss, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_fgd_matches_reference_at_init() -> None:
    s, t = taps()
    loss = FGDLoss(C, C, temperature=0.7)
    out = loss(s, t, fgd_context())
    ref = ref_fgd(loss, s.tensor.detach(), t.tensor.detach(), FGD_BOXES)
    torch.testing.assert_close(out, sum(ref.values()))
    assert set(loss.last_parts) == set(ref)
    for key, value in ref.items():
        assert loss.last_parts[key] == pytest.approx(value.item(), rel=1e-5, abs=1e-12)
    assert loss.last_parts["focal_fg"] > 0 and loss.last_parts["focal_bg"] > 0


def test_fgd_matches_reference_with_trained_gc_blocks() -> None:
    s, t = taps(seed=1)
    loss = FGDLoss(C, C, alpha=1.0, beta=2.0, gamma=0.5, lam=0.1)
    _randomize_gc(loss)
    out = loss(s, t, fgd_context())
    ref = ref_fgd(loss, s.tensor.detach(), t.tensor.detach(), FGD_BOXES)
    assert ref["global"].item() > 0
    torch.testing.assert_close(out, sum(ref.values()))


def test_fgd_without_boxes_is_background_only() -> None:
    s, t = taps()
    loss = FGDLoss(C, C)
    ctx = FakeContext([torch.zeros(0, 9), torch.zeros(0, 9)])
    out = loss(s, t, ctx)
    ref = ref_fgd(loss, s.tensor.detach(), t.tensor.detach(), [[], []])
    assert loss.last_parts["focal_fg"] == 0.0
    torch.testing.assert_close(out, sum(ref.values()))


def test_fgd_zero_when_equal() -> None:
    s, t = same_taps()
    loss = FGDLoss(C, C)
    assert loss(s, t, FakeContext(gt_boxes())).item() == pytest.approx(0.0, abs=1e-12)
    assert loss.last_parts == {"focal_fg": 0.0, "focal_bg": 0.0, "attention": 0.0, "global": 0.0}


def test_fgd_gradients_reach_student_and_gc_blocks_not_teacher() -> None:
    s, t = taps()
    loss = FGDLoss(C, C, lam=1.0)
    loss(s, t, FakeContext(gt_boxes())).backward()
    assert s.tensor.grad is not None and s.tensor.grad.abs().sum() > 0
    assert t.tensor.grad is None
    for block in (loss.gc_student, loss.gc_teacher):
        assert block.channel_add[-1].weight.grad.abs().sum() > 0  # the zero-initialised last conv
    assert len(list(loss.parameters())) == 2 * 8


def test_fgd_rejects_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        FGDLoss(C, C, temperature=0.0)


# ---------------------------------------------------------------------------------------------
# box-region mimic (LiDAR Distillation)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, boxes", [
    ("gt", [[BOX_A, BOX_B], [BOX_C, BOX_D]]),
    ("teacher", [[BOX_A], []]),
    ("all", [[BOX_A, BOX_A, BOX_B], [BOX_C, BOX_D]]),
])
def test_box_region_mimic_matches_reference(source: str, boxes: list[list[list[float]]]) -> None:
    s, t = taps()
    ctx = FakeContext(gt_boxes(), teacher_dets())
    out = BoxRegionMimicLoss(C, C, boxes=source, score_threshold=0.3)(s, t, ctx)
    torch.testing.assert_close(out, ref_mimic(s.tensor.detach(), t.tensor.detach(), boxes))
    assert out.dtype == torch.float32 and out.ndim == 0


def test_box_region_mimic_threshold_keeps_low_score_boxes() -> None:
    s, t = taps()
    ctx = FakeContext(gt_boxes(), teacher_dets())
    out = BoxRegionMimicLoss(C, C, boxes="teacher", score_threshold=0.05)(s, t, ctx)
    torch.testing.assert_close(out, ref_mimic(s.tensor.detach(), t.tensor.detach(), [[BOX_A, BOX_FAR], []]))


def test_box_region_mimic_no_boxes_is_zero_with_graph() -> None:
    s, t = taps()
    ctx = FakeContext([torch.zeros(0, 9), torch.zeros(0, 9)], teacher_dets())
    out = BoxRegionMimicLoss(C, C, boxes="teacher", score_threshold=0.95)(s, t, ctx)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert s.tensor.grad is not None and float(s.tensor.grad.abs().sum()) == 0.0


def test_box_region_mimic_zero_when_equal_and_grad_to_student_only() -> None:
    loss = BoxRegionMimicLoss(C, C, boxes="gt")
    s, t = same_taps()
    assert loss(s, t, FakeContext(gt_boxes())).item() == 0.0
    s, t = taps()
    loss(s, t, FakeContext(gt_boxes())).backward()
    assert s.tensor.grad is not None and s.tensor.grad.abs().sum() > 0
    assert t.tensor.grad is None


def test_box_region_mimic_rejects_unknown_source() -> None:
    with pytest.raises(ValueError, match="'teacher', 'gt' or 'all'"):
        BoxRegionMimicLoss(C, C, boxes="rois")  # type: ignore[arg-type]
