"""Progress and trace events that every strategy emits through the shared runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from longweave.llm import Completion, Message

EventKind = Literal["start", "call", "step", "progress", "finish", "token", "result"]
"""`token` carries a text delta of a streamed final answer in `message` (`data["restart"]`: the
backend retried mid-stream, so the text so far is void). `result` follows every model call, done
or failed, with what a trace keeps: the messages sent and the `Completion` (see `result_event`)."""


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
    payload: Any = None
    """The whole object behind the event, for traces: the `Step` of a `step` event (whose
    `message` is clipped)."""


EventSink = Callable[[Event], None]


def result_event(
    strategy: str,
    role: str,
    messages: Sequence[Message],
    completion: Completion | None,
    *,
    seconds: float,
    index: int | None = None,
    total: int | None = None,
    error: BaseException | None = None,
    **request: Any,
) -> Event:
    """The `result` event of one model call: `data` holds `messages`, `completion` (None when
    the call failed), `seconds`, `cache`, and the request's settings (`max_tokens`,
    `temperature`, `schema`); a failed call adds `error`, `error_type` and `raw` (the reply
    that failed to parse, when there was one)."""
    data: dict[str, Any] = {
        "messages": tuple(messages),
        "completion": completion,
        "seconds": seconds,
        "cache": completion.meta.get("cache") if completion is not None else None,
        **request,
    }
    summary = f"{role} result"
    if error is not None:
        summary = f"{role} failed"
        data["error"] = getattr(error, "message", None) or str(error)
        data["error_type"] = type(error).__name__
        data["raw"] = getattr(error, "raw", None)
    return Event("result", strategy, role, index, total, summary, data)


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
