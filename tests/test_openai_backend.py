"""The OpenAI-compatible backend, through the real `openai` client, against a scripted server."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from longweave.errors import BudgetExceeded, ConfigError, LongweaveWarning, ModelError, ParseError
from longweave.events import token_sink
from longweave.llm import LLM, Message, system, user
from longweave.openai_backend import DEFAULT_CONTEXT_WINDOW, OpenAILLM
from longweave.structured import json_instructions
from tests.faultserver import (
    FaultServer,
    assistant,
    body,
    completion,
    error,
    hang,
    malformed,
    rate_limited,
    refused,
    reject_response_format,
    server_error,
    slow,
    stalled,
    unauthorized,
)

QUESTION = [system("Be brief."), user("What is the capital of Peru?")]


class City(BaseModel):
    """The structured answer the tests ask for."""

    city: str = Field(max_length=40)
    confidence: float = Field(ge=0, le=1)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv
    assert srv.unscripted == 0, "the backend sent more requests than the test scripted"


def make_llm(server: FaultServer, **options: object) -> tuple[OpenAILLM, list[float]]:
    """A backend pointed at the fault server whose sleeps are recorded instead of waited."""
    settings: dict[str, object] = {
        "base_url": server.base_url,
        "api_key": "sk-test",
        "context_window": 4096,
        "timeout": 5.0,
        "max_retries": 2,
    }
    settings.update(options)
    llm = OpenAILLM("test-model", **settings)  # type: ignore[arg-type]
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    llm.sleep = record
    return llm, sleeps


# -- plain completions --------------------------------------------------------------------


async def test_completion_sends_the_request_and_reports_usage(server: FaultServer) -> None:
    server.push(completion(cached_tokens=5))
    llm, sleeps = make_llm(server)
    assert isinstance(llm, LLM)
    out = await llm.complete(QUESTION, max_tokens=32, temperature=0.3, role="worker")
    assert out.text == "echo: What is the capital of Peru?"
    assert (out.usage.calls, out.usage.prompt_tokens, out.usage.completion_tokens) == (1, 8, 7)
    assert out.usage.cached_tokens == 5
    assert out.finish_reason == "stop" and out.model == "fault-model"
    assert "usage_estimated" not in out.meta and sleeps == []
    (sent,) = server.requests
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "test-model"
    assert sent.body["messages"] == [m.as_dict() for m in QUESTION]
    assert sent.body["max_tokens"] == 32 and sent.body["temperature"] == 0.3
    assert "response_format" not in sent.body and "user" not in sent.body


async def test_missing_usage_is_counted_with_the_tokenizer(server: FaultServer) -> None:
    server.push(completion("Lima is the capital.", usage=False, finish_reason="length"))
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=32)
    assert out.meta["usage_estimated"] is True
    assert out.usage.prompt_tokens == llm.count_prompt_tokens(QUESTION)
    assert out.usage.completion_tokens == llm.count_tokens("Lima is the capital.") > 0
    assert out.finish_reason == "length"


async def test_budget_is_checked_before_sending(server: FaultServer) -> None:
    llm, _ = make_llm(server, context_window=64)
    with pytest.raises(BudgetExceeded) as info:
        await llm.complete([user("word " * 200)], max_tokens=16)
    assert info.value.window == 64 and info.value.prompt_tokens > 64
    assert server.requests == []


def test_prompt_token_estimate_adds_the_chat_overhead(server: FaultServer) -> None:
    llm, _ = make_llm(server)
    content = sum(llm.count_tokens(m.content) for m in QUESTION)
    assert llm.count_prompt_tokens(QUESTION) == content + 4 * len(QUESTION) + 3


# -- retries ------------------------------------------------------------------------------


async def test_rate_limits_are_retried_honouring_retry_after(server: FaultServer) -> None:
    server.push(rate_limited("2"), rate_limited(retry_after_ms="250"), completion("ok"))
    llm, sleeps = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=8)
    assert out.text == "ok" and out.meta["attempts"] == 3
    assert sleeps == [2.0, 0.25]
    assert len(server.requests) == 3 and out.usage.calls == 1


async def test_retry_after_as_an_http_date_and_the_cap(server: FaultServer) -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.push(rate_limited(later), rate_limited("3600"), completion("ok"))
    llm, sleeps = make_llm(server)
    with pytest.warns(LongweaveWarning, match="retrying in"):
        await llm.complete(QUESTION, max_tokens=8)
    assert 20 < sleeps[0] <= 30  # a date is whole seconds; the rest is clock between calls
    assert sleeps[1] == 60.0  # an hour's Retry-After is capped


async def test_long_retry_waits_are_announced(server: FaultServer) -> None:
    server.push(rate_limited("30"), server_error(500), completion("ok"))
    llm, sleeps = make_llm(server)
    with pytest.warns(LongweaveWarning) as caught:
        assert (await llm.complete(QUESTION, max_tokens=8)).text == "ok"
    # The 30 s wait says why and how long; the sub-second backoff after the 500 stays quiet.
    assert [str(w.message) for w in caught] == [
        f"test-model: HTTP 429 from {server.base_url}: Rate limit reached for requests; "
        "retrying in 30 s (attempt 2 of 3)"]
    assert sleeps[0] == 30.0 and sleeps[1] < 1


async def test_server_errors_back_off_exponentially_with_jitter(server: FaultServer) -> None:
    server.push(server_error(500), server_error(503), completion("ok"))
    llm, sleeps = make_llm(server)
    assert (await llm.complete(QUESTION, max_tokens=8)).text == "ok"
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


async def test_exhausted_retries_raise_model_error(server: FaultServer) -> None:
    server.push(*(server_error(502) for _ in range(3)))
    llm, sleeps = make_llm(server, max_retries=2)
    with pytest.raises(ModelError) as info:
        await llm.complete(QUESTION, max_tokens=8)
    assert info.value.status == 502 and info.value.provider == "openai"
    assert "gave up after 3 attempts" in str(info.value)
    assert len(server.requests) == 3 and len(sleeps) == 2


async def test_a_hang_times_out_and_is_retried(server: FaultServer) -> None:
    server.push(hang(), completion("ok"))
    llm, sleeps = make_llm(server, timeout=0.5, max_retries=1)
    assert (await llm.complete(QUESTION, max_tokens=8)).text == "ok"
    assert len(sleeps) == 1


async def test_a_reply_trickled_byte_by_byte_still_times_out(server: FaultServer) -> None:
    # Each space resets httpx's read timeout; the call's own deadline does not move.
    server.push(stalled(b'{"id": "x", ', content_type="application/json", tail=b" "),
                completion("ok"))
    llm, sleeps = make_llm(server, timeout=0.5, max_retries=1)
    assert (await llm.complete(QUESTION, max_tokens=8)).text == "ok"
    assert len(sleeps) == 1 and len(server.requests) == 2


async def test_repeated_hangs_end_in_model_error(server: FaultServer) -> None:
    server.push(hang(), hang())
    llm, _ = make_llm(server, timeout=0.5, max_retries=1)
    with pytest.raises(ModelError, match="no reply within 0.5 s; gave up after 2 attempts"):
        await llm.complete(QUESTION, max_tokens=8)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("failure", "hint"),
    [
        pytest.param(server_error(503), "LONGWEAVE_MAX_RETRIES", id="5xx"),
        pytest.param(rate_limited("0"), "LONGWEAVE_CONCURRENCY", id="429"),
        pytest.param(hang(), "LONGWEAVE_REQUEST_TIMEOUT", id="timeout"),
    ],
)
async def test_given_up_retries_name_the_setting_to_change(
    server: FaultServer, failure: object, hint: str
) -> None:
    # The command line has no max_retries= or timeout=: the hint names what a user can set.
    server.push(failure, failure)  # type: ignore[arg-type]
    llm, _ = make_llm(server, timeout=0.5, max_retries=1)
    with pytest.raises(ModelError) as info:
        await llm.complete(QUESTION, max_tokens=8)
    assert hint in info.value.hint and ".;" not in info.value.message
    assert len(server.requests) == 2


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_malformed_body_is_a_clean_model_error(
    server: FaultServer, content_type: str
) -> None:
    server.push(malformed(content_type))
    llm, _ = make_llm(server, max_retries=0)
    with pytest.raises(ModelError) as info:
        await llm.complete(QUESTION, max_tokens=8)
    assert type(info.value) is ModelError and "malformed response" in str(info.value)
    assert "OPENAI_BASE_URL" in info.value.hint


async def test_malformed_body_is_retried(server: FaultServer) -> None:
    server.push(malformed(), completion("ok"))
    llm, sleeps = make_llm(server)
    assert (await llm.complete(QUESTION, max_tokens=8)).text == "ok"
    assert len(sleeps) == 1


async def streaming(llm: OpenAILLM, messages: list[Message]) -> Any:
    """`llm.complete` as a strategy's final answer calls it: with a token sink set, streaming."""
    token = token_sink.set(lambda delta, *, restart=False: None)
    try:
        return await llm.complete(messages, max_tokens=8)
    finally:
        token_sink.reset(token)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ([1, 2], "unexpected body [1, 2]"),
        (None, "unexpected body None"),
        ({"foo": 1}, "unexpected body {'foo': 1}"),
        ({"choices": []}, "the reply has no choices"),
        ({"error": {"message": "model overloaded"}}, "error in the body: model overloaded"),
        ({"choices": [{"message": {"content": 5}}]}, "the reply's content is int, not text"),
    ],
    ids=["list", "null", "no-choices-key", "empty-choices", "error-object", "content-int"],
)
async def test_bodies_of_the_wrong_shape_are_named_and_retried(
    server: FaultServer, payload: object, detail: str, stream: bool
) -> None:
    # The client does not validate a 200 body: no shape may escape as a TypeError.
    server.push(body(payload), body(payload))
    llm, sleeps = make_llm(server, max_retries=1)
    call = streaming(llm, QUESTION) if stream else llm.complete(QUESTION, max_tokens=8)
    with pytest.raises(ModelError) as info:
        await call
    assert type(info.value) is ModelError and "malformed response" in info.value.message
    assert detail in info.value.message and "ChatCompletion(" not in info.value.message
    assert len(server.requests) == 2 and len(sleeps) == 1


async def test_content_parts_and_odd_usage_still_give_the_reply(server: FaultServer) -> None:
    parts = [{"type": "text", "text": "Lima"}, {"type": "text", "text": " it is."}]
    server.push(assistant({"content": parts}),
                body({"choices": [{"message": {"content": "ok"}}],
                      "usage": {"prompt_tokens": "many", "completion_tokens": 1}}))
    llm, _ = make_llm(server)
    assert (await llm.complete(QUESTION, max_tokens=8)).text == "Lima it is."
    out = await llm.complete(QUESTION, max_tokens=8)
    assert out.text == "ok" and out.meta["usage_estimated"] is True
    assert out.usage.prompt_tokens == llm.count_prompt_tokens(QUESTION)


async def test_unauthorized_is_not_retried_and_says_what_to_do(server: FaultServer) -> None:
    server.push(unauthorized())
    llm, sleeps = make_llm(server, max_retries=3)
    with pytest.raises(ModelError) as info:
        await llm.complete(QUESTION, max_tokens=8)
    assert info.value.status == 401 and "OPENAI_API_KEY" in info.value.hint
    assert "Incorrect API key" in str(info.value)
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    ("reply", "status", "hint"),
    [
        (error(404, "The model `nope` does not exist", code="model_not_found"), 404, "model name"),
        (error(400, "This model's maximum context length is 8192 tokens"), 400, "context_window"),
        (error(429, "You exceeded your current quota", code="insufficient_quota"), 429, "billing"),
        (error(403, "Project does not have access"), 403, "not allowed"),
    ],
)
async def test_final_errors_carry_hints(
    server: FaultServer, reply: object, status: int, hint: str
) -> None:
    server.push(reply)  # type: ignore[arg-type]
    llm, sleeps = make_llm(server)
    with pytest.raises(ModelError) as info:
        await llm.complete(QUESTION, max_tokens=8)
    assert info.value.status == status and hint in info.value.hint
    assert len(server.requests) == 1 and sleeps == []


async def test_connection_refused_is_retried_then_explained() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = OpenAILLM("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=1)
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    llm.sleep = record
    with pytest.raises(ModelError, match="cannot connect") as info:
        await llm.complete(QUESTION, max_tokens=8)
    assert "OPENAI_BASE_URL" in info.value.hint and len(sleeps) == 1


# -- structured output --------------------------------------------------------------------


async def test_json_schema_is_sent_strict_and_parsed(server: FaultServer) -> None:
    server.push(completion('{"city": "Lima", "confidence": 0.9}'))
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed == City(city="Lima", confidence=0.9)
    assert out.meta["structured"] == "json_schema"
    fmt = server.requests[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert server.requests[0].body["messages"] == [m.as_dict() for m in QUESTION]


async def test_rejected_json_schema_falls_back_to_instructions(server: FaultServer) -> None:
    answer = '{"city": "Lima", "confidence": 1}'
    server.push(reject_response_format(), completion(answer), completion(answer))
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed == City(city="Lima", confidence=1)
    assert out.meta["structured"] == "instructions"
    assert out.meta["structured_fallback"] == "rejected"
    fallback = server.requests[1].body
    assert "response_format" not in fallback
    assert fallback["messages"][0]["content"] == f"Be brief.\n\n{json_instructions(City)}"
    assert llm.json_schema_unsupported
    # Remembered: the next call goes straight to instructions mode, one request.
    await llm.complete([user("Again?")], max_tokens=64, schema=City)
    assert len(server.requests) == 3
    assert server.requests[2].body["messages"][0] == {
        "role": "system",
        "content": json_instructions(City),
    }


async def test_ignored_json_schema_falls_back_to_instructions(server: FaultServer) -> None:
    server.push(completion("The capital is Lima."), completion('{"city":"Lima","confidence":1}'))
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed.city == "Lima" and out.meta["structured_fallback"] == "ignored"
    assert out.usage.calls == 2


@pytest.mark.parametrize("mode", ["auto", "json_schema", "instructions"])
async def test_a_refusal_is_named_not_reasked_and_keeps_json_schema(
    server: FaultServer, mode: str
) -> None:
    server.push(refused("I can't help with that."))
    llm, _ = make_llm(server, structured=mode)
    with pytest.raises(ParseError) as info:  # what strategies recover from, as from bad JSON
        await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert info.value.message == "test-model refused: I can't help with that."
    assert "rephrase" in info.value.hint and "rephrase" in str(info.value)
    assert info.value.raw == "I can't help with that."
    # One request: a re-ask or a fallback to instructions would be refused all the same.
    assert len(server.requests) == 1 and not llm.json_schema_unsupported


async def test_a_filtered_structured_reply_is_named_and_keeps_json_schema(
    server: FaultServer,
) -> None:
    server.push(assistant({"content": '{"city": "Li'}, finish_reason="content_filter"))
    llm, _ = make_llm(server)
    with pytest.raises(ParseError, match="content filter stopped the reply"):
        await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert len(server.requests) == 1 and not llm.json_schema_unsupported


async def test_a_blank_structured_reply_is_reasked_under_json_schema(server: FaultServer) -> None:
    # An empty reply is no sign that the server ignored json_schema: that stays on.
    server.push(assistant({"content": None}), completion('{"city": "Lima", "confidence": 1}'))
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed.city == "Lima" and out.meta["reasked"] is True
    assert "structured_fallback" not in out.meta and not llm.json_schema_unsupported
    assert all("response_format" in r.body for r in server.requests)


async def test_the_reask_after_a_blank_reply_shows_no_empty_assistant_turn(
    server: FaultServer,
) -> None:
    server.push(assistant({"content": None}), completion('{"city": "Lima", "confidence": 1}'))
    llm, _ = make_llm(server)
    await llm.complete(QUESTION, max_tokens=64, schema=City)
    first, again = (r.body["messages"] for r in server.requests)
    *sent, reask = again
    assert sent == first and reask["role"] == "user"
    assert reask["content"].startswith("Your previous reply was not usable: ")


async def test_a_refusal_to_a_plain_call_is_its_text(server: FaultServer) -> None:
    server.push(refused("I can't help with that."))
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=64)
    assert out.text == "I can't help with that." and out.meta["refusal"] is True


async def test_a_filtered_plain_reply_is_kept_with_a_warning(server: FaultServer) -> None:
    server.push(assistant({"content": "Lima is"}, finish_reason="content_filter"))
    llm, _ = make_llm(server)
    with pytest.warns(LongweaveWarning, match="content filter stopped the reply"):
        out = await llm.complete(QUESTION, max_tokens=64)
    assert out.text == "Lima is" and out.finish_reason == "content_filter"


async def test_explicit_json_schema_mode_does_not_fall_back(server: FaultServer) -> None:
    server.push(reject_response_format())
    llm, _ = make_llm(server, structured="json_schema")
    with pytest.raises(ModelError) as info:
        await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert info.value.status == 400 and "structured='instructions'" in info.value.hint


async def test_instructions_mode_repairs_broken_json(server: FaultServer) -> None:
    server.push(completion("Sure!\n```json\n{'city': 'Lima', 'confidence': 0.5,}\n```"))
    llm, _ = make_llm(server, structured="instructions")
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed == City(city="Lima", confidence=0.5)
    assert len(server.requests) == 1 and "response_format" not in server.requests[0].body


async def test_one_reask_carries_the_complaint_and_adds_usage(server: FaultServer) -> None:
    server.push(
        completion('{"town": "Lima"}', prompt_tokens=100, cached_tokens=60),
        completion('{"city": "Lima", "confidence": 1}', prompt_tokens=130, cached_tokens=100),
    )
    llm, _ = make_llm(server, structured="instructions")
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed == City(city="Lima", confidence=1) and out.meta["reasked"] is True
    assert (out.usage.calls, out.usage.prompt_tokens, out.usage.cached_tokens) == (2, 230, 160)
    *_, shown, reask = server.requests[1].body["messages"]
    assert shown == {"role": "assistant", "content": '{"town": "Lima"}'}
    assert reask["role"] == "user" and "city: Field required" in reask["content"]


async def test_parse_error_after_one_reask_carries_the_raw_text(server: FaultServer) -> None:
    server.push(completion("I do not know."), completion("Still no idea, sorry."))
    llm, _ = make_llm(server, structured="instructions")
    with pytest.raises(ParseError) as info:
        await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert info.value.raw == "Still no idea, sorry."
    assert "not valid JSON" in info.value.message and "after one re-ask" in info.value.message
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["auto", "instructions"])
async def test_a_cut_structured_reply_says_it_was_cut(server: FaultServer, mode: str) -> None:
    cut = assistant({"content": '{"city": "Li'}, finish_reason="length")
    server.push(cut, cut)
    llm, _ = make_llm(server, structured=mode)
    with pytest.raises(ParseError) as info:
        await llm.complete(QUESTION, max_tokens=64, schema=City)
    # Repair closes the JSON, so the validator alone would blame a missing field.
    cause = "confidence: Field required: the reply was cut off at the 64-token cap"
    assert cause in info.value.message and "(after one re-ask)" in info.value.message
    assert cause in server.requests[1].body["messages"][-1]["content"]
    assert len(server.requests) == 2 and not llm.json_schema_unsupported


async def test_json_schema_reply_failing_validation_is_reasked_with_the_schema(
    server: FaultServer,
) -> None:
    server.push(
        completion('{"city": "Lima", "confidence": 7}'),
        completion('{"city": "Lima", "confidence": 0.7}'),
    )
    llm, _ = make_llm(server)
    out = await llm.complete(QUESTION, max_tokens=64, schema=City)
    assert out.parsed.confidence == 0.7
    assert "response_format" in server.requests[1].body
    assert "less than or equal to 1" in server.requests[1].body["messages"][-1]["content"]


# -- construction and loops ---------------------------------------------------------------


async def test_no_key_and_no_base_url_is_a_config_error_at_the_first_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"LONGWEAVE_{name}", raising=False)
    llm = OpenAILLM("gpt-4o")  # made, and it counts: planning a run needs no key
    assert llm.count_tokens("How far is the lighthouse?") > 0
    with pytest.raises(ConfigError) as info:  # the first call is refused, before any request
        await llm.complete([user("Hello?")], max_tokens=8)
    assert "set OPENAI_API_KEY or use --model local" in str(info.value) and info.value.fatal


async def test_a_base_url_needs_no_key(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LONGWEAVE_OPENAI_API_KEY", raising=False)
    server.push(completion("ok"))
    llm = OpenAILLM("test-model", base_url=server.base_url)
    assert (await llm.complete(QUESTION, max_tokens=8)).text == "ok"
    assert server.requests[0].headers["authorization"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("gpt-4.1-nano", 1_047_576),
        ("gpt-5-mini", 400_000),
        ("o3", 200_000),
        ("my-local-llama", DEFAULT_CONTEXT_WINDOW),
    ],
)
def test_context_windows_of_known_models(model: str, window: int) -> None:
    assert OpenAILLM(model, api_key="sk-test").context_window == window
    assert OpenAILLM(model, api_key="sk-test", context_window=1000).context_window == 1000


async def test_reasoning_models_get_max_completion_tokens(server: FaultServer) -> None:
    server.push(completion("ok"))
    llm = OpenAILLM("o4-mini", base_url=server.base_url, api_key="sk-test")
    await llm.complete(QUESTION, max_tokens=100, temperature=0.0)
    body = server.requests[0].body
    assert body["max_completion_tokens"] == 100
    assert "max_tokens" not in body and "temperature" not in body


async def test_concurrency_is_bounded_by_the_semaphore(server: FaultServer) -> None:
    server.push(*(slow(completion(), 0.2) for _ in range(5)))
    llm, _ = make_llm(server, concurrency=2)
    outs = await asyncio.gather(*(llm.complete([user(f"q{i}")], max_tokens=8) for i in range(5)))
    assert [o.text for o in outs] == [f"echo: q{i}" for i in range(5)]
    assert server.peak <= 2


def test_one_backend_serves_successive_event_loops(server: FaultServer) -> None:
    server.push(completion("one"), completion("two"))
    llm, _ = make_llm(server)
    ask: list[Message] = [user("hi")]
    assert asyncio.run(llm.complete(ask, max_tokens=8)).text == "one"
    assert asyncio.run(llm.complete(ask, max_tokens=8)).text == "two"


def test_the_server_window_can_be_set_from_the_environment(monkeypatch) -> None:
    """A CLI user's only way to tell a 32k vLLM server from the 8,192 assumed for unknown names."""
    from longweave.errors import ConfigError

    monkeypatch.setenv("LONGWEAVE_CONTEXT_WINDOW", "32768")
    assert OpenAILLM("llama3.1", api_key="sk-test").context_window == 32_768
    assert OpenAILLM("gpt-4o", api_key="sk-test").context_window == 32_768  # the user knows best
    assert OpenAILLM("llama3.1", api_key="sk-test", context_window=4096).context_window == 4096
    monkeypatch.setenv("LONGWEAVE_CONTEXT_WINDOW", "12")
    with pytest.raises(ConfigError, match="LONGWEAVE_CONTEXT_WINDOW"):
        OpenAILLM("llama3.1", api_key="sk-test")
