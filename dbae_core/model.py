"""The DBAE module (dbae-method.md §1): x0 → Enc → z → Dec → x_T; the reverse bridge conditioned on (x_T, z) → x0."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dbae_core.bridges import Bridge, expand_as, make_bridge
from dbae_core.networks import Decoder, DecoderConfig, Encoder, EncoderConfig, Posterior, UNet, UNetConfig
from dbae_core.objectives import BridgeLoss, ConfigurationError, LossOutput
from dbae_core.preconditioning import make_precond
from dbae_core.samplers import sample_bridge

__all__ = ["DBAEConfig", "DBAE"]


@dataclass(frozen=True)
class DBAEConfig:
    """Everything that defines a DBAE model: latent size, the three networks, the SDE, preconditioning, objective."""

    image_size: int = 64
    latent_dim: int = 512
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    sde: str = "vp"
    bridge_params: dict[str, float] = field(default_factory=dict)  # e.g. {"beta_min": 0.1, "beta_d": 2.0}
    precond: str = "bridge"  # "bridge" (EDM/DDBM) or "none" (plain x0 prediction)
    sigma_data: float = 0.5
    sigma_data_end: float = 0.5
    cov: float = 0.0
    entropy_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.latent_dim <= 0:
            raise ConfigurationError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        sizes = {"encoder": self.encoder.image_size, "decoder": self.decoder.image_size, "unet": self.unet.image_size}
        if any(s != self.image_size for s in sizes.values()):
            raise ConfigurationError(f"image_size {self.image_size} must match every network's image_size: {sizes}")
        if self.entropy_weight < 0:
            raise ConfigurationError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.entropy_weight > 0 and not self.encoder.stochastic:
            raise ConfigurationError(
                f"entropy_weight={self.entropy_weight} needs a stochastic encoder: set encoder.stochastic=true "
                "(DBAE) or entropy_weight=0 (DBAE-d)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DBAEConfig:
        """Inverse of dataclasses.asdict (checkpoints store the config as a plain dict)."""
        nested = {"encoder": EncoderConfig, "decoder": DecoderConfig, "unet": UNetConfig}
        kw = {k: (nested[k](**{f: tuple(v) if isinstance(v, list) else v for f, v in val.items()})
                  if k in nested else val) for k, val in d.items()}
        return cls(**kw)

    def replace(self, **changes: Any) -> DBAEConfig:
        """A copy with top-level fields changed, e.g. cfg.replace(latent_dim=64)."""
        return dataclasses.replace(self, **changes)


class DBAE(nn.Module):
    """Encoder, decoder and denoiser composed with a bridge schedule and a preconditioner."""

    kind = "dbae"  # checkpoints record it, so a loader knows which module to build

    def __init__(self, cfg: DBAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder, cfg.latent_dim)
        self.decoder = Decoder(cfg.decoder, cfg.latent_dim)
        self.unet = UNet(cfg.unet, cfg.latent_dim)
        try:
            self.bridge: Bridge = make_bridge(cfg.sde, **cfg.bridge_params)
            self.precond = make_precond(cfg.precond, **({} if cfg.precond == "none" else dict(
                sigma_data=cfg.sigma_data, sigma_data_end=cfg.sigma_data_end, cov=cfg.cov)))
        except ValueError as err:
            raise ConfigurationError(str(err)) from None
        self.objective = BridgeLoss(cfg.entropy_weight)

    @property
    def stochastic(self) -> bool:
        return self.cfg.encoder.stochastic

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part and in total."""
        parts = {"unet": self.unet, "encoder": self.encoder, "decoder": self.decoder}
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
        return {"total": sum(counts.values()), **counts}

    # -- the pieces -------------------------------------------------------------------------
    def posterior(self, x0: Tensor) -> Posterior:
        return self.encoder(x0)

    def encode(self, x0: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """z for x0: the posterior mean by default (our evaluation choice), a reparameterised sample if `sample`."""
        post = self.encoder(x0)
        return post.sample(generator) if sample else post.mean

    def endpoint(self, z: Tensor) -> Tensor:
        """x_T = Dec(z)."""
        return self.decoder(z)

    def denoise(self, x_t: Tensor, t: Tensor, x_T: Tensor, z: Tensor, clamp: bool = False) -> Tensor:
        """D_θ(x_t, t, x_T, z) = c_skip x_t + c_out F_θ(c_in x_t, c_noise, x_T, z); clamped to [−1, 1] if `clamp`."""
        c_skip, c_out, c_in, c_noise = self.precond(self.bridge, t)
        f = self.unet(expand_as(c_in, x_t).to(x_t.dtype) * x_t, c_noise, x_T, z)
        d = expand_as(c_skip, x_t) * x_t + expand_as(c_out, x_t) * f.to(x_t.dtype)
        return d.clamp(-1.0, 1.0) if clamp else d

    def loss(self, x0: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> LossOutput:
        """Bridge score matching + entropy term (see objectives.BridgeLoss); `shard` = (rank, world) under DDP."""
        return self.objective(self, x0, generator, shard)

    def forward(self, x0: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> Tensor:
        """The training losses stacked as (loss, loss_bridge, entropy): DDP wraps `forward`, so training calls this."""
        return torch.stack([v.float() for v in self.loss(x0, generator, shard)])

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: Tensor, steps: int = 100, method: str = "euler", churn: float = 0.0, rho: float = 7.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """Images from latents: x_T = Dec(z), then the reverse bridge, clamped to [−1, 1] as the release does (§3).

        Returns (x0, nfe)."""
        z = z.float()
        x_T = self.endpoint(z).float()

        def denoiser(x: Tensor, t: Tensor) -> Tensor:
            return self.denoise(x, t.float(), x_T, z, clamp=True).float()

        x, nfe = sample_bridge(denoiser, x_T, self.bridge, steps, method=method, churn=churn, rho=rho,
                               generator=generator)
        return x.clamp(-1.0, 1.0), nfe

    @torch.no_grad()
    def reconstruct(self, x0: Tensor, steps: int = 100, method: str = "euler", churn: float = 0.0,
                    sample_latent: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """x0 → z → x̂0 (Euler ODE with 100 steps is the release's reconstruction setting)."""
        z = self.encode(x0, sample=sample_latent, generator=generator)
        return self.decode(z, steps, method, churn, generator=generator)[0]

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, lambdas: Sequence[float] = tuple(i / 10 for i in range(11)),
                    steps: int = 100, method: str = "euler", churn: float = 0.0,
                    generator: torch.Generator | None = None) -> Tensor:
        """z_λ = (1 − λ) z1 + λ z2 with x_T = Dec(z_λ); returns (len(lambdas), B, C, H, W)."""
        z1, z2 = self.encode(x1), self.encode(x2)
        lam = torch.tensor(list(lambdas), device=z1.device, dtype=z1.dtype)[:, None, None]
        z = ((1 - lam) * z1[None] + lam * z2[None]).flatten(0, 1)
        x = self.decode(z, steps, method, churn, generator=generator)[0]
        return x.reshape(len(lam), *x1.shape)
