"""The ablation table of a hyperparameter sweep: one row per configuration, mean ± std of each metric over seeds.

A sweep is one MLflow parent run with one child run per trial. The sweep driver writes these tags: on the parent
`dbae.sweep.role` = "parent" and `dbae.sweep.swept` = JSON list of swept dotted config keys; on each child
`mlflow.parentRunId`, `dbae.sweep.values` = JSON dict of swept key -> value, and `dbae.seed` = str(int).

Metrics are read under a prefix (default `eval/`). One extra path segment names a variant of the same trained model
(`eval/random_xT/recon_mse` is `recon_mse` of variant `random_xT`); variants get their own rows and a `variant`
column, and plain `eval/<name>` metrics are variant "default". The table is a `pyarrow.Table` written as markdown,
CSV and parquet; `plot_metrics` draws one PNG per metric against the first swept key.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import yaml

from dbae_platform.tracking import child_runs

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["Trial", "build_table", "to_markdown", "write_table", "plot_metrics", "draw_metric", "trials_from_mlflow",
           "find_sweep", "table_from_mlflow", "parse_param", "DEFAULT_VARIANT"]

log = logging.getLogger(__name__)
DEFAULT_VARIANT = "default"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: its swept values (dotted config key -> value), seed, metrics and MLflow status."""

    run_id: str
    name: str
    values: dict[str, Any]
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "FINISHED"


# ---------------------------------------------------------------------------------------------------- the table


def _split_metric(key: str, prefix: str) -> tuple[str, str] | None:
    """`<prefix><name>` -> ("default", name); `<prefix><variant>/<name>` -> (variant, name); else None."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    if "/" in rest:
        variant, name = rest.split("/", 1)
        return variant, name
    return DEFAULT_VARIANT, rest


def _metric_key(prefix: str, variant: str, name: str) -> str:
    return f"{prefix}{name}" if variant == DEFAULT_VARIANT else f"{prefix}{variant}/{name}"


def _hashable(value: Any) -> Any:
    """Lists and dicts (e.g. a swept channel multiplier) become canonical JSON strings so that they can be grouped."""
    if isinstance(value, (list, tuple, dict, set)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _arrow_column(values: list[Any]) -> pa.Array:
    """The natural arrow type of a swept key's values: bool, int64, float64, else string (None is null)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        kind = pa.bool_()
    elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        kind = pa.int64()
    elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        kind = pa.float64()
    else:
        kind = pa.string()
        values = [v if v is None or isinstance(v, str) else str(v) for v in values]
    return pa.array(values, type=kind)


def _config_order(configs: Iterable[tuple]) -> list[tuple]:
    """Sorted by the swept values in key order: numbers numerically, other values by first appearance, None last."""
    configs = list(configs)
    first: list[dict[Any, int]] = [{} for _ in configs[0]] if configs else []
    for config in configs:
        for i, v in enumerate(config):
            first[i].setdefault(v, len(first[i]))

    def key(config: tuple) -> tuple:
        return tuple((2, 0.0) if v is None else (0, float(v)) if isinstance(v, (int, float)) else (1, first[i][v])
                     for i, v in enumerate(config))

    return sorted(configs, key=key)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean (NaN when empty) and sample std with ddof=1 (NaN below two values)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size >= 2 else math.nan)


def build_table(trials: Sequence[Trial], swept: Sequence[str], metrics: Sequence[str] | None = None,
                prefix: str = "eval/", *, include_unfinished: bool = False) -> pa.Table:
    """One row per configuration (and variant): swept columns, [variant], n, then `<m>_mean`, `<m>_std` per metric.

    `metrics` are names under `prefix` (given with or without it; default: every name seen, sorted). Only FINISHED
    trials count unless `include_unfinished` (then any trial with a metric counts: a sweep still running). `n` is the
    number of trials with at least one metric of the row's variant; a configuration with no metrics at all still
    gets one "default" row of n/a (n: its counted trials). NaN metric values count as missing.
    """
    swept = list(swept)
    pool = [t for t in trials if include_unfinished or t.status == "FINISHED"]
    parsed = [p for t in pool for k in t.metrics if (p := _split_metric(k, prefix)) is not None]
    if metrics is None:
        names = sorted({name for _, name in parsed})
    else:
        names = [m[len(prefix):] if prefix and m.startswith(prefix) else m for m in metrics]
    others = sorted({variant for variant, name in parsed if name in names} - {DEFAULT_VARIANT})
    variants = [DEFAULT_VARIANT] + others

    groups: dict[tuple, list[Trial]] = {}
    for t in pool:
        groups.setdefault(tuple(_hashable(t.values.get(k)) for k in swept), []).append(t)

    def value(t: Trial, variant: str, name: str) -> float | None:
        v = t.metrics.get(_metric_key(prefix, variant, name))
        return None if v is None or math.isnan(v) else float(v)

    rows: list[tuple[tuple, str, list[Trial]]] = []
    for config in _config_order(groups):
        found = [(variant, [t for t in groups[config] if any(value(t, variant, m) is not None for m in names)])
                 for variant in variants]
        found = [(variant, members) for variant, members in found if members]
        rows += [(config, variant, members) for variant, members in found or [(DEFAULT_VARIANT, groups[config])]]

    columns: dict[str, pa.Array] = {k: _arrow_column([config[i] for config, _, _ in rows]) for i, k in enumerate(swept)}
    if others:
        columns["variant"] = pa.array([variant for _, variant, _ in rows], type=pa.string())
    columns["n"] = pa.array([len(members) for _, _, members in rows], type=pa.int64())
    for m in names:
        stats = [_mean_std([v for t in members if (v := value(t, variant, m)) is not None])
                 for _, variant, members in rows]
        columns[f"{m}_mean"] = pa.array([s[0] for s in stats], type=pa.float64())
        columns[f"{m}_std"] = pa.array([s[1] for s in stats], type=pa.float64())
    return pa.table(columns)


def _metric_columns(table: pa.Table) -> list[str]:
    """Metric names of a table: `<m>` for each `<m>_mean` column with a matching `<m>_std`."""
    names = table.column_names
    return [c.removesuffix("_mean") for c in names if c.endswith("_mean") and c.removesuffix("_mean") + "_std" in names]


# ---------------------------------------------------------------------------------------------------- output


def _cell(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {std:.{digits}g}"


def to_markdown(table: pa.Table, digits: int = 4) -> str:
    """A GitHub markdown table: swept values, [variant], n, then "mean ± std" per metric ("n/a" without a mean)."""
    metrics = _metric_columns(table)
    stat_columns = {f"{m}_{s}" for m in metrics for s in ("mean", "std")}
    keys = [c for c in table.column_names if c not in stat_columns]
    escape = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(escape(c) for c in keys + metrics) + " |",
             "|" + "|".join("---:" if c == "n" else "---" for c in keys) + "|" + "---:|" * len(metrics)]
    shown = {c: _swept_texts(table.column(c).to_pylist(), digits) for c in keys}
    for i, row in enumerate(table.to_pylist()):
        cells = ["" if row[c] is None else escape(shown[c][i]) for c in keys]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"], digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _swept_texts(values: list[Any], digits: int) -> list[str]:
    """A column's cells: floats to `digits` significant digits (sampled values such as 1.291e-05), unless two
    different values would then read the same; everything else as it is."""
    floats = [v for v in values if isinstance(v, float)]
    short = {v: f"{v:.{digits}g}" for v in floats}
    if len(set(short.values())) < len(set(floats)):
        short = {v: repr(v) for v in floats}
    return [short[v] if isinstance(v, float) else str(v) for v in values]


def write_table(table: pa.Table, out_dir: str | Path) -> dict[str, Path]:
    """Write ablation.md, ablation.csv and ablation.parquet into `out_dir` (created); returns their paths."""
    import pyarrow.csv
    import pyarrow.parquet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "ablation.md", "csv": out_dir / "ablation.csv", "parquet": out_dir / "ablation.parquet"}
    paths["md"].write_text(to_markdown(table) + "\n")
    pyarrow.csv.write_csv(table, paths["csv"])
    pyarrow.parquet.write_table(table, paths["parquet"])
    log.info("ablation table (%d rows) written to %s", table.num_rows, out_dir)
    return paths


# Swept keys with an axis of their own: dimensions are powers of two (log2 axis at any span); a weight swept from 0
# reads on a symmetric-log axis (linear through 0, logarithmic beyond its smallest positive value).
LOG2_KEYS = ("model.latent_dim",)
SYMLOG_KEYS = ("objective.entropy_weight",)


def _x_scale(xs: list[float], key: str | None = None) -> tuple[str, dict[str, float]]:
    """The x axis of a numeric swept key: log2 for LOG2_KEYS and symlog for SYMLOG_KEYS (0 included) when their
    values allow it; otherwise log when all values are positive and span a factor ≥ 20, symlog when 0 joins such
    positives, else linear."""
    positive = [x for x in xs if x > 0]
    if not positive or any(x < 0 for x in xs):
        return "linear", {}
    if key in LOG2_KEYS and len(positive) == len(xs) and len(set(xs)) > 1:
        return "log", {"base": 2}
    if key in SYMLOG_KEYS and len(positive) < len(xs):
        return "symlog", {"linthresh": min(positive)}
    if max(positive) / min(positive) < 20:
        return "linear", {}
    if len(positive) == len(xs):
        return "log", {}
    return "symlog", {"linthresh": min(positive)}


def draw_metric(ax, table: pa.Table, swept: Sequence[str], metric: str) -> None:
    """Draw `metric`'s mean (± std bars) against the first swept key on a matplotlib axis, a line per series.

    A numeric first key is drawn as lines on the axis `_x_scale` picks (log2 for the latent dimension, symlog for
    the entropy weight, log or symlog for values spanning a factor ≥ 20); a string or bool key at categorical
    positions. Error bars are the seeds' standard deviation (none with one seed). The other swept keys and
    `variant` (when present) pick the series.
    """
    if not swept:
        raise ValueError("plot_metrics needs at least one swept key for the x axis")
    x_key = swept[0]
    series_keys = list(swept[1:]) + (["variant"] if "variant" in table.column_names else [])
    x_type = table.schema.field(x_key).type
    numeric = pa.types.is_integer(x_type) or pa.types.is_floating(x_type)
    rows = table.to_pylist()
    if numeric:
        rows = [r for r in rows if r[x_key] is not None]
        scale, scale_opts = _x_scale([float(r[x_key]) for r in rows], x_key)
    categories = list(dict.fromkeys(r[x_key] for r in rows))
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(tuple(r[k] for k in series_keys), []).append(r)
    for i, (label, members) in enumerate(series.items()):
        members = [r for r in members if r[f"{metric}_mean"] is not None and math.isfinite(r[f"{metric}_mean"])]
        if numeric:
            members.sort(key=lambda r: r[x_key])
            xs = np.array([float(r[x_key]) for r in members])
        else:  # categorical: series side by side around each position
            offset = (i - (len(series) - 1) / 2) * min(0.3 / max(len(series) - 1, 1), 0.1)
            xs = np.array([categories.index(r[x_key]) + offset for r in members], dtype=float)
        ys = np.array([r[f"{metric}_mean"] for r in members], dtype=float)
        err = np.array([r[f"{metric}_std"] for r in members], dtype=float)  # None -> NaN: no bar drawn
        text = ", ".join(f"{k}={v}" for k, v in zip(series_keys, label)) or None
        ax.errorbar(xs, ys, yerr=np.where(np.isfinite(err), err, np.nan), fmt="o-" if numeric else "o",
                    capsize=3, label=text)
    if numeric:
        ax.set_xscale(scale, **scale_opts)
        if scale != "linear":  # the swept values themselves as ticks (64, not 2^6; 0 on a symlog axis)
            ticks = sorted({float(r[x_key]) for r in rows})
            ax.set_xticks(ticks, _swept_texts(ticks, 3))
            ax.minorticks_off()
    else:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    ax.set_title(f"{metric} vs {x_key}")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if series_keys and series:
        ax.legend(fontsize="small")


def plot_metrics(table: pa.Table, swept: Sequence[str], out_dir: str | Path) -> list[Path]:
    """One PNG per metric, `metric_<name>.png`, drawn by `draw_metric` against the first swept key."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not swept:
        raise ValueError("plot_metrics needs at least one swept key for the x axis")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in _metric_columns(table):
        fig = Figure(figsize=(6.4, 4.2))
        FigureCanvasAgg(fig)
        draw_metric(fig.add_subplot(), table, swept, metric)
        fig.tight_layout()
        path = out_dir / f"metric_{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------- MLflow


def parse_param(raw: str | None) -> Any:
    """A logged param back to a value: YAML scalars and JSON lists ("64" -> 64, "1e-05" -> 1e-05, "None" -> None)."""
    if raw is None or raw == "None":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads "1e-05" (no dot) as a string
    return value


def _trial(run: Run, swept: Sequence[str]) -> Trial:
    tags, params = run.data.tags, run.data.params
    if "dbae.sweep.values" in tags:
        values = json.loads(tags["dbae.sweep.values"])
    else:
        values = {k: parse_param(params.get(k)) for k in swept}
    seed = tags.get("dbae.seed", params.get("train.seed"))
    return Trial(run_id=run.info.run_id, name=run.info.run_name or run.info.run_id, values=values,
                 seed=int(seed) if seed is not None else -1, metrics=dict(run.data.metrics),
                 status=run.info.status)


def trials_from_mlflow(client: MlflowClient, parent_run_id: str, page_size: int = 500) -> tuple[list[Trial], list[str]]:
    """The child runs of a sweep's parent run as trials, and the swept keys (the parent's `dbae.sweep.swept`).

    Without that tag the swept keys are the union of the children's `dbae.sweep.values` keys, in order seen.
    """
    parent = client.get_run(parent_run_id)
    swept_tag = parent.data.tags.get("dbae.sweep.swept")
    swept: list[str] = json.loads(swept_tag) if swept_tag else []
    runs: list[Run] = child_runs(client, parent_run_id, page_size)
    if not swept_tag:
        keys = (k for r in runs for k in json.loads(r.data.tags.get("dbae.sweep.values", "{}")))
        swept = list(dict.fromkeys(keys))
        log.warning("parent run %s has no dbae.sweep.swept tag; swept keys taken from its children: %s",
                    parent_run_id, swept)
    return [_trial(r, swept) for r in runs], swept


def find_sweep(client: MlflowClient, experiment_name: str, parent_run_id: str | None = None) -> Run:
    """The given parent run, or the newest run tagged `dbae.sweep.role` = "parent" in `experiment_name`."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        known = [e.name for e in client.search_experiments()
                 if e.name.startswith("sweep/") or experiment_name.lower() in e.name.lower()]
        raise LookupError(f"no MLflow experiment {experiment_name!r}; known sweep experiments: "
                          f"{', '.join(sorted(known)) or 'none'}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dbae.sweep.role` = 'parent'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        raise LookupError(f"no sweep parent run (tag dbae.sweep.role = 'parent') in MLflow experiment "
                          f"{experiment_name!r}")
    return runs[0]


def table_from_mlflow(tracking_uri: str, experiment_name: str, parent_run_id: str | None = None,
                      include_unfinished: bool = True) -> tuple[pa.Table, list[str], Run]:
    """The ablation table of a sweep in an MLflow store: (table, swept keys, parent run)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = find_sweep(client, experiment_name, parent_run_id)
    trials, swept = trials_from_mlflow(client, parent.info.run_id)
    log.info("sweep %s (%s): %d trials over %s", parent.info.run_name, parent.info.run_id, len(trials), swept)
    return build_table(trials, swept, include_unfinished=include_unfinished), swept, parent
