"""Reconstruction metrics against scikit-image (SSIM, PSNR) and numpy (MSE)."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dbae_core.metrics import mse, psnr, ssim, to_unit


def pair(seed, size=32, noise=0.1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, size, size, generator=gen)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some structure
    y = (x + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("seed,size,noise", [(0, 32, 0.1), (1, 64, 0.3), (2, 16, 0.02), (3, 11, 0.2)])
def test_ssim_equals_scikit_image_gaussian_ssim(seed, size, noise):
    x, y = pair(seed, size, noise)
    ours = ssim(x, y)
    for i in range(len(x)):
        ref = structural_similarity(x[i].numpy(), y[i].numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, channel_axis=0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-4)


def test_mse_and_psnr():
    x, y = pair(5)
    for i in range(len(x)):
        a, b = x[i].numpy().astype(np.float64), y[i].numpy().astype(np.float64)
        assert mse(x, y)[i].item() == pytest.approx(np.mean((a - b) ** 2), rel=1e-5)
        assert psnr(x, y)[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-5)
    assert ssim(x, x).min().item() == pytest.approx(1.0, abs=1e-6)
    assert to_unit(torch.tensor([-1.0, 0.0, 1.0, 3.0])).tolist() == [0.0, 0.5, 1.0, 1.0]
