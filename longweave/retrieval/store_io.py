"""Saving and loading a `VectorStore`: atomic writes, a checksummed manifest, strict loads.

A saved store is a folder holding `index.faiss`, `records.jsonl` (one JSON array per vector id,
null for a masked one) and `manifest.json` (format version, dimension, embedder name, counts,
index kind and settings, and the size and sha256 of both files). A load that finds anything amiss
(a missing or truncated file, another embedder or dimension, an index of another kind or metric
than the manifest names) raises `StoreError` rather than answer searches from the wrong vectors.

Format 2 added IVF indexes and renamed `hnsw_threshold` to `approximate_threshold`; format 1
stores still load.

Several processes may save and load one store at once: a load sees the old store or the new one
(a store replaced while it is read is read again), and of two saves the last one wins. A save
reaches the disk before it is renamed into place, and sweeps away what a killed save of the same
store left (`longweave.retrieval.durable`).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longweave.retrieval.durable import (
    checksum_problem,
    file_checksum,
    fsync_path,
    fsync_tree,
    sweep_stale,
    temp_folder,
)
from longweave.retrieval.faiss_index import KINDS, index_kind
from longweave.retrieval.faiss_index import faiss_module as _faiss
from longweave.retrieval.store import Record, StoreError

__all__ = ["read_store", "write_store"]


FORMAT = "longweave-vector-store"
FORMAT_VERSION = 2
READS = (1, 2)
"""Format versions this longweave can load."""
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
RECORDS_FILE = "records.jsonl"
_REBUILD = "delete the folder and build the index again"
RECORD_FIELDS = ["document_id", "chunk_index", "start", "end", "source", "text"]
READ_TRIES = 5
"""Reads of a store that another process keeps replacing before a load gives up."""
SWAP_TRIES = 5
"""Renames into place a save tries while other processes keep putting stores there."""
SAVE_GAP_S = 0.5
"""How long a load waits for a save caught between its two renames before it puts the old
store back (a save that died there never finishes)."""


def write_store(path: Path, index: Any, records: Sequence[Record | None], about: dict) -> None:
    """Write a faiss index, its records and a manifest into a temporary sibling, then rename."""
    if _in_the_way(path):
        raise StoreError(path, "exists and is not a vector store", hint="save to a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)  # what a killed save of this store left
    tmp = temp_folder(path.parent, path.name)
    try:
        _write_index(index, tmp / INDEX_FILE)
        with open(tmp / RECORDS_FILE, "w", encoding="utf-8") as f:
            for r in records:
                row = None if r is None else [getattr(r, name) for name in RECORD_FIELDS]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **about,
            "record_fields": RECORD_FIELDS,
            "files": {name: file_checksum(tmp / name) for name in (INDEX_FILE, RECORDS_FILE)},
        }
        # The manifest is written last: a folder without one is a save that never finished.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        fsync_tree(tmp)
        _swap(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_the_way(path: Path) -> bool:
    """Whether `path` holds something a save must not replace: a file, or a folder of files
    without a manifest. A folder swapped while it is looked at (another process saving: gone
    for a moment, then another folder) is a store, not something in the way."""
    before = _identity(path)
    if before is None:
        return False
    try:
        found = not (path / MANIFEST).is_file() and (not path.is_dir() or any(path.iterdir()))
    except FileNotFoundError:
        return False
    return found and _identity(path) == before


def _write_index(index: Any, file: Path) -> None:
    """Write through a Python file: faiss's own file writer reports a failed write as a
    RuntimeError, and one that fails as it closes the file (the last buffered bytes, on a full
    disk) only on stderr, leaving a truncated file that its checksum then vouches for. Here
    every failure is an OSError, as for the other files, so a failed save leaves the previous
    store in place and a cache that cannot be written is a warning rather than a crash."""
    faiss = _faiss()
    with open(file, "wb") as f:
        try:
            faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
        except RuntimeError as exc:  # faiss's own complaint, not the file's
            problem = str(exc).rsplit("failed: ", 1)[-1].strip()
            raise OSError(errno.EIO, f"faiss could not write the index: {problem}",
                          str(file)) from None


def read_store(
    path: Path, *, expected_embedder: str | None = None, expected_dim: int | None = None
) -> tuple[dict[str, Any], Any, list[Record | None]]:
    """The manifest, faiss index and records saved at `path`, each checked before use.

    A save by another process swaps the folder while this one reads it, so the files read can
    be gone, or newer than the manifest (they then fail their checksums); when the folder
    changed under a failed read, it is read again."""
    for attempt in range(1, READ_TRIES + 1):
        before = _identity(path)
        try:
            return _read_once(path, expected_embedder, expected_dim)
        except (StoreError, OSError) as exc:
            if attempt < READ_TRIES and _identity(path) != before:
                continue
            if isinstance(exc, PermissionError):
                raise _no_permission(path, exc) from None
            if isinstance(exc, OSError):  # a file gone mid-read
                raise _corrupt(path, f"unreadable: {exc}") from None
            raise
    raise AssertionError("unreachable")


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which folder is at `path`: a save puts a new one there (a new inode, a new ctime)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _read_once(
    path: Path, expected_embedder: str | None, expected_dim: int | None
) -> tuple[dict[str, Any], Any, list[Record | None]]:
    manifest = _read_manifest(path)
    _check_expected(path, manifest, expected_embedder, expected_dim)
    for name in (INDEX_FILE, RECORDS_FILE):
        _verify(path, name, manifest["files"].get(name))
    try:
        index = _faiss().read_index(str(path / INDEX_FILE))
        records = _read_records(path / RECORDS_FILE)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise _corrupt(path, f"unreadable: {exc}") from None
    if index.d != manifest["dim"] or index.ntotal != len(records):
        raise _corrupt(
            path,
            f"{index.ntotal} vectors of {index.d} dimensions for {len(records)} records of "
            f"{manifest['dim']}",
        )
    _check_kind(path, manifest, index)
    return manifest, index, records


def _check_kind(path: Path, manifest: dict[str, Any], index: Any) -> None:
    """The index file holds the kind of index, with the settings, that the manifest names."""
    kind, found = manifest.get("index"), index_kind(index)
    if kind not in KINDS:
        raise StoreError(
            path,
            f"{MANIFEST} names index kind {kind!r}; this longweave knows {', '.join(KINDS)}",
            hint="load it with the longweave that built it, or build the index again",
        )
    if found != kind:
        raise _corrupt(
            path, f"{MANIFEST} says a {kind} index but {INDEX_FILE} holds {found or 'another kind'}"
        )
    if index.metric_type != _faiss().METRIC_INNER_PRODUCT:
        raise _corrupt(path, f"{INDEX_FILE} does not search by inner product")
    if kind == "ivf":
        nlist = (manifest.get("ivf") or {}).get("nlist")
        if nlist != index.nlist:
            raise _corrupt(
                path, f"{MANIFEST} says {nlist!r} IVF lists but {INDEX_FILE} has {index.nlist}"
            )
        if index.ntotal and not index.is_trained:
            raise _corrupt(path, f"{INDEX_FILE} holds vectors in an untrained IVF index")


def _swap(tmp: Path, path: Path) -> None:
    """Move the new store `tmp` to `path`.

    rename() cannot replace a non-empty folder, so the old one steps aside first; a crash in
    between leaves it as `.NAME.old-*`, which `load` puts back. Another process can put a store
    at `path` in between (its own save, or a load putting the old one back): the last save wins,
    so that one steps aside too and the rename is tried again."""
    aside: list[Path] = []
    try:
        for _ in range(SWAP_TRIES):
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(path, old)
                    aside.append(old)
                except FileNotFoundError:
                    pass  # another save moved it first
                except PermissionError:  # Windows: a reader has a file open; try again
                    time.sleep(0.05)
                    continue
            try:
                os.rename(tmp, path)
                break
            except OSError:
                if not path.exists():
                    raise
        else:
            raise OSError(errno.EBUSY, "other processes kept saving over it", str(path))
    except OSError:
        _put_back(aside, path)
        raise
    for old in aside:
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(path.parent)


def _put_back(aside: list[Path], path: Path) -> None:
    """After a failed swap, the store that was at `path` last goes back (when none is there)."""
    if aside and not path.exists():
        try:
            os.rename(aside.pop(), path)
        except OSError:
            return  # left as `.NAME.old-*` with the others, for `load` to put back
    for old in aside:
        shutil.rmtree(old, ignore_errors=True)


def _corrupt(path: Path, problem: str) -> StoreError:
    return StoreError(path, problem, hint=_REBUILD)


def _no_permission(path: Path, exc: PermissionError) -> StoreError:
    """Not damage, so not `_corrupt`: rebuilding would not help."""
    return StoreError(path, f"cannot be read ({exc.strerror or exc})",
                      hint="check the folder's permissions")


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists() and not _recover(path):
        raise StoreError(path, "does not exist", hint="build the index first, or check the path")
    if not (path / MANIFEST).is_file():
        raise StoreError(
            path,
            f"has no {MANIFEST}: not a vector store, or a save that never finished",
            hint=_REBUILD,
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise _no_permission(path, exc) from None
    except (OSError, ValueError) as exc:
        raise _corrupt(path, f"{MANIFEST} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _corrupt(path, f"{MANIFEST} is not a longweave vector store manifest")
    if manifest.get("version") not in READS:
        raise StoreError(
            path,
            f"has format version {manifest.get('version')!r}; this longweave reads "
            f"{', '.join(map(str, READS))}",
            hint="build the index again with this version of longweave",
        )
    if not (
        isinstance(manifest.get("dim"), int)
        and isinstance(manifest.get("embedder"), str)
        and isinstance(manifest.get("files"), dict)
    ):
        raise _corrupt(path, f"{MANIFEST} lacks dim, embedder or files")
    return manifest


def _recover(path: Path) -> bool:
    """Put back the previous store when a save died between its two renames.

    A save still running is given `SAVE_GAP_S` to finish first: its old store put back under it
    would be read instead of its new one, and only make it step aside again."""
    olds = [old for old in sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"),
                                  reverse=True) if (old / MANIFEST).is_file()]
    deadline = time.monotonic() + SAVE_GAP_S
    while olds and time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.01)
    for old in olds:
        try:
            os.rename(old, path)
            return True
        except OSError:
            return path.exists()
    return False


def _check_expected(
    path: Path, manifest: dict[str, Any], embedder: str | None, dim: int | None
) -> None:
    if embedder is not None and manifest["embedder"] != embedder:
        raise StoreError(
            path,
            f"was built with embedder {manifest['embedder']!r}, not {embedder!r}",
            hint=f"build the index again with {embedder!r}, or query it with "
            f"{manifest['embedder']!r}",
        )
    if dim is not None and manifest["dim"] != dim:
        raise StoreError(
            path,
            f"holds {manifest['dim']}-dimensional vectors, not {dim}",
            hint="build the index again with the embedder you query it with",
        )


def _verify(path: Path, name: str, entry: Any) -> None:
    if (problem := checksum_problem(path / name, entry)) is not None:
        raise _corrupt(path, f"{name} {problem}")


def _read_records(file: Path) -> list[Record | None]:
    records: list[Record | None] = []
    with open(file, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row is None:
                records.append(None)
            else:
                doc, chunk, start, end, source, text = row
                records.append(Record(str(doc), int(chunk), int(start), int(end), source, text))
    return records
