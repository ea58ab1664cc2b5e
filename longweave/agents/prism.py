"""PRISM: stream the chunks through a typed memory the model revises, then answer from the memory.

Jayalath, Wendt, Monath, Tata, Gunel. v1: "Long-Range Tasks Using Short-Context LLMs: Incremental
Reasoning With Structured Memories", arXiv:2412.18914; v2: "PRISM: Efficient Long-Range
Reasoning With Short-Context LLMs", EMNLP 2025. Algorithm and defaults: STRATEGIES.md §5.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypedDict

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from longweave.agents import prism_compact as compaction
from longweave.agents import prism_prompts as prompts
from longweave.agents.base import RunContext, repeat_then
from longweave.agents.prism_compact import COMPLAINT_CHARS
from longweave.answer import Citation, Usage, plural
from longweave.budget import chunk_budget
from longweave.chunking import Chunk
from longweave.errors import BudgetExceeded, ConfigError, ParseError
from longweave.llm import Message, model_identity
from longweave.memory.structured_memory import (
    OVER_CAP,
    SchemaSpec,
    StructuredMemory,
    TypeNode,
    from_json_schema,
    from_model,
    from_spec,
    load_schema_file,
    render_json,
)
from longweave.structured import reask_message, whole_items

__all__ = ["Prism"]


@dataclass(frozen=True)
class Plan:
    """Budgets of one run (§5.2, §8.2)."""

    window: int
    chunk_tokens: int
    mem_cap: int
    prefix_tokens: int


@dataclass(frozen=True)
class Run:
    """What every node of one run shares: the static prefix, the batch schema, the budgets."""

    prefix: str
    batch: type[BaseModel]
    plan: Plan
    schema: TypeNode


class PrismState(TypedDict, total=False):
    chunks: list[Chunk]
    memory: StructuredMemory
    position: int
    last_prompt: str  # the previous step prompt, to measure the prefix it shares with the next
    compactions: int  # rewrite calls made so far (overflow `compact`)
    run: Run
    answer: str
    citations: list[Citation]
    flags: Annotated[list[str], operator.add]


class Prism(BaseModel):
    """Reads chunks in order, revising a schema-typed memory; answers from the memory alone."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: ClassVar[str] = "prism"
    summary: ClassVar[str] = "read chunks in order, revising a typed memory; answer from it"

    memory_schema: str | dict[str, Any] | type[BaseModel] = "auto"
    """`auto` (qa with a question, summary without), `qa`, `summary`, `generate` (one model call
    from `task`, validated, falling back to qa), a JSON schema file path, a JSON schema (dict),
    or a pydantic model class (paper: typed hierarchies; ours: the built-ins). A class is saved
    (a chat session, JSON output) as its JSON schema, which reads back as the same memory."""

    @field_validator("memory_schema", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_serializer("memory_schema", when_used="json")
    def _class_as_schema(self, value: str | dict[str, Any] | type[BaseModel]) -> Any:
        return value.model_json_schema() if isinstance(value, type) else value
    task: str = ""
    """What the memory is for, shown in every prompt and used by `generate`; empty picks a
    default from the question (ours)."""
    window: int = Field(32768, ge=512)
    """Window W in tokens, capped by the model's own (paper: 32k)."""
    chunk_tokens: int = Field(2048, ge=64)
    """Largest chunk (paper: 2k BooookScore, 8k RepoQA; v2 down to < 500); smaller when the
    window needs it."""
    mem_cap: int | None = Field(None, ge=16)
    """Memory cap in tokens; None: W - T(prefix) - chunk - max_new - margin, with the chunk cut
    to half the room when both do not fit (ours, §5.2)."""
    overflow: Literal["freeze", "compact"] = "freeze"
    """At mem_cap, revisions that would grow the memory are rejected and logged (§5.2 rule 5).
    `freeze` stops there, so the prompt prefix is never rebuilt; `compact` then asks the model to
    rewrite the memory smaller (one call, breaking the prefix cache once) (ours, §5.2)."""
    compact_at: float = Field(0.9, gt=0.0, le=1.0)
    """`compact`: a memory above this fraction of mem_cap after a step, with chunks left to read,
    is compacted before it overflows; a step with revisions rejected at mem_cap always is (ours)."""
    compact_target: float = Field(0.5, gt=0.0, lt=1.0)
    """`compact`: the size asked of the rewrite, as a fraction of mem_cap; it must be below
    compact_at. The rewrite is kept when it fits mem_cap (ours)."""
    max_compactions: int = Field(4, ge=1)
    """`compact`: most rewrites in a run, failed ones included; past it the memory stays frozen
    (flag `capped`) (ours)."""
    variant: Literal["amendments", "in_place"] = "amendments"
    """Memory shown as a revision log (amendments) or as JSON edited in place (paper; ours:
    amendments, the cheapest in the paper's chunk-size study)."""
    ops: Literal["add", "add_update"] = "add"
    """Allowed operations (paper: add-only most efficient; add+update best BooookScore)."""
    step_max_new: int = Field(512, ge=16)
    """Generation cap of a step's revision batch (ours)."""
    answer_max_new: int = Field(512, ge=8)
    """Generation cap of the final call (ours)."""
    answer_chars: int = Field(1000, ge=16)
    """Bound of the final answer (§5.3)."""
    value_chars: int = Field(300, ge=8)
    """Longest string value in a revision (§5.2 rule 4)."""
    list_items: int = Field(10, ge=1)
    """Most items of a list or map value in one revision (§5.2 rule 4)."""
    max_revisions: int = Field(16, ge=1)
    """Revisions per step (ours, §5.2)."""
    retries: int = Field(2, ge=0)
    """Re-asks after unparseable step output, then an empty batch (ours, §5.2)."""
    keep_cut: bool = True
    """A step reply cut at step_max_new keeps its whole revisions (the one cut is dropped)
    instead of being re-asked; re-asked only when it holds none (ours)."""
    schema_max_new: int = Field(512, ge=64)
    """Generation cap of schema generation (ours)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature (paper: 0.8 with top-k 40 over 5 samples; ours: 0 for repeatability)."""
    margin: int = Field(64, ge=0)
    """Tokens kept free for chat-template overhead (ours)."""
    output_weight: float = Field(3.0, ge=0.0)
    """Price of an output token in uncached prompt tokens, for the cost index; cached prompt
    tokens count 0 (paper, v1: decode costs about 3x encode; its pricing of cached tokens is
    unverified, §5.4)."""

    @model_validator(mode="after")
    def _target_below_trigger(self) -> Prism:
        if self.compact_target >= self.compact_at:
            raise ValueError(f"compact_target ({self.compact_target}) must be below compact_at "
                             f"({self.compact_at}), or every compaction would call for another")
        return self

    # -- schema and budget ---------------------------------------------------------------------

    def _ops(self) -> tuple[str, ...]:
        return ("add",) if self.ops == "add" else ("add", "update")

    def _task(self, question: str) -> str:
        if self.task.strip():
            return self.task.strip()
        if question.strip():
            return "Answer the question about the text."
        return "Summarize the text."

    def _query(self, schema_choice: object, question: str) -> bool:
        return bool(question.strip()) and schema_choice != "summary"

    async def resolve_schema(self, ctx: RunContext) -> TypeNode:
        """The memory schema from the settings; `generate` asks the model once (cached)."""
        choice = self.memory_schema
        if isinstance(choice, type):
            return from_model(choice)
        if isinstance(choice, dict):
            return from_json_schema(choice)
        if choice == "auto":
            choice = "qa" if ctx.question.strip() else "summary"
        if choice == "qa":
            return from_model(prompts.QAMemory)
        if choice == "summary":
            return from_model(prompts.SummaryMemory)
        if choice == "generate":
            return await self._generate(ctx)
        if not Path(choice).is_file():
            raise ConfigError(f"memory_schema {choice!r} is neither a built-in nor a file",
                              hint="use auto, qa, summary, generate or a JSON schema file path")
        return load_schema_file(choice)

    async def _generate(self, ctx: RunContext) -> TypeNode:
        """One SchemaSpec call (§5.2), cached per task type; falls back to the QA schema."""
        task = self._task(ctx.question)
        settings = {"prompts": prompts.PROMPT_VERSION, "model": model_identity(ctx.llm),
                    "task": task}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        key = f"prism-schema-{digest[:24]}"

        def read(found: Path) -> tuple[SchemaSpec, TypeNode]:
            spec = SchemaSpec.model_validate_json((found / "schema.json").read_text("utf-8"))
            return spec, from_spec(spec)

        cached = ctx.artifacts.load(key, read, "PRISM's generated schema") if ctx.artifacts \
            else None
        if cached is not None:
            ctx.step("planner", cached[0].name, cached=True,
                     fields=[f.name for f in cached[0].fields])
            return cached[1]
        try:
            reply = await ctx.call("planner", prompts.schema_messages(task, ctx.question),
                                   max_tokens=self.schema_max_new, schema=SchemaSpec,
                                   temperature=self.temperature)
            spec = reply.parsed
            schema = from_spec(spec)
        except (ParseError, ConfigError) as exc:
            ctx.step("planner", "fell back to the built-in QA schema", fallback=True,
                     reason=str(exc)[:300])
            return from_model(prompts.QAMemory)
        ctx.step("planner", spec.name, cached=False, fields=[f.name for f in spec.fields])
        if ctx.artifacts is not None:
            text = spec.model_dump_json()
            ctx.artifacts.save(key, lambda d: (d / "schema.json").write_text(text, "utf-8"),
                               "PRISM's generated schema")
        return schema

    def plan(self, ctx: RunContext, prefix: str, schema: TypeNode) -> Plan:
        """Chunk size and mem_cap from the window (§5.2): every step, the final call and (with
        `compact`) the rewrite call fit."""
        llm = ctx.llm
        w = min(self.window, llm.context_window)
        empty = prompts.memory_part("", self.variant)
        fixed = compaction.with_reask(llm, prompts.step_messages(prefix, empty, 9998, 9999, ""))
        room = chunk_budget(w, max_new=self.step_max_new, fixed_tokens=fixed, margin=self.margin)
        final_fixed = llm.count_prompt_tokens(
            prompts.final_messages(self._task(ctx.question), ctx.question, schema, "", query=True))
        final_room = w - final_fixed - self.answer_max_new - self.margin
        # `compact` shows the memory (<= mem_cap) and the revisions that did not fit (<= one step
        # reply) and asks for a memory that fits mem_cap, so the memory gets at most half of
        # what that call leaves.
        compact_room = 2 * w  # freeze: no such call
        if self.overflow == "compact":
            compact_room = (w - compaction.fixed_tokens(self, ctx, schema) - self.step_max_new
                            - self.margin)
        if self.mem_cap is not None:
            chunk = min(self.chunk_tokens, room - self.mem_cap)
            mem_cap = self.mem_cap
        else:
            chunk = min(self.chunk_tokens, room // 2)
            mem_cap = min(room - chunk, final_room, compact_room // 2)
        if chunk < 32 or mem_cap > final_room or mem_cap < 16 or 2 * mem_cap > compact_room:
            also = " (or use overflow=freeze)" if 2 * mem_cap > compact_room else ""
            raise BudgetExceeded(fixed + mem_cap, self.step_max_new, w,
                                 hint="lower mem_cap, step_max_new or answer_max_new, or use a "
                                      f"model with a larger window{also}")
        prefix_tokens = llm.count_tokens(prefix)  # text tokens, as shared_prefix_tokens counts
        return Plan(w, chunk, mem_cap, prefix_tokens)

    # -- state ---------------------------------------------------------------------------------

    async def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        schema = await self.resolve_schema(ctx)
        ops = self._ops()
        batch = prompts.revision_schema(schema, ops, self.value_chars, self.list_items,
                                        self.max_revisions)
        prefix = prompts.static_prefix(self._task(ctx.question), ctx.question, schema, ops,
                                       self.variant, batch)
        plan = self.plan(ctx, prefix, schema)
        chunks = ctx.chunk(plan.chunk_tokens)
        memory = StructuredMemory(schema, self.value_chars, self.list_items, ops)
        ctx.step("plan", f"{plural(len(chunks), 'chunk')} of <= {plan.chunk_tokens} tokens",
                 chunks=len(chunks), chunk_tokens=plan.chunk_tokens, mem_cap=plan.mem_cap,
                 prefix_tokens=plan.prefix_tokens, schema=schema.label(), variant=self.variant,
                 ops=list(ops), overflow=self.overflow)
        return {"chunks": chunks, "memory": memory, "position": 0, "last_prompt": "",
                "compactions": 0, "run": Run(prefix, batch, plan, schema), "flags": []}

    def max_steps(self, state: dict[str, Any]) -> int:
        return len(state["chunks"]) + 3

    # -- graph ---------------------------------------------------------------------------------

    def build(self) -> StateGraph:
        return repeat_then(PrismState, self.step, [self.final], over="chunks")

    async def step(self, state: PrismState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Read chunk i: one revision batch, each revision validated, then applied or rejected."""
        ctx, i, memory = runtime.context, state["position"], state["memory"]
        run, chunks = state["run"], state["chunks"]
        messages = prompts.step_messages(
            run.prefix, prompts.memory_part(memory.render(self.variant), self.variant), i,
            len(chunks), chunks[i].text)
        text = "\n".join(m.content for m in messages)
        shared = _common_prefix(state["last_prompt"], text)
        batch, attempts, cached, ok = await self._batch(ctx, messages, run.batch, i, len(chunks))

        fits = self._fits(ctx, run.plan.mem_cap)
        applied: list[str] = []
        rejected: list[dict[str, str]] = []
        held: list[Any] = []  # rejected at mem_cap only: a compaction may fold them in
        for revision in batch:
            reason = memory.apply(revision.op, list(revision.path), revision.value, i, fits)
            shown = prompts.render_revision(revision)
            if reason is None:
                applied.append(shown)
            else:
                rejected.append({"revision": shown, "reason": reason})
                held += [revision] if reason == OVER_CAP else []
        flags = [] if ok else ["invalid_step"]
        if held:
            flags.append("mem_cap")
            ctx.step("overflow", f"{len(held)} revisions rejected at mem_cap", index=i,
                     policy=self.overflow, action="reject", mem_cap=run.plan.mem_cap)
        memory_tokens = ctx.llm.count_tokens(memory.render(self.variant))
        # Counted once, if at all: `due` may need it, `compact` does.
        size = cache(partial(self._size, ctx, memory, memory_tokens))
        ctx.step("stepper", f"{len(applied)} applied, {len(rejected)} rejected", index=i,
                 applied=applied, rejected=rejected, attempts=attempts,
                 empty_batch=not ok,
                 prefix_tokens=run.plan.prefix_tokens,
                 shared_prefix_tokens=ctx.llm.count_tokens(text[:shared]) if shared else 0,
                 cached_tokens=cached, memory_tokens=memory_tokens)
        done = state["compactions"]
        if compaction.due(self, bool(held), i, len(chunks), size, run.plan.mem_cap):
            memory, more, done = await compaction.compact(self, ctx, state, memory, size(), held,
                                                          done)
            flags += more
        return {"memory": memory, "position": i + 1, "last_prompt": text, "flags": flags,
                "compactions": done}

    def _size(self, ctx: RunContext, memory: StructuredMemory, shown: int | None = None) -> int:
        """What mem_cap bounds: the memory as the steps show it (`shown` tokens, when already
        counted), and as the final call does."""
        count = ctx.llm.count_tokens
        shown = count(memory.render(self.variant)) if shown is None else shown
        return shown if self.variant == "in_place" else max(shown, count(memory.render("in_place")))

    def _fits(self, ctx: RunContext, mem_cap: int) -> Callable[[StructuredMemory], bool]:
        return lambda trial: self._size(ctx, trial) <= mem_cap

    async def _batch(self, ctx: RunContext, messages: list[Message], schema: type[BaseModel],
                     i: int, n: int) -> tuple[list[Any], int, int, bool]:
        """(revisions, attempts, cached tokens, ok); after `retries` re-asks an empty batch."""

        def keep_whole(raw: str, problem: str) -> BaseModel | None:
            whole = whole_items(raw, schema, "revisions") if self.keep_cut else []
            if not whole:
                return None
            ctx.step("stepper", f"reply cut short: kept its {len(whole)} whole revisions",
                     index=i, reason=problem[:COMPLAINT_CHARS])
            return schema(revisions=whole)

        parsed, attempts, cached, _ = await self._ask(ctx, "stepper", messages, schema,
                                                      self.step_max_new, i, n,
                                                      "propose fewer revisions", keep_whole)
        if parsed is None:
            return [], attempts, cached, False
        return list(parsed.revisions), attempts, cached, True

    async def _ask(self, ctx: RunContext, role: str, messages: list[Message],
                   schema: type[BaseModel], max_tokens: int, i: int, n: int, cut_advice: str,
                   salvage: Callable[[str, str], BaseModel | None] | None = None,
                   ) -> tuple[BaseModel | None, int, int, str]:
        """The step's and the rewrite's call (for item i of n), re-asked up to `retries` times
        with the complaint clipped to COMPLAINT_CHARS; `cut_advice` tells a reply cut at
        max_tokens how to fit. A failed reply's text and complaint go to `salvage` first: what
        it keeps ends the loop as a reply would. Returns (the reply, None when no attempt gave
        one; attempts; cached prompt tokens; the last complaint, "" on success)."""
        prompt, cached, problem = messages, 0, ""
        for attempt in range(1, self.retries + 2):
            try:
                reply = await ctx.call(role, prompt, max_tokens=max_tokens, schema=schema,
                                       temperature=self.temperature, index=i, total=n)
                cached += reply.usage.cached_tokens
                if reply.finish_reason != "length" and reply.parsed is not None:
                    return reply.parsed, attempt, cached, ""
                raw = reply.text if reply.finish_reason == "length" else ""
                problem = (f"the reply was cut off at the token limit; {cut_advice}"
                           if reply.finish_reason == "length" else "the reply held no JSON object")
            except ParseError as exc:
                raw, problem = exc.raw or "", exc.message
            kept = salvage(raw, problem) if salvage is not None else None
            if kept is not None:
                return kept, attempt, cached, ""
            prompt = [*messages, reask_message(problem[:COMPLAINT_CHARS])]
        return None, self.retries + 1, cached, problem

    async def final(self, state: PrismState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """Answer from the folded memory; cite the chunks that wrote the paths used."""
        ctx, memory = runtime.context, state["memory"]
        run = state["run"]
        query = self._query(self.memory_schema, ctx.question)
        shown = memory.render("in_place")
        messages = prompts.final_messages(self._task(ctx.question), ctx.question, run.schema,
                                          shown, query=query)
        flags: list[str] = []
        used: list[list[Any]] = []
        if query:
            try:
                reply = await ctx.call("manager", messages, max_tokens=self.answer_max_new,
                                       schema=prompts.final_schema(self.answer_chars),
                                       temperature=self.temperature)
                if reply.finish_reason == "length":  # a backend that repaired a cut reply
                    raise ParseError("the reply was cut at max_tokens", raw=reply.text)
                answer, used = reply.parsed.answer.strip(), list(reply.parsed.used_paths)
            except ParseError as exc:
                salvaged = prompts.salvage_final(exc.raw, self.answer_chars)
                if salvaged is not None:  # cut at the cap: keep what it wrote, no second call
                    answer, used = salvaged
                    flags.append("cut_final")
                    ctx.step("manager", "structured answer cut short; kept its answer",
                             reason=exc.message[:300])
                else:  # fallback: the same prompt as free text
                    flags.append("invalid_final")
                    ctx.step("manager", "structured answer failed; answering as text",
                             reason=exc.message[:300])
                    reply = await ctx.call("manager", messages, max_tokens=self.answer_max_new,
                                           temperature=self.temperature, stream=True)
                    answer = reply.text.strip()
        else:
            reply = await ctx.call("manager", messages, max_tokens=self.answer_max_new,
                                   temperature=self.temperature, stream=True)
            answer = reply.text.strip()
        sources = sorted({c for path in used for c in memory.sources(path)})
        cited_by = "used_paths" if sources else "contributing"
        sources = sources or memory.contributing()
        chunks = state["chunks"]
        citations = [ctx.cite_chunk(chunks[c]) for c in sources]
        ctx.step("manager", answer, used_paths=[render_json(p) for p in used],
                 cited_by=cited_by, memory=shown, memory_tokens=ctx.llm.count_tokens(shown),
                 cost=_cost_report(ctx.usage, self.output_weight))  # the whole run's calls
        if not citations:
            flags.append("uncited")
        return {"answer": answer, "citations": citations, "flags": flags}


def _cost_report(usage: Usage, output_weight: float) -> dict[str, Any]:
    """§5.4: uncached prompt, cached prompt and output tokens apart; cache hit rate = cached /
    prompt tokens (None when none were counted); cost index = uncached prompt + weight x output."""
    uncached = usage.prompt_tokens - usage.cached_tokens
    return {"uncached_prompt_tokens": uncached, "cached_prompt_tokens": usage.cached_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_hit_rate": (usage.cached_tokens / usage.prompt_tokens
                               if usage.prompt_tokens else None),
            "cost_index": uncached + output_weight * usage.completion_tokens,
            "output_weight": output_weight}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
