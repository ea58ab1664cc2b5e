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
    if answer and highlight:  # the page marks one path: the answer's, or the nodes named
        raise ConfigError("--answer and --highlight each choose what the page marks: pass one",
                          hint="--answer marks the path the answer took; --highlight marks "
                               "the nodes you name")
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
    # Checked once the structure is found: a --build above is cached, so a rerun with the
    # right --highlight calls no model.
    marks = _marks(highlight or [], structure)
    text = document.text if kind == "tree" else None
    extra = {"max_nodes": max_nodes} if kind == "graph" else {}
    render(structure, target, highlight=given or marks or None, text=text, **extra)
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


def _marks(highlight: list[str], structure: object) -> list[object]:
    """The nodes `--highlight` names: tree node ids, or graph key elements as GraphReader
    names them; ConfigError naming any the structure does not have, and what it does have."""
    from longweave.memory.summary_tree import SummaryTree

    if isinstance(structure, SummaryTree):
        last = len(structure.nodes) - 1
        unknown = [h for h in highlight if not (h.isdecimal() and int(h) <= last)]
        if unknown:
            raise ConfigError(f"--highlight {', '.join(unknown)}: no such node in this tree",
                              hint=f"give a node id from 0 to {last} (the root is "
                                   f"{structure.root}); the page shows each node's id")
        return [int(h) for h in highlight]
    import difflib

    from longweave.graphs.store import normalize_key

    names = [str(n) for n in structure.graph.nodes]  # type: ignore[attr-defined]
    known = set(names)
    marks = [normalize_key(h) for h in highlight]
    unknown = [h for h, m in zip(highlight, marks, strict=True) if m not in known]
    if unknown:
        close = difflib.get_close_matches(normalize_key(unknown[0]), names, n=3)
        guess = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"--highlight {', '.join(unknown)}: no such key element in this graph",
                          hint=f"{guess}give a key element as the page names its nodes")
    return marks


def _describe(structure: object) -> str:
    from longweave.answer import plural
    from longweave.memory.summary_tree import SummaryTree

    if isinstance(structure, SummaryTree):
        return f"a tree of {plural(len(structure.nodes), 'node')}, depth {structure.depth}"
    g = structure.graph  # type: ignore[attr-defined]
    return (f"a graph of {plural(g.number_of_nodes(), 'key element')}, "
            f"{plural(g.number_of_edges(), 'edge')}, "
            f"{plural(len(structure.facts), 'fact')}")  # type: ignore[attr-defined]
