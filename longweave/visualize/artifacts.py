"""Find (or build) the graph or tree a strategy keeps for a document, as `longweave ask` would.

The artifact key comes from the strategy itself (document hash, chunking, model, settings), so
`show` with the same `--model` and `--set` options as `ask` finds what `ask` built. Building
runs only the strategy's build step: no question is asked.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from longweave.errors import ConfigError, LongweaveError
from longweave.events import EventSink, ignore
from longweave.sync import run_sync

if TYPE_CHECKING:
    from longweave.agents.base import Strategy
    from longweave.cache import ArtifactCache
    from longweave.documents import Document
    from longweave.graphs.store import KeyGraph
    from longweave.llm import LLM
    from longweave.memory.summary_tree import SummaryTree

__all__ = ["KINDS", "NotBuilt", "afind_structure", "commands", "find_structure"]

Kind = Literal["graph", "tree"]
KINDS: dict[str, str] = {"graph": "graph-reader", "tree": "mem-walker"}
"""Which strategy builds each structure."""


class NotBuilt(LongweaveError):
    """The document has no graph or tree for these settings yet; `command` builds one."""

    def __init__(self, kind: str, document: str, command: str, ask: str, key: str) -> None:
        self.kind, self.document, self.command, self.ask, self.key = (
            kind, document, command, ask, key)
        super().__init__(
            f"no {KINDS[kind]} {kind} is built for {document} with these settings yet",
            hint=f"build it alone with: {command}\n"
                 f"or answer a question, which builds it: {ask}",
        )


async def afind_structure(
    document: Document,
    kind: Kind,
    llm: LLM,
    artifacts: ArtifactCache,
    *,
    strategy: Strategy | None = None,
    build: bool = False,
    on_event: EventSink = ignore,
    command: str = "",
    ask: str = "",
) -> KeyGraph | SummaryTree:
    """The document's graph (GraphReader) or tree (MemWalker) for `strategy`'s settings.

    Loaded from `artifacts` when `ask` (or an earlier build) made it; else built when `build`
    (model calls, with progress events to `on_event`), else `NotBuilt` is raised, naming
    `command` and `ask` (the CLI lines that build it) as the ways to build it.
    """
    from longweave.agents.base import RunContext, get_strategy

    if kind not in KINDS:
        raise ConfigError(f"unknown structure {kind!r}", hint="choose 'graph' or 'tree'")
    chosen: Any = strategy or get_strategy(KINDS[kind])
    if chosen.name != KINDS[kind]:
        raise ConfigError(f"a {kind} is built by {KINDS[kind]}, not {chosen.name}",
                          hint=f"pass a {KINDS[kind]} strategy, or none for its defaults")
    ctx = RunContext(llm, document, "", chosen.name, emit=on_event, artifacts=artifacts)
    budgets = chosen.budgets(ctx) if kind == "graph" else chosen.plan(ctx)
    # The strategies own their key recipe; reusing it is what makes `show` find `ask`'s build.
    key, _ = chosen._artifact_key(ctx, budgets)
    found = artifacts.find(key)
    if found is None and not build:
        strategy_name = KINDS[kind]
        raise NotBuilt(kind, document.name,
                       command or f"longweave show PATH --{kind} --build",
                       ask or f"longweave ask PATH QUESTION --strategy {strategy_name}", key)
    if found is not None:
        return _load(kind, found, document)
    if kind == "graph":
        return await chosen.graph(ctx, budgets)
    return await chosen.tree(ctx, budgets)


def find_structure(
    source: str | os.PathLike[str] | Document,
    kind: Kind,
    *,
    model: str | LLM = "local",
    build: bool = False,
    on_event: EventSink = ignore,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **options: Any,
) -> KeyGraph | SummaryTree:
    """`afind_structure` from a path (or text) and a model string; `options` configure the
    strategy as they do for `ask`, so the same options find the same artifact."""
    from longweave.agents.base import get_strategy
    from longweave.api import load_source, make_model
    from longweave.cache import ArtifactCache
    from longweave.config import Settings

    settings = Settings()
    document = load_source(source, include=include, exclude=exclude)
    strategy = get_strategy(KINDS[kind], **options)
    llm = make_model(model, settings=settings)
    artifacts = ArtifactCache(settings.cache_dir / "artifacts")
    show, ask = commands(source, kind, model, options, include, exclude)
    return run_sync(afind_structure(document, kind, llm, artifacts, strategy=strategy,
                                    build=build, on_event=on_event, command=show, ask=ask))


def commands(source: object, kind: str, model: object, options: dict[str, Any],
             include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None) -> tuple[str, str]:
    """The `longweave show ... --build` and `longweave ask ...` lines that build the artifact
    with the same settings (model, options, folder filters)."""
    import json

    named = isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and len(source) < 1024)
    # A Document names the file (or folder) it came from; literal text has no path to name.
    where = str(source) if named else getattr(source, "source", None) or "PATH"
    same: list[str] = []
    if isinstance(model, str) and model != "local":
        same += ["--model", model]
    for name, value in options.items():
        same += ["--set", f"{name}={value if isinstance(value, str) else json.dumps(value)}"]
    for flag, globs in (("--include", include), ("--exclude", exclude)):
        for glob in globs or ():
            same += [flag, glob]
    show = shlex.join(["longweave", "show", where, f"--{kind}", "--build", *same])
    ask = shlex.join(["longweave", "ask", where, "QUESTION", "--strategy", KINDS[kind], *same])
    return show, ask


def _load(kind: str, found: Path, document: Document) -> KeyGraph | SummaryTree:
    """Read a built artifact without rebuilding it: an unusable one is reported, not replaced."""
    from longweave.graphs.store import KeyGraph
    from longweave.memory.summary_tree import SummaryTree

    try:
        loaded = KeyGraph.load(found) if kind == "graph" else SummaryTree.load(found / "tree.json")
    except (OSError, ValueError, LongweaveError) as exc:  # pydantic's ValidationError included
        raise LongweaveError(f"the cached {kind} in {found} is unusable ({exc})",
                             hint=f"delete {found} and build it again with --build") from None
    if loaded.doc_id != document.id:
        raise LongweaveError(f"the cached {kind} in {found} belongs to another text",
                             hint=f"delete {found} and build it again with --build")
    return loaded
