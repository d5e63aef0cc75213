"""`dbae train` end to end on a real local Ray cluster and a real MLflow store (sqlite, and one `mlflow server`).

Covers: 2-worker CPU DDP (gloo) training logged to MLflow, surviving a killed worker; DDP numerics (2 × B equals
1 × 2B); a killed driver and the rerun that resumes into the same MLflow run; a NaN loss; a tracking server down at
start and one that drops mid-run.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dbae_platform.cli import main
from dbae_platform.config import load_config

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
mlflow_tracking = pytest.importorskip("mlflow.tracking")

FAST = ["data.train_images=256", "train.batch_size=4", "train.log_every=2", "train.ckpt_every=4",
        "train.image_every=0", "eval.suites=[]", "eval.sampler_steps=4", "resources.cpus_per_worker=0.5"]


def config(tmp_path: Path, name: str, *overrides: str):
    return load_config("tiny", [*FAST, f"name={name}", f"tracking.runs_dir={tmp_path / 'runs'}", *overrides])


def client_for(tmp_path: Path):
    return mlflow_tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def steps_of(client, run_id: str, key: str = "train/loss") -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*"))


def registered(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered for the run (its snapshot file), [] before the first."""
    import json
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):  # not written yet, or mid-write
        return []
    return [int(r["metrics"]["step"]) for r in results]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_ddp_run_survives_a_killed_worker_and_is_tracked(tmp_path, local_ray, train_worker_pids):
    """One 2-worker DDP run (gloo): a worker is killed after the first checkpoint; Ray Train restarts the group from
    it, and the run finishes with one clean MLflow history, images, eval metrics and artifacts."""
    from dbae_platform.train import train
    cfg = config(tmp_path, "ddp", "train.steps=12", "train.image_every=4", "resources.num_workers=2",
                 "eval.suites=[recon]", "eval.n=8", "tracking.system_metrics=true",
                 "tracking.system_metrics_interval=0.5")
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", train(cfg)))
    thread.start()
    deadline = time.monotonic() + 240
    while not registered(tmp_path / "runs" / "ddp") and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = train_worker_pids()
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)  # after Ray Train registered a checkpoint: the restart must begin there
    last = max(registered(tmp_path / "runs" / "ddp"))
    thread.join(timeout=400)
    assert "result" in out, "training did not finish after a worker was killed"
    result = out["result"]
    assert result.step == 12 and result.checkpoint is not None
    run = client_for(tmp_path).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "64" and run.data.params["resources.num_workers"] == "2"
    assert run.data.tags["dbae.preset"] == "ddp" and "dbae.seed" in run.data.tags
    client = client_for(tmp_path)
    assert steps_of(client, result.run_id) == [2, 4, 6, 8, 10, 12]  # each step once, in order, across the restart
    # The restart happened and began at the newest checkpoint written before the kill, so no step up to it was
    # trained twice: rank 0 records where each (re)start began (train/start_step: value = step).
    starts = [int(m.value) for m in sorted(client.get_metric_history(result.run_id, "train/start_step"),
                                           key=lambda m: m.timestamp)]
    assert starts == [0, last] and last >= 4, (starts, last)
    assert all(m.value > 0 for m in client.get_metric_history(result.run_id, "train/images_per_s"))
    assert 0 < run.data.metrics["eval/recon_mse"] < 1 and "eval/ssim" in run.data.metrics
    # MLflow system metrics from each worker (psutil), as asked by tracking.system_metrics
    for rank in (0, 1):
        cpu = client.get_metric_history(result.run_id, f"system/rank{rank}/cpu_utilization_percentage")
        memory = client.get_metric_history(result.run_id, f"system/rank{rank}/system_memory_usage_megabytes")
        assert cpu and memory and all(0 <= m.value <= 100 for m in cpu) and memory[0].value > 0, rank
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "ema.pt", "images"} <= artifacts
    images = [a.path for a in client.list_artifacts(result.run_id, "images")]
    assert any("reconstructions" in p for p in images) and any("samples" in p for p in images)
    assert (result.run_dir / "config.yaml").is_file()
    assert load_config(result.run_dir / "config.yaml") == cfg

    # `dbae eval CHECKPOINT` on the run's last checkpoint: metrics JSON and grids beside it, a table on stdout
    eval_dir = tmp_path / "eval"
    assert main(["eval", str(result.checkpoint), "--suite", "recon", "--n", "4", "--sampler-steps", "2",
                 "--out", str(eval_dir)]) == 0
    import json
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert 0 < metrics["eval/recon_mse"] < 1 and (eval_dir / "reconstructions.png").stat().st_size > 0
    assert main(["eval", str(tmp_path / "missing")]) == 2


def _one_step_config(tmp_path: Path, name: str, workers: int, batch: int):
    return config(tmp_path, name, "train.steps=1", "train.log_every=1", "train.ckpt_every=1",
                  f"train.batch_size={batch}", f"resources.num_workers={workers}", "model.decoder.norm=group",
                  "train.lr=1e-2")


def _one_step(tmp_path: Path, name: str, workers: int, batch: int) -> dict:
    from dbae_platform.train import train
    result = train(_one_step_config(tmp_path, name, workers, batch))
    return torch.load(result.checkpoint / "state.pt", weights_only=True)["model"]


def test_ddp_step_equals_one_worker_with_the_global_batch(tmp_path, local_ray):
    """2 workers × batch 4 take the optimizer step of 1 worker × batch 8 (same images, same noise).

    Adam's first step is ≈ lr·sign(g): a wrong shard or noise slice flips signs and moves weights by ~2·lr = 2e-2;
    all-reduce summation order moves them by < 1% of lr.
    """
    from dbae_platform.models import build_model
    two = _one_step(tmp_path, "two", workers=2, batch=4)
    one = _one_step(tmp_path, "one", workers=1, batch=8)
    worst = max((two[k].float() - one[k].float()).abs().max().item() for k in one)
    assert worst < 1e-4, worst
    # The test can fail: the step moved the weights by about lr from the workers' initialisation (seeded the same
    # way here), so a sign flipped by a wrong shard would show as ~2e-2, 200× the tolerance.
    torch.manual_seed(0)
    init = build_model(_one_step_config(tmp_path, "init", 1, 8)).state_dict()
    moved = max((one[k].float() - init[k].float()).abs().max().item() for k in one if init[k].is_floating_point())
    assert 5e-3 < moved < 2e-2, moved


def _dbae(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "dbae_platform.cli", "train", "tiny", *[a for o in FAST for a in ("--set", o)],
           "--set", f"tracking.runs_dir={tmp_path / 'runs'}", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_killed_driver_rerun_resumes_into_one_mlflow_run(tmp_path):
    args = ("--set", "name=resume", "--set", "train.steps=16", "--set", "train.ckpt_every=4")
    first = _dbae(tmp_path, *args)
    deadline = time.monotonic() + 240
    run_dir = tmp_path / "runs" / "resume"
    while not checkpoints(run_dir) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert checkpoints(run_dir), first.communicate()[0][-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait()
    time.sleep(2)
    second = _dbae(tmp_path, *args)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output[-3000:]
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("dbae/resume").experiment_id])
    assert len(runs) == 1
    steps = steps_of(client, runs[0].info.run_id)
    assert steps == list(range(2, 17, 2)), steps  # the whole history, each step once, in order
    # it ends with the runs table and the run's page in the MLflow UI
    exp_id, run_id = runs[0].info.experiment_id, runs[0].info.run_id
    assert (f"MLflow runs table: http://127.0.0.1:5000/#/experiments/{exp_id}/runs (serve it: dbae ui --runs-dir "
            f"{tmp_path / 'runs'})\nthis run: http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run_id}\n") in output
    assert runs[0].info.status == "FINISHED"


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, local_ray, capsys):
    argv = ["train", "tiny", *[a for o in FAST for a in ("--set", o)], "--set", f"tracking.runs_dir={tmp_path}/runs",
            "--set", "name=nan", "--set", "train.steps=10", "--set", "train.ckpt_every=1", "--set", "train.lr=1e30",
            "--set", "train.grad_clip=0", "--set", "train.optimizer=adam"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite loss at step" in err and "last good checkpoint is" in err, err
    step = int(err.split("non-finite loss at step ")[1].split(";")[0])
    kept = Path(err.split("last good checkpoint is ")[1])
    state = torch.load(kept / "state.pt", weights_only=True)
    assert state["step"] == step - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    runs = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name("dbae/nan").experiment_id])
    assert runs[0].info.status == "FAILED"


def test_tracking_server_down_at_start_is_one_line_before_training(tmp_path, capsys):
    port = free_port()
    argv = ["train", "tiny", "--set", f"tracking.runs_dir={tmp_path}/runs", "--tracking-uri", f"http://127.0.0.1:{port}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err and f"127.0.0.1:{port}" in err
    assert not list((tmp_path / "runs").glob("*/checkpoint_*"))


def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def test_tracking_server_dropping_mid_run_does_not_kill_it(tmp_path, local_ray):
    from dbae_platform.train import train
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    cfg = config(tmp_path, "drop", "train.steps=24", "train.ckpt_every=8")
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", train(cfg, tracking_uri=uri)))
    thread.start()
    try:
        client = mlflow_tracking.MlflowClient(uri)
        deadline = time.monotonic() + 240
        run_id = None
        while time.monotonic() < deadline:
            record = tmp_path / "runs" / "drop" / "mlflow_run.json"
            if record.is_file():
                import json
                run_id = json.loads(record.read_text())["run_id"]
                if client.get_metric_history(run_id, "train/loss"):
                    break
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)  # the server drops mid-run
        server.wait()
        time.sleep(8)
        server = _mlflow_server(tmp_path, port)  # and comes back: buffered metrics are sent
        thread.join(timeout=400)
        assert "result" in out, "training died with the tracking server"
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert steps_of(client, run_id) == list(range(2, 25, 2))
    finally:
        os.killpg(server.pid, signal.SIGKILL)


def test_results_the_store_did_not_take_fail_the_run_and_a_rerun_logs_them(tmp_path, local_ray, monkeypatch, capsys):
    import json

    from ray.train import UserCallback

    from dbae_platform.tracking import IncompleteLogError
    from dbae_platform.train import train

    class StoreDiesAtFinalReport(UserCallback):  # local, so Ray pickles it by value for its Train controller
        """Kills the MLflow server once the final evaluation has been reported: the run ends with results on disk
        that the store never received."""

        def __init__(self, pid: int) -> None:
            self.pid = pid

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if any("eval/recon_mse" in m for m in metrics):
                os.killpg(self.pid, signal.SIGKILL)

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the server is gone for good: fail fast
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    cfg = config(tmp_path, "durable", "train.steps=4", "eval.suites=[recon]", "eval.n=4", "eval.sampler_steps=2")
    record = tmp_path / "runs" / "durable" / "result.json"
    try:
        with pytest.raises(IncompleteLogError, match="lacks") as failed:
            train(cfg, tracking_uri=uri, callbacks=[StoreDiesAtFinalReport(server.pid)])
        assert str(record) in str(failed.value) and "rerun the same command" in str(failed.value)
        saved = json.loads(record.read_text())
        assert saved["logged"] is False and 0 < saved["metrics"]["eval/recon_mse"] < 1  # safe on disk
        # `dbae train` says so in one line and exits 1
        capsys.readouterr()
        argv = ["train", "tiny", "--tracking-uri", uri, *[a for o in FAST for a in ("--set", o)],
                "--set", "name=durable", "--set", f"tracking.runs_dir={tmp_path / 'runs'}", "--set", "train.steps=4",
                "--set", "eval.suites=[recon]", "--set", "eval.n=4", "--set", "eval.sampler_steps=2"]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and "MLflow at" in err[-1] and "lacks" in err[-1] and "Traceback" not in "".join(err)

        server = _mlflow_server(tmp_path, port)  # the store is back: the rerun logs them without training again
        result = train(cfg, tracking_uri=uri)
        client = mlflow_tracking.MlflowClient(uri)
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["eval/recon_mse"] == pytest.approx(saved["metrics"]["eval/recon_mse"], rel=1e-6)
        images = [a.path for a in client.list_artifacts(result.run_id, "images")]
        assert any("eval_reconstructions" in p for p in images)
        assert {"config.yaml", "ema.pt"} <= {a.path for a in client.list_artifacts(result.run_id)}
        assert json.loads(record.read_text())["logged"] is True
        assert "dbae.hardware" in run.data.tags and "torch" in run.data.tags["dbae.hardware"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)



@pytest.mark.parametrize("cpus, expected", [(0.6, 1), (1.0, 1), (2.0, 2), (2.9, 2), (10**6, os.cpu_count())])
def test_worker_threads_follow_the_cpus_ray_gives_the_worker(monkeypatch, cpus, expected):
    """Three 0.6-CPU trials on 2 cores each ran torch's default 2 threads (6 spinning on 2 cores); a worker now runs
    floor(cpus_per_worker) threads, at least 1, at most the machine's cores, unless OMP_NUM_THREADS is set."""
    from dbae_platform.train import worker_threads
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert worker_threads(cpus) == expected and torch.get_num_threads() == expected
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert worker_threads(cpus) == 3 and torch.get_num_threads() == 3  # the user's (or Ray's) choice stands
    finally:
        torch.set_num_threads(before)
