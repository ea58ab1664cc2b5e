"""The OpenAI-compatible backend: OpenAI itself, vLLM, llama.cpp, `longweave serve` and the like.

Retries are ours, not the client's (it is created with `max_retries=0`), so the policy is the same
for every server, honours Retry-After, and is testable with an injected `sleep`.

A call made while `longweave.events.token_sink` is set (a strategy's final answer) streams: each
text delta goes to the sink, and `stream_options.include_usage` keeps usage exact. A stream cut
mid-way is retried like any failed request (the sink is told to restart); a server that refuses
streaming, or answers it with a plain JSON body, is remembered and asked without it from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from longweave.answer import Usage, plural
from longweave.config import Settings
from longweave.errors import (
    ConfigError,
    LongweaveWarning,
    ModelError,
    ParseError,
    stops_every_call,
    unreachable,
)
from longweave.events import TokenSink, token_sink
from longweave.llm import Completion, Message, check_budget
from longweave.structured import (
    json_instructions,
    parse_structured,
    reask,
    repair_json,
    strict_schema,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from longweave.tokenizers import Tokenizer

__all__ = ["OpenAILLM", "known_context_window"]

PROVIDER = "openai"
StructuredMode = Literal["auto", "json_schema", "instructions"]

# Longest prefix wins. Unknown models (most local servers) get DEFAULT_CONTEXT_WINDOW: pass
# LONGWEAVE_CONTEXT_WINDOW or `context_window=` with the server's real window (vLLM's
# --max-model-len, llama.cpp's -c).
_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-5": 400_000,
    "gpt-5-chat": 128_000,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}
DEFAULT_CONTEXT_WINDOW = 8_192
MAX_RETRY_WAIT = 60.0
NOTICE_WAIT = 10.0
"""Retry waits at least this long (seconds) are announced as a warning."""
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
_RETRY_STATUS = {408, 409, 429}
_NOT_IMPLEMENTED = 501
"""The one 5xx not retried: the server lacks the endpoint or the feature, and still will."""
_FILTERED = "the server's content filter stopped the reply"
_RETRY_HINT = ("the server is failing: retry later, or raise LONGWEAVE_MAX_RETRIES "
               "(max_retries= in Python)")
_RATE_HINT = ("the server is rate limiting: retry later, lower LONGWEAVE_CONCURRENCY, or raise "
              "LONGWEAVE_MAX_RETRIES")
_REFUSED_HINT = "the model declined this request: rephrase the question, or use another model"
_FILTERED_HINT = "rephrase the question, or use a model or server without that filter"


def known_context_window(model: str) -> int | None:
    """The published window of a known OpenAI model, or None."""
    matches = [p for p in _CONTEXT_WINDOWS if model == p or model.startswith(p + "-")]
    return _CONTEXT_WINDOWS[max(matches, key=len)] if matches else None


def _is_reasoning_model(model: str) -> bool:
    # These reject `max_tokens` (they take `max_completion_tokens`) and any temperature but 1.
    return model.startswith(("o1", "o3", "o4", "gpt-5")) and not model.startswith("gpt-5-chat")


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, then `Retry-After`), or None."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; `wait` is the server's Retry-After, if any."""

    def __init__(self, error: ModelError, wait: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.wait = wait


@dataclass
class _Call:
    """One `complete` call's request settings and what its requests have spent so far."""

    messages: list[Message]
    max_tokens: int
    temperature: float
    started: float = field(default_factory=time.perf_counter)
    usage: Usage = field(default_factory=Usage)
    meta: dict[str, Any] = field(default_factory=dict)


class _FormatRejected(Exception):
    """The server refused `response_format=json_schema`."""


class OpenAILLM:
    """A chat model behind an OpenAI-compatible HTTP API.

    >>> llm = OpenAILLM("gpt-4o-mini", api_key="sk-test")
    >>> llm.context_window, llm.name
    (128000, 'openai:gpt-4o-mini')
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        context_window: int | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        structured: StructuredMode = "auto",
        concurrency: int | None = None,
        stream: bool = True,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or settings.openai_base_url
        key = api_key or settings.openai_api_key
        # Refused at the first call, not here: counting tokens and planning (`--estimate`)
        # need no key.
        self._keyless = not key and not self.base_url
        # Local servers accept any key, but the client insists on one.
        self._api_key = key or "not-needed"
        self.context_window = (context_window or settings.context_window
                               or known_context_window(model) or DEFAULT_CONTEXT_WINDOW)
        self.timeout = timeout if timeout is not None else settings.request_timeout
        self.max_retries = max_retries if max_retries is not None else settings.max_retries
        if structured not in ("auto", "json_schema", "instructions"):
            raise ConfigError(
                f"unknown structured mode {structured!r}",
                hint="use 'auto', 'json_schema' or 'instructions'",
            )
        self.structured: StructuredMode = structured
        # Set when the server refuses or ignores json_schema; later calls skip straight to
        # instructions rather than paying for a rejected request each time.
        self.json_schema_unsupported = False
        self.concurrency = concurrency or settings.concurrency
        self.stream = stream
        """Stream calls made with a token sink set (final answers); False never streams."""
        # Set when the server refuses `stream` or ignores it; later calls do not try again.
        self.streaming_unsupported = False
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.random = random.Random()
        self._tokenizer: Tokenizer | None = None
        # The client and semaphore belong to one event loop; a new loop (a second asyncio.run)
        # gets fresh ones rather than a connection pool bound to a closed loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    # -- tokens ---------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from longweave.tokenizers import for_openai_model

            self._tokenizer = for_openai_model(self.model)
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the messages occupy, by OpenAI's cookbook estimate of the chat format."""
        # 3 framing tokens and 1 role token per message, and 3 that prime the reply.
        return sum(4 + self.count_tokens(m.content) for m in messages) + 3

    # -- the call ---------------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        schema: type[BaseModel] | None = None,
        role: str = "",
    ) -> Completion:
        call = _Call(list(messages), max_tokens, temperature)
        if schema is None:  # schema calls never stream: a partial JSON object is no answer
            sink = token_sink.get() if self.stream else None
            reply = await self._send(call, call.messages, sink=sink)
            if reply[1] == "content_filter":  # kept (a worker's note may be partial), but said
                warnings.warn(f"{self.model}: {_FILTERED}; the reply may be cut short or empty",
                              LongweaveWarning, stacklevel=2)
            return self._done(call, reply, None)
        if self.structured == "json_schema" or (
            self.structured == "auto" and not self.json_schema_unsupported
        ):
            try:
                reply = await self._send(call, call.messages, schema)
            except _FormatRejected:
                self.json_schema_unsupported = True  # remembered: later calls skip the attempt
                call.meta["structured_fallback"] = "rejected"
            else:
                if self.structured == "json_schema" or not _ignored_format(reply):
                    call.meta["structured"] = "json_schema"
                    return await self._validate(call, call.messages, reply, schema, True)
                # The server accepted the format but ignored it: fall back from now on.
                self.json_schema_unsupported = True
                call.meta["structured_fallback"] = "ignored"
        call.meta["structured"] = "instructions"
        prompt = _with_instructions(call.messages, json_instructions(schema))
        return await self._validate(call, prompt, await self._send(call, prompt), schema, False)

    async def _validate(
        self,
        call: _Call,
        prompt: list[Message],
        reply: tuple[str, str, Any],
        schema: type[BaseModel],
        use_schema: bool,
    ) -> Completion:
        """Parse with repair; on failure re-ask once with the complaint, then raise ParseError.

        A refusal or a content-filter stop is raised as it is: no JSON is coming, so a re-ask
        would only pay for the same answer again."""
        self._check_stopped(reply)
        text = reply[0]
        try:
            return self._done(call, reply, parse_structured(text, schema))
        except ParseError as error:
            complaint = _complaint(error, reply[1], call.max_tokens)
        retry = reask(prompt, text, complaint)
        if self.count_prompt_tokens(retry) + call.max_tokens > self.context_window:
            raise ParseError(f"{complaint} (no room left to re-ask)", raw=text, provider=PROVIDER)
        call.meta["reasked"] = True
        reply = await self._send(call, retry, schema if use_schema else None)
        self._check_stopped(reply)
        try:
            parsed = parse_structured(reply[0], schema)
        except ParseError as error:
            message = f"{_complaint(error, reply[1], call.max_tokens)} (after one re-ask)"
            raise ParseError(message, raw=reply[0], provider=PROVIDER) from None
        return self._done(call, reply, parsed)

    def _check_stopped(self, reply: tuple[str, str, Any]) -> None:
        """Raise a ParseError naming a refusal or a content-filter stop, which strategies
        recover from as from any reply that missed the schema; the message says why."""
        text, finish, resp = reply
        refusal = _refusal(resp)
        if refusal:
            message, hint = f"{self.model} refused: {refusal}", _REFUSED_HINT
        elif finish == "content_filter":
            message, hint = f"{self.model}: {_FILTERED}", _FILTERED_HINT
        else:
            return
        raise ParseError(message, raw=text, provider=PROVIDER, hint=hint)

    def _done(self, call: _Call, reply: tuple[str, str, Any], parsed: Any) -> Completion:
        text, finish, resp = reply
        usage = call.usage.model_copy(update={"seconds": time.perf_counter() - call.started})
        model = str(getattr(resp, "model", None) or self.model)
        return Completion(text, usage, parsed, finish, model, call.meta)

    async def _send(
        self,
        call: _Call,
        messages: list[Message],
        schema: type[BaseModel] | None = None,
        *,
        sink: TokenSink | None = None,
    ) -> tuple[str, str, Any]:
        """One logical request, budget-checked and retried; returns (text, finish_reason, raw)."""
        # Servers reject an oversized prompt or, worse, truncate it silently: refuse first.
        check_budget(self.count_prompt_tokens(messages), call.max_tokens, self.context_window)
        kwargs = self._kwargs(messages, call.max_tokens, call.temperature, schema)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            call.meta["attempts"] = call.meta.get("attempts", 0) + 1
            try:
                resp = await self._attempt(kwargs, schema is not None, sink, call.meta)
                break
            except _Retryable as failure:
                # A server's message often ends in a full stop: not one before our semicolon.
                why = failure.error.message.rstrip(". ")
                if attempt == attempts:
                    raise ModelError(
                        f"{why}; gave up after {plural(attempts, 'attempt')}",
                        provider=PROVIDER,
                        status=failure.error.status,
                        hint=failure.error.hint or _RETRY_HINT,
                        fatal=failure.error.fatal,
                    ) from None
                wait = self._wait(attempt, failure.wait)
                if wait >= NOTICE_WAIT:  # a long silent wait looks like a hang: say why
                    warnings.warn(f"{why}; retrying in {wait:.0f} s "
                                  f"(attempt {attempt + 1} of {attempts})", LongweaveWarning,
                                  stacklevel=2)
                await self.sleep(wait)
        text, finish = _text(resp)
        if _refusal(resp):
            call.meta["refusal"] = True
        call.usage += self._usage(resp, messages, text, call.meta)
        return text, finish, resp

    def _wait(self, attempt: int, server_wait: float | None) -> float:
        if server_wait is not None:
            return min(server_wait, MAX_RETRY_WAIT)
        # Exponential backoff with jitter, so many clients do not retry in lockstep.
        base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * self.random.random())

    def _kwargs(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        schema: type[BaseModel] | None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [m.as_dict() for m in messages],
        }
        if _is_reasoning_model(self.model):
            kwargs["max_completion_tokens"] = max_tokens
        else:
            kwargs["max_tokens"] = max_tokens
            kwargs["temperature"] = temperature
        if schema is not None:
            body, strict = strict_schema(schema)
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": body, "strict": strict},
            }
        return kwargs

    def writes_every_field(self, schema: type[BaseModel]) -> bool:
        """Whether a reply under `schema` holds every field, optional ones included (as null):
        OpenAI strict mode, which this backend asks for when the schema allows it."""
        from longweave.structured import strict_schema

        sends_schema = self.structured == "json_schema" or (
            self.structured == "auto" and not self.json_schema_unsupported)
        return sends_schema and strict_schema(schema)[1]

    @property
    def fingerprint(self) -> str:
        """The model name plus the server and structured mode, which change what comes back:
        local servers (vLLM, llama.cpp, `longweave serve`) often answer to any model name."""
        server = (self.base_url or "default").rstrip("/")
        return f"{self.name}|{server}|structured={self.structured}"

    def check_key(self) -> None:
        """Raise ConfigError (fatal) when no call can be made: no API key and no server of
        one's own (a base URL). Calls check it first; `longweave serve` checks it at start."""
        if self._keyless:
            raise ConfigError(f"no API key for model {self.model!r}",
                              hint="set OPENAI_API_KEY or use --model local", fatal=True)

    def _client_for_loop(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        self.check_key()
        if self._client is None or self._loop is not loop or self._semaphore is None:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=0,
            )
            self._semaphore = asyncio.Semaphore(self.concurrency)
            self._loop = loop
        return self._client, self._semaphore

    async def _attempt(
        self,
        kwargs: dict[str, Any],
        with_schema: bool,
        sink: TokenSink | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        """One HTTP request, its failures sorted into retryable, rejected format, or final."""
        import openai

        client, semaphore = self._client_for_loop()
        try:
            async with semaphore:
                resp = None
                if sink is not None and not self.streaming_unsupported:
                    resp = await self._try_stream(client, kwargs, sink, meta)
                if resp is None:
                    # httpx's timeout is per read: a server that trickles bytes never hits it.
                    resp = await asyncio.wait_for(client.chat.completions.create(**kwargs),
                                                  self.timeout)
        except (TimeoutError, openai.APITimeoutError):  # ours (the whole call) or httpx's
            hint = (f"the server is slower than the {self.timeout:g} s timeout: raise "
                    "LONGWEAVE_REQUEST_TIMEOUT (timeout= in Python), or check the server")
            raise _Retryable(ModelError(f"{self.model}: no reply within {self.timeout:g} s",
                                        provider=PROVIDER, hint=hint)) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc, with_schema) from None
        except openai.APIConnectionError as exc:
            raise _Retryable(
                ModelError(
                    f"{self.model}: cannot connect to {self._where()}: {exc.__cause__ or exc}",
                    provider=PROVIDER,
                    hint="check OPENAI_BASE_URL and that the server is running",
                    fatal=unreachable(exc),  # once the retries give up: nothing is there
                )
            ) from None
        except ValueError as exc:  # the body was not JSON (a proxy cut it, or a broken server)
            body = getattr(exc, "doc", None)  # a JSONDecodeError keeps the text it read
            if isinstance(body, str) and _is_web_page(body):  # a page labelled as JSON
                raise self._web_page(body) from None
            raise _Retryable(self._malformed(f"body is not JSON: {exc}")) from None
        if isinstance(resp, str) and _is_web_page(resp):  # the client returns such a body as text
            raise self._web_page(resp)
        problem = _reply_problem(resp)
        if problem is not None:
            raise _Retryable(self._malformed(problem))
        return resp

    async def _try_stream(
        self, client: Any, kwargs: dict[str, Any], sink: TokenSink, meta: dict[str, Any] | None
    ) -> Any:
        """The reply streamed into `sink`, or None when the server refused to stream."""
        import openai

        try:
            stream = await client.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
        except openai.APIStatusError as exc:
            lowered = f"{_error_detail(exc)} {getattr(exc, 'code', '') or ''}".lower()
            if int(exc.status_code) in (400, 422, _NOT_IMPLEMENTED) and "stream" in lowered:
                self.streaming_unsupported = True  # remembered: later calls do not stream
                if meta is not None:
                    meta["stream_fallback"] = "rejected"
                return None
            raise
        if meta is not None:
            meta["streamed"] = True
        return await _collect(stream, sink, self, meta)

    def _web_page(self, page: str) -> ModelError:
        """A web page where a chat completion should be: a login page of a proxy, or a base URL
        that names a web app rather than its API. Not retried, and fatal: every later call
        would get the same page until the URL or the sign-in changes."""
        named = _page_title(page)[:80]
        said = f" ({named!r})" if named else ""
        return ModelError(
            f"{self.model}: {self._where()} answered with a web page{said}, not the API's JSON",
            provider=PROVIDER,
            hint="check that OPENAI_BASE_URL is the server's API (it usually ends in /v1), and "
                 "whether a proxy on the way wants you to sign in",
            fatal=True,
        )

    def _malformed(self, detail: str) -> ModelError:
        return ModelError(
            f"{self.model}: malformed response from {self._where()}: {detail}",
            provider=PROVIDER,
            hint="check that OPENAI_BASE_URL points at an OpenAI-compatible /v1 endpoint",
        )

    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _status_error(self, exc: Any, with_schema: bool) -> Exception:
        status = int(exc.status_code)
        detail = _error_detail(exc)
        code = str(getattr(exc, "code", "") or "")
        message = f"{self.model}: HTTP {status} from {self._where()}: {detail}"
        lowered = f"{detail} {code}".lower()
        if (status in _RETRY_STATUS or status >= 500) and not stops_every_call(status, code,
                                                                                detail):
            wait = retry_after_seconds(getattr(exc.response, "headers", None))
            hint = _RATE_HINT if status == 429 else None
            return _Retryable(ModelError(message, provider=PROVIDER, status=status, hint=hint),
                              wait)
        rejects_format = "response_format" in lowered or "json_schema" in lowered
        if (with_schema and status in (400, 422, _NOT_IMPLEMENTED) and rejects_format
                and self.structured == "auto"):
            return _FormatRejected(message)
        hint = None
        if status == 401:
            hint = "check OPENAI_API_KEY (or the key your server expects)"
        elif status == 403:
            hint = "the key is not allowed to use this model or endpoint"
        elif status == 404:
            hint = "check the model name and OPENAI_BASE_URL (it should end in /v1)"
        elif status == _NOT_IMPLEMENTED:
            hint = ("the server does not implement this request: check that OPENAI_BASE_URL is "
                    "an OpenAI-compatible API with /chat/completions"
                    + (", and use structured='instructions' if it lacks json_schema output"
                       if with_schema else ""))
        elif code == "insufficient_quota":
            hint = "the account is out of quota: check billing, or use --model local"
        elif "context" in lowered and ("length" in lowered or "window" in lowered):
            hint = (
                "the prompt does not fit the server's window: set LONGWEAVE_CONTEXT_WINDOW "
                "(context_window= in Python) to the server's real window"
            )
        elif with_schema and rejects_format:
            hint = "the server cannot do json_schema output: use structured='instructions'"
        # Every later call would get the same answer: the key, the permission, the model or
        # the quota has to change first.
        fatal = stops_every_call(status, code, detail)
        return ModelError(message, provider=PROVIDER, status=status, hint=hint, fatal=fatal)

    def _usage(self, resp: Any, messages: list[Message], text: str, meta: dict[str, Any]) -> Usage:
        usage = getattr(resp, "usage", None)
        try:  # the body is not validated: a usage of another shape is no reason to lose the reply
            details = getattr(usage, "prompt_tokens_details", None)
            return Usage(
                calls=1,
                prompt_tokens=int(usage.prompt_tokens),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                cached_tokens=int(getattr(details, "cached_tokens", 0) or 0),
            )
        except (AttributeError, TypeError, ValueError):
            meta["usage_estimated"] = True  # a server without usage: count it ourselves
            return Usage(
                calls=1,
                prompt_tokens=self.count_prompt_tokens(messages),
                completion_tokens=self.count_tokens(text),
            )


async def _collect(
    stream: Any, sink: TokenSink, llm: OpenAILLM, meta: dict[str, Any] | None
) -> Any:
    """Read a stream of chunks into a completion-shaped object, passing text deltas to `sink`.

    A stream that ends without a finish reason or usage was cut (a proxy or the server closed
    it), and one that sends no chunk for `llm.timeout` seconds is stalled (keep-alive comments
    and trickled bytes do not count): both are retried like a failed request, so a partial
    answer is never returned or cached.
    """
    import openai

    response = getattr(stream, "response", None)
    content_type = str(getattr(response, "headers", {}).get("content-type", ""))
    if response is not None and "json" in content_type:
        # The server ignored `stream` and sent a whole completion: use it, and stop asking.
        llm.streaming_unsupported = True
        if meta is not None:
            meta["stream_fallback"] = "ignored"
        from openai.types.chat import ChatCompletion

        body = json.loads(await response.aread())
        if not isinstance(body, dict):  # None here would mean "refused to stream": ask again
            raise _Retryable(llm._malformed(f"unexpected body {_excerpt(body)}"))
        return ChatCompletion.construct(**body)
    if response is not None and content_type and "event-stream" not in content_type:
        page = (await response.aread()).decode("utf-8", "replace")
        if "html" in content_type or _is_web_page(page):
            raise llm._web_page(page)
        body = page[:200]
        raise _Retryable(llm._malformed(f"expected a stream of events, got {content_type!r}: "
                                        f"{body!r}"))
    parts: list[str] = []
    finish, model, usage = None, "", None
    chunks = stream.__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), llm.timeout)
            except StopAsyncIteration:
                break
            model = getattr(chunk, "model", None) or model
            usage = getattr(chunk, "usage", None) or usage
            for choice in getattr(chunk, "choices", None) or []:
                if choice.finish_reason:
                    finish = choice.finish_reason
                delta = getattr(getattr(choice, "delta", None), "content", None)
                if delta and isinstance(delta, str):
                    parts.append(delta)
                    sink(delta)
        if finish is None and usage is None:
            raise _Retryable(ModelError(f"{llm.model}: the stream ended before the reply did "
                                        f"({len(parts)} chunks, no finish reason)",
                                        provider=PROVIDER))
    except Exception as exc:
        if parts:
            sink("", restart=True)  # what was shown is void: the retry starts over
        close = getattr(stream, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        if isinstance(exc, TimeoutError):
            raise _Retryable(ModelError(f"{llm.model}: the stream stalled: no chunk within "
                                        f"{llm.timeout:g} s", provider=PROVIDER)) from None
        if isinstance(exc, openai.APIError) and not isinstance(
            exc, openai.APIStatusError | openai.APIConnectionError
        ):
            # An error event inside the stream (the server failed mid-generation).
            raise _Retryable(
                ModelError(f"{llm.model}: the stream failed: {exc.message}", provider=PROVIDER)
            ) from None
        raise
    message = SimpleNamespace(content="".join(parts))
    choice = SimpleNamespace(message=message, finish_reason=finish or "stop")
    return SimpleNamespace(choices=[choice], model=model, usage=usage)


def _reply_problem(resp: Any) -> str | None:
    """What makes a 200 body no chat completion, in words for the error, or None.

    The client builds the body without validating it, so anything may arrive here: an error
    object (some proxies answer errors with 200), no choices, or fields of the wrong type.
    """
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        error = (getattr(resp, "model_extra", None) or {}).get("error")
        if isinstance(error, dict):
            error = error.get("message") or error
        if error:
            return f"HTTP 200 with an error in the body: {str(error)[:200]}"
        if isinstance(choices, list):
            return "the reply has no choices (an empty 'choices' list)"
        return f"unexpected body {_excerpt(resp)}"
    message = getattr(choices[0], "message", None)
    if message is None or not hasattr(message, "content"):
        return f"unexpected body {_excerpt(resp)}"
    if message.content is not None and not isinstance(message.content, str | list):
        return f"the reply's content is {type(message.content).__name__}, not text"
    return None


def _is_web_page(text: str) -> bool:
    """Whether a body is an HTML page (a proxy's login page, a web app's index), not JSON."""
    start = text.lstrip()[:1024].lower()
    return start.startswith(("<!doctype html", "<html", "<head", "<body")) or (
        start.startswith("<") and "<html" in start)


def _excerpt(resp: Any) -> str:
    """A short view of a body: its fields that are set, not a model's every None."""
    if hasattr(resp, "__dict__"):
        fields = {k: v for k, v in vars(resp).items() if v is not None}
        resp = {**fields, **(getattr(resp, "model_extra", None) or {})}
    return repr(resp)[:200]


def _text(resp: Any) -> tuple[str, str]:
    """The reply's text (a refusal stands in for missing content) and finish reason."""
    choice = resp.choices[0]
    content = getattr(choice.message, "content", None)
    if isinstance(content, list):  # content parts, as a few servers send: their text, joined
        content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content or _refusal(resp), getattr(choice, "finish_reason", None) or "stop"


def _complaint(error: ParseError, finish: str, max_tokens: int) -> str:
    """The validator's complaint, with the cause when the reply was cut at the token cap: JSON
    closed by repair after a cut misses fields for want of room ("Field required")."""
    if finish != "length":
        return error.message
    return f"{error.message}: the reply was cut off at the {max_tokens}-token cap; be briefer"


def _refusal(resp: Any) -> str:
    """The refusal an OpenAI model sends in place of content (structured outputs), or ''."""
    refusal = getattr(resp.choices[0].message, "refusal", None)
    return refusal.strip() if isinstance(refusal, str) else ""


def _ignored_format(reply: tuple[str, str, Any]) -> bool:
    """Whether a server that accepted json_schema answered in prose without JSON, i.e. ignored
    it. A blank, cut, filtered or refused reply says nothing about the format: it is validated
    (and re-asked) under json_schema rather than turning json_schema off for good."""
    text, finish, resp = reply
    if not text.strip() or finish in ("length", "content_filter") or _refusal(resp):
        return False
    return not _has_json(text)


def _has_json(text: str) -> bool:
    try:
        repair_json(text)
    except ValueError:
        return False
    return True


def _error_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail"):  # OpenAI's shape, then FastAPI-style servers
                if inner.get(key):
                    return _readable(str(inner[key]))
        if isinstance(inner, str):
            return _readable(inner)
    if isinstance(body, str) and body.strip():  # a body that is not JSON: an error page, say
        return _readable(body)
    return _readable(str(getattr(exc, "message", "") or exc))


_DETAIL_CHARS = 300
"""The most of a server's error text an error message quotes."""
_HTML = re.compile(r"<(?:!doctype|html|head|body)\b", re.I)


def _readable(detail: str) -> str:
    """A server's error text fit for a one-line message: an HTML error page (a gateway's 502,
    a proxy's 403) is named by its title rather than quoted whole, and long text is clipped."""
    page = _HTML.search(detail)
    if page:
        named = _page_title(detail)
        detail = detail[:page.start()] + "an HTML page" + (f" titled {named!r}" if named else "")
    detail = " ".join(detail.split())
    return detail if len(detail) <= _DETAIL_CHARS else detail[:_DETAIL_CHARS - 1] + "…"


def _page_title(page: str) -> str:
    """An HTML page's <title>, its whitespace collapsed; "" without one."""
    title = re.search(r"<title[^>]*>([^<]*)</title>", page, re.I)
    return " ".join(title.group(1).split()) if title else ""


def _schema_name(schema: type[BaseModel]) -> str:
    # OpenAI accepts [a-zA-Z0-9_-]{1,64}.
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in schema.__name__)
    return name[:64] or "answer"


def _with_instructions(messages: list[Message], instructions: str) -> list[Message]:
    if messages and messages[0].role == "system":
        head = Message("system", f"{messages[0].content}\n\n{instructions}")
        return [head, *messages[1:]]
    return [Message("system", instructions), *messages]
