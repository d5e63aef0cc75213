"""`dbae report`: the results document from the MLflow store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dbae_platform.argtypes import output_file
from dbae_platform.cli.flags import add_store_flags

__all__ = ["add_report", "HANDLERS"]


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write the results document (tables, plots, the paper's claims) from MLflow",
                       description="Write a markdown results document from the newest sweep of every sweep/* "
                                   "experiment in the MLflow store: the method comparison (DBAE, DBAE-d, DiffAE) with "
                                   "a check of each of the paper's claims, and the ablation tables with plots. "
                                   "Pictures go to a folder named after the document.")
    add_store_flags(p)
    p.add_argument("--out", type=output_file, default=Path("docs/results.md"),
                   help="the document (default docs/results.md)")
    p.add_argument("--include-smoke", action="store_true", help="also report the sweeps run with --smoke")


def _report(args: argparse.Namespace) -> int:
    from dbae_platform.report import write_report
    from dbae_platform.tracking import command_line, store_uri
    out = write_report(store_uri(args.tracking_uri, args.runs_dir), args.out, command_line(),
                       include_smoke=args.include_smoke)
    sys.stdout.write(f"wrote {out}\n")
    return 0


HANDLERS = {"report": _report}
