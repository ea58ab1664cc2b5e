"""Positions for drawing: a force layout of the key-element graph, a top-down tree layout.

Both return positions in a unit box ([0, 1] on each axis, y growing downwards, as in SVG), so
the HTML, SVG and PNG renderings share one layout.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable, Iterable

import networkx as nx

from longweave.memory.summary_tree import SummaryTree

__all__ = ["graph_layout", "prune", "tree_layout"]

Point = tuple[float, float]

SPARSE_FROM = 500
"""From this many nodes networkx's spring layout needs scipy (and is slower: ~14 s for 600
nodes on 2 cores, against ~1.3 s for 300)."""


def prune(graph: nx.Graph, max_nodes: int, keep: Iterable[Hashable] = ()) -> nx.Graph:
    """The subgraph of the `max_nodes` nodes with the most facts, plus every node in `keep`."""
    if graph.number_of_nodes() <= max_nodes:
        return graph
    kept = [n for n in dict.fromkeys(keep) if n in graph]
    ranked = sorted(graph.nodes, key=lambda n: (-len(graph.nodes[n].get("facts", ())), str(n)))
    for node in ranked:
        if len(kept) >= max_nodes:
            break
        if node not in kept:
            kept.append(node)
    return graph.subgraph(kept)


def graph_layout(graph: nx.Graph, *, seed: int = 7) -> dict[Hashable, Point]:
    """A Fruchterman-Reingold (spring) layout, the same for the same graph and seed.

    Kamada-Kawai was measured too: 4-9 s for 30-150 nodes here, against 0.5 s for spring.
    """
    n = graph.number_of_nodes()
    if n == 0:
        return {}
    if n == 1:
        return {next(iter(graph.nodes)): (0.5, 0.5)}
    if n < SPARSE_FROM or importlib.util.find_spec("scipy") is not None:
        raw = nx.spring_layout(graph, seed=seed, iterations=80, weight=None, method="force")
    else:  # a large graph without scipy: a circle beats failing
        raw = nx.circular_layout(graph)
    return _unit({node: (float(x), float(y)) for node, (x, y) in raw.items()})


def tree_layout(tree: SummaryTree) -> dict[int, Point]:
    """Leaves evenly spaced in document order at the bottom, each parent over its children."""
    leaves = tree.leaves
    depth = max(tree.depth, 1)
    step = 1.0 / max(len(leaves) - 1, 1)
    pos: dict[int, Point] = {}
    for i, leaf in enumerate(leaves):
        pos[leaf.id] = (0.5 if len(leaves) == 1 else i * step, 1.0)
    for node in tree.nodes:  # build order: children always come before their parent
        if node.children:
            xs = [pos[c][0] for c in node.children]
            pos[node.id] = ((min(xs) + max(xs)) / 2, 1.0 - node.level / depth)
    return pos


def _unit(raw: dict[Hashable, Point]) -> dict[Hashable, Point]:
    """Scale and shift into [0, 1]², keeping the aspect ratio; y is flipped to grow downwards."""
    xs = [p[0] for p in raw.values()]
    ys = [p[1] for p in raw.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    x0 = min(xs) - (span - (max(xs) - min(xs))) / 2
    y0 = min(ys) - (span - (max(ys) - min(ys))) / 2
    return {n: ((x - x0) / span, 1.0 - (y - y0) / span) for n, (x, y) in raw.items()}
