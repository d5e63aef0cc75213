"""One-process training loop (the platform's Ray Train workers wrap it): optimizer, EMA, clipping, AMP, checkpoints.

To resume, call `fit` again with the same run directory: it continues from the newest checkpoint, with the same data
order and RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from dbae_core.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dbae_core.ema import EMA
from dbae_core.model import DBAE

__all__ = ["TrainConfig", "NonFiniteLossError", "fit", "make_optimizer", "StepBatchSampler", "autocast"]

log = logging.getLogger(__name__)
OPTIMIZERS = ("adamw", "radam", "adam")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches of `batch_size` per optimizer step
    optimizer: str = "radam"  # the release trains with RAdam, lr 1e-4, no schedule, no warm-up
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"
    channels_last: bool = True  # applied on CUDA only
    compile: bool = False
    log_every: int = 50
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps > 0, "batch_size": self.batch_size > 0, "grad_accum": self.grad_accum > 0,
            "optimizer": self.optimizer in OPTIMIZERS, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
            "ema_decay": 0 <= self.ema_decay < 1, "grad_clip": self.grad_clip >= 0,
            "precision": self.precision in ("auto", "bf16", "fp32"), "log_every": self.log_every > 0,
            "ckpt_every": self.ckpt_every > 0, "keep_checkpoints": self.keep_checkpoints > 0,
            "num_workers": self.num_workers >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            raise ValueError(f"train.{k}={getattr(self, k)!r} is invalid (optimizer in {OPTIMIZERS}, precision in "
                             "auto/bf16/fp32, ema_decay in [0, 1), counts and lr positive)")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; `step` names the first bad step."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(f"non-finite loss at step {step}; training stopped, {kept}")
        self.step, self.checkpoint = step, checkpoint


class StepBatchSampler(Sampler[list[int]]):
    """Index batches as a pure function of (seed, step): epoch e is the permutation seeded by (seed, e)."""

    def __init__(self, length: int, batch_size: int, seed: int, start_step: int = 0, steps: int | None = None) -> None:
        self.length, self.batch_size, self.seed, self.start, self.steps = length, batch_size, seed, start_step, steps

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.length)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        epoch, perm = -1, None
        while self.steps is None or step < self.steps:
            idx = []
            pos = step * self.batch_size
            while len(idx) < self.batch_size:
                e, offset = divmod(pos, self.length)
                if e != epoch:
                    epoch, perm = e, self._perm(e)
                take = perm[offset:offset + self.batch_size - len(idx)]
                idx.extend(take.tolist())
                pos += len(take)
            yield idx
            step += 1

    def __len__(self) -> int:
        return (self.steps - self.start) if self.steps is not None else 2 ** 62


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW / Adam (fused on CUDA) or RAdam (foreach)."""
    params = list(params)
    fast: dict[str, Any] = {"fused": True} if device is not None and device.type == "cuda" else {"foreach": True}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **fast)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, **fast)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True,
                                 decoupled_weight_decay=weight_decay > 0)
    raise ValueError(f"unknown optimizer {name!r}: use one of {OPTIMIZERS}")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto/bf16); a no-op context otherwise."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def fit(model: DBAE, dataset: Dataset, cfg: TrainConfig, run_dir: str | Path, device: str | torch.device = "cpu",
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        on_checkpoint: Callable[[int, Path], None] | None = None) -> dict[str, Any]:
    """Train `model` on `dataset` for cfg.steps optimizer steps; resumes from run_dir/checkpoints if present.

    Returns {"step", "checkpoint", "ema": the EMA model, "history": [(step, metrics), ...]}.
    """
    device = torch.device(device)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas, device)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed)  # t, ε and z ~ q(z|x0) of the objective
    start, last_ckpt, state = 0, latest_checkpoint(ckpt_dir), None
    if last_ckpt is not None:
        state = load_checkpoint(last_ckpt, map_location=device)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log.info("resuming from %s (step %d)", last_ckpt, start)
    if start >= cfg.steps:
        return {"step": start, "checkpoint": last_ckpt, "ema": ema.model, "history": []}
    if cfg.compile:
        model.unet.compile()

    micro = cfg.batch_size
    sampler = StepBatchSampler(len(dataset), micro, cfg.seed, start * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                        prefetch_factor=4 if cfg.num_workers > 0 else None)
    batches = iter(loader)  # draws a worker seed from the global RNG: restore RNG state after this, not before
    if state is not None:
        set_rng_state(state["rng"])
        noise_gen.set_state(state["noise_rng"].cpu())
    check_every = 1 if device.type == "cpu" else cfg.log_every  # a NaN check is a host sync: only at log steps on GPU
    sums = torch.zeros(3, device=device)  # loss, loss_bridge, entropy over the log interval
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    history: list[tuple[int, dict[str, float]]] = []
    model.train()
    t_last, n_last = time.perf_counter(), start
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not cfg.progress, mininterval=2.0)
    for step in range(start + 1, cfg.steps + 1):
        for _ in range(cfg.grad_accum):
            x = _images(next(batches)).to(device, non_blocking=True)
            if cfg.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.precision):
                out = model.loss(x, generator=noise_gen)
            (out.loss / cfg.grad_accum).backward()
            terms = torch.stack([out.loss.detach(), out.loss_bridge.detach(), out.entropy.detach()]).float()
            sums += terms / cfg.grad_accum
            bad_step.masked_fill_((bad_step < 0) & ~torch.isfinite(terms[0]), step)  # no host sync
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        bar.update(1)

        last = step == cfg.steps
        at_log, at_ckpt = last or step % cfg.log_every == 0, last or step % cfg.ckpt_every == 0
        if (step % check_every == 0 or at_log or at_ckpt) and int(bad_step) >= 0:
            bar.close()  # stop before anything non-finite is logged or checkpointed
            raise NonFiniteLossError(int(bad_step), latest_checkpoint(ckpt_dir))
        if at_log:
            now = time.perf_counter()
            n = step - n_last
            loss, loss_bridge, entropy = (sums / n).tolist()
            metrics = {"train/loss": loss, "train/loss_bridge": loss_bridge, "train/entropy": entropy,
                       "train/images_per_s": n * cfg.grad_accum * micro / (now - t_last)}
            history.append((step, metrics))
            bar.set_postfix(loss=f"{loss:.4g}")
            log.debug("step %d %s", step, metrics)
            if on_log is not None:
                on_log(step, metrics)
            sums.zero_()
            t_last, n_last = time.perf_counter(), step
        if at_ckpt:
            last_ckpt = save_checkpoint(ckpt_dir, {
                "model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "rng": rng_state(), "noise_rng": noise_gen.get_state(),
                "model_config": dataclasses.asdict(model.cfg), "train_config": dataclasses.asdict(cfg),
            }, keep=cfg.keep_checkpoints)
            if on_checkpoint is not None:
                on_checkpoint(step, last_ckpt)
    bar.close()
    return {"step": cfg.steps, "checkpoint": last_ckpt, "ema": ema.model, "history": history}
