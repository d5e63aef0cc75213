"""The sweeps of the report as read from MLflow: the newest parent run of every `sweep/*` experiment, its trials and
what kind of study it is; a method comparison's rows (label -> metric -> mean ± std over seeds)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbae_platform import ablation

__all__ = ["Sweep", "Stat", "collect", "share_reference_trials", "method_rows", "format_number", "LABELS", "GAUSSIAN",
           "KINDS"]

# (method, variant of the ablation table) -> the row label of the method comparison
LABELS = {("dbae", "default"): "DBAE", ("dbae_d", "default"): "DBAE-d",
          ("diffae", "default"): "DiffAE, inferred x_T", ("diffae", "random_xT"): "DiffAE, random x_T"}
# the generation suite's baseline (`eval/gaussian/*`): z from a Gaussian fitted to the training latents instead of the
# latent DDPM prior behind the plain `eval/fid` etc. (dbae-method.md §5)
GAUSSIAN = {("dbae", "gaussian"): "DBAE, Gaussian latent", ("dbae_d", "gaussian"): "DBAE-d, Gaussian latent",
            ("diffae", "gaussian"): "DiffAE, Gaussian latent"}
KINDS = {"model.latent_dim": "latent_dim", "objective.entropy_weight": "entropy_weight", "objective.sde": "sde"}


@dataclass
class Sweep:
    """One sweep as read from MLflow: its parent run, trials, swept keys and what the report makes of it."""

    experiment: str
    name: str
    parent: Any  # mlflow Run
    children: list[Any]  # mlflow Runs
    trials: list[ablation.Trial]
    swept: list[str]
    kind: str = "other"
    dataset: str = "?"
    borrowed: list[tuple[Any, str]] = field(default_factory=list)  # (run, sweep name): see share_reference_trials

    @functools.cached_property
    def rows(self) -> dict[str, dict[str, Stat]]:
        """The method comparison's rows (`method_rows`), built once."""
        return method_rows(self)

    @property
    def command(self) -> str:
        return self.parent.data.tags.get("dbae.command", "")

    def param(self, key: str) -> str | None:
        for run in self.children:
            if key in run.data.params:
                return run.data.params[key]
        return self.parent.data.params.get(f"fixed.{key}")


def _kind(swept: Sequence[str]) -> str:
    if list(swept) == ["model.method"]:
        return "methods"
    return next((kind for key, kind in KINDS.items() if key in swept), "other")


def collect(client, include_smoke: bool = False) -> list[Sweep]:
    """The newest sweep of every `sweep/*` experiment in the store, ordered by the parent runs' start times."""
    sweeps = []
    for exp in client.search_experiments():
        if not exp.name.startswith("sweep/") or (exp.name.endswith("-smoke") and not include_smoke):
            continue
        try:
            parent = ablation.find_sweep(client, exp.name)
        except LookupError:
            continue
        trials, swept = ablation.trials_from_mlflow(client, parent.info.run_id)
        ids = {t.run_id for t in trials}
        children = [client.get_run(i) for i in ids]
        sweep = Sweep(exp.name, parent.data.tags.get("dbae.sweep.name", exp.name), parent, children, trials, swept,
                      _kind(swept))
        sweep.dataset = sweep.param("data.dataset") or "?"
        sweeps.append(sweep)
    share_reference_trials(sweeps)
    return sorted(sweeps, key=lambda s: s.parent.info.start_time)


# Config keys that name, file or place a run without changing what it computes
BOOKKEEPING = ("name", "tracking.", "resources.cpus_per_worker", "resources.max_failures")


def _same_run(a: dict[str, str], b: dict[str, str], swept: Sequence[str]) -> bool:
    """Two runs' params describe the same training and evaluation, except for the `swept` keys."""
    return all(a.get(k) == b.get(k) for k in (set(a) | set(b)) - set(swept) if not k.startswith(BOOKKEEPING))


def share_reference_trials(sweeps: Sequence[Sweep]) -> None:
    """Add to each ablation the finished trials of a method comparison that are runs of it: the same config, seed,
    budget and data but for the ablation's swept keys, at a value the ablation did not run itself. `make results`
    runs an ablation's reference point (d = 64, entropy weight 0) once, in the comparison, and the ablation's table
    and plot include it (listed in `Sweep.borrowed`)."""
    methods = [s for s in sweeps if s.kind == "methods"]
    for sweep in (s for s in sweeps if s.kind != "methods" and s.children):
        reference = sweep.children[0].data.params
        have = {json.dumps(t.values, sort_keys=True, default=str) for t in sweep.trials}
        for source in methods:
            for run in source.children:
                params = run.data.params
                if run.info.status != "FINISHED" or not _same_run(reference, params, sweep.swept):
                    continue
                values = {k: ablation.parse_param(params.get(k)) for k in sweep.swept}
                key = json.dumps(values, sort_keys=True, default=str)
                if key in have:
                    continue
                have.add(key)
                sweep.trials.append(ablation.Trial(run.info.run_id, run.info.run_name or run.info.run_id, values,
                                                   int(params.get("train.seed", -1)), dict(run.data.metrics),
                                                   run.info.status))
                sweep.children.append(run)
                sweep.borrowed.append((run, source.name))


@dataclass
class Stat:
    mean: float
    std: float
    n: int

    def text(self, digits: int = 4) -> str:
        if self.mean is None or not math.isfinite(self.mean):
            return "n/a"
        s = format_number(self.mean, digits)
        return s if not math.isfinite(self.std) else f"{s} ± {format_number(self.std, 2)}"


def format_number(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.{digits - 1}e}"


def method_rows(sweep: Sweep) -> dict[str, dict[str, Stat]]:
    """Label -> metric -> mean ± std over seeds, from a method comparison's ablation table."""
    table = ablation.build_table(sweep.trials, sweep.swept)
    rows: dict[str, dict[str, Stat]] = {}
    for row in table.to_pylist():
        key = (row["model.method"], row.get("variant") or ablation.DEFAULT_VARIANT)
        label = LABELS.get(key) or GAUSSIAN.get(key)
        if label is None:
            continue
        rows[label] = {m.removesuffix("_mean"): Stat(row[m], row[m.removesuffix("_mean") + "_std"], row["n"])
                       for m in row if m.endswith("_mean") and row[m] is not None and math.isfinite(row[m])}
    return rows
