"""The FAISS vector store: flat, HNSW and IVF search, filters, delete, atomic save, strict load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from longweave.errors import ConfigError, LongweaveError, LongweaveWarning
from longweave.retrieval import store as store_mod
from longweave.retrieval.durable import file_checksum
from longweave.retrieval.store import Hit, Record, StoreError, VectorStore, gpu_count, use_gpu


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embedding_like(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Vectors with a low intrinsic dimension, as sentence embeddings have."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((12, dim))
    return unit(rng.standard_normal((n, 12)) @ basis + 0.5 * rng.standard_normal((n, dim)))


def records(n: int, docs: int = 10) -> list[Record]:
    return [
        Record(f"doc{i % docs}", i // docs, 100 * i, 100 * i + 99, f"d{i % docs}.txt", f"chunk {i}")
        for i in range(n)
    ]


def brute_force(x: np.ndarray, recs: list[Record], q: np.ndarray, k: int, keep=None) -> list:
    scores = x @ q
    order = [i for i in np.argsort(-scores, kind="stable") if keep is None or keep(recs[i])]
    return [recs[i] for i in order[:k]]


def make(n: int = 300, dim: int = 32, **kw) -> tuple[VectorStore, np.ndarray, list[Record]]:
    x, recs = embedding_like(n, dim), records(n)
    s = VectorStore(dim, embedder="test-embedder", **kw)
    s.add(x, recs)
    return s, x, recs


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_returns_the_nearest_records_with_their_spans(kind: str) -> None:
    s, x, recs = make(index=kind)
    hits = s.search(x[17], k=5)
    assert s.kind == kind and len(s) == 300
    assert isinstance(hits[0], Hit) and hits[0].record == recs[17]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert (hits[0].document_id, hits[0].chunk_index, hits[0].start, hits[0].end) == (
        "doc7",
        1,
        1700,
        1799,
    )
    assert [h.record for h in hits] == brute_force(x, recs, x[17], 5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hnsw_agrees_with_flat_on_5k_vectors() -> None:
    x = embedding_like(5000, 64, seed=1)
    recs = records(5000)
    flat = VectorStore(64, index="flat")
    hnsw = VectorStore(64, index="hnsw")
    flat.add(x, recs)
    hnsw.add(x, recs)
    rng = np.random.default_rng(2)
    queries = unit(x[rng.choice(5000, 100, replace=False)] + 0.05 * rng.standard_normal((100, 64)))
    exact = flat.search_batch(queries, 10)
    approx = hnsw.search_batch(queries, 10)
    top1 = np.mean([a[0].record == e[0].record for a, e in zip(approx, exact, strict=True)])
    recall = np.mean(
        [
            len({h.record for h in a} & {h.record for h in e}) / 10
            for a, e in zip(approx, exact, strict=True)
        ]
    )
    assert top1 >= 0.95
    assert recall >= 0.95


def test_auto_switches_to_hnsw_past_the_threshold_when_asked_and_can_be_overridden() -> None:
    x, recs = embedding_like(150, 16), records(150)
    auto = VectorStore(16, approximate="hnsw", approximate_threshold=100)
    auto.add(x[:100], recs[:100])
    assert auto.kind == "flat"
    auto.add(x[100:], recs[100:])
    assert auto.kind == "hnsw" and len(auto) == 150
    assert auto.search(x[42], 1)[0].record == recs[42]
    assert auto.search(x[142], 1)[0].record == recs[142]
    pinned = VectorStore(16, index="flat", approximate_threshold=100)
    pinned.add(x, recs)
    assert pinned.kind == "flat"
    assert VectorStore(16, index="hnsw").kind == "hnsw"
    assert VectorStore(16, index="ivf").kind == "ivf"
    with pytest.raises(ConfigError, match="'flat', 'hnsw' or 'ivf'"):
        VectorStore(16, index="pq")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'hnsw' or 'ivf'"):
        VectorStore(16, approximate="flat")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        VectorStore(16, nprobe=0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filters_by_document_set_and_predicate(kind: str) -> None:
    s, x, recs = make(index=kind)
    one = s.search(x[0], 50, filter="doc3")
    assert len(one) == 30 and {h.document_id for h in one} == {"doc3"}
    two = s.search(x[0], 5, filter={"doc1", "doc2"})
    assert [h.record for h in two] == brute_force(
        x, recs, x[0], 5, lambda r: r.document_id in {"doc1", "doc2"}
    )
    even = s.search(x[0], 7, filter=lambda r: r.chunk_index % 2 == 0)
    assert [h.record for h in even] == brute_force(
        x, recs, x[0], 7, lambda r: r.chunk_index % 2 == 0
    )
    assert s.search(x[0], 5, filter="no-such-doc") == []


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filtered_search_over_fetches_then_falls_back_to_exact(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the over-fetch path, and make it fetch too few for a rare document to show up.
    monkeypatch.setattr(store_mod, "EXACT_BELOW", 0)
    monkeypatch.setattr(store_mod, "MAX_FETCH", 3)
    s, x, recs = make(index=kind)
    far = brute_force(x, recs, -x[0], 1)[0].document_id  # the document least like the query
    hits = s.search(x[0], 8, filter=far)
    assert [h.record for h in hits] == brute_force(x, recs, x[0], 8, lambda r: r.document_id == far)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_delete_removes_a_document_and_keeps_ids_straight(kind: str) -> None:
    s, x, recs = make(index=kind)
    assert s.delete("doc4") == 30 and s.delete("doc4") == 0
    assert len(s) == 270 and "doc4" not in s.documents()
    for i in (0, 13, 299):
        hits = s.search(x[i], 10)
        assert hits[0].record == recs[i]
        assert "doc4" not in {h.document_id for h in hits}
    # Deleting more than a quarter rebuilds an HNSW index from the live vectors.
    for d in ("doc1", "doc2"):
        s.delete(d)
    assert len(s) == 210
    assert s._cpu.ntotal == 210  # white-box: the masked vectors are gone from the index
    for i in (0, 13, 299):
        assert s.search(x[i], 1)[0].record == recs[i]
    live = {r for r in recs if r.document_id not in {"doc1", "doc2", "doc4"}}
    assert {h.record for h in s.search(x[4], 300)} == live


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    s, x, recs = make(index=kind)
    s.delete("doc9")  # HNSW and IVF save their mask too
    s.save(tmp_path / "store")
    loaded = VectorStore.load(
        tmp_path / "store", expected_embedder="test-embedder", expected_dim=32
    )
    assert (loaded.kind, len(loaded), loaded.embedder, loaded.dim) == (
        kind,
        270,
        "test-embedder",
        32,
    )
    for i in (0, 5, 123):
        before, after = s.search(x[i], 10), loaded.search(x[i], 10)
        assert [h.record for h in after] == [h.record for h in before]
        assert [h.score for h in after] == pytest.approx([h.score for h in before], abs=1e-6)
    assert loaded.search(x[0], 3, filter="doc2") == s.search(x[0], 3, filter="doc2")
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["dim"] == 32 and manifest["count"] == 270 and manifest["index"] == kind
    assert manifest["embedder"] == "test-embedder" and manifest["version"] == 2
    assert len(manifest["files"]["index.faiss"]["sha256"]) == 64
    loaded.add(x[:1], [Record("new", 0, 0, 1)])  # a loaded store keeps working
    assert loaded.search(x[0], 1, filter="new")[0].document_id == "new"


def saved(tmp_path: Path) -> Path:
    s, _, _ = make()
    s.save(tmp_path / "store")
    return tmp_path / "store"


def test_load_of_a_missing_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist") as err:
        VectorStore.load(tmp_path / "nothing")
    assert isinstance(err.value, LongweaveError) and err.value.path.endswith("nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no manifest.json"):
        VectorStore.load(tmp_path / "empty")


def test_load_of_a_truncated_index_fails(tmp_path: Path) -> None:
    path = saved(tmp_path)
    index = path / "index.faiss"
    index.write_bytes(index.read_bytes()[:1000])
    with pytest.raises(StoreError, match="truncated") as err:
        VectorStore.load(path)
    assert "build the index again" in str(err.value)


def test_load_of_a_corrupted_index_fails_its_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = bytearray((path / "index.faiss").read_bytes())
    data[-5] ^= 0xFF  # same size, one vector silently changed
    (path / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        VectorStore.load(path)


def test_load_of_an_unreadable_index_fails_even_with_a_matching_manifest(tmp_path: Path) -> None:
    path = saved(tmp_path)
    (path / "index.faiss").write_bytes(b"not a faiss index")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["index.faiss"] = file_checksum(path / "index.faiss")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="unreadable"):
        VectorStore.load(path)


def test_load_with_another_embedder_or_dimension_fails(tmp_path: Path) -> None:
    path = saved(tmp_path)
    with pytest.raises(StoreError, match="built with embedder 'test-embedder', not 'st:other'"):
        VectorStore.load(path, expected_embedder="st:other")
    with pytest.raises(StoreError, match="32-dimensional vectors, not 384"):
        VectorStore.load(path, expected_dim=384)
    s = VectorStore.load(path)
    with pytest.raises(ConfigError, match="384 dimensions"):
        s.search(np.ones(384, dtype=np.float32))


def test_a_failed_save_leaves_the_previous_store_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, x, recs = make()
    old.save(tmp_path / "store")
    new = VectorStore(32, embedder="test-embedder")
    new.add(x[:5], recs[:5])

    real_write = faiss.write_index

    def crash(index: object, sink: object) -> None:  # a path, or a writer of the file
        if isinstance(sink, str):
            Path(sink).write_bytes(b"half an ind")
        else:
            real_write(faiss.IndexFlatIP(2), sink)  # some bytes, then:
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "store")
    monkeypatch.undo()
    loaded = VectorStore.load(tmp_path / "store")
    assert len(loaded) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temporary folder left


def test_a_save_killed_between_its_renames_is_recovered_on_load(tmp_path: Path) -> None:
    path = saved(tmp_path)
    os.rename(path, tmp_path / ".store.old-1234abcd")  # the old one stepped aside, then a crash
    assert len(VectorStore.load(path)) == 300
    assert path.is_dir() and not (tmp_path / ".store.old-1234abcd").exists()


def test_save_refuses_to_overwrite_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    s, _, _ = make(n=10)
    with pytest.raises(StoreError, match="not a vector store"):
        s.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_bad_vectors_are_refused() -> None:
    s = VectorStore(4)
    with pytest.raises(ValueError, match="2 vectors but 1 records"):
        s.add(np.eye(4)[:2], [Record("a", 0, 0, 1)])
    with pytest.raises(ConfigError, match="3 dimensions"):
        s.add(np.ones((1, 3)), [Record("a", 0, 0, 1)])
    with pytest.raises(ValueError, match="NaN"):
        s.add(np.array([[np.nan, 0, 0, 1]]), [Record("a", 0, 0, 1)])
    assert s.search(np.ones(4), 3) == [] and len(s) == 0


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_zero_query_answers_in_store_order_with_a_warning(kind: str) -> None:
    """A query that embeds to nothing (a bag-of-words embedder on "?") is no nearer to one
    chunk than another: the index answered with arbitrary chunks at score 0."""
    s, x, recs = make(index=kind)
    s.delete("doc0")  # masked or removed: skipped either way
    live = [r for r in recs if r.document_id != "doc0"]
    with pytest.warns(LongweaveWarning, match="all zeros.*store order"):
        hits = s.search(np.zeros(32), k=4)
    assert [h.record for h in hits] == live[:4] and {h.score for h in hits} == {0.0}
    with pytest.warns(LongweaveWarning, match="all zeros"):
        filtered = s.search(np.zeros(32), k=3, filter=["doc3", "doc5"])
    assert [h.record for h in filtered] == [r for r in live if r.document_id in
                                            ("doc3", "doc5")][:3]
    with pytest.warns(LongweaveWarning, match="1 of 2 queries"):
        zero, real = s.search_batch(np.stack([np.zeros(32), x[17]]), k=2)
    assert [h.record for h in zero] == live[:2] and real[0].record == recs[17]


def test_this_machine_chooses_the_cpu() -> None:
    assert gpu_count() == 0
    assert not use_gpu("auto", "flat")
    assert not VectorStore(8).on_gpu
    with pytest.raises(ConfigError, match="sees no GPU"):
        VectorStore(8, gpu=True)


def test_gpu_is_chosen_for_flat_indexes_when_faiss_sees_one(
    tmp_path: Path, fake_gpu: list[object]
) -> None:
    moved = fake_gpu
    assert use_gpu("auto", "flat") and use_gpu(True, "flat")
    assert not use_gpu(False, "flat") and not use_gpu("auto", "hnsw") and use_gpu("auto", "ivf")
    on_gpu, x, recs = make(gpu="auto")
    on_cpu, _, _ = make(gpu=False)
    assert on_gpu.on_gpu and not on_cpu.on_gpu and len(moved) == 1
    assert not make(index="hnsw")[0].on_gpu
    for i in (3, 77):  # adds reached the GPU copy: same answers as the CPU store
        assert on_gpu.search(x[i], 10) == on_cpu.search(x[i], 10)
    on_gpu.delete("doc5")
    on_cpu.delete("doc5")
    assert len(moved) == 2  # a fresh GPU copy after ids shifted
    assert on_gpu.search(x[8], 10) == on_cpu.search(x[8], 10)
    on_gpu.save(tmp_path / "g")
    reloaded = VectorStore.load(tmp_path / "g")
    assert reloaded.on_gpu and reloaded.search(x[8], 10) == on_cpu.search(x[8], 10)


def test_importing_retrieval_loads_no_heavy_library() -> None:
    code = (
        "import sys, longweave.retrieval; "
        "print(','.join(m for m in ('numpy', 'faiss', 'torch', 'openai', 'sentence_transformers')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_retrieval_package_re_exports_store_index_and_corpus_lazily() -> None:
    code = (
        "import sys, longweave.retrieval as r; "
        "light = 'longweave.retrieval.index' not in sys.modules and 'numpy' not in sys.modules; "
        "from longweave.retrieval import document_index, open_corpus; "
        "from longweave.retrieval.index import document_index as d; "
        "from longweave.retrieval.corpus import open_corpus as o; "
        "print(light, document_index is d, open_corpus is o, 'DocumentIndex' in dir(r))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "True"]
    import longweave.retrieval as retrieval
    from longweave.retrieval import corpus, embeddings, index

    # ruff's order (RUF022): constants, then classes, then functions, each alphabetical
    assert retrieval.__all__ == sorted(
        retrieval.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n)
    )
    assert set(index.__all__) | set(corpus.__all__) | set(embeddings.__all__) <= set(
        retrieval.__all__
    )
    assert all(getattr(retrieval, name) is not None for name in retrieval.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        retrieval.nothing  # noqa: B018
