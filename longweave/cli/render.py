"""How answers look in the terminal."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from longweave.answer import Answer, Citation, plural


def open_in_browser(page: Path) -> bool:
    """Open a written page in the desktop's browser; False where there is none to open it in.

    On Linux without a display, `webbrowser` falls back to a console browser (lynx, w3m) that
    would take over the terminal, so nothing is opened there and the caller prints the path.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import webbrowser

    try:
        return bool(webbrowser.open(page.resolve().as_uri()))
    except webbrowser.Error:
        return False


def print_table(console: Console, table: Table) -> None:
    """A table at its natural width off a terminal (a log file, a pipe), where rich's default
    80 columns would fold its names a letter per line. On a terminal (or with COLUMNS), the
    table where its natural width fits, its rows stacked (`print_stacked`) where not: rich
    meets a narrower width by shrinking its widest wrapping column first, which splits a word
    there even where another column could wrap at a space, and past that it breaks
    "mem-walker" into letters, drops it altogether, or cuts the numbers on the right."""
    natural = console.measure(table, options=console.options.update_width(100_000)).maximum
    if console.is_terminal or os.environ.get("COLUMNS"):
        if natural <= console.width:
            console.print(table)
        else:
            print_stacked(console, table)
        return
    width = console.width
    console.width = max(width, natural)  # print's own width= is capped at the console's
    try:
        console.print(table)
    finally:
        console.width = width


def print_stacked(console: Console, table: Table) -> None:
    """A table's rows one block each, for a terminal narrower than the table: a bold heading
    that joins the row's names (its leading left-aligned text columns) with " · ", then one
    `label  value` line per other column, so no name breaks and no number is cut. Empty cells
    are left out: a metric that does not apply to the row."""
    columns = [list(column.cells) for column in table.columns]
    names = 0
    while (names < len(columns) and table.columns[names].justify == "left"
           and all(isinstance(cell, str | Text) for cell in columns[names])):
        names += 1
    if table.title:
        console.print(table.title, style="table.title", highlight=False)
    for row in range(table.row_count):
        heading = [_text(console, cells[row]) for cells in columns[:names]]
        console.print()
        if names:
            console.print(Text(" · ").join(h for h in heading if h), style="bold")
        values = Table.grid(padding=(0, 2))
        values.add_column(style="dim", no_wrap=True)
        values.add_column()
        for column, cells in zip(table.columns[names:], columns[names:], strict=True):
            cell = cells[row]
            if isinstance(cell, str | Text):  # numbers stay aligned as in their column
                cell = _text(console, cell).copy()
                cell.justify = column.justify
            if cell:
                values.add_row(column.header, cell)
        console.print(Padding(values, (0, 0, 0, 2), expand=False))
    if table.caption:
        console.print(table.caption, style="table.caption", highlight=False)


def _text(console: Console, cell: str | Text) -> Text:
    return cell if isinstance(cell, Text) else console.render_str(cell, highlight=False)


def print_line(console: Console, line: object, **options: object) -> None:
    """One message line (an error, its hint, a warning, a note). Off a terminal it is not
    wrapped at rich's 80 columns, so that it stays one line that a log keeps and a script can
    grep; a terminal wraps it at words, as rich does there."""
    console.print(line, soft_wrap=not console.is_terminal, **options)  # type: ignore[arg-type]


def labelled(label: str, style: str, message: str) -> Text:
    """`label message` with the label styled and the message shown as it is: brackets in a
    message (`[c1]`, a validator's `[type=missing]`) are text, not console markup."""
    return Text.assemble((label, style), " ", message)


def print_answer(
    console: Console, answer: Answer, *, context: int = 80, shown: int = 10,
    all_hint: str = "--json prints them all",
) -> None:
    """The answer in a panel, then its citations as short excerpts with their character spans.

    Spans that touch (consecutive sentences, say) print as one. Of more than `shown` spans, the
    `shown` that share the most words with the answer print (in document order, numbered as in
    the full list), and a line counts the rest and names where to see them (`all_hint`). Model
    output and document text are printed as plain text, never read as console markup."""
    body = Text(answer.text) if answer.text else Text("(no answer)", style="dim")
    console.print(Panel(body, title=Text(answer.strategy), expand=False))
    spans = joined(answer.citations)
    picked = range(len(spans)) if len(spans) <= shown else closest(spans, answer.text, shown)
    for n, cite in ((i + 1, spans[i]) for i in picked):
        excerpt = " ".join(cite.text.split())
        if len(excerpt) > 2 * context:
            excerpt = f"{excerpt[:context]} … {excerpt[-context:]}"
        where = f"chars {cite.start}-{cite.end}"
        if cite.source:
            where = f"{cite.source}, {where}"
        if cite.chunk_index is not None:
            where += f", chunk {cite.chunk_index + 1}"
        console.print(Text.assemble((f"[{n}]", "bold"), " ", (where, "dim"), " ", excerpt))
    if len(spans) > shown:
        rest = len(spans) - shown
        console.print(Text(f"… {plural(rest, 'more span')}, sharing fewer words with the answer "
                           f"({all_hint})", style="dim"))
    if answer.flags:
        console.print(f"[dim]flags: {', '.join(answer.flags)}[/]")


def joined(citations: list[Citation]) -> list[Citation]:
    """`citations` in order, each run of spans of one document that touch or overlap joined into
    one (still `text == document.text[start:end]`): for display, where forty consecutive
    sentences read better as a few passages."""
    out: list[Citation] = []
    for cite in citations:
        last = out[-1] if out else None
        if (last is None or last.doc_id != cite.doc_id or last.source != cite.source
                or not last.start <= cite.start <= last.end):
            out.append(cite)
        elif cite.end > last.end:
            out[-1] = last.model_copy(update={
                "end": cite.end, "text": last.text[: cite.start - last.start] + cite.text,
                "chunk_index": last.chunk_index if last.chunk_index == cite.chunk_index else None,
            })
    return out


def closest(spans: list[Citation], answer: str, n: int) -> list[int]:
    """Indexes of the `n` spans that best share the answer's words (numbers, and words of 3
    letters or more), each word weighted by how few spans hold it, so that "the" counts for
    little and a name for much; earlier first on ties, returned in document order."""
    def words(text: str) -> set[str]:
        return set(re.findall(r"\d+|\w{3,}", text.lower()))

    wanted = words(answer)
    held = [words(span.text) & wanted for span in spans]
    spread = {w: sum(w in h for h in held) for w in wanted}

    def score(i: int) -> float:
        return sum(1 / spread[w] for w in held[i])

    return sorted(sorted(range(len(spans)), key=lambda i: (-score(i), i))[:n])
