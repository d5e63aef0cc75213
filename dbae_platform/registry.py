"""Checkpoints by path or by MLflow URI, and the MLflow model registry.

Every command that reads a trained model (`dbae eval`, `prior`, `generate`, `interpolate`, `manipulate`) takes a
checkpoint directory written by `dbae train`, its state.pt, or an MLflow URI: `models:/NAME/VERSION`,
`models:/NAME@ALIAS`, `models:/NAME/latest`, or `runs:/RUN_ID/model`. A URI is downloaded once into
RUNS/models/... (the runs directory), and outputs that default to "beside the checkpoint" land there.

`dbae register RUN_OR_CHECKPOINT NAME` (and a sweep's `--register NAME`, for its best trial) logs a trained model to
its MLflow run as an MLflow pyfunc model and registers it under NAME. The model is logged as code
(dbae_platform/pyfunc_model.py: loading it unpickles nothing); `predict` encodes or reconstructs images
(dbae_platform.pyfunc), with a signature and an input example. Its `checkpoint` artifact holds what the commands need:
state.pt (the EMA weights, model kind and config, step; not the optimizer), config.yaml, the latent prior (prior.pt)
when one was trained (`dbae prior`, or the generation suite at the end of training) and the evaluation's metrics.json.

    dbae register runs/tiny/checkpoint_000000 dbae-tiny
    dbae eval models:/dbae-tiny/1 --suite recon
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbae_platform.argtypes import MODEL_URIS
from dbae_platform.config import ConfigError
from dbae_platform.storage import is_object_store, local_copy, local_runs_dir, location

__all__ = ["MODEL_NAME", "Registered", "is_model_uri", "is_run_id", "resolve_checkpoint", "checkpoint_files", "fetch",
           "package", "register", "best_trial_run"]

log = logging.getLogger("dbae")

MODEL_NAME = "model"  # the logged model's name in its run: runs:/RUN_ID/model
PACKAGE = "checkpoint"  # the model's artifact folder that the commands read as a checkpoint directory
REGISTRY_EXPERIMENT = "dbae-registry"  # where a checkpoint that belongs to no known MLflow run is logged
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_VERSION = re.compile(r"^models:/([^/@]+)(?:/([^/]+)|@([^/]+))$")


@dataclass(frozen=True)
class Registered:
    name: str
    version: int
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def is_model_uri(ref: Any) -> bool:
    return isinstance(ref, str) and ref.startswith(MODEL_URIS)


def is_run_id(text: str) -> bool:
    """An MLflow run id: 32 hex digits."""
    return _RUN_ID.match(text) is not None


# -- reading: a path or a URI as (state.pt, config.yaml) ------------------------------------------------------
def resolve_checkpoint(ref: str | Path, tracking_uri: str | None = None,
                       runs_dir: str | Path | None = None) -> tuple[Path, Path | None]:
    """(state file, config.yaml or None) of a checkpoint directory, a state file, a checkpoint in a bucket (s3://...,
    gs://...: copied into this machine's cache), or a models:/ or runs:/ URI (fetched from `tracking_uri` into
    `runs_dir`/models)."""
    from dbae_platform import storage
    if is_model_uri(ref):
        from dbae_platform.tracking import resolve_uri
        runs = Path(runs_dir or storage.local_runs_dir()).expanduser().resolve()
        ref = fetch(str(ref), resolve_uri(tracking_uri, None, runs), runs / "models")
    elif storage.is_object_store(ref):
        ref = _download_checkpoint(storage.ObjectPath(str(ref)))
    path = Path(ref)
    if path.is_dir():
        state = path / "state.pt"
        if not state.is_file():
            raise FileNotFoundError(f"{path} holds no state.pt: pass a checkpoint directory written by dbae train, "
                                    "a .pt file, or models:/NAME/VERSION")
        return state, path / "config.yaml" if (path / "config.yaml").is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass a checkpoint directory written by dbae "
                                "train (it holds state.pt and config.yaml) or models:/NAME/VERSION")
    cfg = path.parent / "config.yaml"
    return path, cfg if cfg.is_file() else None


def checkpoint_files(checkpoint: str | Path, tracking_uri: str | None) -> tuple[Path, Path]:
    """(state file, config.yaml) of a command's CHECKPOINT: a path, or a models:/ or runs:/ URI from `tracking_uri`
    (default: the embedded store under the runs directory)."""
    from dbae_platform.tracking import check_reachable, store_uri
    uri = tracking_uri
    if uri is not None:  # a bad flag is bad input, whether or not CHECKPOINT needs it
        check_reachable(uri)
    elif is_model_uri(checkpoint):  # the store a URI comes from must exist
        uri = store_uri(None, Path(local_runs_dir()))
    state_path, cfg_path = resolve_checkpoint(checkpoint, uri)
    if cfg_path is None:
        raise FileNotFoundError(f"no config.yaml beside {state_path}: the run's dataset is unknown; pass a checkpoint "
                                "directory written by dbae train")
    return state_path, cfg_path


def _download_checkpoint(remote) -> Path:
    """A local copy of a checkpoint directory or state file in a bucket (a file comes with the config.yaml beside
    it), in this machine's cache: the command then reads it, and writes its outputs, as for a local checkpoint."""
    from dbae_platform import storage
    if remote.is_file():
        local = storage.local_copy(remote, storage.cache_dir(remote))
        if (remote.parent / "config.yaml").is_file():
            storage.local_copy(remote.parent / "config.yaml", local.parent / "config.yaml")
        return local
    if not remote.is_dir():
        raise FileNotFoundError(f"checkpoint {remote} does not exist: pass a checkpoint directory written by dbae "
                                "train (it holds state.pt and config.yaml), e.g. s3://BUCKET/PREFIX/RUN/checkpoint_...")
    local = storage.local_copy(remote)
    log.info("copied %s to %s", remote, local)
    return local


def _model_version(client, uri: str, tracking_uri: str):
    """The registered version a models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS URI names."""
    from mlflow.exceptions import MlflowException
    m = _VERSION.match(uri)
    if m is None:
        raise ValueError(f"{uri} is not a model URI: use models:/NAME/VERSION, models:/NAME@ALIAS, "
                         "models:/NAME/latest or runs:/RUN_ID/model")
    name, version, alias = m.groups()
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if versions:
                return max(versions, key=lambda v: int(v.version))
        elif version.isdigit():
            return client.get_model_version(name, version)
        else:
            raise ValueError(f"{uri}: version {version!r} is not a number: use models:/{name}/1, "
                             f"models:/{name}/latest or models:/{name}@ALIAS")
    except MlflowException:
        pass
    raise LookupError(f"{uri} is not in the model registry at {tracking_uri}: see its Models page (dbae ui), or "
                      "register a run first (dbae register RUN_OR_CHECKPOINT NAME)")


def fetch(uri: str, tracking_uri: str, cache: Path) -> Path:
    """The checkpoint directory of a registered (models:/) or logged (runs:/RUN_ID/model) model, downloaded into
    `cache` on first use. A registered version's files never change, so a downloaded copy is reused."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dbae_platform.tracking import mlflow_client
    client = mlflow_client(tracking_uri)
    if uri.startswith("models:/"):
        mv = _model_version(client, uri, tracking_uri)
        where = {"artifact_uri": client.get_model_version_download_uri(mv.name, mv.version)}
        dst = cache / mv.name / str(mv.version)
    else:
        parts = uri.removeprefix("runs:/").strip("/").split("/", 1)
        if not is_run_id(parts[0]) or len(parts) < 2:
            raise ValueError(f"{uri} is not a logged model: use runs:/RUN_ID/{MODEL_NAME} (RUN_ID: 32 hex digits)")
        where = {"run_id": parts[0], "artifact_path": parts[1]}
        dst = cache / "runs" / parts[0] / parts[1]
        shutil.rmtree(dst, ignore_errors=True)  # a run's artifacts may change: fetch them again
    found = sorted(dst.glob(f"**/artifacts/{PACKAGE}/state.pt"))
    if not found:
        try:
            mlflow.artifacts.download_artifacts(**where, dst_path=str(dst), tracking_uri=tracking_uri)
        except MlflowException as err:
            raise LookupError(f"{uri}: nothing to download from {tracking_uri} "
                              f"({str(err).splitlines()[0][:200]}): check the run id and model name") from None
        found = sorted(dst.glob(f"**/artifacts/{PACKAGE}/state.pt"))
    if not found:
        raise LookupError(f"{uri} holds no DBAE model (no artifacts/{PACKAGE}/state.pt): pass a model that "
                          "dbae register wrote")
    log.info("%s: checkpoint %s", uri, found[0].parent)
    return found[0].parent


# -- writing: a run's model, logged and registered --------------------------------------------------------------
def package(state: dict[str, Any], config_yaml: Path, source_dir: Path | None, out: Path) -> Path:
    """out/checkpoint: the EMA weights (state.pt), config.yaml, the latent prior and the evaluation's metrics of a
    checkpoint directory (`source_dir`), if it has them."""
    import torch

    from dbae_platform.models import weights_state
    pkg = out / PACKAGE
    pkg.mkdir(parents=True)
    torch.save(weights_state(state), pkg / "state.pt")
    shutil.copyfile(config_yaml, pkg / "config.yaml")
    if source_dir is not None:
        from dbae_platform.models import EVAL_DIR
        priors = [p for p in (source_dir / "prior.pt", source_dir / EVAL_DIR / "prior.pt") if p.is_file()]
        if priors:
            shutil.copyfile(priors[0], pkg / "prior.pt")
        if (source_dir / EVAL_DIR / "metrics.json").is_file():
            shutil.copyfile(source_dir / EVAL_DIR / "metrics.json", pkg / "metrics.json")
    return pkg


def _run_of_checkpoint(state_path, tracking_uri: str) -> str | None:
    """The MLflow run that wrote a checkpoint under runs/NAME/checkpoint_* (a local path or a bucket's), when it was
    logged to this store."""
    from dbae_platform.models import RESULT_FILE
    for result in (state_path.parent.parent / RESULT_FILE, state_path.parent / RESULT_FILE):
        if _reachable_file(result):
            record = json.loads(result.read_text())
            if record.get("tracking_uri") == tracking_uri:
                return record.get("run_id")
    return None


def _from_run(client, run_id: str, tmp: Path) -> tuple[Path, Path, Path | None]:
    """(state file, config.yaml, checkpoint directory or None) of an MLflow run: its final checkpoint when this
    machine sees it (prior and metrics included), else the EMA weights and config logged to the run."""
    from mlflow.exceptions import MlflowException

    from dbae_platform.models import RESULT_FILE
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise LookupError(f"run {run_id} is not in the MLflow store {client.tracking_uri}: pass a run id from the "
                          "MLflow UI or a checkpoint directory") from None
    if run.info.status != "FINISHED":
        raise ValueError(f"run {run_id} is {run.info.status}: register a finished run (rerun its command to finish it)")
    result = location(run.data.tags.get("dbae.run_dir", "/nonexistent")) / RESULT_FILE
    if _reachable_file(result):
        checkpoint = location(json.loads(result.read_text()).get("checkpoint") or "/nonexistent")
        if _reachable_file(checkpoint / "state.pt") and _reachable_file(checkpoint / "config.yaml"):
            checkpoint = local_copy(checkpoint, tmp / "checkpoint")
            return checkpoint / "state.pt", checkpoint / "config.yaml", checkpoint
    import mlflow
    try:
        state = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="ema.pt", dst_path=str(tmp),
                                                    tracking_uri=client.tracking_uri)
        cfg = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=str(tmp),
                                                  tracking_uri=client.tracking_uri)
    except MlflowException:
        raise LookupError(f"run {run_id} has no model (no ema.pt and config.yaml among its artifacts): pass a run "
                          "that dbae train finished") from None
    return Path(state), Path(cfg), None


def _reachable_file(path) -> bool:
    """Whether this machine can read the file at `path` (a bucket it has no credentials for counts as no)."""
    try:
        return path.is_file()
    except Exception:
        return False


def _input_example(config_yaml: Path):
    """Two seeded random images of the run's shape in [-1, 1]: the model's input example."""
    import torch

    from dbae_platform.config import load_config
    cfg = load_config(config_yaml)
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(2, cfg.channels, cfg.data.size, cfg.data.size, generator=gen) * 2 - 1).numpy()


def _requirements() -> list[str]:
    import importlib.metadata as md
    return [f"{name}=={md.version(name).split('+')[0]}" for name in ("torch", "torchvision", "mlflow", "dbae-platform")]


def register(source: str | Path, name: str, tracking_uri: str) -> Registered:
    """Log the model of `source` (an MLflow run id, or a checkpoint directory or file) as an MLflow pyfunc model to
    its run (artifact path `model`: a run has one, logged again on a second registration) and register it as a new
    version of `name`. A checkpoint from no run of this store gets a run in the dbae-registry experiment."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
    from dbae_platform.pyfunc import DEFAULT_PARAMS, DBAEModel
    from dbae_platform.tracking import mlflow_client
    client = mlflow_client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="dbae_register_") as tmp:
        source_dir = None
        if isinstance(source, str) and is_run_id(source) and not Path(source).exists():
            run_id: str | None = source
            state_path, cfg_path, source_dir = _from_run(client, source, Path(tmp))
        else:
            state_path, cfg_path = resolve_checkpoint(source)
            if cfg_path is None:
                raise FileNotFoundError(f"no config.yaml beside {state_path}: pass a checkpoint directory written "
                                        "by dbae train")
            origin = location(source) if is_object_store(source) else state_path  # where dbae train wrote it
            if origin.name != state_path.name:
                origin = origin / state_path.name
            source_dir, run_id = state_path.parent, _run_of_checkpoint(origin, tracking_uri)
        state = load_checkpoint(state_path, required=WEIGHTS_KEYS)
        pkg = package(state, cfg_path, source_dir, Path(tmp) / "package")
        model = DBAEModel()
        model.load_context(type("Context", (), {"artifacts": {PACKAGE: str(pkg)}})())
        example = _input_example(cfg_path)
        signature = infer_signature(example, model.predict(None, example), params=DEFAULT_PARAMS)
        if run_id is None:
            experiment = client.get_experiment_by_name(REGISTRY_EXPERIMENT)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else client.create_experiment(REGISTRY_EXPERIMENT))
            run = client.create_run(experiment_id, run_name=state_path.parent.name,
                                    tags={"dbae.source": str(state_path.resolve())})
            client.set_terminated(run.info.run_id)
            run_id = run.info.run_id
        # Saved here and logged with the client: no global MLflow state (tracking URI, active run) is touched.
        model_dir = Path(tmp) / MODEL_NAME
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts={PACKAGE: str(pkg)}, signature=signature, input_example=example,
                                 pip_requirements=_requirements())
        client.log_artifacts(run_id, str(model_dir), MODEL_NAME)
        try:
            client.create_registered_model(name, description="A DBAE (dbae register): pyfunc predict encodes images "
                                                             "to z or reconstructs them; CHECKPOINT of the dbae "
                                                             "commands as models:/NAME/VERSION.")
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(
            name, f"{client.get_run(run_id).info.artifact_uri}/{MODEL_NAME}", run_id,
            tags={"dbae.step": str(int(state["step"])), "dbae.method": str(state.get("model_kind"))})
    log.info("registered %s (run %s) as models:/%s/%s", state_path, run_id, name, version.version)
    return Registered(name, int(version.version), run_id)


def best_trial_run(client, parent_run_id: str, values: dict[str, Any], metric: str, mode: str) -> str:
    """The finished child run of a sweep with the swept `values` whose `metric` is best (min or max `mode`)."""
    from dbae_platform.tracking import child_runs
    runs = [r for r in child_runs(client, parent_run_id)
            if r.info.status == "FINISHED" and metric in r.data.metrics
            and json.loads(r.data.tags.get("dbae.sweep.values", "{}")) == json.loads(json.dumps(values, default=str))]
    if not runs:
        raise ConfigError(f"no finished trial of sweep run {parent_run_id} with {values} reports {metric}: "
                          "nothing to register")
    pick = min if mode == "min" else max
    return pick(runs, key=lambda r: r.data.metrics[metric]).info.run_id
