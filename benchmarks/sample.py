"""Images per second of reverse-bridge sampling (dbae-method.md §6): x_T = Dec(z), then Euler or Heun, with or
without churn, over a range of step counts, on a random-init model of a preset at one batch and device.

    python benchmarks/sample.py --preset tiny --batch 8 --steps 5 10 --device cpu --threads 1
    python benchmarks/sample.py --preset celeba64 --batch 64 --steps 10 20 50 --samplers euler heun --dtype bf16

Each row times `model.decode(z, steps, method, churn)` for z ~ N(0, I); the NFE column is the count decode returns,
checked against the formulas (Euler N, Heun 2N − 1, Euler + churn 2N, Heun + churn 3N − 1). `--reference` runs the
release's way (fp32, explicit-matmul attention, NCHW) for a side-by-side comparison. Prints a markdown table and
writes JSON (device, dtype, batch, torch, command) next to it.
"""

from __future__ import annotations

import argparse
import logging

import torch
from results_io import (
    SAMPLERS,
    command_line,
    device_name,
    markdown_table,
    parse_sampler,
    pick_device,
    time_ms,
    write_result,
)

from dbae_core.autoencoders import build_autoencoder
from dbae_core.fastpath import configure
from dbae_core.presets import PRESETS
from dbae_core.samplers import expected_nfe
from dbae_core.training import autocast

log = logging.getLogger("benchmarks.sample")

COLUMNS = ("sampler", "steps", "nfe", "ms_per_batch", "images_per_s", "ms_per_nfe")


def resolve_dtype(args: argparse.Namespace, device: torch.device) -> str:
    """The precision to run: fp32 for --reference, else --dtype, else bf16 on CUDA and fp32 on the CPU."""
    if args.reference:
        return "fp32"
    return args.dtype or ("bf16" if device.type == "cuda" else "fp32")


def build_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """A seeded random-init model on `device`, set up for the fast path or (--reference) the release's path."""
    torch.manual_seed(args.seed)
    model = build_autoencoder(args.method, args.preset).to(device).eval()
    if args.reference:
        return configure(model, device, attention="plain", channels_last=False)
    return configure(model, device, attention="sdpa", channels_last=True)


def time_sampler(model: torch.nn.Module, z: torch.Tensor, sampler: str, steps: int, args: argparse.Namespace,
                 precision: str) -> dict:
    """One table row: mean time of one decode of the batch, and the NFE it spent (checked against the formula)."""
    method, churn = parse_sampler(sampler, args.churn)
    generator = torch.Generator(z.device).manual_seed(args.seed)
    spent: list[int] = []

    def decode() -> torch.Tensor:
        with autocast(z.device, precision):
            x0, nfe = model.decode(z, steps, method, churn, generator=generator)
        spent.append(nfe)
        return x0

    ms = time_ms(decode, z.device, args.repeats, args.warmup)
    nfe, expected = spent[-1], expected_nfe(steps, method, churn)
    if nfe != expected:
        raise RuntimeError(f"{sampler} with {steps} steps spent {nfe} NFE, the formula says {expected}")
    batch = len(z)
    return {"sampler": sampler, "steps": steps, "nfe": nfe, "ms_per_batch": ms, "images_per_s": 1000 * batch / ms,
            "ms_per_nfe": ms / batch / nfe}


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    precision = resolve_dtype(args, device)
    model = build_model(args, device)
    z = torch.randn(args.batch, model.cfg.latent_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)
    rows = [time_sampler(model, z, sampler, steps, args, precision)
            for sampler in args.samplers for steps in args.steps]
    return {
        "benchmark": "sample", "preset": args.preset, "method": args.method, "image_size": model.cfg.image_size,
        "device": device_name(device), "dtype": precision, "batch": args.batch, "reference": args.reference,
        "churn": args.churn, "repeats": args.repeats, "rows": rows,
        "parameters_m": model.parameter_counts()["total"] / 1e6, "torch": torch.__version__, "command": command_line(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--method", choices=("dbae", "dbae_d"), default="dbae_d", help="the DBAE variant to time")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50], help="sampler steps N")
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--churn", type=float, default=0.33, help="the SDE fraction of each interval for +churn")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="bf16 autocast or plain fp32 (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--reference", action="store_true",
                        help="the release's way: fp32, explicit-matmul attention, NCHW")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed decodes before each row")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the latents and the churn noise")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    if args.reference and args.dtype == "bf16":
        parser.error("--reference runs in fp32: drop --dtype bf16")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or min(args.steps) < 1:
        parser.error("--batch, --repeats and every --steps must be >= 1, --warmup >= 0")
    if not 0.0 < args.churn < 1.0:
        parser.error(f"--churn must be in (0, 1), got {args.churn}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    stem = f"sample_{result['preset']}_{result['dtype']}_b{result['batch']}" + ("_reference" if args.reference else "")
    path = write_result(result, args.out, stem)
    mode = ", reference path" if result["reference"] else ""
    log.info("%s %dpx, batch %d, %s%s, %s\n%s", result["preset"], result["image_size"], result["batch"],
             result["dtype"], mode, result["device"], markdown_table(result["rows"], COLUMNS))
    log.info("command: %s\nwritten: %s", result["command"], path)


if __name__ == "__main__":
    main()
