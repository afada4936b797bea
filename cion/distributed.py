"""torchrun / DDP helpers shared by every trainer.

One process or many, the same code: :func:`init` reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and starts a process group
with ``nccl`` when CUDA is used and ``gloo`` on CPU; without those variables it is a single
process and every collective here is a no-op.

>>> info = init()                # DistInfo(rank=0, world_size=1, local_rank=0, device=cpu)
>>> model = wrap_ddp(model, info)
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def init(device: str | None = None) -> DistInfo:
    """Start (or reuse) the process group described by torchrun's environment variables.

    Args:
        device: "cpu", "cuda" or None (= CUDA when available).
    Returns:
        DistInfo with this process's rank, the world size, the local rank and its device.
    """
    want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        from cion.errors import CionError
        raise CionError("device 'cuda' requested but no CUDA GPU is visible. Fix: use --device cpu")
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if n > 1 and not is_dist():
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(local_rank)
        tdist.init_process_group(backend=backend)
    dev = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    return DistInfo(rank=rank(), world_size=world_size(), local_rank=local_rank, device=dev)


@contextlib.contextmanager
def same_init(seed: int = 0):
    """Random initialisation identical on every rank, and equal to a single-process run: inside
    the block the CPU generator is seeded with ``seed``; its previous state is restored after,
    so per-rank streams (dropout, augmentation) are untouched. Build models inside it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def launched_by_torchrun() -> bool:
    """True under ``torchrun`` with more than one process (the process group may not exist yet)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cleanup() -> None:
    if is_dist():
        tdist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        tdist.barrier()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not is_dist():
        return t
    out = t.clone()
    tdist.all_reduce(out, op=op)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` itself when single-process)."""
    return _all_reduce(t, tdist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all ranks (``t`` itself when single-process)."""
    return _all_reduce(t, tdist.ReduceOp.MAX)


def all_gather_object(obj) -> list:
    """List of ``obj`` from every rank (``[obj]`` when single-process)."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def maybe_sync_batchnorm(model: nn.Module, info: DistInfo) -> tuple[nn.Module, bool]:
    """Convert BatchNorm layers to SyncBatchNorm under multi-GPU DDP.

    PyTorch's SyncBatchNorm runs on GPUs only; on CPU (gloo) BatchNorm stays per-process and
    the function says so by returning False.
    """
    if info.world_size > 1 and info.device.type == "cuda" and has_batchnorm(model):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), True
    return model, False


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel when world_size > 1, else the model unchanged."""
    if info.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
