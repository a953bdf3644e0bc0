"""PointDistiller losses: a brute-force reference on a tiny case, per-sample graphs, the
query as its own nearest neighbour, chunked kNN, gradients, edge and loss modes, errors and
the BEV variant."""

from __future__ import annotations

import itertools

import pytest
import torch

from distill3d.distill.context import KDContext
from distill3d.distill.losses.base import _REGISTRY, KDLoss
from distill3d.distill.losses.pointdistiller import (
    PointDistillerBEVLoss,
    PointDistillerLoss,
    knn_indices,
    select_items,
)
from distill3d.models.base import DetectorOutput, Tap


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def voxel_taps(f_s: torch.Tensor, f_t: torch.Tensor, sample: torch.Tensor, counts: torch.Tensor,
               ) -> tuple[Tap, Tap, KDContext]:
    """Student / teacher voxel taps and a context holding the teacher's point counts."""
    v = f_t.shape[0]
    index = torch.stack([sample, torch.zeros(v, dtype=torch.long), torch.arange(v), torch.arange(v)], dim=1)
    s_tap = Tap(f_s, "voxels", index=index)
    t_tap = Tap(f_t, "voxels", index=index.clone())
    counts_tap = Tap(counts.float()[:, None], "voxels", index=index)
    ctx = KDContext(batch=None, student=DetectorOutput(taps={"pillars": s_tap}),  # type: ignore[arg-type]
                    teacher=DetectorOutput(taps={"pillars": t_tap, "pillars.num_points": counts_tap}),
                    class_names=())
    return s_tap, t_tap, ctx


def gamma_by_hand(module: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Conv 1x1 (no bias) + train-mode BatchNorm + ReLU on ``(P, C_in)`` rows, with the
    module's own parameters: ``(P, C_out)``."""
    conv, bn = module[0], module[1]
    y = x @ conv.weight[:, :, 0, 0].t()
    mean = y.mean(dim=0)
    var = ((y - mean) ** 2).mean(dim=0)
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    return torch.clamp(y, min=0)


def test_registered_and_contract() -> None:
    assert _REGISTRY["pointdistiller"] is PointDistillerLoss
    assert _REGISTRY["pointdistiller_bev"] is PointDistillerBEVLoss
    assert issubclass(PointDistillerLoss, KDLoss)
    assert PointDistillerLoss.input_kind == "voxels" and PointDistillerBEVLoss.input_kind == "bev"
    assert not PointDistillerLoss.needs_same_channels and not PointDistillerBEVLoss.needs_same_channels
    loss = PointDistillerLoss(16, 64)
    assert loss.gamma_t[0].weight.shape == (16, 128, 1, 1) and loss.gamma_s[0].weight.shape == (16, 32, 1, 1)
    assert (loss.num_samples, loss.knn, loss.temperature) == (1500, 128, 0.01)
    bev = PointDistillerBEVLoss(16, 64)
    assert (bev.num_samples, bev.knn, bev.temperature) == (256, 128, 1e-4)
    assert PointDistillerLoss(16, 64, embed_channels=8).gamma_t[0].weight.shape[0] == 8


@pytest.mark.parametrize("edge", ["concat", "sub"])
def test_matches_brute_force_reference(edge: str) -> None:
    torch.manual_seed(0)
    v, c_t, c_s, n, k, tau = 12, 4, 2, 5, 3, 0.5
    f_t = torch.randn(v, c_t)
    f_s = torch.randn(v, c_s)
    counts = torch.randperm(v).float() + 1.0  # distinct importances
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, torch.zeros(v, dtype=torch.long), counts)
    loss_fn = PointDistillerLoss(c_s, c_t, num_samples=n, knn=k, temperature=tau, edge=edge)  # type: ignore[arg-type]
    loss = loss_fn(s_tap, t_tap, ctx)

    with torch.no_grad():
        # selection: the n highest counts
        sel = sorted(range(v), key=lambda i: -float(counts[i]))[:n]
        # kNN by explicit loops over pairs
        neighbours = []
        for i in sel:
            d = [(sum(float(f_t[i, c] - f_t[j, c]) ** 2 for c in range(c_t)), j) for j in range(v)]
            neighbours.append([j for _, j in sorted(d)[:k]])
        assert all(nb[0] == i for nb, i in zip(neighbours, sel))

        def edges(f: torch.Tensor) -> torch.Tensor:
            rows = []
            for i, nb in zip(sel, neighbours):
                for j in nb:
                    first = f[j] if edge == "concat" else f[i] - f[j]
                    rows.append(torch.cat([first, f[i]]))
            return torch.stack(rows)  # (n * k, 2C), row-major over (i, k)

        g_t = gamma_by_hand(loss_fn.gamma_t, edges(f_t)).reshape(n, k, -1)
        g_s = gamma_by_hand(loss_fn.gamma_s, edges(f_s)).reshape(n, k, -1)
        s_sel = counts[sel]
        w = n * torch.softmax(s_sel / tau, dim=0)
        expected = 2 * (w[:, None, None] * (g_t - g_s) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert loss.dtype == torch.float32 and loss.dim() == 0

    info = loss_fn.last_importance
    assert info is not None
    assert info["index"].tolist() == sel and info["sample"].tolist() == [0] * n
    torch.testing.assert_close(info["weight"], w)
    assert [sorted(r) for r in info["neighbors"].tolist()] == [sorted(r) for r in neighbours]
    assert info["neighbors"][:, 0].tolist() == sel and info["grid_shape"] is None


def test_reweight_false_is_scaled_frobenius_norm() -> None:
    torch.manual_seed(1)
    v, c_t, c_s = 10, 4, 3
    f_t, f_s = torch.randn(v, c_t), torch.randn(v, c_s)
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, torch.zeros(v, dtype=torch.long), torch.arange(v).float())
    loss_fn = PointDistillerLoss(c_s, c_t, num_samples=4, knn=3, reweight=False, plain_scale=0.1)
    loss = loss_fn(s_tap, t_tap, ctx)
    sel = torch.arange(v - 1, v - 5, -1)
    nbr = knn_indices(f_t[sel], sel, f_t, 3)
    e_t = torch.cat([f_t[nbr], f_t[sel][:, None].expand(-1, 3, -1)], dim=-1).reshape(-1, 2 * c_t)
    e_s = torch.cat([f_s[nbr], f_s[sel][:, None].expand(-1, 3, -1)], dim=-1).reshape(-1, 2 * c_s)
    with torch.no_grad():
        diff = gamma_by_hand(loss_fn.gamma_t, e_t) - gamma_by_hand(loss_fn.gamma_s, e_s)
    torch.testing.assert_close(loss, 0.1 * diff.norm(), rtol=1e-5, atol=1e-7)
    assert torch.equal(loss_fn.last_importance["weight"], torch.ones(4))  # type: ignore[index]


def test_neighbours_never_cross_samples() -> None:
    """Sample 1 holds exact copies of sample 0's features (the closest possible
    neighbours): no graph of sample 0 may reach them, and vice versa."""
    torch.manual_seed(2)
    half = torch.randn(8, 4)
    f_t = torch.cat([half, half])
    f_s = torch.randn(16, 2)
    sample = torch.tensor([0] * 8 + [1] * 8)
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, sample, torch.arange(16).float() % 8)
    loss_fn = PointDistillerLoss(2, 4, num_samples=3, knn=4)
    loss_fn(s_tap, t_tap, ctx)
    info = loss_fn.last_importance
    assert info is not None
    assert info["sample"].tolist() == [0, 0, 0, 1, 1, 1]
    for s, idx, nbrs in zip(info["sample"].tolist(), info["index"].tolist(), info["neighbors"].tolist()):
        assert nbrs[0] == idx  # itself first, even with an identical copy in the batch
        assert all(sample[j] == s for j in nbrs)


def test_weighted_average_over_samples() -> None:
    """The batch loss is the per-sample loss averaged with weights N_b."""
    torch.manual_seed(3)
    f_t, f_s = torch.randn(14, 4), torch.randn(14, 2)
    sample = torch.tensor([0] * 10 + [1] * 4)
    counts = torch.rand(14) * 5
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, sample, counts)
    loss_fn = PointDistillerLoss(2, 4, num_samples=6, knn=3, temperature=1.0)
    loss_fn.eval()  # BatchNorm with running stats: samples are then independent
    total = loss_fn(s_tap, t_tap, ctx)
    parts = []
    for b in (0, 1):
        m = sample == b
        s_b, t_b, ctx_b = voxel_taps(f_s[m], f_t[m], torch.zeros(int(m.sum()), dtype=torch.long), counts[m])
        parts.append(loss_fn(s_b, t_b, ctx_b))
    torch.testing.assert_close(total, (6 * parts[0] + 4 * parts[1]) / 10)


def test_query_is_its_own_nearest_and_chunking() -> None:
    torch.manual_seed(4)
    cand = torch.randn(300, 8)
    cand[7] = cand[3]  # a duplicate of a query
    rows = torch.tensor([3, 7, 0, 299, 150, 42, 43])
    full = knn_indices(cand[rows], rows, cand, 10, chunk_size=1000)
    chunked = knn_indices(cand[rows], rows, cand, 10, chunk_size=2)
    assert torch.equal(full, chunked)
    assert torch.equal(full[:, 0], rows)
    d = torch.cdist(cand[rows], cand) ** 2
    for q in range(len(rows)):
        # the other 9 are the 9 nearest of the rest
        rest = d[q].clone()
        rest[rows[q]] = float("inf")
        assert set(full[q, 1:].tolist()) == set(torch.topk(rest, 9, largest=False).indices.tolist())
    with pytest.raises(ValueError, match="k=301"):
        knn_indices(cand[rows], rows, cand, 301)


def test_selection_modes() -> None:
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    assert select_items(scores, 3, "top").tolist() == [2, 4, 0]
    assert select_items(scores, 2, "bottom").tolist() == [1, 5]
    assert select_items(scores, 3, "mixed").tolist() == [2, 4, 1]
    rnd = select_items(scores, 4, "random")
    assert len(set(rnd.tolist())) == 4
    assert select_items(scores, 10, "top").tolist() == list(range(6))  # fewer items than N


def test_gradients_reach_student_and_both_encoders_not_teacher() -> None:
    torch.manual_seed(5)
    f_t = torch.randn(20, 4, requires_grad=True)
    f_s = torch.randn(20, 3, requires_grad=True)
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, torch.tensor([0] * 12 + [1] * 8), torch.rand(20))
    loss_fn = PointDistillerLoss(3, 4, num_samples=5, knn=4, temperature=0.1)
    loss_fn(s_tap, t_tap, ctx).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for gamma in (loss_fn.gamma_t, loss_fn.gamma_s):
        assert gamma[0].weight.grad is not None and gamma[0].weight.grad.abs().sum() > 0


def test_channel_max_importance_and_tap_fallbacks() -> None:
    torch.manual_seed(6)
    f_t, f_s = torch.randn(9, 4), torch.randn(9, 2)
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, torch.zeros(9, dtype=torch.long), torch.ones(9))
    loss_fn = PointDistillerLoss(2, 4, num_samples=3, knn=2, importance="channel_max")
    loss_fn(s_tap, t_tap, ctx)
    expected = torch.sort(f_t.amax(dim=1), descending=True).indices[:3]
    assert loss_fn.last_importance["index"].tolist() == expected.tolist()  # type: ignore[index]
    # counts only in the student's taps: read there (same voxels, same counts)
    ctx.student.taps["pillars.num_points"] = ctx.teacher.taps.pop("pillars.num_points")
    PointDistillerLoss(2, 4, num_samples=3, knn=2)(s_tap, t_tap, ctx)
    with pytest.raises(ValueError, match="voxels.num_points"):
        PointDistillerLoss(2, 4, importance_tap="voxels.num_points")(s_tap, t_tap, ctx)


def test_index_mismatch_and_shape_errors() -> None:
    f_t, f_s = torch.randn(6, 4), torch.randn(6, 2)
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, torch.zeros(6, dtype=torch.long), torch.ones(6))
    t_tap.index = t_tap.index.flip(0)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="index mismatch"):
        PointDistillerLoss(2, 4)(s_tap, t_tap, ctx)
    with pytest.raises(ValueError, match="C_S=3"):
        PointDistillerLoss(3, 4)(s_tap, t_tap, ctx)
    with pytest.raises(ValueError, match="sampling"):
        PointDistillerLoss(2, 4, sampling="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="edge"):
        PointDistillerLoss(2, 4, edge="max")  # type: ignore[arg-type]


def test_empty_batch_keeps_graph() -> None:
    f_s = torch.randn(0, 2, requires_grad=True)
    s_tap, t_tap, ctx = voxel_taps(f_s, torch.randn(0, 4), torch.zeros(0, dtype=torch.long), torch.ones(0))
    loss_fn = PointDistillerLoss(2, 4)
    loss = loss_fn(s_tap, t_tap, ctx)
    assert loss.item() == 0.0 and loss.requires_grad and loss_fn.last_importance is None
    loss.backward()
    # a sample without voxels (sample 0 empty, sample 1 has some) is skipped
    f_t, f_s = torch.randn(5, 4), torch.randn(5, 2)
    s_tap, t_tap, ctx = voxel_taps(f_s, f_t, torch.ones(5, dtype=torch.long), torch.ones(5))
    loss_fn(s_tap, t_tap, ctx)
    assert set(loss_fn.last_importance["sample"].tolist()) == {1}  # type: ignore[index]


def test_bev_variant() -> None:
    torch.manual_seed(7)
    f_t = torch.randn(2, 6, 4, 4)
    f_s = torch.randn(2, 3, 4, 4, requires_grad=True)
    s_tap, t_tap = Tap(f_s, "bev"), Tap(f_t, "bev")
    ctx = KDContext(batch=None, student=DetectorOutput(), teacher=DetectorOutput(), class_names=())  # type: ignore[arg-type]
    n, k, tau = 5, 4, 0.3
    loss_fn = PointDistillerBEVLoss(3, 6, num_samples=n, knn=k, temperature=tau)
    loss = loss_fn(s_tap, t_tap, ctx)
    loss.backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    info = loss_fn.last_importance
    assert info is not None and info["grid_shape"] == (4, 4)
    assert info["sample"].tolist() == [0] * n + [1] * n

    # reference: per sample, the cells (HW, C), top-n channel max, kNN in teacher space
    with torch.no_grad():
        e_t, e_s, weights = [], [], []
        for b in range(2):
            ft = f_t[b].flatten(1).t()
            fs = f_s[b].flatten(1).t()
            score = ft.amax(dim=1)
            sel = torch.sort(score, descending=True, stable=True).indices[:n]
            assert info["index"][b * n:(b + 1) * n].tolist() == sel.tolist()
            d = ((ft[sel][:, None] - ft[None]) ** 2).sum(-1)
            nbr = torch.topk(d, k, largest=False).indices
            for f, out in ((ft, e_t), (fs, e_s)):
                out.append(torch.cat([f[nbr], f[sel][:, None].expand(-1, k, -1)], -1).reshape(-1, 2 * f.shape[1]))
            weights.append(n * torch.softmax(score[sel] / tau, 0))
        g_t = gamma_by_hand(loss_fn.gamma_t, torch.cat(e_t)).reshape(2, n, k, -1)
        g_s = gamma_by_hand(loss_fn.gamma_s, torch.cat(e_s)).reshape(2, n, k, -1)
        w = torch.stack(weights)
        expected = 2 * (w[..., None, None] * (g_t - g_s) ** 2).mean()  # equal N_b: plain mean
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same grid"):
        loss_fn(Tap(torch.randn(2, 3, 4, 5), "bev"), t_tap, ctx)


def test_knn_on_a_lattice() -> None:
    """On a 3x3 lattice the kNN of the centre picks
    the 4-neighbourhood (distance 1) before the diagonals (distance 2)."""
    coords = torch.tensor(list(itertools.product(range(3), range(3))), dtype=torch.float32)
    centre = torch.tensor([4])
    nbr = knn_indices(coords[centre], centre, coords, 5)
    assert nbr[0, 0].item() == 4 and set(nbr[0, 1:].tolist()) == {1, 3, 5, 7}


def test_frozen_teacher_encoder_gets_no_gradient_and_is_not_collapsible() -> None:
    from distill3d.distill.losses.pointdistiller import PointDistillerBEVLoss

    torch.manual_seed(0)
    loss = PointDistillerBEVLoss(2, 4, num_samples=6, knn=3, teacher_encoder="frozen")
    assert not any(p.requires_grad for p in loss.gamma_t.parameters())
    assert all(p.requires_grad for p in loss.gamma_s.parameters())
    student = torch.randn(2, 2, 4, 4, requires_grad=True)
    teacher = Tap(torch.randn(2, 4, 4, 4), "bev", None)
    value = loss(Tap(student, "bev", None), teacher, None)
    value.backward()
    assert student.grad is not None and float(value.detach()) > 0
    assert all(p.grad is None for p in loss.gamma_t.parameters())
    with pytest.raises(ValueError, match="teacher_encoder"):
        PointDistillerBEVLoss(2, 4, teacher_encoder="fixed")
