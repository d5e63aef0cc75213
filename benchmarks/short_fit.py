"""A short training run through `fit` on the shapes data: the loss must fall, and images/s are kept per log interval.

    python benchmarks/short_fit.py --preset celeba64 --batch 64 --steps 1000 --precision bf16 --num-workers 6
    python benchmarks/short_fit.py --preset tiny --batch 8 --steps 40 --optimizer adamw --lr 5e-4 --device cpu

A fresh model of the preset trains on procedural shapes at the preset's resolution (rendered in batches by the data
loader), with the execution defaults of the device (on CUDA: bf16 autocast, channels_last, fused AdamW or foreach
RAdam) and no checkpoints. Prints a markdown table of the log intervals (loss, images/s) and writes JSON; exits 1
when the mean loss of the last interval is not below that of the first.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time

import torch
from results_io import command_line, device_name, markdown_table, pick_device, steady_rate, write_result

from dbae_core.data import ShapesDataset
from dbae_core.fastpath import execution_plan
from dbae_core.model import DBAE
from dbae_core.presets import PRESETS, preset
from dbae_core.training import OPTIMIZERS, TrainConfig, fit

log = logging.getLogger("benchmarks.short_fit")


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    cfg = preset(args.preset)
    log_every = args.log_every or max(1, args.steps // 10)
    train = TrainConfig(steps=args.steps, batch_size=args.batch, optimizer=args.optimizer, lr=args.lr,
                        grad_clip=args.grad_clip, precision=args.precision, log_every=log_every,
                        ckpt_every=10 ** 9, num_workers=args.num_workers, seed=args.seed, progress=False)
    plan = execution_plan(train.execution(), device)
    torch.manual_seed(args.seed)
    model = DBAE(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fit(model, ShapesDataset(size=cfg.image_size, length=100_000, seed=args.seed), train, device=device,
              checkpointer=lambda step, state: None)
    wall = time.perf_counter() - t0
    rows = [{"step": step, "loss": m["train/loss"], "images_per_s": m["train/images_per_s"]}
            for step, m in out["history"]]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    return {
        "benchmark": "short_fit", "preset": args.preset, "image_size": cfg.image_size, "device": device_name(device),
        "dtype": plan.precision, "batch": args.batch, "steps": args.steps, "log_every": log_every,
        "optimizer": args.optimizer, "optimizer_kernel": plan.optimizer_kernel, "lr": args.lr,
        "channels_last": plan.channels_last, "num_workers": args.num_workers, "rows": rows,
        "loss_first": first, "loss_last": last, "loss_ratio": last / first,
        "loss_fell": bool(math.isfinite(last) and last < first),
        "images_per_s": steady_rate([(r["step"], r["images_per_s"]) for r in rows]) if len(rows) > 1 else None,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None,
        "wall_s": wall, "torch": torch.__version__, "command": command_line(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=None, help="steps per log interval (default: steps / 10)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="radam", help="radam (lr 1e-4) is the release's")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--grad-clip", type=float, default=0.0, help="0: no clipping, as the paper presets")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.batch < 1:
        parser.error("--steps must be >= 2 and --batch >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    path = write_result(result, args.out, f"short_fit_{args.preset}_{result['dtype']}_b{args.batch}_s{args.steps}")
    log.info("%s %dpx, batch %d, %s, %s (%s), %s\n%s", result["preset"], result["image_size"], result["batch"],
             result["dtype"], result["optimizer"], result["optimizer_kernel"], result["device"],
             markdown_table(result["rows"], ["step", "loss", "images_per_s"]))
    log.info("loss %.4g → %.4g (×%.3f); command: %s\nwritten: %s", result["loss_first"], result["loss_last"],
             result["loss_ratio"], result["command"], path)
    if not result["loss_fell"]:
        log.error("the loss did not fall: %.4g in the first interval, %.4g in the last", result["loss_first"],
                  result["loss_last"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
