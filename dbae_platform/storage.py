"""Where runs live: a local directory or an object store (s3://bucket/prefix, gs://bucket/prefix), one path type.

Ray Train writes checkpoints from the workers' nodes, Tune restores trials on whichever node has room, and the run
records (config.yaml, result.json, the MLflow run id) are written where the driver or the trial runs. On several
machines that only works when the storage path is one that all of them reach: a filesystem every node mounts (NFS,
EFS, Filestore, Lustre) or a bucket. `location` turns a storage path into a `pathlib.Path` or, for a bucket, an
`ObjectPath` with the part of Path's interface the platform uses (/, name, parent, is_file, read_text, write_text,
glob, ...), backed by the pyarrow filesystem Ray Train and Tune use for the same URI, with the same credentials (the
AWS_* / GOOGLE_* environment, an instance role or workload identity; AWS_ENDPOINT_URL for S3-compatible servers).
Code that needs a local file (torch.load, MLflow's log_artifact) takes a `local_copy` or writes through `staged`.
Before a multi-node run the platform checks that every node sees the storage path: it writes a marker file and asks
every live node whether it can read it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["STORAGE_ENV", "OBJECT_STORES", "ObjectPath", "StoragePath", "is_object_store", "location",
           "from_filesystem", "local_copy", "staged", "cache_dir", "default_storage_path", "local_runs_dir",
           "node_label", "nodes_seeing", "require_shared_storage"]

log = logging.getLogger("dbae")

STORAGE_ENV = "DBAE_STORAGE_PATH"  # the cluster configs set it on every node to the shared mount or bucket
PROBE_TIMEOUT_S = 120.0
OBJECT_STORES = ("s3://", "gs://", "gcs://")  # URI prefixes pyarrow (and so Ray Train/Tune) read and write natively
_SCHEME_OF_FS = {"s3": "s3", "gcs": "gs"}  # pyarrow FileSystem.type_name -> URI scheme


def is_object_store(path: Any) -> bool:
    """Whether a storage path (str, Path or ObjectPath) names an object store rather than a local directory."""
    return isinstance(path, ObjectPath) or str(path).startswith(OBJECT_STORES)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, endpoint: str | None):
    """The pyarrow filesystem of a bucket, as Ray builds it from the URI (cached per bucket and endpoint)."""
    import pyarrow.fs as pafs
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


class ObjectPath:
    """A file or folder in an object store, by its URI (`s3://bucket/key`), with the pathlib.Path methods the platform
    uses. Folders are key prefixes: `mkdir` writes nothing, and a folder exists once something is under it."""

    def __init__(self, uri: str) -> None:
        scheme, sep, rest = str(uri).partition("://")
        key = posixpath.normpath("/" + rest).lstrip("/") if rest.strip("/") else ""
        if not sep or not key:
            raise ValueError(f"{uri} is not an object-store URI: use s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
        self.scheme = "gs" if scheme == "gcs" else scheme
        self.key = key  # bucket/prefix/..., the path pyarrow's filesystem takes

    # -- names -----------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str | os.PathLike) -> ObjectPath:
        return ObjectPath(f"{self}/{os.fspath(part)}")

    def joinpath(self, *parts: str) -> ObjectPath:
        return ObjectPath("/".join([str(self), *parts]))

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> ObjectPath:
        head = posixpath.dirname(self.key)
        return ObjectPath(f"{self.scheme}://{head}") if head else self

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    def as_uri(self) -> str:
        return str(self)

    def expanduser(self) -> ObjectPath:
        return self

    def resolve(self) -> ObjectPath:
        return self

    # -- the store -------------------------------------------------------------------------------
    @property
    def filesystem(self):
        """The pyarrow filesystem that holds this path (what Ray Train and Tune use for it)."""
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return _filesystem(self.scheme, self.bucket, endpoint if self.scheme == "s3" else None)

    def _type(self):
        return self.filesystem.get_file_info(self.key).type

    def exists(self) -> bool:
        import pyarrow.fs as pafs
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs
        return self._type() == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        try:
            with self.filesystem.open_input_stream(self.key) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self} does not exist") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        with self.filesystem.open_output_stream(self.key) as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to create: an object store has no folders, only keys with this prefix."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.filesystem.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def iterdir(self) -> Iterator[ObjectPath]:
        import pyarrow.fs as pafs
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.key, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            yield ObjectPath(f"{self.scheme}://{info.path}")

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Children whose name matches `pattern` (one level: no `/` or `**`)."""
        if "/" in pattern:
            raise ValueError(f"ObjectPath.glob takes one level of names, not {pattern!r}")
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))


StoragePath = Path | ObjectPath


def location(path: str | os.PathLike | ObjectPath) -> StoragePath:
    """A storage path as a local absolute Path or, for s3:// and gs:// URIs, an ObjectPath."""
    if isinstance(path, ObjectPath):
        return path
    if is_object_store(path):
        return ObjectPath(str(path))
    return Path(path).expanduser().resolve()


def from_filesystem(filesystem: Any, path: str) -> StoragePath:
    """The location of a (pyarrow filesystem, path) pair, as Ray hands out checkpoints and trial directories."""
    scheme = _SCHEME_OF_FS.get(getattr(filesystem, "type_name", "local"))
    return ObjectPath(f"{scheme}://{path.lstrip('/')}") if scheme else Path(path)


def cache_dir(remote: ObjectPath) -> Path:
    """This machine's folder for local copies of `remote` ($XDG_CACHE_HOME/dbae/<scheme>/<bucket>/<key>)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dbae"
    return root / remote.scheme / remote.key


def local_copy(path: StoragePath, dest: Path | None = None) -> Path:
    """A local file or folder with the contents of `path`: `path` itself when it is local, else a download into `dest`
    (default: `cache_dir(path)`, replaced when it exists)."""
    if not isinstance(path, ObjectPath):
        return Path(path)
    import pyarrow.fs as pafs
    dest = Path(dest) if dest is not None else cache_dir(path)
    kind = path._type()
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} does not exist")
    if dest.is_dir():
        shutil.rmtree(dest)
    if kind == pafs.FileType.File:
        files = [(path.key, dest)]
    else:
        infos = path.filesystem.get_file_info(pafs.FileSelector(path.key, recursive=True))
        files = [(i.path, dest / posixpath.relpath(i.path, path.key)) for i in infos if i.type == pafs.FileType.File]
        dest.mkdir(parents=True, exist_ok=True)
    for key, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.filesystem.open_input_stream(key) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, length=8 * 2**20)
    return dest


def upload(local: Path, dest: StoragePath) -> None:
    """Copy a local file or folder to `dest` (a folder's contents go under `dest`)."""
    if isinstance(dest, ObjectPath):
        import pyarrow.fs as pafs
        pafs.copy_files(str(local), dest.key, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=dest.filesystem)
    elif Path(local).is_dir():
        shutil.copytree(local, dest, dirs_exist_ok=True)
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)


@contextlib.contextmanager
def staged(out: StoragePath) -> Iterator[Path]:
    """A local folder to write `out`'s files into: `out` itself when local, else a temporary folder whose files go to
    `out` when the block ends without error."""
    if not isinstance(out, ObjectPath):
        Path(out).mkdir(parents=True, exist_ok=True)
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="dbae_stage_") as tmp:
        yield Path(tmp)
        upload(Path(tmp), out)


def default_storage_path() -> str:
    """The runs directory when none is given: $DBAE_STORAGE_PATH when set, else `runs` under the working directory."""
    return os.environ.get(STORAGE_ENV) or "runs"


def local_runs_dir() -> str:
    """Where a local MLflow store (sqlite) is looked for by default: the storage path unless it is a bucket, else
    `runs`."""
    path = default_storage_path()
    return "runs" if is_object_store(path) else path


def node_label(ip: str, node_id: str) -> str:
    """How a node is named in messages and tags: its IP and the start of its ID (several nodes can share an IP)."""
    return f"{ip}/{node_id[:8]}"


def _sees(marker: str) -> bool:
    try:
        return location(marker).is_file()
    except Exception:  # no credentials, no route to the store, ...
        return False


def nodes_seeing(marker: StoragePath, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, bool | None]:
    """{node label: whether a process on that node sees `marker`} for every live node; None: no answer in time."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = {}
    for node in (n for n in ray.nodes() if n["Alive"]):
        pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = probe.options(scheduling_strategy=pinned).remote(str(marker))
        refs[ref] = node_label(node["NodeManagerAddress"], node["NodeID"])
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    seen: dict[str, bool | None] = {label: None for label in refs.values()}
    for ref in ready:
        seen[refs[ref]] = bool(ray.get(ref))
    return seen


def require_shared_storage(path: StoragePath) -> None:
    """On a multi-node Ray cluster, refuse (ConfigError, one line) a storage path some node cannot see: a node-local
    directory, or a bucket a node has no credentials (or no route) for.

    Call it after Ray is initialised and before anything is written for the run. A one-node cluster passes untouched.
    """
    import ray

    from dbae_platform.errors import ConfigError

    if sum(1 for n in ray.nodes() if n["Alive"]) <= 1:
        return
    path.mkdir(parents=True, exist_ok=True)
    marker = path / f".dbae-shared-{uuid.uuid4().hex}"
    marker.write_text("written by the driver to check that every Ray node sees this directory\n")
    try:
        seen = nodes_seeing(marker)
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(label for label, ok in seen.items() if ok is False)
    silent = sorted(label for label, ok in seen.items() if ok is None)
    if silent:
        log.warning("storage check: node(s) %s did not answer within %.0f s; going on", ", ".join(silent),
                    PROBE_TIMEOUT_S)
    if blind:
        nodes = f"{len(blind)} of {len(seen)} Ray nodes ({', '.join(blind[:3])}{', ...' if len(blind) > 3 else ''})"
        if isinstance(path, ObjectPath):
            raise ConfigError(
                f"storage path {path}: {nodes} cannot read it: give every node access to the bucket (an instance "
                f"role or service account, or the same AWS_*/GOOGLE_* environment and AWS_ENDPOINT_URL at ray start)")
        raise ConfigError(
            f"storage path {path} is node-local: {nodes} cannot see it; on a multi-node cluster pass --storage-path "
            f"(or set ${STORAGE_ENV}) to a directory every node mounts, e.g. an NFS/EFS/Filestore mount like "
            f"/mnt/dbae/runs, or a bucket (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)")
    log.info("storage path %s is shared by all %d Ray nodes", path, len(seen))
