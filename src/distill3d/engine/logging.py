"""What a training run reports, and where.

:class:`TrainLogger` is the one object the trainer reports through. On rank 0 it feeds

* ``metrics.jsonl``: one JSON object per line (``kind`` ``train`` every ``log_interval``
  steps, ``epoch`` after each epoch, ``eval`` after each evaluation), flushed at once so
  that a killed run keeps every line written before the kill;
* TensorBoard scalars (``tensorboard/``), through ``torch.utils.tensorboard`` (needs the
  ``tensorboard`` package; without it TensorBoard logging is off with one warning line);
* the console: a rich progress bar (epoch, steps, loss, learning rate, samples/s, ETA of
  the epoch and of the run) on a terminal, or plain periodic lines in quiet mode and when
  the output is not a terminal (CI logs, ``nohup``, files);
* ``train.log``: the plain lines, for reading after the fact.

On other ranks every call is a no-op (see :meth:`TrainLogger.disabled`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["MetricsFile", "TensorBoardWriter", "TrainLogger", "format_duration", "read_metrics"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``-:--:--`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    return str(datetime.timedelta(seconds=round(seconds)))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _json_value(value.item())
        except (TypeError, ValueError):
            return str(value)
    return value


class MetricsFile:
    """``metrics.jsonl``: appends one JSON object per :meth:`write`, flushed at once.

    Non-finite floats are written as ``null`` (strict JSON).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line and flush it to the OS."""
        if self._handle is None:
            raise ValueError(f"{self.path}: metrics file is closed")
        self._handle.write(json.dumps(_json_value(dict(record)), allow_nan=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: str | os.PathLike[str], kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (those of ``kind`` only, when given)."""
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if kind is None or record.get("kind") == kind:
                    records.append(record)
    return records


class TensorBoardWriter:
    """TensorBoard scalars in ``log_dir`` (a thin layer over ``SummaryWriter``).

    When the ``tensorboard`` package is missing, :attr:`enabled` is False and a warning
    says how to install it; every call is then a no-op.
    """

    def __init__(self, log_dir: str | os.PathLike[str], enabled: bool = True,
                 notify: Any = None):
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            message = ("TensorBoard logging is off: the 'tensorboard' package is not installed "
                       "(pip install tensorboard)")
            warnings.warn(message, stacklevel=2)
            if notify is not None:
                notify(message)
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """One scalar per entry, tagged ``prefix/name``; non-finite values are skipped."""
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    if value is None or not math.isfinite(value):
        return "nan" if value is not None else "-"
    return format(value, spec)


_META_KEYS = frozenset({"epoch", "step", "time", "lr", "samples_per_s", "grad_norm", "loss"})


def _is_summary_term(name: str) -> bool:
    """Loss terms shown on a plain progress line: not the total or bookkeeping, and not a
    per-group breakdown such as ``task3.heatmap`` (those are in metrics.jsonl)."""
    if name in _META_KEYS:
        return False
    head = name.split(".", 1)[0]
    return not (head != name and head[-1:].isdigit())


class _RichProgress:
    """The progress bar on a terminal."""

    def __init__(self, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]} (run {task.fields[eta_run]})"),
            console=console, transient=False, refresh_per_second=4,
        )
        self.task: Any = None
        self.progress.start()

    def start_epoch(self, label: str, total: int, completed: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=total, completed=completed, epoch=label,
                                           loss="-", lr="-", speed="-", eta="-:--:--",
                                           eta_run="-:--:--")

    def update(self, completed: int, fields: Mapping[str, str]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=completed, **fields)

    def print(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        self.progress.stop()


class TrainLogger:
    """The trainer's reporting channel (see the module docstring).

    Args:
        run_dir: the run folder's root (``metrics.jsonl``, ``tensorboard/`` and
            ``train.log`` go there); ``None``: console only.
        quiet: no progress bar; plain lines every ``log_interval`` steps.
        stream: the console stream (default ``sys.stderr``).
        tensorboard: write TensorBoard scalars.
        enabled: False on ranks other than 0: nothing is written or printed.
        defer_run_dir: without ``run_dir``, keep the lines said until
            :meth:`open_run_dir` for the start of ``train.log``.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *, quiet: bool = False,
                 stream: TextIO | None = None, tensorboard: bool = True, enabled: bool = True,
                 defer_run_dir: bool = False):
        self.enabled = enabled
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.root: Path | None = None
        self.metrics: MetricsFile | None = None
        self.tb: TensorBoardWriter | None = None
        self._log_file: TextIO | None = None
        self._defer = defer_run_dir and run_dir is None
        self._early_lines: list[str] = []  # with defer_run_dir: stamped lines said before open_run_dir
        self._bar: _RichProgress | None = None
        self._use_bar = False
        if not enabled:
            return
        if run_dir is not None:
            self.open_run_dir(run_dir, tensorboard=tensorboard)
        if not quiet:
            from rich.console import Console

            console = Console(file=self.stream)
            if console.is_terminal:
                self._use_bar = True
                self._console = console

    def open_run_dir(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = True) -> None:
        """Start writing ``metrics.jsonl``, ``tensorboard/`` and ``train.log`` in ``run_dir``;
        ``train.log`` begins with the lines said before (while the model and data were built,
        before the run folder was made)."""
        if not self.enabled:
            return
        if self._log_file is not None:
            raise RuntimeError(f"the logger already writes into {self.root}")
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsFile(self.root / "metrics.jsonl")
        self._log_file = (self.root / "train.log").open("a", encoding="utf-8")
        self._log_file.writelines(self._early_lines)
        self._log_file.flush()
        self._early_lines = []
        self._defer = False
        self.tb = TensorBoardWriter(self.root / "tensorboard", enabled=tensorboard, notify=self.info)

    @classmethod
    def disabled(cls) -> TrainLogger:
        """A logger that does nothing (ranks other than 0)."""
        return cls(enabled=False)

    @property
    def shows_progress_bar(self) -> bool:
        """True when a rich progress bar is (or will be) drawn."""
        return self._use_bar

    # -- plain lines -------------------------------------------------------------------

    def _emit(self, text: str) -> None:
        if self._bar is not None:
            self._bar.print(text)
        else:
            print(text, file=self.stream, flush=True)
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n"
        if self._log_file is not None:
            self._log_file.write(line)
            self._log_file.flush()
        elif self._defer:
            self._early_lines.append(line)

    def info(self, text: str) -> None:
        """A notice line (console and ``train.log``)."""
        if self.enabled:
            self._emit(text)

    def warning(self, text: str) -> None:
        """A warning line."""
        if self.enabled:
            self._emit(f"warning: {text}")

    # -- training progress -------------------------------------------------------------

    def start_epoch(self, epoch: int, num_epochs: int, steps: int, start_step: int = 0) -> None:
        """Epoch ``epoch`` (1-based) of ``num_epochs`` begins, ``steps`` steps long, at step
        ``start_step`` (non-zero when resuming mid-epoch)."""
        if not self.enabled:
            return
        if self._use_bar:
            if self._bar is None:
                self._bar = _RichProgress(self._console)
            self._bar.start_epoch(f"{epoch}/{num_epochs}", steps, start_step)

    def progress(self, step_in_epoch: int, *, loss: float | None, lr: float,
                 samples_per_s: float | None, eta_epoch_s: float, eta_run_s: float) -> None:
        """Update the progress bar (cheap; called every step). No output in plain mode."""
        if not self.enabled or self._bar is None:
            return
        self._bar.update(step_in_epoch, {
            "loss": _fmt(loss), "lr": f"{lr:.2e}",
            "speed": _fmt(samples_per_s, ".1f") if samples_per_s else "-",
            "eta": format_duration(eta_epoch_s), "eta_run": format_duration(eta_run_s)})

    def log_train(self, record: Mapping[str, Any], *, epoch: int, num_epochs: int,
                  step_in_epoch: int, steps: int, eta_epoch_s: float, eta_run_s: float) -> None:
        """A ``log_interval`` point: ``metrics.jsonl``, TensorBoard ``train/*`` and, without
        a progress bar, one plain line."""
        if not self.enabled:
            return
        if self.metrics is not None:
            self.metrics.write({"kind": "train", **record})
        if self.tb is not None:
            scalars = {k: v for k, v in record.items() if k not in ("epoch", "step", "time")}
            self.tb.scalars(scalars, int(record["step"]), "train")
        if self._bar is None:
            terms = " ".join(f"{k} {_fmt(v)}" for k, v in record.items() if _is_summary_term(k))
            speed = record.get("samples_per_s")
            self._emit(
                f"epoch {epoch}/{num_epochs} step {step_in_epoch}/{steps} "
                f"loss {_fmt(record.get('loss'))}" + (f" ({terms})" if terms else "")
                + f" lr {record.get('lr', float('nan')):.2e}"
                + (f" {speed:.1f} samples/s" if speed else "")
                + f" eta {format_duration(eta_epoch_s)} (run {format_duration(eta_run_s)})")

    def start_eval(self, epoch: int, batches: int) -> None:
        """An evaluation of ``batches`` batches begins (a line; a bar on a terminal)."""
        if not self.enabled:
            return
        self._emit(f"evaluating after epoch {epoch} ({batches} batches per process)")
        if self._bar is not None:
            self._bar.start_epoch(f"{epoch} eval", batches, 0)

    def eval_progress(self, done: int) -> None:
        """``done`` evaluation batches are predicted (bar only)."""
        if self.enabled and self._bar is not None:
            self._bar.update(done, {})

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """The end of an epoch: ``metrics.jsonl``, TensorBoard ``epoch/*`` and a line."""
        if not self.enabled:
            return
        if self.metrics is not None:
            self.metrics.write({"kind": "epoch", **record})
        if self.tb is not None:
            scalars = {k: v for k, v in record.items() if k not in ("epoch", "step", "time")}
            self.tb.scalars(scalars, int(record["step"]), "epoch")
            self.tb.flush()
        self._emit(f"epoch {record['epoch']} done: loss {_fmt(record.get('loss'))}, "
                   f"{_fmt(record.get('samples_per_s'), '.1f')} samples/s, "
                   f"{format_duration(record.get('time_s', float('nan')))}")

    def log_eval(self, metrics: Mapping[str, float], *, epoch: int, step: int,
                 primary: str | None = None) -> None:
        """An evaluation: ``metrics.jsonl``, TensorBoard ``val/*`` and a summary line."""
        if not self.enabled:
            return
        if self.metrics is not None:
            self.metrics.write({"kind": "eval", "epoch": epoch, "step": step, "time": time.time(),
                                **dict(metrics)})
        if self.tb is not None:
            self.tb.scalars(dict(metrics), step, "val")
            self.tb.flush()
        shown = [primary] if primary and primary in metrics else []
        shown += [k for k in metrics if k not in shown][: max(0, 6 - len(shown))]
        summary = ", ".join(f"{k} {_fmt(float(metrics[k]))}" for k in shown
                            if isinstance(metrics[k], (int, float)))
        self._emit(f"eval after epoch {epoch}: {summary}" if summary else f"eval after epoch {epoch}")

    def write_record(self, record: Mapping[str, Any]) -> None:
        """Append any other record to ``metrics.jsonl`` (e.g. ``kind: "test"``)."""
        if self.enabled and self.metrics is not None:
            self.metrics.write(record)

    def close(self) -> None:
        """Stop the bar, flush and close the files."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.tb is not None:
            self.tb.close()
        if self.metrics is not None:
            self.metrics.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
