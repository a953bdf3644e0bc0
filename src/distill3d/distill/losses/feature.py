"""Dense BEV feature-distillation losses (``input_kind = "bev"``).

Registered names (see ``../shared/docs/methods.md``):

* ``fitnet`` (section 8.2): dense MSE between the adapted student and the teacher.
* ``attention_transfer`` (8.3): MSE between L2-normalised spatial attention maps; no
  channel adapter needed.
* ``fgd`` (8.4): Focal and Global Distillation with box-area foreground masks from GT boxes,
  teacher attention weighting, an attention-imitation term and GcBlock global relations.
* ``box_region_mimic`` (7.5, LiDAR Distillation): per-cell L2 distance weighted by normalised
  box masks of teacher detections and/or GT boxes.

Every loss receives two :class:`~distill3d.models.base.Tap` of kind ``bev``, ``(B, C, H, W)``
on the same grid, detaches the teacher itself and returns an unweighted float32 scalar
(inputs are promoted to float32, autocast is disabled inside).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill3d.distill.context import KDContext
from distill3d.distill.losses.base import KDLoss, register_loss
from distill3d.distill.masks import box_area_scale, box_region_weights
from distill3d.models.base import Tap
from distill3d.structures import BEVGrid

BoxSource = Literal["teacher", "gt", "all"]


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _float32(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so that convolutions inside a loss run in float32."""
    if device.type in ("cuda", "cpu"):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:  # pragma: no cover - exotic devices
        yield


def _pair(student: Tap, teacher: Tap, loss: str) -> tuple[Tensor, Tensor]:
    """The student (B, C_S, H, W) as float32 and the detached teacher (B, C_T, H, W) as float32.

    Raises:
        ValueError: either tensor is not 4-D.
    """
    s, t = student.tensor, teacher.tensor
    if s.ndim != 4 or t.ndim != 4:
        raise ValueError(f"{loss}: BEV features must be (B, C, H, W), got student {tuple(s.shape)} "
                         f"and teacher {tuple(t.shape)}")
    return s.float(), t.detach().float()


def _check_same_shape(s: Tensor, t: Tensor, loss: str) -> None:
    """Raise a ValueError naming both shapes unless ``s`` and ``t`` are both (B, C, H, W) alike."""
    if s.shape != t.shape:
        raise ValueError(f"{loss}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must have the same "
                         f"shape (B, C, H, W); channels {s.shape[1]} vs {t.shape[1]} need an adapter")


def _check_same_cells(s: Tensor, t: Tensor, loss: str) -> None:
    """Raise a ValueError naming both shapes unless batch and spatial sizes agree (channels may differ)."""
    if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(f"{loss}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must share batch size "
                         f"and H x W")


def _grid(student: Tap, teacher: Tap, feature: Tensor, loss: str) -> BEVGrid:
    """The BEV grid of the features, checked against their (H, W).

    Raises:
        ValueError: no grid on either tap, or a grid of another shape than the map.
    """
    grid = student.grid if student.grid is not None else teacher.grid
    if grid is None:
        raise ValueError(f"{loss}: the BEV taps carry no grid, which the box masks need")
    if tuple(grid.shape) != tuple(feature.shape[-2:]):
        raise ValueError(f"{loss}: grid {grid.height}x{grid.width} does not match the feature map "
                         f"{tuple(feature.shape)}")
    return grid


def _cached(ctx: Any, key: tuple[Any, ...], compute: Callable[[], Tensor]) -> Tensor:
    """``compute()`` once per step: memoised in ``ctx.cache`` when the context has one."""
    cache = getattr(ctx, "cache", None)
    if not isinstance(cache, dict):
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _boxes_on(boxes: list[Tensor], device: torch.device) -> list[Tensor]:
    """Per-sample box tensors (M_b, >=7) as float32 on ``device``."""
    return [b.to(device=device, dtype=torch.float32) for b in boxes]


# ---------------------------------------------------------------------------------------------
# fitnet
# ---------------------------------------------------------------------------------------------


@register_loss("fitnet")
class FitNetLoss(KDLoss):
    """FitNet hint loss (methods.md 8.2): ``mean((S - T)^2)`` over all B*C*H*W elements.

    Args:
        normalize: L2-normalise both maps over channels at every cell before the MSE.
    """

    input_kind = "bev"
    needs_same_channels = True

    def __init__(self, student_channels: int, teacher_channels: int, *, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = bool(normalize)

    def forward(self, student: Tap, teacher: Tap, ctx: KDContext) -> Tensor:
        """student, teacher: (B, C, H, W) -> scalar."""
        s, t = _pair(student, teacher, "fitnet")
        _check_same_shape(s, t, "fitnet")
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return F.mse_loss(s, t, reduction="mean")


# ---------------------------------------------------------------------------------------------
# attention transfer
# ---------------------------------------------------------------------------------------------


def at_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Attention-transfer map: (B, C, H, W) -> (B, H*W) ``mean_c |F_c|^p``, L2-normalised per sample."""
    return F.normalize(feature.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_loss("attention_transfer")
class AttentionTransferLoss(KDLoss):
    """Attention transfer (Zagoruyko & Komodakis, methods.md 8.3):
    ``mean_{b, cells} (Q_S - Q_T)^2`` with ``Q = normalize_L2(mean_c |F|^p)`` per sample.

    Channel counts may differ (no adapter needed). The original paper multiplies by
    ``beta = 1e3``: put it in the term's ``weight``.

    Args:
        p: exponent of the channel-pooled activation (2 in the paper).
    """

    input_kind = "bev"
    needs_same_channels = False

    def __init__(self, student_channels: int, teacher_channels: int, *, p: float = 2.0) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"attention_transfer: p must be positive, got {p}")
        self.p = float(p)

    def forward(self, student: Tap, teacher: Tap, ctx: KDContext) -> Tensor:
        """student (B, C_S, H, W), teacher (B, C_T, H, W) -> scalar."""
        s, t = _pair(student, teacher, "attention_transfer")
        _check_same_cells(s, t, "attention_transfer")
        return (at_map(s, self.p) - at_map(t, self.p)).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# FGD
# ---------------------------------------------------------------------------------------------


def spatial_attention(feature: Tensor, temperature: float) -> Tensor:
    """FGD spatial attention: (B, C, H, W) -> (B, H, W) ``H*W*softmax_cells(mean_c|F| / T)``."""
    b, _, h, w = feature.shape
    pooled = feature.abs().mean(dim=1).reshape(b, h * w)
    return (h * w * torch.softmax(pooled / temperature, dim=1)).reshape(b, h, w)


def channel_attention(feature: Tensor, temperature: float) -> Tensor:
    """FGD channel attention: (B, C, H, W) -> (B, C) ``C*softmax_channels(mean_hw|F| / T)``."""
    c = feature.shape[1]
    pooled = feature.abs().mean(dim=(2, 3))
    return c * torch.softmax(pooled / temperature, dim=1)


class GCBlock(nn.Module):
    """Global context block of FGD (GCNet, ``channel_add`` fusion).

    ``out = F + transform(context)``: ``context`` (B, C, 1, 1) is ``F`` pooled with a softmax
    over cells of a 1x1 conv C->1; ``transform`` is 1x1 conv C->C/2, LayerNorm([C/2, 1, 1]),
    ReLU, 1x1 conv C/2->C, the last conv zero-initialised (the block starts as the identity).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.channels = channels
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (fan-in) context conv, zero last transform conv (as in yzd-v/FGD)."""
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        last = self.channel_add[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def context(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) attention-pooled context."""
        b, c, h, w = x.shape
        weights = torch.softmax(self.conv_mask(x).reshape(b, 1, h * w), dim=2)  # (B, 1, HW)
        return torch.bmm(x.reshape(b, c, h * w), weights.transpose(1, 2)).reshape(b, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.channel_add(self.context(x))


def fgd_masks(gt_boxes: list[Tensor], grid: BEVGrid, device: torch.device) -> tuple[Tensor, Tensor]:
    """FGD masks on ``grid``, float32 on ``device``: foreground (B, H, W) ``1/area`` of the box
    owning the cell (the smallest containing one; area in cells as
    :func:`~distill3d.distill.masks.box_area_scale` counts it) and background (B, H, W)
    ``1[not fg] / max(#bg cells, 1)`` per sample."""
    fg = box_area_scale(_boxes_on(gt_boxes, device), grid, 1.0).to(device=device, dtype=torch.float32)
    bg = (fg <= 0).float()
    bg = bg / bg.flatten(1).sum(dim=1).clamp(min=1.0).view(-1, 1, 1)
    return fg, bg


@register_loss("fgd")
class FGDLoss(KDLoss):
    """Focal and Global Distillation (Yang et al., CVPR 2022; methods.md 8.4) on BEV maps.

    ``L = focal + attention + global`` (every sum divided by B) with teacher attentions
    ``A_s^T`` (B, H, W), ``A_c^T`` (B, C) weighting the focal part:

    * ``focal = alpha * sum(M_fg A_s^T A_c^T (S - T)^2) + beta * sum(M_bg A_s^T A_c^T (S - T)^2)``;
    * ``attention = gamma * (sum|A_c^S - A_c^T| + sum|A_s^S - A_s^T|)``;
    * ``global = lam * sum((GC_S(S) - GC_T(T))^2)``, with one learnable :class:`GCBlock` per side
      (KD-only parameters of this module).

    ``M_fg`` is ``1/area`` (cells) of the smallest GT box whose footprint contains the cell
    centre (:func:`~distill3d.distill.masks.box_area_scale`), ``M_bg = 1[not fg] / #bg cells``. The parts of the last call are in
    :attr:`last_parts` (``focal_fg``, ``focal_bg``, ``attention``, ``global``, already scaled
    by their coefficients).
    """

    input_kind = "bev"
    needs_same_channels = True

    def __init__(self, student_channels: int, teacher_channels: int, *, alpha: float = 1e-3, beta: float = 5e-4,
                 gamma: float = 5e-4, lam: float = 5e-6, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"fgd: temperature must be positive, got {temperature}")
        if teacher_channels < 1:
            raise ValueError(f"fgd: teacher_channels must be positive, got {teacher_channels}")
        self.alpha, self.beta, self.gamma, self.lam = float(alpha), float(beta), float(gamma), float(lam)
        self.temperature = float(temperature)
        self.channels = int(teacher_channels)
        self.gc_student = GCBlock(self.channels)
        self.gc_teacher = GCBlock(self.channels)
        self.last_parts: dict[str, float] = {}

    def forward(self, student: Tap, teacher: Tap, ctx: KDContext) -> Tensor:
        """student, teacher: (B, C, H, W) -> scalar."""
        s, t = _pair(student, teacher, "fgd")
        _check_same_shape(s, t, "fgd")
        if s.shape[1] != self.channels:
            raise ValueError(f"fgd: built for {self.channels} teacher channels, got student {tuple(s.shape)} "
                             f"and teacher {tuple(t.shape)}")
        grid = _grid(student, teacher, s, "fgd")
        fg, bg = _cached(ctx, ("fgd_masks", grid, str(s.device)), lambda: fgd_masks(ctx.gt_boxes(), grid, s.device))
        with _float32(s.device):
            fg_loss, bg_loss = self._focal(s, t, fg, bg)
            att_loss = self._attention(s, t)
            glob_loss = self._global(s, t)
        self.last_parts = {"focal_fg": float(fg_loss.detach()), "focal_bg": float(bg_loss.detach()),
                           "attention": float(att_loss.detach()), "global": float(glob_loss.detach())}
        return fg_loss + bg_loss + att_loss + glob_loss

    def _focal(self, s: Tensor, t: Tensor, fg: Tensor, bg: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled foreground and background parts; s, t (B, C, H, W), fg, bg (B, H, W)."""
        b = s.shape[0]
        weight = (spatial_attention(t, self.temperature).unsqueeze(1)
                  * channel_attention(t, self.temperature)[:, :, None, None])  # (B, C, H, W)
        err = weight * (s - t).pow(2)
        fg_loss = self.alpha * (err * fg.unsqueeze(1)).sum() / b
        bg_loss = self.beta * (err * bg.unsqueeze(1)).sum() / b
        return fg_loss, bg_loss

    def _attention(self, s: Tensor, t: Tensor) -> Tensor:
        """Scaled attention-imitation part; s, t (B, C, H, W)."""
        b = s.shape[0]
        d_channel = (channel_attention(s, self.temperature) - channel_attention(t, self.temperature)).abs().sum()
        d_spatial = (spatial_attention(s, self.temperature) - spatial_attention(t, self.temperature)).abs().sum()
        return self.gamma * (d_channel + d_spatial) / b

    def _global(self, s: Tensor, t: Tensor) -> Tensor:
        """Scaled global-relation part; s, t (B, C, H, W)."""
        return self.lam * (self.gc_student(s) - self.gc_teacher(t)).pow(2).sum() / s.shape[0]


# ---------------------------------------------------------------------------------------------
# box-region mimic (LiDAR Distillation)
# ---------------------------------------------------------------------------------------------


def teacher_boxes(ctx: KDContext, score_threshold: float) -> list[Tensor]:
    """Per-sample (K_b, 9) teacher detection boxes with score >= ``score_threshold``."""
    return [d.boxes[d.scores >= score_threshold] for d in ctx.teacher_detections()]


def mimic_boxes(ctx: KDContext, source: BoxSource, score_threshold: float,
                device: torch.device) -> list[Tensor]:
    """Per-sample (M_b, 7) float32 boxes ``(x, y, z, l, w, h, yaw)`` on ``device`` of ``source``:
    thresholded teacher detections, GT boxes, or both concatenated (``all``).

    Raises:
        ValueError: teacher detections and GT boxes disagree on the batch size.
    """
    parts: list[list[Tensor]] = []
    if source in ("teacher", "all"):
        parts.append(teacher_boxes(ctx, score_threshold))
    if source in ("gt", "all"):
        parts.append(list(ctx.gt_boxes()))
    if len({len(p) for p in parts}) != 1:
        raise ValueError(f"box_region_mimic: teacher detections and GT boxes cover {[len(p) for p in parts]} "
                         f"samples")
    return [torch.cat([b[:, :7].to(device=device, dtype=torch.float32) for b in group], dim=0)
            for group in zip(*parts)]


@register_loss("box_region_mimic")
class BoxRegionMimicLoss(KDLoss):
    """LiDAR Distillation mimic loss (Wei et al., ECCV 2022; methods.md 7.5).

    ``L = sum_i m(i) * ||S(i) - T(i)||_2 / (B * max(N_boxes, 1))``: the norm over channels per
    cell, ``m(i)`` the sum over the boxes containing cell ``i`` of ``1 / cells of the box``
    (:func:`~distill3d.distill.masks.box_region_weights`), ``N_boxes`` the boxes used in the
    whole batch. Zero (with the student still in the graph) when there are no boxes.

    Args:
        boxes: ``teacher`` (detections scoring >= ``score_threshold``), ``gt`` or ``all`` (both).
        score_threshold: minimum teacher score.
        axis_aligned: use the boxes' axis-aligned BEV rectangles (as the original RoI masks).
    """

    input_kind = "bev"
    needs_same_channels = True

    def __init__(self, student_channels: int, teacher_channels: int, *, boxes: BoxSource = "teacher",
                 score_threshold: float = 0.3, axis_aligned: bool = True) -> None:
        super().__init__()
        if boxes not in ("teacher", "gt", "all"):
            raise ValueError(f"box_region_mimic: boxes must be 'teacher', 'gt' or 'all', got {boxes!r}")
        self.boxes: BoxSource = boxes
        self.score_threshold = float(score_threshold)
        self.axis_aligned = bool(axis_aligned)

    def forward(self, student: Tap, teacher: Tap, ctx: KDContext) -> Tensor:
        """student, teacher: (B, C, H, W) -> scalar."""
        s, t = _pair(student, teacher, "box_region_mimic")
        _check_same_shape(s, t, "box_region_mimic")
        grid = _grid(student, teacher, s, "box_region_mimic")
        boxes = mimic_boxes(ctx, self.boxes, self.score_threshold, s.device)
        if len(boxes) != s.shape[0]:
            raise ValueError(f"box_region_mimic: {len(boxes)} samples of boxes for a batch of {s.shape[0]}")
        n_boxes = sum(int(b.shape[0]) for b in boxes)
        if n_boxes == 0:
            return s.sum() * 0.0
        weights = box_region_weights(boxes, grid, self.axis_aligned).to(device=s.device, dtype=torch.float32)
        dist = torch.linalg.vector_norm(s - t, dim=1)  # (B, H, W)
        return (weights * dist).sum() / (s.shape[0] * n_boxes)
