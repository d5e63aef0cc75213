"""Reverse-bridge samplers (dbae-method.md §6): pure functions `(denoiser, x_T, bridge, ...) -> (x0, nfe)`.

With ŝ = −(x − a_t x_T − b_t D)/c_t the bridge score estimate and h from the schedule:
  ODE  dx/dt = f x − g² (½ ŝ − h)
  SDE  dx = [f x − g² (ŝ − h)] dt + g dW      (time runs backwards, dt < 0)
Per interval, churn r > 0 first takes an Euler–Maruyama SDE step t_i → t̂ = t_i + r (t_{i+1} − t_i), then an ODE step
t̂ → t_{i+1}: Euler, or Heun (Euler on the last interval, which ends at 0).
NFE: Euler N, Heun 2N − 1, Euler + churn 2N, Heun + churn 3N − 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dbae_core.bridges import Bridge, expand_as

__all__ = ["karras_grid", "sample_bridge", "expected_nfe", "Denoiser", "METHODS"]

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t, t as a (B,) tensor) -> x0_hat
METHODS = ("euler", "heun")


def karras_grid(steps: int, t_min: float, t_max: float, rho: float = 7.0, device=None,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """t_i = (t_max^{1/ρ} + i/(N−1) (t_min^{1/ρ} − t_max^{1/ρ}))^ρ for i < N, then t_N = 0 (N + 1 values)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < t_min <= t_max:
        raise ValueError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = t_min ** (1 / rho), t_max ** (1 / rho)
    t = (hi + ramp * (lo - hi)) ** rho
    t[-1] = t_min  # exact ends (the ρ-th power of a ρ-th root is off by an ulp); with one step, t_max alone
    t[0] = t_max
    return torch.cat([t, t.new_zeros(1)]).to(device=device, dtype=dtype)


def expected_nfe(steps: int, method: str = "euler", churn: float = 0.0) -> int:
    """Network evaluations that `sample_bridge` spends (§6)."""
    ode = steps if method == "euler" else 2 * steps - 1
    return ode + (steps if churn > 0 else 0)


def _ode_drift(bridge: Bridge, denoiser: Denoiser, x: Tensor, t: Tensor, x_T: Tensor, stochastic: bool) -> Tensor:
    """f x − g² (w ŝ − h), w = ½ for the probability-flow ODE and 1 for the reverse SDE."""
    a, b, c = (expand_as(v, x) for v in bridge.coefficients(t))
    d = denoiser(x, t)
    score = -(x - a * x_T - b * d) / c
    f, g2 = expand_as(bridge.f(t), x), expand_as(bridge.g2(t), x)
    w = 1.0 if stochastic else 0.5
    return f * x - g2 * (w * score - bridge.h(x, t, x_T))


@torch.no_grad()
def sample_bridge(denoiser: Denoiser, x_T: Tensor, bridge: Bridge, steps: int, method: str = "euler",
                  churn: float = 0.0, rho: float = 7.0, t_min: float | None = None, t_max: float | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """Integrate the reverse bridge from x_T at t_max (default T − 1e-4) down to t_min (default bridge.t_min), then 0.

    Returns (x0, nfe). `churn` ∈ [0, 1) is the fraction of each interval taken as a stochastic (SDE) step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampler {method!r}: use one of {METHODS}")
    if not 0.0 <= churn < 1.0:
        raise ValueError(f"churn must be in [0, 1), got {churn}")
    t_min = bridge.t_min if t_min is None else t_min
    t_max = bridge.T - 1e-4 if t_max is None else t_max
    grid = karras_grid(steps, t_min, t_max, rho, device=x_T.device, dtype=x_T.dtype)
    batch = x_T.shape[0]
    x, nfe = x_T.clone(), 0

    def at(t: Tensor) -> Tensor:
        return t.expand(batch)

    for i in range(steps):
        t_cur, t_next = grid[i], grid[i + 1]
        if churn > 0:
            t_hat = t_cur + churn * (t_next - t_cur)
            dt = t_hat - t_cur
            g = expand_as(bridge.g2(at(t_cur)).sqrt(), x)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + _ode_drift(bridge, denoiser, x, at(t_cur), x_T, stochastic=True) * dt + g * dt.abs().sqrt() * noise
            nfe += 1
            t_cur = t_hat
        dt = t_next - t_cur
        drift = _ode_drift(bridge, denoiser, x, at(t_cur), x_T, stochastic=False)
        nfe += 1
        if method == "heun" and i < steps - 1:
            x_euler = x + drift * dt
            drift_next = _ode_drift(bridge, denoiser, x_euler, at(t_next), x_T, stochastic=False)
            nfe += 1
            x = x + 0.5 * (drift + drift_next) * dt
        else:
            x = x + drift * dt
    return x, nfe
