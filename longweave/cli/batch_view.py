"""Rich progress and the closing summary of a batch run, shared by `batch` and `eval`.

Wire it to `longweave.batch.arun_batch` through its callbacks:

    view = BatchView(Console(stderr=True))
    with view:
        summary = await arun_batch(items, out, job, on_start=view.start, on_record=view.record)
    Console().print(view.summary(summary))
"""

from __future__ import annotations

from pathlib import Path

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
    TimeRemainingColumn,
)
from rich.table import Table

from longweave.answer import Usage, plural
from longweave.batch import BatchRecord, BatchSummary
from longweave.cli.render import print_line

__all__ = ["BatchView", "cost_line"]


def cost_line(usage: Usage, failed: int = 0) -> str:
    """The running cost as the progress bar shows it: calls, tokens, failures."""
    text = (
        f"{plural(usage.calls, 'call')} · {usage.prompt_tokens:,}+{usage.completion_tokens:,} tok"
    )
    if usage.cache_hits:
        text += f" · {usage.cache_hits:,} cached"
    if failed:
        text += f" · [red]{failed} failed[/]"
    return text


def _failure(rec: BatchRecord) -> str:
    question = rec.id if rec.id is not None else repr(_clip(rec.question, 50))
    error = rec.error or ""
    # Document errors already name the file; others need it said.
    where = "" if rec.document in error else f" on {Path(rec.document).name}"
    return f"{question}{where}: {error}" + (f" ({rec.hint})" if rec.hint else "")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class BatchView:
    """A progress bar with count, ETA and running cost; failures are printed above it.

    `start(todo, skipped)` and `record(rec)` match `arun_batch`'s `on_start` and `on_record`;
    `start` may be called again (one bar per run, e.g. one per strategy in an evaluation).
    `summary(summary)` returns the closing table. Use it as a context manager, or call
    `stop()` yourself, so the terminal is restored when the run ends or is interrupted.
    """

    def __init__(self, console: Console, *, show_failures: bool = True) -> None:
        self.console = console
        self.show_failures = show_failures
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[cost]}"),
            console=console,
            transient=False,
        )
        self.usage = Usage()
        """Summed over every record seen by this view (all its runs)."""
        self.answered = 0
        self.failed = 0
        self._run = (Usage(), 0)  # the current bar's own usage and failures
        self._task: TaskID | None = None
        self._started = False

    def __enter__(self) -> BatchView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def written(self) -> int:
        """Records seen (answered or failed), i.e. written to the output by this run."""
        return self.answered + self.failed

    def start(self, todo: int, skipped: int, description: str = "answering") -> None:
        """Begin a bar for `todo` items; `skipped` were already answered in the output."""
        if not self._started:
            self.progress.start()
            self._started = True
        if skipped:
            self.progress.console.print(
                f"[dim]{skipped} already answered in the output: skipped (resume)[/]"
            )
        self._run = (Usage(), 0)
        self._task = self.progress.add_task(description, total=todo, cost=cost_line(Usage()))

    def record(self, rec: BatchRecord) -> None:
        """Advance the bar by one record and update its running cost (this run's only)."""
        self.usage = self.usage + rec.usage
        self._run = (self._run[0] + rec.usage, self._run[1] + (not rec.ok))
        if rec.ok:
            self.answered += 1
        else:
            self.failed += 1
            if self.show_failures:  # one line off a terminal, as errors are (a log greps it)
                console = self.progress.console
                print_line(console, f"[red]failed[/] {escape(_failure(rec))}", highlight=False)
        if self._task is not None:
            self.progress.update(self._task, advance=1, cost=cost_line(*self._run))

    def stop(self) -> None:
        """Stop the live display (idempotent)."""
        if self._started:
            self.progress.stop()
            self._started = False

    def summary(self, summary: BatchSummary, *, title: str = "batch summary") -> Table:
        """The closing table: answered, failed, skipped, calls, tokens and time."""
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value", justify="right")
        usage = summary.usage
        table.add_row("answered", f"{summary.answered:,}")
        table.add_row("failed", f"[red]{summary.failed:,}[/]" if summary.failed else "0")
        table.add_row("skipped (already answered)", f"{summary.skipped:,}")
        table.add_row("model calls", f"{usage.calls:,}")
        if usage.cache_hits:
            table.add_row("calls from cache", f"{usage.cache_hits:,}")
        table.add_row("prompt tokens", f"{usage.prompt_tokens:,}")
        table.add_row("completion tokens", f"{usage.completion_tokens:,}")
        table.add_row("time", f"{summary.seconds:.1f}s")
        if summary.stopped:
            table.add_row("status", "[red]stopped[/] (see the error below)")
        elif summary.interrupted:
            table.add_row("status", "[yellow]interrupted[/]")
        return table
