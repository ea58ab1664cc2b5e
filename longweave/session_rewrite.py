"""How a follow-up becomes a standalone question: the conversation memory the rewrite call sees,
its prompt, and the cleaning of its reply.

A follow-up ("and where was she born?") is rewritten by one short model call (role `rewrite`)
that sees the conversation memory: the last turns verbatim (LIGHT's `WorkingMemory`) and older
turns as one-line facts (LIGHT's `Scratchpad`). `Session` makes the call; this module holds what
it is made of.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from longweave.llm import Message
from longweave.memory.scratchpad import Scratchpad
from longweave.memory.working import MemoryUnit, WorkingMemory

if TYPE_CHECKING:
    from longweave.session_store import Turn

__all__ = ["ConversationMemory", "clean_rewrite", "rewrite_messages"]

RECENT_TURNS = 4
"""Turns the rewrite sees verbatim (ours); older ones are kept as one-line facts."""
EARLIER_TOKENS = 256
"""Token target of the older turns' facts (ours); the oldest facts are dropped past it."""
ANSWER_CHARS = 600
"""An answer is clipped to this many characters in the memory (ours): enough to resolve a
reference, little enough to keep the rewrite call short."""

REWRITE_SYSTEM = (
    "You rewrite the latest question of a conversation about a document so that it can be "
    "understood without the conversation. Replace pronouns and vague references (he, she, it, "
    "they, that, there, the same) with what they refer to in the conversation. Keep the meaning "
    "and the language of the question and do not answer it. If it already stands alone, repeat "
    "it unchanged. Reply with the rewritten question only."
)


def rewrite_messages(conversation: str, question: str) -> list[Message]:
    """The prompt of the rewrite call: the conversation memory, then the latest question."""
    prompt = (f"Conversation so far:\n{conversation}\n\nLatest question: {question}\n\n"
              "Rewritten question:")
    return [Message("system", REWRITE_SYSTEM), Message("user", prompt)]


class ConversationMemory:
    """The conversation as the rewrite sees it: recent turns verbatim, older ones as facts.

    >>> memory = ConversationMemory(lambda s: len(s.split()), recent=1)
    >>> memory.add(0, "Who kept the light?", "Mara Quill.")
    >>> memory.add(1, "When?", "From 1871.")
    >>> print(memory.render(100))
    Earlier:
    - Who kept the light? -> Mara Quill. [u0]
    <BLANKLINE>
    Recent:
    User: When?
    Assistant: From 1871.
    """

    def __init__(self, count: Callable[[str], int], *, recent: int = RECENT_TURNS,
                 earlier_tokens: int = EARLIER_TOKENS) -> None:
        self.count = count
        self.recent = WorkingMemory(recent)
        self.earlier = Scratchpad(earlier_tokens, count)
        self._turns: dict[int, tuple[str, str]] = {}

    @classmethod
    def of(
        cls, turns: Sequence[Turn], count: Callable[[str], int], **options: Any
    ) -> ConversationMemory:
        """The memory after `turns` (their standalone questions resolve later references)."""
        memory = cls(count, **options)
        for i, turn in enumerate(turns):
            memory.add(i, turn.standalone or turn.question, turn.answer.text)
        return memory

    def add(self, index: int, question: str, answer: str) -> None:
        """Remember a turn; the turn it pushes out of the recent window becomes a fact."""
        self._turns[index] = (question.strip(), answer.strip())
        units = self.recent.units
        if not self.recent.capacity:
            self._remember(index)
            return
        if len(units) == self.recent.capacity:
            self._remember(units[0].index)
        # A turn is a unit of the conversation; its "span" is its position in it.
        self.recent.add(MemoryUnit(index, index, index + 1, self._text(index, ANSWER_CHARS)))

    def _text(self, index: int, answer_chars: int) -> str:
        question, answer = self._turns[index]
        return f"User: {question}\nAssistant: {clip(answer, answer_chars)}"

    def _remember(self, index: int) -> None:
        question, answer = self._turns.pop(index)  # a fact now: its full text is not needed
        fact = f"{one_line(question)} -> {clip(one_line(answer), ANSWER_CHARS // 3)}"
        self.earlier.add([fact], unit=index)
        while self.earlier.bullets and self.earlier.tokens() > self.earlier.target_tokens:
            self.earlier.bullets.pop(0)  # the oldest fact goes first

    def render(self, budget: int) -> str:
        """Recent turns (newest kept first) and then older facts, within `budget` tokens."""
        turns = self.recent.select(budget, lambda u: self.count(u.text) + 2)
        if not turns and self.recent.units:
            # The newest turn alone is over budget: keep it with its answer cut shorter, since
            # the latest exchange is what a follow-up most likely refers to.
            newest = self.recent.units[-1].index
            for chars in (ANSWER_CHARS // 2, ANSWER_CHARS // 4, ANSWER_CHARS // 10, 0):
                unit = MemoryUnit(newest, newest, newest + 1, self._text(newest, chars))
                if self.count(unit.text) + 2 <= budget:
                    turns = [unit]
                    break
        left = budget - sum(self.count(u.text) + 2 for u in turns) - 4
        facts: list[str] = []
        for bullet in reversed(self.earlier.bullets):
            line = bullet.render()
            cost = self.count(line) + 1
            if cost > left:
                break
            facts.insert(0, line)
            left -= cost
        parts = []
        if facts:
            parts.append("Earlier:\n" + "\n".join(facts))
        if turns:
            parts.append("Recent:\n" + "\n\n".join(u.text for u in turns))
        return "\n\n".join(parts)


def one_line(text: str) -> str:
    """`text` with every run of whitespace, newlines included, as one space."""
    return " ".join(text.split())


def clip(text: str, chars: int) -> str:
    """`text` cut to at most `chars` characters, an ellipsis marking the cut."""
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


_LABEL = re.compile(r"^(?:rewritten|standalone)?\s*question\s*:\s*", re.IGNORECASE)


def clean_rewrite(text: str, question: str, previous: str = "") -> str:
    """The rewritten question from a reply; when the reply is unusable (empty, an essay, or a
    statement where a question was asked: the model answered instead of rewriting), the previous
    standalone question followed by this one, which still carries the context.

    >>> clean_rewrite("The keeper was Mara.", "And after her?", "Who kept the light?")
    'Who kept the light? And after her?'
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # As many lines as the question has (a pasted question may hold several); the rest of a
    # reply is the model explaining itself.
    asked = max(1, sum(1 for line in question.splitlines() if line.strip()))
    out = "\n".join(_LABEL.sub("", line).strip().strip("\"'`“”").strip()
                    for line in lines[:asked]).strip()
    answered = question.rstrip().endswith("?") and "?" not in out
    if not out or answered or len(out) > max(400, 4 * len(question)):
        return f"{previous} {question}".strip()
    return out

