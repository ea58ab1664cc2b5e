"""The model contract: one protocol every backend implements, and the model-string resolver.

Strategies see only `LLM`; whether the model is local or remote is the backend's business.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from longweave.answer import Usage
from longweave.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from longweave.tokenizers import Tokenizer

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def system(content: str) -> Message:
    return Message("system", content)


def user(content: str) -> Message:
    return Message("user", content)


_QUOTES_AT_LINE_START = re.compile(r'^[ \t]*("{3,})', re.MULTILINE)
_QUOTE_LINE = re.compile(r'[ \t]*"{3,}[ \t]*')
_QUOTE_LINE_SO_FAR = re.compile(r'[ \t]*"*[ \t]*')


def quoted(text: str) -> str:
    """`text` set apart in a prompt, between lines of three double quotes.

    Prompts quote documents and notes this way rather than in XML-like tags: the bundled model
    continued `<part>` blocks as HTML in most Chain-of-Agents notes, and in none with quotes
    (docs/BENCHMARKS.md, "Prompt delimiters"). A text with a line that starts with three or more
    quotes of its own (a Python docstring) gets a longer fence, so it cannot end the block early.
    """
    inner = [len(run) for run in _QUOTES_AT_LINE_START.findall(text)]
    fence = '"' * max([3] + [n + 1 for n in inner])
    return f"{fence}\n{text}\n{fence}"


def unquote(reply: str, *, indent: bool = False) -> str:
    """A reply without the quote lines a small model copies around it from the prompt.
    `indent`: keep the first line's indentation (code: a completed line inside a function body
    is indented); only blank lines and trailing spaces around the reply go."""
    lines = reply.splitlines()
    while lines and (not lines[0].strip() or _QUOTE_LINE.fullmatch(lines[0].strip())):
        lines.pop(0)
    while lines and (not lines[-1].strip() or _QUOTE_LINE.fullmatch(lines[-1].strip())):
        lines.pop()
    text = "\n".join(lines)
    return text.rstrip() if indent else text.strip()


def unquote_so_far(streamed: str) -> str:
    """What `unquote` will keep of a reply still streaming: its last, unfinished line is hidden
    while it could still become a quote line, so copied quote lines never flash on screen."""
    lines = streamed.split("\n")
    if _QUOTE_LINE_SO_FAR.fullmatch(lines[-1]):
        lines.pop()
    return unquote("\n".join(lines))


@dataclass(frozen=True)
class Completion:
    """A model's reply: the text, the parsed object when a schema was asked for, and exact usage."""

    text: str
    usage: Usage
    parsed: Any = None
    finish_reason: str = "stop"
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LLM(Protocol):
    """A chat model. `complete` must report exact usage; `role` names the caller for tracing."""

    name: str
    context_window: int

    @property
    def tokenizer(self) -> Tokenizer: ...

    def count_tokens(self, text: str) -> int: ...

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the messages occupy once the chat template is applied."""
        ...

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        schema: type[BaseModel] | None = None,
        role: str = "",
    ) -> Completion: ...


def check_budget(prompt_tokens: int, max_tokens: int, window: int) -> None:
    """Raise `BudgetExceeded` unless the prompt and its generation cap fit the window."""
    from longweave.errors import BudgetExceeded

    if prompt_tokens + max_tokens > window:
        raise BudgetExceeded(prompt_tokens, max_tokens, window)


MODEL_FORMS = "'local', 'hf:<path or hub id>' or 'openai:<model>'"


def model_identity(llm: Any) -> str:
    """What names a model's output in cache keys: its `fingerprint` where the backend has one
    (the server behind an OpenAI-compatible name, a local model's dtype), else its name."""
    return str(getattr(llm, "fingerprint", None) or llm.name)


def is_model_string(spec: str) -> bool:
    """Whether `spec` has one of the model string forms (`MODEL_FORMS`); nothing is loaded."""
    kind, _, rest = spec.partition(":")
    return spec == "local" or (kind in ("hf", "openai") and bool(rest))


def check_model_string(spec: str) -> None:
    """Refuse a string of none of the model forms with a ConfigError; nothing is loaded."""
    if not is_model_string(spec):
        raise ConfigError(f"unknown model {spec!r}", hint=f"use {MODEL_FORMS}")


def resolve_model(spec: str | LLM, **options: Any) -> LLM:
    """Turn a model string into a backend; heavy imports happen only here, on demand.

    >>> resolve_model("nonsense")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ConfigError: unknown model 'nonsense'
    """
    if not isinstance(spec, str):
        if not callable(getattr(spec, "complete", None)):
            raise ConfigError(f"a model is a model string or a backend, not {type(spec).__name__}",
                              hint=f"use {MODEL_FORMS}, or an object with the LLM methods")
        return spec
    check_model_string(spec)
    kind, _, rest = spec.partition(":")
    if spec == "local":
        from longweave.local_models import LocalLLM

        return LocalLLM.bundled(**options)
    if kind == "hf":
        from longweave.local_models import LocalLLM

        return LocalLLM.from_pretrained(rest, **options)
    from longweave.openai_backend import OpenAILLM

    return OpenAILLM(rest, **options)
