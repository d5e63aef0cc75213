"""Sweeps end to end on a real local Ray cluster and a real sqlite MLflow store (tiny preset, a few steps per trial)."""

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from test_search_paths import check_seed_groups

from dbae_platform import cli
from dbae_platform.config import ConfigError
from dbae_platform.study import Asha, Study, load_study, study_from_dict
from dbae_platform.sweep import run_sweep, trial_name

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def children(client: MlflowClient, parent_id: str):
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_grid_sweep_parent_children_table_and_plots(local_ray, tmp_path, capsys):
    # One seed: two seeds per configuration run in the documented commands (test_documented_sweeps: `--seeds 3` on a
    # grid) and test_search_paths (each seed's mean and std checked); here n = 1 leaves the std empty (NaN).
    study = Study(name="grid", space={"model.latent_dim": [16, 8]}, search="grid")
    result = run_sweep(study, storage_path=tmp_path, smoke=True)
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dbae.sweep.role"] == "parent"
    assert json.loads(parent.data.tags["dbae.sweep.swept"]) == ["model.latent_dim"]
    assert json.loads(parent.data.params["space.model.latent_dim"]) == [16, 8]

    # Each configuration once; the table has one row per configuration (sorted by the swept value) with n = 1, its
    # metrics and an empty std, and `best` is the configuration with the best value.
    kids = children(client, result.parent_run_id)
    assert sorted(r.info.run_name for r in kids) == sorted(trial_name({"model.latent_dim": d}, 0) for d in (16, 8))
    assert all("eval/recon_mse" in r.data.metrics and "val/recon_mse" in r.data.metrics for r in kids)
    groups = check_seed_groups(study, result, configs=2)
    rows = pq.read_table(result.artifacts["parquet"]).to_pylist()
    assert [r["model.latent_dim"] for r in rows] == [8, 16]
    for r in rows:
        [run] = groups[json.dumps({"model.latent_dim": r["model.latent_dim"]})]
        assert r["ssim_mean"] == pytest.approx(run.data.metrics["eval/ssim"], rel=1e-12)
        assert math.isnan(r["ssim_std"])
    hardware = {k.data.tags["dbae.hardware"] for k in kids}  # recorded by the workers; the parent lists them
    assert all("torch" in h and "rank 0 on 1 node" in h for h in hardware)
    assert client.get_run(result.parent_run_id).data.tags["dbae.hardware"] == "; ".join(sorted(hardware))

    # Parent artifacts: the table in three formats and one valid PNG plot per metric.
    names = {a.path for a in client.list_artifacts(result.parent_run_id, "ablation")}
    assert {"ablation/ablation.md", "ablation/ablation.csv", "ablation/ablation.parquet",
            "ablation/metric_recon_mse.png", "ablation/best.json"} <= names
    png = result.artifacts["metric_recon_mse"]
    assert png.read_bytes()[:8] == PNG
    with Image.open(png) as img:
        img.verify()
    assert len(result.table_markdown.splitlines()) == 2 + 2

    # `dbae table` rebuilds the same table from MLflow alone.
    capsys.readouterr()
    assert cli.main(["table", "sweep/grid", "--runs-dir", str(tmp_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split(",")[:2] == ['"model.latent_dim"', '"n"'] and len(lines) == 3

    # The best trial, registered by its MLflow run id (its checkpoint is on this machine: prior and metrics included),
    # evaluates by its models:/ URI.
    from dbae_platform.registry import best_trial_run, register
    best = best_trial_run(client, result.parent_run_id, result.best["values"], "eval/recon_mse", "min")
    assert json.loads(client.get_run(best).data.tags["dbae.sweep.values"]) == result.best["values"]
    assert register(best, "grid-best", result.tracking_uri).uri == "models:/grid-best/1"
    assert cli.main(["eval", "models:/grid-best/1", "--tracking-uri", result.tracking_uri, "--suite", "recon",
                     "--n", "2", "--sampler-steps", "1", "--out", str(tmp_path / "eval-best"), "--device", "cpu"]) == 0
    assert (tmp_path / "eval-best" / "metrics.json").is_file()

    # Rerunning without --resume is refused in one line; the finished sweep stays as it was.
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(study, storage_path=tmp_path, smoke=True)


def test_asha_stops_the_bad_trial_early(local_ray, tmp_path):
    # Grid order with one trial at a time: the good trial sets the rung, then the bad one (lr ~ 0, so the
    # reconstruction stays at its initial error) falls below it at the first rung and is stopped.
    study = Study(name="asha", space={"train.lr": [3e-3, 1e-9]}, max_concurrent_trials=1,
                  asha=Asha(metric="val/recon_mse", mode="min", grace_period=4, reduction_factor=2))
    extra = {"train.steps": 8, "train.ckpt_every": 4, "train.log_every": 4, "train.ema_decay": 0.0,
             "train.batch_size": 8, "eval.val_n": 16}
    result = run_sweep(study, storage_path=tmp_path, smoke=True, extra_overrides=extra)
    client = MlflowClient(result.tracking_uri)
    kids = {float(r.data.params["train.lr"]): r for r in children(client, result.parent_run_id)}
    good, bad = kids[3e-3], kids[1e-9]
    assert good.info.status == "FINISHED"
    assert bad.info.status == "KILLED" and "stopped early" in bad.data.tags["dbae.sweep.stopped"]
    steps = {k: max(m.step for m in client.get_metric_history(r.info.run_id, "val/recon_mse"))
             for k, r in kids.items()}
    assert steps[3e-3] == 8 and steps[1e-9] == 4
    assert "eval/recon_mse" not in bad.data.metrics
    table = pq.read_table(result.artifacts["parquet"]).to_pylist()
    assert [r["train.lr"] for r in table] == [3e-3]  # only finished trials enter the final table


def test_study_yaml_and_validation(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\npreset: tiny\nsearch: optuna\nseeds: 2\nspace:\n  model.latent_dim: [8, 16]\n"
                    "  objective.entropy_weight: {loguniform: [1.0e-4, 1.0e-1]}\noverrides: {model.method: dbae}\n")
    study = load_study(path)
    assert study.seeds == (0, 1) and study.swept == ["model.latent_dim", "objective.entropy_weight"]
    # YAML 1.1 reads 1e-4 as a string; the space means the number
    path.write_text("name: s\nsearch: random\nspace:\n  objective.entropy_weight: {loguniform: [1e-4, 1e-1]}\n"
                    "  train.lr: [1e-3, 2e-3]\n")
    assert load_study(path).space == {"objective.entropy_weight": {"loguniform": [1e-4, 1e-1]},
                                      "train.lr": [1e-3, 2e-3]}
    bad = [
        ({"name": "x", "space": {"model.latent_dim": {"uniform": [1, 2]}}}, "cannot enumerate"),
        ({"name": "x", "space": {}}, "space is empty"),
        ({"name": "x", "space": {"a": [1]}, "search": "bayes"}, "search='bayes'"),
        ({"name": "x", "space": {"a": [1]}, "metric": ["a", "b"], "mode": ["min", "max"]}, "multi-objective|optuna"),
        ({"name": "x", "space": {"a": {"loguniform": [0, 1]}}, "search": "random"}, "low > 0"),
        ({"space": {"a": [1]}}, "'name' is missing"),
        ({"name": "x", "space": {"a": [1]}, "spaces": 1}, "unknown key 'spaces'"),
    ]
    for d, message in bad:
        with pytest.raises(ConfigError, match=message):
            study_from_dict(d)
    # every grid point is validated before anything starts
    from dbae_platform.study import base_config
    with pytest.raises(ConfigError, match="latent_dim=0"):
        base_config(Study(name="x", space={"model.latent_dim": [8, 0]}))
    with pytest.raises(ConfigError, match="entropy_weight"):
        base_config(Study(name="x", space={"objective.entropy_weight": [0.0, 0.1]},
                          overrides={"model.method": "dbae_d"}))


def test_sweep_and_table_commands_reject_bad_input(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("name: b\nspace:\n  model.latent_dim: {uniform: [8, 64]}\n")
    assert cli.main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "grid cannot enumerate" in err
    assert cli.main(["table", "sweep/none", "--runs-dir", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert cli.main(["sweep", str(tmp_path / "bad.yaml"), "--seeds", "0"]) == 2


def test_trial_names_follow_the_swept_values():
    assert trial_name({"model.latent_dim": 64}, 0) == "latent_dim=64,seed=0"
    assert trial_name({"objective.sde": "ve", "model.method": "dbae_d"}, 2, "5f3a") == \
        "sde=ve,method=dbae_d,seed=2,trial=5f3a"
    assert trial_name({"train.lr": 0.00012345}, 1) == "lr=0.000123,seed=1"
    assert Path(trial_name({"a": 1}, 0)).name == "a=1,seed=0"


def test_concurrency_from_the_resources_present_warns_on_a_cluster(monkeypatch, caplog):
    """On a cluster (RAY_ADDRESS) that may scale up, sizing the sweep by what is present at start says so in one line
    with the fix; --max-concurrent silences it. (Ray's resource query is replaced: no cluster here.)"""
    import ray

    from dbae_platform.study import base_config
    from dbae_platform.sweep import _max_concurrent
    study = Study(name="x", preset="shapes32", space={"model.latent_dim": [8]})
    cfg = base_config(study)  # shapes32: 1 worker with 6 CPUs + 1 GPU
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})  # a CPU head, no GPU worker yet
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with caplog.at_level("WARNING"):
        assert _max_concurrent(study, cfg) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "--max-concurrent" in warned[0] and "autoscaling" in warned[0]
    caplog.clear()
    assert _max_concurrent(study.replace(max_concurrent_trials=5), cfg) == 5 and not caplog.records
