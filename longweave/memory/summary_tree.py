"""MemWalker's memory tree: leaves summarize document segments, parents summarize their children.

The tree is query-independent and stored as JSON (one per document and settings), so every
question on a document walks the same tree. Building it needs model calls and lives in
`longweave.agents.mem_walker`; this module holds the data, its shape rules and (de)serialization.

>>> balanced_groups(6, 5)
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TREE_FORMAT", "SummaryTree", "TreeNode", "balanced_groups"]

TREE_FORMAT = 1
"""Bumped when the JSON layout changes, so an old file is rebuilt rather than misread."""


class TreeNode(BaseModel):
    """One node: its summary, its children (none for a leaf) and the character span it covers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0)
    level: int = Field(ge=0)
    """0 for leaves; a parent is one level above its children."""
    summary: str
    children: tuple[int, ...] = ()
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    """Character span in the document; a leaf's span is its segment, a parent's the union."""
    chunk_index: int | None = None
    """For a leaf, the index of its segment among the document's chunks."""

    @property
    def is_leaf(self) -> bool:
        return not self.children


class SummaryTree(BaseModel):
    """Nodes in build order (leaves first, in document order), the root last.

    >>> leaf = TreeNode(id=0, level=0, summary="s", start=0, end=5, chunk_index=0)
    >>> SummaryTree(doc_id="d", nodes=(leaf,), root=0).depth
    0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = TREE_FORMAT
    doc_id: str
    nodes: tuple[TreeNode, ...]
    root: int
    settings: dict[str, str | int | float] = Field(default_factory=dict)
    """What the tree was built with (model, window, K, segment and summary caps, prompt version)."""

    @model_validator(mode="after")
    def _check_shape(self) -> SummaryTree:
        if self.format != TREE_FORMAT:
            raise ValueError(f"tree format {self.format} is not {TREE_FORMAT}")
        if not self.nodes or not 0 <= self.root < len(self.nodes):
            raise ValueError("a tree needs nodes and a root among them")
        for i, node in enumerate(self.nodes):
            if node.id != i:
                raise ValueError(f"node {i} has id {node.id}")
            for child in node.children:
                # Children come before their parent in build order: no cycles, no dangling ids.
                if not 0 <= child < i or self.nodes[child].level != node.level - 1:
                    raise ValueError(f"node {i} has an invalid child {child}")
        return self

    def node(self, node_id: int) -> TreeNode:
        return self.nodes[node_id]

    def children(self, node_id: int) -> list[TreeNode]:
        """The children of a node, in document order."""
        return [self.nodes[c] for c in self.nodes[node_id].children]

    @property
    def leaves(self) -> list[TreeNode]:
        """The leaves in document order."""
        return [n for n in self.nodes if n.is_leaf]

    @property
    def depth(self) -> int:
        """Edges from the root to a leaf (every leaf is at the same depth)."""
        return self.nodes[self.root].level

    def tiles(self, text_length: int) -> bool:
        """Whether the leaves' spans cover [0, text_length) in order without gaps or overlaps."""
        position = 0
        for leaf in self.leaves:
            if leaf.start != position or leaf.end <= leaf.start:
                return False
            position = leaf.end
        return position == text_length

    def save(self, path: str | Path) -> None:
        """Write the tree as JSON (callers make it atomic, e.g. through `ArtifactCache`)."""
        Path(path).write_text(self.model_dump_json(indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SummaryTree:
        """Read a tree written by `save`; raises pydantic's ValidationError if it is malformed."""
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def balanced_groups(count: int, max_children: int) -> list[list[int]]:
    """Split `count` consecutive items into the fewest runs of at most `max_children`, sizes
    differing by at most one, so no run is a single item unless `count` is 1 (needs K >= 3)."""
    if count < 1 or max_children < 2:
        raise ValueError("need at least one item and max_children >= 2")
    n_groups = -(-count // max_children)
    base, extra = divmod(count, n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        size = base + (g < extra)
        groups.append(list(range(start, start + size)))
        start += size
    return groups
