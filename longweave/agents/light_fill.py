"""LIGHT's reader context (STRATEGIES.md §6.2 step 8): the three memories share one budget B_r.

Working memory fills newest-first within its share and is shown in order; the scratchpad pieces
the filter kept fill their share; episodic hits take the rest in rank order. Everything is
counted before the call (the reference code appended the scratchpad after its budget check,
§6.5.4), and the assembled prompt is checked exactly, dropping the lowest-ranked parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from longweave.agents import light_prompts as prompts
from longweave.answer import Citation
from longweave.budget import chunk_budget
from longweave.chunking import Chunker
from longweave.memory.scratchpad import Piece
from longweave.memory.working import MemoryUnit

if TYPE_CHECKING:
    from longweave.agents.base import RunContext
    from longweave.agents.light import LIGHT
    from longweave.llm import Message


def reader_budget(light: LIGHT, ctx: RunContext, question: str) -> int:
    """B_r = W - T(reader prompt with the question) - max_new - margin."""
    fixed = ctx.llm.count_prompt_tokens(prompts.reader_messages([], [], [], question))
    return chunk_budget(light.window_for(ctx), max_new=light.max_new, fixed_tokens=fixed,
                        margin=light.margin, min_chunk=16)


@dataclass
class Filled:
    messages: list[Message]
    episodic: list[MemoryUnit]
    working: list[MemoryUnit]
    notes: list[Piece]
    flags: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def citations(self, ctx: RunContext, units: list[MemoryUnit]) -> list[Citation]:
        """Episodic and working units shown, then the units the shown notes are tagged with."""
        by_index = {u.index: u for u in units}
        tagged = [by_index[i] for p in self.notes for i in p.units if i in by_index]
        seen: set[tuple[int, int]] = set()
        out: list[Citation] = []
        doc = ctx.document
        for u in [*self.episodic, *self.working, *tagged]:
            if (u.start, u.end) in seen:
                continue
            seen.add((u.start, u.end))
            out.append(Citation(doc_id=doc.id, start=u.start, end=u.end,
                                text=doc.text[u.start:u.end], chunk_index=u.index,
                                source=doc.source))
        return out


def fill(light: LIGHT, ctx: RunContext, units: list[MemoryUnit], hits: list[MemoryUnit],
         notes: list[Piece]) -> Filled:
    """Choose what the reader sees so that prompt + max_new fits the window."""
    from longweave.agents.light import working_memory

    llm = ctx.llm
    budget = reader_budget(light, ctx, ctx.question)

    def cost(text: str) -> int:
        return llm.count_tokens(text) + 2  # the separator between blocks

    def unit_cost(u: MemoryUnit) -> int:
        return cost(prompts.unit_block(u.label, u.text))

    flags: list[str] = []
    # Working memory and the scratchpad take at most their shares, and never the episodic
    # share: what either leaves unused goes to episodic hits too.
    reserved = int(light.episodic_share * budget)
    work_cap = min(int(light.working_share * budget), budget - reserved) if light.z else 0
    working = working_memory(units, light.z).select(work_cap, unit_cost)
    if not working and work_cap > 0:
        working = [_clip_newest(units[-1], work_cap, ctx)]  # the latest exchange always shows
        flags.append("clipped")
    used_w = sum(unit_cost(u) for u in working)
    scratch_cap = min(int(light.scratch_share * budget), budget - reserved - used_w)
    used_s, shown_notes = 0, []
    for piece in notes:
        c = cost(piece.text)
        if used_s + c <= scratch_cap:
            shown_notes.append(piece)
            used_s += c
    room, used_e, episodic = budget - used_w - used_s, 0, []
    in_working = {(u.start, u.end) for u in working}
    for u in hits:
        c = unit_cost(u)
        if (u.start, u.end) not in in_working and used_e + c <= room:
            episodic.append(u)
            used_e += c

    def messages() -> list[Message]:
        return prompts.reader_messages(
            [prompts.unit_block(u.label, u.text) for u in episodic],
            [prompts.unit_block(u.label, u.text) for u in working],
            [p.text for p in shown_notes], ctx.question)

    window = light.window_for(ctx)
    # Block counts are summed one by one; check the assembled prompt and drop lowest-ranked.
    while llm.count_prompt_tokens(messages()) + light.max_new > window:
        if episodic:
            episodic.pop()
        elif shown_notes:
            shown_notes.pop()
        elif len(working) > 1:
            working.pop(0)
        else:
            break
    if len(hits) > len(episodic) + len({(u.start, u.end) for u in hits} & in_working):
        flags.append("dropped")
    detail = {"budget": budget, "episodic": [u.index for u in episodic],
              "working": [u.index for u in working], "notes": len(shown_notes),
              "tokens": {"episodic": used_e, "working": used_w, "scratchpad": used_s}}
    return Filled(messages(), episodic, working, shown_notes, flags, detail)


def _clip_newest(unit: MemoryUnit, cap: int, ctx: RunContext) -> MemoryUnit:
    """The end of the newest unit that fits `cap` tokens, as a sub-span of it."""
    label = ctx.llm.count_tokens(prompts.unit_block(unit.label, "")) + 2
    size = max(1, cap - label)
    while size > 0:
        last = Chunker(size, tokenizer=ctx.llm.tokenizer).split(unit.text)[-1]
        clipped = MemoryUnit(unit.index, unit.start + last.start, unit.start + last.end,
                             last.text)
        if ctx.llm.count_tokens(prompts.unit_block(clipped.label, clipped.text)) + 2 <= cap:
            return clipped
        size -= max(1, size // 4)
    return MemoryUnit(unit.index, unit.end, unit.end, "")
