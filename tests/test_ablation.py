"""The sweep ablation table: numbers against `statistics` on the inputs, file round trips, PNGs, a real MLflow store."""

import csv
import json
import math
import os
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dbae_platform.ablation import (
    Trial,
    _x_scale,
    build_table,
    draw_metric,
    find_sweep,
    plot_metrics,
    table_from_mlflow,
    to_markdown,
    trials_from_mlflow,
    write_table,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PNG = b"\x89PNG\r\n\x1a\n"
LD = "model.latent_dim"
MSE = {128: [0.010, 0.012], 32: [0.030, 0.034], 64: [0.020, 0.018], 256: [0.005]}
SSIM = {128: [0.80], 32: [0.70, 0.72], 64: [0.75, 0.77], 256: [0.9]}  # latent 128, seed 1 has no ssim


def _trial(i: int, values: dict, seed: int, metrics: dict, status: str = "FINISHED") -> Trial:
    return Trial(run_id=f"r{i}", name=f"trial-{i}", values=values, seed=seed, metrics=metrics, status=status)


@pytest.fixture
def trials() -> list[Trial]:
    """Latent dims given out of order, two seeds each (one for 256), a FAILED outlier and a missing metric."""
    out = []
    for seed in (0, 1):
        for ld in (128, 32, 64, 256):
            if seed >= len(MSE[ld]):
                continue
            metrics = {"eval/recon_mse": MSE[ld][seed], "train/loss": 100.0 + seed}
            if seed < len(SSIM[ld]):
                metrics["eval/ssim"] = SSIM[ld][seed]
            out.append(_trial(len(out), {LD: ld}, seed, metrics))
    out.append(_trial(len(out), {LD: 32}, 2, {"eval/recon_mse": 9.0, "eval/ssim": 0.0}, status="FAILED"))
    return out


def test_means_stds_sorting_and_exclusions(trials):
    table = build_table(trials, [LD])
    assert table.column_names == [LD, "n", "recon_mse_mean", "recon_mse_std", "ssim_mean", "ssim_std"]
    assert table.schema.field(LD).type == pa.int64()
    assert table.schema.field("n").type == pa.int64()
    assert all(table.schema.field(c).type == pa.float64() for c in table.column_names[2:])
    rows = table.to_pylist()
    assert [r[LD] for r in rows] == [32, 64, 128, 256]
    assert [r["n"] for r in rows] == [2, 2, 2, 1]  # the FAILED trial at 32 does not count
    for r in rows:
        for name, inputs in (("recon_mse", MSE), ("ssim", SSIM)):
            values = inputs[r[LD]]
            assert r[f"{name}_mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            if len(values) > 1:
                assert r[f"{name}_std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
            else:
                assert math.isnan(r[f"{name}_std"])


def test_markdown_cells(trials):
    lines = to_markdown(build_table(trials, [LD]), digits=3).splitlines()
    assert lines[0] == f"| {LD} | n | recon_mse | ssim |"
    assert len(lines) == 2 + 4
    by_ld = {line.split("|")[1].strip(): line for line in lines[2:]}
    mse_32 = f"{statistics.mean(MSE[32]):.3g} ± {statistics.stdev(MSE[32]):.3g}"
    assert by_ld["32"] == f"| 32 | 2 | {mse_32} | {statistics.mean(SSIM[32]):.3g} ± {statistics.stdev(SSIM[32]):.3g} |"
    assert by_ld["256"] == "| 256 | 1 | 0.005 | 0.9 |"  # one seed: the mean alone
    assert "| 0.8 |" in by_ld["128"]  # ssim seen in one of the two seeds


def test_explicit_metrics_unfinished_and_na():
    trials = [_trial(0, {LD: 8}, 0, {"eval/recon_mse": 0.5}),
              _trial(1, {LD: 8}, 1, {"eval/recon_mse": 0.7}, status="RUNNING"),
              _trial(2, {LD: 16}, 0, {}, status="RUNNING")]
    finished = build_table(trials, [LD], metrics=["eval/recon_mse", "psnr"])
    assert finished.column_names == [LD, "n", "recon_mse_mean", "recon_mse_std", "psnr_mean", "psnr_std"]
    assert finished.to_pylist()[0]["n"] == 1 and finished.num_rows == 1
    live = build_table(trials, [LD], include_unfinished=True).to_pylist()
    assert [(r[LD], r["n"]) for r in live] == [(8, 2), (16, 1)]
    assert live[0]["recon_mse_mean"] == pytest.approx(0.6)
    assert live[0]["recon_mse_std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    line = to_markdown(build_table(trials, [LD], metrics=["recon_mse", "psnr"], include_unfinished=True))
    assert line.splitlines()[-1] == "| 16 | 1 | n/a | n/a |"


def test_variant_rows():
    trials = [_trial(s, {LD: 32}, s, {"eval/recon_mse": d, "eval/random_xT/recon_mse": r})
              for s, (d, r) in enumerate([(0.01, 0.05), (0.02, 0.07)])]
    trials.append(_trial(2, {LD: 16}, 0, {"eval/recon_mse": 0.03}))  # no random_xT: no variant row
    table = build_table(trials, [LD])
    assert table.column_names[:3] == [LD, "variant", "n"]
    rows = [(r[LD], r["variant"], r["n"], r["recon_mse_mean"], r["recon_mse_std"]) for r in table.to_pylist()]
    assert rows == [(16, "default", 1, pytest.approx(0.03), pytest.approx(math.nan, nan_ok=True)),
                    (32, "default", 2, pytest.approx(0.015), pytest.approx(statistics.stdev([0.01, 0.02]))),
                    (32, "random_xT", 2, pytest.approx(0.06), pytest.approx(statistics.stdev([0.05, 0.07])))]


def test_arrow_types_and_two_keys():
    trials = [_trial(i, {"model.method": m, LD: ld, "train.lr": lr, "model.kl": kl}, 0, {"eval/ssim": 0.1 * i})
              for i, (m, ld, lr, kl) in enumerate([("dbae", 64, 1e-4, True), ("diffae", 32, 1e-3, False),
                                                   ("dbae", 32, 1, False), ("diffae", 64, 2e-4, True)])]
    table = build_table(trials, ["model.method", LD, "train.lr", "model.kl"])
    types = [table.schema.field(k).type for k in ("model.method", LD, "train.lr", "model.kl")]
    assert types == [pa.string(), pa.int64(), pa.float64(), pa.bool_()]
    assert [(r["model.method"], r[LD]) for r in table.to_pylist()] == [("dbae", 32), ("dbae", 64), ("diffae", 32),
                                                                      ("diffae", 64)]


def test_files_round_trip(trials, tmp_path):
    table = build_table(trials, [LD])
    paths = write_table(table, tmp_path / "out")
    assert set(paths) == {"md", "csv", "parquet"} and all(p.is_file() for p in paths.values())
    read = pq.read_table(paths["parquet"])
    assert read.schema.equals(table.schema)
    for name in table.column_names:  # NaN stds: Table.equals would call NaN != NaN
        np.testing.assert_array_equal(read.column(name).to_numpy(), table.column(name).to_numpy())
    with paths["csv"].open() as f:
        reader = csv.reader(f)
        assert next(reader) == table.column_names
        assert len(list(reader)) == table.num_rows
    assert len(paths["md"].read_text().splitlines()) == table.num_rows + 2


def _assert_pngs(paths, names):
    assert sorted(p.name for p in paths) == sorted(f"metric_{n.replace('/', '_')}.png" for n in names)
    for path in paths:
        assert path.read_bytes()[:8] == PNG
        with Image.open(path) as image:
            image.verify()


def test_plots_numeric_categorical_and_series(tmp_path):
    lrs = [1e-4, 1e-3, 1e-2]
    numeric = [_trial(i, {"train.lr": lr}, s, {"eval/recon_mse": lr * (1 + s), "eval/random_xT/recon_mse": 2 * lr})
               for i, (lr, s) in enumerate((lr, s) for lr in lrs for s in (0, 1))]
    _assert_pngs(plot_metrics(build_table(numeric, ["train.lr"]), ["train.lr"], tmp_path / "a"), ["recon_mse"])

    methods = [_trial(i, {"model.method": m}, 0, {"eval/ssim": 0.5 + 0.1 * i, "eval/fid": 10.0 - i})
               for i, m in enumerate(["dbae", "diffae", "pdae"])]
    _assert_pngs(plot_metrics(build_table(methods, ["model.method"]), ["model.method"], tmp_path / "b"),
                 ["fid", "ssim"])

    swept = [LD, "model.method"]
    combos = [(ld, m, s) for ld in (0, 16, 512) for m in ("dbae", "diffae") for s in (0, 1)]  # 0 with 16, 512: symlog
    grid = [_trial(i, {LD: ld, "model.method": m}, s, {"eval/a/b": ld * 1e-3 + s})
            for i, (ld, m, s) in enumerate(combos)]
    _assert_pngs(plot_metrics(build_table(grid, swept, metrics=["a/b"]), swept, tmp_path / "c"), ["a/b"])


def test_x_scale():
    assert _x_scale([1e-4, 1e-3, 1e-2])[0] == "log"
    assert _x_scale([0.0, 1e-4, 1e-2]) == ("symlog", {"linthresh": 1e-4})
    assert _x_scale([32.0, 64.0, 128.0])[0] == "linear"
    assert _x_scale([0.0, 1.0, 2.0])[0] == "linear"
    assert _x_scale([-1.0, 1.0, 100.0])[0] == "linear"
    # the latent dimension on a log2 axis at any span; the entropy weight from 0 on a symmetric-log axis
    assert _x_scale([32.0, 64.0, 128.0], "model.latent_dim") == ("log", {"base": 2})
    assert _x_scale([64.0], "model.latent_dim")[0] == "linear"
    assert _x_scale([0.0, 1e-3, 1e-1], "objective.entropy_weight") == ("symlog", {"linthresh": 1e-3})
    assert _x_scale([0.0, 1e-3], "objective.entropy_weight") == ("symlog", {"linthresh": 1e-3})
    assert _x_scale([1e-3, 2e-3], "objective.entropy_weight")[0] == "linear"


def test_plot_axes_ticks_and_seed_error_bars():
    """What a reader sees: log2 x with the dimensions as tick labels, symlog x through 0, and error bars equal to
    the seeds' sample standard deviation (none for a configuration with one seed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def axis(trials, key):
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw_metric(ax, build_table(trials, [key]), [key], "recon_mse")
        return ax

    dims = {16: [0.03, 0.05], 64: [0.02, 0.02], 256: [0.01]}  # two seeds, two seeds, one seed
    trials = [_trial(i, {LD: d}, s, {"eval/recon_mse": v}) for i, (d, s, v) in
              enumerate((d, s, v) for d, vs in dims.items() for s, v in enumerate(vs))]
    ax = axis(trials, LD)
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "64", "256"]
    bars = [seg for coll in ax.collections for seg in coll.get_segments() if len(seg) == 2]  # one per drawn bar
    half_heights = sorted(round(abs(seg[1][1] - seg[0][1]) / 2, 12) for seg in bars)
    assert half_heights == [0.0, round(np.std([0.03, 0.05], ddof=1), 12)]  # d=256 (one seed) has no bar

    weights = [_trial(i, {"objective.entropy_weight": w}, 0, {"eval/recon_mse": 0.1 + w}) for i, w in
               enumerate((0.0, 1e-3, 1e-1))]
    ax = axis(weights, "objective.entropy_weight")
    assert ax.get_xscale() == "symlog" and ax.xaxis.get_transform().linthresh == 1e-3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.001", "0.1"]


# ---------------------------------------------------------------------------------------------------- MLflow

SWEPT = [LD, "model.method"]
CHILDREN = [(32, "dbae", 0, 0.030, "FINISHED"), (32, "dbae", 1, 0.034, "FINISHED"),
            (64, "dbae", 0, 0.020, "FINISHED"), (64, "dbae", 1, 0.500, "FAILED")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store with experiment sweep/test: one parent run and four children (one FAILED)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("sweep/test")
    parent = client.create_run(exp_id, run_name="sweep", tags={"dbae.sweep.role": "parent",
                                                               "dbae.sweep.swept": json.dumps(SWEPT)})
    for i, (ld, method, seed, mse, status) in enumerate(CHILDREN):
        tags = {"mlflow.parentRunId": parent.info.run_id, "dbae.seed": str(seed)}
        if i != 2:
            tags["dbae.sweep.values"] = json.dumps({LD: ld, "model.method": method})
        child = client.create_run(exp_id, run_name=f"trial-{i}", tags=tags)
        if i == 2:  # no values tag: read back from the params the trainer logs
            client.log_param(child.info.run_id, LD, str(ld))
            client.log_param(child.info.run_id, "model.method", method)
        client.log_metric(child.info.run_id, "eval/recon_mse", mse)
        client.log_metric(child.info.run_id, "train/loss", 1.0)
        client.set_terminated(child.info.run_id, status=status)
    return uri, client, parent.info.run_id


def test_trials_from_mlflow(store):
    _, client, parent_id = store
    trials, swept = trials_from_mlflow(client, parent_id, page_size=3)  # two pages
    assert swept == SWEPT
    got = sorted((t.values[LD], t.values["model.method"], t.seed, t.metrics["eval/recon_mse"], t.status, t.name)
                 for t in trials)
    assert got == sorted((*c, f"trial-{i}") for i, c in enumerate(CHILDREN))


def test_table_from_mlflow(store):
    uri, client, parent_id = store
    table, swept, parent = table_from_mlflow(uri, "sweep/test", include_unfinished=False)
    assert parent.info.run_id == parent_id and swept == SWEPT
    rows = table.to_pylist()
    assert [(r[LD], r["model.method"], r["n"]) for r in rows] == [(32, "dbae", 2), (64, "dbae", 1)]
    assert rows[0]["recon_mse_mean"] == pytest.approx(statistics.mean([0.030, 0.034]))
    assert rows[0]["recon_mse_std"] == pytest.approx(statistics.stdev([0.030, 0.034]))
    assert rows[1]["recon_mse_mean"] == pytest.approx(0.020) and math.isnan(rows[1]["recon_mse_std"])
    live, _, _ = table_from_mlflow(uri, "sweep/test", parent_run_id=parent_id)  # the FAILED child counts too
    assert live.to_pylist()[1]["recon_mse_mean"] == pytest.approx(statistics.mean([0.020, 0.500]))


def test_find_sweep_missing_experiment(store):
    _, client, _ = store
    with pytest.raises(LookupError, match=r"sweep/nope.*sweep/test"):
        find_sweep(client, "sweep/nope")
    client.create_experiment("empty")
    with pytest.raises(LookupError, match="no sweep parent run"):
        find_sweep(client, "empty")
