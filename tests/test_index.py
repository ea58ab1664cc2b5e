"""Per-document retrieval indexes as artifacts, corpus folders, and `longweave index`."""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import longweave.retrieval.index as index_module
from longweave.cache import ArtifactCache
from longweave.documents import Document, open_document
from longweave.errors import DocumentError
from longweave.retrieval.corpus import cite_span, corpus_parts, member, open_corpus
from longweave.retrieval.embeddings import CachedEmbedder, EmbeddingCache
from longweave.retrieval.index import corpus_index, document_index, index_key, index_paths
from longweave.retrieval.store import VectorStore
from longweave.testing import HashEmbedder, RegexTokenizer

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
WORD = re.compile(r"\w+")




@pytest.fixture(scope="module")
def minilm():
    """The real bundled all-MiniLM-L6-v2, loaded once for the module."""
    from longweave.retrieval.embeddings import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    embedder.embed(["warm up"])
    return embedder


def test_real_index_tiles_the_document_and_finds_the_keeper(minilm, tmp_path: Path) -> None:
    doc = open_document(EXAMPLE)
    index = document_index(doc, embedder=minilm, chunk_tokens=128,
                           artifacts=ArtifactCache(tmp_path))
    assert not index.reused and index.embedded == len(index.chunks) >= 4
    assert "".join(c.text for c in index.chunks) == doc.text
    assert all(c.text == doc.text[c.start:c.end] and c.n_tokens <= 128 for c in index.chunks)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    top = index.store.search(minilm.embed(["Who was the first keeper of the lighthouse?"])[0], 1)
    assert "Mara Quill" in doc.text[top[0].start:top[0].end]


def test_second_build_is_loaded_with_no_embedding(minilm, tmp_path: Path) -> None:
    doc, cache = open_document(EXAMPLE), ArtifactCache(tmp_path)
    first = document_index(doc, embedder=minilm, chunk_tokens=128, artifacts=cache)
    again = document_index(doc, embedder=minilm, chunk_tokens=128, artifacts=cache)
    assert again.reused and again.embedded == 0
    assert again.key == first.key and cache.find(first.key) is not None
    assert [(c.start, c.end, c.n_tokens) for c in again.chunks] == [
        (c.start, c.end, c.n_tokens) for c in first.chunks
    ]
    assert np.array_equal(again.vectors, first.vectors)


def test_the_key_covers_chunker_settings_tokenizer_and_embedder(tmp_path: Path) -> None:
    doc = Document.from_text("Alpha beta gamma. " * 200)
    cache, fake = ArtifactCache(tmp_path), HashEmbedder()
    base = document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache)
    assert document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache).reused
    variants = [
        dict(embedder=fake, chunk_tokens=32),
        dict(embedder=fake, chunk_tokens=64, overlap=8),
        dict(embedder=fake, chunk_tokens=64, tokenizer=RegexTokenizer()),
        dict(embedder=HashEmbedder("fake:other"), chunk_tokens=64),
    ]
    keys = {base.key}
    for settings in variants:
        built = document_index(doc, artifacts=cache, **settings)
        assert not built.reused and built.embedded == len(built.chunks)
        keys.add(built.key)
    assert len(keys) == 5
    other = Document.from_text("Another text entirely.")
    assert index_key(other.id, embedder="e", tokenizer="t", chunk_tokens=64) != index_key(
        doc.id, embedder="e", tokenizer="t", chunk_tokens=64
    )


def test_a_corrupt_artifact_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    doc, cache, fake = Document.from_text("One two three. " * 300), ArtifactCache(tmp_path), \
        HashEmbedder()
    first = document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache)
    vectors = cache.find(first.key) / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:100])  # truncated
    with pytest.warns(RuntimeWarning, match="unusable"):
        again = document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache)
    assert not again.reused and again.embedded == len(first.chunks)
    assert np.array_equal(again.vectors, first.vectors)
    assert list(tmp_path.glob(f".{first.key}.unusable-*"))
    assert document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache).reused


@pytest.mark.parametrize("damage", ["[]", "null", '{"format": 1}'])
def test_an_index_description_of_the_wrong_shape_is_moved_aside(
    tmp_path: Path, damage: str
) -> None:
    doc, cache, fake = Document.from_text("One two three. " * 300), ArtifactCache(tmp_path), \
        HashEmbedder()
    first = document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache)
    (cache.find(first.key) / "index.json").write_text(damage)
    with pytest.warns(RuntimeWarning, match="rebuilding the retrieval index.*moved to"):
        again = document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache)
    assert not again.reused and np.array_equal(again.vectors, first.vectors)
    assert document_index(doc, embedder=fake, chunk_tokens=64, artifacts=cache).reused


def test_the_embedding_cache_serves_chunks_already_embedded(tmp_path: Path) -> None:
    doc, fake = Document.from_text("Red green blue. " * 300), HashEmbedder()
    cached = CachedEmbedder(fake, EmbeddingCache(tmp_path / "e.sqlite"))
    one = document_index(doc, embedder=cached, chunk_tokens=64,
                         artifacts=ArtifactCache(tmp_path / "a"))
    two = document_index(doc, embedder=cached, chunk_tokens=64,
                         artifacts=ArtifactCache(tmp_path / "b"))
    assert one.embedded >= 1 and not two.reused and two.embedded == 0
    assert fake.texts == one.embedded  # distinct chunk texts computed once, ever


# -- corpus folders ---------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    (root / "notes" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("# Apples\n\nApples grow in the orchard of Penhallow.\n")
    (root / "notes" / "b.txt").write_text("Bananas ripen on the ship from Bristol.\n")
    (root / "notes" / "deep" / "c.txt").write_text("Cherries were picked by Mara in June.\n")
    (root / "notes" / "empty.txt").write_text("")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "skip.log").write_text("a log line\n")
    (root / ".git" / "HEAD.txt").write_text("ref: refs/heads/main\n")
    return root


def test_open_corpus_reads_matching_files_and_warns_about_unreadable_ones(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "docs")
    with pytest.warns(RuntimeWarning) as caught:
        corpus = open_corpus(folder)
    warned = " ".join(str(w.message) for w in caught)
    assert "empty.txt" in warned and "image.txt" in warned
    parts = corpus_parts(corpus)
    names = [Path(p.source).relative_to(folder).as_posix() for p in parts]
    assert names == ["a.md", "notes/b.txt", "notes/deep/c.txt"]  # no .git, no .log
    assert sorted(Path(s).name for s, _ in corpus.meta["skipped"]) == ["empty.txt", "image.txt"]
    for part in parts:
        assert member(corpus, part).text == Path(part.source).read_text()
        assert member(corpus, part).id == open_document(part.source).id
    assert "===== notes/b.txt =====" in corpus.text  # the model sees which file it reads


def test_the_size_limit_holds_for_a_folder_as_for_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(10):
        (folder / f"part{i}.txt").write_text(f"Part {i}. " + "word " * 200, encoding="utf-8")
    each = (folder / "part0.txt").stat().st_size
    monkeypatch.setenv("LONGWEAVE_MAX_DOCUMENT_BYTES", str(4 * each))
    with pytest.raises(DocumentError) as info:
        open_corpus(folder)
    assert "add up to more than the" in info.value.problem and "file 5 of 10" in info.value.problem
    assert "--include" in info.value.hint
    assert len(corpus_parts(open_corpus(folder, include=["part[0-3].txt"]))) == 4


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "docs")
    corpus = open_corpus(folder, include=["*.txt"], exclude=["deep", "*empty*", "image.txt"])
    assert [Path(p.source).name for p in corpus_parts(corpus)] == ["b.txt"]
    logs = open_corpus(folder, include=["*.log"])
    assert [Path(p.source).name for p in corpus_parts(logs)] == ["skip.log"]
    with pytest.raises(DocumentError, match="no files match"):
        open_corpus(folder, include=["*.docx"])


def test_cite_span_splits_a_corpus_span_into_file_citations(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "docs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        corpus = open_corpus(folder)
    a, b, _ = corpus_parts(corpus)
    cites = cite_span(corpus, a.start + 3, b.start + 7)
    assert [Path(c.source).name for c in cites] == ["a.md", "b.txt"]
    for cite in cites:
        assert cite.text == Path(cite.source).read_text()[cite.start:cite.end]
    assert cites[1].start == 0 and cites[1].text == "Bananas"
    plain = Document.from_text("Just one text.", source="one.txt")
    (only,) = cite_span(plain, 5, 8)
    assert (only.text, only.source, only.doc_id) == ("one", "one.txt", plain.id)


def test_corpus_index_names_files_and_reuses_per_file_work(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Apples grow in the orchard of Penhallow. " * 20)
    (folder / "b.txt").write_text("Bananas ripen on the ship from Bristol. " * 20)
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    first = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert not first.reused and first.files == first.files_built == 2
    assert first.embedded == len(first.store) == fake.texts
    hit = first.store.search(fake.embed(["bananas ship bristol"])[0], 1)[0]
    assert Path(hit.source).name == "b.txt"
    again = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert again.reused and again.embedded == 0 and len(again.store) == len(first.store)
    # A new file: a new corpus store, but only the new file is embedded.
    (folder / "c.txt").write_text("Cherries were picked by Mara in June. " * 20)
    grown = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert not grown.reused and grown.files == 3 and grown.files_built == 1
    new_chunks = len(grown.store) - len(first.store)
    assert grown.embedded == new_chunks > 0


def test_index_paths_reports_built_then_reused(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Apples grow in the orchard. " * 30)
    (folder / "b.md").write_text("Bananas ripen on the ship. " * 30)
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    rows = index_paths([folder, folder / "a.txt"], embedder=fake, chunk_tokens=32,
                       artifacts=cache)
    assert [(r.kind, r.reused) for r in rows] == [
        ("file", False), ("file", False), ("corpus", False), ("document", True)
    ]
    again = index_paths([folder], embedder=fake, chunk_tokens=32, artifacts=cache)
    assert [(r.kind, r.reused, r.embedded) for r in again] == [("corpus", True, 0)]


def test_a_conversation_file_is_indexed_as_ask_reads_it(tmp_path: Path) -> None:
    import json

    from longweave.api import load_source

    chat = tmp_path / "festival_chat.jsonl"
    turns = [{"speaker": "Ana", "text": f"The festival moved to Saturday {i}."} for i in range(9)]
    chat.write_text("\n".join(json.dumps(t) for t in turns) + "\n", encoding="utf-8")
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    (row,) = index_paths([chat], embedder=fake, chunk_tokens=32, artifacts=cache)
    asked = document_index(load_source(chat), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert asked.reused and asked.key == row.key  # what `ask -s rag` builds is the one indexed


def test_cli_index_prints_what_it_built_and_reused(scripted_cli, monkeypatch, capsys) -> None:
    from longweave.cli import main

    fake = HashEmbedder()
    scripted_cli()
    monkeypatch.setattr(index_module, "resolve_embedder", lambda spec, cache_dir=None: fake)
    args = ["longweave", "index", str(EXAMPLE), "--chunk-tokens", "64"]
    for expected in ("built", "reused"):
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exit_info:
            main()
        out = capsys.readouterr().out
        assert exit_info.value.code == 0
        assert expected in out and "harbour_report.md" in out and "chunks" in out
    assert "0 embedded" in out


class Approximate(VectorStore):
    """A store that is approximate at any size (past 200k vectors, in earnest)."""

    def __init__(self, dim: int, **kw: object) -> None:
        super().__init__(dim, **{**kw, "index": "hnsw"})


@pytest.mark.parametrize("kind", ["flat", "approximate"])
def test_a_corrupt_corpus_store_is_rebuilt_from_the_file_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "approximate":
        monkeypatch.setattr(index_module, "VectorStore", Approximate)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Apples grow in the orchard. " * 30)
    (folder / "b.txt").write_text("Bananas ripen on the ship. " * 30)
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    first = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    damaged = cache.find(first.key) / ("store/records.jsonl" if kind == "approximate"
                                       else "corpus.json")
    damaged.write_text(damaged.read_text()[:-40])
    with pytest.warns(RuntimeWarning, match="unusable"):
        again = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32,
                             artifacts=cache)
    assert not again.reused and again.files_built == 0 and again.embedded == 0
    assert len(again.store) == len(first.store)
    assert corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32,
                        artifacts=cache).reused


def two_files(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("Apples grow in the orchard of Penhallow. " * 30)
    (folder / "b.txt").write_text("Bananas ripen on the ship from Bristol. " * 30)
    return folder


def test_a_folder_named_two_ways_is_one_corpus_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docs` and `/abs/docs` made two keys, so the second built (and stored) it all again."""
    folder = two_files(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    relative = corpus_index(open_corpus("docs"), embedder=fake, chunk_tokens=32, artifacts=cache)
    for typed in (str(folder), "./docs/"):
        again = corpus_index(open_corpus(typed), embedder=fake, chunk_tokens=32,
                             artifacts=cache)
        assert again.reused and again.key == relative.key
        # Records name the files as this run opened them (rag labels passages by them).
        hit = again.store.search(fake.embed(["bananas ship bristol"])[0], 1)[0]
        assert hit.source == str(Path(typed) / "b.txt")
    assert len(list((tmp_path / "artifacts").glob("corpus-*"))) == 1


def test_a_corpus_keeps_its_vectors_once(tmp_path: Path) -> None:
    """Each file's index holds its vectors; the corpus stored them all a second time."""
    folder = two_files(tmp_path / "docs")
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    first = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    stored = [p for p in cache.find(first.key).rglob("*") if p.is_file()]
    assert [p.name for p in stored] == ["corpus.json"]
    vectors = sum((cache.root / f).stat().st_size for f in
                  [p.relative_to(cache.root) for p in cache.root.glob("index-*/vectors.npy")])
    assert stored[0].stat().st_size < vectors / 10
    again = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert again.reused and again.embedded == 0 and len(again.store) == len(first.store)
    query = fake.embed(["bananas ship bristol"])[0]
    assert again.store.search(query, 5) == first.store.search(query, 5)


def test_an_approximate_corpus_store_is_kept_and_names_the_files_as_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the flat threshold the trained index is worth keeping (IVF training takes minutes
    at a million vectors): it is saved, and its records name the files as this run typed them."""
    monkeypatch.setattr(index_module, "VectorStore", Approximate)
    folder = two_files(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    first = corpus_index(open_corpus("docs"), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert (cache.find(first.key) / "store" / "index.faiss").is_file()
    again = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert again.reused and again.store.kind == "hnsw"
    hit = again.store.search(fake.embed(["bananas ship bristol"])[0], 1)[0]
    assert hit.source == str(folder / "b.txt")


def test_a_corpus_whose_file_index_is_gone_is_assembled_again(tmp_path: Path) -> None:
    folder = two_files(tmp_path / "docs")
    cache, fake = ArtifactCache(tmp_path / "artifacts"), HashEmbedder()
    first = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    shutil.rmtree(next(cache.root.glob("index-*")))  # one file's index, deleted
    again = corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32, artifacts=cache)
    assert not again.reused and again.files_built == 1 and len(again.store) == len(first.store)
    assert corpus_index(open_corpus(folder), embedder=fake, chunk_tokens=32,
                        artifacts=cache).reused


def test_the_same_embedder_name_on_another_server_is_another_model(tmp_path: Path) -> None:
    from longweave.retrieval.embeddings import OpenAIEmbedder

    here, there = (OpenAIEmbedder("embed", url, "sk-test") for url in
                   ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"))
    assert here.name == there.name and here.fingerprint != there.fingerprint

    class Served(HashEmbedder):
        def __init__(self, server: str) -> None:
            super().__init__("openai:embed")
            self.fingerprint = f"openai:embed|{server}"

    doc, cache = Document.from_text("Lamps and keepers. " * 200), ArtifactCache(tmp_path / "a")
    vectors = EmbeddingCache(tmp_path / "e.sqlite")
    first = document_index(doc, embedder=CachedEmbedder(Served("a"), vectors), chunk_tokens=32,
                           artifacts=cache)
    other = CachedEmbedder(Served("b"), vectors)
    again = document_index(doc, embedder=other, chunk_tokens=32, artifacts=cache)
    assert again.key != first.key and not again.reused
    assert again.embedded == first.embedded > 0  # none of server a's vectors were served
