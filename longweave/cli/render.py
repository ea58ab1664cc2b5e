"""How answers look in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from longweave.answer import Answer


def labelled(label: str, style: str, message: str) -> Text:
    """`label message` with the label styled and the message shown as it is: brackets in a
    message (`[c1]`, a validator's `[type=missing]`) are text, not console markup."""
    return Text.assemble((label, style), " ", message)


def print_answer(console: Console, answer: Answer, *, context: int = 80) -> None:
    """The answer in a panel, then each citation as a short excerpt with its character span.

    Model output and document text are printed as plain text, never read as console markup."""
    body = Text(answer.text) if answer.text else Text("(no answer)", style="dim")
    console.print(Panel(body, title=Text(answer.strategy), expand=False))
    for n, cite in enumerate(answer.citations, 1):
        excerpt = " ".join(cite.text.split())
        if len(excerpt) > 2 * context:
            excerpt = f"{excerpt[:context]} … {excerpt[-context:]}"
        where = f"chars {cite.start}-{cite.end}"
        if cite.source:
            where = f"{cite.source}, {where}"
        if cite.chunk_index is not None:
            where += f", chunk {cite.chunk_index + 1}"
        console.print(Text.assemble((f"[{n}]", "bold"), " ", (where, "dim"), " ", excerpt))
    if answer.flags:
        console.print(f"[dim]flags: {', '.join(answer.flags)}[/]")
