"""The model's side of one GraphReader path: show the state, ask for a call, validate, run it.

Step 7 of Query(q) in STRATEGIES.md §3.2. Every call the model chooses is checked against the
graph by `PathState.check` before it runs; an invalid one is re-asked with the validator's
message at most `retries` times, then the path ends (§3.5.4, §8.3). With
`call_format="call_string"` the model writes the paper's call form instead of JSON (`calls`),
and the parsed call goes through the same check.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from longweave.agents import graph_reader_prompts as prompts
from longweave.errors import ParseError
from longweave.graphs.calls import parse_step
from longweave.graphs.paths import Call, PathState
from longweave.graphs.store import Fact, KeyGraph
from longweave.structured import reask_message, repair_json

if TYPE_CHECKING:
    from longweave.agents.base import RunContext
    from longweave.agents.graph_reader import Budgets, GraphReader

__all__ = ["Explorer"]


class Explorer:
    """Runs exploration paths for one question; counts attempts and invalid calls."""

    def __init__(self, reader: GraphReader, ctx: RunContext, graph: KeyGraph, plan: str,
                 budgets: Budgets) -> None:
        self.reader, self.ctx, self.graph, self.plan, self.budgets = (
            reader, ctx, graph, plan, budgets)
        self.attempts = 0
        self.invalid = 0
        self.flags: list[str] = []

    async def walk(self, index: int, start: str) -> PathState:
        """One path from `start`: at most max_steps_per_path step calls."""
        r = self.reader
        path = PathState(self.graph, start, neighbor_limit=r.neighbor_limit)
        for _ in range(r.max_steps_per_path):
            if path.mode == "done":
                break
            await self._step(index, path)
        else:
            if path.mode != "done":
                path.end("capped")
        return path

    async def _step(self, index: int, path: PathState) -> None:
        r, ctx, mode = self.reader, self.ctx, path.mode
        ids: tuple[int, ...] = ()
        names: tuple[str, ...] = ()
        # What the prompt shows is trimmed to the content budget first; the step then offers
        # (in the legal actions, the schema's enums and the check) only what it shows (§3.3).
        if mode == "facts":
            content, shown_facts = await self._facts(path)
            path.offer(ids={f.chunk for f in shown_facts})
            ids = tuple(path.chunk_choices())
        elif mode == "chunk":
            shown = path.show_chunk()
            start, end = self.graph.spans[shown]
            content = f"[chunk {shown}]\n{ctx.document.text[start:end]}"
        else:
            names = tuple(self._fit(path.neighbor_choices()))
            path.offer(names=names)
            content = "\n".join(f"- {n}" for n in names)
        legal = tuple(path.legal())
        recent = path.actions[-r.last_actions:] if r.last_actions else []
        schema: type[Any] | None = None
        if r.call_format == "call_string":
            messages = prompts.call_step_messages(mode, ctx.question, self.plan, recent,
                                                  path.notebook, content, legal, r.notebook_chars)
        else:
            schema = prompts.step_schema(mode, legal, ids, names, r.notebook_chars,
                                         r.rationale_chars, r.max_chunk_ids)
            messages = prompts.step_messages(mode, ctx.question, self.plan, recent,
                                             path.notebook, content, legal)
        call, reply, attempts = await self._decide(index, path, messages, schema)
        path.steps += 1
        ctx.step("stepper", reply.get("rationale", ""), index=index, path=index, node=path.node,
                 mode=mode, chunk=path.current, attempts=attempts,
                 action=None if call is None else call.action)
        if call is None:
            path.end("invalid")
            return
        path.notebook = str(reply.get("notebook", path.notebook))[: r.notebook_chars]
        path.apply(call)

    async def _decide(self, index: int, path: PathState, messages: list[Any],
                      schema: type[Any] | None) -> tuple[Call | None, dict[str, Any], int]:
        """A validated call, re-asking with the complaint; (None, ...) when none came.

        `schema` None means the call-string form: the reply is text parsed by `parse_step`.
        """
        r, prompt = self.reader, messages
        for attempt in range(1, r.retries + 2):
            self.attempts += 1
            data: dict[str, Any] = {}
            try:
                reply = await self.ctx.call("stepper", prompt, max_tokens=r.step_max_new,
                                            schema=schema, temperature=r.temperature,
                                            index=index, total=r.max_steps_per_path)
                if schema is None:
                    # The call line comes last: text cut after it still holds a whole call.
                    data = parse_step(reply.text)
                else:
                    if reply.finish_reason == "length":
                        raise ParseError("the reply was cut off at the token limit; be briefer",
                                         raw=reply.text)
                    if reply.parsed is None:
                        raise ParseError("the reply held no JSON object", raw=reply.text)
                    data = reply.parsed.model_dump()
                problem = None
            except ParseError as exc:
                # JSON: read what the model wrote anyway, since a graph-level complaint ("no node
                # named X") helps more than the schema's and a near-miss name may still resolve.
                # Call strings are strict: an ungrammatical one is re-asked.
                data = _loose(exc.raw) if schema is not None else {}
                problem = exc.message
            chosen = self._defaults(path, _call(data))
            call, complaint = path.check(chosen) if data else (None, None)
            if call is not None and (problem is None or _args_ok(data)):
                return call, data, attempt
            self.invalid += 1
            why = complaint or problem or "invalid reply"
            again = reask_message(why) if schema is not None else prompts.call_reask_message(why)
            prompt = [*messages, again]
        return None, {}, r.retries + 1

    def _defaults(self, path: PathState, call: Call) -> Call:
        """`read_chunk` with no ids reads the node's unread chunks shown, up to max_chunk_ids
        (ours).

        The grammar cannot tie chunk_ids to the action, and a small model often picks
        read_chunk yet writes `[]`; its intent is plain, and re-asking costs a whole step call.
        """
        if call.action == "read_chunk" and not call.chunk_ids:
            return Call(call.action, tuple(path.chunk_choices()[: self.reader.max_chunk_ids]))
        return call

    async def _facts(self, path: PathState) -> tuple[str, list[Fact]]:
        """The node's facts grouped by chunk id, within the content budget (§3.5.6), and the
        facts shown."""
        facts = self.graph.node_facts(path.node)
        text = _render(facts)
        if self.ctx.llm.count_tokens(text) > self.budgets.content_tokens:
            facts = await self._rank(facts)
            self.flags.append("facts_truncated")
            text = _render(facts)
        path.shown_facts.extend(f.id for f in facts if f.id not in path.shown_facts)
        return text, facts

    async def _rank(self, facts: list[Fact]) -> list[Fact]:
        """The facts most similar to question and plan that fit, shown in chunk order."""
        embedder = self.reader.get_embedder(self.ctx)
        texts = [f"{self.ctx.question} {self.plan}", *(f.text for f in facts)]
        vectors = await asyncio.to_thread(embedder.embed, texts)
        order = sorted(range(len(facts)), key=lambda i: -float(vectors[i + 1] @ vectors[0]))
        kept: list[Fact] = []
        for i in order:
            trial = [*kept, facts[i]]
            if self.ctx.llm.count_tokens(_render(trial)) > self.budgets.content_tokens:
                break
            kept = trial
        return sorted(kept, key=lambda f: (f.chunk, f.id))

    def _fit(self, names: list[str]) -> list[str]:
        """The leading neighbour names whose list fits the content budget."""
        lines: list[str] = []
        for name in names:
            line = f"- {name}"
            if self.ctx.llm.count_tokens("\n".join([*lines, line])) > self.budgets.content_tokens:
                self.flags.append("neighbors_truncated")
                break
            lines.append(line)
        return names[: len(lines)]


def _render(facts: list[Fact]) -> str:
    groups: dict[int, list[str]] = {}
    for fact in sorted(facts, key=lambda f: (f.chunk, f.id)):
        groups.setdefault(fact.chunk, []).append(fact.text)
    return "\n".join(f"[chunk {c}] " + " ".join(texts) for c, texts in groups.items())


def _loose(raw: str) -> dict[str, Any]:
    try:
        value, _ = repair_json(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _call(data: dict[str, Any]) -> Call:
    ids = data.get("chunk_ids") or []
    clean = tuple(i for i in ids if isinstance(i, int)) if isinstance(ids, list) else ()
    neighbor = data.get("neighbor")
    return Call(str(data.get("action", "")), clean, neighbor if isinstance(neighbor, str) else "")


def _args_ok(data: dict[str, Any]) -> bool:
    """A reply that failed the schema is still usable if its notebook is a bounded string."""
    return isinstance(data.get("notebook", ""), str)
