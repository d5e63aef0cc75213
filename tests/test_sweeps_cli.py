"""The study files as users run them: `python sweeps/X.py`, an interrupted sweep resumed with --resume, and
`ray job submit` against a `ray start --head` cluster on loopback with token authentication on."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
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


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_head, tmp_path):
    env = ray_head[1]  # the sweep connects to the running cluster (RAY_ADDRESS), as under `ray job submit`
    cmd = [sys.executable, "sweeps/latent_dim.py", "--smoke", "--space", "model.latent_dim=[8,16]",
           "--max-concurrent", "1", "--storage-path", str(tmp_path)]
    train = tmp_path / "sweeps" / "latent_dim-smoke" / "train"
    first = train / "latent_dim=8,seed=0" / "result.json"
    second = train / "latent_dim=16,seed=0"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert first.is_file(), (tmp_path / "first.log").read_text()[-3000:]
    proc.send_signal(signal.SIGINT)  # Ctrl-C while the second trial runs (or is about to start)
    proc.wait(timeout=120)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with token authentication, shared by the tests below and stopped afterwards."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                            "--include-dashboard=true", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        yield ray_bin, {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_runs_a_study_on_a_token_authenticated_head(ray_head, tmp_path):
    ray_bin, env, address = ray_head
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}  # the job client talks to the dashboard
    # Without the token the job API refuses: authentication is on.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    submit = subprocess.run(
        [ray_bin, "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env",
         "sweeps/runtime_env.yaml", "--", sys.executable, "sweeps/latent_dim.py", "--smoke", "--space",
         "model.latent_dim=[8]", "--storage-path", str(tmp_path), "--tracking-uri", uri],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert submit.returncode == 0 and "succeeded" in submit.stdout, (submit.stdout[-3000:], submit.stderr[-2000:])
    kids = children(uri, "sweep/latent_dim-smoke")
    assert [r.info.run_name for r in kids] == ["latent_dim=8,seed=0"]
    assert "eval/recon_mse" in kids[0].data.metrics and kids[0].info.status == "FINISHED"
    parent_table = json.loads((tmp_path / "sweeps" / "latent_dim-smoke" / "ablation" / "best.json").read_text())
    assert parent_table["metric"] == "eval/recon_mse"
