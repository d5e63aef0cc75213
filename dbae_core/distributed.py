"""Data parallelism for `fit`: the rank and world size, the DDP wrapping (BatchNorm → SyncBatchNorm on CUDA), and a
world-size-1 process group in which that wrapping runs in one process (the tests and the GPU check)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["rank_world", "convert_sync_batchnorm", "wrap_distributed", "single_process_group"]

log = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def convert_sync_batchnorm(model: nn.Module) -> int:
    """Replace `model`'s BatchNorm layers by SyncBatchNorm in place (same parameters and buffers, same state_dict
    keys); returns how many layers the model now has. Under a process group of several ranks they normalise over the
    global batch; without one, or with one rank, they compute plain batch norm."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise TypeError("convert_sync_batchnorm converts the layers inside a model, not a bare BatchNorm layer")
    nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def wrap_distributed(model: nn.Module, device: torch.device, sync_batchnorm: bool | None = None
                     ) -> DistributedDataParallel:
    """DDP around `model` in the initialised process group, BatchNorm converted to SyncBatchNorm first when
    `sync_batchnorm` (default: on CUDA; PyTorch's SyncBatchNorm refuses CPU tensors under a process group)."""
    if sync_batchnorm is None:
        sync_batchnorm = device.type == "cuda"
    if sync_batchnorm:
        log.debug("SyncBatchNorm layers: %d", convert_sync_batchnorm(model))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index])
    return DistributedDataParallel(model)


@contextlib.contextmanager
def single_process_group(device: torch.device, timeout_s: float = 120.0) -> Iterator[str]:
    """A process group of world size 1 (NCCL on CUDA, gloo on the CPU), rendezvous through a file store in a
    temporary directory; destroyed on exit. Yields the backend's name."""
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and device.index is not None:  # NCCL binds the current device
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory(prefix="dbae-pg-") as tmp:
        store = (Path(tmp) / "store").as_uri()
        dist.init_process_group(backend, init_method=store, rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=timeout_s))
        try:
            yield backend
        finally:
            dist.destroy_process_group()
