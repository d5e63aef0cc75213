"""One training step through DDP in a one-process group (NCCL on CUDA, gloo on the CPU), against the same step of an
identical model without DDP: the gradients must agree.

    python benchmarks/ddp_step.py --preset celeba64 --batch 16              # GPU: NCCL, SyncBatchNorm
    python benchmarks/ddp_step.py --preset tiny --batch 4 --device cpu      # gloo, BatchNorm

The model is wrapped by `dbae_core.distributed.wrap_distributed`, which `fit` calls when a run has several workers (a
one-worker run is not wrapped); on CUDA its BatchNorm layers become SyncBatchNorm (PyTorch's SyncBatchNorm refuses CPU
tensors under a process group, so the CPU keeps BatchNorm). With one rank SyncBatchNorm computes plain batch norm: the
check covers the process group, the conversion, DDP's gradient all-reduce and the optimizer step that follows, not
statistics across ranks. It runs in fp32 with deterministic kernels, so the gradients can be compared tightly. Prints
a table and writes JSON; exits 1 when the largest gradient difference exceeds --tolerance × the largest gradient.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

import torch
from results_io import command_line, device_name, markdown_table, pick_device, write_result
from torch import nn

from dbae_core.distributed import single_process_group, wrap_distributed
from dbae_core.model import DBAE
from dbae_core.presets import PRESETS, preset
from dbae_core.training import make_optimizer

log = logging.getLogger("benchmarks.ddp_step")


def one_step(runner: nn.Module, model: nn.Module, x: torch.Tensor, lr: float) -> tuple[float, list, list]:
    """One AdamW step (fused on CUDA) of the loss `fit` backpropagates: (loss, gradients, weights after the step)."""
    opt = make_optimizer(model.parameters(), "adamw", lr, device=x.device)
    runner.train()
    loss = runner(x, torch.Generator(x.device).manual_seed(1), (0, 1))[0]
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    return loss.item(), grads, [p.detach().clone() for p in model.parameters()]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = preset(args.preset)
    torch.manual_seed(args.seed)
    plain = DBAE(cfg)
    for name, p in plain.named_parameters():  # the zero-initialised output layers would leave most gradients at 0
        if name.endswith(("out_conv.weight", "proj.weight")):
            nn.init.normal_(p, std=0.02)
    plain.to(device)
    twin = copy.deepcopy(plain)
    x = (torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(args.seed))
         * 2 - 1).to(device)
    loss_plain, grads_plain, params_plain = one_step(plain, plain, x, args.lr)
    with single_process_group(device) as backend:
        net = wrap_distributed(twin, device)
        synced = sum(isinstance(m, nn.SyncBatchNorm) for m in twin.modules())
        loss_ddp, grads_ddp, params_ddp = one_step(net, twin, x, args.lr)
    grad_max = max(float(g.abs().max()) for g in grads_plain)
    grad_diff = max_abs_diff(grads_ddp, grads_plain)
    rows = [{"path": "plain", "loss": loss_plain, "grad_max_abs": grad_max},
            {"path": f"DDP ({backend}, world 1)", "loss": loss_ddp,
             "grad_max_abs": max(float(g.abs().max()) for g in grads_ddp)}]
    return {
        "benchmark": "ddp_step", "preset": args.preset, "image_size": cfg.image_size, "device": device_name(device),
        "dtype": "fp32", "batch": args.batch, "backend": backend, "world_size": 1, "sync_batchnorm_layers": synced,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if backend == "nccl" else None, "rows": rows,
        "loss_diff": abs(loss_ddp - loss_plain), "grad_max_abs": grad_max, "grad_max_abs_diff": grad_diff,
        "grad_rel_diff": grad_diff / grad_max, "param_max_abs_diff": max_abs_diff(params_ddp, params_plain),
        "tolerance": args.tolerance, "agree": grad_diff <= args.tolerance * grad_max,
        "torch": torch.__version__, "command": command_line(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed gradient difference, relative to the largest gradient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when CUDA starts
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    path = write_result(result, args.out, f"ddp_step_{args.preset}_b{args.batch}")
    log.info("%s %dpx, batch %d, %s, %d SyncBatchNorm layers, %s\n%s", result["preset"], result["image_size"],
             result["batch"], result["backend"], result["sync_batchnorm_layers"], result["device"],
             markdown_table(result["rows"], ["path", "loss", "grad_max_abs"]))
    log.info("gradients: max |DDP − plain| = %.3g (%.3g of the largest); weights after the step: %.3g\n"
             "command: %s\nwritten: %s", result["grad_max_abs_diff"], result["grad_rel_diff"],
             result["param_max_abs_diff"], result["command"], path)
    if not result["agree"]:
        log.error("DDP's gradients differ from the plain step's by %.3g of the largest gradient (tolerance %.3g)",
                  result["grad_rel_diff"], args.tolerance)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
