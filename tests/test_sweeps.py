"""Sweeps end to end on a real local Ray cluster and a real sqlite MLflow store (tiny preset, a few steps per trial)."""

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from dbae_platform import cli
from dbae_platform.config import ConfigError
from dbae_platform.tune import Asha, Study, load_study, run_sweep, study_from_dict, trial_name

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def children(client: MlflowClient, parent_id: str):
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_grid_sweep_parent_children_table_and_plots(local_ray, tmp_path, capsys):
    study = Study(name="grid", space={"model.latent_dim": [32, 8, 16]}, search="grid")
    result = run_sweep(study, storage_path=tmp_path, smoke=True)
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dbae.sweep.role"] == "parent"
    assert json.loads(parent.data.tags["dbae.sweep.swept"]) == ["model.latent_dim"]
    assert json.loads(parent.data.params["space.model.latent_dim"]) == [32, 8, 16]

    kids = children(client, result.parent_run_id)
    assert sorted(r.info.run_name for r in kids) == [trial_name({"model.latent_dim": d}, 0) for d in (16, 32, 8)]
    assert {r.info.status for r in kids} == {"FINISHED"}
    by_dim = {int(r.data.params["model.latent_dim"]): r.data.metrics for r in kids}
    assert all("eval/recon_mse" in m and "val/recon_mse" in m for m in by_dim.values())

    # The table holds each child's own numbers (one seed: the mean is the value, no std), sorted by the swept value.
    table = pq.read_table(result.artifacts["parquet"])
    rows = table.to_pylist()
    assert [r["model.latent_dim"] for r in rows] == [8, 16, 32]
    for r in rows:
        assert r["n"] == 1
        for metric in ("recon_mse", "ssim", "psnr"):
            assert r[f"{metric}_mean"] == pytest.approx(by_dim[r["model.latent_dim"]][f"eval/{metric}"], rel=1e-12)
            assert math.isnan(r[f"{metric}_std"])
    best_dim = min(by_dim, key=lambda d: by_dim[d]["eval/recon_mse"])
    assert result.best["values"] == {"model.latent_dim": best_dim}

    # Parent artifacts: the table in three formats and one valid PNG plot per metric.
    names = {a.path for a in client.list_artifacts(result.parent_run_id, "ablation")}
    assert {"ablation/ablation.md", "ablation/ablation.csv", "ablation/ablation.parquet",
            "ablation/metric_recon_mse.png", "ablation/best.json"} <= names
    png = result.artifacts["metric_recon_mse"]
    assert png.read_bytes()[:8] == PNG
    with Image.open(png) as img:
        img.verify()
    assert len(result.table_markdown.splitlines()) == 2 + 3

    # `dbae table` rebuilds the same table from MLflow alone.
    capsys.readouterr()
    assert cli.main(["table", "sweep/grid", "--runs-dir", str(tmp_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split(",")[:2] == ['"model.latent_dim"', '"n"'] and len(lines) == 4

    # Rerunning without --resume is refused in one line; the finished sweep stays as it was.
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(study, storage_path=tmp_path, smoke=True)


def test_optuna_multi_objective_four_trials(local_ray, tmp_path):
    study = Study(name="tpe", search="optuna", num_samples=4, max_concurrent_trials=2,
                  space={"model.latent_dim": [8, 16, 32], "train.lr": {"loguniform": [1e-4, 1e-2]}},
                  metric=("eval/recon_mse", "eval/ssim"), mode=("min", "max"))
    result = run_sweep(study, storage_path=tmp_path, smoke=True)
    client = MlflowClient(result.tracking_uri)
    kids = children(client, result.parent_run_id)
    assert len(kids) == 4 and {r.info.status for r in kids} == {"FINISHED"}
    lrs = [float(r.data.params["train.lr"]) for r in kids]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 4
    out = result.artifacts["md"].parent
    trials = (out / "optuna_trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 4 and all(",COMPLETE" in line for line in trials[1:])
    summary = (out / "optuna_summary.txt").read_text()
    assert "directions ['minimize', 'maximize']" in summary and "Pareto" in summary
    # every child's (recon_mse, ssim) pair appears among the Optuna trials' values
    for r in kids:
        assert f"{r.data.metrics['eval/recon_mse']:.6g}"[:6] in (out / "optuna_trials.csv").read_text()


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
    from dbae_platform.tune import base_config
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
