"""The `dbae` command line: train, eval, sweep, table, report, ui, prior, generate, interpolate, manipulate, data, demo.

Exit 0 on success, 2 on bad input (one line, no traceback), 1 when training diverges.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from dbae_core.checkpoint import CheckpointError
from dbae_core.objectives import ConfigurationError
from dbae_core.training import NonFiniteLossError
from dbae_platform import commands, generate
from dbae_platform.argtypes import positive

log = logging.getLogger("dbae")


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dbae", description="Diffusion Bridge AutoEncoders: train, evaluate, sweep, generate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    demo = sub.add_parser("demo", help="train the tiny preset on built-in shapes data and print reconstruction metrics",
                          description="Train the tiny preset on the built-in shapes data (CPU: a few minutes) and "
                                      "print reconstruction metrics. Rerun to resume.")
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="checkpoints go here (default runs/demo)")
    demo.add_argument("--steps", type=positive(int), default=500, help="optimizer steps (default 500)")
    demo.add_argument("--batch-size", type=positive(int), default=16)
    demo.add_argument("--eval-images", type=positive(int), default=64)
    demo.add_argument("--sampler-steps", type=positive(int), default=20, help="Euler ODE steps for reconstruction")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--seed", type=int, default=0)
    commands.add_train(sub)
    commands.add_eval(sub)
    commands.add_ui(sub)
    commands.add_sweep(sub)
    commands.add_table(sub)
    commands.add_report(sub)
    generate.add_parsers(sub)
    from dbae_platform import cli_data
    cli_data.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in commands.HANDLERS:
        return commands.HANDLERS[args.command](args) or 0
    if args.command in generate.HANDLERS:
        return generate.HANDLERS[args.command](args) or 0
    if args.command == "data":
        from dbae_platform import cli_data
        cli_data.run(args)
    elif args.command == "demo":
        from dbae_platform.demo import DemoConfig, run_demo
        if args.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise UsageError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
        run_demo(DemoConfig(run_dir=args.run_dir, steps=args.steps, batch_size=args.batch_size,
                            eval_images=args.eval_images, sampler_steps=args.sampler_steps, device=args.device,
                            seed=args.seed))
    return 0


def guarded(run, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse argv, set up logging and call run(args): 0 on success, 2 on bad input (one line), 1 on divergence."""
    prog = parser.prog
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(args) or 0
    except (UsageError, ConfigurationError, CheckpointError, ValueError, FileNotFoundError, LookupError,
            commands.TrackingError) as err:
        if os.environ.get("DBAE_DEBUG"):  # the one line hides where it came from; DBAE_DEBUG=1 shows it
            traceback.print_exc()
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except NonFiniteLossError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; rerun the same command (sweeps: with --resume) to continue\n")
        return 130


def main(argv: list[str] | None = None) -> int:
    return guarded(_dispatch, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
