"""The `longweave` command line: a thin typer layer over the library; no logic lives here."""

from __future__ import annotations

import sys
import warnings

import typer

from longweave.cli import ask as _ask
from longweave.cli import batch as _batch
from longweave.cli import chat as _chat
from longweave.cli import compare as _compare
from longweave.cli import eval as _eval
from longweave.cli import index as _index
from longweave.cli import serve as _serve
from longweave.cli import show as _show
from longweave.cli import strategies as _strategies
from longweave.cli.render import labelled
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


app.command("ask")(_ask.ask)
app.command("chat")(_chat.chat)
app.command("batch")(_batch.batch)
app.command("compare")(_compare.compare)
app.command("eval")(_eval.eval_command)
app.command("index")(_index.index)
app.command("serve")(_serve.serve)
app.command("show")(_show.show)
app.command("strategies")(_strategies.strategies)


def _show_warnings() -> None:
    """longweave's own warnings print as one `warning:` line; others keep Python's format."""
    from rich.console import Console

    original = warnings.showwarning
    if getattr(original, "longweave", False):  # installed already (main() run in-process again)
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        if issubclass(category, LongweaveWarning):
            Console(stderr=True).print(labelled("warning:", "yellow", str(message)))
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
    except LongweaveError as exc:
        console = Console(stderr=True)
        console.print(labelled("error:", "bold red", exc.message))
        if exc.hint:
            console.print(Text(exc.hint, style="dim"))
        sys.exit(1)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # a bug or an unexpected library failure: one line, not a wall
        if debugging():
            raise
        console = Console(stderr=True)
        console.print(labelled("unexpected error:", "bold red", f"{type(exc).__name__}: {exc}"))
        console.print("[dim]set LONGWEAVE_DEBUG=1 for the traceback, and please report it[/]")
        sys.exit(1)
