"""`dbae train`: one training run on Ray Train (DDP over `resources.num_workers` workers), tracked in MLflow.

Data flow (architecture.md, step 2): the driver validates the config, writes it to the run directory and to MLflow,
then fits a `TorchTrainer`. Each worker builds its data shard and the model, trains with `dbae_core.training.fit`,
reports metrics every `train.log_every` steps and a checkpoint directory every `train.ckpt_every` steps; rank 0
alone logs to MLflow. Rerunning the same command resumes from the newest checkpoint into the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dbae_core.checkpoint import load_checkpoint
from dbae_core.data.transforms import to_uint8
from dbae_core.metrics import mse, to_unit
from dbae_core.training import NonFiniteLossError, fit
from dbae_platform import ray_cluster, storage, tracking
from dbae_platform.config import RESUMABLE_KEYS, Config, ConfigError, config_diff, flatten, load_config
from dbae_platform.models import (
    EVAL_DIR,
    RESULT_FILE,
    STATE_FILE,
    build_datasets,
    build_model,
    run_paths,
    weights_state,
)
from dbae_platform.run_status import RunStatus
from dbae_platform.sampling import GaussianPrior, Sampling
from dbae_platform.storage import StoragePath, node_label, require_shared_storage

__all__ = ["train", "TrainResult", "train_loop_per_worker", "worker_threads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: StoragePath
    run_id: str
    tracking_uri: str
    step: int
    checkpoint: StoragePath | None
    metrics: dict[str, float]


# -- the worker ---------------------------------------------------------------------------------------
class _RayProgress:
    """tqdm's interface used by `fit`, drawn on the driver by Ray's tqdm_ray (one bar for the run, from rank 0)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", disable: bool = False, **_: Any) -> None:
        from ray.experimental.tqdm_ray import tqdm
        self.bar = None if disable else tqdm(total=total, desc=desc, unit="step")
        if self.bar is not None and initial:
            self.bar.update(initial)
        self.desc = desc

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_description(self.desc + " " + " ".join(f"{k}={v}" for k, v in values.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _grid(images: torch.Tensor, nrow: int):
    from PIL import Image
    from torchvision.utils import make_grid
    return Image.fromarray(to_uint8(make_grid(images.float().cpu(), nrow=nrow, padding=1, pad_value=-1.0)))


def _image_logger(cfg: Config, test: Dataset, device: torch.device, logger: tracking.MetricLogger):
    """Every train.image_every steps: originals over reconstructions, and samples, as MLflow images."""
    n = min(16, len(test))
    x = torch.stack([test[i][0] for i in range(n)]).to(device)
    gen = torch.Generator(device)  # reseeded per call: the same sample latents at every step

    @torch.no_grad()
    def on_images(step: int, ema: torch.nn.Module) -> None:
        t0 = time.perf_counter()
        z = ema.encode(x)
        recon = ema.decode(z, generator=gen.manual_seed(cfg.train.seed), **sampling(cfg).kwargs(ema))[0]
        # Samples from a Gaussian fitted to these latents (the learned latent prior is a second training stage).
        z_s = GaussianPrior(z).sample(len(z), gen.manual_seed(cfg.train.seed))
        samples = ema.decode(z_s, generator=gen, **sampling(cfg).kwargs(ema))[0]
        logger.log_image(_grid(torch.cat([x, recon]), nrow=n), "reconstructions", step)
        logger.log_image(_grid(samples, nrow=n), "samples", step)
        log.info("step %d: image grids in %.1f s", step, time.perf_counter() - t0)

    return on_images


def _evaluate(cfg: Config, model: torch.nn.Module, train: Dataset, test: Dataset, device: torch.device,
              out_dir: Path) -> dict[str, float | None]:
    if not cfg.eval.suites:
        return {}
    from dbae_platform.evaluate import evaluate
    e = cfg.eval
    return evaluate(model, train=train, test=test, suites=e.suites, n=e.n, out_dir=out_dir, device=device,
                    sampler_steps=e.sampler_steps, sampler=e.sampler, churn=e.churn, precision=e.precision,
                    batch_size=e.batch_size, sample_z=e.sample_z, prior_steps=e.prior_steps,
                    prior_images=e.prior_images, gaussian_baseline=e.gaussian_baseline)


def sampling(cfg: Config) -> Sampling:
    """The decoding settings of cfg.eval (sampler, steps, churn, precision)."""
    return Sampling(cfg.eval.sampler_steps, cfg.eval.sampler, cfg.eval.churn, cfg.eval.precision)


def _validator(cfg: Config, test: Dataset, device: torch.device):
    """At every checkpoint: MSE of reconstructing eval.val_n fixed held-out images with the EMA weights
    (`val/recon_mse`, the intermediate metric ASHA compares trials on). None when eval.val_n is 0."""
    n = min(cfg.eval.val_n, len(test))
    if n == 0:
        return None
    x = torch.stack([test[i][0] for i in range(n)]).to(device)
    model = build_model(cfg).to(device).eval()
    gen = torch.Generator(device)

    @torch.no_grad()
    def validate(step: int, ema_state: dict[str, torch.Tensor]) -> dict[str, float]:
        model.load_state_dict(ema_state)
        gen.manual_seed(cfg.train.seed)  # DiffAE decodes from a random x_T: the same one at every step
        recon = model.decode(model.encode(x), generator=gen, **sampling(cfg).kwargs(model))[0]
        return {"val/recon_mse": mse(to_unit(x.float()), to_unit(recon.float())).mean().item()}

    return validate


def _save_dir(state: dict[str, Any], config_yaml: str, extra: dict[str, Any] | None = None) -> Path:
    staging = Path(tempfile.mkdtemp(prefix="dbae_ckpt_"))
    torch.save(state, staging / STATE_FILE)
    (staging / "config.yaml").write_text(config_yaml)
    if extra is not None:
        (staging / "metrics.json").write_text(json.dumps(extra, indent=2))
    return staging


def worker_threads(cpus: float) -> int:
    """Give torch as many CPU threads as Ray gives the worker CPUs (at least one), unless OMP_NUM_THREADS says
    otherwise. Ray Train leaves torch at one thread per core of the node, so workers that share a node, or a fractional
    CPU each, spin OpenMP threads against each other; returns the thread count."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = max(1, min(int(cpus), os.cpu_count() or 1))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        log.debug("torch threads: %d (resources.cpus_per_worker=%s)", threads, cpus)
    return threads


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: data shard, model, DDP (inside `fit`), reports, checkpoints; MLflow from rank 0.

    Every `train.log_every` steps all ranks report metrics, every `train.ckpt_every` steps a checkpoint directory
    (state.pt: model, EMA, optimizer, step, RNG, config; config.yaml). The last checkpoint is reported after the
    evaluation, with its metrics (metrics.json), so `Result.metrics` holds them.
    """
    import ray.train
    import ray.train.torch

    cfg = load_config(loop_config["config"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    worker_threads(cfg.resources.cpus_per_worker)
    device = ray.train.torch.get_device()
    if "status" in loop_config:  # where this rank runs and on what, for the run's record (tags dbae.nodes/hardware)
        loop_config["status"].add_worker.remote(rank, ray.get_runtime_context().get_node_id(),
                                                ray.util.get_node_ip_address(), tracking.hardware())
    torch.manual_seed(cfg.train.seed)
    train, test = build_datasets(cfg)
    model = build_model(cfg)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # an unreadable newest checkpoint falls back to the newest one that loads
        from dbae_platform.preflight import resume_state
        resume = resume_state(checkpoint, rank)
        log.info("rank %d resumes from step %d", rank, int(resume["step"]))

    logger = monitor = None
    if rank == 0 and loop_config.get("run_id"):
        logger = tracking.MetricLogger(loop_config["tracking_uri"], loop_config["run_id"])
        logger.log_start(int(resume["step"]) if resume is not None else 0)
    system_metrics = cfg.tracking.system_metrics
    if loop_config.get("run_id") and (cfg.resources.use_gpu if system_metrics is None else system_metrics):
        world = ctx.get_world_size()
        monitor = tracking.system_monitor(loop_config["tracking_uri"], loop_config["run_id"],
                                          cfg.tracking.system_metrics_interval, f"rank{rank}" if world > 1 else None)
    try:
        _train_and_evaluate(cfg, loop_config, rank, device, model, train, test, resume, logger)
    finally:  # whatever ends training, what the logger holds is sent (or counted as lost) before the worker exits
        if monitor is not None:
            monitor.finish()
        if logger is not None:
            logger.close()


def _train_and_evaluate(cfg: Config, loop_config: dict[str, Any], rank: int, device: torch.device,
                        model: torch.nn.Module, train: Dataset, test: Dataset, resume: dict[str, Any] | None,
                        logger: tracking.MetricLogger | None) -> None:
    """`fit` with reports and checkpoints, then (rank 0) the evaluation; the final checkpoint carries its results.

    Final metrics and evaluation images travel in the last checkpoint (metrics.json, eval/*.png): the driver logs
    them to MLflow and checks that they arrived, so they do not depend on this worker's background logger."""
    import ray.train

    t = cfg.train
    config_yaml = cfg.to_yaml()
    last_metrics: dict[str, float] = {}
    final_state: dict[str, Any] = {}

    def is_ckpt_step(step: int) -> bool:
        return step == t.steps or step % t.ckpt_every == 0

    def on_log(step: int, metrics: dict[str, float]) -> None:
        last_metrics.clear()
        last_metrics.update(metrics)
        if logger is not None:
            logger.log_metrics(metrics, step)
        if not is_ckpt_step(step):
            ray.train.report({**metrics, "step": step})

    validate = _validator(cfg, test, device) if rank == 0 else None

    def checkpointer(step: int, state: dict[str, Any] | None) -> Path | None:
        if validate is not None and state is not None:
            last_metrics.update(validate(step, state["ema"]))
            if logger is not None:
                logger.log_metrics({k: v for k, v in last_metrics.items() if k.startswith("val/")}, step)
        if step == t.steps:  # reported after the evaluation, below
            final_state.update(state or {})
            return None
        metrics = {**last_metrics, "step": step}
        if state is None:
            ray.train.report(metrics)
            return None
        staging = _save_dir(state, config_yaml)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return None

    on_images = _image_logger(cfg, test, device, logger) if logger is not None and t.image_every else None
    try:
        out = fit(model, train, t, device=device, on_log=on_log, resume=resume, checkpointer=checkpointer,
                  on_images=on_images, progress=_RayProgress)
    except NonFiniteLossError as err:  # not a worker failure: tell the driver, which stops without retrying
        log.error("rank %d: %s", rank, err)
        if rank == 0:
            ray.get(loop_config["status"].set_nonfinite.remote(err.step))
        return

    metrics: dict[str, Any] = {}
    staging = None
    if rank == 0:
        if not final_state and resume is not None:  # the run had already finished: evaluate its last state
            final_state.update(resume)
        eval_dir = Path(tempfile.mkdtemp(prefix="dbae_eval_"))
        metrics = _evaluate(cfg, out["ema"].to(device).eval(), train, test, device, eval_dir)
        if final_state:
            staging = _save_dir(final_state, config_yaml, extra=metrics)
            shutil.move(str(eval_dir), str(staging / EVAL_DIR))
        else:
            shutil.rmtree(eval_dir, ignore_errors=True)
    report = {**last_metrics, **{k: v for k, v in metrics.items() if v is not None}, "step": t.steps}
    if staging is None:
        ray.train.report(report)
        return
    try:
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- the driver --------------------------------------------------------------------------------------
def _check_resumable(cfg: Config, run_dir: StoragePath) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    import yaml
    old = yaml.safe_load(saved.read_text()) or {}
    changed = {k: v for k, v in config_diff(old, cfg.to_dict()).items() if not k.startswith(RESUMABLE_KEYS)}
    if changed:
        key, (was, now) = next(iter(changed.items()))
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise ConfigError(f"run {cfg.name!r} in {run_dir} was started with {key}={was!r}, not {now!r}{more}: "
                          f"rerun with the old value to resume, or pass --set name=NEW for a new run")


def _mark(uri: str, run_id: str, status: str) -> None:
    """End the MLflow run with `status`; a store that stays down (MLflow retried already) costs one log line."""
    try:
        tracking.finish_run(uri, run_id, status)
    except Exception as err:
        log.error("could not mark MLflow run %s %s (%s: %s)", run_id, status, type(err).__name__,
                  str(err).splitlines()[0] if str(err) else "")


def _publish(uri: str, run_id: str, run_dir: StoragePath, checkpoint: StoragePath | None,
             metrics: dict[str, float], workers: list[dict], step: int) -> None:
    """Log a finished run's results (final metrics, evaluation images, EMA weights, config, where it ran), read them
    back, and only then mark the run FINISHED. Raises IncompleteLogError naming what the store lacks."""
    with tempfile.TemporaryDirectory(prefix="dbae_publish_") as tmp:
        _log_results(uri, run_id, run_dir, checkpoint, metrics, workers, step, Path(tmp))
    tracking.finish_run(uri, run_id, "FINISHED")


def _log_results(uri: str, run_id: str, run_dir: StoragePath, checkpoint: StoragePath | None,
                 metrics: dict[str, float], workers: list[dict], step: int, tmp: Path) -> None:
    """_publish's logging, with the files it needs locally (a bucket's are copied into `tmp` first)."""
    from PIL import Image
    artifacts: list[Path] = []
    images: dict[str, Path] = {}
    if checkpoint is not None:  # the EMA weights and the config, small enough to keep in MLflow
        state = load_checkpoint(storage.local_copy(checkpoint / STATE_FILE, tmp / STATE_FILE))
        local_run = run_dir if isinstance(run_dir, Path) else tmp
        ema_path = local_run / "ema.pt"
        torch.save(weights_state(state), ema_path)
        del state
        if local_run is tmp:
            (tmp / "config.yaml").write_text((run_dir / "config.yaml").read_text())
        artifacts = [ema_path, local_run / "config.yaml"]
        eval_dir = checkpoint / EVAL_DIR
        if eval_dir.is_dir():
            eval_dir = storage.local_copy(eval_dir, tmp / EVAL_DIR)
            images = {f"eval_{png.stem}": png for png in sorted(eval_dir.glob("*.png"))}
    tags = {}
    if workers:
        tags = {"dbae.nodes": ",".join(sorted({node_label(w["ip"], w["node_id"]) for w in workers})),
                "dbae.hardware": tracking.describe_workers(workers)[:5000]}
    try:
        client = tracking.mlflow_client(uri)
        for key, png in images.items():
            with Image.open(png) as img:
                client.log_image(run_id, img.copy(), key=key, step=step)
        tracking.finish_run(uri, run_id, None, metrics=metrics, step=step, artifacts=artifacts, tags=tags)
        missing = tracking.missing_from_run(client, run_id, metrics, [a.name for a in artifacts], images)
    except Exception as err:
        missing = [f"all of them ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]})"]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise tracking.IncompleteLogError(
            f"run {run_dir.name} finished (results on disk in {run_dir / RESULT_FILE}) but MLflow at {uri} lacks "
            f"{', '.join(missing[:5])}{more}: rerun the same command when the store is back to log them")


def _write_result(run_dir: StoragePath, record: dict[str, Any]) -> None:
    (run_dir / RESULT_FILE).write_text(json.dumps(record, indent=2))


def train(cfg: Config, tracking_uri: str | None = None, parent_run_id: str | None = None, *,
          tags: dict[str, str] | None = None, callbacks: list[Any] | None = None,
          check_storage: bool = True, settle_status: bool = True) -> TrainResult:
    """Train `cfg` on Ray (local unless RAY_ADDRESS is set), tracked in MLflow; rerunning resumes.

    `parent_run_id` nests the MLflow run under a sweep's parent run and `tags` adds to its tags; `callbacks` are Ray
    Train callbacks (a Tune trial passes TuneReportCallback, so its reports reach Tune). On a multi-node cluster the
    runs directory must be shared by every node (`check_storage`; a sweep checks once for all its trials). A sweep's
    trial passes `settle_status=False`: when the scheduler stops a trial, `fit` raises here as for a failure, so the
    sweep's driver, which knows which it was, sets the run's status.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dbae_platform import preflight
    runs_dir, run_dir = run_paths(cfg)
    _check_resumable(cfg, run_dir)
    done = run_dir / RESULT_FILE
    if done.is_file() and (previous := json.loads(done.read_text()))["step"] >= cfg.train.steps:
        checkpoint = storage.location(previous["checkpoint"]) if previous.get("checkpoint") not in (None, "None") \
            else None
        if not previous.get("logged", True):  # trained, but MLflow did not take the results: log them now
            log.info("run %r finished at step %d; logging its results to MLflow again", cfg.name, previous["step"])
            _publish(previous["tracking_uri"], previous["run_id"], run_dir, checkpoint, previous["metrics"],
                     previous.get("workers", []), previous["step"])
            _write_result(run_dir, {**previous, "logged": True})
        log.info("run %r already finished at step %d (raise train.steps to continue it)", cfg.name, previous["step"])
        return TrainResult(run_dir, previous["run_id"], previous["tracking_uri"], previous["step"], checkpoint,
                           previous["metrics"])
    preflight.check_run(cfg)  # data, directories, newest loadable checkpoint: one line before Ray starts
    uri = tracking.resolve_uri(tracking_uri, cfg.tracking.uri, runs_dir)
    tracking.check_reachable(uri)
    ray_cluster.ray_init()
    if check_storage:
        require_shared_storage(runs_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = cfg.to_yaml()
    (run_dir / "config.yaml").write_text(config_yaml)
    tags = {"dbae.preset": cfg.name, "dbae.seed": str(cfg.train.seed), "dbae.method": cfg.model.method,
            "dbae.run_dir": str(run_dir), "dbae.driver": tracking.hardware(), **(tags or {})}
    if (commit := tracking.git_commit()) is not None:
        tags["mlflow.source.git.commit"] = commit
    run_id, resumed = tracking.open_run(uri, cfg.experiment, run_dir, runs_dir, cfg.name, flatten(cfg.to_dict()),
                                        tags, config_yaml, parent_run_id)
    log.info("%s MLflow run %s in experiment %r at %s", "resuming" if resumed else "started", run_id,
             cfg.experiment, uri)

    import ray
    status = ray.remote(num_cpus=0)(RunStatus).remote()
    r = cfg.resources
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "tracking_uri": uri, "run_id": run_id, "status": status},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=cfg.name, storage_path=str(runs_dir),
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             callbacks=callbacks),
    )
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        if settle_status:
            _mark(uri, run_id, "KILLED")
        raise
    except Exception as err:
        if settle_status:
            _mark(uri, run_id, "FAILED")
        raise RuntimeError(f"training failed: {err}") from err
    checkpoint = None
    if result.checkpoint is not None:
        checkpoint = storage.from_filesystem(result.checkpoint.filesystem, result.checkpoint.path)
    metrics = dict(result.metrics or {})
    nonfinite = ray.get(status.get_nonfinite.remote())
    if nonfinite is not None:
        _mark(uri, run_id, "FAILED")
        raise NonFiniteLossError(nonfinite, checkpoint)

    step = int(metrics.get("step", cfg.train.steps))
    eval_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}
    workers = ray.get(status.get_workers.remote())
    record = {"step": step, "run_id": run_id, "tracking_uri": uri, "checkpoint": str(checkpoint),
              "metrics": eval_metrics, "workers": workers, "logged": False}
    _write_result(run_dir, record)  # the results are safe on disk before MLflow is asked to take them
    _publish(uri, run_id, run_dir, checkpoint, eval_metrics, workers, step)
    _write_result(run_dir, {**record, "logged": True})
    return TrainResult(run_dir, run_id, uri, step, checkpoint, eval_metrics)
