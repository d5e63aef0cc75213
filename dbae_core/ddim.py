"""Discrete DDPM/DDIM math shared by the latent prior (dbae-method.md §5) and the DiffAE baseline (§7).

Forward process: q(x_t | x0) = N(√ᾱ_t x0, (1 − ᾱ_t) I), ᾱ_t = Π_{s≤t} (1 − β_s), t ∈ {0, …, T−1}.
Samplers are pure functions `(eps_fn, x, schedule, steps, ...) -> (x, nfe)` with eps_fn(x_t, t) the ε-prediction and
t a (B,) long tensor of original timesteps.

DDIM with N steps keeps the timesteps τ_0 < … < τ_{N−1} (evenly spaced, τ_0 = 0, τ_{N−1} = T−1) and the levels
ᾱ(L_0) = 1 (clean), ᾱ(L_k) = ᾱ_{τ_{k−1}}. Sampling L_k → L_{k−1} and inversion L_k → L_{k+1} both evaluate ε at the
timestep between the two levels (τ_{k−1} resp. τ_k) with the current x, so inversion is the explicit reverse of
sampling with the same grid, and the inverted x_T sits at τ_{N−1}, where sampling starts. Either costs N NFE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["EpsFn", "DiscreteSchedule", "make_schedule", "ddim_timesteps", "ddim_step", "ddim_sample",
           "ddim_invert", "SCHEDULES"]

EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, t as a (B,) long tensor) -> ε̂
SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class DiscreteSchedule:
    """β_t for t = 0 … T−1 (float64) and everything derived from it (dbae-method.md §5, §7)."""

    betas: Tensor

    @property
    def T(self) -> int:
        return self.betas.numel()

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = Π_{s≤t} (1 − β_s), computed as exp(Σ log1p(−β_s)) in float64."""
        return torch.exp(torch.cumsum(torch.log1p(-self.betas), 0))

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t for a (B,) long tensor of timesteps, broadcastable against `like` (B, …) and in its dtype."""
        a = self.alphas_cumprod.to(t.device)[t]
        return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε."""
        a = self.alpha_bar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def make_schedule(kind: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                  beta: float = 0.008) -> DiscreteSchedule:
    """"linear": β from beta_start to beta_end (DiffAE's images, §7); "constant": β_t = beta (its latent DPM, §5)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    # built on the CPU whatever the default device (a meta-device dry run still validates and counts parameters)
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64, device="cpu")
    elif kind == "constant":
        betas = torch.full((T,), beta, dtype=torch.float64, device="cpu")
    else:
        raise ValueError(f"unknown beta schedule {kind!r}: use one of {SCHEDULES}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"every beta must lie in (0, 1), got range [{betas.min():.3g}, {betas.max():.3g}]")
    return DiscreteSchedule(betas)


def ddim_timesteps(T: int, steps: int) -> Tensor:
    """τ_0 < … < τ_{N−1}: N evenly spaced integer timesteps from 0 to T−1 (just T−1 for N = 1)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    return torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long().flip(0)


def ddim_step(x: Tensor, eps: Tensor, a_from: Tensor, a_to: Tensor, clip: bool = False) -> Tensor:
    """Deterministic DDIM move between levels: x̂0 = (x − √(1−ᾱ) ε)/√ᾱ; x' = √ᾱ' x̂0 + √(1−ᾱ') ε (DDIM Eq. 12, η=0)."""
    x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - a_from.sqrt() * x0) / (1 - a_from).sqrt()  # ε consistent with the clipped x̂0
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def _levels(schedule: DiscreteSchedule, steps: int, device) -> tuple[Tensor, Tensor]:
    """(τ, ᾱ of the levels L_0 … L_N) with ᾱ(L_0) = 1."""
    tau = ddim_timesteps(schedule.T, steps)
    a = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod[tau]])
    return tau.to(device), a.to(device)


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, x: Tensor, schedule: DiscreteSchedule, steps: int, clip: bool = False,
                eta: float = 0.0, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """From x at level L_N (timestep T−1; x ~ N(0, I) for generation) to L_0 (the data). Returns (x0, nfe).

    `clip` clamps x̂0 to [−1, 1] at every step (images). η > 0 adds DDIM's stochasticity (η = 1: DDPM posterior).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    tau, a = _levels(schedule, steps, x.device)
    batch = x.shape[0]
    for k in range(steps, 0, -1):
        t = tau[k - 1].expand(batch)
        eps = eps_fn(x, t).to(x.dtype)
        a_from, a_to = a[k].to(x.dtype), a[k - 1].to(x.dtype)
        if eta > 0 and k > 1:
            sigma = eta * ((1 - a_to) / (1 - a_from) * (1 - a_from / a_to)).sqrt()
            x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - a_from.sqrt() * x0) / (1 - a_from).sqrt()
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = a_to.sqrt() * x0 + (1 - a_to - sigma ** 2).sqrt() * eps + sigma * noise
        else:
            x = ddim_step(x, eps, a_from, a_to, clip)
    return x, steps


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, x: Tensor, schedule: DiscreteSchedule, steps: int, clip: bool = False,
                eta: float = 0.0, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """Deterministic DDIM inversion from the data (L_0) to x_T at L_N, the reverse of `ddim_sample`. Returns (x_T, nfe).

    `eta` and `generator` exist for the shared signature; inversion is deterministic (η must be 0).
    """
    if eta != 0:
        raise ValueError("DDIM inversion is deterministic: eta must be 0")
    tau, a = _levels(schedule, steps, x.device)
    batch = x.shape[0]
    for k in range(steps):
        t = tau[k].expand(batch)
        eps = eps_fn(x, t).to(x.dtype)
        a_from, a_to = a[k].to(x.dtype), a[k + 1].to(x.dtype)
        if k == 0:  # ᾱ = 1 at the data: x̂0 = x itself
            x0 = x.clamp(-1.0, 1.0) if clip else x
            x = a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps
        else:
            x = ddim_step(x, eps, a_from, a_to, clip)
    return x, steps
