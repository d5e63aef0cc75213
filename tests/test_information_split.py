"""The information split at small scale (dbae-method.md §1, §7, §8): after the same short training on shapes, DiffAE
reconstructs closely only from its inferred x_T; from a random x_T it is much worse; DBAE's z alone lies clearly
closer to the inferred-x_T quality. Also on these trained models: DDIM inversion is near-exact, and manipulation moves
a linear probe's logit of the re-encoded images monotonically with s.

Both models are trained once per module (tiny networks at 16 px, 200 steps of batch 16, the same data order).
"""

import dataclasses
import logging

import pytest
import torch

from dbae_core.autoencoders import build_autoencoder
from dbae_core.data import ATTRIBUTE_NAMES, ShapesDataset
from dbae_core.editing import fit_probe, manipulate
from dbae_core.metrics.reconstruction import mse, ssim, to_unit
from dbae_core.presets import preset
from dbae_core.training import TrainConfig, fit

log = logging.getLogger(__name__)
SIZE, STEPS, BATCH = 16, 200, 16
T_INV = 50  # DDIM inversion and decoding steps for DiffAE's inferred x_T


def tiny16():
    """The `tiny` preset at 16 px (attention at 4 px)."""
    p = preset("tiny")
    return p.replace(image_size=SIZE, decoder=dataclasses.replace(p.decoder, image_size=SIZE),
                     encoder=dataclasses.replace(p.encoder, image_size=SIZE, attention_resolutions=(4,)),
                     unet=dataclasses.replace(p.unet, image_size=SIZE, attention_resolutions=(4,)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = ShapesDataset(size=SIZE, length=4096)
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, optimizer="adamw", lr=1e-3, ema_decay=0.0, log_every=50,
                      ckpt_every=10 ** 6, progress=False)
    models = {}
    for method in ("diffae", "dbae_d"):
        torch.manual_seed(0)
        out = fit(build_autoencoder(method, tiny16()), data, cfg, tmp_path_factory.mktemp(method))
        models[method] = out["ema"].eval()
    return models


@pytest.fixture(scope="module")
def test_images():
    return ShapesDataset(size=SIZE, length=64, split="test").render(list(range(8)))[0]


def scores(x_hat, x):
    return mse(to_unit(x_hat), to_unit(x)).mean().item(), ssim(to_unit(x_hat), to_unit(x)).mean().item()


@pytest.mark.slow
def test_information_split_ordering(trained, test_images, record_property):
    x = test_images
    inferred = scores(trained["diffae"].reconstruct(x, steps=T_INV), x)
    random = scores(trained["diffae"].reconstruct(x, steps=20, random_xT=True,
                                                  generator=torch.Generator().manual_seed(0)), x)
    dbae = scores(trained["dbae_d"].reconstruct(x, steps=20), x)
    mismatched = scores(x.roll(1, 0), x)  # another test image: what a z that carries nothing scores
    for name, (m, s) in {"diffae_inferred_xT": inferred, "diffae_random_xT": random, "dbae_z_only": dbae,
                         "mismatched_pair": mismatched}.items():
        log.info("%-20s MSE %.5f  SSIM %.4f", name, m, s)
        record_property(name, {"mse": m, "ssim": s})
    (mse_inf, ssim_inf), (mse_rnd, ssim_rnd), (mse_db, ssim_db) = inferred, random, dbae
    assert mse_inf < 0.01 and ssim_inf > 0.75  # inferred x_T reconstructs closely
    assert mse_rnd > 5 * mse_inf and ssim_rnd < ssim_inf - 0.4  # random x_T is much worse
    assert mse_db - mse_inf < 0.25 * (mse_rnd - mse_inf)  # DBAE's z alone lies close to the inferred quality ...
    assert ssim_inf - ssim_db < 0.5 * (ssim_inf - ssim_rnd)
    assert mse_db < 0.5 * mismatched[0]  # ... because z carries the image, not because the images are alike


@pytest.mark.slow
def test_ddim_inversion_is_near_exact_on_the_trained_diffae(trained, test_images):
    model, x = trained["diffae"], test_images[:4]
    z = model.encode(x)
    err = {}
    for steps in (10, 100):
        x_T, nfe_inv = model.invert(x, z, steps)
        back, nfe = model.decode(z, steps, x_T=x_T, clip=False)
        assert nfe_inv == nfe == steps
        err[steps] = scores(back, x)
    log.info("inversion → decoding: %s", err)
    assert err[100][0] < 1e-3 and err[100][1] > 0.9, err
    assert err[100][0] < 0.2 * err[10][0], err
    assert x_T.std().item() == pytest.approx(1.0, abs=0.25)  # the inferred x_T looks like N(0, I) noise


@pytest.mark.slow
@pytest.mark.parametrize("keep_endpoint", [True, False])
def test_manipulation_moves_the_probe_logit_monotonically(trained, test_images, keep_endpoint):
    model = trained["dbae_d"]
    images, _, attributes = ShapesDataset(size=SIZE, length=512).render(list(range(512)))
    k = ATTRIBUTE_NAMES.index("warm_fg")
    probe = fit_probe(model.encode(images), attributes[:, k])
    scales = (-0.2, -0.1, 0.0, 0.1, 0.2)  # raw-z steps s·√d·w/‖w‖ (§6): ±1 saturates this model's logit
    edited = manipulate(model, test_images, probe, scales, steps=10, keep_endpoint=keep_endpoint)
    logits = torch.stack([probe.logit(model.encode(e)) for e in edited])  # (scales, images): re-encoded
    log.info("keep_endpoint=%s mean re-encoded logit per s: %s", keep_endpoint, logits.mean(1).tolist())
    assert (logits.mean(1).diff() > 0).all()
    assert (logits.diff(dim=0) > 0).float().mean() > 0.85
