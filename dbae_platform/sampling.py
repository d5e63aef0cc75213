"""How a latent becomes an image: the decoding settings (`Sampling`) and the Gaussian latent baseline
(`GaussianPrior`), shared by the evaluation suites, the training loop's image grids and `dbae generate`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Sampling", "GaussianPrior"]


@dataclass(frozen=True)
class Sampling:
    """How evaluation decodes: the reverse-bridge sampler, its steps and churn (DBAE; DiffAE decodes with DDIM over
    `steps`), and the networks' autocast precision ("auto": bf16 on CUDA, fp32 on the CPU)."""

    steps: int = 20
    method: str = "euler"
    churn: float = 0.0
    precision: str = "auto"

    def kwargs(self, model) -> dict:
        if getattr(model, "kind", "dbae") == "diffae":
            return {"steps": self.steps}
        return {"steps": self.steps, "method": self.method, "churn": self.churn}


class GaussianPrior:
    """z ~ N(μ, diag σ²) with μ, σ the per-dimension mean and std of encoded training latents (drawn on their
    device)."""

    def __init__(self, z: Tensor) -> None:
        self.mean, self.std = z.mean(0), z.std(0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + self.std * torch.randn(n, len(self.mean), generator=generator, device=self.mean.device)
