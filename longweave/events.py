"""Progress and trace events that every strategy emits through the shared runner."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

EventKind = Literal["start", "call", "step", "progress", "finish", "token"]
"""`token` carries a text delta of a streamed final answer in `message` (`data["restart"]`: the
backend retried mid-stream, so the text so far is void)."""


@dataclass(frozen=True)
class Event:
    """Something that happened while a strategy ran; sinks render or record it."""

    kind: EventKind
    strategy: str
    role: str = ""
    index: int | None = None
    total: int | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default sink: events are dropped."""


class EventLog:
    """A sink that keeps every event, for tests and traces."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of_kind(self, kind: EventKind) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


class TokenSink(Protocol):
    """Receives the text deltas of one streamed model call."""

    def __call__(self, delta: str, *, restart: bool = False) -> None: ...


token_sink: ContextVar[TokenSink | None] = ContextVar("longweave_token_sink", default=None)
"""Where the current model call's text deltas go, or None (do not stream).

`RunContext.call(..., stream=True)` sets it around a strategy's final-answer call; a backend that
can stream passes each delta to it (wrappers such as the completion cache need not know). A
context variable, because the `LLM.complete` signature stays the same for every backend.
"""
