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
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from dbae_core.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dbae_core.distributed import rank_world, wrap_distributed
from dbae_core.ema import EMA
from dbae_core.fastpath import (
    ATTENTION,
    OPTIMIZER_KERNELS,
    REFERENCE,
    ExecutionPlan,
    configure,
    execution_plan,
    optimizer_kernel,
)
from dbae_core.model import DBAE

__all__ = ["TrainConfig", "NonFiniteLossError", "fit", "make_optimizer", "StepBatchSampler", "autocast", "step_seed",
           "Checkpointer", "local_checkpointer", "OPTIMIZERS"]

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
    # Execution settings (dbae_core.fastpath): speed and memory only, the same model and loss.
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"
    channels_last: bool = True  # applied on CUDA only
    compile: bool = False  # torch.compile the UNet (first steps pay the compilation)
    fused_optimizer: bool = True  # fused (CUDA; RAdam has no fused kernel: foreach) or foreach optimizer + clipping
    foreach_ema: bool = True
    attention: str = "sdpa"  # "sdpa" (scaled_dot_product_attention) or "plain" (explicit softmax(qkᵀ/√d)v)
    activation_checkpointing: bool = False  # recompute UNet blocks in backward: for large batches at 128/256 px
    reference: bool = False  # run as the release does: overrides the settings above with fastpath.REFERENCE
    log_every: int = 50
    ckpt_every: int = 500
    image_every: int = 0  # steps between `on_images` calls (image grids); 0 disables
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "steps": (self.steps > 0, "a positive integer"),
            "batch_size": (self.batch_size > 0, "a positive integer"),
            "grad_accum": (self.grad_accum > 0, "a positive integer"),
            "optimizer": (self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}"),
            "lr": (self.lr > 0, "a positive number"),
            "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
            "ema_decay": (0 <= self.ema_decay < 1, "a number in [0, 1)"),
            "grad_clip": (self.grad_clip >= 0, "a number >= 0 (0 disables clipping)"),
            "precision": (self.precision in ("auto", "bf16", "fp32"), "'auto', 'bf16' or 'fp32'"),
            "attention": (self.attention in ATTENTION, f"one of {ATTENTION}"),
            "log_every": (self.log_every > 0, "a positive integer"),
            "ckpt_every": (self.ckpt_every > 0, "a positive integer"),
            "image_every": (self.image_every >= 0, "an integer >= 0 (0: no image grids)"),
            "keep_checkpoints": (self.keep_checkpoints > 0, "a positive integer"),
            "num_workers": (self.num_workers >= 0, "an integer >= 0 (data-loader processes)"),
        }
        for key, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"train.{key}={getattr(self, key)} is invalid: allowed is {allowed}")

    def execution(self) -> TrainConfig:
        """The settings a run executes with: these, or the reference path's when `reference` is set."""
        return dataclasses.replace(self, **REFERENCE) if self.reference else self


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; `step` names the first bad step."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(f"non-finite loss at step {step}; training stopped, {kept}")
        self.step, self.checkpoint = step, checkpoint

    def __reduce__(self):  # rebuilt from its arguments, so it crosses process boundaries (Ray) intact
        return type(self), (self.step, self.checkpoint)


class StepBatchSampler(Sampler[list[int]]):
    """Index batches as a pure function of (seed, step): epoch e is the permutation seeded by (seed, e).

    Under data parallelism each step draws one global batch of `batch_size · world_size` indices and rank r takes
    rows [r·B, (r+1)·B): w workers × batch B see exactly the images one worker with batch w·B sees.
    """

    def __init__(self, length: int, batch_size: int, seed: int, start_step: int = 0, steps: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.length, self.batch_size, self.seed, self.start, self.steps = length, batch_size, seed, start_step, steps
        self.rank, self.world_size = rank, world_size

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.length)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        epoch, perm = -1, None
        global_batch = self.batch_size * self.world_size
        while self.steps is None or step < self.steps:
            idx: list[int] = []
            pos = step * global_batch
            while len(idx) < global_batch:
                e, offset = divmod(pos, self.length)
                if e != epoch:
                    epoch, perm = e, self._perm(e)
                take = perm[offset:offset + global_batch - len(idx)]
                idx.extend(take.tolist())
                pos += len(take)
            yield idx[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            step += 1

    def __len__(self) -> int:
        return (self.steps - self.start) if self.steps is not None else 2 ** 62


def step_seed(seed: int, micro_step: int) -> int:
    """The noise seed of one micro-step: t, ε and z ~ q(z|x0) are a pure function of (seed, step), as the data is."""
    return int(np.random.SeedSequence([seed, micro_step]).generate_state(1, np.uint64)[0] >> 1)


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                   device: torch.device | None = None, fused: bool = True,
                   kernel: str | None = None) -> torch.optim.Optimizer:
    """AdamW / Adam (fused kernels on CUDA, else foreach) or RAdam (foreach); `fused=False`: per-parameter loops.

    `kernel` ("fused", "foreach" or "loop") overrides that choice, e.g. the fused kernel on the CPU."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {OPTIMIZERS}")
    kernel = kernel or optimizer_kernel(name, device, fused)
    if kernel not in OPTIMIZER_KERNELS:
        raise ValueError(f"optimizer kernel {kernel!r} is invalid: use one of {OPTIMIZER_KERNELS}")
    if kernel == "fused" and name == "radam":
        raise ValueError("radam has no fused kernel: use kernel 'foreach' or 'loop'")
    params = list(params)
    impl: dict[str, Any] = {"fused": True} if kernel == "fused" else {"foreach": kernel == "foreach"}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **impl)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, **impl)
    return torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=weight_decay,
                             decoupled_weight_decay=weight_decay > 0, **impl)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto/bf16); a no-op context otherwise."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _stream(dataset: IterableDataset, batch_size: int, num_workers: int, pin: bool) -> Iterator[Any]:
    """Endless batches from a streaming dataset (it shards itself per rank), calling set_epoch on each pass."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin, drop_last=True,
                        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    epoch = 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"the streaming dataset yields fewer than batch_size={batch_size} items per rank")
        epoch += 1


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class Checkpointer(Protocol):
    def __call__(self, step: int, state: dict[str, Any] | None) -> Path | None: ...


def local_checkpointer(run_dir: str | Path, keep: int) -> Checkpointer:
    """Write step_<N>.pt files into run_dir/checkpoints, keeping the newest `keep` (the one-process default)."""
    directory = Path(run_dir) / "checkpoints"
    return lambda step, state: save_checkpoint(directory, state, keep=keep) if state is not None else None


def fit(model: DBAE, dataset: Dataset, cfg: TrainConfig, run_dir: str | Path | None = None,
        device: str | torch.device = "cpu", on_log: Callable[[int, dict[str, float]], None] | None = None,
        on_checkpoint: Callable[[int, Path], None] | None = None, *, resume: dict[str, Any] | None = None,
        checkpointer: Checkpointer | None = None, on_images: Callable[[int, nn.Module], None] | None = None,
        progress: Callable[..., Any] | None = None, plan: ExecutionPlan | None = None) -> dict[str, Any]:
    """Train `model` on `dataset` for cfg.steps optimizer steps; resumes from `resume` or run_dir/checkpoints.

    Under torch.distributed (initialised by the caller, e.g. Ray Train) the model runs as DDP: each rank takes its
    slice of one global batch and of one global noise draw, so w ranks × batch B equal one rank × batch w·B. Rank 0
    alone writes checkpoints and calls `on_images`; `on_log` and `checkpointer` run on every rank (state is None
    off rank 0). `plan` overrides what the execution settings resolve to on `device` (fastpath.execution_plan), e.g.
    to run the CUDA choices on the CPU. Returns {"step", "checkpoint", "ema": the EMA model, "history": [(step,
    metrics), ...]}.
    """
    device = torch.device(device)
    rank, world = rank_world()
    run = cfg.execution()
    plan = plan or execution_plan(run, device)
    if checkpointer is None:
        if run_dir is None:
            raise ValueError("fit needs run_dir or a checkpointer")
        checkpointer = local_checkpointer(run_dir, cfg.keep_checkpoints)
    found = None
    if resume is None and run_dir is not None:
        found = latest_checkpoint(Path(run_dir) / "checkpoints")
        resume = load_checkpoint(found, map_location=device) if found is not None else None
        if found is not None:
            log.info("resuming from %s (step %d)", found, int(resume["step"]))
    torch.manual_seed(cfg.seed)
    configure(model.to(device), device, attention=run.attention, channels_last=False,
              activation_checkpointing=run.activation_checkpointing)
    if plan.channels_last:  # NHWC weights here, NHWC batches in the loop
        model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, foreach=run.foreach_ema)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas, device,
                         kernel=plan.optimizer_kernel)
    start, last_ckpt = 0, found
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.model.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        for group in opt.param_groups:  # a rerun may change the learning rate (config.RESUMABLE_KEYS)
            group["lr"] = cfg.lr
        start = int(resume["step"])
    if start >= cfg.steps:
        return {"step": start, "checkpoint": last_ckpt, "ema": ema.model, "history": []}
    net: nn.Module = model
    if world > 1:  # one process pays no DDP overhead
        net = wrap_distributed(model, device, sync_batchnorm=plan.sync_batchnorm)
    if plan.compile:
        model.unet.compile()

    micro = cfg.batch_size
    if isinstance(dataset, IterableDataset):  # streamed shards: order is the dataset's, not a function of the step
        batches = _stream(dataset, micro, cfg.num_workers, device.type == "cuda")
    else:
        sampler = StepBatchSampler(len(dataset), micro, cfg.seed, start * cfg.grad_accum,
                                   cfg.steps * cfg.grad_accum, rank=rank, world_size=world)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                            prefetch_factor=4 if cfg.num_workers > 0 else None)
        batches = iter(loader)  # draws a worker seed from the global RNG: restore RNG state after this, not before
    if resume is not None and "rng" in resume:
        set_rng_state(resume["rng"])
    noise_gen = torch.Generator(device)
    # A NaN check is a host sync: every step in one CPU process, else only where something is logged or saved.
    check_each_step = device.type == "cpu" and world == 1
    sums = torch.zeros(3, device=device)  # loss, loss_bridge, entropy over the log interval
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    history: list[tuple[int, dict[str, float]]] = []
    net.train()
    t_last, n_last = time.perf_counter(), start
    bar_factory = progress or tqdm
    bar = bar_factory(total=cfg.steps, initial=start, desc="train", disable=not cfg.progress or rank != 0,
                      mininterval=2.0)
    for step in range(start + 1, cfg.steps + 1):
        for j in range(cfg.grad_accum):
            x = _images(next(batches)).to(device, non_blocking=True)
            if plan.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            noise_gen.manual_seed(step_seed(cfg.seed, (step - 1) * cfg.grad_accum + j))
            sync = j == cfg.grad_accum - 1 or world == 1
            with contextlib.nullcontext() if sync else net.no_sync():
                with autocast(device, plan.precision):
                    terms = net(x, noise_gen, (rank, world))
                (terms[0] / cfg.grad_accum).backward()
            terms = terms.detach()
            sums += terms / cfg.grad_accum
            bad_step.masked_fill_((bad_step < 0) & ~torch.isfinite(terms[0]), step)  # no host sync
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=plan.optimizer_kernel != "loop")
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        bar.update(1)

        last = step == cfg.steps
        at_log, at_ckpt = last or step % cfg.log_every == 0, last or step % cfg.ckpt_every == 0
        at_images = on_images is not None and rank == 0 and cfg.image_every > 0 and step % cfg.image_every == 0
        if check_each_step or at_log or at_ckpt:
            if world > 1:
                dist.all_reduce(bad_step, op=dist.ReduceOp.MAX)
            if int(bad_step) >= 0:
                bar.close()  # stop before anything non-finite is logged or checkpointed
                raise NonFiniteLossError(int(bad_step), last_ckpt)
        if at_log:
            if world > 1:
                dist.all_reduce(sums)
                sums /= world
            now = time.perf_counter()
            n = step - n_last
            loss, loss_bridge, entropy = (sums / n).tolist()
            metrics = {"train/loss": loss, "train/loss_bridge": loss_bridge, "train/entropy": entropy,
                       "train/images_per_s": n * cfg.grad_accum * micro * world / (now - t_last)}
            history.append((step, metrics))
            bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{metrics['train/images_per_s']:.1f}")
            log.debug("step %d %s", step, metrics)
            if on_log is not None:
                on_log(step, metrics)
            sums.zero_()
            t_last, n_last = time.perf_counter(), step
        if at_images:
            on_images(step, ema.model)
        if at_ckpt:
            state = None if rank != 0 else {
                "model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "rng": rng_state(), "model_kind": getattr(model, "kind", "dbae"),
                "model_config": dataclasses.asdict(model.cfg), "train_config": dataclasses.asdict(cfg)}
            last_ckpt = checkpointer(step, state) or last_ckpt
            if on_checkpoint is not None and last_ckpt is not None:
                on_checkpoint(step, last_ckpt)
    bar.close()
    return {"step": cfg.steps, "checkpoint": last_ckpt, "ema": ema.model, "history": history}
