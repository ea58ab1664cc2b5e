"""Constrained decoding to a JSON schema: a transformers logits processor over llguidance.

llguidance compiles a schema to a grammar whose lexer is built lazily and computes each step's
token mask from the parser state (about 0.1 ms for the bundled model's 49k-token vocabulary).
Bounds cost nothing up front: a `max_length` of 1000 characters is a counter in a lexeme, not
1000 automaton states. outlines-core, used before, compiles the schema to one token-level
automaton in which every character position of a bounded string is a state with a transition
for almost every token (about 1 MB each here): 2 GB and 20 s for PRISM's final answer, more
than 9 GB for GraphReader's extraction schema (40 facts of 300 characters), LIGHT's compressed
scratchpad and PRISM's revisions (`benchmarks/constrained.py`, docs/BENCHMARKS.md).

Termination: a free string or an unbounded list lets a small model write until `max_tokens`
cuts the JSON. Give every string a `max_length` and every list a `max_length` (pydantic
`Field(max_length=...)`); `warn_if_unbounded` warns otherwise. The grammar is compact JSON
with no free whitespace, a known infinite-loop mode of small models. A schema the grammar
compiler rejects is decoded without constraint (with a warning): the structured-output repair
and re-ask still apply to the reply.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from longweave.errors import LongweaveWarning

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

_SPIECE_UNDERLINE = "\u2581"
# Compact JSON: no whitespace between tokens, "," and ":" as the only separators.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def schema_text(schema: type[BaseModel]) -> str:
    """The schema as compact JSON: the cache key and what the grammar is compiled from.

    Keys keep pydantic's order (deterministic for a given model): the grammar generates
    properties in that order, and schemas put reasoning fields before decisions on purpose.
    """
    return json.dumps(schema.model_json_schema(), separators=(",", ":"))


@dataclass(frozen=True)
class Grammar:
    """A schema compiled for one tokenizer; `text` is None when it could not be compiled."""

    tokenizer: Any  # llguidance.LLTokenizer
    text: str | None
    error: str = ""


class SchemaCompiler:
    """Builds (and keeps) the llguidance grammars of schemas for one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_id: int, size: int = 64):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.size = size
        self._lltokenizer: Any = None
        self._grammars: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, schema: type[BaseModel]) -> Grammar | None:
        """The grammar if it is already built, else None (callers then build it off the loop)."""
        with self._lock:
            return self._grammars.get(schema_text(schema))

    def grammar(self, schema: type[BaseModel]) -> Grammar:
        """The grammar of `schema` (the tokenizer's token table takes ~0.5 s once)."""
        import llguidance

        key = schema_text(schema)
        with self._lock:
            if key in self._grammars:
                self._grammars.move_to_end(key)
                return self._grammars[key]
            warn_if_unbounded(schema, self.count_tokens)
            if self._lltokenizer is None:
                self._lltokenizer = llg_tokenizer(self.tokenizer, self.eos_token_id)
            text = llguidance.LLMatcher.grammar_from_json_schema(
                closed_objects(json.loads(key)), defaults=_JSON_OPTIONS)
            error = llguidance.LLMatcher.validate_grammar(text, self._lltokenizer)
            if error:
                warnings.warn(
                    f"schema {schema.__name__} cannot be compiled for constrained decoding "
                    f"({error.splitlines()[0]}); its replies are decoded unconstrained and "
                    "repaired",
                    LongweaveWarning,
                    stacklevel=2,
                )
            compiled = Grammar(self._lltokenizer, None if error else text, error)
            self._grammars[key] = compiled
            if len(self._grammars) > self.size:
                self._grammars.popitem(last=False)
            return compiled

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


def closed_objects(node: Any) -> Any:
    """`node` with `additionalProperties: false` on every object that lists its properties.

    JSON Schema lets an object carry keys it does not name unless it says otherwise, and
    pydantic says so only for `extra="forbid"`; a small model given the choice invents keys.
    """
    if isinstance(node, list):
        return [closed_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed_objects(value) if key not in ("const", "enum", "default") else value
           for key, value in node.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def llg_tokenizer(tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> Any:
    """llguidance's view of a transformers tokenizer: from its Rust twin when it has one."""
    import llguidance.hf

    try:
        return llguidance.hf.from_tokenizer(tokenizer, eos_token=eos_token_id)  # type: ignore[arg-type]
    except ValueError:  # a slow (Python) tokenizer: give llguidance the token bytes instead
        return llguidance.LLTokenizer(_TokenTable(tokenizer, eos_token_id))  # type: ignore[arg-type]


class _TokenTable:
    """A slow tokenizer as llguidance's `TokenizerWrapper` protocol: token bytes and encode."""

    is_tokenizer_wrapper = True

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = list(tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        table = [b""] * (max(vocab.values()) + 1)
        for token, token_id in vocab.items():
            table[token_id] = _token_bytes(tokenizer, token)
        self.tokens = table

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._tokenizer.encode(text, add_special_tokens=False))


def _token_bytes(tokenizer: PreTrainedTokenizerBase, token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])  # sentencepiece byte fallback
    text = tokenizer.convert_tokens_to_string([token])
    if token.startswith(_SPIECE_UNDERLINE):
        text = " " + text  # sentencepiece drops the leading space that decoding restores
    return text.encode("utf-8")


class SchemaLogitsProcessor:
    """Masks every token the grammar forbids, one matcher per batch row."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        self.matchers: list[Any] = []
        self.free: list[bool] = []
        self.mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import llguidance
        import numpy as np
        import torch

        rows, vocab = scores.shape
        if self.mask is None:
            tokenizer = self.grammar.tokenizer
            self.matchers = [llguidance.LLMatcher(tokenizer, self.grammar.text, log_level=0)
                             for _ in range(rows)]
            self.free = [False] * rows
            self.mask = torch.zeros((rows, (tokenizer.vocab_size + 31) // 32), dtype=torch.int32)
        else:
            for i, matcher in enumerate(self.matchers):
                if not self.free[i] and (matcher.is_stopped()
                                         or not matcher.consume_token(int(input_ids[i, -1]))):
                    # A row that ended (its stop token, or padding after its own token cap)
                    # has its final output already: stop constraining it.
                    self.free[i] = True
        mask = self.mask
        for i, matcher in enumerate(self.matchers):
            if self.free[i]:
                mask[i].fill_(-1)
            else:
                matcher.unsafe_compute_mask_ptr(mask[i].data_ptr(),
                                                mask.shape[1] * mask.element_size())
        # Bit j of word i is token 32*i + j; numpy unpacks in one single-threaded pass (torch's
        # element-wise kernels wait on busy worker threads: 50 ms a step on a loaded machine).
        bits = np.unpackbits(mask.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits.view(np.bool_))
        if allowed.shape[1] < vocab:  # embedding rows past the tokenizer: never allowed
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
        allowed = allowed[:, :vocab]
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def warn_if_unbounded(schema: type[BaseModel], count_tokens: Callable[[str], int]) -> None:
    """Warn when a string or list of `schema` has no `max_length` (§8.4): output may not close."""
    from longweave.structured import schema_fits

    if not schema_fits(schema, 1 << 40, count_tokens):
        warnings.warn(
            f"schema {schema.__name__} has a string or list without max_length: constrained "
            "output from a small model may run until max_tokens cuts the JSON",
            LongweaveWarning,
            stacklevel=2,
        )
