"""Shared test settings: `gpu` tests skip cleanly without CUDA; tests run single-process on CPU."""

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Ray Train's controller polls its workers every 2 s by default; the tests' runs last seconds, so each run would spend
# up to a poll at start and at end idle. Child processes (ray start, dbae train, sweeps) inherit this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of small CPU work: faster than two when the 2-core machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster for one test module: 2 CPUs, dashboard (Train's state API needs it) on loopback."""
    import ray
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", object_store_memory=256 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()
