"""From per-chunk extractions to GraphReader's graph: validate, normalize, merge, index.

Steps 3-4 of Build(x) in STRATEGIES.md §3.2. No model is called here: the extraction calls are
made by the strategy, and this module turns their validated replies into a `KeyGraph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from longweave.graphs.store import Fact, KeyGraph, normalize_key

if TYPE_CHECKING:
    from longweave.retrieval.embeddings import Embedder

__all__ = ["BuildReport", "RawFact", "assemble", "merge_near_duplicates"]


@dataclass(frozen=True)
class RawFact:
    """A fact as the extractor wrote it, before validation."""

    text: str
    key_elements: tuple[str, ...]


@dataclass
class BuildReport:
    """What validation dropped, for the trace."""

    facts: int = 0
    dropped_keys: int = 0  # key elements that do not occur in their fact (§3.5.7)
    dropped_facts: int = 0  # facts left with no key element
    merged_nodes: int = 0  # near-duplicate names folded into another node


def _occurs(key: str, fact: str) -> bool:
    """Case-insensitive containment, tolerant of punctuation and spacing (normalized forms)."""
    return bool(key) and f" {key} " in f" {normalize_key(fact)} "


def assemble(doc_id: str, spans: list[tuple[int, int]], extracted: Sequence[Sequence[RawFact]],
             settings: dict[str, Any]) -> tuple[KeyGraph, BuildReport]:
    """The graph of validated facts; `extracted[i]` holds the facts of chunk i."""
    report, facts = BuildReport(), []
    for chunk, raw_facts in enumerate(extracted):
        for raw in raw_facts:
            text = " ".join(raw.text.split())
            keys: list[str] = []
            for element in raw.key_elements:
                key = normalize_key(element)
                if not _occurs(key, text):
                    report.dropped_keys += 1
                elif key not in keys:
                    keys.append(key)
            if not text or not keys:
                report.dropped_facts += 1
                continue
            facts.append(Fact(len(facts), text, chunk, tuple(keys)))
    report.facts = len(facts)
    return KeyGraph.from_facts(doc_id, spans, facts, settings), report


def merge_near_duplicates(graph: KeyGraph, vectors: Any, threshold: float) -> tuple[KeyGraph, Any]:
    """Fold nodes whose name vectors have cosine >= threshold into the earliest of them (ours).

    `vectors[i]` is the unit vector of `graph.names[i]`. Returns the new graph and the vectors
    of its nodes, in its node order.
    """
    import numpy as np

    names = graph.names
    unit = np.asarray(vectors, dtype=np.float32)
    merged_away = np.zeros(len(names), dtype=bool)
    into: dict[str, str] = {}
    # Similarities a block of columns at a time (memory: N x block, not N x N, which at 28k names
    # was 3 GB and crashed), thresholded in numpy; the loop visits only names that have a match.
    for start in range(0, len(names), _MERGE_BLOCK):
        stop = min(start + _MERGE_BLOCK, len(names))
        sims = unit[:stop] @ unit[start:stop].T
        for j in range(start, stop):
            # the earliest surviving match wins, so merges never chain
            for i in np.flatnonzero(sims[:j, j - start] >= threshold):
                if not merged_away[i]:
                    into[names[j]] = names[i]
                    merged_away[j] = True
                    break
    if not into:
        return graph, vectors
    facts = []
    for fact in graph.facts:
        keys = tuple(dict.fromkeys(into.get(k, k) for k in fact.keys))
        facts.append(Fact(fact.id, fact.text, fact.chunk, keys))
    merged = KeyGraph.from_facts(graph.doc_id, graph.spans, facts, graph.settings)
    position = {name: n for n, name in enumerate(names)}
    return merged, np.asarray(vectors)[[position[n] for n in merged.names]]


_MERGE_BLOCK = 512
"""Columns of the similarity matrix computed at a time by `merge_near_duplicates`."""


def index_nodes(graph: KeyGraph, embedder: Embedder, *, merge_threshold: float | None) -> int:
    """Embed the node names (merging near-duplicates first) and attach the vector index.

    Returns how many nodes were merged away. The graph object is updated in place.
    """
    from longweave.retrieval.store import Record, VectorStore

    names = graph.names
    if not names:
        graph.index = VectorStore(embedder.dim, embedder=embedder.name, index="flat", gpu=False)
        return 0
    vectors = embedder.embed(names)
    before = len(names)
    if merge_threshold is not None:
        merged, vectors = merge_near_duplicates(graph, vectors, merge_threshold)
        graph.graph, graph.facts = merged.graph, merged.facts
    store = VectorStore(embedder.dim, embedder=embedder.name, index="flat", gpu=False)
    store.add(vectors, [Record(graph.doc_id, i, 0, 0, text=n) for i, n in enumerate(graph.names)])
    graph.index = store
    return before - len(graph.names)
