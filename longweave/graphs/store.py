"""GraphReader's per-document graph: atomic facts, key-element nodes, co-occurrence edges.

The graph is a networkx graph whose nodes are normalized key elements (each holding the ids of
its facts) and whose edges join key elements that share a fact, weighted by how many they share
(STRATEGIES.md §3.2). It is saved as one JSON file next to a `VectorStore` over the node names,
so a second question on the same document loads both and calls no model.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from longweave.answer import unpunctuated

if TYPE_CHECKING:
    from longweave.retrieval.store import VectorStore

__all__ = ["GRAPH_FORMAT", "Fact", "KeyGraph", "normalize_key"]

GRAPH_FORMAT = 2
"""Bumped when the saved layout or the key normalization changes, so old artifacts are rebuilt,
never misread (2: combining marks kept in keys)."""

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_key(text: str) -> str:
    """Lexical normalization of a key element: NFKC, casefold, punctuation and spaces collapsed.

    Combining marks stay in their word ("हिन्दी" is one word, not "ह न द"); the dot that
    `casefold` gives a dotted capital I ("İ" to "i" + U+0307) is dropped, so "İstanbul" is
    "istanbul".

    >>> normalize_key("  Mara   Quill's ")
    'mara quill s'
    >>> normalize_key("İstanbul"), normalize_key("हिन्दी भाषा")
    ('istanbul', 'हिन्दी भाषा')
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    folded = folded.replace("i\u0307", "i")
    return _SPACES.sub(" ", unpunctuated(folded, _PUNCT)).strip()


@dataclass(frozen=True)
class Fact:
    """One atomic fact, from the chunk with index `chunk`, naming its (normalized) key elements."""

    id: int
    text: str
    chunk: int
    keys: tuple[str, ...]


@dataclass
class KeyGraph:
    """The document's graph: chunk spans, facts, and the networkx graph of key elements."""

    doc_id: str
    spans: list[tuple[int, int]]  # (start, end) of chunk i in the document
    facts: list[Fact]
    graph: nx.Graph
    settings: dict[str, Any]
    index: VectorStore | None = None  # node names, for the initial node prefilter

    @classmethod
    def from_facts(cls, doc_id: str, spans: list[tuple[int, int]], facts: list[Fact],
                   settings: dict[str, Any]) -> KeyGraph:
        """Nodes from the facts' key elements, edges by co-occurrence inside a fact."""
        graph = nx.Graph()
        for fact in facts:
            for key in fact.keys:
                if key not in graph:
                    graph.add_node(key, facts=[])
                graph.nodes[key]["facts"].append(fact.id)
            for i, u in enumerate(fact.keys):
                for v in fact.keys[i + 1:]:
                    weight = graph.edges[u, v]["weight"] if graph.has_edge(u, v) else 0
                    graph.add_edge(u, v, weight=weight + 1)
        return cls(doc_id, spans, facts, graph, settings)

    @property
    def names(self) -> list[str]:
        """Node names in insertion order (the order of the vector index)."""
        return list(self.graph.nodes)

    def has(self, name: str) -> bool:
        return name in self.graph

    def node_facts(self, name: str) -> list[Fact]:
        """The facts of one node, in document order."""
        return sorted((self.facts[i] for i in self.graph.nodes[name]["facts"]),
                      key=lambda f: (f.chunk, f.id))

    def neighbors(self, name: str, *, exclude: set[str] = frozenset(),  # type: ignore[assignment]
                  limit: int = 25) -> list[str]:
        """Key elements sharing a fact with `name`, most shared facts first, then by name."""
        ranked = sorted(
            ((v, d["weight"]) for v, d in self.graph[name].items() if v not in exclude),
            key=lambda item: (-item[1], item[0]),
        )
        return [v for v, _ in ranked[:limit]]

    def save(self, directory: Path) -> None:
        """Write graph.json (and the node index under nodes/) into `directory`."""
        data = {
            "format": GRAPH_FORMAT,
            "doc_id": self.doc_id,
            "settings": self.settings,
            "spans": self.spans,
            "facts": [[f.id, f.text, f.chunk, list(f.keys)] for f in self.facts],
            "graph": nx.node_link_data(self.graph, edges="edges"),
        }
        (directory / "graph.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
        if self.index is not None:
            self.index.save(directory / "nodes")

    @classmethod
    def load(cls, directory: Path, *, embedder: str | None = None) -> KeyGraph:
        """Read a saved graph; raises ValueError (or OSError) when it is unusable."""
        data = json.loads((directory / "graph.json").read_text("utf-8"))
        if data.get("format") != GRAPH_FORMAT:
            raise ValueError(f"graph format {data.get('format')} is not {GRAPH_FORMAT}")
        facts = [Fact(i, text, chunk, tuple(keys)) for i, text, chunk, keys in data["facts"]]
        graph = nx.node_link_graph(data["graph"], edges="edges")
        kept = cls(data["doc_id"], [tuple(s) for s in data["spans"]], facts, graph,
                   data["settings"])
        if (directory / "nodes").is_dir():
            from longweave.retrieval.store import VectorStore

            kept.index = VectorStore.load(directory / "nodes", expected_embedder=embedder)
            if len(kept.index) != graph.number_of_nodes():
                raise ValueError("the node index does not match the graph")
        return kept
