"""Wall-clock seconds per evaluation suite (dbae-method.md §8) of a random-init model on procedural shapes.

    python benchmarks/eval.py --preset tiny --n 128 --suites recon probe disentangle --device cpu --threads 1
    python benchmarks/eval.py --preset celeba64 --method diffae --n 1000 --suites recon generation --batch 128

Each suite is one `evaluate(..., suites=[suite])` call in a temporary folder, so its seconds include collecting the
items and encoding them (the test split, plus the train split for probe, disentangle and generation): what running
that suite alone costs. On CUDA encoding and sampling run under bf16 autocast unless `--dtype fp32` (evaluate's
`precision`; metrics and Inception features stay fp32). A suite that does not apply
(or generation without Inception weights) still gets its row, with fewer metrics. Prints a markdown table and writes
JSON (device, dtype, batch, torch, command) next to it.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time

import torch
from results_io import command_line, device_name, markdown_table, pick_device, write_result

from dbae_core.autoencoders import build_autoencoder
from dbae_core.data import make_dataset
from dbae_core.presets import PRESETS
from dbae_platform.evaluate import SUITES, evaluate

log = logging.getLogger("benchmarks.eval")

COLUMNS = ("suite", "seconds", "encode_ms", "items", "metrics_reported")


def reported(metrics: dict[str, float | None]) -> int:
    """The suite's metrics with a finite value: every eval/* key but eval/encode_ms, which every call reports."""
    return sum(1 for k, v in metrics.items() if k.startswith("eval/") and k != "eval/encode_ms"
               and v is not None and math.isfinite(v))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_suite(model: torch.nn.Module, data: tuple, suite: str, args: argparse.Namespace, device: torch.device,
               precision: str) -> dict:
    """One table row: seconds of evaluate() running `suite` alone, and what it reported."""
    train, test = data
    with tempfile.TemporaryDirectory(prefix=f"eval_{suite}_") as out_dir:
        sync(device)
        t0 = time.perf_counter()
        metrics = evaluate(model, train=train, test=test, suites=[suite], n=args.n, out_dir=out_dir, device=device,
                           sampler_steps=args.sampler_steps, precision=precision, batch_size=args.batch,
                           seed=args.seed)
        sync(device)
        seconds = time.perf_counter() - t0
    return {"suite": suite, "seconds": seconds,
            "encode_ms": metrics.get("eval/encode_ms"), "items": min(args.n, len(test)),
            "metrics_reported": reported(metrics)}


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    precision = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(args.seed)
    model = build_autoencoder(args.method, args.preset).to(device).eval()
    size = model.cfg.image_size
    data = tuple(make_dataset("shapes", split, size, seed=args.seed) for split in ("train", "test"))
    rows = [time_suite(model, data, suite, args, device, precision) for suite in args.suites]
    return {
        "benchmark": "eval", "preset": args.preset, "method": args.method, "image_size": size,
        "device": device_name(device), "dtype": precision, "batch": args.batch, "n": args.n,
        "sampler_steps": args.sampler_steps, "rows": rows, "total_s": sum(r["seconds"] for r in rows),
        "parameters_m": model.parameter_counts()["total"] / 1e6, "torch": torch.__version__, "command": command_line(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--method", choices=("dbae", "dbae_d", "diffae"), default="dbae_d")
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=["recon", "probe", "disentangle"],
                        help="generation needs Inception weights; without them it is skipped (and still timed)")
    parser.add_argument("--n", type=int, default=128, help="items per split (held-out items for recon)")
    parser.add_argument("--sampler-steps", type=int, default=20, help="decoding steps for recon and generation")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="autocast of encoding and sampling (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the items drawn")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.sampler_steps < 1:
        parser.error("--n, --batch and --sampler-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    path = write_result(result, args.out, f"eval_{result['preset']}_n{result['n']}")
    log.info("%s (%s) %dpx, n %d, batch %d, %d sampler steps, %s, %s\n%s", result["preset"], result["method"],
             result["image_size"], result["n"], result["batch"], result["sampler_steps"], result["dtype"],
             result["device"], markdown_table(result["rows"], COLUMNS))
    log.info("total %.1f s\ncommand: %s\nwritten: %s", result["total_s"], result["command"], path)


if __name__ == "__main__":
    main()
