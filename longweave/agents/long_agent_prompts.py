"""LongAgent prompt wording and output schemas, kept apart from the algorithm (STRATEGIES.md §2.3).

Slots follow the paper's roles in longweave's own words: the leader reads the task and the
question and instructs; members read one part each and only ever see the leader's instruction
and a generic task description; the merger re-answers over two parts without being shown the
conflicting answers (as in the reference code).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from longweave.llm import Message, quoted, system, user

INSTRUCTION_CHARS = 600
"""Default cap on a leader instruction or answer (STRATEGIES.md §8.2)."""
ANSWER_CHARS = 300
"""Default cap on a member's answer, also the cap on a shown response (§8.2)."""
QUOTE_CHARS = 200
QUOTES = 3
SHOWN_IDS = 5
"""Part numbers listed per shown response; more are summarised as a count (ours)."""


def _no_description(schema: dict[str, Any]) -> None:
    # The class docstring is for readers of this code; in the JSON schema shown to a small model
    # it gets copied into the reply.
    schema.pop("description", None)


_SCHEMA = ConfigDict(extra="forbid", json_schema_extra=_no_description)


class LeaderStart(BaseModel):
    """The leader's first turn: only an instruction is legal before anyone has read anything."""

    model_config = _SCHEMA
    action: Literal["instruct"]
    text: str = Field(max_length=INSTRUCTION_CHARS)


class LeaderTurn(BaseModel):
    """A later leader turn: a new instruction for the members, or the final answer."""

    model_config = _SCHEMA
    action: Literal["instruct", "answer"]
    text: str = Field(max_length=INSTRUCTION_CHARS)


class FinalAnswer(BaseModel):
    """The forced answer once the round limit is reached."""

    model_config = _SCHEMA
    answer: str = Field(max_length=INSTRUCTION_CHARS)


class MemberReply(BaseModel):
    """A member's (or the merger's) reply: whether its text holds the answer, and quotes."""

    # Fields in alphabetical order: some constrained decoders emit keys sorted, and this way
    # every backend writes the answer and its quotes before committing to `found`.
    model_config = _SCHEMA
    answer: str = Field(max_length=ANSWER_CHARS)
    # Every string bounded, items too: small models close the JSON only when all are (§8.4).
    evidence: list[Annotated[str, Field(max_length=QUOTE_CHARS)]] = Field(max_length=QUOTES)
    """Verbatim quotes from the text read; longweave's addition, used for citations."""
    found: bool


@dataclass(frozen=True)
class Schemas:
    """The output schemas of one configuration: the classes above, or subclasses that bound the
    strings and lists more tightly (a small model at a small max_new must close its JSON)."""

    start: type[LeaderStart]
    turn: type[LeaderTurn]
    final: type[FinalAnswer]
    member: type[MemberReply]


_DEFAULT_BOUNDS = (INSTRUCTION_CHARS, ANSWER_CHARS, QUOTE_CHARS, QUOTES)


@lru_cache(maxsize=16)
def schemas(
    instruction_chars: int = INSTRUCTION_CHARS,
    answer_chars: int = ANSWER_CHARS,
    quote_chars: int = QUOTE_CHARS,
    quotes: int = QUOTES,
) -> Schemas:
    """The schemas with these bounds; the default bounds give the classes above."""
    if (instruction_chars, answer_chars, quote_chars, quotes) == _DEFAULT_BOUNDS:
        return Schemas(LeaderStart, LeaderTurn, FinalAnswer, MemberReply)
    text: Any = (str, Field(max_length=instruction_chars))
    quote: Any = Annotated[str, Field(max_length=quote_chars)]
    return Schemas(
        create_model("LeaderStart", __base__=LeaderStart, text=text),
        create_model("LeaderTurn", __base__=LeaderTurn, text=text),
        create_model("FinalAnswer", __base__=FinalAnswer, answer=text),
        create_model(
            "MemberReply",
            __base__=MemberReply,
            answer=(str, Field(max_length=answer_chars)),
            evidence=(list[quote], Field(max_length=quotes)),
        ),
    )


@dataclass(frozen=True)
class Shown:
    """One response cluster as shown to the leader or to members: answer, parts, count."""

    answer: str
    parts: tuple[int, ...]  # 0-based chunk indices of the members who gave it


def leader_system(m: int) -> str:
    return (
        f"You lead a team of {m} members. Each member holds one part of a long document; the "
        "parts do not overlap and together they make up the whole document. Only you see the "
        "question. The members see only your instructions and their own part, so tell them "
        "what to look for; then finish the task from what they report."
    )


def _task(task: str, question: str) -> str:
    return f"Task: {task}\nQuestion: {question}\n\n"


def leader_start_messages(m: int, task: str, question: str) -> list[Message]:
    """The leader's first turn: read the task and write the members' first instruction."""
    return [
        system(leader_system(m)),
        user(
            _task(task, question)
            + "Write the first instruction for the members: what should each of them look for "
            'in their part? Set action to "instruct" and put the instruction in text.'
        ),
    ]


def _responses(shown: Sequence[Shown], silent: int, conflicts_left: bool) -> str:
    if shown:
        lines = [
            f"{n}. {s.answer} (given by {len(s.parts)} member{'s' if len(s.parts) != 1 else ''})"
            for n, s in enumerate(shown, 1)
        ]
        text = "What the members reported:\n" + "\n".join(lines)
    else:
        text = "No member found an answer in their part."
    if silent:
        text += f"\n{silent} member{'s' if silent != 1 else ''} found nothing in their part."
    if conflicts_left:
        text += "\nSome of these answers still conflict: the members could not settle them."
    return text + "\n\n"


_WEIGH = (
    "The parts do not overlap, so most members will find nothing: one member who reports "
    "something concrete outweighs many who found nothing in their part."
)


def leader_next_messages(
    m: int, task: str, question: str, shown: Sequence[Shown], silent: int, conflicts_left: bool
) -> list[Message]:
    """The leader after a round: answer, or instruct again when the answer is missing or split."""
    return [
        system(leader_system(m)),
        user(
            _task(task, question)
            + _responses(shown, silent, conflicts_left)
            + _WEIGH
            + " If the answer is still missing or the reports conflict, set action to "
            '"instruct" and write a new instruction in text. Otherwise set action to "answer" '
            "and write the final answer in text, briefly and without explanation."
        ),
    ]


def leader_final_messages(
    m: int, task: str, question: str, shown: Sequence[Shown], silent: int, conflicts_left: bool
) -> list[Message]:
    """The forced last leader turn: the round limit is reached, so only an answer is legal."""
    return [
        system(leader_system(m)),
        user(
            _task(task, question)
            + _responses(shown, silent, conflicts_left)
            + _WEIGH
            + " No more instructions are possible: write the final answer now, briefly and "
            "without explanation."
        ),
    ]


MEMBER_SYSTEM = (
    "You are a member of a team reading a long document. You hold one part of it; other members "
    "hold the other parts, and a leader coordinates the team. Answer only from your own part. If "
    "your part does not hold the answer, set found to false and leave answer empty: do not guess."
)
MERGER_SYSTEM = (
    "You are a member of a team reading a long document, asked to settle a disagreement. You "
    "hold two parts of it. Answer only from these two parts. If they do not hold the answer, set "
    "found to false and leave answer empty: do not guess."
)
_REPLY = (
    "Reply with answer (a few words taken from the text; empty if the text does not say), "
    "evidence (a short quote copied word for word from the text) and found (true only if the "
    "text holds the answer)."
)
PLACEHOLDER = "(your part was shown here; it is repeated in the latest message)"


def _part_names(parts: tuple[int, ...]) -> str:
    names = ", ".join(str(p + 1) for p in parts[:SHOWN_IDS])
    more = len(parts) - SHOWN_IDS
    label = f"part{'s' if len(parts) != 1 else ''} {names}"
    return label + (f" and {more} more" if more > 0 else "")


def render_reply(reply: MemberReply) -> str:
    """A past reply as it appears in a member's history: found and answer, no quotes."""
    return json.dumps({"found": reply.found, "answer": reply.answer}, ensure_ascii=False)


def member_messages(
    task: str,
    chunk: str,
    instruction: str,
    *,
    shown: Sequence[Shown] = (),
    history: Sequence[tuple[str, str]] = (),
) -> list[Message]:
    """A member's turn: its past turns (chunk replaced by a placeholder), then its part."""
    messages = [system(MEMBER_SYSTEM)]
    for past_instruction, past_reply in history:
        messages.append(
            user(f"Task: {task}\n\nYour part: {PLACEHOLDER}\n\nInstruction: {past_instruction}")
        )
        messages.append(Message("assistant", past_reply))
    team = ""
    if shown:
        lines = "\n".join(f"- {s.answer} ({_part_names(s.parts)})" for s in shown)
        team = f"Answers the team gave last round:\n{lines}\n\n"
    messages.append(
        user(
            f"Task: {task}\n\nYour part of the document:\n{quoted(chunk)}\n\n"
            f"{team}Instruction from the leader: {instruction}\n\n{_REPLY}"
        )
    )
    return messages


def merger_messages(task: str, first: str, second: str, instruction: str) -> list[Message]:
    """Re-answer over two conflicting members' parts, in document order; answers not shown."""
    return [
        system(MERGER_SYSTEM),
        user(
            f"Task: {task}\n\nTwo parts of the document, in order.\n\nFirst part:\n{quoted(first)}"
            f"\n\nSecond part:\n{quoted(second)}\n\n"
            f"Instruction from the leader: {instruction}\n\n{_REPLY}"
        ),
    ]
