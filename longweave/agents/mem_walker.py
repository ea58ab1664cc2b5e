"""MemWalker: summarize the document into a tree once, then walk it from the root for each question.

Chen, Pasunuru, Weston, Celikyilmaz, "Walking Down the Memory Maze: Beyond Context Limit through
Interactive Reading", 2023, arXiv:2310.05029. Algorithm and defaults: STRATEGIES.md §4.
The tree is a per-document artifact (`ctx.artifacts`, built in `mem_walker_tree`): a second
question on the same document reuses it and pays only for the walk.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from longweave.agents import mem_walker_prompts as prompts
from longweave.agents.base import RunContext
from longweave.agents.mem_walker_tree import (
    Summarizer,
    artifact_key,
    clip,
    load_or_build,
    summary_words,
)
from longweave.answer import Citation
from longweave.budget import chunk_budget
from longweave.choices import Choices, split_choices
from longweave.errors import BudgetExceeded, ParseError
from longweave.llm import Message, unquote
from longweave.memory.summary_tree import SummaryTree, TreeNode
from longweave.structured import json_instructions, reask_message, repair_json

__all__ = ["MemWalker", "Plan"]

MEMORY_SEPARATOR = "\n\n"
"""Between working-memory entries: summaries may hold single line breaks (ours)."""
COMPLAINT_TOKENS = 48
"""A validator's complaint is clipped to this many tokens in the re-ask (ours)."""


@dataclass(frozen=True)
class Plan:
    """Token budgets from the settings and the model (§4.2, §8.2), never from the question."""

    window: int
    wm_cap: int
    question_reserve: int
    summary_cap: int
    summary_max_new: int
    segment_tokens: int
    leaf_fixed: tuple[int, int]
    """The leaf prompt with "." for question, memory and segment, and its reply schema's
    instructions, in tokens: `_question_tokens` measures a question against them."""
    fallback_fixed: tuple[int, int]
    """The same two counts for the fallback prompt."""


class WalkState(TypedDict, total=False):
    tree: SummaryTree
    choices: Choices  # the question's stem and options (none for an ordinary question)
    node: int  # where the walker stands
    stack: list[int]  # ancestors to go back to
    exhausted: list[int]  # nodes that will not be shown or entered again
    memory: list[int]  # internal nodes left on descent, oldest first (working_memory="visited")
    wm_limit: int  # working-memory tokens this question leaves (wm_cap less a long question)
    steps: int
    leaves: int
    last_leaf: int | None
    done: bool  # the whole tree was searched
    overview: bool  # no question: answer with the summary of the whole text
    answer: str
    citations: list[Citation]
    flags: Annotated[list[str], operator.add]


class MemWalker(BaseModel):
    """Summarizes the document into a tree once; per question, walks down to a leaf that answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "mem-walker"
    summary: ClassVar[str] = "summarize the text into a tree; walk down it to the part that answers"

    window: int = Field(4096, ge=256)
    """Window W in tokens, capped by the model's own (unverified: Stable Beluga 2's 4,096)."""
    segment_tokens: int = Field(1000, ge=64)
    """Largest leaf segment (paper, 2°: ~1,000-1,200); smaller when the budget needs it."""
    max_children: int = Field(5, ge=3, le=16)
    """K, the most children of a node (unverified: ablated around 5-8; ours: 5). At least 3, so
    balanced groups never leave a node with one child."""
    working_memory: Literal["visited", "path", "none"] = "visited"
    """`visited`: the summary of every internal node left on descent, append-only, each once
    (§4.2, unverified); `path`: only the ancestors of the current node; `none`: the ablation."""
    wm_share: float = Field(0.25, gt=0, lt=0.6)
    """wm_cap as a share of W; oldest entries are dropped beyond it (ours)."""
    question_share: float = Field(0.1, gt=0, lt=0.5)
    """Tokens reserved for the question, as a share of W (ours). Budgets must not depend on the
    question, or each question would need its own tree; a longer question takes from the WM."""
    nav_max_new: int = Field(320, ge=16)
    """Generation cap of triage and leaf decisions (ours); a reply cut by it counts as invalid."""
    answer_max_new: int = Field(128, ge=8)
    """Generation cap of the fallback answer (ours); a reply cut by it counts as invalid."""
    summary_max_new: int | None = Field(256, ge=8)
    """Generation cap of a summary, at most summary_cap; None means summary_cap (ours: ~190
    words keeps summaries compact and the build affordable on CPU)."""
    reasoning_chars: int = Field(600, ge=16)
    """Bound of the `reasoning` field of decisions (§4.3)."""
    answer_chars: int = Field(300, ge=16)
    """Bound of the free-text `answer` of a leaf decision and of the fallback (§4.3)."""
    choices: Literal["auto", "off"] = "auto"
    """`auto`: a question with lettered option lines (`A. ...`, `(A) ...`, `A) ...`; see
    `longweave.choices`) shows them in the leaf and fallback prompts' options slot, and their
    `answer` must be an option letter (§4.3); `off`: every question is free text (ours)."""
    max_nav_steps: int = Field(20, ge=1)
    """Triage and leaf decisions per question (ours)."""
    max_leaves_read: int = Field(5, ge=1)
    """Leaves read per question (ours)."""
    retries: int = Field(2, ge=0)
    """Re-prompts with the validator's message after an invalid reply; then a decision counts
    as `back` and the fallback keeps the last reply's text, flagged `invalid_answer` (ours)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of every call (ours)."""
    concurrency: int = Field(8, ge=1)
    """Summaries of one tree level made at once (ours)."""
    margin: int = Field(32, ge=0)
    """Tokens kept free for chat-template overhead and re-tokenization (ours)."""

    # -- budgets -------------------------------------------------------------------------------

    def plan(self, ctx: RunContext) -> Plan:
        """Budgets from §4.2: summary_cap = (W - T(instr) - q - wm_cap - out_reserve) / K."""
        llm, k = ctx.llm, self.max_children
        w = min(self.window, llm.context_window)
        wm_cap, q_res = int(w * self.wm_share), int(w * self.question_share)
        nav_out = self.nav_max_new + self._reask_tokens(ctx)
        triage = prompts.triage_messages(".", ".", ["."] * k)
        fixed = llm.count_prompt_tokens(triage) + self._schema_tokens(ctx, self._triage_schema(k))
        room = chunk_budget(w, max_new=nav_out, fixed_tokens=fixed, carried_tokens=wm_cap + q_res,
                            margin=self.margin, min_chunk=16 * k)
        summary_cap = room // k
        summary_max_new = min(self.summary_max_new or summary_cap, summary_cap)
        words = summary_words(summary_max_new)
        internal = llm.count_prompt_tokens(prompts.internal_summary_messages(["."] * k, words))
        if internal + k * summary_cap + summary_max_new + self.margin > w:
            raise BudgetExceeded(internal + k * summary_cap, summary_max_new, w,
                                 hint="lower max_children or wm_share")
        leaf_fixed = (llm.count_prompt_tokens(prompts.leaf_messages(".", ".", ".")),
                      self._schema_tokens(ctx, self._leaf_schema(Choices("."))))
        fallback_fixed = (llm.count_prompt_tokens(prompts.fallback_messages(".", ".", ".")),
                          self._schema_tokens(ctx, self._answer_schema(Choices("."))))
        summarize = llm.count_prompt_tokens(prompts.leaf_summary_messages(".", words))
        carried = wm_cap + q_res
        segment = min(
            self.segment_tokens,
            chunk_budget(w, max_new=nav_out, fixed_tokens=sum(leaf_fixed),
                         carried_tokens=carried, margin=self.margin),
            chunk_budget(w, max_new=self.answer_max_new + self._reask_tokens(ctx),
                         fixed_tokens=sum(fallback_fixed), carried_tokens=carried,
                         margin=self.margin),
            chunk_budget(w, max_new=summary_max_new, fixed_tokens=summarize, margin=self.margin),
        )
        return Plan(w, wm_cap, q_res, summary_cap, summary_max_new, segment, leaf_fixed,
                    fallback_fixed)

    def _triage_schema(self, children: int) -> type[BaseModel]:
        return prompts.triage_schema(children, self.reasoning_chars)

    def _leaf_schema(self, choices: Choices) -> type[BaseModel]:
        return prompts.leaf_action_schema(self.reasoning_chars, self.answer_chars,
                                          choices.letters, choices.multi)

    def _answer_schema(self, choices: Choices) -> type[BaseModel]:
        return prompts.leaf_answer_schema(self.answer_chars, choices.letters, choices.multi)

    def _choices(self, question: str) -> Choices:
        """The question's stem and options as the leaf and fallback prompts show them."""
        return split_choices(question) if self.choices == "auto" else Choices(question)

    def _leaf_request(self, choices: Choices, memory: str,
                      segment: str) -> tuple[list[Message], type[BaseModel]]:
        """A leaf decision's prompt and reply schema (the estimate renders them too)."""
        return (prompts.leaf_messages(choices.stem, memory, segment, choices.options,
                                      choices.multi), self._leaf_schema(choices))

    def _fallback_request(self, choices: Choices, memory: str,
                          segment: str) -> tuple[list[Message], type[BaseModel]]:
        """The fallback's prompt and reply schema (the estimate renders them too)."""
        return (prompts.fallback_messages(choices.stem, memory, segment, choices.options,
                                          choices.multi), self._answer_schema(choices))

    def _question_tokens(self, ctx: RunContext, choices: Choices, plan: Plan) -> int:
        """The question's share of the largest prompt it appears in. With options, the leaf and
        fallback prompts show them in their own slot, in other words and with another schema:
        the difference from the plan's counts (`leaf_fixed`, `fallback_fixed`) counts as
        question, as budgets are planned without it."""
        tokens = ctx.llm.count_tokens(ctx.question)  # triage shows the question as given
        if not choices.options:
            return tokens
        for make, schema, (planned, free) in (
                (prompts.leaf_messages, self._leaf_schema, plan.leaf_fixed),
                (prompts.fallback_messages, self._answer_schema, plan.fallback_fixed)):
            shown = ctx.llm.count_prompt_tokens(
                make(choices.stem, ".", ".", choices.options, choices.multi))
            extra = max(0, self._schema_tokens(ctx, schema(choices)) - free)
            tokens = max(tokens, shown - planned + 1 + extra)  # + 1: the "." plan() counted
        return tokens

    @staticmethod
    def _schema_tokens(ctx: RunContext, schema: type[BaseModel]) -> int:
        # Backends without a native schema format add these instructions to the prompt.
        return ctx.llm.count_tokens("\n\n" + json_instructions(schema)) + 1

    @staticmethod
    def _reask_tokens(ctx: RunContext) -> int:
        return ctx.llm.count_prompt_tokens([reask_message("")]) + COMPLAINT_TOKENS

    # -- the tree (per document, cached: longweave.agents.mem_walker_tree) --------------------

    def _artifact_key(self, ctx: RunContext, plan: Plan) -> tuple[str, dict[str, Any]]:
        # The cache key, for the estimate and `longweave show` (not a public hook yet).
        return artifact_key(self, ctx, plan)

    async def tree(self, ctx: RunContext, plan: Plan) -> SummaryTree:
        """The document's tree: loaded from `ctx.artifacts` when built before, else built."""
        return await load_or_build(self, ctx, plan)

    # -- per question --------------------------------------------------------------------------

    async def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        plan = self.plan(ctx)
        tree = await self.tree(ctx, plan)
        choices = self._choices(ctx.question)
        q_tokens = self._question_tokens(ctx, choices, plan)
        wm_limit = plan.wm_cap - max(0, q_tokens - plan.question_reserve)
        if wm_limit < 0:
            raise BudgetExceeded(q_tokens, 0, plan.question_reserve + plan.wm_cap,
                                 hint="shorten the question or raise question_share")
        return {"tree": tree, "choices": choices, "node": tree.root, "stack": [], "exhausted": [],
                "memory": [], "wm_limit": wm_limit, "steps": 0, "leaves": 0, "last_leaf": None,
                "done": False, "overview": not ctx.question.strip(), "flags": []}

    def max_steps(self, state: dict[str, Any]) -> int:
        return self.max_nav_steps + 3  # each decision is one node visit, plus the fallback

    def build(self) -> StateGraph:
        graph = StateGraph(WalkState, context_schema=RunContext)
        graph.add_node(self.triage)
        graph.add_node(self.read)
        graph.add_node(self.fallback)
        graph.add_node(self.overview)
        routes = ["triage", "read", "fallback", END]
        graph.add_conditional_edges(START, self._start, [*routes, "overview"])
        graph.add_conditional_edges("triage", self._next, routes)
        graph.add_conditional_edges("read", self._next, routes)
        graph.add_edge("fallback", END)
        graph.add_edge("overview", END)
        return graph

    def _start(self, state: WalkState) -> str:
        return "overview" if state["overview"] else self._next(state)

    def _next(self, state: WalkState) -> str:
        if "answer" in state:
            return END
        if (state["done"] or state["steps"] >= self.max_nav_steps
                or state["leaves"] >= self.max_leaves_read):
            return "fallback"
        return "read" if state["tree"].node(state["node"]).is_leaf else "triage"

    async def triage(self, state: WalkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """At an internal node: choose a child by its summary, or go back."""
        ctx, tree, node = runtime.context, state["tree"], state["node"]
        shown = [c for c in tree.node(node).children if c not in state["exhausted"]]
        messages = prompts.triage_messages(
            ctx.question, self._memory(ctx, state), [tree.node(c).summary for c in shown])

        def check(reply: Any) -> str | None:
            if reply.action == "goto" and not (reply.child and 1 <= reply.child <= len(shown)):
                return f'action "goto" needs "child", a number from 1 to {len(shown)}'
            return None

        reply, attempts, _ = await self._decide(ctx, "navigator", messages,
                                                self._triage_schema(len(shown)), check,
                                                max_tokens=self.nav_max_new, index=state["steps"])
        update: dict[str, Any] = {"steps": state["steps"] + 1,
                                  "flags": [] if reply else ["invalid_action"]}
        if reply is not None and reply.action == "goto":
            child = shown[reply.child - 1]  # 1-based in the prompt: converted here, once
            # A node left again after a revert is in the memory already: its summary once.
            seen = node in state["memory"]
            update |= {"node": child, "stack": [*state["stack"], node],
                       "memory": state["memory"] if seen else [*state["memory"], node]}
        else:
            update |= _retreat(tree, node, state)
        ctx.step("navigator", reply.reasoning if reply else "", index=state["steps"], node=node,
                 shown=shown, action=reply.action if reply else "back",
                 child=update["node"] if reply and reply.action == "goto" else None,
                 attempts=attempts)
        return update

    async def read(self, state: WalkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """At a leaf: answer from its raw segment, or go back."""
        ctx, tree, node = runtime.context, state["tree"], state["node"]
        leaf = tree.node(node)
        segment = ctx.document.text[leaf.start:leaf.end]
        choices = state["choices"]
        messages, schema = self._leaf_request(choices, self._memory(ctx, state), segment)

        def check(reply: Any) -> str | None:
            if reply.action == "answer" and not (reply.answer or "").strip():
                return 'action "answer" needs a non-empty "answer"'
            return None

        reply, attempts, _ = await self._decide(ctx, "reader", messages, schema, check,
                                                max_tokens=self.nav_max_new, index=state["steps"])
        update: dict[str, Any] = {"steps": state["steps"] + 1, "leaves": state["leaves"] + 1,
                                  "last_leaf": node, "flags": [] if reply else ["invalid_action"]}
        answered = reply is not None and reply.action == "answer"
        ctx.step("reader", reply.answer if answered else (reply.reasoning if reply else ""),
                 index=state["steps"], node=node, chunk_index=leaf.chunk_index,
                 action="answer" if answered else "back", attempts=attempts)
        if answered:
            return update | {"answer": choices.tidy(reply.answer),
                             "citations": [_cite(ctx, leaf)]}
        return update | _retreat(tree, node, state)

    async def overview(self, state: WalkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """No question: the root's summary is the summary of the whole text (ours)."""
        ctx, tree = runtime.context, state["tree"]
        root = tree.node(tree.root)
        text = root.summary
        if root.is_leaf:  # a one-segment document has no summary yet: make it
            segment = ctx.document.text[root.start:root.end]
            summarize = Summarizer(self, ctx, self.plan(ctx))
            text = await summarize.one(prompts.leaf_summary_messages(segment, summarize.words),
                                       segment, 0, 1, root.id)
        ctx.step("overview", text, node=root.id)
        return {"answer": text, "citations": [_cite(ctx, leaf) for leaf in tree.leaves]}

    async def fallback(self, state: WalkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One answer call from the working memory and the last leaf read (§4.2 line 19, ours)."""
        ctx, tree = runtime.context, state["tree"]
        last = tree.node(state["last_leaf"]) if state["last_leaf"] is not None else None
        if last is not None:
            segment, cited = ctx.document.text[last.start:last.end], [last]
        else:
            # Nothing was read: answer from the root summary, which rests on every leaf (ours).
            segment, cited = tree.node(tree.root).summary, list(tree.leaves)
        choices = state["choices"]
        messages, schema = self._fallback_request(choices, self._memory(ctx, state), segment)

        def check(reply: Any) -> str | None:
            return None if reply.answer.strip() else '"answer" must not be empty'

        reply, attempts, raw = await self._decide(ctx, "reader", messages, schema, check,
                                                  max_tokens=self.answer_max_new)
        # No valid reply: the last one is kept as written, flagged, so a run always answers.
        text = choices.tidy(reply.answer) if reply else _kept_text(raw)
        why = "exhausted" if state["done"] else "capped"
        ctx.step("fallback", text, reason=why, last_leaf=state["last_leaf"], attempts=attempts,
                 valid=reply is not None)
        return {"answer": text, "citations": [_cite(ctx, leaf) for leaf in cited],
                "flags": ["fallback", why] + ([] if last else ["overview"])
                + ([] if reply else ["invalid_answer"])}

    # -- helpers -------------------------------------------------------------------------------

    def _memory(self, ctx: RunContext, state: WalkState) -> str:
        """The working memory: summaries oldest first, dropping the oldest beyond the limit."""
        tree, limit = state["tree"], state["wm_limit"]
        ids = {"visited": state["memory"], "path": state["stack"], "none": []}
        kept: list[str] = []
        for node in reversed(ids[self.working_memory]):
            entry = tree.node(node).summary
            if ctx.llm.count_tokens(MEMORY_SEPARATOR.join([entry, *kept])) > limit:
                if not kept:  # even the newest entry alone is too long: keep its end
                    kept = [clip(ctx, entry, limit, tail=True)] if limit > 0 else []
                break
            kept.insert(0, entry)
        return MEMORY_SEPARATOR.join(kept)

    async def _decide(self, ctx: RunContext, role: str, messages: list[Message],
                      schema: type[BaseModel], check: Callable[[Any], str | None], *,
                      max_tokens: int, index: int | None = None) -> tuple[Any, int, str]:
        """A validated reply, re-asking with the complaint: (reply, attempts, its text), or
        (None, attempts, the last reply's text) when none came."""
        prompt, raw = messages, ""
        for attempt in range(1, self.retries + 2):
            try:
                reply = await ctx.call(role, prompt, max_tokens=max_tokens, schema=schema,
                                       temperature=self.temperature, index=index,
                                       total=None if index is None else self.max_nav_steps)
                parsed, raw = reply.parsed, reply.text
                if reply.finish_reason == "length":
                    problem: str | None = "the reply was cut off at the token limit; be briefer"
                elif parsed is None:
                    problem = "the reply held no JSON object"
                else:
                    problem = check(parsed)
            except ParseError as exc:
                problem, raw = exc.message, exc.raw or ""
            except ValidationError as exc:  # a backend that validates without wrapping
                problem, raw = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}"
                    for e in exc.errors(include_url=False)), ""
            if problem is None:
                return parsed, attempt, raw
            prompt = [*messages, reask_message(clip(ctx, problem, COMPLAINT_TOKENS))]
        return None, self.retries + 1, raw


def _retreat(tree: SummaryTree, node: int, state: WalkState) -> dict[str, Any]:
    """Mark `node` exhausted and climb until a node with something left to try (no model call)."""
    stack, exhausted = list(state["stack"]), [*state["exhausted"], node]
    for _ in range(len(stack) + 1):  # each pass pops one ancestor
        here = tree.node(node)
        left = node not in exhausted and (
            here.is_leaf or any(c not in exhausted for c in here.children))
        if left:
            return {"node": node, "stack": stack, "exhausted": exhausted, "done": False}
        if node not in exhausted:
            exhausted.append(node)
        if not stack:
            break
        node = stack.pop()
    return {"node": node, "stack": stack, "exhausted": exhausted, "done": True}


def _kept_text(raw: str) -> str:
    """The answer of a reply that never validated: its `answer` field when the reply holds one
    (repaired when cut at the token limit), else the whole reply."""
    try:
        value, _ = repair_json(raw)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        return value["answer"].strip()
    return unquote(raw)


def _cite(ctx: RunContext, leaf: TreeNode) -> Citation:
    return Citation(doc_id=ctx.document.id, start=leaf.start, end=leaf.end,
                    text=ctx.document.text[leaf.start:leaf.end], chunk_index=leaf.chunk_index,
                    source=ctx.document.source)
