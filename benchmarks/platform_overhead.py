"""Platform overhead: images/s of the bare one-process training loop vs `dbae train` (Ray Train, 1 worker, MLflow).

    python benchmarks/platform_overhead.py --config tiny --steps 200 --repeats 3

Both train the same config for the same steps on the same CPU threads (the Ray worker gets all of them), in
`--repeats` interleaved pairs (bare, then platform), so that a slow spell of a shared machine hits both alike; the
figure is the median of the pairs' ratios platform/bare, with its min, max and IQR.
The steady rate excludes the first log interval (start-up, first-batch costs); the target is a median ratio ≥ 0.95.
Prints a markdown table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_io import command_line, device_name, markdown_table, steady_rate, write_result

log = logging.getLogger("benchmarks.platform_overhead")


def bare(cfg, run_dir: Path) -> tuple[float, float]:
    from dbae_core.training import fit
    from dbae_platform.models import build_datasets, build_model
    train, _ = build_datasets(cfg)
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    out = fit(build_model(cfg), train, cfg.train, run_dir, "cpu")
    wall = time.perf_counter() - t0
    return steady_rate([(s, m["train/images_per_s"]) for s, m in out["history"]]), wall


def platform_run(cfg) -> tuple[float, float]:
    from mlflow.tracking import MlflowClient

    from dbae_platform.train import train
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    history = MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "train/images_per_s")
    return steady_rate([(m.step, m.value) for m in history]), wall


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max()),
            "iqr": float(np.subtract(*np.percentile(arr, [75, 25])))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved pairs (bare, platform) to run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for both loops (e.g. train.num_workers=1)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from dbae_platform.config import load_config

    threads = torch.get_num_threads()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="dbae_bench_") as tmp:
        for i in range(args.repeats):  # interleaved, so a slow spell of the machine hits both loops alike
            overrides = [f"train.steps={args.steps}", f"train.log_every={args.log_every}",
                         f"train.batch_size={args.batch}", f"train.ckpt_every={args.steps}", "train.image_every=0",
                         "eval.suites=[]", "train.progress=false", f"tracking.runs_dir={tmp}/runs", f"name=overhead{i}",
                         "resources.num_workers=1", f"resources.cpus_per_worker={threads}", *args.overrides]
            cfg = load_config(args.config, overrides)
            bare_rate, bare_wall = bare(cfg, Path(tmp) / f"bare{i}")
            torch.set_num_threads(threads)
            plat_rate, plat_wall = platform_run(cfg)
            pairs.append({"bare_images_per_s": bare_rate, "platform_images_per_s": plat_rate,
                          "ratio": plat_rate / bare_rate, "bare_wall_s": bare_wall, "platform_wall_s": plat_wall})
            log.info("pair %d: bare %.2f, platform %.2f images/s, ratio %.3f", i + 1, bare_rate, plat_rate,
                     plat_rate / bare_rate)
    ratio = _spread([p["ratio"] for p in pairs])
    result = {
        "benchmark": "platform_overhead", "config": args.config, "steps": args.steps, "batch": args.batch,
        "repeats": args.repeats, "threads": threads, "overrides": args.overrides,
        "device": device_name(torch.device("cpu")), "dtype": "fp32", "pairs": pairs,
        **{f"ratio_{k}": v for k, v in ratio.items()},
        "bare_images_per_s": _spread([p["bare_images_per_s"] for p in pairs])["median"],
        "platform_images_per_s": _spread([p["platform_images_per_s"] for p in pairs])["median"],
        "torch": torch.__version__, "command": command_line(),
    }
    path = write_result(result, args.out, f"platform_overhead_{args.config}_b{args.batch}")
    rows = [{"pair": i + 1, "bare images/s": p["bare_images_per_s"], "dbae train images/s": p["platform_images_per_s"],
             "ratio": p["ratio"], "bare wall s": p["bare_wall_s"], "dbae train wall s": p["platform_wall_s"]}
            for i, p in enumerate(pairs)]
    log.info("%s", markdown_table(rows, list(rows[0])))
    log.info("ratio platform/bare: median %.3f (min %.3f, max %.3f, IQR %.3f over %d interleaved pairs); overhead "
             "%.1f%%\ncommand: %s\nwritten: %s", ratio["median"], ratio["min"], ratio["max"], ratio["iqr"],
             args.repeats, 100 * (1 - ratio["median"]), result["command"], path)


if __name__ == "__main__":
    main()
