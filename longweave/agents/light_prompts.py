"""LIGHT's prompts and output schemas (STRATEGIES.md §6.3), in our own words."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from longweave.llm import Message, quoted, system, user

PROMPT_VERSION = 3
"""Bumped when a build prompt or schema changes: cached memories then rebuild."""

SECTIONS = (
    "entities_and_relationships", "decisions_and_preferences", "processes_and_workflows",
    "user_preferences", "user_instructions", "dates", "critical_context", "action_items",
    "developments",
)
"""The nine fixed sections of a compressed scratchpad (reference code)."""


class Relevance(BaseModel):
    """The filter's verdict on one scratchpad piece."""

    model_config = ConfigDict(extra="forbid")
    needed: Literal["yes", "no"]


class _KV(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=60)
    value: str = Field(max_length=200)


@functools.lru_cache(maxsize=16)
def kv_schema(items: int, summary_chars: int = 400) -> type[BaseModel]:
    """KVExtraction: key/value pairs, then a one-line summary."""
    return create_model(
        "KVExtraction", __config__=ConfigDict(extra="forbid"),
        items=(list[_KV], Field(max_length=items)),
        summary=(str, Field(max_length=summary_chars)),
    )


@functools.lru_cache(maxsize=16)
def facts_schema(items: int, chars: int = 200) -> type[BaseModel]:
    """Facts: the salient facts of the latest exchange."""
    return create_model(
        "Facts", __config__=ConfigDict(extra="forbid"),
        facts=(list[Annotated[str, StringConstraints(max_length=chars)]], Field(max_length=items)),
    )


@functools.lru_cache(maxsize=16)
def compressed_schema(items: int, chars: int = 200) -> type[BaseModel]:
    """Compressed: nine sections of bullets, each bullet ending in its [u<i>] tags."""
    bullet = list[Annotated[str, StringConstraints(max_length=chars)]]
    fields = {s: (bullet, Field(default_factory=list, max_length=items)) for s in SECTIONS}
    return create_model("Compressed", __config__=ConfigDict(extra="forbid"), **fields)


def _history(history: str) -> str:
    return history if history.strip() else "(nothing before this)"


def kv_messages(history: str, unit: str) -> list[Message]:
    return [
        system("You index a long conversation or document so that details can be found later."),
        user(
            f"Earlier context:\n{quoted(_history(history))}\n\n"
            f"New passage:\n{quoted(unit)}\n\n"
            "Record every concrete detail of the new passage (names, numbers, dates, places, "
            "decisions, preferences) as short key/value pairs, using the earlier context only "
            "to resolve who or what is meant. Then write a one-line summary of the passage. "
            "Nothing else."
        ),
    ]


def facts_messages(history: str, unit: str) -> list[Message]:
    return [
        system("You are an analyst keeping notes on what matters in a long exchange."),
        user(
            f"Recent history:\n{quoted(_history(history))}\n\n"
            f"Latest exchange:\n{quoted(unit)}\n\n"
            "List the facts, instructions, constraints, deadlines and goals stated or implied "
            "in the latest exchange, each as one short self-contained sentence naming who or "
            "what it is about. Think it through silently; output only the list.\n"
            'Example: for "I moved my launch to May 3; keep replies brief" the facts are '
            '["The user moved the launch to May 3.", "The user wants brief replies."]'
        ),
    ]


def compress_messages(pad: str, target_tokens: int) -> list[Message]:
    return [
        system("You condense notes without losing facts."),
        user(
            f"Notes:\n{quoted(pad)}\n\n"
            f"Rewrite these notes in at most {target_tokens} tokens. Merge duplicates, group "
            "related facts, keep the most important ones, and sort them into the sections "
            "given. End every bullet with the [u<number>] tags of the notes it came from."
        ),
    ]


def filter_messages(question: str, piece: str) -> list[Message]:
    return [
        system("You decide whether notes help answer a question."),
        user(
            f"Question: {question}\n\nNotes:\n{quoted(piece)}\n\n"
            'Are these notes needed to answer the question? Answer "yes" or "no".'
        ),
    ]


def reader_messages(
    episodic: list[str], working: list[str], notes: list[str], question: str
) -> list[Message]:
    parts = []
    if episodic:
        parts.append("Retrieved passages:\n" + "\n\n".join(episodic))
    if working:
        parts.append("Most recent passages, in order:\n" + "\n\n".join(working))
    if notes:
        parts.append("Notes:\n" + "\n".join(notes))
    context = "\n\n".join(parts) if parts else "(no context)"
    return [
        system("Answer only from the context given. Do not use outside knowledge."),
        user(f"Context:\n{quoted(context)}\n\nQuestion: {question}\n"
             "Answer directly and concisely."),
    ]


def unit_block(label: str, text: str) -> str:
    """How a unit appears in the reader's context."""
    return f"[{label}] {text}"
