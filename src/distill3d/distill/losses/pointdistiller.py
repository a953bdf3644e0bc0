"""PointDistiller (Zhang, Dong, Tai, Ma, CVPR 2023): local graph distillation with
importance reweighting (methods.md section 1).

Per distilled tensor and per **sample** of the batch:

1. score every item (voxel / pillar row, or BEV cell) by its importance ``s``: the
   teacher's point count per voxel, or the teacher feature's channel max;
2. select ``N = min(num_samples, items)`` items (``sampling``: the ``top`` N scores, the
   ``bottom`` N, ``random`` N, or ``mixed``: ``N - N // 2`` top and ``N // 2`` bottom);
3. for each selected item, its ``K = min(knn, items)`` nearest items of the **same sample**
   in the *teacher* feature space (squared Euclidean distance, the item itself always
   first); the same neighbour indices index the student;
4. edge features ``concat(z_j, z_i)`` (``edge="concat"``) or ``concat(z_i - z_j, z_i)``
   (``edge="sub"``) -> ``(1, 2C, N, K)`` per side;
5. graph encoders ``gamma_t``: ``Conv2d(2 C_T -> C', 1x1) + BatchNorm2d + ReLU`` and
   ``gamma_s``: ``2 C_S -> C'`` (``C' = embed_channels``, default the student width);
   both are trained (the teacher *features* are detached, ``gamma_t`` is not frozen);
   ``teacher_encoder: frozen`` keeps ``gamma_t`` at its random initialisation instead, so
   that the two embeddings cannot collapse together (an option, not the paper's setting);
6. loss: with ``reweight`` ``2 * mean_{i,k,c}[w_i (G_T - G_S)^2]`` with
   ``w = N * softmax(s_sel / temperature)`` over the selected items (mean weight 1: the
   paper's definition, not the released code's singleton softmax); without it
   ``plain_scale * ||G_T - G_S||_F``.

Per-sample losses are averaged weighted by their number of selected items. The graphs of
all samples go through ``gamma`` in one call, so BatchNorm uses the statistics of the whole
batch (as the released code, which builds one graph tensor per batch).

Differences from the released code (on purpose): candidates and neighbours never cross
samples; the softmax runs over the selected items.

What is distilled
-----------------
After each call, ``loss.last_importance`` holds what it distilled (detached), or None
before the first call and after a call with nothing to distil. A dict with

* ``sample``: ``(N_tot,)`` int64 sample of each selected item (``N_tot = sum_b N_b``);
* ``index``: ``(N_tot,)`` int64 row of the item in the input: the voxel row of the tap
  (``pointdistiller``) or the flat cell ``y * W + x`` of the map (``pointdistiller_bev``);
* ``score``: ``(N_tot,)`` float32 its importance ``s``;
* ``weight``: ``(N_tot,)`` float32 its loss weight ``w`` (``N_b * softmax`` within its
  sample, mean 1 per sample; all ones without ``reweight``);
* ``neighbors``: ``(N_tot, K_max)`` int64 input rows (same convention as ``index``) of its
  ``K`` neighbours, nearest (itself) first, ``-1`` padded where a sample had fewer than
  ``K_max`` candidates;
* ``grid_shape``: ``(H, W)`` of the map for ``pointdistiller_bev``, None for voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from distill3d.distill.context import KDContext
from distill3d.distill.losses.base import KDLoss, register_loss
from distill3d.models.base import Tap

__all__ = [
    "EDGE_MODES",
    "SAMPLING_MODES",
    "PointDistillerBEVLoss",
    "PointDistillerLoss",
    "edge_features",
    "knn_indices",
    "select_items",
]

SamplingMode = Literal["top", "bottom", "random", "mixed"]
EdgeMode = Literal["concat", "sub"]
SAMPLING_MODES: tuple[str, ...] = ("top", "bottom", "random", "mixed")
EDGE_MODES: tuple[str, ...] = ("concat", "sub")


# ----------------------------------------------------------------------------- building blocks


def select_items(scores: Tensor, num: int, mode: SamplingMode = "top") -> Tensor:
    """Rows of the items to distil.

    Args:
        scores: ``(M,)`` importance of each candidate item.
        num: how many to select (all ``M`` when ``num >= M``).
        mode: ``top`` (highest scores), ``bottom`` (lowest), ``random`` or ``mixed``
            (``num - num // 2`` highest and ``num // 2`` lowest).

    Returns:
        ``(N,)`` int64 rows into ``scores``, ``N = min(num, M)``; ties are broken by the
        lower row first (stable sort), so the selection is deterministic.
    """
    m = scores.shape[0]
    n = min(int(num), m)
    if n >= m:
        return torch.arange(m, device=scores.device)
    if mode == "random":
        return torch.randperm(m, device=scores.device)[:n]
    order = torch.sort(scores, descending=True, stable=True).indices
    if mode == "top":
        return order[:n]
    if mode == "bottom":
        return torch.sort(scores, descending=False, stable=True).indices[:n]
    if mode == "mixed":
        n_bottom = n // 2
        n_top = n - n_bottom
        bottom = order[m - n_bottom:] if n_bottom else order[:0]
        return torch.cat([order[:n_top], bottom])
    raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {mode!r}")


@torch.no_grad()
def knn_indices(queries: Tensor, query_rows: Tensor, candidates: Tensor, k: int, chunk_size: int = 512) -> Tensor:
    """The ``k`` nearest candidates of each query in feature space (squared Euclidean).

    Args:
        queries: ``(N, C)`` query features (``candidates[query_rows]``).
        query_rows: ``(N,)`` int64 row of each query among the candidates: the query itself
            is always its first neighbour (distance forced below every other, so an item
            with identical features cannot displace it).
        candidates: ``(M, C)`` candidate features.
        k: neighbours per query, ``1 <= k <= M``.
        chunk_size: queries per ``torch.cdist`` call (memory ``chunk_size * M`` floats).

    Returns:
        ``(N, k)`` int64 candidate rows, nearest first.
    """
    if not 1 <= k <= candidates.shape[0]:
        raise ValueError(f"knn: k={k} must be in [1, {candidates.shape[0]}] (the number of candidates)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cand = candidates.float()
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start:start + chunk_size].float()
        dist = torch.cdist(q[None], cand[None])[0].square()  # (n, M)
        rows = query_rows[start:start + chunk_size]
        dist[torch.arange(q.shape[0], device=dist.device), rows] = -1.0
        out.append(torch.topk(dist, k, dim=1, largest=False, sorted=True).indices)
    if not out:
        return torch.zeros((0, k), dtype=torch.long, device=candidates.device)
    return torch.cat(out)


def edge_features(features: Tensor, centres: Tensor, neighbours: Tensor, mode: EdgeMode = "concat") -> Tensor:
    """Edge features of local graphs.

    Args:
        features: ``(M, C)`` item features of one sample.
        centres: ``(N,)`` int64 rows of the graph centres ``z_i``.
        neighbours: ``(N, K)`` int64 rows of their neighbours ``z_j``.
        mode: ``concat``: ``concat(z_j, z_i)``; ``sub``: ``concat(z_i - z_j, z_i)``.

    Returns:
        ``(N, K, 2C)``.
    """
    z_j = features[neighbours]  # (N, K, C)
    z_i = features[centres][:, None, :].expand_as(z_j)
    if mode == "concat":
        return torch.cat([z_j, z_i], dim=-1)
    if mode == "sub":
        return torch.cat([z_i - z_j, z_i], dim=-1)
    raise ValueError(f"edge must be one of {EDGE_MODES}, got {mode!r}")


def graph_encoder(in_channels: int, out_channels: int) -> nn.Sequential:
    """PointDistiller's ``gamma``: ``Conv2d(in, out, 1x1, no bias) + BatchNorm2d + ReLU``
    on ``(1, in, N, K)`` graph tensors."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU())


@dataclass
class _SampleGraph:
    """The local graphs of one sample (internal)."""

    sample: int
    rows: Tensor  # (N,) selected rows (into the sample's items)
    scores: Tensor  # (N,) importance of the selected rows
    neighbours: Tensor  # (N, K) rows of the neighbours
    edges_t: Tensor  # (N, K, 2 C_T), detached
    edges_s: Tensor  # (N, K, 2 C_S)


# ----------------------------------------------------------------------------- the losses


class _PointDistillerBase(KDLoss):
    """What both PointDistiller losses share: selection, kNN, graph encoders, loss.

    Subclasses implement :meth:`_split` (the per-sample item features and scores).

    Attributes:
        gamma_t: the teacher graph encoder ``(1, 2 C_T, N, K) -> (1, C', N, K)``.
        gamma_s: the student graph encoder ``(1, 2 C_S, N, K) -> (1, C', N, K)``.
        last_importance: what the last call distilled (see the module docstring).
    """

    needs_same_channels: ClassVar[bool] = False

    def __init__(self, student_channels: int, teacher_channels: int, *, num_samples: int, knn: int,
                 temperature: float, edge: EdgeMode, reweight: bool, sampling: SamplingMode,
                 embed_channels: int | None, plain_scale: float, chunk_size: int,
                 teacher_encoder: Literal["trainable", "frozen"] = "trainable") -> None:
        super().__init__()
        if teacher_encoder not in ("trainable", "frozen"):
            raise ValueError(f"teacher_encoder must be 'trainable' or 'frozen', got {teacher_encoder!r}")
        if student_channels < 1 or teacher_channels < 1:
            raise ValueError(f"{type(self).__name__}: student_channels ({student_channels}) and "
                             f"teacher_channels ({teacher_channels}) must be >= 1")
        if num_samples < 1 or knn < 1:
            raise ValueError(f"num_samples ({num_samples}) and knn ({knn}) must be >= 1")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if edge not in EDGE_MODES:
            raise ValueError(f"edge must be one of {EDGE_MODES}, got {edge!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        embed = int(student_channels if embed_channels is None else embed_channels)
        if embed < 1:
            raise ValueError(f"embed_channels must be >= 1, got {embed_channels}")
        self.student_channels = int(student_channels)
        self.teacher_channels = int(teacher_channels)
        self.num_samples = int(num_samples)
        self.knn = int(knn)
        self.temperature = float(temperature)
        self.edge: EdgeMode = edge
        self.reweight = bool(reweight)
        self.sampling: SamplingMode = sampling
        self.embed_channels = embed
        self.plain_scale = float(plain_scale)
        self.chunk_size = int(chunk_size)
        self.gamma_t = graph_encoder(2 * self.teacher_channels, embed)
        self.gamma_s = graph_encoder(2 * self.student_channels, embed)
        self.teacher_encoder = teacher_encoder
        if teacher_encoder == "frozen":
            # a fixed random projection of the teacher's graphs: both embeddings cannot
            # shrink together (the collapse a trainable gamma_t allows, methods.md 1.3)
            self.gamma_t.requires_grad_(False)
        self.last_importance: dict[str, Any] | None = None

    # -- subclass hook -------------------------------------------------------------------

    def _split(self, student: Any, teacher: Any, ctx: KDContext) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]],
                                                                       tuple[int, int] | None, Tensor]:
        """Per sample ``(f_s (M, C_S), f_t (M, C_T) detached, scores (M,), input rows
        (M,))``, the map shape (bev) or None, and the student tensor (for an empty loss)."""
        raise NotImplementedError  # pragma: no cover

    # -- the algorithm ---------------------------------------------------------------------

    def _graphs(self, items: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> list[_SampleGraph]:
        """Selection, kNN and edge features of every non-empty sample."""
        graphs = []
        for b, (f_s, f_t, scores, _rows) in enumerate(items):
            m = f_t.shape[0]
            if m == 0:
                continue
            sel = select_items(scores, self.num_samples, self.sampling)
            nbr = knn_indices(f_t[sel], sel, f_t, min(self.knn, m), self.chunk_size)
            graphs.append(_SampleGraph(b, sel, scores[sel].float(), nbr,
                                       edge_features(f_t.float(), sel, nbr, self.edge),
                                       edge_features(f_s.float(), sel, nbr, self.edge)))
        return graphs

    def _weights(self, scores: Tensor) -> Tensor:
        """``(N,)`` ``N * softmax(scores / temperature)`` (ones without ``reweight``)."""
        if not self.reweight:
            return torch.ones_like(scores)
        return scores.numel() * torch.softmax(scores / self.temperature, dim=0)

    def _encode(self, graphs: list[_SampleGraph]) -> tuple[Tensor, Tensor]:
        """Both sides' graphs through ``gamma`` in one call (BatchNorm over the whole batch).

        Returns:
            ``(P, C')`` teacher and student embeddings, ``P = sum_b N_b K_b`` positions in
            the order of ``graphs`` (each sample row-major over ``(N_b, K_b)``).
        """
        e_t = torch.cat([g.edges_t.reshape(-1, g.edges_t.shape[-1]) for g in graphs])  # (P, 2 C_T)
        e_s = torch.cat([g.edges_s.reshape(-1, g.edges_s.shape[-1]) for g in graphs])  # (P, 2 C_S)
        # (P, 2C) -> (1, 2C, P, 1): a 1x1 conv and BatchNorm are per position, so this is
        # gamma on the (1, 2C, N, K) graph tensors of all samples side by side.
        g_t = self.gamma_t(e_t.t()[None, :, :, None])[0, :, :, 0].t()
        g_s = self.gamma_s(e_s.t()[None, :, :, None])[0, :, :, 0].t()
        return g_t, g_s

    def _loss(self, graphs: list[_SampleGraph], g_t: Tensor, g_s: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Per-sample losses averaged weighted by ``N_b``; also the weights per sample."""
        losses, counts, weights = [], [], []
        start = 0
        for g in graphs:
            n, k = g.neighbours.shape
            diff = (g_t[start:start + n * k] - g_s[start:start + n * k]).reshape(n, k, -1)
            start += n * k
            w = self._weights(g.scores)
            weights.append(w)
            if self.reweight:
                losses.append(2.0 * (w[:, None, None] * diff.square()).mean())
            else:
                losses.append(self.plain_scale * torch.linalg.vector_norm(diff))
            counts.append(n)
        total = float(sum(counts))
        loss = sum(l * (c / total) for l, c in zip(losses, counts))
        return loss, weights  # type: ignore[return-value]

    def _record(self, graphs: list[_SampleGraph], items: list[tuple[Tensor, Tensor, Tensor, Tensor]],
                weights: list[Tensor], grid_shape: tuple[int, int] | None) -> None:
        """Fill :attr:`last_importance` (format in the module docstring)."""
        k_max = max(g.neighbours.shape[1] for g in graphs)
        nbrs = []
        for g in graphs:
            rows = items[g.sample][3]
            nb = torch.full((g.neighbours.shape[0], k_max), -1, dtype=torch.long, device=g.neighbours.device)
            nb[:, :g.neighbours.shape[1]] = rows[g.neighbours]
            nbrs.append(nb)
        self.last_importance = {
            "sample": torch.cat([torch.full_like(g.rows, g.sample) for g in graphs]),
            "index": torch.cat([items[g.sample][3][g.rows] for g in graphs]),
            "score": torch.cat([g.scores for g in graphs]).detach(),
            "weight": torch.cat(weights).detach(),
            "neighbors": torch.cat(nbrs),
            "grid_shape": grid_shape,
        }

    def forward(self, student: Any, teacher: Any, ctx: KDContext) -> Tensor:
        """The PointDistiller loss of the batch (float32 scalar, unweighted)."""
        items, grid_shape, s_tensor = self._split(student, teacher, ctx)
        graphs = self._graphs(items)
        positions = sum(g.neighbours.numel() for g in graphs)
        if not graphs or (self.training and positions < 2):
            # nothing to distil (BatchNorm needs > 1 value per channel in train mode)
            self.last_importance = None
            return s_tensor.sum().float() * 0.0
        g_t, g_s = self._encode(graphs)
        loss, weights = self._loss(graphs, g_t, g_s)
        self._record(graphs, items, weights, grid_shape)
        return loss.float()


@register_loss("pointdistiller")
class PointDistillerLoss(_PointDistillerBase):
    """PointDistiller on voxel / pillar features (``input_kind = "voxels"``).

    ``student`` and ``teacher`` are ``voxels`` taps ``(V, C_S)`` / ``(V, C_T)`` of the same
    voxels in the same order (``index`` ``(V, 4)`` ``(b, z, y, x)``, equal on both sides).

    Args:
        student_channels, teacher_channels: ``C_S``, ``C_T`` (given by the distiller).
        num_samples: voxels selected per sample (the paper's 6000 per batch of 4 is 1500).
        knn: neighbours per graph ``K`` (the voxel itself included).
        temperature: softmax temperature of the reweighting (0.01 for point counts).
        edge: ``concat`` (``concat(z_j, z_i)``) or ``sub`` (``concat(z_i - z_j, z_i)``).
        reweight: the importance-weighted loss; False: ``plain_scale * ||G_T - G_S||_F``.
        sampling: ``top``, ``bottom``, ``random`` or ``mixed`` (see :func:`select_items`).
        embed_channels: ``C'``, the width of the graph embeddings (None: ``C_S``).
        plain_scale: the factor of the loss without reweighting.
        importance: ``num_points`` (the teacher's points per voxel, read from the tap
            ``importance_tap``) or ``channel_max`` (the teacher feature's max over
            channels).
        importance_tap: the ``(V, 1)`` point-count tap: ``pillars.num_points`` for
            CenterPoint-Pillar, ``voxels.num_points`` for CenterPoint-Voxel. Read from the
            teacher's taps, else from the student's (same voxels, same counts).
        chunk_size: kNN queries per ``torch.cdist`` call (memory ``chunk_size * V_b``).
        teacher_encoder: ``trainable`` (the paper's) or ``frozen`` (``gamma_t`` stays a fixed
            random projection; guards against both embeddings collapsing to zero).
    """

    input_kind = "voxels"

    def __init__(self, student_channels: int, teacher_channels: int, *, num_samples: int = 1500, knn: int = 128,
                 temperature: float = 0.01, edge: EdgeMode = "concat", reweight: bool = True,
                 sampling: SamplingMode = "top", embed_channels: int | None = None, plain_scale: float = 5e-4,
                 importance: Literal["num_points", "channel_max"] = "num_points",
                 importance_tap: str = "pillars.num_points", chunk_size: int = 512,
                 teacher_encoder: Literal["trainable", "frozen"] = "trainable") -> None:
        super().__init__(student_channels, teacher_channels, num_samples=num_samples, knn=knn,
                         temperature=temperature, edge=edge, reweight=reweight, sampling=sampling,
                         embed_channels=embed_channels, plain_scale=plain_scale, chunk_size=chunk_size,
                         teacher_encoder=teacher_encoder)
        if importance not in ("num_points", "channel_max"):
            raise ValueError(f"importance must be 'num_points' or 'channel_max', got {importance!r}")
        self.importance = importance
        self.importance_tap = importance_tap

    def _scores(self, teacher: Tensor, ctx: KDContext) -> Tensor:
        """``(V,)`` importance of every voxel."""
        if self.importance == "channel_max":
            return teacher.detach().float().amax(dim=1)
        tap = ctx.teacher.taps.get(self.importance_tap)
        if tap is None:
            tap = ctx.student.taps.get(self.importance_tap)
        if tap is None:
            known = sorted(set(ctx.teacher.taps) | set(ctx.student.taps))
            raise ValueError(f"pointdistiller: importance tap {self.importance_tap!r} not found (taps: {known}); "
                             "set importance_tap (e.g. 'voxels.num_points' for centerpoint_voxel) or "
                             "importance: channel_max")
        counts = tap.tensor.detach().float().reshape(-1)
        if counts.shape[0] != teacher.shape[0]:
            raise ValueError(f"pointdistiller: importance tap {self.importance_tap!r} has {counts.shape[0]} "
                             f"values (shape {tuple(tap.tensor.shape)}) for {teacher.shape[0]} voxels")
        return counts

    def _split(self, student: Tap, teacher: Tap, ctx: KDContext) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]],
                                                                         None, Tensor]:
        f_s, f_t = student.tensor, teacher.tensor.detach()
        if f_s.dim() != 2 or f_t.dim() != 2 or f_s.shape[0] != f_t.shape[0]:
            raise ValueError(f"pointdistiller: expects (V, C) features of the same voxels, got student "
                             f"{tuple(f_s.shape)} and teacher {tuple(f_t.shape)}")
        if f_s.shape[1] != self.student_channels or f_t.shape[1] != self.teacher_channels:
            raise ValueError(f"pointdistiller: built for C_S={self.student_channels}, C_T={self.teacher_channels}, "
                             f"got {f_s.shape[1]} and {f_t.shape[1]}")
        if student.index is None or teacher.index is None:
            raise ValueError("pointdistiller: voxel taps need their index (V, 4) (b, z, y, x)")
        if student.index.shape != teacher.index.shape or not torch.equal(student.index, teacher.index):
            raise ValueError("pointdistiller: the student and teacher voxels differ (index mismatch): both models "
                             "must voxelise the same points on the same grid, rows in the same order")
        scores = self._scores(f_t, ctx)
        sample = teacher.index[:, 0] if teacher.index.dim() == 2 else teacher.index
        num = int(sample.max()) + 1 if sample.numel() else 0
        items = []
        for b in range(num):
            rows = torch.nonzero(sample == b).reshape(-1)
            items.append((f_s[rows], f_t[rows], scores[rows], rows))
        return items, None, f_s


@register_loss("pointdistiller_bev")
class PointDistillerBEVLoss(_PointDistillerBase):
    """PointDistiller on BEV maps (``input_kind = "bev"``): each sample's cells are the
    items, ``(H W, C)``; importance = the teacher feature's channel max.

    ``student`` ``(B, C_S, H, W)`` and ``teacher`` ``(B, C_T, H, W)`` on the same grid.
    Arguments as :class:`PointDistillerLoss` (without the importance choice), with the
    paper's BEV settings as defaults (SECOND and nuScenes PointPillars taps): 256 cells per
    sample and ``temperature`` 1e-4. Memory per side is about ``B * N * K * 2C`` floats
    (4 x 256 x 128 x 512 = 67M, 270 MB in fp32, for a 256-channel teacher map).
    """

    input_kind = "bev"

    def __init__(self, student_channels: int, teacher_channels: int, *, num_samples: int = 256, knn: int = 128,
                 temperature: float = 1e-4, edge: EdgeMode = "concat", reweight: bool = True,
                 sampling: SamplingMode = "top", embed_channels: int | None = None, plain_scale: float = 5e-4,
                 chunk_size: int = 512, teacher_encoder: Literal["trainable", "frozen"] = "trainable") -> None:
        super().__init__(student_channels, teacher_channels, num_samples=num_samples, knn=knn,
                         temperature=temperature, edge=edge, reweight=reweight, sampling=sampling,
                         embed_channels=embed_channels, plain_scale=plain_scale, chunk_size=chunk_size,
                         teacher_encoder=teacher_encoder)

    def _split(self, student: Tap, teacher: Tap, ctx: KDContext) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]],
                                                                         tuple[int, int], Tensor]:
        f_s, f_t = student.tensor, teacher.tensor.detach()
        if f_s.dim() != 4 or f_t.dim() != 4 or f_s.shape[0] != f_t.shape[0] or f_s.shape[2:] != f_t.shape[2:]:
            raise ValueError(f"pointdistiller_bev: expects (B, C, H, W) maps on the same grid, got student "
                             f"{tuple(f_s.shape)} and teacher {tuple(f_t.shape)}")
        if f_s.shape[1] != self.student_channels or f_t.shape[1] != self.teacher_channels:
            raise ValueError(f"pointdistiller_bev: built for C_S={self.student_channels}, "
                             f"C_T={self.teacher_channels}, got {f_s.shape[1]} and {f_t.shape[1]}")
        b, _, h, w = f_t.shape
        flat_s = f_s.flatten(2).transpose(1, 2)  # (B, HW, C_S)
        flat_t = f_t.flatten(2).transpose(1, 2)  # (B, HW, C_T)
        scores = flat_t.float().amax(dim=2)  # (B, HW)
        rows = torch.arange(h * w, device=f_t.device)
        items = [(flat_s[i], flat_t[i], scores[i], rows) for i in range(b)]
        return items, (int(h), int(w)), f_s

