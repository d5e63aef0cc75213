"""Running a command: `Parser` (argparse that raises UsageError instead of printing its usage) and `guarded`, which
parses, sets up logging, runs the command and maps what it raises to an exit code and one line: 0 on success, 2 on
bad input (one line, no traceback), 1 when a run fails (training diverges, a sweep's trials fail).

Bad input includes what a library reports about it: MLflow errors, OS errors on the paths given, unreadable
checkpoints, and configuration errors that Ray wraps on their way back from a worker. DBAE_DEBUG=1 prints the
traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from dbae_core.checkpoint import CheckpointError
from dbae_core.objectives import ConfigurationError
from dbae_core.training import NonFiniteLossError
from dbae_platform.config import ConfigError
from dbae_platform.sweep import SweepFailed
from dbae_platform.tracking import IncompleteLogError, TrackingError

__all__ = ["UsageError", "Parser", "bad_input_message", "guarded"]


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# Raised by the command itself (or by a library on a path or value the user gave): bad input.
_BAD_INPUT = (UsageError, ConfigurationError, CheckpointError, ValueError, OSError, LookupError,
              TrackingError)
# Found inside another error (Ray's wrappers of a worker's exception): bad input only when it is one of ours.
_WRAPPED_BAD_INPUT = (UsageError, ConfigError, ConfigurationError, CheckpointError, TrackingError)


def _wrapped(err: BaseException) -> list[BaseException]:
    """The errors `err` wraps: its cause (`raise ... from`), a RayTaskError's cause, Ray Train's worker/controller
    failures. Not its context: an error raised while handling another is not that other one."""
    inner = [err.__cause__, getattr(err, "cause", None), getattr(err, "controller_failure", None)]
    failures = getattr(err, "worker_failures", None)
    if isinstance(failures, dict):
        inner += list(failures.values())
    return [e for e in inner if isinstance(e, BaseException)]


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and everything it wraps, outermost first."""
    seen: list[BaseException] = []
    todo = [err]
    while todo:
        e = todo.pop(0)
        if all(e is not s for s in seen):
            seen.append(e)
            todo += _wrapped(e)
    return seen


def _is_mlflow_error(err: BaseException) -> bool:
    exceptions = sys.modules.get("mlflow.exceptions")  # mlflow raised it, so it is imported
    return exceptions is not None and isinstance(err, exceptions.MlflowException)


def _os_message(err: OSError) -> str:
    if err.filename is None or err.strerror is None:  # one of ours: a full sentence already
        return str(err)
    target = f" -> {err.filename2}" if err.filename2 else ""
    return f"{err.filename}{target}: {err.strerror}: check the path (a file where a directory belongs, or the " \
           "reverse?) and its permissions"


def _mlflow_message(err: BaseException) -> str:
    first = (getattr(err, "message", None) or str(err)).strip().splitlines()[0][:300]
    return f"MLflow: {first}: check the tracking URI (--tracking-uri, $MLFLOW_TRACKING_URI) and the names passed"


def _message(err: BaseException) -> str:
    if isinstance(err, OSError):
        return _os_message(err)
    if _is_mlflow_error(err):
        return _mlflow_message(err)
    text = " ".join(str(err).split())  # one line whatever the library put in it
    return text or type(err).__name__


def bad_input_message(err: BaseException) -> str | None:
    """The one line to print when `err` is bad input (itself, or one of ours that it wraps), else None (a bug)."""
    if isinstance(err, _BAD_INPUT) or _is_mlflow_error(err):
        return _message(err)
    for inner in _chain(err)[1:]:
        if isinstance(inner, _WRAPPED_BAD_INPUT) or _is_mlflow_error(inner):
            return _message(getattr(inner, "cause", None) or inner)
    return None


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
    except (NonFiniteLossError, SweepFailed, IncompleteLogError) as err:  # a run failed: one line, exit 1
        if os.environ.get("DBAE_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; rerun the same command (sweeps: with --resume) to continue\n")
        return 130
    except Exception as err:
        message = bad_input_message(err)
        if message is None:  # a bug: the traceback is what helps
            raise
        if os.environ.get("DBAE_DEBUG"):  # the one line hides where it came from; DBAE_DEBUG=1 shows it
            traceback.print_exc()
        sys.stderr.write(f"{prog}: error: {message}\n")
        return 2
