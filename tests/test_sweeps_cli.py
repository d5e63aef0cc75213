"""The study files as users run them: `python sweeps/X.py`, an interrupted sweep resumed with --resume, and
`ray job submit` against a two-node cluster (`ray start --head` + `ray start --address`) on loopback with token
authentication on, sweeping over both nodes into one shared storage path."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
STUDIES = ["latent_dim", "entropy_weight", "sde_type", "paper_ablation"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def children(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dbae.sweep.role") == "parent"]
    assert len(parents) == 1
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def test_every_study_file_has_help():
    procs = {s: subprocess.Popen([sys.executable, f"sweeps/{s}.py", "--help"], cwd=ROOT, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in STUDIES}
    for study, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        for flag in ("--preset", "--smoke", "--num-samples", "--seeds", "--storage-path", "--resume"):
            assert flag in out, (study, flag)
    out = subprocess.run([sys.executable, "sweeps/latent_dim.py", "--seeds", "-1"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, tmp_path, interrupt_when):
    env = ray_cluster[1]  # the sweep connects to the running cluster (RAY_ADDRESS), as under `ray job submit`
    cmd = [sys.executable, "sweeps/latent_dim.py", "--smoke", "--space", "model.latent_dim=[8,16]",
           "--max-concurrent", "1", "--storage-path", str(tmp_path)]
    train = tmp_path / "sweeps" / "latent_dim-smoke" / "train"
    first = train / "latent_dim=8,seed=0" / "result.json"
    second = train / "latent_dim=16,seed=0"
    # Ctrl-C while the second trial runs (or is about to start)
    interrupt_when(cmd, first.is_file, tmp_path / "first.log", cwd=ROOT, env=env)
    done_before = first.stat().st_mtime_ns
    assert not (second / "result.json").is_file()

    out = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    assert first.stat().st_mtime_ns == done_before  # the finished trial was not trained or evaluated again
    assert (second / "result.json").is_file()
    kids = children(f"sqlite:///{tmp_path / 'mlflow.db'}", "sweep/latent_dim-smoke")
    assert sorted(r.info.run_name for r in kids) == ["latent_dim=16,seed=0", "latent_dim=8,seed=0"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert "| 8 | 1 |" in out.stdout and "| 16 | 1 |" in out.stdout


@pytest.fixture(scope="module")
def ray_cluster(ray_nodes):
    """Two Ray nodes on 127.0.0.1 with token authentication (see conftest.ray_nodes), shared by the tests below."""
    with ray_nodes(ENV) as cluster:
        yield cluster


def _node_resources(ray_bin: str, env: dict) -> dict[str, str]:
    """{node ID: its custom resource (node_a / node_b)}, from Ray's state API."""
    listed = subprocess.run([ray_bin, "list", "nodes", "--format", "json", "--detail"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr[-2000:]
    nodes = json.loads(listed.stdout)
    return {n["node_id"]: next(k for k in n["resources_total"] if k.startswith("node_")) for n in nodes
            if n["state"] == "ALIVE"}


def test_ray_job_submit_spreads_a_sweep_over_two_nodes_into_shared_storage(ray_cluster, tmp_path):
    ray_bin, env, address = ray_cluster
    assert sorted(_node_resources(ray_bin, env).values()) == ["node_a", "node_b"]
    client_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}  # the job client talks to the dashboard
    # Without the token the job API refuses: authentication is on.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)

    # Two trials whose single worker takes a whole CPU: with 1 CPU per node they can only run side by side on the two
    # nodes. No --tracking-uri: the MLflow store defaults into the shared storage path too.
    shared = tmp_path / "shared"
    submit = subprocess.run(
        [ray_bin, "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env",
         "sweeps/runtime_env.yaml", "--", sys.executable, "sweeps/latent_dim.py", "--smoke", "--space",
         "model.latent_dim=[8,16]", "--set", "resources.cpus_per_worker=1", "--storage-path", str(shared)],
        cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=540)
    assert submit.returncode == 0 and "succeeded" in submit.stdout, (submit.stdout[-3000:], submit.stderr[-2000:])
    assert "shared by all 2 Ray nodes" in submit.stdout + submit.stderr

    kids = children(f"sqlite:///{shared / 'mlflow.db'}", "sweep/latent_dim-smoke")
    assert sorted(r.info.run_name for r in kids) == ["latent_dim=16,seed=0", "latent_dim=8,seed=0"]
    assert {r.info.status for r in kids} == {"FINISHED"} and all("eval/recon_mse" in r.data.metrics for r in kids)
    resources = _node_resources(ray_bin, env)
    used = []
    for run in kids:
        trial_dir = shared / "sweeps" / "latent_dim-smoke" / "train" / run.info.run_name
        workers = json.loads((trial_dir / "result.json").read_text())["workers"]
        assert len(workers) == 1
        used.append(resources[workers[0]["node_id"]])
        assert run.data.tags["dbae.nodes"] == f"{workers[0]['ip']}/{workers[0]['node_id'][:8]}"
        assert sorted(trial_dir.glob("checkpoint_*/state.pt")), f"no checkpoint in {trial_dir}"
        assert run.info.artifact_uri.startswith((shared / "mlartifacts").as_uri())
        assert (shared / "mlartifacts").is_dir()
    assert sorted(used) == ["node_a", "node_b"]  # one trial per node
    assert (shared / "sweeps" / "latent_dim-smoke" / "ablation" / "ablation.md").is_file()


_PROBE = """
import logging, sys
from pathlib import Path
import ray
from dbae_platform import storage
from dbae_platform.config import ConfigError
logging.basicConfig(level=logging.INFO)
ray.init(log_to_driver=False)
d = Path(sys.argv[1])
d.mkdir(parents=True, exist_ok=True)
(d / "marker").write_text("x")
print("present", sorted(storage.nodes_seeing(d / "marker").values()))
print("absent", sorted(storage.nodes_seeing(d / "missing").values()))
# Nodes on one machine share its disk, so a node that cannot see the path is simulated from here on: the second
# node's answer is replaced by False (what an NFS-less worker machine answers).
real = storage.nodes_seeing
storage.nodes_seeing = lambda marker: {k: i == 0 and v for i, (k, v) in enumerate(sorted(real(marker).items()))}
try:
    storage.require_shared_storage(d)
except ConfigError as err:
    print("refused", err)
"""


def test_storage_check_asks_every_node_and_refuses_a_node_local_path(ray_cluster, tmp_path):
    _, env, _ = ray_cluster
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "runs")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["present"] == "[True, True]" and lines["absent"] == "[False, False]"  # both nodes answered
    refusal = lines["refused"]
    assert "is node-local: 1 of 2 Ray nodes (" in refusal and "--storage-path" in refusal
    assert not list((tmp_path / "runs").glob(".dbae-shared-*"))  # the marker is cleaned up
