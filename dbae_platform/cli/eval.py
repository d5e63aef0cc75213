"""`dbae eval`: the evaluation suites on a checkpoint's EMA weights."""

from __future__ import annotations

import argparse
import logging
import sys

from dbae_platform.argtypes import checkpoint_ref, directory, positive
from dbae_platform.cli.flags import add_registry_flag, checkpoint_run

__all__ = ["add_eval", "HANDLERS"]

log = logging.getLogger("dbae")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: metrics JSON, image grids and a table",
                       description="Evaluate the EMA weights of CHECKPOINT (a Ray Train checkpoint directory, its "
                                   "state.pt, a step_<N>.pt file, or a registered model: models:/NAME/VERSION, "
                                   "runs:/RUN_ID/model) on the run's dataset. Writes metrics.json and image grids "
                                   "beside the checkpoint (or in --out) and prints a table.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=checkpoint_ref)
    p.add_argument("--suite", default=None, help="comma-separated suites from recon,probe,disentangle,generation "
                                                 "(default: the run's eval.suites)")
    p.add_argument("--n", type=positive(int), default=None, help="held-out images per suite (default: eval.n)")
    p.add_argument("--sampler-steps", type=positive(int), default=None)
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override the run's config, e.g. --set data.root=/data/celeba")
    p.add_argument("--out", type=directory, default=None, help="output directory (default: beside the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_registry_flag(p)


def _eval(args: argparse.Namespace) -> int:
    from dbae_platform.evaluate import evaluate_checkpoint, format_table
    metrics, out = evaluate_checkpoint(checkpoint_run(args), args.suite, args.n, args.sampler_steps, args.out)
    sys.stdout.write(format_table(metrics) + "\n")
    log.info("metrics and image grids in %s", out)
    return 0


HANDLERS = {"eval": _eval}
