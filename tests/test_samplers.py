"""Samplers against exact denoisers whose answer is known in closed form (dbae-method.md §6)."""

import math

import pytest
import torch

from dbae_core.bridges import expand_as, make_bridge
from dbae_core.samplers import expected_nfe, karras_grid, sample_bridge


def test_karras_grid_formula():
    grid = karras_grid(5, 0.002, 80.0, rho=7.0)
    ref = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)] + [0.0]
    torch.testing.assert_close(grid, torch.tensor(ref, dtype=torch.float64))
    assert karras_grid(1, 0.1, 0.9).tolist() == [0.9, 0.0]


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("method,steps,tol", [("euler", 400, 2e-2), ("heun", 40, 2e-3)])
def test_one_point_dataset_lands_on_the_point(kind, method, steps, tol):
    """D ≡ x0* is the exact denoiser of a one-point dataset: the ODE carries any x_T to x0*."""
    gen = torch.Generator().manual_seed(0)
    bridge = make_bridge(kind)
    x_star = torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    x_T = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64) * (1.0 if kind == "vp" else 5.0)
    x0, _ = sample_bridge(lambda x, t: x_star.expand_as(x), x_T, bridge, steps, method=method)
    scale = (x_T - x_star).abs().max().item()
    assert (x0 - x_star).abs().max().item() < tol * scale


@pytest.mark.parametrize("method,churn,formula", [
    ("euler", 0.0, lambda n: n), ("heun", 0.0, lambda n: 2 * n - 1),
    ("euler", 0.33, lambda n: 2 * n), ("heun", 0.33, lambda n: 3 * n - 1)])
@pytest.mark.parametrize("steps", [1, 2, 17])
def test_nfe_counts(method, churn, formula, steps):
    calls = []

    def denoiser(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    x0, nfe = sample_bridge(denoiser, torch.randn(2, 3, 4, 4), make_bridge("vp"), steps, method=method, churn=churn)
    assert nfe == len(calls) == formula(steps) == expected_nfe(steps, method, churn)
    assert torch.isfinite(x0).all()


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_churn_runs_stay_finite(kind, method):
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(4, 3, 8, 8, generator=gen)
    x0, _ = sample_bridge(lambda x, t: x.clamp(-1, 1), x_T, make_bridge(kind), 30, method=method, churn=0.5,
                          generator=gen)
    assert torch.isfinite(x0).all()


def test_sde_sampler_recovers_gaussian_data():
    """x0 ~ N(m, s²) independent of x_T: the exact denoiser is the Gaussian posterior mean E[x0 | x_t, x_T], and
    the churned (stochastic) sampler from a fixed x_T must produce samples with mean m and std s."""
    gen = torch.Generator().manual_seed(0)
    bridge, m, s = make_bridge("vp"), 0.3, 0.4

    def denoiser(x, t):
        a, b, c = (expand_as(v, x) for v in bridge.coefficients(t))
        gain = b * s * s / (b * b * s * s + c)
        return m + gain * (x - a * x_T - b * m)

    x_T = torch.full((20_000, 1), -0.5, dtype=torch.float64)
    x0, _ = sample_bridge(denoiser, x_T, bridge, 200, method="euler", churn=0.5, generator=gen)
    assert x0.mean().item() == pytest.approx(m, abs=0.02)
    assert x0.std().item() == pytest.approx(s, rel=0.06)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_bridge(lambda x, t: x, torch.zeros(1, 1), make_bridge("vp"), 3, method="dpm")
    with pytest.raises(ValueError, match="churn"):
        sample_bridge(lambda x, t: x, torch.zeros(1, 1), make_bridge("vp"), 3, churn=1.5)
    with pytest.raises(ValueError, match="steps"):
        karras_grid(0, 0.1, 1.0)
    assert math.isfinite(expected_nfe(3))
