"""`dbae ui`: the MLflow UI of the embedded store on this machine."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from dbae_platform.argtypes import directory, host, port
from dbae_platform.storage import local_runs_dir

__all__ = ["add_ui", "HANDLERS"]

log = logging.getLogger("dbae")


def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="serve the MLflow UI for the embedded store on 127.0.0.1",
                       description="Serve the MLflow UI of the embedded store (sqlite:///RUNS/mlflow.db) on "
                                   "127.0.0.1 with one worker and job execution off. Ctrl-C stops it.")
    p.add_argument("--port", type=port, default=5000, help="TCP port, 1-65535 (default 5000)")
    p.add_argument("--host", type=host, default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--runs-dir", type=directory, default=Path(local_runs_dir()),
                   help="where the embedded store lives (default $DBAE_STORAGE_PATH unless a bucket, else runs)")


def _browsable(host: str) -> str:
    """The address a browser on this machine uses for a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host


def _print_experiments(uri: str, ui: str, limit: int = 10) -> None:
    """The runs-table URL of the store's newest experiments (tagged as model training, so the UI opens them there)."""
    from dbae_platform.tracking import mark_training_experiment, mlflow_client, ui_url
    client = mlflow_client(uri)
    experiments = [e for e in client.search_experiments(order_by=["last_update_time DESC"], max_results=limit + 1)
                   if e.name != "Default"][:limit]
    for exp in experiments:
        mark_training_experiment(client, exp)
    lines = [f"  {e.name}: {ui_url(uri, e.experiment_id, ui=ui)}" for e in experiments]
    sys.stdout.write("runs tables (newest first):\n" + "\n".join(lines) + "\n" if lines else
                     f"no experiments yet: open {ui}\n")
    sys.stdout.flush()


def _ui(args: argparse.Namespace) -> int:
    from dbae_platform.config import ConfigError
    runs = args.runs_dir.expanduser().resolve()
    db = runs / "mlflow.db"
    if not db.is_file():
        raise ConfigError(f"no MLflow store at {db}: train something first (dbae train tiny) or pass --runs-dir")
    try:
        with socket.socket() as s:
            in_use = s.connect_ex((args.host, args.port)) == 0
    except OSError as err:  # an unknown host name
        raise ConfigError(f"--host {args.host} cannot be used ({err}): pass a local address such as 127.0.0.1") \
            from None
    if in_use:
        raise ConfigError(f"port {args.port} on {args.host} is already in use: pass --port with a free one")
    mlflow = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if mlflow is None:
        raise ConfigError("the mlflow command is not installed in this environment: run `make install`")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [mlflow, "server", "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root",
           str(runs / "mlartifacts"), "--host", args.host, "--port", str(args.port), "--workers", "1"]
    _print_experiments(f"sqlite:///{db}", f"http://{_browsable(args.host)}:{args.port}")
    log.info("MLflow UI at http://%s:%d (Ctrl-C stops it)", args.host, args.port)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


HANDLERS = {"ui": _ui}
