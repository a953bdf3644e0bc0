"""Multi-process training: one process per device, started by ``torchrun``.

``torchrun --nproc-per-node N -m distill3d train CONFIG`` starts ``N`` copies of the same
command; each reads its place from the environment variables torchrun sets (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA) and
returns a :class:`DistInfo` that the rest of the engine passes around: there is no global
"current rank" in distill3d beyond ``torch.distributed``'s own process group.

Rules the engine follows:

* only rank 0 writes files (run folder, checkpoints, TensorBoard, ``metrics.jsonl``);
  the others compute and take part in collectives;
* metrics (losses, timings) are averaged over ranks before they are logged, so every
  logged number describes the global batch;
* on CPU each process gets its share of the machine's cores (one thread when there are
  as many processes as cores), so that ``N`` processes do not oversubscribe the CPU;
* SyncBatchNorm runs only on CUDA (its kernels are CUDA-only): on CPU the option is
  ignored with a warning and each rank keeps its own BatchNorm statistics.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distill3d.errors import Distill3DError

__all__ = [
    "DistInfo",
    "DistributedError",
    "all_gather_objects",
    "available_cpus",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "default_num_threads",
    "env_world_size",
    "init_distributed",
    "reduce_mean",
    "reduce_scalars",
    "resolve_device",
    "wrap_model",
]


class DistributedError(Distill3DError):
    """A bad distributed set-up (missing torchrun variables, an unusable device)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 is the main process, the one that writes files).
        local_rank: rank within this node (the CUDA device index on GPU nodes).
        world_size: number of processes in the job.
        local_world_size: processes on this node.
        device: the device this process computes on.
        backend: ``gloo``/``nccl`` when a process group is in use, else ``None``.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is in use."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files and prints progress)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not started by torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_num_threads(local_world_size: int = 1) -> int:
    """Intra-op threads for one of ``local_world_size`` processes sharing this node's CPUs:
    ``available_cpus() // local_world_size``, at least 1."""
    return max(1, available_cpus() // max(1, local_world_size))


def resolve_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device to compute on: ``cpu``, ``cuda`` (this process's GPU, ``cuda:LOCAL_RANK``)
    or an explicit ``cuda:K``; ``None`` means CUDA when available, else CPU.

    Raises:
        DistributedError: CUDA asked for but not available, or a bad device string.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DistributedError(f"bad device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"device {name!r} asked for, but CUDA is not available "
                                   f"(torch {torch.__version__}); use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    elif device.type != "cpu":
        raise DistributedError(f"device {name!r}: only cpu and cuda are supported")
    return device


def init_distributed(device: str | torch.device | None = None,
                     timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE > 1``).

    The backend is ``nccl`` for CUDA devices and ``gloo`` for CPU. A process group that
    is already initialised (e.g. by a test harness) is used as it is. Single-process runs
    return a :class:`DistInfo` with ``backend=None`` and start nothing.

    Args:
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        timeout: collective timeout (default: torch's).

    Raises:
        DistributedError: torchrun variables missing or inconsistent, or CUDA unavailable.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, local_rank, world, local_world, dev, dist.get_backend())
    world = env_world_size()
    if world <= 1:
        return DistInfo(device=resolve_device(device, 0))
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start "
                               "multi-process runs with torchrun --nproc-per-node N -m distill3d ...")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if dev.type == "cuda":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    return DistInfo(rank, local_rank, world, local_world, dev, backend)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group that :func:`init_distributed` joined (no-op otherwise)."""
    if info.backend is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in single-process runs)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index or 0])
        else:
            dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, *, sync_batchnorm: bool = False,
               find_unused_parameters: bool = False, log: Any = None) -> nn.Module:
    """Move ``model`` to ``info.device`` and, in a distributed run, wrap it in
    ``DistributedDataParallel`` (gradients averaged over ranks in backward).

    ``sync_batchnorm`` converts BatchNorm layers to ``SyncBatchNorm`` (statistics over the
    global batch) on CUDA only; on CPU SyncBatchNorm cannot run, so the option is ignored
    with a warning (each rank then normalises with its own batch statistics).

    Args:
        model: the module whose ``forward`` the training step calls.
        info: from :func:`init_distributed`.
        sync_batchnorm: see above.
        find_unused_parameters: DDP's option of that name.
        log: optional ``callable(str)`` for the notice lines.

    Returns:
        The module to call in training (the DDP wrapper, or ``model`` itself).
    """
    model = model.to(info.device)
    if not info.distributed:
        return model
    if sync_batchnorm:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            message = ("train.sync_batchnorm: SyncBatchNorm runs only on CUDA; on CPU it is "
                       "ignored and each rank keeps its own BatchNorm statistics")
            warnings.warn(message, stacklevel=2)
            if log is not None:
                log(message)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, output_device=device_ids[0] if device_ids else None,
        find_unused_parameters=find_unused_parameters)


def reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; the input is unchanged)."""
    out = tensor.detach().clone()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def reduce_scalars(values: Mapping[str, float | torch.Tensor], info: DistInfo,
                   device: torch.device | None = None) -> dict[str, float]:
    """Average named scalars over ranks in one collective.

    Every rank must pass the same names (the order does not matter). Returns plain floats.
    """
    names = sorted(values)
    if not names:
        return {}
    dev = device or info.device
    parts = []
    for name in names:
        value = values[name]
        if isinstance(value, torch.Tensor):
            parts.append(value.detach().to(dev, torch.float64).reshape(()))
        else:
            parts.append(torch.tensor(float(value), dtype=torch.float64, device=dev))
    flat = torch.stack(parts)
    flat = reduce_mean(flat, info)
    return dict(zip(names, flat.tolist()))


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box: Sequence[Any] = [obj]
    dist.broadcast_object_list(box, src=src)  # type: ignore[arg-type]
    return box[0]
