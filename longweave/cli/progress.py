"""Rich progress for a running strategy, driven by its events."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from longweave.events import Event


class ProgressView:
    """Shows the current role and how far through its chunks it is, on stderr."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if event.kind not in ("call", "progress") or not event.role:
            return
        task = self.tasks.get(event.role)
        if task is None:
            task = self.progress.add_task(event.role, total=event.total or 1)
            self.tasks[event.role] = task
        if event.kind == "call":
            self.progress.update(task, description=f"{event.role} reading")
        else:
            self.progress.update(task, advance=1, description=event.role,
                                 total=max(event.total or 1, 1))
