"""`dbae train` and `dbae register`: one training run, and its model in the MLflow registry."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dbae_platform.argtypes import name, storage_path
from dbae_platform.cli.flags import add_store_flags

__all__ = ["add_train", "add_register", "HANDLERS"]

log = logging.getLogger("dbae")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train one run on Ray Train, tracked in MLflow (rerun to resume)",
                       description="Train CONFIG (a preset name from configs/ or a YAML file) on Ray Train: local Ray "
                                   "unless RAY_ADDRESS is set, MLflow at --tracking-uri, $MLFLOW_TRACKING_URI or "
                                   "the embedded sqlite store under the runs directory. Rerunning the same command "
                                   "resumes from the newest checkpoint into the same MLflow run.")
    p.add_argument("config", metavar="CONFIG", help="preset name (tiny, shapes32, fashion32, celeba64, ffhq128) "
                                                    "or path to a YAML file")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="dotted override, repeatable: --set model.latent_dim=32 --set train.steps=200")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and parameter counts, then exit")
    p.add_argument("--storage-path", type=storage_path, metavar="DIR_OR_BUCKET",
                   help="runs directory (tracking.runs_dir): a directory, or a bucket (s3://BUCKET/PREFIX, "
                        "gs://BUCKET/PREFIX; then --tracking-uri too); default $DBAE_STORAGE_PATH, else runs")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (overrides MLFLOW_TRACKING_URI)")


def add_register(sub) -> None:
    p = sub.add_parser("register", help="register a run's model in the MLflow model registry (models:/NAME/VERSION)",
                       description="Log the model of RUN_OR_CHECKPOINT (an MLflow run id, or a checkpoint directory "
                                   "written by dbae train) to its MLflow run as an MLflow pyfunc model (EMA weights, "
                                   "config, latent prior when trained; predict() encodes or reconstructs images) "
                                   "and register it as a new version of NAME. Every command that takes a CHECKPOINT "
                                   "then accepts models:/NAME/VERSION.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="MLflow run id (32 hex digits) or checkpoint path")
    p.add_argument("model_name", metavar="NAME", type=name, help="registered model name, e.g. dbae-shapes")
    add_store_flags(p)


def _train(args: argparse.Namespace) -> int:
    from dbae_platform.config import load_config
    from dbae_platform.models import dry_run
    from dbae_platform.train import train
    where = [f"tracking.runs_dir={args.storage_path}"] if args.storage_path is not None else []
    cfg = load_config(args.config, [*where, *args.overrides])
    if args.dry_run:
        sys.stdout.write(dry_run(cfg) + "\n")
        return 0
    result = train(cfg, tracking_uri=args.tracking_uri)
    from dbae_platform.evaluate import format_table
    if result.metrics:
        sys.stdout.write(format_table(result.metrics) + "\n")
    log.info("finished %s at step %d: MLflow run %s (%s); checkpoint %s", cfg.name, result.step, result.run_id,
             result.tracking_uri, result.checkpoint)
    from dbae_platform.tracking import run_urls
    runs, run = run_urls(result.tracking_uri, result.run_id)
    embedded = result.tracking_uri == f"sqlite:///{Path(str(cfg.tracking.runs_dir)).resolve() / 'mlflow.db'}"
    serve = f" (serve it: dbae ui --runs-dir {cfg.tracking.runs_dir})" if embedded else ""
    sys.stdout.write(f"MLflow runs table: {runs}{serve}\nthis run: {run}\n")
    return 0


def _register(args: argparse.Namespace) -> int:
    from dbae_platform.registry import is_run_id, register, resolve_checkpoint
    from dbae_platform.storage import is_object_store
    from dbae_platform.tracking import resolve_uri, store_uri
    if is_object_store(args.source) or Path(args.source).exists():  # the checkpoint is read before any store is used
        resolve_checkpoint(args.source)
        uri = resolve_uri(args.tracking_uri, None, args.runs_dir.expanduser().resolve())
        from dbae_platform.tracking import check_reachable
        check_reachable(uri)
    elif is_run_id(args.source):
        uri = store_uri(args.tracking_uri, args.runs_dir)
    else:
        raise FileNotFoundError(f"{args.source} is neither a checkpoint path nor an MLflow run id (32 hex digits): "
                                "pass a checkpoint directory written by dbae train or a run id from the MLflow UI")
    done = register(args.source, args.model_name, uri)
    sys.stdout.write(f"registered {args.source} (MLflow run {done.run_id}) as {done.uri}\n"
                     f"use it as CHECKPOINT: dbae eval {done.uri}"
                     f"{'' if args.tracking_uri is None else f' --tracking-uri {args.tracking_uri}'}\n")
    return 0


HANDLERS = {"train": _train, "register": _register}
