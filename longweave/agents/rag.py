"""The retrieval baseline: embed the chunks once, retrieve the best for the question, answer.

This is the "RAG top-k over the FAISS store" same-window baseline of STRATEGIES.md §8.10: the
passages shown are the top-k chunks by cosine similarity that fit the model's window once the
prompt, the question and the generation cap have their room. The document's chunks and vectors
are a per-document artifact (`longweave.retrieval.index`), so a second question on the same
document embeds only the question. A folder (corpus mode) is searched as one store and its
citations name the file.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, ClassVar, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from longweave.agents.base import RunContext
from longweave.agents.baseline_prompts import passage_block, rag_messages
from longweave.agents.embedding import UsesEmbedder
from longweave.answer import Citation
from longweave.budget import chunk_budget
from longweave.errors import ConfigError, LongweaveError
from longweave.events import Event
from longweave.llm import unquote
from longweave.retrieval.corpus import corpus_parts
from longweave.retrieval.index import (
    DEFAULT_CHUNK_TOKENS,
    DocumentIndex,
    corpus_index,
    document_index,
    embed_counted,
)
from longweave.retrieval.store import Hit, VectorStore

MIN_CHUNK_TOKENS = 16
"""The smallest chunk_tokens rag takes (ours), and so the smallest `longweave index` builds:
an index of smaller chunks could never be reused."""


class Passage(BaseModel):
    """A retrieved chunk: where it lies (in its file, for a corpus) and its text."""

    doc_id: str
    source: str | None
    chunk_index: int
    start: int
    end: int
    text: str
    score: float


class RAGState(TypedDict, total=False):
    store: VectorStore
    passages: list[Passage]
    answer: str
    citations: list[Citation]
    flags: list[str]


class RAG(UsesEmbedder):
    """Retrieve the top-k chunks that fit the window, answer from them, cite them by span."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "rag"
    summary: ClassVar[str] = "baseline: top-k retrieved chunks that fit the window, one answer call"

    k: int | None = Field(default=8, ge=1)
    """Most passages shown (ours); fewer when the window is full. None fills the window (the
    same-window baseline of STRATEGIES.md §8.10)."""
    chunk_tokens: int = Field(default=DEFAULT_CHUNK_TOKENS, ge=MIN_CHUNK_TOKENS)
    """Chunk size in the model's tokens (ours: 256, within all-MiniLM-L6-v2's 256-piece input)."""
    overlap: int = Field(default=0, ge=0)
    """Tokens each chunk repeats from the one before (ours: 0); less than chunk_tokens."""
    embedder: str = "bundled"
    """"bundled" (all-MiniLM-L6-v2, offline), "st:<model or path>" or "openai:<model>"."""
    max_new: int = Field(default=256, ge=1)
    """Generation cap of the answer (ours)."""
    window: int | None = Field(None, ge=256)
    """Window to fill, capped by the model's own; None is the model's window (ours)."""
    margin: int = Field(default=64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""
    order: Literal["score", "document"] = "score"
    """Passages in the prompt best first, or in document order (ours)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of the answer call (ours)."""

    @field_validator("overlap")
    @classmethod
    def _less_than_a_chunk(cls, overlap: int, info: ValidationInfo) -> int:
        """Refused with the other settings, before any work: the chunker cannot move on."""
        chunk_tokens = info.data.get("chunk_tokens")  # absent when it was itself invalid
        if chunk_tokens is not None and overlap >= chunk_tokens:
            raise ValueError(f"must be smaller than chunk_tokens ({chunk_tokens}), "
                             f"got {overlap}")
        return overlap

    # -- state ---------------------------------------------------------------------------------

    async def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        """Load or build the document's index (the per-document artifact)."""
        if not ctx.question.strip():
            raise ConfigError(
                "rag needs a question to retrieve with",
                hint="ask a question, or use chain-of-agents for a summary",
            )
        embedder = self.get_embedder(ctx)
        common = dict(embedder=embedder, tokenizer=ctx.llm.tokenizer,
                      chunk_tokens=self.chunk_tokens, overlap=self.overlap,
                      artifacts=ctx.artifacts)
        if (parts := corpus_parts(ctx.document)) is not None:
            done = iter(range(1, len(parts) + 1))

            def on_file(index: DocumentIndex) -> None:  # progress, file by file
                ctx.emit(Event("progress", self.name, "indexer", next(done), len(parts),
                               f"indexed {index.source}", {"embedded": index.embedded}))

            built = await asyncio.to_thread(
                lambda: corpus_index(ctx.document, on_file=on_file, **common)
            )
            files = {"files": built.files, "files_built": built.files_built}
        else:
            from longweave.retrieval import index as index_module

            batches = iter(range(1, 1 << 62))

            def on_progress(done: int, total: int) -> None:  # a long document takes a while
                # One event per batch, counted in batches (the bar advances one per event).
                ctx.emit(Event("progress", self.name, "indexer", next(batches),
                               math.ceil(total / index_module.EMBED_BATCH),
                               f"embedded {done:,} of {total:,} chunks", {"chunks": done}))

            built = await asyncio.to_thread(
                lambda: document_index(ctx.document, on_progress=on_progress, **common))
            files = {}
        store = built.store
        if len(store) == 0:
            raise LongweaveError(f"{ctx.document.name} has no text to retrieve from")
        verb = "reused" if built.reused else "built"
        ctx.step("index", f"{verb} an index of {len(store)} chunks, {built.embedded} embedded",
                 reused=built.reused, embedded=built.embedded, chunks=len(store),
                 embedder=embedder.name, key=built.key, **files)
        return {"store": store, "flags": []}

    def max_steps(self, state: dict[str, Any]) -> int:
        return 4  # retrieve, read

    # -- graph ---------------------------------------------------------------------------------

    def build(self) -> StateGraph:
        graph = StateGraph(RAGState, context_schema=RunContext)
        graph.add_node(self.retrieve)
        graph.add_node(self.read)
        graph.add_edge(START, "retrieve")
        graph.add_edge("retrieve", "read")
        graph.add_edge("read", END)
        return graph

    def _window(self, ctx: RunContext) -> int:
        return min(self.window or ctx.llm.context_window, ctx.llm.context_window)

    async def retrieve(self, state: RAGState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Embed the question, search, and keep the best hits that fit the passage budget."""
        ctx = runtime.context
        store = state["store"]
        fixed = ctx.llm.count_prompt_tokens(rag_messages([], ctx.question))
        budget = chunk_budget(
            self._window(ctx), max_new=self.max_new, fixed_tokens=fixed, margin=self.margin
        )
        # With no k, fetch enough full-size chunks to fill the budget several times over.
        fetch = self.k or 4 * math.ceil(budget / self.chunk_tokens) + 16
        embedder = self.get_embedder(ctx)
        query, computed = await asyncio.to_thread(embed_counted, embedder, [ctx.question])
        hits = store.search(query[0], k=min(fetch, len(store)))
        labels = _Labeller(ctx)
        kept: list[Passage] = []
        used = 0
        for hit in hits:
            passage = labels.passage(hit)
            cost = ctx.llm.count_tokens(passage_block(len(kept) + 1, passage.text, labels(passage)))
            if used + cost <= budget:  # a chunk that does not fit is skipped, smaller ones may
                kept.append(passage)
                used += cost
            if self.k is not None and len(kept) >= self.k:
                break
        # The budget sums passages counted one by one; check the assembled prompt exactly.
        while kept and not self._fits(ctx, self._ordered(kept), labels):
            kept.pop()
        if not kept:
            raise ConfigError(
                f"no retrieved chunk fits the {budget} tokens left for passages",
                hint="lower chunk_tokens or max_new, or use a model with a larger window",
            )
        ctx.step("retrieve", f"{len(kept)} of {len(hits)} retrieved chunks fit {budget} tokens",
                 query_embedded=computed, retrieved=len(hits), kept=len(kept), budget=budget,
                 hits=[{"chunk": p.chunk_index, "source": p.source, "score": round(p.score, 4)}
                       for p in kept])
        return {"passages": kept}

    def _ordered(self, passages: list[Passage]) -> list[Passage]:
        if self.order == "score":
            return passages
        return sorted(passages, key=lambda p: (p.source or "", p.start))

    def _messages(self, ctx: RunContext, passages: list[Passage], labels: _Labeller) -> list:
        blocks = [passage_block(n, p.text, labels(p)) for n, p in enumerate(passages, 1)]
        return rag_messages(blocks, ctx.question)

    def _fits(self, ctx: RunContext, passages: list[Passage], labels: _Labeller) -> bool:
        prompt = ctx.llm.count_prompt_tokens(self._messages(ctx, passages, labels))
        return prompt + self.max_new <= self._window(ctx)

    async def read(self, state: RAGState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One call answers from the passages; every passage shown is cited, best first."""
        ctx = runtime.context
        passages = state["passages"]
        shown = self._ordered(passages)
        reply = await ctx.call(
            "reader", self._messages(ctx, shown, _Labeller(ctx)), max_tokens=self.max_new,
            temperature=self.temperature, stream=True,
        )
        text = unquote(reply.text)
        ctx.step("reader", text, passages=len(shown), finish_reason=reply.finish_reason)
        citations = [
            Citation(doc_id=p.doc_id, start=p.start, end=p.end, text=p.text,
                     chunk_index=p.chunk_index, source=p.source)
            for p in passages
        ]
        return {"answer": text, "citations": citations, "flags": []}


class _Labeller:
    """Turns hits into passages with their text; names their file when the source is a corpus."""

    def __init__(self, ctx: RunContext) -> None:
        self.document = ctx.document
        parts = corpus_parts(ctx.document) or ()
        self.parts = {p.source: p for p in parts}

    def passage(self, hit: Hit) -> Passage:
        offset = self.parts[hit.source].start if self.parts else 0
        text = self.document.text[offset + hit.start : offset + hit.end]
        return Passage(doc_id=hit.document_id, source=hit.source, chunk_index=hit.chunk_index,
                       start=hit.start, end=hit.end, text=text, score=hit.score)

    def __call__(self, passage: Passage) -> str | None:
        if not self.parts or passage.source is None:
            return None
        root = self.document.source or ""
        name = passage.source
        return name[len(root):].lstrip("/\\") if root and name.startswith(root) else name
