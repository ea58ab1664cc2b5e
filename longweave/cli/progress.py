"""Rich progress for a running strategy, driven by its events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from longweave.events import Event
from longweave.llm import unquote_so_far


class ProgressView:
    """Shows the current role and how far through its chunks it is, on stderr.

    Between a run's start and its first model call (reading and chunking the document, loading
    a cached artifact: seconds on a large document) it shows what it is preparing, so the
    terminal is never silent. Off a terminal (a pipe, a file, a dumb terminal) it draws nothing:
    a transient bar leaves nothing there but the empty line rich ends it with, which would
    land in a log, or in the chat's piped output.
    """

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_interactive,
        )
        self.tasks: dict[str, TaskID] = {}
        self.preparing: TaskID | None = None

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self._prepare(event)
        if event.kind not in ("call", "progress") or not event.role:
            return
        self._prepared()
        task = self.tasks.get(event.role)
        if task is None:
            task = self.progress.add_task(event.role, total=event.total or 1)
            self.tasks[event.role] = task
        if event.kind == "call":
            self.progress.update(task, description=f"{event.role} reading")
        else:
            self.progress.update(task, advance=1, description=event.role,
                                 total=max(event.total or 1, 1))


    def _prepare(self, event: Event) -> None:
        """An open-ended task for the run that starts, until its first role reports."""
        self._prepared()
        document = event.data.get("document") or "the document"
        # A file name is text, not markup: "notes[/b].txt" must not break the bar.
        self.preparing = self.progress.add_task(f"{event.strategy} preparing {escape(document)}",
                                                total=None)


    def _prepared(self) -> None:
        """The open-ended task ends: a role reports, or another run starts."""
        if self.preparing is not None:
            self.progress.remove_task(self.preparing)
            self.preparing = None


class LiveAnswer:
    """Progress while the strategy works; once the answer streams, its text live (rich Live)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = ProgressView(console)
        self.live: Any = None
        self.streamed = ""

    def __enter__(self) -> LiveAnswer:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)
        if self.live is not None:
            self.live.stop()

    def __call__(self, event: Event) -> None:
        if event.kind != "token":
            if self.live is None:
                self.progress(event)
            return
        if self.live is None:
            from rich.live import Live

            self.progress.__exit__(None, None, None)  # one live display at a time
            self.live = Live(console=self.console, transient=True, refresh_per_second=12)
            self.live.start()
        self.streamed = "" if event.data.get("restart") else self.streamed
        self.streamed += event.message
        self.live.update(Text(self._tail()))

    def _tail(self) -> str:
        """The end of the streamed text that fits the screen (Live would show its top)."""
        width, room = max(self.console.width, 20), max(self.console.height - 2, 3)
        kept: list[str] = []
        for line in reversed(unquote_so_far(self.streamed).split("\n")):
            room -= max(1, -(-len(line) // width))
            if room < 0:
                break
            kept.insert(0, line)
        return "\n".join(kept)
