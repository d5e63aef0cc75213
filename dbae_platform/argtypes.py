"""argparse value types shared by the `dbae` commands: every number is range-checked and every path is checked for
what the command does with it (reads a file, writes into a directory) while the arguments are parsed, so bad input
is one line and exit code 2 before anything starts.

Each type carries a `kind` (e.g. "port", "output directory"): tests feed every argument bad values by its kind.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["positive", "at_least", "port", "seed", "name", "host", "existing_path", "existing_file",
           "existing_dir", "directory", "output_file", "directory_or_uri", "storage_path", "checkpoint_ref",
           "blocking_file", "MODEL_URIS"]

_NOUNS = {int: "an integer", float: "a number"}
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
MODEL_URIS = ("models:/", "runs:/")  # MLflow model URIs that stand for a checkpoint (dbae_platform.registry)
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*$|^[0-9A-Fa-f:.]+$")


def _kind(kind: str) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    def mark(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        parse.kind = kind  # type: ignore[attr-defined]
        return parse
    return mark


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {_NOUNS[kind]}") from None


def at_least(kind: type, low: float, high: float | None = None):
    """An argparse type: `kind` (int or float) parsed from text, in [low, high] (high: no upper bound when None)."""
    @_kind(f"{kind.__name__} >= {low}" + ("" if high is None else f" <= {high}"))
    def parse(text: str):
        value = _number(text, kind)
        if not value >= low or (high is not None and value > high):  # `not >=` also rejects nan
            allowed = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: pass a value {allowed}")
        return value
    parse.low, parse.high = low, high  # type: ignore[attr-defined]
    return parse


def positive(kind: type):
    """An argparse type: `kind` (int or float) parsed from text and required to be > 0."""
    @_kind(f"positive {kind.__name__}")
    def parse(text: str):
        value = _number(text, kind)
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be > 0: pass a positive {kind.__name__}")
        return value
    return parse


port = _kind("port")(at_least(int, 1, 65535))
seed = _kind("seed")(at_least(int, 0, SEED_MAX))


@_kind("name")
def name(text: str) -> str:
    """A run or sweep name: non-empty, no '/' (it names directories and MLflow experiments), no surrounding spaces."""
    if not text or "/" in text or text.strip() != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a name: use letters, digits, '-', '_' or '.', no '/'")
    return text


@_kind("host")
def host(text: str) -> str:
    """A host name or IP address (checked for its form only: no network lookup)."""
    if not _HOST.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or IP address: pass e.g. 127.0.0.1")
    return text


def blocking_file(path: Path) -> Path | None:
    """The first existing part of `path` (itself or a parent) that is not a directory, or None."""
    for part in [path, *path.parents]:
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else part
    return None


@_kind("input path")
def existing_path(text: str) -> Path:
    """A file or directory that must exist (read by the command)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist: pass an existing file or directory")
    return path


def _existing(text: str, want_dir: bool) -> Path:
    """`text` as a path that exists and is a directory (`want_dir`) or a file, else a one-line argparse error."""
    path = Path(text).expanduser()
    if path.is_dir() != want_dir or not path.exists():
        what = "does not exist" if not path.exists() else "is a file" if want_dir else "is a directory"
        raise argparse.ArgumentTypeError(f"{text} {what}: pass an existing {'directory' if want_dir else 'file'}")
    return path


@_kind("checkpoint or model URI")
def checkpoint_ref(text: str) -> Path | str:
    """A checkpoint path (checked by the command, which says what a checkpoint directory holds), a checkpoint in a
    bucket (s3://..., gs://...) or an MLflow model URI (models:/NAME/VERSION, runs:/RUN_ID/model), kept as text."""
    if text.startswith(MODEL_URIS):
        return text
    if "://" in text:
        return _bucket_uri(text)
    return Path(text).expanduser()


@_kind("input file")
def existing_file(text: str) -> Path:
    """A file that must exist (read by the command)."""
    return _existing(text, want_dir=False)


@_kind("input directory")
def existing_dir(text: str) -> Path:
    """A directory that must exist (read by the command)."""
    return _existing(text, want_dir=True)


@_kind("output directory")
def directory(text: str) -> Path:
    """A directory the command writes into: it may not exist yet, but it (or a parent) must not be a file."""
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text} is a URI: pass a local directory path")
    path = Path(text).expanduser()
    blocker = blocking_file(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be a directory: {blocker} is a file; pass a directory path")
    return path


@_kind("output file")
def output_file(text: str) -> Path:
    """A file the command writes: it must not be a directory, and no parent may be a file."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory: pass a file path (e.g. {path / 'results.md'})")
    blocker = blocking_file(path.parent)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {blocker} is a file, not a directory")
    return path


def _bucket_uri(text: str) -> str:
    """s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (the object stores Ray Train and Tune write to), as text."""
    from dbae_platform.storage import OBJECT_STORES, ObjectPath
    if not text.startswith(OBJECT_STORES):
        raise argparse.ArgumentTypeError(f"{text}: only s3://BUCKET/PREFIX and gs://BUCKET/PREFIX URIs are storage "
                                         "(or pass a directory path)")
    try:
        return str(ObjectPath(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@_kind("output directory or bucket")
def storage_path(text: str) -> str:
    """A runs directory (see `directory`) or a bucket URI (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX), as text; the
    command checks that it can write there before it starts."""
    if "://" in text:
        return _bucket_uri(text)
    directory(text)
    return text


@_kind("output directory or URI")
def directory_or_uri(text: str) -> str:
    """An output directory, or a filesystem URI (s3://..., gs://...) passed on unchecked."""
    if "://" in text:
        return text
    directory(text)
    return text
