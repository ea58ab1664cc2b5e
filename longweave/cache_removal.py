"""Removing parts of a cache folder: the removal half of the `longweave cache` command's library.

`prune_cache` removes only leftovers (damaged artifacts set aside, temporary folders of writers
that died, artifacts of a format the code can no longer read), and `clear_cache` removes whole
kinds; what there is to remove, and of which kind, is `longweave.cache_contents`'s listing.
Conversations are never a leftover, and "all" leaves them.

What is "other" (not longweave's) is never removed, and a link is never followed. Since the
folder may be one the user shares with other programs, `check_removable` refuses the home folder
(or above it), and a folder holding others' files unless its `CACHEDIR.TAG` says it is a cache.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from longweave.cache_contents import (
    CACHE_TAG,
    CLAIMED_SHAPE,
    ROOT_CLAIMED_SHAPE,
    SQLITE_CACHES,
    TEMP_SHAPE,
    CacheItem,
    built_in_kind,
    cache_contents,
    cache_kinds,
    has_cache_tag,
    is_file_type,
    is_home_or_above,
    size_of,
    why_outdated,
)
from longweave.errors import ConfigError

__all__ = [
    "Removal",
    "check_removable",
    "clear_cache",
    "prune_cache",
]


@dataclass(frozen=True)
class Removal:
    """What `prune_cache` or `clear_cache` did."""

    removed: tuple[CacheItem, ...]
    """What went (a SQLite cache: emptied, with the bytes it freed)."""
    not_removed: tuple[tuple[CacheItem, str], ...] = ()
    """What could not be removed, each with why (no permission, in use)."""


class _NotRemoved(Exception):
    """Why an item could not be removed."""


def check_removable(root: str | Path, items: Sequence[CacheItem]) -> None:
    """Raise ConfigError when nothing should be removed from the folder `root` (which holds
    `items`): it is the home folder or above it, or it holds what longweave did not write and no
    `CACHEDIR.TAG` says it is a cache (a shared folder, set as the cache folder by mistake)."""
    root = Path(root).expanduser()
    hint = "set LONGWEAVE_CACHE_DIR to a folder of longweave's own (by default ~/.cache/longweave)"
    if is_home_or_above(root):
        raise ConfigError(f"{root} is the home folder or holds it: longweave removes nothing "
                          "there", hint=hint)
    others = [i.paths[0] for i in items if i.kind == "other"]
    if others and not has_cache_tag(root):
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise ConfigError(
            f"{root} has no {CACHE_TAG} and holds what longweave did not write "
            f"({others[0].relative_to(root)}{more}): longweave removes nothing there",
            hint=f"{hint}, or move the others out of this one")


def prune_cache(root: str | Path) -> Removal:
    """Remove the leftovers of the cache folder `root`. Safe beside running longweave processes:
    nothing reads a leftover, a temporary folder goes only by the rule of `sweep_stale`, which
    never takes a running writer's, and an artifact rebuilt meanwhile is kept. Raises
    ConfigError where `check_removable` refuses the folder."""
    items = cache_contents(root)
    check_removable(root, items)
    return _remove([i for i in items if i.kind == "leftovers"])


def clear_cache(root: str | Path, kinds: Sequence[str],
                items: Sequence[CacheItem] | None = None) -> Removal:
    """Remove every item of `kinds` (names of `CACHE_KINDS`, or "all": see `cache_kinds`) from
    the cache folder `root` (a SQLite cache is emptied in place, so that processes using it go
    on). `items`: the folder as `cache_contents` just listed it and `check_removable` passed
    it; None to list and check it here. Raises ConfigError where `check_removable` refuses
    the folder."""
    wanted = cache_kinds(kinds)
    if items is None:
        items = cache_contents(root)
        check_removable(root, items)
    return _remove([i for i in items if i.kind in wanted])


def _remove(items: Sequence[CacheItem]) -> Removal:
    """Remove `items`: what went, and what could not, with why. One that is no longer to be
    removed (a temporary folder written to again, an artifact rebuilt meanwhile) is neither."""
    gone: list[CacheItem] = []
    failed: list[tuple[CacheItem, str]] = []
    for item in items:
        try:
            done = _take(item)
        except _NotRemoved as exc:
            failed.append((item, str(exc)))
        else:
            if done is not None:
                gone.append(done)
    return Removal(tuple(gone), tuple(failed))


def _take(item: CacheItem) -> CacheItem | None:
    """Remove one item; itself (a SQLite cache: with the bytes it freed) or None when it is kept
    after all. Raises _NotRemoved."""
    from longweave.retrieval.durable import claim_name, is_stale

    first = item.paths[0]
    if item.kind in ("completions", "embeddings"):
        return _empty(item)
    if item.kind == "leftovers" and TEMP_SHAPE.fullmatch(first.name):
        if not is_stale(first):  # the rule of `sweep_stale`, again at the moment of removal
            return None
        claimed = claim_name(first)
        try:
            os.rename(first, claimed)
        except FileNotFoundError:
            return None  # renamed into place, or claimed by a sweep, meanwhile
        except OSError as exc:
            raise _NotRemoved(exc.strerror or str(exc)) from None
        _rmtree(claimed)
        return item
    if item.kind == "leftovers" and (CLAIMED_SHAPE.fullmatch(first.name)
                                     or ROOT_CLAIMED_SHAPE.fullmatch(first.name)):
        _rmtree(first)  # claimed already: removing it twice at once is harmless
        return item
    if item.kind == "leftovers" and item.why.startswith("old format"):
        kind = built_in_kind(first.name)
        return item if _discard(item.paths, lambda p: bool(why_outdated(kind, p))) else None
    _discard(item.paths)
    return item


def _discard(paths: Sequence[Path], still: Callable[[Path], bool] | None = None) -> bool:
    """Remove files and folders, a folder renamed away first (`.NAME.XXXXXXXX.stale`, which a
    prune finishes if this is killed), so that no reader sees half of one; a link is unlinked,
    never followed. A folder that, once claimed, is `still` not to go (an artifact of an old
    format rebuilt meanwhile) is put back where its key is still free, and False returned.
    Raises _NotRemoved."""
    for path in paths:
        try:
            if not is_file_type(path, stat.S_ISDIR):
                path.unlink()
                continue
            claimed = path.with_name(f".{path.name.lstrip('.')}.{uuid.uuid4().hex[:8]}.stale")
            os.rename(path, claimed)
        except FileNotFoundError:
            continue  # removed by another process meanwhile
        except OSError as exc:
            raise _NotRemoved(exc.strerror or str(exc)) from None
        if not is_file_type(claimed, stat.S_ISDIR) or (still is not None and not still(claimed)):
            # A link put in its place, or an artifact rebuilt, since it was listed.
            try:
                if not os.path.lexists(path):
                    os.rename(claimed, path)
                    return False
            except OSError:
                pass
            if not is_file_type(claimed, stat.S_ISDIR):
                raise _NotRemoved("it is a link now")
            _rmtree(claimed)  # a copy of what its key holds again: nothing can read it
            return False
        _rmtree(claimed)
    return True


def _rmtree(folder: Path) -> None:
    """Remove a claimed folder and everything in it (links inside unlinked, not followed), or
    raise _NotRemoved with the first reason it cannot be."""
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.lexists(folder):
        try:
            shutil.rmtree(folder)  # again, for the reason
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _NotRemoved(exc.strerror or str(exc)) from None
        if os.path.lexists(folder):
            raise _NotRemoved(f"could not remove everything in {folder}")


def _empty(item: CacheItem) -> CacheItem:
    """Delete a SQLite cache's rows and give back their space, through SQLite, so that processes
    using it see an empty cache rather than a file gone under them; a file that is not a
    database is removed. The item with the rows and bytes it freed. Raises _NotRemoved."""
    file = item.paths[0]
    if file.name not in SQLITE_CACHES:  # a -wal or -shm without its database
        _discard(item.paths)
        return item
    try:
        conn = sqlite3.connect(file, timeout=30)
        try:
            conn.execute(f"DELETE FROM {SQLITE_CACHES[file.name][1]}")
            conn.commit()
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise _NotRemoved(f"{exc}; try again when other longweave runs have finished"
                              ) from None
    except sqlite3.DatabaseError:  # not a database: nothing can be using it
        _discard(item.paths)
    return replace(item, size=max(0, item.size - sum(map(size_of, item.paths))))
