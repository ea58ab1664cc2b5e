"""Conversations as input: turns (speaker, text, optional time) rendered into one `Document`.

A conversation reaches every strategy as a `Document` whose text has one turn per line,
`speaker: text` (or `[time] speaker: text`), so citations stay character spans of that text.
`Document.meta["turns"]` lists each turn's span and speaker, so memory strategies (LIGHT) can
stream the conversation turn by turn. Line breaks inside a turn become spaces: one line per turn
keeps the rendering unambiguous (ours).

Readers: a JSONL file or JSON list of `{"speaker", "text", "time"?}` objects (`role`/`content`
are accepted too), LoCoMo's `locomo10.json`, BEAM's `chats/<tier>_<id>.json`, and a longweave
chat saved as JSON (`Session.save("x.json")`, `/save x.json`, or its resume file).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from longweave.documents import Document, parse_json, parse_jsonl, read_document_bytes
from longweave.errors import DocumentError

__all__ = [
    "Conversation",
    "Turn",
    "TurnSpan",
    "conversation_turns",
    "load_conversation",
    "load_conversations",
]

_FIX = "a conversation file holds a JSON list (or JSONL lines) of {speaker, text, time?} objects"


@dataclass(frozen=True)
class Turn:
    """One turn: who spoke, what was said, and when (free text, as the source gives it)."""

    speaker: str
    text: str
    time: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class TurnSpan:
    """Where a rendered turn lies in the document text: `[start, end)` of its whole line."""

    index: int
    start: int
    end: int
    speaker: str
    time: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Conversation:
    """An ordered list of turns with a name; `document()` renders it for the strategies."""

    turns: tuple[Turn, ...]
    name: str = "conversation"

    def document(self, source: str | None = None) -> Document:
        """One line per turn; `meta["turns"]` holds each line's span, speaker, time and id."""
        lines: list[str] = []
        spans: list[dict[str, Any]] = []
        offset = 0
        for i, turn in enumerate(self.turns):
            # The speaker and time too: a line break in either broke one line per turn.
            speaker, time = _one_line(turn.speaker), _one_line(turn.time or "") or None
            line = f"{speaker}: {_one_line(turn.text)}"
            if time:
                line = f"[{time}] {line}"
            spans.append({"index": i, "start": offset, "end": offset + len(line),
                          "speaker": speaker, "time": time, "id": turn.id})
            lines.append(line)
            offset += len(line) + 1
        meta = {"kind": "conversation", "conversation": self.name, "turns": spans}
        return Document.from_text("\n".join(lines), source=source, meta=meta)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def conversation_turns(document: Document) -> list[TurnSpan] | None:
    """The turn spans of a rendered conversation, or None for an ordinary document."""
    raw = document.meta.get("turns")
    if document.meta.get("kind") != "conversation" or not isinstance(raw, list):
        return None
    spans = [TurnSpan(int(t["index"]), int(t["start"]), int(t["end"]), str(t["speaker"]),
                      t.get("time"), t.get("id")) for t in raw]
    if any(not 0 <= s.start < s.end <= len(document.text) for s in spans):
        raise DocumentError(document.name, "a turn span lies outside the text",
                            hint="render the conversation with Conversation.document()")
    return spans


def load_conversation(path: str | Path, which: int | str = 0) -> Conversation:
    """One conversation of a file: by position, or by its LoCoMo `sample_id` / BEAM `chat_id`."""
    found = load_conversations(path)
    if isinstance(which, int):
        if not 0 <= which < len(found):
            raise DocumentError(path, f"has {len(found)} conversations, not #{which}",
                                hint=f"pick 0..{len(found) - 1}")
        return found[which]
    for conv in found:
        if conv.name == which:
            return conv
    raise DocumentError(path, f"no conversation named {which!r}",
                        hint="choose one of: " + ", ".join(c.name for c in found[:20]))


def load_conversations(path: str | Path) -> list[Conversation]:
    """Every conversation in a JSONL/JSON turn list, a LoCoMo file or a BEAM chat file."""
    p = Path(path).expanduser()
    content = read_document_bytes(p)
    try:
        raw = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = exc.start + len(content) - len(exc.object)  # a byte-order mark was read, not decoded
        raise DocumentError(p, f"not UTF-8 text ({exc.reason} at byte {at})", hint=_FIX) from None
    lines: list[int] | None = None
    if p.suffix.lower() == ".jsonl":
        records = parse_jsonl(p, raw, hint=_FIX)
        data: Any = [record for _, record in records]
        lines = [n for n, _ in records]
    else:
        data = parse_json(p, raw, hint=_FIX)
    try:
        return _parse(data, p.stem, lines)
    except DocumentError as exc:  # named by the file, not by the conversation inside it
        raise DocumentError(p, exc.problem, hint=exc.hint) from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # A LoCoMo, BEAM or saved-chat layout with a field missing or of the wrong kind: said
        # as such, not as a traceback.
        why = f"no {exc.args[0]!r} field" if isinstance(exc, KeyError) else str(exc)
        raise DocumentError(p, f"a conversation in it is malformed ({why})", hint=_FIX) from None


def _parse(data: Any, name: str, lines: list[int] | None = None) -> list[Conversation]:
    """The conversations in `data`; `lines` holds each record's line in a JSONL file, so an
    error names the line rather than the turn."""
    if isinstance(data, dict) and "chat" in data:
        return [_beam(data)]
    if isinstance(data, dict) and "document_id" in data and "turns" in data:
        return [_session(data, name)]
    if isinstance(data, dict) and "conversation" in data:
        data = [data]
    if isinstance(data, list) and data and all(
        isinstance(d, dict) and "conversation" in d for d in data
    ):
        return [_locomo(d, i) for i, d in enumerate(data)]
    if isinstance(data, list):
        where = ([f"line {n}" for n in lines] if lines is not None
                 else [f"turn {i}" for i in range(1, len(data) + 1)])
        turns = tuple(_plain(t, w) for t, w in zip(data, where, strict=True))
        return [Conversation(turns, name)]
    raise DocumentError(name, "not a conversation", hint=_FIX)


def _plain(item: Any, where: str) -> Turn:
    """One turn; `where` names it in errors ("turn 2" of a JSON list, "line 3" of JSONL)."""
    if not isinstance(item, dict):
        raise DocumentError("conversation",
                            f"{where}: expected a JSON object, got {type(item).__name__}",
                            hint=_FIX)
    speaker = item.get("speaker", item.get("role"))
    text = item.get("text", item.get("content"))
    if not isinstance(speaker, str) or not isinstance(text, str):
        raise DocumentError("conversation", f"{where}: needs string `speaker` and `text`",
                            hint=_FIX)
    time = item.get("time")
    return Turn(speaker, text, str(time) if time is not None else None, _id(item))


def _id(item: dict[str, Any]) -> str | None:
    """A turn's id as text; a null id is none (it read as the id "None")."""
    return str(item["id"]) if item.get("id") is not None else None


def _locomo(sample: dict[str, Any], i: int) -> Conversation:
    """LoCoMo: `session_<n>` turn lists, each dated by `session_<n>_date_time`."""
    conv = sample["conversation"]
    sessions = sorted(
        (int(k.split("_")[1]) for k in conv
         if k.startswith("session_") and k.count("_") == 1 and k.split("_")[1].isdigit()
         and isinstance(conv[k], list)),
    )
    turns: list[Turn] = []
    for n in sessions:
        when = conv.get(f"session_{n}_date_time")
        for t in conv[f"session_{n}"]:
            text = str(t.get("text", ""))
            if t.get("blip_caption"):  # shared images reach text-only readers as their caption
                text = f"{text} [shares an image: {t['blip_caption']}]"
            turns.append(Turn(str(t["speaker"]), text, when, t.get("dia_id")))
    return Conversation(tuple(turns), str(sample.get("sample_id", f"locomo-{i}")))


def _beam(chat: dict[str, Any]) -> Conversation:
    """BEAM: batches of turn groups of {role, id, content, time_anchor?} messages."""
    turns: list[Turn] = []
    for batch in chat["chat"]:
        when = batch.get("time_anchor")
        for group in batch.get("turns", []):
            for m in _flat(group):
                when = m.get("time_anchor") or when  # a user turn dates what follows it
                content = str(m.get("content", ""))
                # BEAM tags user turns with "->-> b,t" (its batch,turn index): not conversation.
                content = content.split("->->")[0].rstrip() if "->->" in content else content
                turns.append(Turn(str(m.get("role", "?")), content, when, _id(m)))
    return Conversation(tuple(turns), str(chat.get("chat_id", "beam")))


def _session(record: dict[str, Any], name: str) -> Conversation:
    """A saved longweave chat: each question as the user's turn and its answer as the
    assistant's, both dated (UTC) when the answer was complete."""
    turns: list[Turn] = []
    for t in record["turns"]:
        asked = t.get("asked_at")
        when = (datetime.fromtimestamp(asked, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                if isinstance(asked, int | float) else None)
        turns.append(Turn("user", t["question"], when))
        turns.append(Turn("assistant", t["answer"]["text"], when))
    return Conversation(tuple(turns), name)


def _flat(group: Any) -> Iterable[dict[str, Any]]:
    if isinstance(group, dict):
        yield group
    elif isinstance(group, list):
        for g in group:
            yield from _flat(g)
