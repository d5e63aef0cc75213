"""The DBAE module: gradients reach every part, the entropy knob changes what it should, configuration errors."""

import dataclasses
import math

import pytest
import torch

from dbae_core.editing import decode_from_endpoint
from dbae_core.model import DBAE, DBAEConfig
from dbae_core.objectives import ConfigurationError
from dbae_core.presets import PRESETS, preset
from dbae_core.samplers import sample_bridge


def tiny(stochastic: bool = False, **changes) -> DBAEConfig:
    cfg = preset("tiny")
    return cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=stochastic), **changes)


def images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def grad_norm(module):
    return sum(p.grad.norm().item() ** 2 for p in module.parameters() if p.grad is not None) ** 0.5


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_gradients_reach_encoder_decoder_and_unet(stochastic, sde):
    torch.manual_seed(0)
    model = DBAE(tiny(stochastic, sde=sde))
    # ADM starts every residual branch's last conv (and the output conv) at zero, which blocks the gradient of the
    # embedding at initialisation; give them weights so every path through F_θ carries gradient.
    for name, p in model.unet.named_parameters():
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.02)
    model.loss(images()).loss.backward()
    for part in (model.encoder, model.decoder, model.unet, model.unet.latent_embed, model.unet.time_embed,
                 model.unet.input_blocks[0], model.encoder.out, model.decoder.init):
        assert grad_norm(part) > 0, part.__class__.__name__


def test_entropy_weight_changes_loss_and_sigma_head_gradient():
    torch.manual_seed(0)
    x, d = images(), preset("tiny").latent_dim
    results = {}
    for w in (0.0, 0.5):
        torch.manual_seed(1)
        model = DBAE(tiny(True, entropy_weight=w))  # identical initial weights for both weights
        out = model.loss(x, generator=torch.Generator().manual_seed(7))
        out.loss.backward()
        # entropy computed here from the encoder output, independently of the loss code
        raw = model.encoder.out(torch.nn.functional.silu(model.encoder.out_norm(model.encoder.body(x)))
                                .mean(dim=(2, 3), keepdim=True)).flatten(1)
        sigma = torch.exp(5 * torch.tanh(raw[:, d:] / 5)) + 0.01
        results[w] = (out, model.encoder.out.weight.grad[d:].clone(), torch.log(sigma).mean().item())
    (o0, g0, h0), (o1, g1, h1) = results[0.0], results[0.5]
    assert h0 == pytest.approx(h1) and o0.entropy.item() == pytest.approx(h0, rel=1e-5)
    assert o1.loss_bridge.item() == pytest.approx(o0.loss_bridge.item(), rel=1e-5)
    assert o1.loss.item() == pytest.approx(o0.loss.item() - 0.5 * h0, rel=1e-5, abs=1e-6)
    assert (g1 - g0).abs().max().item() > 1e-4 * (g0.abs().max().item() + 1e-12)


def test_entropy_weight_with_deterministic_encoder_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="stochastic encoder"):
        tiny(False, entropy_weight=0.1)
    with pytest.raises(ConfigurationError, match="latent_dim"):
        preset("tiny", latent_dim=0)
    with pytest.raises(ConfigurationError, match="unknown SDE"):
        DBAE(preset("tiny", sde="vq"))


def test_stochastic_posterior_parameterisation():
    torch.manual_seed(0)
    model = DBAE(tiny(True)).eval()
    post = model.posterior(images())
    assert post.mean.abs().max().item() <= 5.0 and post.sigma.min().item() >= 0.01
    assert torch.equal(model.encode(images()), post.mean)  # evaluation uses the posterior mean by default
    z1 = model.encode(images(), sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(z1, post.mean)
    d = post.mean.shape[1]
    ent = post.entropy()
    ref = torch.log(post.sigma).sum(1) + d / 2 * math.log(2 * math.pi * math.e)
    torch.testing.assert_close(ent, ref)


def test_reconstruct_and_interpolate_shapes_and_endpoints():
    torch.manual_seed(0)
    model = DBAE(tiny()).eval()
    x1, x2 = images(2, seed=1), images(2, seed=2)
    rec = model.reconstruct(x1, steps=4)
    assert rec.shape == x1.shape and rec.abs().max() <= 1.0
    path = model.interpolate(x1, x2, lambdas=(0.0, 0.5, 1.0), steps=4)
    assert path.shape == (3, *x1.shape)
    torch.testing.assert_close(path[0], rec, atol=1e-5, rtol=0)  # λ = 0 is x1's own reconstruction
    torch.testing.assert_close(path[2], model.reconstruct(x2, steps=4), atol=1e-5, rtol=0)


def test_config_round_trip_through_dict():
    for cfg in PRESETS.values():
        assert DBAEConfig.from_dict(dataclasses.asdict(cfg)) == cfg


def test_decoded_images_are_the_sampler_output_clamped_to_the_data_range():
    """The release clamps the sampler's final x to [−1, 1]; with churn noise the raw output leaves that range."""
    torch.manual_seed(0)
    model = DBAE(tiny()).eval()
    z = torch.randn(2, model.cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    x_T = model.endpoint(z).detach()

    def denoiser(x, t):  # D_θ clamped to [−1, 1] (§3), written out from the pieces
        return model.denoise(x, t, x_T, z, clamp=True).detach()

    raw, _ = sample_bridge(denoiser, x_T, model.bridge, 3, churn=0.5, generator=torch.Generator().manual_seed(2))
    assert raw.abs().max() > 1.01  # the unclamped trajectory overshoots
    x, nfe = model.decode(z, steps=3, churn=0.5, generator=torch.Generator().manual_seed(2))
    assert nfe == 6 and x.abs().max() <= 1.0
    torch.testing.assert_close(x, raw.clamp(-1.0, 1.0), atol=1e-5, rtol=0)
    end, _ = decode_from_endpoint(model, z, x_T, 3, churn=0.5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(end, raw.clamp(-1.0, 1.0), atol=1e-5, rtol=0)


def closed_form_coefficients(sde, t):
    """(a_t, b_t, c_t) of dbae-method.md §2 for the default VP (β_min 0.1, β_d 2, T 1) and VE (T 80) bridges."""
    if sde == "ve":
        return t * t / 6400, 1 - t * t / 6400, t * t * (1 - t * t / 6400)
    u = lambda s: 0.1 * s + s * s  # noqa: E731  ∫₀ˢ β
    alpha, alpha_T = torch.exp(-u(t) / 2), math.exp(-u(1.0) / 2)
    r = torch.expm1(u(t)) / math.expm1(u(1.0))  # SNR_T / SNR_t
    return r * alpha / alpha_T, alpha * (1 - r), (1 - alpha * alpha) * (1 - r)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_dbae_loss_is_the_weighted_bridge_score_matching_with_the_drawn_t_and_noise(stochastic, sde):
    """§5 recomputed from the formulas: z = μ + σ ε_z, x_T = Dec(z), t ~ U[t_min, T], x_t = a x_T + b x0 + √c ε,
    D = c_skip x_t + c_out F(c_in x_t, 250 ln t, x_T, z) (§3, σ0 = σT = 0.5, cov 0), λ = 1/c_out², and
    L = mean_batch λ · mean_pixels (D − x0)² − w · mean_batch (1/d) Σ_j log σ_j."""
    torch.manual_seed(0)
    w = 0.3 if stochastic else 0.0
    model = DBAE(tiny(stochastic, sde=sde, entropy_weight=w))
    for name, p in model.unet.named_parameters():  # give F_θ a non-zero output (ADM zero-initialises it)
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.02)
    x0 = images(4)
    out = model.loss(x0, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the loss's order: ε_z, u, ε
    with torch.no_grad():
        post = model.encoder(x0)
        z = post.mean + post.sigma * torch.randn(post.mean.shape, generator=g) if stochastic else post.mean
        x_T = model.decoder(z)
        t_min, T = (1e-4, 1.0) if sde == "vp" else (2e-3, 80.0)
        t = (t_min + (T - t_min) * torch.rand(4, generator=g)).double()
        eps = torch.randn(x0.shape, generator=g)
        a, b, c = closed_form_coefficients(sde, t)
        A = 0.25 * a * a + 0.25 * b * b + c
        c_skip, c_out, c_in = 0.25 * b / A, (0.0625 * a * a + 0.25 * c).sqrt() / A.sqrt(), A.rsqrt()
        col = lambda v: v.float()[:, None, None, None]  # noqa: E731
        x_t = col(a) * x_T + col(b) * x0 + col(c.sqrt()) * eps
        d = col(c_skip) * x_t + col(c_out) * model.unet(col(c_in) * x_t, (250 * t.log()).float(), x_T, z)
        bridge = ((d - x0).square().mean(dim=(1, 2, 3)).double() / c_out ** 2).mean().item()
        entropy = post.sigma.log().mean().item() if stochastic else 0.0
    assert out.loss_bridge.item() == pytest.approx(bridge, rel=1e-4)
    assert out.entropy.item() == pytest.approx(entropy, rel=1e-5, abs=1e-7)
    assert out.loss.item() == pytest.approx(bridge - w * entropy, rel=1e-4)
