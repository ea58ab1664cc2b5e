"""Per-document retrieval indexes: chunks and their vectors, built once and kept as artifacts.

A document's index lives in the artifact cache (`longweave.cache.ArtifactCache`) under a key made
of the document's hash, the chunker settings (max tokens, overlap, tokenizer name), the embedding
model and `INDEX_FORMAT`; later questions, chat turns and batch runs load it instead of chunking
and embedding again. A corpus (a folder, see `longweave.retrieval.corpus`) indexes each file on
its own (so a new file costs only its own embeddings) and keeps one more artifact, keyed by the
corpus text (the files' relative names and contents, not where the folder lies or how its path
was typed), that lists the files' indexes: the combined `VectorStore` is put together from their
vectors, so they are stored once, except for an approximate store (past 200k vectors), whose
trained index is kept too. An artifact that fails its checks is moved aside with a warning and
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.chunking import Chunk, Chunker
from longweave.retrieval.corpus import CorpusPart, corpus_parts, member
from longweave.retrieval.durable import checksum_problem, file_checksum
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
    parts = corpus_parts(document)
    if parts is None:
        raise ValueError(f"{document.name} is not a corpus (open a folder with open_corpus)")
    identity = embedder_identity(embedder)
    tok_name = Chunker(chunk_tokens, overlap, tokenizer).tokenizer.name
    files = [index_key(p.doc_id, embedder=identity, tokenizer=tok_name,
                       chunk_tokens=chunk_tokens, overlap=overlap) for p in parts]
    # The corpus text (the files' names relative to the folder, and their contents) says which
    # corpus this is; where the folder lies, or how its path was typed, does not: records name
    # the files as this run opened them (`_read_corpus`).
    key = "corpus-" + _digest(
        {"format": INDEX_FORMAT, "corpus_format": CORPUS_FORMAT, "doc": document.id,
         "embedder": identity, "tokenizer": tok_name, "chunk_tokens": chunk_tokens,
         "overlap": overlap}
    )[:40]
    cached = (artifacts.load(key, partial(_read_corpus, document=document, files=files,
                                          embedder=embedder, artifacts=artifacts),
                             "the corpus index")
              if artifacts is not None else None)
    if cached is not None:
        return CorpusIndex(document.id, cached, key, True, 0, len(parts), 0)
    indexes: list[DocumentIndex] = []
    for part in parts:
        index = document_index(
            member(document, part), embedder=embedder, tokenizer=tokenizer,
            chunk_tokens=chunk_tokens, overlap=overlap, artifacts=artifacts,
        )
        if on_file is not None:
            on_file(index)
        indexes.append(index)
    store = _combine(embedder, parts,
                     [([(c.start, c.end) for c in i.chunks], i.vectors) for i in indexes])
    if artifacts is not None:
        about = {"format": CORPUS_FORMAT, "files": [[p.source, k] for p, k in zip(
            parts, files, strict=True)], "vectors": len(store), "store": store.kind != "flat"}
        artifacts.save(key, lambda d: _write_corpus(d, about, store), "the corpus index")
    return CorpusIndex(document.id, store, key, False, sum(i.embedded for i in indexes),
                       len(parts), sum(not i.reused for i in indexes))


CORPUS_FORMAT = 2
"""Bumped when a corpus artifact's layout changes (2: `corpus.json` names the files' indexes,
which hold the vectors, and the key no longer holds the file paths; the store itself is kept
only when it is approximate). A corpus cached by an earlier longweave is not found under its new
key and is put together once more from its files' indexes, with nothing embedded again."""
_CORPUS = "corpus.json"


def _combine(embedder: Embedder, parts: Sequence[CorpusPart],
             loaded: Sequence[tuple[Sequence[tuple[int, int]], np.ndarray]]) -> VectorStore:
    """One store over the files' chunks (their spans), in file order, added at once."""
    import numpy as np

    store = VectorStore(embedder.dim, embedder=embedder.name)
    records = [Record(part.doc_id, i, span[0], span[1], part.source)
               for part, (spans, _) in zip(parts, loaded, strict=True)
               for i, span in enumerate(spans)]
    if records:
        store.add(np.concatenate([v for spans, v in loaded if len(spans)]), records)
    return store


def _write_corpus(directory: Path, about: dict[str, Any], store: VectorStore) -> None:
    """The list of file indexes, and the store when it is approximate. A flat store is a copy of
    the files' vectors, put together again from them at each load (75k vectors of 384
    dimensions: about 0.9 s of CPU, against 0.6 s to read and check the copy, which took
    126 MB more on disk, and as much again at each edit of any file); an approximate one is
    trained (minutes at a million vectors)."""
    if about["store"]:
        store.save(directory / _STORE)
    (directory / _CORPUS).write_text(json.dumps(about), encoding="utf-8")


def _read_corpus(
    found: Path, *, document: Document, files: list[str], embedder: Embedder,
    artifacts: ArtifactCache,
) -> VectorStore | None:
    """The corpus store from its artifact: loaded when it was kept, else put together from the
    files' indexes (None, to build, when one of them is gone or damaged)."""
    parts = corpus_parts(document) or ()
    about = json.loads((found / _CORPUS).read_text(encoding="utf-8"))
    if about.get("format") != CORPUS_FORMAT:
        raise ValueError("written for another format")
    saved = about["files"]
    if [k for _, k in saved] != files:
        raise ValueError("written for other files")
    if about["store"]:
        # Saved with the files named as the run that built it opened them; same corpus text,
        # same files in the same order, so the i-th saved name is the i-th file now.
        names = {old: part.source for (old, _), part in zip(saved, parts, strict=True)}
        return VectorStore.load(
            found / _STORE, expected_embedder=embedder.name, expected_dim=embedder.dim,
            relabel=lambda r: replace(r, source=names.get(r.source, r.source)))
    loaded = []
    for part, key in zip(parts, files, strict=True):
        read = partial(_load_spans, document=member(document, part), embedder=embedder)
        got = artifacts.load(key, read, "the retrieval index")
        if got is None:
            return None
        loaded.append(got)
    store = _combine(embedder, parts, loaded)
    if len(store) != about["vectors"]:
        raise ValueError(f"{len(store)} vectors where {about['vectors']} were saved")
    return store


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
    checksums = {"vectors": file_checksum(directory / _VECTORS),
                 "chunks": _digest({"chunks": about["chunks"]})}
    (directory / _META).write_text(json.dumps({**about, "checksums": checksums}),
                                   encoding="utf-8")


def _check_sums(directory: Path, about: dict[str, Any]) -> None:
    """The vectors file and the spans are the ones written, checked before either is used.

    A changed vector or a shifted span still parses and passes every other check, and would
    answer with the wrong passages; a damaged `.npy` header can make numpy try to allocate
    terabytes, or raise EOFError, before any shape check runs."""
    sums = about.get("checksums")
    if not isinstance(sums, dict) or sums.get("chunks") != _digest({"chunks": about["chunks"]}):
        raise ValueError("the chunk spans do not match their checksum (corrupted)")
    if (problem := checksum_problem(directory / _VECTORS, sums.get("vectors"))) is not None:
        raise ValueError(f"{_VECTORS} {problem}")


def _load(
    directory: Path, document: Document, embedder: Embedder
) -> tuple[tuple[Chunk, ...], np.ndarray]:
    """Chunks and vectors from an artifact, each checked against the document and embedder."""
    spans, vectors = _load_spans(directory, document, embedder)
    text = document.text
    chunks = tuple(Chunk(i, text[start:end], start, end, n_tokens)
                   for i, (start, end, n_tokens) in enumerate(spans))
    return chunks, vectors


def _load_spans(
    directory: Path, document: Document, embedder: Embedder
) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """The chunk spans `(start, end, tokens)` and vectors of an artifact, checked (a corpus
    needs no chunk texts: its records are spans)."""
    import numpy as np

    about = json.loads((directory / _META).read_text(encoding="utf-8"))
    if about.get("format") != INDEX_FORMAT or about.get("doc_id") != document.id:
        raise ValueError("written for another format or document")
    if about.get("embedder") != embedder.name or about.get("dim") != embedder.dim:
        raise ValueError(f"written with embedder {about.get('embedder')!r}")
    _check_sums(directory, about)
    vectors = np.load(directory / _VECTORS, allow_pickle=False)
    spans = [(int(start), int(end), int(n)) for start, end, n in about["chunks"]]
    if vectors.dtype != np.float32 or vectors.shape != (len(spans), embedder.dim):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(spans)} chunks")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    size = len(document.text)
    for i, (start, end, _) in enumerate(spans):
        if not 0 <= start < end <= size:
            raise ValueError(f"chunk {i} span {start}-{end} lies outside the document")
    return spans, vectors


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
