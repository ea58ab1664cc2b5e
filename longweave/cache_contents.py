"""What a cache folder holds, and removing parts of it: the `longweave cache` command's library.

The folder (`LONGWEAVE_CACHE_DIR`) holds the completion and embedding caches (SQLite), the
per-document artifacts of `cache.ArtifactCache` named by key, local models unpacked from GGUF,
pages drawn by chat, and the saved chat conversations. `cache_contents` lists them by kind,
`prune_cache` removes only leftovers (damaged artifacts set aside, temporary folders of writers
that died, artifacts of a format the code can no longer read), and `clear_cache` removes whole
kinds. Conversations are never a leftover, and "all" leaves them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from longweave.errors import LongweaveError, LongweaveWarning

__all__ = [
    "CACHE_KINDS",
    "KEPT_KINDS",
    "CacheItem",
    "cache_contents",
    "cache_kinds",
    "clear_cache",
    "prune_cache",
]


CACHE_KINDS: dict[str, str] = {
    "completions": "cached model completions",
    "embeddings": "cached embedding vectors",
    "indexes": "retrieval indexes",
    "corpora": "folder (corpus) indexes",
    "graphs": "GraphReader graphs",
    "trees": "MemWalker summary trees",
    "memories": "LIGHT memories",
    "schemas": "PRISM generated schemas",
    "artifacts": "other strategies' artifacts",
    "models": "local models unpacked from GGUF",
    "views": "pages drawn by chat's /trace",
    "sessions": "saved chat conversations",
    "leftovers": "damaged, stale or old-format",
}
"""What a cache folder holds, by the name `clear_cache` takes. Sessions are conversations, not a
cache: "all" (`cache_kinds`) leaves them."""
KEPT_KINDS: dict[str, str] = {
    "in progress": "builds under way (kept)",
    "other": "not longweave's cache (kept)",
}
"""What `cache_contents` also finds and nothing here removes: the temporary folders of running
writers, and files it does not know (chat's input history, say)."""

_STORES = {"completions.sqlite": ("completions", "completions"),
           "embeddings.sqlite": ("embeddings", "embeddings")}
"""The SQLite caches: file name -> (kind, table)."""
_PREFIXES = (("index-", "indexes"), ("corpus-", "corpora"), ("graph-reader-", "graphs"),
             ("mem-walker-tree-", "trees"), ("light-", "memories"), ("prism-schema-", "schemas"))
"""Artifact keys by the strategy that makes them (`index_key`, `artifact_key`s)."""
_FORMAT_HEAD = re.compile(rb'\{\s*"format"\s*:\s*(\d+)\s*[,}]')


@dataclass(frozen=True)
class CacheItem:
    """One thing in a cache folder: a SQLite cache, an artifact, the sessions, a leftover."""

    kind: str
    """A name of `CACHE_KINDS` or `KEPT_KINDS`."""
    paths: tuple[Path, ...]
    size: int
    """Bytes of its files."""
    count: int | None = 1
    """Entries it holds: a SQLite cache's rows (None when it cannot be read), the sessions'
    conversations, the pages of views; else 1."""
    why: str = ""
    """Why a leftover can go."""


def cache_kinds(names: Sequence[str]) -> list[str]:
    """The kinds `names` say ("all": every one but sessions, which go only when named); an
    unknown name raises ConfigError with the closest."""
    import difflib

    from longweave.errors import ConfigError

    choices = [*CACHE_KINDS, "all"]
    unknown = [n for n in names if n not in choices]
    if unknown:
        close = difflib.get_close_matches(unknown[0], choices, n=1)
        guess = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown cache kind {unknown[0]!r}",
                          hint=f"{guess}choose one of: {', '.join(choices)}")
    everything = "all" in names
    return [k for k in CACHE_KINDS if k in names or everything and k != "sessions"]


def cache_contents(root: str | Path) -> list[CacheItem]:
    """Everything in the cache folder `root`, by kind; nothing when it does not exist yet.

    Raises LongweaveError when the folder (or one of longweave's folders in it) cannot be
    listed. Leftovers are what nothing will read again: artifacts and SQLite files set aside as
    damaged, temporary folders of dead writers (`longweave.retrieval.durable`), and artifacts of
    a format older than this longweave reads (`_outdated`)."""
    root = Path(root).expanduser()
    items: list[CacheItem] = []
    for name in _names(root):
        path = root / name
        if name.removesuffix("-wal").removesuffix("-shm").removesuffix(".corrupt") in _STORES:
            continue  # below, each with its -wal and -shm
        if name == "artifacts" and path.is_dir():
            items += _artifacts(path, None)
        elif name == "models" and path.is_dir():
            for source in _names(path):
                if (path / source).is_dir() and not source.startswith("."):
                    items += _artifacts(path / source, "models")
                else:
                    items.append(_aside(path / source))
        elif name in ("sessions", "views") and path.is_dir():
            inside = _names(path)
            count = sum(not n.startswith(".") and (name == "views" or n.endswith(".json"))
                        and (path / n).is_file() for n in inside)
            items.append(CacheItem(name, (path,), _size(path), count))
        else:
            items.append(_aside(path))
    for file, (kind, table) in _STORES.items():
        rows = _rows(root / file, table)  # first: closing may fold its journal into the file
        if live := _with_journal(root / file):
            items.append(CacheItem(kind, live, sum(map(_size, live)), rows))
        if damaged := _with_journal(root / f"{file}.corrupt"):
            items.append(CacheItem("leftovers", damaged, sum(map(_size, damaged)),
                                   why="damaged, set aside"))
    return items


def prune_cache(root: str | Path) -> list[CacheItem]:
    """Remove the leftovers of the cache folder `root`; returns what went. Safe beside running
    longweave processes: nothing reads a leftover, and a temporary folder goes only by the rule
    of `sweep_stale`, which never takes a running writer's."""
    return _remove([i for i in cache_contents(root) if i.kind == "leftovers"])


def clear_cache(root: str | Path, kinds: Sequence[str]) -> list[CacheItem]:
    """Remove every item of `kinds` (names of `CACHE_KINDS`, or "all": see `cache_kinds`) from
    the cache folder `root`; returns what went (a SQLite cache is emptied in place, so that
    processes using it go on). What cannot be removed is a warning."""
    wanted = cache_kinds(kinds)
    return _remove([i for i in cache_contents(root) if i.kind in wanted])


def _names(folder: Path) -> list[str]:
    """The names in `folder`, sorted; none when it does not exist."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LongweaveError(
            f"cannot read the cache folder {exc.filename or folder}: {exc.strerror or exc}",
            hint="check its permissions, or set LONGWEAVE_CACHE_DIR to another folder",
        ) from None


def _artifacts(folder: Path, kind: str | None) -> list[CacheItem]:
    """The artifacts of an `ArtifactCache` folder, of `kind` or by their keys' prefixes."""
    items = []
    for name in _names(folder):
        path = folder / name
        if name.startswith(".") or not path.is_dir():
            items.append(_aside(path))
            continue
        found = kind or next((k for p, k in _PREFIXES if name.startswith(p)), "artifacts")
        outdated = _outdated(found, path)
        items.append(CacheItem("leftovers" if outdated else found, (path,), _size(path),
                               why=outdated))
    return items


def _aside(path: Path) -> CacheItem:
    """What a name that is not an artifact or store is: a folder set aside or left by a writer,
    or something else."""
    from longweave.retrieval.durable import is_stale

    name, size = path.name, _size(path)
    if name.startswith(".") and path.is_dir() and not path.is_symlink():
        if ".unusable-" in name:
            return CacheItem("leftovers", (path,), size, why="damaged, set aside")
        if name.endswith(".stale"):
            return CacheItem("leftovers", (path,), size, why="claimed for removal")
        if name.endswith(".tmp"):  # the rule of `sweep_stale`, which removes it
            if not is_stale(path):
                return CacheItem("in progress", (path,), size)
            return CacheItem("leftovers", (path,), size, why="left by a writer that died")
    return CacheItem("other", (path,), size)


def _outdated(kind: str, folder: Path) -> str:
    """Why the artifact in `folder` is of a format this longweave never reads, or "" when it is
    not, or cannot be told (unreadable, newer, unknown): such an artifact is kept."""
    try:
        if kind == "memories":  # `EpisodicMemory.load` refuses a memory saved without them
            about = json.loads((folder / "episodes.json").read_text(encoding="utf-8"))
            kept = isinstance(about, dict) and ("checksums" in about or "vectors_sha256" in about)
            return "" if kept else "old format (no checksums)"
        if kind == "corpora" and not (folder / "corpus.json").exists():
            return "old format (1)" if (folder / "store" / "manifest.json").is_file() else ""
        file, current = _current_format(kind)
        if not file:
            return ""
        with open(folder / file, "rb") as f:
            head = _FORMAT_HEAD.match(f.read(64))
        written = int(head[1]) if head else json.loads(
            (folder / file).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return ""
    return f"old format ({written})" if type(written) is int and written < current else ""


def _current_format(kind: str) -> tuple[str, int]:
    """The file that names an artifact's format, and the format this longweave reads."""
    if kind in ("indexes", "corpora"):
        from longweave.retrieval.index import CORPUS_FORMAT, INDEX_FORMAT

        return ("index.json", INDEX_FORMAT) if kind == "indexes" else ("corpus.json",
                                                                        CORPUS_FORMAT)
    if kind == "graphs":
        from longweave.graphs.store import GRAPH_FORMAT

        return "graph.json", GRAPH_FORMAT
    if kind == "trees":
        from longweave.memory.summary_tree import TREE_FORMAT

        return "tree.json", TREE_FORMAT
    return "", 0


def _with_journal(file: Path) -> tuple[Path, ...]:
    """A SQLite file and its -wal and -shm, those that exist."""
    return tuple(p for p in (file, Path(f"{file}-wal"), Path(f"{file}-shm")) if p.exists())


def _rows(file: Path, table: str) -> int | None:
    """Rows of `table` in a SQLite cache; None when it cannot be read. Opened as the caches open
    it (a read-only connection would leave a -shm and a -wal behind), but never created, and
    only read."""
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True, timeout=5)
        try:
            conn.execute("PRAGMA query_only = 1")
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    except (sqlite3.Error, OSError, ValueError):
        return None


def _size(path: Path) -> int:
    """Bytes of the file, or of the files under the folder (links not followed)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return os.lstat(path).st_size
    except OSError:
        return 0
    total = 0
    for here, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(here, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def _remove(items: Sequence[CacheItem]) -> list[CacheItem]:
    """Remove `items`; those gone (a SQLite cache: with the bytes it freed)."""
    from longweave.retrieval.durable import sweep_stale

    gone: list[CacheItem] = []
    swept: set[Path] = set()
    for item in items:
        first = item.paths[0]
        if item.kind in ("completions", "embeddings"):
            emptied = _empty(item)
            if emptied is not None:
                gone.append(emptied)
            continue
        if first.name.endswith((".tmp", ".stale")) and item.kind == "leftovers":
            if first.parent not in swept:  # its rule again, at the moment of removal
                swept.add(first.parent)
                sweep_stale(first.parent)
            removed = not first.exists()
        else:
            removed = _discard(item.paths)
        if removed:
            gone.append(item)
    return gone


def _discard(paths: Sequence[Path]) -> bool:
    """Remove files and folders, a folder renamed away first (`.NAME.XXXXXXXX.stale`, which a
    sweep finishes if this is killed), so that no reader sees half of one."""
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                claimed = path.with_name(f".{path.name.lstrip('.')}.{uuid.uuid4().hex[:8]}.stale")
                os.rename(path, claimed)
                shutil.rmtree(claimed, ignore_errors=True)
                if claimed.exists():
                    raise OSError(f"could not remove everything in {claimed}")
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # removed by another process meanwhile
        except OSError as exc:
            warnings.warn(f"{path} is not removed: {exc.strerror or exc}", LongweaveWarning, 4)
            return False
    return True


def _empty(item: CacheItem) -> CacheItem | None:
    """Delete a SQLite cache's rows and give back their space, through SQLite, so that processes
    using it see an empty cache rather than a file gone under them; a file that is not a
    database is removed. The item with the rows and bytes it freed, or None (with a warning)."""
    file = item.paths[0]
    if file.name not in _STORES:  # a -wal or -shm without its database
        return item if _discard(item.paths) else None
    try:
        conn = sqlite3.connect(file, timeout=30)
        try:
            conn.execute(f"DELETE FROM {_STORES[file.name][1]}")
            conn.commit()
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            warnings.warn(f"{file} is not cleared: {exc}; try again when other longweave runs "
                          "have finished", LongweaveWarning, 4)
            return None
    except sqlite3.DatabaseError:  # not a database: nothing can be using it
        if not _discard(item.paths):
            return None
    return replace(item, size=max(0, item.size - sum(map(_size, item.paths))))
