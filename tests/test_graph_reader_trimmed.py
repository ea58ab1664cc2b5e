"""GraphReader steps whose content is trimmed to the step budget (STRATEGIES.md §3.3, §3.5.6):
the schema, and the check after it, offer exactly the chunk ids and neighbour names the prompt
shows, never those the budget hid."""

from __future__ import annotations

import re
from typing import Any, get_args

import pytest

from longweave.agents.graph_reader import GraphReader
from longweave.documents import Document
from longweave.runner import arun
from longweave.testing import HashEmbedder, Request, ScriptedModel, quoted_after

# One paragraph, one fact and one chunk per visitor: the hub has 25 facts in 25 chunks and 25
# neighbours whose names take ~9 tokens a line, far more than a 768-token window's content
# budget (176 tokens) holds.
VISITORS = [f"visitor number {i} from the far northern harbour" for i in range(25)]
QUESTION = "Whom did Hub greet?"
LINE = re.compile(r"^- (.+)$", re.MULTILINE)
CHUNK = re.compile(r"^\[chunk (\d+)\]", re.MULTILINE)


def document() -> Document:
    return Document.from_text("\n\n".join(f"Hub greeted the {v}." for v in VISITORS))


def extract(request: Request) -> dict[str, Any]:
    passage = quoted_after(request.text, "Passage:")
    facts = [{"fact": s.strip() + ".", "key_elements": ["Hub", s.split("greeted the ", 1)[1]]}
             for s in passage.split(".") if "greeted the " in s]
    return {"atomic_facts": facts}


def reader(**settings: Any) -> GraphReader:
    small = {"window": 768, "chunk_tokens": 16, "n_init": 1, "merge_threshold": None,
             "notebook_chars": 64, "plan_max_new": 16, "last_actions": 2, "step_max_new": 96,
             "rationale_chars": 16, "margin": 16, "extract_max_new": 256, "retries": 1}
    return GraphReader(**{**small, **settings}).with_embedder(HashEmbedder(dim=64))


def scripted(stepper: Any) -> ScriptedModel:
    model = ScriptedModel()
    model.on("extractor", reply=extract)
    model.on("planner", contains="write a short plan", reply="1. Find whom Hub greeted.")
    model.on("planner", contains="Choose up to", reply={"nodes": [{"key": "Hub", "score": 99}]})
    model.on("stepper", reply=stepper)
    model.on("answerer", reply={"analysis": "a", "answer": "visitors"})
    return model


def listed(request: Request) -> list[str]:
    """The neighbour names a neighbours prompt shows."""
    return LINE.findall(request.text.split("most connected first:\n", 1)[1])


def offered(request: Request, field: str) -> tuple[Any, ...]:
    """The enum of `field` in the schema sent with the request."""
    assert request.schema is not None
    return get_args(get_args(request.schema.model_fields[field].annotation)[0]) if (
        field == "chunk_ids") else get_args(request.schema.model_fields[field].annotation)


@pytest.mark.parametrize("call_format", ["json", "call_string"])
async def test_a_neighbour_the_budget_hid_is_neither_offered_nor_accepted(
        call_format: str) -> None:
    tried: list[str] = []

    def stepper(request: Request) -> Any:
        base = {"notebook": "n", "rationale": "r"}
        if "Neighbouring nodes" not in request.text:
            move: dict[str, Any] = {"action": "stop_and_read_neighbor"}
        elif not tried:  # first: a neighbour of the hub that the prompt did not list
            tried.append(next(v for v in VISITORS if v not in listed(request)))
            move = {"action": "read_neighbor_node", "neighbor": tried[0]}
        elif "Your previous reply" in request.messages[-1].content:  # the re-ask: a listed one
            move = {"action": "read_neighbor_node", "neighbor": listed(request)[0]}
        else:
            move = {"action": "termination"}
        if call_format == "json":
            return base | move
        call = {"stop_and_read_neighbor": "stop_and_read_neighbor()",
                "termination": "termination()"}.get(move["action"])
        call = call or f'read_neighbor_node("{move["neighbor"]}")'
        return f"Notebook: n\nRationale: r\nAction: {call}"

    model = scripted(stepper)
    answer = await arun(reader(call_format=call_format), document(), QUESTION, model)
    asks = [r for r in model.calls("stepper") if "Neighbouring nodes" in r.text]
    first, reask = asks[0], asks[1]
    shown = listed(first)
    assert 0 < len(shown) < len(VISITORS)  # the budget cut the list (limit 25 shows all)
    assert tried[0] not in shown
    if call_format == "json":
        assert list(offered(first, "neighbor")) == shown  # exactly the listed names, in order
    # The hidden name is refused like an unknown one: re-asked with the listed choices.
    complaint = reask.messages[-1].content
    assert f"{tried[0]!r} is not one of the neighbours listed" in complaint
    assert shown[0] in complaint and tried[0] not in complaint.split("choose one of:", 1)[1]
    explored = next(s for s in answer.steps if s.role == "explorer")
    # The path went to the listed neighbour, whose only neighbour (the hub) is visited.
    assert explored.detail["invalid"] == 1 and explored.detail["ended"] == ["no_neighbors"]
    moves = [(s.detail["node"], s.detail["action"]) for s in answer.steps if s.role == "stepper"]
    assert moves == [("hub", "stop_and_read_neighbor"), ("hub", "read_neighbor_node"),
                     (shown[0], "stop_and_read_neighbor")]
    assert "neighbors_truncated" in answer.flags


async def test_a_chunk_whose_facts_the_budget_hid_is_neither_offered_nor_accepted() -> None:
    tried: list[int] = []

    def stepper(request: Request) -> dict[str, Any]:
        base = {"notebook": "n", "rationale": "r"}
        if "Facts of the node" in request.text and not tried:
            shown = {int(c) for c in CHUNK.findall(request.text)}
            tried.append(min(set(range(len(VISITORS))) - shown))
            return base | {"action": "read_chunk", "chunk_ids": tried}
        if "Facts of the node" in request.text:  # the re-ask: a shown one
            return base | {"action": "read_chunk",
                           "chunk_ids": [int(CHUNK.findall(request.text)[0])]}
        return base | {"action": "termination"}

    model = scripted(stepper)
    answer = await arun(reader(), document(), QUESTION, model)
    first, reask, *_ = model.calls("stepper")
    shown = [int(c) for c in CHUNK.findall(first.text)]
    assert 0 < len(shown) < len(VISITORS) and tried[0] not in shown
    assert list(offered(first, "chunk_ids")) == shown  # the ids of the facts shown, no others
    complaint = reask.messages[-1].content
    assert f"chunk {tried[0]} is not one of the unread chunks shown; choose from {shown}" in (
        complaint)
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["invalid"] == 1 and explored.detail["read"] == [[shown[0]]]
    assert "facts_truncated" in answer.flags


async def test_read_chunk_without_ids_reads_only_chunks_shown() -> None:
    """The fallback for `read_chunk` with `[]` (ours) takes the shown chunks, not hidden ones."""

    def stepper(request: Request) -> dict[str, Any]:
        base = {"notebook": "n", "rationale": "r"}
        if "Facts of the node" in request.text:
            return base | {"action": "read_chunk", "chunk_ids": []}
        if "Neighbouring nodes" in request.text:
            return base | {"action": "termination"}
        return base | {"action": "search_more"}

    model = scripted(stepper)
    answer = await arun(reader(max_chunk_ids=25, max_steps_per_path=30), document(), QUESTION,
                        model)
    shown = [int(c) for c in CHUNK.findall(model.calls("stepper")[0].text)]
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert 0 < len(shown) < len(VISITORS)
    assert explored.detail["read"] == [shown] and explored.detail["ended"] == ["termination"]


def test_offer_narrows_legal_actions_and_checks_until_the_next_call() -> None:
    """Without a model: what `offer` leaves out is refused; applying a call lifts the narrowing."""
    from longweave.graphs.paths import Call, PathState
    from longweave.graphs.store import Fact, KeyGraph

    facts = [Fact(i, f"hub and n{i}.", i, ("hub", f"n{i}")) for i in range(4)]
    graph = KeyGraph.from_facts("doc", [(i, i + 1) for i in range(4)], facts, {})
    path = PathState(graph, "hub")
    path.offer(ids=[2])
    assert path.chunk_choices() == [2]
    assert path.check(Call("read_chunk", (1,)))[1] == (
        "chunk 1 is not one of the unread chunks shown; choose from [2]")
    path.offer(ids=[])  # no fact with an unread chunk was shown: read_chunk is not offered
    assert path.legal() == ["stop_and_read_neighbor"]
    path.apply(Call("stop_and_read_neighbor"))
    assert path.neighbor_choices() == ["n0", "n1", "n2", "n3"]  # the narrowing is gone
    path.offer(names=["n1"])
    assert path.check(Call("read_neighbor_node", neighbor="N1"))[0] == Call(
        "read_neighbor_node", neighbor="n1")
    assert "'n3' is not one of the neighbours listed" in str(
        path.check(Call("read_neighbor_node", neighbor="n3"))[1])
    path.offer(names=[])  # nothing fitted the budget: only termination is left
    assert path.legal() == ["termination"]
