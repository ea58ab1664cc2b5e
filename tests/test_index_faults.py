"""Retrieval indexes on damaged disks and under concurrent processes: rebuilt or refused, never
answered from the wrong vectors, never a raw numpy or faiss error."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

import longweave.retrieval.index as index_module
from longweave.cache import ArtifactCache
from longweave.documents import Document
from longweave.retrieval import store_io
from longweave.retrieval.corpus import open_corpus
from longweave.retrieval.index import DocumentIndex, corpus_index, document_index
from longweave.retrieval.store import Record, VectorStore
from longweave.testing import HashEmbedder
from tests.test_index import Approximate

DOC = Document.from_text("".join(f"Sentence {i} is about topic{i % 7}. " for i in range(200)))


def build(cache: ArtifactCache, fake: HashEmbedder | None = None) -> DocumentIndex:
    return document_index(DOC, embedder=fake or HashEmbedder(), chunk_tokens=32, artifacts=cache)


def flip_last_vector_byte(d: Path) -> None:
    data = bytearray((d / "vectors.npy").read_bytes())
    data[-3] ^= 0x40  # still a finite float32: a changed vector, not a broken file
    (d / "vectors.npy").write_bytes(bytes(data))


def shift_a_span(d: Path) -> None:
    about = json.loads((d / "index.json").read_text())
    about["chunks"][3][0] += 5  # still inside the document: the wrong passage, not a broken file
    (d / "index.json").write_text(json.dumps(about))


def claim_a_huge_shape(d: Path) -> None:
    data = (d / "vectors.npy").read_bytes()
    end = data.index(b"\n")
    header = data[:end].decode("latin1")
    bigger = re.sub(r"\((\d+), ", lambda m: f"({m.group(1)}000000000, ", header, count=1)
    (d / "vectors.npy").write_bytes(bigger[: len(header)].encode("latin1") + data[end:])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "empty vectors file": lambda d: (d / "vectors.npy").write_bytes(b""),
    "changed vector": flip_last_vector_byte,
    "shifted span": shift_a_span,
    "huge shape in the header": claim_a_huge_shape,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_document_index_is_rebuilt_not_misread(tmp_path: Path, damage: str) -> None:
    cache = ArtifactCache(tmp_path)
    first = build(cache)
    DAMAGE[damage](cache.find(first.key))
    with pytest.warns(RuntimeWarning, match="rebuilding the retrieval index.*unusable"):
        again = build(cache)
    assert not again.reused
    assert [(c.start, c.end) for c in again.chunks] == [(c.start, c.end) for c in first.chunks]
    assert np.array_equal(again.vectors, first.vectors)
    assert build(cache).reused  # the rebuilt one was cached again


def test_an_artifact_written_by_the_previous_format_is_not_read(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    first = build(cache)
    d = cache.find(first.key)
    about = json.loads((d / "index.json").read_text())
    about.pop("checksums", None)
    (d / "index.json").write_text(json.dumps({**about, "format": 1}))
    with pytest.warns(RuntimeWarning, match="another format"):
        assert not build(cache).reused


def test_a_corpus_store_that_faiss_cannot_write_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Apples grow in the orchard. " * 30)
    (folder / "b.txt").write_text("Bananas ripen on the ship. " * 30)
    real_write = faiss.write_index

    def disk_full(index: object, writer: object) -> None:  # what faiss raises on a failed write
        raise RuntimeError("Error in void faiss::write_index(const Index*, IOWriter*, int): "
                           "Error: 'ret == (size * 4)' failed: write error in x: 4 != 1600 "
                           "(No space left on device)")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    monkeypatch.setattr(index_module, "VectorStore", Approximate)  # a flat one is not written
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    with pytest.warns(RuntimeWarning, match="corpus index is not cached.*No space left"):
        built = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert not built.reused and len(built.store) > 0
    assert not list((tmp_path / "artifacts").glob("corpus-*"))  # nothing half-written kept
    monkeypatch.setattr(faiss, "write_index", real_write)
    again = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert not again.reused and again.embedded == 0  # the files' indexes were cached


def test_a_save_sweeps_what_a_killed_save_of_the_same_store_left(tmp_path: Path) -> None:
    from longweave.retrieval.durable import STALE_AFTER_S

    when = os.path.getmtime(tmp_path) - 2 * STALE_AFTER_S
    left = {}
    for name in (".store.x1y2z3w4.tmp", ".other.x1y2z3w4.tmp"):  # another store's is not ours
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.faiss").write_bytes(b"half a")
        for p in (tmp_path / name / "index.faiss", tmp_path / name):
            os.utime(p, (when, when))
        left[name] = tmp_path / name
    store_of("a", 5).save(tmp_path / "store")
    assert not left[".store.x1y2z3w4.tmp"].exists() and left[".other.x1y2z3w4.tmp"].exists()
    assert len(VectorStore.load(tmp_path / "store")) == 5


# -- a vector store saved while it is read, or saved by two processes at once -----------------


def store_of(doc: str, n: int) -> VectorStore:
    s = VectorStore(8, embedder="e", gpu=False)
    x = np.random.default_rng(n).standard_normal((n, 8))
    s.add(x, [Record(doc, i, i, i + 1) for i in range(n)])
    return s


def pause_between_renames(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """The next save calls `meanwhile()` once, right after the old store stepped aside."""
    real_rename, done = os.rename, []

    def rename(src: os.PathLike, dst: os.PathLike) -> None:
        real_rename(src, dst)
        if ".old-" in Path(dst).name and not done:
            done.append(True)
            meanwhile()

    monkeypatch.setattr(store_io.os, "rename", rename)


def test_a_load_during_a_save_waits_for_the_new_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    store_of("old", 5).save(path)
    aside, resume, failed = threading.Event(), threading.Event(), []

    def meanwhile() -> None:  # the save stops between its renames until the load has begun
        aside.set()
        resume.wait(5)

    pause_between_renames(monkeypatch, meanwhile)

    def save() -> None:
        try:
            store_of("new", 7).save(path)
        except Exception as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    writer = threading.Thread(target=save)
    writer.start()
    assert aside.wait(5)
    threading.Timer(0.05, resume.set).start()
    loaded = VectorStore.load(path)
    writer.join(5)
    assert failed == [] and loaded.documents() == ["new"] and len(loaded) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_two_saves_at_once_both_finish_and_the_last_one_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    store_of("old", 5).save(path)
    # The first save's old store steps aside; a second save then completes before it goes on.
    pause_between_renames(monkeypatch, lambda: store_of("second", 6).save(path))
    store_of("first", 7).save(path)
    loaded = VectorStore.load(path)
    assert loaded.documents() == ["first"] and len(loaded) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_store_replaced_while_it_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    store_of("old", 5).save(path)
    real_verify, done = store_io._verify, []

    def verify(where: Path, name: str, entry: object) -> None:
        if not done:  # the manifest is read; another process saves before the files are
            done.append(True)
            store_of("new", 5).save(path)
        real_verify(where, name, entry)

    monkeypatch.setattr(store_io, "_verify", verify)
    loaded = VectorStore.load(path)
    assert loaded.documents() == ["new"] and len(loaded) == 5


def _save_many(path: str, doc: str, times: int, errors: multiprocessing.Queue) -> None:
    for n in range(times):
        try:
            store_of(doc, 3 + n % 5).save(path)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.put(f"save: {exc!r}")
    errors.put(None)


def _load_many(path: str, times: int, errors: multiprocessing.Queue) -> None:
    for _ in range(times):
        try:
            store = VectorStore.load(path)
            if len(store.documents()) != 1:
                errors.put(f"load: a mix of {store.documents()}")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.put(f"load: {exc!r}")
    errors.put(None)


def test_processes_saving_and_loading_one_store_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    store_of("w0", 3).save(path)
    spawn = multiprocessing.get_context("spawn")
    errors = spawn.Queue()
    procs = [spawn.Process(target=_save_many, args=(path, f"w{i}", 60, errors)) for i in (1, 2)]
    procs.append(spawn.Process(target=_load_many, args=(path, 150, errors)))
    for p in procs:
        p.start()
    found, finished = [], 0
    while finished < len(procs):
        item = errors.get(timeout=120)
        finished += item is None
        if item is not None:
            found.append(item)
    for p in procs:
        p.join(10)
    assert found == []
    assert len(VectorStore.load(path)) in range(3, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


FULL_DISK = """
import resource, signal, sys
import numpy as np
from longweave.retrieval.store import Record, VectorStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
s = VectorStore(64, embedder="e", gpu=False)
s.add(np.eye(12, 64), [Record("new", i, i, i + 1) for i in range(12)])
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))
try:
    s.save(sys.argv[1])
except OSError as exc:
    print("OSError", exc)
"""


def test_a_save_onto_a_full_disk_fails_and_keeps_the_old_store(tmp_path: Path) -> None:
    import subprocess
    import sys

    # 3 kB of index, under stdio's buffer: faiss writes it as it closes the file, past the
    # 2 kB a file may hold here, and only says so on stderr.
    path = tmp_path / "store"
    store_of("old", 5).save(path)
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OSError") and "File too large" in out.stdout
    assert VectorStore.load(path).documents() == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_store_swapped_while_a_save_looks_at_it_is_not_in_its_way(tmp_path: Path) -> None:
    store_of("old", 3).save(tmp_path / "store")

    class Racing(type(Path())):  # type: ignore[misc]
        """Another process saves this store just as this one looks for its manifest."""

        raced = False

        def is_file(self) -> bool:
            if self.name != store_io.MANIFEST or Racing.raced:
                return super().is_file()
            Racing.raced = True
            os.rename(self.parent, tmp_path / ".store.old-racing")  # its old one steps aside
            found = super().is_file()  # the gap between the other save's renames
            store_of("other", 5).save(self.parent)
            return found

    s = store_of("new", 4)
    store_io.write_store(Racing(tmp_path / "store"), s._cpu, s._records,
                         {"dim": 8, "embedder": "e", "count": 4, "index": "flat"})
    assert Racing.raced and VectorStore.load(tmp_path / "store").documents() == ["new"]


def test_a_store_that_cannot_be_read_for_permissions_says_so(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Not "corrupt ... build the index again": rebuilding would not help."""
    from longweave.retrieval.store import StoreError

    path = tmp_path / "store"
    store_of("d", 3).save(path)
    real = Path.read_text

    def refuse(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.name == store_io.MANIFEST:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(StoreError, match="cannot be read") as failed:
        VectorStore.load(path)
    assert "permissions" in failed.value.hint and "build" not in failed.value.hint
