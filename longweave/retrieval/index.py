"""Per-document retrieval indexes: chunks and their vectors, built once and kept as artifacts.

A document's index lives in the artifact cache (`longweave.cache.ArtifactCache`) under a key made
of the document's hash, the chunker settings (max tokens, overlap, tokenizer name), the embedding
model and `INDEX_FORMAT`; later questions, chat turns and batch runs load it instead of chunking
and embedding again. A corpus (a folder, see `longweave.retrieval.corpus`) indexes each file on
its own (so a new file costs only its own embeddings) and keeps the combined `VectorStore` as one
more artifact. An artifact that fails its checks is moved aside with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.chunking import Chunk, Chunker
from longweave.retrieval.corpus import corpus_parts, member
from longweave.retrieval.embeddings import (
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    embedder_identity,
    make_embedder,
)
from longweave.retrieval.store import Record, VectorStore

if TYPE_CHECKING:
    import numpy as np

    from longweave.cache import ArtifactCache
    from longweave.documents import Document
    from longweave.tokenizers import Tokenizer

__all__ = [
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
]

INDEX_FORMAT = 2
"""Bumped when the artifact layout or chunk recipe changes, so old artifacts are never misread
(2: `index.json` holds checksums of the vectors file and of the chunk spans)."""
DEFAULT_CHUNK_TOKENS = 256
"""Retrieval chunk size in tokens of the chunking tokenizer (ours): all-MiniLM-L6-v2 reads at most
256 word pieces, and a few hundred tokens keeps one passage about one thing."""
_META = "index.json"
_VECTORS = "vectors.npy"
_STORE = "store"


@dataclass(frozen=True)
class DocumentIndex:
    """One document's chunks and a `VectorStore` over their vectors (records hold the spans)."""

    document_id: str
    source: str | None
    chunks: tuple[Chunk, ...]
    vectors: np.ndarray
    store: VectorStore
    key: str
    reused: bool
    """True when the artifact was loaded rather than built in this call."""
    embedded: int
    """Texts whose vectors were computed in this call (0 when reused or served by a cache)."""


@dataclass(frozen=True)
class CorpusIndex:
    """A corpus's combined `VectorStore`; records name each file (`source`) and its chunk spans."""

    document_id: str
    store: VectorStore
    key: str
    reused: bool
    embedded: int
    files: int
    files_built: int
    """Files whose own index was built (not loaded) in this call."""


def index_key(
    document_id: str, *, embedder: str, tokenizer: str, chunk_tokens: int, overlap: int = 0
) -> str:
    """The artifact key of a document's index under these settings (`embedder` is what
    `embedder_identity` says: the name, plus the server for an OpenAI-compatible one)."""
    digest = _digest(
        {"format": INDEX_FORMAT, "doc": document_id, "embedder": embedder,
         "tokenizer": tokenizer, "chunk_tokens": chunk_tokens, "overlap": overlap}
    )
    return f"index-{document_id[:16]}-{digest[:24]}"


def document_index(
    document: Document,
    *,
    embedder: Embedder,
    tokenizer: Tokenizer | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = 0,
    artifacts: ArtifactCache | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> DocumentIndex:
    """The document's index: loaded from `artifacts` when built before, else chunked and embedded.

    Chunks are cut by `tokenizer` (cl100k when None) at paragraph, sentence or word boundaries;
    pass the answering model's tokenizer so chunk sizes are in its tokens. `on_progress(done,
    total)` follows the embedding, a batch at a time (a long document takes a while).
    """
    chunker = Chunker(chunk_tokens, overlap, tokenizer)
    key = index_key(
        document.id, embedder=embedder_identity(embedder), tokenizer=chunker.tokenizer.name,
        chunk_tokens=chunk_tokens, overlap=overlap,
    )
    loaded = (artifacts.load(key, lambda d: _load(d, document, embedder), "the retrieval index")
              if artifacts is not None else None)
    if loaded is not None:
        return _assemble(document, *loaded, embedder, key, reused=True, embedded=0)
    chunks = tuple(chunker.split(document.text))
    vectors, embedded = embed_counted(embedder, [c.text for c in chunks], on_progress)
    about = {
        "format": INDEX_FORMAT, "doc_id": document.id, "source": document.source,
        "embedder": embedder.name, "dim": int(vectors.shape[1]),
        "tokenizer": chunker.tokenizer.name, "chunk_tokens": chunk_tokens, "overlap": overlap,
        "chunks": [[c.start, c.end, c.n_tokens] for c in chunks],
    }
    if artifacts is not None:
        artifacts.save(key, lambda d: _write(d, about, vectors), "the retrieval index")
    return _assemble(document, chunks, vectors, embedder, key, reused=False, embedded=embedded)


def corpus_index(
    document: Document,
    *,
    embedder: Embedder,
    tokenizer: Tokenizer | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = 0,
    artifacts: ArtifactCache | None = None,
    on_file: Callable[[DocumentIndex], None] | None = None,
) -> CorpusIndex:
    """A store over every file of a corpus document, each file indexed (or loaded) on its own.

    `on_file` is called with each file's index when the combined store has to be (re)built.
    """
    import numpy as np

    parts = corpus_parts(document)
    if parts is None:
        raise ValueError(f"{document.name} is not a corpus (open a folder with open_corpus)")
    tok_name = Chunker(chunk_tokens, overlap, tokenizer).tokenizer.name
    key = "corpus-" + _digest(
        {"format": INDEX_FORMAT, "doc": document.id, "sources": [p.source for p in parts],
         "embedder": embedder_identity(embedder), "tokenizer": tok_name,
         "chunk_tokens": chunk_tokens, "overlap": overlap}
    )[:40]

    def read(found: Path) -> VectorStore:
        return VectorStore.load(found / _STORE, expected_embedder=embedder.name,
                                expected_dim=embedder.dim)

    cached = artifacts.load(key, read, "the corpus index") if artifacts is not None else None
    if cached is not None:
        return CorpusIndex(document.id, cached, key, True, 0, len(parts), 0)
    store = VectorStore(embedder.dim, embedder=embedder.name)
    embedded = built = 0
    for part in parts:
        index = document_index(
            member(document, part), embedder=embedder, tokenizer=tokenizer,
            chunk_tokens=chunk_tokens, overlap=overlap, artifacts=artifacts,
        )
        embedded += index.embedded
        built += not index.reused
        if on_file is not None:
            on_file(index)
        if index.chunks:
            store.add(np.asarray(index.vectors), _records(index.chunks, part.doc_id, part.source))
    if artifacts is not None:
        artifacts.save(key, lambda d: store.save(d / _STORE), "the corpus index")
    return CorpusIndex(document.id, store, key, False, embedded, len(parts), built)


def embed_counted(embedder: Embedder, texts: Sequence[str],
                  on_progress: Callable[[int, int], None] | None = None,
                  ) -> tuple[np.ndarray, int]:
    """Vectors of `texts` and how many were computed (a `CachedEmbedder` serves some for free);
    with `on_progress(done, total)`, in batches of `EMBED_BATCH` so that it can be told."""
    before = embedder.embedded if isinstance(embedder, CachedEmbedder) else None
    if on_progress is None or len(texts) <= EMBED_BATCH:
        vectors = embedder.embed(list(texts))
    else:
        import numpy as np

        parts = []
        for start in range(0, len(texts), EMBED_BATCH):
            parts.append(embedder.embed(list(texts[start:start + EMBED_BATCH])))
            on_progress(min(start + EMBED_BATCH, len(texts)), len(texts))
        vectors = np.concatenate(parts)
    if before is not None:
        return vectors, embedder.embedded - before  # type: ignore[union-attr]
    return vectors, len(texts)


EMBED_BATCH = 512
"""Chunks embedded per call when the caller follows the progress."""


def resolve_embedder(spec: str, cache_dir: str | Path | None = None) -> Embedder:
    """An embedder from its spec ("bundled", "st:<model>", "openai:<model>"); with `cache_dir`,
    vectors are also kept by text hash in `cache_dir/embeddings.sqlite`."""
    inner = make_embedder(spec)
    if cache_dir is None:
        return inner
    return CachedEmbedder(inner, EmbeddingCache(Path(cache_dir) / "embeddings.sqlite"))


# -- internals -----------------------------------------------------------------------------------


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _records(chunks: Sequence[Chunk], doc_id: str, source: str | None) -> list[Record]:
    # Chunk text is left out: it is the document's text at the span, and storing it again
    # would double a corpus store's size on disk.
    return [Record(doc_id, c.index, c.start, c.end, source) for c in chunks]


def _assemble(
    document: Document,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    embedder: Embedder,
    key: str,
    *,
    reused: bool,
    embedded: int,
) -> DocumentIndex:
    store = VectorStore(embedder.dim, embedder=embedder.name)
    if chunks:
        store.add(vectors, _records(chunks, document.id, document.source))
    return DocumentIndex(
        document.id, document.source, tuple(chunks), vectors, store, key, reused, embedded
    )


def _write(directory: Path, about: dict[str, Any], vectors: np.ndarray) -> None:
    """The vectors, then `index.json` with their checksums (`_check_sums` says why)."""
    import numpy as np

    np.save(directory / _VECTORS, np.asarray(vectors, dtype=np.float32))
    checksums = {"vectors": _file_checksum(directory / _VECTORS),
                 "chunks": _digest({"chunks": about["chunks"]})}
    (directory / _META).write_text(json.dumps({**about, "checksums": checksums}),
                                   encoding="utf-8")


def _file_checksum(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _check_sums(directory: Path, about: dict[str, Any]) -> None:
    """The vectors file and the spans are the ones written, checked before either is used.

    A changed vector or a shifted span still parses and passes every other check, and would
    answer with the wrong passages; a damaged `.npy` header can make numpy try to allocate
    terabytes, or raise EOFError, before any shape check runs."""
    sums = about.get("checksums")
    if not isinstance(sums, dict) or sums.get("chunks") != _digest({"chunks": about["chunks"]}):
        raise ValueError("the chunk spans do not match their checksum (corrupted)")
    if _file_checksum(directory / _VECTORS) != sums.get("vectors"):
        raise ValueError(f"{_VECTORS} does not match its checksum (truncated or corrupted)")


def _load(
    directory: Path, document: Document, embedder: Embedder
) -> tuple[tuple[Chunk, ...], np.ndarray]:
    """Chunks and vectors from an artifact, each checked against the document and embedder."""
    import numpy as np

    about = json.loads((directory / _META).read_text(encoding="utf-8"))
    if about.get("format") != INDEX_FORMAT or about.get("doc_id") != document.id:
        raise ValueError("written for another format or document")
    if about.get("embedder") != embedder.name or about.get("dim") != embedder.dim:
        raise ValueError(f"written with embedder {about.get('embedder')!r}")
    _check_sums(directory, about)
    vectors = np.load(directory / _VECTORS, allow_pickle=False)
    spans = about["chunks"]
    if vectors.dtype != np.float32 or vectors.shape != (len(spans), embedder.dim):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(spans)} chunks")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    text, chunks = document.text, []
    for i, (start, end, n_tokens) in enumerate(spans):
        if not 0 <= start < end <= len(text):
            raise ValueError(f"chunk {i} span {start}-{end} lies outside the document")
        chunks.append(Chunk(i, text[start:end], int(start), int(end), int(n_tokens)))
    return tuple(chunks), vectors


@dataclass(frozen=True)
class IndexReport:
    """What `index_paths` did for one document or one folder."""

    source: str
    kind: str
    """"document", "file" (one file of a folder) or "corpus" (the folder's combined store)."""
    chunks: int
    reused: bool
    embedded: int
    key: str


def index_paths(
    paths: Sequence[str | Path],
    *,
    embedder: Embedder,
    tokenizer: Tokenizer | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = 0,
    artifacts: ArtifactCache,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    on_report: Callable[[IndexReport], None] | None = None,
) -> list[IndexReport]:
    """Build (or find) the index of each file, and of each folder as a corpus; say what was done."""
    from longweave.api import load_source
    from longweave.retrieval.corpus import open_corpus

    reports: list[IndexReport] = []

    def report(row: IndexReport) -> None:
        reports.append(row)
        if on_report is not None:
            on_report(row)

    settings = dict(embedder=embedder, tokenizer=tokenizer, chunk_tokens=chunk_tokens,
                    overlap=overlap, artifacts=artifacts)
    for path in paths:
        if os.path.isdir(path):
            corpus = open_corpus(path, include=include, exclude=exclude)
            built = corpus_index(
                corpus, **settings,
                on_file=lambda i: report(IndexReport(
                    i.source or "", "file", len(i.chunks), i.reused, i.embedded, i.key)),
            )
            report(IndexReport(str(path), "corpus", len(built.store), built.reused,
                               built.embedded, built.key))
        else:
            # As `ask` reads it (a conversation file as its turns), so `ask -s rag` finds it.
            index = document_index(load_source(Path(path)), **settings)
            report(IndexReport(str(path), "document", len(index.chunks), index.reused,
                               index.embedded, index.key))
    return reports
