"""Test doubles: a strict scripted model (answers by role and content, records every request)
and a deterministic embedder.

>>> model = ScriptedModel()
>>> model.on("worker", contains="part 1", reply="summary one")
>>> import asyncio
>>> asyncio.run(model.complete([user("part 1 text")], max_tokens=8, role="worker")).text
'summary one'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from longweave.answer import Usage
from longweave.errors import ParseError, UnscriptedCall
from longweave.llm import Completion, Message, check_budget, user

__all__ = [
    "HashEmbedder",
    "RegexTokenizer",
    "Request",
    "Rule",
    "ScriptedModel",
    "quoted_after",
    "quoted_blocks",
    "user",
]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_QUOTED = re.compile(r'^("{3,})\n(.*?)\n\1$', re.DOTALL | re.MULTILINE)


def quoted_blocks(text: str) -> list[str]:
    """The texts a prompt quotes (`longweave.llm.quoted`), in order."""
    return [body for _, body in _QUOTED.findall(text)]


def quoted_after(text: str, label: str) -> str:
    """The first quoted text after `label`, or '' when the prompt has no such block."""
    head, found, tail = text.partition(label)
    blocks = quoted_blocks(tail) if found else []
    return blocks[0] if blocks else ""


class RegexTokenizer:
    """A deterministic tokenizer for tests: a token is a word or one punctuation mark."""

    name = "regex-words"

    def count(self, text: str) -> int:
        return sum(1 for _ in _TOKEN.finditer(text))

    def token_starts(self, text: str) -> list[int]:
        return [m.start() for m in _TOKEN.finditer(text)]


@dataclass(frozen=True)
class Request:
    """One recorded call: who asked, what was sent, and with which parameters."""

    role: str
    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float
    schema: type[BaseModel] | None
    prompt_tokens: int

    @property
    def text(self) -> str:
        """All message contents joined, for `in` checks."""
        return "\n".join(m.content for m in self.messages)


Reply = str | BaseModel | dict | Callable[[Request], Any]


@dataclass
class Rule:
    """Answer requests from `role` whose text contains every string in `contains`."""

    role: str
    contains: tuple[str, ...]
    reply: Reply
    times: int | None = None
    used: int = 0

    def matches(self, request: Request) -> bool:
        if self.role != request.role:
            return False
        if self.times is not None and self.used >= self.times:
            return False
        return all(s in request.text for s in self.contains)


@dataclass
class ScriptedModel:
    """A strict fake `LLM`: every request must match a rule, or `UnscriptedCall` is raised."""

    name: str = "scripted"
    context_window: int = 8192
    tokenizer: Any = field(default_factory=RegexTokenizer)
    rules: list[Rule] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def on(
        self,
        role: str,
        *,
        reply: Reply,
        contains: str | Sequence[str] = (),
        times: int | None = None,
    ) -> None:
        """Script a reply; the first matching rule with uses left answers."""
        needles = (contains,) if isinstance(contains, str) else tuple(contains)
        self.rules.append(Rule(role, needles, reply, times))

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        # A fixed per-message overhead, like a chat template's role markers.
        return sum(self.count_tokens(m.content) + 4 for m in messages) + 2

    def calls(self, role: str | None = None) -> list[Request]:
        """The recorded requests, optionally only those of one role."""
        return [r for r in self.requests if role is None or r.role == role]

    def unused_rules(self) -> list[Rule]:
        """Rules with a fixed number of uses that were not all consumed."""
        return [r for r in self.rules if r.times is not None and r.used < r.times]

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        schema: type[BaseModel] | None = None,
        role: str = "",
    ) -> Completion:
        prompt_tokens = self.count_prompt_tokens(messages)
        request = Request(role, tuple(messages), max_tokens, temperature, schema, prompt_tokens)
        self.requests.append(request)
        check_budget(prompt_tokens, max_tokens, self.context_window)
        rule = next((r for r in self.rules if r.matches(request)), None)
        if rule is None:
            raise UnscriptedCall(
                f"no rule answers a {role or 'role-less'} request starting "
                f"{request.text[:160]!r}",
                hint=f"script it with model.on({role!r}, contains=..., reply=...)",
            )
        rule.used += 1
        value = rule.reply(request) if callable(rule.reply) else rule.reply
        text, parsed = _render(value, schema, self.name)
        completion_tokens = self.count_tokens(text)
        finish = "length" if completion_tokens > max_tokens else "stop"
        usage = Usage(calls=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return Completion(text, usage, parsed=parsed, finish_reason=finish, model=self.name)


def _render(value: Any, schema: type[BaseModel] | None, name: str) -> tuple[str, Any]:
    """The reply's text and, for schema calls, the validated object, as real backends give them."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(), value
    text = json.dumps(value) if isinstance(value, dict) else str(value)
    if schema is None:
        return text, None
    try:
        return text, schema.model_validate_json(text)
    except ValidationError as exc:
        # Real backends raise ParseError for output that fails the schema; so does the fake.
        raise ParseError(f"reply does not match {schema.__name__}: {exc}", raw=text,
                         provider=name) from exc


class HashEmbedder:
    """A deterministic bag-of-words embedder for tests; `texts` counts what it has embedded."""

    def __init__(self, name: str = "fake:hash", dim: int = 128) -> None:
        self.name = name
        self.dim = dim
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> Any:
        import hashlib

        import numpy as np

        self.texts += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)
