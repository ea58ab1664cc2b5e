"""InfiniRetri's read-and-answer template and its segment-wise tokenization (STRATEGIES.md §7.3).

The same template serves the scoring forwards and the final answer. For scoring, the rendered
prompt is cut at two placeholders into head, middle and tail, and every part (each sentence of
the context, the question) is tokenized on its own, so the spans of the context and question
rows are known by construction and never found by string matching (§7.5.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longweave.llm import Message, quoted, system, user

if TYPE_CHECKING:
    from longweave.local_models.attention import AttentionScorer

INSTRUCTION = "Read the text below and answer the question about it in a few words."
SUMMARY_TASK = "Summarize the text."
_CONTEXT = "\x00LW-CONTEXT\x00"
_QUESTION = "\x00LW-QUESTION\x00"


def reader_messages(context: str, question: str) -> list[Message]:
    """The read-and-answer prompt: instruction, context block, question block, answer cue."""
    return [
        system("You answer questions about a text, briefly and only from the text."),
        user(f"{INSTRUCTION}\n\n{quoted(context)}\n\nQuestion: {question}\n\nAnswer:"),
    ]


@dataclass(frozen=True)
class Template:
    """The read-and-answer template as token ids around the context and the question.

    Built once per run; P (where the context starts) is `len(head)` for every window (§7.5.2)."""

    head: tuple[int, ...]
    middle: tuple[int, ...]
    question: tuple[int, ...]
    tail: tuple[int, ...]

    @classmethod
    def build(cls, scorer: AttentionScorer, question: str) -> Template:
        rendered = scorer.render(reader_messages(_CONTEXT, _QUESTION))
        head, rest = rendered.split(_CONTEXT)
        middle, tail = rest.split(_QUESTION)
        return cls(
            tuple(scorer.encode(head)),
            tuple(scorer.encode(middle)),
            tuple(scorer.encode(question)),
            tuple(scorer.encode(tail)),
        )

    @property
    def tokens(self) -> int:
        """T(template) + T(q): every prompt token that is not context."""
        return len(self.head) + len(self.middle) + len(self.question) + len(self.tail)

    def assemble(self, context: Sequence[Sequence[int]]) -> tuple[list[int], int, int, int]:
        """The prompt ids for context pieces, with c0, c1 (context span) and q0 (first row)."""
        ids = list(self.head)
        c0 = len(ids)
        for piece in context:
            ids.extend(piece)
        c1 = len(ids)
        ids.extend(self.middle)
        q0 = len(ids)
        ids.extend(self.question)
        ids.extend(self.tail)
        return ids, c0, c1, q0
