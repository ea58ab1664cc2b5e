"""PNG (or PDF) images of the graph and the tree through matplotlib, from the pages' layouts.

matplotlib is optional (the `eval` extra): it is imported here, on demand, and a missing
install raises `MissingDependency` naming the extra.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.errors import MissingDependency
from longweave.visualize.trail import Trail

if TYPE_CHECKING:
    import networkx as nx

    from longweave.memory.summary_tree import SummaryTree

__all__ = ["graph_image", "tree_image"]

NODE, EDGE, HL, INK, END = "#8fa9c9", "#c6ccd4", "#e8590c", "#1f2933", "#2b8a3e"
"""The pages' colours (page.CSS), so an image and a page of the same graph look alike."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependency("matplotlib", "eval") from None
    # A bare Figure, not pyplot: no global state, no GUI backend, safe in threads and servers.
    return Figure(figsize=(width, height), dpi=150, layout="constrained")


def graph_image(path: Path, g: nx.Graph, pos: dict[Hashable, tuple[float, float]],
                radii: dict[Hashable, float], trail: Trail, named: set[Hashable],
                title: str) -> None:
    """Draw the (pruned) graph: node area by facts, the path in orange, the big nodes named."""
    from matplotlib.collections import LineCollection

    fig = _figure(10, 10)
    ax = fig.add_subplot()
    segments = [[pos[u], pos[v]] for u, v in g.edges]
    walked = [trail.walked(u, v) for u, v in g.edges]
    widths = [0.4 + 0.3 * min(d.get("weight", 1), 6) + (1.6 if w else 0)
              for (_, _, d), w in zip(g.edges(data=True), walked, strict=True)]
    ax.add_collection(LineCollection(segments, colors=[HL if w else EDGE for w in walked],
                                     linewidths=widths, zorder=1))
    order = sorted(g.nodes, key=lambda n: n in trail)  # the path is drawn on top
    ax.scatter([pos[n][0] for n in order], [pos[n][1] for n in order],
               s=[(1.3 * radii[n]) ** 2 for n in order],  # points²: ~0.65 pt per viewBox unit
               c=[HL if n in trail else NODE for n in order],
               edgecolors=[INK if n in trail.starts else END if n in trail.ends else "white"
                           for n in order],
               linewidths=[1.6 if n in trail.starts or n in trail.ends else 0.6 for n in order],
               zorder=2)
    for n in order:
        if n in named:
            ax.annotate(str(n), pos[n], xytext=(0, 6), textcoords="offset points", ha="center",
                        fontsize=7, color=INK, zorder=3)
    _finish(fig, ax, title, path)


def tree_image(path: Path, tree: SummaryTree, pos: dict[int, tuple[float, float]],
               trail: Trail, title: str) -> None:
    """Draw the tree top-down: node ids, leaves at the bottom, the path in orange."""
    from matplotlib.collections import LineCollection

    leaves = len(tree.leaves)
    fig = _figure(min(max(6.0, leaves * 0.35), 40.0), max(3.0, 1.2 * (tree.depth + 1)))
    ax = fig.add_subplot()
    segments, colours, widths = [], [], []
    for node in tree.nodes:
        for child in node.children:
            walked = trail.walked(node.id, child)
            segments.append([pos[node.id], pos[child]])
            colours.append(HL if walked else EDGE)
            widths.append(2.2 if walked else 0.8)
    ax.add_collection(LineCollection(segments, colors=colours, linewidths=widths, zorder=1))
    nodes = tree.nodes
    ax.scatter([pos[n.id][0] for n in nodes], [pos[n.id][1] for n in nodes],
               s=[30 if n.is_leaf else 70 for n in nodes],
               c=[HL if n.id in trail else NODE for n in nodes],
               edgecolors=[END if n.id in trail.ends else "white" for n in nodes],
               linewidths=[1.8 if n.id in trail.ends else 0.6 for n in nodes], zorder=2)
    if leaves <= 120:  # beyond that the ids overlap; the HTML page names every node
        for n in nodes:
            ax.annotate(str(n.id), pos[n.id], xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=6, color=INK, zorder=3)
    _finish(fig, ax, title, path)


def _finish(fig: Any, ax: Any, title: str, path: Path) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(1.08, -0.08)  # layouts grow downwards, like the SVG
    ax.set_axis_off()
    fig.savefig(path)
