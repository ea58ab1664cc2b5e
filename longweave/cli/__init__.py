"""The `longweave` command line: a thin typer layer over the library; no logic lives here."""

from __future__ import annotations

import inspect
import sys
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

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

_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}
_METAVARS = {"--set": "KEY=VALUE", "--include": "GLOB", "--exclude": "GLOB"}
"""Options whose values say more than their type (TEXT)."""


def _metavar(annotation: Any) -> str:
    """click's name for a value of `annotation`: TEXT, PATH, INTEGER, FLOAT (one item of a
    list: the help says when an option repeats)."""
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        return _metavar(annotation)
    return _NAMES.get(annotation, getattr(annotation, "__name__", "VALUE").upper())


class _ClassicHelp:
    """--help in click's terms: a value's metavar (TEXT, PATH, KEY=VALUE), none for a flag, and
    `PATH QUESTION` in the usage line.

    typer 0.29 labels every parameter with its Python type instead: `--json <bool>` (as if the
    flag took a value), `--set <list[str]>`, `paths... <list[Path]>`, and `{path} {question}`
    in the usage line. An option's metavar replaces its label in every typer version; an
    argument's label has no such setting, so in 0.29 its `display_type_rich` is replaced on the
    instance (earlier versions label arguments `<path>` by a rule of their own).
    """

    params: list[Any]
    callback: Callable[..., Any] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hints = typing.get_type_hints(inspect.unwrap(self.callback)) if self.callback else {}
        for param in self.params:
            if param.metavar is not None:  # the command chose its own
                continue
            label = "" if getattr(param, "is_flag", False) else next(
                (_METAVARS[o] for o in param.opts if o in _METAVARS),
                _metavar(hints.get(param.name, str)))
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx, label=label: label
            else:
                param.metavar = label

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""  # a flag
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            if isinstance(param, TyperArgument):
                name = param.name.upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        more = getattr(self, "subcommand_metavar", None)  # a group's COMMAND [ARGS]...
        return pieces + ([more] if more else [])


class _Command(_ClassicHelp, TyperCommand):
    """A command whose --help uses click's labels."""


class _Group(_ClassicHelp, TyperGroup):
    """The command group, its --help in click's labels too."""


app = typer.Typer(
    name="longweave",
    help="Ask questions of documents far longer than a model's context window.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
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
    app.command(name, help=_paragraphs(function.__doc__ or ""), cls=_Command)(
        stops_cleanly(function))


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
