"""Seeds as repeats of one configuration, and a searcher that learns from the final evaluation only.

How a study's metric reaches its search (the rule every sweep follows):
- Trials report `train/*` every `train.log_every` steps and `val/recon_mse` at every checkpoint. These intermediate
  reports drive schedulers (ASHA compares trials on `val/recon_mse`) and the progress view, never the searcher.
- The study metric (`eval/*`) exists only in a trial's last report, after the end-of-training evaluation. The searcher
  is told it once per configuration, when every seed of that configuration has ended: the mean over the seeds that
  reached the evaluation (a configuration none of whose seeds did, stopped early or failed, is told as pruned or
  failed). The ablation table and `best.json` use the same final evaluations, grouped by configuration.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

__all__ = ["SeedGroups"]


@dataclass
class _Group:
    """One configuration and its trials, one per seed; `primary` is the trial id the inner searcher knows it by."""

    primary: str
    config: dict[str, Any]
    members: list[str] = field(default_factory=list)
    ended: dict[str, tuple[dict[str, Any] | None, bool]] = field(default_factory=dict)  # trial id -> (result, error)


class SeedGroups(Searcher):
    """Runs each configuration that `searcher` suggests once per seed (config[seed_key]) and tells it the mean over
    seeds of the final metrics; intermediate results are not forwarded (see the module docstring)."""

    def __init__(self, searcher: Searcher, seeds: list[int], metric: str | list[str], seed_key: str) -> None:
        super().__init__(metric=None, mode=None)  # the inner searcher owns metric and mode
        self.searcher = searcher
        self.seeds = list(seeds)
        self.seed_key = seed_key
        self.metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
        self.multi = isinstance(metric, (list, tuple))
        self._groups: list[_Group] = []
        self._group_of: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        group = self._groups[-1] if self._groups else None
        if group is None or len(group.members) == len(self.seeds):
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            group = _Group(trial_id, dict(config))
            self._groups.append(group)
        seed = self.seeds[len(group.members)]
        group.members.append(trial_id)
        self._group_of[trial_id] = len(self._groups) - 1
        return {**group.config, self.seed_key: seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate reports carry no study metric: the searcher learns from final evaluations only."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._group_of:
            return
        group = self._groups[self._group_of[trial_id]]
        group.ended[trial_id] = (result, error)
        if len(group.ended) < len(self.seeds):
            return
        means = [self._mean(group, m) for m in self.metrics]
        if any(v is None for v in means):  # no seed of this configuration reached the evaluation
            failed = any(err for _, err in group.ended.values())
            self.searcher.on_trial_complete(group.primary, result=None, error=failed)
            return
        self.searcher.on_trial_complete(group.primary, result=dict(zip(self.metrics, means)), error=False)

    @staticmethod
    def _mean(group: _Group, metric: str) -> float | None:
        values = [float(r[metric]) for r, _ in group.ended.values()
                  if r and metric in r and r[metric] is not None and math.isfinite(float(r[metric]))]
        return sum(values) / len(values) if values else None

    def get_state(self) -> dict:
        """What Tune saves of this wrapper for --resume (the inner searcher saves itself)."""
        return {"groups": copy.deepcopy(self._groups), "group_of": dict(self._group_of)}

    def set_state(self, state: dict) -> None:
        self._groups, self._group_of = state["groups"], state["group_of"]
