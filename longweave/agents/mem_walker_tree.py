"""MemWalker's per-document tree: Build(x) of STRATEGIES.md §4.2 and its cache (§8.6).

Leaves are the document's segments, summarized concurrently; each level above merges runs of at
most K summaries, up to one root. The tree is kept in `ctx.artifacts` under a key of everything
that shaped it, so a second question on the same document reuses it. The walk is in
`longweave.agents.mem_walker`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.agents import mem_walker_prompts as prompts
from longweave.answer import plural
from longweave.errors import LongweaveWarning
from longweave.llm import Message, model_identity, unquote
from longweave.memory.summary_tree import TREE_FORMAT, SummaryTree, TreeNode, balanced_groups

if TYPE_CHECKING:
    from longweave.agents.base import RunContext
    from longweave.agents.mem_walker import MemWalker, Plan

__all__ = ["Summarizer", "artifact_key", "clip", "load_or_build", "summary_words"]


def artifact_key(walker: MemWalker, ctx: RunContext, plan: Plan) -> tuple[str, dict[str, Any]]:
    """The key the tree is cached under, and the settings it is made from."""
    settings: dict[str, Any] = {
        "strategy": walker.name, "artifact": "tree", "format": TREE_FORMAT,
        "prompts": prompts.PROMPT_VERSION, "model": model_identity(ctx.llm),
        "tokenizer": str(getattr(ctx.llm.tokenizer, "name", "")), "window": plan.window,
        "max_children": walker.max_children, "segment_tokens": plan.segment_tokens,
        "summary_cap": plan.summary_cap, "summary_max_new": plan.summary_max_new,
        "temperature": walker.temperature,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"mem-walker-tree-{ctx.document.id[:16]}-{digest[:20]}", settings


async def load_or_build(walker: MemWalker, ctx: RunContext, plan: Plan) -> SummaryTree:
    """The document's tree: loaded from `ctx.artifacts` when built before, else built."""
    key, settings = artifact_key(walker, ctx, plan)

    def read(found: Path) -> SummaryTree:
        tree = SummaryTree.load(found / "tree.json")
        if tree.doc_id != ctx.document.id or not tree.tiles(len(ctx.document.text)):
            raise ValueError("the tree does not fit this document")
        return tree

    cached = ctx.artifacts.load(key, read, "the MemWalker tree") if ctx.artifacts else None
    if cached is not None:
        ctx.step("tree", f"reused a tree of {plural(len(cached.nodes), 'node')}", cached=True,
                 nodes=len(cached.nodes), leaves=len(cached.leaves), depth=cached.depth,
                 key=key)
        return cached
    tree, blank = await _build(walker, ctx, plan, settings)
    if blank:
        # A summary never comes back blank for a text that has one: every summarizer call
        # failed (a broken model or server). The tree holds only each part's opening in
        # place of summaries; kept here, it would serve every later question (ours).
        warnings.warn("the MemWalker tree build failed for every chunk (every summary came "
                      "back blank); the tree is not cached and will be retried on the next "
                      "question", LongweaveWarning, 3)
    elif ctx.artifacts is not None:
        ctx.artifacts.save(key, lambda d: tree.save(d / "tree.json"), "the MemWalker tree")
    return tree


async def _build(walker: MemWalker, ctx: RunContext, plan: Plan,
                 settings: dict[str, Any]) -> tuple[SummaryTree, bool]:
    """Build(x) of §4.2: leaves summarized concurrently, then each level from the one below.
    Returns the tree and whether every summary came back blank (none made counts as not)."""
    chunks = ctx.chunk(plan.segment_tokens)
    calls_before = ctx.usage.calls
    summarize = Summarizer(walker, ctx, plan)
    if len(chunks) == 1:
        summaries = [""]  # a lone leaf is read directly: its summary would never be shown
    else:
        summaries = await summarize.level(
            [prompts.leaf_summary_messages(c.text, summarize.words) for c in chunks],
            [c.text for c in chunks], first_id=0)
    nodes = [
        TreeNode(id=i, level=0, summary=s, start=c.start, end=c.end, chunk_index=i)
        for i, (c, s) in enumerate(zip(chunks, summaries, strict=True))
    ]
    level = list(range(len(nodes)))
    while len(level) > 1:  # levels one after another; log_K(n) of them
        groups = [[level[i] for i in g] for g in balanced_groups(len(level), walker.max_children)]
        parts = [[nodes[c].summary for c in g] for g in groups]
        summaries = await summarize.level(
            [prompts.internal_summary_messages(p, summarize.words) for p in parts],
            ["\n".join(p) for p in parts], first_id=len(nodes))
        base, height = len(nodes), nodes[level[0]].level + 1
        nodes += [
            TreeNode(id=base + j, level=height, summary=s, children=tuple(g),
                     start=nodes[g[0]].start, end=nodes[g[-1]].end)
            for j, (g, s) in enumerate(zip(groups, summaries, strict=True))
        ]
        level = list(range(base, len(nodes)))
    tree = SummaryTree(doc_id=ctx.document.id, nodes=tuple(nodes), root=len(nodes) - 1,
                       settings=settings)
    ctx.step("tree", f"built a tree of {plural(len(nodes), 'node')}", cached=False,
             nodes=len(nodes),
             leaves=len(chunks), depth=tree.depth, calls=ctx.usage.calls - calls_before,
             segment_tokens=plan.segment_tokens, summary_cap=plan.summary_cap,
             blank_summaries=summarize.blank)
    return tree, summarize.calls > 0 and summarize.blank == summarize.calls


class Summarizer:
    """Summarizer calls for one tree build: a level at a time, its nodes concurrently (bounded)."""

    def __init__(self, walker: MemWalker, ctx: RunContext, plan: Plan) -> None:
        self.ctx, self.plan, self.temperature = ctx, plan, walker.temperature
        self.gate = asyncio.Semaphore(walker.concurrency)
        self.words = summary_words(plan.summary_max_new)
        self.calls = self.blank = 0  # summaries made, and those that came back blank

    async def level(self, requests: list[list[Message]], sources: list[str], *,
                    first_id: int) -> list[str]:
        """The summaries of one level, in order (gather keeps order whatever finishes first)."""
        return list(await asyncio.gather(*(
            self.one(messages, source, j, len(requests), first_id + j)
            for j, (messages, source) in enumerate(zip(requests, sources, strict=True))
        )))

    async def one(self, messages: list[Message], source: str, index: int, total: int,
                  node: int) -> str:
        async with self.gate:
            reply = await self.ctx.call(
                "summarizer", messages, max_tokens=self.plan.summary_max_new,
                temperature=self.temperature, index=index, total=total,
            )
        text = unquote(reply.text)
        self.calls += 1
        self.blank += not text
        # A blank summary would hide its part of the text from every walk: keep its opening.
        summary = clip(self.ctx, text or source, self.plan.summary_cap)
        self.ctx.step("summarizer", summary, index=node, blank=not text)
        return summary


def clip(ctx: RunContext, text: str, tokens: int, *, tail: bool = False) -> str:
    """At most `tokens` tokens of `text` by the model's tokenizer, from the start (or the end)."""
    starts = ctx.llm.tokenizer.token_starts(text)
    if len(starts) <= tokens:
        return text
    if tail:
        return text[int(starts[len(starts) - tokens]):].lstrip()
    return text[: int(starts[tokens])].rstrip()


def summary_words(tokens: int) -> int:
    """The word limit a summary prompt states for a cap of `tokens`."""
    # English runs about 0.75 words per token; the word limit only guides the model.
    return max(8, tokens * 3 // 4)
