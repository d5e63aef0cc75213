"""DDPM/DDIM math and the DiffAE baseline (dbae-method.md §7), against closed forms; the one-switch factory."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dbae_core.autoencoders import (
    METHODS,
    build_autoencoder,
    build_config,
    config_from_dict,
    load_autoencoder,
    method_of,
)
from dbae_core.ddim import ddim_invert, ddim_sample, ddim_timesteps, make_schedule
from dbae_core.diffae import DiffAE, DiffAEConfig
from dbae_core.model import DBAE
from dbae_core.networks.layers import ResBlock
from dbae_core.objectives import ConfigurationError
from dbae_core.training import TrainConfig, fit


def images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def unzero(module):
    """ADM zero-initialises the last conv of every residual branch; give it weights so every path carries signal."""
    for name, p in module.named_parameters():
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.02)
    return module


# -- schedules -------------------------------------------------------------------------------
def test_schedules_against_closed_forms():
    const = make_schedule("constant", 1000, beta=0.008)
    t = torch.tensor([0, 1, 10, 500, 999])
    expected = torch.tensor([0.992 ** (k + 1) for k in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(const.alphas_cumprod[t], expected, rtol=1e-12, atol=0)

    lin = make_schedule("linear", 1000, 1e-4, 0.02)
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    for k in (0, 1, 99, 500, 999):
        prod = math.prod(1 - (1e-4 + (0.02 - 1e-4) * s / 999) for s in range(k + 1))
        assert lin.alphas_cumprod[k].item() == pytest.approx(prod, rel=1e-10)
    assert lin.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM's ᾱ_T

    x0, eps = torch.randn(5000, 2, dtype=torch.float64), torch.randn(5000, 2, dtype=torch.float64)
    tt = torch.full((5000,), 300)
    a = math.prod(1 - (1e-4 + (0.02 - 1e-4) * s / 999) for s in range(301))
    torch.testing.assert_close(lin.q_sample(x0, tt, eps), math.sqrt(a) * x0 + math.sqrt(1 - a) * eps)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_schedule("cosine")


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1).tolist() == [999]
    assert ddim_timesteps(1000, 2).tolist() == [0, 999]
    tau = ddim_timesteps(1000, 10)
    assert tau[0] == 0 and tau[-1] == 999 and len(set(tau.tolist())) == 10 and (tau.diff() > 0).all()
    assert ddim_timesteps(1000, 1000).tolist() == list(range(1000))
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)


def test_one_ddim_step_is_the_direct_formula():
    sched = make_schedule("linear")
    a_T = sched.alphas_cumprod[-1].item()
    x = torch.randn(3, 4, dtype=torch.float64)
    eps_fn = lambda x, t: 0.5 * x + t[:, None].double() / 1000  # noqa: E731  any function of (x, t)
    out, nfe = ddim_sample(eps_fn, x, sched, 1)
    eps = 0.5 * x + 0.999
    torch.testing.assert_close(out, (x - math.sqrt(1 - a_T) * eps) / math.sqrt(a_T))
    assert nfe == 1
    # two steps: 999 → 0 → data
    out, nfe = ddim_sample(eps_fn, x, sched, 2)
    a0 = 1 - 1e-4
    e1 = 0.5 * x + 0.999
    x1 = math.sqrt(a0) * (x - math.sqrt(1 - a_T) * e1) / math.sqrt(a_T) + math.sqrt(1 - a0) * e1
    e0 = 0.5 * x1
    torch.testing.assert_close(out, (x1 - math.sqrt(1 - a0) * e0) / math.sqrt(a0))
    assert nfe == 2


class GaussianEps:
    """The optimal ε-predictor for data N(μ, Σ): E[ε | x_t] = √(1−ᾱ) C_t⁻¹ (x_t − √ᾱ μ), C_t = ᾱ Σ + (1−ᾱ) I."""

    def __init__(self, schedule, mu, cov):
        self.schedule, self.mu, self.cov = schedule, mu, cov

    def marginal(self, t: int):
        a = self.schedule.alphas_cumprod[t].item()
        return math.sqrt(a) * self.mu, a * self.cov + (1 - a) * torch.eye(len(self.mu), dtype=torch.float64)

    def __call__(self, x, t):
        a = self.schedule.alphas_cumprod[t[0]].item()
        mean, c = self.marginal(int(t[0]))
        return math.sqrt(1 - a) * torch.linalg.solve(c, (x - mean).T).T


def affine_map(fn, dim):
    """(A, b) of an affine map R^dim → R^dim evaluated on 0 and the basis vectors in one batch."""
    pts = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)])
    out = fn(pts)
    return (out[1:] - out[0]).T, out[0]


@pytest.mark.parametrize("kind", ["linear", "constant"])
def test_ddim_with_the_exact_eps_maps_the_marginal_to_the_data_gaussian(kind):
    sched = make_schedule(kind)
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)
    eps = GaussianEps(sched, mu, cov)
    m_T, c_T = eps.marginal(999)
    errors = []
    for steps in (10, 100, 1000):
        A, b = affine_map(lambda x, n=steps: ddim_sample(eps, x, sched, n)[0], 2)  # exact ε is linear: DDIM is affine
        mean, c = A @ m_T + b, A @ c_T @ A.T
        errors.append(((mean - mu).norm() + (c - cov).norm()).item())
    assert errors[2] < errors[1] < errors[0]
    # even all 1000 steps keep the discrete chain's coarse last step (σ = √(β_0/(1−β_0)): 0.01 linear, 0.09 constant)
    assert errors[2] < {"linear": 0.01, "constant": 0.03}[kind], errors
    # DDIM from plain N(0, I) (generation) differs from the exact marginal only by ᾱ_T: still within 5%
    A, b = affine_map(lambda x: ddim_sample(eps, x, sched, 1000)[0], 2)
    torch.testing.assert_close(b, mu, atol=0.05, rtol=0)
    torch.testing.assert_close(A @ A.T, cov, atol=0.05, rtol=0)


def test_ddim_inversion_is_the_reverse_of_sampling_on_the_gaussian():
    sched = make_schedule("linear")
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64)
    cov = torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=torch.float64)
    eps = GaussianEps(sched, mu, cov)
    x0 = mu + torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) @ \
        torch.linalg.cholesky(cov).T
    errs = []
    for steps in (10, 100, 1000):
        x_T, nfe_inv = ddim_invert(eps, x0, sched, steps)
        back, nfe = ddim_sample(eps, x_T, sched, steps)
        assert nfe_inv == nfe == steps
        errs.append((back - x0).abs().max().item())
    # explicit inversion differs from sampling by ε(x_k) vs ε(x_{k+1}) per step: first order in the step size
    assert errs[1] < 0.2 * errs[0] and errs[2] < 0.2 * errs[1] and errs[2] < 0.01, errs
    # the inverse maps the data Gaussian to (nearly) the marginal at T, i.e. almost N(0, I)
    A, b = affine_map(lambda x: ddim_invert(eps, x, sched, 200)[0], 2)
    m_T, c_T = eps.marginal(999)
    torch.testing.assert_close(A @ mu + b, m_T, atol=0.01, rtol=0)
    torch.testing.assert_close(A @ cov @ A.T, c_T, atol=0.02, rtol=0)


# -- the z-conditioned scale -------------------------------------------------------------------
def test_resblock_latent_scale_is_gn_scale_shift_then_one_plus_s_z():
    torch.manual_seed(0)
    block = unzero(ResBlock(32, 64, emb_channels=16, cond_channels=8))
    x, emb, z = torch.randn(2, 32, 8, 8), torch.randn(2, 16), torch.randn(2, 8)
    h = block.in_conv(F.silu(F.group_norm(x, 32, block.in_norm.weight, block.in_norm.bias)))
    scale, shift = (F.silu(emb) @ block.emb.weight.T + block.emb.bias).chunk(2, dim=1)
    h = F.group_norm(h, 32, block.out_norm.weight, block.out_norm.bias) * (1 + scale[..., None, None]) \
        + shift[..., None, None]
    h = h * (1 + (F.silu(z) @ block.cond.weight.T + block.cond.bias))[..., None, None]
    ref = block.skip(x) + block.out_conv(F.silu(h))
    torch.testing.assert_close(block(x, emb, z), ref, rtol=1e-5, atol=1e-5)
    plain = ResBlock(32, 64, emb_channels=16)
    assert sum(p.numel() for p in block.parameters()) - sum(p.numel() for p in plain.parameters()) == 8 * 64 + 64


def test_diffae_unet_structure_and_dependence_on_z():
    torch.manual_seed(0)
    model = build_autoencoder("diffae").eval()
    assert model.unet.latent_embed is None and model.unet.input_blocks[0][0].in_channels == 3
    n_res = sum(isinstance(m, ResBlock) for m in model.unet.modules())
    assert n_res > 0 and all(m.cond is not None for m in model.unet.modules() if isinstance(m, ResBlock))
    assert all(m.cond is None for m in model.encoder.modules() if isinstance(m, ResBlock))
    counts = model.parameter_counts()
    assert counts["decoder"] == 0 and counts["total"] == counts["unet"] + counts["encoder"]
    assert counts["encoder"] == build_autoencoder("dbae_d").parameter_counts()["encoder"]  # the same encoder
    unzero(model.unet)
    x, t = images(2), torch.tensor([10, 500])
    z1, z2 = torch.randn(2, 64), torch.randn(2, 64)
    assert (model.eps(x, t, z1) - model.eps(x, t, z2)).abs().max() > 1e-4


# -- the loss ----------------------------------------------------------------------------------
def test_diffae_loss_is_eps_mse_with_the_drawn_t_and_noise():
    torch.manual_seed(0)
    model = unzero(build_autoencoder("diffae")).eval()
    x = images(4)
    out = model.loss(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = (torch.rand(4, generator=g) * 1000).long()
    eps = torch.randn(x.shape, generator=g)
    betas = [1e-4 + (0.02 - 1e-4) * s / 999 for s in range(1000)]
    a = torch.tensor([math.prod(1 - b for b in betas[:k + 1]) for k in t.tolist()])[:, None, None, None].float()
    pred = model.unet(a.sqrt() * x + (1 - a).sqrt() * eps, t.float(), None, model.encoder(x).mean)
    assert out.loss.item() == pytest.approx((pred - eps).square().mean().item(), rel=1e-5)
    assert out.loss_bridge.item() == out.loss.item() and out.entropy.item() == 0.0
    torch.testing.assert_close(model(x, generator=torch.Generator().manual_seed(3)),
                               torch.stack([out.loss, out.loss, out.entropy]))


def test_diffae_loss_shards_equal_the_global_batch_and_gradients_reach_both_parts():
    torch.manual_seed(0)
    model = unzero(build_autoencoder("diffae"))
    x = images(4)
    full = model.loss(x, torch.Generator().manual_seed(5)).loss
    halves = [model.loss(x[2 * r:2 * r + 2], torch.Generator().manual_seed(5), shard=(r, 2)).loss for r in (0, 1)]
    assert full.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-5)
    full.backward()
    for part in (model.encoder, model.unet, model.encoder.out, model.unet.input_blocks[1][0].cond):
        assert sum(p.grad.norm() ** 2 for p in part.parameters() if p.grad is not None) > 0


# -- inference API ------------------------------------------------------------------------------
def test_decode_invert_reconstruct_count_nfe():
    torch.manual_seed(0)
    model = unzero(build_autoencoder("diffae")).eval()
    x = images(2)
    z = model.encode(x)
    xr, nfe = model.decode(z, steps=3, generator=torch.Generator().manual_seed(0))
    assert xr.shape == x.shape and nfe == 3 and xr.abs().max() <= 1
    x_T, nfe = model.invert(x, z, steps=4)
    assert x_T.shape == x.shape and nfe == 4
    torch.testing.assert_close(model.decode(z, 4, x_T=x_T)[0], model.decode(z, 4, x_T=x_T)[0])  # deterministic
    rec, nfe = model.reconstruct(x, steps=3, inverse_steps=5, return_nfe=True)
    assert nfe == 8 and rec.shape == x.shape
    rnd = model.reconstruct(x, steps=3, random_xT=True, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(rnd, rec)


def test_fit_trains_diffae_unchanged_and_the_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder("diffae")
    data = torch.utils.data.TensorDataset(images(8))
    cfg = TrainConfig(steps=2, batch_size=4, optimizer="adamw", lr=1e-3, ema_decay=0.5, log_every=1, progress=False)
    out = fit(model, data, cfg, tmp_path)
    assert len(out["history"]) == 2 and all(math.isfinite(m["train/loss"]) for _, m in out["history"])
    loaded = load_autoencoder(out["checkpoint"])
    assert isinstance(loaded, DiffAE) and loaded.cfg == model.cfg
    for p, q in zip(loaded.state_dict().values(), out["ema"].state_dict().values()):
        torch.testing.assert_close(p, q)


# -- configuration and the method switch -----------------------------------------------------------
def test_one_switch_builds_each_method():
    assert METHODS == ("dbae", "dbae_d", "diffae")
    models = {m: build_autoencoder(m, "tiny", latent_dim=16) for m in METHODS}
    assert isinstance(models["dbae"], DBAE) and models["dbae"].stochastic
    assert isinstance(models["dbae_d"], DBAE) and not models["dbae_d"].stochastic
    assert isinstance(models["diffae"], DiffAE) and models["diffae"].kind == "diffae"
    for m, model in models.items():
        assert method_of(model) == m and model.cfg.latent_dim == 16
        assert config_from_dict(dataclasses.asdict(model.cfg)) == model.cfg
        out = model(images(2))
        assert out.shape == (3,) and torch.isfinite(out).all()
    assert build_config("dbae", entropy_weight=0.1).entropy_weight == 0.1
    with pytest.raises(ConfigurationError, match="model.method='vae'"):
        build_config("vae")
    with pytest.raises(ConfigurationError, match="not settings of diffae"):
        build_config("diffae", sde="ve")
    with pytest.raises(ConfigurationError, match="stochastic encoder"):
        build_config("dbae_d", entropy_weight=0.1)


def test_diffae_config_validation():
    cfg = build_config("diffae")
    with pytest.raises(ConfigurationError, match="deterministic"):
        cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=True))
    with pytest.raises(ConfigurationError, match="concat_endpoint"):
        cfg.replace(unet=dataclasses.replace(cfg.unet, concat_endpoint=True))
    with pytest.raises(ConfigurationError, match="beta_start"):
        cfg.replace(beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="latent_conditioning"):
        dataclasses.replace(cfg.unet, latent_conditioning="add")
    assert DiffAEConfig.from_dict(dataclasses.asdict(DiffAEConfig())) == DiffAEConfig()


def test_the_platform_switch_trains_loads_and_evaluates_diffae(tmp_path):
    from dbae_core.data import ShapesDataset
    from dbae_platform.config import load_config
    from dbae_platform.evaluate import evaluate
    from dbae_platform.models import build_model, load_model
    cfg = load_config("tiny", {"model.method": "diffae", "model.latent_dim": 16})
    model = build_model(cfg)
    assert isinstance(model, DiffAE) and model.cfg.latent_dim == 16 and not model.cfg.encoder.stochastic
    assert model.cfg.unet.latent_conditioning == "scale" and not model.cfg.unet.concat_endpoint
    state = {"model_kind": model.kind, "model_config": dataclasses.asdict(model.cfg), "ema": model.state_dict()}
    loaded = load_model(state)
    assert isinstance(loaded, DiffAE) and loaded.cfg == model.cfg
    data = ShapesDataset(size=32, length=8)
    metrics = evaluate(model, train=data, test=data, suites=["recon"], n=8, out_dir=tmp_path, sampler_steps=3,
                       batch_size=4)
    # inferred x_T (the default row) and random x_T (a variant row of the ablation table) are both reported
    for key in ("eval/recon_mse", "eval/ssim", "eval/random_xT/recon_mse", "eval/random_xT/ssim"):
        assert math.isfinite(metrics[key])
    assert metrics["eval/recon_mse"] != metrics["eval/random_xT/recon_mse"]
    # the inferred row is DiffAE's own reconstruction (z and DDIM inversion, then decoding) ...
    x = torch.stack([data[i][0] for i in range(8)])
    expected = (((model.reconstruct(x, steps=3) + 1) / 2 - (x + 1) / 2) ** 2).mean().item()
    assert metrics["eval/recon_mse"] == pytest.approx(expected, rel=1e-4)
    # ... and its encoding time includes the inversion (3 UNet evaluations), the random-x_T row's only the encoder
    assert metrics["eval/encode_ms"] > metrics["eval/random_xT/encode_ms"] > 0
