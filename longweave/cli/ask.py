"""`longweave ask PATH QUESTION`: one answer (progress, its text as it streams, then the answer
with citations and usage); or, with `--estimate`, what the answer will cost before any model
call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from longweave.answer import plural
from longweave.cli.options import (
    Exclude,
    Include,
    Model,
    NoCache,
    PriceIn,
    PriceOut,
    StrategyName,
    Throughput,
    check_estimate_flags,
    parse_options,
)
from longweave.cli.render import print_line

if TYPE_CHECKING:
    from rich.console import Console

    from longweave.answer import Usage
    from longweave.estimate import Estimate


def ask(
    path: Annotated[
        Path, typer.Argument(help="The document (.txt, .md, .html, .pdf; a .jsonl/.json "
                             "conversation) or a folder of them.")
    ],
    question: Annotated[str, typer.Argument(help="The question; '' asks for a summary.")],
    strategy: StrategyName = "chain-of-agents",
    model: Model = "local",
    as_json: Annotated[bool, typer.Option("--json", help="Print the Answer as JSON.")] = False,
    no_cache: NoCache = False,
    option: Annotated[
        list[str] | None, typer.Option("--set", help="Strategy option key=value (repeatable).")
    ] = None,
    include: Include = None,
    exclude: Exclude = None,
    trace: Annotated[Path | None, typer.Option(
        "--trace", help="Append every call (prompt, output, usage) and step to this JSONL file.",
    )] = None,
    estimate: Annotated[bool, typer.Option(
        "--estimate", help="Print the expected calls and tokens (and cost) and exit without "
        "calling the model; with --run, answer too and compare the estimate with the run.",
    )] = False,
    run: Annotated[bool, typer.Option(
        "--run", help="With --estimate: answer as well, then print estimate against actual.",
    )] = False,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    throughput: Throughput = None,
) -> None:
    """Answer QUESTION about the document at PATH."""
    from rich.console import Console

    from longweave.api import ask as run_ask
    from longweave.api import load_source
    from longweave.cli.progress import LiveAnswer
    from longweave.cli.render import print_answer

    if run and not estimate:
        raise typer.BadParameter("--run goes with --estimate", param_hint="--run")
    check_estimate_flags(estimate, price_in, price_out, throughput)
    if trace is not None and not (estimate and not run):  # named up front, as batch does
        from longweave.batch import check_writable

        check_writable(trace, "trace")
    err = Console(stderr=True)
    started = time.perf_counter()
    source = load_source(path, include=include, exclude=exclude)  # a folder: corpus mode
    options = parse_options(option)
    planned, llm = None, model
    if estimate:
        from longweave.cache import ArtifactCache
        from longweave.config import Settings
        from longweave.estimate import estimate as make_estimate
        from longweave.llm import resolve_model

        llm = resolve_model(model)  # lazy: only the tokenizer loads, and the run reuses it

        planned = make_estimate(source, strategy, llm, question,
                                artifacts=ArtifactCache(Settings().cache_dir / "artifacts"),
                                **options)
        if not run:
            if as_json:
                typer.echo(planned.model_dump_json(indent=2))
            else:
                print_estimate(Console(), planned, notes=err, price_in=price_in,
                               price_out=price_out, throughput=throughput)
            return
    try:
        with LiveAnswer(err) as view:  # progress, then the answer's text as it streams
            answer = run_ask(
                source, question, strategy=strategy, model=llm, cache=not no_cache,
                on_event=view, trace=trace, **options,
            )
    except KeyboardInterrupt:
        from longweave.cli.exits import interrupted

        kept = f"the trace so far is in {trace}" if trace is not None and trace.exists() else ""
        raise interrupted(err, kept) from None
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    else:
        print_answer(Console(), answer)
    err.print(f"[dim]{answer.usage.line()} · {time.perf_counter() - started:.1f}s wall[/]")
    if planned is not None:
        print_estimate(err, planned, actual=answer.usage, price_in=price_in,
                       price_out=price_out, throughput=throughput)


def print_estimate(
    console: Console,
    planned: Estimate,
    *,
    notes: Console | None = None,
    actual: Usage | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    throughput: float | None = None,
) -> None:
    """The estimate as a table (beside the actual usage when given), then its assumptions on
    `notes` (default: `console`): commentary goes to stderr where the table is the output."""
    from rich.table import Table

    notes = notes or console

    docs = (f"{plural(planned.documents, 'document')}, "
            f"{plural(planned.questions, 'question')}, "
            if (planned.documents, planned.questions) != (1, 1) else "")
    title = (f"{planned.strategy} on {planned.model}: {docs}{plural(planned.n_chunks, 'chunk')}"
             + (", artifacts cached" if planned.reused else ""))
    rows = planned.rows(actual, price_in=price_in, price_out=price_out, throughput=throughput)
    console.print(f"[bold]{escape(title)}[/]", highlight=False)
    table = Table()
    for n, name in enumerate(rows[0]):  # numbers fold on a narrow terminal, never end in "…"
        table.add_column(name, justify="left" if n == 0 else "right", overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    if actual is not None and actual.cache_hits:
        print_line(notes, f"[dim]{actual.cache_hits} of the actual calls came from the "
                   "completion cache (they cost nothing)[/]")
    for note in planned.notes:
        print_line(notes, f"[dim]· {escape(note)}[/]", highlight=False)
