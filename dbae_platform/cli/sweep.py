"""The command line every study shares: `python sweeps/<study>.py [flags]` and `dbae sweep STUDY.yaml [flags]`; and
`dbae table`, a sweep's ablation table rebuilt from MLflow.

Local by default (an embedded Ray cluster and the sqlite MLflow store under --storage-path); under
`ray job submit` (RAY_ADDRESS set) the sweep runs on that cluster. It ends by printing the ablation table and the
command that opens the MLflow UI.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dbae_platform.argtypes import directory, existing_file, positive
from dbae_platform.cli.flags import add_store_flags
from dbae_platform.storage import default_storage_path, is_object_store
from dbae_platform.study import Study, parse_space_overrides
from dbae_platform.sweep import run_sweep

__all__ = ["add_study_flags", "apply_flags", "run_study", "main", "add_sweep", "add_table", "HANDLERS"]

log = logging.getLogger("dbae")


def add_study_flags(p: argparse.ArgumentParser) -> None:
    from dbae_platform import argtypes
    p.add_argument("--preset", help="base preset or YAML config (default: the study's)")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps of every trial on a small run: checks the whole study in about a minute")
    p.add_argument("--num-samples", type=positive(int), help="configurations drawn by optuna/random search")
    p.add_argument("--seeds", type=positive(int), help="seeds per configuration (0..N-1)")
    p.add_argument("--search", choices=("grid", "optuna", "random"), help="search algorithm (default: the study's)")
    p.add_argument("--space", metavar="KEY=VALUES", action="append", default=[],
                   help="replace one swept key's values, e.g. --space 'model.latent_dim=[16,64,256]' or "
                        "--space 'objective.entropy_weight={loguniform: [1e-4, 1e-1]}'")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="fixed config override for every trial, e.g. --set train.steps=2000")
    p.add_argument("--asha", action="store_true", help="stop poor trials early (ASHA on val/recon_mse)")
    p.add_argument("--max-concurrent", type=positive(int), help="trials at once (default: as many as fit)")
    p.add_argument("--name", type=argtypes.name,
                   help="sweep name (default: the study's); names the MLflow experiment sweep/NAME")
    p.add_argument("--storage-path", type=argtypes.storage_path, default=default_storage_path(),
                   metavar="DIR_OR_BUCKET",
                   help="runs directory: Tune state, trial checkpoints, ablation files, embedded MLflow store; on a "
                        "multi-node cluster a directory every node mounts or a bucket (s3://BUCKET/PREFIX, "
                        "gs://BUCKET/PREFIX; then --tracking-uri too). Default $DBAE_STORAGE_PATH, else runs")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (overrides MLFLOW_TRACKING_URI)")
    p.add_argument("--register", metavar="NAME", type=argtypes.name,
                   help="register the best trial's model in the MLflow model registry as NAME (models:/NAME/VERSION)")


def apply_flags(study: Study, args: argparse.Namespace) -> Study:
    """The study with the command line's changes (validated again)."""
    from dbae_platform.config import parse_overrides
    from dbae_platform.study import Asha, study_from_dict
    d = dict(study.__dict__)
    if args.preset:
        d["preset"] = args.preset
    if args.num_samples:
        d["num_samples"] = args.num_samples
    if args.seeds:
        d["seeds"] = args.seeds
    if args.search:
        d["search"] = args.search
    if args.space:
        d["space"] = {**study.space, **parse_space_overrides(args.space)}
    if args.overrides:
        d["overrides"] = {**study.overrides, **parse_overrides(args.overrides)}
    if args.asha and study.asha is None:
        d["asha"] = Asha()
    if args.max_concurrent:
        d["max_concurrent_trials"] = args.max_concurrent
    if args.name:
        d["name"] = args.name
    return study_from_dict(d, "command line")


def run_study(study: Study, args: argparse.Namespace) -> int:
    from dbae_platform.config import parse_overrides
    study = apply_flags(study, args)
    if args.smoke and not args.name:  # a smoke run never mixes with the real sweep's trials or experiment
        study = study.replace(name=f"{study.name}-smoke")
    # The command line's --set comes last, so it beats --smoke's settings too (`--smoke --set
    # resources.cpus_per_worker=1`); the study's own overrides do not
    command_line = parse_overrides(args.overrides) or None
    result = run_sweep(study, storage_path=args.storage_path, resume=args.resume, smoke=args.smoke,
                       tracking_uri=args.tracking_uri, extra_overrides=command_line)
    sys.stdout.write(f"\nablation table of sweep {study.name} (mean ± std over seeds; MLflow parent run "
                     f"{result.parent_run_id}):\n\n{result.table_markdown}\n")
    if result.best is not None:
        sys.stdout.write(f"\nbest by {result.best['metric']}: {result.best['values']} "
                         f"({result.best['value']:.4g})\n")
    if args.register and result.best is not None:
        from dbae_platform.registry import best_trial_run, register
        from dbae_platform.tracking import mlflow_client
        run_id = best_trial_run(mlflow_client(result.tracking_uri), result.parent_run_id, result.best["values"],
                                study.metric[0], study.mode[0])
        done = register(run_id, args.register, result.tracking_uri)
        sys.stdout.write(f"\nregistered the best trial (MLflow run {run_id}) as {done.uri}\n")
    files = ", ".join(str(p) for p in result.artifacts.values())
    sys.stdout.write(f"\nfiles: {files}\n")
    from dbae_platform.tracking import run_urls
    runs, parent = run_urls(result.tracking_uri, result.parent_run_id)
    local_store = result.tracking_uri.startswith("sqlite:") and not is_object_store(args.storage_path)
    serve = f" (serve it: dbae ui --runs-dir {args.storage_path})" if local_store else ""
    sys.stdout.write(f"MLflow runs table of experiment {study.experiment_name}: {runs}{serve}\n"
                     f"the sweep's parent run (ablation table, plots): {parent}\n"
                     f"rebuild the table at any time: dbae table {study.experiment_name}"
                     f"{'' if args.tracking_uri is None else f' --tracking-uri {args.tracking_uri}'}"
                     f"{f' --runs-dir {args.storage_path}' if local_store and args.storage_path != 'runs' else ''}\n")
    return 0


def main(study: Study, argv: list[str] | None = None) -> int:
    """Entry point of a study file: parse the flags, run the sweep, exit 0 / 2 (bad input) / 1 (failure)."""
    from dbae_platform.cli.guard import Parser, guarded
    parser = Parser(prog=f"python sweeps/{study.name}.py",
                    description=f"{study.description or study.name} Search: {study.search} over "
                                f"{', '.join(f'{k} {v}' for k, v in study.space.items())} on preset {study.preset}.")
    add_study_flags(parser)
    return guarded(lambda args: run_study(study, args), parser, argv)


def add_sweep(sub) -> None:
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
    add_store_flags(p)
    p.add_argument("--format", choices=("md", "csv"), default="md")
    p.add_argument("--out", type=directory, help="also write ablation.md/.csv/.parquet and the plots here")


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


def _sweep(args: argparse.Namespace) -> int:
    from dbae_platform.study import load_study
    return run_study(load_study(args.study), args)


def _table(args: argparse.Namespace) -> int:
    from dbae_platform import ablation
    from dbae_platform.tracking import store_uri
    uri = store_uri(args.tracking_uri, args.runs_dir)
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


HANDLERS = {"sweep": _sweep, "table": _table}
