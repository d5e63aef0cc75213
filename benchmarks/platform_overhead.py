"""Platform overhead: images/s of the bare one-process training loop vs `dbae train` (Ray Train, 1 worker, MLflow).

    python benchmarks/platform_overhead.py --config tiny --steps 200

Both train the same config for the same steps on the same CPU threads (the Ray worker gets all of them). The steady
rate excludes the first log interval (start-up, first-batch costs); the ratio platform/bare is the overhead figure
(target: ≥ 0.95). Prints a markdown table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from results_io import command_line, device_name, markdown_table, steady_rate, write_result

log = logging.getLogger("benchmarks.platform_overhead")


def bare(cfg, run_dir: Path) -> tuple[float, float]:
    from dbae_core.training import fit
    from dbae_platform.train import build_datasets, build_model
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from dbae_platform.config import load_config

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="dbae_bench_") as tmp:
        overrides = [f"train.steps={args.steps}", f"train.log_every={args.log_every}", f"train.batch_size={args.batch}",
                     f"train.ckpt_every={args.steps}", "train.image_every=0", "eval.suites=[]",
                     "train.progress=false", f"tracking.runs_dir={tmp}/runs", "resources.num_workers=1",
                     f"resources.cpus_per_worker={threads}"]
        cfg = load_config(args.config, overrides)
        bare_rate, bare_wall = bare(cfg, Path(tmp) / "bare")
        plat_rate, plat_wall = platform_run(cfg)
    result = {
        "benchmark": "platform_overhead", "config": args.config, "steps": args.steps, "batch": args.batch,
        "device": device_name(torch.device("cpu")), "dtype": "fp32",
        "bare_images_per_s": bare_rate, "platform_images_per_s": plat_rate, "ratio": plat_rate / bare_rate,
        "bare_wall_s": bare_wall, "platform_wall_s": plat_wall, "torch": torch.__version__, "command": command_line(),
    }
    path = write_result(result, args.out, f"platform_overhead_{args.config}_b{args.batch}")
    rows = [{"loop": "bare fit, 1 process", "images/s (steady)": bare_rate, "wall s (incl. start-up)": bare_wall},
            {"loop": "dbae train, 1 Ray worker + MLflow", "images/s (steady)": plat_rate,
             "wall s (incl. start-up)": plat_wall}]
    log.info("%s", markdown_table(rows, list(rows[0])))
    log.info("ratio platform/bare: %.3f (overhead %.1f%%)\ncommand: %s\nwritten: %s", result["ratio"],
             100 * (1 - result["ratio"]), result["command"], path)


if __name__ == "__main__":
    main()
