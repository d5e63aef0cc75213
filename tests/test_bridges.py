"""Bridge schedules against closed forms written out here, the published table, finite differences and a Monte Carlo
simulation of the h-transformed SDE (dbae-method.md §2)."""

import math

import pytest
import torch

from dbae_core.bridges import make_bridge


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def vp_naive(t, beta_min=0.1, beta_d=2.0, T=1.0):
    """The §2 formulas taken literally in float64: α, σ², SNR, then a, b, c from r = SNR_T/SNR_t."""
    def alpha(s):
        return math.exp(-beta_d * s * s / 4 - beta_min * s / 2)

    def snr(s):
        return 1 / (math.exp(beta_d * s * s / 2 + beta_min * s) - 1)

    r = snr(T) / snr(t)
    a = r * alpha(t) / alpha(T)
    b = alpha(t) * (1 - r)
    c = (1 - alpha(t) ** 2) * (1 - r)
    return a, b, c


def test_vp_matches_published_table():
    vp = make_bridge("vp")
    table = {0.01: (0.001, 0.999, 0.033), 0.1: (0.017, 0.980, 0.140), 0.5: (0.260, 0.711, 0.463),
             0.9: (0.805, 0.173, 0.402)}
    for t, (a_ref, b_ref, std_ref) in table.items():
        a, b, c = vp.coefficients(f64([t]))
        assert a.item() == pytest.approx(a_ref, abs=6e-4)
        assert b.item() == pytest.approx(b_ref, abs=6e-4)
        assert c.sqrt().item() == pytest.approx(std_ref, abs=6e-4)
    t = f64([1.0])
    assert vp.alpha(t).item() == pytest.approx(0.577, abs=1e-3)
    assert vp.sigma2(t).item() == pytest.approx(0.667, abs=1e-3)
    assert vp.snr(t).item() == pytest.approx(0.499, abs=1e-3)
    ts = torch.linspace(0.01, 0.99, 9801, dtype=torch.float64)
    std = vp.coefficients(ts)[2].sqrt()
    assert std.max().item() == pytest.approx(0.518, abs=1e-3)
    assert ts[std.argmax()].item() == pytest.approx(0.69, abs=0.01)


@pytest.mark.parametrize("t", [1e-4, 1e-3, 0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_vp_matches_naive_closed_form(t):
    a, b, c = (v.item() for v in make_bridge("vp").coefficients(f64([t])))
    a_ref, b_ref, c_ref = vp_naive(t)
    assert a == pytest.approx(a_ref, rel=1e-9)
    assert b == pytest.approx(b_ref, rel=1e-9)
    assert c == pytest.approx(c_ref, rel=1e-8)


@pytest.mark.parametrize("t", [0.002, 0.5, 10.0, 40.0, 79.0])
def test_ve_matches_closed_form(t):
    ve = make_bridge("ve", sigma_max=80.0)
    a, b, c = (v.item() for v in ve.coefficients(f64([t])))
    T = 80.0
    assert a == pytest.approx(t * t / T ** 2, rel=1e-12)
    assert b == pytest.approx(1 - t * t / T ** 2, rel=1e-12)
    assert c == pytest.approx(t * t * (1 - t * t / T ** 2), rel=1e-12)
    x, xT = f64([0.3]), f64([-1.2])
    assert ve.h(x, f64([t]), xT).item() == pytest.approx((-1.2 - 0.3) / (T * T - t * t), rel=1e-12)


def test_vp_h_matches_formula():
    vp = make_bridge("vp")
    for t in (0.01, 0.4, 0.9):
        x, xT = f64([0.3]), f64([-1.2])
        alpha = lambda s: math.exp(-s * s / 2 - 0.05 * s)  # noqa: E731  (β_d = 2, β_min = 0.1)
        snr = lambda s: 1 / (math.exp(s * s + 0.1 * s) - 1)  # noqa: E731
        ref = -(0.3 - alpha(t) / alpha(1.0) * -1.2) / ((1 - alpha(t) ** 2) * (snr(t) / snr(1.0) - 1))
        assert vp.h(x, f64([t]), xT).item() == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_and_accurate_over_whole_range(kind, dtype):
    br = make_bridge(kind)
    # log-spaced towards both ends, including t_min and T itself
    u = torch.logspace(-7, 0, 400, dtype=torch.float64)
    ts = torch.cat([br.t_min + (br.T - br.t_min) * u, br.T - (br.T - br.t_min) * u]).clamp(br.t_min, br.T)
    ts = ts.to(dtype)
    ref = br.coefficients(ts.double())  # float64 at the same (rounded) times: measures the arithmetic alone
    got = br.coefficients(ts)
    for r, g in zip(ref, got):
        assert torch.isfinite(g).all()
        assert (g >= 0).all()
        # relative accuracy in float32 down to values far below float32's epsilon relative to 1
        rel = ((g.double() - r).abs() / r.abs().clamp_min(1e-30))
        assert rel.max().item() < (5e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_limits_at_ends(kind):
    br = make_bridge(kind)
    a, b, c = br.coefficients(f64([br.t_min, br.T]))
    assert a[0] < 1e-3 and b[0] == pytest.approx(1, abs=1e-3) and c[0] < 0.2 * br.t_min
    assert a[1] == pytest.approx(1, abs=1e-12) and b[1] == pytest.approx(0, abs=1e-12)
    assert c[1] == pytest.approx(0, abs=1e-12)
    a0, b0, c0 = br.coefficients(f64([0.0]))
    assert a0.item() == 0 and b0.item() == pytest.approx(1) and c0.item() == 0


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_drift_and_diffusion_agree_with_alpha_sigma(kind):
    """f = d log α/dt and g² = dσ²/dt − 2 f σ² (the marginal x_t = α_t x0 + σ_t ε of the base SDE)."""
    br = make_bridge(kind)
    ts = torch.linspace(br.t_min * 10, br.T * 0.99, 50, dtype=torch.float64)
    eps = 1e-6 * br.T
    dlog_alpha = (br.log_alpha(ts + eps) - br.log_alpha(ts - eps)) / (2 * eps)
    dsigma2 = (br.sigma2(ts + eps) - br.sigma2(ts - eps)) / (2 * eps)
    torch.testing.assert_close(br.f(ts), dlog_alpha, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(br.g2(ts), dsigma2 - 2 * br.f(ts) * br.sigma2(ts), rtol=1e-6, atol=1e-9)
    if kind == "vp":
        torch.testing.assert_close(br.g2(ts), 0.1 + 2 * ts)


@pytest.mark.parametrize("kind,t_end", [("vp", 0.3), ("vp", 0.8), ("ve", 20.0), ("ve", 70.0)])
def test_marginal_matches_monte_carlo_sde(kind, t_end):
    """Euler–Maruyama of dx = [f x + g² h(x, t, x_T)] dt + g dW from x0 at t = 0; f, g², h from the §2 formulas."""
    gen = torch.Generator().manual_seed(0)
    n, steps, x0, xT = 40_000, 2000, 0.7, -0.4
    if kind == "vp":
        def f(t): return -(0.1 + 2 * t) / 2
        def g2(t): return 0.1 + 2 * t
        def h(x, t):
            alpha = lambda s: math.exp(-s * s / 2 - 0.05 * s)  # noqa: E731
            nu = lambda s: math.exp(s * s + 0.1 * s) - 1  # noqa: E731
            return (alpha(t) / alpha(1.0) * xT - x) / (alpha(t) ** 2 * (nu(1.0) - nu(t)))
    else:
        def f(t): return 0.0
        def g2(t): return 2 * t
        def h(x, t): return (xT - x) / (80.0 ** 2 - t * t)
    x = torch.full((n,), x0, dtype=torch.float64)
    dt = t_end / steps
    for i in range(steps):
        t = i * dt
        dw = math.sqrt(dt) * torch.randn(n, generator=gen, dtype=torch.float64)
        x = x + (f(t) * x + g2(t) * h(x, t)) * dt + math.sqrt(g2(t)) * dw
    a, b, c = (v.item() for v in make_bridge(kind).coefficients(f64([t_end])))
    mean, var = a * xT + b * x0, c
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / n)
    assert x.mean().item() == pytest.approx(mean, abs=5 * se_mean + 2e-3 * math.sqrt(var))
    assert x.var().item() == pytest.approx(var, abs=5 * se_var + 5e-3 * var)


def test_make_bridge_rejects_unknown():
    with pytest.raises(ValueError, match="unknown SDE type 'vq'"):
        make_bridge("vq")
    with pytest.raises(ValueError, match="bad parameters"):
        make_bridge("vp", sigma_max=3)
