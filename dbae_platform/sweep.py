"""Sweeps (architecture.md, step 3): Ray Tune over configurations, one Ray Train run per trial, MLflow parent/children.

A `Study` (dbae_platform.study) names a preset, fixed overrides and a search space over dotted config keys:

    space:
      model.latent_dim: [32, 64, 128, 256]            # a list: grid values, or categories for optuna/random
      objective.entropy_weight: {loguniform: [1.0e-4, 1.0e-1]}   # also uniform, randint, choice

`search` is `grid` (full factorial), `optuna` (TPE; several metrics make it multi-objective) or `random`. Every
configuration runs once per seed, and seeds never change a configuration: a random or Optuna draw is made once and
shared by its seeds. Intermediate reports (`train/*`, `val/recon_mse`) feed schedulers such as ASHA; the study metric
(`eval/*`) comes from the end-of-training evaluation only, and that is what the searcher (the mean over seeds), the
ablation table and `best.json` use (`dbae_platform.seed_groups` states the rule). The driver opens one MLflow parent
run; each trial trains with
`dbae_platform.train.train` under it, so the trial is a child run named by its swept values. When the sweep ends, the
ablation table (mean ± std over seeds) and one plot per metric go to the parent run. Rerunning with `resume=True`
restores the Tune experiment: finished trials are kept, unfinished ones resume from their last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dbae_platform import ablation, storage, tracking
from dbae_platform.config import Config, ConfigError, flatten, load_config
from dbae_platform.storage import ObjectPath, StoragePath
from dbae_platform.study import SEED_KEY, Study, base_config

__all__ = ["SweepResult", "SweepFailed", "run_sweep", "run_trial", "trial_name", "finish_sweep"]

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run.json"


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    table_markdown: str
    artifacts: dict[str, StoragePath]
    best: dict[str, Any] | None
    trials: int


# -- one trial -----------------------------------------------------------------------------------------
def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_name(values: dict[str, Any], seed: int, trial: str | None = None) -> str:
    """The child run's name: its swept values and seed, e.g. `latent_dim=64,seed=0` (plus `trial=<id>` for sampled
    searches, where two trials may draw the same values)."""
    name = ",".join(f"{_short(k)}={_fmt(v)}" for k, v in values.items()) + f",seed={seed}"
    return name if trial is None else f"{name},trial={trial}"


def _plain_value(v: Any) -> Any:
    """Numpy scalars from Optuna/Tune as Python values (for YAML, JSON and MLflow)."""
    return v.item() if hasattr(v, "item") else v


def run_trial(config: dict[str, Any], *, base: dict[str, Any], swept: list[str], trials_dir: str, experiment: str,
              tracking_uri: str, parent_run_id: str, indexed: bool) -> None:
    """The Tune function: one Ray Train run of `base` with the trial's values, nested under the parent run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from dbae_platform.models import RESULT_FILE, run_paths
    from dbae_platform.train import train

    values = {k: _plain_value(config[k]) for k in swept}
    seed = int(config[SEED_KEY])  # a grid over seeds (grid, random) or the seed group's (optuna)
    trial_id = tune.get_context().get_trial_id()
    name = trial_name(values, seed, trial_id.rsplit("_", 1)[-1] if indexed else None)
    cfg = load_config(base, {**values, "train.seed": seed, "name": name,
                             "tracking.runs_dir": trials_dir, "tracking.experiment": experiment})
    finished_before = (run_paths(cfg)[1] / RESULT_FILE).is_file()
    tags = {"dbae.sweep.values": json.dumps(values), "dbae.sweep.trial": trial_id}
    # The sweep's driver checked the storage path for all trials, and it sets the status of a trial that ends
    # without finishing (stopped by ASHA: KILLED; failed: FAILED), which train() cannot tell apart.
    result = train(cfg, tracking_uri, parent_run_id, tags=tags, callbacks=[TuneReportCallback()],
                   check_storage=False, settle_status=False)
    if finished_before:  # no Ray Train run happened, so nothing reached Tune: report the stored result
        tune.report({**result.metrics, "step": result.step})


# -- the driver ----------------------------------------------------------------------------------------
def _tune_space(study: Study) -> dict[str, Any]:
    """Tune's param_space. Grid and random searches take the seeds as a grid (random draws are shared by a
    configuration's seeds, see `_searcher`); Optuna's seeds come from `SeedGroups`."""
    from ray import tune
    space: dict[str, Any] = {}
    for key, spec in study.space.items():
        if isinstance(spec, list):
            space[key] = tune.grid_search(spec) if study.search == "grid" else tune.choice(spec)
        else:
            kind, args = next(iter(spec.items()))
            space[key] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
    if study.search != "optuna":
        space[SEED_KEY] = tune.grid_search(list(study.seeds))
    return space


OPTUNA_DB = "optuna.db"  # in the sweep's directory: the Optuna study (trials, values), e.g. for optuna-dashboard


def _searcher(study: Study, seed: int, concurrent: int, optuna_dir: Path):
    """(search_alg, num_samples) for Tune: every configuration once per seed, its values drawn once for all seeds."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    if study.search in ("grid", "random"):
        # constant_grid_search: random keys are drawn once per sample and kept over the seed grid (Ray's default
        # would draw them afresh for every seed, mixing configurations)
        search = BasicVariantGenerator(max_concurrent=concurrent, constant_grid_search=True, random_state=seed)
        return search, 1 if study.search == "grid" else study.num_samples
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from dbae_platform.seed_groups import SeedGroups
    metric = list(study.metric) if len(study.metric) > 1 else study.metric[0]
    mode = list(study.mode) if len(study.mode) > 1 else study.mode[0]
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, study.num_samples // 2)))
    storage = optuna.storages.RDBStorage(f"sqlite:///{optuna_dir / OPTUNA_DB}")
    inner = OptunaSearch(metric=metric, mode=mode, sampler=sampler, storage=storage, study_name=study.name)
    search = SeedGroups(inner, list(study.seeds), metric, SEED_KEY)
    return ConcurrencyLimiter(search, max_concurrent=concurrent), study.num_samples * len(study.seeds)


def _max_concurrent(study: Study, cfg: Config) -> int:
    """--max-concurrent, else as many trials as the cluster's CPUs (and GPUs) hold now."""
    import ray
    if study.max_concurrent_trials:
        return study.max_concurrent_trials
    res = ray.cluster_resources()
    r = cfg.resources
    fits = [res.get("CPU", 1) // (r.num_workers * r.cpus_per_worker)]
    if r.use_gpu:
        fits.append(res.get("GPU", 0) // (r.num_workers * r.gpus_per_worker))
    concurrent = max(1, int(min(fits)))
    if os.environ.get("RAY_ADDRESS"):  # a cluster may scale up later; Ray does not tell its maximum size
        log.warning("running up to %d trial(s) at once: what the cluster's %g CPUs / %g GPUs hold now; on an "
                    "autoscaling cluster pass --max-concurrent N (trials at once) to let it scale up", concurrent,
                    res.get("CPU", 0), res.get("GPU", 0))
    return concurrent


def _open_parent(study: Study, cfg: Config, uri: str, sweep_dir: StoragePath, runs_dir: StoragePath,
                 resume: bool) -> str:
    params = {f"space.{k}": json.dumps(v) for k, v in study.space.items()}
    params.update({"search": study.search, "metric": ",".join(study.metric), "mode": ",".join(study.mode),
                   "seeds": ",".join(map(str, study.seeds)), "preset": study.preset,
                   "num_samples": study.num_samples})
    params.update({f"fixed.{k}": v for k, v in flatten(cfg.to_dict()).items() if k not in study.space})
    tags = {"dbae.sweep.role": "parent", "dbae.sweep.name": study.name, "dbae.sweep.swept": json.dumps(study.swept),
            "dbae.sweep.search": study.search, "dbae.command": tracking.command_line(),
            "dbae.driver": tracking.hardware()}  # dbae.hardware comes from the trials' workers (finish_sweep)
    if (commit := tracking.git_commit()) is not None:
        tags["mlflow.source.git.commit"] = commit
    record = sweep_dir / tracking.RUN_FILE
    if record.is_file() and not resume:
        raise ConfigError(f"sweep {study.name!r} already exists in {sweep_dir}: pass --resume to continue it, or "
                          "--name NEW (or remove the directory) for a new sweep")
    run_id, resumed = tracking.open_run(uri, study.experiment_name, sweep_dir, runs_dir, study.name, params, tags,
                                        yaml.safe_dump(_study_dict(study), sort_keys=False))
    log.info("%s sweep parent run %s in experiment %r", "resuming" if resumed else "opened", run_id,
             study.experiment_name)
    return run_id


def _study_dict(study: Study) -> dict[str, Any]:
    d = dataclasses.asdict(study)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class SweepFailed(RuntimeError):
    """Trials of a sweep failed: one line naming them and the files with their full logs (exit code 1)."""


def _trial_label(result) -> str:
    """A trial as the user knows it (its child run's name without the trial id): swept values and seed."""
    config = result.config or {}
    values = {k: _plain_value(v) for k, v in config.items() if k != SEED_KEY}
    return trial_name(values, int(config.get(SEED_KEY, 0)))


def _error_line(result) -> str:
    """The last line of a failed trial's error: its exception, not Ray's traceback around it."""
    lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(result.error).__name__


def _failure(study: Study, grid, failed: list) -> SweepFailed:
    first = failed[0]
    log_file = storage.from_filesystem(first.filesystem, first.path) / "error.txt" if first.path else None
    more = f" (and {len(failed) - 1} more: {', '.join(_trial_label(r) for r in failed[1:4])})" if len(failed) > 1 \
        else ""
    where = f"; full log: {log_file}" if log_file is not None else ""
    return SweepFailed(f"sweep {study.name}: {len(failed)} of {len(grid)} trials failed: {_trial_label(first)}: "
                       f"{_error_line(first)}{more}{where}")


class _NoTrialTraceback(logging.Filter):
    """Tune logs every failed trial with its full traceback; the sweep reports it in one line naming the trial and its
    error file instead (DBAE_DEBUG=1 keeps Ray's output)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial task failed")


def _quiet_trial_tracebacks() -> None:
    if os.environ.get("DBAE_DEBUG"):
        return
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _NoTrialTraceback) for f in controller.filters):
        controller.addFilter(_NoTrialTraceback())


def _failed_trial_ids(failed: list) -> set[str]:
    """The Tune trial ids of failed results: from their last report, or, for a trial that failed before reporting,
    from its directory's name, `<trainable>_<trial id>_<index>_<values>_<time>`."""
    ids = set()
    for r in failed:
        if r.metrics and r.metrics.get("trial_id"):
            ids.add(str(r.metrics["trial_id"]))
        elif r.path:
            ids.add("_".join(Path(r.path).name.removeprefix(f"{run_trial.__name__}_").split("_")[:2]))
    return ids


def _settle_children(uri: str, parent_run_id: str, interrupted: bool, failed_trials: set[str]) -> int:
    """Children Tune ended that did not finish: a failed trial is FAILED; any other was stopped early (ASHA; its
    train() may have marked it FAILED as Tune stopped it), or, in an interrupted sweep, is waiting for --resume:
    KILLED, with a tag saying which. Returns the number stopped early."""
    client = tracking.mlflow_client(uri)
    stopped = 0
    for run in tracking.child_runs(uri, parent_run_id):
        if run.info.status == "FINISHED":
            continue
        if run.data.tags.get("dbae.sweep.trial") in failed_trials:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="FAILED")
            continue
        why = "interrupted; --resume continues it" if interrupted else "stopped early by the scheduler"
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, "dbae.sweep.stopped", why)
        stopped += not interrupted
    return stopped


def _best(study: Study, table) -> dict[str, Any] | None:
    """The best configuration by the first metric's mean over seeds (rows of the ablation table)."""
    metric, mode = study.metric[0], study.mode[0]
    col = f"{metric.removeprefix('eval/')}_mean"
    if table.num_rows == 0 or col not in table.column_names:
        return None
    rows = table.to_pylist()
    if "variant" in table.column_names:
        rows = [r for r in rows if r["variant"] == "default"]
    rows = [r for r in rows if r[col] is not None and not math.isnan(r[col])]
    if not rows:
        return None
    best = (min if mode == "min" else max)(rows, key=lambda r: r[col])
    return {"values": {k: best[k] for k in study.swept}, "metric": metric, "value": best[col], "n": best["n"]}


def _optuna_summary(study: Study, db: Path | None, out: Path) -> list[Path]:
    """The Optuna study behind the search (its sqlite file `db`): every trial as CSV, the best (or Pareto-optimal)
    trials as text."""
    import optuna
    if study.search != "optuna" or db is None or not db.is_file():
        return []
    ot_study = optuna.load_study(study_name=study.name, storage=f"sqlite:///{db}")
    csv = out / "optuna_trials.csv"
    ot_study.trials_dataframe().to_csv(csv, index=False)
    lines = [f"Optuna study: {len(ot_study.trials)} trials, sampler TPESampler, "
             f"directions {[d.name.lower() for d in ot_study.directions]} (all trials: {db})"]
    try:
        best = ot_study.best_trials
    except ValueError:
        best = []
    lines.append("best trials (Pareto front when multi-objective):" if best else "no completed trial")
    lines += [f"  #{t.number}: values={t.values} params={t.params}" for t in best]
    summary = out / "optuna_summary.txt"
    summary.write_text("\n".join(lines) + "\n")
    return [csv, summary]


def run_sweep(study: Study, *, storage_path: str | Path = "runs", resume: bool = False, smoke: bool = False,
              tracking_uri: str | None = None, extra_overrides: dict[str, Any] | None = None) -> SweepResult:
    """Run (or with `resume`, continue) the sweep; returns the ablation table and where it was written.

    Layout under `storage_path` (a directory, or a bucket: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX): sweeps/<name>/
    holds Tune's experiment (trial state, for --resume), train/ (one Ray Train run directory per trial), ablation/
    (table and plots) and the Optuna study (optuna.db); the MLflow store defaults to sqlite:///<storage_path>/mlflow.db,
    shared with single runs (a bucket needs `tracking_uri`). With a bucket, the Optuna study is kept in this machine's
    cache while the sweep runs and copied to the bucket at its end.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from dbae_platform import preflight
    from dbae_platform.ray_cluster import ray_init

    cfg = base_config(study, smoke, extra_overrides)
    runs_dir = storage.location(storage_path)
    tune_dir = runs_dir / "sweeps"
    sweep_dir = tune_dir / study.name
    if resume and not (sweep_dir / tracking.RUN_FILE).is_file():
        log.info("nothing to resume: no sweep %r under %s yet, so it starts now", study.name, tune_dir)
    preflight.check_sweep(cfg, runs_dir)  # storage and data, on the driver (and each node), before Ray starts
    uri = tracking.resolve_uri(tracking_uri, cfg.tracking.uri, runs_dir)
    tracking.check_reachable(uri)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # training reports carry eval/* only at the end
    ray_init()
    storage.require_shared_storage(runs_dir)  # before anything is written: every trial's node must see the same runs
    sweep_dir.mkdir(parents=True, exist_ok=True)
    parent_run_id = _open_parent(study, cfg, uri, sweep_dir, runs_dir, resume)
    concurrent = _max_concurrent(study, cfg)
    optuna_dir = _optuna_dir(sweep_dir, resume)
    search, num_samples = _searcher(study, cfg.train.seed, concurrent, optuna_dir)
    trainable = tune.with_parameters(
        run_trial, base=cfg.to_dict(), swept=study.swept, trials_dir=str(sweep_dir / "train"),
        experiment=study.experiment_name, tracking_uri=uri, parent_run_id=parent_run_id,
        indexed=study.search != "grid")
    # The trial function only drives its TorchTrainer, whose workers hold the CPUs/GPUs: it takes no CPU itself
    # (a nominal 1 MiB of memory: Tune needs some resource).
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 2**20})
    scheduler = None
    if study.asha is not None:
        a = study.asha
        scheduler = ASHAScheduler(time_attr="step", metric=a.metric, mode=a.mode, max_t=cfg.train.steps,
                                  stop_last_trials=False,  # a trial at max_t finishes (eval, MLflow) on its own
                                  grace_period=a.grace_period or cfg.train.ckpt_every,
                                  reduction_factor=a.reduction_factor)
    run_config = tune.RunConfig(name=study.name, storage_path=str(tune_dir), verbose=1,
                                failure_config=tune.FailureConfig(max_failures=0))
    tune_path = str(sweep_dir)
    t0 = time.perf_counter()
    _quiet_trial_tracebacks()
    if resume and tune.Tuner.can_restore(tune_path):
        log.info("restoring the Tune experiment in %s (finished trials are kept)", tune_path)
        tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=_tune_space(study), run_config=run_config,
                           tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler,
                                                       num_samples=num_samples))
    log.info("sweep %s: %s search over %s, seeds %s, up to %d trials at once", study.name, study.search,
             ", ".join(study.swept), list(study.seeds), concurrent)
    grid = tuner.fit()
    failed = [r for r in grid if r.error is not None]
    log.info("sweep %s: %d trials in %.0f s (%d failed)", study.name, len(grid), time.perf_counter() - t0,
             len(failed))
    interrupted = grid.num_terminated + grid.num_errors < len(grid)  # Ctrl-C: Tune saved its state
    stopped = _settle_children(uri, parent_run_id, interrupted, _failed_trial_ids(failed))
    if stopped:
        log.info("%d trial(s) stopped early (marked KILLED in MLflow)", stopped)
    if interrupted:
        tracking.finish_run(uri, parent_run_id, "KILLED")
        raise KeyboardInterrupt(f"sweep {study.name} interrupted")
    result = finish_sweep(study, uri, parent_run_id, sweep_dir / "ablation",
                          status="FAILED" if failed else "FINISHED", optuna_db=optuna_dir / OPTUNA_DB)
    if failed:  # the table of the trials that finished is written; the command still fails, naming the others
        raise _failure(study, grid, failed)
    return dataclasses.replace(result, trials=len(grid))


def _optuna_dir(sweep_dir: StoragePath, resume: bool) -> Path:
    """Where the Optuna study's sqlite file lives while the sweep runs: the sweep's directory, or for a bucket (which
    cannot hold a live sqlite file) this machine's cache, seeded on --resume from the copy the bucket keeps."""
    if isinstance(sweep_dir, Path):
        return sweep_dir
    local = storage.cache_dir(sweep_dir)
    local.mkdir(parents=True, exist_ok=True)
    saved = sweep_dir / "ablation" / OPTUNA_DB
    if not resume:
        (local / OPTUNA_DB).unlink(missing_ok=True)
    elif not (local / OPTUNA_DB).is_file() and saved.is_file():
        storage.local_copy(saved, local / OPTUNA_DB)
    return local


def finish_sweep(study: Study, uri: str, parent_run_id: str, out: StoragePath,
                 status: str = "FINISHED", optuna_db: Path | None = None) -> SweepResult:
    """Ablation table (md, csv, parquet), plots, best trial and Optuna summary onto the parent run and into `out` (a
    directory or a bucket's prefix)."""
    table, swept, _ = ablation.table_from_mlflow(uri, study.experiment_name, parent_run_id, include_unfinished=False)
    best = _best(study, table)
    with storage.staged(out) as local:
        paths = ablation.write_table(table, local)
        plots = ablation.plot_metrics(table, swept, local) if table.num_rows else []
        extra = _optuna_summary(study, optuna_db, local)
        if isinstance(out, ObjectPath) and optuna_db is not None and optuna_db.is_file():
            shutil.copyfile(optuna_db, local / OPTUNA_DB)  # the bucket's copy of the live study (see _optuna_dir)
        client = tracking.mlflow_client(uri)
        for path in [*paths.values(), *plots, *extra]:
            client.log_artifact(parent_run_id, str(path), "ablation")
        if best is not None:
            (local / "best.json").write_text(json.dumps(best, indent=2, default=str))
            client.log_artifact(parent_run_id, str(local / "best.json"), "ablation")
    hardware = sorted({r.data.tags["dbae.hardware"] for r in tracking.child_runs(client, parent_run_id)
                       if "dbae.hardware" in r.data.tags})
    if hardware:  # what the trials' workers ran on, as they recorded it
        client.set_tag(parent_run_id, "dbae.hardware", "; ".join(hardware)[:5000])
    metrics = {}
    if best is not None:
        client.set_tag(parent_run_id, "dbae.sweep.best", json.dumps(best["values"], default=str)[:5000])
        metrics[f"best/{best['metric'].removeprefix('eval/')}"] = best["value"]
    tracking.finish_run(uri, parent_run_id, status, metrics=metrics)
    markdown = ablation.to_markdown(table)
    files = {**paths, **{p.stem: p for p in plots}}
    return SweepResult(study.name, parent_run_id, uri, markdown, {k: out / p.name for k, p in files.items()}, best, 0)
