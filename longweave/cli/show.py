"""`longweave show PATH --graph | --tree`: draw what GraphReader or MemWalker built for a
document, as a self-contained HTML page (or an SVG, PNG or PDF by the output's suffix)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from longweave.cli.options import Exclude, Include, parse_options
from longweave.cli.render import open_in_browser
from longweave.errors import ConfigError

if TYPE_CHECKING:
    from longweave.answer import Answer


def show(
    path: Annotated[Path, typer.Argument(help="The document (or folder) the structure is of.")],
    graph: Annotated[bool, typer.Option("--graph", help="GraphReader's key-element graph.")] = (
        False
    ),
    tree: Annotated[bool, typer.Option("--tree", help="MemWalker's summary tree.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output file: .html (default <name>.graph.html or <name>.tree.html), "
        ".svg, or .png/.pdf (needs matplotlib).")] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", envvar="LONGWEAVE_MODEL",
                          help="The model the structure was built with.")
    ] = "local",
    option: Annotated[list[str] | None, typer.Option(
        "--set", help="Strategy option key=value, as given to `ask` (repeatable).")] = None,
    build: Annotated[bool, typer.Option(
        "--build", help="Build the structure if it is not built yet (model calls).")] = False,
    answer: Annotated[Path | None, typer.Option(
        "--answer", help="An Answer as JSON (`longweave ask --json`): highlight its path.",
    )] = None,
    highlight: Annotated[list[str] | None, typer.Option(
        "--highlight", help="A node to highlight: a key element, or a tree node id (repeatable).",
    )] = None,
    max_nodes: Annotated[int, typer.Option(
        "--max-nodes", help="Graph: draw the nodes with the most facts, at most this many.",
        min=1)] = 300,
    open_it: Annotated[bool, typer.Option("--open", help="Open the result in a browser.")] = False,
    include: Include = None,
    exclude: Exclude = None,
) -> None:
    """Draw the graph (--graph) or the tree (--tree) built for the document at PATH."""
    from rich.console import Console

    from longweave.api import load_source
    from longweave.cli.progress import ProgressView
    from longweave.visualize import STRUCTURES, find_structure, render

    err = Console(stderr=True, highlight=False)
    given = _read_answer(answer) if answer else None
    kind = _kind(graph, tree, given)
    if given is not None and STRUCTURES.get(given.strategy) != kind:
        raise ConfigError(f"the answer in {answer} is a {given.strategy} answer, with no {kind}",
                          hint="pass --graph for graph-reader answers, --tree for mem-walker")
    options = parse_options(option)
    target = out or Path(f"{path.stem or 'document'}.{kind}.html")
    _check_out(target)  # before the document is read and --build calls the model
    document = load_source(path, include=include, exclude=exclude)  # a folder: corpus mode
    with ProgressView(err) as view:
        structure = find_structure(document, kind, model=model, build=build, on_event=view,
                                   include=include, exclude=exclude, **options)
    marks: list[object] = []
    if highlight:
        marks = [int(h) if kind == "tree" and h.isdigit() else h for h in highlight]
        if kind == "graph":
            from longweave.graphs.store import normalize_key

            marks = [normalize_key(str(h)) for h in marks]  # as GraphReader names its nodes
    text = document.text if kind == "tree" else None
    extra = {"max_nodes": max_nodes} if kind == "graph" else {}
    render(structure, target, highlight=given if given is not None else marks or None, text=text,
           **extra)
    err.print(f"wrote {escape(str(target))} ({escape(_describe(structure))})")
    if open_it and not open_in_browser(target):
        err.print("no browser to open it in here: open the file yourself", style="dim")


def _check_out(target: Path) -> None:
    """Refuse an output that could not be written (a format unknown or without matplotlib, a
    folder in the way, no permission), as `ask`, `batch` and `eval` refuse theirs: found only
    at the end, it would cost a --build its model calls. `page.write` writes wherever this
    passes: an existing page in place when no new file can be made beside it."""
    from longweave.batch import check_writable
    from longweave.visualize.page import check_output

    check_output(target)
    check_writable(target.expanduser(), "drawing")


def _read_answer(path: Path) -> Answer:
    """The Answer that `ask --json` wrote to `path`; a `DocumentError` that says what is wrong
    when the file is missing, empty (a failed `ask --json > answer.json`) or something else."""
    from pydantic import ValidationError

    from longweave.answer import Answer
    from longweave.errors import DocumentError

    hint = "write one with `longweave ask PATH QUESTION --json > answer.json`"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DocumentError(path, f"cannot be read ({why})", hint=hint) from None
    if not text.strip():
        raise DocumentError(path, "is empty (did the ask that wrote it fail?)", hint=hint)
    try:
        return Answer.model_validate_json(text)
    except ValidationError as exc:
        first = (str(exc).splitlines() or ["not an answer"])[0]
        raise DocumentError(path, f"is not an Answer as `ask --json` writes it ({first})",
                            hint=hint) from None


def _kind(graph: bool, tree: bool, answer: object) -> str:
    from longweave.visualize import STRUCTURES

    if graph and tree:
        raise ConfigError("choose one of --graph and --tree", hint="run `show` once for each")
    if graph or tree:
        return "graph" if graph else "tree"
    strategy = getattr(answer, "strategy", None)
    if strategy in STRUCTURES:
        return STRUCTURES[strategy]
    raise ConfigError("say what to show: --graph (graph-reader) or --tree (mem-walker)",
                      hint="e.g. longweave show report.md --graph")


def _describe(structure: object) -> str:
    from longweave.memory.summary_tree import SummaryTree

    if isinstance(structure, SummaryTree):
        return f"a tree of {len(structure.nodes)} nodes, depth {structure.depth}"
    g = structure.graph  # type: ignore[attr-defined]
    return (f"a graph of {g.number_of_nodes()} key elements, {g.number_of_edges()} edges, "
            f"{len(structure.facts)} facts")  # type: ignore[attr-defined]
