"""One switch between the autoencoders the platform compares (dbae-method.md §4, §7): DBAE, DBAE-d and DiffAE.

    build_autoencoder("dbae_d", "tiny", latent_dim=32)   # a sweep varies `method` and nothing else

DiffAE takes the preset's encoder and UNet sizes (the UNet input is x_t alone and z enters as a multiplicative scale),
so the three methods differ only where the methods differ.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from dbae_core.checkpoint import load_checkpoint
from dbae_core.diffae import DiffAE, DiffAEConfig
from dbae_core.model import DBAE, DBAEConfig
from dbae_core.objectives import ConfigurationError
from dbae_core.presets import preset as dbae_preset

__all__ = ["METHODS", "AutoencoderConfig", "diffae_config", "build_config", "build_autoencoder", "model_from_config",
           "method_of", "config_from_dict", "load_autoencoder"]

METHODS = ("dbae", "dbae_d", "diffae")
AutoencoderConfig = DBAEConfig | DiffAEConfig


def diffae_config(cfg: DBAEConfig) -> DiffAEConfig:
    """DiffAE with the encoder (made deterministic) and UNet sizes of a DBAE config (§7)."""
    return DiffAEConfig(image_size=cfg.image_size, latent_dim=cfg.latent_dim,
                        encoder=dataclasses.replace(cfg.encoder, stochastic=False),
                        unet=dataclasses.replace(cfg.unet, concat_endpoint=False, latent_conditioning="scale"))


def build_config(method: str, preset: str | DBAEConfig = "tiny", **changes: Any) -> AutoencoderConfig:
    """The config of `method` on a DBAE preset (by name or object), with top-level fields changed."""
    if method not in METHODS:
        raise ConfigurationError(f"model.method={method!r} is invalid: use one of {METHODS}")
    base = dbae_preset(preset) if isinstance(preset, str) else preset
    if method == "diffae":
        cfg: AutoencoderConfig = diffae_config(base)
    else:
        cfg = base.replace(encoder=dataclasses.replace(base.encoder, stochastic=method == "dbae"),
                           **({"entropy_weight": 0.0} if method == "dbae_d" else {}))
    try:
        return cfg.replace(**changes) if changes else cfg
    except TypeError:
        fields = sorted(f.name for f in dataclasses.fields(cfg))
        bad = sorted(set(changes) - set(fields))
        raise ConfigurationError(f"{bad} are not settings of {method}: use {fields}") from None


def model_from_config(cfg: AutoencoderConfig) -> nn.Module:
    """DBAE for a DBAEConfig, DiffAE for a DiffAEConfig."""
    return DiffAE(cfg) if isinstance(cfg, DiffAEConfig) else DBAE(cfg)


def build_autoencoder(method: str, preset: str | DBAEConfig = "tiny", **changes: Any) -> nn.Module:
    """A fresh model of `method` ∈ METHODS ("dbae": stochastic encoder, "dbae_d": deterministic, "diffae")."""
    return model_from_config(build_config(method, preset, **changes))


def method_of(model_or_cfg: nn.Module | AutoencoderConfig) -> str:
    """The METHODS entry a model or config belongs to."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    if isinstance(cfg, DiffAEConfig):
        return "diffae"
    return "dbae" if cfg.encoder.stochastic else "dbae_d"


def config_from_dict(d: dict[str, Any], kind: str | None = None) -> AutoencoderConfig:
    """Inverse of dataclasses.asdict for either config; `kind` ("dbae"/"diffae") or the keys decide which."""
    diffae = kind == "diffae" if kind is not None else "beta_start" in d
    return DiffAEConfig.from_dict(d) if diffae else DBAEConfig.from_dict(d)


def load_autoencoder(path: str | os.PathLike, use_ema: bool = True, map_location: str = "cpu") -> nn.Module:
    """The model of a training checkpoint (EMA weights by default), in eval mode."""
    state = load_checkpoint(path, map_location=map_location)
    model = model_from_config(config_from_dict(state["model_config"], state.get("model_kind")))
    model.load_state_dict(state["ema" if use_ema else "model"])
    return model.to(map_location).eval()
