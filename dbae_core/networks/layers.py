"""Building blocks shared by the ADM UNet (denoiser F_θ) and the half-UNet encoder (dbae-method.md §4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupNorm32", "timestep_embedding", "ResBlock", "AttentionBlock", "Downsample", "Upsample",
           "EmbedSequential", "zero_", "plain_attention"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with min(32, C) groups, computed in float32 (as ADM does) and cast back."""

    def __init__(self, channels: int) -> None:
        super().__init__(min(32, channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (output layers start as the identity of the residual path)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of a (B,) tensor of (possibly negative, non-integer) times, as in ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Downsample(nn.Module):
    """Stride-2 3×3 conv, or 2×2 average pooling when `conv` is False."""

    def __init__(self, channels: int, conv: bool = True) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2, followed by a 3×3 conv when `conv` is True."""

    def __init__(self, channels: int, conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """ADM residual block with optional scale-shift conditioning on an embedding and optional up/down-sampling.

    With `emb_channels=None` (the DiffAE encoder, no time input) the block is GN→SiLU→conv plus the skip path only,
    exactly as DiffAE's unconditioned ResBlock. With `cond_channels` (DiffAE's UNet, §7) a latent z further scales the
    normalised features: GN(h)(1 + s_t) + b_t, then ·(1 + s_z) with s_z = Linear(SiLU(z)).
    """

    def __init__(self, channels: int, out_channels: int | None = None, emb_channels: int | None = None,
                 dropout: float = 0.0, up: bool = False, down: bool = False, scale_shift: bool = True,
                 cond_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_norm = GroupNorm32(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.resample: nn.Module | None = (Upsample(channels, conv=False) if up else
                                           Downsample(channels, conv=False) if down else None)
        self.conditioned = emb_channels is not None
        self.scale_shift = scale_shift
        if self.conditioned:
            self.emb = nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
            self.out_norm = GroupNorm32(out_channels)
            self.dropout = nn.Dropout(dropout)
            self.out_conv = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if cond_channels is not None and not self.conditioned:
            raise ValueError("a latent scale (cond_channels) needs the time embedding (emb_channels)")
        self.cond = nn.Linear(cond_channels, out_channels) if cond_channels is not None else None
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        h = F.silu(self.in_norm(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.in_conv(h)
        if self.conditioned:
            e = self.emb(F.silu(emb)).to(h.dtype)[:, :, None, None]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = self.out_norm(h) * (1 + scale) + shift
            else:
                h = self.out_norm(h + e)
            if self.cond is not None:
                h = h * (1 + self.cond(F.silu(cond)).to(h.dtype)[:, :, None, None])
            h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions (1×1-conv qkv and projection, as ADM).

    `fused` (default) calls `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU); False computes
    softmax(q kᵀ/√d) v with explicit matmuls, as the release does: the reference path. Same weights, same function.
    """

    fused: bool = True

    def __init__(self, channels: int, num_heads: int = 1, head_channels: int = -1) -> None:
        super().__init__()
        if head_channels > 0:
            if channels % head_channels:
                raise ValueError(f"attention channels {channels} not divisible by head_channels {head_channels}")
            num_heads = channels // head_channels
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, hgt * wid))  # (B, 3C, L)
        # Split heads before q/k/v, the layout of ADM's legacy attention that the release trains with.
        qkv = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, hgt * wid).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, heads, L, C/heads)
        h = F.scaled_dot_product_attention(q, k, v) if self.fused else plain_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, hgt * wid)
        return x + self.proj(h).reshape(b, c, hgt, wid)


def plain_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / √d) v over the last two dimensions, the weights in float32 (as ADM's QKVAttentionLegacy)."""
    weight = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1)
    return weight.to(v.dtype) @ v


class EmbedSequential(nn.Sequential):
    """A sequence of layers where ResBlocks receive the conditioning embedding (and the latent, for a latent scale)."""

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x
