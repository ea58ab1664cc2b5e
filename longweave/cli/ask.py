"""`longweave ask PATH QUESTION`: one answer, with progress, citations and usage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from longweave.cli.options import parse_options


def ask(
    path: Annotated[
        Path, typer.Argument(help="The document (.txt, .md, .html, .pdf) or a folder of them.")
    ],
    question: Annotated[str, typer.Argument(help="The question; '' asks for a summary.")],
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Strategy name.")] = (
        "chain-of-agents"
    ),
    model: Annotated[
        str, typer.Option("--model", "-m", help="'local', 'hf:<id>' or 'openai:<model>'.")
    ] = "local",
    as_json: Annotated[bool, typer.Option("--json", help="Print the Answer as JSON.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the completion cache.")] = (
        False
    ),
    option: Annotated[
        list[str] | None, typer.Option("--set", help="Strategy option key=value (repeatable).")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Folder: file glob to read (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Folder: file glob to skip (repeatable).")
    ] = None,
) -> None:
    """Answer QUESTION about the document at PATH."""
    from rich.console import Console

    from longweave.api import ask as run_ask
    from longweave.api import load_source
    from longweave.cli.progress import ProgressView
    from longweave.cli.render import print_answer

    err = Console(stderr=True)
    started = time.perf_counter()
    source = load_source(path, include=include, exclude=exclude)  # a folder: corpus mode
    with ProgressView(err) as view:
        answer = run_ask(
            source, question, strategy=strategy, model=model, cache=not no_cache,
            on_event=view, **parse_options(option),
        )
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    else:
        print_answer(Console(), answer)
    err.print(f"[dim]{answer.usage.line()} · {time.perf_counter() - started:.1f}s wall[/]")
