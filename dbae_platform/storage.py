"""The runs directory on a Ray cluster: one path every node can see.

Ray Train writes checkpoints from the workers' nodes, Tune restores trials on whichever node has room, and the embedded
MLflow store and `result.json` are written where the driver or the trial runs. On several machines that only works when
the storage path is a filesystem all of them mount (NFS, EFS, Filestore, Lustre, a bucket mounted with gcsfuse or
mountpoint-s3). A node-local directory would scatter a run over the machines' disks and break resume, so the platform
checks before it starts: it writes a marker file and asks every live node whether it sees it.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

__all__ = ["STORAGE_ENV", "default_storage_path", "node_label", "nodes_seeing", "require_shared_storage"]

log = logging.getLogger("dbae")

STORAGE_ENV = "DBAE_STORAGE_PATH"  # the cluster configs set it on every node to the shared mount (/mnt/dbae/runs)
PROBE_TIMEOUT_S = 120.0


def default_storage_path() -> str:
    """The runs directory when none is given: $DBAE_STORAGE_PATH when set, else `runs` under the working directory."""
    return os.environ.get(STORAGE_ENV) or "runs"


def node_label(ip: str, node_id: str) -> str:
    """How a node is named in messages and tags: its IP and the start of its ID (several nodes can share an IP)."""
    return f"{ip}/{node_id[:8]}"


def _sees(marker: str) -> bool:
    return os.path.isfile(marker)


def nodes_seeing(marker: Path, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, bool | None]:
    """{node label: whether a process on that node sees `marker`} for every live node; None: no answer in time."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = {}
    for node in (n for n in ray.nodes() if n["Alive"]):
        pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = probe.options(scheduling_strategy=pinned).remote(str(marker))
        refs[ref] = node_label(node["NodeManagerAddress"], node["NodeID"])
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    seen: dict[str, bool | None] = {label: None for label in refs.values()}
    for ref in ready:
        seen[refs[ref]] = bool(ray.get(ref))
    return seen


def require_shared_storage(path: Path) -> None:
    """On a multi-node Ray cluster, refuse (ConfigError, one line) a storage path some node cannot see.

    Call it after Ray is initialised and before anything is written for the run. A one-node cluster passes untouched.
    """
    import ray

    from dbae_platform.config import ConfigError

    if sum(1 for n in ray.nodes() if n["Alive"]) <= 1:
        return
    path.mkdir(parents=True, exist_ok=True)
    marker = path / f".dbae-shared-{uuid.uuid4().hex}"
    marker.write_text("written by the driver to check that every Ray node sees this directory\n")
    try:
        seen = nodes_seeing(marker)
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(label for label, ok in seen.items() if ok is False)
    silent = sorted(label for label, ok in seen.items() if ok is None)
    if silent:
        log.warning("storage check: node(s) %s did not answer within %.0f s; going on", ", ".join(silent),
                    PROBE_TIMEOUT_S)
    if blind:
        raise ConfigError(
            f"storage path {path} is node-local: {len(blind)} of {len(seen)} Ray nodes ({', '.join(blind[:3])}"
            f"{', ...' if len(blind) > 3 else ''}) cannot see it; on a multi-node cluster pass --storage-path (or "
            f"set ${STORAGE_ENV}) to a directory every node mounts, e.g. an NFS/EFS/Filestore mount like "
            f"/mnt/dbae/runs")
    log.info("storage path %s is shared by all %d Ray nodes", path, len(seen))
