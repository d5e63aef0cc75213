"""Diffusion bridge schedules (dbae-method.md §2): the one place where α, σ, SNR, a_t, b_t, c_t, f, g² and h live.

Every schedule is written in terms of three accurate primitives of t:
  log α_t,   ν_t = 1/SNR_t = σ_t²/α_t²,   Δ_t = ν_T − ν_t  (computed without cancellation near T).
From those, with r_t = SNR_T/SNR_t = ν_t/ν_T:
  a_t = r_t α_t/α_T,   b_t = α_t (1 − r_t) = α_t Δ_t/ν_T,   c_t = σ_t² (1 − r_t) = α_t² ν_t Δ_t/ν_T,
  h(x, t, x_T) = ∇ log p(x_T | x_t) = ((α_t/α_T) x_T − x) / (α_t² Δ_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Bridge", "VPBridge", "VEBridge", "make_bridge", "BRIDGES", "expand_as"]


class Bridge:
    """Base class: subclasses define log_alpha, nu, nu_gap, f, g2 and the time range [t_min, T]."""

    name: str
    t_min: float
    T: float

    # -- primitives (subclasses) -------------------------------------------------------------
    def log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def nu(self, t: Tensor) -> Tensor:
        """ν_t = σ_t²/α_t² = 1/SNR_t."""
        raise NotImplementedError

    def nu_gap(self, t: Tensor) -> Tensor:
        """Δ_t = ν_T − ν_t, accurate as t → T."""
        raise NotImplementedError

    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient of the base SDE: f(x, t) = f(t)·x."""
        raise NotImplementedError

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)²."""
        raise NotImplementedError

    # -- derived quantities ------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma2(self, t: Tensor) -> Tensor:
        """σ_t² = α_t² ν_t."""
        return torch.exp(2 * self.log_alpha(t)) * self.nu(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma2(t).sqrt()

    def snr(self, t: Tensor) -> Tensor:
        return 1.0 / self.nu(t)

    def _at_T(self, t: Tensor) -> tuple[Tensor, Tensor]:
        T = torch.full_like(t, self.T)
        return self.log_alpha(T), self.nu(T)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a_t, b_t, c_t) of q(x_t | x0, x_T) = N(a_t x_T + b_t x0, c_t I); c_t is the variance."""
        log_alpha, nu, gap = self.log_alpha(t), self.nu(t), self.nu_gap(t)
        log_alpha_T, nu_T = self._at_T(t)
        alpha = torch.exp(log_alpha)
        a = nu / nu_T * torch.exp(log_alpha - log_alpha_T)
        b = alpha * gap / nu_T
        c = alpha * alpha * nu * gap / nu_T
        return a, b, c

    def h(self, x: Tensor, t: Tensor, x_T: Tensor) -> Tensor:
        """Doob's h-transform drift term ∇_x log p(x_T | x_t = x) (§2)."""
        log_alpha, gap = self.log_alpha(t), self.nu_gap(t)
        log_alpha_T, _ = self._at_T(t)
        ratio, denom = expand_as(torch.exp(log_alpha - log_alpha_T), x), expand_as(torch.exp(2 * log_alpha) * gap, x)
        return (ratio * x_T - x) / denom


def expand_as(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector of shape (B,) to broadcast against a (B, ...) tensor."""
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


@dataclass(frozen=True)
class VPBridge(Bridge):
    """Variance-preserving bridge: β(t) = β_min + β_d t, log α_t = −β_d t²/4 − β_min t/2, ν_t = expm1(u_t)."""

    beta_min: float = 0.1
    beta_d: float = 2.0
    t_min: float = 1e-4
    T: float = 1.0
    name: str = "vp"

    def __post_init__(self) -> None:
        if not (self.beta_min >= 0 and self.beta_d >= 0 and self.beta_min + self.beta_d > 0):
            raise ValueError(f"VP bridge needs beta_min >= 0, beta_d >= 0, not both 0; "
                             f"got {self.beta_min}, {self.beta_d}")
        if not 0 < self.t_min < self.T:
            raise ValueError(f"VP bridge needs 0 < t_min < T; got t_min={self.t_min}, T={self.T}")

    def _u(self, t: Tensor) -> Tensor:
        """u_t = ∫₀ᵗ β = β_d t²/2 + β_min t = −2 log α_t."""
        return t * (0.5 * self.beta_d * t + self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._u(t)

    def nu(self, t: Tensor) -> Tensor:
        return torch.expm1(self._u(t))

    def nu_gap(self, t: Tensor) -> Tensor:
        # e^{u_T} − e^{u_t} = e^{u_t} expm1(u_T − u_t), with u_T − u_t = (T − t)(β_d (T + t)/2 + β_min).
        du = (self.T - t) * (0.5 * self.beta_d * (self.T + t) + self.beta_min)
        return torch.exp(self._u(t)) * torch.expm1(du)

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * (self.beta_min + self.beta_d * t)

    def g2(self, t: Tensor) -> Tensor:
        return self.beta_min + self.beta_d * t


@dataclass(frozen=True)
class VEBridge(Bridge):
    """Variance-exploding bridge: σ_t = t, α_t = 1, f = 0, g² = 2t, T = σ_max."""

    sigma_max: float = 80.0
    t_min: float = 0.002
    name: str = "ve"

    def __post_init__(self) -> None:
        if not 0 < self.t_min < self.sigma_max:
            raise ValueError(f"VE bridge needs 0 < t_min < sigma_max; got {self.t_min}, {self.sigma_max}")

    @property
    def T(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def nu(self, t: Tensor) -> Tensor:
        return t * t

    def nu_gap(self, t: Tensor) -> Tensor:
        return (self.T - t) * (self.T + t)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        return 2 * t


BRIDGES = {"vp": VPBridge, "ve": VEBridge}


def make_bridge(kind: str, **params: float) -> Bridge:
    """Build a bridge schedule by name: make_bridge("vp", beta_min=0.1, beta_d=2) or make_bridge("ve", sigma_max=80)."""
    try:
        cls = BRIDGES[kind]
    except KeyError:
        raise ValueError(f"unknown SDE type {kind!r}: use one of {sorted(BRIDGES)}") from None
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for the {kind!r} bridge ({err}); allowed: "
                         f"{[f for f in cls.__dataclass_fields__ if f != 'name']}") from None

