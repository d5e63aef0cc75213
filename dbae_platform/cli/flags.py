"""Flags that several commands share: where the MLflow store is, and the checkpoint a command reads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dbae_platform.argtypes import directory
from dbae_platform.storage import local_runs_dir

if TYPE_CHECKING:
    from dbae_platform.models import Run

__all__ = ["add_registry_flag", "add_store_flags", "checkpoint_run"]


def add_registry_flag(p: argparse.ArgumentParser) -> None:
    """--tracking-uri: the MLflow store a models:/ or runs:/ CHECKPOINT comes from."""
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI of a models:/ or runs:/ CHECKPOINT "
                                                         "(overrides MLFLOW_TRACKING_URI; default: the embedded "
                                                         "store under $DBAE_STORAGE_PATH, else runs)")


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """--tracking-uri and --runs-dir: the MLflow store a command reads."""
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (overrides MLFLOW_TRACKING_URI)")
    p.add_argument("--runs-dir", type=directory, default=Path(local_runs_dir()),
                   help="where the embedded store lives (default $DBAE_STORAGE_PATH unless a bucket, else runs)")


def checkpoint_run(args: argparse.Namespace) -> Run:
    """The Run of a command's CHECKPOINT (a path, or a models:/ or runs:/ URI from --tracking-uri), with its --set
    overrides, on its --device."""
    from dbae_platform.models import load_run
    from dbae_platform.registry import checkpoint_files
    return load_run(*checkpoint_files(args.checkpoint, args.tracking_uri), args.overrides, args.device)
