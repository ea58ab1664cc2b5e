"""How a command ends when something outside stops it: Ctrl-C, or the reader of its output
leaving (`longweave ... | head -1`). Neither ends in a traceback: Ctrl-C in one line that says
what was kept, a closed pipe in silence; each with the status a shell gives a command killed by
that signal, so scripts can tell them from a failure (1)."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

import typer

from longweave.cli.render import print_line

if TYPE_CHECKING:
    from rich.console import Console

P = ParamSpec("P")
R = TypeVar("R")

INTERRUPTED = 130
"""128 + SIGINT: what a shell reports for a command stopped by Ctrl-C."""
READER_LEFT = 141
"""128 + SIGPIPE: what a shell reports for a command whose output pipe closed (`yes | head -1`
gives it too). Not 0, because the output was cut short, which `set -o pipefail` should be able
to see; not 1, which means a failure; and not by restoring SIGPIPE's default action, which
would also kill the process when an HTTP connection to a model server drops mid-request."""


def interrupted(console: Console, kept: str = "") -> typer.Exit:
    """Say on `console` (stderr) in one line that Ctrl-C stopped the command and what of its
    work is kept; returns the exit to raise (status 130)."""
    from rich.text import Text

    line = Text("interrupted" + (":" if kept else ""), style="yellow")
    if kept:
        line.append(f" {kept}")
    print_line(console, line)
    return typer.Exit(INTERRUPTED)


def stops_cleanly(command: Callable[P, R]) -> Callable[P, R]:
    """`command`, with Ctrl-C ending it in one `interrupted` line and status 130 where the
    command does not say more itself: typer would exit 130 without a word."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            from rich.console import Console

            raise interrupted(Console(stderr=True)) from None

    return run


def reader_left(exc: SystemExit) -> bool:
    """Whether `exc` ends the run because a pipe it wrote to lost its reader: click and rich
    catch that BrokenPipeError themselves and exit 1 while handling it."""
    cause = exc.__context__
    return isinstance(cause, OSError) and cause.errno == errno.EPIPE


def leave_quietly() -> NoReturn:
    """Exit with `READER_LEFT`; stdout goes to the null device first, so that Python's own
    flush at exit does not fail on the closed pipe and print a traceback after all."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a stream without a descriptor
        fd = 1
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    sys.exit(READER_LEFT)
