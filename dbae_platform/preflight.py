"""Checks before a run starts: what would otherwise fail inside a Ray worker fails on the driver, in one line.

On the driver, before Ray starts: the output directories can be directories, the dataset exists and its first images
read at the configured size, and the run's newest checkpoint loads (an unreadable newest one is skipped for the
newest one that loads, with one log line; only when none loads is it an error). On a Ray cluster (RAY_ADDRESS set),
the data check then runs once more as a light task on every other node that can host a training worker, since only
those nodes see their own mounts. The worker's side of the checkpoint fallback is `resume_state`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from dbae_core.checkpoint import REQUIRED_KEYS, CheckpointError
from dbae_platform.argtypes import blocking_file
from dbae_platform.config import Config, ConfigError, load_config
from dbae_platform.models import STATE_FILE
from dbae_platform.storage import ObjectPath, StoragePath, location

__all__ = ["check_run", "check_sweep", "check_directories", "check_data", "check_data_on_nodes",
           "newest_loadable_checkpoint", "resume_state"]

log = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint_<date and time> directories: sorted by name, oldest first
NODE_TIMEOUT_S = 120.0


# -- entry points ------------------------------------------------------------------------------------
def check_run(cfg: Config) -> None:
    """Before one training run starts (`dbae train`, a sweep's trial): directories, data, newest loadable checkpoint;
    on a cluster, the data on the worker nodes too. Raises ConfigError / CheckpointError (one line)."""
    from dbae_platform.models import run_paths
    runs_dir, run_dir = run_paths(cfg)
    check_directories(runs_dir, run_dir, fix="set tracking.runs_dir to a directory, or --set name=NEW")
    check_data(cfg)
    if isinstance(run_dir, Path):  # in a bucket the workers fall back (resume_state) without a download here first
        newest_loadable_checkpoint(run_dir)
    if _cluster_driver():
        check_data_on_nodes(cfg)


def check_sweep(cfg: Config, storage_path: str | Path) -> None:
    """Before a sweep starts (its driver, with the base config): the storage path and the data; on a cluster, the
    data on the worker nodes too. Raises ConfigError (one line)."""
    check_directories(location(storage_path), fix="pass --storage-path with a directory")
    check_data(cfg)
    if _cluster_driver():
        check_data_on_nodes(cfg)


# -- directories -------------------------------------------------------------------------------------
def check_directories(*paths: StoragePath, fix: str = "pass a directory path") -> None:
    """Each path is, or can become, a directory: neither it nor a parent is a file. A bucket's prefix must take a
    write from this machine."""
    for path in paths:
        if isinstance(path, ObjectPath):
            check_writable(path)
            continue
        blocker = blocking_file(Path(path))
        if blocker is not None:
            raise ConfigError(f"{path} cannot be a directory: {blocker} is a file; {fix}")


def check_writable(path: ObjectPath) -> None:
    """This machine can write under a bucket's prefix (it writes and deletes a marker); ConfigError otherwise."""
    marker = path / f".dbae-write-check-{uuid.uuid4().hex}"
    try:
        marker.write_text("written by dbae to check access; deleted at once\n")
        marker.unlink(missing_ok=True)
    except Exception as err:  # no such bucket, no credentials, no route to the endpoint, ...
        text = " ".join(str(err).split())[:200]
        raise ConfigError(f"storage path {path} cannot be written ({type(err).__name__}: {text}): check the bucket "
                          "name and this machine's credentials (AWS_*/GOOGLE_* environment, an instance role or "
                          "service account; AWS_ENDPOINT_URL for an S3-compatible server)") from None


# -- data --------------------------------------------------------------------------------------------
def _first_item(dataset: Dataset) -> Any:
    if isinstance(dataset, IterableDataset):
        return next(iter(dataset))
    if len(dataset) == 0:
        raise StopIteration
    return dataset[0]


def _check_first_image(cfg: Config, split: str, dataset: Dataset) -> None:
    """The first image of `dataset` reads, as a (channels, size, size) tensor."""
    d = cfg.data
    where = f"data.dataset={d.dataset}" + (f" at data.root={d.root}" if d.root else "")
    try:
        item = _first_item(dataset)
    except StopIteration:
        raise ConfigError(f"data: the {split} split of {where} holds no images: point data.root at the full "
                          "dataset") from None
    except ConfigError:
        raise
    except Exception as err:  # a corrupt image file, a shard that is not Parquet, an unreadable file ...
        text = " ".join(str(err).split())[:200]
        raise ConfigError(f"data: the first {split} image of {where} cannot be read ({type(err).__name__}: {text}): "
                          "check the files under data.root") from None
    image = item[0] if isinstance(item, (tuple, list)) else item
    expected = (cfg.channels, d.size, d.size)
    if not torch.is_tensor(image) or tuple(image.shape) != expected:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ConfigError(f"data: the {split} images of {where} are {shape}, not {expected} (channels, data.size, "
                          "data.size): set data.size to the size the data was prepared at, or prepare it again")


def check_data(cfg: Config) -> None:
    """The dataset of `cfg` exists and its first train and test images read at data.size (ConfigError otherwise)."""
    from dbae_platform.models import build_datasets
    try:
        train, test = build_datasets(cfg)
    except ConfigError as err:
        raise ConfigError(f"{err}: check data.dataset and data.root (--set data.root=DIR)") from None
    # A shuffled stream fills its buffer before the first item; its shards' metadata was checked when it was built.
    if not (isinstance(train, IterableDataset) and getattr(train, "shuffle", False)):
        _check_first_image(cfg, "train", train)
    _check_first_image(cfg, "test", test)


def _data_problem(cfg_dict: dict[str, Any]) -> str | None:
    """On a Ray node: what is wrong with the data there, or None (the light task of check_data_on_nodes)."""
    try:
        check_data(load_config(cfg_dict))
    except ConfigError as err:
        return str(err)
    return None


def _can_host_worker(node: dict[str, Any], cfg: Config) -> bool:
    r, have = cfg.resources, node.get("Resources", {})
    return have.get("CPU", 0) >= r.cpus_per_worker and (not r.use_gpu or have.get("GPU", 0) >= r.gpus_per_worker)


def _cluster_driver() -> bool:
    """On a Ray cluster (RAY_ADDRESS), in the process that starts the run: not inside a Tune trial, whose sweep's
    driver checked the nodes already."""
    if not os.environ.get("RAY_ADDRESS"):
        return False
    import ray
    return not (ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None)


def _node_answer(ref: Any) -> str | None:
    import ray
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # not a ConfigError: report what it wraps, in one line
        cause = getattr(err, "cause", None) or err
        return f"the data check failed ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"


def check_data_on_nodes(cfg: Config, include_driver_node: bool = False, timeout_s: float = NODE_TIMEOUT_S) -> None:
    """Run check_data as a zero-CPU task on every live node that can host a training worker (except the driver's own,
    checked already); the first problem is a one-line ConfigError naming the node. Starts Ray when needed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from dbae_platform.ray_cluster import ray_init
    from dbae_platform.storage import node_label
    ray_init()
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n["Alive"] and _can_host_worker(n, cfg)
             and (include_driver_node or n["NodeID"] != here)]
    probe = ray.remote(num_cpus=0, max_retries=0)(_data_problem)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(cfg.to_dict()): node_label(n["NodeManagerAddress"], n["NodeID"]) for n in nodes}
    ready, silent = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    for ref in ready:
        problem = _node_answer(ref)
        if problem is not None:
            raise ConfigError(f"on Ray node {refs[ref]}: {problem}")
    if silent:
        log.warning("data check: node(s) %s did not answer within %.0f s; going on",
                    ", ".join(sorted(refs[r] for r in silent)), timeout_s)


# -- checkpoints -------------------------------------------------------------------------------------
def _read_state(path: Path, mmap: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) when `path` loads as a training state, else (None, why not). With mmap the tensors stay on disk:
    a cheap check that still finds a truncated file (its zip directory is at the end)."""
    if not path.is_file():
        return None, f"it holds no {path.name}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated or foreign files
        return None, f"its {path.name} is truncated or not a torch file ({type(err).__name__})"
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        return None, f"its {path.name} lacks {missing}"
    return state, None


def _skip_message(skipped: str, why: str, used: str) -> str:
    return (f"checkpoint {skipped} is unreadable ({why}): resuming from {used}, the newest one that loads; "
            f"{skipped} is left untouched")


def _none_loads(run: str, newest: str, why: str, count: int) -> CheckpointError:
    return CheckpointError(f"none of the {count} checkpoint(s) of {run} loads (the newest, {newest}: {why}): move "
                           f"them away to start the run afresh, or pass --set name=NEW for a new run")


def newest_loadable_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint_* directory of `run_dir` whose state loads (None when there is none); skipping an
    unreadable newer one is logged in one line, and CheckpointError is raised when none loads."""
    found = sorted((p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), reverse=True)
    first_problem = None
    for checkpoint in found:
        _, problem = _read_state(checkpoint / STATE_FILE, mmap=True)
        if problem is None:
            if first_problem is not None:
                log.warning(_skip_message(str(found[0]), first_problem, checkpoint.name))
            return checkpoint
        first_problem = first_problem or problem
    if found:
        raise _none_loads(str(run_dir), str(found[0]), first_problem or "", len(found))
    return None


def _load_ray_checkpoint(checkpoint: Any) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with checkpoint.as_directory() as d:
            return _read_state(Path(d) / STATE_FILE, mmap=False)
    except Exception as err:  # remote storage: the download itself failed
        return None, f"it cannot be fetched ({type(err).__name__})"


def _older_siblings(checkpoint: Any) -> list[str]:
    """Paths of the checkpoint_* directories beside `checkpoint` (same run, same filesystem) older than it, newest
    first."""
    import pyarrow.fs
    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    return sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                   and i.base_name.startswith(CHECKPOINT_PREFIX) and i.base_name < name), reverse=True)


def resume_state(checkpoint: Any, rank: int = 0) -> dict[str, Any]:
    """In a Ray Train worker: the state of `checkpoint` (ray.train.get_checkpoint()) or, when it is unreadable (a node
    died while writing it), of the newest older checkpoint of the run that loads. Rank 0 logs the skip in one line;
    the unreadable checkpoint is left untouched. CheckpointError when none loads."""
    import ray.train
    state, problem = _load_ray_checkpoint(checkpoint)
    if state is not None:
        return state
    name = posixpath.basename(checkpoint.path.rstrip("/"))
    older = _older_siblings(checkpoint)
    for path in older:
        state, _ = _load_ray_checkpoint(ray.train.Checkpoint(path, filesystem=checkpoint.filesystem))
        if state is not None:
            (log.warning if rank == 0 else log.debug)(_skip_message(name, problem or "", posixpath.basename(path)))
            return state
    raise _none_loads(posixpath.dirname(checkpoint.path.rstrip("/")), name, problem or "", 1 + len(older))
