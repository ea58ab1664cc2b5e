"""A FAISS vector store: inner product over normalized vectors, on the GPU when faiss sees one.

Collections up to `approximate_threshold` vectors (200k) use an exact flat index; past it the
store switches to an approximate one, IVF by default (`approximate="ivf"`) or HNSW. `index=` pins
one kind. Why (benchmarks/retrieval.py, 2 busy cores, docs/BENCHMARKS.md): a one-thread flat
search cost 14 ms of CPU at 100k vectors and 121 ms at 1M; HNSW answered in under 1 ms with
recall@10 0.998 but took 78 s of CPU (156 s wall) to build at 100k, ~30 min wall extrapolated at
1M; IVF built 1M vectors in 54 s of CPU (2 min wall) and answered in 18 ms of CPU with recall@10
0.98. Stores are rebuilt from cached embeddings whenever a corpus changes, so build time is paid
again and again; IVF also runs on a GPU, HNSW does not. Below 200k an exact search costs under
~30 ms of CPU, small beside a model call, with nothing to train.

Every vector id maps to a `Record` (document id, chunk index, character span), so a search answers
with places in documents.

Deleting from an approximate index: faiss cannot remove HNSW nodes, and removing from IVF would
break the sequential ids records are kept by, so deleted vectors are masked (their record becomes
None and searches skip them) and the index is rebuilt from the live vectors once more than a
quarter of it is masked. Flat indexes remove vectors at once.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from longweave.errors import ConfigError, LongweaveError, LongweaveWarning
from longweave.retrieval.embeddings import normalize
from longweave.retrieval.faiss_index import (
    GPU_MAX_SELECT,
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    IVF_NPROBE,
    KINDS,
    GpuMode,
    gpu_count,
    index_kind,
    ivf_lists,
    new_index,
    omp_threads,
    to_gpu,
    use_gpu,
)
from longweave.retrieval.faiss_index import faiss_module as _faiss

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "APPROXIMATE_THRESHOLD",
    "Filter",
    "Hit",
    "Record",
    "StoreError",
    "VectorStore",
    "gpu_count",
    "use_gpu",
]

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]
Approximate = Literal["hnsw", "ivf"]
Filter = str | Collection[str] | Callable[["Record"], bool] | None
"""A document id, a collection of document ids, or a predicate on each record."""

APPROXIMATE_THRESHOLD = 200_000
"""Vectors past which an automatic store leaves the flat index for `approximate` (see above)."""
IVF_RETRAIN_GROWTH = 2
"""Retrain IVF once the collection wants this many times the lists it was trained with."""
MASK_LIMIT = 0.25
"""Rebuild a masked approximate index once this fraction of its vectors is deleted."""
EXACT_BELOW = 4096
"""Filters that allow at most this many vectors are searched exactly (a small matrix product)."""
MAX_FETCH = GPU_MAX_SELECT
"""The most candidates fetched from the index when filtering (also the GPU's k limit)."""


class StoreError(LongweaveError):
    """A vector store could not be used: missing, corrupt, or built with another embedder."""

    def __init__(self, path: str | Path, problem: str, *, hint: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"vector store {self.path}: {problem}", hint=hint)


@dataclass(frozen=True)
class Record:
    """Where a vector came from: a chunk of a document and its character span [start, end)."""

    document_id: str
    chunk_index: int
    start: int
    end: int
    source: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Hit:
    """A search result: the record and its inner product with the query (cosine similarity)."""

    record: Record
    score: float

    @property
    def document_id(self) -> str:
        return self.record.document_id

    @property
    def chunk_index(self) -> int:
        return self.record.chunk_index

    @property
    def start(self) -> int:
        return self.record.start

    @property
    def end(self) -> int:
        return self.record.end

    @property
    def source(self) -> str | None:
        return self.record.source

    @property
    def text(self) -> str | None:
        return self.record.text


class VectorStore:
    """Inner-product search over normalized vectors, each mapped to a `Record`.

    >>> import numpy as np
    >>> store = VectorStore(2)
    >>> store.add(np.eye(2), [Record("a", 0, 0, 5), Record("b", 0, 0, 7)])
    >>> store.search(np.array([0.9, 0.1]), k=1)[0].document_id
    'a'

    `index` pins "flat", "hnsw" or "ivf"; "auto" is flat up to `approximate_threshold` vectors
    and `approximate` past it. `ef_search` (HNSW) and `nprobe` (IVF) trade speed for recall.
    `query_threads` is how many threads faiss uses for a one-query search (None: all cores): one
    thread is faster there, since OpenMP threads wait on each other for so little work, and
    badly so on a busy machine; batches of queries use every core.
    """

    def __init__(
        self,
        dim: int,
        *,
        embedder: str = "",
        index: IndexKind = "auto",
        approximate: Approximate = "ivf",
        approximate_threshold: int = APPROXIMATE_THRESHOLD,
        gpu: GpuMode = "auto",
        ef_search: int = HNSW_EF_SEARCH,
        nprobe: int = IVF_NPROBE,
        query_threads: int | None = 1,
    ) -> None:
        if index not in ("auto", *KINDS):
            raise ConfigError(
                f"unknown index kind {index!r}", hint="use 'auto', 'flat', 'hnsw' or 'ivf'"
            )
        if approximate not in ("hnsw", "ivf"):
            raise ConfigError(
                f"unknown approximate index {approximate!r}", hint="use 'hnsw' or 'ivf'"
            )
        if min(ef_search, nprobe, 1 if query_threads is None else query_threads) < 1:
            raise ConfigError(
                "ef_search, nprobe and query_threads must be at least 1",
                hint="use the defaults unless a benchmark says otherwise",
            )
        self.dim = dim
        self.embedder = embedder
        self.index_mode: IndexKind = index
        self.approximate: Approximate = approximate
        self.approximate_threshold = approximate_threshold
        self.gpu = gpu
        self.ef_search = ef_search
        self.nprobe = nprobe
        self.query_threads = query_threads
        self._records: list[Record | None] = []  # by vector id; None: masked (deleted)
        self._by_doc: dict[str, list[int]] = {}
        self._lock = threading.RLock()
        self._set_index(self._new_index(self._kind_for(0)))

    @property
    def kind(self) -> str:
        """The index in use now: "flat", "hnsw" or "ivf"."""
        return self._kind

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on a GPU copy of the index."""
        return self._gpu is not None

    def __len__(self) -> int:
        return len(self._records) - self._masked

    def add(self, vectors: Any, records: Sequence[Record]) -> None:
        """Add one vector per record; vectors are normalized, so inner product is cosine."""
        x = self._check(vectors)
        if len(x) != len(records):
            raise ValueError(f"{len(x)} vectors but {len(records)} records")
        with self._lock:
            after = len(self) + len(x)
            target = self._kind_for(after)
            # Grow out of flat past the threshold, and retrain IVF lists sized for far fewer.
            if (self._kind == "flat" and target != "flat") or (
                self._kind == "ivf" and self._retrain_due(after)
            ):
                self._rebuild(target, extra=x)
            first = len(self._records)
            self._cpu.add(x)
            if self._gpu is not None:
                self._gpu.add(x)
            self._records.extend(records)
            for i, r in enumerate(records, first):
                self._by_doc.setdefault(r.document_id, []).append(i)

    def search(self, query: Any, k: int = 5, filter: Filter = None) -> list[Hit]:
        """The `k` records nearest one query vector, best first, among those `filter` allows
        (a vector of zeros: see `search_batch`)."""
        q = normalize(query)
        if len(q) != 1:
            raise ValueError(f"search takes one query vector, got {len(q)}: use search_batch")
        return self._search(q, k, filter, stacklevel=4)[0]

    def search_batch(self, queries: Any, k: int = 5, filter: Filter = None) -> list[list[Hit]]:
        """`search` for each row of `queries` (one index call for all of them).

        A query of all zeros (an embedder that found nothing it knows in the text, such as a
        bag-of-words one on "?") is as near to every vector as to any other: it is answered with
        the first `k` records in store order (a document's chunks in reading order), at score 0,
        with a `LongweaveWarning`, rather than with whichever the index happened to visit first.
        """
        return self._search(queries, k, filter, stacklevel=4)

    def _search(self, queries: Any, k: int, filter: Filter, stacklevel: int) -> list[list[Hit]]:
        """`search_batch`; a warning about zero queries points `stacklevel` frames up."""
        q = self._check(queries)
        with self._lock:
            allowed = self._allowed(filter)
            n_allowed = len(self) if allowed is None else len(allowed)
            want = min(k, n_allowed)
            if want <= 0:
                return [[] for _ in q]
            zero = ~q.any(axis=1)
            if zero.any():
                _warn_zero(int(zero.sum()), len(q), stacklevel)
                first = self._in_order(allowed, want)
                if zero.all():
                    return [list(first) for _ in q]
                found = iter(self._search(q[~zero], k, filter, stacklevel))
                return [list(first) if z else next(found) for z in zero]
            if allowed is not None and n_allowed <= EXACT_BELOW:
                return [self._exact(row, allowed, k) for row in q]
            ntotal = len(self._records)
            # Over-fetch in proportion to what the filter (and any masking) leaves out.
            fetch = min(ntotal, max(k, min(MAX_FETCH, math.ceil(2 * k * ntotal / n_allowed))))
            if n_allowed == ntotal:
                fetch = min(k, ntotal)
            scores, ids = self._search_index(q, fetch)
            out = []
            for row, s_row, i_row in zip(q, scores, ids, strict=True):
                hits = [
                    Hit(rec, float(s))
                    for s, i in zip(s_row, i_row, strict=True)
                    if i >= 0
                    and (rec := self._records[i]) is not None
                    and (allowed is None or int(i) in allowed)
                ][:k]
                if len(hits) < want:  # the index found too few: search the allowed ones exactly
                    hits = self._exact(row, self._live_ids() if allowed is None else allowed, k)
                out.append(hits)
            return out

    def delete(self, document_id: str) -> int:
        """Remove every vector of `document_id`; returns how many were removed."""
        import numpy as np

        with self._lock:
            ids = self._by_doc.pop(document_id, [])
            if not ids:
                return 0
            if self._kind == "flat":
                gone = set(ids)
                self._cpu.remove_ids(_faiss().IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
                self._records = [r for i, r in enumerate(self._records) if i not in gone]
                self._reindex()
                self._set_index(self._cpu)  # a fresh GPU copy, ids shifted like the CPU's
            else:
                for i in ids:
                    self._records[i] = None
                self._masked += len(ids)
                if self._masked > MASK_LIMIT * len(self._records):
                    self._rebuild(self._kind_for(len(self)))
            return len(ids)

    def documents(self) -> list[str]:
        """The ids of the documents that have vectors in the store."""
        return list(self._by_doc)

    def save(self, directory: str | Path) -> None:
        """Write the store to `directory` atomically: a failed save leaves the old one intact."""
        from longweave.retrieval.store_io import write_store

        with self._lock:
            about = {
                "dim": self.dim,
                "embedder": self.embedder,
                "count": len(self),
                "index": self.kind,
                "index_mode": self.index_mode,
                "approximate": self.approximate,
                "approximate_threshold": self.approximate_threshold,
                "hnsw": {
                    "m": HNSW_M,
                    "ef_construction": HNSW_EF_CONSTRUCTION,
                    "ef_search": self.ef_search,
                },
                "ivf": {
                    "nlist": int(self._cpu.nlist) if self._kind == "ivf" else None,
                    "nprobe": self.nprobe,
                },
            }
            # The CPU index is the master copy, so a GPU index is never what gets written.
            write_store(Path(directory).expanduser(), self._cpu, self._records, about)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        expected_embedder: str | None = None,
        expected_dim: int | None = None,
        gpu: GpuMode = "auto",
        query_threads: int | None = 1,
        relabel: Callable[[Record], Record] | None = None,
    ) -> VectorStore:
        """Read a saved store, raising `StoreError` if it is missing, corrupt or mismatched.

        `relabel` maps each record as read (a corpus names its files as this run opened them)."""
        from longweave.retrieval.store_io import read_store

        path = Path(directory).expanduser()
        manifest, index, records = read_store(
            path, expected_embedder=expected_embedder, expected_dim=expected_dim
        )
        if relabel is not None:
            records = [None if r is None else relabel(r) for r in records]
        try:
            store = cls(
                manifest["dim"],
                embedder=manifest["embedder"],
                index=manifest.get("index_mode", "auto"),
                # Format 1 stores switched to HNSW, past what it called hnsw_threshold.
                approximate=manifest.get("approximate", "hnsw"),
                approximate_threshold=manifest.get(
                    "approximate_threshold", manifest.get("hnsw_threshold", APPROXIMATE_THRESHOLD)
                ),
                gpu=gpu,
                ef_search=(manifest.get("hnsw") or {}).get("ef_search", HNSW_EF_SEARCH),
                nprobe=(manifest.get("ivf") or {}).get("nprobe", IVF_NPROBE),
                query_threads=query_threads,
            )
        except (ConfigError, TypeError, AttributeError) as exc:
            raise StoreError(
                path, f"manifest.json holds settings this longweave rejects: {exc}",
                hint="delete the folder and build the index again",
            ) from None
        store._records = records
        store._reindex()
        store._set_index(index)
        return store

    # -- internals ---------------------------------------------------------------------------

    def _kind_for(self, n: int) -> str:
        if self.index_mode != "auto":
            return self.index_mode
        return self.approximate if n > self.approximate_threshold else "flat"

    def _retrain_due(self, n: int) -> bool:
        return not self._cpu.is_trained or ivf_lists(n) >= IVF_RETRAIN_GROWTH * self._cpu.nlist

    def _new_index(self, kind: str, train_on: Sequence[np.ndarray] = ()) -> Any:
        return new_index(
            kind, self.dim, ef_search=self.ef_search, nprobe=self.nprobe, train_on=train_on
        )

    def _set_index(self, cpu_index: Any) -> None:
        """Use `cpu_index`, with a GPU copy for searching when `use_gpu` says so."""
        faiss = _faiss()
        self._cpu = cpu_index
        self._kind = index_kind(cpu_index) or "flat"
        if self._kind == "ivf" and cpu_index.direct_map.type == faiss.DirectMap.NoMap:
            cpu_index.make_direct_map()
        self._masked = sum(r is None for r in self._records)
        # The CPU index stays the master copy: adds go to both, saves read it directly.
        self._gpu = None
        if use_gpu(self.gpu, self._kind) and (self._kind != "ivf" or cpu_index.is_trained):
            self._gpu = to_gpu(cpu_index)

    def _rebuild(self, kind: str, extra: np.ndarray | None = None) -> None:
        """A fresh index of `kind` holding only the live vectors (dropping masked ones).

        `extra` (vectors about to be added) joins the IVF training sample, not the index.
        """
        live = self._live_ids()
        vectors = self._vectors(live)
        index = self._new_index(kind, [vectors] if extra is None else [vectors, extra])
        if len(vectors):  # an IVF index with nothing to train on stays untrained until an add
            index.add(vectors)
        self._records = [self._records[i] for i in live]
        self._reindex()
        self._set_index(index)

    def _reindex(self) -> None:
        self._by_doc = {}
        for i, r in enumerate(self._records):
            if r is not None:
                self._by_doc.setdefault(r.document_id, []).append(i)

    def _live_ids(self) -> list[int]:
        return [i for i, r in enumerate(self._records) if r is not None]

    def _vectors(self, ids: Collection[int]) -> np.ndarray:
        import numpy as np

        if len(ids) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if len(ids) == self._cpu.ntotal:
            return self._cpu.reconstruct_n(0, self._cpu.ntotal)
        return self._cpu.reconstruct_batch(np.fromiter(ids, dtype=np.int64, count=len(ids)))

    def _allowed(self, filter: Filter) -> set[int] | None:
        if filter is None:
            return None
        if isinstance(filter, str):
            return set(self._by_doc.get(filter, ()))
        if callable(filter):
            return {i for i, r in enumerate(self._records) if r is not None and filter(r)}
        return {i for d in filter for i in self._by_doc.get(d, ())}

    def _search_index(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        on_gpu = self._gpu is not None and fetch <= GPU_MAX_SELECT
        params = None
        if self._kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))
        elif self._kind == "ivf":
            # Enough lists to hold about twice `fetch` vectors, at least `nprobe`.
            nlist = self._cpu.nlist
            need = math.ceil(2 * fetch * nlist / max(1, self._cpu.ntotal))
            nprobe = min(nlist, max(self.nprobe, need))
            if on_gpu:  # the CPU fallback for a larger k may scan more lists
                nprobe = min(nprobe, GPU_MAX_SELECT)
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        if on_gpu:
            return self._gpu.search(q, fetch, params=params)
        with omp_threads(self.query_threads if len(q) == 1 else None):
            return self._cpu.search(q, fetch, params=params)

    def _in_order(self, allowed: set[int] | None, k: int) -> list[Hit]:
        """The first `k` live records that `allowed` admits, in store order, at score 0."""
        ids = sorted(allowed) if allowed is not None else range(len(self._records))
        live = (r for i in ids if (r := self._records[i]) is not None)
        return [Hit(r, 0.0) for r in itertools.islice(live, k)]

    def _exact(self, query: np.ndarray, ids: Collection[int], k: int) -> list[Hit]:
        import numpy as np

        order = np.fromiter(sorted(ids), dtype=np.int64, count=len(ids))
        if len(order) == 0:
            return []
        scores = self._vectors(order) @ query
        top = np.arange(len(scores))
        if len(scores) > k:  # select first, so a fallback over a million vectors sorts only k
            top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(self._records[order[j]], float(scores[j])) for j in top]  # type: ignore[arg-type]

    def _check(self, vectors: Any) -> np.ndarray:
        import numpy as np

        x = normalize(vectors)
        if x.shape[1] != self.dim:
            raise ConfigError(
                f"vectors have {x.shape[1]} dimensions but the store holds {self.dim}",
                hint="embed with the model the store was built with, or build a new store",
            )
        if not np.isfinite(x).all():
            raise ValueError("vectors contain NaN or infinity")
        return x


def _warn_zero(zero: int, queries: int, stacklevel: int) -> None:
    which = "the query vector is" if queries == 1 else f"{zero} of {queries} queries are"
    warnings.warn(f"{which} all zeros (the embedder found nothing it knows in the text), so no "
                  "record is nearer than another: answering with the first ones in store order "
                  "(reading order), at score 0; rephrase the question with words from the "
                  "document", LongweaveWarning, stacklevel=stacklevel)
