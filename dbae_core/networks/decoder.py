"""The decoder x_T = Dec(z) (dbae-method.md §4): a FastGAN-style generator, deterministic, no output activation.

Channels per resolution follow FastGAN's table (×ngf): 4→16, 8→8, 16→4, 32→2, 64→2, 128→1, 256→½. Squeeze-excitation
skips gate the 64/128/256-px maps with the 4/8/16-px ones (FastGAN's pairing); below 64 px one skip gates the final
map with the 4-px one. At 64 and 128 px this is the release's generator layer for layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["DecoderConfig", "Decoder", "DECODER_SIZES"]

_NFC_MULT = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5}
DECODER_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class DecoderConfig:
    image_size: int = 64
    channels: int = 3
    ngf: int = 64
    norm: str = "batch"  # "batch" (the release) or "group"
    spectral_norm: bool = True  # the release wraps every conv in spectral normalisation


class _GLU(nn.Module):
    """Gated linear unit over channels: x[:C/2] · σ(x[C/2:])."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


class _SqueezeExcite(nn.Module):
    """Gate a large feature map by a small one: big · σ(conv(swish(conv(pool₄(small)))))."""

    def __init__(self, ch_small: int, ch_big: int, conv) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(4), conv(ch_small, ch_big, 4, bias=False), nn.SiLU(),
                                  conv(ch_big, ch_big, 1, bias=False), nn.Sigmoid())

    def forward(self, small: Tensor, big: Tensor) -> Tensor:
        return big * self.gate(small)


class Decoder(nn.Module):
    """z ∈ R^d → x_T ∈ R^{3×S×S} for S ∈ {16, 32, 64, 128, 256}."""

    def __init__(self, cfg: DecoderConfig, latent_dim: int) -> None:
        super().__init__()
        if cfg.image_size not in DECODER_SIZES:
            raise ValueError(f"decoder image_size must be one of {DECODER_SIZES}, got {cfg.image_size}")
        if cfg.norm not in ("batch", "group"):
            raise ValueError(f"decoder norm must be 'batch' or 'group', got {cfg.norm!r}")
        self.cfg = cfg
        nfc = {r: max(1, int(m * cfg.ngf)) for r, m in _NFC_MULT.items()}

        def conv(*args, **kw) -> nn.Module:
            layer = nn.Conv2d(*args, **kw)
            return spectral_norm(layer) if cfg.spectral_norm else layer

        def norm(ch: int) -> nn.Module:
            return nn.BatchNorm2d(ch) if cfg.norm == "batch" else nn.GroupNorm(min(32, ch // 2), ch)

        first = nn.ConvTranspose2d(latent_dim, 2 * nfc[4], 4, 1, 0, bias=False)
        self.init = nn.Sequential(spectral_norm(first) if cfg.spectral_norm else first, norm(2 * nfc[4]), _GLU())
        self.resolutions = [4 * 2 ** i for i in range(1, cfg.image_size.bit_length() - 2)]  # 8 … S
        self.up = nn.ModuleDict({
            str(r): nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                  conv(nfc[r // 2], 2 * nfc[r], 3, 1, 1, bias=False), norm(2 * nfc[r]), _GLU())
            for r in self.resolutions})
        targets = [r for r in (64, 128, 256) if r <= cfg.image_size] or [cfg.image_size]
        self.skip_source = {r: max(4, r // 16) for r in targets}
        self.se = nn.ModuleDict({str(r): _SqueezeExcite(nfc[s], nfc[r], conv) for r, s in self.skip_source.items()})
        self.to_image = conv(nfc[cfg.image_size], cfg.channels, 1, 1, 0, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        feats = {4: self.init(z.reshape(z.shape[0], -1, 1, 1))}
        h = feats[4]
        for r in self.resolutions:
            h = self.up[str(r)](h)
            if r in self.skip_source:
                h = self.se[str(r)](feats[self.skip_source[r]], h)
            feats[r] = h
        return self.to_image(h)
