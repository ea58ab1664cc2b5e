"""`longweave compare PATH QUESTION --strategies a,b,c`: one question, several strategies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from longweave.cli.options import Exclude, Include, Model, NoCache, parse_options
from longweave.events import Event

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from longweave.compare import CompareRow


def compare(
    path: Annotated[
        Path, typer.Argument(help="The document (.txt, .md, .html, .pdf) or a folder of them.")
    ],
    question: Annotated[str, typer.Argument(help="The question; '' asks for a summary.")],
    strategies: Annotated[
        str, typer.Option("--strategies", "-s", "-S", help="Comma-separated names, or 'all'.")
    ] = "all",
    model: Model = "local",
    option: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for every strategy that has the option, or "
                     "name.key=value for one (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    width: Annotated[int, typer.Option("--width", min=2, help="Answer characters shown.")] = 80,
    no_cache: NoCache = False,
    include: Include = None,
    exclude: Exclude = None,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Append every call (prompt, output, usage) and step of "
                     "every strategy to this JSONL file."),
    ] = None,
) -> None:
    """Answer QUESTION about PATH with each strategy in turn, on the same model, as a table.

    An unknown strategy name is an error before anything runs. A strategy that fails shows its
    error in its row and the others still run. Exit status: 0 when at least one strategy
    answered, 1 when all failed (or a name is unknown).
    """
    import asyncio
    import json

    from rich.console import Console

    from longweave.api import load_source
    from longweave.batch import check_writable
    from longweave.compare import acompare
    from longweave.trace import TraceWriter, combine, trace_sink

    err = Console(stderr=True)
    _check_names(strategies)
    options = parse_options(option)
    _check_options(strategies, options)
    if trace is not None:  # before the first strategy runs, not at its first line
        check_writable(trace, "trace")
    source = load_source(path, include=include, exclude=exclude)
    fields = {"document": source.source or source.name, "question": question, "model": model}
    finished: list[str] = []
    try:
        with _CompareProgress(err) as view, trace_sink(trace, **fields) as sink:

            def done(row: CompareRow) -> None:
                view.done(row)
                finished.append(row.strategy)
                if isinstance(sink, TraceWriter):  # the row closes each strategy's lines
                    sink.write({"type": "row", **row.model_dump(mode="json")})

            rows = asyncio.run(acompare(
                source, question, strategies, model=model, options=options,
                cache=not no_cache, on_event=combine(view, sink), on_row=done,
            ))
    except KeyboardInterrupt:
        raise _interrupted(err, finished, trace) from None
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
    else:
        Console().print(compare_table(rows, width=width))
    if not any(r.ok for r in rows):
        raise typer.Exit(1)


def _interrupted(err: Console, finished: list[str], trace: Path | None) -> typer.Exit:
    """The line Ctrl-C ends a comparison with: which strategies had finished and where the
    trace (with their rows) is. Their rows are not printed: on stdout, a part of the table (or
    of the JSON) would pass for the whole comparison."""
    from longweave.cli.exits import interrupted

    kept = [f"{', '.join(finished)} had finished" if finished else "no strategy had finished"]
    if trace is not None and trace.exists():
        kept.append(f"the trace so far is in {trace}")
    return interrupted(err, "; ".join(kept))


def _check_names(strategies: str) -> None:
    """Refuse a misspelt name up front, as `ask` does, rather than as a failed row (the library's
    `acompare` keeps reporting it in its row)."""
    import difflib

    from longweave.agents.base import available
    from longweave.compare import resolve_strategies
    from longweave.errors import ConfigError

    known = available()
    unknown = [name for name in resolve_strategies(strategies) if name not in known]
    if not unknown:
        return
    close = [m for name in unknown for m in difflib.get_close_matches(name, list(known), n=1)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"unknown {'strategy' if len(unknown) == 1 else 'strategies'} "
        + ", ".join(repr(name) for name in unknown),
        hint=f"{hint}choose from: {', '.join(sorted(known))} (or 'all')",
    )


def _check_options(strategies: str, options: dict[str, Any]) -> None:
    """Refuse a misspelt or invalid option up front as well: `name.key` is checked by that
    strategy alone when it runs, so a typo would cost the other strategies' runs before it
    showed in its row, without the hint that names the setting meant. A strategy that cannot
    load (a broken plugin) is left to its row, as `acompare` reports it."""
    from longweave.agents.base import get_strategy, strategy_class
    from longweave.compare import resolve_strategies, split_options

    for name, own in split_options(options, resolve_strategies(strategies)).items():
        try:
            strategy_class(name)
        except Exception:
            continue
        get_strategy(name, **own)


def compare_table(rows: list[CompareRow], *, width: int = 80) -> RenderableType:
    """Answer (truncated), calls, tokens, time and citations per strategy; errors in red.

    Names, counts and times never wrap, so on a terminal too narrow for them and an answer
    beside them (a 60-column split) the answer column would shrink to nothing: there each
    strategy's numbers go on a line under its answer instead."""
    return _CompareTable(rows, width)


_ANSWER_ROOM = 20
"""The fewest columns the answer needs beside the numbers; fewer, and they go under it."""


class _CompareTable:
    """The table `compare_table` describes, laid out for the width it is printed at."""

    def __init__(self, rows: list[CompareRow], width: int) -> None:
        self.cells = [(row.strategy, _answer(row, width), *_numbers(row)) for row in rows]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.cells import cell_len

        heads = ("strategy", "calls", "tokens", "time", "cited")
        rows = [(name, *numbers) for name, _, *numbers in self.cells]
        widths = [max(map(cell_len, column)) for column in zip(heads, *rows, strict=True)]
        fixed = sum(widths) + 3 * 6 + 1  # each of 6 columns: a border and a space either side
        yield self._wide() if fixed + _ANSWER_ROOM <= options.max_width else self._narrow()

    def _wide(self) -> Table:
        from rich.table import Column, Table

        table = Table(Column("strategy", no_wrap=True), Column("answer", ratio=1),
                      Column("calls", no_wrap=True), Column("tokens", no_wrap=True),
                      Column("time", no_wrap=True), Column("cited", no_wrap=True),
                      caption="tokens: prompt+completion; cited: citations")
        for cells in self.cells:
            table.add_row(*cells)
        return table

    def _narrow(self) -> Table:
        from rich.table import Column, Table

        table = Table(Column("strategy", no_wrap=True), Column("answer", overflow="fold"),
                      caption="tokens: prompt+completion")
        for name, answer, calls, tokens, seconds, cited in self.cells:
            table.add_row(name, f"{answer}\n[dim]calls {calls} · tokens {tokens} · {seconds} · "
                                f"cited {cited}[/]")
        return table


def _answer(row: CompareRow, width: int) -> str:
    """The row's answer cut to `width` characters, or its error in red, as console markup."""
    from rich.markup import escape

    if row.ok:
        text = " ".join((row.text or "").split()) or "(empty)"
        return escape(text if len(text) <= width else text[: width - 1] + "…")
    said = row.error or ""
    if not said.startswith(f"{row.error_type}:"):  # a bug's message names its type
        said = f"{row.error_type}: {said}"
    return f"[red]{escape(said)}[/]"


def _numbers(row: CompareRow) -> tuple[str, str, str, str]:
    """Calls (and how many came from the cache), tokens, time and citations of a row."""
    calls = f"{row.usage.calls}"
    if row.usage.cache_hits:
        calls += f" ({row.usage.cache_hits} cached)"
    tokens = f"{row.usage.prompt_tokens:,}+{row.usage.completion_tokens:,}"
    return calls, tokens, f"{row.seconds:.1f}s", str(len(row.citations))


class _CompareProgress:
    """One spinner line per strategy: what it is doing now, then done or failed. Nothing off a
    terminal, where the transient lines would leave only an empty line behind."""

    def __init__(self, console: Console) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress: Progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=console, transient=True, disable=not console.is_interactive,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _CompareProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, strategy: str) -> TaskID:
        if strategy not in self.tasks:
            self.tasks[strategy] = self.progress.add_task(f"[bold]{strategy}[/]", total=None)
        return self.tasks[strategy]

    def __call__(self, event: Event) -> None:
        if event.kind not in ("call", "progress") or not event.role:
            return
        where = ""
        if event.index is not None and event.total:
            where = f" {event.index + 1}/{event.total}"
        self.progress.update(self._task(event.strategy),
                             description=f"[bold]{event.strategy}[/] · {event.role}{where}")

    def done(self, row: CompareRow) -> None:
        state = "[green]done[/]" if row.ok else "[red]failed[/]"
        self.progress.update(self._task(row.strategy), total=1, completed=1,
                             description=f"[bold]{row.strategy}[/] · {state}")
