"""Reconstruction quality per NFE: SSIM, MSE and PSNR of x0 → z → x̂0 for Euler and Heun, with and without churn, on a
trained DBAE checkpoint, against the release's setting (Euler ODE, 100 steps = 100 NFE).

    dbae train tiny --set name=nfe_tiny --set train.steps=3000            # a trained tiny model (CPU, ~40 min)
    python benchmarks/nfe_quality.py runs/nfe_tiny/<trial>/checkpoint_000005 --n 64
    python benchmarks/nfe_quality.py CHECKPOINT --steps 2 5 10 20 --samplers heun --device cuda

Held-out images come from the checkpoint's own config (its dataset's test split, a seeded subset); every sampler
reconstructs the same latents (posterior means). The recommendation is the setting with the fewest NFE whose SSIM is
within --tolerance of the reference's and whose MSE is at most (1 + --tolerance·10)× the reference's. Prints a markdown
table and writes JSON (device, dtype, batch, torch version, command line).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from results_io import SAMPLERS, command_line, device_name, markdown_table, parse_sampler, pick_device, write_result

from dbae_core.metrics import mse, psnr, ssim, to_unit
from dbae_core.samplers import expected_nfe

log = logging.getLogger("benchmarks.nfe_quality")

REFERENCE = ("euler", 100)  # the release's reconstruction setting


def load(checkpoint: Path, n: int, seed: int, device: torch.device):
    """The EMA model and n held-out images of the checkpoint's test split."""
    from dbae_core.checkpoint import load_checkpoint
    from dbae_platform.config import load_config
    from dbae_platform.models import build_datasets, load_model
    from dbae_platform.registry import resolve_checkpoint
    state_path, cfg_path = resolve_checkpoint(checkpoint)
    if cfg_path is None:
        raise FileNotFoundError(f"no config.yaml beside {state_path}: pass a checkpoint directory written by "
                                "dbae train")
    state = load_checkpoint(state_path)
    model = load_model(state).to(device).eval()
    if getattr(model, "kind", "dbae") == "diffae":
        raise ValueError("this benchmark measures the reverse bridge: pass a DBAE or DBAE-d checkpoint, not DiffAE")
    _, test = build_datasets(load_config(cfg_path))
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    x = torch.stack([test[i][0] for i in sorted(idx)])
    return model, x, int(state["step"])


@torch.no_grad()
def quality(model, x: torch.Tensor, z: torch.Tensor, method: str, steps: int, churn: float, batch: int,
            seed: int) -> dict[str, float]:
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    recs, nfe = [], 0
    for i in range(0, len(z), batch):
        rec, nfe = model.decode(z[i:i + batch].to(device), steps, method=method, churn=churn, generator=gen)
        recs.append(rec.float().cpu())
    xu, ru = to_unit(x), to_unit(torch.cat(recs))
    return {"nfe": nfe, "mse": mse(xu, ru).mean().item(), "psnr": psnr(xu, ru).mean().item(),
            "ssim": ssim(xu, ru).mean().item()}


def recommend(rows: list[dict], ref: dict, tolerance: float) -> dict | None:
    ok = [r for r in rows if r["ssim"] >= ref["ssim"] - tolerance and r["mse"] <= ref["mse"] * (1 + 10 * tolerance)]
    return min(ok, key=lambda r: (r["nfe"], -r["ssim"])) if ok else None


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model, x, step = load(Path(args.checkpoint), args.n, args.seed, device)
    z = torch.cat([model.encode(x[i:i + args.batch].to(device)).float().cpu() for i in range(0, len(x), args.batch)])
    grid = [(name, s) for name in args.samplers for s in args.steps
            if expected_nfe(s, *parse_sampler(name, args.churn)) <= args.max_nfe]
    if ("euler", REFERENCE[1]) not in grid:
        grid.insert(0, REFERENCE)
    rows = []
    for name, steps in grid:
        method, churn = parse_sampler(name, args.churn)
        row = {"sampler": name, "steps": steps, "churn": churn,
               **quality(model, x, z, method, steps, churn, args.batch, args.seed)}
        log.info("%s, %d steps: NFE %d, SSIM %.4f, MSE %.5f", name, steps, row["nfe"], row["ssim"], row["mse"])
        rows.append(row)
    ref = next(r for r in rows if (r["sampler"], r["steps"]) == REFERENCE)
    for row in rows:
        row["ssim_vs_ref"] = row["ssim"] - ref["ssim"]
        row["mse_ratio_vs_ref"] = row["mse"] / ref["mse"]
    rows.sort(key=lambda r: (SAMPLERS.index(r["sampler"]), r["nfe"]))
    return {"benchmark": "nfe_quality", "checkpoint": str(args.checkpoint), "checkpoint_step": step,
            "image_size": x.shape[-1], "n": len(x), "device": device_name(device), "dtype": "fp32",
            "batch": args.batch, "seed": args.seed, "churn": args.churn, "tolerance": args.tolerance,
            "reference": {"sampler": REFERENCE[0], "steps": REFERENCE[1], "nfe": ref["nfe"]}, "rows": rows,
            "recommended": recommend(rows, ref, args.tolerance), "torch": torch.__version__,
            "command": command_line()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory written by dbae train (state.pt + config.yaml)")
    parser.add_argument("--n", type=int, default=64, help="held-out images")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 50, 100])
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    parser.add_argument("--churn", type=float, default=0.33, help="the churn of the +churn samplers")
    parser.add_argument("--max-nfe", type=int, default=200, help="skip settings that cost more NFE")
    parser.add_argument("--tolerance", type=float, default=0.005, help="SSIM below the reference still accepted")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except (FileNotFoundError, ValueError) as err:  # a missing or wrong checkpoint: one line, exit 2
        parser.exit(2, f"nfe_quality: error: {err}\n")
    path = write_result(result, args.out, f"nfe_quality_{Path(args.checkpoint).name}_n{result['n']}")
    cols = ["sampler", "steps", "nfe", "ssim", "mse", "psnr", "ssim_vs_ref", "mse_ratio_vs_ref"]
    log.info("reconstruction quality per NFE: %d held-out images at %dpx, checkpoint step %d, %s; reference: Euler, "
             "%d steps (%d NFE)\n%s", result["n"], result["image_size"], result["checkpoint_step"], result["device"],
             REFERENCE[1], result["reference"]["nfe"], markdown_table(result["rows"], cols))
    best = result["recommended"]
    if best:
        log.info("fewest NFE within %.3f SSIM of the reference: %s, %d steps (%d NFE, SSIM %.4f vs %.4f)",
                 args.tolerance, best["sampler"], best["steps"], best["nfe"], best["ssim"],
                 best["ssim"] - best["ssim_vs_ref"])
    log.info("command: %s\nwritten: %s", result["command"], path)


if __name__ == "__main__":
    main()
