"""The `dbae data` command: `dbae data prepare` writes a dataset's splits as Parquet shards for streaming."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dbae_platform.argtypes import at_least, directory_or_uri, positive

_EPILOG = ("Shards land in OUT/<split>/part-00000.parquet ...; read them back with "
           "make_dataset('parquet', split, size, root=OUT) or data.dataset=parquet, data.root=OUT.")


def _option(text: str) -> tuple[str, Any]:
    """Argparse type: KEY=VALUE with VALUE read as JSON when it parses (5, 0.1, true), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` command (sub-command `prepare`) to the `dbae` sub-parsers; returns its parser."""
    from dbae_core.data import DATASETS, DEFAULT_SIZES

    data = subparsers.add_parser("data", help="prepare datasets (Parquet shards for streaming)",
                                 description="Dataset utilities. `dbae data prepare --help` for the shard writer.")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="{prepare}")
    names = sorted(n for n in DATASETS if n != "parquet")
    prepare = commands.add_parser(
        "prepare", help="write a dataset's splits as Parquet shards (PNG bytes + labels)", epilog=_EPILOG,
        description="Read a dataset from its standard on-disk files and write each split as Parquet shards: PNG "
                    "bytes (lossless, at --size) plus labels/attributes/factors, with schema metadata (dataset, size, "
                    "split, count) and row groups of ~8 MiB for streaming.")
    prepare.add_argument("--dataset", required=True, choices=names, metavar="NAME",
                         help=f"dataset to read: {', '.join(names)}")
    prepare.add_argument("--out", required=True, metavar="DIR", type=directory_or_uri,
                         help="output folder or pyarrow filesystem URI (s3://..., gs://...)")
    prepare.add_argument("--root", metavar="DIR", help="the dataset's folder on disk (not needed for shapes; "
                                                       "fashion_mnist defaults to the Debian package's folder)")
    prepare.add_argument("--size", type=positive(int), metavar="S",
                         help="image side in px (default per dataset: "
                              + ", ".join(f"{k} {v}" for k, v in DEFAULT_SIZES.items() if k != "parquet") + ")")
    prepare.add_argument("--split", default="train,val,test", metavar="SPLITS",
                         help="comma-separated splits to write (default train,val,test)")
    prepare.add_argument("--shard-rows", type=positive(int), default=10_000, metavar="N",
                         help="images per shard file (default 10000)")
    prepare.add_argument("--row-group-rows", type=positive(int), metavar="N",
                         help="images per row group (default: ~8 MiB of PNG data per row group)")
    prepare.add_argument("--limit", type=positive(int), metavar="N", help="write only the first N images per split")
    prepare.add_argument("--workers", type=at_least(int, 0), default=0, metavar="N",
                         help="DataLoader processes that load and encode images (default 0: in this process)")
    prepare.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                         help="loader option, repeatable (e.g. crop=center for celeba, length=5000 for shapes)")
    prepare.add_argument("--overwrite", action="store_true", help="replace shards already in OUT/<split>/")
    return data


def _splits(text: str) -> list[str]:
    """The comma-separated split list (checked by shards.prepare)."""
    return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> None:
    """Run the `dbae data` sub-command in ``args``; bad input raises ValueError / FileNotFoundError (one line)."""
    if args.data_command != "prepare":
        raise ValueError(f"unknown data command {args.data_command!r}: use prepare")
    from dbae_platform.shards import prepare
    prepare(args.dataset, args.out, _splits(args.split), size=args.size, root=args.root, options=dict(args.option),
            shard_rows=args.shard_rows, row_group_rows=args.row_group_rows, limit=args.limit, workers=args.workers,
            overwrite=args.overwrite)


HANDLERS = {"data": run}
