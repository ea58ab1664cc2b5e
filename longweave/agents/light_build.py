"""LIGHT's per-document build (STRATEGIES.md §6.2, steps 1-5): units, extractions, the scratchpad
fold with compression, the episodic index and the pieces; cached as one artifact (§8.6)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.agents import light_prompts as prompts
from longweave.budget import chunk_budget
from longweave.chunking import Chunker
from longweave.conversations import conversation_turns
from longweave.errors import LongweaveError, LongweaveWarning
from longweave.llm import model_identity
from longweave.memory.episodic import Episode, EpisodicMemory
from longweave.memory.scratchpad import Bullet, Piece, Scratchpad, parse_bullet
from longweave.memory.working import MemoryUnit
from longweave.retrieval.embeddings import embedder_identity
from longweave.structured import json_instructions

if TYPE_CHECKING:
    from longweave.agents.base import RunContext
    from longweave.agents.light import LIGHT

ARTIFACT_FORMAT = 1
_PAD = "scratchpad.json"


@dataclass(frozen=True)
class Plan:
    """Budgets from the settings and the model, never from the question (so builds are shared)."""

    window: int
    unit_tokens: int
    history_tokens: int
    scratch_target: int
    compress_max_new: int


@dataclass
class Built:
    units: list[MemoryUnit]
    memory: EpisodicMemory
    pieces: list[Piece]
    flags: list[str]
    failed: bool = False
    """Every extraction call failed (a broken model or server): the memory is not cached."""


def _schema_tokens(ctx: RunContext, schema: type) -> int:
    # Backends without a native schema format add these instructions to the prompt.
    return ctx.llm.count_tokens("\n\n" + json_instructions(schema)) + 1


def make_plan(light: LIGHT, ctx: RunContext) -> Plan:
    """Unit size, extraction history and scratchpad target that fit the window (§8.2)."""
    from longweave.agents.light_fill import reader_budget

    llm, w = ctx.llm, light.window_for(ctx)
    kv = prompts.kv_schema(light.kv_items)
    extract_fixed = max(
        llm.count_prompt_tokens(prompts.kv_messages("", "")) + _schema_tokens(ctx, kv),
        llm.count_prompt_tokens(prompts.facts_messages("", ""))
        + _schema_tokens(ctx, prompts.facts_schema(light.fact_items)),
    )
    room = chunk_budget(w, max_new=light.extract_max_new, fixed_tokens=extract_fixed,
                        margin=light.margin, min_chunk=16)
    unit_tokens = min(light.unit_tokens, room)
    history = max(0, min(light.history_tokens, room - unit_tokens))
    compressed = prompts.compressed_schema(light.section_items)
    compress_fixed = (llm.count_prompt_tokens(prompts.compress_messages("", 99999))
                      + _schema_tokens(ctx, compressed))
    # The compressor reads up to 2 * target plus one unit's facts and writes up to target plus
    # JSON overhead: 3 * target must fit beside its fixed prompt (ours).
    overhead = 64 + 16 * len(prompts.SECTIONS)
    facts_reserve = min(light.fact_items * 60, w // 8)
    fits = (w - compress_fixed - light.margin - overhead - facts_reserve) // 3
    share = int(light.scratch_share * reader_budget(light, ctx, ""))
    target = max(16, min(light.scratch_target, share, fits))
    return Plan(w, unit_tokens, history, target, target + overhead)


def split_units(ctx: RunContext, unit_tokens: int) -> list[MemoryUnit]:
    """Turn pairs of a conversation (split when too long), else sentence-packed chunks."""
    doc = ctx.document
    chunker = Chunker(unit_tokens, tokenizer=ctx.llm.tokenizer)
    turns = conversation_turns(doc)
    if turns is None:
        return [MemoryUnit(c.index, c.start, c.end, c.text) for c in chunker.split(doc.text)]
    spans: list[tuple[int, int]] = []
    for i in range(0, len(turns), 2):
        start, end = turns[i].start, turns[min(i + 1, len(turns) - 1)].end
        if ctx.llm.count_tokens(doc.text[start:end]) <= unit_tokens:
            spans.append((start, end))
        else:
            spans += [(start + c.start, start + c.end) for c in chunker.split(doc.text[start:end])]
    return [MemoryUnit(i, s, e, doc.text[s:e]) for i, (s, e) in enumerate(spans)]


def artifact_key(light: LIGHT, ctx: RunContext, plan: Plan, embedder: str) -> str:
    settings = {
        "format": ARTIFACT_FORMAT, "prompts": prompts.PROMPT_VERSION,
        "model": model_identity(ctx.llm),
        "tokenizer": str(getattr(ctx.llm.tokenizer, "name", "")), "plan": asdict(plan),
        "embedder": embedder, "temperature": light.temperature,
        **{f: getattr(light, f) for f in ("kv_items", "fact_items", "section_items",
                                          "piece_tokens", "split_percentile", "split_buffer",
                                          "extract_max_new", "retries", "keep_cut")},
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"light-{ctx.document.id[:16]}-{digest[:20]}"


async def build_memory(light: LIGHT, ctx: RunContext, plan: Plan) -> Built:
    """The memory for this document: loaded from `ctx.artifacts` when built before, else built."""
    embedder = light.get_embedder(ctx)
    units = split_units(ctx, plan.unit_tokens)
    if not units:
        raise LongweaveError(f"{ctx.document.name} has no text to remember")
    key = artifact_key(light, ctx, plan, embedder_identity(embedder))

    def read(found: Path) -> Built:
        memory = EpisodicMemory.load(found, embedder)
        pieces = _load_pieces(found / _PAD)
        if sorted(memory.episodes) != [u.index for u in units]:
            raise ValueError("the episodes do not match this document's units")
        return Built(units, memory, pieces, [])

    cached = ctx.artifacts.load(key, read, "the LIGHT memory") if ctx.artifacts else None
    if cached is not None:
        ctx.step("memory", f"reused a memory of {len(units)} units", cached=True,
                 units=len(units), pieces=len(cached.pieces), key=key)
        return cached
    built = await _build(light, ctx, plan, units, embedder)
    if built.failed:
        # Not a text without facts: no extraction came back at all. Kept here, this memory
        # would answer every later question on this document (ours).
        warnings.warn(f"the LIGHT memory build failed for every chunk (none of the "
                      f"{2 * len(units)} extractions of its {len(units)} units was valid); the "
                      "memory is not cached and will be retried on the next question",
                      LongweaveWarning, 2)
    elif ctx.artifacts is not None:
        def write(d: Path) -> None:
            built.memory.save(d)
            (d / _PAD).write_text(json.dumps(
                [[asdict(b) for b in p.bullets] for p in built.pieces]), encoding="utf-8")
        ctx.artifacts.save(key, write, "the LIGHT memory")
    return built


def _load_pieces(path: Path) -> list[Piece]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [Piece(tuple(Bullet(b["text"], tuple(b["units"])) for b in p)) for p in rows]


def _history(units: list[MemoryUnit], i: int, budget: int, count: Any) -> str:
    """The tail of the units before i, newest first until `budget`, in document order."""
    parts: list[str] = []
    used = 0
    for u in reversed(units[:i]):
        cost = count(u.text) + 1
        if used + cost > budget:
            break
        parts.append(u.text)
        used += cost
    return "\n".join(reversed(parts))


async def _build(light: LIGHT, ctx: RunContext, plan: Plan, units: list[MemoryUnit],
                 embedder: Any) -> Built:
    calls_before, n = ctx.usage.calls, len(units)
    gate = asyncio.Semaphore(light.concurrency)
    kv_schema = prompts.kv_schema(light.kv_items)
    facts_schema = prompts.facts_schema(light.fact_items)

    async def extract(i: int, kind: str) -> Any:
        history = _history(units, i, plan.history_tokens, ctx.llm.count_tokens)
        make = prompts.kv_messages if kind == "kv" else prompts.facts_messages
        schema = kv_schema if kind == "kv" else facts_schema
        async with gate:
            return await light.structured(ctx, "extractor", make(history, units[i].text), schema,
                                          light.extract_max_new, index=i, total=n,
                                          keep="items" if kind == "kv" else "facts")

    # Both extractions of every unit are independent: all of them run concurrently (§8.7).
    jobs = [extract(i, kind) for i in range(n) for kind in ("kv", "facts")]
    results = await asyncio.gather(*jobs)
    kvs, facts = results[0::2], results[1::2]
    invalid = sum(r is None for r in results)
    episodes = []
    for unit, kv, fs in zip(units, kvs, facts, strict=True):
        lines = [f"{item.key}: {item.value}" for item in kv.items] if kv else []
        if kv and kv.summary.strip():
            lines.append(kv.summary.strip())
        # Without an extraction the unit is indexed by its own text (ours).
        episodes.append(Episode(unit, "\n".join(lines) or unit.text,
                                tuple(fs.facts) if fs else ()))
    pad = Scratchpad(plan.scratch_target, ctx.llm.count_tokens)
    flags = ["extract_invalid"] if invalid else []
    for ep in episodes:  # the fold is sequential: each compression sees everything before it
        pad.add(ep.facts, ep.unit.index)
        if pad.needs_compression():
            flags += await _compress(light, ctx, plan, pad)
    memory = EpisodicMemory(embedder, ctx.document.id)
    await asyncio.to_thread(memory.add, episodes)
    pieces = await asyncio.to_thread(
        lambda: pad.pieces(embedder, max_tokens=light.piece_tokens,
                           percentile=light.split_percentile, buffer=light.split_buffer))
    ctx.step("memory", f"built a memory of {n} units, {len(pieces)} pieces", cached=False,
             units=n, pieces=len(pieces), compressions=pad.compressions, invalid=invalid,
             calls=ctx.usage.calls - calls_before, unit_tokens=plan.unit_tokens,
             scratch_target=plan.scratch_target, pad_tokens=pad.tokens())
    return Built(units, memory, pieces, flags, failed=invalid == len(results))


async def _compress(light: LIGHT, ctx: RunContext, plan: Plan, pad: Scratchpad) -> list[str]:
    """One compressor call; the result is cut to the target. Oldest bullets that would overflow
    the call are dropped first; an invalid reply keeps the newest bullets that fit (ours)."""
    flags: list[str] = []
    schema = prompts.compressed_schema(light.section_items)
    extra = ctx.llm.count_tokens("\n\n" + json_instructions(schema)) + 1
    def messages() -> list:
        return prompts.compress_messages(pad.render(), plan.scratch_target)
    while (len(pad.bullets) > 1 and ctx.llm.count_prompt_tokens(messages()) + extra
           + plan.compress_max_new + light.margin > plan.window):
        pad.bullets.pop(0)
        flags = ["scratchpad_trimmed"]
    before = pad.tokens()
    result = await light.structured(ctx, "compressor", messages(), schema, plan.compress_max_new,
                                    index=pad.compressions)
    if result is None:
        pad.replace(pad.bullets[::-1])  # keeps the newest that fit, then restores order below
        pad.bullets.reverse()
        flags.append("compress_invalid")
    else:
        bullets = [b for s in prompts.SECTIONS for line in getattr(result, s)
                   if (b := parse_bullet(line)) is not None]
        pad.replace(bullets)
    ctx.step("compressor", f"scratchpad {before} -> {pad.tokens()} tokens",
             index=pad.compressions - 1, before=before, after=pad.tokens(),
             target=plan.scratch_target, valid=result is not None)
    return flags
