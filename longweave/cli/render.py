"""How answers look in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel

from longweave.answer import Answer


def print_answer(console: Console, answer: Answer, *, context: int = 80) -> None:
    """The answer in a panel, then each citation as a short excerpt with its character span."""
    console.print(Panel(answer.text or "[dim](no answer)[/]", title=answer.strategy, expand=False))
    for n, cite in enumerate(answer.citations, 1):
        excerpt = " ".join(cite.text.split())
        if len(excerpt) > 2 * context:
            excerpt = f"{excerpt[:context]} … {excerpt[-context:]}"
        where = f"chars {cite.start}-{cite.end}"
        if cite.source:
            where = f"{cite.source}, {where}"
        if cite.chunk_index is not None:
            where += f", chunk {cite.chunk_index + 1}"
        console.print(f"[bold][{n}][/] [dim]{where}[/] {excerpt}", highlight=False)
    if answer.flags:
        console.print(f"[dim]flags: {', '.join(answer.flags)}[/]")
