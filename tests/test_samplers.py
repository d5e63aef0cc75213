"""Samplers against exact denoisers whose answer is known in closed form (dbae-method.md §6)."""

import math

import pytest
import torch

from dbae_core.bridges import expand_as, make_bridge
from dbae_core.samplers import expected_nfe, karras_grid, sample_bridge

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: faster on one thread (tests/conftest.py)


def test_karras_grid_formula():
    grid = karras_grid(5, 0.002, 80.0, rho=7.0)
    ref = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)] + [0.0]
    torch.testing.assert_close(grid, torch.tensor(ref, dtype=torch.float64))
    assert karras_grid(1, 0.1, 0.9).tolist() == [0.9, 0.0]


@pytest.mark.parametrize("kind,tol", [("vp", 1e-3), ("ve", 1e-8)])
@pytest.mark.parametrize("method,steps", [("euler", 400), ("heun", 40)])
def test_one_point_dataset_lands_on_the_point(kind, method, steps, tol):
    """D ≡ x0* is the exact denoiser of a one-point dataset: the ODE carries any x_T to x0*. (Measured: 1e-4 to 3e-4
    on VP, ~1e-9 on VE, where the last Euler step to 0 projects onto D whatever the drift; the Gaussian tests below
    are the ones that pin the drift.)"""
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


def gaussian_denoiser(bridge, x_T, m, s):
    """x0 ~ N(m, s²) independent of x_T: the exact denoiser is the posterior mean E[x0 | x_t, x_T] of the Gaussian
    pair x0, x_t = a x_T + b x0 + √c ε, i.e. m + b s²/(b² s² + c) · (x_t − a x_T − b m)."""

    def denoiser(x, t):
        a, b, c = (expand_as(v, x) for v in bridge.coefficients(t))
        gain = b * s * s / (b * b * s * s + c)
        return m + gain * (x - a * x_T - b * m)

    return denoiser


def closed_form_coefficients(kind, t):
    """(a_t, b_t, c_t) written out from dbae-method.md §2 for the default schedules (not read from the bridge)."""
    if kind == "ve":
        T = 80.0
        return t * t / T ** 2, 1 - t * t / T ** 2, t * t * (1 - t * t / T ** 2)
    u = lambda s: 0.1 * s + s * s  # noqa: E731  ∫β = β_min t + β_d t²/2 with β_min = 0.1, β_d = 2
    alpha, alpha_T = math.exp(-u(t) / 2), math.exp(-u(1.0) / 2)
    r = (math.exp(u(t)) - 1) / (math.exp(u(1.0)) - 1)  # SNR_T / SNR_t
    return r * alpha / alpha_T, alpha * (1 - r), (1 - alpha * alpha) * (1 - r)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_ode_carries_each_gaussian_bridge_marginal_sample_along_its_closed_form_flow(kind):
    """x0 ~ N(m, s²): given x_T, x_t ~ N(μ_t, σ_t²) with μ_t = a_t x_T + b_t m and σ_t² = b_t² s² + c_t, and the
    probability-flow ODE is the affine map x_u = μ_u + (σ_u/σ_t)(x_t − μ_t). Started at t = T/2 from x_t = x_T, each
    sample must land on m + (s/σ_t)(x_T − μ_t); Euler converges at order 1 and Heun at order 2. Wrong drifts (h
    halved or dropped, score weight 1 in the ODE) converge to other points (errors 0.3 to 2 s)."""
    bridge, m, s = make_bridge(kind), 0.3, 0.4
    x_T = torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = x_T * (30.0 if kind == "ve" else 1.0)
    t_start = bridge.T / 2
    a, b, c = closed_form_coefficients(kind, t_start)
    exact = m + s / math.sqrt(b * b * s * s + c) * (x_T - a * x_T - b * m)
    assert (exact - m).abs().max() > s  # the answer depends on x_T: a drift that ignores x_T cannot pass
    errors = {}
    for method, steps in (("euler", 200), ("euler", 400), ("heun", 100), ("heun", 200)):
        x0, _ = sample_bridge(gaussian_denoiser(bridge, x_T, m, s), x_T, bridge, steps, method=method,
                              t_max=t_start)
        errors[method, steps] = (x0 - exact).abs().max().item() / s
    assert errors["euler", 200] < 4e-2 and errors["heun", 100] < 5e-3  # measured: VE 3.2e-2 / 3.2e-3, VP 1.9e-2 / 7e-4
    assert errors["euler", 400] / errors["euler", 200] == pytest.approx(0.5, abs=0.1)
    assert errors["heun", 200] / errors["heun", 100] == pytest.approx(0.25, abs=0.1)


@pytest.mark.parametrize("kind,end", [("vp", -0.5), ("ve", 20.0)])
def test_sde_sampler_recovers_gaussian_data(kind, end):
    """x0 ~ N(m, s²) independent of x_T, exact denoiser: the churned (stochastic) sampler from a fixed x_T must
    produce samples with mean m and std s (20,000 samples: the mean's standard error is 0.003, the std's 0.5 %)."""
    gen = torch.Generator().manual_seed(0)
    bridge, m, s = make_bridge(kind), 0.3, 0.4
    x_T = torch.full((20_000, 1), end, dtype=torch.float64)
    x0, _ = sample_bridge(gaussian_denoiser(bridge, x_T, m, s), x_T, bridge, 200, method="euler", churn=0.5,
                          generator=gen)
    assert x0.mean().item() == pytest.approx(m, abs=0.01)
    assert x0.std().item() == pytest.approx(s, rel=0.04)  # measured: VP +2.5 % (discretisation), VE +0.4 %


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_bridge(lambda x, t: x, torch.zeros(1, 1), make_bridge("vp"), 3, method="dpm")
    with pytest.raises(ValueError, match="churn"):
        sample_bridge(lambda x, t: x, torch.zeros(1, 1), make_bridge("vp"), 3, churn=1.5)
    with pytest.raises(ValueError, match="steps"):
        karras_grid(0, 0.1, 1.0)
    assert math.isfinite(expected_nfe(3))
