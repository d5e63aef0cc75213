"""The Ray cluster this process works on: the one at $RAY_ADDRESS, else a local one started here."""

from __future__ import annotations

import logging
import os

__all__ = ["ray_init"]

log = logging.getLogger(__name__)


def ray_init() -> None:
    """Connect to the cluster at $RAY_ADDRESS, else start a local one (once per process)."""
    import ray
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:  # embedded default: a local cluster; its dashboard (Ray Train's state API needs it) listens on loopback only
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
