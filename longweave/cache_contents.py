"""What a cache folder holds, by kind: the listing half of the `longweave cache` command's library.

The folder (`LONGWEAVE_CACHE_DIR`) holds the completion and embedding caches (SQLite), the
per-document artifacts of `cache.ArtifactCache` named by key, local models unpacked from GGUF,
pages drawn by chat, and the saved chat conversations. `cache_contents` lists them by kind;
`longweave.cache_removal` removes leftovers (`prune_cache`) or whole kinds (`clear_cache`).

Only what has the exact shape of what longweave writes is longweave's (an artifact key, a model
unpacked from GGUF, a page chat drew): anything else is "other", listed and never removed, and a
link is never followed. Since the folder may be one the user shares with other programs, nothing
is removed from the home folder (or above it), nor from a folder holding others' files unless
its `CACHEDIR.TAG` says it is a cache; `mark_cache_folder` writes that tag.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from longweave.cache import SAFE_KEY
from longweave.errors import ConfigError, LongweaveError, choose_from

__all__ = [
    "BUILT_IN_SHAPES",
    "CACHE_KINDS",
    "CACHE_TAG",
    "CLAIMED_SHAPE",
    "KEPT_KINDS",
    "ROOT_CLAIMED_SHAPE",
    "SQLITE_CACHES",
    "TEMP_SHAPE",
    "CacheItem",
    "built_in_kind",
    "cache_contents",
    "cache_kinds",
    "has_cache_tag",
    "is_file_type",
    "is_home_or_above",
    "mark_cache_folder",
    "size_of",
    "why_outdated",
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
"""What a cache folder holds, by the name `cache_removal.clear_cache` takes. Sessions are
conversations, not a cache: "all" (`cache_kinds`) leaves them."""
KEPT_KINDS: dict[str, str] = {
    "in progress": "builds under way (kept)",
    "own files": "chat's input history, CACHEDIR.TAG (kept)",
    "other": "not longweave's (kept)",
}
"""What `cache_contents` also finds and `cache_removal` never removes: the temporary folders of
running writers, longweave's files that are not a cache, and what longweave did not write."""
CACHE_TAG = "CACHEDIR.TAG"
"""The file that marks a cache folder (https://bford.info/cachedir/): backup tools skip the
folder, and `cache_removal.check_removable` lets longweave remove its own things from it."""
_TAG_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_TAG_TEXT = (_TAG_SIGNATURE + b"\n# This file is a cache directory tag created by longweave.\n"
             b"# For information about cache directory tags see https://bford.info/cachedir/\n")

SQLITE_CACHES = {"completions.sqlite": ("completions", "completions"),
                 "embeddings.sqlite": ("embeddings", "embeddings")}
"""The SQLite caches: file name -> (kind, table)."""
BUILT_IN_SHAPES = tuple((re.compile(shape), kind) for shape, kind in (
    (r"index-[0-9a-f]{16}-[0-9a-f]{24}", "indexes"),  # retrieval.index.index_key
    (r"corpus-[0-9a-f]{40}", "corpora"),  # retrieval.index.corpus_index
    (r"graph-reader-[0-9a-f]{16}-[0-9a-f]{20}", "graphs"),  # GraphReader._artifact_key
    (r"mem-walker-tree-[0-9a-f]{16}-[0-9a-f]{20}", "trees"),  # mem_walker_tree.artifact_key
    (r"light-[0-9a-f]{16}-[0-9a-f]{20}", "memories"),  # light_build.artifact_key
    (r"prism-schema-[0-9a-f]{24}", "schemas"),  # PRISM._generate
))
"""The keys of the built-in strategies' artifacts, whole; any other key is a plugin's
("artifacts"), whatever it starts with."""


def built_in_kind(key: str) -> str:
    """The kind of a built-in strategy's artifact key (`BUILT_IN_SHAPES`); "" for any other."""
    return next((kind for shape, kind in BUILT_IN_SHAPES if shape.fullmatch(key)), "")


TEMP_SHAPE = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]*\.[A-Za-z0-9_]+\.tmp")
"""`durable.temp_folder`'s `.KEY.OWNER.XXXXXXXX.tmp` (without OWNER before owners were named)."""
CLAIMED_SHAPE = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]*\.[0-9a-f]{8}\.stale")
"""A folder claimed for removal by `durable.sweep_stale` or by `cache_removal`."""
_SET_ASIDE = re.compile(rf"\.{SAFE_KEY.pattern}\.unusable-[0-9a-f]{{8}}")
"""An artifact `ArtifactCache.load` moved aside."""
_UNPACKED = re.compile(r"[A-Za-z0-9._-]{1,80}-[0-9a-f]{12}")
"""`models/<ModelSource.cache_key>`: a GGUF file's slug and digest; it holds `model` and
`tokenizer` (`local_models.loader._unpacked`)."""
_VIEW = re.compile(r"[0-9a-f]{16}-turn\d+\.html")
"""`views/<document id>-turn<N>.html`, chat's `/trace open`."""
_VIEW_TEMP = re.compile(r"\.[0-9a-f]{16}-turn\d+\.html\.[0-9a-f]{8}\.tmp\.html")
"""A page being written (`visualize.page._replace`)."""
ROOT_CLAIMED_SHAPE = re.compile(r"\.(?:sessions|views)\.[0-9a-f]{8}\.stale")
"""The sessions (or views) folder claimed for removal by `cache_removal`: nothing else longweave
writes at the root starts with a dot."""
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
    conversations; else 1."""
    why: str = ""
    """Why a leftover can go."""


def cache_kinds(names: Sequence[str]) -> list[str]:
    """The kinds `names` say ("all": every one but sessions, which go only when named); an
    unknown name raises ConfigError with the closest."""
    choices = [*CACHE_KINDS, "all"]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ConfigError(f"unknown cache kind {unknown[0]!r}",
                          hint=choose_from(unknown[0], choices))
    everything = "all" in names
    return [k for k in CACHE_KINDS if k in names or everything and k != "sessions"]


def cache_contents(root: str | Path) -> list[CacheItem]:
    """Everything in the cache folder `root`, by kind; nothing when it does not exist yet.

    Raises LongweaveError when the folder (or one of longweave's folders in it) cannot be
    listed. Leftovers are what nothing will read again: artifacts and SQLite files set aside as
    damaged, temporary folders of dead writers (`longweave.retrieval.durable`), and artifacts of
    a format older than this longweave reads (`why_outdated`)."""
    from longweave.retrieval.durable import STALE_AFTER_S, is_stale

    root = Path(root).expanduser()
    items: list[CacheItem] = []
    for kind, path in _entries(root):
        size, why = size_of(path), ""
        if kind == "temp":
            kind, why = ("leftovers", "left by a writer that died") if is_stale(path) \
                else ("in progress", "")
        elif kind == "view temp":
            old = _mtime(path) <= time.time() - STALE_AFTER_S
            kind, why = ("leftovers", "left by a writer that died") if old else ("in progress", "")
        elif kind.startswith("leftovers:"):
            kind, why = kind.split(":", 1)
        elif kind in CACHE_KINDS and kind != "sessions":
            why = why_outdated(kind, path)
            kind = "leftovers" if why else kind
        count = 1
        if kind == "sessions":
            count = sum(n.endswith(".json") and is_file_type(path / n, stat.S_ISREG)
                        for n in _names(path))
        items.append(CacheItem(kind, (path,), size, count, why))
    for file, (kind, table) in SQLITE_CACHES.items():
        rows = _rows(root / file, table)  # first: closing may fold its journal into the file
        if live := _with_journal(root / file):
            items.append(CacheItem(kind, live, sum(map(size_of, live)), rows))
        if damaged := _with_journal(root / f"{file}.corrupt"):
            items.append(CacheItem("leftovers", damaged, sum(map(size_of, damaged)),
                                   why="damaged, set aside"))
    return items


def mark_cache_folder(root: str | Path) -> bool:
    """Write the `CACHEDIR.TAG` of the cache folder `root` if it has none and holds only what
    longweave writes (never in the home folder or above it); whether it has one now. Best
    effort: a folder that does not exist or cannot be written stays as it is."""
    root = Path(root).expanduser()
    try:
        if has_cache_tag(root):
            return True
        if is_home_or_above(root) or any(kind == "other" for kind, _ in _entries(root)):
            return False
        fd = os.open(root / CACHE_TAG, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as tag:
            tag.write(_TAG_TEXT)
    except FileExistsError:
        return has_cache_tag(root)  # written by another process meanwhile
    except (OSError, LongweaveError):
        return False
    return True


def _entries(root: Path) -> Iterator[tuple[str, Path]]:
    """What is in the cache folder, by name and file type alone (no link followed): a kind of
    `CACHE_KINDS` (an artifact's before its format is read), "leftovers:WHY", "temp" or "view
    temp" (by age), "own files" or "other". The SQLite caches are left to the caller."""
    for name in _names(root):
        path = root / name
        if name.removesuffix("-wal").removesuffix("-shm").removesuffix(".corrupt") in SQLITE_CACHES:
            continue  # the caller's, each with its -wal and -shm
        if not is_file_type(path, stat.S_ISDIR):
            yield ("own files" if name in ("chat_history", CACHE_TAG)
                   and is_file_type(path, stat.S_ISREG) else "other"), path
        elif name == "artifacts":
            yield from _artifacts(path, None)
        elif name == "models":
            for source in _names(path):
                if _UNPACKED.fullmatch(source) and is_file_type(path / source, stat.S_ISDIR):
                    yield from _artifacts(path / source, "models")
                else:
                    yield "other", path / source
        elif name == "views":
            for page in _names(path):
                file = is_file_type(path / page, stat.S_ISREG)
                yield ("views" if file and _VIEW.fullmatch(page) else "view temp"
                       if file and _VIEW_TEMP.fullmatch(page) else "other"), path / page
        elif name == "sessions":
            yield "sessions", path
        else:
            yield ("leftovers:claimed for removal" if ROOT_CLAIMED_SHAPE.fullmatch(name)
                   else "other"), path


def _artifacts(folder: Path, kind: str | None) -> Iterator[tuple[str, Path]]:
    """The entries of an `ArtifactCache` folder: artifacts of `kind` (`models`: the unpacked
    model and tokenizer) or by their keys, and the folders its writers leave."""
    for name in _names(folder):
        path = folder / name
        if not is_file_type(path, stat.S_ISDIR):
            yield "other", path
        elif _SET_ASIDE.fullmatch(name):
            yield "leftovers:damaged, set aside", path
        elif CLAIMED_SHAPE.fullmatch(name):
            yield "leftovers:claimed for removal", path
        elif TEMP_SHAPE.fullmatch(name):
            yield "temp", path
        elif kind is not None:
            yield kind if name in ("model", "tokenizer") else "other", path
        elif SAFE_KEY.fullmatch(name):
            yield built_in_kind(name) or "artifacts", path
        else:
            yield "other", path


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


def is_file_type(path: Path, file_type: Callable[[int], bool]) -> bool:
    """Whether `path` itself (a link not followed) is of `file_type` (`stat.S_ISDIR`...)."""
    try:
        return file_type(os.lstat(path).st_mode)
    except OSError:
        return False


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return time.time()


def is_home_or_above(root: Path) -> bool:
    """Whether `root` is the user's home folder or one that holds it."""
    try:
        home, where = Path.home().resolve(), root.resolve()
    except (RuntimeError, KeyError, OSError):  # no home known
        return False
    return where == home or where in home.parents


def has_cache_tag(root: Path) -> bool:
    """Whether `root` has a `CACHEDIR.TAG` (a file, not a link, that starts as the format says)."""
    tag = root / CACHE_TAG
    if not is_file_type(tag, stat.S_ISREG):
        return False
    try:
        with open(tag, "rb") as f:
            return f.read(len(_TAG_SIGNATURE)) == _TAG_SIGNATURE
    except OSError:
        return False


def why_outdated(kind: str, folder: Path) -> str:
    """Why the artifact in `folder` is of a format this longweave never reads, or "" when it is
    not, or cannot be told (unreadable, newer, unknown): such an artifact is kept."""
    try:
        if kind == "memories":  # `EpisodicMemory.load` refuses a memory saved without them
            about = json.loads((folder / "episodes.json").read_text(encoding="utf-8"))
            kept = isinstance(about, dict) and "checksums" in about
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


def size_of(path: Path) -> int:
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

