"""Cost formulas of the stream strategies and the baselines, for `longweave.estimate`.

Each applies its strategy's cost profile (STRATEGIES.md §1.4, §5.4, §7.4) to the real chunks.
Every formula chunks the document through the strategy's own code (its `initial_state`, or the
same budget helpers when `initial_state` would build an artifact by calling the model), renders
the strategy's prompt templates with carried state as filler of the estimated size, and counts
them with the model's tokenizer. Per call it records a point estimate and low/high bounds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from longweave.estimate import Assumptions, Counts, Estimate, PlanningModel

if TYPE_CHECKING:
    from pydantic import BaseModel

    from longweave.agents.base import RunContext
    from longweave.llm import Message

__all__ = ["CACHED_NOTE", "FORMULAS", "Tally"]


def filler(tokens: int) -> str:
    """Text of about `tokens` tokens, standing in for carried state of that size."""
    return " ".join(["x"] * max(0, tokens))


def fill(cap: float, share: float) -> int:
    return max(1, round(cap * share))


CACHED_NOTE = "per-document artifact cached: its build is not counted"


class Tally:
    """Collects one estimate: per role a point value and bounds, and notes."""

    def __init__(self, ctx: RunContext, planner: PlanningModel, assumptions: Assumptions,
                 cached: bool | None, *, built: bool = False) -> None:
        self.ctx, self.planner, self.a, self.forced = ctx, planner, assumptions, cached
        self.built = built
        self.first_request = len(planner.requests)
        self.roles: dict[str, Counts] = {}
        self.low, self.high, self.build = Counts(), Counts(), Counts()
        self.notes: list[str] = []
        self.n_chunks, self.reused = 0, 0
        self._tpc: float | None = None

    def prompt(self, messages: Sequence[Message], schema: type[BaseModel] | None = None) -> int:
        """Prompt tokens of `messages` as the backend counts them, schema instructions included."""
        return (self.planner.count_prompt_tokens(messages)
                + self.planner.schema_tokens(schema, messages))

    def tokens(self, text: str) -> int:
        return self.planner.count_tokens(text)

    def chars(self, chars: int) -> int:
        """Tokens of `chars` characters of this document's kind of text."""
        if self._tpc is None:
            sample = self.ctx.document.text[:200_000]
            self._tpc = self.tokens(sample) / max(1, len(sample))
        return math.ceil(chars * self._tpc)

    def add(self, role: str, point: Counts, low: Counts | None = None,
            high: Counts | None = None, *, build: bool = False, retries: int = 0,
            keeps_cut: bool = False) -> None:
        """Record `role`'s calls; `retries` > 0 marks structured calls that are re-asked after
        an invalid reply (`reask_share` of them in the point estimate, all in the high bound).
        `keeps_cut`: a reply cut at its cap keeps its whole items instead of a re-ask (the
        strategy's `keep_cut`), so the point estimate uses `kept_reask_share` instead."""
        low = point if low is None else low
        high = point if high is None else high
        if retries:
            share = self.a.kept_reask_share if keeps_cut else self.a.reask_share
            point = point + point.scaled(share)
            high = high + high.scaled(retries)
        self.roles[role] = self.roles.get(role, Counts()) + point
        self.low += low
        self.high += high
        if build:
            self.build += point

    def cached(self, key: Callable[[], str]) -> bool:
        """Whether the per-document artifact under `key()` exists (or `cached` says so). One
        that an earlier question of the same plan builds exists too, but is not "cached"."""
        if self.built:
            return True
        if self.forced is not None:
            hit = self.forced
        else:
            artifacts = self.ctx.artifacts
            hit = artifacts is not None and artifacts.find(key()) is not None
        self.reused = int(hit)
        if hit:
            self.notes.append(CACHED_NOTE)
        return hit

    def preparation_calls(self) -> None:
        """Calls a strategy attempted while preparing (refused by the planning model)."""
        for role, prompt, max_tokens, schema in self.planner.requests[self.first_request:]:
            share = self.a.json_fill if schema is not None else self.a.text_fill
            self.add(role, Counts.each(1, prompt, fill(max_tokens, share)),
                     high=Counts.each(1, prompt, max_tokens))

    def result(self, strategy: str, model: str) -> Estimate:
        point = Counts()
        for counts in self.roles.values():
            point += counts
        return Estimate(strategy=strategy, model=model, n_chunks=self.n_chunks,
                        **point.model_dump(), low=self.low, high=self.high, roles=self.roles,
                        build=self.build, reused=self.reused,
                        notes=list(dict.fromkeys(self.notes)))


async def initial_state(strategy: Any, ctx: RunContext) -> dict[str, Any]:
    state = strategy.initial_state(ctx)
    return await state if inspect.isawaitable(state) else state


def _sequence(t: Tally, role: str, prompts: list[int], carried: int, cap: int, out: int,
              out_cap: int) -> None:
    """Calls whose prompts are `prompts` plus state carried from the previous call (none for the
    first): carried at `carried` tokens (point), 0 (low) or `cap` (high)."""
    n = len(prompts)
    base = sum(prompts)
    more = max(0, n - 1)
    t.add(role, Counts(calls=n, prompt_tokens=base + more * carried, completion_tokens=n * out),
          Counts(calls=n, prompt_tokens=base, completion_tokens=n),
          Counts(calls=n, prompt_tokens=base + more * cap, completion_tokens=n * out_cap))


# -- the stream strategies -----------------------------------------------------------------------


async def chain_of_agents(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents.chain_of_agents import judge_schema, requested_paths
    from longweave.agents.coa_prompts import (
        judge_messages,
        judge_question,
        manager_messages,
        worker_messages,
    )
    from longweave.answer import plural

    state = await initial_state(s, ctx)
    chunks, orders, q = state["chunks"], state["orders"], ctx.question
    # P = 1, 2 or 5, less the repeated orders the strategy drops (bidir over one chunk, perm5
    # when n! < 5): the orders are the strategy's own, so the count is the run's.
    n, paths = len(chunks), len(orders)
    if paths < requested_paths(s.paths):
        t.notes.append(f"{s.paths} over {plural(n, 'chunk')}: "
                       f"{plural(paths, 'distinct reading order')}, so {plural(paths, 'path')}")
    mode, cite = s.mode(q), s.cites(q)
    cu_cap = s.cu_cap if s.cu_cap is not None else s.max_new
    cu = fill(cu_cap, t.a.text_fill)
    for order in orders:
        prompts = [t.prompt(worker_messages(i, n, "", "" if pos == 0 else ".", q, mode=mode,
                                            cite=cite)) + chunks[i].n_tokens
                   for pos, i in enumerate(order)]
        _sequence(t, "worker", prompts, cu, cu_cap, cu, cu_cap)
    fixed = t.prompt(manager_messages("", q, mode=mode, cite=cite))
    answer = fill(s.max_new, t.a.answer_fill)
    t.add("manager", Counts.each(paths, fixed + cu, answer), Counts.each(paths, fixed, 1),
          Counts.each(paths, fixed + cu_cap, s.max_new))
    if paths > 1 and s.selector == "judge":
        judge = t.prompt(judge_messages(judge_question(q, mode), [filler(answer)] * paths),
                         judge_schema(paths))
        t.add("judge", Counts(), high=Counts.each(1, judge, 256), retries=s.retries)
        t.notes.append("a judge call is counted only in the high bound (the paths' answers tie)")
    t.n_chunks = n


async def prism(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents import prism_prompts as prompts

    state = await initial_state(s, ctx)
    t.preparation_calls()  # memory_schema="generate": one planner call unless cached
    run, chunks, q = state["run"], state["chunks"], ctx.question
    n, plan = len(chunks), run.plan  # the strategy's own plan: `compact` lowers mem_cap
    growth = fill(s.step_max_new, t.a.json_fill)
    sizes, rewrites = _prism_memory(s, n, plan.mem_cap, growth)
    point = low = high = Counts()
    for i, chunk in enumerate(chunks):
        def step(memory: int, i: int = i) -> int:
            part = prompts.memory_part(filler(memory), s.variant)
            return t.prompt(prompts.step_messages(run.prefix, part, i, n, ""), run.batch)

        point += Counts.each(1, step(sizes[i]) + chunk.n_tokens, growth)
        low += Counts.each(1, step(0) + chunk.n_tokens, 1)
        high += Counts.each(1, step(plan.mem_cap if i else 0) + chunk.n_tokens, s.step_max_new)
    t.add("stepper", point, low, high, retries=s.retries, keeps_cut=s.keep_cut)
    query = bool(q.strip()) and s.memory_schema != "summary"
    task = s.task.strip() or ("Answer the question about the text." if q.strip()
                              else "Summarize the text.")
    schema = prompts.final_schema(s.answer_chars) if query else None

    def final(tokens: int) -> int:
        return t.prompt(prompts.final_messages(task, q, run.schema, filler(tokens), query=query),
                        schema)

    answer = fill(s.answer_max_new, t.a.json_fill if query else t.a.answer_fill)
    worst = Counts.each(2 if query else 1, final(plan.mem_cap), s.answer_max_new)
    t.add("manager", Counts.each(1, final(sizes[n]), answer), Counts.each(1, final(0), 1), worst)
    t.notes.append("memory grows by one step's reply per chunk, up to mem_cap")
    if s.overflow == "compact":
        _prism_rewrites(s, q, t, run.schema, n, plan.mem_cap, rewrites)
    t.n_chunks = n


def _prism_memory(s: Any, n: int, cap: int,
                  growth: int) -> tuple[list[int], list[tuple[int, int]]]:
    """PRISM's memory before each of n steps and after the last, growing by `growth` per step up
    to `cap`; under `compact`, the rewrites the strategy's rule (`prism_compact.due`) makes of
    that growth, each assumed to leave the memory at the size it asks, compact_target x cap.
    Returns (n + 1 sizes, (memory, revisions over the cap) shown to each rewrite)."""
    from functools import partial

    from longweave.agents.prism_compact import due

    sizes, rewrites, memory = [0], [], 0
    for i in range(n):
        grown = memory + growth
        memory = min(cap, grown)
        held = grown > cap  # revisions rejected at mem_cap
        if len(rewrites) < s.max_compactions and due(s, held, i, n, partial(int, memory), cap):
            rewrites.append((memory, min(grown - cap, s.step_max_new) if held else 0))
            memory = int(s.compact_target * cap)
        sizes.append(memory)
    return sizes, rewrites


def _prism_rewrites(s: Any, q: str, t: Tally, schema: Any, n: int, cap: int,
                    rewrites: list[tuple[int, int]]) -> None:
    """PRISM's `compressor` calls: those of the growth model in the point estimate; in the high
    bound, one per step up to max_compactions, each re-asked `retries` times, showing the memory
    at `cap` and one step reply of revisions that did not fit, answered at `cap` tokens."""
    from longweave.agents.prism_compact import (
        COMPLAINT_CHARS,
        ITEMS_CEILING,
        UNBOUNDED_CHARS,
        rewrite_request,
    )
    from longweave.answer import plural
    from longweave.structured import reask_message

    def rewrite(memory: int, pending: int, chars: int) -> tuple[list[Message], type[BaseModel]]:
        # The list bound shown (ITEMS_CEILING) is the most digits the real request can show.
        return rewrite_request(s, q, schema, filler(memory), [filler(pending)] if pending else [],
                               chars, ITEMS_CEILING)

    target = int(s.compact_target * cap)
    point = Counts()
    for memory, pending in rewrites:  # the size asked, in characters, as the strategy reckons
        chars = max(1, len(filler(memory)) * target // max(memory, 1))
        point += Counts.each(1, t.prompt(*rewrite(memory, pending, chars)), max(1, target))
    calls = min(s.max_compactions, n)
    messages, reply = rewrite(cap, s.step_max_new, UNBOUNDED_CHARS)
    first = t.prompt(messages, reply)
    # A re-ask adds a complaint of at most COMPLAINT_CHARS characters: a token each at most.
    again = t.prompt([*messages, reask_message(filler(COMPLAINT_CHARS))], reply)
    t.add("compressor", point, Counts(), Counts.each(calls, first, cap), retries=s.retries)
    complaints = Counts(prompt_tokens=calls * s.retries * (again - first))
    t.add("compressor", Counts(), Counts(), complaints)  # the high bound's re-asks only
    t.notes.append(f"compact: {plural(len(rewrites), 'rewrite')} of the memory assumed, each "
                   f"leaving it at compact_target x mem_cap; up to {calls * (s.retries + 1)} "
                   "rewrite calls in the high bound")


async def infini_retri(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents.infini_retri_prompts import SUMMARY_TASK, reader_messages

    state = await initial_state(s, ctx)
    sentences, windows, template = state["sentences"], state["windows"], state["template"]
    cap = None if s.faithful else (s.cache_cap if s.cache_cap is not None else 2 * s.window)
    mean = sum(len(x.ids) for x in sentences) / len(sentences)
    settled = round(min(s.topk / t.a.topk_per_sentence, len(sentences)) * mean)
    settled = min(cap, settled) if cap is not None else settled  # rescore: the cache's size

    def held(n: int) -> int:
        """The cache before window n; under sticky retention it only grows, up to the cap."""
        return min(cap, n * settled) if s.retention == "sticky" and cap is not None else settled

    point = low = high = Counts()
    seen = 0
    for n, w in enumerate(windows):
        size = template.tokens + sum(len(sentences[i].ids) for i in w)
        point += Counts.each(1, size + min(held(n), seen), 0)
        low += Counts.each(1, size, 0)
        high += Counts.each(1, size + (min(cap, seen) if cap is not None else seen), 0)
        seen += size - template.tokens
    t.add("scorer", point, low, high)
    cache = held(len(windows))
    question = ctx.question.strip() or SUMMARY_TASK
    empty = t.prompt(reader_messages("", question))
    final = min(cache, seen)
    t.add("reader", Counts.each(1, empty + final, fill(s.max_new, t.a.answer_fill)),
          Counts.each(1, empty, 1),
          Counts.each(1, empty + (min(cap, seen) if cap is not None else seen), s.max_new))
    t.notes.append("scoring forwards are calls with prompt tokens only; the sentence cache is "
                   f"assumed {cache} tokens")
    t.n_chunks = len(windows)


# -- the baselines -------------------------------------------------------------------------------


async def truncate(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents.baseline_prompts import truncate_messages

    state = await initial_state(s, ctx)
    shown = "".join(ctx.document.text[a:b] for a, b in state["spans"])
    prompt = t.prompt(truncate_messages(shown, ctx.question))
    t.add("reader", Counts.each(1, prompt, fill(s.max_new, t.a.answer_fill)),
          Counts.each(1, prompt, 1), Counts.each(1, prompt, s.max_new))
    t.n_chunks = 1


async def rag(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents.baseline_prompts import passage_block, rag_messages
    from longweave.budget import chunk_budget
    from longweave.chunking import Chunker
    from longweave.errors import ConfigError
    from longweave.retrieval.corpus import corpus_parts

    if not ctx.question.strip():
        raise ConfigError("rag needs a question to retrieve with",
                          hint="ask a question, or use chain-of-agents for a summary")
    # The index chunks as rag's initial_state does; nothing is embedded for the estimate.
    doc, chunker = ctx.document, Chunker(s.chunk_tokens, s.overlap, ctx.llm.tokenizer)
    texts = [doc.text[p.start:p.end] for p in corpus_parts(doc) or ()] or [doc.text]
    sizes = [c.n_tokens for text in texts for c in chunker.split(text)]
    n = len(sizes)
    window = min(s.window or ctx.llm.context_window, ctx.llm.context_window)
    fixed = t.prompt(rag_messages([], ctx.question))
    budget = chunk_budget(window, max_new=s.max_new, fixed_tokens=fixed, margin=s.margin)
    block = t.tokens(passage_block(n, "", None))
    shown = min(s.k or n, n)
    mean = sum(sizes) / max(1, n)
    passages = min(budget, round(shown * (mean + block)))
    t.add("reader", Counts.each(1, fixed + passages, fill(s.max_new, t.a.answer_fill)),
          Counts.each(1, fixed + min(budget, min(sizes, default=0) + block), 1),
          Counts.each(1, fixed + budget, s.max_new))
    t.notes.append("the index embeds each chunk once, unless it is cached (no LLM calls)")
    t.n_chunks = n


AsyncFormula = Callable[[Any, "RunContext", Tally], Awaitable[None]]

FORMULAS: dict[str, AsyncFormula] = {
    "chain-of-agents": chain_of_agents, "infini-retri": infini_retri, "prism": prism,
    "rag": rag, "truncate": truncate,
}
"""Strategy name -> its cost formula (the agent strategies' are in `estimate_agents`)."""
