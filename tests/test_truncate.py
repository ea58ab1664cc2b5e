"""The `truncate` baseline against the strict scripted model: what fits, what is cited, flags."""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from longweave.agents.baseline_prompts import truncate_messages
from longweave.agents.truncate import Truncate, head_end, tail_start
from longweave.documents import Document, open_document
from longweave.retrieval.corpus import open_corpus
from longweave.runner import arun
from longweave.testing import RegexTokenizer, ScriptedModel, quoted_after
from longweave.tokenizers import default_tokenizer

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
SENTINEL = re.compile(r"SENTINEL-(\d+)")


def sentinel_document(n: int, words: int = 30) -> Document:
    paras = [
        f"SENTINEL-{i} " + " ".join(f"word{i}x{j}" for j in range(words)) + "."
        for i in range(n)
    ]
    return Document.from_text("\n\n".join(paras))


def scripted(window: int = 400) -> ScriptedModel:
    model = ScriptedModel(context_window=window)
    model.on("reader", reply="An answer from what was read.")
    return model


def document_part(request_text: str) -> str:
    return quoted_after(request_text, "Document:")


TRUNCATE = Truncate(max_new=32, margin=16)


async def test_long_document_reads_the_head_only_and_is_flagged() -> None:
    model, doc = scripted(), sentinel_document(20)
    answer = await arun(TRUNCATE, doc, "What is hidden?", model)
    assert [r.role for r in model.requests] == ["reader"] and answer.usage.calls == 1
    (reader,) = model.calls("reader")
    seen = [int(s) for s in SENTINEL.findall(document_part(reader.text))]
    assert seen == list(range(len(seen))) and 1 <= len(seen) < 20  # a prefix of the document
    assert "Question: What is hidden?" in reader.text
    assert answer.flags == ["truncated"]
    (cite,) = answer.citations
    assert cite.start == 0 and cite.text == doc.text[: cite.end]
    assert document_part(reader.text) == cite.text
    # The window is used: the prompt plus the cap fits, and not much more would have.
    assert reader.prompt_tokens + reader.max_tokens <= 400
    assert reader.prompt_tokens + reader.max_tokens >= 400 - 16 - 2


async def test_short_document_is_read_whole_without_flag() -> None:
    model, doc = scripted(), sentinel_document(2)
    answer = await arun(TRUNCATE, doc, "What is hidden?", model)
    assert answer.flags == []
    (cite,) = answer.citations
    assert (cite.start, cite.end) == (0, len(doc.text))
    assert document_part(model.calls("reader")[0].text) == doc.text


@pytest.mark.parametrize("reply", ["", "  \n\t "])
async def test_an_empty_answer_is_flagged(reply: str) -> None:
    model = ScriptedModel(context_window=400)
    model.on("reader", reply=reply)
    answer = await arun(TRUNCATE, sentinel_document(20), "What is hidden?", model)
    assert answer.text == "" and answer.flags == ["empty_answer", "truncated"]
    model = ScriptedModel(context_window=400)
    model.on("reader", reply=reply)
    answer = await arun(TRUNCATE, sentinel_document(2), "What is hidden?", model)
    assert answer.flags == ["empty_answer"]


async def test_middle_keeps_head_and_tail() -> None:
    model, doc = scripted(), sentinel_document(20)
    answer = await arun(Truncate(max_new=32, margin=16, keep="middle"), doc, "What?", model)
    seen = [int(s) for s in SENTINEL.findall(document_part(model.calls("reader")[0].text))]
    assert seen[0] == 0 and seen[-1] == 19 and len(seen) < 20
    head, tail = answer.citations
    assert head.start == 0 and tail.end == len(doc.text) and head.end < tail.start
    for cite in answer.citations:
        assert cite.text == doc.text[cite.start:cite.end]
    assert answer.flags == ["truncated"]
    assert model.calls("reader")[0].prompt_tokens + 32 <= 400


async def test_empty_question_asks_for_a_summary() -> None:
    model = scripted()
    await arun(TRUNCATE, sentinel_document(3), "", model)
    (reader,) = model.calls("reader")
    assert "Question:" not in reader.text and "Summarize the document." in reader.text


async def test_window_setting_caps_the_model_window() -> None:
    model = scripted(4096)
    answer = await arun(Truncate(max_new=32, window=300), sentinel_document(40), "What?", model)
    assert model.calls("reader")[0].prompt_tokens + 32 <= 300
    assert answer.flags == ["truncated"]


async def test_corpus_cites_each_file_read(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Apples grow here. " * 5)
    (folder / "b.txt").write_text("Bananas ripen there. " * 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here is unreadable
        corpus = open_corpus(folder)
    answer = await arun(TRUNCATE, corpus, "Which fruit?", scripted())
    assert [Path(c.source).name for c in answer.citations] == ["a.txt", "b.txt"]
    a, b = answer.citations
    assert a.text == (folder / "a.txt").read_text()  # all of a.txt, then the start of b.txt
    assert b.start == 0 and b.text == (folder / "b.txt").read_text()[: b.end]
    assert answer.flags == ["truncated"]


@pytest.mark.parametrize("tokenizer", [RegexTokenizer(), default_tokenizer()])
def test_head_end_and_tail_start_are_the_longest_fitting_cuts(tokenizer: Any) -> None:
    text = open_document(EXAMPLE).text * 3
    starts = [int(s) for s in tokenizer.token_starts(text)]
    rng = random.Random(7)
    for budget in [1, 2, 17, *rng.sample(range(3, len(starts) - 1), 6), len(starts) + 5]:
        end = head_end(text, budget, tokenizer)
        assert tokenizer.count(text[:end]) <= budget
        if end < len(text):
            following = next(s for s in starts if s > end)
            assert tokenizer.count(text[:following]) > budget  # one more token would not fit
        start = tail_start(text, budget, tokenizer)
        assert tokenizer.count(text[start:]) <= budget
        if start > 0:
            earlier = max(s for s in starts if s < start)
            assert tokenizer.count(text[earlier:]) > budget
    assert head_end(text, len(starts), tokenizer) == len(text)
    assert tail_start(text, len(starts), tokenizer) == 0


async def test_openai_compatible_backend() -> None:
    from longweave.openai_backend import OpenAILLM
    from tests.faultserver import FaultServer, completion

    doc = sentinel_document(200)
    with FaultServer(completion("From the start of it.")) as server:
        llm = OpenAILLM("test-model", base_url=server.base_url, api_key="sk-test",
                        context_window=512)
        answer = await arun(Truncate(max_new=32), doc, "What?", llm)
        (request,) = server.requests
    assert answer.text == "From the start of it." and answer.flags == ["truncated"]
    (cite,) = answer.citations
    assert document_part(request.messages[-1]["content"]) == cite.text
    assert llm.count_prompt_tokens(truncate_messages(cite.text, "What?")) + 32 <= 512


def test_registered() -> None:
    from longweave.agents.base import get_strategy

    assert isinstance(get_strategy("truncate", keep="middle"), Truncate)


# -- the real local model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from longweave import local_models
    model = local_models.LocalLLM.bundled(
        cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache"
    )
    yield model
    model.close()


@pytest.mark.real_model
async def test_real_local_model_end_to_end(local_llm: Any) -> None:
    doc = open_document(EXAMPLE)
    answer = await arun(Truncate(max_new=48, window=512), doc,
                        "Where does the lighthouse stand?", local_llm)
    assert answer.text.strip()
    assert answer.flags == ["truncated"]  # the report is ~800 tokens; 512 cannot hold it
    assert answer.usage.calls == 1 and answer.usage.prompt_tokens + 48 <= 512
    (cite,) = answer.citations
    assert cite.start == 0 and doc.text[cite.start:cite.end] == cite.text
    assert "Gull Point" in cite.text
