"""Model presets as data (dbae-method.md §4): the paper's CelebA 64 and FFHQ 128 networks, and `tiny` for CPU."""

from __future__ import annotations

from dbae_core.model import DBAEConfig
from dbae_core.networks import DecoderConfig, EncoderConfig, UNetConfig

__all__ = ["PRESETS", "preset"]


def _paper(size: int, base: int, unet_mult: tuple[int, ...], enc_mult: tuple[int, ...]) -> DBAEConfig:
    return DBAEConfig(
        image_size=size, latent_dim=512,
        encoder=EncoderConfig(image_size=size, base_channels=base, channel_mult=enc_mult, attention_resolutions=(16,)),
        decoder=DecoderConfig(image_size=size, ngf=64),
        unet=UNetConfig(image_size=size, base_channels=base, channel_mult=unet_mult, attention_resolutions=(32, 16, 8),
                        head_channels=64, dropout=0.1),
    )


PRESETS: dict[str, DBAEConfig] = {
    # Release: DBAE-d 120.62M = UNet 69.68M + encoder 19.32M + decoder 31.62M.
    "celeba64": _paper(64, 64, (1, 2, 4, 8), (1, 2, 4, 8, 8)),
    # Release: DBAE-d 162.43M = UNet 105.46M + encoder 24.67M + decoder 32.29M.
    "ffhq128": _paper(128, 128, (1, 1, 2, 3, 4), (1, 1, 2, 3, 4, 4)),
    # About two million parameters at 32 px: ~30 images/s for a training step on 2 CPU cores.
    "tiny": DBAEConfig(
        image_size=32, latent_dim=64,
        encoder=EncoderConfig(image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                              attention_resolutions=(8,)),
        decoder=DecoderConfig(image_size=32, ngf=8),
        unet=UNetConfig(image_size=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(8,), head_channels=32, dropout=0.0),
    ),
}


def preset(name: str, **changes) -> DBAEConfig:
    """A preset by name, with top-level fields changed: preset("tiny", latent_dim=32, sde="ve")."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}") from None
    return cfg.replace(**changes) if changes else cfg
