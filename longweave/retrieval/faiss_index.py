"""The faiss indexes behind `VectorStore`: flat, HNSW and IVF over inner product, GPU copies.

Settings were measured with benchmarks/retrieval.py (384-d embedding-like vectors, 2 CPU cores);
docs/BENCHMARKS.md has the figures. faiss loads on first use, never at import.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from longweave.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "GPU_LOCK",
    "GPU_MAX_SELECT",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH",
    "HNSW_M",
    "IVF_NPROBE",
    "IVF_TRAIN_PER_LIST",
    "KINDS",
    "GpuIndex",
    "gpu_count",
    "index_kind",
    "ivf_lists",
    "new_index",
    "omp_threads",
    "to_gpu",
    "use_gpu",
]

GpuMode = Literal["auto"] | bool
KINDS = ("flat", "hnsw", "ivf")

# HNSW settings: M=32 links per node is the usual balance of memory (+256 B/vector) and recall at
# 384 dimensions; efSearch 128 gave recall@10 0.998 against exact search in under 1 ms/query over
# 100k vectors (an earlier run: efSearch 64 0.97, 256 0.998 at twice the time). The price is the
# build: efConstruction 128 took 7 s for 10k vectors and 156 s for 100k on 2 busy cores.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 128
# IVF settings: sqrt(n) lists, k-means on 40 sampled vectors per list (faiss warns below 39).
# faiss's guideline is 4*sqrt(n) to 16*sqrt(n) lists, but k-means costs 40 * lists^2 * dim per
# round: 1,788 lists (4*sqrt(200k)) took 150 s to train on 2 busy cores, so 4,000 at 1M would take
# ~12 min, against 2 min for the whole sqrt(n) build (training and adding). Per share of vectors
# scanned, 4*sqrt(n) lists did no better in that pilot (recall@10 0.92 scanning 7%) than sqrt(n)
# (0.96 scanning 6% at 1M). nprobe 128: recall@10 0.98 at 100k and at 1M vectors, in 6 and 18 ms
# of CPU (one thread; flat search: 14 and 121 ms); nprobe 64 gave 0.94 and 0.96 in half the
# time. Recall is worth more than milliseconds next to a model call. See docs/BENCHMARKS.md.
IVF_NPROBE = 128
IVF_TRAIN_PER_LIST = 40
GPU_MAX_SELECT = 2048
"""faiss-gpu's limit on k and nprobe."""
GPU_LOCK = threading.RLock()
"""Held for every use of a GPU index: all of them share one StandardGpuResources, whose scratch
memory takes one thread at a time (faiss wiki, "Threads and asynchronous calls": GPU indexes are
not thread-safe, even for searches). A store's own lock does not keep two stores apart."""


def faiss_module() -> Any:
    """The faiss module, or a `ConfigError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "faiss is not installed", hint="pip install faiss-cpu (or faiss-gpu-cu12 with CUDA)"
        ) from None
    return faiss


def gpu_count() -> int:
    """How many GPUs faiss can use: 0 with faiss-cpu, or faiss-gpu without CUDA."""
    faiss = faiss_module()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError:  # a CUDA driver that cannot be initialised
        return 0


def use_gpu(gpu: GpuMode, kind: str) -> bool:
    """Whether an index of `kind` goes on the GPU: flat and IVF indexes, when faiss sees one."""
    if gpu is False or kind == "hnsw":  # faiss's GPU code has no HNSW
        return False
    if gpu_count() > 0:
        return True
    if gpu is True:
        raise ConfigError("gpu=True but faiss sees no GPU", hint="install faiss-gpu, or gpu='auto'")
    return False


@lru_cache(maxsize=1)
def gpu_resources() -> Any:
    """One per process: each StandardGpuResources reserves scratch memory on the device."""
    return faiss_module().StandardGpuResources()


def to_gpu(index: Any) -> GpuIndex:
    """A copy of a CPU `index` on GPU 0 (same ids, same results)."""
    return GpuIndex(index)


class GpuIndex:
    """A faiss GPU index whose copy, adds, searches and release all hold `GPU_LOCK`."""

    def __init__(self, index: Any) -> None:
        faiss = faiss_module()
        with GPU_LOCK, _gpu_nprobe(index):
            self._index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, x: np.ndarray) -> None:
        with GPU_LOCK:
            self._index.add(x)

    def search(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        with GPU_LOCK:
            return self._index.search(x, k, params=params)

    def __del__(self) -> None:
        index = self.__dict__.pop("_index", None)
        if index is not None:  # freeing device memory goes through the shared resources too
            with GPU_LOCK:
                del index


@contextmanager
def _gpu_nprobe(index: Any) -> Iterator[None]:
    """faiss-gpu refuses to copy an IVF index whose nprobe exceeds `GPU_MAX_SELECT`; the store
    passes nprobe with each search, so the copy only needs a value it accepts."""
    before = getattr(index, "nprobe", None)
    if before is None or before <= GPU_MAX_SELECT:
        yield
        return
    index.nprobe = GPU_MAX_SELECT
    try:
        yield
    finally:
        index.nprobe = before


def ivf_lists(n: int) -> int:
    """Inverted lists for an IVF index over `n` vectors: sqrt(n), enough samples for each."""
    return max(1, min(round(math.sqrt(n)), n // IVF_TRAIN_PER_LIST))


def index_kind(index: Any) -> str | None:
    """"flat", "hnsw" or "ivf" for a faiss index of a kind the store uses, else None."""
    faiss = faiss_module()
    classes = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSW, "ivf": faiss.IndexIVF}
    for kind, cls in classes.items():
        if isinstance(index, cls):
            return kind
    return None


def new_index(
    kind: str,
    dim: int,
    *,
    ef_search: int = HNSW_EF_SEARCH,
    nprobe: int = IVF_NPROBE,
    train_on: Sequence[np.ndarray] = (),
) -> Any:
    """An empty inner-product index of `kind`; IVF is trained on a sample of `train_on`."""
    faiss = faiss_module()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = ef_search
        return index
    if kind != "ivf":
        raise ConfigError(f"unknown index kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    total = sum(len(part) for part in train_on)
    nlist = ivf_lists(total)
    # A flat quantizer: faiss-gpu copies only flat ones, and sqrt(n) centroids are cheap to scan.
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(nprobe, nlist)
    index.cp.min_points_per_centroid = 1  # ivf_lists keeps 40 a list; tiny stores get 1 list
    index.make_direct_map()  # reconstruct(id), for exact fallbacks and rebuilds
    if total:  # with no vectors yet, the first add trains it
        index.train(sample(train_on, IVF_TRAIN_PER_LIST * nlist))
    return index


def sample(parts: Sequence[np.ndarray], m: int) -> np.ndarray:
    """At most `m` rows drawn without replacement from the stacked `parts` (seeded: repeatable)."""
    import numpy as np

    total = sum(len(p) for p in parts)
    if total <= m:
        return np.concatenate(parts)
    picks = np.sort(np.random.default_rng(0).choice(total, m, replace=False))
    out, lo = [], 0
    for part in parts:
        out.append(part[picks[(picks >= lo) & (picks < lo + len(part))] - lo])
        lo += len(part)
    return np.concatenate(out)


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """faiss (OpenMP) on `n` threads inside the block; the setting is per calling thread."""
    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    if n is None or n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
