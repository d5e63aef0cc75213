"""Shared test settings: `gpu` tests skip cleanly without CUDA; tests run single-process on CPU."""

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster for one test module: 2 CPUs, dashboard (Train's state API needs it) on loopback."""
    import ray
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", object_store_memory=256 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()
