"""The `dbae` command line: train, eval, register, sweep, table, report, ui, prior, generate, interpolate, manipulate,
data. One module a group of commands (train.py: train, register; eval.py; sweep.py: sweep, table and the study
files' flags; report.py; ui.py; generate.py: prior, generate, interpolate, manipulate; data.py); each parses
arguments and calls the library. guard.py maps what a command raises to an exit code.

Exit 0 on success, 2 on bad input (one line, no traceback), 1 when training diverges. Bad input includes what a
library reports about it: MLflow errors, OS errors on the paths given, unreadable checkpoints, and configuration
errors that Ray wraps on their way back from a worker. DBAE_DEBUG=1 prints the traceback as well.
"""

from __future__ import annotations

import argparse

from dbae_platform.cli import data, generate, report, sweep, train, ui
from dbae_platform.cli import eval as evaluation
from dbae_platform.cli.guard import Parser, UsageError, bad_input_message, guarded

__all__ = ["main", "build_parser", "Parser", "UsageError", "bad_input_message", "guarded"]

HANDLERS = {**train.HANDLERS, **evaluation.HANDLERS, **sweep.HANDLERS, **report.HANDLERS, **ui.HANDLERS,
            **generate.HANDLERS, **data.HANDLERS}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dbae", description="Diffusion Bridge AutoEncoders: train, evaluate, sweep, generate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_train(sub)
    evaluation.add_eval(sub)
    train.add_register(sub)
    ui.add_ui(sub)
    sweep.add_sweep(sub)
    sweep.add_table(sub)
    report.add_report(sub)
    generate.add_parsers(sub)
    data.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    return HANDLERS[args.command](args) or 0


def main(argv: list[str] | None = None) -> int:
    return guarded(_dispatch, build_parser(), argv)

