"""Preset sizes against the release's parameter counts (dbae-method.md §4), and decoder output sizes."""

import dataclasses

import pytest
import torch

from dbae_core.model import DBAE
from dbae_core.networks import Decoder, DecoderConfig
from dbae_core.presets import preset

# (total, unet, encoder, decoder) of the release's DBAE-d models, in millions
RELEASE = {"celeba64": (120.62, 69.68, 19.32, 31.62), "ffhq128": (162.43, 105.46, 24.67, 32.29)}


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_paper_presets_match_release_parameter_counts(name):
    counts = DBAE(preset(name)).parameter_counts()
    for key, target in zip(("total", "unet", "encoder", "decoder"), RELEASE[name]):
        assert counts[key] / 1e6 == pytest.approx(target, rel=0.03), key


def test_stochastic_encoder_adds_a_sigma_head():
    cfg = preset("celeba64")
    det = DBAE(cfg).parameter_counts()["encoder"]
    sto = DBAE(cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=True))).parameter_counts()["encoder"]
    assert (sto - det) / 1e6 == pytest.approx(0.26, abs=0.01)  # a second 512-wide 1×1 conv output


def test_tiny_is_a_few_million_parameters_at_32px():
    cfg = preset("tiny")
    assert cfg.image_size == 32
    assert 1e6 < DBAE(cfg).parameter_counts()["total"] < 5e6


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_decoder_output_sizes(size):
    dec = Decoder(DecoderConfig(image_size=size, ngf=8), latent_dim=16).eval()
    assert dec(torch.randn(2, 16)).shape == (2, 3, size, size)


def test_decoder_rejects_other_sizes():
    with pytest.raises(ValueError, match="image_size must be one of"):
        Decoder(DecoderConfig(image_size=48), latent_dim=16)


def test_paper_presets_follow_the_release_training_and_the_preset_sets_the_prior_budget():
    """The release (ddbm/train_util.py) never clips gradients: celeba64/ffhq128 do not either, while clipping stays a
    setting (its default is 1.0). The latent prior behind eval/fid trains at the preset's budget: long on the paper
    presets (all training latents), a few thousand steps on the CPU study presets (3k: the FID of Fashion-MNIST samples
    fell from 340 at 300 steps to 197 and stayed there at 10k) and a few hundred on the smoke preset."""
    from dbae_core.training import TrainConfig
    from dbae_platform.config import load_config

    assert TrainConfig().grad_clip == 1.0
    for name in ("celeba64", "ffhq128"):
        cfg = load_config(name, ["data.dataset=shapes", "data.flip=false"])
        assert cfg.train.grad_clip == 0.0
        assert cfg.eval.prior_steps >= 50_000 and cfg.eval.prior_images is None
    for name, steps in (("tiny", 300), ("repro_shapes32", 3000), ("repro_fashion32", 3000)):
        cfg = load_config(name, ["data.dataset=shapes", "data.flip=false"])
        assert cfg.train.grad_clip == 1.0 and cfg.eval.prior_steps == steps and cfg.eval.prior_images <= 2000
