"""What every strategy returns: the answer text, citations into the source, the steps and usage."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_PUNCTUATION = re.compile(r"[^\w\s]+")


def unpunctuated(text: str, pattern: re.Pattern[str] = _PUNCTUATION) -> str:
    """`text` with each run of `pattern` (by default, anything but word characters and spaces)
    turned into a space, except the combining marks in it: a Devanagari vowel sign or virama, a
    Thai vowel mark, which belong to their word ("हिन्दी" stays one word, not "ह न द").

    >>> unpunctuated("Mara's (lamp)."), unpunctuated("हिन्दी!")
    ('Mara s  lamp  ', 'हिन्दी ')
    """

    def spaced(match: re.Match[str]) -> str:
        run = match.group()
        return "".join(c if unicodedata.category(c)[0] == "M" else " " for c in run) or " "

    return pattern.sub(spaced, text)


def vote_key(answer: str) -> str:
    """The form answers are compared in when strategies vote or cluster them (SQuAD-style):
    lower case, no punctuation (combining marks kept), no articles, single spaces.

    >>> vote_key("The Eiffel Tower.")
    'eiffel tower'
    """
    text = unpunctuated(answer.lower())
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 chunk`, `3 chunks`, `1,204 calls` (`many` for an irregular plural)."""
    return f"{count:,} {noun if count == 1 else many or noun + 's'}"


class Usage(BaseModel):
    """Model usage summed over calls; `cache_hits` counts calls answered by the completion cache."""

    model_config = ConfigDict(extra="forbid")

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the provider served from its prefix (key/value) cache."""
    cache_hits: int = 0
    """Calls answered from longweave's on-disk completion cache without running the model."""
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_hits=self.cache_hits + other.cache_hits,
            seconds=self.seconds + other.seconds,
        )

    def line(self) -> str:
        """A one-line human summary, as the CLI prints it."""
        text = (
            f"{plural(self.calls, 'call')} · {self.prompt_tokens:,} prompt + "
            f"{self.completion_tokens:,} completion tokens"
        )
        if self.cached_tokens:
            text += f" · {self.cached_tokens:,} prefix-cached"
        if self.cache_hits:
            text += f" · {self.cache_hits} from cache"
        return text + f" · {self.seconds:.1f}s"


class Citation(BaseModel):
    """A span of the source that supports the answer: `text == document.text[start:end]`."""

    model_config = ConfigDict(extra="forbid")

    doc_id: str
    start: int
    end: int
    text: str
    chunk_index: int | None = None
    kind: Literal["chunk", "sentence", "quote"] = "chunk"
    source: str | None = None
    """The file the document was read from, when there is one."""


class Step(BaseModel):
    """One step of a strategy's trace: who acted, on what, and what came out."""

    model_config = ConfigDict(extra="forbid")

    role: str
    index: int | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    output: str = ""


class Answer(BaseModel):
    """The result of asking a question of a document through a strategy."""

    model_config = ConfigDict(extra="forbid")

    text: str
    strategy: str
    model: str
    citations: list[Citation] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    flags: list[str] = Field(default_factory=list)
    """Conditions worth knowing: `uncited`, `capped`, `blank_cu` and the like."""
