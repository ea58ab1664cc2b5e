"""MemWalker's prompt wording and reply shapes, kept apart from the algorithm (STRATEGIES.md §4.3).

The slots follow §4.3 in longweave's own words. Child numbers are 1-based in prompts and in the
reply schemas; the strategy converts them to list positions exactly once, after validation.
Changing any wording here must bump `PROMPT_VERSION`: trees built with the old summary prompts
are then rebuilt instead of reused (§8.6).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from longweave.llm import Message, quoted, system, user

__all__ = [
    "PROMPT_VERSION",
    "fallback_messages",
    "internal_summary_messages",
    "leaf_action_schema",
    "leaf_messages",
    "leaf_summary_messages",
    "triage_messages",
    "triage_schema",
]

PROMPT_VERSION = "mw3"

SUMMARY_SYSTEM = "You write short, faithful summaries of parts of a long text."
READER_SYSTEM = (
    "You look for the answer to a question in a long text that you cannot see all at once. "
    "The text has been summarized as a tree: each summary covers a consecutive part of the text, "
    "and you move through the tree one step at a time."
)
_KEEP = "Keep names, numbers, dates and events exactly as written."


def leaf_summary_messages(segment: str, words: int) -> list[Message]:
    """Summarize one raw segment of the document."""
    return [
        system(SUMMARY_SYSTEM),
        user(
            f"{quoted(segment)}\n\n"
            f"Summarize this part of a longer text in at most {words} words. {_KEEP} "
            "Write only the summary.\n\nSummary:"
        ),
    ]


def internal_summary_messages(summaries: Sequence[str], words: int) -> list[Message]:
    """Merge the summaries of consecutive parts into one summary of the whole span."""
    listed = "\n\n".join(f"Part {n}:\n{quoted(s)}" for n, s in enumerate(summaries, 1))
    return [
        system(SUMMARY_SYSTEM),
        user(
            "These summaries cover consecutive parts of a longer text, in order:\n\n"
            f"{listed}\n\n"
            f"Merge them into one summary of the whole span in at most {words} words. {_KEEP} "
            "Write only the summary.\n\nSummary:"
        ),
    ]


def _memory_block(memory: str) -> str:
    if not memory:
        return ""
    return f"What you have read on the way here (oldest first):\n{quoted(memory)}\n\n"


def triage_messages(question: str, memory: str, summaries: Sequence[str]) -> list[Message]:
    """Choose the child whose part most likely holds the answer, or go back."""
    listed = "\n".join(f"[{n}] {s}" for n, s in enumerate(summaries, 1))
    return [
        system(READER_SYSTEM),
        user(
            f"Question: {question}\n\n{_memory_block(memory)}"
            f"Summaries of the parts below this point, in text order:\n{listed}\n\n"
            "Think briefly about which part most likely holds the answer. Then either choose "
            'it (action "goto" with its number as "child"), or, if none of these parts can help, '
            'go back to look elsewhere (action "back"; "child" is then ignored). Reply like '
            '{"reasoning": "...", "action": "goto", "child": <number>}.'
        ),
    ]


def leaf_messages(question: str, memory: str, segment: str) -> list[Message]:
    """Answer from the raw segment, or go back when it does not hold the answer."""
    return [
        system(READER_SYSTEM),
        user(
            f"Question: {question}\n\n{_memory_block(memory)}"
            f"You reached this passage of the text:\n{quoted(segment)}\n\n"
            "Think briefly about whether the passage answers the question. If it does, give the "
            'answer (action "answer", with a short "answer"; for a multiple-choice question, '
            'the option). If it does not, go back to look elsewhere (action "back"; "answer" is '
            'then ignored). Reply like {"reasoning": "...", "action": "answer", "answer": "..."}.'
        ),
    ]


def fallback_messages(question: str, memory: str, segment: str | None) -> list[Message]:
    """The last call when the walk ends without an answer: the best answer from what was read."""
    passage = (
        f"The last passage you read:\n{quoted(segment)}\n\n" if segment else ""
    )
    return [
        system(READER_SYSTEM),
        user(
            f"Question: {question}\n\n{_memory_block(memory)}{passage}"
            "The search is over and no passage clearly answered the question. Give your best "
            "short answer from what you have read. Write only the answer.\n\nAnswer:"
        ),
    ]


# -- reply shapes (§4.3): bounded so constrained decoding always closes (§8.4) -------------------


class _Decision(BaseModel):
    """Shared parsing rule: the detail field is required by the schema but ignored on "back"."""

    @model_validator(mode="before")
    @classmethod
    def _ignore_detail_on_back(cls, data: Any) -> Any:
        # The schema makes `child`/`answer` required, so a constrained decoder always writes
        # one (left optional or nullable, SmolLM2-135M wrote "goto" with a null child). A model
        # that leaves it out when going back is still understood.
        if isinstance(data, dict) and data.get("action") == "back":
            return {**data, **cls._back_detail()}
        return data

    @classmethod
    def _back_detail(cls) -> dict[str, Any]:
        return {}


class _TriageBase(_Decision):
    @classmethod
    def _back_detail(cls) -> dict[str, Any]:
        return {"child": 1}


class _LeafBase(_Decision):
    @classmethod
    def _back_detail(cls) -> dict[str, Any]:
        return {"answer": ""}


@functools.lru_cache(maxsize=64)
def triage_schema(children: int, reasoning_chars: int) -> type[BaseModel]:
    """TriageAction for a node showing `children` summaries: `child` is bounded to 1..children."""
    return create_model(
        "TriageAction",
        __base__=_TriageBase,
        reasoning=(str, Field(max_length=reasoning_chars)),
        action=(Literal["goto", "back"], ...),
        child=(int, Field(ge=1, le=children)),
    )


@functools.lru_cache(maxsize=16)
def leaf_action_schema(reasoning_chars: int, answer_chars: int) -> type[BaseModel]:
    """LeafAction: answer from the passage, or go back."""
    return create_model(
        "LeafAction",
        __base__=_LeafBase,
        reasoning=(str, Field(max_length=reasoning_chars)),
        action=(Literal["answer", "back"], ...),
        answer=(str, Field(max_length=answer_chars)),
    )
