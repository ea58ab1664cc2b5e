"""BEAM's scorer: a judge model grades each rubric nugget 1, 0.5 or 0; the score is their mean.

STRATEGIES.md §6.5 (pitfall 2) and §6.6 (check 6): upstream evaluators apply `int()` to the
judge's 0.5, so partial credit becomes 0. Here a 0.5 nugget counts 0.5 by default, and
`faithful=True` floors it to 0 as the released code does; reports give both, named by mode.
Event-ordering questions are scored as the normalized Kendall tau-b between the order the
answer mentions the rubric items and the rubric's order, times the F1 of the items matched
(the judge maps the answer's items to rubric numbers). The judge prompts are ours.

>>> rubric_score([1.0, 0.5, 0.0]), rubric_score([1.0, 0.5, 0.0], faithful=True)
(0.5, 0.3333333333333333)
>>> ordering_score([1, 3, 2], 3) < ordering_score([1, 2, 3], 3) == 1.0
True
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from longweave.errors import LongweaveError
from longweave.llm import Message, system, user

if TYPE_CHECKING:
    from longweave.llm import LLM

__all__ = [
    "GRADE_VALUES",
    "NuggetGrade",
    "Ordering",
    "judge_nuggets",
    "judge_order",
    "kendall_tau_b",
    "ordering_score",
    "rubric_score",
]

GRADE_VALUES = {"yes": 1.0, "partial": 0.5, "no": 0.0}
"""The judge's three grades and the credit each earns (BEAM's 1 / 0.5 / 0)."""

ANSWER_CHARS = 12_000
"""Longer answers are cut before judging, so the judge prompt fits a small window (ours)."""


class NuggetGrade(BaseModel):
    """The judge's grade of one rubric item."""

    reason: str = Field(max_length=300)
    grade: Literal["yes", "partial", "no"]


class Ordering(BaseModel):
    """The rubric item numbers in the order the response mentions them (0: not in the rubric)."""

    order: list[int] = Field(max_length=20)


_JUDGE = (
    "You grade a response to a user's question against one rubric item. Reply 'yes' when "
    "the response fully satisfies the item, 'partial' when it satisfies part of it, 'no' "
    "otherwise."
)
_ORDER = (
    "You compare the order of items in a response with a numbered reference list. For each "
    "item the response mentions, in the response's order, give the number of the matching "
    "reference item, or 0 when none matches."
)


def nugget_messages(question: str, answer: str, item: str) -> list[Message]:
    return [system(_JUDGE), user(
        f"Question: {question}\n\nResponse:\n{answer[:ANSWER_CHARS]}\n\nRubric item: {item}\n\n"
        "Grade the response on this rubric item."
    )]


def order_messages(question: str, answer: str, rubric: Sequence[str]) -> list[Message]:
    listed = "\n".join(f"{i}. {item}" for i, item in enumerate(rubric, 1))
    return [system(_ORDER), user(
        f"Question: {question}\n\nResponse:\n{answer[:ANSWER_CHARS]}\n\nReference items:\n"
        f"{listed}\n\nList the reference numbers in the order the response mentions them."
    )]


async def judge_nuggets(
    llm: LLM, question: str, answer: str, rubric: Sequence[str], *, concurrency: int = 4
) -> list[float]:
    """One judge call per rubric item, concurrently; the credit of each (1, 0.5 or 0).

    A reply the judge cannot shape into a grade counts 0 for its item."""
    slots = asyncio.Semaphore(concurrency)

    async def grade(item: str) -> float:
        async with slots:
            try:
                reply = await llm.complete(nugget_messages(question, answer, item),
                                           max_tokens=160, schema=NuggetGrade, role="judge")
            except LongweaveError:  # ParseError and the like: no credit, the run goes on
                return 0.0
        parsed = reply.parsed or NuggetGrade.model_validate_json(reply.text)
        return GRADE_VALUES[parsed.grade]

    return list(await asyncio.gather(*(grade(item) for item in rubric)))


async def judge_order(llm: LLM, question: str, answer: str, rubric: Sequence[str]) -> list[int]:
    """The rubric numbers (1-based) in the order the answer mentions them; 0 for extra items."""
    try:
        reply = await llm.complete(order_messages(question, answer, rubric), max_tokens=120,
                                   schema=Ordering, role="judge")
    except LongweaveError:
        return []
    parsed = reply.parsed or Ordering.model_validate_json(reply.text)
    return list(parsed.order)


def rubric_score(grades: Sequence[float], *, faithful: bool = False) -> float:
    """The mean credit; `faithful` floors each to an int (0.5 -> 0) as upstream evaluators do."""
    if not grades:
        return 0.0
    credits = [float(int(g)) if faithful else float(g) for g in grades]
    return sum(credits) / len(credits)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired rankings (ties corrected); 0.0 when undefined."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 0.0


def ordering_score(order: Sequence[int], n_items: int) -> float:
    """Normalized tau-b ((tau + 1) / 2) of the matched items' order, times their F1.

    `order` lists rubric numbers as the answer mentions them; repeats count once, 0 or
    out-of-range numbers are extra items (they lower precision). One matched item is in order.
    """
    if not order or n_items <= 0:
        return 0.0
    matched: list[int] = []
    for number in order:
        if 1 <= number <= n_items and number not in matched:
            matched.append(number)
    if not matched:
        return 0.0
    extra = sum(1 for n in order if not 1 <= n <= n_items)
    precision = len(matched) / (len(matched) + extra)
    recall = len(matched) / n_items
    f1 = 2 * precision * recall / (precision + recall)
    if len(matched) == 1:
        return f1
    tau = kendall_tau_b(list(range(len(matched))), matched)
    return (tau + 1) / 2 * f1
