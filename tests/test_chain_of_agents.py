"""Chain-of-Agents against the strict scripted model: STRATEGIES.md §1.6 acceptance checks."""

from __future__ import annotations

import re

import pytest

from longweave.agents.chain_of_agents import ChainOfAgents
from longweave.documents import Document
from longweave.errors import UnscriptedCall
from longweave.llm import quoted, unquote
from longweave.runner import arun
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
                                 {"temperature": -0.5}])
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
