"""Shared test settings: `gpu` tests skip cleanly without CUDA.

`make test TEST_WORKERS=2` runs the suite on two pytest-xdist workers (`--dist loadfile`: a module's tests, and its
module-scoped Ray cluster, stay on one worker). So that two workers' Ray clusters never meet, every cluster a test
starts is its own: a local one is `ray.init(address="local")`, a `ray start` one has its own temp dir (its address file
is not the machine's default one that a plain `ray.init()` reads) and its own session, whose processes alone its
teardown stops.
"""

import contextlib
import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Ray Train's controller polls its workers every 2 s by default; the tests' runs last seconds, so each run would spend
# up to a poll at start and at end idle. Child processes (ray start, dbae train, sweeps) inherit this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Each Ray Train run starts a PreemptionWatcher actor (one more Python process, ~2 s of CPU) that polls for
# spot-instance preemption notices; these tests run on one machine that is never preempted (-5 % on a sweep module).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of small CPU work: faster than two when the 2-core machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster for one test module: 2 CPUs, dashboard (Train's state API needs it) on loopback."""
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=256 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3-compatible server (moto) on 127.0.0.1 with one empty bucket, and this process's environment pointed at it
    (dummy keys, AWS_ENDPOINT_URL), as a cluster's nodes would have it. Yields (the bucket's URI, that environment);
    processes started from the test (ray start, dbae) take the environment."""
    import uuid

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    bucket = f"dbae-test-{uuid.uuid4().hex[:8]}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",  # pragma: allowlist secret
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}", {**os.environ}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The sessions (setsid) of the `ray start` nodes this process started: their processes, and only theirs, are this
# process's to stop or to kill (another pytest worker may run a cluster of its own on this machine).
_CLUSTER_SESSIONS: set[int] = set()


def _pids(keep) -> list[int]:
    """The PIDs of this machine's processes for which `keep(pid)` holds (processes that end meanwhile are left out)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if keep(int(name)):
                    pids.append(int(name))
    return pids


def _parent_and_session(pid: int) -> tuple[int, int]:
    """(parent PID, session ID) of a process, from /proc/PID/stat (fields after the command name, which may hold
    spaces and parentheses)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])


def _session_pids(sessions: set[int]) -> list[int]:
    """The PIDs of the processes in `sessions`."""
    return _pids(lambda pid: _parent_and_session(pid)[1] in sessions)


def _stop_sessions(sessions: set[int], grace_s: float = 3.0) -> None:
    """SIGTERM every process of `sessions`, then SIGKILL what is left after `grace_s`: `ray stop` for one cluster
    (`ray stop` itself stops every Ray process on the machine)."""
    import signal
    import time
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in _session_pids(sessions):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _session_pids(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def _two_ray_nodes(base_env: dict[str, str]):
    """Two Ray nodes on 127.0.0.1 with token authentication: a head (`ray start --head`) and a second node (`ray start
    --address`), 1 CPU each and a custom resource each (node_a, node_b), started with `base_env` (what the nodes'
    processes see, e.g. a bucket's credentials). Each node has its own temp dir and session. Yields (ray executable,
    the environment of a driver on the cluster, the dashboard's URL)."""
    import secrets
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    env = {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    # Short temp dirs (Ray's socket paths live under them). Their own, as on two machines: nodes sharing one would
    # share the job's unpacked working directory, and the second node's runtime-env agent would replace it under the
    # running driver; and the head's address file stays out of /tmp/ray, where a local `ray.init()` would find it.
    temps = [tempfile.mkdtemp(prefix=f"ray_{n}_") for n in "ab"]
    sessions: set[int] = set()

    def start(*args: str) -> None:
        proc = subprocess.Popen([ray_bin, "start", *args, *common, f"--dashboard-agent-listen-port={_free_port()}"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        sessions.add(proc.pid)
        _CLUSTER_SESSIONS.add(proc.pid)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (out + err)[-3000:]

    try:
        start("--head", f"--port={gcs}", f"--temp-dir={temps[0]}", "--dashboard-host=127.0.0.1",
              f"--dashboard-port={dash}", "--include-dashboard=true", f"--ray-client-server-port={_free_port()}",
              '--resources={"node_a": 1}')
        start(f"--address=127.0.0.1:{gcs}", f"--temp-dir={temps[1]}", '--resources={"node_b": 1}')
        yield ray_bin, {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, f"http://127.0.0.1:{dash}"
    finally:
        _stop_sessions(sessions)
        _CLUSTER_SESSIONS.difference_update(sessions)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_nodes():
    """`with ray_nodes(env) as (ray_bin, driver_env, dashboard_url):` a two-node Ray cluster on this machine."""
    return _two_ray_nodes


def _ours(pid: int) -> bool:
    """Whether `pid` belongs to a Ray cluster of this process: a local one (a descendant of this process) or a `ray
    start` one it started (in one of its sessions)."""
    me = os.getpid()
    while pid > 1:
        pid, session = _parent_and_session(pid)
        if session in _CLUSTER_SESSIONS or pid == me:
            return True
    return False


def _train_worker_pids() -> list[int]:
    """The PIDs of the Ray Train worker processes of this process's Ray clusters."""
    def train_worker(pid: int) -> bool:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"RayTrainWorker" in f.read() and _ours(pid)
    return _pids(train_worker)


@pytest.fixture(scope="session")
def train_worker_pids():
    """`train_worker_pids()`: the PIDs of the Ray Train worker processes of this test's clusters (to kill one)."""
    return _train_worker_pids


def _interrupt_when(cmd: list[str], ready, log_path, timeout_s: float = 300, **popen) -> None:
    """Run `cmd` (output into `log_path`) until `ready()` holds, then press Ctrl-C (SIGINT) and wait for it to end;
    fails, with the end of its output, when it exits or the time runs out first."""
    import signal
    import subprocess
    import time
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)
        deadline = time.time() + timeout_s
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        ok = ready()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert ok, open(log_path).read()[-3000:]


@pytest.fixture(scope="session")
def interrupt_when():
    """`interrupt_when(cmd, ready, log_path, cwd=..., env=...)`: Ctrl-C a command once `ready()` holds."""
    return _interrupt_when
