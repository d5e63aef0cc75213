"""Exponential moving average of a model's weights (EMA 0.9999 in the release, dbae-method.md §9)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """θ_ema ← decay · θ_ema + (1 − decay) · θ without host syncs; buffers (BatchNorm stats) copied.

    `foreach` (default) updates all parameters in a few multi-tensor kernels; False loops over them one by one.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, foreach: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.foreach = decay, foreach
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        if self.foreach:
            torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        else:
            for p_ema, p in zip(ema_params, params):
                p_ema.lerp_(p, 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
