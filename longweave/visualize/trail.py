"""The path an answer took through a document's graph or tree, read back from its steps.

GraphReader records the initial nodes (`planner` step, `stage="select"`, `starts`) and one
`stepper` step per exploration step (`path`, `node`, `mode`, `chunk`); MemWalker records one
`navigator` step per internal node (`node`, `action`, `child`) and one `reader` step per leaf
(`node`, `action`), plus `overview` (the root) and `fallback` (`last_leaf`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from longweave.errors import ConfigError

if TYPE_CHECKING:
    from longweave.answer import Answer, Step

__all__ = ["STRUCTURES", "Trail", "trail"]

STRUCTURES: dict[str, str] = {"graph-reader": "graph", "mem-walker": "tree"}
"""The strategies whose answers walk a per-document structure, and which one."""


@dataclass(frozen=True)
class Trail:
    """Nodes an answer visited (first visits, in order), the moves between them, and its ends.

    >>> t = Trail.of(["gamma", "delta"])
    >>> t.nodes, "delta" in t
    (('gamma', 'delta'), True)
    """

    nodes: tuple[Hashable, ...] = ()
    """Visited nodes in the order first visited: key-element names, or tree node ids."""
    edges: frozenset[tuple[Hashable, Hashable]] = frozenset()
    """Moves from one node to the next (for a graph, either direction matches)."""
    starts: tuple[Hashable, ...] = ()
    """Where the walk began: GraphReader's initial nodes, MemWalker's root."""
    ends: tuple[Hashable, ...] = ()
    """Where it answered: the leaf MemWalker answered from (or fell back to)."""
    chunks: tuple[int, ...] = ()
    """Chunks read on the way, in order first read."""
    strategy: str = ""

    @classmethod
    def of(cls, nodes: Iterable[Hashable]) -> Trail:
        """A trail of bare node ids (no moves), for highlighting chosen nodes."""
        return cls(nodes=tuple(dict.fromkeys(nodes)))

    def __contains__(self, node: object) -> bool:
        return node in self.nodes

    def walked(self, a: Hashable, b: Hashable) -> bool:
        """Whether the walk moved between `a` and `b` (either way)."""
        return (a, b) in self.edges or (b, a) in self.edges


@dataclass
class _Walk:
    nodes: dict[Hashable, None] = field(default_factory=dict)
    edges: set[tuple[Hashable, Hashable]] = field(default_factory=set)
    starts: dict[Hashable, None] = field(default_factory=dict)
    ends: dict[Hashable, None] = field(default_factory=dict)
    chunks: dict[int, None] = field(default_factory=dict)

    def done(self, strategy: str) -> Trail:
        return Trail(tuple(self.nodes), frozenset(self.edges), tuple(self.starts),
                     tuple(self.ends), tuple(self.chunks), strategy)


def trail(answer: Answer) -> Trail:
    """The trail of a GraphReader or MemWalker answer; other strategies raise ConfigError."""
    if answer.strategy == "graph-reader":
        return _graph_trail(answer.steps)
    if answer.strategy == "mem-walker":
        return _tree_trail(answer.steps)
    raise ConfigError(
        f"a {answer.strategy} answer walks no graph or tree",
        hint="only graph-reader (a graph) and mem-walker (a tree) answers have a path to show",
    )


# The steps come from a JSON file (`show --answer`, a saved chat) that may have been edited or
# cut: only the values of the shapes the strategies record are read, the rest is skipped, so a
# stray list is never used as a node (unhashable) and the page is still drawn.


def _graph_trail(steps: list[Step]) -> Trail:
    walk, last = _Walk(), {}  # last: the node each path stood on at its previous step
    for step in steps:
        d = step.detail
        if step.role == "planner" and d.get("stage") == "select":
            starts = d.get("starts")
            for name in starts if isinstance(starts, list) else []:
                if isinstance(name, str):
                    walk.starts[name] = walk.nodes[name] = None
        elif step.role == "stepper" and isinstance(d.get("node"), str):
            path, node = d.get("path", step.index), d["node"]
            if not isinstance(path, int | str | None):
                path = step.index
            walk.nodes[node] = None
            if path in last and last[path] != node:
                walk.edges.add((last[path], node))
            last[path] = node
            if d.get("mode") == "chunk" and isinstance(d.get("chunk"), int):
                walk.chunks[d["chunk"]] = None
    walk.ends = dict.fromkeys(last.values())
    return walk.done("graph-reader")


def _tree_trail(steps: list[Step]) -> Trail:
    walk = _Walk()
    for step in steps:
        d, node = step.detail, step.detail.get("node")
        if not isinstance(node, int):
            node = None  # the reader and overview steps below end nowhere then
        if step.role in ("navigator", "reader", "overview") and node is not None:
            if not walk.nodes:
                walk.starts[node] = None
            walk.nodes[node] = None
        if step.role == "navigator" and d.get("action") == "goto" and node is not None and (
                isinstance(d.get("child"), int)):
            walk.edges.add((node, d["child"]))
            walk.nodes[d["child"]] = None
        elif step.role == "reader":
            if isinstance(d.get("chunk_index"), int):
                walk.chunks[d["chunk_index"]] = None
            if d.get("action") == "answer" and node is not None:
                walk.ends[node] = None
        elif step.role == "overview" and node is not None:
            walk.ends[node] = None
        elif step.role == "fallback" and isinstance(d.get("last_leaf"), int):
            walk.ends[d["last_leaf"]] = None
    return walk.done("mem-walker")
