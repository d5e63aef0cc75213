"""A model or dataset built from a config or a checkpoint, and where a run keeps its files: what the Ray Train
workers, `dbae eval`, the generation commands, the registry and the report share."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dbae_core.autoencoders import config_from_dict, model_from_config
from dbae_core.data import make_dataset
from dbae_platform import storage
from dbae_platform.config import Config, ConfigError
from dbae_platform.storage import StoragePath

__all__ = ["STATE_FILE", "RESULT_FILE", "EVAL_DIR", "pick_device", "build_model", "weights_state", "load_model",
           "Run", "load_run", "build_datasets", "run_paths", "parameter_counts", "dry_run"]

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
RESULT_FILE = "result.json"
EVAL_DIR = "eval"  # in the final checkpoint: the evaluation's image grids


def pick_device(name: str) -> torch.device:
    """The device a command's --device asks for: "cpu", "cuda" (an error without one) or "auto" (CUDA when visible)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def build_model(cfg: Config) -> torch.nn.Module:
    """The autoencoder that `model.method` selects (DBAE, DBAE-d or DiffAE), with the sizes of `cfg`."""
    return model_from_config(cfg.model_config())


def weights_state(state: dict[str, Any]) -> dict[str, Any]:
    """What a model needs of a training state to be rebuilt with its EMA weights (load_model): `ema.pt` of a run, and
    the `state.pt` of a registered model (dbae_platform.registry)."""
    return {k: state[k] for k in ("ema", "step", "model_kind", "model_config") if k in state}


def load_model(state: dict[str, Any], ema: bool = True) -> torch.nn.Module:
    """A model rebuilt from a checkpoint's recorded config, with its EMA (default) or raw weights."""
    kind = state.get("model_kind", "dbae")
    if kind not in ("dbae", "diffae"):
        raise ConfigError(f"checkpoint holds a {kind!r} model, which this version cannot load")
    model = model_from_config(config_from_dict(state["model_config"], kind))
    model.load_state_dict(state["ema" if ema else "model"])
    return model.eval()


@dataclass(frozen=True)
class Run:
    """A checkpoint's EMA model, config and step, on a device; default outputs go below `directory`."""

    directory: Path  # where state.pt lives: default outputs go below it
    cfg: Config
    model: nn.Module
    step: int
    device: torch.device

    @property
    def diffae(self) -> bool:
        return getattr(self.model, "kind", "dbae") == "diffae"


def load_run(state_path: Path, cfg_path: Path, overrides: list[str], device: str) -> Run:
    """The EMA model, config and step of a checkpoint's state file and config.yaml (what
    registry.checkpoint_files makes of a command's CHECKPOINT), on `device`."""
    from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
    from dbae_platform.config import load_config
    state = load_checkpoint(state_path, required=WEIGHTS_KEYS)
    cfg = load_config(cfg_path, overrides)
    on = pick_device(device)
    model = load_model(state).to(on)
    log.info("%s model (%.2fM parameters) at step %d from %s", getattr(model, "kind", "dbae"),
             model.parameter_counts()["total"] / 1e6, int(state["step"]), state_path)
    return Run(state_path.parent, cfg, model, int(state["step"]), on)


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(train, test) datasets of `cfg.data`; train limited to data.train_images, flipped when data.flip."""
    d = cfg.data
    train_opts: dict[str, Any] = {}
    if d.dataset == "shapes":
        train_opts = {"length": d.train_images, "seed": cfg.train.seed}
    if d.dataset == "parquet":  # streamed; shards split per rank and per loader worker inside the dataset
        train_opts = {"shuffle": True, "seed": cfg.train.seed, "drop_last": True}
    if d.flip:
        train_opts["flip"] = True
    try:
        train = make_dataset(d.dataset, "train", d.size, d.root, **train_opts)
        test = make_dataset(d.dataset, "test", d.size, d.root,
                            **({"seed": cfg.train.seed} if d.dataset == "shapes" else {}))
    except (OSError, ValueError) as err:
        raise ConfigError(f"data: {err}") from None
    if d.train_images is not None and d.dataset not in ("shapes", "parquet") and d.train_images < len(train):
        train = Subset(train, range(d.train_images))
    return train, test


def run_paths(cfg: Config) -> tuple[StoragePath, StoragePath]:
    """(runs directory, this run's directory): Ray Train's storage_path and storage_path/name, each a local Path or,
    for an s3:// or gs:// runs directory, an ObjectPath."""
    runs_dir = storage.location(cfg.tracking.runs_dir)
    return runs_dir, runs_dir / cfg.name


def parameter_counts(cfg: Config) -> dict[str, int]:
    """The model's parameter counts per part and in total, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return build_model(cfg).parameter_counts()


def dry_run(cfg: Config) -> str:
    """The resolved config as YAML and the parameter counts per part (built on the meta device: no memory)."""
    counts = parameter_counts(cfg)
    parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items() if k != "total")
    return f"{cfg.to_yaml()}\nparameters: total {counts['total'] / 1e6:.2f}M ({counts['total']:,}), {parts}"
