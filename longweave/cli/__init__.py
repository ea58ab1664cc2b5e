"""The `longweave` command line: a thin typer layer over the library; no logic lives here."""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable

import typer

from longweave.cli import ask as _ask
from longweave.cli import batch as _batch
from longweave.cli import cache as _cache
from longweave.cli import chat as _chat
from longweave.cli import compare as _compare
from longweave.cli import eval as _eval
from longweave.cli import index as _index
from longweave.cli import serve as _serve
from longweave.cli import show as _show
from longweave.cli import strategies as _strategies
from longweave.cli.exits import (
    INTERRUPTED,
    interrupted,
    leave_quietly,
    reader_left,
    stops_cleanly,
)
from longweave.cli.render import labelled, print_line
from longweave.errors import LongweaveError, LongweaveWarning, debugging

app = typer.Typer(
    name="longweave",
    help="Ask questions of documents far longer than a model's context window.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(shown: bool) -> None:
    if shown:
        from longweave import __version__

        typer.echo(f"longweave {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Ask questions of documents far longer than a model's context window."""


def _paragraphs(doc: str) -> str:
    """`doc` with each paragraph on one line: typer keeps the line breaks of every paragraph
    after the first, so a docstring wrapped in the source would show in --help as lines cut
    short wherever the terminal wraps before the source did."""
    return "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(doc).split("\n\n"))


def _command(name: str, function: Callable[..., None]) -> None:
    app.command(name, help=_paragraphs(function.__doc__ or ""))(stops_cleanly(function))


_command("ask", _ask.ask)
_command("chat", _chat.chat)
_command("batch", _batch.batch)
_command("cache", _cache.cache)
_command("compare", _compare.compare)
_command("eval", _eval.eval_command)
_command("index", _index.index)
_command("serve", _serve.serve)
_command("show", _show.show)
_command("strategies", _strategies.strategies)


def _show_warnings() -> None:
    """longweave's own warnings print as one `warning:` line; others keep Python's format."""
    from rich.console import Console

    original = warnings.showwarning
    if getattr(original, "longweave", False):  # installed already (main() run in-process again)
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        if issubclass(category, LongweaveWarning):
            print_line(Console(stderr=True), labelled("warning:", "yellow", str(message)))
        else:
            original(message, category, filename, lineno, file, line)  # type: ignore[arg-type]

    show.longweave = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def main() -> None:
    """Entry point of the console script: errors become one clear message and an exit code."""
    from rich.console import Console
    from rich.text import Text

    _show_warnings()
    try:
        app()
    except SystemExit as exc:  # every run of the typer app ends in one
        if reader_left(exc):
            leave_quietly()
        try:  # output still buffered: a reader gone shows here, not as a traceback at exit
            if sys.stdout is not None:
                sys.stdout.flush()
        except BrokenPipeError:
            leave_quietly()
        raise
    except LongweaveError as exc:
        console = Console(stderr=True)
        print_line(console, labelled("error:", "bold red", exc.message))
        if exc.hint:
            print_line(console, Text(exc.hint, style="dim"))
        sys.exit(1)
    except KeyboardInterrupt:  # outside any command (typer stops one inside with status 130)
        interrupted(Console(stderr=True))
        sys.exit(INTERRUPTED)
    except Exception as exc:  # a bug or an unexpected library failure: one line, not a wall
        if debugging():
            raise
        console = Console(stderr=True)
        print_line(console, labelled("unexpected error:", "bold red",
                                      f"{type(exc).__name__}: {exc}"))
        console.print("[dim]set LONGWEAVE_DEBUG=1 for the traceback, and please report it[/]")
        sys.exit(1)
