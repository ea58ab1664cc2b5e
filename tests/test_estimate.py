"""The pre-run estimate against real runs with the strict scripted model.

For every strategy: run it, estimate it without a model, and compare. Call counts must match
exactly where the strategy's calls do not depend on the model's decisions (and per role for the
per-document builds), lie within the estimate's bounds where they do, and prompt tokens must be
within 25% of the run's. Replies are scripted at a known share of each call's max_tokens, and
the estimate is told that share through `Assumptions`, as a user would for their model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from longweave.answer import Usage
from longweave.cache import ArtifactCache
from longweave.documents import Document
from longweave.estimate import Assumptions, Estimate, aestimate, aestimate_many, estimate
from longweave.llm import Message
from longweave.runner import arun
from longweave.testing import HashEmbedder, Request, ScriptedModel, quoted_after
from tests.cli_run import run_cli
from tests.test_prism_compact import keep_last as keep_newest

QUESTION = "Where did the keeper hide the spare lamp?"
TAG = re.compile(r"SENTINEL-(\d+)")


def document(n: int = 12, words: int = 60) -> Document:
    """n paragraphs, each with a sentinel and `words` words (regex tokens) of filler."""
    paras = [f"SENTINEL-{i}. The keeper wrote " + " ".join(f"w{i}x{j}" for j in range(words))
             + "." for i in range(n)]
    return Document.from_text("\n\n".join(paras))


def words(n: int) -> str:
    return " ".join(f"note{i}" for i in range(n))


def assert_close(est: Estimate, usage: Usage, *, exact_calls: bool) -> None:
    if exact_calls:
        assert est.calls == usage.calls
    assert est.low.calls <= usage.calls <= est.high.calls
    assert est.low.prompt_tokens <= usage.prompt_tokens <= est.high.prompt_tokens
    assert abs(est.prompt_tokens / usage.prompt_tokens - 1) <= 0.25, (
        est.prompt_tokens, usage.prompt_tokens)


def roles(model: ScriptedModel) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in model.requests:
        out[r.role] = out.get(r.role, 0) + 1
    return out


async def test_chain_of_agents_calls_exact_and_prompt_tokens_close() -> None:
    doc, model = document(30), ScriptedModel(context_window=1024)
    model.on("worker", reply=words(32))  # a quarter of cu_cap = max_new = 128
    model.on("manager", reply="Under the stairs.")
    options = {"max_new": 128}
    answer = await arun(_strategy("chain-of-agents", **options), doc, QUESTION, model)
    est = await aestimate(doc, "chain-of-agents", ScriptedModel(context_window=1024), QUESTION,
                          assumptions=Assumptions(text_fill=0.25), **options)
    assert est.n_chunks == answer.steps[0].detail["chunks"] >= 3
    assert est.roles["worker"].calls == roles(model)["worker"]
    assert_close(est, answer.usage, exact_calls=True)
    assert abs(est.prompt_tokens / answer.usage.prompt_tokens - 1) < 0.05


@pytest.mark.parametrize("tie", [False, True])
async def test_bidir_with_judge_counts_the_judge_only_in_the_high_bound(tie: bool) -> None:
    """Two paths of l workers and a manager each; the judge (and its re-asks) only on a tie."""
    doc, model = document(30), ScriptedModel(context_window=1024)
    model.on("worker", reply=words(32))
    model.on("manager", reply=lambda r: "Under the stairs." if not tie or len(
        model.calls("manager")) == 1 else "In the attic.")
    model.on("judge", reply={"reason": "r", "index": 2})
    options = {"max_new": 128, "paths": "bidir", "selector": "judge"}
    answer = await arun(_strategy("chain-of-agents", **options), doc, QUESTION, model)
    est = await aestimate(doc, "chain-of-agents", ScriptedModel(context_window=1024), QUESTION,
                          assumptions=Assumptions(text_fill=0.25), **options)
    assert est.roles["worker"].calls == roles(model)["worker"] == 2 * est.n_chunks >= 6
    assert est.calls == 2 * (est.n_chunks + 1) == answer.usage.calls - tie
    assert est.high.calls == est.calls + 3  # one judge call and its two re-asks
    assert roles(model).get("judge", 0) == int(tie)
    assert_close(est, answer.usage, exact_calls=not tie)


async def judged_paths(doc: Document, paths: str) -> tuple[ScriptedModel, Any, Any]:
    """A Chain-of-Agents run over `doc` with `paths` and the judge selector, whose paths all
    agree, and the estimate of the same run: (model, answer, estimate)."""
    model = ScriptedModel(context_window=1024)
    model.on("worker", reply=words(32))
    model.on("manager", reply="Under the stairs.")
    options = {"max_new": 128, "paths": paths, "selector": "judge"}
    answer = await arun(_strategy("chain-of-agents", **options), doc, QUESTION, model)
    est = await aestimate(doc, "chain-of-agents", ScriptedModel(context_window=1024), QUESTION,
                          assumptions=Assumptions(text_fill=0.25), **options)
    return model, answer, est


@pytest.mark.parametrize("paths", ["perm5", "self5"])
async def test_five_path_chain_of_agents_counts_five_chains_and_the_judge_when_it_can_run(
    paths: str,
) -> None:
    """P = 5: 5(l + 1) calls as a scripted run makes them; the paths agree, so the judge (and
    its re-asks) is only in the high bound."""
    model, answer, est = await judged_paths(document(30), paths)
    assert est.roles["worker"].calls == roles(model)["worker"] == 5 * est.n_chunks >= 15
    assert est.roles["manager"].calls == roles(model)["manager"] == 5
    assert est.calls == answer.usage.calls == 5 * (est.n_chunks + 1)
    assert est.high.calls == est.calls + 3 and "judge" not in roles(model)
    assert_close(est, answer.usage, exact_calls=True)
    assert abs(est.prompt_tokens / answer.usage.prompt_tokens - 1) < 0.05


@pytest.mark.parametrize(("paths", "n", "kept"), [("bidir", 1, 1), ("perm5", 1, 1),
                                                  ("perm5", 2, 2), ("self5", 1, 5)])
async def test_chain_of_agents_estimate_drops_the_repeated_orders_the_run_drops(
    paths: str, n: int, kept: int,
) -> None:
    """bidir over one chunk and perm5 over fewer chunks than orders run each order once (self5
    samples, so it keeps its five); the estimate counts the paths that run, and a judge only
    when there are several."""
    model, answer, est = await judged_paths(document(n, words=400), paths)
    assert est.n_chunks == answer.steps[0].detail["chunks"] == n
    assert answer.steps[0].detail["paths"] == kept
    assert est.roles["manager"].calls == roles(model)["manager"] == kept
    assert est.calls == answer.usage.calls == kept * (n + 1)
    assert est.high.calls == est.calls + (3 if kept > 1 else 0)
    assert any("distinct reading order" in note for note in est.notes) == (paths != "self5")
    assert_close(est, answer.usage, exact_calls=True)


async def test_code_task_estimate_counts_the_code_prompts() -> None:
    doc, model = document(30), ScriptedModel(context_window=1024)
    model.on("worker", reply=words(32))
    model.on("manager", reply="x = 1")
    options = {"max_new": 128, "task": "code"}
    answer = await arun(_strategy("chain-of-agents", **options), doc, "", model)
    est = await aestimate(doc, "chain-of-agents", ScriptedModel(context_window=1024), "",
                          assumptions=Assumptions(text_fill=0.25), **options)
    assert est.calls == answer.usage.calls == est.n_chunks + 1 >= 4
    assert abs(est.prompt_tokens / answer.usage.prompt_tokens - 1) < 0.05


async def test_truncate_prompt_is_exact() -> None:
    doc, model = document(40), ScriptedModel(context_window=512)
    model.on("reader", reply="Under the stairs.")
    answer = await arun(_strategy("truncate", max_new=64), doc, QUESTION, model)
    est = await aestimate(doc, "truncate", ScriptedModel(context_window=512), QUESTION, max_new=64)
    assert est.calls == answer.usage.calls == 1
    assert est.prompt_tokens == answer.usage.prompt_tokens


async def test_rag_one_call_prompt_close() -> None:
    doc, model = document(30), ScriptedModel(context_window=2048)
    model.on("reader", reply="Under the stairs.")
    options = {"k": 4, "chunk_tokens": 64, "max_new": 64}
    answer = await arun(_strategy("rag", **options), doc, QUESTION, model)
    est = await aestimate(doc, _strategy("rag", **options), ScriptedModel(context_window=2048),
                          QUESTION)
    assert est.n_chunks >= 20
    assert_close(est, answer.usage, exact_calls=True)


async def test_prism_calls_exact_and_prompt_tokens_close() -> None:
    doc, model = document(10), ScriptedModel(context_window=4096)

    def step(request: Request) -> dict[str, Any]:  # one piece of evidence per chunk
        i = int(TAG.findall(request.text)[-1])
        return {"revisions": [{"op": "add", "path": ["evidence", len(model.calls("stepper")) - 1],
                               "value": f"SENTINEL {i}" + " detail" * 20}]}

    model.on("stepper", reply=step)
    model.on("manager", reply={"answer": "Under the stairs.", "used_paths": []})
    options = {"chunk_tokens": 128, "window": 4096}
    answer = await arun(_strategy("prism", **options), doc, QUESTION, model)
    fill = _fill(model, "stepper", 512)
    est = await aestimate(doc, "prism", ScriptedModel(context_window=4096), QUESTION,
                          assumptions=Assumptions(json_fill=fill), **options)
    assert est.n_chunks == len(model.calls("stepper"))
    assert_close(est, answer.usage, exact_calls=True)


def prism_model(compressor: Any) -> ScriptedModel:
    """A step adds one long piece of evidence at the next free index of the shown log."""
    model = ScriptedModel(context_window=4096)

    def step(request: Request) -> dict[str, Any]:
        i = int(TAG.findall(request.text)[-1])
        k = request.text.split("--- end of memory ---")[0].count('"path":["evidence",')
        return {"revisions": [{"op": "add", "path": ["evidence", k],
                               "value": f"SENTINEL {i}" + " detail" * 20}]}

    model.on("stepper", reply=step)
    model.on("compressor", reply=compressor)
    model.on("manager", reply={"answer": "Under the stairs.", "used_paths": []})
    return model


PRISM_OPTIONS = {"chunk_tokens": 128, "window": 4096}


def triple(counts: Any) -> tuple[int, int, int]:
    return counts.calls, counts.prompt_tokens, counts.completion_tokens


@pytest.mark.parametrize(("options", "point", "low", "high"), [
    ({}, (11, 15500, 1694), (11, 7030, 11), (32, 93469, 16384)),
    ({"mem_cap": 100}, (11, 8030, 1694), (11, 7030, 11), (32, 23840, 16384)),
])
async def test_prism_freeze_estimate_is_unchanged_by_compaction_support(
        options: dict[str, Any], point: tuple[int, ...], low: tuple[int, ...],
        high: tuple[int, ...]) -> None:
    # The values the estimate gave before it counted compaction (overflow="freeze" is default),
    # moved since by two prompt changes only: the re-ask room is one token per complaint
    # character (the default mem_cap's high bound was 100322), and the prism-6 step prefix is
    # 20 tokens longer (each of the 10 steps' prompts, 200 in all).
    est = await aestimate(document(10), "prism", ScriptedModel(context_window=4096), QUESTION,
                          **PRISM_OPTIONS, **options)
    assert (triple(est), triple(est.low), triple(est.high)) == (point, low, high)
    assert set(est.roles) == {"stepper", "manager"}


@pytest.mark.parametrize(("compressor", "rewrites"), [(keep_newest, 2), ("not json", 12)])
async def test_prism_compact_estimate_bounds_contain_a_run_that_compacts(
        compressor: Any, rewrites: int) -> None:
    doc, model = document(10), prism_model(compressor)
    options = {**PRISM_OPTIONS, "mem_cap": 200}
    answer = await arun(_strategy("prism", overflow="compact", **options), doc, QUESTION, model)
    assert len(model.calls("compressor")) == rewrites  # "not json": 4 compactions x 3 attempts
    est = await aestimate(doc, "prism", ScriptedModel(context_window=4096), QUESTION,
                          overflow="compact", **options)
    frozen = await aestimate(doc, "prism", ScriptedModel(context_window=4096), QUESTION,
                             **options)
    assert est.n_chunks == len(model.calls("stepper")) == frozen.n_chunks
    assert est.low.calls <= answer.usage.calls <= est.high.calls
    assert est.low.prompt_tokens <= answer.usage.prompt_tokens <= est.high.prompt_tokens
    # The rewrites are in the high bound only: max_compactions x (retries + 1) calls, each
    # showing the memory at mem_cap and one step reply of revisions, answered at mem_cap.
    assert est.low == frozen.low
    extra = [a - b for a, b in zip(triple(est.high), triple(frozen.high), strict=True)]
    calls = model.calls("compressor")
    assert extra[0] == 4 * 3 >= len(calls)
    assert extra[1] >= sum(r.prompt_tokens for r in calls)
    assert extra[1] // extra[0] >= max(r.prompt_tokens for r in calls)
    assert extra[2] == 4 * 3 * 200
    # The point: the rewrites the growth model makes (memory at compact_target x mem_cap after
    # each), up to max_compactions.
    assert est.roles["compressor"].calls == 4
    if compressor is keep_newest:
        assert_close(est, answer.usage, exact_calls=False)


async def test_prism_compact_estimate_plans_as_the_strategy_does() -> None:
    """`compact` reserves room for the rewrite call: the estimate's mem_cap is the run's."""
    doc, caps = document(10), {}
    for overflow in ("freeze", "compact"):
        model = prism_model(keep_newest)
        answer = await arun(_strategy("prism", overflow=overflow, **PRISM_OPTIONS), doc,
                            QUESTION, model)
        caps[overflow] = answer.steps[0].detail["mem_cap"]
    assert caps["compact"] < caps["freeze"]
    derived = await aestimate(doc, "prism", ScriptedModel(context_window=4096), QUESTION,
                              overflow="compact", **PRISM_OPTIONS)
    given = await aestimate(doc, "prism", ScriptedModel(context_window=4096), QUESTION,
                            overflow="compact", mem_cap=caps["compact"], **PRISM_OPTIONS)
    assert derived == given


class Scorer:
    """An attention scorer for tests: word tokens; attention favours the sentinel of paragraph 7."""

    name, context_window = "test-scorer", 8192

    def __init__(self) -> None:
        self.words: list[str] = []

    def render(self, messages: Sequence[Message]) -> str:
        return "".join(f"<{m.role}> {m.content}\n" for m in messages) + "<assistant>"

    def encode(self, text: str) -> list[int]:
        pieces = re.findall(r"\s*(?:\w+|[^\w\s])|\s+", text)
        self.words += pieces
        return list(range(len(self.words) - len(pieces), len(self.words)))

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        hot = np.array([5.0 if "SENTINEL" in self.words[i] else 1.0 for i in ids], np.float32)
        rows = np.tile(hot / hot.sum(), (len(ids) - start, 1))
        return rows.astype(np.float32)


@pytest.mark.parametrize("strategy", ["prism", "light", "graph-reader"])
async def test_keep_cut_counts_kept_reasks_in_the_point_and_all_in_the_high_bound(
        strategy: str) -> None:
    doc, model, role = document(10), ScriptedModel(context_window=4096), {
        "prism": "stepper", "light": "extractor", "graph-reader": "extractor"}[strategy]
    guess = Assumptions(reask_share=0.5, kept_reask_share=0.1)
    options: dict[str, Any] = {"prism": {"chunk_tokens": 128, "window": 4096},
                               "light": {"unit_tokens": 120, "window": 4096},
                               "graph-reader": {"chunk_tokens": 128, "window": 4096}}[strategy]
    kept = await aestimate(doc, _strategy(strategy, **options), model, QUESTION,
                           assumptions=guess)
    asked = await aestimate(doc, _strategy(strategy, keep_cut=False, **options), model, QUESTION,
                            assumptions=guess)
    none = await aestimate(doc, _strategy(strategy, **options), model, QUESTION,
                           assumptions=Assumptions())
    base = none.roles[role].calls  # no re-asks at all
    assert base >= 3 and kept.roles[role].calls == round(1.1 * base)
    assert asked.roles[role].calls == round(1.5 * base)
    assert kept.high == asked.high and kept.low == asked.low


async def test_infini_retri_one_forward_per_window_plus_the_answer() -> None:
    doc, model = document(20), ScriptedModel()
    model.on("reader", reply="Under the stairs.")
    options = {"window": 128, "topk": 16}
    answer = await arun(_strategy("infini-retri", scorer=Scorer(), **options), doc, QUESTION,
                        model)
    est = await aestimate(doc, "infini-retri", ScriptedModel(), QUESTION, scorer=Scorer(),
                          **options)
    assert est.n_chunks == answer.steps[0].detail["windows"] >= 5
    assert est.roles["scorer"].completion_tokens == 0
    assert_close(est, answer.usage, exact_calls=True)


MW_OPTIONS = {"window": 1024, "max_children": 3, "segment_tokens": 80, "nav_max_new": 48,
              "answer_max_new": 32, "reasoning_chars": 100, "margin": 16}


def walker_model() -> ScriptedModel:
    """Summaries of ~a quarter of their cap; the walk goes down the first child and answers."""
    model = ScriptedModel(context_window=1024)
    model.on("summarizer", reply=words(40))
    model.on("navigator", reply={"reasoning": "the first part", "action": "goto", "child": 1})
    model.on("reader", reply={"reasoning": "it is here", "action": "answer", "answer": "stairs"})
    return model


async def test_mem_walker_build_exact_walk_within_bounds_and_cached_tree(tmp_path: Path) -> None:
    doc, model, cache = document(9), walker_model(), ArtifactCache(tmp_path)
    answer = await arun(_strategy("mem-walker", **MW_OPTIONS), doc, QUESTION, model,
                        artifacts=cache)
    summary_max_new = model.calls("summarizer")[0].max_tokens  # the replies are 40 tokens
    assumptions = Assumptions(text_fill=40 / summary_max_new)
    est = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), QUESTION,
                          assumptions=assumptions, **MW_OPTIONS)
    assert est.roles["summarizer"].calls == roles(model)["summarizer"] >= 4
    assert est.build.calls == est.roles["summarizer"].calls
    # the straight walk down the first child is the point estimate: exact here
    assert_close(est, answer.usage, exact_calls=True)
    # the tree is cached now: only the walk is estimated, and only the walk runs
    again = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), QUESTION,
                            artifacts=cache, **MW_OPTIONS)
    assert again.reused == 1 and "summarizer" not in again.roles
    model.requests.clear()
    second = await arun(_strategy("mem-walker", **MW_OPTIONS), doc, QUESTION, model,
                        artifacts=cache)
    assert again.calls == second.usage.calls == len(model.requests)


MC_QUESTION = (f"{QUESTION}\n\n (A) Under the stairs. \n (B) In the attic above the lamp room. \n"
               " (C) Behind the lighthouse. \n (D) Nowhere. \n\n"
               "Answer with the letter of the correct option.")
LEAF_PROMPT, FALLBACK_PROMPT = "You reached this passage", "The search is over"


def lost_walker_model(fallback: dict[str, Any]) -> ScriptedModel:
    """Goes down the first child; every leaf goes back, so the walk ends in the fallback."""
    model = ScriptedModel(context_window=1024)
    model.on("summarizer", reply=words(40))
    model.on("navigator", reply={"reasoning": "the first part", "action": "goto", "child": 1})
    model.on("reader", contains=LEAF_PROMPT, reply={"reasoning": "not here", "action": "back"})
    model.on("reader", contains=FALLBACK_PROMPT, reply=fallback)
    return model


def prompt_tokens(model: ScriptedModel, role: str) -> int:
    return sum(r.prompt_tokens for r in model.calls(role))


async def test_mem_walker_multiple_choice_estimate_renders_the_options_slot() -> None:
    """The leaf prompt shows the stem and the options slot, as the run sends it: exact here."""
    doc, model = document(9), walker_model()
    model.rules = [r for r in model.rules if r.role != "reader"]
    model.on("reader", reply={"reasoning": "it is here", "action": "answer", "answer": "B"})
    answer = await arun(_strategy("mem-walker", **MW_OPTIONS), doc, MC_QUESTION, model)
    (read,) = model.calls("reader")
    assert "Options:\nA. Under the stairs." in read.text and answer.text == "B"
    assumptions = Assumptions(text_fill=40 / model.calls("summarizer")[0].max_tokens)
    est = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), MC_QUESTION,
                          assumptions=assumptions, **MW_OPTIONS)
    assert {r: c.calls for r, c in est.roles.items()} == roles(model)
    assert est.roles["reader"].prompt_tokens == read.prompt_tokens
    assert est.roles["navigator"].prompt_tokens == prompt_tokens(model, "navigator")
    assert_close(est, answer.usage, exact_calls=True)
    assert abs(est.prompt_tokens / answer.usage.prompt_tokens - 1) < 0.05


@pytest.mark.parametrize("question", [QUESTION, MC_QUESTION], ids=["free", "options"])
async def test_mem_walker_walk_cut_at_max_nav_steps_counts_the_fallback(question: str) -> None:
    """Two triages, a leaf and three reverts fill max_nav_steps=6; the walk the estimate is told
    (walk_reverts=4) passes it, so it is cut there and the fallback answers, as in the run."""
    doc, model = document(9), lost_walker_model({"answer": "B"})
    options = MW_OPTIONS | {"max_nav_steps": 6}
    answer = await arun(_strategy("mem-walker", **options), doc, question, model)
    assert {"fallback", "capped"} <= set(answer.flags) and answer.text == "B"
    assert len(model.calls("navigator")) + len(model.calls("reader")) == 6 + 1
    (asked,) = [r for r in model.calls("reader") if FALLBACK_PROMPT in r.text]
    assumptions = Assumptions(text_fill=40 / model.calls("summarizer")[0].max_tokens,
                              walk_reverts=4)
    est = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), question,
                          assumptions=assumptions, **options)
    assert est.calls == answer.usage.calls and "then the fallback" in est.notes[-1]
    assert_close(est, answer.usage, exact_calls=True)
    assert abs(est.prompt_tokens / answer.usage.prompt_tokens - 1) < 0.05
    # every decision and the fallback at their worst, each re-asked `retries` times
    assert est.high.calls == est.build.calls + (6 + 1) * (1 + 2)
    assert est.high.prompt_tokens - est.build.prompt_tokens >= 3 * 7 * asked.prompt_tokens


@pytest.mark.parametrize(("leaves", "reverts"), [(1, 2), (2, 3)])
async def test_mem_walker_walk_cut_at_max_leaves_read_counts_the_fallback(leaves: int,
                                                                          reverts: int) -> None:
    """The walk the estimate is told reads one leaf more than max_leaves_read allows (its reverts
    alternate a triage and a leaf); the run ends in the fallback after the last leaf it may
    read, and so does the estimate, well within max_nav_steps."""
    doc, model = document(9), lost_walker_model({"answer": "B"})
    options = MW_OPTIONS | {"max_leaves_read": leaves}
    answer = await arun(_strategy("mem-walker", **options), doc, QUESTION, model)
    assert {"fallback", "capped"} <= set(answer.flags) and answer.text == "B"
    read = [r for r in model.calls("reader") if LEAF_PROMPT in r.text]
    assert len(read) == leaves and len(model.calls("navigator")) == 2 + leaves - 1
    assumptions = Assumptions(text_fill=40 / model.calls("summarizer")[0].max_tokens,
                              walk_reverts=reverts)
    est = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), QUESTION,
                          assumptions=assumptions, **options)
    assert est.calls == answer.usage.calls and "then the fallback" in est.notes[-1]
    assert_close(est, answer.usage, exact_calls=True)
    assert abs(est.prompt_tokens / answer.usage.prompt_tokens - 1) < 0.05


async def test_mem_walker_fallback_is_a_schema_call_reasked_only_in_the_high_bound() -> None:
    """max_nav_steps=2 ends the walk above the leaves: the fallback reads the root's summary."""
    from longweave.agents.mem_walker_prompts import leaf_answer_schema
    from longweave.structured import json_instructions

    doc, options = document(9), MW_OPTIONS | {"max_nav_steps": 2}
    model = lost_walker_model({"answer": "stairs"})
    answer = await arun(_strategy("mem-walker", **options), doc, QUESTION, model)
    assert "overview" in answer.flags
    assert (len(model.calls("navigator")), len(model.calls("reader"))) == (2, 1)
    fill = Assumptions(text_fill=40 / model.calls("summarizer")[0].max_tokens)
    est = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), QUESTION,
                          assumptions=fill, **options)
    assert {r: c.calls for r, c in est.roles.items()} == roles(model)
    assert est.roles["reader"].prompt_tokens == prompt_tokens(model, "reader")
    assert est.prompt_tokens == answer.usage.prompt_tokens
    # where the backend writes the schema into the prompt, LeafAnswer's instructions count
    written = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), QUESTION,
                              assumptions=fill.model_copy(update={"schema_in_prompt": True}),
                              **options)
    schema = leaf_answer_schema(_strategy("mem-walker", **options).answer_chars)
    assert written.roles["reader"].prompt_tokens - est.roles["reader"].prompt_tokens == (
        model.count_tokens("\n\n" + json_instructions(schema)))
    # a fallback that never validates is asked 1 + retries times: only the high bound has them
    model = lost_walker_model({"answer": " "})
    answer = await arun(_strategy("mem-walker", **options), doc, QUESTION, model)
    assert "invalid_answer" in answer.flags and roles(model)["reader"] == 1 + 2
    assert est.calls == answer.usage.calls - 2
    assert_close(est, answer.usage, exact_calls=False)
    # in the point estimate, re-asks follow reask_share, as for every structured call
    asked = await aestimate(doc, "mem-walker", ScriptedModel(context_window=1024), QUESTION,
                            assumptions=fill.model_copy(update={"reask_share": 1.0}), **options)
    assert asked.roles["reader"].calls == 2 and asked.high == est.high

def reader_model() -> ScriptedModel:
    def extract(request: Request) -> dict[str, Any]:
        text = quoted_after(request.text, "Passage:")
        return {"atomic_facts": [{"fact": f"{s} kept the lamp.", "key_elements": [s]}
                                 for s in re.findall(r"SENTINEL-\d+", text)]}

    def wander(request: Request) -> dict[str, Any]:
        base = {"notebook": words(30), "rationale": "go on"}
        if "Neighbouring nodes" in request.text:
            return base | {"action": "termination"}
        if "A chunk of the text" in request.text:
            return base | {"action": "search_more"}
        ids = re.findall(r"\[chunk (\d+)\]", request.text)
        return base | {"action": "read_chunk", "chunk_ids": [int(i) for i in ids[:1]]}

    model = ScriptedModel(context_window=4096)
    model.on("extractor", reply=extract)
    model.on("planner", contains="write a short plan", reply="1. Find the lamp.")
    model.on("planner", contains="Choose up to", reply=lambda r: {"nodes": [
        {"key": n, "score": 90} for n in re.findall(r"^- (.+)$", r.text, re.MULTILINE)[:2]]})
    model.on("stepper", reply=wander)
    model.on("answerer", reply={"analysis": "the notebooks agree", "answer": "stairs"})
    return model


async def test_graph_reader_build_exact_and_query_within_bounds() -> None:
    doc, model = document(8), reader_model()
    options = {"chunk_tokens": 80, "n_init": 2, "merge_threshold": None, "margin": 16}
    answer = await arun(_strategy("graph-reader", **options), doc, QUESTION, model)
    est = await aestimate(doc, _strategy("graph-reader", **options), ScriptedModel(
        context_window=4096), QUESTION,
        assumptions=Assumptions(path_steps=2, text_fill=0.05, json_fill=0.1))
    assert est.roles["extractor"].calls == roles(model)["extractor"] == est.n_chunks >= 4
    assert_close(est, answer.usage, exact_calls=False)


def light_model() -> ScriptedModel:
    model = ScriptedModel(context_window=2048)
    model.on("extractor", contains="New passage:", reply={"items": [{"key": "k", "value": "v"}],
                                                       "summary": "a part"})
    model.on("extractor", contains="Latest exchange:", reply=lambda r: {"facts": [
        f"The keeper noted {s}." for s in TAG.findall(quoted_after(r.text, "Latest exchange:"))]})
    model.on("compressor", reply={"critical_context": ["merged facts [u0]"]})
    model.on("filter", reply={"needed": "yes"})
    model.on("reader", reply="Under the stairs.")
    return model


async def test_light_build_exact_and_question_within_bounds() -> None:
    doc, model = document(10), light_model()
    options = {"unit_tokens": 60, "max_new": 32, "extract_max_new": 96, "margin": 16, "k": 2,
               "z": 3, "piece_tokens": 40}
    answer = await arun(_strategy("light", **options), doc, QUESTION, model)
    est = await aestimate(doc, _strategy("light", **options), ScriptedModel(context_window=2048),
                          QUESTION, assumptions=Assumptions(json_fill=0.1))
    assert est.roles["extractor"].calls == roles(model)["extractor"] == 2 * est.n_chunks >= 6
    assert_close(est, answer.usage, exact_calls=False)


async def test_long_agent_within_bounds_and_exact_when_the_leader_answers_at_once() -> None:
    from longweave.agents.long_agent_prompts import FinalAnswer, LeaderStart

    def leader(request: Request) -> dict[str, Any]:
        if request.schema is LeaderStart:
            return {"action": "instruct", "text": "Find where the lamp is."}
        if request.schema is FinalAnswer:
            return {"answer": "stairs"}
        return {"action": "answer", "text": "Under the stairs."}

    def member(request: Request) -> dict[str, Any]:
        found = "SENTINEL-3." in request.text
        return {"found": found, "answer": "under the stairs" if found else "", "evidence": []}

    doc, model = document(8), ScriptedModel(context_window=3000)
    model.on("leader", reply=leader)
    model.on("member", reply=member)
    options = {"max_new": 64, "chunk_size": 80, "margin": 16}
    answer = await arun(_strategy("long-agent", **options), doc, QUESTION, model)
    est = await aestimate(doc, "long-agent", ScriptedModel(context_window=3000), QUESTION,
                          assumptions=Assumptions(rounds=1, merge_share=0), **options)
    assert est.calls == answer.usage.calls == est.n_chunks + 2 == est.low.calls
    assert est.high.calls >= 3 * est.n_chunks
    assert_close(est, answer.usage, exact_calls=True)


async def test_long_agent_rounds_merges_and_the_forced_final_call_match_the_run() -> None:
    """A leader that never answers: R rounds of m members, one merge and one leader turn each,
    then the forced final call (§2.4); the estimate told the rounds and merges is exact."""
    from longweave.agents.long_agent_prompts import FinalAnswer, LeaderStart

    def leader(request: Request) -> dict[str, Any]:
        if request.schema is LeaderStart:
            return {"action": "instruct", "text": "Find where the lamp is."}
        if request.schema is FinalAnswer:
            return {"answer": "stairs"}
        return {"action": "instruct", "text": "Look again for the lamp."}

    def member(request: Request) -> dict[str, Any]:
        said = {"SENTINEL-3.": "under the stairs", "SENTINEL-6.": "in the attic"}
        answer = next((a for tag, a in said.items() if tag in request.messages[-1].content), "")
        return {"found": bool(answer), "answer": answer, "evidence": []}

    doc, model = document(8), ScriptedModel(context_window=3000)
    model.on("leader", reply=leader)
    model.on("member", reply=member)
    model.on("merger", reply={"found": True, "answer": "under the stairs", "evidence": []})
    options = {"max_new": 64, "chunk_size": 80, "margin": 16, "max_rounds": 2}
    answer = await arun(_strategy("long-agent", **options), doc, QUESTION, model)
    m = answer.steps[0].detail["chunks"]
    assert roles(model) == {"leader": 1 + 2 + 1, "member": 2 * m, "merger": 2}
    est = await aestimate(doc, "long-agent", ScriptedModel(context_window=3000), QUESTION,
                          assumptions=Assumptions(rounds=2, merge_share=1 / (m - 1)), **options)
    assert {r: c.calls for r, c in est.roles.items()} == roles(model)
    assert_close(est, answer.usage, exact_calls=True)


# -- the API around the numbers ------------------------------------------------------------------


async def test_no_model_is_called() -> None:
    model = ScriptedModel(context_window=1024)  # no rules: any call would raise
    for name, options in [("chain-of-agents", {"max_new": 128}), ("truncate", {}),
                          ("mem-walker", MW_OPTIONS),
                          ("long-agent", {"max_new": 64, "max_rounds": 1})]:
        est = await aestimate(document(20), name, model, QUESTION, **options)
        assert est.calls > 0
    assert model.requests == []


async def test_prism_schema_generation_is_counted_not_called() -> None:
    model = ScriptedModel(context_window=8192)
    est = await aestimate(document(10), "prism", model, QUESTION, memory_schema="generate",
                          chunk_tokens=256)
    assert est.roles["planner"].calls == 1 and model.requests == []
    assert est.calls == est.n_chunks + 2


async def test_many_documents_sum_and_build_once_per_document() -> None:
    model = ScriptedModel(context_window=1024)
    a, b = document(9), document(12, words=50)
    one = await aestimate(a, "mem-walker", model, QUESTION, **MW_OPTIONS)
    walk = one.calls - one.build.calls
    both = await aestimate_many([(a, QUESTION), (a, "Who kept the lamp?"), b], "mem-walker",
                                model, QUESTION, **MW_OPTIONS)
    other = await aestimate(b, "mem-walker", model, QUESTION, **MW_OPTIONS)
    # Nothing was cached: a's second question reuses what its first builds, and says nothing.
    assert (both.documents, both.questions, both.reused) == (2, 3, 0)
    assert not any("artifact cached" in note for note in both.notes)
    assert both.calls == one.calls + walk + other.calls
    assert both.n_chunks == one.n_chunks + other.n_chunks  # each document counted once
    assert (one + other).roles["summarizer"].calls == one.build.calls + other.build.calls
    cached = await aestimate_many([(a, QUESTION), b], "mem-walker", model, QUESTION,
                                  cached=True, **MW_OPTIONS)
    assert cached.reused == 2 and cached.build.calls == 0
    # A question whose document an earlier question of the plan builds (a pilot's second one).
    later = await aestimate(a, "mem-walker", model, QUESTION, built=True, **MW_OPTIONS)
    assert (later.reused, later.build.calls, later.calls) == (0, 0, walk)
    assert not any("artifact cached" in note for note in later.notes)
    # One note per kind of remark, not one per document.
    rag = await aestimate_many([a, b], "rag", model, QUESTION)
    assert sum("the index embeds" in note for note in rag.notes) == 1


def test_cost_seconds_and_compare() -> None:
    est = Estimate(strategy="s", model="m", calls=10, prompt_tokens=2_000_000,
                   completion_tokens=500_000)
    assert est.cost(price_in=0.15, price_out=0.60) == pytest.approx(0.3 + 0.3)
    assert est.seconds(1000) == pytest.approx(2500)
    assert est.seconds(10_000, decode=100) == pytest.approx(200 + 5000)
    ratios = est.compare(Usage(calls=8, prompt_tokens=2_000_000, completion_tokens=0))
    assert ratios["calls"] == pytest.approx(1.25) and ratios["completion_tokens"] is None
    rows = est.rows(Usage(calls=8, prompt_tokens=1, completion_tokens=1), price_in=1,
                    price_out=1)
    assert rows[0] == ["", "estimate", "range", "actual", "est/actual"]
    assert rows[1][:2] == ["calls", "10"] and rows[-1][0] == "cost"


def test_calibrated_scales_by_the_pilot_and_stays_inside_the_bounds() -> None:
    from longweave.estimate import Counts

    pilot = Estimate(strategy="s", model="m", calls=4, prompt_tokens=1000, completion_tokens=100)
    rest = Estimate(strategy="s", model="m", documents=10, calls=40, prompt_tokens=10_000,
                    completion_tokens=1000, low=Counts(calls=20, prompt_tokens=5000,
                                                       completion_tokens=10),
                    high=Counts(calls=100, prompt_tokens=12_000, completion_tokens=4000),
                    roles={"worker": Counts(calls=40, prompt_tokens=10_000,
                                            completion_tokens=1000)})
    # The pilot made 1.5x the calls, 2x the prompt tokens and 0.5x the completion tokens.
    fixed = rest.calibrated(pilot, Usage(calls=6, prompt_tokens=2000, completion_tokens=50))
    assert fixed.calls == 60 and fixed.completion_tokens == 500
    assert fixed.prompt_tokens == 12_000  # 20,000 capped at the high bound
    # Roles are scaled by the same (capped) factors, so they still sum to the point.
    assert fixed.roles["worker"] == Counts(calls=60, prompt_tokens=12_000, completion_tokens=500)
    assert fixed.low == rest.low and fixed.high == rest.high and fixed.documents == 10
    assert "pilot" in fixed.notes[-1] and "calls x1.50" in fixed.notes[-1]
    assert "prompt tokens x1.20" in fixed.notes[-1]
    # A pilot that recorded nothing leaves the estimate as it was.
    same = rest.calibrated(pilot, Usage())
    assert same.point == rest.point
    # Answers from the completion cache count calls but no tokens: only calls are calibrated,
    # and the note says why the tokens were not.
    cached = rest.calibrated(pilot, Usage(calls=6, cache_hits=6))
    assert (cached.calls, cached.prompt_tokens, cached.completion_tokens) == (60, 10_000, 1000)
    assert "tokens not calibrated: 6 of the pilot's 6 calls came from the completion cache" in (
        cached.notes[-1])


async def test_generic_assumptions_say_so_and_point_to_a_pilot() -> None:
    model = ScriptedModel(context_window=1024)
    guessed = await aestimate(document(), "truncate", model, QUESTION)
    assert any("generic guesses" in n and "--pilot" in n for n in guessed.notes)
    told = await aestimate(document(), "truncate", model, QUESTION,
                           assumptions=Assumptions(answer_fill=0.9))
    assert not any("generic guesses" in n for n in told.notes)


def test_sync_estimate_with_a_bare_tokenizer() -> None:
    from longweave.testing import RegexTokenizer

    est = estimate(document(30), "chain-of-agents", RegexTokenizer(), QUESTION,
                   context_window=1024, max_new=128)
    assert est.model == "regex-words" and est.calls == est.n_chunks + 1 >= 3


def test_unknown_strategy_names_the_covered_ones() -> None:
    from longweave.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown strategy"):
        estimate("text", "nope", ScriptedModel())


def _fill(model: ScriptedModel, role: str, cap: int) -> float:
    """The share of `cap` the scripted replies of `role` filled, on average."""
    calls = model.calls(role)
    replies = [model.count_tokens(_reply_text(model, r)) for r in calls]
    return sum(replies) / len(replies) / cap


def _reply_text(model: ScriptedModel, request: Request) -> str:

    rule = next(r for r in model.rules if r.role == request.role)
    value = rule.reply(request) if callable(rule.reply) else rule.reply
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _strategy(name: str, **options: Any) -> Any:
    from longweave.agents.base import get_strategy

    strategy = get_strategy(name, **options)
    if hasattr(strategy, "with_embedder"):
        strategy = strategy.with_embedder(HashEmbedder(dim=64))
    return strategy


# -- longweave ask --estimate ----------------------------------------------------------------------


@pytest.fixture
def cli_model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    scripted = scripted_cli(context_window=1024)
    scripted.on("worker", reply=words(32))
    scripted.on("manager", reply="Under the stairs.")
    return scripted


def _doc_file(tmp_path: Path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text(document(30).text, encoding="utf-8")
    return path


def test_cli_estimate_prints_the_table_without_calling_the_model(
    cli_model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code = run_cli(monkeypatch, "ask", str(_doc_file(tmp_path)), QUESTION, "--estimate",
                   "--set", "max_new=128", "--price-in", "0.15", "--price-out", "0.6")
    out = capsys.readouterr().out
    assert code is None or code == 0
    assert cli_model.requests == []
    expected = estimate(document(30), "chain-of-agents", ScriptedModel(context_window=1024),
                        QUESTION, max_new=128)
    assert "chain-of-agents on scripted" in out
    assert f"{expected.calls}" in out and f"{expected.prompt_tokens:,}" in out
    assert "cost" in out


def test_cli_estimate_json_and_run_compares_with_the_actual_usage(
    cli_model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:

    monkeypatch.setenv("COLUMNS", "200")
    path = _doc_file(tmp_path)
    run_cli(monkeypatch, "ask", str(path), QUESTION, "--estimate", "--json",
            "--set", "max_new=128")
    planned = json.loads(capsys.readouterr().out)
    assert planned["strategy"] == "chain-of-agents" and cli_model.requests == []
    run_cli(monkeypatch, "ask", str(path), QUESTION, "--estimate", "--run", "--json",
            "--set", "max_new=128")
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    assert answer["usage"]["calls"] == planned["calls"] == len(cli_model.requests)
    assert "est/actual" in captured.err and "1.00" in captured.err


def test_cli_run_without_estimate_is_refused(
    cli_model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    code = run_cli(monkeypatch, "ask", str(_doc_file(tmp_path)), QUESTION, "--run")
    assert code == 2 and cli_model.requests == []
    assert "--run goes with --estimate" in " ".join(capsys.readouterr().err.split())
