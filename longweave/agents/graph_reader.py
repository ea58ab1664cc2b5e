"""GraphReader: turn the document into a graph of key elements once, then explore it per question.

Li et al., "GraphReader: Building Graph-based Agent to Enhance Long-Context Abilities of Large
Language Models", 2024, arXiv:2406.14550. Algorithm and defaults: STRATEGIES.md §3. The graph
(facts, nodes, co-occurrence edges, and a vector index over node names) is a per-document
artifact (`ctx.artifacts`): a second question on the same document makes no extraction call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from longweave.agents import graph_reader_prompts as prompts
from longweave.agents.base import RunContext
from longweave.agents.embedding import UsesEmbedder
from longweave.answer import Citation, plural
from longweave.budget import chunk_budget
from longweave.errors import LongweaveWarning, ParseError
from longweave.graphs.build import RawFact, assemble, index_nodes
from longweave.graphs.calls import SIGNATURES
from longweave.graphs.explore import Explorer
from longweave.graphs.paths import PathState
from longweave.graphs.store import GRAPH_FORMAT, KeyGraph, normalize_key
from longweave.llm import model_identity, unquote
from longweave.retrieval.embeddings import Embedder, embedder_identity
from longweave.structured import json_instructions, reask_message, whole_items

__all__ = ["Budgets", "GraphReader"]


@dataclass(frozen=True)
class Budgets:
    """Token budgets from the settings and the model (§3.4), never from the question."""

    window: int
    chunk_tokens: int  # L
    content_tokens: int  # facts, one chunk, or neighbours shown in one step


class ReaderState(TypedDict, total=False):
    graph: KeyGraph
    budgets: Budgets
    plan: str
    starts: list[str]
    paths: list[PathState]
    answer: str
    citations: list[Citation]
    flags: list[str]


class GraphReader(UsesEmbedder):
    """Builds a graph of atomic facts once; per question, explores it and answers from notebooks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "graph-reader"
    summary: ClassVar[str] = "extract a graph of facts once; explore it node by node with notebooks"

    window: int = Field(4096, ge=512)
    """Agent window W in tokens, capped by the model's own (paper: 4k)."""
    chunk_tokens: int = Field(2048, ge=4)
    """Chunk size L, packed at paragraph boundaries (unverified: 2k); smaller when one chunk
    would not fit a step's content budget (§3.4)."""
    max_facts: int = Field(40, ge=1)
    """Most atomic facts per chunk (§3.3 schema, ours)."""
    fact_chars: int = Field(300, ge=16)
    """Bound of one fact (§3.3)."""
    max_keys: int = Field(6, ge=1)
    """Most key elements per fact (§3.3)."""
    key_chars: int = Field(60, ge=4)
    """Bound of one key element (§3.3)."""
    extract_max_new: int = Field(1024, ge=16)
    """Generation cap of an extraction (ours); a reply cut by it keeps its whole facts (see
    keep_cut), or is re-asked when it holds none."""
    merge_threshold: float | None = Field(0.92, gt=0, le=1)
    """Cosine of node-name embeddings at which nodes merge; None turns merging off, as in the
    paper (ours)."""
    embedder: str = "bundled"
    """Node-name embedder: "bundled" (all-MiniLM-L6-v2), "st:<model>" or "openai:<model>"."""
    candidates: int = Field(50, ge=1)
    """Candidate node names prefiltered by vector search for the initial selection (reference
    code)."""
    n_init: int = Field(5, ge=1)
    """N_init, initial nodes kept, one exploration path each (reference code, citing the paper)."""
    select_max: int = Field(12, ge=1)
    """Most scored nodes in the selection reply (ours: 12); the prompt asks for at least 10,
    or as many as are listed if fewer (reference code), and a reply with fewer is kept."""
    neighbor_limit: int = Field(25, ge=1)
    """Neighbours shown, by co-occurrence count (reference code)."""
    max_steps_per_path: int = Field(10, ge=1)
    """Step calls per path (reference code's ITERATION_LIMIT; paper value unverified)."""
    retries: int = Field(2, ge=0)
    """Re-prompts carrying the validator's message after an invalid call; then the path ends
    (§8.3)."""
    keep_cut: bool = True
    """An extraction reply cut at extract_max_new keeps its atomic facts that closed before
    the cut (each validated alone), and a selection cut at select_max_new its scored nodes,
    instead of being re-asked; re-asked only when it holds none (ours)."""
    notebook_chars: int = Field(1500, ge=16)
    """Notebook cap per path; the model rewrites it under the cap at each step (ours, §8.2)."""
    rationale_chars: int = Field(300, ge=8)
    """Bound of a step's rationale (§3.3)."""
    max_chunk_ids: int = Field(5, ge=1)
    """Most chunk ids in one read_chunk (§3.3)."""
    last_actions: int = Field(10, ge=0)
    """Previous actions shown in a step prompt (§8.2)."""
    plan_max_new: int = Field(200, ge=8)
    """Generation cap of the rational plan (§3.3)."""
    select_max_new: int = Field(320, ge=16)
    """Generation cap of the initial selection (ours)."""
    step_max_new: int = Field(640, ge=16)
    """Generation cap of one exploration step (ours); covers the notebook and rationale."""
    analysis_chars: int = Field(1500, ge=8)
    """Bound of the answer's analysis (§3.3)."""
    answer_chars: int = Field(400, ge=8)
    """Bound of the answer (§3.3)."""
    answer_max_new: int = Field(640, ge=16)
    """Generation cap of the final answer (ours)."""
    call_format: Literal["json", "call_string"] = "json"
    """How a step names its function call: a JSON object whose action, ids and names are enums
    of the legal choices (ours, §8.4), or the paper's call string such as `read_chunk([3, 7])`
    under labelled Notebook/Rationale/Action lines, parsed by a strict grammar and then
    validated the same way (faithful mode, §3.3)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of every call (ours; the reference code uses 0.3)."""
    concurrency: int = Field(8, ge=1)
    """Extractions, and paths, run at once (ours)."""
    margin: int = Field(64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""


    # -- budgets ---------------------------------------------------------------------------------

    def budgets(self, ctx: RunContext) -> Budgets:
        """Content per step: W less instructions, question, plan, notebook, actions, output."""
        llm = ctx.llm
        w = min(self.window, llm.context_window)
        step = prompts.step_schema("facts", ("read_chunk", "stop_and_read_neighbor"), (0,), (),
                                   self.notebook_chars, self.rationale_chars, self.max_chunk_ids)
        fixed = llm.count_prompt_tokens(prompts.step_messages("chunk", "", "", [], "", "", ["x"]))
        fixed += llm.count_tokens(json_instructions(step))
        if self.call_format == "call_string":  # the reply form, every signature listed
            fixed = llm.count_prompt_tokens(prompts.call_step_messages(
                "chunk", "", "", [], "", "", list(SIGNATURES), self.notebook_chars))
        # Carried state at its caps (§8.2): plan, notebook (~2 characters a token at worst,
        # ours), the last actions (~15 tokens each), and a tenth of W for the question.
        carried = (self.plan_max_new + self.notebook_chars // 2 + 15 * self.last_actions
                   + w // 10)
        reask = llm.count_prompt_tokens([reask_message("")]) + 48
        content = chunk_budget(w, max_new=self.step_max_new + reask, fixed_tokens=fixed,
                               carried_tokens=carried, margin=self.margin)
        extraction = llm.count_prompt_tokens(prompts.extraction_messages("", self.max_facts))
        extraction += llm.count_tokens(json_instructions(self._extraction_schema()))
        room = chunk_budget(w, max_new=self.extract_max_new, fixed_tokens=extraction,
                            margin=self.margin)
        return Budgets(w, min(self.chunk_tokens, content, room), content)

    def _extraction_schema(self) -> type[BaseModel]:
        return prompts.extraction_schema(self.max_facts, self.fact_chars, self.key_chars,
                                         self.max_keys)

    # -- the graph (per document, cached) -------------------------------------------------------

    def _artifact_key(self, ctx: RunContext, budgets: Budgets) -> tuple[str, dict[str, Any]]:
        settings: dict[str, Any] = {
            "strategy": self.name, "artifact": "graph", "format": GRAPH_FORMAT,
            "prompts": prompts.PROMPT_VERSION, "model": model_identity(ctx.llm),
            "tokenizer": str(getattr(ctx.llm.tokenizer, "name", "")),
            "chunk_tokens": budgets.chunk_tokens, "chunking": "paragraphs",
            "max_facts": self.max_facts, "fact_chars": self.fact_chars,
            "max_keys": self.max_keys, "key_chars": self.key_chars,
            "extract_max_new": self.extract_max_new, "temperature": self.temperature,
            "embedder": embedder_identity(self.get_embedder(ctx)),
            "merge_threshold": self.merge_threshold,
            "keep_cut": self.keep_cut,
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"graph-reader-{ctx.document.id[:16]}-{digest[:20]}", settings

    async def graph(self, ctx: RunContext, budgets: Budgets) -> KeyGraph:
        """The document's graph: loaded from `ctx.artifacts` when built before, else built."""
        key, settings = self._artifact_key(ctx, budgets)
        embedder = self.get_embedder(ctx)

        def read(found: Path) -> KeyGraph:
            graph = KeyGraph.load(found, embedder=embedder.name)
            if graph.doc_id != ctx.document.id or graph.index is None:
                raise ValueError("the graph does not belong to this document")
            return graph

        cached = ctx.artifacts.load(key, read, "the GraphReader graph") if ctx.artifacts else None
        if cached is not None:
            n = cached.graph.number_of_nodes()
            ctx.step("graph", f"reused a graph of {plural(n, 'node')}", cached=True, calls=0,
                     nodes=n, facts=len(cached.facts), chunks=len(cached.spans), key=key)
            return cached
        graph, failed = await self._build(ctx, budgets, settings, embedder)
        if failed == len(graph.spans):
            # Every extraction failed (a broken model or server, not a text without facts): an
            # empty graph kept here would answer every later question on this document (ours).
            warnings.warn(f"the GraphReader graph build failed for every chunk (none of the "
                          f"{failed} extractions was valid after "
                          f"{plural(self.retries + 1, 'attempt')} each); the graph is not "
                          "cached and will be retried on the next question", LongweaveWarning, 2)
        elif ctx.artifacts is not None:
            ctx.artifacts.save(key, graph.save, "the GraphReader graph")
        return graph

    async def _build(self, ctx: RunContext, budgets: Budgets, settings: dict[str, Any],
                     embedder: Embedder) -> tuple[KeyGraph, int]:
        """Build(x) of §3.2: one extraction per chunk, concurrently; then nodes, edges, index.
        Returns the graph and how many chunks' extractions failed (a chunk that validly holds
        no facts has not failed)."""
        chunks = ctx.chunk(budgets.chunk_tokens)  # the chunker cuts at blank lines first
        calls_before = ctx.usage.calls
        gate = asyncio.Semaphore(self.concurrency)
        schema = self._extraction_schema()

        async def extract(i: int, text: str) -> list[RawFact] | None:
            messages = prompts.extraction_messages(text, self.max_facts)
            prompt = messages
            for _ in range(self.retries + 1):
                try:
                    async with gate:
                        reply = await ctx.call("extractor", prompt, max_tokens=self.extract_max_new,
                                               schema=schema, temperature=self.temperature,
                                               index=i, total=len(chunks))
                    if self.keep_cut and reply.finish_reason == "length":
                        # A backend that repaired a cut reply may have kept a cut fact.
                        raise ParseError("the reply was cut off at the token limit; write fewer "
                                         "facts", raw=reply.text)
                    if reply.parsed is None:
                        raise ParseError("the reply held no JSON object", raw=reply.text)
                    facts = reply.parsed.atomic_facts
                except ParseError as exc:
                    facts = whole_items(exc.raw or "", schema, "atomic_facts") if (
                        self.keep_cut) else []
                    if not facts:
                        prompt = [*messages, reask_message(exc)]
                        continue
                    ctx.step("extractor", f"reply cut short: kept its {len(facts)} whole facts",
                             index=i, reason=exc.message[:300])
                return [RawFact(f.fact, tuple(f.key_elements)) for f in facts]
            return None  # this chunk yields no facts; flagged below

        results = await asyncio.gather(*(extract(c.index, c.text) for c in chunks))
        failed = [i for i, r in enumerate(results) if r is None]
        graph, report = assemble(ctx.document.id, [(c.start, c.end) for c in chunks],
                                 [r or [] for r in results], settings)
        merged = await asyncio.to_thread(index_nodes, graph, embedder,
                                         merge_threshold=self.merge_threshold)
        n = graph.graph.number_of_nodes()
        ctx.step("graph", f"built a graph of {plural(n, 'node')}", cached=False,
                 calls=ctx.usage.calls - calls_before, chunks=len(chunks),
                 nodes=graph.graph.number_of_nodes(), edges=graph.graph.number_of_edges(),
                 facts=report.facts, dropped_keys=report.dropped_keys,
                 dropped_facts=report.dropped_facts, merged_nodes=merged,
                 failed_chunks=failed, chunk_tokens=budgets.chunk_tokens)
        return graph, len(failed)

    # -- per question ----------------------------------------------------------------------------

    async def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        budgets = self.budgets(ctx)
        graph = await self.graph(ctx, budgets)
        return {"graph": graph, "budgets": budgets, "flags": []}

    def max_steps(self, state: dict[str, Any]) -> int:
        return 4 + 2  # plan, select, explore (paths loop inside, capped), answer; plus slack

    def build(self) -> StateGraph:
        graph = StateGraph(ReaderState, context_schema=RunContext)
        graph.add_node(self.plan)
        graph.add_node(self.select)
        graph.add_node(self.explore)
        graph.add_node(self.answer)
        graph.add_edge(START, "plan")
        graph.add_edge("plan", "select")
        graph.add_edge("select", "explore")
        graph.add_edge("explore", "answer")
        graph.add_edge("answer", END)
        return graph

    async def plan(self, state: ReaderState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """The rational plan: what to find, before reading (§3.2 line 5)."""
        ctx = runtime.context
        reply = await ctx.call("planner", prompts.plan_messages(ctx.question),
                               max_tokens=self.plan_max_new, temperature=self.temperature)
        text = reply.text.strip()
        ctx.step("planner", text, stage="plan")
        return {"plan": text}

    async def select(self, state: ReaderState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Initial nodes: vector prefilter, then the model's scored choice (§3.2 line 6)."""
        ctx, graph = runtime.context, state["graph"]
        assert graph.index is not None
        if not graph.names:
            ctx.step("planner", "the graph has no nodes", stage="select", starts=[])
            return {"starts": [], "flags": ["empty_graph"]}
        embedder = self.get_embedder(ctx)
        query = f"{ctx.question} {state['plan']}"
        vector = await asyncio.to_thread(embedder.embed, [query])
        hits = graph.index.search(vector, k=self.candidates)
        ranked = [h.record.text or "" for h in hits]
        schema = prompts.selection_schema(self.select_max, self.key_chars)
        messages = prompts.selection_messages(ctx.question, state["plan"], ranked,
                                              self.select_max)
        chosen, prompt, flags = [], messages, []
        for _ in range(self.retries + 1):
            try:
                reply = await ctx.call("planner", prompt, max_tokens=self.select_max_new,
                                       schema=schema, temperature=self.temperature)
                if reply.parsed is None:
                    raise ParseError("the reply held no JSON object", raw=reply.text)
                chosen = list(reply.parsed.nodes)
                break
            except ParseError as exc:
                chosen = whole_items(exc.raw or "", schema, "nodes") if self.keep_cut else []
                if chosen:  # cut at select_max_new: the nodes scored before the cut
                    break
                prompt = [*messages, reask_message(exc)]
        else:
            flags.append("invalid_selection")
        allowed = set(ranked)
        picked: list[str] = []
        for node in sorted(chosen, key=lambda n: -n.score):  # stable: ties keep reply order
            name = normalize_key(node.key)
            if name in allowed and name not in picked:
                picked.append(name)
        valid = len(picked)
        for name in ranked:  # too few valid names: fill from the vector ranking (ours)
            if len(picked) >= self.n_init:
                break
            if name not in picked:
                picked.append(name)
        starts = picked[: self.n_init]
        ctx.step("planner", ", ".join(starts), stage="select", candidates=len(ranked),
                 valid=valid, starts=starts)
        return {"starts": starts, "flags": flags}

    async def explore(self, state: ReaderState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One path per initial node, concurrently (bounded); each with its own notebook."""
        ctx = runtime.context
        explorer = Explorer(self, ctx, state["graph"], state["plan"], state["budgets"])
        gate = asyncio.Semaphore(self.concurrency)

        async def one(p: int, start: str) -> PathState:
            async with gate:
                return await explorer.walk(p, start)

        paths = list(await asyncio.gather(*(one(p, s) for p, s in enumerate(state["starts"]))))
        steps = sum(p.steps for p in paths)
        ctx.step("explorer", f"{len(paths)} paths, {steps} steps", paths=len(paths),
                 steps=steps, attempts=explorer.attempts, invalid=explorer.invalid,
                 invalid_rate=explorer.invalid / explorer.attempts if explorer.attempts else 0.0,
                 ended=[p.ended for p in paths], read=[list(p.read) for p in paths])
        flags = [f for p in paths for f in (["capped"] if p.ended == "capped" else [])
                 + (["invalid_action"] if p.ended == "invalid" else [])]
        return {"paths": paths, "flags": [*state.get("flags", []), *flags, *explorer.flags]}

    async def answer(self, state: ReaderState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """The answer from every path's notebook, labelled by path (§3.2 line 8)."""
        ctx, paths = runtime.context, state["paths"]
        notebooks = [p.notebook for p in paths]
        schema = prompts.answer_schema(self.analysis_chars, self.answer_chars)
        messages = prompts.answer_messages(ctx.question, state["plan"], notebooks)
        prompt, text, flags = messages, None, list(state.get("flags", []))
        for _ in range(self.retries + 1):
            try:
                reply = await ctx.call("answerer", prompt, max_tokens=self.answer_max_new,
                                       schema=schema, temperature=self.temperature)
                if reply.parsed is None:
                    raise ParseError("the reply held no JSON object")
                text = reply.parsed.answer.strip()
                ctx.step("answerer", text, analysis=reply.parsed.analysis)
                break
            except ParseError as exc:
                prompt = [*messages, reask_message(exc)]
        if text is None:  # the structured answer never came: one plain answer (ours)
            reply = await ctx.call("answerer", prompts.fallback_messages(ctx.question, notebooks),
                                   max_tokens=self.answer_max_new, temperature=self.temperature)
            text = unquote(reply.text)
            flags.append("fallback")
            ctx.step("answerer", text, fallback=True)
        citations = _citations(ctx, state["graph"], paths)
        return {"answer": text, "citations": citations,
                "flags": flags + ([] if citations else ["uncited"])}


def _citations(ctx: RunContext, graph: KeyGraph, paths: list[PathState]) -> list[Citation]:
    """Chunks read by any path, plus the chunks of shown facts a notebook kept (§8.8)."""
    chunks = {c for p in paths for c in p.read}
    for p in paths:
        noted = f" {normalize_key(p.notebook)} "
        for fact_id in p.shown_facts:
            fact = graph.facts[fact_id]
            # A fact is in the notebook when its text is, or when all its key elements are (ours).
            if (f" {normalize_key(fact.text)} " in noted
                    or all(f" {k} " in noted for k in fact.keys)):
                chunks.add(fact.chunk)
    text = ctx.document.text
    return [Citation(doc_id=ctx.document.id, start=graph.spans[i][0], end=graph.spans[i][1],
                     text=text[graph.spans[i][0]:graph.spans[i][1]], chunk_index=i,
                     source=ctx.document.source) for i in sorted(chunks)]
