"""Flags that several commands share: where the MLflow store is."""

from __future__ import annotations

import argparse
from pathlib import Path

from dbae_platform.argtypes import directory
from dbae_platform.storage import local_runs_dir

__all__ = ["add_registry_flag", "add_store_flags"]


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
