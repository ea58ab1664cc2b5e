"""The `rag` baseline against the strict scripted model: retrieval, budget, citations, reuse."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from longweave.agents.rag import RAG
from longweave.cache import ArtifactCache
from longweave.documents import Document, open_document
from longweave.errors import ConfigError
from longweave.events import EventLog
from longweave.retrieval.corpus import open_corpus
from longweave.runner import arun
from longweave.testing import HashEmbedder, ScriptedModel

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
WORD = re.compile(r"\w+")
SENTINEL = re.compile(r"SENTINEL-(\d+)")
TOPICS = ["apples", "bananas", "cherries", "dates", "elderberries", "figs", "grapes", "hazelnuts",
          "kiwis", "lemons", "mangoes", "nectarines"]




def topic_document(words: int = 40) -> Document:
    """One paragraph per topic, each with a sentinel and its topic word repeated."""
    paras = [
        f"SENTINEL-{i} " + " ".join(f"{topic} filler{j}" for j in range(words // 2)) + "."
        for i, topic in enumerate(TOPICS)
    ]
    return Document.from_text("\n\n".join(paras))


def scripted(window: int = 2048) -> ScriptedModel:
    model = ScriptedModel(context_window=window)
    model.on("reader", reply="From the passages: an answer.")
    return model


def passages_of(text: str) -> list[int]:
    """Sentinel numbers in the order the prompt shows them."""
    return [int(s) for s in SENTINEL.findall(text.split("Question:")[0])]


def rag(**settings: Any) -> tuple[RAG, HashEmbedder]:
    fake = HashEmbedder(dim=256)
    return RAG(**{"chunk_tokens": 48, "max_new": 32, "margin": 16, **settings}).with_embedder(
        fake
    ), fake


async def test_one_reader_call_over_the_best_passages_best_first() -> None:
    model, doc = scripted(), topic_document()
    strategy, _ = rag(k=3)
    answer = await arun(strategy, doc, "Tell me about the cherries cherries", model)
    assert [r.role for r in model.requests] == ["reader"]
    assert answer.usage.calls == 1
    (reader,) = model.calls("reader")
    shown = passages_of(reader.text)
    assert len(shown) == 3 and shown[0] == TOPICS.index("cherries")
    assert "Question: Tell me about the cherries cherries" in reader.text
    assert reader.text.index("[1]") < reader.text.index("[2]") < reader.text.index("[3]")
    assert answer.text == "From the passages: an answer."


async def test_citations_are_the_passages_shown_with_exact_spans() -> None:
    model, doc = scripted(), topic_document()
    strategy, _ = rag(k=4)
    answer = await arun(strategy, doc, "figs figs", model)
    assert len(answer.citations) == 4
    for cite in answer.citations:
        assert cite.text == doc.text[cite.start:cite.end]
        assert cite.doc_id == doc.id and cite.kind == "chunk" and cite.chunk_index is not None
    assert f"SENTINEL-{TOPICS.index('figs')}" in answer.citations[0].text
    shown = passages_of(model.calls("reader")[0].text)
    assert [int(SENTINEL.search(c.text).group(1)) for c in answer.citations] == shown


async def test_passages_fit_the_window_and_k_caps_them() -> None:
    doc = topic_document()
    for window, k in ((260, 8), (2048, 5), (2048, None)):
        model = scripted(window)
        strategy, _ = rag(k=k)
        answer = await arun(strategy, doc, "grapes", model)
        (reader,) = model.calls("reader")
        assert reader.prompt_tokens + reader.max_tokens <= window
        kept = next(s for s in answer.steps if s.role == "retrieve").detail["kept"]
        assert kept == len(answer.citations) == len(passages_of(reader.text))
        if window == 260:
            assert 1 <= kept < 8  # the window, not k, limited it
        elif k == 5:
            assert kept == 5
        else:
            assert kept == len(TOPICS)  # no k: everything that fits


@pytest.mark.parametrize("reply", ["", " \n "])
async def test_an_empty_answer_is_flagged(reply: str) -> None:
    model = ScriptedModel()
    model.on("reader", reply=reply)
    strategy, _ = rag(k=3)
    answer = await arun(strategy, topic_document(), "lemons", model)
    assert answer.text == "" and answer.flags == ["empty_answer"]
    assert answer.citations  # the passages shown are still cited
    answer = await arun(strategy, topic_document(), "lemons", scripted())
    assert answer.flags == []


async def test_document_order_shows_passages_in_reading_order() -> None:
    model, doc = scripted(), topic_document()
    strategy, _ = rag(k=4, order="document")
    answer = await arun(strategy, doc, "lemons", model)
    shown = passages_of(model.calls("reader")[0].text)
    assert shown == sorted(shown)
    assert f"SENTINEL-{TOPICS.index('lemons')}" in answer.citations[0].text  # still best first


async def test_second_question_does_no_embedding_work(tmp_path: Path) -> None:
    model, doc, cache = scripted(), topic_document(), ArtifactCache(tmp_path / "artifacts")
    strategy, fake = rag(k=2)
    log = EventLog()
    first = await arun(strategy, doc, "apples", model, artifacts=cache)
    chunks = fake.texts - 1  # every chunk, plus the question
    second = await arun(strategy, doc, "mangoes", model, artifacts=cache, on_event=log)
    index_first = next(s for s in first.steps if s.role == "index").detail
    index_second = next(s for s in second.steps if s.role == "index").detail
    assert index_first["reused"] is False and index_first["embedded"] == chunks > 3
    assert index_second["reused"] is True and index_second["embedded"] == 0
    assert fake.texts == chunks + 2  # the second run embedded its question only
    event = next(e for e in log.events if e.kind == "step" and e.role == "index")
    assert event.data["embedded"] == 0
    assert f"SENTINEL-{TOPICS.index('mangoes')}" in second.citations[0].text


async def test_embedding_a_long_document_reports_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import longweave.retrieval.index as index_module

    monkeypatch.setattr(index_module, "EMBED_BATCH", 4)
    strategy, fake = rag(k=2)
    log = EventLog()
    answer = await arun(strategy, topic_document(), "apples", scripted(), on_event=log)
    chunks = next(s for s in answer.steps if s.role == "index").detail["chunks"]
    events = [e for e in log.events if e.role == "indexer"]
    batches = -(-chunks // 4)
    # One event per batch, counted in batches, as the progress bar advances one per event.
    assert chunks > 4 and [(e.index, e.total) for e in events] == [
        (n, batches) for n in range(1, batches + 1)]
    assert [e.data["chunks"] for e in events] == [*range(4, chunks, 4), chunks]
    assert events[-1].message == f"embedded {chunks:,} of {chunks:,} chunks"
    assert fake.texts == chunks + 1  # every chunk once, then the question


async def test_corpus_mode_cites_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "fruit.md").write_text("Apples and pears grow in the orchard. " * 10)
    (folder / "sub" / "ships.txt").write_text("The schooner sailed to Bristol with salt. " * 10)
    corpus = open_corpus(folder)
    model = scripted()
    strategy, _ = rag(k=2)
    log = EventLog()
    answer = await arun(strategy, corpus, "schooner Bristol salt", model,
                        artifacts=ArtifactCache(tmp_path / "artifacts"), on_event=log)
    progress = [(e.index, e.total) for e in log.events if e.role == "indexer"]
    assert progress == [(1, 2), (2, 2)]  # one progress event per file indexed
    top = answer.citations[0]
    assert top.source == str(folder / "sub" / "ships.txt")
    for cite in answer.citations:
        assert cite.text == Path(cite.source).read_text()[cite.start:cite.end]
        assert cite.doc_id == open_document(cite.source).id
    assert "[1] (sub/ships.txt)" in model.calls("reader")[0].text
    index = next(s for s in answer.steps if s.role == "index").detail
    assert index["files"] == 2


async def test_empty_question_and_impossible_budget_are_config_errors() -> None:
    strategy, _ = rag()
    with pytest.raises(ConfigError, match="question"):
        await arun(strategy, topic_document(), "  ", scripted())
    big, _ = rag(chunk_tokens=200, k=1)
    with pytest.raises(ConfigError, match="fits"):
        await arun(big, Document.from_text(" ".join(["word"] * 400)), "word", scripted(300))


def test_registered_with_documented_defaults() -> None:
    from longweave.agents.base import get_strategy

    strategy = get_strategy("rag", k=3)
    assert isinstance(strategy, RAG) and strategy.k == 3
    assert (RAG().chunk_tokens, RAG().embedder, RAG().max_new, RAG().k) == (256, "bundled", 256, 8)
    with pytest.raises(ConfigError):
        get_strategy("rag", kk=3)


def test_cli_ask_a_folder_with_rag(scripted_cli, monkeypatch, tmp_path, capsys) -> None:
    import longweave.retrieval.index as index_module
    from longweave.cli import main

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keeper.md").write_text("Mara Quill was the first keeper of the light. " * 5)
    (folder / "boats.txt").write_text("The lifeboat was rowed by twelve men. " * 5)
    scripted_cli(scripted())
    fake = HashEmbedder(dim=256)
    monkeypatch.setattr(index_module, "resolve_embedder", lambda spec, cache_dir=None: fake)
    monkeypatch.setattr(sys, "argv", ["longweave", "ask", str(folder), "first keeper light",
                                      "--strategy", "rag", "--set", "k=1", "--json"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["strategy"] == "rag" and answer["usage"]["calls"] == 1
    assert [Path(c["source"]).name for c in answer["citations"]] == ["keeper.md"]


async def test_openai_compatible_backend(tmp_path: Path) -> None:
    from longweave.openai_backend import OpenAILLM
    from tests.faultserver import FaultServer, completion

    doc = topic_document()
    strategy, _ = rag(k=2)
    with FaultServer(completion("Dates, from the passages.")) as server:
        llm = OpenAILLM("test-model", base_url=server.base_url, api_key="sk-test",
                        context_window=1024)
        answer = await arun(strategy, doc, "dates dates", llm,
                            artifacts=ArtifactCache(tmp_path))
        (request,) = server.requests
    assert answer.text == "Dates, from the passages." and answer.usage.calls == 1
    sent = request.messages[-1]["content"]
    assert passages_of(sent)[0] == TOPICS.index("dates") and "Question: dates dates" in sent
    assert all(c.text == doc.text[c.start:c.end] for c in answer.citations)


# -- the real embedder and the real local model ------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """The real bundled all-MiniLM-L6-v2, loaded once for the module."""
    from longweave.retrieval.embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from longweave import local_models
    model = local_models.LocalLLM.bundled(
        cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache"
    )
    yield model
    model.close()


async def test_real_embedder_retrieves_the_keeper_passage_then_reuses_the_index(
    minilm, tmp_path: Path
) -> None:
    doc, cache = open_document(EXAMPLE), ArtifactCache(tmp_path)
    strategy = RAG(k=2, chunk_tokens=128, max_new=32).with_embedder(minilm)
    model = scripted()
    answer = await arun(strategy, doc, "Who was the first keeper of the lighthouse?", model,
                        artifacts=cache)
    assert "Mara Quill" in answer.citations[0].text
    again = await arun(strategy, doc, "Who received a silver medal?", model, artifacts=cache)
    detail = next(s for s in again.steps if s.role == "index").detail
    assert detail["reused"] and detail["embedded"] == 0
    assert "Daniel Penrose" in again.citations[0].text


@pytest.mark.real_model
async def test_real_local_model_end_to_end(minilm, local_llm: Any, tmp_path: Path) -> None:
    doc = open_document(EXAMPLE)
    strategy = RAG(k=3, chunk_tokens=128, max_new=48, window=1024).with_embedder(minilm)
    answer = await arun(strategy, doc, "Who was the first keeper of the lighthouse?", local_llm,
                        artifacts=ArtifactCache(tmp_path))
    assert answer.text.strip()
    assert answer.usage.calls == 1 and answer.usage.prompt_tokens <= 1024 - 48
    assert 1 <= len(answer.citations) <= 3
    for cite in answer.citations:
        assert doc.text[cite.start:cite.end] == cite.text
