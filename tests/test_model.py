"""The DBAE module: gradients reach every part, the entropy knob changes what it should, configuration errors."""

import dataclasses
import math

import pytest
import torch

from dbae_core.model import DBAE, DBAEConfig
from dbae_core.objectives import ConfigurationError
from dbae_core.presets import PRESETS, preset


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
