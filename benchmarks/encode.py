"""Time to the full latent per image (dbae-method.md §1, §7): DBAE's z (one encoder + one decoder pass, x_T = Dec(z))
vs DiffAE's (z, x_T) (encoder + DDIM inversion over T_inv steps), same preset, resolution, batch and device.

    python benchmarks/encode.py --preset tiny --batch 8 --device cpu --threads 1
    python benchmarks/encode.py --preset celeba64 --batch 64 --dtype bf16 --t-inv 10 50 100

Prints a markdown table and the DiffAE/DBAE ratios, and writes JSON (device, dtype, batch, torch, command) next to it.
"""

from __future__ import annotations

import argparse
import logging

import torch
from results_io import command_line, device_name, pick_device, time_ms, write_result

from dbae_core.autoencoders import build_autoencoder
from dbae_core.presets import PRESETS
from dbae_core.training import autocast

log = logging.getLogger("benchmarks.encode")


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    precision = "bf16" if args.dtype == "bf16" else "fp32"
    torch.manual_seed(0)
    dbae = build_autoencoder(args.method, args.preset).to(device).eval()
    diffae = build_autoencoder("diffae", args.preset).to(device).eval()
    size = dbae.cfg.image_size
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1

    def dbae_latent() -> torch.Tensor:
        with autocast(device, precision):
            return dbae.endpoint(dbae.encode(x))  # z, and x_T = Dec(z) that the bridge starts from

    def diffae_latent(t_inv: int) -> torch.Tensor:
        with autocast(device, precision):
            return diffae.invert(x, steps=t_inv)[0]  # z = Enc(x), then x_T by DDIM inversion

    rows = [{"method": args.method, "t_inv": 0, "nfe": 0,
             "ms_per_image": time_ms(dbae_latent, device, args.repeats, args.warmup) / args.batch}]
    for _ in range(args.warmup):
        diffae_latent(1)  # the same kernels as any T_inv, at a fraction of the cost
    for t_inv in args.t_inv:
        ms = time_ms(lambda n=t_inv: diffae_latent(n), device, max(1, args.repeats // 2), 0) / args.batch
        rows.append({"method": "diffae", "t_inv": t_inv, "nfe": t_inv, "ms_per_image": ms})
    base = rows[0]["ms_per_image"]
    for row in rows:
        row["ratio_vs_dbae"] = row["ms_per_image"] / base
    return {
        "benchmark": "encode", "preset": args.preset, "image_size": size, "device": device_name(device),
        "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats, "rows": rows,
        "parameters_m": {args.method: dbae.parameter_counts()["total"] / 1e6,
                         "diffae": diffae.parameter_counts()["total"] / 1e6},
        "torch": torch.__version__, "command": command_line(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--method", choices=("dbae", "dbae_d"), default="dbae_d", help="the DBAE variant to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--t-inv", type=int, nargs="+", default=[10, 50, 100], help="DiffAE inversion steps")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="fp32",
                        help="bf16 autocast (CUDA) or plain fp32")
    parser.add_argument("--repeats", type=int, default=4, help="timed calls of the DBAE path (half for DiffAE)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    path = write_result(result, args.out, f"encode_{args.preset}_{args.dtype}_b{args.batch}")
    lines = [f"{result['preset']} {result['image_size']}px, batch {result['batch']}, {result['dtype']}, "
             f"{result['device']}",
             "| method | T_inv (NFE) | ms / image | ratio vs DBAE |", "|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | {row['t_inv'] or '—'} | {row['ms_per_image']:.2f} | "
                     f"{row['ratio_vs_dbae']:.1f}× |")
    log.info("\n".join(lines))
    for row in result["rows"][1:]:
        log.info("DiffAE with T_inv = %d takes %.1f× DBAE's time to the full latent", row["t_inv"],
                 row["ratio_vs_dbae"])
    log.info("command: %s\nwritten: %s", result["command"], path)


if __name__ == "__main__":
    main()
