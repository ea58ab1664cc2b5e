"""Episodic memory: past units with what was extracted from them, retrieved by similarity.

Each episode keeps a unit's raw span and the text it is indexed by (LIGHT: "key: value" lines and
a one-line summary, STRATEGIES.md §6.2). A search embeds the query, finds the nearest indexed
texts in a `VectorStore`, and answers with the episodes, whose *raw* text the reader sees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.memory.working import MemoryUnit
from longweave.retrieval.durable import checksum_problem, file_checksum
from longweave.retrieval.store import Record, VectorStore

if TYPE_CHECKING:
    import numpy as np

    from longweave.retrieval.embeddings import Embedder

__all__ = ["EPISODES_FILE", "Episode", "EpisodicMemory"]

EPISODES_FILE = "episodes.json"
_VECTORS = "episode_vectors.npy"


@dataclass(frozen=True)
class Episode:
    """A unit, the text it is retrieved by, and the facts extracted from it."""

    unit: MemoryUnit
    indexed: str
    facts: tuple[str, ...] = ()


class EpisodicMemory:
    """Episodes in a vector store over their indexed text (inner product of normalized vectors).

    `embedder` is any `longweave.retrieval.embeddings.Embedder` (the bundled MiniLM by default
    in LIGHT); `namespace` is the document id the store's records carry.
    """

    def __init__(self, embedder: Embedder, namespace: str = "memory") -> None:
        self.embedder = embedder
        self.namespace = namespace
        self.episodes: dict[int, Episode] = {}
        self.store = VectorStore(embedder.dim, embedder=embedder.name)
        self._vectors: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.episodes)

    def add(self, episodes: Sequence[Episode], vectors: np.ndarray | None = None) -> None:
        """Index episodes (embedding their indexed text unless `vectors` are given)."""
        import numpy as np

        if not episodes:
            return
        if vectors is None:
            vectors = self.embedder.embed([e.indexed for e in episodes])
        vectors = np.asarray(vectors, dtype=np.float32)
        records = [Record(self.namespace, e.unit.index, e.unit.start, e.unit.end)
                   for e in episodes]
        self.store.add(vectors, records)
        for e in episodes:
            self.episodes[e.unit.index] = e
        self._vectors.append(vectors)

    def search(self, query: str | np.ndarray, k: int) -> list[tuple[Episode, float]]:
        """The `k` episodes nearest the query, best first, with their cosine similarity."""
        if not self.episodes or k <= 0:
            return []
        vector = self.embedder.embed([query])[0] if isinstance(query, str) else query
        hits = self.store.search(vector, k=min(k, len(self.store)))
        return [(self.episodes[h.chunk_index], h.score) for h in hits]

    def save(self, directory: str | Path) -> None:
        """Write the episodes and their vectors (the store is rebuilt from them on load)."""
        import numpy as np

        d = Path(directory)
        rows = [asdict(e) for e in sorted(self.episodes.values(), key=lambda e: e.unit.index)]
        order = [e.unit.index for e in self.episodes.values()]
        vectors = np.concatenate(self._vectors) if self._vectors else np.zeros((0, 1), np.float32)
        by_index = dict(zip(order, vectors, strict=True))
        stacked = np.stack([by_index[r["unit"]["index"]] for r in rows]) if rows else vectors
        np.save(d / _VECTORS, stacked.astype(np.float32))
        (d / EPISODES_FILE).write_text(
            json.dumps({"embedder": self.embedder.name, "namespace": self.namespace,
                        "checksums": {"vectors": file_checksum(d / _VECTORS)},
                        "episodes": rows}),
            encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder) -> EpisodicMemory:
        """Read what `save` wrote; raises ValueError when it was built with another embedder."""
        import numpy as np

        d = Path(directory)
        about = json.loads((d / EPISODES_FILE).read_text(encoding="utf-8"))
        if about.get("embedder") != embedder.name:
            raise ValueError(f"episodes embedded with {about.get('embedder')!r}")
        episodes = [Episode(MemoryUnit(**r["unit"]), r["indexed"], tuple(r["facts"]))
                    for r in about["episodes"]]
        _check_vectors(d / _VECTORS, about)
        vectors = np.load(d / _VECTORS, allow_pickle=False)
        if episodes and vectors.shape != (len(episodes), embedder.dim):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(episodes)} episodes")
        memory = cls(embedder, about.get("namespace", "memory"))
        memory.add(episodes, vectors if episodes else None)
        return memory


def _check_vectors(file: Path, about: dict[str, Any]) -> None:
    """The vectors file is the one saved, checked before numpy reads it, as a retrieval index's
    is: a changed file that still parses gave wrong episodes silently. A memory saved with no
    checksum (of size and sha256) is refused, so the artifact cache moves it aside and LIGHT
    builds it again."""
    expected = (about.get("checksums") or {}).get("vectors")
    if (problem := checksum_problem(file, expected)) is not None:
        raise ValueError(f"{_VECTORS} {problem}")
