"""MLflow tracking: where runs go, one run per training run (reused on resume), and a rank-0 logger that never blocks.

Tracking URI: the --tracking-uri flag > $MLFLOW_TRACKING_URI > the embedded sqlite:///<runs dir>/mlflow.db with
artifacts in <runs dir>/mlartifacts. A server that is down at start is a one-line error before any training; one
that drops during training only delays logging: the worker's logger buffers and retries in a background thread.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TrackingError", "IncompleteLogError", "resolve_uri", "check_reachable", "store_uri", "open_run",
           "finish_run", "system_monitor", "ui_url", "run_urls", "mark_training_experiment", "EXPERIMENT_KIND",
           "MetricLogger", "git_commit", "command_line", "hardware", "describe_workers", "PARAM_LIMIT",
           "mlflow_client", "child_runs", "configure_retries", "missing_from_run"]

log = logging.getLogger(__name__)
PARAM_LIMIT = 500  # characters kept of one param value (MLflow rejects long values)
RUN_FILE = "mlflow_run.json"
COMMIT_ENV = "DBAE_GIT_COMMIT"  # the commit of a checkout without .git (a Docker image), set where it was built


class TrackingError(RuntimeError):
    """The tracking store cannot be used (reported in one line before training starts)."""


class IncompleteLogError(RuntimeError):
    """A run finished, but the tracking store did not take all of its final metrics or artifacts (exit code 1)."""


# MLflow's HTTP client retries with exponential backoff on its own; these bound one call to about three minutes
# (its defaults allow far longer). Nothing in this project wraps its calls in a second retry loop.
RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def configure_retries() -> None:
    """MLflow's retry settings, unless the environment sets them (it wins)."""
    for key, value in RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def resolve_uri(flag: str | None, configured: str | None, runs_dir: Any) -> str:
    """flag > config tracking.uri > $MLFLOW_TRACKING_URI > sqlite:///<runs_dir>/mlflow.db (a local runs_dir: a bucket
    cannot hold sqlite, so there a URI must be given)."""
    uri = flag or configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    from dbae_platform.storage import is_object_store
    if is_object_store(runs_dir):
        raise TrackingError(f"the runs directory {runs_dir} is a bucket, which cannot hold the embedded MLflow store "
                            "(a sqlite file): pass --tracking-uri http://HOST:5000 (an MLflow server) or "
                            "sqlite:////local/dir/mlflow.db, or set MLFLOW_TRACKING_URI")
    return f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}"


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
        _check_sqlite_path(uri, Path(uri.removeprefix("sqlite:///")))
    else:
        _check_store(uri)


def store_uri(tracking_uri: str | None, runs_dir: Path) -> str:
    """The tracking URI of a command that reads an existing store (--tracking-uri / $MLFLOW_TRACKING_URI /
    --runs-dir); a missing or unusable store is bad input."""
    uri = resolve_uri(tracking_uri, None, runs_dir.expanduser().resolve())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: pass --runs-dir or "
                                "--tracking-uri of the sweeps")
    check_reachable(uri)
    return uri


def _check_sqlite_path(uri: str, db: Path) -> None:
    """The embedded store's file can be created: no part of its path is a file where a directory belongs."""
    from dbae_platform.argtypes import blocking_file
    blocker = db if db.is_dir() else blocking_file(db.parent)
    if blocker is not None:
        what = "is a directory, not a database file" if blocker == db else "is a file, not a directory"
        raise TrackingError(f"MLflow store {uri} cannot be used: {blocker} {what}; pass --tracking-uri "
                            "sqlite:///DIR/mlflow.db (or --runs-dir) with DIR a directory")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(f"MLflow store {uri} cannot be created ({err.strerror}): pass --tracking-uri "
                            "sqlite:///DIR/mlflow.db (or --runs-dir) with DIR a directory you can write") from None


def _check_store(uri: str) -> None:
    """Any other store (file:, a database, a plugin's scheme): build its client and make one cheap call."""
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as err:  # an unknown scheme, a missing driver, a database that refuses: all bad input
        text = " ".join(str(err).split())
        if "unsupported URI" in text or "Could not find a registered" in text:
            raise TrackingError(f"tracking URI {uri!r} has a scheme MLflow does not know: use http(s)://HOST:PORT, "
                                "sqlite:///PATH/mlflow.db or a database URI (postgresql://, mysql://), or unset "
                                "MLFLOW_TRACKING_URI for the embedded store") from None
        raise TrackingError(f"MLflow store {uri} is unusable ({type(err).__name__}: {text[:200]}): fix the URI or "
                            "unset MLFLOW_TRACKING_URI for the embedded store under the runs directory") from None


def git_commit(root: Path | None = None) -> str | None:
    """The repository's HEAD commit (with '-dirty' when the tree has changes), or None outside a checkout.

    `ray job submit --working-dir .` uploads `.git/HEAD` and `.git/refs` but not the objects (see .rayignore), so on
    a cluster git itself cannot answer: the commit is then read from those files (whether the tree was dirty is
    unknown there). An image without .git records its commit in $DBAE_GIT_COMMIT (cluster/docker/Dockerfile)."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return _head_from_files(root / ".git") or os.environ.get(COMMIT_ENV) or None
    return f"{sha}-dirty" if dirty else sha


def _head_from_files(git_dir: Path) -> str | None:
    """HEAD's commit from `.git/HEAD` and the refs (loose or packed), without git; None when they are absent."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head.removeprefix("ref: ")
        loose = git_dir / ref
        if loose.is_file():
            return loose.read_text().strip() or None
        packed = git_dir / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha
    except OSError:
        pass
    return None


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


def system_monitor(uri: str, run_id: str, interval: float, node: str | None = None):
    """Start MLflow's system-metrics monitor for `run_id` (a thread): CPU and memory utilisation, disk and network
    through psutil, and GPU utilisation and memory through NVIDIA's management library where a GPU and pynvml are
    present, logged as `system/[<node>/]<name>` every `interval` seconds, continuing the steps of an earlier start.
    Returns the monitor (call `.finish()`), or None when it cannot run here: then training goes on without it."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       resume_logging=True, node_id=node, tracking_uri=uri)
    except Exception as err:  # noqa: BLE001 - no psutil, or an unreachable store: the run does not need it
        log.warning("system metrics are off for run %s: %s", run_id, err)
        return None
    monitor.start()
    return monitor


def describe_workers(workers: list[dict]) -> str:
    """The hardware the workers ran on, per kind of node: `<hardware> (ranks 0-3 on 2 nodes: ip/id, ...)`."""
    by_kind: dict[str, dict[str, set]] = {}
    for w in workers:
        kind = by_kind.setdefault(w.get("hardware") or "unknown", {"ranks": set(), "nodes": set()})
        kind["ranks"].add(int(w["rank"]))
        kind["nodes"].add(f"{w['ip']}/{w['node_id'][:8]}")
    parts = []
    for hw, kind in by_kind.items():
        ranks = sorted(kind["ranks"])
        nodes = sorted(kind["nodes"])
        span = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
        parts.append(f"{hw} ({span} on {len(nodes)} node{'s' * (len(nodes) > 1)}: {', '.join(nodes)})")
    return "; ".join(parts)


def mlflow_client(uri: str):
    """An MlflowClient for `uri` (mlflow imported on first use), with this project's retry settings."""
    configure_retries()
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def child_runs(client_or_uri, parent_run_id: str, page_size: int = 500) -> list:
    """Every child run of `parent_run_id` (all pages), oldest first."""
    client = mlflow_client(client_or_uri) if isinstance(client_or_uri, str) else client_or_uri
    parent = client.get_run(parent_run_id)
    runs, token = [], None
    while True:
        page = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=page_size, order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def missing_from_run(client, run_id: str, metrics: Iterable[str], artifacts: Iterable[str] = (),
                     images: Iterable[str] = ()) -> list[str]:
    """What of the given metric keys, artifact paths and image keys the run lacks in the store."""
    run = client.get_run(run_id)
    missing = [k for k in metrics if k not in run.data.metrics]
    present = {a.path for a in client.list_artifacts(run_id)}
    missing += [a for a in artifacts if a not in present]
    images = list(images)
    if images:
        logged = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "images")]
        # MLflow names an image `<key>+step+<step>+...` (`%` instead of `+` in older versions)
        missing += [f"image {k}" for k in images
                    if not any(name.startswith((f"{k}+step+", f"{k}%step%")) for name in logged)]
    return missing


def _experiment_id(client, name: str, uri: str, runs_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        mark_training_experiment(client, exp)
        return exp.experiment_id
    location = None
    if not _is_http(uri):  # embedded store: artifacts beside the database, not in ./mlruns
        location = (runs_dir / "mlartifacts" / name.replace("/", "_")).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# The MLflow UI opens an experiment by its `mlflow.experimentKind` tag: "custom_model_development" shows the training
# runs table (metrics, params, charts); without the tag MLflow 3 may infer its GenAI view (traces, evaluations).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_URL = "http://127.0.0.1:5000"  # where `dbae ui` serves the embedded store by default


def mark_training_experiment(client, experiment) -> None:
    """Tag `experiment` (an MLflow Experiment) as model training, unless it says what it is already."""
    if EXPERIMENT_KIND[0] not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)


def ui_url(uri: str, experiment_id: str, run_id: str | None = None, ui: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs table (or of one run): on the tracking server for an HTTP store,
    else on `ui` (default: where `dbae ui` serves the embedded store)."""
    base = (uri if _is_http(uri) else ui or UI_URL).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")


def run_urls(uri: str, run_id: str) -> tuple[str, str]:
    """(runs table of the run's experiment, the run's own page) in the MLflow UI."""
    experiment_id = mlflow_client(uri).get_run(run_id).info.experiment_id
    return ui_url(uri, experiment_id), ui_url(uri, experiment_id, run_id)


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


def finish_run(uri: str, run_id: str, status: str | None, metrics: dict[str, float] | None = None, step: int = 0,
               artifacts: Iterable[Path] = (), artifact_path: str | None = None,
               tags: dict[str, str] | None = None) -> None:
    """Log final metrics, tags and artifacts and set the run's status (FINISHED, FAILED, KILLED; None: leave it)."""
    from mlflow.entities import Metric, RunTag
    client = mlflow_client(uri)
    now = int(time.time() * 1000)
    if metrics or tags:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                                          if v is not None],
                         tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path)
    if status is not None:
        client.set_terminated(run_id, status=status)


class MetricLogger:
    """Logs metrics and images to one MLflow run from a background thread: training never waits on the store.

    `log_metrics` / `log_image` only append to a bounded buffer (`capacity` records; when it is full the oldest record
    is dropped and counted). The thread alone talks to MLflow, whose own HTTP retries (`configure_retries`) ride out
    short drops; a longer outage is logged once when it starts and once when it ends, and while records wait the
    thread tries again every `retry_s`. `close()` stops the thread and returns how many records were not logged.
    Steps at or below `skip_until` (what a restarted worker finds already logged) are dropped, so a run's history
    stays monotone; `log_start` records where each (re)start began as `train/start_step`.
    """

    def __init__(self, uri: str, run_id: str, retry_s: float = 5.0, capacity: int = 10_000) -> None:
        self.uri, self.run_id, self.retry_s, self.capacity = uri, run_id, retry_s, capacity
        self._client = mlflow_client(uri)
        self._buffer: collections.deque[tuple[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._down_since: float | None = None
        self.dropped = 0
        self.skip_until = self._last_step()
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _last_step(self) -> int:
        try:
            history = self._client.get_metric_history(self.run_id, "train/loss")
        except Exception:  # unreachable now: nothing to skip is the safe guess
            return 0
        return max((m.step for m in history), default=0)

    def _put(self, kind: str, payload: Any) -> None:
        with self._cond:
            if self._closing:
                self.dropped += 1
                return
            if len(self._buffer) >= self.capacity:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append((kind, payload))
            self._cond.notify()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step > self.skip_until:
            self._put("metrics", (dict(metrics), step, int(time.time() * 1000)))

    def log_start(self, step: int) -> None:
        """A (re)start of training at `step` (0, or the checkpoint it resumed from): metric `train/start_step`."""
        self._put("metrics", ({"train/start_step": float(step)}, step, int(time.time() * 1000)))

    def log_image(self, image: Any, key: str, step: int) -> None:
        """`image`: a PIL image or a uint8 HWC array; shown in the MLflow UI under `key` with a step slider."""
        if step > self.skip_until:
            self._put("image", (image, key, step))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put("text", (text, artifact_file))

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

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    self._cond.wait()
                if not self._buffer:
                    return
                item = self._buffer[0]
            try:
                self._send(*item)
            except Exception as err:  # MLflow gave up retrying: an outage; the record stays first in line
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("MLflow at %s is unreachable (%s): buffering up to %d records, trying again every "
                                "%.0f s; training continues", self.uri, type(err).__name__, self.capacity,
                                self.retry_s)
                with self._cond:
                    if self._deadline is not None and time.monotonic() >= self._deadline:
                        return
                    self._cond.wait(self.retry_s)
                continue
            with self._cond:
                if self._buffer and self._buffer[0] is item:
                    self._buffer.popleft()
            if self._down_since is not None:
                log.warning("MLflow is reachable again after %.0f s: buffered records are being sent",
                            time.monotonic() - self._down_since)
                self._down_since = None

    def close(self, timeout: float = 60.0) -> int:
        """Send what is buffered (waiting up to `timeout` s), stop the thread; the number of records not logged."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:  # a send still blocked in MLflow's retries finds the buffer empty and the thread ends
            lost = len(self._buffer) + self.dropped
            self._buffer.clear()
            self.dropped = 0
        if lost:
            log.error("MLflow at %s could not take %d metric/image records of run %s", self.uri, lost, self.run_id)
        return lost
