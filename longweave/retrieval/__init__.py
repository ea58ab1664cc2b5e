"""Retrieval: embeddings, a FAISS vector store, per-document and corpus indexes, corpus mode.

Heavy libraries load on first use. The index and corpus pieces are imported on first access
(PEP 562), because `longweave.chunking` under them needs numpy: `import longweave.retrieval`
stays light, and `from longweave.retrieval import document_index` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from longweave.retrieval.embeddings import (
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
    normalize,
)
from longweave.retrieval.store import Filter, Hit, Record, StoreError, VectorStore

if TYPE_CHECKING:
    from longweave.retrieval.corpus import (
        DEFAULT_EXCLUDE,
        DEFAULT_INCLUDE,
        CorpusPart,
        cite_span,
        corpus_files,
        corpus_parts,
        member,
        open_corpus,
    )
    from longweave.retrieval.index import (
        DEFAULT_CHUNK_TOKENS,
        INDEX_FORMAT,
        CorpusIndex,
        DocumentIndex,
        IndexReport,
        corpus_index,
        document_index,
        embed_counted,
        index_key,
        index_paths,
        resolve_embedder,
    )

_LAZY = {
    **dict.fromkeys(
        (
            "DEFAULT_EXCLUDE",
            "DEFAULT_INCLUDE",
            "CorpusPart",
            "cite_span",
            "corpus_files",
            "corpus_parts",
            "member",
            "open_corpus",
        ),
        "longweave.retrieval.corpus",
    ),
    **dict.fromkeys(
        (
            "DEFAULT_CHUNK_TOKENS",
            "INDEX_FORMAT",
            "CorpusIndex",
            "DocumentIndex",
            "IndexReport",
            "corpus_index",
            "document_index",
            "embed_counted",
            "index_key",
            "index_paths",
            "resolve_embedder",
        ),
        "longweave.retrieval.index",
    ),
}

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_EXCLUDE",
    "DEFAULT_INCLUDE",
    "INDEX_FORMAT",
    "CachedEmbedder",
    "CorpusIndex",
    "CorpusPart",
    "DocumentIndex",
    "Embedder",
    "EmbeddingCache",
    "Filter",
    "Hit",
    "IndexReport",
    "OpenAIEmbedder",
    "Record",
    "SentenceTransformerEmbedder",
    "StoreError",
    "VectorStore",
    "cite_span",
    "corpus_files",
    "corpus_index",
    "corpus_parts",
    "document_index",
    "embed_counted",
    "index_key",
    "index_paths",
    "make_embedder",
    "member",
    "normalize",
    "open_corpus",
    "resolve_embedder",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
