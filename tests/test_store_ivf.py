"""The IVF kind of the vector store: training, growth, save/load, strict loads, GPU and threads."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from longweave.errors import ConfigError
from longweave.retrieval.durable import file_checksum
from longweave.retrieval.faiss_index import ivf_lists
from longweave.retrieval.store import Record, StoreError, VectorStore


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Vectors around 40 centres, so k-means lists mean something."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    return unit(centres[rng.integers(40, size=n)] + 0.6 * rng.standard_normal((n, dim)))


def records(n: int, docs: int = 8) -> list[Record]:
    return [Record(f"doc{i % docs}", i // docs, 10 * i, 10 * i + 9) for i in range(n)]


def ivf_store(n: int = 3000, **kw) -> tuple[VectorStore, np.ndarray, list[Record]]:
    x, recs = clustered(n), records(n)
    s = VectorStore(32, embedder="test-embedder", index="ivf", **kw)
    s.add(x, recs)
    return s, x, recs


def queries(x: np.ndarray, m: int = 60) -> np.ndarray:
    rng = np.random.default_rng(7)
    picked = x[rng.choice(len(x), m, replace=False)]
    return unit(picked + 0.3 * rng.standard_normal(picked.shape))


def overlap(a: list, b: list) -> float:
    """Mean share of each exact top 10 (`b`) that the approximate top 10 (`a`) found."""
    found = [{h.record for h in p} & {h.record for h in q} for p, q in zip(a, b, strict=True)]
    return float(np.mean([len(f) / 10 for f in found]))


def test_lists_grow_with_the_square_root_and_keep_enough_training_vectors() -> None:
    assert ivf_lists(0) == 1 and ivf_lists(39) == 1 and ivf_lists(80) == 2  # 40 vectors a list
    assert ivf_lists(3000) == 55 and ivf_lists(1_000_000) == 1000


def test_ivf_matches_flat_with_every_list_probed_and_approximates_it_with_few() -> None:
    s, x, recs = ivf_store()
    assert s.kind == "ivf" and s._cpu.nlist == 55 and s._cpu.is_trained
    flat = VectorStore(32, index="flat")
    flat.add(x, recs)
    q = queries(x)
    exact = flat.search_batch(q, 10)
    s.nprobe = 55  # every list: an exhaustive scan, so exactly the flat answers
    assert [[h.record for h in r] for r in s.search_batch(q, 10)] == [
        [h.record for h in r] for r in exact
    ]
    s.nprobe = 1
    one = overlap(s.search_batch(q, 10), exact)
    s.nprobe = 16
    sixteen = overlap(s.search_batch(q, 10), exact)
    assert one < sixteen and sixteen >= 0.9
    assert s.search(x[5], 1)[0].record == recs[5]  # single-query path


def test_auto_switches_to_ivf_past_the_threshold_by_default() -> None:
    assert VectorStore(32).approximate == "ivf" and VectorStore(32).approximate_threshold == 200_000
    x, recs = clustered(400), records(400)
    auto = VectorStore(32, approximate_threshold=100)
    auto.add(x[:100], recs[:100])
    assert auto.kind == "flat"
    auto.add(x[100:], recs[100:])  # past the threshold: trained on all 400, then filled
    assert auto.kind == "ivf" and auto._cpu.nlist == ivf_lists(400) and len(auto) == 400
    assert [auto.search(x[i], 1)[0].record for i in (3, 333)] == [recs[3], recs[333]]


def test_an_ivf_store_retrains_as_it_outgrows_its_lists() -> None:
    x, recs = clustered(3000), records(3000)
    s = VectorStore(32, index="ivf")
    assert s.kind == "ivf" and not s._cpu.is_trained and s.search(x[0], 3) == []
    s.add(x[:100], recs[:100])
    assert s._cpu.nlist == 2
    s.add(x[100:120], recs[100:120])  # 3 lists wanted: not worth a rebuild yet
    assert s._cpu.nlist == 2
    s.add(x[120:], recs[120:])
    assert s._cpu.nlist == 55 and s._cpu.ntotal == 3000 and len(s) == 3000
    assert [s.search(x[i], 1)[0].record for i in (0, 110, 2999)] == [recs[0], recs[110], recs[2999]]


def test_ivf_delete_masks_then_rebuilds_and_filters_stay_exact() -> None:
    s, x, recs = ivf_store(800)
    assert s.delete("doc1") == 100 and s._cpu.ntotal == 800  # masked, not yet removed
    assert "doc1" not in {h.document_id for h in s.search(x[1], 50)}
    s.delete("doc2")
    s.delete("doc3")  # past a quarter masked: rebuilt and retrained from the 500 live vectors
    assert s._cpu.ntotal == 500 and s._cpu.nlist == ivf_lists(500)
    doc4 = [i for i, r in enumerate(recs) if r.document_id == "doc4"]
    nearest = sorted(doc4, key=lambda i: -float(x[i] @ x[4]))[:5]
    assert [h.record for h in s.search(x[4], 5, filter="doc4")] == [recs[i] for i in nearest]
    for d in s.documents():  # deleting everything leaves nothing to train on, until the next add
        s.delete(d)
    assert len(s) == 0 and not s._cpu.is_trained and s.search(x[0], 3) == []
    s.add(x[:50], recs[:50])
    assert s._cpu.is_trained and s.search(x[7], 1)[0].record == recs[7]


def test_ivf_save_load_round_trip_keeps_lists_probes_and_mask(tmp_path: Path) -> None:
    s, x, recs = ivf_store(nprobe=5)
    s.delete("doc7")
    s.save(tmp_path / "store")
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["index"] == "ivf" and manifest["ivf"] == {"nlist": 55, "nprobe": 5}
    loaded = VectorStore.load(tmp_path / "store", expected_embedder="test-embedder")
    assert (loaded.kind, loaded.nprobe, loaded._cpu.nlist, len(loaded)) == ("ivf", 5, 55, 2625)
    for q in queries(x, 10):
        assert loaded.search(q, 10) == s.search(q, 10)
    loaded.add(x[:1], [Record("new", 0, 0, 1)])  # the direct map survived: adds and lookups work
    assert loaded.search(x[0], 1, filter="new")[0].document_id == "new"


def test_an_empty_ivf_store_saves_loads_and_trains_on_its_first_add(tmp_path: Path) -> None:
    VectorStore(32, index="ivf").save(tmp_path / "empty")
    loaded = VectorStore.load(tmp_path / "empty")
    assert loaded.kind == "ivf" and len(loaded) == 0
    x, recs = clustered(200), records(200)
    loaded.add(x, recs)
    assert loaded._cpu.is_trained and loaded.search(x[9], 1)[0].record == recs[9]


def rewrite(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_load_rejects_an_index_of_another_kind_or_shape(tmp_path: Path) -> None:
    s, _, _ = ivf_store(500)
    path = tmp_path / "store"
    s.save(path)
    rewrite(path, index="hnsw")
    with pytest.raises(StoreError, match="says a hnsw index but index.faiss holds ivf"):
        VectorStore.load(path)
    rewrite(path, index="ivf", ivf={"nlist": 99, "nprobe": 64})
    with pytest.raises(StoreError, match="99 IVF lists but index.faiss has 12"):
        VectorStore.load(path)
    rewrite(path, index="pq")
    with pytest.raises(StoreError, match="knows flat, hnsw, ivf"):
        VectorStore.load(path)
    rewrite(path, index="ivf", ivf={"nlist": 12, "nprobe": 0})
    with pytest.raises(StoreError, match="settings this longweave rejects"):
        VectorStore.load(path)
    rewrite(path, version=3)
    with pytest.raises(StoreError, match="format version 3; this longweave reads 1, 2"):
        VectorStore.load(path)
    # An L2 index in place of the inner-product one, with checksums to match.
    s, x, _ = ivf_store(50)
    s.save(tmp_path / "l2")
    l2 = faiss.IndexFlatL2(32)
    l2.add(x)
    faiss.write_index(l2, str(tmp_path / "l2" / "index.faiss"))
    rewrite(tmp_path / "l2", index="flat", files={
        "index.faiss": file_checksum(tmp_path / "l2" / "index.faiss"),
        "records.jsonl": file_checksum(tmp_path / "l2" / "records.jsonl"),
    })
    with pytest.raises(StoreError, match="does not search by inner product"):
        VectorStore.load(tmp_path / "l2")


def test_a_format_1_store_still_loads(tmp_path: Path) -> None:
    s = VectorStore(32, embedder="e", approximate_threshold=777)
    x, recs = clustered(50), records(50)
    s.add(x, recs)
    path = tmp_path / "v1"
    s.save(path)
    rewrite(path, version=1, approximate=None, approximate_threshold=None, ivf=None,
            hnsw_threshold=123)
    loaded = VectorStore.load(path)
    assert (loaded.kind, loaded.approximate, loaded.approximate_threshold) == ("flat", "hnsw", 123)
    assert loaded.search(x[3], 1)[0].record == recs[3]


class Spy:
    """Wraps a faiss index and records faiss's thread count during each search."""

    def __init__(self, inner: object, seen: list[int]) -> None:
        self.inner, self.seen = inner, seen

    def search(self, *args: object, **kw: object) -> object:
        self.seen.append(faiss.omp_get_max_threads())
        return self.inner.search(*args, **kw)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_one_query_searches_on_one_thread_batches_on_all(kind: str) -> None:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        x, recs = clustered(300), records(300)
        seen: list[int] = []
        for threads in (1, None):
            s = VectorStore(32, index=kind, query_threads=threads)
            s.add(x, recs)
            s._cpu = Spy(s._cpu, seen)
            assert s.search(x[2], 3)[0].record == recs[2]
            assert s.search_batch(x[:4], 3)[3][0].record == recs[3]
        assert seen == [1, 3, 3, 3]
        assert faiss.omp_get_max_threads() == 3  # restored after the one-thread search
    finally:
        faiss.omp_set_num_threads(before)
    with pytest.raises(ConfigError, match="at least 1"):
        VectorStore(8, query_threads=0)


def test_gpu_takes_ivf_indexes_once_trained_with_the_same_answers(
    fake_gpu: list[object],
) -> None:
    moved = fake_gpu
    x, recs = clustered(1500), records(1500)
    on_gpu = VectorStore(32, index="ivf", nprobe=4)
    assert not on_gpu.on_gpu and not moved  # untrained: nothing to copy yet
    on_gpu.add(x[:1000], recs[:1000])
    assert on_gpu.on_gpu and len(moved) == 1
    on_cpu = VectorStore(32, index="ivf", nprobe=4, gpu=False)
    on_cpu.add(x[:1000], recs[:1000])
    on_gpu.add(x[1000:], recs[1000:])  # reaches the GPU copy too (no retrain: 37 < 2 * 25)
    on_cpu.add(x[1000:], recs[1000:])
    assert len(moved) == 1 and on_gpu._gpu.ntotal == 1500
    for q in queries(x, 20):
        assert on_gpu.search(q, 10) == on_cpu.search(q, 10)
    some = {"doc0", "doc1"}
    assert on_gpu.search(x[1200], 10, filter=some) == on_cpu.search(x[1200], 10, filter=some)
