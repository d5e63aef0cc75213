"""Network building blocks against naive references, and every size knob of the networks exercised."""

import math

import pytest
import torch

from dbae_core.networks import Decoder, DecoderConfig, Encoder, EncoderConfig, UNet, UNetConfig
from dbae_core.networks.layers import AttentionBlock, timestep_embedding


def test_attention_matches_naive_softmax_attention():
    torch.manual_seed(0)
    block = AttentionBlock(64, head_channels=16)
    torch.nn.init.normal_(block.proj.weight, std=0.1)  # the projection starts at zero: give it weights
    x = torch.randn(2, 64, 5, 6)
    b, c, h, w = x.shape
    qkv = block.qkv(block.norm(x).reshape(b, c, h * w))  # (B, 3C, L)
    heads = c // 16
    qkv = qkv.reshape(b * heads, 3 * 16, h * w)  # ADM's legacy layout: heads first, then q, k, v
    q, k, v = qkv[:, :16], qkv[:, 16:32], qkv[:, 32:]
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(16), dim=-1)
    out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h * w)
    ref = x + block.proj(out).reshape(b, c, h, w)
    torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_formula():
    t = torch.tensor([-2302.5, 0.0, 17.0])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    for row, tv in zip(emb, t.tolist()):
        ref = [math.cos(tv * f) for f in freqs] + [math.sin(tv * f) for f in freqs]
        torch.testing.assert_close(row, torch.tensor(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("updown", [True, False])
@pytest.mark.parametrize("concat", [True, False])
def test_unet_variants_keep_the_image_shape(updown, concat):
    cfg = UNetConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), head_channels=32, resblock_updown=updown, concat_endpoint=concat)
    net = UNet(cfg, latent_dim=8)
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([-5.0, 0.0]), x_T=torch.randn_like(x) if concat else None, z=torch.randn(2, 8))
    assert out.shape == x.shape
    assert net.input_blocks[0][0].in_channels == (6 if concat else 3)


def test_latent_changes_the_unet_output_once_trained_weights_are_nonzero():
    torch.manual_seed(0)
    net = UNet(UNetConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(), head_channels=32), latent_dim=8)
    for name, p in net.named_parameters():
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([-1.0])
    a = net(x, t, torch.zeros_like(x), torch.zeros(1, 8))
    b = net(x, t, torch.zeros_like(x), torch.ones(1, 8))
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("stochastic", [False, True])
def test_encoder_output_width(stochastic):
    enc = Encoder(EncoderConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_resolutions=(8,), stochastic=stochastic), latent_dim=12)
    post = enc(torch.randn(3, 3, 16, 16))
    assert post.mean.shape == (3, 12)
    assert (post.sigma is not None) == stochastic
    assert enc.out.out_channels == (24 if stochastic else 12)


def test_spectral_norm_bounds_the_decoder_convs():
    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(image_size=16, ngf=8, spectral_norm=True), latent_dim=8).train()
    for _ in range(30):  # power iterations run in training-mode forwards
        dec(torch.randn(4, 8))
    conv = dec.up["8"][1]
    sigma_max = torch.linalg.matrix_norm(conv.weight.reshape(conv.weight.shape[0], -1), ord=2)
    assert sigma_max.item() == pytest.approx(1.0, abs=0.02)
    plain = Decoder(DecoderConfig(image_size=16, ngf=8, spectral_norm=False), latent_dim=8)
    assert not hasattr(plain.up["8"][1], "parametrizations")


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_decoder_norms(norm):
    dec = Decoder(DecoderConfig(image_size=32, ngf=8, norm=norm), latent_dim=8).eval()
    kinds = {type(m).__name__ for m in dec.modules()}
    assert ("BatchNorm2d" in kinds) == (norm == "batch") and ("GroupNorm" in kinds) == (norm == "group")
    assert dec(torch.randn(2, 8)).shape == (2, 3, 32, 32)
