"""The local transformers backend, end to end with the bundled SmolLM2-135M (short generations)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from longweave.errors import BudgetExceeded, ConfigError, ParseError
from longweave.events import token_sink
from longweave.llm import LLM, Completion, system, user
from longweave.local_models import LocalLLM
from longweave.local_models.batcher import Batcher, GenRequest, GenResult, plan_batches

pytestmark = pytest.mark.real_model

PERU = "Text: The capital of Peru is Lima.\nQuestion: What is the capital of Peru?"


class Place(BaseModel):
    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One dir per test session, shared with test_serve: the GGUF is dequantized only once.
    return tmp_path_factory.getbasetemp() / "longweave-cache"


@pytest.fixture(scope="module")
def llm(cache_dir: Path) -> LocalLLM:
    model = LocalLLM.bundled(cache_dir=cache_dir)
    model.load()
    yield model
    model.close()


def test_the_gguf_readers_progress_bar_is_off_only_while_longweave_converts() -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf

    from longweave.local_models.loader import _tqdm_off

    original = gguf.tqdm
    with _tqdm_off():
        assert gguf.tqdm([1, 2]).disable  # what dequantization iterates with, silenced
    assert gguf.tqdm is original


def test_construction_loads_nothing(tmp_path: Path) -> None:
    model = LocalLLM.bundled(cache_dir=tmp_path)
    assert isinstance(model, LLM)
    assert model.name == "smollm2-135m-instruct-q4_1"
    assert model.context_window == 8192
    assert not model.loaded and model.load_seconds == {}
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written


def test_weights_and_tokenizer_are_cached_on_disk(llm: LocalLLM, cache_dir: Path) -> None:
    folders = list((cache_dir / "models").iterdir())
    assert len(folders) == 1
    assert (folders[0] / "model" / "model.safetensors").is_file()
    assert (folders[0] / "tokenizer" / "tokenizer.json").is_file()
    again = LocalLLM.bundled(cache_dir=cache_dir)
    assert again.count_tokens("hello world") == llm.count_tokens("hello world") == 2


def test_a_cache_that_cannot_be_written_unpacks_into_a_temporary_folder(
    tmp_path: Path, llm: LocalLLM
) -> None:
    """A read-only home or a file in the way costs a warning and a re-unpack, not the model."""
    from longweave.errors import LongweaveWarning
    from longweave.local_models.loader import bundled_source, load_tokenizer

    (tmp_path / "cache").write_text("a file where the cache folder would go")
    with pytest.warns(LongweaveWarning, match="tokenizer unpacked from .* is not cached"):
        tokenizer = load_tokenizer(bundled_source(), tmp_path / "cache" / "models")
    assert len(tokenizer.encode("hello world")) == llm.count_tokens("hello world")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # the temporary copy is gone


def test_tokenizer_counts_like_the_backend(llm: LocalLLM) -> None:
    text = "Lima is the capital of Peru."
    assert llm.tokenizer.count(text) == llm.count_tokens(text)
    assert llm.count_prompt_tokens([user(text)]) > llm.count_tokens(text)


async def test_answers_a_simple_extractive_question(llm: LocalLLM) -> None:
    reply = await llm.complete([user(PERU)], max_tokens=12)
    assert "Lima" in reply.text
    assert reply.model == llm.name


async def test_usage_is_exact(llm: LocalLLM) -> None:
    messages = [system("Answer in one word."), user(PERU)]
    reply = await llm.complete(messages, max_tokens=3, role="worker")
    assert reply.usage.calls == 1
    assert reply.usage.prompt_tokens == llm.count_prompt_tokens(messages)
    assert reply.finish_reason == "length" and reply.usage.completion_tokens == 3
    assert reply.usage.cached_tokens == 0 and reply.usage.seconds > 0
    assert reply.meta["role"] == "worker"
    done = await llm.complete([user("What is 2+2?")], max_tokens=16)
    assert done.finish_reason == "stop"
    assert done.usage.completion_tokens <= 16


async def test_budget_is_checked_before_anything_runs(cache_dir: Path) -> None:
    small = LocalLLM.bundled(cache_dir=cache_dir, context_window=40)
    messages = [user(PERU)]
    prompt = small.count_prompt_tokens(messages)
    assert prompt > 40  # the prompt alone is past the window
    with pytest.raises(BudgetExceeded) as caught:
        await small.complete(messages, max_tokens=1)
    assert caught.value.prompt_tokens == prompt and caught.value.window == 40
    assert not small.loaded


async def test_batched_greedy_equals_unbatched(llm: LocalLLM) -> None:
    prompts = [[user(PERU)], [user("What is 2+2?")], [user("Name a color of the sky.")]]
    alone = [await llm.complete(p, max_tokens=8) for p in prompts]
    together: list[Completion] = await asyncio.gather(
        *(llm.complete(p, max_tokens=8) for p in prompts)
    )
    assert [c.meta["batch_size"] for c in together] == [3, 3, 3]
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.usage.completion_tokens for c in together] == [
        c.usage.completion_tokens for c in alone
    ]


async def test_mixed_caps_in_one_batch(llm: LocalLLM) -> None:
    short, long = await asyncio.gather(
        llm.complete([user("Write a sentence about cats.")], max_tokens=2),
        llm.complete([user("Write a sentence about dogs.")], max_tokens=6),
    )
    assert short.meta["batch_size"] == 2
    assert short.usage.completion_tokens == 2 and short.finish_reason == "length"
    assert long.usage.completion_tokens == 6


async def test_a_streamed_call_sends_its_text_as_it_grows(llm: LocalLLM) -> None:
    deltas: list[str] = []

    async def streamed(messages: list) -> Completion:
        token = token_sink.set(lambda delta, restart=False: deltas.append(delta))
        try:
            return await llm.complete(messages, max_tokens=12)
        finally:
            token_sink.reset(token)

    # Batched with a call that does not stream: only the streamed row reaches the sink.
    reply, other = await asyncio.gather(streamed([user(PERU)]),
                                        llm.complete([user("Name a color.")], max_tokens=12))
    assert reply.meta["batch_size"] == 2
    assert len(deltas) > 1 and "".join(deltas) == reply.text
    assert other.text and other.text not in "".join(deltas)


async def test_schema_call_returns_a_validated_object(llm: LocalLLM) -> None:
    reply = await llm.complete(
        [user("The capital of Peru is Lima. Give the city and its country.")],
        max_tokens=24,
        schema=Place,
    )
    assert isinstance(reply.parsed, Place)
    assert reply.parsed == Place.model_validate_json(reply.text)
    assert reply.finish_reason == "stop"
    assert "Lima" in reply.parsed.city


async def test_schema_cut_by_max_tokens_raises_parse_error(llm: LocalLLM) -> None:
    with pytest.raises(ParseError) as caught:
        await llm.complete([user("Where is Lima?")], max_tokens=3, schema=Place)
    assert caught.value.raw.startswith("{")


def test_plan_batches_groups_kinds_and_limits_padding() -> None:
    def req(n: int, temperature: float = 0.0, group: str | None = None) -> GenRequest:
        return GenRequest([1] * n, 4, temperature, group)

    a, b, c, d, e = req(400), req(420), req(4000), req(410, 0.7), req(400, group="schema")
    batches = plan_batches(
        [a, b, c, d, e], max_batch_size=8, max_batch_tokens=32768, max_padding=0.3
    )
    assert [[len(r.prompt_ids) for r in batch] for batch in batches] == [
        [400, 420],
        [4000],
        [410],
        [400],
    ]
    assert len(plan_batches([req(10)] * 5, 2, 32768, 0.3)) == 3


def test_missing_model_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        LocalLLM.from_pretrained(str(tmp_path / "missing.gguf"))


async def test_from_pretrained_reads_a_transformers_directory(
    llm: LocalLLM, cache_dir: Path, tmp_path: Path
) -> None:
    import shutil

    (cached,) = (cache_dir / "models").iterdir()
    for part in ("model", "tokenizer"):
        shutil.copytree(cached / part, tmp_path, dirs_exist_ok=True)
    model = LocalLLM.from_pretrained(str(tmp_path), cache_dir=tmp_path / "unused")
    assert model.name == f"hf:{tmp_path}" and model.context_window == 8192
    assert not model.loaded
    reply = await model.complete([user(PERU)], max_tokens=4)
    assert reply.text == (await llm.complete([user(PERU)], max_tokens=4)).text
    model.close()


async def test_requests_made_together_reach_the_worker_together() -> None:
    sizes: list[int] = []

    def runner(batch: list[GenRequest]) -> list[GenResult]:
        sizes.append(len(batch))
        if any(r.prompt_ids == [99] for r in batch):
            raise RuntimeError("boom")
        return [GenResult(r.prompt_ids[::-1], "stop", len(batch), 0.0) for r in batch]

    batcher = Batcher(runner, max_batch_size=8, wait_s=0.0)
    results = await asyncio.gather(
        *(batcher.submit_async(GenRequest([i, i + 1], 4)) for i in range(5))
    )
    assert sizes == [5]
    assert [r.token_ids for r in results] == [[i + 1, i] for i in range(5)]
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit_async(GenRequest([99], 4))
    batcher.close()
