"""Chain-of-Agents: workers read the chunks in order, each handing a summary on; a manager answers.

Zhang et al., "Chain of Agents: Large Language Models Collaborating on Long-Context Tasks",
NeurIPS 2024, arXiv:2406.02818. Algorithm and defaults: STRATEGIES.md §1.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import random
import re
from collections import Counter
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, TypedDict

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, create_model

from longweave.agents.base import RunContext, repeat_then
from longweave.agents.coa_prompts import (
    Mode,
    judge_messages,
    judge_question,
    manager_messages,
    worker_messages,
)
from longweave.answer import Citation, plural, vote_key
from longweave.budget import chunk_budget
from longweave.chunking import Chunk
from longweave.errors import BudgetExceeded, ConfigError, ParseError
from longweave.llm import unquote
from longweave.structured import reask

_MARKER = re.compile(r"\s*\[c(\d+)\]")
_FENCED = re.compile(r"\A\s*(`{3,})[^`\n]*\n(.*?)\n?[ \t]*\1`*\s*\Z", re.DOTALL)
"""A reply that is one Markdown code block: its fence, then what it holds."""
_REPLY_CHARS = 400
"""How much of a judge's unusable reply, and of the complaint, a re-ask shows."""
MANY_PATHS = 5
"""Paths of `perm5` and `self5` (§1.2), the most the judge chooses among (§8.3)."""


class JudgeChoice(BaseModel):
    """The judge's pick among the paths' answers (multi-path mode)."""

    reason: str = Field(max_length=300)
    index: int = Field(ge=1, le=5)


@lru_cache(maxsize=8)
def judge_schema(paths: int) -> type[JudgeChoice]:
    """JudgeChoice whose index admits only the paths that ran (§1.3: int[1..P]), so a pick of a
    path that does not exist is re-asked rather than read as path 1."""
    return create_model("JudgeChoice", __base__=JudgeChoice, index=(int, Field(ge=1, le=paths)))


class CoAState(TypedDict, total=False):
    chunks: list[Chunk]
    orders: list[list[int]]  # per path, the chunk indices in reading order
    cus: list[str]  # per path, the latest communication unit
    position: int  # how many workers of every path have run
    answers: list[str]  # per path, the manager's answer
    answer: str
    citations: list[Citation]
    flags: Annotated[list[str], operator.add]


class ChainOfAgents(BaseModel):
    """Sequential workers pass a communication unit along the chunks; a manager answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "chain-of-agents"
    summary: ClassVar[str] = "workers read chunks in order passing a summary; a manager answers"

    window: int = Field(8192, ge=256)
    """Agent window k in tokens, capped by the model's own window (paper, 2°: 8k in main runs)."""
    max_new: int = Field(1024, ge=1)
    """Generation cap of the manager (paper: 1024)."""
    cu_cap: int | None = Field(None, ge=1)
    """Generation cap of a worker, i.e. the largest communication unit; None: max_new (ours)."""
    margin: int = Field(64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""
    reserve_cu: bool = True
    """Reserve room for the incoming and outgoing CU in the chunk budget. False is the paper's
    budget B = k - T(I_W) - T(q), allowed only when the model's window has room for both
    (§1.5.2)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of every call, except the chains of `self5` (paper: 0)."""
    paths: Literal["single", "bidir", "perm5", "self5"] = "single"
    """Chains whose answers are voted on: `single` one left to right; `bidir` adds one right to
    left (reference code), unless there is one chunk; `perm5` five, the first in document order
    and four in distinct seeded permutations (all n! orders when n chunks have fewer); `self5`
    five left to right sampled at `self_temperature` (self-consistency). A repeated order at
    temperature 0 would repeat a call and a vote, so only `self5` repeats one; the plan step
    counts the paths dropped as `deduplicated`. The paper's own variants are unverified
    (§1.2)."""
    seed: int = 0
    """Seed of `perm5`'s permutations: one seed and chunk count always give the same orders
    (ours)."""
    self_temperature: float = Field(0.7, gt=0.0, le=2.0)
    """Sampling temperature of every worker and manager of `self5` (ours; the paper's value is
    unverified). Such calls are never served from the completion cache."""
    selector: Literal["vote", "judge"] = "vote"
    """How multi-path answers are chosen: majority vote, with ties going to a judge that sees
    every path's answer (`judge`) or to the first path among the tied answers (`vote`)."""
    task: Literal["auto", "query", "summarize", "code"] = "auto"
    """`auto`: the question prompts, or the non-query (summarize) ones when the question is empty
    (paper); `query` and `summarize` force one of them. `code`: the document is source code and
    the question says what code to write (`Implement load_config`, say), by default the next line
    after the end of the source; workers keep imports, signatures and the code before the
    completion point verbatim and the manager writes only code (ours; the paper's code prompt is
    unverified)."""
    cite: bool = True
    """Workers tag kept statements with [c<i>] so the answer cites chunk spans, and for a
    question put the strongest evidence first, so a CU cut at its cap loses the weakest (ours,
    §1.5.6; the paper has no citations — set False for the faithful prompts). Ignored by
    `task="code"`: a `[c1]` in code is code."""
    retries: int = Field(2, ge=0)
    """Re-asks of a judge reply that fails validation, then path 1's answer (ours, §8.4)."""

    # -- state ---------------------------------------------------------------------------------

    def _k(self, ctx: RunContext) -> int:
        return min(self.window, ctx.llm.context_window)

    def _cu_cap(self) -> int:
        return self.cu_cap if self.cu_cap is not None else self.max_new

    def mode(self, question: str) -> Mode:
        """The prompts this question runs with."""
        if self.task == "auto":
            return "query" if question.strip() else "summarize"
        return self.task

    def cites(self, question: str) -> bool:
        """Whether the prompts ask for [c<i>] tags: a `[c1]` in code is code (an index)."""
        return self.cite and self.mode(question) != "code"

    def _temperature(self) -> float:
        return self.self_temperature if self.paths == "self5" else self.temperature

    def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        mode = self.mode(ctx.question)
        if mode == "query" and not ctx.question.strip():
            raise ConfigError("task='query' needs a question",
                              hint="ask a question, or leave task at 'auto' (or set "
                                   "'summarize') for a summary")
        # Worker 1 of 1: in code mode the longest prompt (it is also the last part).
        fixed = ctx.llm.count_prompt_tokens(
            worker_messages(0, 1, "", "", ctx.question, mode=mode, cite=self.cites(ctx.question))
        )
        k, cu_cap = self._k(ctx), self._cu_cap()
        if self.reserve_cu:
            budget = chunk_budget(
                k, max_new=cu_cap, fixed_tokens=fixed, carried_tokens=cu_cap, margin=self.margin
            )
        else:
            if ctx.llm.context_window < k + 2 * cu_cap:
                raise ConfigError(
                    "reserve_cu=False needs a model window of at least window + 2 * cu_cap",
                    hint="keep reserve_cu=True or lower window",
                )
            budget = chunk_budget(k, max_new=0, fixed_tokens=fixed, margin=self.margin)
        chunks = ctx.chunk(budget)
        orders = reading_orders(self.paths, len(chunks), self.seed)
        dropped = requested_paths(self.paths) - len(orders)
        same = f"; {plural(dropped, 'repeated reading order')} dropped" if dropped else ""
        ctx.step(
            "plan",
            f"{plural(len(chunks), 'chunk')} of <= {budget} tokens{same}",
            chunks=len(chunks),
            budget=budget,
            paths=len(orders),
            deduplicated=dropped,
        )
        return {
            "chunks": chunks,
            "orders": orders,
            "cus": [""] * len(orders),
            "position": 0,
            "flags": [],
        }

    def max_steps(self, state: dict[str, Any]) -> int:
        return len(state["chunks"]) + 5

    # -- graph ---------------------------------------------------------------------------------

    def build(self) -> StateGraph:
        return repeat_then(CoAState, self.work, [self.manage, self.select], over="chunks")

    async def work(self, state: CoAState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One worker of every path, paths concurrently; workers within a path stay in order."""
        ctx, position = runtime.context, state["position"]
        results = await asyncio.gather(
            *(
                self._worker(ctx, state, p, order[position])
                for p, order in enumerate(state["orders"])
            )
        )
        cus = [cu for cu, _ in results]
        flags = [flag for _, flag in results if flag]
        return {"cus": cus, "position": position + 1, "flags": flags}

    async def _worker(self, ctx: RunContext, state: CoAState, path: int, i: int) -> tuple[str, str]:
        chunks, prev, question = state["chunks"], state["cus"][path], ctx.question
        messages = worker_messages(i, len(chunks), chunks[i].text, prev, question,
                                   mode=self.mode(question), cite=self.cites(question))
        reply = await ctx.call(
            "worker",
            messages,
            max_tokens=self._cu_cap(),
            temperature=self._temperature(),
            index=i,
            total=len(chunks),
        )
        cu = unquote(reply.text)
        blank = not cu
        # A blank CU would erase everything read so far: keep the previous one (STRATEGIES §1.5.7).
        ctx.step(
            "worker", cu or prev, index=i, path=path, finish_reason=reply.finish_reason, blank=blank
        )
        return (prev, "blank_cu") if blank else (cu, "")

    async def manage(self, state: CoAState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """The manager of each path answers from that path's last communication unit only."""
        ctx, question = runtime.context, runtime.context.question
        mode, cite = self.mode(question), self.cites(question)

        async def one(path: int, cu: str) -> str:
            messages = manager_messages(cu, question, mode=mode, cite=cite)
            reply = await ctx.call(
                "manager",
                messages,
                max_tokens=self.max_new,
                temperature=self._temperature(),
                index=path,
                stream=len(state["cus"]) == 1,  # several paths' answers would interleave
            )
            answer = unquote(reply.text, indent=mode == "code")
            code = unfence(answer) if mode == "code" else None
            ctx.step("manager", answer if code is None else code, index=path,
                     finish_reason=reply.finish_reason,
                     **({} if code is None else {"unfenced": True}))
            return answer if code is None else code

        answers = await asyncio.gather(*(one(p, cu) for p, cu in enumerate(state["cus"])))
        return {"answers": list(answers)}

    async def select(self, state: CoAState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Pick the answer (vote across paths), then resolve citation markers to chunk spans."""
        ctx, answers = runtime.context, state["answers"]
        chosen, tied = _vote(answers, code=self.mode(ctx.question) == "code")
        flags: list[str] = []
        if tied and self.selector == "judge":
            chosen, flags = await self._judge(ctx, answers)
        if len(answers) > 1:
            ctx.step("select", answers[chosen], index=chosen, candidates=len(answers))
        # The paper's prompts number no chunks, so a stray "[c1]" means nothing (and in code
        # it is an index).
        if not self.cites(ctx.question):
            return {"answer": answers[chosen], "citations": [], "flags": [*flags, "uncited"]}
        text, citations = _resolve_markers(answers[chosen], state["chunks"], ctx)
        flags += [] if citations else ["uncited"]
        return {"answer": text or answers[chosen], "citations": citations, "flags": flags}

    async def _judge(self, ctx: RunContext, answers: list[str]) -> tuple[int, list[str]]:
        """The judge's pick (0-based), re-asked with the complaint at most `retries` times; a
        judge that never validates leaves path 1's answer, flagged (§1.2 line 11, §8.4)."""
        question = judge_question(ctx.question, self.mode(ctx.question))
        messages = judge_messages(question, answers)
        prompt = messages
        for _ in range(self.retries + 1):
            try:
                reply = await ctx.call("judge", prompt, max_tokens=256,
                                       schema=judge_schema(len(answers)))
                if reply.parsed is not None:
                    return reply.parsed.index - 1, []
                complaint, raw = "the reply held no JSON object", reply.text
            except ParseError as exc:
                complaint, raw = exc.message, exc.raw or ""
            except BudgetExceeded:  # the candidates (or the re-ask) leave no room to answer
                break
            # The bad reply and why it failed, so that a re-ask at temperature 0 is not the
            # same prompt again (clipped: a runaway reply must not crowd out the candidates).
            prompt = reask(messages, raw[:_REPLY_CHARS], complaint[:_REPLY_CHARS])
        return 0, ["judge_failed"]


def requested_paths(paths: str) -> int:
    """How many paths a `paths` setting asks for, before identical orders are dropped."""
    return {"single": 1, "bidir": 2}.get(paths, MANY_PATHS)


def reading_orders(paths: str, n: int, seed: int) -> list[list[int]]:
    """Per path, the chunk indices in the order its workers read them (path 1: document order).
    Only `self5` repeats an order: its samples differ, where a repeat at temperature 0 would
    only repeat a vote (one chunk read backwards is the same chunk read forwards)."""
    forward = list(range(n))
    if paths == "bidir":
        return [forward, forward[::-1]] if n > 1 else [forward]
    if paths == "self5":
        return [list(forward) for _ in range(MANY_PATHS)]
    if paths == "perm5":
        return permuted_orders(n, MANY_PATHS, seed)
    return [forward]


def permuted_orders(n: int, paths: int, seed: int) -> list[list[int]]:
    """Document order, then seeded shuffles of it, all distinct: `paths` orders, or all n! of
    them when there are fewer (a repeated order at temperature 0 would only repeat a vote)."""
    if n < paths and math.factorial(n) <= paths:  # every order, document order first
        return [list(order) for order in itertools.permutations(range(n))]
    rng = random.Random(seed)
    orders = [list(range(n))]
    for _ in range(100 * paths):  # a repeat is drawn again; a cap, never reached in practice
        if len(orders) >= paths:
            break
        order = rng.sample(range(n), n)
        if order not in orders:
            orders.append(order)
    return orders


def unfence(answer: str) -> str | None:
    """The code inside a reply that is one Markdown code block (```python ... ```), verbatim,
    indentation included; None for any other reply, which is kept as it is. The manager is
    asked for bare code, but models fence it anyway."""
    match = _FENCED.fullmatch(answer)
    if match is None:
        return None
    fence, code = match.groups()
    if re.search(rf"^[ \t]*{fence}", code, re.MULTILINE):  # a second block, or text between
        return None
    return code


def _normalize(answer: str, *, code: bool = False) -> str:
    """The form answers are compared in: for prose, without case, punctuation, articles and
    [c<i>] markers; for code, only whitespace runs collapsed (`a - b` is not `a + b`, and
    `x[c1]` is an index)."""
    if code:
        return " ".join(answer.split())
    return vote_key(_MARKER.sub("", answer))


def _vote(answers: list[str], *, code: bool = False) -> tuple[int, bool]:
    """The path whose answer most paths gave, and whether that was a tie. On a tie the pick is
    the first path among the tied answers (path 1 when its answer is one of them), never an
    answer fewer paths gave."""
    keys = [_normalize(a, code=code) for a in answers]
    counts = Counter(keys)
    most = max(counts.values())
    tied = sum(1 for n in counts.values() if n == most) > 1
    return next(i for i, key in enumerate(keys) if counts[key] == most), tied


def _resolve_markers(text: str, chunks: list[Chunk], ctx: RunContext) -> tuple[str, list[Citation]]:
    """Strip [c<i>] markers from the answer and turn valid ones into chunk citations."""
    seen: list[int] = []
    for match in _MARKER.finditer(text):
        i = int(match.group(1)) - 1
        if 0 <= i < len(chunks) and i not in seen:
            seen.append(i)
    return _MARKER.sub("", text).strip(), [ctx.cite_chunk(chunks[i]) for i in seen]
