"""A model applied to many images or latents in batches, on its device, with the results on the CPU: the images of a
dataset (`take`), their latents (`encode`) and the images of latents (`decode`), shared by the evaluation suites and
the generation commands."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from dbae_core.training import autocast
from dbae_platform.errors import ConfigError
from dbae_platform.sampling import Sampling

__all__ = ["take", "starts", "encode", "decode"]


def take(dataset: Dataset, n: int, seed: int, batch_size: int) -> tuple[Tensor, list[Tensor]]:
    """Images and stacked trailing labels of min(n, len) items: a seeded random subset (streamed data: the first n)."""
    if not isinstance(dataset, IterableDataset):
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, sorted(perm[:n].tolist()))
    images, extras, count = [], [], 0
    for batch in DataLoader(dataset, batch_size=min(batch_size, n), shuffle=False):
        batch = [batch] if torch.is_tensor(batch) else list(batch)
        images.append(batch[0].float())
        extras.append([torch.as_tensor(b) for b in batch[1:]])
        count += len(batch[0])
        if count >= n:
            break
    if not images:
        raise ConfigError("the dataset yielded no items: check data.root (--set data.root=DIR)")
    return torch.cat(images)[:n], [torch.cat(col)[:n] for col in zip(*extras)]


def starts(x: Tensor, batch_size: int, desc: str):
    """Start indices of x's batches, with a progress bar when there is more than one."""
    return tqdm(range(0, len(x), batch_size), desc=desc, leave=False, disable=len(x) <= batch_size)


@torch.no_grad()
def encode(model: nn.Module, images: Tensor, batch_size: int, device: torch.device, precision: str = "auto",
           sample: bool = False, seed: int = 0) -> tuple[Tensor, float]:
    """Posterior means (draws z = μ + σ ε, seeded, with `sample`) and the wall-clock encoding time in ms per image."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device).manual_seed(seed) if sample else None
    sync()
    t0 = time.perf_counter()
    with autocast(device, precision):
        z = torch.cat([model.encode(images[i:i + batch_size].to(device), sample=sample, generator=gen).float().cpu()
                       for i in starts(images, batch_size, "encode")])
    sync()
    return z, 1000 * (time.perf_counter() - t0) / max(len(images), 1)


@torch.no_grad()
def decode(model: nn.Module, z: Tensor, sampling: Sampling, batch_size: int, device: torch.device,
           desc: str = "decode", generator: torch.Generator | None = None) -> Tensor:
    """model.decode with `sampling`'s settings (DBAE: x_T = Dec(z) → reverse bridge; DiffAE: random x_T → DDIM)."""
    with autocast(device, sampling.precision):
        return torch.cat([model.decode(z[i:i + batch_size].to(device), generator=generator, **sampling.kwargs(model))
                          [0].float().cpu() for i in starts(z, batch_size, desc)])
