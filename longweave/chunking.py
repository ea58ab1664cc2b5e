"""Split a document into chunks of at most `max_tokens` tokens, cut at the best nearby boundary.

The text is tokenized once; cuts fall on token starts, preferring a blank line, then a sentence
end, then a line break, then a space, and only then any token boundary (CJK without punctuation,
one giant word). Chunks tile the text exactly: `text == source[start:end]`, each chunk starts
where the previous one ended (or earlier, with overlap), and `n_tokens` is the exact count of
`chunk.text` by the tokenizer. Whitespace at a cut sits where the tokenizer put it: newlines
usually close the previous chunk, while a space opens the next one (cl100k joins a space to the
word after it), so no token is split at a cut.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from longweave.errors import ConfigError
from longweave.tokenizers import Tokenizer, default_tokenizer

__all__ = ["Chunk", "Chunker"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document: `text == source[start:end]`, holding exactly `n_tokens` tokens."""

    index: int
    text: str
    start: int
    end: int
    n_tokens: int


_CLOSERS = frozenset("\"'”’»)]}」』）")
_CJK_STOPS = frozenset("。！？")


def _after_blank_line(text: str, start: int, end: int) -> int | None:
    return end


def _before_space(text: str, start: int, end: int) -> int | None:
    return start


def _after_sentence(text: str, start: int, end: int) -> int | None:
    """After the stop and any closing quotes; Latin stops only count before whitespace."""
    n = len(text)
    while end < n and text[end] in _CLOSERS:
        end += 1
    if text[start] in _CJK_STOPS or (end < n and text[end].isspace()):
        return end
    return None


@dataclass(frozen=True)
class _Level:
    """A kind of boundary: a regex that reads the same reversed (so a search over the reversed
    window finds the last one first) and where the cut falls relative to a match."""

    name: str
    pattern: re.Pattern[str]
    anchor: Callable[[str, int, int], int | None]


_LEVELS = (
    _Level("paragraph", re.compile(r"\n(?:[^\S\n]*\n)+"), _after_blank_line),
    _Level("sentence", re.compile(r"[.!?…。！？]"), _after_sentence),
    _Level("line", re.compile(r"\n"), _after_blank_line),
    _Level("word", re.compile(r"\s"), _before_space),
)
_HARD = re.compile(r"\S ")  # a space after a non-space: every regex pre-tokenizer splits there


class _Text:
    """One document and its token starts, with the lookups the cutting loop needs."""

    def __init__(self, text: str, starts: np.ndarray) -> None:
        self.text = text
        self.starts = starts
        self.n_chars = len(text)
        self.n_tokens = len(starts)

    def char(self, token: int) -> int:
        """Character offset where token `token` starts (the text's end past the last token)."""
        return int(self.starts[token]) if token < self.n_tokens else self.n_chars

    def token(self, char: int) -> int:
        """Index of the first token starting at or after `char`."""
        return int(self.starts.searchsorted(char))

    def token_after(self, char: int) -> int:
        """Index of the first token starting after `char`."""
        return int(self.starts.searchsorted(char, side="right"))

    def hard(self, pos: int) -> bool:
        """Whether every regex pre-tokenizer splits at `pos` whatever the surrounding text."""
        if pos <= 0 or pos >= self.n_chars:
            return True
        return self.text[pos] == " " and not self.text[pos - 1].isspace()

    def first_hard(self, lo: int, hi: int) -> int | None:
        m = _HARD.search(self.text, lo, hi)
        return None if m is None else m.start() + 1

    def last_hard(self, lo: int, hi: int) -> int | None:
        pos = self.text.rfind(" ", lo + 1, hi)
        while pos > lo and self.text[pos - 1].isspace():  # rare: a run of spaces
            pos = self.text.rfind(" ", lo + 1, pos)
        return pos if pos > lo else None


class Chunker:
    """Token-budgeted, boundary-aware, offset-exact document splitter.

    >>> chunks = Chunker(8).split("One short sentence. Another one here.\\n\\nA new paragraph.")
    >>> [c.text for c in chunks]
    ['One short sentence. Another one here.\\n\\n', 'A new paragraph.']
    """

    def __init__(
        self,
        max_tokens: int,
        overlap: int = 0,
        tokenizer: Tokenizer | None = None,
        *,
        min_fill: float = 0.5,
    ) -> None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if not isinstance(overlap, int) or not 0 <= overlap < max_tokens:
            raise ConfigError(
                f"overlap must be an integer with 0 <= overlap < max_tokens ({max_tokens}), "
                f"got {overlap!r}",
                hint="a chunk cannot repeat all of the one before: lower the overlap or raise "
                     "the chunk size",
            )
        if not 0.0 <= min_fill <= 1.0:
            raise ConfigError(f"min_fill must lie in [0, 1], got {min_fill!r}")
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.min_fill = min_fill
        """A boundary kind is used only if it leaves the chunk at least this full (else the next
        kind is tried), so a blank line early in the window does not make a tiny chunk."""
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self._space_splits = bool(getattr(self.tokenizer, "space_splits", False))

    def __repr__(self) -> str:
        return (
            f"Chunker(max_tokens={self.max_tokens}, overlap={self.overlap}, "
            f"tokenizer={self.tokenizer!r})"
        )

    def split(self, text: str) -> list[Chunk]:
        """Chunks of `text` in document order; [] for an empty text."""
        if not text:
            return []
        doc = _Text(text, np.asarray(self.tokenizer.token_starts(text), dtype=np.int64))
        chunks: list[Chunk] = []
        start = 0
        while True:
            # A chunk must end past the previous one, even when it starts earlier (overlap).
            floor = chunks[-1].end if chunks else 0
            cut = self._cut(doc, start, floor)
            if cut is None and start < floor:
                start = floor  # the overlap left no room to move on: drop it this once
                cut = self._cut(doc, start, floor)
            if cut is None:
                cut = self._cut_by_characters(doc, start, floor)
            if cut is None:
                raise ConfigError(
                    f"the text at character {start} cannot fit in {self.max_tokens} tokens",
                    hint="raise max_tokens: a single character there needs more tokens",
                )
            end, end_token, n_tokens = cut
            chunks.append(Chunk(len(chunks), text[start:end], start, end, n_tokens))
            if end >= doc.n_chars:
                return chunks
            start = self._overlap_start(doc, start, end, end_token)

    def _cut(self, doc: _Text, start: int, floor: int) -> tuple[int, int, int] | None:
        """The chunk end (char, token, exact count) for a chunk at `start` ending after `floor`;
        None if none fits."""
        start_token = doc.token(start)
        lowest = max(doc.token_after(max(start, floor)), start_token + 1)
        limit = start_token + self.max_tokens
        while True:
            if limit >= doc.n_tokens:
                end_token, end = doc.n_tokens, doc.n_chars
            elif limit < lowest:
                return None
            else:
                end_token = self._boundary(doc, start_token, lowest, limit)
                end = doc.char(end_token)
            n_tokens = self._count(doc, start, end, start_token, end_token)
            if n_tokens <= self.max_tokens:
                return end, end_token, n_tokens
            # Re-tokenizing the chunk gave more tokens than the whole-text pass (a cut inside a
            # word or character): look for a cut earlier by the excess.
            limit = min(limit, end_token) - (n_tokens - self.max_tokens)

    def _cut_by_characters(self, doc: _Text, start: int, floor: int) -> tuple[int, int, int] | None:
        """Last resort when no token start fits (offsets that lump characters together, as
        some HF tokenizers report for bytes missing from their vocabulary): the longest run of
        characters that counts within budget, by galloping then bisection."""
        text, count, budget = doc.text, self.tokenizer.count, self.max_tokens
        good = max(start, floor) + 1
        if count(text[start:good]) > budget:
            return None
        bad, step = doc.n_chars + 1, 1
        while good < doc.n_chars:
            probe = min(good + step, doc.n_chars)
            if count(text[start:probe]) > budget:
                bad = probe
                break
            good, step = probe, step * 2
        while bad - good > 1:
            mid = (good + bad) // 2
            if count(text[start:mid]) <= budget:
                good = mid
            else:
                bad = mid
        return good, doc.token(good), count(text[start:good])

    def _boundary(self, doc: _Text, start_token: int, lowest: int, limit: int) -> int:
        """Token index of the best cut in [lowest, limit]: best boundary kind, latest position.

        `lowest` is the first token starting past the previous cut, so any index in the range
        starts on a new character."""
        fill = max(lowest, min(limit, start_token + math.ceil(self.min_fill * self.max_tokens)))
        lo = doc.char(fill - 1) if fill > 0 else 0
        hi = min(doc.char(limit) + 1, doc.n_chars)  # one more character for lookahead
        window = doc.text[lo:hi][::-1]
        for level in _LEVELS:
            pos = 0
            while (m := level.pattern.search(window, pos)) is not None:
                pos = m.start() + 1
                anchor = level.anchor(doc.text, hi - m.end(), hi - m.start())
                if anchor is None:
                    continue
                token = doc.token(anchor)
                if token < fill:
                    break  # earlier matches only cut earlier
                if token <= limit:
                    return token
        # No boundary: cut between tokens (the first of tokens sharing a character).
        return doc.token(doc.char(limit))

    def _overlap_start(self, doc: _Text, start: int, end: int, end_token: int) -> int:
        """Where the next chunk starts: `end`, or at most `overlap` tokens earlier at a boundary."""
        if self.overlap == 0:
            return end
        new_start = self._overlap_boundary(doc, start, end, end_token)
        # The whole-text pass bounds the overlap; an exact count catches effects at its edges.
        while new_start < end:
            token = doc.token(new_start)
            excess = self._count(doc, new_start, end, token, end_token) - self.overlap
            if excess <= 0:
                return new_start
            new_start = doc.char(max(token + excess, doc.token_after(new_start)))
        return end

    def _overlap_boundary(self, doc: _Text, start: int, end: int, end_token: int) -> int:
        """The earliest best boundary between `overlap` and `overlap / 2` tokens before `end`."""
        first = max(end_token - self.overlap, doc.token_after(start))
        if first >= end_token:
            return end
        latest = max(first, end_token - self.overlap // 2)
        lo, hi = (doc.char(first - 1) if first > 0 else 0), doc.char(latest)
        for level in _LEVELS:
            pos = lo
            while (m := level.pattern.search(doc.text, pos, min(hi + 1, end))) is not None:
                pos = m.start() + 1
                anchor = level.anchor(doc.text, m.start(), m.end())
                if anchor is None:
                    continue
                token = doc.token(anchor)
                if token > latest:
                    break
                if token >= first and start < doc.char(token) < end:
                    return doc.char(token)
        candidate = doc.char(first)
        return candidate if start < candidate < end else end

    def _count(self, doc: _Text, start: int, end: int, start_token: int, end_token: int) -> int:
        """Exact token count of text[start:end] without re-tokenizing all of it.

        For tokenizers that split at every "non-space, space" position (`space_splits`), the
        count is additive there: re-count the edges up to the first and from the last such
        position and take the middle from the whole-text pass. Others re-count the chunk.
        """
        text, count = doc.text, self.tokenizer.count
        if not self._space_splits:
            return count(text[start:end])
        left = start if doc.hard(start) else doc.first_hard(start, end)
        if left is None:
            return count(text[start:end])
        right = end if doc.hard(end) else doc.last_hard(start, end)
        if right is None or right < left:
            return count(text[start:end])
        n = (end_token if right == end else doc.token(right)) - (
            start_token if left == start else doc.token(left)
        )
        if left > start:
            n += count(text[start:left])
        if right < end:
            n += count(text[right:end])
        return n
