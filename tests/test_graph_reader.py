"""GraphReader against the strict scripted model: STRATEGIES.md §3.6 acceptance checks, caps,
invalid calls, the cached graph, and one run of the real local model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from longweave.agents.graph_reader import GraphReader
from longweave.cache import ArtifactCache
from longweave.documents import Document, open_document
from longweave.graphs.paths import Call, PathState
from longweave.runner import arun
from longweave.testing import HashEmbedder, Request, ScriptedModel

WORD = re.compile(r"\w+")
# One paragraph per chunk (chunk_tokens=6 with the scripted model's word tokenizer).
PARAS = ["Alpha met Beta at Harbour.", "Beta sailed with Gamma.", "Gamma built Delta.",
         "Delta lit Lamp.", "Lamp warned Ships."]
QUESTION = "Who built Delta?"




def reader(**settings: Any) -> GraphReader:
    base = {"chunk_tokens": 6, "n_init": 2, "merge_threshold": None, "margin": 16}
    return GraphReader(**{**base, **settings}).with_embedder(HashEmbedder(dim=64))


def document() -> Document:
    return Document.from_text("\n\n".join(PARAS))


def extract(request: Request) -> dict[str, Any]:
    """One fact per sentence; its key elements are its capitalized words."""
    passage = request.text.split("<passage>")[1].split("</passage>")[0]
    facts = [{"fact": s.strip() + ".", "key_elements": re.findall(r"\b[A-Z]\w+", s)}
             for s in passage.split(".") if s.strip()]
    return {"atomic_facts": facts}


def select(request: Request) -> dict[str, Any]:
    names = re.findall(r"^- (.+)$", request.text, re.MULTILINE)
    return {"nodes": [{"key": n, "score": 90 - i} for i, n in enumerate(names[:3])]}


def wander(request: Request) -> dict[str, Any]:
    """Always a legal move that keeps going: read a neighbour, or leave the facts."""
    base = {"notebook": f"note {len(request.messages)}", "rationale": "go on"}
    if "Neighbouring nodes" in request.text:
        first = re.findall(r"^- (.+)$", request.text, re.MULTILINE)[0]
        return base | {"action": "read_neighbor_node", "neighbor": first}
    if "A chunk of the text" in request.text:
        return base | {"action": "search_more"}
    return base | {"action": "stop_and_read_neighbor"}


def scripted(stepper: Any = wander) -> ScriptedModel:
    model = ScriptedModel()
    model.on("extractor", reply=extract)
    model.on("planner", contains="write a short plan", reply="1. Find who built Delta.")
    model.on("planner", contains="Choose up to", reply=select)
    model.on("stepper", reply=stepper)
    model.on("answerer", reply={"analysis": "notebooks agree", "answer": "Gamma"})
    return model


async def test_build_extracts_once_per_chunk_and_a_cached_rebuild_calls_nothing(
    tmp_path: Path,
) -> None:
    doc, cache, model = document(), ArtifactCache(tmp_path), scripted()
    answer = await arun(reader(), doc, QUESTION, model, artifacts=cache)
    assert len(model.calls("extractor")) == len(PARAS)
    built = next(s for s in answer.steps if s.role == "graph")
    assert built.detail["cached"] is False and built.detail["chunks"] == len(PARAS)
    graph = (await _graph(doc, cache)).graph
    assert all(graph.nodes[n]["facts"] for n in graph.nodes)
    # every fact lies in its chunk's character range
    loaded = await _graph(doc, cache)
    for fact in loaded.facts:
        start, end = loaded.spans[fact.chunk]
        assert fact.text.rstrip(".") in doc.text[start:end]
    again_model = scripted()
    again = await arun(reader(), doc, "Who lit Lamp?", again_model, artifacts=cache)
    assert again_model.calls("extractor") == []
    reused = next(s for s in again.steps if s.role == "graph")
    assert reused.detail["cached"] is True and reused.detail["calls"] == 0
    assert again.usage.calls == answer.usage.calls - len(PARAS)


async def _graph(doc: Document, cache: ArtifactCache) -> Any:
    from longweave.agents.base import RunContext

    ctx = RunContext(scripted(), doc, QUESTION, "graph-reader", artifacts=cache)
    strategy = reader()
    return await strategy.graph(ctx, strategy.budgets(ctx))


async def test_navigation_without_a_model(tmp_path: Path) -> None:
    graph = await _graph(document(), ArtifactCache(tmp_path))
    path = PathState(graph, "beta")
    assert path.legal() == ["read_chunk", "stop_and_read_neighbor"]
    call, problem = path.check(Call("read_chunk", (1, 0)))
    assert problem is None and call is not None
    path.apply(call)
    assert path.current == 1 and path.queue == [0]  # FIFO: 1 first, then 0
    assert "read_subsequent_chunk" not in path.legal() or path.current + 1 < len(graph.spans)
    path.apply(Call("search_more"))
    assert path.current == 0
    assert "read_previous_chunk" not in path.legal()  # nothing before chunk 0
    assert "read_subsequent_chunk" not in path.legal()  # chunk 1 already read
    path.apply(Call("search_more"))  # queue empty: on to the neighbours
    assert path.mode == "neighbors" and path.read == [1, 0]
    # read_previous_chunk pushes k-1 to the FRONT of the queue
    other = PathState(graph, "delta")
    other.apply(other.check(Call("read_chunk", (3, 2)))[0])  # type: ignore[arg-type]
    assert other.current == 3 and other.queue == [2]
    other.apply(Call("read_subsequent_chunk"))
    assert other.current == 4 and other.queue == [2] and other.read == [3, 4]


async def test_neighbours_share_a_fact_ranked_and_unvisited(tmp_path: Path) -> None:
    graph = await _graph(document(), ArtifactCache(tmp_path))
    assert set(graph.neighbors("beta")) == {"alpha", "harbour", "gamma"}
    path = PathState(graph, "beta", visited=["beta", "alpha"], neighbor_limit=1)
    assert len(path.neighbor_choices()) == 1 and "alpha" not in path.neighbor_choices()


async def test_paths_stop_at_the_step_cap_and_the_answer_is_called_once() -> None:
    model, steps = scripted(), 3
    answer = await arun(reader(max_steps_per_path=steps), document(), QUESTION, model)
    assert len(model.calls("stepper")) == 2 * steps
    assert len(model.calls("answerer")) == 1
    assert answer.usage.calls == len(PARAS) + 2 + 2 * steps + 1  # build + plan, select + steps
    assert "capped" in answer.flags
    prompt = model.calls("answerer")[0].text
    assert prompt.count("<notebook path=") == 2
    assert answer.text == "Gamma"


async def test_five_paths_give_five_labelled_notebooks() -> None:
    model = scripted()
    model.rules.insert(4, model.rules[2])  # selection offers enough names
    answer = await arun(reader(n_init=5, max_steps_per_path=2), document(), QUESTION, model)
    prompt = model.calls("answerer")[0].text
    assert [f"<notebook path={i}>" in prompt for i in range(1, 6)] == [True] * 5
    assert answer.text


async def test_an_unknown_node_is_rejected_with_a_message_and_the_path_recovers() -> None:
    tried: list[str] = []

    def stepper(request: Request) -> dict[str, Any]:
        base = {"notebook": "Gamma built Delta", "rationale": "r"}
        if "Neighbouring nodes" in request.text and not tried:
            tried.append(request.text)
            return base | {"action": "read_neighbor_node", "neighbor": "Atlantis"}
        if "Neighbouring nodes" in request.text:
            return base | {"action": "termination"}
        return base | {"action": "stop_and_read_neighbor"}

    model = scripted(stepper)
    answer = await arun(reader(n_init=1), document(), QUESTION, model)
    reasks = [r for r in model.calls("stepper") if "no node named 'Atlantis'" in r.text]
    assert len(reasks) == 1
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["ended"] == ["termination"] and explored.detail["invalid"] == 1
    assert "invalid_action" not in answer.flags


async def test_broken_json_retries_twice_then_ends_the_path() -> None:
    model = scripted(lambda r: "{not json")
    answer = await arun(reader(n_init=1), document(), QUESTION, model)
    assert len(model.calls("stepper")) == 3  # one try and two re-asks
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["ended"] == ["invalid"] and explored.detail["invalid_rate"] == 1.0
    assert "invalid_action" in answer.flags


async def test_citations_are_chunks_read_and_chunks_of_noted_facts() -> None:
    def stepper(request: Request) -> dict[str, Any]:
        if "A chunk of the text" in request.text:
            return {"notebook": "Gamma built Delta.", "rationale": "r", "action": "termination"}
        ids = [int(i) for i in re.findall(r"\[chunk (\d+)\]", request.text)]
        return {"notebook": "x", "rationale": "r", "action": "read_chunk", "chunk_ids": ids[:1]}

    doc, model = document(), scripted(stepper)
    answer = await arun(reader(n_init=1), doc, QUESTION, model)
    assert answer.citations
    for c in answer.citations:
        assert doc.text[c.start:c.end] == c.text
    assert any("Gamma built Delta" in c.text for c in answer.citations)


# -- the real local model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_llm() -> Any:
    import torch

    from longweave import local_models
    # One torch thread: on 2 cores shared with other processes, two OpenMP threads spin-wait
    # and decoding collapses (measured here: 32 tokens in 83 s with two, 2.7 s with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = local_models.LocalLLM.bundled()  # the suite's shared cache: dequantized once
    yield model
    model.close()
    torch.set_num_threads(threads)


@pytest.mark.real_model
async def test_real_local_model_end_to_end(local_llm: Any, tmp_path: Path) -> None:
    doc = open_document(Path(__file__).parents[1] / "examples" / "harbour_report.md")
    # Decoding (~13 tokens/s here, JSON punctuation included) is the cost, so every bound is
    # small: two extraction calls in one batch, then 5 calls per question.
    strategy = GraphReader(
        window=2048, chunk_tokens=512, max_facts=2, fact_chars=64, max_keys=2, key_chars=16,
        extract_max_new=160, n_init=1, candidates=10, select_max=1, select_max_new=32,
        max_steps_per_path=2, retries=0, notebook_chars=24, rationale_chars=8,
        step_max_new=64, plan_max_new=16, analysis_chars=8, answer_chars=32,
        answer_max_new=64, merge_threshold=None, margin=32,
    ).with_embedder(HashEmbedder(dim=64))
    cache = ArtifactCache(tmp_path)
    answer = await arun(strategy, doc, "Who was the first keeper of the lighthouse?", local_llm,
                        artifacts=cache)
    assert answer.text.strip()
    assert answer.citations
    for citation in answer.citations:
        assert doc.text[citation.start:citation.end] == citation.text
    again = await arun(strategy, doc, "When was the lamp first lit?", local_llm, artifacts=cache)
    assert next(s for s in again.steps if s.role == "graph").detail["cached"] is True
    assert again.usage.calls < answer.usage.calls
