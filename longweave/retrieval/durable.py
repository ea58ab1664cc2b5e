"""Folders written to survive a crash: checksummed files, synced before they are renamed into
place, and temporary folders that a killed writer left behind swept away.

Artifacts (`longweave.cache.ArtifactCache`) and vector stores (`longweave.retrieval.store_io`)
are written into a temporary sibling folder and renamed into place. Every file and folder in it
is fsynced before the rename: file systems that delay allocation (ext4, XFS) can put a rename on
disk before the data it names, so a power cut just after it left the new name holding empty or
half-written files that later loads rejected or, worse, misread. The parent folder is fsynced
after the rename, so the rename itself is kept. Where a folder cannot be opened (Windows), it is
not synced; NTFS journals renames.

A killed writer leaves its temporary folder (`.NAME.OWNER.XXXXXXXX.tmp`, OWNER the host and
process id) behind. The next writer in that folder removes the stale ones: a folder is stale when
nothing in it changed for `STALE_AFTER_S` and its writer is not known to be alive. A writer on
this host that is still running keeps its folder however long it takes; one on another host (a
cache on a shared drive), whose process cannot be checked from here, keeps it while it writes
and for `STALE_AFTER_S` after. A stale folder is claimed by a rename before it is removed: a
writer finishing at that moment either renames its folder into place first, and the sweep
finds nothing, or fails its own rename, which a cache reports as a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "STALE_AFTER_S",
    "checksum_problem",
    "claim_name",
    "file_checksum",
    "fsync_path",
    "fsync_tree",
    "is_stale",
    "sweep_stale",
    "temp_folder",
]

STALE_AFTER_S = 3600.0
"""Seconds a temporary folder whose writer is not known to be alive may go unchanged before a
sweep removes it (ours: a save writes its files within seconds; an hour leaves room for a slow
shared drive)."""

_OWNED = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]+\.tmp$")


def file_checksum(path: Path) -> dict[str, Any]:
    """The size and sha256 of a file, as manifests record them."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def checksum_problem(path: Path, expected: Any) -> str | None:
    """What is wrong with the file at `path` given the `file_checksum` recorded for it (None
    when it matches): checked before the file is parsed, since a changed file that still parses
    would be misread, and a damaged header can make a reader allocate terabytes."""
    if not isinstance(expected, dict) or not {"bytes", "sha256"} <= expected.keys():
        return "has no checksum"
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"is {size} bytes, not {expected['bytes']} (truncated?)"
    if file_checksum(path)["sha256"] != expected["sha256"]:
        return "does not match its checksum (corrupted)"
    return None


def fsync_path(path: Path) -> None:
    """Flush a file or a folder to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on Windows; NTFS journals renames anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then each folder from the deepest up to `folder`."""
    for here, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(here, name))
        fsync_path(Path(here))


def temp_folder(parent: Path, name: str) -> Path:
    """A new folder `.NAME.OWNER.XXXXXXXX.tmp` in `parent`, OWNER naming this process."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.{_owner()}.", suffix=".tmp", dir=parent))


def sweep_stale(parent: Path, name: str | None = None, *,
                older_than_s: float = STALE_AFTER_S) -> int:
    """Remove the stale temporary folders in `parent` (of `name` only, when given); returns how
    many were removed. Best effort: what cannot be listed or removed is left."""
    prefix = "." if name is None else f".{name}."
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)
                   and e.name.endswith((".tmp", ".stale")) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        path = Path(entry.path)
        if entry.name.endswith(".tmp"):
            if not is_stale(path, older_than_s):
                continue
            claimed = claim_name(path)
            try:
                os.rename(path, claimed)
            except OSError:
                continue  # renamed into place, or claimed by another sweep, meanwhile
            path = claimed
        # A `.stale` folder is one a sweep claimed: removing it twice at once is harmless.
        shutil.rmtree(path, ignore_errors=True)
        removed += not path.exists()
    return removed


def claim_name(folder: Path) -> Path:
    """The name a stale `.KEY.OWNER.XXXXXXXX.tmp` folder is renamed to before it is removed,
    `.KEY.OWNER.XXXXXXXX.YYYYYYYY.stale`, so that a second sweep does not remove it twice."""
    return folder.with_name(f"{folder.name[:-4]}.{uuid.uuid4().hex[:8]}.stale")


def is_stale(folder: Path, older_than_s: float = STALE_AFTER_S) -> bool:
    """Whether a temporary folder was left by a writer that is gone: its writer is not known to
    be running, and nothing in it changed for `older_than_s` seconds."""
    return not _alive(folder.name) and _newest_change(folder) <= time.time() - older_than_s


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _alive(folder_name: str) -> bool:
    """Whether the folder's writer is known to be running: on this host, and its process is."""
    found = _OWNED.search(folder_name)
    if found is None or found["host"] != _host():
        return False
    pid = int(found["pid"])
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill would end the process; its age alone decides
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: running, under another user
        return True
    return True


def _newest_change(folder: Path) -> float:
    """The latest modification time of `folder` or anything in it."""
    newest = 0.0
    for here, dirs, files in os.walk(folder):
        for name in (".", *dirs, *files):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(here, name)).st_mtime)
    return newest
