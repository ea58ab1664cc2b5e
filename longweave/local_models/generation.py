"""Run one batch of requests through `model.generate`: left-padded, each row with its own cap.

A batch of one request may start from the key/value cache of a prefix it shares with an
earlier prompt (`prefix_cache`); padded batches always prefill from scratch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from longweave.local_models.batcher import GenRequest, GenResult
from longweave.local_models.prefix_cache import PrefixCache, empty_cache, generate_kwargs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def eos_ids(model: PreTrainedModel, fallback: int | None) -> list[int]:
    """Every token that ends a reply (chat models often have more than one)."""
    value = model.generation_config.eos_token_id
    if value is None:
        value = fallback
    ids = value if isinstance(value, list) else [value]
    return [int(i) for i in ids if i is not None]


class _RowCaps:
    """Stops each row at its own `max_tokens`, so one batch can mix caps without waste, and a
    row whose caller cancelled at once (generation ends when every row has stopped)."""

    def __init__(self, prompt_len: int, requests: Sequence[GenRequest]) -> None:
        import torch

        self.prompt_len = prompt_len
        self.requests = requests
        self.caps: torch.Tensor = torch.tensor([r.max_tokens for r in requests])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        import torch

        done = input_ids.shape[1] - self.prompt_len >= self.caps.to(input_ids.device)
        if any(r.cancelled for r in self.requests):
            gone = torch.tensor([r.cancelled for r in self.requests], device=input_ids.device)
            done = done | gone
        return done


class GeneratedRepetitionPenalty:
    """Penalize tokens this reply has already produced, and only those.

    transformers' own repetition penalty also counts the prompt, which would push an
    extractive answer away from the very names it must copy from the document.
    """

    def __init__(self, prompt_len: int, penalty: float) -> None:
        self.prompt_len = prompt_len
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, generated)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, generated, seen)


class RowStreamer:
    """A `generate()` streamer that hands each row's new text to its request's `on_text`.

    generate() passes the prompt once, then each step's new token of every row. A row stops
    streaming at a stop token or its own cap (later tokens of a finished row are padding). Text
    is decoded from the row's whole reply each time, so a token that completes a multi-byte
    character or changes the spacing before it is sent right; an unfinished character (the
    replacement character at the end) waits for the next token.
    """

    def __init__(self, requests: Sequence[GenRequest], decode: Callable[[list[int]], str],
                 stop_ids: Sequence[int]) -> None:
        self.requests = list(requests)
        self.decode = decode
        self.stops = set(stop_ids)
        self.tokens: list[list[int]] = [[] for _ in self.requests]
        self.sent = [""] * len(self.requests)
        self.done = [r.on_text is None for r in self.requests]
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, tokens in enumerate(value.reshape(len(self.requests), -1).tolist()):
            for token in tokens:
                self._add(row, int(token))

    def _add(self, row: int, token: int) -> None:
        request = self.requests[row]
        if self.done[row] or token in self.stops or request.cancelled:
            self.done[row] = True
            return
        self.tokens[row].append(token)
        self.done[row] = len(self.tokens[row]) >= request.max_tokens
        text = self.decode(self.tokens[row])
        if text.endswith("\ufffd") or not text.startswith(self.sent[row]):
            return
        delta, self.sent[row] = text[len(self.sent[row]) :], text
        if delta and request.on_text is not None:
            try:
                request.on_text(delta)
            except Exception:  # a display's failure must not stop the generation
                request.on_text = None

    def end(self) -> None:
        pass


def run_batch(
    model: PreTrainedModel,
    requests: Sequence[GenRequest],
    *,
    pad_id: int,
    stop_ids: Sequence[int],
    repetition_penalty: float = 1.0,
    prefix_cache: PrefixCache | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> list[GenResult]:
    """Generate for all `requests` (same temperature and group) in one padded batch.

    With `prefix_cache`, a lone request reuses the cache of its longest stored prefix and
    leaves its own prompt's cache behind for the next call; greedy output is unchanged.
    With `decode` (token ids to text), requests that have `on_text` get their text as it grows.
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    started = time.perf_counter()
    width = max(len(r.prompt_ids) for r in requests)
    ids = [[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests]
    mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests]
    device = model.device
    input_ids = torch.tensor(ids, dtype=torch.long, device=device)
    attention_mask = torch.tensor(mask, dtype=torch.long, device=device)
    caps = [r.max_tokens for r in requests]
    temperature = requests[0].temperature
    # A fresh config: a checkpoint's own sampling defaults (top_k, top_p, ...) must not leak
    # into greedy decoding, and `temperature` means the same for every model.
    config = GenerationConfig(
        max_new_tokens=max(caps),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=None,
        top_p=None,
        pad_token_id=pad_id,
        eos_token_id=list(stop_ids),
    )
    processors = LogitsProcessorList()
    if requests[0].extra is not None:
        from longweave.local_models.constrained import SchemaLogitsProcessor

        processors.append(SchemaLogitsProcessor(requests[0].extra))
    elif repetition_penalty != 1.0:
        processors.append(GeneratedRepetitionPenalty(width, repetition_penalty))
    start, cached = _starting_cache(model, requests, prefix_cache)
    streamer = (RowStreamer(requests, decode, stop_ids)
                if decode is not None and any(r.on_text is not None for r in requests) else None)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_RowCaps(width, requests)]),
            streamer=streamer,
            **generate_kwargs(model, start),
        )
    if start is not None and prefix_cache is not None:
        # generate extended `start` in place: it now covers this prompt (and the reply).
        prefix_cache.put(requests[0].prompt_ids, start)
    seconds = time.perf_counter() - started
    stops = set(stop_ids)
    results = []
    for row, request in enumerate(requests):
        new = out[row, width:].tolist()[: request.max_tokens]
        cut = next((i for i, token in enumerate(new) if token in stops), None)
        finish = "length" if cut is None else "stop"
        tokens = new if cut is None else new[:cut]
        results.append(GenResult(tokens, finish, len(requests), seconds, cached))
    return results


def _starting_cache(
    model: PreTrainedModel, requests: Sequence[GenRequest], prefix_cache: PrefixCache | None
) -> tuple[Any, int]:
    """A lone request's starting key/value cache (its stored prefix, or empty) and its length.

    None (generate makes its own cache) for a padded batch, whose rows do not line up with any
    stored prompt, or when prefix caching is off.
    """
    if prefix_cache is None or not prefix_cache.enabled or len(requests) != 1:
        return None, 0
    cache, cached = prefix_cache.take(requests[0].prompt_ids)
    return (cache if cache is not None else empty_cache(model)), cached
