"""Look at what GraphReader and MemWalker built for a document: the graph and the tree.

`render_graph` and `render_tree` turn a `KeyGraph` or a `SummaryTree` into one self-contained
HTML page (inline SVG and a little script, nothing fetched), or an SVG, PNG or PDF file by the
output's suffix. `trail(answer)` reads the path an answer took from its steps, and every
renderer takes it as `highlight`. `find_structure` finds the artifact `longweave ask` built.

>>> from longweave.memory.summary_tree import SummaryTree, TreeNode
>>> leaves = [TreeNode(id=i, level=0, summary=f"part {i}", start=i, end=i + 1, chunk_index=i)
...           for i in range(3)]
>>> root = TreeNode(id=3, level=1, summary="the whole", children=(0, 1, 2), start=0, end=3)
>>> page = render_tree(SummaryTree(doc_id="d", nodes=(*leaves, root), root=3), highlight=[3, 1])
>>> "part 2" in page and 'class="tnode leaf hl"' in page
True
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from longweave.visualize.artifacts import KINDS, NotBuilt, afind_structure, find_structure
from longweave.visualize.graph_view import render_graph
from longweave.visualize.trail import STRUCTURES, Trail, trail
from longweave.visualize.tree_view import render_tree

if TYPE_CHECKING:
    from longweave.agents.base import Strategy
    from longweave.answer import Answer
    from longweave.cache import ArtifactCache
    from longweave.documents import Document
    from longweave.graphs.store import KeyGraph
    from longweave.llm import LLM
    from longweave.memory.summary_tree import SummaryTree

__all__ = [
    "KINDS",
    "STRUCTURES",
    "NotBuilt",
    "Trail",
    "afind_structure",
    "arender_answer",
    "find_structure",
    "render",
    "render_graph",
    "render_tree",
    "trail",
]


def render(
    structure: KeyGraph | SummaryTree,
    path: str | os.PathLike[str] | None = None,
    *,
    highlight: Trail | Answer | Iterable[Hashable] | None = None,
    text: str | None = None,
    **options: Any,
) -> str:
    """`render_graph` or `render_tree`, whichever fits `structure`; returns the HTML page."""
    from longweave.memory.summary_tree import SummaryTree

    if isinstance(structure, SummaryTree):
        return render_tree(structure, path, highlight=highlight, text=text, **options)
    return render_graph(structure, path, highlight=highlight, **options)


async def arender_answer(
    answer: Answer,
    document: Document,
    llm: LLM,
    artifacts: ArtifactCache,
    path: str | os.PathLike[str] | None = None,
    *,
    strategy: Strategy | None = None,
) -> str:
    """The structure `answer` walked, with its path highlighted (for chat's `/trace`).

    `strategy` must be configured as it was for the answer (its settings pick the artifact);
    the artifact is loaded, never built, so this makes no model call.
    """
    kind = STRUCTURES.get(answer.strategy)
    if kind is None:
        trail(answer)  # raises the ConfigError that says which strategies have a structure
    structure = await afind_structure(document, kind, llm, artifacts,  # type: ignore[arg-type]
                                      strategy=strategy)
    return render(structure, path, highlight=answer, text=document.text)
