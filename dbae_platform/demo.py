"""`dbae demo`: train the tiny preset on the built-in shapes data on this machine and report reconstruction quality.

Rerunning the same command resumes from the newest checkpoint in the run directory (and, once finished, only
re-evaluates). The sweep issue turns `make demo` into the latent-dimension sweep; this is the single-run version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dbae_core.data import ShapesDataset
from dbae_core.metrics import mse, psnr, ssim, to_unit
from dbae_core.model import DBAE
from dbae_core.presets import preset
from dbae_core.training import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    run_dir: Path = Path("runs/demo")
    steps: int = 500
    batch_size: int = 16
    lr: float = 5e-4
    ema_decay: float = 0.99
    train_images: int = 20_000
    eval_images: int = 64
    sampler_steps: int = 20
    device: str = "auto"
    seed: int = 0


def reconstruct_all(model: DBAE, images: torch.Tensor, steps: int, batch: int = 32) -> torch.Tensor:
    """Reconstructions of `images` (Euler ODE, posterior mean), in batches, on the CPU."""
    return torch.cat([model.reconstruct(images[i:i + batch], steps=steps).cpu() for i in range(0, len(images), batch)])


def reconstruction_metrics(images: torch.Tensor, recs: torch.Tensor) -> dict[str, float]:
    """MSE / PSNR / SSIM on [0, 1] images."""
    x, r = to_unit(images.cpu()), to_unit(recs)
    return {"recon_mse": mse(x, r).mean().item(), "psnr": psnr(x, r).mean().item(), "ssim": ssim(x, r).mean().item()}


def save_grid(path: Path, images: torch.Tensor, recs: torch.Tensor, columns: int = 16) -> None:
    """Originals on odd rows, their reconstructions below them."""
    n = min(len(images), 4 * columns)
    rows = [t for i in range(0, n, columns) for t in (images[i:i + columns], recs[i:i + columns])]
    from torchvision.utils import save_image  # deferred: importing torchvision costs about 1.3 s
    save_image(to_unit(torch.cat(rows)), path, nrow=columns, padding=1)


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    torch.manual_seed(cfg.seed)
    model = DBAE(preset("tiny"))
    counts = model.parameter_counts()
    log.info("tiny preset: %.2fM parameters (unet %.2fM, encoder %.2fM, decoder %.2fM); %d steps of %d images on %s",
             counts["total"] / 1e6, counts["unet"] / 1e6, counts["encoder"] / 1e6, counts["decoder"] / 1e6,
             cfg.steps, cfg.batch_size, device)
    train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, optimizer="adamw", lr=cfg.lr,
                            ema_decay=cfg.ema_decay, log_every=50, ckpt_every=100, seed=cfg.seed)
    t0 = time.perf_counter()
    out = fit(model, ShapesDataset(size=32, length=cfg.train_images, seed=cfg.seed), train_cfg, cfg.run_dir, device,
              on_log=lambda step, m: log.info("step %5d  loss %.4f  %.1f img/s", step, m["train/loss"],
                                              m["train/images_per_s"]))
    log.info("training took %.0f s; checkpoint %s", time.perf_counter() - t0, out["checkpoint"])

    test = ShapesDataset(size=32, length=cfg.eval_images, seed=cfg.seed, split="test")
    images = test.render(range(cfg.eval_images))[0]
    train_mean = ShapesDataset(size=32, length=2048, seed=cfg.seed).render(range(2048))[0].mean(0, keepdim=True)
    ema = out["ema"].to(device).eval()
    recs = reconstruct_all(ema, images.to(device), cfg.sampler_steps)
    metrics = reconstruction_metrics(images, recs)
    save_grid(cfg.run_dir / "reconstructions.png", images, recs)
    baseline = mse(to_unit(images), to_unit(train_mean.expand_as(images))).mean().item()
    metrics["mean_image_mse"] = baseline
    log.info("reconstruction of %d held-out shapes images (EMA weights, Euler ODE, %d steps, posterior mean):",
             cfg.eval_images, cfg.sampler_steps)
    log.info("  MSE %.5f   PSNR %.2f dB   SSIM %.4f   (mean-image baseline MSE %.5f, %.1fx worse)",
             metrics["recon_mse"], metrics["psnr"], metrics["ssim"], baseline, baseline / metrics["recon_mse"])
    log.info("originals and reconstructions: %s", cfg.run_dir / "reconstructions.png")
    return metrics
