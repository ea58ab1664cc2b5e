"""The truncation baseline: put as much of the document as fits in one prompt, and answer.

This is what a plain model call does with a document longer than its window, and the "truncated
full context" same-window baseline of STRATEGIES.md §8.10. The document is cut at a token
boundary of the model's own tokenizer so the prompt, the question and the generation cap fit;
the answer cites the span read and is flagged `truncated` when something was cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from longweave.agents.base import RunContext
from longweave.agents.baseline_prompts import truncate_messages
from longweave.budget import chunk_budget
from longweave.llm import unquote
from longweave.retrieval.corpus import cite_span
from longweave.tokenizers import Tokenizer

_FIT_TRIES = 4
"""Re-cuts allowed when the assembled prompt counts more than its parts (ours)."""


class TruncateState(TypedDict, total=False):
    spans: list[tuple[int, int]]
    answer: str
    citations: list
    flags: list[str]


class Truncate(BaseModel):
    """One call over the first window's worth of the document (or its head and tail)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "truncate"
    summary: ClassVar[str] = "baseline: the first window's worth of the document, one call"

    max_new: int = Field(default=256, ge=1)
    """Generation cap of the answer (ours)."""
    window: int | None = Field(None, ge=256)
    """Window to fill, capped by the model's own; None is the model's window (ours)."""
    margin: int = Field(default=64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""
    keep: Literal["head", "middle"] = "head"
    """"head" reads the start, as a plain call does; "middle" cuts the middle out and keeps the
    first and last halves of the budget, as LongBench's evaluation does (reference code)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of the answer call (ours)."""

    def _window(self, ctx: RunContext) -> int:
        return min(self.window or ctx.llm.context_window, ctx.llm.context_window)

    def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        text, tok = ctx.document.text, ctx.llm.tokenizer
        window = self._window(ctx)
        fixed = ctx.llm.count_prompt_tokens(truncate_messages("", ctx.question))
        budget = chunk_budget(window, max_new=self.max_new, fixed_tokens=fixed, margin=self.margin)
        for _ in range(_FIT_TRIES):
            spans = self._spans(text, budget, tok)
            shown = _join(text, spans)
            excess = ctx.llm.count_prompt_tokens(truncate_messages(shown, ctx.question)) + (
                self.max_new - window
            )
            if excess <= 0:
                break
            budget -= excess  # tokens merged differently across the joins; cut that much more
        truncated = spans != [(0, len(text))]
        read = sum(e - s for s, e in spans)
        ctx.step("plan", f"read {read:,} of {len(text):,} characters within {budget} tokens",
                 budget=budget, spans=[list(s) for s in spans], truncated=truncated)
        return {"spans": spans, "flags": ["truncated"] if truncated else []}

    def _spans(self, text: str, budget: int, tok: Tokenizer) -> list[tuple[int, int]]:
        if self.keep == "head":
            return [(0, head_end(text, budget, tok))]
        first = budget // 2
        end = head_end(text, first, tok)
        if end == len(text):
            return [(0, end)]
        start = tail_start(text, budget - first, tok)
        if start <= end:  # the two halves meet: everything fits
            return [(0, len(text))]
        return [(0, end), (start, len(text))]

    def max_steps(self, state: dict[str, Any]) -> int:
        return 3  # read

    def build(self) -> StateGraph:
        graph = StateGraph(TruncateState, context_schema=RunContext)
        graph.add_node(self.read)
        graph.add_edge(START, "read")
        graph.add_edge("read", END)
        return graph

    async def read(self, state: TruncateState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One call over the text that fits; cite the spans read."""
        ctx = runtime.context
        spans = state["spans"]
        messages = truncate_messages(_join(ctx.document.text, spans), ctx.question)
        reply = await ctx.call(
            "reader", messages, max_tokens=self.max_new, temperature=self.temperature, stream=True
        )
        text = unquote(reply.text)
        ctx.step("reader", text, finish_reason=reply.finish_reason)
        citations = [c for s, e in spans for c in cite_span(ctx.document, s, e)]
        return {"answer": text, "citations": citations}


def _join(text: str, spans: Sequence[tuple[int, int]]) -> str:
    # Head and tail are joined directly, as LongBench joins its decoded halves.
    return "".join(text[s:e] for s, e in spans)


def head_end(text: str, budget: int, tok: Tokenizer) -> int:
    """The end of the longest prefix of `text`, cut at a token start, holding <= budget tokens.

    Only a prefix a few times the budget is tokenized, so a huge document costs little.
    """
    if budget <= 0:
        return 0
    span = max(8 * budget, 4096)
    while True:
        starts = tok.token_starts(text[:span])
        if span >= len(text) and len(starts) <= budget:
            return len(text)
        # Tokens far from the prefix's end are tokenized as in the whole text.
        if len(starts) > budget + 16 or span >= len(text):
            break
        span *= 2
    i = budget
    while i > 0 and tok.count(text[: int(starts[i])]) > budget:
        i -= 1  # re-tokenizing the prefix can merge differently; step back a token
    return int(starts[i])


def tail_start(text: str, budget: int, tok: Tokenizer) -> int:
    """The start of the longest suffix of `text`, at a token start, holding <= budget tokens."""
    if budget <= 0:
        return len(text)
    span = max(8 * budget, 4096)
    while True:
        offset = max(0, len(text) - span)
        starts = tok.token_starts(text[offset:])
        if offset == 0 and len(starts) <= budget:
            return 0
        if len(starts) > budget + 16 or offset == 0:
            break
        span *= 2
    i = len(starts) - budget
    while i < len(starts) and tok.count(text[offset + int(starts[i]) :]) > budget:
        i += 1
    return offset + int(starts[i]) if i < len(starts) else len(text)
