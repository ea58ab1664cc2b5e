"""What a run will cost before it starts: calls, prompt and completion tokens, without a model call.

The document is chunked exactly as the strategy would chunk it (its own `initial_state`, or the
same budget helpers, run against a `PlanningModel` that counts tokens like the real model but
never generates), then each strategy's cost profile (STRATEGIES.md §1.4-§7.4) is applied: prompt
templates are rendered and counted, carried state (notes, notebooks, memories) is counted at the
typical fill of its cap, and completions at a documented fill fraction of each call's max_tokens
(`Assumptions`). Strategies whose calls depend on the model's decisions (LongAgent, GraphReader,
MemWalker's walk, LIGHT's filter) get low and high bounds around the point estimate.

>>> from longweave.testing import ScriptedModel
>>> text = "\\n\\n".join(f"Part {i}. " + "word " * 300 for i in range(6))
>>> est = estimate(text, "chain-of-agents", ScriptedModel(context_window=1024), "Why?",
...                max_new=128)
>>> est.calls, est.n_chunks    # one worker per chunk, then the manager
(7, 6)
>>> round(est.cost(price_in=0.15, price_out=0.60), 5) > 0
True
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from longweave.errors import ParseError
from longweave.sync import run_sync

if TYPE_CHECKING:
    from longweave.agents.base import Strategy
    from longweave.answer import Usage
    from longweave.cache import ArtifactCache
    from longweave.documents import Document
    from longweave.llm import LLM, Completion, Message
    from longweave.tokenizers import Tokenizer

__all__ = [
    "Assumptions",
    "Counts",
    "Estimate",
    "PlanningModel",
    "aestimate",
    "aestimate_many",
    "estimate",
    "estimate_many",
]


class Counts(BaseModel):
    """Calls and tokens: one role's share of an estimate, or a bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(calls=self.calls + other.calls,
                      prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                      completion_tokens=self.completion_tokens + other.completion_tokens)

    def scaled(self, factor: float) -> Counts:
        return Counts(calls=round(self.calls * factor),
                      prompt_tokens=round(self.prompt_tokens * factor),
                      completion_tokens=round(self.completion_tokens * factor))

    @classmethod
    def each(cls, calls: int, prompt: int, completion: int) -> Counts:
        """`calls` calls of `prompt` and `completion` tokens each."""
        return cls(calls=calls, prompt_tokens=calls * prompt, completion_tokens=calls * completion)


class Assumptions(BaseModel):
    """What the estimate assumes about replies and decisions it cannot know before the run.

    The defaults are our guesses for an instruction-tuned chat model that stops when it is
    done (not measured); `Assumptions.for_model` gives the measured ones for the bundled model.
    Calibrate from a pilot run: `Estimate.compare(answer.usage)` gives the ratios, and
    `Estimate.calibrated(pilot_estimate, pilot_usage)` applies them to the rest of a batch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_fill: float = Field(0.5, ge=0, le=1)
    """Share of max_tokens a free-text note or summary fills (CoA's notes, MemWalker's
    summaries, GraphReader's plan); carried notes are counted at the same size."""
    answer_fill: float = Field(0.25, ge=0, le=1)
    """Share of max_tokens a final free-text answer fills."""
    json_fill: float = Field(0.3, ge=0, le=1)
    """Share of max_tokens a structured (JSON) reply fills: decisions, extractions, revisions."""
    rounds: int = Field(1, ge=1)
    """LongAgent: member rounds before the leader answers; at max_rounds or more the leader
    never answers by itself, and the forced final call is made."""
    merge_share: float = Field(0.25, ge=0, le=1)
    """LongAgent: conflict merges per round, as a share of the most possible."""
    path_steps: int = Field(4, ge=1)
    """GraphReader: exploration steps per path (capped by max_steps_per_path)."""
    node_facts: float = Field(4.0, gt=0)
    """GraphReader: facts shown at a path's start node (each at `json_fill` of `fact_chars`)."""
    walk_reverts: int = Field(0, ge=0)
    """MemWalker: decisions beyond the straight descent from the root to one leaf."""
    topk_per_sentence: float = Field(4.0, gt=0)
    """InfiniRetri: top-k tokens per retained sentence. The phrase filter makes the top tokens
    come in runs, and whole sentences are kept (§7.5.3): the cache holds topk / this many
    sentences of the document's mean length, capped by cache_cap."""
    reask_share: float = Field(0.0, ge=0)
    """Re-asks per structured call: a reply that fails validation is asked again (up to the
    strategy's `retries` times; the high bound counts them all)."""
    kept_reask_share: float = Field(0.0, ge=0)
    """Re-asks per structured call of a role that keeps the whole items of a reply cut at its
    cap (`keep_cut`): only a reply with no whole item, or an unparseable one, is asked again."""
    keep_share: float = Field(0.5, ge=0, le=1)
    """LIGHT: share of the filtered scratchpad pieces the filter keeps."""
    schema_in_prompt: bool | None = None
    """Whether schema calls carry the JSON instructions in the prompt; None detects it (the
    local backend and OpenAI-compatible servers in `instructions` mode do)."""


    @classmethod
    def for_model(cls, name: str) -> Assumptions:
        """The fills and decisions measured for the bundled model (`BUNDLED`), else the defaults."""
        return cls(**BUNDLED) if name.lower().startswith(BUNDLED_NAME) else cls()


BUNDLED_NAME = "smollm2-135m"
BUNDLED: dict[str, Any] = {"text_fill": 1.0, "answer_fill": 0.85, "json_fill": 0.5,
                           "rounds": 3, "reask_share": 0.2, "kept_reask_share": 0.05,
                           "path_steps": 1, "merge_share": 0.3}
"""Assumptions fitted to the bundled SmolLM2-135M with benchmarks/estimate.py (CPU, caps of
32-192 tokens): it writes notes and summaries to the cap and answers to most of it, fills half
of a structured reply's cap, needs a re-ask for about 0.2 of its structured replies (0.05 where
cut replies are kept), ends GraphReader paths after one step, and as LongAgent's leader never
answers within the rounds, with 0.3 of the possible conflict merges. The re-ask and merge
shares are the best fit over those runs (in-sample), not a measured rate of any one strategy."""


class Estimate(BaseModel):
    """Expected LLM calls and tokens of a strategy on documents, with bounds, before any call."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    model: str
    documents: int = 1
    """Distinct documents (a sum over questions about one document counts it once)."""
    questions: int = 1
    n_chunks: int = 0
    """Chunks (or windows, units, leaves) the documents split into, as the strategy splits them
    (each distinct document counted once)."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    low: Counts = Field(default_factory=Counts)
    """The fewest calls and tokens the model's decisions and reply lengths allow."""
    high: Counts = Field(default_factory=Counts)
    """The most, with every decision at its worst, every reply at its cap and every structured
    call re-asked the strategy's `retries` times."""
    roles: dict[str, Counts] = Field(default_factory=dict)
    """The point estimate by caller role (worker, manager, extractor, ...)."""
    build: Counts = Field(default_factory=Counts)
    """The part of the point estimate that builds per-document artifacts (tree, graph, memory)."""
    reused: int = 0
    """Documents whose per-document artifacts are already cached: their build is not counted."""
    notes: list[str] = Field(default_factory=list)
    """Assumptions behind the numbers, worth reading before trusting them."""

    @property
    def point(self) -> Counts:
        return Counts(calls=self.calls, prompt_tokens=self.prompt_tokens,
                      completion_tokens=self.completion_tokens)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost(self, price_in: float, price_out: float) -> float:
        """Cost in the price's currency, with prices per million prompt and completion tokens."""
        return (self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6

    def seconds(self, throughput: float, *, decode: float | None = None) -> float:
        """Model time at `throughput` tokens/s for every token (as measured over a whole run:
        tokens / seconds), or prompt tokens at `throughput` and completion tokens at `decode`.
        Model time, not wall time: calls a strategy runs concurrently overlap."""
        if throughput <= 0 or (decode is not None and decode <= 0):
            raise ValueError("throughput must be positive")
        if decode is None:
            return self.tokens / throughput
        return self.prompt_tokens / throughput + self.completion_tokens / decode

    def compare(self, actual: Usage) -> dict[str, float | None]:
        """Estimate / actual for calls, prompt, completion and all tokens (None where 0)."""
        pairs = {"calls": (self.calls, actual.calls),
                 "prompt_tokens": (self.prompt_tokens, actual.prompt_tokens),
                 "completion_tokens": (self.completion_tokens, actual.completion_tokens),
                 "tokens": (self.tokens, actual.prompt_tokens + actual.completion_tokens)}
        return {k: (e / a if a else None) for k, (e, a) in pairs.items()}

    def calibrated(self, pilot: Estimate, actual: Usage) -> Estimate:
        """This estimate corrected by a pilot run: calls, prompt and completion tokens each
        scaled by the pilot's actual / estimated (`pilot` made the same way, before it ran), then
        kept inside the low-high bounds (roles and build scaled alike). For models whose replies
        and decisions `Assumptions` does not know: answer a few questions for real, then estimate
        the rest with this. One factor covers builds and per-question calls alike."""
        keys = ("calls", "prompt_tokens", "completion_tokens")
        # Calls the completion cache answered record no tokens: with any, only calls measure.
        measured = keys if not actual.cache_hits else ("calls",)
        wanted = {k: getattr(self, k) * (getattr(actual, k) / getattr(pilot, k)
                                         if k in measured and getattr(pilot, k)
                                         and getattr(actual, k) else 1.0)
                  for k in keys}
        point = {k: round(min(max(v, getattr(self.low, k)), getattr(self.high, k)))
                 for k, v in wanted.items()}
        f = {k: point[k] / getattr(self, k) if getattr(self, k) else 1.0 for k in keys}

        def scaled(counts: Counts) -> Counts:
            return Counts(**{k: round(getattr(counts, k) * f[k]) for k in keys})

        note = (f"calibrated on a pilot of {pilot.questions} question(s): calls x{f['calls']:.2f}"
                + (f", prompt tokens x{f['prompt_tokens']:.2f}, completion tokens "
                   f"x{f['completion_tokens']:.2f}" if len(measured) == len(keys) else
                   f"; tokens not calibrated: {actual.cache_hits} of the pilot's {actual.calls} "
                   "calls came from the completion cache, which records no tokens (run the "
                   "pilot with --no-cache to measure them)"))
        notes = [n for n in self.notes if "generic guesses" not in n]  # measured now
        return self.model_copy(update={
            **point, "build": scaled(self.build),
            "roles": {role: scaled(c) for role, c in self.roles.items()},
            "notes": [*notes, note]})

    def rows(self, actual: Usage | None = None, *, price_in: float | None = None,
             price_out: float | None = None, throughput: float | None = None) -> list[list[str]]:
        """The estimate as a table (header first), with the actual run beside it when given."""
        head = ["", "estimate", "range"] + (["actual", "est/actual"] if actual else [])
        lines = [("calls", self.calls, self.low.calls, self.high.calls,
                  actual.calls if actual else 0),
                 ("prompt tokens", self.prompt_tokens, self.low.prompt_tokens,
                  self.high.prompt_tokens, actual.prompt_tokens if actual else 0),
                 ("completion tokens", self.completion_tokens, self.low.completion_tokens,
                  self.high.completion_tokens, actual.completion_tokens if actual else 0)]
        rows = [head]
        for label, point, low, high, real in lines:
            row = [label, f"{point:,}", f"{low:,}-{high:,}"]
            if actual:
                row += [f"{real:,}", f"{point / real:.2f}" if real else "-"]
            rows.append(row)
        extra = [""] * (len(head) - 3)
        low, high = self._bound(self.low), self._bound(self.high)
        if price_in is not None and price_out is not None:
            rows.append(["cost", f"{self.cost(price_in, price_out):.4f}",
                         f"{low.cost(price_in, price_out):.4f}-"
                         f"{high.cost(price_in, price_out):.4f}", *extra])
        if throughput:
            rows.append(["model seconds", f"{self.seconds(throughput):,.0f}",
                         f"{low.seconds(throughput):,.0f}-{high.seconds(throughput):,.0f}",
                         *extra])
        return rows

    def _bound(self, counts: Counts) -> Estimate:
        return Estimate(strategy=self.strategy, model=self.model, **counts.model_dump())

    def __add__(self, other: Estimate) -> Estimate:
        def joined(a: str, b: str) -> str:
            return a if a == b else "+".join(dict.fromkeys([*a.split("+"), *b.split("+")]))

        roles = dict(self.roles)
        for role, counts in other.roles.items():
            roles[role] = roles.get(role, Counts()) + counts
        return Estimate(
            strategy=joined(self.strategy, other.strategy), model=joined(self.model, other.model),
            documents=self.documents + other.documents, questions=self.questions + other.questions,
            n_chunks=self.n_chunks + other.n_chunks,
            calls=self.calls + other.calls, prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            low=self.low + other.low, high=self.high + other.high, roles=roles,
            build=self.build + other.build, reused=self.reused + other.reused,
            notes=list(dict.fromkeys([*self.notes, *other.notes])),
        )


class PlanningModel:
    """An `LLM` that counts tokens exactly as the real model does but never generates.

    A call a strategy makes while preparing (PRISM's schema generation) is recorded in
    `requests` as (role, prompt tokens, max_tokens, schema) and refused with a ParseError, which
    strategies treat as an unusable reply and fall back from.
    """

    def __init__(self, model: LLM | None = None, *, tokenizer: Tokenizer | None = None,
                 context_window: int | None = None, schema_in_prompt: bool | None = None) -> None:
        if model is None and tokenizer is None:
            raise ValueError("a model or a tokenizer is needed to count tokens")
        if model is not None:
            self.inner = model  # InfiniRetri finds a local model's attention scorer through it
        self._model = model
        self._tokenizer = tokenizer if tokenizer is not None else model.tokenizer  # type: ignore[union-attr]
        self.name = model.name if model is not None else str(getattr(tokenizer, "name", "tokens"))
        self.context_window = context_window or (model.context_window if model else 8192)
        self.schema_in_prompt = (_adds_instructions(model) if schema_in_prompt is None
                                 else schema_in_prompt)
        self.requests: list[tuple[str, int, int, type[BaseModel] | None]] = []

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def fingerprint(self) -> str:
        """The real model's, so artifact keys match the ones its runs write."""
        from longweave.llm import model_identity

        return model_identity(self._model) if self._model is not None else self.name

    def count_tokens(self, text: str) -> int:
        if self._model is not None:
            return self._model.count_tokens(text)
        return self._tokenizer.count(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        if self._model is not None:
            return self._model.count_prompt_tokens(messages)
        # A bare tokenizer: a typical chat template's role markers, 4 tokens a message.
        return sum(self.count_tokens(m.content) + 4 for m in messages) + 2

    def schema_tokens(self, schema: type[BaseModel] | None,
                      messages: Sequence[Message] = ()) -> int:
        """Prompt tokens the backend adds for a schema call's JSON instructions (none when the
        prompt already holds them, as PRISM's static prefix does)."""
        if schema is None or not self.schema_in_prompt:
            return 0
        from longweave.structured import json_instructions

        instructions = json_instructions(schema)
        if any(instructions in m.content for m in messages):
            return 0
        return self.count_tokens("\n\n" + instructions)

    async def complete(self, messages: Sequence[Message], *, max_tokens: int,
                       temperature: float = 0.0, schema: type[BaseModel] | None = None,
                       role: str = "") -> Completion:
        prompt = self.count_prompt_tokens(messages) + self.schema_tokens(schema, messages)
        self.requests.append((role, prompt, max_tokens, schema))
        raise ParseError("no model is called while estimating", raw="", provider="estimate")


def _adds_instructions(model: LLM | None) -> bool:
    inner = model
    while hasattr(inner, "inner"):  # a CachedLLM around the real backend
        inner = inner.inner
    # Checked through sys.modules: a LocalLLM or OpenAILLM exists only if its module is loaded.
    local = getattr(sys.modules.get("longweave.local_models.backend"), "LocalLLM", None)
    if local is not None and isinstance(inner, local):
        return True
    remote = getattr(sys.modules.get("longweave.openai_backend"), "OpenAILLM", None)
    if remote is not None and isinstance(inner, remote):
        return inner.structured == "instructions" or bool(inner.json_schema_unsupported)
    return False


def _planning_model(model_or_tokenizer: str | LLM | Tokenizer, *,
                   context_window: int | None = None,
                   schema_in_prompt: bool | None = None) -> PlanningModel:
    """A PlanningModel for a model string (resolved lazily: no weights load), an LLM or a
    tokenizer (with `context_window`, default 8192)."""
    if isinstance(model_or_tokenizer, PlanningModel):
        return model_or_tokenizer
    if isinstance(model_or_tokenizer, str):
        from longweave.llm import resolve_model

        model_or_tokenizer = resolve_model(model_or_tokenizer)
    if hasattr(model_or_tokenizer, "complete"):
        return PlanningModel(model_or_tokenizer, context_window=context_window,  # type: ignore[arg-type]
                             schema_in_prompt=schema_in_prompt)
    return PlanningModel(tokenizer=model_or_tokenizer, context_window=context_window,  # type: ignore[arg-type]
                         schema_in_prompt=schema_in_prompt)


async def aestimate(
    document: str | os.PathLike[str] | Document,
    strategy: str | Strategy,
    model_or_tokenizer: str | LLM | Tokenizer,
    question: str = "",
    *,
    assumptions: Assumptions | None = None,
    artifacts: ArtifactCache | None = None,
    cached: bool | None = None,
    built: bool = False,
    context_window: int | None = None,
    **options: Any,
) -> Estimate:
    """The estimate of answering `question` about `document`; `options` configure the strategy.

    `artifacts` is where a run would find per-document artifacts (a cached tree, graph or memory
    is not rebuilt, so its build is not counted); `cached=True` assumes they exist (a later
    question on the same document), False that they do not. `built=True` says an earlier question
    of the same plan builds them: their build is not counted, and not reported as cached either.
    `context_window` applies only to a bare tokenizer.
    """
    from longweave.agents.base import RunContext, get_strategy
    from longweave.api import load_source
    from longweave.estimate_agents import FORMULAS as AGENTS
    from longweave.estimate_formulas import FORMULAS, Tally
    from longweave.runner import check_inputs

    doc = load_source(document)
    check_inputs(doc, question)  # what a run would refuse is not estimated either
    chosen = get_strategy(strategy, **options)
    formulas = {**FORMULAS, **AGENTS}
    formula = formulas.get(chosen.name) or _own_formula(chosen)
    if formula is None:
        from longweave.errors import ConfigError

        raise ConfigError(
            f"no cost formula for strategy {chosen.name!r}",
            hint=f"estimates cover: {', '.join(sorted(formulas))}; a plugin strategy adds its "
                 "own with an `estimate_cost(ctx, tally)` method (docs/strategies/README.md)")
    planner = _planning_model(model_or_tokenizer, context_window=context_window,
                              schema_in_prompt=assumptions.schema_in_prompt if assumptions
                              else None)
    guessed = False
    if assumptions is None:
        assumptions = Assumptions.for_model(planner.name)
        guessed = assumptions == Assumptions()
    ctx = RunContext(planner, doc, question, chosen.name, artifacts=artifacts)  # type: ignore[arg-type]
    tally = Tally(ctx, planner, assumptions, cached, built=built)
    await formula(chosen, ctx, tally)
    if guessed:
        tally.notes.append(f"reply lengths and re-asks of {planner.name} are generic guesses: "
                           "`longweave batch ... --estimate --pilot N` measures them")
    return tally.result(chosen.name, planner.name)


def _own_formula(strategy: Any) -> Callable[[Any, Any, Any], Awaitable[None]] | None:
    """A strategy's own `estimate_cost(ctx, tally)` (a plugin's; it may be a coroutine), as a
    formula; None when it has none."""
    method = getattr(strategy, "estimate_cost", None)
    if not callable(method):
        return None

    async def formula(_strategy: Any, ctx: Any, tally: Any) -> None:
        done = method(ctx, tally)
        if inspect.isawaitable(done):
            await done

    return formula


def estimate(document: str | os.PathLike[str] | Document, strategy: str | Strategy,
             model_or_tokenizer: str | LLM | Tokenizer, question: str = "",
             **kwargs: Any) -> Estimate:
    """The synchronous form of `aestimate` (same arguments)."""
    return run_sync(aestimate(document, strategy, model_or_tokenizer, question, **kwargs))


Item = Any  # a document (path, text or Document), or a (document, question) pair


async def aestimate_many(items: Iterable[Item], strategy: str | Strategy,
                         model_or_tokenizer: str | LLM | Tokenizer, question: str = "",
                         *, cached: bool | None = None, built: bool = False,
                         **kwargs: Any) -> Estimate:
    """The sum over documents, or (document, question) pairs; a document's artifacts are built
    once, so its later questions count only their per-question calls (`built=True`: every
    document's are built by questions outside this plan). A document that cannot be read is
    left out, with a note (a run fails on it too)."""
    from longweave.api import load_source
    from longweave.errors import DocumentError

    planner = _planning_model(model_or_tokenizer, context_window=kwargs.pop("context_window", None))
    total: Estimate | None = None
    chunks: dict[str, int] = {}  # per distinct document
    unread: dict[str, str] = {}
    for item in items:
        source, asked = item if isinstance(item, tuple) else (item, question)
        try:
            doc = load_source(source)
        except DocumentError as exc:
            unread.setdefault(str(source), exc.message)
            continue
        one = await aestimate(doc, strategy, planner, asked, cached=cached,
                              built=built or doc.id in chunks, **kwargs)
        chunks.setdefault(doc.id, one.n_chunks)
        total = one if total is None else total + one
    if total is None:
        name = strategy if isinstance(strategy, str) else strategy.name
        total = Estimate(strategy=name, model=planner.name, documents=0, questions=0)
    else:
        total = total.model_copy(update={"documents": len(chunks),
                                         "n_chunks": sum(chunks.values())})
    if unread:
        first = next(iter(unread.values()))
        total.notes.append(f"{len(unread)} document(s) could not be read and are not counted "
                           f"(their questions will fail in a run too), e.g. {first}")
    return total


def estimate_many(items: Iterable[Item], strategy: str | Strategy,
                  model_or_tokenizer: str | LLM | Tokenizer, question: str = "",
                  **kwargs: Any) -> Estimate:
    """The synchronous form of `aestimate_many`."""
    return run_sync(aestimate_many(items, strategy, model_or_tokenizer, question, **kwargs))
