"""LongAgent: a leader instructs one member per chunk; members who disagree re-read together.

Zhao, Zu et al., "LongAgent: Scaling Language Models to 128k Context through Multi-Agent
Collaboration", EMNLP 2024, arXiv:2402.11550. Algorithm and defaults: STRATEGIES.md §2.
"""

from __future__ import annotations

import asyncio
import math
import operator
import random
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypedDict, TypeVar

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from longweave.agents.base import RunContext
from longweave.agents.long_agent_answers import (
    Cluster,
    cite_cluster,
    cluster_replies,
    copied_span,
    locate,
    rank,
    resolve_conflict,
    supporting_cluster,
)
from longweave.agents.long_agent_prompts import (
    ANSWER_CHARS,
    INSTRUCTION_CHARS,
    QUOTE_CHARS,
    QUOTES,
    SHOWN_IDS,
    FinalAnswer,
    LeaderStart,
    LeaderTurn,
    MemberReply,
    Schemas,
    Shown,
    leader_final_messages,
    leader_next_messages,
    leader_start_messages,
    member_messages,
    merger_messages,
    render_reply,
    schemas,
)
from longweave.answer import Citation, plural
from longweave.budget import MIN_CHUNK_TOKENS, chunk_budget
from longweave.chunking import Chunk, Chunker
from longweave.errors import ParseError
from longweave.llm import Message
from longweave.structured import json_instructions, parse_structured, reask

T = TypeVar("T", bound=BaseModel)
NOT_FOUND = MemberReply(found=False, answer="", evidence=[])


class LongAgentState(TypedDict, total=False):
    chunks: list[Chunk]
    round: int  # rounds of members run so far
    action: str  # the leader's latest action: instruct, answer or failed
    instruction: str
    history: list[list[tuple[str, str]]]  # per member: (instruction, rendered reply) per round
    silent: int  # members of the latest round who found nothing
    clusters: list[Cluster]  # the latest round's clusters, after conflict resolution
    survivors: list[Cluster]  # every round's final clusters, newest round first
    answer: str
    citations: list[Citation]
    flags: Annotated[list[str], operator.add]


class LongAgent(BaseModel):
    """A leader instructs one member per chunk; conflicting members re-answer over both chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "long-agent"
    summary: ClassVar[str] = "a leader instructs one member per chunk; conflicts re-read jointly"

    chunk_size: int = Field(1500, ge=MIN_CHUNK_TOKENS)
    """Largest chunk in tokens (reference code: 1500 cl100k tokens); counted with the model's own
    tokenizer and lowered further when the window cannot hold it with the carried state."""
    alignment: Literal["sentences", "fixed"] = "sentences"
    """`sentences` cuts at paragraph and sentence ends (ours); `fixed` cuts full token windows
    wherever they end (reference code)."""
    window: int | None = Field(None, ge=256)
    """Tokens per call; None uses the model's whole window (ours)."""
    max_rounds: int = Field(3, ge=1)
    """Rounds of leader instruction and member replies R (reference code: 3)."""
    max_new: int = Field(512, ge=1)
    """Generation cap of every call (reference code: 512)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of every call (reference code: 0)."""
    task: str = "Answer a question about a long document."
    """The generic task description members see; never dataset-specific (ours, §2.5.4)."""
    merge_cap: int = Field(32, ge=0)
    """Conflict-resolution calls per round (reference code: 200; ours: 32); 0 disables them."""
    merge_schedule: Literal["reference", "tournament"] = "reference"
    """`reference` settles the two largest clusters one pair at a time; `tournament` (ours)
    pairs all clusters disjointly and settles each level's pairs concurrently."""
    member_pick: Literal["first", "random"] = "first"
    """Which member of a cluster re-reads in a merge: the first chunk (ours) or a seeded random
    member (reference code picks at random)."""
    seed: int = 0
    """Seed of `member_pick="random"` (ours)."""
    similarity: float = Field(0.9, ge=0.0, le=1.0)
    """Answers agree when their SQuAD-normalized forms have a difflib ratio at least this (ours;
    the reference code compares exact substrings)."""
    shown_responses: int = Field(10, ge=1)
    """Clusters shown to the leader and, next round, to members (ours, §8.2)."""
    instruction_chars: int = Field(INSTRUCTION_CHARS, ge=20)
    """Schema bound on a leader instruction or answer (ours, §8.2: 600)."""
    answer_chars: int = Field(ANSWER_CHARS, ge=10)
    """Schema bound on a member's answer and on a shown response (ours, §8.2: 300)."""
    quote_chars: int = Field(QUOTE_CHARS, ge=10)
    """Schema bound on one evidence quote (ours: 200)."""
    max_quotes: int = Field(QUOTES, ge=0)
    """Evidence quotes per member reply, for citations (ours: 3); 0 cites whole chunks."""
    quoted_answers: bool = True
    """A reply with found = false whose answer copies its text word for word, with at least
    `quote_words` words the instruction and task do not hold, counts as found, the copy as its
    evidence (ours). Small models set found = false whatever they read: the bundled 135M model
    did so for every member of examples/harbour_report.md, the one quoting the answer included.
    The reference code keeps every answer that matches none of its "no information" phrases;
    False trusts the flag alone."""
    quote_words: int = Field(3, ge=1)
    """Words of a copied run that are not in the instruction or task, for `quoted_answers` and
    for evidence added to found replies whose own quotes are not in the text (ours)."""
    retries: int = Field(2, ge=0)
    """Re-prompts after a reply that fails validation (reference code: unbounded; ours: 2)."""
    concurrency: int = Field(8, ge=1)
    """Member and merge calls in flight at once (ours)."""
    chars_per_token: float = Field(3.0, gt=0.0)
    """Characters per token assumed when reserving room for carried text (ours). Each prompt is
    still counted exactly; one that does not fit drops the oldest history, then shown answers."""
    margin: int = Field(64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""

    # -- budget and state -------------------------------------------------------------------

    def _schemas(self) -> Schemas:
        return schemas(self.instruction_chars, self.answer_chars, self.quote_chars, self.max_quotes)

    def _k(self, ctx: RunContext) -> int:
        return min(self.window or ctx.llm.context_window, ctx.llm.context_window)

    def _tokens(self, chars: int) -> int:
        return math.ceil(chars / self.chars_per_token)

    def _fits(self, ctx: RunContext, messages: Sequence[Message], schema: type[BaseModel]) -> bool:
        # Backends without schema enforcement append the JSON instructions to the prompt.
        extra = ctx.llm.count_tokens(json_instructions(schema)) + 4
        return ctx.llm.count_prompt_tokens(messages) + extra + self.max_new <= self._k(ctx)

    def _budget(self, ctx: RunContext) -> int:
        """Chunk tokens leaving room for a member's carried state and for two chunks per merge."""
        k, rounds = self._k(ctx), self.max_rounds
        schema = ctx.llm.count_tokens(json_instructions(self._schemas().member)) + 4
        wide = tuple(range(10**5, 10**5 + SHOWN_IDS + 1))  # widest part numbers we list
        shown = [Shown("", wide)] * self.shown_responses if rounds > 1 else []
        history = [("", render_reply(NOT_FOUND))] * (rounds - 1)
        fixed = ctx.llm.count_prompt_tokens(
            member_messages(self.task, "", "", shown=shown, history=history)
        )
        instruction, answer = self.instruction_chars, self.answer_chars
        carried = instruction + (rounds - 1) * (instruction + answer) + len(shown) * answer
        member = chunk_budget(
            k, max_new=self.max_new, fixed_tokens=fixed + schema,
            carried_tokens=self._tokens(carried), margin=self.margin,
        )
        fixed = ctx.llm.count_prompt_tokens(merger_messages(self.task, "", "", ""))
        merge = chunk_budget(
            k, max_new=self.max_new, fixed_tokens=fixed + schema,
            carried_tokens=self._tokens(self.instruction_chars), margin=self.margin,
            min_chunk=2 * MIN_CHUNK_TOKENS,
        ) // 2
        return min(self.chunk_size, member, merge)

    def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        budget = self._budget(ctx)
        if self.alignment == "fixed":
            # min_fill=1 never prefers a boundary over a full window: fixed token windows.
            chunker = Chunker(budget, tokenizer=ctx.llm.tokenizer, min_fill=1.0)
            chunks = chunker.split(ctx.document.text)
        else:
            chunks = ctx.chunk(budget)
        ctx.step("plan", f"{plural(len(chunks), 'member')}, chunks of <= {budget} tokens",
                 chunks=len(chunks), budget=budget, rounds=self.max_rounds)
        return {"chunks": chunks, "round": 0, "action": "", "instruction": "",
                "history": [[] for _ in chunks], "silent": 0, "clusters": [], "survivors": [],
                "flags": []}

    def max_steps(self, state: dict[str, Any]) -> int:
        # start, R x (members, merge, lead), final, cite; plus slack for LangGraph's own step.
        return 3 * self.max_rounds + 8

    # -- graph ------------------------------------------------------------------------------

    def build(self) -> StateGraph:
        graph = StateGraph(LongAgentState, context_schema=RunContext)
        for node in (self.start, self.members, self.merge, self.lead, self.final, self.cite):
            graph.add_node(node)
        graph.add_edge(START, "start")
        graph.add_edge("start", "members")
        graph.add_edge("members", "merge")
        graph.add_edge("merge", "lead")
        graph.add_conditional_edges("lead", self._after_lead, ["members", "final", "cite"])
        graph.add_edge("final", "cite")
        graph.add_edge("cite", END)
        return graph

    def _after_lead(self, state: LongAgentState) -> str:
        if state["action"] == "answer":
            return "cite"
        if state["action"] == "instruct" and state["round"] < self.max_rounds:
            return "members"
        return "final"

    async def start(self, state: LongAgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """The leader reads the task and the question and writes the first instruction."""
        ctx = runtime.context
        messages = leader_start_messages(len(state["chunks"]), self.task, ctx.question)
        turn = await self._ask(ctx, "leader", messages, self._schemas().start, check=_has_text)
        if turn is None:
            # Nothing has been read yet, so there is nothing to answer from: pass the question on.
            text = ctx.question.strip()[: self.instruction_chars] or self.task
            ctx.step("leader", text, round=0, action="instruct", fallback=True)
            return {"instruction": text, "action": "instruct", "flags": ["leader_failed"]}
        ctx.step("leader", turn.text.strip(), round=0, action="instruct")
        return {"instruction": turn.text.strip(), "action": "instruct"}

    async def members(self, state: LongAgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Every member answers the instruction from its own chunk, concurrently (bounded)."""
        ctx, chunks, r = runtime.context, state["chunks"], state["round"] + 1
        instruction = state["instruction"]
        shown = [c.shown(self.answer_chars) for c in state["clusters"][: self.shown_responses]]
        gate, schema = asyncio.Semaphore(self.concurrency), self._schemas().member

        async def one(j: int) -> tuple[MemberReply | None, bool]:
            messages, trimmed = self._fit(
                ctx, schema, shown, state["history"][j],
                lambda s, h: member_messages(self.task, chunks[j].text, instruction,
                                             shown=s, history=h),
            )
            async with gate:
                reply = await self._ask(ctx, "member", messages, schema, index=j,
                                        total=len(chunks))
            return reply, trimmed

        results = await asyncio.gather(*(one(j) for j in range(len(chunks))))
        # Steps are recorded in chunk order, so the trace does not depend on completion order.
        flags, replies, history, copied = [], [], [], []
        for j, (parsed, trimmed) in enumerate(results):
            # A member whose replies never validated counts as having found nothing (§2.5.1).
            flags += ["member_failed"] if parsed is None else []
            flags += ["trimmed"] if trimmed else []
            reply, quoted = self._ground(parsed or NOT_FOUND, [chunks[j].text], instruction)
            flags += ["found_by_quote"] if quoted else []
            copied += [j] if quoted else []
            ctx.step("member", reply.answer if reply.found else "", index=j, round=r,
                     found=reply.found, quoted=quoted, failed=parsed is None)
            replies.append(reply)
            # The member's history holds what it said itself, not what we made of it.
            history.append([*state["history"][j], (instruction, render_reply(parsed or NOT_FOUND))])
        clusters = cluster_replies(replies, self.similarity, copied)
        silent = len(chunks) - sum(len(c.members) for c in clusters)
        return {"round": r, "history": history, "clusters": clusters, "silent": silent,
                "flags": flags}

    async def merge(self, state: LongAgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Conflicting clusters re-answer over their members' combined chunks until one is left."""
        ctx, r, clusters = runtime.context, state["round"], list(state["clusters"])
        rng = random.Random(self.seed * 1000 + r)
        gate, schema = asyncio.Semaphore(self.concurrency), self._schemas().member
        merges, failed, stalled, flags = 0, False, False, []
        # A merge removes at least one cluster, or the round's merging stops (`stalled`), so
        # there are at most |C| - 1 merges per round (§2.6.6).
        while len(clusters) >= 2 and merges < self.merge_cap and not (failed or stalled):
            width = len(clusters) // 2 if self.merge_schedule == "tournament" else 1
            width = min(width, self.merge_cap - merges)
            pairs = [(clusters[2 * i], clusters[2 * i + 1]) for i in range(width)]
            picks = [(self._pick(a, rng), self._pick(b, rng)) for a, b in pairs]

            async def settle(n: int, a: int, b: int) -> MemberReply | None:
                first, second = sorted((a, b))
                chunks = state["chunks"]
                messages = merger_messages(
                    self.task, chunks[first].text, chunks[second].text, state["instruction"]
                )
                async with gate:
                    return await self._ask(ctx, "merger", messages, schema, index=n)

            replies = await asyncio.gather(
                *(settle(merges + i, a, b) for i, (a, b) in enumerate(picks))
            )
            kept = clusters[2 * width :]
            for i, ((a, b), parts, reply) in enumerate(zip(pairs, picks, replies, strict=True)):
                quoted = False
                if reply is None:
                    failed, outcome, survivors = True, "failed", [a, b]
                else:
                    texts = [state["chunks"][p].text for p in sorted(parts)]
                    reply, quoted = self._ground(reply, texts, state["instruction"])
                    survivors, outcome = resolve_conflict(a, b, reply, self.similarity)
                    # Both sides kept (each copied its own part): the same pair would be asked
                    # again and again, so the conflict is left to the leader.
                    stalled = stalled or len(survivors) == 2
                flags += ["found_by_quote"] if quoted else []
                ctx.step("merge", reply.answer if reply else "", index=merges + i, round=r,
                         parts=sorted(parts), outcome=outcome, quoted=quoted)
                kept += survivors
            merges += width
            clusters = rank(kept)
        flags += ["merger_failed"] if failed else []
        if len(clusters) >= 2 and not (failed or stalled):
            flags.append("capped")
        return {"clusters": clusters, "survivors": clusters + state["survivors"], "flags": flags}

    def _ground(
        self, reply: MemberReply, texts: Sequence[str], instruction: str
    ) -> tuple[MemberReply, bool]:
        """The reply with a copied run of `texts` as evidence where it has no located quote,
        found where `quoted_answers` lets the copy override found = false; and whether it did."""
        if not reply.answer.strip() or not (reply.found or self.quoted_answers):
            return reply, False
        if reply.found and any(locate(t, q) for t in texts for q in reply.evidence):
            return reply, False  # its own quotes already narrow the citation
        known = f"{self.task} {instruction}"
        copies = [(c, t) for t in texts if (c := copied_span(reply.answer, t, known))]
        if not copies:
            return reply, False
        (fresh, start, end), text = max(copies, key=lambda ct: ct[0][0])
        if fresh < self.quote_words:
            return reply, False
        # model_copy skips validation: the quote may exceed the schema's bounds, which limit
        # what the model writes, not what we locate.
        evidence = [*reply.evidence, text[start:end]]
        return reply.model_copy(update={"found": True, "evidence": evidence}), not reply.found

    def _pick(self, cluster: Cluster, rng: random.Random) -> int:
        return rng.choice(cluster.members) if self.member_pick == "random" else cluster.members[0]

    async def lead(self, state: LongAgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """The leader reads the shown clusters and answers, or writes a new instruction."""
        ctx = runtime.context
        turn, flags = await self._leader(ctx, state, leader_next_messages, self._schemas().turn)
        if turn is None:
            return {"action": "failed", "flags": [*flags, "leader_failed"]}
        ctx.step("leader", turn.text.strip(), round=state["round"], action=turn.action)
        if turn.action == "answer":
            return {"action": "answer", "answer": turn.text.strip(), "flags": flags}
        return {"action": "instruct", "instruction": turn.text.strip(), "flags": flags}

    async def final(self, state: LongAgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """The round limit is reached (or the leader failed): one call that may only answer."""
        ctx = runtime.context
        reply, flags = await self._leader(ctx, state, leader_final_messages, self._schemas().final)
        flags += ["capped"] if state["action"] == "instruct" else []
        if reply is None:
            clusters = state["clusters"]
            text = clusters[0].answer if clusters else "No answer was found in the document."
            ctx.step("final", text, round=state["round"], fallback=True)
            return {"answer": text, "flags": [*flags, "leader_failed"]}
        ctx.step("final", reply.answer.strip(), round=state["round"])
        return {"answer": reply.answer.strip(), "flags": flags}

    async def _leader(
        self, ctx: RunContext, state: LongAgentState, build: Callable[..., list[Message]],
        schema: type[T],
    ) -> tuple[T | None, list[str]]:
        """A leader turn over the shown clusters, and ["trimmed"] if some had to be left out."""
        shown = [c.shown(self.answer_chars) for c in state["clusters"][: self.shown_responses]]
        conflicts, m = len(state["clusters"]) >= 2, len(state["chunks"])
        messages, trimmed = self._fit(
            ctx, schema, shown, [],
            lambda s, _h: build(m, self.task, ctx.question, s, state["silent"], conflicts),
        )
        check = _has_answer if issubclass(schema, FinalAnswer) else _has_text
        reply = await self._ask(ctx, "leader", messages, schema, check=check)
        return reply, ["trimmed"] if trimmed else []

    async def cite(self, state: LongAgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Cite the chunks of the cluster that supports the answer, narrowed to located quotes."""
        ctx = runtime.context
        cluster = supporting_cluster(state["answer"], state["survivors"])
        if cluster is None:
            ctx.step("cite", "", clusters=len(state["survivors"]))
            return {"citations": [], "flags": ["uncited"]}
        citations, unresolved = cite_cluster(ctx, state["chunks"], cluster)
        ctx.step("cite", cluster.answer, members=list(cluster.members), quotes=len(cluster.quotes),
                 unresolved=unresolved)
        return {"citations": citations}

    # -- calls ------------------------------------------------------------------------------

    def _fit(
        self, ctx: RunContext, schema: type[BaseModel], shown: list[Shown],
        history: list[tuple[str, str]], build: Callable[[list[Shown], list], list[Message]],
    ) -> tuple[list[Message], bool]:
        """The prompt, with the oldest history then the lowest-ranked answers dropped to fit."""
        shown, history = list(shown), list(history)
        for dropped in range(len(shown) + len(history) + 1):
            messages = build(shown, history)
            if not (shown or history) or self._fits(ctx, messages, schema):
                return messages, dropped > 0
            if history:
                history.pop(0)
            else:
                shown.pop()
        return messages, True

    async def _ask(
        self, ctx: RunContext, role: str, messages: list[Message], schema: type[T], *,
        check: Callable[[T], str | None] | None = None, index: int | None = None,
        total: int | None = None,
    ) -> T | None:
        """A validated reply, re-asking at most `retries` times with the complaint; else None."""
        prompt = messages
        for _ in range(self.retries + 1):
            raw = ""
            try:
                reply = await ctx.call(role, prompt, max_tokens=self.max_new, schema=schema,
                                       temperature=self.temperature, index=index, total=total)
                raw = reply.text
                parsed = reply.parsed
                if not isinstance(parsed, schema):
                    parsed = parse_structured(reply.text, schema)
                complaint = check(parsed) if check else None
                if complaint is None:
                    return parsed
            except ParseError as exc:  # RunContext.call has charged the failed call
                complaint, raw = exc.message, exc.raw
            except ValidationError as exc:  # a backend that validates with pydantic directly
                complaint = f"the reply does not match {schema.__name__}: {exc.errors()[0]['msg']}"
            prompt = self._reask(ctx, messages, raw, complaint, schema)
        return None

    def _reask(
        self, ctx: RunContext, messages: list[Message], raw: str, complaint: str,
        schema: type[BaseModel],
    ) -> list[Message]:
        """The prompt plus the bad reply and the complaint, or less of that when it cannot fit:
        first without the bad reply, then without the complaint too."""
        options = [reask(messages, raw, complaint), reask(messages, "", complaint), messages]
        return next((p for p in options if self._fits(ctx, p, schema)), messages)


def _has_text(turn: LeaderStart | LeaderTurn) -> str | None:
    return None if turn.text.strip() else "text is empty"


def _has_answer(final: FinalAnswer) -> str | None:
    return None if final.answer.strip() else "answer is empty"
