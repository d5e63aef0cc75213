"""The GPU fast path and the reference path: the execution settings that change speed and memory, never the model.

Every setting defaults to the fast choice; `REFERENCE` is the release's way of running the same architecture
(fp32, eager, NCHW, explicit-matmul attention, per-parameter optimizer and EMA loops), so one switch
(`TrainConfig.reference`) measures the speed-up side by side on the same device and batch.
"""

from __future__ import annotations

import torch
from torch import nn

from dbae_core.networks.layers import AttentionBlock
from dbae_core.networks.unet import UNet

__all__ = ["REFERENCE", "ATTENTION", "configure"]

ATTENTION = ("sdpa", "plain")
REFERENCE = {"precision": "fp32", "channels_last": False, "compile": False, "fused_optimizer": False,
             "foreach_ema": False, "attention": "plain", "activation_checkpointing": False}


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
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model
