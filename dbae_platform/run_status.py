"""The status actor of one training run, in a module of its own: the actor's process imports only this (not torch)."""

from __future__ import annotations

__all__ = ["RunStatus"]


class RunStatus:
    """A Ray actor the driver holds. Workers record where they run, and a non-finite loss (a report without a
    checkpoint does not reach `Result.metrics`, and raising would make Ray retry a run certain to diverge again)."""

    def __init__(self) -> None:
        self.nonfinite_step: int | None = None
        self.workers: list[dict] = []

    def add_worker(self, rank: int, node_id: str, ip: str, hardware: str = "") -> None:
        """A worker (re)started: its rank, node and what the node has (a resumed run may land on other nodes; all
        are kept)."""
        entry = {"rank": rank, "node_id": node_id, "ip": ip, "hardware": hardware}
        if entry not in self.workers:
            self.workers.append(entry)

    def get_workers(self) -> list[dict]:
        return sorted(self.workers, key=lambda w: (w["rank"], w["node_id"]))

    def set_nonfinite(self, step: int) -> None:
        self.nonfinite_step = step if self.nonfinite_step is None else min(self.nonfinite_step, step)

    def get_nonfinite(self) -> int | None:
        return self.nonfinite_step
