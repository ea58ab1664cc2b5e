"""Chain-of-Agents against the strict scripted model: STRATEGIES.md §1.6 acceptance checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from longweave.agents.chain_of_agents import ChainOfAgents, permuted_orders, unfence
from longweave.agents.coa_prompts import CODE_LAST_PART, CODE_TASK
from longweave.answer import Answer
from longweave.documents import Document
from longweave.errors import ConfigError, ParseError, UnscriptedCall
from longweave.llm import Message, quoted, unquote
from longweave.runner import arun
from longweave.structured import reask_message
from longweave.testing import Request, ScriptedModel, quoted_after, quoted_blocks

SENTINEL = re.compile(r"SENTINEL-(\d+)")
PART = re.compile(r"Part (\d+) of (\d+)")


def sentinel_document(n: int, words: int = 60) -> Document:
    """n paragraphs, each with a unique sentinel and enough filler to fill one small chunk."""
    paras = [
        f"SENTINEL-{i} " + " ".join(f"word{i}x{j}" for j in range(words)) + "."
        for i in range(n)
    ]
    return Document.from_text("\n\n".join(paras))


def part_of(request: Request) -> int:
    return int(PART.search(request.text).group(1))


def cu_reply(request: Request) -> str:
    """A distinct communication unit per worker that names the sentinels it saw."""
    part = quoted_after(request.text, "of the text:")
    seen = ",".join(SENTINEL.findall(part))
    return f"CU{part_of(request)} saw {seen} [c{part_of(request)}]"


def scripted(window: int = 400) -> ScriptedModel:
    model = ScriptedModel(context_window=window)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="The final answer [c1].")
    return model


COA = ChainOfAgents(max_new=32, margin=16)


async def test_one_worker_per_chunk_in_order_then_one_manager() -> None:
    model, doc = scripted(), sentinel_document(8)
    answer = await arun(COA, doc, "What is hidden?", model)
    workers = model.calls("worker")
    n = len(workers)
    assert n >= 3, "the document must need several chunks for this test to mean anything"
    assert [part_of(r) for r in workers] == list(range(1, n + 1))
    assert [r.role for r in model.requests] == ["worker"] * n + ["manager"]
    assert answer.usage.calls == n + 1
    assert answer.usage.prompt_tokens == sum(r.prompt_tokens for r in model.requests)
    # every sentinel was read by exactly one worker, in document order
    seen = [int(s) for r in workers for s in SENTINEL.findall(quoted_after(r.text, "of the text:"))]
    assert seen == list(range(8))


async def test_worker_sees_its_chunk_previous_cu_and_question_only() -> None:
    model, doc = scripted(), sentinel_document(8)
    await arun(COA, doc, "What is hidden?", model)
    workers = model.calls("worker")
    previous = None
    for request in workers:
        part = quoted_after(request.text, "of the text:")
        mine = set(SENTINEL.findall(part))
        assert mine, "each chunk holds at least one sentinel here"
        before_notes = request.text.split("Notes from the previous reader:")[0]
        assert set(SENTINEL.findall(before_notes)) == mine
        assert "Question: What is hidden?" in request.text
        if previous is None:
            assert "first reader" in request.text
        else:
            assert cu_reply(previous) in request.text
        previous = request


async def test_manager_sees_only_the_last_cu_and_the_question() -> None:
    model, doc = scripted(), sentinel_document(8)
    await arun(COA, doc, "What is hidden?", model)
    (manager,) = model.calls("manager")
    workers = model.calls("worker")
    last = cu_reply(workers[-1])
    assert last in manager.text
    assert "Question: What is hidden?" in manager.text
    for earlier in workers[:-1]:
        assert f"CU{part_of(earlier)} saw" not in manager.text
    # the last CU names sentinels, so strip it before looking for chunk text
    assert "word" not in manager.text.replace(last, "")


async def test_quote_lines_copied_from_the_prompt_are_dropped_from_notes_and_answer() -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", reply=lambda r: f'"""\nnotes of part {part_of(r)}\n"""')
    model.on("manager", reply='The answer.\n"""')
    answer = await arun(COA, sentinel_document(8), "What is hidden?", model)
    workers = model.calls("worker")
    assert len(workers) >= 3
    for before, after in zip(workers, workers[1:], strict=False):
        notes = quoted_after(after.text, "Notes from the previous reader:")
        assert notes == f"notes of part {part_of(before)}"  # no quote lines nested in the block
    assert answer.text == "The answer."


def test_unquote_drops_only_the_outer_quote_lines() -> None:
    assert quoted("a\nb") == '"""\na\nb\n"""'
    # a text with its own quote lines gets a longer fence, which its lines cannot close
    source = 'def f():\n    """Doc."""\n""""\nraw'
    assert quoted(source) == f'"""""\n{source}\n"""""'
    assert quoted_blocks(f"Code:\n{quoted(source)}\nNotes:\n{quoted('n')}") == [source, "n"]
    assert unquote('"""""\nkept\n"""""') == "kept"
    assert unquote(' """\n"""\nkept\n"""\ninside\n """ \n') == 'kept\n"""\ninside'
    assert unquote('say """this"""') == 'say """this"""'
    assert unquote('"""') == ""
    # code keeps the first line's indentation: a completed line inside a function body
    assert unquote('\n  \n"""\n    return x\n  y\n"""\n', indent=True) == "    return x\n  y"
    assert unquote('\n    return x  \n', indent=True) == "    return x"
    assert unquote('\n    return x  \n') == "return x"
    assert unquote('\xa0"""\nkept\n"""\u3000') == "kept"  # any whitespace around a quote line


async def test_full_length_cus_never_overflow_the_window() -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", reply=lambda r: " ".join(["evidence"] * r.max_tokens))
    model.on("manager", reply="done")
    await arun(COA, sentinel_document(10), "What is hidden?", model)
    assert len(model.calls("worker")) >= 3
    for request in model.requests:
        assert request.prompt_tokens + request.max_tokens <= 400
    assert all(r.max_tokens == 32 for r in model.requests)


async def test_empty_question_selects_the_summary_prompts() -> None:
    model, doc = scripted(), sentinel_document(6)
    await arun(COA, doc, "", model)
    assert model.calls("worker")
    for request in model.calls("worker"):
        assert "Question:" not in request.text
        assert "summary of everything read so far" in request.text
    (manager,) = model.calls("manager")
    assert "Write a summary of the whole text" in manager.text


async def test_bidir_runs_a_reversed_path_and_returns_the_vote_winner() -> None:
    model, doc = scripted(), sentinel_document(6)
    model.rules[-1:] = []  # replace the manager rule: the paths disagree, then agree
    model.on("manager", contains="CU1 saw", reply="Ottawa [c1]")  # forward path ends at part l
    model.on("manager", reply="ottawa.")
    coa = ChainOfAgents(max_new=32, margin=16, paths="bidir")
    answer = await arun(coa, doc, "Capital?", model)
    workers = model.calls("worker")
    n = len(workers) // 2
    assert len(model.requests) == 2 * (n + 1)
    forward = [part_of(r) for r in workers[0::2]]
    backward = [part_of(r) for r in workers[1::2]]
    assert forward == list(range(1, n + 1))
    assert backward == list(range(n, 0, -1))
    assert answer.text.lower().startswith("ottawa")


def split_paths(answers: tuple[str, str], **options: object) -> tuple[ScriptedModel, ChainOfAgents]:
    """A bidir run whose forward path (its last CU is part l's, part 1's on the way back)
    answers answers[0] and whose backward path answers answers[1]."""
    model = scripted(window=600)  # room for a judge prompt and its re-asks
    model.rules[-1:] = []
    model.on("manager", contains="CU1 saw", reply=answers[1])  # the backward path ends at part 1
    model.on("manager", reply=answers[0])
    return model, ChainOfAgents(max_new=32, margin=16, paths="bidir", **options)


async def test_a_tie_without_a_judge_returns_path_one() -> None:
    model, coa = split_paths(("Ottawa", "Toronto"))
    answer = await arun(coa, sentinel_document(6), "Capital?", model)
    assert answer.text == "Ottawa" and not model.calls("judge")


async def test_the_judge_breaks_a_tie_between_the_paths() -> None:
    model, coa = split_paths(("Ottawa", "Toronto"), selector="judge")
    model.on("judge", reply={"reason": "the second is right", "index": 2})
    answer = await arun(coa, sentinel_document(6), "Capital?", model)
    (judge,) = model.calls("judge")
    assert model.requests[-1] is judge  # after both managers
    assert "Question: Capital?" in judge.text
    assert "1. Ottawa" in judge.text and "2. Toronto" in judge.text
    assert answer.text == "Toronto" and "judge_failed" not in answer.flags
    assert model.calls("worker")[0].text not in judge.text


@pytest.mark.parametrize("reply", ["not json", {"reason": "r", "index": 3}])
async def test_a_judge_that_never_validates_is_reasked_twice_then_path_one_stands(
    reply: object,
) -> None:
    """A broken judge reply used to end the run with ParseError, and a pick of a path that did
    not run (index 3 of 2) was read as path 1 without a word (§8.4: re-ask, then fall back)."""
    model, coa = split_paths(("Ottawa", "Toronto"), selector="judge")
    model.on("judge", reply=reply)
    answer = await arun(coa, sentinel_document(6), "Capital?", model)
    first, *reasks = model.calls("judge")
    assert len(reasks) == 2
    assert all("Your previous reply was not usable" in r.messages[-1].content for r in reasks)
    # Each re-ask shows the unusable reply before the complaint: at temperature 0, the same
    # prompt again would mostly get the same reply again.
    assert all(r.messages[:-2] == first.messages for r in reasks)
    assert all(r.messages[-2].role == "assistant" and r.messages[-2].content for r in reasks)
    assert answer.text == "Ottawa" and "judge_failed" in answer.flags
    assert answer.usage.calls == len(model.requests)


async def test_the_judges_reask_clips_a_runaway_reply_and_its_complaint() -> None:
    model, coa = split_paths(("Ottawa", "Toronto"), selector="judge")
    runaway = "The first answer is right because " + "x" * 2000
    why = "the reply was cut off " + "y" * 1000

    def backend_refuses(request: Request) -> str:
        raise ParseError(why, raw=runaway)  # as a backend does after its own re-ask

    model.on("judge", reply=backend_refuses)
    answer = await arun(coa, sentinel_document(6), "Capital?", model)
    first, *reasks = model.calls("judge")
    assert len(reasks) == 2 and "judge_failed" in answer.flags
    for reask in reasks:
        assert reask.messages[:-2] == first.messages
        shown, complaint = reask.messages[-2:]
        assert shown == Message("assistant", runaway[:400])
        assert complaint == reask_message(why[:400])


async def test_an_empty_judge_reply_is_reasked_without_an_empty_turn() -> None:
    model, coa = split_paths(("Ottawa", "Toronto"), selector="judge")
    model.on("judge", reply="")
    await arun(coa, sentinel_document(6), "Capital?", model)
    first, *reasks = model.calls("judge")
    assert len(reasks) == 2
    assert all(r.messages[:-1] == first.messages for r in reasks)
    assert all(r.messages[-1].content.startswith("Your previous reply was not usable: ")
               for r in reasks)


async def test_blank_cu_keeps_the_previous_one_and_is_flagged() -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", contains="Part 2 of", reply="   ")
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="answer")
    answer = await arun(COA, sentinel_document(8), "q?", model)
    third = next(r for r in model.calls("worker") if part_of(r) == 3)
    assert "CU1 saw" in third.text
    assert "blank_cu" in answer.flags


async def test_markers_become_chunk_citations_with_exact_spans() -> None:
    model, doc = scripted(), sentinel_document(8)
    answer = await arun(COA, doc, "What is hidden?", model)
    assert answer.text == "The final answer."
    (citation,) = answer.citations
    assert citation.chunk_index == 0
    assert doc.text[citation.start : citation.end] == citation.text
    assert "SENTINEL-0" in citation.text
    assert "uncited" not in answer.flags


async def test_answer_without_markers_is_flagged_uncited() -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="no tags here")
    answer = await arun(COA, sentinel_document(4), "q?", model)
    assert answer.citations == []
    assert "uncited" in answer.flags


async def test_without_cite_mode_a_stray_marker_cites_nothing() -> None:
    """The paper's prompts number no chunks, so a "[c1]" the manager writes anyway is no cite."""
    model, doc = scripted(), sentinel_document(8)
    answer = await arun(COA.model_copy(update={"cite": False}), doc, "What is hidden?", model)
    assert answer.text == "The final answer [c1]."
    assert answer.citations == [] and answer.flags == ["uncited"]
    assert "[c" not in model.calls("worker")[0].text  # no marker instructions were sent


@pytest.mark.parametrize("bad", [{"max_new": 0}, {"cu_cap": 0}, {"window": 16}, {"margin": -1},
                                 {"temperature": -0.5}, {"temperature": 2.5},
                                 {"self_temperature": 0}, {"self_temperature": 3.0},
                                 {"paths": "perm3"}, {"task": "poem"}])
def test_settings_out_of_range_are_refused_when_the_strategy_is_made(bad: dict) -> None:
    from longweave.agents.base import get_strategy
    from longweave.errors import ConfigError

    (name,) = bad
    with pytest.raises(ConfigError, match=f"invalid options for chain-of-agents: {name}"):
        get_strategy("chain-of-agents", **bad)


async def test_a_long_chain_is_not_cut_by_the_recursion_limit() -> None:
    model = scripted()
    answer = await arun(COA, sentinel_document(200, words=30), "q?", model)
    assert answer.usage.calls == len(model.calls("worker")) + 1 > 40


async def test_unscripted_calls_fail_loudly() -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", reply=cu_reply)
    with pytest.raises(UnscriptedCall, match="manager"):
        await arun(COA, sentinel_document(4), "q?", model)


async def test_trace_has_plan_workers_and_manager() -> None:
    model = scripted()
    answer = await arun(COA, sentinel_document(6), "q?", model)
    roles = [s.role for s in answer.steps]
    assert roles[0] == "plan" and roles[-1] == "manager"
    assert roles.count("worker") == len(model.calls("worker"))
    assert answer.steps[0].detail["chunks"] == len(model.calls("worker"))


# -- perm5, self5 (§1.2 paths) --------------------------------------------------------------


def worker_paths(answer: Answer, model: ScriptedModel) -> list[list[Request]]:
    """The worker requests of each path, in the order that path sent them."""
    steps = [s for s in answer.steps if s.role == "worker"]
    workers = model.calls("worker")
    assert len(steps) == len(workers)
    assert [s.index + 1 for s in steps] == [part_of(r) for r in workers]
    paths: list[list[Request]] = [[] for _ in range(max(s.detail["path"] for s in steps) + 1)]
    for step, request in zip(steps, workers, strict=True):
        paths[step.detail["path"]].append(request)
    return paths


async def perm5_orders(seed: int = 0, n: int = 6) -> list[list[int]]:
    """The part numbers each path of a perm5 run read, checked against §1.2 on the way."""
    model, doc = scripted(), sentinel_document(n, words=100)  # one paragraph a chunk
    coa = ChainOfAgents(max_new=32, margin=16, paths="perm5", seed=seed)
    answer = await arun(coa, doc, "What is hidden?", model)
    chunks = answer.steps[0].detail["chunks"]
    assert chunks >= 4, "enough chunks that 5 of their orders can differ"
    assert len(model.requests) == answer.usage.calls == 5 * (chunks + 1)
    paths = worker_paths(answer, model)
    assert len(paths) == 5
    for requests in paths:
        assert sorted(part_of(r) for r in requests) == list(range(1, chunks + 1))
        # each worker carries the previous worker of its own path, not another path's
        assert "first reader" in requests[0].text
        for before, after in zip(requests, requests[1:], strict=False):
            assert quoted_after(after.text, "Notes from the previous reader:") == cu_reply(before)
    managers = model.calls("manager")
    assert len(managers) == 5 and model.requests[-5:] == managers
    for requests, manager in zip(paths, managers, strict=True):
        assert quoted_blocks(manager.text)[0] == cu_reply(requests[-1])
    return [[part_of(r) for r in requests] for requests in paths]


async def test_perm5_reads_every_chunk_once_per_path_path_one_in_document_order() -> None:
    orders = await perm5_orders()
    assert orders[0] == list(range(1, len(orders[0]) + 1))
    assert len({tuple(order) for order in orders}) == 5


async def test_perm5_orders_repeat_for_a_seed_and_change_with_another() -> None:
    first, again, other = await perm5_orders(0), await perm5_orders(0), await perm5_orders(1)
    assert again == first
    assert other != first and other[0] == first[0]


def test_permuted_orders_are_distinct_and_capped_by_the_orders_there_are() -> None:
    assert permuted_orders(1, 5, 0) == [[0]]
    assert permuted_orders(2, 5, 0) == [[0, 1], [1, 0]]
    three = permuted_orders(3, 5, 7)
    assert len(three) == 5 and len({tuple(o) for o in three}) == 5 and three[0] == [0, 1, 2]
    many = permuted_orders(40, 5, 3)
    assert all(sorted(o) == list(range(40)) for o in many) and len({tuple(o) for o in many}) == 5


async def test_perm5_with_two_chunks_runs_each_order_once() -> None:
    model = scripted()
    coa = ChainOfAgents(max_new=32, margin=16, paths="perm5")
    answer = await arun(coa, sentinel_document(2, words=100), "q?", model)
    assert answer.steps[0].detail["chunks"] == 2
    assert [[part_of(r) for r in path] for path in worker_paths(answer, model)] == [[1, 2], [2, 1]]
    assert answer.usage.calls == 2 * 3
    assert answer.steps[0].detail["deduplicated"] == 3
    assert answer.steps[0].output.endswith("; 3 repeated reading orders dropped")


def test_few_chunks_give_every_order_once_whatever_the_seed() -> None:
    """1 or 2 chunks have only 1 or 2 orders: all of them, never a repeat, never a hunt."""
    for seed in range(20):
        assert permuted_orders(1, 5, seed) == [[0]]
        assert permuted_orders(2, 5, seed) == [[0, 1], [1, 0]]
    assert permuted_orders(0, 5, 0) == [[]]


@pytest.mark.parametrize(("paths", "kept"), [("single", 1), ("bidir", 1), ("perm5", 1),
                                             ("self5", 5)])
async def test_one_chunk_runs_one_path_unless_sampling(paths: str, kept: int) -> None:
    """Left to right and right to left over one chunk are one order: bidir and perm5 read it
    once; self5's samples at temperature > 0 differ, so its five chains all run."""
    model = scripted()
    model.rules[-1:] = []
    model.on("manager", contains="CU1 saw", reply="Ottawa [c1]")
    coa = ChainOfAgents(max_new=32, margin=16, paths=paths)
    answer = await arun(coa, sentinel_document(1), "Capital?", model)
    plan = answer.steps[0]
    assert plan.detail["chunks"] == 1
    assert plan.detail["paths"] == kept
    assert plan.detail["deduplicated"] == {"single": 1, "bidir": 2}.get(paths, 5) - kept
    assert ("dropped" in plan.output) == (plan.detail["deduplicated"] > 0)
    assert [r.role for r in model.requests] == ["worker"] * kept + ["manager"] * kept
    assert all("Part 1 of 1" in r.text for r in model.calls("worker"))
    assert [s.role for s in answer.steps].count("select") == (kept > 1)
    assert answer.text == "Ottawa" and [c.chunk_index for c in answer.citations] == [0]


async def test_bidir_over_several_chunks_drops_nothing() -> None:
    model = scripted()
    answer = await arun(ChainOfAgents(max_new=32, margin=16, paths="bidir"),
                        sentinel_document(4), "q?", model)
    plan = answer.steps[0]
    assert plan.detail["paths"] == 2 and plan.detail["deduplicated"] == 0
    assert "dropped" not in plan.output
    assert len(model.requests) == 2 * (plan.detail["chunks"] + 1)


async def test_self5_samples_five_chains_in_document_order_and_votes_the_majority() -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="Toronto [c1]", times=2)  # paths 1 and 2
    model.on("manager", reply="Ottawa [c2]")  # paths 3 to 5: the majority
    coa = ChainOfAgents(max_new=32, margin=16, paths="self5", selector="judge")
    answer = await arun(coa, sentinel_document(6), "Capital?", model)
    chunks = answer.steps[0].detail["chunks"]
    paths = worker_paths(answer, model)
    assert len(paths) == 5 and chunks >= 3
    assert all([part_of(r) for r in path] == list(range(1, chunks + 1)) for path in paths)
    assert len(model.calls("manager")) == 5 and not model.calls("judge")
    assert len(model.requests) == 5 * (chunks + 1)
    assert {r.temperature for r in model.requests} == {0.7}
    assert answer.text == "Ottawa" and [c.chunk_index for c in answer.citations] == [1]
    assert [s.index for s in answer.steps if s.role == "select"] == [2]


async def test_self_temperature_is_the_sampling_temperature_and_single_stays_at_zero() -> None:
    model = scripted()
    await arun(COA.model_copy(update={"paths": "self5", "self_temperature": 1.1}),
               sentinel_document(4), "q?", model)
    assert {r.temperature for r in model.requests} == {1.1}
    model = scripted()
    await arun(COA.model_copy(update={"self_temperature": 1.1}), sentinel_document(4), "q?", model)
    assert {r.temperature for r in model.requests} == {0.0}


async def test_self5_samples_are_never_replayed_from_the_completion_cache(tmp_path: Path) -> None:
    """The cache replays only temperature-0 calls: self5's five chains, whose prompts are all
    alike, must each reach the model, on every run."""
    from longweave.cache import CachedLLM, CompletionCache

    model, doc = scripted(), sentinel_document(6)
    llm = CachedLLM(model, CompletionCache(tmp_path / "completions.sqlite"))
    await arun(COA, doc, "q?", llm)
    single = len(model.requests)
    await arun(COA, doc, "q?", llm)
    assert len(model.requests) == single, "the cache replays temperature-0 calls"
    self5 = COA.model_copy(update={"paths": "self5"})
    for run in (1, 2):
        await arun(self5, doc, "q?", llm)
        assert len(model.requests) == single + run * 5 * single


async def test_the_judge_of_five_paths_sees_five_candidates_and_may_pick_the_fifth() -> None:
    model = ScriptedModel(context_window=700)
    model.on("worker", reply=cu_reply)
    for reply in ("Ottawa", "Toronto", "ottawa.", "Toronto", "Montreal"):  # a 2-2-1 tie
        model.on("manager", reply=reply, times=1)
    model.on("judge", reply={"reason": "the fifth", "index": 5})
    coa = ChainOfAgents(max_new=32, margin=16, paths="self5", selector="judge")
    answer = await arun(coa, sentinel_document(6), "Capital?", model)
    (judge,) = model.calls("judge")
    assert "5. Montreal" in judge.text and "6." not in judge.text
    assert judge.schema.model_json_schema()["properties"]["index"]["maximum"] == 5
    assert answer.text == "Montreal"


async def test_a_tie_without_a_judge_goes_to_the_first_tied_path_not_a_lone_answer() -> None:
    """Path 1's lone answer must not beat two answers that two paths each gave."""
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=cu_reply)
    for reply in ("Alpha", "Bravo", "Bravo", "Charlie", "Charlie"):  # a 1-2-2 split
        model.on("manager", reply=reply, times=1)
    coa = ChainOfAgents(max_new=32, margin=16, paths="self5")
    answer = await arun(coa, sentinel_document(6), "Which?", model)
    assert answer.text == "Bravo" and not model.calls("judge")
    assert [s.index for s in answer.steps if s.role == "select"] == [1]


async def test_code_answers_are_voted_on_as_code() -> None:
    """`a - b`, `a + b` and `a * b` are different code; prose normalization made them one."""
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=lambda r: f"notes of part {part_of(r)}")
    for reply in ("return a - b", "return a + b", "return a  +  b", "return a * b", "return b"):
        model.on("manager", reply=reply, times=1)
    coa = ChainOfAgents(max_new=32, margin=16, paths="self5", task="code")
    answer = await arun(coa, sentinel_document(6), "Complete the function.", model)
    assert answer.text == "return a + b"  # paths 2 and 3 agree, whitespace aside
    assert [s.index for s in answer.steps if s.role == "select"] == [1]


# -- code task, cite mode (§1.3, §1.5.6) -------------------------------------------------------


async def test_code_task_sends_the_code_prompts_without_cite_tags() -> None:
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=lambda r: f"notes of part {part_of(r)}")
    model.on("manager", reply="    return table[c1]")
    coa = ChainOfAgents(max_new=32, margin=16, task="code")
    answer = await arun(coa, sentinel_document(8), "Finish lookup().", model)
    workers = model.calls("worker")
    assert len(workers) >= 3
    for request in workers:
        assert "Task: Finish lookup()." in request.text
        assert "of the source code:" in request.text
        assert "signatures of the" in request.text and "character for character" in request.text
        assert "Question:" not in request.text and "[c" not in request.text
    last = [CODE_LAST_PART.strip() in r.text for r in workers]
    assert last == [False] * (len(workers) - 1) + [True]
    (manager,) = model.calls("manager")
    assert manager.text.endswith("Code:") and "Reply with the code only" in manager.text
    assert "Task: Finish lookup()." in manager.text and "[c" not in manager.text
    # the completed line keeps its indentation; a "[c1]" in code is an index, not a citation
    assert answer.text == "    return table[c1]" and answer.citations == []
    assert "uncited" in answer.flags


@pytest.mark.parametrize(("reply", "code"), [
    ("```python\n    return a + b\n```", "    return a + b"),
    ("```\ndef f(x):\n    return x\n```", "def f(x):\n    return x"),
    ("```py\n\n    if x:\n        y = 1\n\n```", "\n    if x:\n        y = 1\n"),
    ('```python\ns = """\n```"""\n```', None),  # a fence line inside: not one block
    ("```python\na = 1\n```\n\n```python\nb = 2\n```", None),  # two blocks
    ("Here it is:\n```python\nx = 1\n```", None),  # text around the block
    ("```python\nx = 1\n```\nThat sets x.", None),
    ("```python\nx = 1", None),  # never closed
    ("```x = 1```", None),  # inline, not a fenced block
    ("x = 1", None),
])
def test_unfence_takes_only_a_reply_that_is_one_fenced_block(reply: str, code: str | None) -> None:
    assert unfence(reply) == code


async def test_a_fenced_code_answer_is_the_code_alone() -> None:
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=lambda r: f"notes of part {part_of(r)}")
    model.on("manager", reply='"""\n```python\n    total = a + b\n    return total\n```  \n"""')
    coa = ChainOfAgents(max_new=32, margin=16, task="code")
    answer = await arun(coa, sentinel_document(4), "Finish add().", model)
    assert answer.text == "    total = a + b\n    return total"  # indentation kept
    (manager,) = [s for s in answer.steps if s.role == "manager"]
    assert manager.output == answer.text and manager.detail["unfenced"] is True
    assert len(model.calls("manager")) == 1


async def test_a_fenced_answer_outside_code_mode_is_left_alone() -> None:
    fenced = "```\nOttawa\n```"
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply=fenced)
    answer = await arun(ChainOfAgents(max_new=32, margin=16, cite=False), sentinel_document(4),
                        "Capital?", model)
    assert answer.text == fenced
    assert "unfenced" not in [s for s in answer.steps if s.role == "manager"][0].detail


async def test_fenced_and_bare_code_vote_together() -> None:
    """Two fenced and one bare `return a + b` outvote two `return b`: fenced, they were three
    different answers and `return b` won."""
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=lambda r: f"notes of part {part_of(r)}")
    replies = ("return b", "```python\nreturn a + b\n```", "return a  +  b",
               "```\nreturn a + b\n```", "return b")
    for reply in replies:
        model.on("manager", reply=reply, times=1)
    coa = ChainOfAgents(max_new=32, margin=16, paths="self5", task="code", selector="judge")
    answer = await arun(coa, sentinel_document(6), "Complete the function.", model)
    assert answer.text == "return a + b" and not model.calls("judge")
    assert [s.index for s in answer.steps if s.role == "select"] == [1]
    unfenced = [s.index for s in answer.steps if s.role == "manager" and s.detail.get("unfenced")]
    assert sorted(unfenced) == [1, 3]


async def test_code_task_without_a_question_completes_the_next_line() -> None:
    model = ScriptedModel(context_window=500)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="x = 1")
    await arun(ChainOfAgents(max_new=32, margin=16, task="code"), sentinel_document(4), "", model)
    assert all(f"Task: {CODE_TASK}" in r.text for r in model.requests)


async def test_cite_mode_asks_workers_for_the_strongest_evidence_first() -> None:
    async def prompts(question: str, **update: object) -> list[str]:
        model = scripted()
        await arun(COA.model_copy(update=update), sentinel_document(4), question, model)
        return [r.text for r in model.calls("worker")]

    phrase = "the strongest first and the weakest last"
    assert all(phrase in text for text in await prompts("q?"))
    assert not any(phrase in text for text in await prompts("q?", cite=False))
    # a summary keeps the order of the text; only evidence for a question is ranked
    assert not any(phrase in text for text in await prompts(""))


@pytest.mark.real_model
async def test_real_local_model_end_to_end() -> None:
    from pathlib import Path

    from longweave.documents import open_document
    from longweave.local_models import LocalLLM

    doc = open_document(Path(__file__).parents[1] / "examples" / "harbour_report.md")
    llm = LocalLLM.bundled()
    coa = ChainOfAgents(window=1024, max_new=48)
    answer = await arun(coa, doc, "Who was the first keeper of the lighthouse?", llm)
    chunks = answer.steps[0].detail["chunks"]
    assert chunks >= 2
    assert answer.usage.calls == chunks + 1
    assert [s.role for s in answer.steps] == ["plan"] + ["worker"] * chunks + ["manager"]
    assert answer.text.strip()
    # every call fitted the agent window: its prompt plus the generation cap
    assert answer.usage.prompt_tokens + 48 * answer.usage.calls <= 1024 * answer.usage.calls
    assert answer.citations or "uncited" in answer.flags
    for citation in answer.citations:
        assert doc.text[citation.start : citation.end] == citation.text


def test_the_vote_keeps_combining_marks_in_their_words() -> None:
    """Punctuation removal turned every Devanagari vowel sign into a space, so "हिन्दी" and
    "हिन्द" were one answer ("ह न द")."""
    from longweave.agents.chain_of_agents import _normalize, _vote
    from longweave.answer import vote_key as normalize

    assert _normalize("हिन्दी!") == "हिन्दी" != _normalize("हिन्द")
    assert normalize("The हिन्दी.") == "हिन्दी" != normalize("हिन्द")
    assert _vote(["हिन्द", "हिन्दी", "हिन्दी."]) == (1, False)


async def test_a_query_task_without_a_question_is_refused_before_any_call() -> None:
    model = ScriptedModel(context_window=500)
    with pytest.raises(ConfigError) as info:
        await arun(ChainOfAgents(task="query"), Document.from_text("Some text."), " ", model)
    assert info.value.message == "task='query' needs a question"
    assert "'summarize'" in info.value.hint and model.requests == []
