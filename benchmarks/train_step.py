"""Training-step throughput and peak memory of a DBAE preset on the current device.

    python benchmarks/train_step.py --preset celeba64 --batch 64 --dtype bf16
    python benchmarks/train_step.py --preset tiny --batch 32 --dtype fp32 --device cpu

Prints a markdown table and writes JSON (device name, dtype, batch, torch version, command line) next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from results_io import write_result

from dbae_core.model import DBAE
from dbae_core.presets import PRESETS, preset
from dbae_core.training import autocast, make_optimizer

log = logging.getLogger("benchmarks.train_step")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB: the process's peak RSS


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = preset(args.preset)
    if args.stochastic:
        cfg = cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=True))
    torch.manual_seed(0)
    model = DBAE(cfg).to(device)
    channels_last = device.type == "cuda" and not args.no_channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model.unet.compile()
    opt = make_optimizer(model.parameters(), "adamw", 1e-4, device=device)
    x = torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    precision = "bf16" if args.dtype == "bf16" else "fp32"
    gen = torch.Generator(device).manual_seed(0)

    def step() -> torch.Tensor:
        with autocast(device, precision):
            loss = model.loss(x, generator=gen).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()  # one sync at the end
    elapsed = time.perf_counter() - t0
    return {
        "benchmark": "train_step", "preset": args.preset, "device": device_name(device), "dtype": args.dtype,
        "batch": args.batch, "steps": args.steps, "channels_last": channels_last, "compile": args.compile,
        "images_per_s": args.batch * args.steps / elapsed, "step_ms": 1000 * elapsed / args.steps,
        "peak_memory_mib": peak_memory_mib(device), "parameters_m": model.parameter_counts()["total"] / 1e6,
        "torch": torch.__version__, "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (on CUDA; fp32 math on CPU unless forced) or plain fp32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--stochastic", action="store_true", help="DBAE (stochastic encoder) instead of DBAE-d")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    path = write_result(result, args.out, f"train_step_{args.preset}_{args.dtype}_b{args.batch}")
    cols = ["preset", "device", "dtype", "batch", "images_per_s", "step_ms", "peak_memory_mib", "parameters_m"]
    fmt = {k: (f"{v:.1f}" if isinstance(v, float) else str(v)) for k, v in result.items()}
    log.info("| %s |\n|%s\n| %s |", " | ".join(cols), "---|" * len(cols), " | ".join(fmt[c] for c in cols))
    log.info("command: %s\nwritten: %s", result["command"], path)


if __name__ == "__main__":
    main()
