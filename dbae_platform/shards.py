"""`dbae data prepare`: a dataset's splits, read from their standard on-disk files, written as Parquet shards for
streaming (dbae_core.data.write_shards: PNG bytes plus labels, row groups of ~8 MiB)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["prepare"]

log = logging.getLogger("dbae.data")


def _check_splits(splits: list[str]) -> list[str]:
    """The split names, checked: distinct names of dbae_core.data.SPLITS, at least one."""
    from dbae_core.data import SPLITS

    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad or len(set(splits)) != len(splits):
        raise ValueError(f"--split {','.join(splits)!r} is invalid: expected distinct names from {', '.join(SPLITS)}, "
                         "comma-separated")
    return splits


def prepare(dataset: str, out: str, splits: list[str], size: int | None = None, root: str | None = None,
            options: dict[str, Any] | None = None, shard_rows: int = 10_000, row_group_rows: int | None = None,
            limit: int | None = None, workers: int = 0, overwrite: bool = False) -> list[str]:
    """Write each of `splits` of `dataset` (at `size` px, default per dataset; loader `options`) as shards in
    OUT/<split>/ (a folder or a pyarrow filesystem URI); returns the paths written. Every split is built first, so
    bad paths fail before anything is written; bad input raises ValueError or FileNotFoundError (one line)."""
    from dbae_core.data import DEFAULT_SIZES, make_dataset, write_shards

    if workers < 0:
        raise ValueError(f"--workers {workers} is invalid: expected an int >= 0")
    if root and "://" not in root and not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory: pass the folder holding the dataset's files")
    options = dict(options or {})
    if "flip" in options:
        raise ValueError("--option flip=... is not allowed: shards store unflipped images; flip when reading "
                         "(make_dataset('parquet', ..., flip=True))")
    size = size or DEFAULT_SIZES[dataset]
    datasets = {s: make_dataset(dataset, s, size, root, **options) for s in _check_splits(splits)}
    out = out.rstrip("/")
    paths = []
    for split, data in datasets.items():
        paths += write_shards(data, f"{out}/{split}", dataset_name=dataset, size=size, split=split,
                              shard_rows=shard_rows, row_group_rows=row_group_rows, limit=limit, workers=workers,
                              overwrite=overwrite)
    log.info("prepared %s at %d px: %s in %s", dataset, size, ", ".join(datasets), out)
    return paths
