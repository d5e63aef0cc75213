"""`python -m dbae_platform.cli.ui_check`: the MLflow UI checked in a headless browser (dbae_platform.ui_check;
`make ui-check`). Exit 0 when every page shows what it should, 1 when one does not, 2 on bad input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dbae_platform import ui_check
from dbae_platform.argtypes import directory
from dbae_platform.cli.guard import Parser, guarded
from dbae_platform.ui_check import find_browser

__all__ = ["run", "main", "find_browser"]


def run(args: argparse.Namespace) -> int:
    from dbae_platform.config import ConfigError
    if not (args.runs_dir / "mlflow.db").is_file():
        raise ConfigError(f"no MLflow store at {args.runs_dir / 'mlflow.db'}: run a sweep first (make demo) or pass "
                          "--runs-dir")
    browser = find_browser()
    if browser is None:
        raise ConfigError("no Chromium found: install Debian's chromium (apt-get install chromium)")
    try:
        paths = ui_check.check(args.runs_dir, args.out, browser)
    except LookupError as err:
        raise ConfigError(str(err)) from None
    except ui_check.UICheckError as err:  # the UI served, but a page lacks what it should show: a failed check, exit 1
        sys.stderr.write(f"ui check failed: {err} (screenshots in {args.out})\n")
        return 1
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m dbae_platform.cli.ui_check", description=ui_check.__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="runs directory holding mlflow.db")
    p.add_argument("--out", type=directory, default=Path("build/ui-check"), help="where the screenshots go")
    return guarded(run, p, argv)


if __name__ == "__main__":
    sys.exit(main())
