"""The `dbae train`, `eval`, `sweep`, `table`, `report` and `ui` commands: parsers and handlers (wired up in cli.py)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from dbae_platform.argtypes import (
    checkpoint_ref,
    directory,
    existing_file,
    host,
    name,
    output_file,
    port,
    positive,
    storage_path,
)
from dbae_platform.storage import local_runs_dir
from dbae_platform.tracking import TrackingError

__all__ = ["add_train", "add_eval", "add_register", "add_registry_flag", "add_ui", "add_sweep", "add_table",
           "add_report", "HANDLERS", "TrackingError"]

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


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: metrics JSON, image grids and a table",
                       description="Evaluate the EMA weights of CHECKPOINT (a Ray Train checkpoint directory, its "
                                   "state.pt, a step_<N>.pt file, or a registered model: models:/NAME/VERSION, "
                                   "runs:/RUN_ID/model) on the run's dataset. Writes metrics.json and image grids "
                                   "beside the checkpoint (or in --out) and prints a table.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=checkpoint_ref)
    p.add_argument("--suite", default=None, help="comma-separated suites from recon,probe,disentangle,generation "
                                                 "(default: the run's eval.suites)")
    p.add_argument("--n", type=positive(int), default=None, help="held-out images per suite (default: eval.n)")
    p.add_argument("--sampler-steps", type=positive(int), default=None)
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override the run's config, e.g. --set data.root=/data/celeba")
    p.add_argument("--out", type=directory, default=None, help="output directory (default: beside the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_registry_flag(p)


def add_registry_flag(p: argparse.ArgumentParser) -> None:
    """--tracking-uri: the MLflow store a models:/ or runs:/ CHECKPOINT comes from."""
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI of a models:/ or runs:/ CHECKPOINT "
                                                         "(overrides MLFLOW_TRACKING_URI; default: the embedded "
                                                         "store under $DBAE_STORAGE_PATH, else runs)")


def add_register(sub) -> None:
    p = sub.add_parser("register", help="register a run's model in the MLflow model registry (models:/NAME/VERSION)",
                       description="Log the model of RUN_OR_CHECKPOINT (an MLflow run id, or a checkpoint directory "
                                   "written by dbae train) to its MLflow run as an MLflow pyfunc model (EMA weights, "
                                   "config, latent prior when trained; predict() encodes or reconstructs images) "
                                   "and register it as a new version of NAME. Every command that takes a CHECKPOINT "
                                   "then accepts models:/NAME/VERSION.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="MLflow run id (32 hex digits) or checkpoint path")
    p.add_argument("model_name", metavar="NAME", type=name, help="registered model name, e.g. dbae-shapes")
    _add_store_flags(p)


def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="serve the MLflow UI for the embedded store on 127.0.0.1",
                       description="Serve the MLflow UI of the embedded store (sqlite:///RUNS/mlflow.db) on "
                                   "127.0.0.1 with one worker and job execution off. Ctrl-C stops it.")
    p.add_argument("--port", type=port, default=5000, help="TCP port, 1-65535 (default 5000)")
    p.add_argument("--host", type=host, default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--runs-dir", type=directory, default=Path(local_runs_dir()),
                   help="where the embedded store lives (default $DBAE_STORAGE_PATH unless a bucket, else runs)")


def add_sweep(sub) -> None:
    from dbae_platform.sweep_cli import add_study_flags
    p = sub.add_parser("sweep", help="run a study defined in YAML (Ray Tune + Optuna, MLflow parent/child runs)",
                       description="Run the study in STUDY.yaml (keys: name, preset, space, search, metric, mode, "
                                   "num_samples, seeds, overrides, asha, max_concurrent_trials; see sweeps/*.yaml). "
                                   "Ends with the ablation table.")
    p.add_argument("study", metavar="STUDY.yaml", type=existing_file)
    add_study_flags(p)


def add_table(sub) -> None:
    p = sub.add_parser("table", help="print a sweep's ablation table, rebuilt from MLflow (also while it runs)",
                       description="Rebuild the ablation table of the newest sweep in EXPERIMENT (e.g. "
                                   "sweep/latent_dim) from its MLflow child runs and print it; unfinished trials "
                                   "count with the metrics they have so far.")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--parent-run", metavar="RUN_ID", help="a given sweep's parent run (default: the newest)")
    _add_store_flags(p)
    p.add_argument("--format", choices=("md", "csv"), default="md")
    p.add_argument("--out", type=directory, help="also write ablation.md/.csv/.parquet and the plots here")


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write the results document (tables, plots, the paper's claims) from MLflow",
                       description="Write a markdown results document from the newest sweep of every sweep/* "
                                   "experiment in the MLflow store: the method comparison (DBAE, DBAE-d, DiffAE) with "
                                   "a check of each of the paper's claims, and the ablation tables with plots. "
                                   "Pictures go to a folder named after the document.")
    _add_store_flags(p)
    p.add_argument("--out", type=output_file, default=Path("docs/results.md"),
                   help="the document (default docs/results.md)")
    p.add_argument("--include-smoke", action="store_true", help="also report the sweeps run with --smoke")


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    """--tracking-uri and --runs-dir: the MLflow store a command reads."""
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (overrides MLFLOW_TRACKING_URI)")
    p.add_argument("--runs-dir", type=directory, default=Path(local_runs_dir()),
                   help="where the embedded store lives (default $DBAE_STORAGE_PATH unless a bucket, else runs)")


def _store_uri(args: argparse.Namespace) -> str:
    """The tracking URI of --tracking-uri / $MLFLOW_TRACKING_URI / --runs-dir; a missing or unusable store is bad
    input."""
    from dbae_platform.tracking import check_reachable, resolve_uri
    uri = resolve_uri(args.tracking_uri, None, args.runs_dir.expanduser().resolve())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: pass --runs-dir or "
                                "--tracking-uri of the sweeps")
    check_reachable(uri)
    return uri


def _check_parent_run(uri: str, run_id: str | None) -> None:
    """--parent-run names a run in the store (one line otherwise, not MLflow's traceback)."""
    if run_id is None:
        return
    from mlflow.exceptions import MlflowException

    from dbae_platform.tracking import mlflow_client
    try:
        mlflow_client(uri).get_run(run_id)
    except MlflowException:
        raise LookupError(f"--parent-run {run_id} is not a run in the MLflow store {uri}: pass a sweep's parent run "
                          "id (see the MLflow UI), or leave it out for the newest sweep") from None


def _report(args: argparse.Namespace) -> int:
    from dbae_platform.report import write_report
    from dbae_platform.tracking import command_line
    out = write_report(_store_uri(args), args.out, command_line(), include_smoke=args.include_smoke)
    sys.stdout.write(f"wrote {out}\n")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from dbae_platform.sweep_cli import run_study
    from dbae_platform.tune import load_study
    return run_study(load_study(args.study), args)


def _table(args: argparse.Namespace) -> int:
    from dbae_platform import ablation
    uri = _store_uri(args)
    _check_parent_run(uri, args.parent_run)
    table, swept, parent = ablation.table_from_mlflow(uri, args.experiment, args.parent_run, include_unfinished=True)
    if args.format == "csv":
        import io

        import pyarrow.csv
        buf = io.BytesIO()
        pyarrow.csv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().decode())
    else:
        sys.stdout.write(f"sweep {parent.data.tags.get('dbae.sweep.name', '?')} (parent run {parent.info.run_id}, "
                         f"{parent.info.status}):\n\n{ablation.to_markdown(table)}\n")
    if args.out is not None:
        paths = ablation.write_table(table, args.out)
        plots = ablation.plot_metrics(table, swept, args.out) if table.num_rows else []
        log.info("wrote %s", ", ".join(str(p) for p in [*paths.values(), *plots]))
    return 0


def _train(args: argparse.Namespace) -> int:
    from dbae_platform.config import load_config
    from dbae_platform.train import dry_run, train
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


def checkpoint_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """(state file, config.yaml) of args.checkpoint: a path, or a models:/ or runs:/ URI from --tracking-uri."""
    from dbae_platform.registry import is_model_uri, resolve_checkpoint
    uri = args.tracking_uri
    if uri is not None:  # a bad flag is bad input, whether or not CHECKPOINT needs it
        from dbae_platform.tracking import check_reachable
        check_reachable(uri)
    elif is_model_uri(args.checkpoint):  # the store a URI comes from must exist
        uri = _store_uri(argparse.Namespace(tracking_uri=None, runs_dir=Path(local_runs_dir())))
    state_path, cfg_path = resolve_checkpoint(args.checkpoint, uri)
    if cfg_path is None:
        raise FileNotFoundError(f"no config.yaml beside {state_path}: the run's dataset is unknown; pass a checkpoint "
                                "directory written by dbae train")
    return state_path, cfg_path


def _register(args: argparse.Namespace) -> int:
    from dbae_platform.registry import is_run_id, register, resolve_checkpoint
    from dbae_platform.storage import is_object_store
    from dbae_platform.tracking import resolve_uri
    if is_object_store(args.source) or Path(args.source).exists():  # the checkpoint is read before any store is used
        resolve_checkpoint(args.source)
        uri = resolve_uri(args.tracking_uri, None, args.runs_dir.expanduser().resolve())
        from dbae_platform.tracking import check_reachable
        check_reachable(uri)
    elif is_run_id(args.source):
        uri = _store_uri(args)
    else:
        raise FileNotFoundError(f"{args.source} is neither a checkpoint path nor an MLflow run id (32 hex digits): "
                                "pass a checkpoint directory written by dbae train or a run id from the MLflow UI")
    done = register(args.source, args.model_name, uri)
    sys.stdout.write(f"registered {args.source} (MLflow run {done.run_id}) as {done.uri}\n"
                     f"use it as CHECKPOINT: dbae eval {done.uri}"
                     f"{'' if args.tracking_uri is None else f' --tracking-uri {args.tracking_uri}'}\n")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
    from dbae_platform.config import SUITES, ConfigError, load_config
    from dbae_platform.evaluate import evaluate, format_table, write_metrics_json
    from dbae_platform.train import build_datasets, load_model
    state_path, cfg_path = checkpoint_files(args)
    state = load_checkpoint(state_path, required=WEIGHTS_KEYS)
    cfg = load_config(cfg_path, args.overrides)
    suites = tuple(s.strip() for s in args.suite.split(",") if s.strip()) if args.suite else cfg.eval.suites
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise ConfigError(f"--suite {bad[0]!r} is unknown: use a comma-separated list from {','.join(SUITES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    model = load_model(state).to(device)
    train, test = build_datasets(cfg)
    out = args.out or state_path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(model, train=train, test=test, suites=suites, n=args.n or cfg.eval.n, out_dir=out,
                       device=device, sampler_steps=args.sampler_steps or cfg.eval.sampler_steps,
                       sampler=cfg.eval.sampler, churn=cfg.eval.churn, precision=cfg.eval.precision,
                       batch_size=cfg.eval.batch_size, sample_z=cfg.eval.sample_z,
                       prior_steps=cfg.eval.prior_steps, prior_images=cfg.eval.prior_images,
                       gaussian_baseline=cfg.eval.gaussian_baseline)
    write_metrics_json(metrics, out / "metrics.json")
    sys.stdout.write(format_table(metrics) + "\n")
    log.info("metrics and image grids in %s", out)
    return 0


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


HANDLERS = {"train": _train, "eval": _eval, "register": _register, "ui": _ui, "sweep": _sweep, "table": _table,
            "report": _report}
