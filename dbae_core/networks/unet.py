"""The denoiser F_θ (dbae-method.md §4): an ADM UNet over concat[c_in·x_t, x_T], with z added to the time embedding.

With `latent_conditioning="scale"` it is DiffAE's UNet instead (§7): z scales every ResBlock's normalised features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dbae_core.networks.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_,
)

__all__ = ["UNetConfig", "UNet", "LATENT_CONDITIONING"]

LATENT_CONDITIONING = ("embed", "scale")


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of the ADM UNet. `attention_resolutions` are feature-map sizes in pixels."""

    image_size: int = 64
    channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    head_channels: int = 64
    dropout: float = 0.1
    resblock_updown: bool = True
    concat_endpoint: bool = True  # input is concat[c_in·x_t, x_T] (DBAE); False for an unconditional-endpoint UNet
    # "embed": emb = time + Linear(z) (DBAE); "scale": GN(h)(1 + s_t) + b_t, then ·(1 + s_z) per ResBlock (DiffAE)
    latent_conditioning: str = "embed"

    def __post_init__(self) -> None:
        if self.latent_conditioning not in LATENT_CONDITIONING:
            raise ValueError(f"unet.latent_conditioning={self.latent_conditioning!r} is invalid: use one of "
                             f"{LATENT_CONDITIONING}")

    @property
    def emb_channels(self) -> int:
        return 4 * self.base_channels


class UNet(nn.Module):
    """F_θ(x_in, c_noise, x_T, z): ResBlocks conditioned on emb = MLP(sinusoid(c_noise)) + Linear(z) (or z-scaled).

    With `activation_checkpointing` set, training forwards keep only each block's input and recompute the block in
    the backward pass: less activation memory for large batches at 128/256 px, for about one more forward of compute.
    """

    activation_checkpointing: bool = False

    def __init__(self, cfg: UNetConfig, latent_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        base, emb_ch = cfg.base_channels, cfg.emb_channels
        self.time_embed = nn.Sequential(nn.Linear(base, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.scaled = cfg.latent_conditioning == "scale"
        self.latent_embed = None if self.scaled else nn.Linear(latent_dim, emb_ch)
        cond_ch = latent_dim if self.scaled else None

        def res(cin: int, cout: int, **kw: bool) -> ResBlock:
            return ResBlock(cin, cout, emb_ch, cfg.dropout, cond_channels=cond_ch, **kw)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, head_channels=cfg.head_channels)

        in_ch = cfg.channels * (2 if cfg.concat_endpoint else 1)
        ch = cfg.channel_mult[0] * base
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_ch, ch, 3, padding=1))])
        skips, res_px = [ch], cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * base)]
                ch = mult * base
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                skips.append(ch)
                res_px //= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * base)]
                ch = mult * base
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch))
                    res_px *= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out_norm = GroupNorm32(ch)
        self.out_conv = zero_(nn.Conv2d(ch, cfg.channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor, x_T: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(c_noise, self.cfg.base_channels))
        cond = None
        if self.scaled:
            if z is None:
                raise ValueError("a UNet with latent_conditioning='scale' needs z")
            cond = z
        elif z is not None:
            emb = emb + self.latent_embed(z)
        h = torch.cat([x, x_T], dim=1) if self.cfg.concat_endpoint else x
        run = self._checkpointed if self.activation_checkpointing and torch.is_grad_enabled() else _call
        hs = []
        for block in self.input_blocks:
            h = run(block, h, emb, cond)
            hs.append(h)
        h = run(self.middle_block, h, emb, cond)
        for block in self.output_blocks:
            h = run(block, torch.cat([h, hs.pop()], dim=1), emb, cond)
        return self.out_conv(F.silu(self.out_norm(h)))

    @staticmethod
    def _checkpointed(block: nn.Module, h: Tensor, emb: Tensor, cond: Tensor | None) -> Tensor:
        return checkpoint(block, h, emb, cond, use_reentrant=False)  # restores the RNG state: dropout masks match


def _call(block: nn.Module, h: Tensor, emb: Tensor, cond: Tensor | None) -> Tensor:
    return block(h, emb, cond)

