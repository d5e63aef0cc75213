"""The DiffAE baseline (dbae-method.md §7): a z-conditioned DDIM with ε-prediction, T = 1000, linear β 1e-4 → 0.02.

Same interface as `DBAE` (`loss`, `forward`, `encode`, `decode`, `reconstruct`, `interpolate`, `parameter_counts`), so
`dbae_core.training.fit` trains it unchanged. Its latent is (z, x_T): z from the encoder, x_T either random
("random x_T", what DBAE competes with at equal latent size) or inferred by DDIM inversion over T_inv steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dbae_core.ddim import DiscreteSchedule, ddim_invert, ddim_sample, make_schedule
from dbae_core.editing import slerp
from dbae_core.networks import Encoder, EncoderConfig, UNet, UNetConfig
from dbae_core.objectives import ConfigurationError, LossOutput, draw

__all__ = ["DiffAEConfig", "DiffAE", "EpsLoss"]


def _diffae_unet(**kw: Any) -> UNetConfig:
    return UNetConfig(concat_endpoint=False, latent_conditioning="scale", **kw)


@dataclass(frozen=True)
class DiffAEConfig:
    """Encoder and z-scaled UNet sizes and the DDPM schedule of DiffAE (§7)."""

    image_size: int = 64
    latent_dim: int = 512
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=_diffae_unet)
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.latent_dim <= 0:
            raise ConfigurationError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        sizes = {"encoder": self.encoder.image_size, "unet": self.unet.image_size}
        if any(s != self.image_size for s in sizes.values()):
            raise ConfigurationError(f"image_size {self.image_size} must match every network's image_size: {sizes}")
        if self.encoder.stochastic:
            raise ConfigurationError("DiffAE's encoder is deterministic: set encoder.stochastic=false")
        if self.unet.concat_endpoint or self.unet.latent_conditioning != "scale":
            raise ConfigurationError("DiffAE's UNet takes x_t alone and a z scale: set unet.concat_endpoint=false and "
                                     "unet.latent_conditioning='scale'")
        if self.T < 1 or not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigurationError(f"need T >= 1 and 0 < beta_start <= beta_end < 1, got T={self.T}, "
                                     f"beta_start={self.beta_start}, beta_end={self.beta_end}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffAEConfig:
        """Inverse of dataclasses.asdict (checkpoints store the config as a plain dict)."""
        nested = {"encoder": EncoderConfig, "unet": UNetConfig}
        kw = {k: (nested[k](**{f: tuple(v) if isinstance(v, list) else v for f, v in val.items()})
                  if k in nested else val) for k, val in d.items()}
        return cls(**kw)

    def replace(self, **changes: Any) -> DiffAEConfig:
        """A copy with top-level fields changed, e.g. cfg.replace(latent_dim=64)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EpsLoss:
    """Plain ε-MSE (§7): t ~ U{0, …, T−1}, x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, L = E‖ε_θ(x_t, t, Enc(x0)) − ε‖²."""

    def __call__(self, model: DiffAE, x0: Tensor, generator: torch.Generator | None = None,
                 shard: tuple[int, int] = (0, 1)) -> LossOutput:
        z = model.encoder(x0).mean
        u = draw(torch.rand, x0.shape[:1], generator, x0, shard, dtype=torch.float32)
        t = (u * model.schedule.T).long().clamp_(max=model.schedule.T - 1)
        eps = draw(torch.randn, x0.shape, generator, x0, shard)
        x_t = model.schedule.q_sample(x0, t, eps)
        loss = (model.eps(x_t, t, z).float() - eps.float()).square().mean()
        return LossOutput(loss, loss, loss.new_zeros(()))


class DiffAE(nn.Module):
    """Semantic encoder z = Enc(x0) and a conditional ε-network ε_θ(x_t, t, z) (DiffAE, §7)."""

    kind = "diffae"

    def __init__(self, cfg: DiffAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder, cfg.latent_dim)
        self.unet = UNet(cfg.unet, cfg.latent_dim)
        self.schedule: DiscreteSchedule = make_schedule("linear", cfg.T, cfg.beta_start, cfg.beta_end)
        self.objective = EpsLoss()

    @property
    def stochastic(self) -> bool:
        return False

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part and in total (DiffAE has no decoder)."""
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in
                  {"unet": self.unet, "encoder": self.encoder}.items()}
        return {"total": sum(counts.values()), **counts, "decoder": 0}

    # -- the pieces -------------------------------------------------------------------------
    def encode(self, x0: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """z_sem = Enc(x0) (deterministic; `sample` exists for the DBAE interface)."""
        return self.encoder(x0).mean

    def eps(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """ε_θ(x_t, t, z); the network's time input is the integer timestep."""
        return self.unet(x_t, t.float(), None, z)

    def loss(self, x0: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> LossOutput:
        """ε-MSE (see EpsLoss); `shard` = (rank, world) under DDP. The entropy term is 0."""
        return self.objective(self, x0, generator, shard)

    def forward(self, x0: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> Tensor:
        """The training losses stacked as (loss, loss_bridge, entropy), as DBAE.forward."""
        return torch.stack([v.float() for v in self.loss(x0, generator, shard)])

    def _eps_fn(self, z: Tensor):
        return lambda x, t: self.eps(x, t, z).float()

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def invert(self, x0: Tensor, z: Tensor | None = None, steps: int = 100) -> tuple[Tensor, int]:
        """Inferred x_T: DDIM inversion of x0 conditioned on z (T_inv = `steps` NFE). Returns (x_T, nfe)."""
        z = self.encode(x0) if z is None else z
        return ddim_invert(self._eps_fn(z.float()), x0.float(), self.schedule, steps)

    @torch.no_grad()
    def decode(self, z: Tensor, steps: int = 100, x_T: Tensor | None = None, clip: bool = True, eta: float = 0.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """Images from z by DDIM from x_T (random N(0, I) unless given). Returns (x0, nfe)."""
        z = z.float()
        if x_T is None:
            shape = (z.shape[0], self.cfg.unet.channels, self.cfg.image_size, self.cfg.image_size)
            x_T = torch.randn(shape, generator=generator, device=z.device)
        x, nfe = ddim_sample(self._eps_fn(z), x_T.float(), self.schedule, steps, clip=clip, eta=eta,
                             generator=generator)
        return x.clamp(-1.0, 1.0), nfe

    @torch.no_grad()
    def reconstruct(self, x0: Tensor, steps: int = 100, inverse_steps: int | None = None, random_xT: bool = False,
                    sample_latent: bool = False, generator: torch.Generator | None = None,
                    return_nfe: bool = False) -> Tensor | tuple[Tensor, int]:
        """x0 → (z, x_T) → x̂0. x_T inferred by DDIM inversion (T_inv = inverse_steps, default `steps`) or random.

        With an inferred x_T both directions run without clipping, so decoding is the exact reverse of the inversion.
        `return_nfe` also returns the network evaluations spent (inversion + decoding). `sample_latent` exists for the
        DBAE interface (DiffAE's encoder is deterministic).
        """
        z = self.encode(x0)
        if random_xT:
            x, nfe = self.decode(z, steps, generator=generator)
        else:
            x_T, nfe_inv = self.invert(x0, z, inverse_steps or steps)
            x, nfe = self.decode(z, steps, x_T=x_T, clip=False)
            nfe += nfe_inv
        return (x, nfe) if return_nfe else x

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, lambdas: Sequence[float] = tuple(i / 10 for i in range(11)),
                    steps: int = 100, inverse_steps: int | None = None, random_xT: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
        """z_λ = lerp(z1, z2), x_T,λ = slerp(x_T1, x_T2) of the inferred x_T (DiffAE's protocol); (len(λ), B, C, H, W).

        With `random_xT` one shared random x_T is used for every λ (the setting comparable to DBAE).
        """
        z1, z2 = self.encode(x1), self.encode(x2)
        lam = torch.tensor(list(lambdas), device=z1.device, dtype=z1.dtype)
        z = torch.lerp(z1[None], z2[None], lam[:, None, None]).flatten(0, 1)
        if random_xT:
            noise = torch.randn(x1.shape, generator=generator, device=x1.device)
            x_T = noise[None].expand(len(lam), *x1.shape).flatten(0, 1)
            x = self.decode(z, steps, x_T=x_T)[0]
        else:
            n = inverse_steps or steps
            xt1, xt2 = self.invert(x1, z1, n)[0], self.invert(x2, z2, n)[0]
            x_T = torch.stack([slerp(xt1, xt2, float(v)) for v in lam]).flatten(0, 1)
            x = self.decode(z, steps, x_T=x_T, clip=False)[0]
        return x.reshape(len(lam), *x1.shape)
