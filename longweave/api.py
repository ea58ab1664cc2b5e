"""The library calls behind `longweave.ask`: resolve source, model and strategy, then run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.events import EventSink, ignore

if TYPE_CHECKING:
    from longweave.agents.base import Strategy
    from longweave.answer import Answer
    from longweave.config import Settings
    from longweave.documents import Document
    from longweave.llm import LLM
    from longweave.trace import TraceWriter

_DOC_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf", ".text"}
_CONVERSATION_SUFFIXES = {".jsonl", ".json"}


def load_source(
    source: str | os.PathLike[str] | Document,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> Document:
    """A Document from a path, a folder (corpus mode), a Document, or literal text.

    A `str` is read as a path when it names an existing file or looks like one (a single line
    with a document suffix, or one word with a path separator such as '/tmp/x/report'), so a
    mistyped file name fails clearly instead of being answered as text.
    A folder becomes one corpus document of its files matching `include` and not `exclude`
    (see `longweave.retrieval.corpus`).
    """
    from longweave.documents import Document, open_document
    from longweave.errors import ConfigError, DocumentError

    if isinstance(source, Document):
        return source
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(f"a source is a path, a folder, a Document or text, not "
                          f"{type(source).__name__}", hint="pass a path or the text itself")
    if not os.fspath(source).strip():  # Path('') would be the current folder: never read it
        raise DocumentError(repr(os.fspath(source)), "the source is empty",
                            hint="pass a path, a folder, a Document or the text itself")
    include, exclude = _patterns(include), _patterns(exclude)
    if isinstance(source, os.PathLike) or "\n" not in source and len(source) < 1024:
        if os.path.isdir(Path(source).expanduser()):
            from longweave.retrieval.corpus import open_corpus

            return open_corpus(source, include=include, exclude=exclude)
        if Path(source).suffix.lower() in _CONVERSATION_SUFFIXES:
            # A conversation file (turns, LoCoMo or BEAM): rendered one turn per line, with spans.
            from longweave.conversations import load_conversation

            return load_conversation(Path(source)).document(source=str(source))
    if isinstance(source, os.PathLike):
        return open_document(source)
    looks_like_path = (
        "\n" not in source
        and len(source) < 1024
        and (Path(source).suffix.lower() in _DOC_SUFFIXES or os.path.exists(source)
             or _one_word_with_a_separator(source))
    )
    if looks_like_path and "://" in source and not os.path.exists(source):
        raise DocumentError(source, "no such file",
                            hint="longweave reads local files: download the page first")
    return open_document(source) if looks_like_path else Document.from_text(source)


def _patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    """Glob patterns as a list: one pattern passed as a plain string is one pattern, not one
    per character ('*.txt' split into '*', '.', ... would match every file)."""
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _one_word_with_a_separator(text: str) -> bool:
    """'/tmp/x/report' or 'docs\\notes': no whitespace, a path separator; literal text (words,
    sentences, several lines) has whitespace."""
    return bool(text) and not any(c.isspace() for c in text) and ("/" in text or "\\" in text)


def make_model(model: str | LLM, *, cache: bool = True, settings: Settings | None = None) -> LLM:
    """Resolve a model string and put the on-disk completion cache in front of it."""
    from longweave.config import Settings
    from longweave.llm import resolve_model

    settings = settings or Settings()
    llm = resolve_model(model)
    if not (cache and settings.cache):
        return llm
    from longweave.cache import CachedLLM, CompletionCache

    return CachedLLM(llm, CompletionCache(settings.cache_dir / "completions.sqlite",
                                          tag_folder=True))


async def aask(
    source: str | os.PathLike[str] | Document,
    question: str,
    *,
    strategy: str | Strategy | None = None,
    model: str | LLM | None = None,
    cache: bool = True,
    on_event: EventSink = ignore,
    trace: str | os.PathLike[str] | TraceWriter | None = None,
    **options: Any,
) -> Answer:
    """Answer `question` about `source`; `options` configure the strategy (see its settings).

    `trace` appends every model call (prompt, output, usage) and step to a JSONL file (or an
    open `TraceWriter`, shared by concurrent calls); see `longweave.trace`.
    """
    from longweave.agents.base import get_strategy
    from longweave.config import Settings
    from longweave.runner import arun

    settings = Settings()
    document = load_source(source)
    chosen = get_strategy(settings.strategy if strategy is None else strategy, **options)
    llm = make_model(settings.model if model is None else model, cache=cache, settings=settings)
    from longweave.cache import ArtifactCache

    artifacts = ArtifactCache(settings.cache_dir / "artifacts")
    if trace is None:
        return await arun(chosen, document, question, llm, on_event=on_event, artifacts=artifacts)
    from longweave.trace import combine, open_trace

    with open_trace(trace) as writer:
        run = writer.run(strategy=chosen.name, document=document, question=question,
                         model=llm.name)
        return await run.watch(arun(chosen, document, question, llm,
                                    on_event=combine(on_event, run), artifacts=artifacts))


def ask(
    source: str | os.PathLike[str] | Document,
    question: str,
    *,
    strategy: str | Strategy | None = None,
    model: str | LLM | None = None,
    cache: bool = True,
    on_event: EventSink = ignore,
    trace: str | os.PathLike[str] | TraceWriter | None = None,
    **options: Any,
) -> Answer:
    """Answer `question` about `source` (a path, a Document or text) with a long-context strategy.

    `trace="run.jsonl"` writes every step (prompts, outputs, usage) as JSONL.

    >>> from longweave.testing import ScriptedModel
    >>> model = ScriptedModel()
    >>> model.on("worker", reply="Notes: the key is under the mat [c1].")
    >>> model.on("manager", reply="Under the mat [c1].")
    >>> answer = ask("The key is under the mat.", "Where is the key?", model=model, cache=False)
    >>> answer.text, answer.usage.calls, answer.citations[0].text
    ('Under the mat.', 2, 'The key is under the mat.')
    """
    from longweave.sync import run_sync

    return run_sync(
        aask(
            source,
            question,
            strategy=strategy,
            model=model,
            cache=cache,
            on_event=on_event,
            trace=trace,
            **options,
        )
    )
