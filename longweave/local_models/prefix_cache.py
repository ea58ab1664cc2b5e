"""Reuse the key/value cache of a prompt prefix the model has already read (prefix caching).

Strategies that keep a byte-identical prompt prefix across calls (PRISM's task, question and
schema; STRATEGIES.md §5.2) pay for that prefix once: after each prefill the prompt's token ids
and its key/value cache are kept in a small LRU, and a later prompt that starts with the same
tokens copies the cache of that common prefix and prefills only the rest. The paper's HF backend
keeps a single entry (the previous prompt); a second entry survives one interleaved call (a
re-ask, another role).

Only single-request batches use it: a padded batch shifts every row by its own padding, so its
cache does not line up with any other prompt. Models whose cache is not a plain full-attention
`DynamicCache` (sliding-window or linear-attention layers keep only a tail or a state, which
cannot be cut back to an arbitrary prefix) are detected on the first call and never cached.

Memory: one entry holds 2 x layers x kv_heads x head_dim values per token (SmolLM2-135M in
float32: 46 KB per token, 94 MB for a 2,048-token prompt).
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["PrefixCache", "PrefixCacheStats", "common_prefix", "empty_cache", "generate_kwargs"]

DEFAULT_SIZE = 2
"""Entries kept: the previous prompt plus one interleaved call (paper: 1; ours: 2)."""
DEFAULT_MIN_TOKENS = 64
"""Shorter shared prefixes are recomputed: a chat template's default system prompt alone is
~30 tokens and saves almost nothing, while each reuse copies the cache (ours)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class PrefixCacheStats:
    """Counts since construction: lookups that reused a prefix, those that did not, tokens saved."""

    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0


class PrefixCache:
    """An LRU of (prompt token ids, key/value cache) with longest-common-prefix lookup.

    >>> cache = PrefixCache(size=2, min_tokens=64)
    >>> cache.take([1, 2, 3])
    (None, 0)
    """

    def __init__(self, size: int = DEFAULT_SIZE, min_tokens: int = DEFAULT_MIN_TOKENS) -> None:
        self.size = max(0, size)
        self.min_tokens = max(1, min_tokens)
        self.supported: bool | None = None
        """None until the first `put` shows whether this model's cache can be cut to a prefix."""
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.supported is not False

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, prompt_ids: Sequence[int]) -> tuple[Any | None, int]:
        """(a private cache of the longest stored prefix of `prompt_ids`, its length) or (None, 0).

        At least the last prompt token is left uncached: generation needs the logits of a
        forward pass over it. The returned cache is a copy, so generation may extend it freely.
        """
        if not self.enabled:
            return None, 0
        with self._lock:
            best, reuse = None, 0
            for ids in self._entries:
                n = min(common_prefix(ids, prompt_ids), len(prompt_ids) - 1)
                if n > reuse:
                    best, reuse = ids, n
            if best is None or reuse < self.min_tokens:
                self.stats.misses += 1
                return None, 0
            self._entries.move_to_end(best)
            stored = self._entries[best]
            self.stats.hits += 1
            self.stats.reused_tokens += reuse
        return copy_prefix(stored, len(best), reuse), reuse

    def put(self, prompt_ids: Sequence[int], cache: Any) -> None:
        """Keep `cache` for `prompt_ids`, cut to the prompt (generation appended its reply).

        `cache` is kept as is, not copied: the caller hands it over and must not use it again.
        """
        if self.supported is None:
            self.supported = reusable(cache)
        if not self.enabled or len(prompt_ids) < self.min_tokens:
            return
        extra = cache.get_seq_length() - len(prompt_ids)
        if extra < 0:
            return  # not the cache of this prompt: storing it would hand out wrong keys
        if extra:
            cache.crop(-extra)
        key = tuple(prompt_ids)
        with self._lock:
            # An entry whose ids are a prefix of the new prompt can serve nothing the new one
            # cannot: drop it rather than spend memory on it.
            for ids in [i for i in self._entries if common_prefix(i, key) == len(i)]:
                del self._entries[ids]
            self._entries[key] = cache
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (e.g. when the weights are unloaded)."""
        with self._lock:
            self._entries.clear()


def copy_prefix(cache: Any, length: int, keep: int) -> Any:
    """A deep copy of `cache` (holding `length` tokens) cut to its first `keep` tokens."""
    out = copy.deepcopy(cache)
    if keep < length:
        out.crop(keep - length)  # negative: remove that many tokens from the end
    return out


def reusable(cache: Any) -> bool:
    """Whether `cache` keeps every token of every layer, so cutting it to a prefix is exact."""
    if not callable(getattr(cache, "crop", None)):
        return False
    if any(getattr(cache, "is_sliding", None) or ()):
        return False
    if any(getattr(cache, "is_linear", None) or ()):
        return False
    return bool(getattr(cache, "is_croppable", True))


def empty_cache(model: PreTrainedModel) -> Any:
    """A fresh `DynamicCache` laid out for `model` (older transformers take no config)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def generate_kwargs(model: PreTrainedModel, cache: Any) -> dict[str, Any]:
    """`generate`'s keyword for a starting cache (none for None): `cache` in recent transformers
    (where `past_key_values` is deprecated), `past_key_values` before.

    Either way `input_ids` stay the whole prompt; generate prefills only the tokens past the
    cache's length and derives positions from the full attention mask.
    """
    if cache is None:
        return {}
    parameters = inspect.signature(model.prepare_inputs_for_generation).parameters
    return {"cache" if "cache" in parameters else "past_key_values": cache}
