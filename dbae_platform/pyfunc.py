"""A registered DBAE as an MLflow pyfunc model, loadable by URI wherever MLflow runs:

    model = mlflow.pyfunc.load_model("models:/dbae-shapes/1")
    z = model.predict(images)                                          # posterior means, (N, d)
    x = model.predict(images, params={"output": "reconstruction", "steps": 20})

Input: float32 images (N, C, H, W) in [-1, 1], the datasets' normalisation. Output: the posterior means z
(`output="latent"`, the default) or reconstructions in [-1, 1] (`output="reconstruction"`): DBAE decodes x_T = Dec(z)
through the reverse bridge with `steps` Euler steps; DiffAE decodes from its inferred x_T (DDIM inversion, `steps`
steps each way), as the evaluation's `eval/*` reconstruction does. The weights are the run's EMA weights, read from
the model's `checkpoint` artifact (dbae_platform.registry writes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

__all__ = ["DEFAULT_PARAMS", "DBAEModel"]

DEFAULT_PARAMS: dict[str, Any] = {"output": "latent", "steps": 20}
OUTPUTS = ("latent", "reconstruction")


class DBAEModel(mlflow.pyfunc.PythonModel):
    """Encode or reconstruct images with the EMA weights of a trained DBAE, DBAE-d or DiffAE."""

    def load_context(self, context) -> None:
        from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
        from dbae_platform.models import load_model
        state = load_checkpoint(Path(context.artifacts["checkpoint"]) / "state.pt", required=WEIGHTS_KEYS)
        self.model = load_model(state)

    @torch.no_grad()
    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        p = {**DEFAULT_PARAMS, **(params or {})}
        if p["output"] not in OUTPUTS:
            raise ValueError(f"params output={p['output']!r} is unknown: use one of {', '.join(OUTPUTS)}")
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        z = self.model.encode(x)
        if p["output"] == "latent":
            return z.numpy()
        steps = int(p["steps"])
        if getattr(self.model, "kind", "dbae") == "diffae":
            x_T = self.model.invert(x, z, steps)[0]
            return self.model.decode(z, steps, x_T=x_T, clip=False)[0].numpy()
        return self.model.decode(z, steps)[0].numpy()
