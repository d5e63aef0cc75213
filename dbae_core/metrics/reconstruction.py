"""Reconstruction metrics on images in [0, 1]: MSE, PSNR and the Gaussian-window SSIM of Wang et al. (2004).

SSIM: 11×11 Gaussian window with σ = 1.5, population (not sample) statistics, data range 1, averaged over the valid
region and the channels of each image — what scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1) computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse", "psnr", "ssim", "to_unit"]


def to_unit(x: Tensor) -> Tensor:
    """[−1, 1] → [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean squared error of (B, C, H, W) images in [0, 1]."""
    return (x.float() - y.float()).square().flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB."""
    return 10 * torch.log10(data_range ** 2 / mse(x, y).clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of (B, C, H, W) images (H, W ≥ win_size)."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(win_size, sigma, x.device, x.dtype)
    wh, ww = g.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), g.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(v: Tensor) -> Tensor:  # separable valid-region filtering, one channel at a time
        return F.conv2d(F.conv2d(v, wh, groups=c), ww, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()
