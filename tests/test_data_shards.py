"""Parquet shards: metadata, lossless round trips, exact per-rank/worker splits, seeded shuffles, corrupt files."""

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dbae_core.data import ParquetShards, ShapesDataset, dataset_channels, make_dataset, write_shards
from dbae_platform.cli import data as cli_data

N = 25


class Tiny(Dataset):
    """Items (RGB image from known uint8 pixels, int label = index, float vector target)."""

    target_names = ("label", "vector")

    def __init__(self, n: int = N, size: int = 8, channels: int = 3) -> None:
        rng = np.random.default_rng(0)
        self.pixels = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
        self.vectors = rng.standard_normal((n, 4)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.pixels[i].astype(np.float64) / 127.5 - 1).float()
        return image, torch.tensor(i), torch.from_numpy(self.vectors[i])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "train"
    paths = write_shards(Tiny(), str(out), dataset_name="tiny", size=8, split="train", shard_rows=7,
                         row_group_rows=3, progress=False)
    return out, paths


def labels(items) -> list[int]:
    return [int(item[1]) for item in items]


def test_metadata_layout_and_row_groups(shards):
    out, paths = shards
    assert [Path(p).name for p in paths] == [f"part-{k:05d}.parquet" for k in range(4)]
    assert not list(out.glob("*.tmp"))
    for k, path in enumerate(paths):
        f = pq.ParquetFile(path)
        meta = {key.decode(): value.decode() for key, value in f.schema_arrow.metadata.items()}
        count = 7 if k < 3 else 4
        assert {key: meta[key] for key in ("dataset", "size", "split", "count", "total", "shard", "num_shards")} == {
            "dataset": "tiny", "size": "8", "split": "train", "count": str(count), "total": "25", "shard": str(k),
            "num_shards": "4"}
        assert meta["channels"] == "3" and meta["targets"] == '["label", "vector"]'
        assert [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] == ([3, 3, 1] if k < 3 else [3, 1])
        assert f.schema_arrow.names == ["index", "image", "label", "vector"]


def test_round_trip_is_lossless(shards):
    out, _ = shards
    tiny = Tiny()
    ds = ParquetShards(str(out), split="train", size=8)
    assert ds.num_rows == len(ds) == N and ds.channels == 3 and ds.target_names == ("label", "vector")
    items = list(ds)
    assert labels(items) == list(range(N))
    for i, (image, label, vector) in enumerate(items):
        ref = tiny[i]
        assert torch.equal(image, ref[0]) and label.dtype == torch.int64 and torch.equal(vector, ref[2])
    flipped = next(iter(ParquetShards(str(out), flip=1.0)))
    assert torch.equal(flipped[0], items[0][0].flip(-1))
    via_uri = ParquetShards(out.resolve().as_uri())  # any pyarrow filesystem URI: file:// here
    assert torch.equal(next(iter(via_uri))[0], items[0][0])


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_exactly_once_per_part(shards, shuffle):
    out, _ = shards
    ds = ParquetShards(str(out), shuffle=shuffle, seed=3, shuffle_buffer=4)
    for parts in (1, 2, 3, 4, 7, 30):
        seen = [labels(ds.iter_part(k, parts)) for k in range(parts)]
        flat = sorted(sum(seen, []))
        assert flat == list(range(N))  # covered, no overlap
        assert max(map(len, seen)) - min(map(len, seen)) <= 1
    trimmed = ParquetShards(str(out), drop_last=True)
    assert [len(labels(trimmed.iter_part(k, 4))) for k in range(4)] == [6] * 4


def test_ranks_and_dataloader_workers_split_exactly(shards):
    out, _ = shards
    got = []
    for rank in range(2):
        ds = ParquetShards(str(out), rank=rank, world_size=2, shuffle=True, seed=1)
        assert len(ds) in (12, 13)
        loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
        got += torch.cat([batch[1] for batch in loader]).tolist()
    assert sorted(got) == list(range(N))


def test_shuffle_is_a_seeded_permutation_per_epoch(shards):
    out, _ = shards
    order = lambda ds: labels(ds)  # noqa: E731
    a, b = ParquetShards(str(out), shuffle=True, seed=5), ParquetShards(str(out), shuffle=True, seed=5)
    first = order(a)
    assert sorted(first) == list(range(N)) and first != list(range(N))
    assert order(b) == first and order(a) == first  # same seed and epoch: same order
    a.set_epoch(1)
    assert order(a) != first and sorted(order(a)) == list(range(N))
    assert order(ParquetShards(str(out), shuffle=True, seed=6)) != first


def test_truncated_corrupt_and_missing_shards_name_the_file(shards, tmp_path):
    out, paths = shards
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in paths:
        (bad / Path(p).name).write_bytes(Path(p).read_bytes())
    victim = bad / "part-00002.parquet"
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"part-00002.parquet: not a readable Parquet shard"):
        ParquetShards(str(bad))
    corrupt = bytearray(raw)
    pq_meta = pq.ParquetFile(paths[2]).metadata
    column = pq_meta.row_group(0).column(1)
    middle = column.data_page_offset + column.total_compressed_size // 2
    corrupt[middle:middle + 16] = b"\xff" * 16  # scribble over PNG bytes inside a data page
    victim.write_bytes(bytes(corrupt))
    ds = ParquetShards(str(bad))
    with pytest.raises(ValueError, match=r"part-00002.parquet"):
        list(ds)
    victim.unlink()
    with pytest.raises(ValueError, match=r"part-00003.parquet: is shard 3 but shard 2 is missing"):
        ParquetShards(str(bad))
    with pytest.raises(FileNotFoundError, match=r"no \*\.parquet shards"):
        ParquetShards(str(tmp_path))
    with pytest.raises(ValueError, match="shards hold size 8, not 16"):
        ParquetShards(str(out), size=16)
    with pytest.raises(ValueError, match="shards hold split train, not test"):
        ParquetShards(str(out), split="test")


def test_existing_shards_need_overwrite(tmp_path):
    write_shards(Tiny(3), str(tmp_path), dataset_name="tiny", size=8, split="train", progress=False)
    with pytest.raises(ValueError, match="already holds shards"):
        write_shards(Tiny(3), str(tmp_path), dataset_name="tiny", size=8, split="train", progress=False)
    write_shards(Tiny(5), str(tmp_path), dataset_name="tiny", size=8, split="train", overwrite=True, progress=False)
    assert ParquetShards(str(tmp_path)).num_rows == 5


def test_shapes_factors_and_attributes_round_trip(tmp_path):
    ds = make_dataset("shapes", "train", 16, length=6)
    write_shards(ds, str(tmp_path), dataset_name="shapes", size=16, split="train", workers=2, progress=False)
    back = list(make_dataset("parquet", "train", 16, tmp_path))
    assert ParquetShards(str(tmp_path)).target_names == ("factors", "attributes")
    for i, (image, factors, attributes) in enumerate(back):
        ref = ShapesDataset(size=16, length=6).render([i])
        assert (image - ref[0][0]).abs().max() <= 1 / 127.5 + 1e-6  # PNG stores the image quantised to uint8
        assert torch.equal(factors, ref[1][0]) and torch.equal(attributes, ref[2][0])


def write_mnist(root: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    for prefix, count in (("train", n), ("t10k", 3)):
        for kind, shape in (("images-idx3", (count, 28, 28)), ("labels-idx1", (count,))):
            array = rng.integers(0, 10 if kind.startswith("labels") else 256, shape).astype(np.uint8)
            header = struct.pack(">BBBB", 0, 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dbae")
    cli_data.add_parser(top.add_subparsers(dest="command", required=True))
    return top


def test_cli_prepare_round_trips_mnist_exactly(tmp_path):
    root, out = tmp_path / "mnist", tmp_path / "out"
    root.mkdir()
    write_mnist(root, 10)
    args = parser().parse_args(["data", "prepare", "--dataset", "mnist", "--root", str(root), "--out", str(out),
                                "--option", "val_size=4", "--shard-rows", "4"])
    cli_data.run(args)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "val"]
    assert dataset_channels("parquet", out) == 1
    for split, n in (("train", 6), ("val", 4), ("test", 3)):
        source, shards = make_dataset("mnist", split, 32, root, val_size=4), make_dataset("parquet", split, 32, out)
        items = list(shards)
        assert len(items) == n == len(source)
        for i, (image, label) in enumerate(items):
            assert image.shape == (1, 32, 32) and torch.equal(image, source[i][0]) and torch.equal(label, source[i][1])


def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["data", "prepare", "--help"])
    assert exit_info.value.code == 0 and "--shard-rows" in capsys.readouterr().out
    bad = [(["--split", "train,dev"], ValueError, "--split"),
           (["--option", "flip=true"], ValueError, "flip"),
           (["--root", str(tmp_path / "absent")], FileNotFoundError, "absent")]
    for extra, error, text in bad:
        args = parser().parse_args(["data", "prepare", "--dataset", "mnist", "--out", str(tmp_path / "o")] + extra)
        with pytest.raises(error, match=text):
            cli_data.run(args)


def test_dbae_main_when_wired(tmp_path):
    from dbae_platform import cli

    sub = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0]
    if "data" not in sub.choices:
        pytest.skip("`dbae data` is not wired into dbae_platform.cli yet")
    out = tmp_path / "shapes"
    argv = ["data", "prepare", "--dataset", "shapes", "--out", str(out), "--size", "16", "--split", "test",
            "--option", "length=5"]
    assert cli.main(argv) == 0 and ParquetShards(str(out / "test")).num_rows == 5
    assert cli.main(argv) == 2  # shards exist: needs --overwrite
    assert cli.main(["data", "prepare", "--dataset", "mnist", "--out", str(out), "--root", str(tmp_path / "no")]) == 2
