"""Checkpoints: atomic writes (a crash mid-write keeps the previous file), strict loading
that lists mismatched keys, EMA weights, RNG states, finding the last checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TinyBEVDetector
from torch import nn

from distill3d import atomic_io
from distill3d.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    capture_rng_state,
    check_state_dict,
    distillation_prefix,
    find_last_checkpoint,
    load_checkpoint,
    load_model_state,
    read_checkpoint,
    remove_stale_temp_files,
    restore_rng_state,
    save_checkpoint,
)
from distill3d.engine.trainer import ModelEMA


def _payload(model: nn.Module, **extra: object) -> dict:
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.state_dict(), **extra}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyBEVDetector()
    path = tmp_path / "ck" / "last.pth"
    save_checkpoint(_payload(model, epochs_done=3), path)
    payload = read_checkpoint(path)
    assert payload["epochs_done"] == 3
    other = TinyBEVDetector()
    load_checkpoint(path, other)
    assert _same_state(other.state_dict(), model.state_dict())
    assert not list(path.parent.glob(".*.tmp"))


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    first = TinyBEVDetector()
    path = tmp_path / "last.pth"
    save_checkpoint(_payload(first, global_step=1), path)
    before = path.read_bytes()

    second = TinyBEVDetector()
    written: list[Path] = []

    def crashing_write(handle, data):  # write half of the bytes, then "die"
        handle.write(bytes(data[: len(data) // 2]))
        handle.flush()
        written.extend(tmp_path.glob(".last.pth.*.tmp"))
        raise OSError("simulated crash: no space left on device")

    monkeypatch.setattr(atomic_io, "_write_all", crashing_write)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(_payload(second, global_step=2), path)
    # the partial temp file was in the same folder, and is gone; the old file is untouched
    assert len(written) == 1  # the partial temp file sat beside the target
    assert not written[0].exists()
    assert path.read_bytes() == before
    assert read_checkpoint(path)["global_step"] == 1
    loaded = TinyBEVDetector()
    load_checkpoint(path, loaded)
    assert _same_state(loaded.state_dict(), first.state_dict())


def test_process_killed_during_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    """A real SIGKILL while the new checkpoint is being written (slowed down on purpose)."""
    path = tmp_path / "last.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                     "model": {"w": torch.zeros(10)}, "global_step": 1}, path)
    script = textwrap.dedent(f"""
        import time, torch
        from distill3d import atomic_io
        from distill3d.engine import checkpoint as c
        def slow(handle, data):
            view = memoryview(data)
            for i in range(0, len(view), 4096):
                handle.write(view[i:i + 4096]); handle.flush(); time.sleep(0.05)
        atomic_io._write_all = slow
        payload = {{"format": c.CHECKPOINT_FORMAT, "version": c.CHECKPOINT_VERSION,
                    "model": {{"w": torch.ones(200_000)}}, "global_step": 2}}
        c.save_checkpoint(payload, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".last.pth.*.tmp")):
            assert proc.poll() is None, "the writer ended before writing its temp file"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    payload = read_checkpoint(path)
    assert payload["global_step"] == 1 and torch.equal(payload["model"]["w"], torch.zeros(10))
    leftovers = list(tmp_path.glob(".last.pth.*.tmp"))
    assert leftovers, "the killed writer should have left its temp file"
    assert find_last_checkpoint(tmp_path) == path
    assert remove_stale_temp_files(tmp_path) and not list(tmp_path.glob(".*.tmp"))


def test_shape_mismatch_lists_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    save_checkpoint(_payload(TinyBEVDetector(width=8)), path)
    narrow = TinyBEVDetector(width=4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, narrow)
    message = str(info.value)
    assert "wide.pth" in message and "shape mismatch" in message
    assert "conv1.weight: [8, 3, 3, 3] vs [4, 3, 3, 3]" in message
    for key in ("conv2.weight", "conv2.bias", "heatmap.weight", "reg.weight"):
        assert key in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    model = TinyBEVDetector()
    state = model.state_dict()
    state.pop("reg.bias")
    state["extra.adapter.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, TinyBEVDetector())
    message = str(info.value)
    assert "missing from the checkpoint" in message and "reg.bias" in message
    assert "unexpected in the checkpoint" in message and "extra.adapter.weight" in message


def test_non_strict_loads_what_fits() -> None:
    wide, narrow = TinyBEVDetector(width=8), TinyBEVDetector(width=4)
    state = wide.state_dict()
    report = load_model_state(narrow, state, strict=False)
    assert not report.ok and {k for k, _, _ in report.mismatched} >= {"conv1.weight"}
    assert check_state_dict(wide, state).ok


def test_ddp_prefixed_state_dict_loads() -> None:
    model = TinyBEVDetector()
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    other = TinyBEVDetector()
    load_model_state(other, prefixed)
    assert _same_state(other.state_dict(), model.state_dict())


def test_ema_weights_are_loaded_on_request(tmp_path: Path) -> None:
    model = TinyBEVDetector()
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    path = tmp_path / "ema.pth"
    save_checkpoint(_payload(model, ema=ema.state_dict()), path)
    plain, averaged = TinyBEVDetector(), TinyBEVDetector()
    load_checkpoint(path, plain, weights="model")
    load_checkpoint(path, averaged, weights="auto")
    assert torch.equal(plain.conv1.weight, model.conv1.weight)
    assert torch.equal(averaged.conv1.weight, ema.shadow["conv1.weight"])
    no_ema = tmp_path / "no_ema.pth"
    save_checkpoint(_payload(model), no_ema)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(no_ema, TinyBEVDetector(), weights="ema")


def test_resuming_needs_optimizer_state(tmp_path: Path) -> None:
    model = TinyBEVDetector()
    path = tmp_path / "weights_only.pth"
    torch.save(model.state_dict(), path)  # a plain state dict is accepted as weights
    load_checkpoint(path, TinyBEVDetector())
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, optimizer=optimizer)


def test_reading_never_runs_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_unreadable_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.pth")
    torn = tmp_path / "torn.pth"
    torn.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(torn)
    newer = tmp_path / "newer.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        read_checkpoint(newer)


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)  # move on
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_rng_state_survives_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "rng.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": {},
                     "rng": [capture_rng_state()]}, path)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(read_checkpoint(path)["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_find_last_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    assert find_last_checkpoint(tmp_path / "run") is None
    folder.mkdir(parents=True)
    assert find_last_checkpoint(tmp_path / "run") is None
    for n in (2, 9, 10):
        (folder / f"epoch_{n}.pth").write_bytes(b"x")
    (folder / ".last.pth.abc.tmp").write_bytes(b"partial")
    assert find_last_checkpoint(tmp_path / "run") == folder / "epoch_10.pth"
    (folder / "last.pth").write_bytes(b"x")
    assert find_last_checkpoint(tmp_path / "run") == folder / "last.pth"
    assert find_last_checkpoint(folder) == folder / "last.pth"


def test_student_weights_load_from_a_distiller_checkpoint(tmp_path: Path) -> None:
    student = TinyBEVDetector(width=4)
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state["adapter.weight"] = torch.zeros(8, 4, 1, 1)
    path = tmp_path / "distill.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": state}, path)
    loaded = TinyBEVDetector(width=4)
    load_checkpoint(path, loaded, prefix="student.")
    assert _same_state(loaded.state_dict(), student.state_dict())
    with pytest.raises(CheckpointError, match="no weights under 'teacher.'"):
        load_checkpoint(path, loaded, prefix="teacher.")


def test_auto_prefix_picks_the_student_only_of_a_distiller_checkpoint(tmp_path: Path) -> None:
    student = TinyBEVDetector(width=4)
    distiller_state = {f"student.{k}": v for k, v in student.state_dict().items()}
    distiller_state["adapters.t.weight"] = torch.zeros(8, 4, 1, 1)
    distill_path = tmp_path / "distill.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": distiller_state},
                    distill_path)
    loaded = TinyBEVDetector(width=4)
    load_checkpoint(distill_path, loaded, prefix="auto")
    assert _same_state(loaded.state_dict(), student.state_dict())

    # a plain detector checkpoint: loaded as it is
    plain = TinyBEVDetector(width=4)
    plain_path = tmp_path / "plain.pth"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": plain.state_dict()},
                    plain_path)
    load_checkpoint(plain_path, loaded, prefix="auto")
    assert _same_state(loaded.state_dict(), plain.state_dict())
    assert distillation_prefix(plain.state_dict(), loaded) is None
    assert distillation_prefix(distiller_state, loaded) == "student."
