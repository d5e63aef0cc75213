"""The encoder q_φ(z | x0) (dbae-method.md §4): DiffAE's half-UNet without time input.

DBAE-d: z = Enc(x0). DBAE: Enc(x0) = (m, s); μ = 5 tanh(m/5), log σ' = 5 tanh(s/5), σ = exp(log σ') + 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dbae_core.networks.layers import AttentionBlock, GroupNorm32, ResBlock

__all__ = ["EncoderConfig", "Encoder", "Posterior"]

SIGMA_FLOOR = 0.01  # σ = exp(log σ') + 0.01, the release's parameterisation
SOFT_CLAMP = 5.0


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the half-UNet encoder; `attention_resolutions` in pixels; the middle block always has attention."""

    image_size: int = 64
    channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    stochastic: bool = False


class Posterior(NamedTuple):
    """q_φ(z | x0): the mean, and for the stochastic encoder σ (None for DBAE-d)."""

    mean: Tensor
    sigma: Tensor | None = None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample z = μ + σ ε (the mean itself for a deterministic encoder)."""
        if self.sigma is None:
            return self.mean
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.sigma * eps

    def mean_log_sigma(self) -> Tensor:
        """Per-sample (1/d) Σ_j log σ_j: the entropy H(q_φ(z|x0)) per dimension, up to ½ log(2πe)."""
        if self.sigma is None:
            raise ValueError("a deterministic encoder has no entropy")
        return torch.log(self.sigma).mean(dim=1)

    def entropy(self) -> Tensor:
        """Per-sample differential entropy Σ_j log σ_j + d/2 · log(2πe), in nats."""
        d = self.mean.shape[1]
        return self.mean_log_sigma() * d + 0.5 * d * math.log(2 * math.pi * math.e)


class Encoder(nn.Module):
    """x0 → Posterior over z ∈ R^d."""

    def __init__(self, cfg: EncoderConfig, latent_dim: int) -> None:
        super().__init__()
        self.cfg, self.latent_dim = cfg, latent_dim
        base = cfg.base_channels

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=cfg.num_heads)

        ch = cfg.channel_mult[0] * base
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, ch, 3, padding=1)]
        res_px = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, mult * base))
                ch = mult * base
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch))
            if level != len(cfg.channel_mult) - 1:
                layers.append(ResBlock(ch, ch, down=True))
                res_px //= 2
        layers += [ResBlock(ch, ch), attn(ch), ResBlock(ch, ch)]
        self.body = nn.Sequential(*layers)
        self.out_norm = GroupNorm32(ch)
        self.out = nn.Conv2d(ch, latent_dim * (2 if cfg.stochastic else 1), 1)

    def forward(self, x0: Tensor) -> Posterior:
        h = F.silu(self.out_norm(self.body(x0)))
        h = self.out(h.mean(dim=(2, 3), keepdim=True)).flatten(1).float()
        if not self.cfg.stochastic:
            return Posterior(h)
        m, s = h.chunk(2, dim=1)
        mu = SOFT_CLAMP * torch.tanh(m / SOFT_CLAMP)
        sigma = torch.exp(SOFT_CLAMP * torch.tanh(s / SOFT_CLAMP)) + SIGMA_FLOOR
        return Posterior(mu, sigma)
