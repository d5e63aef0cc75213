"""Interpolation and attribute manipulation (dbae-method.md §6, §7), and image strips and grids saved as PNG.

DBAE: z_λ = (1 − λ) z1 + λ z2 and x_T = Dec(z_λ). DiffAE: z lerped, its inferred x_T slerped.
Manipulation: a linear probe with weight vector w on z; z' = z + s·√d·w/‖w‖ in raw z (§6 and the DBAE release), or
optionally in the probe's standardised coordinates (z − mean)/std, as DiffAE does. DBAE keeps x_T = Dec(z) (default) or
uses Dec(z'); DiffAE keeps the inferred x_T (default) or draws a random one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dbae_core.samplers import sample_bridge

__all__ = ["lerp", "slerp", "LinearProbe", "fit_probe", "manipulate_latent", "decode_from_endpoint", "manipulate",
           "image_grid", "save_grid", "save_strip"]


def lerp(a: Tensor, b: Tensor, lam: float) -> Tensor:
    """(1 − λ) a + λ b (§6)."""
    return torch.lerp(a, b, lam)


def slerp(a: Tensor, b: Tensor, lam: float) -> Tensor:
    """Spherical interpolation per sample over the non-batch dims: [sin((1−λ)θ) a + sin(λθ) b] / sin θ (DiffAE x_T)."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (F.normalize(fa, dim=1) * F.normalize(fb, dim=1)).sum(1).clamp(-1.0, 1.0)
    theta = torch.acos(cos)[:, None]
    small = theta < 1e-6  # (anti)parallel to numerical precision: fall back to lerp
    sin = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    wa = torch.where(small, torch.full_like(theta, 1 - lam), torch.sin((1 - lam) * theta) / sin)
    wb = torch.where(small, torch.full_like(theta, lam), torch.sin(lam * theta) / sin)
    return (wa * fa + wb * fb).to(a.dtype).reshape(a.shape)


@dataclass(frozen=True)
class LinearProbe:
    """logit(z) = w · (z − mean)/std + b, a logistic probe on the normalised latent (§6, §8)."""

    weight: Tensor  # (d,)
    bias: Tensor  # ()
    mean: Tensor  # (d,)
    std: Tensor  # (d,)

    def logit(self, z: Tensor) -> Tensor:
        return ((z - self.mean) / self.std) @ self.weight + self.bias

    @property
    def raw_weight(self) -> Tensor:
        """The probe's weight vector on raw z, ∇_z logit = w/std."""
        return self.weight / self.std


def fit_probe(z: Tensor, labels: Tensor, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3,
              normalize: bool = True) -> LinearProbe:
    """Full-batch logistic regression (Adam, BCE with logits) of binary `labels` on z, normalised by its mean/std."""
    z = z.detach().float()
    mean = z.mean(0) if normalize else torch.zeros_like(z[0])
    std = z.std(0).clamp_min(1e-6) if normalize else torch.ones_like(z[0])
    zn, y = (z - mean) / std, labels.detach().float().to(z.device)
    linear = nn.Linear(z.shape[1], 1).to(z.device)
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(linear(zn)[:, 0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return LinearProbe(linear.weight.detach()[0], linear.bias.detach()[0], mean, std)


def manipulate_latent(z: Tensor, probe: LinearProbe, s: float, standardized: bool = False) -> Tensor:
    """z' = z + s·√d·w/‖w‖ with w the probe's weight on raw z (§6), so logit(z') = logit(z) + s·√d·‖w‖.

    `standardized`: move the probe's standardised coordinates (z − mean)/std instead (DiffAE's manipulation).
    """
    d = z.shape[1]
    if not standardized:
        return z + s * math.sqrt(d) * F.normalize(probe.raw_weight, dim=0)
    zn = (z - probe.mean) / probe.std + s * math.sqrt(d) * F.normalize(probe.weight, dim=0)
    return zn * probe.std + probe.mean


@torch.no_grad()
def decode_from_endpoint(model: nn.Module, z: Tensor, x_T: Tensor, steps: int = 100, method: str = "euler",
                         churn: float = 0.0, rho: float = 7.0, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, int]:
    """DBAE's reverse bridge from a given x_T conditioned on z (x_T need not be Dec(z)), clamped to [−1, 1] as
    DBAE.decode is. Returns (x0, nfe)."""
    z, x_T = z.float(), x_T.float()

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        return model.denoise(x, t.float(), x_T, z, clamp=True).float()

    x, nfe = sample_bridge(denoiser, x_T, model.bridge, steps, method=method, churn=churn, rho=rho,
                           generator=generator)
    return x.clamp(-1.0, 1.0), nfe


@torch.no_grad()
def manipulate(model: nn.Module, x: Tensor, probe: LinearProbe, scales: Sequence[float], steps: int = 100,
               keep_endpoint: bool = True, inverse_steps: int | None = None, standardized: bool = False,
               generator: torch.Generator | None = None, **sampler_kw) -> Tensor:
    """Images for z' = manipulate_latent(Enc(x), probe, s, standardized) for every s; returns (len(scales), B, C, H, W).

    `keep_endpoint`: DBAE keeps x_T = Dec(z) (else Dec(z')); DiffAE keeps x's inferred x_T (else a random one, shared
    across s). `sampler_kw` go to the bridge sampler (method, churn, rho) for DBAE.
    """
    diffae = getattr(model, "kind", "dbae") == "diffae"
    z = model.encode(x)
    if diffae:
        x_T = (model.invert(x, z, inverse_steps or steps)[0] if keep_endpoint else
               torch.randn(x.shape, generator=generator, device=x.device))
    else:
        x_T = model.endpoint(z)
    out = []
    for s in scales:
        z_s = manipulate_latent(z, probe, float(s), standardized)
        if diffae:
            out.append(model.decode(z_s, steps, x_T=x_T, clip=not keep_endpoint, generator=generator)[0])
        else:
            end = x_T if keep_endpoint else model.endpoint(z_s)
            out.append(decode_from_endpoint(model, z_s, end, steps, generator=generator, **sampler_kw)[0])
    return torch.stack(out)


def image_grid(images: Tensor, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """(R, K, C, H, W) images in [−1, 1] → an (R·H', K·W', 3) uint8 array: R rows, K columns."""
    if images.ndim != 5:
        raise ValueError(f"image_grid needs (rows, cols, C, H, W), got shape {tuple(images.shape)}")
    rows, cols, c, h, w = images.shape
    x = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    if c == 1:
        x = x.expand(rows, cols, 3, h, w)
    canvas = torch.full((3, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for r in range(rows):
        for k in range(cols):
            top, left = padding + r * (h + padding), padding + k * (w + padding)
            canvas[:, top:top + h, left:left + w] = x[r, k, :3]
    return (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save (N, C, H, W) images in [−1, 1] as a PNG grid with `nrow` images per row (e.g. prior samples)."""
    n = images.shape[0]
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    pad = images.new_ones(rows * cols - n, *images.shape[1:])  # white cells after the last image
    return _save(image_grid(torch.cat([images, pad]).reshape(rows, cols, *images.shape[1:])), path)


def save_strip(images: Tensor, path: str | Path) -> Path:
    """Save (K, B, C, H, W) images (K steps of λ or s, B samples) as a PNG: one row per sample, one column per step."""
    return _save(image_grid(images.transpose(0, 1)), path)


def _save(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
