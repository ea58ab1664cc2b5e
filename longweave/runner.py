"""The one runner all strategies share: compile, invoke with the context, build the Answer."""

from __future__ import annotations

import contextlib
import inspect
import time
from typing import TYPE_CHECKING

from longweave.agents.base import RunContext, Strategy
from longweave.answer import Answer, Usage
from longweave.errors import ConfigError, DocumentError
from longweave.events import Event, EventSink, ignore
from longweave.sync import run_sync

if TYPE_CHECKING:
    from longweave.cache import ArtifactCache
    from longweave.documents import Document
    from longweave.llm import LLM


async def arun(
    strategy: Strategy,
    document: Document,
    question: str,
    llm: LLM,
    *,
    on_event: EventSink = ignore,
    artifacts: ArtifactCache | None = None,
) -> Answer:
    """Answer `question` about `document` with `strategy` and `llm`."""
    check_inputs(document, question)
    ctx = RunContext(llm, document, question, strategy.name, emit=on_event, artifacts=artifacts)
    started = time.perf_counter()
    on_event(Event(
        "start", strategy.name, message=f"{strategy.name} on {document.name}",
        data={"document": document.name, "question": question, "model": llm.name},
    ))
    try:
        state = strategy.initial_state(ctx)
        if inspect.isawaitable(state):
            state = await state
        graph = strategy.build().compile()
        final = await graph.ainvoke(
            state, context=ctx, config={"recursion_limit": strategy.max_steps(state)}
        )
    except Exception as exc:  # what the calls before the failure cost rides along with it
        with contextlib.suppress(AttributeError, TypeError):
            exc.__dict__["longweave_usage"] = ctx.usage
        raise
    # A blank answer is flagged whatever the strategy (a plugin's too): it is no answer.
    empty = [] if str(final["answer"]).strip() else ["empty_answer"]
    answer = Answer(
        text=final["answer"],
        strategy=strategy.name,
        model=llm.name,
        citations=final.get("citations", []),
        steps=ctx.steps,
        usage=ctx.usage,
        flags=sorted(set(final.get("flags", [])) | set(empty)),
    )
    wall = time.perf_counter() - started
    on_event(Event(
        "finish", strategy.name, message=answer.usage.line(),
        data={"wall": wall, "usage": answer.usage.model_dump(), "answer": answer.text},
    ))
    return answer


def usage_of(exc: BaseException) -> Usage:
    """What the model calls of a failed `arun` cost before it failed (zero when unknown), so a
    failed batch item or comparison row still reports the calls it paid for."""
    usage = getattr(exc, "__dict__", {}).get("longweave_usage")
    return usage if isinstance(usage, Usage) else Usage()


def check_inputs(document: Document, question: object) -> None:
    """Refuse, before any call, a question that is not text and a document with nothing to read
    (empty or only whitespace), the same way for every strategy."""
    if not isinstance(question, str):
        raise ConfigError(f"the question must be text (a str), not {type(question).__name__}",
                          hint="pass '' to ask for a summary")
    if not document.text.strip():
        raise DocumentError(document.source or document.name,
                            "has no text to read (it is empty or only whitespace)",
                            hint="pass a document with text in it")


def run(
    strategy: Strategy,
    document: Document,
    question: str,
    llm: LLM,
    *,
    on_event: EventSink = ignore,
    artifacts: ArtifactCache | None = None,
) -> Answer:
    """The synchronous form of `arun`, for scripts and the CLI."""
    return run_sync(
        arun(strategy, document, question, llm, on_event=on_event, artifacts=artifacts)
    )
