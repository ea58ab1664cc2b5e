"""Progress and trace events that every strategy emits through the shared runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["start", "call", "step", "progress", "finish"]


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
