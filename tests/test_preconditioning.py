"""Preconditioning: with Gaussian data of std sigma_data the network's effective input and target have unit variance,
c_skip is the least-squares coefficient of x0 on x_t, and λ = 1/c_out² (dbae-method.md §3)."""

import pytest
import torch

from dbae_core.bridges import make_bridge
from dbae_core.model import DBAE
from dbae_core.objectives import ConfigurationError
from dbae_core.preconditioning import BridgePrecond, make_precond
from dbae_core.presets import preset
from dbae_platform.config import ConfigError, load_config


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("sd,sd_end,cov", [(0.5, 0.5, 0.0), (0.5, 0.8, 0.2), (1.0, 0.3, -0.1)])
def test_effective_input_and_target_have_unit_variance(kind, sd, sd_end, cov):
    gen = torch.Generator().manual_seed(1)
    bridge, pre = make_bridge(kind), BridgePrecond(sd, sd_end, cov)
    n = 200_000
    # jointly Gaussian (x0, x_T) with std sd, sd_end and covariance cov
    chol = torch.linalg.cholesky(torch.tensor([[sd ** 2, cov], [cov, sd_end ** 2]], dtype=torch.float64))
    x0, xT = (chol @ torch.randn(2, n, generator=gen, dtype=torch.float64))
    ts = torch.tensor([bridge.t_min * 3, 0.05 * bridge.T, 0.3 * bridge.T, 0.7 * bridge.T, 0.97 * bridge.T],
                      dtype=torch.float64)
    for t in ts:
        a, b, c = (v.item() for v in bridge.coefficients(t[None]))
        xt = a * xT + b * x0 + c ** 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = (v.item() for v in pre(bridge, t[None]))
        assert (c_in * xt).var().item() == pytest.approx(1.0, rel=0.015)
        assert ((x0 - c_skip * xt) / c_out).var().item() == pytest.approx(1.0, rel=0.015)
        slope = (torch.cov(torch.stack([x0, xt]))[0, 1] / xt.var()).item()
        assert c_skip == pytest.approx(slope, abs=0.01)
        assert c_noise == pytest.approx(250 * torch.log(t).item())
        assert pre.loss_weight(bridge, t[None]).item() == pytest.approx(1 / c_out ** 2, rel=1e-10)


def test_vp_loss_weight_at_ends():
    """λ ≈ 1e5 near t_min, 4 at T for VP with the release's defaults (dbae-method.md §5)."""
    bridge, pre = make_bridge("vp"), BridgePrecond()
    lam = pre.loss_weight(bridge, torch.tensor([1e-4, 1.0], dtype=torch.float64))
    assert 2e4 < lam[0].item() < 5e5
    assert lam[1].item() == pytest.approx(4.0, rel=1e-9)  # A = σT², c_out² = σ0² at T → 1/0.25


def test_none_mode_is_plain_x0_prediction():
    bridge, pre = make_bridge("vp"), make_precond("none")
    t = torch.tensor([0.1, 0.5])
    c_skip, c_out, c_in, _ = pre(bridge, t)
    assert (c_skip == 0).all() and (c_out == 1).all() and (c_in == 1).all()
    assert (pre.loss_weight(bridge, t) == 1).all()


def test_invalid_settings_rejected():
    with pytest.raises(ValueError, match="sigma_data"):
        BridgePrecond(sigma_data=0.0)
    with pytest.raises(ValueError, match="cov"):
        BridgePrecond(0.5, 0.5, cov=0.3)
    with pytest.raises(ValueError, match="unknown preconditioning"):
        make_precond("edm2")


def test_zero_endpoint_std_is_rejected_in_one_line_naming_the_key_and_the_fix():
    """σT = 0 leaves A = a²σT² + b²σ0² + c → 0 as t → T, so c_in = A^(−1/2) blows up (issue 18, item 10)."""
    bridge = make_bridge("vp")
    a, b, c = bridge.coefficients(torch.tensor([bridge.T - 1e-6], dtype=torch.float64))
    assert (a * a * 0.0 + b * b * 0.25 + c).rsqrt().item() > 500  # the blow-up the check prevents, from §3's formula
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError) as err:
            BridgePrecond(0.5, bad)
        assert f"sigma_data_end={bad} is invalid" in str(err.value) and "0.5" in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigurationError, match="sigma_data_end=0.0 is invalid"):
        DBAE(preset("tiny", sigma_data_end=0.0))
    with pytest.raises(ConfigError, match=r"objective.sigma_data_end=0.0 is invalid.*e.g. 0.5"):
        load_config("tiny", ["objective.sigma_data_end=0"])
