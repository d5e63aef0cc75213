"""A study (architecture.md, step 3): a preset, fixed overrides and a search space over dotted config keys, read from
YAML or a dict and validated before anything runs:

    space:
      model.latent_dim: [32, 64, 128, 256]            # a list: grid values, or categories for optuna/random
      objective.entropy_weight: {loguniform: [1.0e-4, 1.0e-1]}   # also uniform, randint, choice

`search` is `grid` (full factorial), `optuna` (TPE; several metrics make it multi-objective) or `random`. Every
configuration runs once per seed, and seeds never change a configuration. `dbae_platform.sweep` runs a study.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbae_platform.config import Config, ConfigError, load_config, parse_overrides

__all__ = ["Asha", "Study", "load_study", "study_from_dict", "validate_study", "base_config", "parse_space_overrides",
           "SEARCHES", "SMOKE", "SEED_KEY"]

SEARCHES = ("grid", "optuna", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# What --smoke changes: a few steps of a small run, so a whole study checks its plumbing in about a minute.
SMOKE = {"train.steps": 4, "train.log_every": 2, "train.ckpt_every": 2, "train.image_every": 0,
         "train.batch_size": 4, "data.train_images": 64, "eval.n": 8, "eval.val_n": 4, "eval.sampler_steps": 2,
         "eval.suites": ["recon"], "resources.num_workers": 1, "resources.cpus_per_worker": 0.5,
         "resources.use_gpu": False}
SEED_KEY = "train.seed"  # set per trial from `seeds`; never a swept key


@dataclass(frozen=True)
class Asha:
    """Early stopping of poor trials on an intermediate metric (reported at every checkpoint)."""

    metric: str = "val/recon_mse"
    mode: str = "min"
    grace_period: int | None = None  # steps before a trial may be stopped; None: train.ckpt_every
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class Study:
    name: str
    preset: str = "tiny"
    space: dict[str, Any] = field(default_factory=dict)
    search: str = "grid"
    metric: tuple[str, ...] = ("eval/recon_mse",)
    mode: tuple[str, ...] = ("min",)
    num_samples: int = 8  # configurations drawn by optuna/random (a grid has exactly its own)
    seeds: tuple[int, ...] = (0,)
    overrides: dict[str, Any] = field(default_factory=dict)
    asha: Asha | None = None
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs (GPUs) fit
    experiment: str | None = None  # MLflow experiment; None: sweep/<name>
    description: str = ""

    @property
    def swept(self) -> list[str]:
        return list(self.space)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"sweep/{self.name}"

    def replace(self, **changes: Any) -> Study:
        return dataclasses.replace(self, **changes)


# -- the study: from YAML / dict, validated ------------------------------------------------------------
def _tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(v: Any) -> Any:
    """Space values with YAML 1.1's exponent-without-dot strings ("1e-4") read as the floats they mean."""
    if isinstance(v, str) and _FLOAT.match(v):
        return float(v)
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    if isinstance(v, dict):
        return {k: _numbers(x) for k, x in v.items()}
    return v


def _is_int(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_strs(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, str) for x in v))


def _is_space(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (list, dict)) for k, x in v.items())


def _is_asha(v: Any) -> bool:
    return v is None or isinstance(v, (bool, dict, Asha))


# key -> (is the value of an allowed type, what is allowed): checked before the values themselves
_STUDY_TYPES: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "preset": (lambda v: isinstance(v, str) and bool(v), "a preset name or a YAML config path"),
    "space": (_is_space, "a mapping of dotted config keys to a list of values or {distribution: [...]}"),
    "search": (lambda v: isinstance(v, str), f"one of {SEARCHES}"),
    "metric": (_is_strs, "a metric name or a list of them"),
    "mode": (_is_strs, "'min' or 'max', or a list of them"),
    "num_samples": (_is_int, "an integer >= 1"),
    "seeds": (lambda v: _is_int(v) or (isinstance(v, (list, tuple)) and bool(v) and all(_is_int(x, 0) for x in v)),
              "a count >= 1 or a non-empty list of integer seeds >= 0"),
    "overrides": (lambda v: isinstance(v, dict), "a mapping of dotted config keys to values"),
    "asha": (_is_asha, "true, false or a mapping of metric, mode, grace_period, reduction_factor"),
    "max_concurrent_trials": (lambda v: v is None or _is_int(v), "an integer >= 1 or null"),
    "experiment": (lambda v: v is None or (isinstance(v, str) and bool(v)), "an MLflow experiment name or null"),
    "description": (lambda v: isinstance(v, str), "a string"),
}
_ASHA_TYPES: dict[str, tuple[Any, str]] = {
    "metric": (lambda v: isinstance(v, str) and bool(v), "a metric name"),
    "mode": (lambda v: v in ("min", "max"), "'min' or 'max'"),
    "grace_period": (lambda v: v is None or _is_int(v), "an integer >= 1 (steps) or null"),
    "reduction_factor": (lambda v: _is_number(v) and v > 1, "a number > 1"),
}


def _short_repr(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_types(d: dict[str, Any], rules: dict[str, tuple[Any, str]], source: str, prefix: str = "") -> None:
    """One-line ConfigError for the first value of the wrong type, naming the key, the value and what is allowed."""
    for key, value in d.items():
        ok, allowed = rules[key]
        if not ok(value):
            raise ConfigError(f"{source}: {prefix}{key}={_short_repr(value)} has the wrong type: expected {allowed}")


def study_from_dict(d: dict[str, Any], source: str = "study") -> Study:
    """A validated Study from a plain dict (what a study YAML holds); one-line ConfigError otherwise."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source} must be a mapping with name, preset, space, ...: got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(Study)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}: use some of {sorted(known)}")
    if "name" not in d:
        raise ConfigError(f"{source}: 'name' is missing: give the study a name (it names the MLflow experiment)")
    _check_types(d, _STUDY_TYPES, source)
    d = dict(d)
    if isinstance(d.get("asha"), dict):
        bad = sorted(set(d["asha"]) - {f.name for f in dataclasses.fields(Asha)})
        if bad:
            raise ConfigError(f"{source}: asha.{bad[0]} is unknown: use metric, mode, grace_period, reduction_factor")
        _check_types(d["asha"], _ASHA_TYPES, source, "asha.")
        d["asha"] = Asha(**d["asha"])
    elif d.get("asha") is True:
        d["asha"] = Asha()
    elif d.get("asha") is False:
        d["asha"] = None
    seeds = d.get("seeds", (0,))
    d["seeds"] = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in _tuple(seeds))
    for key in ("metric", "mode"):
        if key in d:
            d[key] = _tuple(d[key])
    if isinstance(d.get("space"), dict):
        d["space"] = _numbers(d["space"])
    study = Study(**d)
    validate_study(study, source)
    return study


def load_study(path: str | Path) -> Study:
    """A Study from a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist: pass a YAML file (see sweeps/*.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read study file {path} ({err}): pass a readable YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with name, preset, space, ...")
    return study_from_dict(data, str(path))


def _is_distribution(spec: Any) -> bool:
    return isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS


def validate_study(study: Study, source: str = "study") -> None:
    if study.search not in SEARCHES:
        raise ConfigError(f"{source}: search={study.search!r} is invalid: use one of {SEARCHES}")
    if not study.space:
        raise ConfigError(f"{source}: space is empty: give at least one dotted key with its values")
    if not study.seeds:
        raise ConfigError(f"{source}: seeds is empty: give a count (e.g. 3) or a list of seeds")
    if study.num_samples < 1:
        raise ConfigError(f"{source}: num_samples={study.num_samples} is invalid: use a positive integer")
    if len(study.metric) != len(study.mode) or any(m not in ("min", "max") for m in study.mode):
        raise ConfigError(f"{source}: metric={list(study.metric)} needs as many modes, each 'min' or 'max', "
                          f"got mode={list(study.mode)}")
    if len(study.metric) > 1 and study.search != "optuna":
        raise ConfigError(f"{source}: several metrics need search: optuna (multi-objective TPE)")
    for key, spec in study.space.items():
        if key == "train.seed":
            raise ConfigError(f"{source}: space.train.seed is not searched: set `seeds` instead")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{source}: space.{key} is an empty list: give the values to try")
        elif _is_distribution(spec):
            if study.search == "grid":
                raise ConfigError(f"{source}: space.{key}={spec} is a distribution, which a grid cannot enumerate: "
                                  "give a list of values or use search: optuna|random")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and (not isinstance(args, list) or len(args) != 2 or not args[0] < args[1]):
                raise ConfigError(f"{source}: space.{key}: {kind} takes [low, high] with low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"{source}: space.{key}: loguniform needs low > 0, got {args[0]}")
        else:
            raise ConfigError(f"{source}: space.{key}={spec!r} is invalid: use a list of values or one of "
                              f"{{{', '.join(DISTRIBUTIONS)}: ...}}")


def _corners(study: Study) -> list[dict[str, Any]]:
    """Every grid point, or the corners of every range: what the validation below instantiates."""
    values = []
    for spec in study.space.values():
        if isinstance(spec, list):
            values.append(spec)
        else:
            kind, args = next(iter(spec.items()))
            values.append(list(args))
    return [dict(zip(study.space, combo)) for combo in itertools.product(*values)][:256]


def base_config(study: Study, smoke: bool = False, extra: dict[str, Any] | None = None) -> Config:
    """The preset with the study's fixed overrides (and --smoke's), validated; every grid point is checked too."""
    overrides = {**study.overrides, **(SMOKE if smoke else {}), **(extra or {})}
    cfg = load_config(study.preset, overrides)
    for point in _corners(study):
        try:
            load_config(cfg.to_dict(), point)
        except ConfigError as err:
            raise ConfigError(f"study {study.name}: {', '.join(f'{k}={v}' for k, v in point.items())}: {err}") \
                from None
    return cfg


def parse_space_overrides(items: list[str]) -> dict[str, Any]:
    """--space KEY=[v1,v2] items (YAML values) as a space dict."""
    return {k: v if isinstance(v, (list, dict)) else [v] for k, v in parse_overrides(items).items()}
