"""PRISM's overflow policy `compact` (ours, STRATEGIES.md §5.2): one validated rewrite call for a
smaller memory of the same schema, keeping the provenance of what it keeps word for word.

`Prism.step` asks `due` after each step and then calls `compact`; `Prism.plan` reserves room for
the call with `fixed_tokens` (and for a step's re-ask with `with_reask`); the pre-run estimate
renders the same call with `rewrite_request`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from longweave.agents import prism_prompts as prompts
from longweave.memory.structured_memory import StructuredMemory, TypeNode, widest
from longweave.structured import reask_message

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import BaseModel

    from longweave.agents.base import RunContext
    from longweave.agents.prism import Prism, PrismState
    from longweave.llm import LLM, Message

__all__ = ["COMPLAINT_CHARS", "ITEMS_CEILING", "UNBOUNDED_CHARS", "compact", "due",
           "fixed_tokens", "rewrite_request", "with_reask"]

COMPLAINT_CHARS = 240
"""A validator's complaint is clipped to this many characters in the re-ask (ours)."""
ITEMS_CEILING = 9999
"""Most items of a list or dict in a compaction reply, whatever the memory holds (ours)."""
UNBOUNDED_CHARS = 10**9
"""A size that no rewrite request asks for: with it, a rendered request is at least as long as
any real one."""


def with_reask(llm: LLM, messages: list[Message]) -> int:
    """Tokens of `messages` followed by one re-ask, its complaint counted as COMPLAINT_CHARS
    tokens: one per character it may hold.

    A token per character bounds ASCII text for every tokenizer counted with (byte-level BPE,
    SentencePiece, the scripted model's words and marks); no filler text bounds them all (240
    "x" are one token to the scripted model and a few to BPE). A non-ASCII character may take
    several tokens, but complaints are the validator's words and field paths, where such
    characters are rare; the plan's margin absorbs a few."""
    return llm.count_prompt_tokens([*messages, reask_message("")]) + COMPLAINT_CHARS


def due(prism: Prism, held: bool, i: int, n: int, size: Callable[[], int], mem_cap: int) -> bool:
    """Whether step i (of n) is followed by a rewrite: under `compact`, when one of its revisions
    was rejected at mem_cap (`held`), or when chunks are left and the memory's `size` (counted
    only then) is above compact_at x mem_cap. The pre-run estimate applies the same rule."""
    if prism.overflow != "compact":
        return False
    return held or i + 1 < n and size() > prism.compact_at * mem_cap


def rewrite_request(prism: Prism, question: str, schema: TypeNode, shown: str,
                    pending: list[str], chars: int,
                    items: int) -> tuple[list[Message], type[BaseModel]]:
    """The rewrite call's messages and reply schema: the memory `shown` as JSON, the revisions
    that did not fit, a size of `chars` characters, lists of at most `items`."""
    reply = prompts.memory_reply_schema(schema, prism.value_chars, max(items, 1))
    messages = prompts.compact_messages(prism._task(question), question, schema, shown, pending,
                                        chars, reply)
    return messages, reply


def fixed_tokens(prism: Prism, ctx: RunContext, schema: TypeNode) -> int:
    """Tokens of a rewrite prompt without its memory and revisions, re-ask included."""
    messages, _ = rewrite_request(prism, ctx.question, schema, "", [""], UNBOUNDED_CHARS,
                                  ITEMS_CEILING)
    return with_reask(ctx.llm, messages)


async def compact(prism: Prism, ctx: RunContext, state: PrismState, memory: StructuredMemory,
                  before: int, held: list[Any],
                  done: int) -> tuple[StructuredMemory, list[str], int]:
    """One rewrite call (re-asked like a step) for a smaller memory of the same schema, which
    replaces `memory` if it is valid, fits mem_cap and makes room (`_room`); otherwise `memory`
    stays, frozen for this step. `before`: the memory's size (`Prism._size`), as the step
    counted it. `held`: the step's revisions rejected at mem_cap, shown so the rewrite may fold
    them in. Returns (memory, flags, compactions made)."""
    run, i, n = state["run"], state["position"], len(state["chunks"])
    cap = run.plan.mem_cap
    record = {"index": i, "policy": "compact", "mem_cap": cap, "before_tokens": before}
    if done >= prism.max_compactions:
        ctx.step("overflow", "no compaction left: the memory stays frozen", action="freeze",
                 reason=f"max_compactions ({prism.max_compactions}) reached",
                 after_tokens=before, cache_break=False, **record)
        return memory, ["capped"], done
    pending = [prompts.render_revision(r) for r in held]
    while pending and ctx.llm.count_tokens("\n".join(pending)) > prism.step_max_new:
        pending.pop()  # the plan allows one step reply's worth of them
    shown, target = memory.render("in_place"), int(prism.compact_target * cap)
    messages, reply = rewrite_request(
        prism, ctx.question, run.schema, shown, pending,
        max(1, len(shown) * target // max(before, 1)),  # the target in characters
        min(ITEMS_CEILING, widest(memory.data) + len(pending)))
    parsed, attempts, _, problem = await prism._ask(ctx, "compressor", messages, reply, cap, i, n,
                                                    "write a shorter memory")
    result: StructuredMemory | str = f"no usable rewrite: {problem}"
    after = before
    if parsed is not None:
        data = prompts.memory_from_reply(parsed, run.schema)
        result = data if isinstance(data, str) else memory.rebuilt(
            data, [(list(r.path), r.value, i) for r in held[:len(pending)]],
            prism._fits(ctx, cap))
        if not isinstance(result, str):
            after = prism._size(ctx, result)
            result = _room(prism, ctx, memory, shown, result, after, held[:len(pending)], cap)
    record.update(attempts=attempts, compaction=done + 1, pending=len(pending))
    if isinstance(result, str):
        ctx.step("overflow", "compaction failed: the memory stays frozen", action="freeze",
                 reason=result[:300], after_tokens=before, cache_break=False, **record)
        return memory, ["compact_invalid"], done + 1
    # The steps after it share only the static prefix with the steps before it.
    broke = not result.render(prism.variant).startswith(memory.render(prism.variant))
    ctx.step("overflow", f"compacted the memory: {before} -> {after} tokens",
             action="compact", after_tokens=after, target_tokens=target, cache_break=broke,
             **record)
    return result, ["compacted"], done + 1


def _room(prism: Prism, ctx: RunContext, memory: StructuredMemory, shown: str,
          result: StructuredMemory, after: int, revisions: list[Any],
          cap: int) -> StructuredMemory | str:
    """`result` (of size `after`), if it makes room; else why not. A rewrite makes room when it
    is below compact_at x mem_cap (at or above it, the next step would be due again and spend
    another compaction) and smaller than what it had to hold: `memory` (`shown` as JSON) with
    the `revisions` shown to the rewrite applied (`memory` itself when none were). Given back
    unchanged, it makes none, even when it is smaller than that: it only dropped the revisions
    shown."""
    limit = prism.compact_at * cap
    if after >= limit:
        return (f"the rewritten memory ({after} tokens) is not below compact_at x mem_cap "
                f"({limit:g} tokens): the next step would compact again")
    if result.render("in_place") == shown:
        return "the rewrite gave the memory back unchanged"
    grown = memory._copy()
    for revision in revisions:  # applied as the step would have, with no cap
        grown.apply(revision.op, list(revision.path), revision.value, 0)
    needed = prism._size(ctx, grown)
    if after >= needed:
        what = "the memory" + (" with the revisions shown" if revisions else "")
        return f"the rewritten memory ({after} tokens) is no smaller than {what} ({needed} tokens)"
    return result
