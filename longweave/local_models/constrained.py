"""Constrained decoding to a JSON schema: a transformers logits processor over outlines-core.

outlines-core (installed with `outlines`) compiles the schema to a regex and the regex to a
token-level automaton. We apply its masks ourselves instead of through `outlines`' own
processor, whose torch kernel is `torch.compile`d on first use: ~30 s of compilation on a
2-core CPU for a mask that eager torch applies in well under a millisecond.

Termination: a free string or an unbounded list lets a small model write until `max_tokens`
cuts the JSON. Give every string a `max_length` and every list a `max_length` (pydantic
`Field(max_length=...)`); `warn_if_unbounded` warns otherwise. The grammar is compact JSON with no
free whitespace, a known infinite-loop mode of small models.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

_SPIECE_UNDERLINE = "\u2581"


def schema_text(schema: type[BaseModel]) -> str:
    """The schema as compact JSON: the cache key and what outlines-core compiles.

    Keys keep pydantic's order (deterministic for a given model): the grammar generates
    properties in that order, and schemas put reasoning fields before decisions on purpose.
    """
    return json.dumps(schema.model_json_schema(), separators=(",", ":"))


class SchemaCompiler:
    """Builds (and keeps) the outlines-core index of a schema for one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_id: int, size: int = 64):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.size = size
        self._vocabulary: Any = None
        self._indexes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, schema: type[BaseModel]) -> Any:
        """The index if it is already built, else None (callers then build it off the loop)."""
        with self._lock:
            return self._indexes.get(schema_text(schema))

    def index(self, schema: type[BaseModel]) -> Any:
        """The compiled automaton for `schema` (about half a second the first time)."""
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        key = schema_text(schema)
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
            warn_if_unbounded(schema, self.count_tokens)
            if self._vocabulary is None:
                self._vocabulary = self._build_vocabulary()
            # "" = no optional whitespace between JSON tokens: compact and loop-free.
            index = Index(build_regex_from_schema(key, ""), self._vocabulary)
            self._indexes[key] = index
            if len(self._indexes) > self.size:
                self._indexes.popitem(last=False)
            return index

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _build_vocabulary(self) -> Any:
        from outlines_core import Vocabulary

        tok = self.tokenizer
        by_text: dict[str, list[int]] = {}
        special = set(tok.all_special_ids)
        for token, token_id in tok.get_vocab().items():
            if token_id in special:
                continue  # the grammar never emits a control token; EOS is added below
            text = tok.convert_tokens_to_string([token])
            if token.startswith(_SPIECE_UNDERLINE) or token == "<0x20>":
                text = " " + text  # sentencepiece drops a leading space that the grammar needs
            by_text.setdefault(text, []).append(token_id)
        return Vocabulary(self.eos_token_id, by_text)


class SchemaLogitsProcessor:
    """Masks every token the schema forbids, one automaton state per batch row."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.guides: list[Any] = []
        self.free: list[bool] = []
        self.mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch
        from outlines_core import Guide

        rows, vocab = scores.shape
        if self.mask is None:
            self.guides = [Guide(self.index) for _ in range(rows)]
            self.free = [False] * rows
            self.mask = torch.zeros((rows, (vocab + 31) // 32), dtype=torch.int32)
        else:
            for i, guide in enumerate(self.guides):
                token = int(input_ids[i, -1])
                if guide.accepts_tokens([token]):
                    guide.advance(token_id=token, return_tokens=False)
                elif not guide.is_finished():
                    # Only padding after a row stopped at its own token cap gets here; that
                    # row's output is already final, so stop constraining it.
                    self.free[i] = True
        mask = self.mask
        mask.zero_()
        for i, guide in enumerate(self.guides):
            if self.free[i]:
                mask[i].fill_(-1)
            else:
                guide.write_mask_into(mask[i].data_ptr(), mask.shape[1], mask.element_size())
        shifts = torch.arange(32, dtype=torch.int32)
        allowed = ((mask.unsqueeze(-1) >> shifts) & 1).bool().view(rows, -1)[:, :vocab]
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def warn_if_unbounded(schema: type[BaseModel], count_tokens: Callable[[str], int]) -> None:
    """Warn when a string or list of `schema` has no `max_length` (§8.4): output may not close."""
    from longweave.structured import schema_fits

    if not schema_fits(schema, 1 << 40, count_tokens):
        warnings.warn(
            f"schema {schema.__name__} has a string or list without max_length: constrained "
            "output from a small model may run until max_tokens cuts the JSON",
            stacklevel=2,
        )
