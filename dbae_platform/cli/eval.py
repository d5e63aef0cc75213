"""`dbae eval`: the evaluation suites on a checkpoint's EMA weights."""

from __future__ import annotations

import argparse
import logging
import sys

from dbae_platform.argtypes import checkpoint_ref, directory, positive
from dbae_platform.cli.flags import add_registry_flag

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

    from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
    from dbae_platform.config import SUITES, ConfigError, load_config
    from dbae_platform.evaluate import evaluate, format_table, write_metrics_json
    from dbae_platform.models import build_datasets, load_model, pick_device
    from dbae_platform.registry import checkpoint_files
    state_path, cfg_path = checkpoint_files(args.checkpoint, args.tracking_uri)
    state = load_checkpoint(state_path, required=WEIGHTS_KEYS)
    cfg = load_config(cfg_path, args.overrides)
    suites = tuple(s.strip() for s in args.suite.split(",") if s.strip()) if args.suite else cfg.eval.suites
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise ConfigError(f"--suite {bad[0]!r} is unknown: use a comma-separated list from {','.join(SUITES)}")
    device = pick_device(args.device)
    model = load_model(state).to(device)
    train, test = build_datasets(cfg)
    out = args.out or state_path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(model, train=train, test=test, suites=suites, n=args.n or cfg.eval.n, out_dir=out,
                       device=device, sampler_steps=args.sampler_steps or cfg.eval.sampler_steps,
                       sampler=cfg.eval.sampler, churn=cfg.eval.churn, precision=cfg.eval.precision,
                       batch_size=cfg.eval.batch_size, sample_z=cfg.eval.sample_z,
                       prior_steps=cfg.eval.prior_steps, prior_images=cfg.eval.prior_images,
                       gaussian_baseline=cfg.eval.gaussian_baseline)
    write_metrics_json(metrics, out / "metrics.json")
    sys.stdout.write(format_table(metrics) + "\n")
    log.info("metrics and image grids in %s", out)
    return 0


HANDLERS = {"eval": _eval}
