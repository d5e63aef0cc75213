"""Training throughput, peak memory and model FLOP utilisation: the fast path against the reference path, side by side.

    python benchmarks/train_step.py --preset celeba64 --batch 64                  # GPU: fast vs reference
    python benchmarks/train_step.py --preset celeba64 --batch 64 --modes fast compile checkpointing reference
    python benchmarks/train_step.py --preset tiny --batch 32 --device cpu --threads 2

Each mode trains a fresh model of the preset (same seed, data and batch) with the real loop, `dbae_core.training.fit`:
data loading, bf16 autocast or fp32, DDP-free optimizer step, clipping, EMA; checkpoints are discarded. The first log
interval (start-up, compilation) is excluded from images/s. Modes:

  fast           the defaults: bf16 autocast (CUDA), channels_last, fused/foreach optimizer and EMA, SDPA attention
  reference      `train.reference=true`: fp32, eager, NCHW, explicit-matmul attention, per-parameter loops
  compile        fast + torch.compile of the UNet
  checkpointing  fast + activation checkpointing in the UNet (memory for compute)
  fp32           fast with fp32 math (attributes the bf16 share of the speed-up)

Model FLOPs per image are counted once (forward + backward, matmuls and convolutions, torch.utils.flop_counter); MFU
divides the achieved FLOP/s by the GPU's dense bf16 peak (a table below, or --peak-tflops). Prints a markdown table
and writes JSON (device, dtype, batch, torch version, command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import time
from collections.abc import Callable

import torch
from results_io import command_line, device_name, markdown_table, pick_device, steady_rate, write_result
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from dbae_core.data import ShapesDataset
from dbae_core.fastpath import configure, execution_plan
from dbae_core.model import DBAE, DBAEConfig
from dbae_core.presets import PRESETS, preset
from dbae_core.training import OPTIMIZERS, TrainConfig, fit

log = logging.getLogger("benchmarks.train_step")

MODES: dict[str, dict[str, object]] = {
    "fast": {},
    "reference": {"reference": True},
    "compile": {"compile": True},
    "checkpointing": {"activation_checkpointing": True},
    "fp32": {"precision": "fp32"},
}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, matched against the device name
# in this order (the first substring that occurs wins).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("L4", 121.0))


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def flops_per_image(cfg: DBAEConfig) -> float:
    """Forward + backward FLOPs of one training loss per image, counted on the CPU at batch 2 (FLOPs scale with B)."""
    torch.manual_seed(0)
    model = configure(DBAE(cfg), torch.device("cpu"), attention="plain")  # the FLOPs SDPA computes, countably
    x = torch.rand(2, cfg.unet.channels, cfg.image_size, cfg.image_size) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        model.loss(x, generator=torch.Generator().manual_seed(0)).loss.backward()
    return counter.get_total_flops() / 2


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last reset; None on the CPU (the process's peak RSS covers every mode)."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def run_mode(mode: str, cfg: DBAEConfig, args: argparse.Namespace, device: torch.device) -> dict:
    per_interval = args.warmup  # the first log interval is the warm-up; steady intervals follow
    intervals = max(1, -(-args.steps // per_interval))
    train = TrainConfig(steps=per_interval * (intervals + 1), batch_size=args.batch, optimizer=args.optimizer,
                        log_every=per_interval, ckpt_every=10 ** 9, progress=False, num_workers=args.num_workers,
                        **MODES[mode])
    if args.data == "shapes":  # generated per item in the loader: shows whether data loading keeps up
        data = ShapesDataset(size=cfg.image_size, length=100_000)
    else:
        data = TensorDataset(torch.rand(4 * args.batch, cfg.unet.channels, cfg.image_size, cfg.image_size) * 2 - 1)
    torch.manual_seed(0)
    model = DBAE(cfg)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fit(model, data, train, device=device, checkpointer=lambda step, state: None)
    wall = time.perf_counter() - t0
    rate = steady_rate([(s, m["train/images_per_s"]) for s, m in out["history"]])
    run = train.execution()
    plan = execution_plan(run, device)
    return {"mode": mode, "precision": plan.precision, "channels_last": plan.channels_last,
            "attention": run.attention, "fused": run.fused_optimizer, "optimizer_kernel": plan.optimizer_kernel,
            "compile": run.compile,
            "checkpointing": run.activation_checkpointing, "images_per_s": rate, "step_ms": 1000 * args.batch / rate,
            "peak_memory_mib": peak_memory_mib(device), "wall_s": wall,
            "final_loss": out["history"][-1][1]["train/loss"]}


def run(args: argparse.Namespace, on_mode: Callable[[dict], object] | None = None) -> dict:
    """Every mode in turn; `on_mode` gets the result so far after each (a time limit then keeps the finished modes)."""
    device = pick_device(args.device)
    cfg = preset(args.preset)
    if args.stochastic:
        cfg = cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=True))
    flops = flops_per_image(cfg)
    peak = args.peak_tflops or (peak_tflops(device_name(device)) if device.type == "cuda" else None)
    rows: list[dict] = []
    for mode in args.modes:
        log.info("mode %s ...", mode)
        row = run_mode(mode, cfg, args, device)
        row["tflops"] = flops * row["images_per_s"] / 1e12
        row["mfu"] = row["tflops"] / peak if peak else None
        rows.append(row)
        result = summarise(args, cfg, device, rows, flops, peak)
        if on_mode is not None:
            on_mode(result)
    return result


def summarise(args: argparse.Namespace, cfg: DBAEConfig, device: torch.device, rows: list[dict], flops: float,
              peak: float | None) -> dict:
    ref = next((r for r in rows if r["mode"] == "reference"), None)
    for row in rows:
        row["speedup"] = row["images_per_s"] / ref["images_per_s"] if ref else None
    fast = next((r for r in rows if r["mode"] == "fast"), rows[0])
    return {
        "benchmark": "train_step", "preset": args.preset, "image_size": cfg.image_size, "device": device_name(device),
        "dtype": fast["precision"], "batch": args.batch, "steps": args.steps, "optimizer": args.optimizer,
        "data": args.data, "num_workers": args.num_workers,
        "modes": args.modes, "rows": rows, "speedup_fast_vs_reference": fast["speedup"],
        "gflops_per_image": flops / 1e9, "peak_bf16_tflops": peak,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters_m": _parameters_m(cfg),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "command": command_line(),
    }


def _parameters_m(cfg: DBAEConfig) -> float:
    with torch.device("meta"):
        return DBAE(cfg).parameter_counts()["total"] / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["fast", "reference"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (compilation, allocator)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="radam", help="radam is the release's")
    parser.add_argument("--data", choices=("memory", "shapes"), default="memory",
                        help="random images held in memory, or the procedural shapes dataset rendered per item")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader processes")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--stochastic", action="store_true", help="DBAE (stochastic encoder) instead of DBAE-d")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch < 1:
        parser.error("--steps, --warmup and --batch must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = f"train_step_{args.preset}_b{args.batch}_{'-'.join(args.modes)}"
    result = run(args, on_mode=lambda partial: write_result(partial, args.out, stem))
    path = write_result(result, args.out, stem)
    cols = ["mode", "precision", "images_per_s", "step_ms", "speedup", "peak_memory_mib", "tflops", "mfu"]
    log.info("%s %dpx, batch %d, %s optimizer, %.2fM parameters, %.1f GFLOP/image (fwd+bwd), %s\n%s",
             result["preset"], result["image_size"], result["batch"], result["optimizer"], result["parameters_m"],
             result["gflops_per_image"], result["device"], markdown_table(result["rows"], cols))
    if result["speedup_fast_vs_reference"]:
        log.info("fast path: %.2f× the reference path's images/s", result["speedup_fast_vs_reference"])
    log.info("command: %s\nwritten: %s", result["command"], path)


if __name__ == "__main__":
    main()
