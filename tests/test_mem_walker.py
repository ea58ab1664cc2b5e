"""MemWalker against the strict scripted model: STRATEGIES.md §4.6 acceptance checks, caps,
invalid decisions, working memory, the cached tree, and one run of the real local model."""

from __future__ import annotations

import asyncio
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from longweave.agents import mem_walker_prompts
from longweave.agents.base import RunContext
from longweave.agents.mem_walker import MemWalker
from longweave.cache import ArtifactCache
from longweave.documents import Document, open_document
from longweave.errors import BudgetExceeded, LongweaveWarning
from longweave.events import EventLog
from longweave.memory.summary_tree import SummaryTree, TreeNode, balanced_groups
from longweave.runner import arun
from longweave.testing import Request, ScriptedModel, quoted_after

TAG = re.compile(r"SENTINEL-(\d+)|\bS(\d+)\b")
SHOWN = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)
GOTO_1 = {"reasoning": "the first part", "action": "goto", "child": 1}
BACK = {"reasoning": "not here", "action": "back"}
LEAF = "You reached this passage"  # in leaf prompts only (the fallback shows a passage too)
FALLBACK = "The search is over"  # in fallback prompts only
GUESS = {"answer": "best guess"}  # a valid LeafAnswer
# 9 paragraphs of ~62 tokens and 80-token segments: one sentinel per leaf; K=3 gives 9 -> 3 -> 1.
MW = MemWalker(window=1024, max_children=3, segment_tokens=80, nav_max_new=48, answer_max_new=32,
               reasoning_chars=100, margin=16)


def sentinel_document(n: int, words: int = 60) -> Document:
    paras = [
        f"SENTINEL-{i} " + " ".join(f"word{i}x{j}" for j in range(words)) + "." for i in range(n)
    ]
    return Document.from_text("\n\n".join(paras))


def tags(text: str) -> list[int]:
    return sorted({int(a or b) for a, b in TAG.findall(text)})


def summary_reply(request: Request) -> str:
    """A summary naming every sentinel its input covers, so prompts show what each node holds."""
    return "covers " + " ".join(f"S{i}" for i in tags(request.text))


def shown(request: Request) -> list[list[int]]:
    """The sentinels of each numbered child summary in a triage prompt, in order."""
    return [tags(text) for _, text in SHOWN.findall(request.text)]


def passage(request: Request) -> list[int]:
    return tags(quoted_after(request.text, "passage of the text:"))


def memory(request: Request) -> list[str]:
    if "What you have read on the way here" not in request.text:
        return []
    return quoted_after(request.text, "What you have read on the way here").split("\n\n")


def towards(target: int) -> Any:
    """A navigator that goes to the child covering `target`, or back when none does."""

    def reply(request: Request) -> dict[str, Any]:
        for n, covered in enumerate(shown(request), 1):
            if target in covered:
                return {"reasoning": f"S{target} is in part {n}", "action": "goto", "child": n}
        return BACK

    return reply


def reader_for(target: int, answer: str = "found it") -> Any:
    def reply(request: Request) -> dict[str, Any]:
        if target in passage(request):
            return {"reasoning": "it is here", "action": "answer", "answer": answer}
        return BACK

    return reply


def scripted(navigator: Any = GOTO_1, reader: Any = None, window: int = 1024) -> ScriptedModel:
    model = ScriptedModel(context_window=window)
    model.on("summarizer", reply=summary_reply)
    model.on("navigator", reply=navigator)
    if reader is not None:
        model.on("reader", contains=LEAF, reply=reader)
    model.on("reader", contains=FALLBACK, reply=GUESS)
    return model


# -- §4.6.1: the tree ------------------------------------------------------------------------------


async def test_tree_shape_and_one_summary_call_per_node() -> None:
    model, doc = scripted(reader=reader_for(0)), sentinel_document(9)
    answer = await arun(MW, doc, "Where is S0?", model)
    ctx = RunContext(model, doc, "q", MW.name)
    plan = MW.plan(ctx)
    tree = await MW.tree(ctx, plan)  # no artifact cache: built again, 13 more calls
    assert len(tree.leaves) == 9 and tree.depth == 2 and len(tree.nodes) == 13
    assert tree.tiles(len(doc.text))
    assert [tags(doc.text[leaf.start:leaf.end]) for leaf in tree.leaves] == [[i] for i in range(9)]
    for node in tree.nodes:
        assert node.is_leaf or 2 <= len(node.children) <= 3
    assert tree.node(tree.root).summary == "covers " + " ".join(f"S{i}" for i in range(9))
    build = next(s for s in answer.steps if s.role == "tree")
    assert build.detail == build.detail | {"cached": False, "nodes": 13, "calls": 13}
    summaries = model.calls("summarizer")
    assert len(summaries) == 26
    # leaves first, then the three parents, then the root: levels in order
    assert ["consecutive parts" in r.text for r in summaries[:13]] == [False] * 9 + [True] * 4
    assert all(r.max_tokens == plan.summary_cap for r in summaries)


@pytest.mark.parametrize("k", [3, 4, 5, 8])
def test_balanced_groups_never_leave_a_single_child(k: int) -> None:
    for count in range(2, 60):
        groups = balanced_groups(count, k)
        assert [i for g in groups for i in g] == list(range(count))
        assert all(2 <= len(g) <= k for g in groups)
        assert len(groups) == -(-count // k)


@dataclass
class CountingModel(ScriptedModel):
    """Yields once inside every call, so concurrent callers overlap; records the peak."""

    in_flight: int = 0
    peak: int = 0

    async def complete(self, messages: Any, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0)
            return await super().complete(messages, **kwargs)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("concurrency", [1, 4, 8])
async def test_summaries_of_a_level_run_concurrently_within_the_bound(concurrency: int) -> None:
    model = CountingModel(context_window=1024)
    model.on("summarizer", reply=summary_reply)
    model.on("navigator", reply=GOTO_1)
    model.on("reader", reply={"reasoning": "r", "action": "answer", "answer": "a"})
    walker = MW.model_copy(update={"concurrency": concurrency})
    await arun(walker, sentinel_document(9), "q?", model)
    assert model.peak == concurrency


async def test_second_question_reuses_the_cached_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, doc = scripted(navigator=towards(4), reader=reader_for(4)), sentinel_document(9)
    cache = ArtifactCache(tmp_path)
    first = await arun(MW, doc, "Where is S4?", model, artifacts=cache)
    assert len(model.calls("summarizer")) == 13
    model.requests.clear()
    second = await arun(MW, doc, "Where is S4, again?", model, artifacts=cache)
    assert model.calls("summarizer") == []
    assert second.usage.calls == 3 == first.usage.calls - 13  # depth triage + 1 leaf
    (tree_step,) = [s for s in second.steps if s.role == "tree"]
    assert tree_step.detail["cached"] is True and tree_step.detail["nodes"] == 13
    assert [p.name for p in tmp_path.iterdir()] == [tree_step.detail["key"]]
    # other tree settings are another artifact: built anew
    await arun(MW.model_copy(update={"max_children": 4}), doc, "q?", model, artifacts=cache)
    assert model.calls("summarizer")
    assert len(list(tmp_path.iterdir())) == 2
    # new prompt wording invalidates the trees built with the old one (§8.6)
    monkeypatch.setattr(mem_walker_prompts, "PROMPT_VERSION", "changed")
    model.requests.clear()
    await arun(MW, doc, "q?", model, artifacts=cache)
    assert len(model.calls("summarizer")) == 13 and len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize("damage", ["{not json", "null", "[]", '{"doc_id": 3}'])
async def test_an_unusable_cached_tree_is_moved_aside_rebuilt_once_and_cached_again(
    tmp_path: Path, damage: str
) -> None:
    model, doc = scripted(reader=reader_for(0)), sentinel_document(9)
    cache = ArtifactCache(tmp_path)
    await arun(MW, doc, "q?", model, artifacts=cache)
    (folder,) = tmp_path.iterdir()
    (folder / "tree.json").write_text(damage)
    model.requests.clear()
    with pytest.warns(RuntimeWarning, match="rebuilding the MemWalker tree.*moved to"):
        answer = await arun(MW, doc, "q?", model, artifacts=cache)
    assert len(model.calls("summarizer")) == 13 and answer.text == "found it"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[1] == folder.name and names[0].startswith(f".{folder.name}.unusable-")
    model.requests.clear()  # the rebuilt tree was cached in its place: the next one reuses it
    again = await arun(MW, doc, "q?", model, artifacts=cache)
    assert model.calls("summarizer") == [] and again.text == "found it"


@pytest.mark.parametrize("blocker", ["a file in the way", "a full disk"])
async def test_a_cache_that_cannot_be_written_warns_and_the_answer_stands(
    tmp_path: Path, blocker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    model, doc = scripted(reader=reader_for(0)), sentinel_document(9)
    cache = ArtifactCache(tmp_path / "cache" / "artifacts")
    if blocker == "a file in the way":
        (tmp_path / "cache").write_text("not a folder")
    else:
        def full(self: SummaryTree, path: Path) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(SummaryTree, "save", full)
    with pytest.warns(RuntimeWarning, match="the MemWalker tree is not cached.*next question"):
        answer = await arun(MW, doc, "q?", model, artifacts=cache)
    assert answer.text == "found it" and len(model.calls("summarizer")) == 13
    assert not cache.root.exists() or not any(cache.root.iterdir())  # no half-built folder


async def test_a_build_whose_every_summary_came_back_blank_is_not_cached(tmp_path: Path) -> None:
    doc, cache = sentinel_document(9), ArtifactCache(tmp_path)
    broken = scripted(navigator=towards(4), reader=reader_for(4))
    broken.rules[0].reply = ""  # the summarizer: a blank reply every time
    failure = "failed for every chunk.*retried on the next"
    with pytest.warns(LongweaveWarning, match=failure) as seen:
        first = await arun(MW, doc, "Where is S4?", broken, artifacts=cache)
    # it points at the strategy asking for the tree, not at the build's own module
    (failed,) = [w for w in seen if "failed for every chunk" in str(w.message)]
    assert Path(failed.filename).name == "mem_walker.py"
    assert len(broken.calls("summarizer")) == 13
    # The walk runs on the parts' openings, which do not name S4: it falls back, as before.
    assert first.text == "best guess" and "fallback" in first.flags
    assert list(tmp_path.iterdir()) == []  # the tree without summaries was not kept
    # The model works again: the next question builds the tree anew and walks its summaries.
    fixed = scripted(navigator=towards(4), reader=reader_for(4))
    second = await arun(MW, doc, "Where is S4?", fixed, artifacts=cache)
    assert len(fixed.calls("summarizer")) == 13
    assert "covers S3 S4 S5" in fixed.calls("navigator")[0].text
    assert second.text == "found it" and len(list(tmp_path.iterdir())) == 1
    fixed.requests.clear()
    await arun(MW, doc, "Where is S4?", fixed, artifacts=cache)
    assert fixed.calls("summarizer") == []


async def test_a_build_with_some_blank_summaries_is_still_cached(tmp_path: Path) -> None:
    doc, cache = sentinel_document(9), ArtifactCache(tmp_path)
    model = scripted(reader=reader_for(0))

    def summary(request: Request) -> str:  # the first leaf's summary comes back blank
        leaf = "consecutive parts" not in request.text
        return "" if leaf and tags(request.text) == [0] else summary_reply(request)

    model.rules[0].reply = summary
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await arun(MW, doc, "q?", model, artifacts=cache)
    assert not [w for w in caught if "failed for every chunk" in str(w.message)]
    assert len(list(tmp_path.iterdir())) == 1
    model.requests.clear()
    await arun(MW, doc, "q?", model, artifacts=cache)
    assert model.calls("summarizer") == []


def test_tree_round_trips_and_rejects_bad_shapes(tmp_path: Path) -> None:
    leaves = [TreeNode(id=i, level=0, summary=f"s{i}", start=i * 5, end=i * 5 + 5, chunk_index=i)
              for i in range(2)]
    root = TreeNode(id=2, level=1, summary="r", children=(0, 1), start=0, end=10)
    tree = SummaryTree(doc_id="d", nodes=(*leaves, root), root=2, settings={"K": 3})
    tree.save(tmp_path / "t.json")
    assert SummaryTree.load(tmp_path / "t.json") == tree
    assert tree.tiles(10) and not tree.tiles(11)
    with pytest.raises(ValueError, match="invalid child"):
        SummaryTree(doc_id="d", nodes=(*leaves, root.model_copy(update={"children": (0, 5)})),
                    root=2)


async def test_a_single_segment_is_read_without_a_tree() -> None:
    model = scripted(reader=reader_for(0))
    doc = sentinel_document(1, words=20)
    answer = await arun(MW, doc, "q?", model)
    assert [r.role for r in model.requests] == ["reader"]
    assert answer.usage.calls == 1 and answer.text == "found it"
    assert answer.citations[0].text == doc.text


# -- §4.6.2: budgets -------------------------------------------------------------------------------


async def test_full_summaries_and_full_memory_fit_the_window() -> None:
    model = ScriptedModel(context_window=1024)
    model.on("summarizer", reply=lambda r: " ".join(["long"] * (2 * r.max_tokens)))
    model.on("navigator", reply=GOTO_1)
    model.on("reader", contains=LEAF, reply=BACK)
    model.on("reader", reply=GUESS)
    # wm_share 0.3: the memory holds 4 full summaries, more than a root-to-leaf path's 2
    walker = MW.model_copy(update={"max_leaves_read": 9, "max_nav_steps": 40, "wm_share": 0.3})
    doc = sentinel_document(9)
    plan = walker.plan(RunContext(model, doc, "What is hidden?", walker.name))
    answer = await arun(walker, doc, "What is hidden?", model)
    nav = [r for r in model.requests if r.role != "summarizer"]
    assert len(nav) == 9 + 12 + 1  # every leaf read, 12 triage decisions, one fallback
    full = max(len(memory(r)) for r in nav)
    # The memory filled up: as many full summaries as its cap holds (the regex tokenizer gives the
    # blank lines between them no tokens), though many more were visited on the way.
    assert full == plan.wm_cap // plan.summary_cap == 4
    for request in nav:
        assert request.prompt_tokens + request.max_tokens <= 1024
        wm = "\n\n".join(memory(request))
        assert model.count_tokens(wm) <= plan.wm_cap
    assert "capped" not in answer.flags and "exhausted" in answer.flags


def test_budgets_do_not_depend_on_the_question() -> None:
    model, doc = scripted(), sentinel_document(3)
    short = MW.plan(RunContext(model, doc, "q?", MW.name))
    long = MW.plan(RunContext(model, doc, "why " * 300, MW.name))
    assert short == long
    assert short.wm_cap == 256 and 16 <= short.summary_cap and short.segment_tokens == 80


async def test_a_long_question_takes_room_from_the_working_memory() -> None:
    model, doc = scripted(), sentinel_document(9)
    ctx = RunContext(model, doc, "why " * 150, MW.name)
    state = await MW.initial_state(ctx)
    assert state["wm_limit"] == 256 - (150 - 102)
    with pytest.raises(BudgetExceeded, match="question"):
        await MW.initial_state(RunContext(model, doc, "why " * 400, MW.name))


# -- §4.6.3 and backtracking -----------------------------------------------------------------------


def test_a_question_with_options_is_measured_against_the_planned_counts() -> None:
    """plan() counts the leaf and fallback prompts with "." as question; measuring a question
    with options counts only the two prompts that show it, and takes the rest from the plan."""
    question = "Which colour is the lamp?\nA. red\nB. green\nC. blue"
    model, doc = scripted(), sentinel_document(3)
    ctx = RunContext(model, doc, question, MW.name)
    plan, choices = MW.plan(ctx), MW._choices(question)
    assert plan.leaf_fixed[0] == model.count_prompt_tokens(
        mem_walker_prompts.leaf_messages(".", ".", "."))
    counted: list[str] = []
    count = model.count_prompt_tokens

    def spy(messages: list[Any]) -> int:
        counted.append("\n".join(m.content for m in messages))
        return count(messages)

    model.count_prompt_tokens = spy  # type: ignore[method-assign]
    MW._question_tokens(ctx, choices, plan)
    assert len(counted) == 2 and all("green" in text and "lamp" in text for text in counted)


async def test_child_one_everywhere_costs_depth_plus_one_and_cites_the_leftmost_leaf() -> None:
    model, doc = scripted(reader=reader_for(0, "S0 is here")), sentinel_document(9)
    answer = await arun(MW, doc, "Where is S0?", model)
    roles = [r.role for r in model.requests]
    assert roles == ["summarizer"] * 13 + ["navigator"] * 2 + ["reader"]
    assert answer.usage.calls == 13 + 2 + 1  # build n·K/(K-1)-ish, then depth + 1
    assert answer.usage.prompt_tokens == sum(r.prompt_tokens for r in model.requests)
    assert answer.text == "S0 is here" and answer.flags == []
    (citation,) = answer.citations
    assert citation.start == 0 and citation.text == doc.text[citation.start:citation.end]
    assert tags(citation.text) == [0] and citation.chunk_index == 0


async def test_a_not_here_decision_backtracks_to_the_parent_and_tries_elsewhere() -> None:
    model = scripted(reader=reader_for(7, "S7 found"))
    # wrong turn at the root (part 1), "not here" inside it, then the right branch
    model.rules[1:2] = []
    model.on("navigator", contains="[1] covers S0 S1 S2\n[2]", reply=GOTO_1, times=1)
    model.on("navigator", contains="[1] covers S0\n", reply=BACK, times=1)
    model.on("navigator", reply=towards(7))
    doc = sentinel_document(9)
    answer = await arun(MW, doc, "Where is S7?", model)
    triage = model.calls("navigator")
    assert [shown(r) for r in triage] == [
        [[0, 1, 2], [3, 4, 5], [6, 7, 8]],  # root
        [[0], [1], [2]],  # the wrong part: "not here"
        [[3, 4, 5], [6, 7, 8]],  # back at the root: the exhausted part is no longer offered
        [[6], [7], [8]],
    ]
    assert [passage(r) for r in model.calls("reader")] == [[7]]
    assert answer.text == "S7 found" and tags(answer.citations[0].text) == [7]
    assert answer.usage.calls == 13 + 4 + 1
    moves = [(s.detail["action"], s.detail["node"]) for s in answer.steps if s.role == "navigator"]
    assert [a for a, _ in moves] == ["goto", "back", "goto", "goto"]


# -- §4.6.4: caps and exhaustion -------------------------------------------------------------------


async def test_always_back_at_leaves_reads_left_to_right_then_falls_back_once() -> None:
    model, doc = scripted(reader=BACK), sentinel_document(9)
    answer = await arun(MW, doc, "q?", model)  # max_leaves_read = 5
    reads = [r for r in model.calls("reader") if LEAF in r.text]
    assert [passage(r) for r in reads] == [[0], [1], [2], [3], [4]]
    fallback = [r for r in model.calls("reader") if FALLBACK in r.text]
    assert len(fallback) == 1 and model.requests[-1] is fallback[0]
    assert "word4x0" in fallback[0].text  # the last leaf read is in the fallback prompt
    assert answer.text == "best guess" and {"fallback", "capped"} <= set(answer.flags)
    assert tags(answer.citations[0].text) == [4]
    # root, part 1 three times, root again, part 2 twice (the third leaf of part 2 is never read)
    assert len(model.calls("navigator")) == 1 + 3 + 1 + 2
    assert answer.usage.calls == 13 + 7 + 5 + 1


async def test_the_fallback_sends_the_leaf_answer_schema_and_uses_its_answer() -> None:
    model, doc = scripted(reader=BACK), sentinel_document(4)
    model.rules[-1].reply = {"answer": "  the lamp room "}
    answer = await arun(MW, doc, "Where is the lamp?", model)
    (request,) = [r for r in model.calls("reader") if FALLBACK in r.text]
    assert request.schema is not None and request.schema.__name__ == "LeafAnswer"
    shape = request.schema.model_json_schema()
    assert shape["required"] == ["answer"] and list(shape["properties"]) == ["answer"]
    assert shape["properties"]["answer"] == {"maxLength": 300, "title": "Answer", "type": "string"}
    assert request.max_tokens == MW.answer_max_new
    assert '{"answer": "..."}' in request.text and "Options:" not in request.text
    assert answer.text == "the lamp room"
    assert {"fallback", "exhausted"} <= set(answer.flags) and "invalid_answer" not in answer.flags
    (step,) = [s for s in answer.steps if s.role == "fallback"]
    assert step.detail["attempts"] == 1 and step.detail["valid"] is True


@pytest.mark.parametrize(
    ("replies", "kept"),
    [
        (["I think it was Mara."] * 3, "I think it was Mara."),  # prose, never JSON
        (['{"answer": ""}', "no", '{"answer": "Mara Quill, the widow of'],  # the last one cut:
         "Mara Quill, the widow of"),  # what it wrote before the cut
        ([{"answer": " "}] * 3, ""),  # empty every time: flagged empty_answer too
    ],
)
async def test_an_invalid_fallback_reply_is_reasked_then_kept_as_written_and_flagged(
    replies: list[Any], kept: str
) -> None:
    model, doc = scripted(reader=BACK), sentinel_document(4)
    model.rules[-1:] = []
    for reply in replies:
        model.on("reader", contains=FALLBACK, reply=reply, times=1)
    answer = await arun(MW, doc, "Who kept the lamp?", model)
    asked = [r for r in model.calls("reader") if FALLBACK in r.text]
    assert len(asked) == 1 + MW.retries and not model.unused_rules()
    assert all("Your previous reply was not usable" in r.text for r in asked[1:])
    assert all(r.messages[:-1] == asked[0].messages for r in asked[1:])
    assert answer.text == kept
    assert {"fallback", "exhausted", "invalid_answer"} <= set(answer.flags)
    assert ("empty_answer" in answer.flags) == (not kept)
    (step,) = [s for s in answer.steps if s.role == "fallback"]
    assert step.detail["attempts"] == 3 and step.detail["valid"] is False
    assert answer.usage.calls == 7 + 4 + 6 + 3  # the re-asks are paid for


async def test_an_empty_fallback_answer_is_reasked_and_a_good_one_ends_it() -> None:
    model, doc = scripted(reader=BACK), sentinel_document(4)
    model.rules[-1:] = []
    model.on("reader", contains=FALLBACK, reply={"answer": "  "}, times=1)
    model.on("reader", contains=FALLBACK, reply={"answer": "Mara"}, times=1)
    answer = await arun(MW, doc, "q?", model)
    asked = [r for r in model.calls("reader") if FALLBACK in r.text]
    assert len(asked) == 2 and '"answer" must not be empty' in asked[1].messages[-1].content
    assert answer.text == "Mara" and "invalid_answer" not in answer.flags


async def test_the_step_cap_stops_the_walk_and_falls_back() -> None:
    model, doc = scripted(reader=BACK), sentinel_document(9)
    walker = MW.model_copy(update={"max_nav_steps": 4, "max_leaves_read": 100})
    answer = await arun(walker, doc, "q?", model)
    decisions = [r for r in model.requests if r.role == "navigator" or LEAF in r.text]
    assert len(decisions) == 4
    assert "capped" in answer.flags and answer.usage.calls == 13 + 4 + 1


async def test_an_exhausted_tree_falls_back_once_after_visiting_every_leaf_once() -> None:
    model, doc = scripted(reader=BACK), sentinel_document(4)  # 4 leaves: root -> (2, 2)
    answer = await arun(MW, doc, "q?", model)
    reads = [passage(r) for r in model.calls("reader") if LEAF in r.text]
    assert reads == [[0], [1], [2], [3]]
    assert [shown(r) for r in model.calls("navigator")] == [
        [[0, 1], [2, 3]], [[0], [1]], [[1]], [[2, 3]], [[2], [3]], [[3]],
    ]  # a part with nothing left is left without a call
    assert {"fallback", "exhausted"} <= set(answer.flags) and "capped" not in answer.flags


async def test_adversarial_walks_never_hit_the_recursion_limit() -> None:
    model = scripted(navigator=BACK)
    for steps in (1, 2, 20):
        walker = MW.model_copy(update={"max_nav_steps": steps, "max_leaves_read": 100})
        answer = await arun(walker, sentinel_document(9), "q?", model)
        assert answer.text == "best guess"
    model = scripted(reader=BACK)
    walker = MW.model_copy(update={"max_nav_steps": 60, "max_leaves_read": 100})
    answer = await arun(walker, sentinel_document(120, words=20), "q?", model)
    assert "capped" in answer.flags
    assert len([r for r in model.requests if r.role != "summarizer"]) == 60 + 1


# -- §4.6.5: invalid decisions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"reasoning": "r", "action": "goto", "child": 0},
        {"reasoning": "r", "action": "goto", "child": 4},  # |C| + 1
        {"reasoning": "r", "action": "goto", "child": "two"},
        {"reasoning": "r", "action": "goto"},  # child missing
        {"reasoning": "r", "action": "jump", "child": 1},
        "I would pick the second one",
    ],
)
async def test_an_invalid_choice_is_reasked_twice_then_counts_as_back(bad: Any) -> None:
    model = scripted(navigator=bad)
    answer = await arun(MW, sentinel_document(9), "q?", model)
    triage = model.calls("navigator")
    assert len(triage) == 3  # the first try and 2 re-asks at the root, then back: nothing left
    assert "not usable" not in triage[0].text
    assert all("Your previous reply was not usable" in r.text for r in triage[1:])
    assert all(r.messages[:-1] == triage[0].messages for r in triage[1:])
    assert {"invalid_action", "fallback", "exhausted", "overview"} <= set(answer.flags)
    assert answer.text == "best guess"
    # nothing was read: the fallback answers from the root summary, which covers every leaf
    (fallback,) = [r for r in model.calls("reader")]
    assert "The last passage you read" in fallback.text and "SENTINEL" not in fallback.text
    assert len(answer.citations) == 9
    assert "".join(c.text for c in answer.citations).count("SENTINEL") == 9


async def test_a_reask_that_succeeds_continues_the_walk() -> None:
    model = scripted(reader=reader_for(0))
    model.rules[1:2] = []
    model.on("navigator", reply={"reasoning": "r", "action": "goto", "child": 9}, times=1)
    model.on("navigator", reply=GOTO_1)
    answer = await arun(MW, sentinel_document(9), "q?", model)
    triage = model.calls("navigator")
    assert len(triage) == 3 and "child" in triage[1].messages[-1].content
    assert answer.text == "found it" and "invalid_action" not in answer.flags
    assert [s.detail["attempts"] for s in answer.steps if s.role == "navigator"] == [2, 1]


async def test_a_reply_cut_at_the_token_limit_is_invalid() -> None:
    model = scripted()
    long_reasoning = {"reasoning": "x " * 45, "action": "answer", "answer": "a"}
    model.on("reader", contains=LEAF, reply=long_reasoning, times=1)
    model.on("reader", contains=LEAF, reply={"reasoning": "ok", "action": "answer",
                                                     "answer": "short"})
    answer = await arun(MW, sentinel_document(9), "q?", model)
    reads = model.calls("reader")
    assert len(reads) == 2 and "token limit" in reads[1].messages[-1].content
    assert answer.text == "short"


async def test_an_answer_without_text_is_reasked_at_the_leaf() -> None:
    model = scripted(reader={"reasoning": "r", "action": "answer", "answer": " "})
    walker = MW.model_copy(update={"max_leaves_read": 1})
    answer = await arun(walker, sentinel_document(9), "q?", model)
    reads = [r for r in model.calls("reader") if LEAF in r.text]
    assert len(reads) == 3 and '"answer" needs' in reads[-1].text
    assert {"invalid_action", "fallback"} <= set(answer.flags)


# -- §4.6.6: working memory ------------------------------------------------------------------------


def _summary(ids: range | list[int]) -> str:
    return "covers " + " ".join(f"S{i}" for i in ids)


async def test_working_memory_holds_summaries_left_on_descent_in_order() -> None:
    model = scripted(reader=BACK)
    await arun(MW.model_copy(update={"max_leaves_read": 4}), sentinel_document(9), "q?", model)
    root, a, b = _summary(range(9)), _summary([0, 1, 2]), _summary([3, 4, 5])
    decisions = [r for r in model.requests if r.role == "navigator" or LEAF in r.text]
    assert [memory(r) for r in decisions] == [
        [],  # root
        [root],  # part 1
        [root, a],  # leaf S0
        [root, a],  # part 1 again
        [root, a],  # leaf S1: part 1 is left again, and its summary is in the memory once
        [root, a],
        [root, a],  # leaf S2
        [root, a],  # root again (part 1 is exhausted)
        [root, a],  # part 2
        [root, a, b],  # leaf S3
    ]


async def test_working_memory_drops_the_oldest_entries_at_its_cap() -> None:
    model = scripted(reader=BACK)
    walker = MW.model_copy(update={"max_leaves_read": 4, "wm_share": 0.015})  # 15 tokens
    await arun(walker, sentinel_document(9), "q?", model)
    root, a, b = _summary(range(9)), _summary([0, 1, 2]), _summary([3, 4, 5])
    last = next(r for r in model.calls("reader") if [3] == passage(r))
    assert memory(last) == [a, b]  # 15 tokens hold the two newest of [root, a, b]
    assert model.count_tokens("\n\n".join([root, a, b])) > 15 >= model.count_tokens(a + b)


async def test_path_memory_and_no_memory() -> None:
    model = scripted(reader=BACK)
    walker = MW.model_copy(update={"max_leaves_read": 4, "working_memory": "path"})
    await arun(walker, sentinel_document(9), "q?", model)
    last = next(r for r in model.calls("reader") if [3] == passage(r))
    assert memory(last) == [_summary(range(9)), _summary([3, 4, 5])]
    model = scripted(reader=BACK)
    await arun(MW.model_copy(update={"working_memory": "none"}), sentinel_document(9), "q", model)
    assert all("What you have read" not in r.text for r in model.requests)


# -- trace and events ------------------------------------------------------------------------------


async def test_trace_and_events_show_the_build_and_the_walk() -> None:
    model, log = scripted(reader=reader_for(0)), EventLog()
    answer = await arun(MW, sentinel_document(9), "q?", model, on_event=log)
    roles = [s.role for s in answer.steps]
    assert roles == ["summarizer"] * 13 + ["tree", "navigator", "navigator", "reader"]
    calls = log.of_kind("call")
    assert [e.role for e in calls] == [r.role for r in model.requests]
    assert {(e.index, e.total) for e in calls[:9]} == {(i, 9) for i in range(9)}


async def test_an_empty_question_returns_the_root_summary() -> None:
    model, doc = scripted(), sentinel_document(9)
    answer = await arun(MW, doc, "", model)
    assert [r.role for r in model.requests] == ["summarizer"] * 13
    assert answer.text == _summary(range(9))
    assert len(answer.citations) == 9 and answer.citations[-1].end == len(doc.text)
    single = scripted()
    answer = await arun(MW, sentinel_document(1, words=20), " ", single)
    assert [r.role for r in single.requests] == ["summarizer"] and answer.text == _summary([0])


# -- the real local model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from longweave import local_models
    model = local_models.LocalLLM.bundled(
        cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache"
    )
    yield model
    model.close()


@pytest.mark.real_model
async def test_real_local_model_end_to_end(local_llm: Any, tmp_path: Path) -> None:
    doc = open_document(Path(__file__).parents[1] / "examples" / "harbour_report.md")
    # ~950 tokens in 400-token segments: 3 leaves under one root; short generations throughout
    walker = MemWalker(window=2048, segment_tokens=400, max_children=3, nav_max_new=48,
                       answer_max_new=32, summary_max_new=32, reasoning_chars=40, answer_chars=60,
                       max_nav_steps=4, max_leaves_read=2)
    cache = ArtifactCache(tmp_path)
    answer = await arun(walker, doc, "Who was the first keeper of the lighthouse?", local_llm,
                        artifacts=cache)
    assert answer.text.strip()
    assert answer.citations
    for citation in answer.citations:
        assert doc.text[citation.start:citation.end] == citation.text
    built = next(s for s in answer.steps if s.role == "tree")
    assert built.detail["calls"] == built.detail["nodes"] >= 3
    again = await arun(walker, doc, "When was the lamp first lit?", local_llm, artifacts=cache)
    assert not [s for s in again.steps if s.role == "summarizer"]
    assert again.usage.calls < answer.usage.calls

