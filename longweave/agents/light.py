"""LIGHT: episodic retrieval, working memory and a scratchpad of facts, combined under one budget.

Tavakoli et al., "Beyond a Million Tokens: Benchmarking and Enhancing Long-Term Memory in LLMs",
arXiv:2510.27246 (BEAM). Algorithm and defaults: STRATEGIES.md §6. The memory is built once per
document or conversation (two extractions per unit, a sequential scratchpad fold with compression,
an embedding index) and kept in `ctx.artifacts`; a question then costs the filter calls and one
reader call. The memory classes live in `longweave.memory` and know nothing of this strategy.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, ClassVar, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from longweave.agents import light_prompts as prompts
from longweave.agents.base import RunContext
from longweave.agents.embedding import UsesEmbedder
from longweave.agents.light_build import Plan, build_memory, make_plan
from longweave.answer import Citation
from longweave.errors import BudgetExceeded, ConfigError, ParseError
from longweave.llm import unquote
from longweave.memory.episodic import EpisodicMemory
from longweave.memory.scratchpad import Piece
from longweave.memory.working import MemoryUnit, WorkingMemory
from longweave.structured import reask_message, whole_items

__all__ = ["LIGHT"]

COMPLAINT_CHARS = 200
"""A validator's complaint is clipped to this in a re-ask (ours)."""


class LightState(TypedDict, total=False):
    units: list[MemoryUnit]
    memory: EpisodicMemory
    pieces: list[Piece]
    hits: list[MemoryUnit]  # episodic hits, best first
    candidates: list[Piece]  # pieces sent to the filter
    notes: list[Piece]  # pieces the filter kept
    answer: str
    citations: list[Citation]
    flags: Annotated[list[str], operator.add]


class LIGHT(UsesEmbedder):
    """Answers from retrieved units, the most recent units and filtered scratchpad facts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "light"
    summary: ClassVar[str] = "episodic retrieval + recent units + a compressed scratchpad of facts"

    window: int | None = Field(None, ge=256)
    """Window in tokens, capped by the model's own; None is the model's window (ours)."""
    max_new: int = Field(256, ge=1)
    """Generation cap of the reader (ours)."""
    extract_max_new: int = Field(1024, ge=16)
    """Generation cap of each extraction; at least the schema's serialized size for the full
    bounds (ours). A reply cut by it keeps its whole items (see keep_cut), or is re-asked when
    it holds none."""
    unit_tokens: int = Field(512, ge=16)
    """Largest unit: a document's sentence-packed chunk, or a turn pair split above it (ours)."""
    history_tokens: int = Field(25000, ge=0)
    """Preceding context shown to the extractors, newest units first (reference code: ~27,000
    - T(pair) - 2,000), capped by what the window leaves."""
    k: int = Field(5, ge=1)
    """Episodic hits per question (reference code; paper k unverified)."""
    z: int = Field(100, ge=0)
    """Working memory: the last z units (reference code; paper z unverified). 0 disables it."""
    scratch_target: int = Field(14000, ge=32)
    """Compression target; the pad is compressed when it exceeds twice this (reference code),
    capped by the scratchpad's share of the reader budget and by what a compressor call fits."""
    episodic_share: float = Field(0.40, ge=0, le=1)
    """Least share of the reader budget for episodic hits; unused shares go to it (ours)."""
    working_share: float = Field(0.25, ge=0, le=1)
    """Most share of the reader budget for working memory (ours)."""
    scratch_share: float = Field(0.35, ge=0, le=1)
    """Most share of the reader budget for scratchpad pieces (ours)."""
    filter_cap: int = Field(64, ge=1)
    """Most pieces filtered per question, chosen by similarity to the question (ours)."""
    piece_tokens: int = Field(256, ge=16)
    """Largest scratchpad piece (ours; the reference's semantic chunker has no size bound)."""
    split_percentile: float = Field(80.0, gt=0, lt=100)
    """Topic-shift threshold of the scratchpad split (reference code: 80th percentile)."""
    split_buffer: int = Field(1, ge=0)
    """Neighbouring bullets embedded with each one for the split (reference code: 1)."""
    kv_items: int = Field(30, ge=1)
    """Most key/value pairs per unit (§6.3)."""
    fact_items: int = Field(12, ge=1)
    """Most facts per unit (§6.3)."""
    section_items: int = Field(30, ge=1)
    """Most bullets per compressed section (§6.3)."""
    retries: int = Field(2, ge=0)
    """Re-asks after an invalid structured reply, then the fallback (§8.3)."""
    keep_cut: bool = True
    """An extraction reply cut at extract_max_new keeps its items that closed before the cut
    (each validated alone; a cut key/value reply loses its summary) instead of being re-asked;
    re-asked only when it holds none (ours)."""
    concurrency: int = Field(8, ge=1)
    """Extraction and filter calls in flight at once (ours)."""
    embedder: str = "bundled"
    """"bundled" (all-MiniLM-L6-v2, offline), "st:<model or path>" or "openai:<model>" (ours;
    reference code: bge-small-en-v1.5)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of every call (reference code: 0)."""
    margin: int = Field(64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""

    # -- state ---------------------------------------------------------------------------------

    def plan(self, ctx: RunContext) -> Plan:
        return make_plan(self, ctx)

    async def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        if not ctx.question.strip():
            raise ConfigError("light needs a question", hint="ask a question of the memory")
        plan = self.plan(ctx)
        built = await build_memory(self, ctx, plan)
        return {"units": built.units, "memory": built.memory, "pieces": built.pieces,
                "flags": built.flags}

    def max_steps(self, state: dict[str, Any]) -> int:
        return 8  # retrieve, filter, read

    # -- graph ---------------------------------------------------------------------------------

    def build(self) -> StateGraph:
        graph = StateGraph(LightState, context_schema=RunContext)
        graph.add_node(self.retrieve)
        graph.add_node(self.filter)
        graph.add_node(self.read)
        graph.add_edge(START, "retrieve")
        graph.add_edge("retrieve", "filter")
        graph.add_edge("filter", "read")
        graph.add_edge("read", END)
        return graph

    async def retrieve(self, state: LightState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Top-k episodes for the question, and the pieces (at most filter_cap) to filter."""
        import numpy as np

        ctx = runtime.context
        embedder = self.get_embedder(ctx)
        pieces = state["pieces"]
        texts = [ctx.question] + ([p.text for p in pieces] if len(pieces) > self.filter_cap else [])
        vectors = await asyncio.to_thread(embedder.embed, texts)
        hits = state["memory"].search(vectors[0], self.k)
        flags: list[str] = []
        candidates = pieces
        if len(pieces) > self.filter_cap:
            scores = vectors[1:] @ vectors[0]
            keep = sorted(np.argsort(-scores, kind="stable")[: self.filter_cap].tolist())
            candidates = [pieces[i] for i in keep]
            flags.append("capped")
        ctx.step("retrieve", f"{len(hits)} episodes, {len(candidates)} pieces to filter",
                 hits=[{"unit": e.unit.index, "score": round(s, 4)} for e, s in hits],
                 pieces=len(pieces), candidates=len(candidates))
        return {"hits": [e.unit for e, _ in hits], "candidates": candidates, "flags": flags}

    async def filter(self, state: LightState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One filter call per candidate piece, concurrently; invalid verdicts count as yes."""
        ctx = runtime.context
        candidates = state["candidates"]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int, piece: Piece) -> tuple[bool, bool]:
            async with gate:
                verdict = await self.structured(
                    ctx, "filter", prompts.filter_messages(ctx.question, piece.text),
                    prompts.Relevance, 16, index=i, total=len(candidates))
            return (verdict is None or verdict.needed == "yes"), verdict is None

        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(candidates)))
        notes = [p for p, (keep, _) in zip(candidates, results, strict=True) if keep]
        invalid = sum(bad for _, bad in results)
        if candidates:
            ctx.step("filter", f"{len(notes)} of {len(candidates)} pieces kept",
                     kept=len(notes), invalid=invalid)
        return {"notes": notes, "flags": ["filter_invalid"] if invalid else []}

    async def read(self, state: LightState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Fill the reader budget from the three memories, then answer from that context."""
        from longweave.agents.light_fill import fill

        ctx = runtime.context
        filled = fill(self, ctx, state["units"], state["hits"], state["notes"])
        reply = await ctx.call("reader", filled.messages, max_tokens=self.max_new,
                               temperature=self.temperature, stream=True)
        text = unquote(reply.text)
        ctx.step("reader", text, finish_reason=reply.finish_reason, **filled.detail)
        return {"answer": text, "citations": filled.citations(ctx, state["units"]),
                "flags": filled.flags}

    # -- calls ---------------------------------------------------------------------------------

    async def structured(
        self,
        ctx: RunContext,
        role: str,
        messages: list,
        schema: type[BaseModel],
        max_tokens: int,
        *,
        index: int | None = None,
        total: int | None = None,
        keep: str | None = None,
    ) -> Any:
        """A schema-valid reply after at most `retries` re-asks, or None (the caller's fallback).
        With `keep` (a list field) and `keep_cut`, a reply cut at `max_tokens` is answered by
        its whole items in that field (the other fields left at their empty value)."""
        prompt = list(messages)
        window = self.window_for(ctx)
        for attempt in range(self.retries + 1):
            try:
                reply = await ctx.call(role, prompt, max_tokens=max_tokens, schema=schema,
                                       temperature=self.temperature, index=index, total=total)
                if reply.parsed is not None and reply.finish_reason != "length":
                    return reply.parsed
                raw = reply.text if reply.finish_reason == "length" else ""
                problem = "the reply was cut off by the length limit; keep it shorter"
            except ParseError as exc:
                raw, problem = exc.raw or "", exc.message
            except BudgetExceeded:
                return None  # a re-ask that would overflow the window is not made
            whole = whole_items(raw, schema, keep) if keep and self.keep_cut else []
            if whole:
                ctx.step(role, f"reply cut short: kept its {len(whole)} whole {keep}",
                         index=index, reason=problem[:COMPLAINT_CHARS])
                empty = {name: "" for name, f in schema.model_fields.items()
                         if f.annotation is str}
                return schema.model_construct(**{**empty, keep: whole})
            if attempt == self.retries:
                break
            prompt = [*messages, reask_message(problem[:COMPLAINT_CHARS])]
            if ctx.llm.count_prompt_tokens(prompt) + max_tokens > window:
                break
        return None

    def window_for(self, ctx: RunContext) -> int:
        return min(self.window or ctx.llm.context_window, ctx.llm.context_window)


def working_memory(units: list[MemoryUnit], z: int) -> WorkingMemory:
    """The last z units of a stream, as `longweave chat` would hold them after streaming."""
    memory = WorkingMemory(z)
    memory.extend(units)
    return memory
