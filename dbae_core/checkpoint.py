"""Checkpoints: one file per step (model, EMA, optimizer, step, RNG, config), written atomically, newest few kept."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "REQUIRED_KEYS", "WEIGHTS_KEYS", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{9})\.pt$")
REQUIRED_KEYS = ("model", "ema", "optimizer", "step")  # what every training state holds
WEIGHTS_KEYS = ("ema", "step")  # what evaluation and sampling read: also a registered model's weights-only state


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or not one of ours."""


def rng_state() -> dict[str, Any]:
    """Global RNG states, as tensors and plain numbers only (so checkpoints load with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` (which must hold at least model, ema, optimizer, step) as step_<N>.pt; keep the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{int(state['step']):09d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint under the final name
    for old in _checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest step_<N>.pt in `directory`, or None."""
    found = _checkpoints(Path(directory))
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; a bad file, or one without the `required` keys, raises
    CheckpointError naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a step_<N>.pt file written by training")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)  # never unpickles code
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}): it is truncated or not a "
                              "torch file; delete it to resume from the previous one") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: it was not written by dbae training")
    return state
