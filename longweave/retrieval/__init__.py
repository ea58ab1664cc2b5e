"""Retrieval: text embeddings and a FAISS vector store (heavy libraries load on first use)."""

from __future__ import annotations

from longweave.retrieval.embeddings import (
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
)
from longweave.retrieval.store import Hit, Record, StoreError, VectorStore

__all__ = [
    "CachedEmbedder",
    "Embedder",
    "EmbeddingCache",
    "Hit",
    "OpenAIEmbedder",
    "Record",
    "SentenceTransformerEmbedder",
    "StoreError",
    "VectorStore",
    "make_embedder",
]
