"""Interpolation and attribute manipulation (dbae-method.md §6, §7) and the PNG strips, on untrained tiny models
(trained-model checks live in test_information_split.py)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dbae_core.autoencoders import build_autoencoder
from dbae_core.editing import (
    decode_from_endpoint,
    fit_probe,
    image_grid,
    lerp,
    manipulate,
    manipulate_latent,
    save_grid,
    save_strip,
    slerp,
)


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_slerp_against_the_angle():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    b = b / b.flatten(1).norm(dim=1)[:, None, None] * a.flatten(1).norm(dim=1)[:, None, None]  # equal norms
    theta = torch.acos((a.flatten(1) * b.flatten(1)).sum(1) / (a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)))
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    for lam in (0.25, 0.5, 0.9):
        s = slerp(a, b, lam).flatten(1)
        torch.testing.assert_close(s.norm(dim=1), a.flatten(1).norm(dim=1))  # stays on the sphere
        angle = torch.acos((s * a.flatten(1)).sum(1) / (s.norm(dim=1) * a.flatten(1).norm(dim=1)))
        torch.testing.assert_close(angle, lam * theta)  # moves the angle linearly
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel inputs fall back to lerp
    torch.testing.assert_close(lerp(a, b, 0.25), 0.75 * a + 0.25 * b)


@pytest.mark.parametrize("normalize", [True, False])
def test_probe_and_manipulation_move_the_logit_linearly(normalize):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, generator=g) * torch.tensor([1.0, 5.0, 0.5, 2.0, 1.0, 1.0]) + 3
    labels = (z[:, 0] - 3 + 0.2 * (z[:, 1] - 3) > 0).float()
    probe = fit_probe(z if normalize else z - 3, labels, normalize=normalize)
    z = z if normalize else z - 3
    assert ((probe.logit(z) > 0).float() == labels).float().mean() > 0.95
    scales = (-1.0, -0.5, 0.0, 0.5, 1.0)
    # §6: z' = z + s·√d·w/‖w‖ in raw z, with w = ∇_z logit, the probe's weight on raw z (w_n/std for a probe on
    # standardised z); so logit(z') = logit(z) + s·√d·‖w‖. The standardised option moves (z − mean)/std instead.
    w_raw = torch.func.grad(lambda v: probe.logit(v[None])[0])(z[0])
    for standardized, w in ((False, w_raw), (True, probe.weight)):
        logits = torch.stack([probe.logit(manipulate_latent(z[:8], probe, s, standardized)) for s in scales])
        for s, row in zip(scales, logits):
            torch.testing.assert_close(row, probe.logit(z[:8]) + s * math.sqrt(6) * w.norm(), rtol=1e-4, atol=1e-4)
        assert (logits.diff(dim=0) > 0).all()
    step = manipulate_latent(z, probe, 0.5) - z  # the default is the raw step, of length |s|·√d along w
    torch.testing.assert_close(step, 0.5 * math.sqrt(6) * w_raw / w_raw.norm() * torch.ones_like(z), rtol=1e-5,
                               atol=1e-5)
    if normalize:  # unequal stds: the standardised step differs from the raw one
        assert not torch.allclose(manipulate_latent(z, probe, 0.5, standardized=True) - z, step, atol=1e-2)


def test_dbae_manipulation_and_interpolation_endpoints():
    torch.manual_seed(0)
    model = build_autoencoder("dbae_d", latent_dim=8).eval()
    x, x2 = images(2, seed=1), images(2, seed=2)
    z = model.encode(x)
    probe = fit_probe(torch.randn(32, 8), (torch.arange(32) % 2).float(), steps=5)
    out = manipulate(model, x, probe, scales=(0.0, 1.0), steps=3)
    assert out.shape == (2, *x.shape)
    torch.testing.assert_close(out[0], model.reconstruct(x, steps=3), atol=1e-5, rtol=0)  # s = 0: x's reconstruction
    moved = manipulate(model, x, probe, scales=(1.0,), steps=3, keep_endpoint=False)[0]
    z1 = manipulate_latent(z, probe, 1.0)
    torch.testing.assert_close(moved, model.decode(z1, 3)[0], atol=1e-5, rtol=0)  # x_T = Dec(z') is plain decoding
    kept = decode_from_endpoint(model, z1, model.endpoint(z), 3)
    assert kept[1] == 3 and torch.allclose(kept[0], out[1], atol=1e-5)
    path = model.interpolate(x, x2, lambdas=(0.0, 1.0), steps=3)
    torch.testing.assert_close(path[1], model.reconstruct(x2, steps=3), atol=1e-5, rtol=0)


def test_diffae_interpolation_and_manipulation_endpoints():
    torch.manual_seed(0)
    model = build_autoencoder("diffae", latent_dim=8).eval()
    for name, p in model.unet.named_parameters():  # a non-trivial ε-network (ADM starts it at zero)
        if name.endswith(("out_conv.weight", "proj.weight")):
            torch.nn.init.normal_(p, std=0.02)
    x1, x2 = images(2, seed=1), images(2, seed=2)
    path = model.interpolate(x1, x2, lambdas=(0.0, 0.5, 1.0), steps=4)
    assert path.shape == (3, *x1.shape)
    # (a batch of 6 vs 2 and slerp's float64 round trip differ by rounding, which 2×4 steps amplify a little)
    torch.testing.assert_close(path[0], model.reconstruct(x1, steps=4), atol=1e-3, rtol=0)
    torch.testing.assert_close(path[2], model.reconstruct(x2, steps=4), atol=1e-3, rtol=0)
    probe = fit_probe(torch.randn(32, 8), (torch.arange(32) % 2).float(), steps=5)
    out = manipulate(model, x1, probe, scales=(0.0, 2.0), steps=4)
    torch.testing.assert_close(out[0], model.reconstruct(x1, steps=4), atol=1e-3, rtol=0)
    assert not torch.allclose(out[0], out[1])


def test_strips_and_grids_are_pngs_of_the_right_layout(tmp_path):
    k, b, size, pad = 5, 3, 8, 2
    imgs = torch.linspace(-1, 1, k)[:, None, None, None, None].expand(k, b, 3, size, size)
    path = save_strip(imgs, tmp_path / "strip.png")
    arr = np.asarray(Image.open(path))
    assert arr.shape == (b * (size + pad) + pad, k * (size + pad) + pad, 3)
    assert arr[pad, pad].tolist() == [0, 0, 0] and arr[pad, pad + (k - 1) * (size + pad)].tolist() == [255] * 3
    assert arr[pad + size // 2, pad + 2 * (size + pad)].tolist() == [128] * 3  # 0 → mid grey, column = step
    grid = save_grid(torch.zeros(5, 3, size, size), tmp_path / "grid.png", nrow=4)
    assert np.asarray(Image.open(grid)).shape == (2 * (size + pad) + pad, 4 * (size + pad) + pad, 3)
    with pytest.raises(ValueError, match="rows, cols"):
        image_grid(torch.zeros(3, 8, 8))
