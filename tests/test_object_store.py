"""Runs in a bucket: `dbae_platform.storage` against a real S3-compatible server (moto) on 127.0.0.1.

Covers ObjectPath's file operations and copies, the one-line refusals (no such bucket, no tracking URI for a bucket),
and, on a two-node Ray cluster whose nodes reach the bucket: a 2-worker `dbae train --storage-path s3://...` that
survives a killed worker by resuming from the checkpoint in the bucket, `dbae eval`, `dbae interpolate` and `dbae
register` of that checkpoint, and a sweep interrupted and resumed with its ablation table read back from the bucket.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbae_platform import storage
from dbae_platform.storage import ObjectPath

ROOT = Path(__file__).resolve().parent.parent


def test_object_path_writes_reads_lists_and_copies(s3_bucket, tmp_path):
    import boto3
    bucket, _ = s3_bucket
    root = storage.location(f"{bucket}/unit/")
    assert isinstance(root, ObjectPath) and str(root) == f"{bucket}/unit"
    assert not root.exists() and not root.is_dir()
    run = root / "run"
    (run / "config.yaml").write_text("name: x\n")
    (run / "checkpoint_1" / "state.pt").write_bytes(b"\x00\x01")
    (run / "checkpoint_2" / "state.pt").write_bytes(b"\x02")
    # what another S3 client sees: the same keys and bytes
    s3 = boto3.client("s3")
    name = bucket.removeprefix("s3://")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix="unit/")["Contents"])
    assert keys == ["unit/run/checkpoint_1/state.pt", "unit/run/checkpoint_2/state.pt", "unit/run/config.yaml"]
    assert s3.get_object(Bucket=name, Key="unit/run/config.yaml")["Body"].read() == b"name: x\n"
    assert root.is_dir() and run.is_dir() and (run / "config.yaml").is_file() and not run.is_file()
    assert (run / "config.yaml").read_text() == "name: x\n"
    assert [p.name for p in run.glob("checkpoint_*")] == ["checkpoint_1", "checkpoint_2"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_1", "checkpoint_2", "config.yaml"]
    assert (run / "checkpoint_2").parent == run and run.parent == root and (run / "config.yaml").suffix == ".yaml"
    with pytest.raises(FileNotFoundError):
        (run / "missing").read_text()

    s3.put_object(Bucket=name, Key="unit/run/checkpoint_2/eval/")  # a folder marker, as Ray Train writes them
    s3.put_object(Bucket=name, Key="unit/run/checkpoint_2/eval/grid.png", Body=b"png")
    local = storage.local_copy(run / "checkpoint_2" / "eval", tmp_path / "eval")
    assert [p.name for p in local.iterdir()] == ["grid.png"] and (local / "grid.png").read_bytes() == b"png"
    s3.delete_object(Bucket=name, Key="unit/run/checkpoint_2/eval/grid.png")
    s3.delete_object(Bucket=name, Key="unit/run/checkpoint_2/eval/")
    local = storage.local_copy(run, tmp_path / "copy")
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "checkpoint_1/state.pt", "checkpoint_2/state.pt", "config.yaml"]
    assert (local / "checkpoint_1" / "state.pt").read_bytes() == b"\x00\x01"
    with storage.staged(root / "out") as out:  # files written locally land under the prefix
        (out / "table.md").write_text("| a |\n")
    assert (root / "out" / "table.md").read_text() == "| a |\n"
    (run / "config.yaml").unlink()
    assert not (run / "config.yaml").exists()
    (run / "config.yaml").unlink(missing_ok=True)

    # Ray hands out checkpoints as (pyarrow filesystem, path): the same place again
    fs = (run / "checkpoint_1").filesystem
    assert storage.from_filesystem(fs, f"{name}/unit/run/checkpoint_1") == run / "checkpoint_1"
    assert storage.from_filesystem(None, str(tmp_path)) == tmp_path


def test_a_sweep_in_a_bucket_keeps_its_optuna_study_in_the_cache_and_resumes_from_the_bucket_copy(
        s3_bucket, tmp_path, monkeypatch):
    from dbae_platform.sweep import OPTUNA_DB, _optuna_dir
    bucket, _ = s3_bucket
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sweep = storage.location(f"{bucket}/optuna/sweeps/s")
    local = _optuna_dir(sweep, resume=False)  # a new sweep: a local folder for the live sqlite file
    assert local == tmp_path / "cache" / "dbae" / "s3" / sweep.key and local.is_dir()
    (local / OPTUNA_DB).write_bytes(b"stale")
    assert not (_optuna_dir(sweep, resume=False) / OPTUNA_DB).exists()  # a new sweep never reuses an old study
    (sweep / "ablation" / OPTUNA_DB).write_bytes(b"study")  # what finish_sweep copied to the bucket
    assert (_optuna_dir(sweep, resume=True) / OPTUNA_DB).read_bytes() == b"study"  # --resume on another machine
    assert _optuna_dir(tmp_path / "local", resume=True) == tmp_path / "local"  # a directory keeps it inside


def test_local_paths_stay_paths(tmp_path):
    assert storage.location(tmp_path / "a" / ".." / "b") == tmp_path / "b"
    assert not storage.is_object_store(tmp_path) and storage.is_object_store("gs://b/p")
    assert str(ObjectPath("gcs://b/p/")) == "gs://b/p"
    for bad in ("s3://", "s3:///", "nothing"):
        with pytest.raises(ValueError):
            ObjectPath(bad)


def _one_line_exit_2(argv: list[str], capsys) -> str:
    from dbae_platform.cli import main
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, code, err[-2000:])
    return err


def test_a_bucket_without_a_tracking_uri_or_access_is_refused_in_one_line(s3_bucket, tmp_path, monkeypatch,
                                                                            capsys):
    bucket, _ = s3_bucket
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    err = _one_line_exit_2(["train", "tiny", "--storage-path", f"{bucket}/refused", "--set", "train.steps=1"], capsys)
    assert "cannot hold the embedded MLflow store" in err and "--tracking-uri" in err
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    err = _one_line_exit_2(["train", "tiny", "--storage-path", "s3://no-such-bucket-dbae/x", "--tracking-uri", store,
                            "--set", "train.steps=1"], capsys)
    assert "s3://no-such-bucket-dbae/x cannot be written" in err and "credentials" in err
    err = _one_line_exit_2(["eval", f"{bucket}/nothing/checkpoint_000001"], capsys)
    assert f"{bucket}/nothing/checkpoint_000001 does not exist" in err
    err = _one_line_exit_2(["train", "tiny", "--storage-path", "ftp://host/runs"], capsys)
    assert "only s3://BUCKET/PREFIX and gs://BUCKET/PREFIX" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no runs directory, no store


# -- on a two-node Ray cluster whose nodes reach the bucket ------------------------------------------------------
NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
FAST = ["data.train_images=256", "train.batch_size=4", "train.log_every=2", "train.ckpt_every=4", "train.steps=12",
        "train.image_every=0", "eval.suites=[recon]", "eval.n=8", "eval.sampler_steps=4", "resources.num_workers=2",
        "resources.cpus_per_worker=0.5"]


@pytest.fixture(scope="module")
def bucket_cluster(s3_bucket, ray_nodes):
    """(bucket URI, a driver's environment) on two Ray nodes started with the bucket's credentials and endpoint."""
    bucket, env = s3_bucket
    with ray_nodes({**env, **NODE_ENV}) as (_, driver_env, _):
        yield bucket, driver_env


def _registered(snapshot: ObjectPath) -> list[int]:
    """Steps of the checkpoints Ray Train has registered for a run (its snapshot file in the bucket)."""
    try:
        return [int(r["metrics"]["step"]) for r in json.loads(snapshot.read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):  # not written yet, or mid-write
        return []


@pytest.mark.slow
def test_a_two_worker_run_in_a_bucket_survives_a_killed_worker_and_its_checkpoint_is_evaluated(
        bucket_cluster, tmp_path, train_worker_pids):
    import os
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from dbae_platform.cli import main
    bucket, env = bucket_cluster
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = storage.location(f"{bucket}/train")
    cmd = [sys.executable, "-m", "dbae_platform.cli", "train", "tiny", "--storage-path", str(runs), "--tracking-uri",
           store, "--set", "name=ddp", *(f"--set={o}" for o in FAST)]
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    snapshot = runs / "ddp" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while not _registered(snapshot) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    pids = train_worker_pids()
    assert pids, (tmp_path / "train.log").read_text()[-3000:]
    os.kill(pids[-1], signal.SIGKILL)  # after a checkpoint reached the bucket: the restart must begin there
    last = max(_registered(snapshot))
    assert proc.wait(timeout=400) == 0, (tmp_path / "train.log").read_text()[-3000:]

    record = json.loads((runs / "ddp" / "result.json").read_text())
    assert record["step"] == 12 and record["checkpoint"].startswith(f"{runs}/ddp/checkpoint_")
    client = MlflowClient(store)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["dbae.run_dir"] == f"{runs}/ddp"
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.timestamp)
    steps = [m.step for m in history]
    assert steps == [2, 4, 6, 8, 10, 12]  # each step once across the restart
    starts = [int(m.value) for m in sorted(client.get_metric_history(run.info.run_id, "train/start_step"),
                                           key=lambda m: m.timestamp)]
    assert starts == [0, last] and last >= 4, (starts, last)  # the restart began at the bucket's newest checkpoint
    assert 0 < run.data.metrics["eval/recon_mse"] < 1
    # MLflow's artifacts went to the same bucket (the experiment's artifact root beside the runs)
    assert run.info.artifact_uri.startswith(f"{runs}/mlartifacts/")
    assert {"config.yaml", "ema.pt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert storage.location(f"{run.info.artifact_uri}/ema.pt").is_file()

    # Rerunning the finished command reads its record from the bucket and trains nothing
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished at step 12" in again.stderr, again.stderr[-3000:]

    # `dbae eval` and `dbae interpolate` take the checkpoint's URI (copied to this machine's cache once)
    checkpoint = record["checkpoint"]
    assert main(["eval", checkpoint, "--suite", "recon", "--n", "4", "--sampler-steps", "2", "--out",
                 str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 < metrics["eval/recon_mse"] < 1
    assert main(["interpolate", checkpoint, "--pairs", "1", "--frames", "3", "--steps", "2", "--out",
                 str(tmp_path / "interp"), "--device", "cpu"]) == 0
    assert any(p.suffix == ".png" and p.stat().st_size > 0 for p in (tmp_path / "interp").iterdir())
    # ... and `dbae register` finds the run that wrote it from the run's record in the bucket
    assert main(["register", checkpoint, "dbae-bucket", "--tracking-uri", store]) == 0
    assert client.get_model_version("dbae-bucket", "1").run_id == record["run_id"]


@pytest.mark.slow
def test_a_sweep_in_a_bucket_resumes_and_its_ablation_table_reads_back(bucket_cluster, tmp_path, interrupt_when):
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient
    bucket, env = bucket_cluster
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = storage.location(f"{bucket}/study")
    cmd = [sys.executable, "sweeps/latent_dim.py", "--smoke", "--space", "model.latent_dim=[8,16]",
           "--max-concurrent", "1", "--storage-path", str(runs), "--tracking-uri", store]
    sweep = runs / "sweeps" / "latent_dim-smoke"
    first = sweep / "train" / "latent_dim=8,seed=0" / "result.json"
    second = sweep / "train" / "latent_dim=16,seed=0" / "result.json"
    # Ctrl-C while the second trial runs (or is about to start)
    interrupt_when(cmd, first.is_file, tmp_path / "first.log", cwd=ROOT, env=env)
    written = first.filesystem.get_file_info(first.key).mtime
    assert not second.is_file()

    out = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    assert first.filesystem.get_file_info(first.key).mtime == written  # the finished trial was not run again
    assert second.is_file()
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("sweep/latent_dim-smoke")
    kids = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in kids) == ["latent_dim=16,seed=0", "latent_dim=8,seed=0"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    # The ablation table is in the bucket, and reads back with pyarrow as any reader would
    parquet = sweep / "ablation" / "ablation.parquet"
    assert f"files: {parquet}" in out.stdout or str(parquet) in out.stdout, out.stdout[-2000:]
    table = pq.read_table(parquet.key, filesystem=parquet.filesystem).to_pylist()
    assert sorted(r["model.latent_dim"] for r in table) == [8, 16] and all(r["n"] == 1 for r in table)
    assert (sweep / "ablation" / "ablation.md").read_text().count("| 1 |") >= 2
