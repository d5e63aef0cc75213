"""MLflow tracking: where runs go, one run per training run (reused on resume), and a rank-0 logger that never blocks.

Tracking URI: the --tracking-uri flag > $MLFLOW_TRACKING_URI > the embedded sqlite:///<runs dir>/mlflow.db with
artifacts in <runs dir>/mlartifacts. A server that is down at start is a one-line error before any training; one
that drops during training only delays logging: the worker's logger buffers and retries in a background thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TrackingError", "resolve_uri", "check_reachable", "open_run", "finish_run", "MetricLogger",
           "git_commit", "command_line", "hardware", "PARAM_LIMIT", "mlflow_client"]

log = logging.getLogger(__name__)
PARAM_LIMIT = 500  # characters kept of one param value (MLflow rejects long values)
RUN_FILE = "mlflow_run.json"


class TrackingError(RuntimeError):
    """The tracking store cannot be used (reported in one line before training starts)."""


def resolve_uri(flag: str | None, configured: str | None, runs_dir: Path) -> str:
    """flag > config tracking.uri > $MLFLOW_TRACKING_URI > sqlite:///<runs_dir>/mlflow.db."""
    uri = flag or configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError unless the tracking store at `uri` answers now."""
    if _is_http(uri):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:  # noqa: S310 (http only)
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered HTTP {resp.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}): start it, or unset "
                                "MLFLOW_TRACKING_URI to use the embedded store under the runs directory") from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def git_commit() -> str | None:
    """The repository's HEAD commit (with '-dirty' when the tree has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it: `python sweeps/x.py ...` for a script, `dbae ...` for the console."""
    import shlex
    import sys
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0]
    if head.endswith(".py"):
        try:
            head = str(Path(head).resolve().relative_to(Path.cwd()))
        except ValueError:
            pass
        return shlex.join(["python", head, *argv[1:]])
    return shlex.join([Path(head).name, *argv[1:]])


def hardware() -> str:
    """One line naming this machine: CPU model and cores, GPUs (if any) and the torch version."""
    import platform
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{model}, {cores} CPU cores"]
    try:
        import torch
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"{len(gpus)}× {gpus[0]}" if gpus else "no GPU")
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def mlflow_client(uri: str):
    """An MlflowClient for `uri` (mlflow imported on first use)."""
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str, uri: str, runs_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not _is_http(uri):  # embedded store: artifacts beside the database, not in ./mlruns
        location = (runs_dir / "mlartifacts" / name.replace("/", "_")).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _params(flat: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param
    return [Param(k, (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:PARAM_LIMIT])
            for k, v in sorted(flat.items())]


def open_run(uri: str, experiment: str, run_dir: Path, runs_dir: Path, run_name: str, params: dict[str, Any],
             tags: dict[str, str], config_yaml: str, parent_run_id: str | None = None) -> tuple[str, bool]:
    """The MLflow run of `run_dir`: the one recorded there (a rerun resumes it) or a new one. Returns (id, resumed)."""
    client = mlflow_client(uri)
    record = run_dir / RUN_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("tracking_uri") == uri:
            try:
                run = client.get_run(saved["run_id"])
            except Exception:  # deleted or another store
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id, True
    exp_id = _experiment_id(client, experiment, uri, runs_dir)
    all_tags = {"mlflow.runName": run_name, **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    items = _params(params)
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    client.log_text(run_id, config_yaml, "config.yaml")
    record.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment": experiment}))
    return run_id, False


def finish_run(uri: str, run_id: str, status: str, metrics: dict[str, float] | None = None, step: int = 0,
               artifacts: Iterable[Path] = (), artifact_path: str | None = None,
               tags: dict[str, str] | None = None) -> None:
    """Log final metrics, tags and artifacts and set the run's status (FINISHED, FAILED or KILLED)."""
    from mlflow.entities import Metric, RunTag
    client = mlflow_client(uri)
    now = int(time.time() * 1000)
    if metrics or tags:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                                          if v is not None],
                         tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path)
    client.set_terminated(run_id, status=status)


class MetricLogger:
    """Logs metrics and images to one MLflow run from a background thread; buffers and retries while it is down.

    Training never waits on the tracking server: `log_metrics` and `log_image` only enqueue. Steps at or below
    `skip_until` (what a restarted worker finds already logged) are dropped, so a run's history stays monotone.
    """

    def __init__(self, uri: str, run_id: str, retry_s: float = 5.0) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: this thread does the retrying
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri, self.run_id, self.retry_s = uri, run_id, retry_s
        self._client = mlflow_client(uri)
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[tuple[str, Any]] = []
        self._down_since: float | None = None
        self.skip_until = self._last_step()
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _last_step(self) -> int:
        try:
            history = self._client.get_metric_history(self.run_id, "train/loss")
        except Exception:  # unreachable now: nothing to skip is the safe guess
            return 0
        return max((m.step for m in history), default=0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step > self.skip_until:
            self._queue.put(("metrics", (dict(metrics), step, int(time.time() * 1000))))

    def log_image(self, image: Any, key: str, step: int) -> None:
        """`image`: a PIL image or a uint8 HWC array; shown in the MLflow UI under `key` with a step slider."""
        if step > self.skip_until:
            self._queue.put(("image", (image, key, step)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._queue.put(("text", (text, artifact_file)))

    def _send(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Metric
        if kind == "metrics":
            metrics, step, ts = payload
            self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
        elif kind == "image":
            image, key, step = payload
            self._client.log_image(self.run_id, image, key=key, step=step)
        elif kind == "text":
            self._client.log_text(self.run_id, *payload)

    def _flush_pending(self) -> bool:
        while self._pending:
            kind, payload = self._pending[0]
            try:
                self._send(kind, payload)
            except Exception as err:  # the server is down or dropped the connection
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("MLflow at %s is unreachable (%s): buffering metrics and retrying every %.0f s; "
                                "training continues", self.uri, type(err).__name__, self.retry_s)
                return False
            self._pending.pop(0)
        if self._down_since is not None:
            log.warning("MLflow is reachable again after %.0f s: buffered metrics were sent",
                        time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.retry_s if self._pending else None)
            except queue.Empty:
                item = None
            if item is not None:
                if item[0] == "stop":
                    self._flush_pending()
                    item[1].set()
                    return
                self._pending.append(item)
            self._flush_pending()

    def close(self, timeout: float = 60.0) -> bool:
        """Flush what is buffered (waiting up to `timeout` s); True if everything reached the server."""
        done = threading.Event()
        self._queue.put(("stop", done))
        done.wait(timeout)
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(min(self.retry_s, 1.0))
            self._flush_pending()
        if self._pending:
            log.error("MLflow stayed unreachable: %d buffered records were not logged", len(self._pending))
        return not self._pending

