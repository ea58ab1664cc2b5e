"""The same question through several strategies, on the same document and model.

Strategies run one after another so they share one loaded document, one model (and its
completion cache) and one artifact cache, and so their times are comparable. A strategy that
fails gives a row with its error; the others still run.

>>> from longweave.testing import ScriptedModel
>>> model = ScriptedModel()
>>> model.on("reader", reply="Under the mat.")
>>> rows = compare("The key is under the mat.", "Where is the key?", ["truncate", "nope"],
...                model=model, cache=False)
>>> [(r.strategy, r.text, r.usage.calls, r.error_type) for r in rows]
[('truncate', 'Under the mat.', 1, None), ('nope', None, 0, 'ConfigError')]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from longweave.answer import Citation, Usage
from longweave.errors import ConfigError, LongweaveError
from longweave.events import EventSink, ignore

if TYPE_CHECKING:
    from longweave.documents import Document
    from longweave.llm import LLM

__all__ = ["CompareRow", "acompare", "compare", "resolve_strategies", "split_options"]


class CompareRow(BaseModel):
    """One strategy's result: its answer and what it cost, or its error."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    text: str | None = None
    citations: list[Citation] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    """Wall time of this strategy's run, artifact building included."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The options this strategy ran with (the shared ones it accepts and its own)."""
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def resolve_strategies(names: str | Sequence[str]) -> list[str]:
    """`"a,b"` or `["a", "b"]` as a list; `"all"` is every registered strategy."""
    from longweave.agents.base import available

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    chosen: list[str] = []
    for name in names:
        for n in available() if name == "all" else [name]:
            if n and n not in chosen:
                chosen.append(n)
    if not chosen:
        raise ConfigError("no strategies to compare", hint="pass --strategies a,b or 'all'")
    return chosen


def split_options(
    options: dict[str, Any], strategies: Sequence[str], *, notes: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Each strategy's options, for `compare` and `eval`: `name.key` goes to that strategy
    alone, a bare `key` to every strategy whose settings have it (so `max_new=64` applies where
    it means something); where both set one strategy's key, `name.key` wins. `notes` (when
    given) receives a line for each bare key that some strategies lack.

    An option that no strategy accepts is a `ConfigError`, so a typo does not pass silently.
    """

    def norm(name: str) -> str:  # `--set` turns '-' into '_' in keys
        return name.replace("-", "_")

    fields = {name: _fields(name) for name in strategies}
    per: dict[str, dict[str, Any]] = {name: {} for name in strategies}
    # Bare keys first: `name.key` is the more specific, and wins whatever the order given.
    for key, value in sorted(options.items(), key=lambda item: "." in item[0]):
        target, dot, bare = key.rpartition(".")
        if dot:
            owners = [n for n in strategies if norm(n) == norm(target)]
            if not owners:
                raise ConfigError(f"option {key!r} names a strategy not in this run",
                                  hint=f"strategies: {', '.join(strategies)}")
            for n in owners:
                per[n][bare] = value  # validated by the strategy itself
            continue
        owners = [n for n in strategies if fields[n] is None or key in fields[n]]
        if not owners:
            raise ConfigError(f"no strategy in this run has the option {key!r}",
                              hint="see `longweave strategies NAME` for each one's settings")
        for n in owners:
            per[n][key] = value
        if notes is not None and len(owners) < len(strategies):
            others = ", ".join(n for n in strategies if n not in owners)
            notes.append(f"option {key} does not apply to {others}")
    return per


def _fields(name: str) -> set[str] | None:
    """A strategy's setting names; None for one that cannot list them (not a pydantic model),
    which then gets every option and validates them itself. An unknown or broken strategy has
    none: its own row reports it."""
    from longweave.agents.base import strategy_class

    try:
        cls = strategy_class(name)
    except Exception:
        return set()
    fields = getattr(cls, "model_fields", None)
    return None if fields is None else set(fields)


async def acompare(
    source: str | os.PathLike[str] | Document,
    question: str,
    strategies: str | Sequence[str],
    *,
    model: str | LLM | None = None,
    options: dict[str, Any] | None = None,
    cache: bool = True,
    on_event: EventSink = ignore,
    on_row: Callable[[CompareRow], None] | None = None,
) -> list[CompareRow]:
    """Answer `question` about `source` with each strategy in turn; one row per strategy.

    `options` are split with `split_options`. Failures (an unknown strategy, a bad option, a
    model error) become the row's error; only a bad `source` or model string raises.
    """
    from longweave.agents.base import get_strategy
    from longweave.api import load_source, make_model
    from longweave.cache import ArtifactCache
    from longweave.config import Settings
    from longweave.runner import arun, usage_of

    settings = Settings()
    names = resolve_strategies(strategies)
    per = split_options(options or {}, names)
    document = load_source(source)
    llm = make_model(settings.model if model is None else model, cache=cache, settings=settings)
    artifacts = ArtifactCache(settings.cache_dir / "artifacts")
    rows: list[CompareRow] = []
    for name in names:
        row = CompareRow(strategy=name, options=per[name])
        started = time.perf_counter()
        try:
            strategy = get_strategy(name, **per[name])
            answer = await arun(strategy, document, question, llm,
                                on_event=on_event, artifacts=artifacts)
        except LongweaveError as exc:
            row.error, row.error_type = exc.message, type(exc).__name__
            row.usage = usage_of(exc)  # the calls made before it failed
        except Exception as exc:  # one strategy's bug must not hide the others' answers
            row.error, row.error_type = f"{type(exc).__name__}: {exc}", type(exc).__name__
            row.usage = usage_of(exc)
        else:
            row.text, row.citations, row.flags = answer.text, answer.citations, answer.flags
            row.usage = answer.usage
        row.seconds = time.perf_counter() - started
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def compare(
    source: str | os.PathLike[str] | Document,
    question: str,
    strategies: str | Sequence[str],
    **kwargs: Any,
) -> list[CompareRow]:
    """The synchronous form of `acompare`."""
    from longweave.sync import run_sync

    return run_sync(acompare(source, question, strategies, **kwargs))
