"""Every search path of a sweep with seeds, end to end on a real local Ray cluster and a real sqlite MLflow store.
(Grid and random share one Tune searcher, so a seed count is one more grid axis for both: 1 seed runs on a grid
in test_sweeps.py.)

For each: the sweep finishes; every configuration ran once per seed with the same swept values; the ablation table has
one row per configuration with n = seeds and the mean/std of its children's final metrics; `best` (and best.json) is
the configuration with the best seed mean; Optuna was told each configuration's seed mean of the final evaluation.
"""

import csv
import json
import math
import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from dbae_platform.study import Asha, Study
from dbae_platform.sweep import run_sweep

pytestmark = pytest.mark.slow
LR = {"loguniform": [1e-4, 1e-2]}


def grouped_children(result) -> dict[str, list]:
    """The sweep's child runs grouped by their swept values (JSON)."""
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(run.data.tags["dbae.sweep.values"], []).append(run)
    return groups


def check_seed_groups(study: Study, result, configs: int) -> dict[str, list]:
    """Shared checks: configurations × seeds, a row per configuration with n = seeds and its seed mean/std, best."""
    seeds = len(study.seeds)
    groups = grouped_children(result)
    assert len(groups) == configs, list(groups)
    for runs in groups.values():
        assert sorted(int(r.data.tags["dbae.seed"]) for r in runs) == list(study.seeds)
        assert {r.info.status for r in runs} == {"FINISHED"}
    rows = pq.read_table(result.artifacts["parquet"]).to_pylist()
    assert len(rows) == configs and all(r["n"] == seeds for r in rows)
    means = {}
    for row in rows:
        values = {k: row[k] for k in study.swept}
        runs = next(rs for v, rs in groups.items() if json.loads(v) == values)
        for metric in study.metric:
            name = metric.removeprefix("eval/")
            per_seed = [r.data.metrics[metric] for r in runs]
            assert row[f"{name}_mean"] == pytest.approx(statistics.fmean(per_seed), rel=1e-9)
            if seeds > 1:
                assert row[f"{name}_std"] == pytest.approx(statistics.stdev(per_seed), rel=1e-9)
            else:
                assert math.isnan(row[f"{name}_std"])
        means[json.dumps(values, sort_keys=True)] = statistics.fmean(r.data.metrics[study.metric[0]] for r in runs)
    pick = min if study.mode[0] == "min" else max
    best = pick(means, key=means.get)
    assert json.dumps(result.best["values"], sort_keys=True) == best and result.best["n"] == seeds
    assert result.best["value"] == pytest.approx(means[best], rel=1e-9)
    saved = json.loads((result.artifacts["md"].parent / "best.json").read_text())
    assert saved["values"] == result.best["values"] and saved["n"] == seeds
    return groups


def check_optuna_told_seed_means(study: Study, result, groups: dict[str, list]) -> None:
    """Each Optuna trial's value(s) equal the seed mean of its configuration's final evaluation."""
    with open(result.artifacts["md"].parent / "optuna_trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == len(groups) and {t["state"] for t in trials} == {"COMPLETE"}
    columns = ["value"] if len(study.metric) == 1 else [f"values_{i}" for i in range(len(study.metric))]
    told = sorted(tuple(round(float(t[c]), 9) for c in columns) for t in trials)
    expected = sorted(tuple(round(statistics.fmean(r.data.metrics[m] for r in runs), 9) for m in study.metric)
                      for runs in groups.values())
    assert told == expected


# Grid with 1 and 2 seeds, Optuna with 1 seed (single and multi-objective) and ASHA on a grid also run as the
# documented commands (test_documented_sweeps.py) and in test_sweeps.py (grid, 1 seed: n = 1 and an empty std); here
# the paths those do not cover.
CASES = {
    # Ray's default variant generator would draw the random keys afresh for every seed (two configurations of n = 1);
    # the sweep's constant_grid_search keeps one draw over the seeds: one configuration of n = 2
    "random-2-seeds": (Study(name="r2", search="random", num_samples=1, seeds=(0, 1), space={"train.lr": LR}), 1),
    "optuna-2-seeds": (Study(name="o2", search="optuna", num_samples=1, seeds=(0, 1), space={"train.lr": LR}), 1),
    "optuna-multi-2-seeds": (Study(name="m2", search="optuna", num_samples=1, seeds=(0, 1), space={"train.lr": LR},
                                   metric=("eval/recon_mse", "eval/ssim"), mode=("min", "max")), 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_search_path_with_seeds(local_ray, tmp_path, case):
    study, configs = CASES[case]
    result = run_sweep(study.replace(max_concurrent_trials=2), storage_path=tmp_path, smoke=True)
    assert MlflowClient(result.tracking_uri).get_run(result.parent_run_id).info.status == "FINISHED"
    groups = check_seed_groups(study, result, configs)
    if study.search == "optuna":
        check_optuna_told_seed_means(study, result, groups)


def test_asha_with_optuna(local_ray, tmp_path):
    """ASHA stops trials on the intermediate val/recon_mse while Optuna learns from the final evaluation: stopped
    trials are KILLED in MLflow and PRUNED in Optuna, finished ones COMPLETE with their own final metric."""
    study = Study(name="ao", search="optuna", num_samples=2, max_concurrent_trials=1,
                  space={"train.lr": {"loguniform": [1e-9, 1e-2]}},
                  asha=Asha(metric="val/recon_mse", mode="min", grace_period=2, reduction_factor=2))
    extra = {"train.ema_decay": 0.0, "eval.val_n": 8}
    result = run_sweep(study, storage_path=tmp_path, smoke=True, extra_overrides=extra)
    client = MlflowClient(result.tracking_uri)
    runs = [r for group in grouped_children(result).values() for r in group]
    assert len(runs) == 2 and {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    finished = {float(r.data.params["train.lr"]): r.data.metrics["eval/recon_mse"] for r in runs
                if r.info.status == "FINISHED"}
    for r in runs:
        if r.info.status == "KILLED":
            assert "stopped early" in r.data.tags["dbae.sweep.stopped"] and "eval/recon_mse" not in r.data.metrics
    with open(result.artifacts["md"].parent / "optuna_trials.csv") as f:
        trials = list(csv.DictReader(f))
    complete = {float(t["params_train.lr"]): float(t["value"]) for t in trials if t["state"] == "COMPLETE"}
    assert complete == pytest.approx(finished, rel=1e-9)
    assert sum(t["state"] == "PRUNED" for t in trials) == len(runs) - len(finished)
    rows = pq.read_table(result.artifacts["parquet"]).to_pylist()
    assert sorted(r["train.lr"] for r in rows) == sorted(finished)  # only finished trials enter the table
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


def test_a_failed_trial_is_one_line_naming_it_and_its_log(local_ray, tmp_path, capsys, caplog):
    """A diverging trial fails the sweep with exit code 1 and one line: the trial, its error, the file with the full
    traceback; Ray's traceback stays off the terminal. The table of the trials that finished is still written."""
    from dbae_platform.cli.sweep import main
    study = Study(name="fails", space={"model.latent_dim": [8]})
    capsys.readouterr()
    rc = main(study, ["--smoke", "--set", "train.lr=1e30", "--storage-path", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "sweep fails-smoke: 1 of 1 trials failed: latent_dim=8,seed=0: " in last, last
    assert "non-finite loss at step" in last
    log_file = Path(last.split("full log: ", 1)[1])
    assert log_file.is_file() and "NonFiniteLossError: non-finite loss at step" in log_file.read_text()
    assert "Traceback" not in out + err
    assert not any("Trial task failed" in r.getMessage() for r in caplog.records)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep/fails-smoke")
    runs = client.search_runs([exp.experiment_id])
    statuses = {r.data.tags.get("dbae.sweep.role", "child"): r.info.status for r in runs}
    assert statuses == {"parent": "FAILED", "child": "FAILED"}
    assert (tmp_path / "sweeps" / "fails-smoke" / "ablation" / "ablation.md").is_file()


def test_seed_groups_tell_optuna_the_seed_mean_and_survive_a_restore(tmp_path):
    """SeedGroups around a real OptunaSearch, driven as Tune drives it: one suggestion per configuration, the seeds
    as `train.seed`, intermediate results ignored, the seed mean told once, PRUNED when no seed was evaluated, and
    its state restored into a fresh wrapper mid-group (what --resume does)."""
    import pickle

    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from dbae_platform.seed_groups import SeedGroups

    db = f"sqlite:///{tmp_path / 'optuna.db'}"

    def make():
        inner = OptunaSearch(space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="eval/m", mode="min", seed=0,
                             storage=optuna.storages.RDBStorage(db), study_name="s")
        return SeedGroups(inner, [0, 1], "eval/m", "train.seed")

    search = make()
    a, b = search.suggest("t0"), search.suggest("t1")
    assert a["lr"] == b["lr"] and (a["train.seed"], b["train.seed"]) == (0, 1)
    search.on_trial_result("t0", {"train/loss": 1.0})  # no study metric yet: ignored, no KeyError
    search.on_trial_complete("t0", {"eval/m": 1.0})
    search.on_trial_complete("t1", {"eval/m": 3.0})
    c = search.suggest("t2")
    assert c["lr"] != a["lr"] and c["train.seed"] == 0
    restored = make()  # a new process: the wrapper's state travels through Tune's (cloud)pickle of get_state()
    restored.set_state(pickle.loads(pickle.dumps(search.get_state())))
    restored.searcher = search.searcher  # the inner searcher restores itself from its own file
    assert restored.suggest("t3") == {**c, "train.seed": 1}
    restored.on_trial_complete("t2", {"train/loss": 0.5})  # stopped early: no evaluation
    restored.on_trial_complete("t3", None, error=False)
    trials = optuna.load_study(study_name="s", storage=db).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"] and trials[0].value == 2.0
