"""DistributedDataParallel on CPU (gloo): 2 processes with 2 samples each follow the same
loss trajectory as 1 process with 4 samples per step.

Why they can match: the training loader shards one permutation per epoch over the ranks
(``DistributedSampler`` with 1 or 2 replicas), so step ``t`` sees the same 4 samples in
both runs; the test detector's loss is a per-sample mean and it has no BatchNorm (whose
per-rank statistics would differ) and no dropout (whose per-rank RNG streams differ), so the
DDP-averaged gradient is the single-process gradient up to floating-point summation order.
Tolerance: 1e-5 relative on every logged loss over 8 steps of AdamW (measured differences
are around 1e-7).
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import BoxWorld, TinyBEVDetector, centre_recall_evaluator

from distill3d.config.schema import TrainConfig
from distill3d.data.transforms import GlobalRotScaleTrans, RandomFlip3D
from distill3d.engine import DistInfo, RunDir, Trainer, prepare_run_dir, read_metrics, seed_everything
from distill3d.engine.builders import build_eval_loader, build_train_loader
from distill3d.engine.distributed import (
    all_gather_objects,
    barrier,
    cleanup_distributed,
    init_distributed,
    reduce_scalars,
    wrap_model,
)

GLOBAL_BATCH = 4
TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluator(val: BoxWorld) -> Any:
    recall = centre_recall_evaluator(val)

    def evaluate(predictions: Any, out_dir: Path | None) -> dict[str, float]:
        return {**recall(predictions, out_dir), "num_predictions": float(len(predictions))}

    evaluate.primary_metric = "recall"  # type: ignore[attr-defined]
    return evaluate


def _train(root: Path, dist: DistInfo, *, sync_batchnorm: bool = False) -> Any:
    seed_everything(0)
    model = TinyBEVDetector(dropout=0.0)
    dataset = BoxWorld(16, seed=5, transforms=[GlobalRotScaleTrans(), RandomFlip3D()])
    val = BoxWorld(5, prefix="val")
    batch = GLOBAL_BATCH // dist.world_size
    cfg = TrainConfig(epochs=2, batch_size=batch, num_workers=0, lr=3e-3, log_interval=1,
                      deterministic=True, num_threads=1, sync_batchnorm=sync_batchnorm)
    run_dir = prepare_run_dir(root) if dist.is_main else RunDir(root)
    barrier(dist)
    trainer = Trainer(model, cfg, build_train_loader(dataset, batch, 0, seed=0, dist=dist), dist=dist,
                      run_dir=run_dir, val_loader=build_eval_loader(val, 2, 0, seed=0, dist=dist),
                      evaluate_fn=_evaluator(val), quiet=True)
    return trainer.fit()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    info = init_distributed("cpu")
    try:
        assert info.backend == "gloo" and info.world_size == world and info.rank == rank
        # each rank gets its own run-folder path: only rank 0's may appear on disk
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            result = _train(Path(out) / f"run_rank{rank}", info, sync_batchnorm=True)
        gathered = all_gather_objects(rank * 10, info)
        mean = reduce_scalars({"x": float(rank)}, info)
        if info.is_main:
            Path(out, "result.json").write_text(json.dumps({
                "history": result.history, "eval": result.eval_history, "best": result.best,
                "gathered": gathered, "mean": mean, "threads": torch.get_num_threads()}))
        barrier(info)  # no rank leaves the process group while another still works
    finally:
        cleanup_distributed(info)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_processes_match_one_process(ddp_run: Path, tmp_path: Path) -> None:
    ddp = json.loads((ddp_run / "result.json").read_text())
    single = _train(tmp_path / "single", DistInfo(device=torch.device("cpu")))
    single_losses = [r["loss"] for r in single.history]
    ddp_losses = [r["loss"] for r in ddp["history"]]
    assert len(single_losses) == len(ddp_losses) == 8  # 2 epochs x 16 samples / 4 per step
    for s, d in zip(single_losses, ddp_losses):
        assert d == pytest.approx(s, rel=TOLERANCE)
    for s, d in zip(single.history, ddp["history"]):
        assert d["loss_heatmap"] == pytest.approx(s["loss_heatmap"], rel=TOLERANCE)
        assert d["lr"] == pytest.approx(s["lr"], rel=1e-12)
    # evaluation: every rank predicted its shard, rank 0 saw each of the 5 samples once
    assert [m["num_predictions"] for _, m in ddp["eval"]] == [5.0, 5.0]
    assert ddp["eval"][-1][1]["recall"] == pytest.approx(single.eval_history[-1][1]["recall"])


def test_only_rank_zero_writes(ddp_run: Path) -> None:
    assert (ddp_run / "run_rank0" / "checkpoints" / "last.pth").is_file()
    assert not (ddp_run / "run_rank1").exists()
    records = read_metrics(ddp_run / "run_rank0" / "metrics.jsonl")
    assert [r["kind"] for r in records].count("train") == 8
    assert [r["kind"] for r in records].count("eval") == 2


def test_collectives_and_cpu_settings(ddp_run: Path) -> None:
    ddp = json.loads((ddp_run / "result.json").read_text())
    assert ddp["gathered"] == [0, 10]
    assert ddp["mean"] == {"x": 0.5}
    log = (ddp_run / "run_rank0" / "train.log").read_text()
    assert "SyncBatchNorm runs only on CUDA" in log
    assert "x 2 processes (gloo)" in log


def test_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert not info.distributed and info.is_main and info.backend is None
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, info) is model
    assert reduce_scalars({"a": torch.tensor(2.0), "b": 3}, info) == {"a": 2.0, "b": 3.0}


def test_torchrun_variables_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill3d.engine.distributed import DistributedError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_distributed("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    from distill3d.engine.distributed import DistributedError, resolve_device

    with pytest.raises(DistributedError, match="CUDA is not available"):
        resolve_device("cuda")
