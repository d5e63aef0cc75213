"""Evaluation metrics (reconstruction here; probes, disentanglement and generation metrics join later)."""

from dbae_core.metrics.reconstruction import mse, psnr, ssim, to_unit

__all__ = ["mse", "psnr", "ssim", "to_unit"]
