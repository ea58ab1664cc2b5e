"""`longweave chat PATH`: an interactive conversation over a document, with slash commands.

`ChatController` holds the logic (a line in, an `Output` out) and knows nothing of terminals, so
tests drive it directly. `chat` is the terminal loop around it: prompt_toolkit for line editing
and history, each answer a task that Ctrl-C cancels, progress while the strategy works and the
answer's tokens live as they stream (when the backend streams), then the answer with citations.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from longweave.answer import plural
from longweave.cli.options import Exclude, Include, NoCache, parse_options
from longweave.cli.progress import LiveAnswer
from longweave.cli.render import labelled, open_in_browser
from longweave.errors import ConfigError, LongweaveError, LongweaveWarning, debugging
from longweave.events import EventSink, ignore

if TYPE_CHECKING:
    from longweave.answer import Answer, Citation
    from longweave.session import Session

CONTEXT_CHARS = 160
"""Characters of the document shown on each side of a cited span by /sources."""
SPAN_CHARS = 240
"""A cited span longer than twice this shows its head and tail."""

HELP = {
    "/strategy NAME [key=value ...]": "answer with another strategy (no NAME: show the current)",
    "/model NAME": "answer with another model: local, hf:<id>, openai:<model>",
    "/sources": "the cited spans of the last answer, in their context",
    "/trace": "the steps the last answer took; `/trace open [FILE]` draws its path through "
              "the graph or tree (graph-reader, mem-walker) as an HTML page",
    "/cost": "usage so far, per turn and in total",
    "/save FILE": "write the conversation to FILE (.md transcript or .json record)",
    "/help": "this list",
    "/quit": "leave (so does Ctrl-D); Ctrl-C cancels an answer",
}
COMMANDS = sorted(key.split()[0] for key in HELP)

Printable = RenderableType | Callable[[Console], None]


@dataclass
class Output:
    """What one line produced: things to print, the answer (for a question), and whether to
    leave."""

    items: list[Printable] = field(default_factory=list)
    answer: Answer | None = None
    quit: bool = False

    def render(self, console: Console) -> None:
        for item in self.items:
            if callable(item):
                item(console)
            else:
                console.print(item)

    def text(self, width: int = 100) -> str:
        """The output as plain text, as a terminal `width` columns wide would show it."""
        console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
        self.render(console)
        return console.export_text()


def _error(exc: LongweaveError) -> Output:
    lines = Text.assemble(("error: ", "bold red"), exc.message)
    if exc.hint:
        lines.append(f"\n{exc.hint}", style="dim")
    return Output([lines])


class ChatController:
    """The chat without a terminal: `await handle(line)` answers a question or runs a command."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def is_command(line: str) -> bool:
        return line.strip().startswith("/")

    async def handle(self, line: str, on_event: EventSink = ignore) -> Output:
        """A question is answered through the session; a slash command runs."""
        line = line.strip()
        if not line:
            return Output()
        if self.is_command(line):
            name, *args = line.split()
            if name.lower() == "/trace" and args[:1] == ["open"]:
                path = line[len(name):].strip()[len("open"):].strip()  # spaces and all
                return await self._trace_open([path] if path else [])
            return self.command(line)
        try:
            answer = await self.session.aask(line, on_event=on_event)
        except LongweaveError as exc:
            return _error(exc)
        return Output(answer_items(answer), answer=answer)

    def command(self, line: str) -> Output:
        name, *args = line.strip().split()
        if name.lower() == "/save":  # a file name may hold spaces, runs of them included
            rest = line.strip()[len(name):].strip()
            args = [rest] if rest else []
        handlers: dict[str, Callable[[list[str]], Output]] = {
            "/strategy": self._strategy, "/model": self._model, "/sources": self._sources,
            "/trace": self._trace, "/cost": self._cost, "/save": self._save,
            "/help": self._help, "/quit": self._quit, "/exit": self._quit,
        }
        handler = handlers.get(name.lower())
        if handler is None:
            return Output([Text(f"unknown command {name}: /help lists them", style="red")])
        try:
            return handler(args)
        except LongweaveError as exc:
            return _error(exc)

    # -- commands ----------------------------------------------------------------------------

    def _strategy(self, args: list[str]) -> Output:
        if args:
            options = parse_options(args[1:], form=f"/strategy {args[0]} key=value ...")
            self.session.set_strategy(args[0], **options)
        from longweave.agents.base import available

        options = ", ".join(f"{k}={v}" for k, v in self.session.options.items())
        line = Text.assemble("strategy: ", (self.session.strategy.name, "bold"),
                             f" ({options})" if options else "")
        if args:
            return Output([line])
        return Output([line, Text("available: " + ", ".join(sorted(available())), style="dim")])

    def _model(self, args: list[str]) -> Output:
        if len(args) > 1:
            raise ConfigError("/model takes one model string", hint="e.g. /model openai:gpt-4o")
        if args:
            self.session.set_model(args[0])
        return Output([Text.assemble("model: ", (self.session.model, "bold"))])

    def _last(self) -> Answer | None:
        return self.session.history[-1].answer if self.session.history else None

    def _sources(self, args: list[str]) -> Output:
        answer = self._last()
        if answer is None:
            return Output([Text("nothing asked yet", style="dim")])
        if not answer.citations:
            return Output([Text("the last answer cites no spans", style="dim")])
        from longweave.cli.render import joined

        items: list[Printable] = []
        for n, cite in enumerate(joined(answer.citations), 1):  # numbered as the answer shows them
            where = f"{_file(self.session.document, cite)}, chars {cite.start}-{cite.end}"
            if cite.chunk_index is not None:
                where += f", chunk {cite.chunk_index + 1}"
            items += [Text.assemble((f"[{n}] ", "bold"), (where, "cyan")),
                      in_context(self.session.document, cite), Text("")]
        return Output(items)

    def _trace(self, args: list[str]) -> Output:
        answer = self._last()
        if answer is None:
            return Output([Text("nothing asked yet", style="dim")])
        table = Table("#", "role", "index", "output", "detail",
                      title=f"{len(answer.steps)} steps of the last answer", title_justify="left")
        for n, step in enumerate(answer.steps, 1):
            detail = ", ".join(f"{k}={v}" for k, v in step.detail.items())
            table.add_row(str(n), step.role, "" if step.index is None else str(step.index),
                          _clip(_squash(step.output), 160), _clip(detail, 80))
        return Output([table])

    async def _trace_open(self, args: list[str]) -> Output:
        """Draw the graph or tree the last answer walked, its path marked, as an HTML page."""
        from longweave.visualize import arender_answer

        answer = self._last()
        if answer is None:
            return Output([Text("nothing asked yet", style="dim")])
        session = self.session
        # The session's strategy picks the artifact only if it is the one that answered.
        strategy = session.strategy if session.strategy.name == answer.strategy else None
        target = (Path(args[0]) if args else session.settings.cache_dir / "views"
                  / f"{session.document.id[:16]}-turn{len(session.history)}.html")
        try:
            await arender_answer(answer, session.document, session.llm, session.artifacts,
                                 target, strategy=strategy)
        except LongweaveError as exc:
            return _error(exc)
        shown = Text.assemble("the path of the last answer: ", (str(target), "cyan"))
        if not args and os.environ.get("LONGWEAVE_NO_BROWSER") is None:
            if not open_in_browser(target):
                shown.append(" (no browser to open it here: open the file yourself)", "dim")
        return Output([shown])

    def _cost(self, args: list[str]) -> Output:
        turns = self.session.history
        if not turns:
            return Output([Text("nothing asked yet", style="dim")])
        total = self.session.usage
        # Columns that would only hold zeros (or one strategy) are left out, to fit 80 columns.
        columns: dict[str, Callable[[Any], str]] = {
            "calls": lambda u: str(u.calls),
            "prompt": lambda u: f"{u.prompt_tokens:,}",
            "completion": lambda u: f"{u.completion_tokens:,}",
        }
        if total.cached_tokens:
            columns["prefix-cached"] = lambda u: f"{u.cached_tokens:,}"
        if total.cache_hits:
            columns["from cache"] = lambda u: str(u.cache_hits)
        columns["seconds"] = lambda u: f"{u.seconds:.1f}"
        strategies = len({t.answer.strategy for t in turns}) > 1
        table = Table("#", "question", *(["strategy"] if strategies else []), *columns,
                      title="usage (tokens)", title_justify="left", box=box.SIMPLE_HEAD)
        for column in table.columns[2:]:  # numbers never wrap; the question gives way
            column.no_wrap = True
        for n, turn in enumerate(turns, 1):
            usage = turn.answer.usage
            table.add_row(str(n), turn.question, *([turn.answer.strategy] if strategies else []),
                          *(cell(usage) for cell in columns.values()))
        table.add_section()
        table.add_row("", "total", *([""] if strategies else []),
                      *(cell(total) for cell in columns.values()), style="bold")
        return Output([table])

    def _save(self, args: list[str]) -> Output:
        if not args:
            raise ConfigError("/save needs a file name", hint="e.g. /save chat.md or chat.json")
        path = self.session.save(args[0])
        return Output([Text(f"saved {plural(len(self.session.history), 'turn')} to {path}")])

    def _help(self, args: list[str]) -> Output:
        table = Table.grid(padding=(0, 2))
        for usage, what in HELP.items():
            table.add_row(Text(usage, style="bold"), what)
        return Output([table, Text("Anything else is a question about the document; follow-ups "
                                   "may refer to earlier answers.", style="dim")])

    def _quit(self, args: list[str]) -> Output:
        return Output(quit=True)


def answer_items(answer: Answer) -> list[Printable]:
    from longweave.cli.render import print_answer

    return [lambda console: print_answer(console, answer, all_hint="/sources lists them all"),
            Text(answer.usage.line(), style="dim")]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _file(document: Any, cite: Citation) -> str:
    """The cited file, relative to the folder in corpus mode."""
    root, source = document.source or "", cite.source or document.source
    if not source:
        return document.name
    if source == root:
        return Path(source).name
    return source[len(root):].lstrip("/\\") if root and source.startswith(root) else source


def locate(document: Any, cite: Citation) -> int | None:
    """Where a citation's text starts in `document.text` (corpus citations count from their
    file), or None when the text is not found there."""
    from longweave.retrieval.corpus import corpus_parts

    offsets = [0] + [p.start for p in corpus_parts(document) or ()
                     if p.doc_id == cite.doc_id or p.source == cite.source]
    for offset in offsets:
        start = offset + cite.start
        if document.text[start : start + len(cite.text)] == cite.text:
            return start
    found = document.text.find(cite.text)
    return found if found >= 0 else None


def in_context(document: Any, cite: Citation) -> Text:
    """The cited span highlighted between a little of the text around it."""
    span = _squash(cite.text).strip()
    if len(span) > 2 * SPAN_CHARS:
        span = f"{span[:SPAN_CHARS]} … {span[-SPAN_CHARS:]}"
    start = locate(document, cite)
    if start is None:
        return Text(span, style="bold yellow")
    before = _squash(document.text[max(0, start - CONTEXT_CHARS) : start])
    after = _squash(document.text[start + len(cite.text) : start + len(cite.text) + CONTEXT_CHARS])
    head = "…" if start > CONTEXT_CHARS else ""
    tail = "…" if start + len(cite.text) + CONTEXT_CHARS < len(document.text) else ""
    return Text.assemble((head + before.lstrip(), "dim"), (span, "bold yellow"),
                         (after.rstrip() + tail, "dim"))


@contextmanager
def _ctrl_c_cancels(task: asyncio.Task[Any]) -> Iterator[None]:
    """While an answer runs, Ctrl-C (SIGINT) cancels its task instead of leaving the chat."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)


class _Lines:
    """Lines from the terminal (prompt_toolkit: editing, history) or from a pipe."""

    def __init__(self, history: Path) -> None:
        self.prompt: Any = None
        if sys.stdin.isatty() and sys.stdout.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.completion import WordCompleter
            from prompt_toolkit.history import FileHistory, History, InMemoryHistory

            kept: History
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                kept = FileHistory(str(history))
            except OSError as exc:  # a cache folder that cannot be written: this run only
                warnings.warn(f"the line history is not kept ({exc.strerror or exc}: "
                              f"{history.parent})", LongweaveWarning, 2)
                kept = InMemoryHistory()
            completer = WordCompleter([*COMMANDS, "/exit"], pattern=re.compile(r"^/\w*"))
            self.prompt = PromptSession(history=kept, completer=completer)

    async def read(self) -> str:
        """The next line; KeyboardInterrupt on Ctrl-C at the prompt, EOFError on Ctrl-D."""
        if self.prompt is not None:
            return await self.prompt.prompt_async("› ")
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            raise EOFError
        return line


async def run(controller: ChatController, console: Console, lines: _Lines) -> None:
    """The loop: read a line, run it (a question as a cancellable task), print what it gave."""
    while True:
        try:
            line = await lines.read()
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt drops the line, as a shell does
        except EOFError:
            break
        if controller.is_command(line) or not line.strip():
            view = None  # a command prints when it is done (/trace open draws a page)
        else:
            view = LiveAnswer(console)
        task = asyncio.ensure_future(controller.handle(line, on_event=view or ignore))
        with _ctrl_c_cancels(task), view or nullcontext():
            try:
                out = await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                out = Output([Text.assemble(("cancelled", "yellow"),
                                            (" (nothing of it was kept)", "dim"))])
            except Exception as exc:  # a bug or a library failure: say so, keep the chat
                if debugging():
                    raise
                out = Output([Text(f"unexpected error: {type(exc).__name__}: {exc}",
                                   style="bold red")])
        out.render(console)  # after the live display is gone
        if out.quit:
            break


def chat(
    path: Annotated[Path, typer.Argument(
        help="The document (.txt, .md, .html, .pdf; a .jsonl/.json conversation) or a folder.")],
    strategy: Annotated[
        str | None, typer.Option("--strategy", "-s", help="Strategy (default: the saved one).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="'local', 'hf:<id>' or 'openai:<model>'.")
    ] = None,
    new: Annotated[bool, typer.Option(
        "--new", help="Start over instead of resuming (the earlier conversation is kept as "
        "<id>.previous.json).")] = False,
    no_cache: NoCache = False,
    option: Annotated[
        list[str] | None, typer.Option("--set", help="Strategy option key=value (repeatable).")
    ] = None,
    include: Include = None,
    exclude: Exclude = None,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Append every call (prompt, output, usage) and step of "
                     "the session to this JSONL file."),
    ] = None,
) -> None:
    """Talk with the document at PATH: questions, follow-ups, and /help for the commands."""
    from longweave.session import Session
    from longweave.session_store import free_name

    console = Console()
    if trace is not None:  # before the first question, not at it
        from longweave.batch import check_writable

        check_writable(trace, "trace")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session = Session.open(path, strategy=strategy, model=model, resume=not new,
                                   cache=not no_cache, include=include, exclude=exclude,
                                   trace=trace, **parse_options(option))
    finally:  # shown even when the session cannot open: they may say why
        notes = Console(stderr=True)  # stdout is the conversation, as with ask's answers
        for warning in caught:
            notes.print(labelled("warning:", "yellow", str(warning.message)))
    if new and session.path.is_file():  # starting over keeps the earlier conversation
        kept = free_name(session.path, "previous")  # a second --new keeps the first's
        try:
            os.replace(session.path, kept)
            console.print(f"[dim]starting over; the earlier conversation is kept in {kept}[/]",
                          highlight=False)
        except OSError:
            pass  # it is overwritten at the first answer, as before
    doc = session.document
    console.print(Text.assemble(("longweave chat", "bold"), f" · {doc.name} ",
                                (f"({len(doc.text):,} characters)", "dim"),
                                f" · {session.strategy.name} · {session.model}"))
    if session.history:
        console.print(f"[dim]resumed {plural(len(session.history), 'turn')} (--new starts over)[/]")
    console.print("[dim]/help lists the commands · Ctrl-C cancels an answer · Ctrl-D leaves[/]")
    lines = _Lines(session.settings.cache_dir / "chat_history")
    asyncio.run(run(ChatController(session), console, lines))
