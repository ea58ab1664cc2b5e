"""Where a conversation is saved: the file, its format, and what keeps its turns.

A session is saved after every turn, atomically, to `<cache dir>/sessions/<document
sha256>.json` (the key does not depend on the strategy or model); `resume=True` continues it.
Two sessions on the same text (two chats, two processes) share that file: a save keeps the turns
another session wrote there since this one last read or wrote it, so no finished turn is lost.
Each save also records, under `sessions/paths/`, which conversation the document's file or folder
has; resuming after the file was edited (a new text, so no saved conversation) names the earlier
one in a warning instead of starting empty without a word. It is not carried over: its answers
were about the earlier text. A saved file that cannot be continued (damaged, a newer format, the
conversation about another text) is moved aside, never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from longweave.answer import Answer
from longweave.errors import ConfigError, LongweaveWarning
from longweave.session_rewrite import clip, one_line

if TYPE_CHECKING:
    from longweave.documents import Document
    from longweave.session import Session

__all__ = [
    "FORMAT_VERSION",
    "SessionFile",
    "SessionRecord",
    "Turn",
    "file_stamp",
    "free_name",
    "load_saved",
    "name_earlier",
    "options_on_saved",
    "session_path",
    "strategy_loads",
    "transcript",
    "write_atomic",
]

FORMAT_VERSION = 1


class Turn(BaseModel):
    """One exchange: the question as typed, the standalone question asked, and the answer."""

    model_config = ConfigDict(extra="forbid")

    question: str
    standalone: str
    answer: Answer
    asked_at: float = Field(default_factory=time.time)
    """Seconds since the epoch when the answer was complete."""


class SessionRecord(BaseModel):
    """What a saved session holds (the persisted JSON and `save("x.json")`)."""

    model_config = ConfigDict(extra="forbid")

    version: int = FORMAT_VERSION
    document_id: str
    source: str | None = None
    strategy: str
    options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    conversation: str = ""
    """Which conversation this is (a random id; "" in files saved before it existed): two
    chats on one text merge their turns only when they continue the same conversation."""
    turns: list[Turn] = Field(default_factory=list)


def session_path(sessions: Path, document_id: str) -> Path:
    """Where the conversation about a text is saved: keyed by the document's sha256 alone."""
    return sessions / f"{document_id}.json"


class SessionFile:
    """The file one session saves to, and what the session knows of the turns in it."""

    def __init__(self, sessions: Path, document: Document, history: Sequence[Turn]) -> None:
        self.document = document
        self.path = session_path(sessions, document.id)
        """Where the session is saved; beside it once another conversation took it."""
        self.origin = _origin(document)
        """The document's file or folder, resolved (None for text): each save records there
        which conversation its text has (`_pointer`), so one about its earlier text is named."""
        self.pointed = False
        self.stamp: tuple[int, ...] | None = None
        """The saved file as this session last read or wrote it (`file_stamp`)."""
        self.known = {_key(t) for t in history}
        """Turns this session has read from or written to the file."""
        self.others: list[Turn] = []
        """Turns other sessions saved to the file: written back with this session's turns."""

    def save(self, history: Sequence[Turn], conversation: str,
             record: Callable[[Sequence[Turn]], dict[str, Any]]) -> None:
        """Write `record` of this session's turns and the others', under the folder's lock
        (another process's save waits: none is lost)."""
        with _locked(self.path.parent):
            self._take_others(history, conversation)
            turns = list(heapq.merge(history, self.others, key=_when))
            write_atomic(self.path, json.dumps(record(turns), ensure_ascii=False))
            self.stamp = file_stamp(self.path)
            self.known.update(_key(t) for t in turns)
            self._point()

    def _save_apart(self, conversation: str) -> None:
        """Another conversation took the file meanwhile (a chat on the same text started over
        with --new while this one went on): neither replaces the other; this one is saved
        beside it from now on."""
        apart = self.path.with_name(f"{self.document.id}.{conversation[:12]}.json")
        # Level 5: past _take_others, save and Session._save_state, to what asked to save.
        warnings.warn(f"another conversation about this text was saved to {self.path} "
                      f"meanwhile; this one is saved to {apart} from now on", LongweaveWarning, 5)
        self.path, self.stamp, self.others = apart, file_stamp(apart), []
        self.pointed = False

    def _point(self) -> None:
        """Record that this conversation is the one about the document's file now (best
        effort: without it, an edit of the file is only not announced)."""
        if self.origin is None or self.pointed:
            return
        with contextlib.suppress(OSError):
            write_atomic(_pointer(self.path.parent, self.origin), json.dumps(
                {"path": self.origin, "document_id": self.document.id, "file": self.path.name}))
            self.pointed = True

    def _take_others(self, history: Sequence[Turn], conversation: str) -> None:
        """Keep the turns another session (another chat on the same text) saved since this one
        last read or wrote the file: writing this session's turns alone dropped them."""
        stamp = file_stamp(self.path)
        if stamp is None or stamp == self.stamp:
            return
        found = _read(self.path, self.document.id)
        if isinstance(found, str):
            _set_aside(self.path, found, "saving this conversation in its place", stacklevel=5)
            return
        if found.conversation != conversation:
            self._save_apart(conversation)
            return
        mine = self.known | {_key(t) for t in (*history, *self.others)}
        self.others = sorted([*self.others, *(t for t in found.turns if _key(t) not in mine)],
                             key=_when)


def _origin(document: Document) -> str | None:
    """The document's file or folder as one name however it was typed, or None (text)."""
    if not document.source:
        return None
    try:
        found = os.path.realpath(os.path.expanduser(document.source))
    except (OSError, ValueError):
        return None
    return found if os.path.exists(found) else None


def _pointer(sessions: Path, origin: str) -> Path:
    """Where the conversation last saved about the file or folder `origin` is named."""
    digest = hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return sessions / "paths" / f"{digest}.json"


def name_earlier(sessions: Path, document: Document) -> None:
    """Warn when the conversation last saved about this document's file or folder was about
    other text (the file was edited since; the session file is keyed by the text). It is not
    continued, since its answers were about the earlier text, but it is named."""
    origin = _origin(document)
    if origin is None:
        return
    try:
        pointer = json.loads(_pointer(sessions, origin).read_text(encoding="utf-8"))
        earlier, name = str(pointer["document_id"]), Path(str(pointer["file"])).name
    except (OSError, ValueError, KeyError, TypeError):
        return  # none recorded (or saved before longweave recorded them)
    saved = sessions / name
    found = _read(saved, earlier) if earlier != document.id and saved.is_file() else None
    if not isinstance(found, SessionRecord) or not found.turns:
        return
    n, last = len(found.turns), time.localtime(found.turns[-1].asked_at)
    warnings.warn(
        f"{document.source} changed since its last conversation ({n} turn{'s' * (n != 1)}, "
        f"the last on {time.strftime('%Y-%m-%d %H:%M', last)}), which is kept in {saved}; its "
        "answers were about the earlier text, so this is a new conversation. To continue that "
        "one, restore the earlier text of the file and open it again.",
        LongweaveWarning, 3)


def _key(turn: Turn) -> tuple[float, str, str]:
    """What tells one saved turn from another, across sessions and processes: its texts as
    saved (a lone surrogate is written as U+FFFD, so the turn read back must match)."""
    return (turn.asked_at, _encodable(turn.question), _encodable(turn.answer.text))


def _when(turn: Turn) -> float:
    return turn.asked_at


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """The file's identity and version (each save is a new file), or None when there is none."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the sessions folder while a save reads and replaces a file, so that two processes
    saving the same conversation take turns. Best effort: without flock (Windows) or where
    the file system refuses it, the save goes on unlocked."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _lock(folder: Path) -> int | None:
    """A handle on `folder` holding its exclusive flock, or None where there is none to take."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without locks
        pass
    return fd


def transcript(session: Session) -> str:
    """The conversation as markdown: each question, the answer, its sources and its usage."""
    doc = session.document
    lines = [f"# Conversation about {doc.name}", "",
             f"{len(session.history)} turns · strategy `{session.strategy.name}` · model "
             f"`{session.model}` · {session.usage.line()}", ""]
    for n, turn in enumerate(session.history, 1):
        lines += [f"## {n}. {one_line(turn.question) or '(summary)'}", ""]
        if turn.standalone != turn.question:
            lines += [f"*Asked as:* {turn.standalone}", ""]
        lines += [turn.answer.text or "*(no answer)*", ""]
        if turn.answer.citations:
            lines += ["Sources:", ""]
            for i, cite in enumerate(turn.answer.citations, 1):
                where = f"{cite.source or doc.name}, chars {cite.start}-{cite.end}"
                lines.append(f"{i}. {where}: “{clip(one_line(cite.text), 200)}”")
            lines.append("")
        lines += [f"*{turn.answer.strategy} · {turn.answer.usage.line()}*", ""]
    return "\n".join(lines)


def options_on_saved(strategy: str, saved: dict[str, Any], given: dict[str, Any]
                     ) -> dict[str, Any]:
    """The saved options with the given ones over them; a given option the resumed strategy
    does not have is an error that says which strategy that is."""
    from longweave.agents.base import get_strategy

    options = {**saved, **given}
    try:
        get_strategy(strategy, **options)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (the resumed session's strategy)",
                          hint=f"pass --strategy to choose another, or --new to start over; "
                               f"{exc.hint}".strip()) from None
    return options


def strategy_loads(strategy: str, options: dict[str, Any]) -> bool:
    """Whether a saved strategy still loads (a plugin may be gone, a setting renamed)."""
    from longweave.agents.base import get_strategy

    try:
        get_strategy(strategy, **options)
    except ConfigError as exc:
        warnings.warn(f"the saved strategy no longer loads ({exc.message}); using the default",
                      LongweaveWarning, 3)
        return False
    return True


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never half a file."""
    text = _encodable(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encodable(text: str) -> str:
    """`text` with lone surrogates (a byte that was not UTF-8, read with surrogateescape; half
    an emoji escaped in a JSON reply) as U+FFFD: UTF-8 cannot hold them, and failing there
    lost the transcript, and every later turn's save."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def load_saved(path: Path, document_id: str) -> SessionRecord | None:
    """A saved session, or None when there is none or it cannot be read (with a warning)."""
    if not path.exists():
        return None
    found = _read(path, document_id)
    if isinstance(found, str):
        _set_aside(path, found, "starting a new one", stacklevel=4)
        return None
    return found


def _read(path: Path, document_id: str) -> SessionRecord | str:
    """The saved session at `path`, or why it cannot be continued."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("version") if isinstance(raw, dict) else None
        if isinstance(version, int) and version != FORMAT_VERSION:
            # Checked first: a newer format's new fields would read as a validation error.
            return f"format {version}; this longweave reads format {FORMAT_VERSION}"
        record = SessionRecord.model_validate(raw)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, not a record
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    if record.document_id != document_id:
        return "it is the conversation about another text"
    return record


def free_name(path: Path, tag: str, *, most: int | None = None) -> Path:
    """`<stem>.<tag><suffix>` beside `path`, or `<stem>.<tag>-2<suffix>` and so on when taken
    (up to `-<most>`, which is then reused), for a file kept aside."""
    kept, n = path.with_name(f"{path.stem}.{tag}{path.suffix}"), 1
    while kept.exists() and (most is None or n < most):
        n += 1
        kept = path.with_name(f"{path.stem}.{tag}-{n}{path.suffix}")
    return kept


def _set_aside(path: Path, problem: str, doing: str, *, stacklevel: int) -> None:
    """Move an unreadable saved session beside its name, with a warning: a newer longweave's
    file, or one a crash or an editor damaged, may still matter to its owner, so it is kept
    rather than overwritten by the next save. `stacklevel` names the frame that opened or
    saved the session (the caller's depth differs)."""
    # A second one within the same second must not replace the first.
    aside = free_name(path, f"unreadable-{time.strftime('%Y%m%d-%H%M%S')}", most=99)
    try:
        os.replace(path, aside)
        kept = f"; it was moved to {aside.name}"
    except OSError:
        kept = ""
    warnings.warn(f"the saved session {path} is unreadable ({problem}); {doing}{kept}",
                  LongweaveWarning, stacklevel)
