"""Prefix caching in the local backend: the LRU on small tensors, then the bundled model.

The unit tests build transformers `DynamicCache`s from random tensors (no model needed). The
real-model tests check that reusing a cached prefix changes nothing in greedy output, on free
text, schema-constrained calls and a PRISM run, while the reused tokens show up in usage.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, Field
from transformers import DynamicCache

from longweave.agents.prism import Prism
from longweave.documents import open_document
from longweave.llm import system, user
from longweave.local_models import LocalLLM
from longweave.local_models.batcher import GenRequest
from longweave.local_models.generation import _starting_cache
from longweave.local_models.prefix_cache import (
    PrefixCache,
    common_prefix,
    generate_kwargs,
    reusable,
)
from longweave.runner import arun

ROOT = Path(__file__).resolve().parents[1]


def kv(tokens: int, layers: int = 2) -> DynamicCache:
    """A cache shaped like a real one: (batch 1, 2 heads, tokens, head dim 4) per layer."""
    cache = DynamicCache()
    for layer in range(layers):
        cache.update(torch.randn(1, 2, tokens, 4), torch.randn(1, 2, tokens, 4), layer)
    return cache


def keys(cache: DynamicCache, layer: int = 0) -> torch.Tensor:
    return cache.layers[layer].keys


A = list(range(100))
B = list(range(1000, 1100))


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_take_copies_the_longest_shared_prefix() -> None:
    cache = PrefixCache(size=2, min_tokens=64)
    assert cache.take(A) == (None, 0)
    stored = kv(100)
    cache.put(A, stored)
    got, reused = cache.take(A[:80] + [7, 7, 7])
    assert reused == 80 and got.get_seq_length() == 80
    assert torch.equal(keys(got), keys(stored)[:, :, :80])
    assert (cache.stats.hits, cache.stats.misses, cache.stats.reused_tokens) == (1, 1, 80)


def test_the_last_prompt_token_is_always_recomputed() -> None:
    cache = PrefixCache(size=2, min_tokens=64)
    cache.put(A, kv(100))
    got, reused = cache.take(A)
    assert reused == 99 and got.get_seq_length() == 99


def test_short_shared_prefixes_are_recomputed() -> None:
    cache = PrefixCache(size=2, min_tokens=64)
    cache.put(A, kv(100))
    assert cache.take(A[:63] + [7] * 50) == (None, 0)
    assert cache.take(A[:64] + [7] * 50)[1] == 64


def test_generation_cannot_change_a_stored_entry() -> None:
    cache = PrefixCache(size=2, min_tokens=8)
    stored = kv(100)
    before = keys(stored).clone()
    cache.put(A, stored)
    got, _ = cache.take(A[:90] + [7])
    got.update(torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4), 0)  # as a forward pass would
    keys(got).fill_(0.0)  # even in place
    again, reused = cache.take(A[:90] + [8])
    assert reused == 90 and torch.equal(keys(again), before[:, :, :90])


def test_put_cuts_the_reply_off_the_cache() -> None:
    cache = PrefixCache(size=2, min_tokens=8)
    cache.put(A, kv(112))  # prompt + 12 generated tokens, as generate leaves it
    got, reused = cache.take(A + [5])
    assert reused == 100 and got.get_seq_length() == 100
    cache.put(B, kv(50))  # shorter than its prompt: not this prompt's cache, not kept
    assert cache.take(B + [5]) == (None, 0)


def test_least_recently_used_entry_is_evicted() -> None:
    cache = PrefixCache(size=2, min_tokens=8)
    c = list(range(2000, 2100))
    cache.put(A, kv(100))
    cache.put(B, kv(100))
    assert cache.take(A[:50] + [1])[1] == 50  # A is now the most recent
    cache.put(c, kv(100))
    assert len(cache) == 2
    assert cache.take(B[:50] + [1]) == (None, 0)
    assert cache.take(A[:50] + [1])[1] == 50 and cache.take(c[:50] + [1])[1] == 50


def test_a_prompt_extending_an_entry_replaces_it() -> None:
    cache = PrefixCache(size=4, min_tokens=8)
    cache.put(A[:80], kv(80))
    cache.put(A, kv(100))
    assert len(cache) == 1
    assert cache.take(A + [1])[1] == 100


def test_size_zero_turns_it_off() -> None:
    cache = PrefixCache(size=0)
    assert not cache.enabled
    cache.put(A, kv(100))
    assert len(cache) == 0 and cache.take(A) == (None, 0)


def test_environment_sets_the_local_backends_default(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("LONGWEAVE_PREFIX_CACHE_SIZE", "0")
    assert not LocalLLM.bundled(cache_dir=tmp_path).prefix_cache.enabled
    assert LocalLLM.bundled(cache_dir=tmp_path, prefix_cache_size=3).prefix_cache.size == 3
    monkeypatch.delenv("LONGWEAVE_PREFIX_CACHE_SIZE")
    assert LocalLLM.bundled(cache_dir=tmp_path).prefix_cache.size == 2


class _SlidingCache:
    """Stands in for a cache with sliding-window layers, which keep only a tail."""

    is_sliding = [False, True]

    def crop(self, n: int) -> None:
        raise AssertionError("a sliding cache must never be cut to a prefix")

    def get_seq_length(self) -> int:
        return 100


def test_caches_that_cannot_be_cut_to_a_prefix_switch_it_off() -> None:
    assert reusable(kv(4)) and not reusable(_SlidingCache()) and not reusable(object())
    cache = PrefixCache(size=2, min_tokens=8)
    cache.put(A, _SlidingCache())
    assert cache.supported is False and not cache.enabled and len(cache) == 0


def test_generate_gets_the_cache_under_the_keyword_it_knows() -> None:
    class New:
        def prepare_inputs_for_generation(self, input_ids: Any, cache: Any = None) -> None: ...

    class Old:
        def prepare_inputs_for_generation(
            self, input_ids: Any, past_key_values: Any = None
        ) -> None: ...

    marker = object()
    assert generate_kwargs(New(), marker) == {"cache": marker}  # type: ignore[arg-type]
    assert generate_kwargs(Old(), marker) == {"past_key_values": marker}  # type: ignore[arg-type]
    assert generate_kwargs(New(), None) == {}  # type: ignore[arg-type]
    # the installed transformers knows one of the two
    from transformers import GenerationMixin

    names = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    assert "cache" in names or "past_key_values" in names


def test_padded_batches_start_without_a_cache() -> None:
    cache = PrefixCache(size=2, min_tokens=8)
    cache.put(A, kv(100))
    requests = [GenRequest(A + [1], 4), GenRequest(A + [2], 4)]
    assert _starting_cache(None, requests, cache) == (None, 0)  # type: ignore[arg-type]
    assert cache.stats.hits == cache.stats.misses == 0
    start, reused = _starting_cache(None, requests[:1], cache)  # type: ignore[arg-type]
    assert reused == 100 and start.get_seq_length() == 100


# -- the bundled model ------------------------------------------------------------------------

PREFIX = (
    "You read a story one piece at a time and note who did what, in the words of the text. "
    "Answer briefly and exactly. Use names as the text gives them; never invent a name. "
) * 3
PIECES = ["The cat sat on the mat.", "Marcia flew to the Moon in secret."]


class Fact(BaseModel):
    who: str = Field(max_length=20)
    did: str = Field(max_length=30)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # The session's shared cache folder: the GGUF is dequantized once for every test module.
    model = LocalLLM.bundled(cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache")
    yield model
    model.close()


async def _calls(llm: LocalLLM) -> list[tuple[str, int, int]]:
    out = []
    for piece in PIECES:
        text = await llm.complete([system(PREFIX), user(f"Piece: {piece}\nWho?")], max_tokens=12)
        fact = await llm.complete(
            [system(PREFIX), user(f"Piece: {piece}\nThe fact.")], max_tokens=32, schema=Fact
        )
        out += [(r.text, r.usage.prompt_tokens, r.usage.cached_tokens) for r in (text, fact)]
    return out


@pytest.mark.real_model
async def test_reused_prefix_gives_the_same_output_and_reports_cached_tokens(
    llm: LocalLLM,
) -> None:
    llm.prefix_cache = PrefixCache(size=2)
    on = await _calls(llm)
    llm.prefix_cache = PrefixCache(size=0)
    off = await _calls(llm)
    assert [(text, prompt) for text, prompt, _ in on] == [(text, prompt) for text, prompt, _ in off]
    assert all(cached == 0 for _, _, cached in off)
    assert on[0][2] == 0  # nothing to reuse yet
    # every later call reuses at least the system prompt, and never its whole prompt
    assert all(64 <= cached < prompt for _, prompt, cached in on[1:])


@pytest.mark.real_model
async def test_batched_calls_skip_the_prefix_cache(llm: LocalLLM) -> None:
    llm.prefix_cache = PrefixCache(size=2)
    first = await llm.complete([system(PREFIX), user("Piece: A cat.\nWho?")], max_tokens=4)
    together = await asyncio.gather(
        *(llm.complete([system(PREFIX), user(f"Piece: {p}\nWho?")], max_tokens=4) for p in PIECES)
    )
    assert first.usage.cached_tokens == 0
    assert [c.meta["batch_size"] for c in together] == [2, 2]
    assert [c.usage.cached_tokens for c in together] == [0, 0]
    assert llm.prefix_cache.stats.hits == 0


@pytest.mark.real_model
async def test_prism_reuses_its_stable_prefix_with_the_same_answer(llm: LocalLLM) -> None:
    doc = open_document(ROOT / "examples" / "harbour_report.md")
    question = "Who was the first keeper of the lighthouse?"
    # ~950 tokens in a few chunks; one short revision per step
    prism = Prism(window=2048, chunk_tokens=500, step_max_new=48, answer_max_new=48,
                  value_chars=40, max_revisions=1, list_items=2, answer_chars=80, retries=0)
    llm.prefix_cache = PrefixCache(size=2)
    on = await arun(prism, doc, question, llm)
    llm.prefix_cache = PrefixCache(size=0)
    off = await arun(prism, doc, question, llm)
    assert on.text == off.text and on.citations == off.citations
    def trace(answer: Any) -> list[Any]:  # what the cache may change: its own counts
        return [(s.role, s.output,
                 {k: v for k, v in s.detail.items() if k not in ("cached_tokens", "cost")})
                for s in answer.steps]

    assert trace(on) == trace(off)
    # The final step's cost report (§5.4) sees the reuse: the same tokens, some of them cached.
    cost_on, cost_off = (a.steps[-1].detail["cost"] for a in (on, off))
    assert cost_off["cached_prompt_tokens"] == 0 == cost_off["cache_hit_rate"]
    assert 0 < cost_on["cache_hit_rate"] < 1
    assert (cost_on["uncached_prompt_tokens"] + cost_on["cached_prompt_tokens"]
            == cost_off["uncached_prompt_tokens"])
    assert cost_on["cost_index"] < cost_off["cost_index"]
    assert on.usage.prompt_tokens == off.usage.prompt_tokens
    assert off.usage.cached_tokens == 0 < on.usage.cached_tokens < on.usage.prompt_tokens
    first, *later = [s.detail for s in on.steps if s.role == "stepper"]
    assert first["cached_tokens"] == 0 and later
    # every later step reuses at least the whole static prefix
    assert all(step["cached_tokens"] >= step["prefix_tokens"] for step in later)
