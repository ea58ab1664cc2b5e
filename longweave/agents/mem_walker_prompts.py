"""MemWalker's prompt wording and reply shapes, kept apart from the algorithm (STRATEGIES.md §4.3).

The slots follow §4.3 in longweave's own words. Child numbers are 1-based in prompts and in the
reply schemas; the strategy converts them to list positions exactly once, after validation.
`PROMPT_VERSION` keys the cached tree (§8.6): changing the wording of the two summary prompts
must bump it, so trees built with the old wording are rebuilt instead of reused. The walk's
prompts (triage, leaf, fallback) build nothing that is cached; changing them needs no bump.
A multiple-choice question (`longweave.choices`) fills the leaf and fallback prompts' options
slot, and their schemas then admit only the option letters as `answer`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, create_model, model_validator

from longweave.llm import Message, quoted, system, user

__all__ = [
    "PROMPT_VERSION",
    "fallback_messages",
    "internal_summary_messages",
    "leaf_action_schema",
    "leaf_answer_schema",
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


def _question_block(question: str, options: Sequence[tuple[str, str]]) -> str:
    """The question slot, and the options slot of a multiple-choice question (§4.3)."""
    listed = "".join(f"\n{letter}. {text}" for letter, text in options)
    return f"Question: {question}\n\n" + (f"Options:{listed}\n\n" if options else "")


def _example(options: Sequence[tuple[str, str]], multi: bool) -> str:
    """The value of "answer" in the example reply."""
    return ("<letters>" if multi else "<letter>") if options else "..."


def leaf_messages(question: str, memory: str, segment: str,
                  options: Sequence[tuple[str, str]] = (), multi: bool = False) -> list[Message]:
    """Answer from the raw segment, or go back when it does not hold the answer."""
    what = (
        '"answer" the letters of all the correct options in a row, like "AC"' if multi
        else '"answer" the letter of the correct option' if options
        else 'a short "answer"; for a multiple-choice question, the option'
    )
    return [
        system(READER_SYSTEM),
        user(
            f"{_question_block(question, options)}{_memory_block(memory)}"
            f"You reached this passage of the text:\n{quoted(segment)}\n\n"
            "Think briefly about whether the passage answers the question. If it does, give the "
            f'answer (action "answer", with {what}). If it does not, go back to look elsewhere '
            '(action "back"; "answer" is then ignored). Reply like {"reasoning": "...", '
            f'"action": "answer", "answer": "{_example(options, multi)}"}}.'
        ),
    ]


def fallback_messages(question: str, memory: str, segment: str | None,
                      options: Sequence[tuple[str, str]] = (), multi: bool = False
                      ) -> list[Message]:
    """The last call when the walk ends without an answer: the best answer from what was read."""
    passage = (
        f"The last passage you read:\n{quoted(segment)}\n\n" if segment else ""
    )
    what = (
        'the letters of all the options that answer it, in a row like "AC"' if multi
        else "the letter of the option that best answers it" if options
        else "your best short answer (for a multiple-choice question, the option)"
    )
    return [
        system(READER_SYSTEM),
        user(
            f"{_question_block(question, options)}{_memory_block(memory)}{passage}"
            "The search is over and no passage clearly answered the question. Give "
            f"{what}, from what you have read. "
            f'Reply like {{"answer": "{_example(options, multi)}"}}.'
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
        # Any value the field admits: the first option letter when it is a Literal of them.
        letters = get_args(cls.model_fields["answer"].annotation)
        return {"answer": letters[0] if letters else ""}


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


def _answer_field(answer_chars: int, letters: tuple[str, ...], multi: bool) -> tuple[Any, Any]:
    """`answer`: free text; one of the option letters; or, for a question asking for every
    correct option, letters in a row ("AC"; empty is left to the strategy's check)."""
    if not letters:
        return str, Field(max_length=answer_chars)
    if multi:
        span = f"[{letters[0]}-{letters[-1]}]{{0,{len(letters)}}}"
        return str, Field(max_length=len(letters), pattern=f"^{span}$")
    return Literal[letters], ...


@functools.lru_cache(maxsize=16)
def leaf_action_schema(reasoning_chars: int, answer_chars: int, letters: tuple[str, ...] = (),
                       multi: bool = False) -> type[BaseModel]:
    """LeafAction: answer from the passage, or go back; with `letters`, the answer is one."""
    return create_model(
        "LeafAction",
        __base__=_LeafBase,
        reasoning=(str, Field(max_length=reasoning_chars)),
        action=(Literal["answer", "back"], ...),
        answer=_answer_field(answer_chars, letters, multi),
    )


@functools.lru_cache(maxsize=16)
def leaf_answer_schema(answer_chars: int, letters: tuple[str, ...] = (),
                       multi: bool = False) -> type[BaseModel]:
    """LeafAnswer, the fallback's reply: the best answer; with `letters`, one of them."""
    return create_model("LeafAnswer", answer=_answer_field(answer_chars, letters, multi))
