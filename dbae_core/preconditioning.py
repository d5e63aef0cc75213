"""EDM-style bridge preconditioning (dbae-method.md §3): D = c_skip x_t + c_out F(c_in x_t, c_noise, x_T, z).

The same object is used in training and in sampling (the release builds its sampler with sigma_data_end = 0 while
training with 0.5; this project does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dbae_core.bridges import Bridge

__all__ = ["BridgePrecond", "NoPrecond", "make_precond", "PRECONDS"]


def _c_noise(t: Tensor) -> Tensor:
    """The network's time input, 250 · ln t, for both SDEs."""
    return 250.0 * torch.log(t)


@dataclass(frozen=True)
class BridgePrecond:
    """DDBM preconditioning with data std σ0, endpoint std σT and their covariance."""

    sigma_data: float = 0.5
    sigma_data_end: float = 0.5
    cov: float = 0.0

    def __post_init__(self) -> None:
        if self.sigma_data <= 0:
            raise ValueError(f"sigma_data={self.sigma_data} is invalid: use a positive number (0.5, the release's)")
        if self.sigma_data_end <= 0:  # A → c_t → 0 as t → T, so c_in = A^(−1/2) grows without bound
            raise ValueError(f"sigma_data_end={self.sigma_data_end} is invalid: c_in = A^(-1/2) grows without bound "
                             "as t → T; use a positive number (0.5, the release's training value)")
        if self.cov * self.cov > (self.sigma_data * self.sigma_data_end) ** 2:
            raise ValueError(f"|cov| must not exceed sigma_data * sigma_data_end; got cov={self.cov}")

    def _terms(self, bridge: Bridge, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a_t, b_t, A, c_out²·A) with A = a²σT² + b²σ0² + 2ab·cov + c."""
        a, b, c = bridge.coefficients(t)
        s0, sT = self.sigma_data ** 2, self.sigma_data_end ** 2
        A = a * a * sT + b * b * s0 + 2 * a * b * self.cov + c
        out_var = a * a * (s0 * sT - self.cov ** 2) + s0 * c  # c_out² · A
        return a, b, A, out_var

    def __call__(self, bridge: Bridge, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) for a tensor of times."""
        a, b, A, out_var = self._terms(bridge, t)
        c_in = torch.rsqrt(A)
        c_skip = (b * self.sigma_data ** 2 + a * self.cov) / A
        c_out = torch.sqrt(out_var) * c_in
        return c_skip, c_out, c_in, _c_noise(t)

    def loss_weight(self, bridge: Bridge, t: Tensor) -> Tensor:
        """λ(t) = 1 / c_out(t)²."""
        _, _, A, out_var = self._terms(bridge, t)
        return A / out_var


@dataclass(frozen=True)
class NoPrecond:
    """Plain x0 prediction: D = F(x_t, c_noise, x_T, z), unit loss weight."""

    def __call__(self, bridge: Bridge, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        zero, one = torch.zeros_like(t), torch.ones_like(t)
        return zero, one, one, _c_noise(t)

    def loss_weight(self, bridge: Bridge, t: Tensor) -> Tensor:
        return torch.ones_like(t)


PRECONDS = {"bridge": BridgePrecond, "none": NoPrecond}


def make_precond(kind: str = "bridge", **params: float) -> BridgePrecond | NoPrecond:
    """Build a preconditioner by name ("bridge" or "none")."""
    if kind not in PRECONDS:
        raise ValueError(f"unknown preconditioning {kind!r}: use one of {sorted(PRECONDS)}")
    if kind == "none":
        return NoPrecond()
    return BridgePrecond(**params)
