"""Needle-in-a-haystack cases: one fact hidden at a chosen depth of a haystack of a chosen length.

The protocol of Kamradt's LLMTest_NeedleInAHaystack (the haystack is Paul Graham's essays): the
haystack is cut to the context length, counted in the tokens of the model under test, and the
needle goes in at the sentence boundary at or before the requested depth (upstream backs up from
the depth to the previous period). Differences, all so that the needle is a whole sentence with
an exact character span: the haystack is cut at a sentence boundary instead of mid-sentence,
nothing is reserved for the prompt (upstream keeps a 200-token buffer: pass a smaller `tokens`),
and essays are joined by a paragraph break instead of being glued together.

>>> hay = "One fact. Two facts here. Three is more. Four ends it."
>>> case = make_case(hay, Needle("The key is red.", "What colour is the key?", ("red",)),
...                  tokens=12, depth=50, count_tokens=lambda t: len(t.split()))
>>> case.document
'One fact. The key is red. Two facts here. Three is more.'
>>> case.needle, case.contains_answer("It is red.")
('The key is red.', True)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from longweave.errors import ConfigError, DocumentError

__all__ = ["PG_NEEDLE", "Needle", "NeedleCase", "make_case", "read_haystack"]

CountTokens = Callable[[str], int]

# A sentence ends at . ! ? (and closing quotes or brackets) followed by whitespace and a capital,
# digit or opening quote; or at a paragraph break. The boundary is where the next one starts.
_SENTENCE_END = re.compile(
    r"[.!?…][\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])|[。！？]+\s*|\n[^\S\n]*\n\s*"
)
_CHARS_PER_TOKEN = 8
"""A first guess at the haystack prefix to tokenize, above the ~4 of English text (ours)."""
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset("a an and at in is of on or the to".split())


@dataclass(frozen=True)
class Needle:
    """The sentence to hide, the question that asks for it, and the accepted answers."""

    text: str
    question: str
    answers: tuple[str, ...]


PG_NEEDLE = Needle(
    "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny "
    "day.",
    "What is the best thing to do in San Francisco?",
    ("eat a sandwich and sit in Dolores Park on a sunny day",),
)
"""The single needle of LLMTest_NeedleInAHaystack's defaults (run.py at commit 7b90d28)."""


def _normal(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class NeedleCase:
    """A document with the needle at `[needle_start, needle_end)`, and how to check answers.

    `tokens` counts the whole document; `tokens_before` the text before the needle, and
    `haystack_tokens` the document without the needle (so the reached depth is their ratio)."""

    document: str
    question: str
    answers: tuple[str, ...]
    needle_start: int
    needle_end: int
    tokens: int
    tokens_before: int
    haystack_tokens: int
    depth: float

    @property
    def needle(self) -> str:
        """The needle as it appears in the document."""
        return self.document[self.needle_start : self.needle_end]

    @property
    def needle_span(self) -> tuple[int, int]:
        """The needle's character span in `document`."""
        return self.needle_start, self.needle_end

    @property
    def reached_depth(self) -> float:
        """Where the needle landed, in percent of the haystack's tokens (<= `depth`)."""
        return 100.0 * self.tokens_before / self.haystack_tokens if self.haystack_tokens else 0.0

    def contains_answer(self, text: str) -> bool:
        """Whether `text` contains an accepted answer (case, punctuation and spacing ignored)."""
        said = f" {_normal(text)} "
        return any(f" {_normal(a)} " in said for a in self.answers)

    def answer_recall(self, text: str) -> float:
        """The best share of an accepted answer's content words that `text` mentions."""
        said = set(_WORD.findall(text.lower()))
        best = 0.0
        for answer in self.answers:
            words = [w for w in _WORD.findall(answer.lower()) if w not in _STOPWORDS]
            if words:
                best = max(best, sum(w in said for w in words) / len(words))
        return best

    def retained_by(self, spans: Iterable[tuple[int, int]]) -> bool:
        """Whether the character spans (e.g. an answer's citations) cover the whole needle."""
        reach = self.needle_start
        for start, end in sorted(spans):
            if start > reach:
                break
            reach = max(reach, end)
            if reach >= self.needle_end:
                return True
        return False


def read_haystack(folder: str | Path, pattern: str = "*.txt") -> str:
    """The files of `folder` matching `pattern`, in file-name order, joined by paragraph breaks."""
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise ConfigError(f"no {pattern} files in {folder}", hint="pass the essays folder")
    return "\n\n".join(read_haystack_file(f).strip() for f in files)


def read_haystack_file(path: Path) -> str:
    """One haystack file's text; a `DocumentError` naming it when it is not UTF-8 or unreadable,
    or a pipe or device (refused before it is opened, which would block)."""
    from longweave.documents import stat_input

    try:
        stat_input(path, hint="haystack files are UTF-8 text files: save it to one first")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DocumentError(path, "is not UTF-8 text",
                            hint="haystack files are UTF-8 text: convert the file") from None
    except OSError as exc:
        raise DocumentError(path, f"cannot be read ({exc.strerror or exc})",
                            hint="pass the dataset's file or folder") from None


def _boundaries(text: str) -> list[int]:
    """Offsets where a sentence starts: 0, then after each sentence end (whitespace included)."""
    starts = [0]
    for m in _SENTENCE_END.finditer(text):
        if starts[-1] < m.end() < len(text):
            starts.append(m.end())
    return starts


def _last_fitting(points: Sequence[int], fits: Callable[[int], bool]) -> int:
    """Index of the last point for which `fits` holds, given it is monotone (true then false)."""
    lo, hi = 0, len(points) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(points[mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _compose(hay: str, at: int, needle: str) -> tuple[str, int]:
    """`hay` with `needle` inserted at `at`, a space added where no whitespace separates them."""
    head, tail = hay[:at], hay[at:]
    before = "" if not head or head[-1].isspace() else " "
    after = "" if not tail or tail[0].isspace() else " "
    start = len(head) + len(before)
    return head + before + needle + after + tail, start


def _place(
    hay: str, starts: Sequence[int], needle: str, target: float, count_tokens: CountTokens
) -> tuple[str, int]:
    """`hay` with the needle at its last sentence start whose prefix has <= `target` tokens."""
    points = [s for s in starts if s < len(hay)] + [len(hay)]
    at = points[_last_fitting(points, lambda p: count_tokens(hay[:p]) <= target)]
    return _compose(hay, at, needle)


def make_case(
    haystack: str,
    needle: Needle = PG_NEEDLE,
    *,
    tokens: int,
    depth: float,
    count_tokens: CountTokens,
) -> NeedleCase:
    """A document of at most `tokens` tokens (short by less than one haystack sentence) with the
    needle at the last sentence boundary at or before `depth` percent of the haystack's tokens.

    `count_tokens` is the model's counter (`llm.count_tokens`, or a tokenizer's `count`).
    Deterministic: the same arguments give the same case. Raises ConfigError when the haystack
    is too short for `tokens`, or for a depth outside 0-100 or an empty needle."""
    text = needle.text.strip()
    if not text:
        raise ConfigError("the needle is empty", hint="give the needle a sentence")
    if not 0 <= depth <= 100:
        raise ConfigError(f"depth {depth} is outside 0-100", hint="give a percentage")
    room = tokens - count_tokens(text)
    full = haystack.rstrip()
    # Only a prefix somewhat longer than the case matters: find one that holds enough tokens,
    # so a long haystack is not tokenized whole for every case.
    size = min(len(full), _CHARS_PER_TOKEN * max(tokens, 1))
    while size < len(full) and count_tokens(full[:size]) <= room:
        size = min(len(full), 2 * size)
    if room <= 0 or size == len(full) and count_tokens(full) < room:
        raise ConfigError(
            f"the haystack has {count_tokens(full):,} tokens, too short for a {tokens:,}-token "
            "case with this needle",
            hint="use a longer haystack or a shorter length",
        )
    whole, full = size == len(full), full[:size]
    # The haystack is cut at the last sentence end whose prefix leaves room for the needle (the
    # end of a partial prefix is mid-sentence, so it is no candidate).
    starts = _boundaries(full)
    ends = starts[1:] + ([len(full)] if whole else [])
    i = _last_fitting(ends, lambda end: count_tokens(full[:end].rstrip()) <= room) if ends else 0
    if not ends or count_tokens(full[: ends[i]].rstrip()) > room:
        raise ConfigError(
            f"the haystack's first sentence is longer than the {tokens:,}-token case",
            hint="use a longer length or a haystack with shorter sentences",
        )
    while True:  # the separators and joins add a token or two: back off a sentence if over
        hay = full[: ends[i]].rstrip()
        hay_tokens = count_tokens(hay)
        document, start = _place(hay, starts, text, depth / 100 * hay_tokens, count_tokens)
        total = count_tokens(document)
        if total <= tokens or i == 0:
            break
        i -= 1
    if total > tokens:
        raise ConfigError(
            f"no cut of the haystack fits {tokens:,} tokens with the needle",
            hint="use a longer length",
        )
    return NeedleCase(
        document=document,
        question=needle.question,
        answers=needle.answers,
        needle_start=start,
        needle_end=start + len(text),
        tokens=total,
        tokens_before=count_tokens(document[:start].rstrip()),
        haystack_tokens=hay_tokens,
        depth=float(depth),
    )
