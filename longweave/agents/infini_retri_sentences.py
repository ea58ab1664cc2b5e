"""InfiniRetri's sentence splitter and window packer (STRATEGIES.md §7.2, reference code).

Sentences tile the document (each keeps its trailing whitespace) and are tokenized one by one,
as the scoring prompt feeds them; windows are runs of whole sentences of at most W_c tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["Sentence", "pack", "split_sentences"]

# A boundary falls after a paragraph break, after Latin stops (and closing quotes) followed by
# whitespace, or after CJK stops.
_BOUNDARY = re.compile(
    r"\n[^\S\n]*\n\s*|[.!?…]+[\"'”’)\]]*\s+|[。！？]+[\"'”’」』）]*\s*"
)
MERGE_CHARS = 10
"""A fragment this short ending in '.' is an initial or abbreviation: it joins the next one."""

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Sentence:
    """One sentence: `text == document[start:end]`, its own token ids, and its window."""

    index: int
    start: int
    end: int
    text: str
    ids: tuple[int, ...]
    window: int = 0


def _spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.end() > start:
            spans.append((start, m.end()))
            start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    merged: list[tuple[int, int]] = []
    carry: int | None = None
    for s, e in spans:
        s = carry if carry is not None else s
        piece = text[s:e]
        stripped = piece.strip()
        # "J. R. R. Tolkien", "Dr. Watson": short '.'-ended fragments on one line re-merge.
        if len(stripped) <= MERGE_CHARS and stripped.endswith(".") and "\n" not in piece:
            carry = s
            continue
        carry = None
        merged.append((s, e))
    if carry is not None:
        merged.append((carry, len(text)))
    return merged


def _fit(text: str, start: int, end: int, encode: Encode, budget: int) -> list[tuple[int, int]]:
    """Cut an oversize span into pieces of at most `budget` tokens, at spaces when possible."""
    pieces: list[tuple[int, int]] = []
    while start < end:
        if len(encode(text[start:end])) <= budget:
            pieces.append((start, end))
            break
        cuts = [m.end() for m in re.finditer(r"\s+", text[start:end]) if m.end() < end - start]
        cuts = [start + c for c in cuts] or list(range(start + 1, end))
        if len(encode(text[start : cuts[0]])) > budget:  # one giant word: cut by characters
            cuts = list(range(start + 1, end))
        lo, hi = 0, len(cuts) - 1  # the last cut whose prefix fits (the first one does)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode(text[start : cuts[mid]])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        pieces.append((start, cuts[lo]))
        start = cuts[lo]
    return pieces


def split_sentences(text: str, encode: Encode, max_tokens: int) -> list[Sentence]:
    """Sentences tiling `text`, each tokenized alone; oversize ones re-split to fit."""
    out: list[Sentence] = []
    for start, end in _spans(text):
        ids = encode(text[start:end])
        pieces = [(start, end)] if len(ids) <= max_tokens else _fit(
            text, start, end, encode, max_tokens
        )
        for s, e in pieces:
            piece_ids = ids if (s, e) == (start, end) else encode(text[s:e])
            out.append(Sentence(len(out), s, e, text[s:e], tuple(piece_ids)))
    return out


def pack(
    sentences: list[Sentence], max_tokens: int, *, min_last: float = 0.5
) -> list[list[int]]:
    """Greedy runs of whole sentences of at most `max_tokens` tokens, no overlap; a short last
    window takes sentences from the one before until it holds `min_last` of the budget.

    This meets `min_last` whenever any tiling of whole sentences can (§7.6 check 3): greedy
    packing leaves the last two windows together over the budget, so every last window that
    fits lies within them, and moving their boundary back one sentence at a time passes through
    each. It cannot when the sentence before a short tail is too long to join it (tail + that
    sentence > `max_tokens`); the last window then stays as full as whole sentences allow. A
    text that fits one window is one window, of any size.

    Each sentence's `window` field is updated in place in `sentences`."""
    windows: list[list[int]] = []
    size = max_tokens + 1
    for s in sentences:
        n = len(s.ids)
        if size + n > max_tokens:
            windows.append([])
            size = 0
        windows[-1].append(s.index)
        size += n
    if len(windows) >= 2:
        prev, last = windows[-2], windows[-1]
        tokens = {i: len(sentences[i].ids) for i in prev + last}
        last_size = sum(tokens[i] for i in last)
        while (
            last_size < min_last * max_tokens
            and len(prev) > 1
            and last_size + tokens[prev[-1]] <= max_tokens
        ):
            moved = prev.pop()
            last.insert(0, moved)
            last_size += tokens[moved]
    for w, members in enumerate(windows):
        for i in members:
            sentences[i] = replace(sentences[i], window=w)
    return windows
