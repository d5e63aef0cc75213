"""The GPU fast path and the reference path: the execution settings that change speed and memory, never the model.

Every setting defaults to the fast choice; `REFERENCE` is the release's way of running the same architecture
(fp32, eager, NCHW, explicit-matmul attention, per-parameter optimizer and EMA loops), so one switch
(`TrainConfig.reference`) measures the speed-up side by side on the same device and batch.

Several fast choices apply on CUDA only. `execution_plan` resolves them for one device into an `ExecutionPlan`, which
`fit` follows; a test may replace any field to run a CUDA branch (bf16 autocast, channels_last, fused optimizer
kernels, SyncBatchNorm) on the CPU and compare it with the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dbae_core.networks.layers import AttentionBlock
from dbae_core.networks.unet import UNet

__all__ = ["REFERENCE", "ATTENTION", "OPTIMIZER_KERNELS", "ExecutionPlan", "execution_plan", "optimizer_kernel",
           "channels_last_applies", "configure"]

ATTENTION = ("sdpa", "plain")
REFERENCE = {"precision": "fp32", "channels_last": False, "compile": False, "fused_optimizer": False,
             "foreach_ema": False, "attention": "plain", "activation_checkpointing": False}
# "fused": one kernel for the whole update (AdamW/Adam); "foreach": multi-tensor kernels; "loop": per parameter.
OPTIMIZER_KERNELS = ("fused", "foreach", "loop")
FUSED_OPTIMIZERS = ("adamw", "adam")  # RAdam has no fused kernel


@dataclass(frozen=True)
class ExecutionPlan:
    """What a run's execution settings resolve to on one device: the CUDA-gated choices made explicit."""

    precision: str  # "bf16" (autocast) or "fp32"
    channels_last: bool  # NHWC weights and batches
    optimizer_kernel: str  # one of OPTIMIZER_KERNELS
    sync_batchnorm: bool  # BatchNorm → SyncBatchNorm when the model is wrapped in DDP
    compile: bool  # torch.compile of the UNet


def channels_last_applies(device: torch.device, channels_last: bool) -> bool:
    """NHWC is a CUDA setting: tensor-core convolutions want it; most CPU kernels run slower with it."""
    return channels_last and device.type == "cuda"


def optimizer_kernel(optimizer: str, device: torch.device | None, fused: bool = True) -> str:
    """The default kernel: fused AdamW/Adam on CUDA, foreach elsewhere and for RAdam; per-parameter loops when
    `fused` (TrainConfig.fused_optimizer) is off."""
    if not fused:
        return "loop"
    cuda = device is not None and device.type == "cuda"
    return "fused" if cuda and optimizer in FUSED_OPTIMIZERS else "foreach"


def execution_plan(run: Any, device: torch.device) -> ExecutionPlan:
    """Resolve `run` (a TrainConfig's execution settings) for `device`: bf16 autocast for precision "bf16", and for
    "auto" on CUDA; channels_last, fused AdamW/Adam and SyncBatchNorm on CUDA only."""
    cuda = device.type == "cuda"
    bf16 = run.precision == "bf16" or (run.precision == "auto" and cuda)
    return ExecutionPlan(precision="bf16" if bf16 else "fp32",
                         channels_last=channels_last_applies(device, run.channels_last),
                         optimizer_kernel=optimizer_kernel(run.optimizer, device, run.fused_optimizer),
                         sync_batchnorm=cuda, compile=run.compile)


def configure(model: nn.Module, device: torch.device, *, attention: str = "sdpa", channels_last: bool = True,
              activation_checkpointing: bool = False) -> nn.Module:
    """Set `model`'s attention kernels, UNet activation checkpointing and (on CUDA) memory format, in place."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r} is invalid: use one of {ATTENTION}")
    for module in model.modules():
        if isinstance(module, AttentionBlock):
            module.fused = attention == "sdpa"
        elif isinstance(module, UNet):
            module.activation_checkpointing = activation_checkpointing
    if channels_last_applies(device, channels_last):
        model.to(memory_format=torch.channels_last)
    return model
