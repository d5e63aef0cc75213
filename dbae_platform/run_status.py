"""The status actor of one training run, in a module of its own: the actor's process imports only this (not torch)."""

from __future__ import annotations

__all__ = ["RunStatus"]


class RunStatus:
    """A Ray actor the driver holds: workers record a non-finite loss there (a report without a checkpoint does not
    reach `Result.metrics`, and raising would make Ray retry a run that is certain to diverge again)."""

    def __init__(self) -> None:
        self.nonfinite_step: int | None = None

    def set_nonfinite(self, step: int) -> None:
        self.nonfinite_step = step if self.nonfinite_step is None else min(self.nonfinite_step, step)

    def get_nonfinite(self) -> int | None:
        return self.nonfinite_step
