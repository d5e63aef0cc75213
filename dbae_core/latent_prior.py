"""The latent prior p(z) for unconditional generation (dbae-method.md §5, DiffAE's latent DPM), a second stage.

The prior models the latents the decoder was trained on: posterior means for a deterministic encoder, and for the
stochastic one draws z = μ + σ ε from q_φ(z|x0) (a fresh draw at every prior training step), not the means alone.
z is normalised by the training set's mean/std; an ε-prediction DDPM on the normalised z (T = 1000, constant
β = 0.008) with an MLP skip-net (LayerNorm, SiLU, z_t re-concatenated at every layer, time embedding 64) is trained
with an L1 loss and AdamW (lr 1e-4, wd 0.01), and sampled by DDIM (20 steps by default).
Generation: z ~ prior → autoencoder.decode(z) (DBAE: x_T = Dec(z) → reverse bridge; DiffAE: random x_T → DDIM).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dbae_core.ddim import ddim_sample, make_schedule
from dbae_core.ema import EMA
from dbae_core.networks.encoder import Posterior
from dbae_core.networks.layers import timestep_embedding

__all__ = ["LatentPriorConfig", "PRIOR_PRESETS", "SMALL_MODEL", "prior_preset", "default_preset", "MLPSkipNet",
           "LatentPrior", "fit_prior", "encode_dataset", "encode_posterior", "generate", "save_prior", "load_prior"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentPriorConfig:
    """Network, diffusion and optimisation settings of the latent DPM (§5); defaults are the paper's."""

    latent_dim: int = 512
    width: int = 2048
    depth: int = 10  # linear layers, the last one maps back to latent_dim
    time_dim: int = 64
    T: int = 1000
    beta: float = 0.008
    sample_steps: int = 20
    loss: str = "l1"  # "l1" (DiffAE's latent DPM) or "l2"
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 512
    steps: int = 100_000
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"latent_dim": self.latent_dim > 0, "width": self.width > 0, "depth": self.depth >= 2,
                  "time_dim": self.time_dim > 0, "T": self.T >= 1, "beta": 0 < self.beta < 1,
                  "sample_steps": 1 <= self.sample_steps <= self.T, "loss": self.loss in ("l1", "l2"),
                  "lr": self.lr > 0,
                  "weight_decay": self.weight_decay >= 0, "batch_size": self.batch_size > 0, "steps": self.steps > 0,
                  "ema_decay": 0 <= self.ema_decay < 1, "grad_clip": self.grad_clip >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"prior.{bad[0]}={getattr(self, bad[0])!r} is invalid (depth >= 2, 0 < beta < 1, "
                             "1 <= sample_steps <= T, loss l1/l2, ema_decay in [0, 1), sizes, counts and lr positive)")

    def replace(self, **changes: Any) -> LatentPriorConfig:
        return dataclasses.replace(self, **changes)


PRIOR_PRESETS: dict[str, LatentPriorConfig] = {
    "paper": LatentPriorConfig(),
    "tiny": LatentPriorConfig(latent_dim=64, width=256, depth=4, batch_size=256, steps=2000, ema_decay=0.999,
                              lr=1e-3),
}


SMALL_MODEL = 10_000_000  # autoencoder parameters: below this the "tiny" prior preset is the default, else "paper"


def default_preset(autoencoder: nn.Module) -> str:
    """The prior preset for an autoencoder: "tiny" below SMALL_MODEL parameters, else "paper"."""
    return "tiny" if sum(p.numel() for p in autoencoder.parameters()) < SMALL_MODEL else "paper"


def prior_preset(name: str, **changes: Any) -> LatentPriorConfig:
    """A prior preset ("paper": 10 × 2048, "tiny": 4 × 256) with fields changed, e.g. latent_dim to match the model."""
    try:
        cfg = PRIOR_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown prior preset {name!r}: use one of {sorted(PRIOR_PRESETS)}") from None
    return cfg.replace(**changes) if changes else cfg


class MLPSkipNet(nn.Module):
    """ε_θ(z_t, t): Linear → ·(1 + Linear(SiLU(emb_t))) → LayerNorm → SiLU per hidden layer; z_t re-enters each one."""

    def __init__(self, latent_dim: int, width: int, depth: int, time_dim: int = 64) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_embed = nn.Sequential(nn.Linear(time_dim, latent_dim), nn.SiLU(), nn.Linear(latent_dim, latent_dim))
        self.layers = nn.ModuleList(
            nn.Linear(latent_dim if i == 0 else width + latent_dim, latent_dim if i == depth - 1 else width)
            for i in range(depth))
        self.time_scale = nn.ModuleList(nn.Linear(latent_dim, width) for _ in range(depth - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth - 1))

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        emb = F.silu(self.time_embed(timestep_embedding(t.float(), self.time_dim)))
        h = z_t
        for i, layer in enumerate(self.layers):
            h = layer(h if i == 0 else torch.cat([h, z_t], dim=1))
            if i < len(self.norms):
                h = F.silu(self.norms[i](h * (1 + self.time_scale[i](emb))))
        return h


class LatentPrior(nn.Module):
    """The normaliser (training-set mean/std of z, as buffers), the skip-net and its DDPM schedule."""

    kind = "latent_prior"

    def __init__(self, cfg: LatentPriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = MLPSkipNet(cfg.latent_dim, cfg.width, cfg.depth, cfg.time_dim)
        self.schedule = make_schedule("constant", cfg.T, beta=cfg.beta)
        self.register_buffer("mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("std", torch.ones(cfg.latent_dim))

    @torch.no_grad()
    def set_normalization(self, latents: Tensor, sigma: Tensor | None = None) -> None:
        """mean/std of the encoded training set, per dimension. With the posterior std σ of a stochastic encoder,
        those of the draws z = μ + σ ε: mean(μ) and √(var(μ) + mean(σ²)) (law of total variance)."""
        var = latents.var(0) + (0 if sigma is None else sigma.square().mean(0))
        self.mean.copy_(latents.mean(0))
        self.std.copy_(var.sqrt().clamp_min(1e-6))

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean

    def loss(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """L1 (or L2) ε-prediction loss on the normalised z (§5): E|ε_θ(√ᾱ_t ẑ + √(1−ᾱ_t) ε, t) − ε|."""
        zn = self.normalize(z)
        u = torch.rand(zn.shape[0], generator=generator, device=zn.device)
        t = (u * self.cfg.T).long().clamp_(max=self.cfg.T - 1)
        eps = torch.randn(zn.shape, generator=generator, device=zn.device, dtype=zn.dtype)
        err = self.net(self.schedule.q_sample(zn, t, eps), t) - eps
        return err.abs().mean() if self.cfg.loss == "l1" else err.square().mean()

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, generator: torch.Generator | None = None,
               eta: float = 0.0) -> Tensor:
        """n latents z ~ p(z) by DDIM (cfg.sample_steps by default) from N(0, I), denormalised."""
        device = self.mean.device
        x = torch.randn((n, self.cfg.latent_dim), generator=generator, device=device)
        zn, _ = ddim_sample(self.net, x, self.schedule, steps or self.cfg.sample_steps, eta=eta, generator=generator)
        return self.denormalize(zn)


def fit_prior(latents: Tensor, cfg: LatentPriorConfig, device: str | torch.device = "cpu", progress: bool = True,
              log_every: int = 500, path: str | os.PathLike | None = None, sigma: Tensor | None = None,
              ) -> tuple[LatentPrior, list[tuple[int, float]]]:
    """Train the latent DPM on encoded training latents (N, d); returns (EMA prior in eval mode, [(step, loss)]).

    `sigma` (N, d), the posterior std of a stochastic encoder: `latents` are then the posterior means μ and every
    step trains on fresh draws z = μ + σ ε, the latents the decoder saw in training (§5). With `path`, the prior is
    also saved there (see save_prior).
    """
    device = torch.device(device)
    if latents.ndim != 2 or latents.shape[1] != cfg.latent_dim:
        raise ValueError(f"latents must be (N, {cfg.latent_dim}), got {tuple(latents.shape)}")
    if sigma is not None and sigma.shape != latents.shape:
        raise ValueError(f"sigma must have the latents' shape {tuple(latents.shape)}, got {tuple(sigma.shape)}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    latents = latents.detach().float().to(device)
    sigma = None if sigma is None else sigma.detach().float().to(device)
    prior = LatentPrior(cfg).to(device)
    prior.set_normalization(latents, sigma)
    ema = EMA(prior, cfg.ema_decay)
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, batch = latents.shape[0], min(cfg.batch_size, latents.shape[0])
    perm, pos, history = torch.randperm(n, generator=gen, device=device), 0, []
    running = torch.zeros((), device=device)  # summed on device: no host sync per step
    prior.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="prior", disable=not progress, mininterval=2.0):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen, device=device), 0
        idx = perm[pos:pos + batch]
        z = latents[idx]
        if sigma is not None:
            z = z + sigma[idx] * torch.randn(z.shape, generator=gen, device=device)
        loss = prior.loss(z, gen)
        pos += batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(prior.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(prior)
        running += loss.detach()
        if step % log_every == 0 or step == cfg.steps:
            mean_loss = running.item() / (step % log_every or log_every)
            history.append((step, mean_loss))
            log.debug("prior step %d loss %.4f", step, mean_loss)
            running.zero_()
    if not math.isfinite(history[-1][1]):
        raise FloatingPointError(f"latent prior loss became non-finite ({history[-1]})")
    if path is not None:
        save_prior(path, ema.model, cfg.steps)
    return ema.model.eval(), history


@torch.no_grad()
def encode_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                   sample: bool = False, progress: bool = True) -> Tensor:
    """z for every item of `dataset` (images or (images, ...) tuples) with the autoencoder in eval mode: (N, d)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for batch in tqdm(loader, desc="encode", disable=not progress, mininterval=2.0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(model.encode(x.to(device), sample=sample).float().cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def encode_posterior(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                     progress: bool = True) -> Posterior:
    """q_φ(z|x0) of every item of `dataset` (eval mode), on the CPU: Posterior(means (N, d), σ (N, d) or None)."""
    was_training = model.training
    model.eval()
    means, sigmas = [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="encode",
                      disable=not progress, mininterval=2.0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        post = model.encoder(x.to(device))
        means.append(post.mean.float().cpu())
        sigmas.append(None if post.sigma is None else post.sigma.float().cpu())
    model.train(was_training)
    return Posterior(torch.cat(means), None if sigmas[0] is None else torch.cat(sigmas))


@torch.no_grad()
def generate(model: nn.Module, prior: LatentPrior, n: int, steps: int = 100, prior_steps: int | None = None,
             generator: torch.Generator | None = None, **decode_kw: Any) -> tuple[Tensor, int]:
    """Unconditional samples: z ~ prior, then model.decode(z, steps) (DBAE: x_T = Dec(z) → bridge). Returns (x, nfe).

    nfe counts the image network's evaluations (the prior's MLP adds `prior_steps` cheap ones).
    """
    z = prior.sample(n, prior_steps, generator=generator)
    return model.decode(z, steps, generator=generator, **decode_kw)


def save_prior(path: str | os.PathLike, prior: LatentPrior, step: int = 0, **extra: Any) -> Path:
    """Write {kind, config, model (weights + normaliser), step, extra} atomically; loads with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"kind": LatentPrior.kind, "config": dataclasses.asdict(prior.cfg), "model": prior.state_dict(),
             "step": int(step), **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_prior(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LatentPrior:
    """A LatentPrior (eval mode) from a file written by save_prior."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != LatentPrior.kind:
        raise ValueError(f"{path} is not a latent-prior checkpoint (written by dbae_core.latent_prior.save_prior)")
    prior = LatentPrior(LatentPriorConfig(**state["config"]))
    prior.load_state_dict(state["model"])
    return prior.to(map_location).eval()
