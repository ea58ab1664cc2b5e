"""Cost formulas of the agent strategies whose calls depend on the model's decisions.

LongAgent (STRATEGIES.md §2.4), GraphReader (§3.4), MemWalker (§4.4) and LIGHT (§6.4). The
point estimate follows `Assumptions` (rounds, steps per path, reverts, kept pieces); the low
and high bounds span the decisions the strategy's caps allow. Per-document builds (GraphReader's
graph, MemWalker's tree, LIGHT's memory) are counted unless their artifact is cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from longweave.estimate import Counts
from longweave.estimate_formulas import AsyncFormula, Tally, fill, filler, initial_state

if TYPE_CHECKING:
    from longweave.agents.base import RunContext

__all__ = ["FORMULAS"]


async def long_agent(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents import long_agent_prompts as p

    state = await initial_state(s, ctx)
    chunks, q, a = state["chunks"], ctx.question, t.a
    m, rounds = len(chunks), s.max_rounds
    schemas = p.schemas(s.instruction_chars, s.answer_chars, s.quote_chars, s.max_quotes)
    out = fill(s.max_new, a.json_fill)
    instruction = min(out, t.chars(s.instruction_chars))
    reply = min(out, t.chars(s.answer_chars))
    mean = sum(c.n_tokens for c in chunks) / m
    clusters = min(s.shown_responses, max(1, m // 4))
    shown = [p.Shown(filler(reply), (0,))] * clusters

    def member(r: int, say: int = instruction, team: Sequence[Any] = shown) -> int:
        history = [(filler(say), filler(reply))] * (r - 1)  # round r: r - 1 past turns
        messages = p.member_messages(s.task, "", filler(say), shown=team if r > 1 else (),
                                     history=history)
        return t.prompt(messages, schemas.member) + round(mean)

    def leader_next(team: Sequence[Any]) -> int:
        return t.prompt(p.leader_next_messages(m, s.task, q, team, 0, False), schemas.turn)

    merge = t.prompt(p.merger_messages(s.task, "", "", filler(instruction)),
                     schemas.member) + round(2 * mean)
    most = min(m - 1, s.merge_cap)
    merges = round(a.merge_share * most)
    r_bar = min(a.rounds, rounds)
    start = t.prompt(p.leader_start_messages(m, s.task, q), schemas.start)
    t.add("leader", Counts.each(1, start, out), Counts.each(1, start, 1),
          Counts.each(1, start, s.max_new), retries=s.retries)
    point, high = Counts(), Counts()
    for r in range(1, rounds + 1):
        point += Counts.each(m, member(r), out) if r <= r_bar else Counts()
        high += Counts.each(m, member(r, t.chars(s.instruction_chars)), s.max_new)
    t.add("member", point, Counts.each(m, member(1, 0), 1), high, retries=s.retries)
    t.add("merger", Counts.each(r_bar * merges, merge, out), Counts(),
          Counts.each(rounds * most, merge, s.max_new), retries=s.retries)
    final = t.prompt(p.leader_final_messages(m, s.task, q, shown, 0, True), schemas.final)
    forced = a.rounds >= rounds  # the leader never answers by itself: the final call is made
    t.add("leader", Counts.each(r_bar, leader_next(shown), out)
          + Counts.each(int(forced), final, out), Counts.each(1, leader_next([]), 1),
          Counts.each(rounds, leader_next(shown), s.max_new) + Counts.each(1, final, s.max_new),
          retries=s.retries)
    t.notes.append(f"LongAgent: {r_bar} round(s) of {m} members with {merges} merge(s) each, "
                   + ("then the forced final answer" if forced else "then the leader answers"))
    t.n_chunks = m


async def graph_reader(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents import graph_reader_prompts as p

    budgets = s.budgets(ctx)
    chunks, q, a = ctx.chunk(budgets.chunk_tokens), ctx.question, t.a
    n = len(chunks)
    # Not a public hook yet: the key under which the strategy caches its graph.
    if not t.cached(lambda: s._artifact_key(ctx, budgets)[0]):
        schema = p.extraction_schema(s.max_facts, s.fact_chars, s.key_chars, s.max_keys)
        fixed = t.prompt(p.extraction_messages("", s.max_facts), schema)
        tokens = sum(c.n_tokens for c in chunks)
        out = fill(s.extract_max_new, a.json_fill)
        t.add("extractor", Counts(calls=n, prompt_tokens=n * fixed + tokens,
                                  completion_tokens=n * out),
              Counts(calls=n, prompt_tokens=n * fixed + tokens, completion_tokens=n),
              Counts(calls=n, prompt_tokens=n * fixed + tokens,
                     completion_tokens=n * s.extract_max_new), build=True, retries=s.retries,
              keeps_cut=s.keep_cut)
    plan, ask = fill(s.plan_max_new, a.text_fill), t.prompt(p.plan_messages(q))
    t.add("planner", Counts.each(1, ask, plan), Counts.each(1, ask, 1),
          Counts.each(1, ask, s.plan_max_new))
    names = [filler(3)] * min(s.candidates, 10 * n)  # ~10 key elements per chunk (ours)
    select = t.prompt(p.selection_messages(q, filler(plan), names, s.select_max),
                      p.selection_schema(s.select_max, s.key_chars))
    t.add("planner", Counts.each(1, select, fill(s.select_max_new, a.json_fill)),
          Counts.each(1, select, 1), Counts.each(1, select, s.select_max_new),
          retries=s.retries, keeps_cut=s.keep_cut)
    notebook = fill(t.chars(s.notebook_chars), a.text_fill)
    steps = min(a.path_steps, s.max_steps_per_path)
    content = min(budgets.content_tokens, round(sum(c.n_tokens for c in chunks) / n))
    # A path's first step shows its start node's facts; later ones a chunk (§3.3).
    facts = min(budgets.content_tokens,
                round(a.node_facts * fill(t.chars(s.fact_chars), a.json_fill)))
    legal = {"facts": ("read_chunk", "stop_and_read_neighbor"),
             "chunk": ("search_more", "read_previous_chunk", "read_subsequent_chunk",
                       "termination")}

    def step(i: int, note: int) -> int:
        """Step i's prompt without what it shows (the facts or the chunk)."""
        mode = "facts" if i == 0 else "chunk"
        schema = p.step_schema(mode, legal[mode], (0,) if i == 0 else (), (), s.notebook_chars,
                               s.rationale_chars, s.max_chunk_ids)
        shown = [filler(4)] * min(i, s.last_actions)
        return t.prompt(p.step_messages(mode, q, filler(plan), shown, filler(note), "",
                                        legal[mode]), schema)

    paths, out = s.n_init, fill(s.step_max_new, a.json_fill)
    point = Counts(calls=paths * steps, prompt_tokens=paths * sum(
        step(i, notebook) + (facts if i == 0 else content) for i in range(steps)),
        completion_tokens=paths * steps * out)
    most = t.chars(s.notebook_chars)
    worst = Counts(calls=paths * s.max_steps_per_path,
                   prompt_tokens=paths * sum(  # every step shows a full content budget
                       step(i, most) + budgets.content_tokens
                       for i in range(s.max_steps_per_path)),
                   completion_tokens=paths * s.max_steps_per_path * s.step_max_new)
    t.add("stepper", point, Counts(), worst, retries=s.retries)
    answer_schema = p.answer_schema(s.analysis_chars, s.answer_chars)
    answer = t.prompt(p.answer_messages(q, filler(plan), [filler(notebook)] * paths),
                      answer_schema)
    t.add("answerer", Counts.each(1, answer, fill(s.answer_max_new, a.json_fill)),
          Counts.each(1, t.prompt(p.answer_messages(q, "", [""]), answer_schema), 1),
          Counts.each(2, answer, s.answer_max_new), retries=s.retries)
    t.notes.append(f"GraphReader: {paths} path(s) of {steps} step(s) each")
    t.n_chunks = n


async def mem_walker(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents import mem_walker_prompts as p
    from longweave.agents.mem_walker_tree import summary_words
    from longweave.memory.summary_tree import balanced_groups

    plan = s.plan(ctx)
    chunks, q, a = ctx.chunk(plan.segment_tokens), ctx.question, t.a
    n, k = len(chunks), s.max_children
    levels: list[list[int]] = []  # group sizes of each internal level, bottom up
    width = n
    while width > 1:
        levels.append([len(g) for g in balanced_groups(width, k)])
        width = len(levels[-1])
    summary = min(plan.summary_cap, fill(plan.summary_max_new, a.text_fill))
    words = summary_words(plan.summary_max_new)
    out, cap = fill(plan.summary_max_new, a.text_fill), plan.summary_max_new
    # Not a public hook yet: the key under which the strategy caches its tree.
    if n > 1 and not t.cached(lambda: s._artifact_key(ctx, plan)[0]):
        fixed = t.prompt(p.leaf_summary_messages("", words))
        tokens = sum(c.n_tokens for c in chunks)
        leaves = Counts(calls=n, prompt_tokens=n * fixed + tokens, completion_tokens=n * out)
        t.add("summarizer", leaves, Counts(calls=n, prompt_tokens=n * fixed + tokens,
                                           completion_tokens=n),
              Counts(calls=n, prompt_tokens=n * fixed + tokens, completion_tokens=n * cap),
              build=True)
        for sizes in levels:
            point = low = high = Counts()
            for g in sizes:
                point += Counts.each(1, t.prompt(p.internal_summary_messages(
                    [filler(summary)] * g, words)), out)
                low += Counts.each(1, t.prompt(p.internal_summary_messages([""] * g, words)), 1)
                high += Counts.each(1, t.prompt(p.internal_summary_messages(
                    [filler(plan.summary_cap)] * g, words)), cap)
            t.add("summarizer", point, low, high, build=True)
    t.n_chunks = n
    if not q.strip():  # the root's summary answers; a one-leaf tree summarizes its leaf once
        if n == 1:
            prompt = t.prompt(p.leaf_summary_messages("", words)) + chunks[0].n_tokens
            t.add("summarizer", Counts.each(1, prompt, out))
        return
    depth, decision = len(levels), fill(s.nav_max_new, a.json_fill)
    memory = 0 if s.working_memory == "none" else summary
    segment = round(sum(c.n_tokens for c in chunks) / n)
    longest = max(c.n_tokens for c in chunks)
    triage_schema = p.triage_schema(k, s.reasoning_chars)
    # Not public hooks yet: the leaf and fallback prompts and schemas the strategy sends, with
    # a multiple-choice question's stem in the question slot and its options in their own.
    choices = s._choices(q)

    def triage(wm: int, children: int) -> int:  # triage shows the question as given
        return t.prompt(p.triage_messages(q, filler(min(wm, plan.wm_cap)),
                                          [filler(summary)] * children), triage_schema)

    def leaf(wm: int, shown: int = segment) -> int:
        return t.prompt(*s._leaf_request(choices, filler(min(wm, plan.wm_cap)), "")) + shown

    def fallback(wm: int, passage: int) -> int:
        return t.prompt(*s._fallback_request(choices, filler(min(wm, plan.wm_cap)),
                                             filler(passage)))

    # The point walk: straight down (one triage per internal level, root first), one leaf, then
    # walk_reverts more decisions, which alternate a triage back down to a sibling leaf and that
    # leaf's read (so the walk reads 1 + walk_reverts // 2 leaves, the last one answering).
    # Past max_nav_steps decisions, or past the read of the max_leaves_read-th leaf (which went
    # back, as a decision follows it), it is cut there, and the fallback answers; so it does
    # when a one-leaf tree's only leaf goes back.
    steps = s.max_nav_steps
    walked = min(steps, depth + 1 + 2 * (s.max_leaves_read - 1))  # decisions before the cut
    down = min(depth, walked)
    reads = int(depth < walked)
    reverts = max(0, min(a.walk_reverts, walked - depth - 1)) if depth else 0
    cut = depth + 1 + a.walk_reverts > walked or (depth == 0 and a.walk_reverts > 0)
    descent = [triage(d * memory, round(sum(levels[-1 - d]) / len(levels[-1 - d])))
               for d in range(depth)]
    triages = Counts(calls=down, prompt_tokens=sum(descent[:down]),
                     completion_tokens=down * decision)
    triages += Counts.each(reverts, (sum(descent) + leaf(depth * memory)) // (depth + 1),
                           decision)
    read = Counts.each(reads, leaf(depth * memory), decision)
    # Every decision at its worst: max_nav_steps of them (triage or leaf), then the fallback.
    worst = Counts.each(steps, max([leaf(plan.wm_cap, longest), *descent]), s.nav_max_new)
    if depth == 0:  # a one-leaf tree: the leaf answers (low), or goes back to the fallback
        t.add("reader", read, Counts.each(1, leaf(0), 1), worst, retries=s.retries)
    else:  # low: the root's triage goes back at once, then the fallback answers
        t.add("navigator", triages, Counts.each(1, descent[0], 1), worst, retries=s.retries)
        t.add("reader", read, Counts(), Counts(), retries=s.retries)
    # The fallback, a structured call like the decisions (re-asks: a share of it in the point
    # estimate, when the walk is cut; all of them in the high bound). It reads the last leaf,
    # or the root's summary when no leaf was read (ours: the low bound's).
    ended = Counts.each(int(cut), fallback(down * memory, segment if reads else summary),
                        fill(s.answer_max_new, a.json_fill))
    least = fallback(0, summary)
    t.add("reader", ended, Counts.each(1, least, 1) if depth else Counts(),
          Counts.each(1, fallback(plan.wm_cap, longest), s.answer_max_new), retries=s.retries)
    walk = f"{down} triage step(s)" + (" and one leaf" if reads else "")
    more = f", plus {reverts} revert(s)" if reverts else ""
    t.notes.append(f"MemWalker: a walk of {walk}{more}" + (", then the fallback" if cut else ""))


async def light(s: Any, ctx: RunContext, t: Tally) -> None:
    from longweave.agents import light_prompts as p
    from longweave.agents.light import working_memory
    from longweave.agents.light_build import artifact_key, split_units
    from longweave.agents.light_fill import reader_budget
    from longweave.errors import ConfigError
    from longweave.retrieval.embeddings import embedder_identity

    q, a = ctx.question, t.a
    if not q.strip():
        raise ConfigError("light needs a question", hint="ask a question of the memory")
    plan = s.plan(ctx)
    units = split_units(ctx, plan.unit_tokens)
    sizes = [t.tokens(u.text) for u in units]
    n, out = len(units), fill(s.extract_max_new, a.json_fill)
    per_unit = out  # scratchpad tokens a unit's facts add (about the reply's size)
    target = plan.scratch_target

    def fold(facts: int) -> tuple[int, int]:
        """(compressions, final pad tokens) when each unit adds `facts` tokens."""
        pad = done = 0
        for _ in range(n):
            pad += facts
            if pad > 2 * target:
                pad, done = target, done + 1
        return done, pad

    compressions, pad = fold(per_unit)
    embedder = embedder_identity(s.get_embedder(ctx))
    if not t.cached(lambda: artifact_key(s, ctx, plan, embedder)):
        kv = p.kv_schema(s.kv_items)
        facts = p.facts_schema(s.fact_items)
        fixed = (t.prompt(p.kv_messages("", ""), kv) + t.prompt(p.facts_messages("", ""), facts))
        prompt = 0
        for i, size in enumerate(sizes):  # the extractors see the units before, newest first
            history = 0
            for before in reversed(sizes[:i]):
                if history + before + 1 > plan.history_tokens:
                    break
                history += before + 1
            prompt += fixed + 2 * (history + size)
        t.add("extractor", Counts(calls=2 * n, prompt_tokens=prompt, completion_tokens=2 * n * out),
              Counts(calls=2 * n, prompt_tokens=prompt, completion_tokens=2 * n),
              Counts(calls=2 * n, prompt_tokens=prompt,
                     completion_tokens=2 * n * s.extract_max_new), build=True,
              retries=s.retries, keeps_cut=s.keep_cut)
        squeeze = t.prompt(p.compress_messages(filler(2 * target), target),
                           p.compressed_schema(s.section_items))
        most, _ = fold(s.extract_max_new)
        t.add("compressor", Counts.each(compressions, squeeze, fill(plan.compress_max_new,
                                                                     a.json_fill)),
              Counts(), Counts.each(most, squeeze, plan.compress_max_new), build=True,
              retries=s.retries)
    pieces = min(s.filter_cap, math.ceil(pad / s.piece_tokens))
    check = t.prompt(p.filter_messages(q, filler(s.piece_tokens)), p.Relevance)
    t.add("filter", Counts.each(pieces, check, fill(16, a.json_fill)), Counts(),
          Counts.each(s.filter_cap, check, 16), retries=s.retries)
    budget = reader_budget(s, ctx, q)
    work_cap = int(s.working_share * budget) if s.z else 0
    cost = {u.index: size + 8 for u, size in zip(units, sizes, strict=True)}  # label, separator
    working = working_memory(units, s.z).select(work_cap, lambda u: cost[u.index])
    used_w = sum(cost[u.index] for u in working)
    kept = round(a.keep_share * pieces) * s.piece_tokens
    used_s = min(int(s.scratch_share * budget), kept)
    shown = {u.index for u in working}
    others = [cost[u.index] for u in units if u.index not in shown]
    mean = sum(others) / len(others) if others else 0
    used_e = min(budget - used_w - used_s, round(min(s.k, len(others)) * mean))
    fixed = t.prompt(p.reader_messages([], [], [], q))
    t.add("reader", Counts.each(1, fixed + used_w + used_s + used_e,
                                fill(s.max_new, a.answer_fill)),
          Counts.each(1, fixed + used_w, 1), Counts.each(1, fixed + budget, s.max_new))
    t.notes.append(f"LIGHT: {compressions} compression(s) and {pieces} filtered piece(s), "
                   "from facts about the size of one extraction reply per unit")
    t.n_chunks = n


FORMULAS: dict[str, AsyncFormula] = {
    "graph-reader": graph_reader, "light": light, "long-agent": long_agent,
    "mem-walker": mem_walker,
}
"""Strategy name -> its cost formula."""
