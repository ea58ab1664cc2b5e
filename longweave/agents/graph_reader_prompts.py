"""GraphReader's prompt wording and reply shapes, apart from the algorithm (STRATEGIES.md §3.3).

Written in longweave's own words from the slots of §3.3. Changing the extraction prompt or its
schema must bump `PROMPT_VERSION`: graphs built with the old wording are then rebuilt (§8.6).
It keys only the cached graph (the build); the query-time prompts (plan, selection, steps,
answer) are never cached as artifacts, so changing them needs no bump.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, create_model, model_validator

from longweave.graphs.calls import SIGNATURES
from longweave.llm import Message, quoted, system, user

__all__ = [
    "PROMPT_VERSION",
    "SELECT_AT_LEAST",
    "answer_messages",
    "answer_schema",
    "call_reask_message",
    "call_step_messages",
    "extraction_messages",
    "extraction_schema",
    "fallback_messages",
    "plan_messages",
    "selection_messages",
    "selection_schema",
    "step_messages",
    "step_schema",
]

PROMPT_VERSION = "gr3"

READER = (
    "You answer questions about a long text that you cannot see at once. The text has been "
    "turned into a graph: each node is a key element (a person, place, time, event, number...) "
    "holding short atomic facts, and each fact points to the chunk of text it came from."
)


def extraction_messages(chunk: str, max_facts: int) -> list[Message]:
    """Atomic facts and their key elements from one chunk."""
    return [
        system("You turn a passage into small, self-contained facts."),
        user(
            f"Passage:\n{quoted(chunk)}\n\n"
            f"List at most {max_facts} atomic facts from this passage: each one short sentence "
            "that stands on its own, keeping any cause or order of events it implies. Replace "
            "pronouns by the names they stand for and keep the passage's language. For each "
            "fact give its key elements (people, places, times, events, numbers, actions, "
            "states), each written exactly as it appears in the fact. Be exhaustive."
        ),
    ]


def plan_messages(question: str) -> list[Message]:
    """The rational plan: what must be found, step by step, before reading."""
    return [
        system(READER),
        user(
            "Before reading, write a short plan of the information needed to answer the "
            "question, step by step.\n\nExample question: In which city was the author of the "
            "harbour report born?\nExample plan: 1. Find who wrote the harbour report. 2. Find "
            "where that person was born.\n\n"
            f"Question: {question}\nPlan:"
        ),
    ]


SELECT_AT_LEAST = 10
"""Starting nodes the selection asks for at least (reference code, citing the paper's prompt);
fewer when fewer candidates are listed or `max_nodes` is lower. The reply schema still accepts
from one node up, so a model that finds fewer useful ones is not re-asked."""


def selection_messages(question: str, plan: str, candidates: Sequence[str],
                       max_nodes: int) -> list[Message]:
    """Pick diverse starting nodes among the candidates, each scored 0-100: at least
    `SELECT_AT_LEAST` (or as many as are listed) and at most `max_nodes`."""
    listed = "\n".join(f"- {c}" for c in candidates)
    most = max(1, min(max_nodes, len(candidates)))
    least = min(SELECT_AT_LEAST, most)
    count = f"{most} different node{'s' if most > 1 else ''}" + (
        f", and no fewer than {least}," if least > 1 else "")
    diverse = ", and diverse, so that together they cover its different steps" if most > 1 else ""
    return [
        system(READER),
        user(
            f"Question: {question}\nPlan: {plan}\n\nNodes of the graph that may be relevant:\n"
            f"{listed}\n\nChoose up to {count} to start reading from: the most useful for the "
            f"plan{diverse}. Score each from 0 (useless) to 100 (essential). Copy each node's "
            "name exactly as listed."
        ),
    ]


def _header(question: str, plan: str, actions: Sequence[str], notebook: str) -> str:
    done = "; ".join(actions) if actions else "none yet"
    return (f"Question: {question}\nPlan: {plan}\nYour previous actions: {done}\n"
            f"Your notebook so far: {notebook or '(empty)'}\n\n")


def step_messages(mode: str, question: str, plan: str, actions: Sequence[str], notebook: str,
                  content: str, legal: Sequence[str]) -> list[Message]:
    """One exploration step in `mode` (facts, chunk or neighbors) showing `content`."""
    guide = {
        "facts": ("Facts of the node you are at, grouped by the chunk they come from:\n"
                  f"{content}\n\nUpdate the notebook with what helps answer the question. "
                  + ("If a fact is even slightly relevant, read its chunks (read_chunk with "
                     "their ids); otherwise move on to the neighbouring nodes "
                     "(stop_and_read_neighbor)." if "read_chunk" in legal else
                     "Their chunks are read or queued already: move on to the neighbouring "
                     "nodes (stop_and_read_neighbor).")),
        "chunk": (f"A chunk of the text:\n{quoted(content)}\n\nUpdate the notebook "
                  "with what helps answer the question. Then read the next queued chunk "
                  "(search_more), the chunk before or after this one (read_previous_chunk, "
                  "read_subsequent_chunk), or stop when the notebook answers the question "
                  "(termination)."),
        "neighbors": ("Neighbouring nodes you have not visited, most connected first:\n"
                      f"{content}\n\nUpdate the notebook, then go to the neighbour most likely "
                      "to help (read_neighbor_node, copying its name exactly), or stop when "
                      "the notebook answers the question (termination)."),
    }[mode]
    return [
        system(READER),
        user(
            f"{_header(question, plan, actions, notebook)}{guide}\n"
            f"Do not revisit what you have already read. Available now: {', '.join(legal)}."
        ),
    ]


def call_step_messages(mode: str, question: str, plan: str, actions: Sequence[str],
                       notebook: str, content: str, legal: Sequence[str],
                       notebook_chars: int) -> list[Message]:
    """A step in the paper's call-string form (faithful mode): labelled lines, not JSON."""
    messages = step_messages(mode, question, plan, actions, notebook, content, legal)
    calls = ", ".join(SIGNATURES[a] for a in legal)
    form = (
        "\n\nReply in exactly this form, with nothing before or after:\n"
        f"Notebook: <your updated notebook, at most {notebook_chars} characters>\n"
        "Rationale: <one short sentence>\n"
        f"Action: <exactly one call, written like one of: {calls}>"
    )
    return [*messages[:-1], user(messages[-1].content + form)]


def call_reask_message(complaint: str) -> Message:
    """The re-ask of a call-string step, carrying the validator's complaint."""
    return user(f"Your previous reply was not usable: {complaint}. Reply again in exactly the "
                "form asked: a Notebook: line, a Rationale: line, then an Action: line holding "
                "one call.")


def answer_messages(question: str, plan: str, notebooks: Sequence[str]) -> list[Message]:
    """The final answer from every path's notebook."""
    labelled = "\n".join(f"Notebook of path {i}:\n{quoted(nb or '(empty)')}"
                         for i, nb in enumerate(notebooks, 1))
    return [
        system(READER),
        user(
            f"Question: {question}\nPlan: {plan}\n\nSeveral readers explored the graph from "
            f"different starting points and kept these notebooks:\n{labelled}\n\n"
            "Analyse each notebook, combine what complements, and where they disagree follow "
            "the majority. Example: if two notebooks say 1872 and one says 1870, answer 1872. "
            "Then give a short answer."
        ),
    ]


def fallback_messages(question: str, notebooks: Sequence[str]) -> list[Message]:
    """A plain-text answer when the structured answer failed."""
    joined = "\n".join(nb for nb in notebooks if nb) or "(nothing was learned)"
    return [
        system(READER),
        user(f"Notes:\n{joined}\n\nQuestion: {question}\nWrite only a short answer.\nAnswer:"),
    ]


# -- reply shapes (§3.3), bounded so constrained decoding always closes (§8.4) ------------------


@functools.lru_cache(maxsize=8)
def extraction_schema(max_facts: int, fact_chars: int, key_chars: int,
                      max_keys: int) -> type[BaseModel]:
    """Extraction: atomic_facts[≤max_facts] of {fact, key_elements[1..max_keys]}."""
    key = Annotated[str, Field(max_length=key_chars)]
    fact = create_model(
        "AtomicFact",
        fact=(str, Field(max_length=fact_chars)),
        key_elements=(list[key], Field(min_length=1, max_length=max_keys)),  # type: ignore
    )
    return create_model("Extraction",
                        atomic_facts=(list[fact], Field(max_length=max_facts)))  # type: ignore


@functools.lru_cache(maxsize=8)
def selection_schema(max_nodes: int, key_chars: int) -> type[BaseModel]:
    """InitialNodes: nodes[1..max_nodes] of {key, score 0..100}."""
    scored = create_model("ScoredNode", key=(str, Field(max_length=key_chars)),
                          score=(int, Field(ge=0, le=100)))
    return create_model("InitialNodes",
                        nodes=(list[scored], Field(min_length=1, max_length=max_nodes)))  # type: ignore


def step_schema(mode: str, legal: tuple[str, ...], ids: tuple[int, ...], names: tuple[str, ...],
                notebook_chars: int, rationale_chars: int, max_ids: int) -> type[BaseModel]:
    """StepOutput for one state: actions only `legal`, ids and names only those shown."""
    fields: dict[str, object] = {
        "notebook": (str, Field(max_length=notebook_chars)),
        "rationale": (str, Field(max_length=rationale_chars)),
        "action": (Literal[legal], ...),  # type: ignore[valid-type]
    }
    if mode == "facts" and ids:
        fields["chunk_ids"] = (list[Literal[ids]],  # type: ignore[valid-type]
                               Field(max_length=max_ids))
    if mode == "neighbors" and names:
        fields["neighbor"] = (Literal[names], ...)  # type: ignore[valid-type]
    return create_model("StepOutput", __base__=_Step, **fields)  # type: ignore[call-overload]


class _Step(BaseModel):
    """Argument fields are required in the schema, so a constrained decoder always writes them
    (optional fields get skipped by small models); a reply that leaves out an argument its action
    does not use is still understood."""

    @model_validator(mode="before")
    @classmethod
    def _fill_unused(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        action = data.get("action")
        fields = cls.model_fields
        if "chunk_ids" in fields and action != "read_chunk" and "chunk_ids" not in data:
            data = {**data, "chunk_ids": []}
        if "neighbor" in fields and action != "read_neighbor_node" and "neighbor" not in data:
            data = {**data, "neighbor": _first(fields["neighbor"].annotation)}
        return data


def _first(annotation: Any) -> Any:
    return get_args(annotation)[0]


@functools.lru_cache(maxsize=8)
def answer_schema(analysis_chars: int, answer_chars: int) -> type[BaseModel]:
    """FinalAnswer: analysis then answer."""
    return create_model("FinalAnswer", analysis=(str, Field(max_length=analysis_chars)),
                        answer=(str, Field(max_length=answer_chars)))
