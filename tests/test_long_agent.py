"""LongAgent against the strict scripted model: STRATEGIES.md §2.6 acceptance checks, and more."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from longweave.agents.base import RunContext
from longweave.agents.long_agent import LongAgent
from longweave.agents.long_agent_answers import cluster_replies, copied_span, locate
from longweave.agents.long_agent_prompts import (
    PLACEHOLDER,
    FinalAnswer,
    LeaderStart,
    LeaderTurn,
    MemberReply,
    render_reply,
)
from longweave.answer import vote_key as normalize
from longweave.documents import Document, open_document
from longweave.errors import BudgetExceeded, ParseError
from longweave.events import EventLog
from longweave.runner import arun
from longweave.structured import reask_message
from longweave.testing import Request, ScriptedModel, quoted_blocks

SENTINEL = re.compile(r"SENTINEL-(\d+)")
WINDOW = 3000
QUESTION = "What is the code word?"


def sentinel_document(n: int, words: int = 60) -> Document:
    """n paragraphs, each with a unique sentinel; with chunk_size=70 each is one chunk."""
    paras = [
        f"SENTINEL-{i} " + " ".join(f"word{i}x{j}" for j in range(words)) + "."
        for i in range(n)
    ]
    return Document.from_text("\n\n".join(paras))


def agent(**options: Any) -> LongAgent:
    return LongAgent(**{"max_new": 64, "chunk_size": 70, "margin": 16, **options})


def parts(request: Request) -> list[int]:
    """The sentinels inside the quoted parts of a request (the latest turn), in order."""
    turn = next(m.content for m in reversed(request.messages) if quoted_blocks(m.content))
    blocks = quoted_blocks(turn)
    return [int(s) for block in blocks for s in SENTINEL.findall(block)]


def member(answers: dict[int, str | tuple[str, list[str]]]) -> Callable[[Request], dict]:
    """Members holding a sentinel in `answers` report it (with optional quotes); others do not."""

    def reply(request: Request) -> dict:
        seen = parts(request)
        mine = seen[0] if seen else -1
        if mine not in answers:
            return {"found": False, "answer": "", "evidence": []}
        value = answers[mine]
        text, quotes = value if isinstance(value, tuple) else (value, [])
        return {"found": True, "answer": text, "evidence": quotes}

    return reply


def leader(answer_in_round: int | None = 1, text: str = "The code is {0}.") -> Callable:
    """A leader that instructs, then answers in the given round (None: never)."""
    state = {"round": 0}

    def reply(request: Request) -> dict:
        if request.schema is LeaderStart:
            return {"action": "instruct", "text": "Find the code word."}
        if request.schema is FinalAnswer:
            return {"answer": "forced answer"}
        state["round"] += 1
        if answer_in_round is not None and state["round"] >= answer_in_round:
            shown = re.findall(r"^1\. (.*?) \(given by", request.text, re.MULTILINE)
            return {"action": "answer", "text": text.format(shown[0] if shown else "unknown")}
        return {"action": "instruct", "text": f"Look again, round {state['round'] + 1}."}

    return reply


def scripted(answers: dict, merger: Any = None, **leader_options: Any) -> ScriptedModel:
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader(**leader_options))
    model.on("member", reply=member(answers))
    if merger is not None:
        model.on("merger", reply=merger)
    return model


@dataclass
class Concurrency(ScriptedModel):
    """The scripted model, yielding inside each call so concurrent calls overlap; counts them."""

    in_flight: int = 0
    peak: dict[str, int] | None = None

    async def complete(self, messages, *, max_tokens, temperature=0.0, schema=None, role=""):
        self.peak = self.peak or {}
        self.in_flight += 1
        self.peak[role] = max(self.peak.get(role, 0), self.in_flight)
        await asyncio.sleep(0.001)
        try:
            return await super().complete(
                messages, max_tokens=max_tokens, temperature=temperature, schema=schema, role=role
            )
        finally:
            self.in_flight -= 1


# -- acceptance 1: one finder, concurrent round, leader sees only its answer ---------------------


async def test_round_is_concurrent_and_leader_sees_only_the_finders_answer() -> None:
    model = Concurrency(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", reply=member({5: "Heliotrope"}))
    answer = await arun(agent(), sentinel_document(8), QUESTION, model)
    assert [r.role for r in model.requests] == ["leader"] + ["member"] * 8 + ["leader"]
    assert model.peak["member"] == 8  # all eight members of the round were in flight at once
    assert answer.usage.calls == 8 + 2
    assert not model.calls("merger")
    next_turn = model.calls("leader")[1]
    assert next_turn.schema is LeaderTurn
    assert "1. Heliotrope (given by 1 member)" in next_turn.text
    assert "7 members found nothing" in next_turn.text
    assert "SENTINEL" not in next_turn.text and not re.search(r"word\d", next_turn.text)
    assert "still conflict" not in next_turn.text
    assert answer.text == "The code is Heliotrope."


async def test_concurrency_setting_bounds_calls_in_flight() -> None:
    model = Concurrency(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", reply=member({0: "x"}))
    await arun(agent(concurrency=3), sentinel_document(8), QUESTION, model)
    assert model.peak["member"] == 3


async def test_members_see_their_chunk_the_instruction_and_task_but_not_the_question() -> None:
    model = scripted({1: "a"})
    await arun(agent(task="Answer a question."), sentinel_document(4), QUESTION, model)
    members = model.calls("member")
    assert [parts(r) for r in members] == [[0], [1], [2], [3]]
    for request in members:
        assert "Instruction from the leader: Find the code word." in request.text
        assert "Task: Answer a question." in request.text
        assert QUESTION not in request.text
        assert request.schema is MemberReply
    start = model.calls("leader")[0]
    assert QUESTION in start.text and "team of 4 members" in start.text


# -- acceptance 2 and 3: conflict resolution, normalized clusters ------------------------------


async def test_conflict_is_reasked_over_exactly_the_two_chunks_in_document_order() -> None:
    # Lyon (chunks 5 and 6) outranks Paris (chunk 2); the merge reads chunk 2 then chunk 5.
    model = scripted({2: "Paris", 5: "Lyon", 6: "lyon"}, merger={
        "found": True, "answer": "Paris", "evidence": []})
    answer = await arun(agent(), sentinel_document(8), QUESTION, model)
    (merge,) = model.calls("merger")
    assert parts(merge) == [2, 5]
    assert set(SENTINEL.findall(merge.text)) == {"2", "5"}
    assert "Lyon" not in merge.text and "Paris" not in merge.text  # answers are not shown
    assert "Instruction from the leader: Find the code word." in merge.text
    next_turn = model.calls("leader")[1]
    assert "1. Paris (given by 1 member)" in next_turn.text
    assert "Lyon" not in next_turn.text and "still conflict" not in next_turn.text
    assert answer.usage.calls == 1 + (8 + 1 + 1)
    (step,) = [s for s in answer.steps if s.role == "merge"]
    assert step.detail["outcome"] == "second" and step.detail["parts"] == [2, 5]


async def test_paraphrased_answers_form_one_cluster_without_merging() -> None:
    model = scripted({1: "The Eiffel Tower.", 4: "eiffel tower"})
    answer = await arun(agent(), sentinel_document(6), QUESTION, model)
    assert not model.calls("merger")
    assert "1. The Eiffel Tower. (given by 2 members)" in model.calls("leader")[1].text
    assert answer.usage.calls == 1 + 6 + 1


def test_normalization_and_similarity_clusters() -> None:
    assert normalize("The Eiffel Tower.") == normalize("eiffel tower") == "eiffel tower"
    replies = [
        MemberReply(found=True, answer="Mara Quill", evidence=[]),
        MemberReply(found=False, answer="Mara Quill", evidence=[]),  # not found: ignored
        MemberReply(found=True, answer="Mara Quil", evidence=[]),  # ratio >= 0.9
        MemberReply(found=True, answer="Tobias Quill", evidence=[]),
        MemberReply(found=True, answer=" . ", evidence=[]),  # empty once normalized
    ]
    clusters = cluster_replies(replies, 0.9)
    assert [(c.answer, c.members) for c in clusters] == [
        ("Mara Quill", (0, 2)), ("Tobias Quill", (3,))
    ]


async def test_merger_finding_nothing_drops_both_and_a_new_answer_replaces_them() -> None:
    model = scripted({0: "red", 3: "blue"}, merger={"found": False, "answer": "", "evidence": []})
    await arun(agent(), sentinel_document(4), QUESTION, model)
    assert "No member found an answer" in model.calls("leader")[1].text
    model = scripted({0: "red", 1: "red", 3: "blue"},
                     merger={"found": True, "answer": "reddish", "evidence": []})
    await arun(agent(), sentinel_document(4), QUESTION, model)
    assert "1. reddish (given by 2 members)" in model.calls("leader")[1].text


async def test_merge_cap_leaves_conflicts_for_the_leader_and_flags_capped() -> None:
    merger = {"found": True, "answer": "something else entirely", "evidence": []}
    model = scripted({0: "alpha", 1: "bravo", 2: "charlie"}, merger=merger)
    answer = await arun(agent(merge_cap=1), sentinel_document(4), QUESTION, model)
    assert len(model.calls("merger")) == 1
    next_turn = model.calls("leader")[1]
    assert "still conflict" in next_turn.text
    assert "capped" in answer.flags


async def test_merge_cap_zero_disables_inter_member_communication() -> None:
    model = scripted({0: "alpha", 1: "bravo"})
    answer = await arun(agent(merge_cap=0), sentinel_document(3), QUESTION, model)
    assert not model.calls("merger")
    assert "1. alpha (given by 1 member)\n2. bravo" in model.calls("leader")[1].text
    assert answer.text == "The code is alpha."


async def test_tournament_merges_disjoint_pairs_concurrently() -> None:
    model = Concurrency(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", reply=member({0: "alpha", 1: "bravo", 2: "charlie", 3: "delta"}))
    model.on("merger", reply=lambda r: {"found": True, "answer": f"m{parts(r)}", "evidence": []})
    answer = await arun(agent(merge_schedule="tournament"), sentinel_document(5), QUESTION, model)
    merges = model.calls("merger")
    assert [parts(r) for r in merges] == [[0, 1], [2, 3], [0, 2]]
    assert model.peak["merger"] == 2  # the first level's two pairs ran together
    assert answer.usage.calls == 1 + 5 + 3 + 1


@pytest.mark.parametrize("schedule", ["reference", "tournament"])
@pytest.mark.parametrize("seed", range(12))
async def test_merges_per_round_never_exceed_clusters_minus_one_or_the_cap(
    schedule: str, seed: int
) -> None:
    rng = random.Random(seed)
    pool = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    answers = {j: rng.choice(pool) for j in range(10) if rng.random() < 0.5}
    # Members that say found = false but copy their part count as found (quoted_answers).
    copies = {j: f"word{j}x3 word{j}x4 word{j}x5" for j in range(10)
              if j not in answers and rng.random() < 0.5}
    cap = rng.choice([1, 2, 3, 32])

    def members(request: Request) -> dict:
        mine = parts(request)[0]
        if mine in copies:
            return {"found": False, "answer": copies[mine], "evidence": []}
        return member(answers)(request)

    def merger(request: Request) -> dict:
        found = rng.random() < 0.8
        return {"found": found, "answer": rng.choice(pool + ["golf"]) if found else "",
                "evidence": []}

    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader(answer_in_round=None))
    model.on("member", reply=members)
    model.on("merger", reply=merger)
    strategy = agent(merge_cap=cap, merge_schedule=schedule, max_rounds=2)
    answer = await arun(strategy, sentinel_document(10), QUESTION, model)
    said = answers | copies
    first = cluster_replies([MemberReply(found=j in said, answer=said.get(j, ""), evidence=[])
                             for j in range(10)], 0.9, copies)
    for r in (1, 2):
        merges = [s for s in answer.steps if s.role == "merge" and s.detail["round"] == r]
        assert len(merges) <= min(max(len(first) - 1, 0), cap)
    assert answer.usage.calls == len(model.requests)


# -- acceptance 4 and 5: round cap, broken structured output -----------------------------------


@pytest.mark.parametrize("rounds", [1, 3, 6])
async def test_leader_that_never_answers_gets_exactly_r_rounds_then_one_final_call(
    rounds: int
) -> None:
    model = scripted({2: "Heliotrope"}, answer_in_round=None)
    strategy = agent(max_rounds=rounds, shown_responses=3)  # 6 rounds of history must fit
    answer = await arun(strategy, sentinel_document(4), QUESTION, model)
    leaders = model.calls("leader")
    assert [r.schema for r in leaders] == [LeaderStart] + [LeaderTurn] * rounds + [FinalAnswer]
    assert len(model.calls("member")) == rounds * 4
    assert answer.text == "forced answer"
    assert "capped" in answer.flags
    assert "1. Heliotrope" in leaders[-1].text and "No more instructions" in leaders[-1].text
    assert answer.usage.calls == 1 + rounds * (4 + 0 + 1) + 1
    assert answer.usage.prompt_tokens == sum(r.prompt_tokens for r in model.requests)


async def test_member_with_invalid_json_is_tried_three_times_then_counts_as_not_found() -> None:
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", contains="SENTINEL-1 ", reply="this is not JSON")
    model.on("member", reply=member({2: "Heliotrope"}))
    answer = await arun(agent(), sentinel_document(4), QUESTION, model)
    broken = [r for r in model.calls("member") if parts(r) == [1]]
    assert len(broken) == 3
    assert "Your previous reply was not usable" in broken[1].text
    assert "member_failed" in answer.flags
    (step,) = [s for s in answer.steps if s.role == "member" and s.index == 1]
    assert step.detail == {"round": 1, "found": False, "quoted": False, "failed": True}
    assert answer.text == "The code is Heliotrope."
    assert answer.usage.calls == 1 + 4 + 2 + 1


async def test_reask_carries_the_bad_reply_and_a_valid_retry_is_used() -> None:
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader())

    def bad(request: Request) -> Any:
        raise ParseError("the reply is not valid JSON: cut", raw='{"found": tr')

    model.on("member", contains="SENTINEL-0 ", reply=bad, times=1)
    model.on("member", reply=member({0: "Heliotrope"}))
    answer = await arun(agent(), sentinel_document(2), QUESTION, model)
    first, retry = [r for r in model.calls("member") if parts(r) == [0]]
    assert first.messages[-1].content.startswith("Task:")
    assert retry.messages[-2].content == '{"found": tr'
    assert "not valid JSON: cut" in retry.messages[-1].content
    assert answer.text == "The code is Heliotrope." and "member_failed" not in answer.flags


@pytest.mark.parametrize("runaway", ["reply", "complaint"])
async def test_a_reask_that_cannot_fit_drops_the_bad_reply_then_the_complaint(
    runaway: str,
) -> None:
    """The re-ask must fit the member's window: a runaway bad reply is left out first, and a
    complaint that cannot fit either leaves the prompt as it was first sent."""
    long = " ".join(["word"] * WINDOW)
    why = long if runaway == "complaint" else "the reply was cut"
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader())

    def bad(request: Request) -> Any:
        raise ParseError(why, raw=long)

    model.on("member", contains="SENTINEL-0 ", reply=bad, times=1)
    model.on("member", reply=member({0: "Heliotrope"}))
    answer = await arun(agent(), sentinel_document(2), QUESTION, model)
    first, retry = [r for r in model.calls("member") if parts(r) == [0]]
    if runaway == "reply":
        assert retry.messages == (*first.messages, reask_message(why))
    else:
        assert retry.messages == first.messages
    assert answer.text == "The code is Heliotrope."


async def test_leader_failures_fall_back_to_the_question_and_the_top_cluster() -> None:
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply="garbage")
    model.on("member", reply=member({1: "Heliotrope"}))
    answer = await arun(agent(retries=1), sentinel_document(3), QUESTION, model)
    assert f"Instruction from the leader: {QUESTION}" in model.calls("member")[0].text
    # start (2 tries), next turn (2 tries, then straight to the final call), final (2 tries)
    assert [r.schema for r in model.calls("leader")] == [LeaderStart] * 2 + [LeaderTurn] * 2 + [
        FinalAnswer] * 2
    assert answer.text == "Heliotrope"
    assert "leader_failed" in answer.flags


# -- carried state: history, shown responses, budget -------------------------------------------


async def test_second_round_members_see_history_with_placeholder_and_team_answers() -> None:
    model = scripted({1: "Heliotrope", 2: "heliotrope"}, answer_in_round=2)
    await arun(agent(), sentinel_document(3), QUESTION, model)
    second = [r for r in model.calls("member") if "Look again, round 2." in r.text]
    assert len(second) == 3
    for request in second:
        assert len(quoted_blocks(request.text)) == 1 and len(SENTINEL.findall(request.text)) == 1
        assert PLACEHOLDER in request.messages[1].content
        assert "Instruction: Find the code word." in request.messages[1].content
        assert request.messages[2].role == "assistant"
        assert "- Heliotrope (parts 2, 3)" in request.text
    assert '"answer": "Heliotrope"' in second[1].messages[2].content


def distinct(j: int, chars: int = 290) -> str:
    """An answer of `chars` characters unlike any other j's (so each is its own cluster)."""
    return "".join(random.Random(j).choices("abcdefgh ,.", k=chars)).strip() or "x"


async def test_full_length_carried_state_never_overflows_the_window() -> None:
    long_answers = {j: (distinct(j), []) for j in range(12)}
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=lambda r: {"action": "instruct", "text": "look " * 119}
             if r.schema is not FinalAnswer else {"answer": "done"})
    model.on("member", reply=member(long_answers))
    answer = await arun(agent(merge_cap=0), sentinel_document(12), QUESTION, model)
    assert len(model.calls("member")) == 3 * 12
    for request in model.requests:
        assert request.prompt_tokens + request.max_tokens <= WINDOW
    assert len(re.findall(r"^- ", model.calls("member")[-1].text, re.MULTILINE)) == 10
    assert answer.text == "done"


async def test_optimistic_reservation_is_trimmed_oldest_history_first() -> None:
    model = ScriptedModel(context_window=WINDOW)
    turns = iter(range(1, 5))
    model.on("leader", reply=lambda r: {"action": "instruct",
                                        "text": f"round {next(turns)}. " + "look " * 110}
             if r.schema is not FinalAnswer else {"answer": "done"})
    model.on("member", reply=lambda r: {"found": True, "answer": distinct(parts(r)[0]),
                                        "evidence": []})
    # 40 characters per token reserves far too little for these punctuation-dense answers.
    strategy = agent(merge_cap=0, chars_per_token=40.0, chunk_size=1000)
    answer = await arun(strategy, sentinel_document(160), QUESTION, model)
    assert "trimmed" in answer.flags
    for request in model.requests:
        assert request.prompt_tokens + request.max_tokens <= WINDOW
    third = [r for r in model.calls("member") if "round 3." in r.messages[-1].content]
    # The oldest turn goes first: a trimmed round 3 prompt keeps round 2's turn, not round 1's.
    trimmed = [r for r in third if "round 1." not in r.text]
    assert trimmed and all("round 2." in r.text for r in trimmed)


def test_fixed_alignment_cuts_full_token_windows() -> None:
    doc, model = sentinel_document(4), ScriptedModel(context_window=WINDOW)
    fixed = agent(alignment="fixed", chunk_size=100)
    chunks = fixed.initial_state(RunContext(model, doc, "q?", fixed.name))["chunks"]
    assert [c.n_tokens for c in chunks] == [100, 100, 56]  # 4 x 64 tokens
    sentences = agent(chunk_size=100)
    chunks = sentences.initial_state(RunContext(model, doc, "q?", sentences.name))["chunks"]
    assert [c.n_tokens for c in chunks] == [64] * 4  # cut at paragraph ends


# -- citations ------------------------------------------------------------------------------


async def test_citations_are_located_quotes_or_whole_chunks_with_exact_spans() -> None:
    doc = sentinel_document(4)
    quotes = ["word1x3 word1x4", "word1x7\n   word1x8", "not in the text"]
    model = scripted({1: ("Heliotrope", quotes), 3: ("heliotrope", [])})
    answer = await arun(agent(), doc, QUESTION, model)
    kinds = [(c.kind, c.chunk_index) for c in answer.citations]
    assert kinds == [("quote", 1), ("quote", 1), ("chunk", 3)]
    for citation in answer.citations:
        assert doc.text[citation.start : citation.end] == citation.text
        assert citation.doc_id == doc.id
    assert answer.citations[0].text == "word1x3 word1x4"
    assert answer.citations[1].text == "word1x7 word1x8"
    (cite,) = [s for s in answer.steps if s.role == "cite"]
    assert cite.detail["unresolved"] == 1


def test_locate_exact_then_whitespace_normalized() -> None:
    text = "The lamp was first lit\non the third of March."
    assert locate(text, "lamp was") == (4, 12)
    assert locate(text, " first lit on  the ") == (13, 29)
    assert locate(text, "lamp is") is None and locate(text, "  ") is None


def test_copied_span_is_the_run_with_most_words_the_instruction_lacks() -> None:
    text = "The first keeper of the lighthouse was Mara Quill, the widow of a pilot."
    known = "Who was the first keeper?"
    fresh, start, end = copied_span("the first keeper was MARA quill the widow", text, known)
    # "the first keeper" is copied too, but holds nothing the instruction did not say.
    assert (fresh, text[start:end]) == (3, "was Mara Quill, the widow")
    assert copied_span("The first keeper", text, known)[0] == 0  # type: ignore[index]
    assert copied_span("Tobias", text, known) is None


def quoting(copies: dict[int, str]) -> Callable[[Request], dict]:
    """Members who may copy from their part but always say found = false, as small models do."""

    def reply(request: Request) -> dict:
        return {"found": False, "answer": copies.get(parts(request)[0], ""), "evidence": []}

    return reply


async def test_an_answer_copied_from_the_part_counts_as_found_and_cites_the_copy() -> None:
    doc = sentinel_document(4)
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader(answer_in_round=2))
    # Member 2 copies three words of its part; member 1 copies one, too few to count.
    said = "It says word2x3 word2x4, word2x5!"
    model.on("member", reply=quoting({2: said, 1: "word1x0"}))
    answer = await arun(agent(), doc, QUESTION, model)
    members = [s for s in answer.steps if s.role == "member" and s.detail["round"] == 1]
    assert [(s.detail["found"], s.detail["quoted"]) for s in members] == [
        (False, False), (False, False), (True, True), (False, False)]
    assert f"1. {said} (given by 1 member)" in model.calls("leader")[1].text
    assert [(c.kind, c.chunk_index, c.text) for c in answer.citations] == [
        ("quote", 2, "word2x3 word2x4 word2x5")]
    (citation,) = answer.citations
    assert doc.text[citation.start : citation.end] == citation.text
    assert "found_by_quote" in answer.flags and "uncited" not in answer.flags
    assert answer.usage.calls == 1 + 2 * (4 + 1)
    # The member's own history keeps what it said (found = false), not what was made of it.
    (again,) = [r for r in model.calls("member")[4:] if parts(r) == [2]]
    assert render_reply(MemberReply(found=False, answer=said, evidence=[])) in [
        m.content for m in again.messages if m.role == "assistant"]


async def test_quoted_answers_off_trusts_the_found_flag_alone() -> None:
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", reply=quoting({2: "word2x3 word2x4 word2x5"}))
    answer = await arun(agent(quoted_answers=False), sentinel_document(4), QUESTION, model)
    assert "No member found an answer" in model.calls("leader")[1].text
    assert answer.citations == [] and "uncited" in answer.flags
    assert "found_by_quote" not in answer.flags


async def test_a_found_reply_without_quotes_is_narrowed_to_what_it_copied() -> None:
    doc = sentinel_document(3)
    model = scripted({1: "word1x4 word1x5 word1x6"})
    answer = await arun(agent(), doc, QUESTION, model)
    assert [(c.kind, c.text) for c in answer.citations] == [("quote", "word1x4 word1x5 word1x6")]
    assert "found_by_quote" not in answer.flags  # it said found itself


async def test_a_merger_that_copies_from_the_two_parts_settles_the_conflict() -> None:
    model = scripted({1: "Paris", 3: "Lyon"},
                     merger={"found": False, "answer": "word3x1 word3x2 word3x3", "evidence": []})
    answer = await arun(agent(), sentinel_document(4), QUESTION, model)
    (merge,) = [s for s in answer.steps if s.role == "merge"]
    assert merge.detail["quoted"] is True and merge.detail["outcome"] == "new"
    assert "1. word3x1 word3x2 word3x3 (given by 1 member)" in model.calls("leader")[1].text
    assert "found_by_quote" in answer.flags


async def test_a_merger_finding_nothing_keeps_only_the_side_that_copied_its_part() -> None:
    copied = "word2x3 word2x4 word2x5"

    def members(request: Request) -> dict:
        mine = parts(request)[0]
        if mine == 0:
            return {"found": True, "answer": "Paris", "evidence": []}
        return {"found": False, "answer": copied if mine == 2 else "", "evidence": []}

    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", reply=members)
    model.on("merger", reply={"found": False, "answer": "", "evidence": []})
    answer = await arun(agent(), sentinel_document(4), QUESTION, model)
    (merge,) = [s for s in answer.steps if s.role == "merge"]
    assert merge.detail["outcome"] == "kept_copied"
    assert f"1. {copied} (given by 1 member)" in model.calls("leader")[1].text
    assert "Paris" not in model.calls("leader")[1].text
    assert [(c.kind, c.chunk_index) for c in answer.citations] == [("quote", 2)]
    assert "uncited" not in answer.flags


async def test_a_merger_keeping_two_copied_sides_stops_merging_and_leaves_the_conflict() -> None:
    """Both sides stay, so asking again would repeat the same merge up to merge_cap (§2.6.6)."""
    copies = {j: f"word{j}x3 word{j}x4 word{j}x5" for j in (0, 2)}
    model = ScriptedModel(context_window=WINDOW)
    model.on("leader", reply=leader())
    model.on("member", reply=quoting(copies))
    model.on("merger", reply={"found": False, "answer": "", "evidence": []})
    answer = await arun(agent(), sentinel_document(4), QUESTION, model)
    (merge,) = model.calls("merger")
    assert parts(merge) == [0, 2]
    next_turn = model.calls("leader")[1]
    assert copies[0] in next_turn.text and copies[2] in next_turn.text
    assert "still conflict" in next_turn.text
    assert "capped" not in answer.flags
    assert answer.usage.calls == 1 + 4 + 1 + 1


async def test_the_cluster_backing_the_answer_is_cited_and_none_found_is_uncited() -> None:
    model = scripted({0: "Lyon", 1: "Heliotrope", 2: "Paris"}, text="I think it is heliotrope")
    answer = await arun(agent(merge_cap=0), sentinel_document(3), QUESTION, model)
    assert [c.chunk_index for c in answer.citations] == [1]
    model = scripted({}, text="I cannot tell.")
    answer = await arun(agent(), sentinel_document(3), QUESTION, model)
    assert answer.citations == [] and "uncited" in answer.flags


# -- trace and events --------------------------------------------------------------------------


async def test_trace_and_events_name_every_role() -> None:
    log = EventLog()
    model = scripted({1: "Lyon", 2: "Paris"},
                     merger={"found": True, "answer": "Paris", "evidence": []})
    answer = await arun(agent(), sentinel_document(3), QUESTION, model, on_event=log)
    roles = [s.role for s in answer.steps]
    assert roles == ["plan", "leader", "member", "member", "member", "merge", "leader", "cite"]
    assert [s.index for s in answer.steps if s.role == "member"] == [0, 1, 2]
    calls = [(e.role, e.index, e.total) for e in log.of_kind("call")]
    assert calls[0] == ("leader", None, None)
    assert sorted(calls[1:4]) == [("member", j, 3) for j in range(3)]
    assert calls[4:] == [("merger", 0, None), ("leader", None, None)]


async def test_random_member_pick_is_seeded() -> None:
    async def picked(seed: int) -> list[list[int]]:
        model = scripted({0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "b"},
                         merger={"found": True, "answer": "a", "evidence": []})
        await arun(agent(member_pick="random", seed=seed), sentinel_document(6), "q?", model)
        return [parts(r) for r in model.calls("merger")]

    assert await picked(7) == await picked(7)
    assert {tuple(p) for seed in range(8) for p in await picked(seed)} != {(0, 3)}


# -- the real bundled model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from longweave import local_models
    # One torch thread: on 2 shared cores, two OpenMP threads spin-wait and decoding collapses.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = local_models.LocalLLM.bundled(
        cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache"
    )
    yield model
    model.close()
    torch.set_num_threads(threads)


@pytest.mark.real_model
async def test_real_local_model_end_to_end(local_llm: Any) -> None:
    doc = open_document(Path(__file__).parents[1] / "examples" / "harbour_report.md")
    # ~950 tokens in a 1024-token window: 4 members; schema bounds tight enough that every
    # reply's JSON closes within 64 new tokens; one round and two merges keep the run short.
    strategy = LongAgent(window=1024, max_new=64, max_rounds=1, margin=32, shown_responses=3,
                         instruction_chars=100, answer_chars=80, quote_chars=40, max_quotes=1,
                         merge_cap=2, retries=1)
    answer = await arun(strategy, doc, "Who was the first keeper of the lighthouse?", local_llm)
    assert answer.text.strip()
    members = [s for s in answer.steps if s.role == "member"]
    assert len(members) == answer.steps[0].detail["chunks"] >= 3
    merges = [s for s in answer.steps if s.role == "merge"]
    # start + members + merges + next turn (+ the forced final answer), plus any re-asks
    assert answer.usage.calls >= 1 + len(members) + len(merges) + 1
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    # This model sets found = false on every member, even the one that copies the answer out of
    # its part; that copy counts as found (quoted_answers) and is what the answer cites.
    reported = [s.index for s in members if s.detail["found"]]
    assert reported and "uncited" not in answer.flags
    assert answer.citations
    cite = next(s for s in answer.steps if s.role == "cite")
    for citation in answer.citations:
        assert doc.text[citation.start : citation.end] == citation.text
        assert citation.chunk_index in cite.detail["members"]


async def test_a_window_too_small_for_the_carried_state_says_what_to_lower() -> None:
    with pytest.raises(BudgetExceeded, match="carried state"):
        await arun(agent(max_rounds=6), sentinel_document(4), QUESTION, scripted({}))
