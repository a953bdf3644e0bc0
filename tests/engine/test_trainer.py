"""The trainer: schedules against their formulas, EMA, exact mid-epoch resume, best/last
checkpoints, metrics.jsonl, TensorBoard, quiet mode, run folders, train modules."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import BoxWorld, TinyBEVDetector, centre_recall_evaluator
from torch import Tensor, nn

from distill3d.config.schema import TrainConfig
from distill3d.config.typed import FieldError
from distill3d.data.sample import Sample
from distill3d.data.transforms import GlobalRotScaleTrans, RandomFlip3D
from distill3d.engine import (
    LRSchedule,
    LRScheduler,
    ModelEMA,
    NonFiniteLossError,
    RunDirError,
    Trainer,
    TrainLogger,
    find_last_checkpoint,
    prepare_run_dir,
    read_checkpoint,
    read_metrics,
    seed_everything,
)
from distill3d.engine.builders import build_eval_loader, build_train_loader
from distill3d.engine.trainer import _to_original_frame
from distill3d.errors import Distill3DError
from distill3d.evaluation.evaluator import boxes_to_original_frame
from distill3d.structures import Detections


def train_cfg(**changes: Any) -> TrainConfig:
    base: dict[str, Any] = {"epochs": 2, "batch_size": 4, "num_workers": 0, "lr": 3e-3, "log_interval": 1,
                            "deterministic": True, "num_threads": 1, "grad_clip": 10.0}
    base.update(changes)
    return TrainConfig(**base)


def augmented_world(n: int = 24) -> BoxWorld:
    return BoxWorld(n, seed=3, transforms=[GlobalRotScaleTrans(), RandomFlip3D()])


class Killed(Exception):
    """Stands for the process being killed."""


def make_trainer(cfg: TrainConfig, dataset: BoxWorld, run_root: Path | None, *, resume: bool = False,
                 callbacks: Sequence[Callable[[Trainer], None]] = (), dropout: float = 0.2,
                 val: BoxWorld | None = None, evaluate_fn: Any = None, logger: TrainLogger | None = None
                 ) -> Trainer:
    seed_everything(0)
    model = TinyBEVDetector(dropout=dropout)
    loader = build_train_loader(dataset, cfg.batch_size, cfg.num_workers, seed=0)
    run_dir = prepare_run_dir(run_root, resume=resume) if run_root is not None else None
    val_loader = build_eval_loader(val, 4, 0, seed=0) if val is not None else None
    return Trainer(model, cfg, loader, device="cpu", run_dir=run_dir, seed=0, quiet=True,
                   callbacks=callbacks, val_loader=val_loader, evaluate_fn=evaluate_fn, logger=logger)


def losses_by_step(history: list[dict[str, float]]) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in history}


# ----------------------------------------------------------------------------- schedules


def test_onecycle_matches_formula_and_shape() -> None:
    total, div, pct, final = 100, 10.0, 0.4, 1e4
    s = LRSchedule("onecycle", total, div_factor=div, pct_start=pct, final_div_factor=final,
                   moms=(0.95, 0.85))

    def cos(a: float, b: float, x: float) -> float:
        return b + (a - b) / 2 * (1 + math.cos(math.pi * x))

    for t in range(total):
        p = t / total
        if p < pct:
            lr, mom = cos(1 / div, 1.0, p / pct), cos(0.95, 0.85, p / pct)
        else:
            x = (p - pct) / (1 - pct)
            lr, mom = cos(1.0, 1 / (div * final), x), cos(0.85, 0.95, x)
        assert s.factor(t) == pytest.approx(lr, rel=1e-12, abs=1e-15)
        assert s.momentum(t) == pytest.approx(mom, rel=1e-12)
    values = [s.factor(t) for t in range(total)]
    peak = values.index(max(values))
    assert peak == 40 and values[0] == pytest.approx(0.1) and values[-1] < 1e-3
    assert all(a < b for a, b in itertools.pairwise(values[:peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(values[peak:]))


def test_cosine_with_warmup_and_constant_match_formulas() -> None:
    cfg = TrainConfig(schedule="cosine", epochs=10, warmup_epochs=1.0, warmup_ratio=0.1, min_lr_ratio=0.01)
    s = LRSchedule.from_config(cfg, steps_per_epoch=10)
    assert s.total_steps == 100 and s.warmup_steps == 10 and s.momentum(5) is None
    for t in range(10):
        assert s.factor(t) == pytest.approx(0.1 + 0.9 * t / 10)
    for t in range(10, 100):
        x = (t - 10) / 90
        assert s.factor(t) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * x)))
    assert s.factor(10) == pytest.approx(1.0) and s.factor(55) == pytest.approx(0.505)
    const = LRSchedule.from_config(TrainConfig(schedule="constant", epochs=4, warmup_epochs=0.5), 10)
    assert [const.factor(t) for t in (0, 4, 5, 39)] == pytest.approx([0.1, 0.82, 1.0, 1.0])


def test_scheduler_sets_lr_and_beta1_every_step() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    schedule = LRSchedule("onecycle", 10, moms=(0.95, 0.85))
    scheduler = LRScheduler(optimizer, schedule)
    for t in range(10):
        group = optimizer.param_groups[0]
        assert group["lr"] == pytest.approx(0.01 * schedule.factor(t))
        assert group["betas"][0] == pytest.approx(schedule.momentum(t))
        optimizer.step()
        scheduler.step()
    other = LRScheduler(torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.01), schedule)
    other.load_state_dict(scheduler.state_dict())
    assert other.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_trainer_logs_the_scheduled_lr(tmp_path: Path) -> None:
    cfg = train_cfg(epochs=2, schedule="cosine", warmup_epochs=0.5)
    trainer = make_trainer(cfg, BoxWorld(16), None)
    result = trainer.fit()
    assert result.global_step == 8
    for record in result.history:
        assert record["lr"] == pytest.approx(cfg.lr * trainer.schedule.factor(int(record["step"]) - 1))


def test_config_validation() -> None:
    for bad in ({"pct_start": 1.0}, {"div_factor": 0.5}, {"ema_decay": 1.0}, {"keep_checkpoints": -1},
                {"warmup_epochs": 30}, {"moms": (0.95, 1.2)}, {"max_steps_per_epoch": 0}):
        with pytest.raises(FieldError):
            TrainConfig(**bad)


# ----------------------------------------------------------------------------- EMA


def test_ema_update_formula() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=5.0)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for step in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(step)
            model[1].running_mean.add_(0.5)
            model[1].num_batches_tracked.add_(1)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-step / 5.0))
        assert ema.decay_at(step) == pytest.approx(d)
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, value in expected.items():
        assert torch.allclose(ema.shadow[k], value, atol=1e-6), k
    assert ema.shadow["1.num_batches_tracked"].item() == 3


def test_ema_leaves_frozen_teacher_out_and_swaps_weights() -> None:
    class Distiller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.teacher = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).requires_grad_(False)
            self.student = nn.Linear(2, 2)

    model = Distiller()
    ema = ModelEMA(model, decay=0.5)
    assert set(ema.names) == {"student.weight", "student.bias"}
    with torch.no_grad():
        model.student.weight.add_(2.0)
    ema.update(model)
    live = model.student.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.student.weight, ema.shadow["student.weight"])
    assert torch.equal(model.student.weight, live)


# ----------------------------------------------------------------------------- resume


def test_resume_mid_epoch_gives_the_same_losses(tmp_path: Path) -> None:
    """Kill after global step 9 (epoch 2, step 3 of 6); the last checkpoint is from step 8
    (checkpoint_steps=2). The resumed run repeats step 9 and continues: its losses and final
    weights equal the uninterrupted run's bit for bit (deterministic mode, dropout and
    augmentation on)."""
    cfg = train_cfg(epochs=2, checkpoint_steps=2)
    dataset = augmented_world(24)

    full = make_trainer(cfg, dataset, tmp_path / "full")
    reference = losses_by_step(full.fit().history)
    assert sorted(reference) == list(range(1, 13))

    def kill_at_9(trainer: Trainer) -> None:
        if trainer.global_step == 9:
            raise Killed()

    crashed = make_trainer(cfg, dataset, tmp_path / "crash", callbacks=[kill_at_9])
    with pytest.raises(Killed):
        crashed.fit()
    last = find_last_checkpoint(tmp_path / "crash")
    payload = read_checkpoint(last)
    assert (payload["epochs_done"], payload["step_in_epoch"], payload["global_step"]) == (1, 2, 8)
    assert losses_by_step(crashed.history)[9] == reference[9]

    resumed = make_trainer(cfg, dataset, tmp_path / "crash", resume=True)
    result = resumed.fit(resume_from=last)
    after = losses_by_step(result.history)
    assert sorted(after) == [9, 10, 11, 12]
    for step, loss in after.items():
        assert loss == reference[step], (step, loss, reference[step])
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert torch.equal(full.optimizer.state_dict()["state"][0]["exp_avg"],
                       resumed.optimizer.state_dict()["state"][0]["exp_avg"])


def test_resume_at_epoch_boundary_and_past_the_end(tmp_path: Path) -> None:
    cfg = train_cfg(epochs=2, ema=True, ema_tau=0.0, ema_decay=0.9)
    dataset = augmented_world(16)
    full = make_trainer(cfg, dataset, tmp_path / "full")
    reference = losses_by_step(full.fit().history)
    epoch_1 = tmp_path / "full" / "checkpoints" / "epoch_1.pth"
    resumed = make_trainer(cfg, dataset, None)
    after = losses_by_step(resumed.fit(resume_from=epoch_1).history)
    assert after == {s: reference[s] for s in (5, 6, 7, 8)}
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in full.ema.names)
    done = make_trainer(cfg, dataset, None)
    result = done.fit(resume_from=tmp_path / "full" / "checkpoints" / "last.pth")
    assert result.history == [] and result.epochs_done == 2


# ----------------------------------------------------------------------------- bookkeeping


def scripted_evaluator(values: list[float], name: str = "score") -> Any:
    calls = iter(values)

    def evaluate(predictions: Any, out_dir: Path | None) -> dict[str, float]:
        return {name: next(calls), "count": float(len(predictions))}

    evaluate.primary_metric = name  # type: ignore[attr-defined]
    return evaluate


def test_best_last_and_epoch_checkpoints(tmp_path: Path) -> None:
    cfg = train_cfg(epochs=3, keep_checkpoints=2, log_interval=2, deterministic=False)
    val = BoxWorld(5, prefix="val")
    trainer = make_trainer(cfg, BoxWorld(8), tmp_path / "run", val=val,
                           evaluate_fn=scripted_evaluator([0.2, 0.5, 0.4]))
    result = trainer.fit()
    assert result.best == {"metric": "score", "value": 0.5, "epoch": 2}
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pth", "epoch_2.pth", "epoch_3.pth", "last.pth"]
    assert read_checkpoint(folder / "best.pth")["epochs_done"] == 2
    assert read_checkpoint(folder / "last.pth")["best"]["value"] == 0.5
    assert [m["count"] for _, m in result.eval_history] == [5.0, 5.0, 5.0]
    assert (tmp_path / "run" / "eval" / "epoch_3" / "metrics.json").is_file()

    low = make_trainer(train_cfg(epochs=3, best_mode="min", deterministic=False), BoxWorld(8), None,
                       val=val, evaluate_fn=scripted_evaluator([0.2, 0.5, 0.4]))
    assert low.fit().best["epoch"] == 1
    wrong = make_trainer(train_cfg(epochs=1, best_metric="NDS", deterministic=False), BoxWorld(8), None,
                         val=val, evaluate_fn=scripted_evaluator([0.1]))
    with pytest.raises(Distill3DError, match="'NDS' is not among the evaluation metrics: count, score"):
        wrong.fit()


def test_metrics_jsonl_and_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = train_cfg(epochs=2, log_interval=2, deterministic=False, eval_interval=1)
    val = BoxWorld(4, prefix="val")
    trainer = make_trainer(cfg, BoxWorld(12), tmp_path / "run", val=val, evaluate_fn=centre_recall_evaluator(val))
    trainer.fit()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds == ["train", "train", "epoch", "eval", "train", "train", "epoch", "eval"]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 3, 5, 6]  # every 2 steps and at each epoch's end
    for r in train:
        assert {"epoch", "step", "time", "loss", "loss_heatmap", "loss_reg", "lr", "samples_per_s",
                "grad_norm"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_heatmap"] + r["loss_reg"])
    assert {"recall", "dets_per_sample", "epoch", "step"} <= set(records[3])
    assert (tmp_path / "run" / "eval" / "epoch_1" / "recall.txt").is_file()

    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_heatmap", "train/lr", "train/samples_per_s", "epoch/loss",
            "val/recall"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 3, 5, 6]
    assert acc.Scalars("train/loss")[0].value == pytest.approx(train[0]["loss"], rel=1e-6)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_mode_prints_plain_lines_and_no_bar(tmp_path: Path, quiet: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    stream = FakeTerminal()
    prepare_run_dir(tmp_path / "run")
    logger = TrainLogger(tmp_path / "run", quiet=quiet, stream=stream)
    assert logger.shows_progress_bar is (not quiet)
    trainer = make_trainer(train_cfg(epochs=1, log_interval=2, deterministic=False), BoxWorld(8),
                           tmp_path / "run", resume=True, logger=logger)
    trainer.fit()
    logger.close()
    text = stream.getvalue()
    if quiet:
        assert "━" not in text and "\x1b[" not in text
        assert "epoch 1/1 step 2/2 loss" in text and "samples/s" in text and "eta" in text
    else:
        assert "━" in text and "samples/s" in text and "ETA" in text
        assert "epoch 1/1 step 2/2 loss" not in text
    assert "AMP is off: mixed precision runs on CUDA only" in text
    log = (tmp_path / "run" / "train.log").read_text()
    assert "AMP is off" in log


def test_non_tty_output_is_plain(tmp_path: Path) -> None:
    stream = io.StringIO()
    logger = TrainLogger(None, stream=stream)
    assert not logger.shows_progress_bar


def test_lines_said_before_the_run_folder_open_train_log(tmp_path: Path) -> None:
    stream = io.StringIO()
    logger = TrainLogger(stream=stream, defer_run_dir=True)
    logger.info("building the model")
    logger.warning("a slow data root")
    assert not (tmp_path / "run").exists()
    logger.open_run_dir(tmp_path / "run", tensorboard=False)
    logger.info("run folder ready")
    logger.close()
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["building the model", "warning: a slow data root",
                                                         "run folder ready"]
    assert stream.getvalue().splitlines() == ["building the model", "warning: a slow data root", "run folder ready"]
    console_only = TrainLogger(stream=io.StringIO())  # keeps nothing back without defer_run_dir
    console_only.info("x")
    assert console_only._early_lines == []


def test_non_finite_loss_stops_training() -> None:
    class Exploding(TinyBEVDetector):
        def loss(self, batch: Any, output: Any) -> dict[str, Tensor]:
            losses = super().loss(batch, output)
            losses["loss"] = losses["loss"] * float("nan")
            return losses

    seed_everything(0)
    loader = build_train_loader(BoxWorld(8), 4, 0, seed=0)
    trainer = Trainer(Exploding(), train_cfg(epochs=1, deterministic=False), loader, device="cpu", quiet=True)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 1, step 1"):
        trainer.fit()


def test_global_torch_settings_are_restored() -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = make_trainer(train_cfg(epochs=1, num_threads=1, deterministic=True, max_steps_per_epoch=1),
                           BoxWorld(8), None)
    trainer.fit()
    assert trainer.global_step == 1
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


# ----------------------------------------------------------------------------- run folders


def test_run_folder_refusal_resume_and_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "run"
    prepare_run_dir(root)
    assert (root / "checkpoints").is_dir()
    prepare_run_dir(root)  # only empty sub-folders: counts as empty
    (root / "metrics.jsonl").write_text("{}\n")
    (root / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError) as info:
        prepare_run_dir(root)
    assert str(root) in str(info.value) and "--resume" in str(info.value) and "--overwrite" in str(info.value)
    prepare_run_dir(root, resume=True)
    assert (root / "metrics.jsonl").is_file()
    prepare_run_dir(root, overwrite=True)
    assert not (root / "metrics.jsonl").exists() and (root / "notes.txt").read_text() == "mine"
    with pytest.raises(RunDirError, match="contradict"):
        prepare_run_dir(root, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        prepare_run_dir(tmp_path / "file")


# ----------------------------------------------------------------------------- train modules


class ToyDistiller(nn.Module):
    """A train module as a distiller is one: frozen teacher, student, adapter, per-term
    losses, predict() by the student."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher = TinyBEVDetector(width=8, dropout=0.0).requires_grad_(False).eval()
        self.student = TinyBEVDetector(width=4, dropout=0.0)
        self.adapter = nn.Conv2d(4, 8, 1)

    def train(self, mode: bool = True) -> ToyDistiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Any) -> dict[str, Tensor]:
        with torch.no_grad():
            t_out = self.teacher(batch)
        s_out = self.student(batch)
        losses = {f"det.{k}": v for k, v in self.student.loss(batch, s_out).items()}
        kd = (self.adapter(s_out.taps["neck"].tensor) - t_out.taps["neck"].tensor).pow(2).mean()
        losses["kd.neck"] = kd
        losses["loss"] = losses["det.loss"] + kd
        return losses

    def predict(self, batch: Any) -> list[Detections]:
        return self.student.decode(self.student(batch))


def test_a_train_module_trains_with_adapters_saved_and_terms_logged(tmp_path: Path) -> None:
    seed_everything(0)
    model = ToyDistiller()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    loader = build_train_loader(BoxWorld(8), 4, 0, seed=0)
    val = BoxWorld(4, prefix="val")
    trainer = Trainer(model, train_cfg(epochs=1, ema=True, deterministic=False), loader, device="cpu",
                      run_dir=prepare_run_dir(tmp_path / "run"), quiet=True,
                      val_loader=build_eval_loader(val, 4, 0, seed=0), evaluate_fn=centre_recall_evaluator(val))
    trainer.fit()
    assert not any(n.startswith("teacher.") for n in trainer.ema.names)
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())
    payload = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert "adapter.weight" in payload["model"] and "adapter.weight" in payload["ema"]["shadow"]
    train = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="train")
    assert {"kd.neck", "det.loss_heatmap", "det.loss_reg", "loss"} <= set(train[0])


def test_predictions_are_mapped_back_to_the_original_frame() -> None:
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    sample = Sample(token="t", points=torch.zeros(0, 4), boxes=torch.zeros(0, 9),
                    labels=torch.zeros(0, dtype=torch.long), class_names=("car",), bev_transform=flip)
    det = Detections(torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.5]]), torch.tensor([0.9]),
                     torch.tensor([0]))
    back = _to_original_frame(det, sample)
    assert back.boxes[0, :2].tolist() == pytest.approx([1.0, -2.0])
    assert back.boxes[0, 6].item() == pytest.approx(-0.3)
    assert back.boxes[0, 8].item() == pytest.approx(-0.5)
    # the evaluator's own inverse (one implementation), in float64
    assert torch.equal(back.boxes, torch.from_numpy(boxes_to_original_frame(det.boxes, flip)))
    assert _to_original_frame(det, Sample(token="u", points=torch.zeros(0, 4), boxes=torch.zeros(0, 9),
                                          labels=torch.zeros(0, dtype=torch.long), class_names=("car",))) is det


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda(tmp_path: Path) -> None:
    seed_everything(0)
    loader = build_train_loader(BoxWorld(8), 4, 0, seed=0)
    trainer = Trainer(TinyBEVDetector(), train_cfg(epochs=1, amp=True, deterministic=False), loader,
                      device="cuda", run_dir=prepare_run_dir(tmp_path / "run"), quiet=True)
    assert trainer.use_amp and trainer.scaler.is_enabled()
    result = trainer.fit()
    assert result.global_step == 2 and all(math.isfinite(r["loss"]) for r in result.history)
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["scaler"]["scale"] > 0
