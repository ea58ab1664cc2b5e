"""Content-addressed caches: model completions in SQLite, per-document artifacts as directories.

A second question about the same document should cost only the question: completions made at
temperature 0 are replayed from disk, and expensive per-document builds are done once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from longweave.answer import Usage
from longweave.errors import LongweaveError, LongweaveWarning
from longweave.llm import LLM, Completion, Message, model_identity

if TYPE_CHECKING:
    from pydantic import BaseModel

    from longweave.tokenizers import Tokenizer

__all__ = ["ArtifactCache", "CachedLLM", "CompletionCache", "completion_key"]

KEY_VERSION = 2
"""Bumped when the key recipe changes, so old entries are never misread, and when the text a
backend adds to the messages changes (2: `structured.json_instructions` sketches the shape)."""


def completion_key(
    model: str,
    messages: Sequence[Message | Mapping[str, str]],
    *,
    max_tokens: int,
    temperature: float,
    schema: type[BaseModel] | None,
) -> str:
    """The sha256 of the canonical JSON of everything that determines a completion."""
    payload = {
        "v": KEY_VERSION,
        "model": model,
        "messages": [
            [m.role, m.content] if isinstance(m, Message) else [m["role"], m["content"]]
            for m in messages
        ],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "schema": schema.model_json_schema() if schema is not None else None,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CompletionCache:
    """A completion store in one SQLite file, safe across threads and processes.

    >>> import tempfile, pathlib
    >>> cache = CompletionCache(pathlib.Path(tempfile.mkdtemp()) / "c.sqlite")
    >>> cache.put("k", {"text": "Lima"}); cache.get("k")
    {'text': 'Lima'}
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0,
                 tag_folder: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        self.tag_folder = tag_folder
        """Write the folder's CACHEDIR.TAG: the file is in longweave's cache folder (the caller
        knows; a file the user put elsewhere sits beside anything)."""
        # One connection per process, shared by threads under a lock: queries take
        # microseconds next to a model call, and one connection is simple to rebuild.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0  # the process that opened `_conn`
        self._inode = 0  # the file `_conn` opened, to tell "corrupt" from "already rebuilt"
        self._unusable = False  # the file cannot be opened here: skipped for the process's life

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record, or None on a miss (or when the cache is unusable)."""
        row = self._run(lambda c: c.execute("SELECT record FROM completions WHERE key = ?", (key,)))
        if not row:
            return None
        try:
            record = json.loads(row[0])
        except (TypeError, ValueError):  # a damaged row is a miss; the answer replaces it
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store a JSON-serializable record under `key`, replacing any earlier one."""
        data = json.dumps(record, ensure_ascii=False)
        self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO completions (key, record, created) VALUES (?, ?, ?)",
                (key, data, time.time()),
            )
        )

    def close(self) -> None:
        """Close this process's connection (it reopens on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, query: Callable[[sqlite3.Connection], sqlite3.Cursor]) -> Any:
        with self._lock:
            if self._unusable:
                return None
            for attempt in range(2):
                try:
                    with self._connection() as conn:  # commits, or rolls back on error
                        return query(conn).fetchone()
                except (sqlite3.OperationalError, OSError) as exc:
                    # Locked past the busy timeout, read-only, disk full, bad path: skip the cache
                    # rather than fail the question. A file that cannot even be opened is not
                    # tried again (one warning, not one per call).
                    self._unusable = isinstance(exc, OSError) or "unable to open" in str(exc)
                    later = "; completions are not cached in this run" if self._unusable else ""
                    warnings.warn(f"completion cache {self.path}: {exc}{later}",
                                  LongweaveWarning, 3)
                    return None
                except sqlite3.DatabaseError as exc:  # not a database, or malformed
                    if attempt:
                        warnings.warn(f"completion cache {self.path}: {exc}", LongweaveWarning, 3)
                        return None
                    self._rebuild(exc)
        return None

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn is not None and self._pid != pid:
            self._conn = None  # inherited across fork: never reuse a parent's connection
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.tag_folder:
                from longweave.cache_contents import mark_cache_folder

                mark_cache_folder(self.path.parent)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False)
            self._inode = self.path.stat().st_ino
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL keeps this crash-safe
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS completions "
                    "(key TEXT PRIMARY KEY, record TEXT NOT NULL, created REAL NOT NULL)"
                )
            except sqlite3.Error:
                conn.close()
                raise
            self._conn, self._pid = conn, pid
        return self._conn

    def _rebuild(self, exc: sqlite3.DatabaseError) -> None:
        """Move a corrupt file aside and start empty, unless another process already did."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            if self.path.stat().st_ino != self._inode:
                return  # another process replaced the file since we opened it; just reconnect
        except FileNotFoundError:
            return
        warnings.warn(
            f"completion cache {self.path} is unreadable ({exc}); moving it aside and starting "
            "a new one",
            LongweaveWarning,
            4,
        )
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, self.path.with_name(self.path.name + ".corrupt" + suffix))


class CachedLLM:
    """An `LLM` that replays temperature-0 completions from a `CompletionCache`."""

    def __init__(self, inner: LLM, cache: CompletionCache, *, enabled: bool = True) -> None:
        self.inner = inner
        self.cache = cache
        self.enabled = enabled

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_prompt_tokens(messages)

    def __getattr__(self, attr: str) -> Any:
        # Backend-specific extras (attention scoring on a local model, say) stay reachable.
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        schema: type[BaseModel] | None = None,
        role: str = "",
    ) -> Completion:
        """Answer from the cache when possible; otherwise call the inner model and store."""
        use = self.enabled and temperature == 0
        key = ""
        if use:
            started = time.perf_counter()
            key = completion_key(
                # A backend's fingerprint names what changes its output beyond the model name
                # (a local model's dtype or decoding options); the name is the fallback.
                model_identity(self.inner),
                messages, max_tokens=max_tokens, temperature=0.0, schema=schema,
            )
            record = await asyncio.to_thread(self.cache.get, key)
            hit = _replay(record, schema, time.perf_counter() - started) if record else None
            if hit is not None:
                return hit
        completion = await self.inner.complete(
            messages, max_tokens=max_tokens, temperature=temperature, schema=schema, role=role
        )
        # Not stored: an unparsed structured reply, a blank one (a glitch, not an answer), or
        # one a content filter stopped (replayed, it would come back without its warning).
        if use and completion.finish_reason != "content_filter" and (
                completion.parsed is not None if schema is not None
                else isinstance(completion.text, str) and bool(completion.text.strip())):
            await asyncio.to_thread(self.cache.put, key, _record(completion))
        return completion


def _record(completion: Completion) -> dict[str, Any]:
    parsed = completion.parsed
    return {
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "model": completion.model,
        "usage": completion.usage.model_dump(),
        # Backends may parse leniently (fenced JSON, say); keep what they validated.
        "parsed": parsed.model_dump(mode="json") if hasattr(parsed, "model_dump") else None,
    }


def _replay(
    record: dict[str, Any], schema: type[BaseModel] | None, seconds: float
) -> Completion | None:
    """A completion rebuilt from a record, or None if it no longer validates (then: a miss)."""
    from pydantic import ValidationError

    if not isinstance(record.get("text"), str):  # a damaged row: a miss, replaced by the answer
        return None
    parsed = None
    if schema is not None:
        try:
            parsed = schema.model_validate_json(record["text"])
        except ValidationError:
            try:
                parsed = schema.model_validate(record.get("parsed"))
            except ValidationError:
                return None
    return Completion(
        text=record["text"],
        usage=Usage(calls=1, cache_hits=1, seconds=seconds),
        parsed=parsed,
        finish_reason=record.get("finish_reason", "stop"),
        model=record.get("model", ""),
        meta={"cache": "hit"},
    )


SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""What an artifact key may be: a name safe as one folder on every platform."""
SWEEP_EVERY_S = 600.0
"""Least seconds between two sweeps of an artifact cache's folder for the temporary folders of
killed builds (each lists the folder; ours)."""
_SWEPT_AT: dict[Path, float] = {}
"""Per folder, the monotonic time this process last swept it: kept across `ArtifactCache`s,
since a batch or a Session makes one per question."""


T = TypeVar("T")

_UNUSABLE = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
             LongweaveError)
"""What reading a damaged artifact raises: its files missing or garbled, or JSON of another shape
(pydantic's ValidationError and JSON errors are ValueErrors)."""


class ArtifactCache:
    """Per-key directories built once, atomically: a reader never sees a half-built artifact.

    >>> import tempfile
    >>> cache = ArtifactCache(tempfile.mkdtemp())
    >>> d = cache.get_or_build("doc1-tree", lambda p: (p / "tree.json").write_text("{}"))
    >>> (d / "tree.json").read_text()
    '{}'
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def find(self, key: str) -> Path | None:
        """The directory for `key` if it has been built, else None."""
        final = self.root / key
        return final if SAFE_KEY.fullmatch(key) and final.is_dir() else None

    def load(self, key: str, read: Callable[[Path], T], what: str) -> T | None:
        """`read(directory)` of the artifact built under `key`; None when there is none.

        An artifact `read` cannot use (truncated, garbage, valid JSON of the wrong shape, another
        document's) is moved aside under a name `find` never returns, with a warning, so the
        rebuilt one is cached in its place instead of being rebuilt on every question."""
        found = self.find(key)
        if found is None:
            return None
        try:
            return read(found)
        except _UNUSABLE as exc:
            if isinstance(exc, FileNotFoundError) and not found.is_dir():
                return None  # removed meanwhile (`longweave cache --clear`): a plain miss
            aside = found.with_name(f".{found.name}.unusable-{uuid.uuid4().hex[:8]}")
            problem = (str(exc).splitlines() or [type(exc).__name__])[0]
            try:
                os.rename(found, aside)
            except FileNotFoundError:
                moved = ""  # another process moved or removed it first
            except OSError as failed:
                moved = f"; it could not be moved aside ({failed.strerror or failed})"
            else:
                moved = f"; moved to {aside.name}"
            warnings.warn(f"rebuilding {what}: {found} is unusable ({problem}){moved}",
                          LongweaveWarning, stacklevel=3)
            return None

    def save(self, key: str, write: Callable[[Path], None], what: str) -> bool:
        """Cache an artifact made by this run (`write(directory)` fills it), best effort: when
        the cache cannot be written (read-only, full, a file in the way) the run keeps what it
        built and goes on, with a warning; nothing finished is lost for a cache."""
        try:
            self.get_or_build(key, write)
        except OSError as exc:
            where = exc.filename or self.root
            warnings.warn(f"{what} is not cached ({exc.strerror or exc}: {where}); the next "
                          "question builds it again", LongweaveWarning, stacklevel=3)
            return False
        return True

    def get_or_build(self, key: str, build: Callable[[Path], None]) -> Path:
        """The directory for `key`, calling `build(tmp_dir)` to fill it first if it is missing.

        What `build` wrote reaches the disk before the folder is renamed into place, and the
        temporary folders of killed builds are swept away (`longweave.retrieval.durable`)."""
        from longweave.retrieval.durable import fsync_path, fsync_tree, sweep_stale, temp_folder

        if not SAFE_KEY.fullmatch(key):
            raise ValueError(f"artifact key {key!r} must be letters, digits, '.', '_' or '-'")
        final = self.root / key
        if final.is_dir():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        if time.monotonic() - _SWEPT_AT.get(self.root, -SWEEP_EVERY_S) >= SWEEP_EVERY_S:
            _SWEPT_AT[self.root] = time.monotonic()
            sweep_stale(self.root)
        tmp = temp_folder(self.root, key)
        try:
            build(tmp)
            fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # Another process finished first; its copy is as good as ours.
            else:
                fsync_path(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

