"""GraphReader against the strict scripted model: STRATEGIES.md §3.6 acceptance checks, caps,
invalid calls, the cached graph, and one run of the real local model."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from longweave.agents.graph_reader import GraphReader
from longweave.cache import ArtifactCache
from longweave.documents import Document, open_document
from longweave.errors import LongweaveWarning, ParseError
from longweave.graphs.calls import parse_call, parse_step
from longweave.graphs.paths import Call, PathState
from longweave.runner import arun
from longweave.testing import HashEmbedder, Request, Rule, ScriptedModel, quoted_after

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
    passage = quoted_after(request.text, "Passage:")
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


async def test_an_embedder_of_the_same_name_on_another_server_builds_another_graph(
        tmp_path: Path) -> None:
    """Node merges follow the embedder's vectors: one name served by two OpenAI-compatible
    servers is two embedders (their `fingerprint`s differ), so the graph is not shared."""

    class Served(HashEmbedder):
        def __init__(self, server: str) -> None:
            super().__init__(dim=64)
            self.fingerprint = f"{self.name}@{server}"

    doc, cache = Document.from_text("\n\n".join(PARAS)), ArtifactCache(tmp_path)
    for server in ("http://a/v1", "http://b/v1"):
        model = scripted()
        strategy = reader().with_embedder(Served(server))
        await arun(strategy, doc, "Who lit Lamp?", model, artifacts=cache)
        assert len(model.calls("extractor")) == len(PARAS)  # built for each server


@pytest.mark.parametrize("damage", ["null", "[]", '{"doc_id": "x"}', "{"])
async def test_a_damaged_cached_graph_is_rebuilt_once_and_cached_again(
    tmp_path: Path, damage: str
) -> None:
    doc, cache = document(), ArtifactCache(tmp_path)
    await arun(reader(), doc, QUESTION, scripted(), artifacts=cache)
    (folder,) = tmp_path.iterdir()
    (folder / "graph.json").write_text(damage)
    model = scripted()
    with pytest.warns(RuntimeWarning, match="rebuilding the GraphReader graph.*moved to"):
        await arun(reader(), doc, QUESTION, model, artifacts=cache)
    assert len(model.calls("extractor")) == len(PARAS)
    again = scripted()
    await arun(reader(), doc, QUESTION, again, artifacts=cache)
    assert again.calls("extractor") == []


@pytest.mark.parametrize("keep_cut", [True, False])
async def test_a_cut_extraction_keeps_its_whole_facts(keep_cut: bool, tmp_path: Path) -> None:
    def cut(request: Request) -> str:  # the facts, then a fact cut inside its text
        whole = json.dumps(extract(request))[:-2]  # drop the closing "]}"
        return whole + ', {"fact": "Delta was rebuilt in 19'

    model = scripted()
    model.rules[0] = Rule("extractor", (), cut)
    doc, cache = document(), ArtifactCache(tmp_path)
    if keep_cut:
        answer = await arun(reader(keep_cut=keep_cut), doc, QUESTION, model, artifacts=cache)
    else:  # every chunk fails: nothing is cached
        with pytest.warns(LongweaveWarning, match="failed for every chunk"):
            answer = await arun(reader(keep_cut=keep_cut), doc, QUESTION, model, artifacts=cache)
    built = next(s for s in answer.steps if s.role == "graph")
    if keep_cut:
        assert len(model.calls("extractor")) == len(PARAS)  # no re-asks
        assert built.detail["failed_chunks"] == [] and built.detail["facts"] > 0
        facts = (await _graph(doc, cache)).facts
        assert facts and not any("rebuilt" in f.text for f in facts)  # the cut fact is dropped
    else:  # each chunk re-asked `retries` times, then it yields nothing
        assert len(model.calls("extractor")) == 3 * len(PARAS)
        assert built.detail["failed_chunks"] == list(range(len(PARAS)))


def noting(request: Request) -> dict[str, Any]:
    """Notes the facts of the node it starts at, then stops at the neighbours."""
    text, base = request.text, {"rationale": "r"}
    if "Facts of the node you are at" in text:
        facts = text.split("come from:\n", 1)[1].split("\n\nUpdate the notebook", 1)[0]
        return base | {"notebook": facts, "action": "stop_and_read_neighbor"}
    kept = re.search(r"Your notebook so far: (.*?)\n\n", text, re.DOTALL)
    return base | {"notebook": kept.group(1) if kept else "", "action": "termination"}


def answer_from_notes(request: Request) -> dict[str, Any]:
    return {"analysis": "a", "answer": "Gamma" if "Gamma built Delta" in request.text else "?"}


async def test_a_build_whose_every_extraction_failed_is_not_cached(tmp_path: Path) -> None:
    doc, cache = document(), ArtifactCache(tmp_path)
    broken = scripted(noting)
    broken.rules[0] = Rule("extractor", (), "{not json")  # every chunk, every re-ask
    broken.rules[4] = Rule("answerer", (), answer_from_notes)
    with pytest.warns(LongweaveWarning, match="failed for every chunk.*retried on the next"):
        first = await arun(reader(), doc, QUESTION, broken, artifacts=cache)
    assert len(broken.calls("extractor")) == 3 * len(PARAS)  # one try and two re-asks each
    built = next(s for s in first.steps if s.role == "graph")
    assert built.detail["failed_chunks"] == list(range(len(PARAS))) and built.detail["facts"] == 0
    assert first.text == "?" and "empty_graph" in first.flags  # answered, flagged as before
    assert list(tmp_path.iterdir()) == []  # the empty graph was not kept
    # The model works again: the next question builds the graph anew and answers from it.
    fixed = scripted(noting)
    fixed.rules[4] = Rule("answerer", (), answer_from_notes)
    second = await arun(reader(), doc, QUESTION, fixed, artifacts=cache)
    assert len(fixed.calls("extractor")) == len(PARAS)
    rebuilt = next(s for s in second.steps if s.role == "graph")
    assert rebuilt.detail["cached"] is False and rebuilt.detail["failed_chunks"] == []
    assert second.text == "Gamma" and "empty_graph" not in second.flags
    assert len(list(tmp_path.iterdir())) == 1  # this one is kept
    third = scripted(noting)
    await arun(reader(), doc, QUESTION, third, artifacts=cache)
    assert third.calls("extractor") == []


async def test_a_build_with_some_failed_chunks_is_still_cached(tmp_path: Path) -> None:
    doc, cache = document(), ArtifactCache(tmp_path)
    model = scripted()
    model.rules.insert(0, Rule("extractor", ("Lamp warned Ships",), "{not json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = await arun(reader(), doc, QUESTION, model, artifacts=cache)
    assert not [w for w in caught if "failed for every chunk" in str(w.message)]
    built = next(s for s in answer.steps if s.role == "graph")
    assert built.detail["failed_chunks"] == [len(PARAS) - 1] and built.detail["facts"] > 0
    again = scripted()
    reused = await arun(reader(), doc, QUESTION, again, artifacts=cache)
    assert again.calls("extractor") == []
    assert next(s for s in reused.steps if s.role == "graph").detail["cached"] is True


async def test_a_document_without_facts_is_cached(tmp_path: Path) -> None:
    """Valid replies holding no facts are not a failed build: the empty graph is kept."""
    doc, cache = document(), ArtifactCache(tmp_path)
    model = scripted()
    model.rules[0] = Rule("extractor", (), {"atomic_facts": []})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = await arun(reader(), doc, QUESTION, model, artifacts=cache)
    assert not [w for w in caught if "failed for every chunk" in str(w.message)]
    assert "empty_graph" in answer.flags
    again = scripted()
    await arun(reader(), doc, QUESTION, again, artifacts=cache)
    assert again.calls("extractor") == []


@pytest.mark.parametrize("reply", [{"analysis": "a", "answer": "  "}, "{not json"])
async def test_an_empty_final_answer_is_flagged(reply: Any) -> None:
    model = scripted()
    model.rules[4] = Rule("answerer", (), reply)
    if not isinstance(reply, dict):  # the structured answer fails: the plain one is blank too
        model.on("answerer", contains="Write only a short answer", reply="\n ")
        model.rules.insert(4, model.rules.pop())
    answer = await arun(reader(n_init=1), document(), QUESTION, model)
    assert answer.text == "" and "empty_answer" in answer.flags
    assert ("fallback" in answer.flags) is not isinstance(reply, dict)
    assert "empty_answer" not in (await arun(reader(n_init=1), document(), QUESTION,
                                             scripted())).flags


GREEK = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta", "Iota", "Kappa",
         "Lambda", "Omicron", "Sigma", "Tau", "Omega"]


@pytest.mark.parametrize(("candidates", "asked"), [
    (50, "Choose up to 12 different nodes, and no fewer than 10, to start"),  # 15 listed
    (11, "Choose up to 11 different nodes, and no fewer than 10, to start"),
    (4, "Choose up to 4 different nodes, and no fewer than 4, to start"),  # as many as listed
    (1, "Choose up to 1 different node to start"),
])
async def test_the_selection_asks_for_at_least_ten_diverse_nodes_and_keeps_fewer(
        candidates: int, asked: str) -> None:
    """§3.2: ask for >= 10 diverse nodes scored 0-100 (or every candidate listed, when fewer
    are); the schema still takes from one node up, so a reply with two is kept, not re-asked."""
    doc = Document.from_text("\n\n".join(f"{a} met {b}." for a, b in zip(
        GREEK, GREEK[1:], strict=False)))
    model = scripted()
    model.rules[2] = Rule("planner", ("Choose up to",), lambda r: {"nodes": [
        {"key": n, "score": 90 - i} for i, n in enumerate(re.findall(
            r"^- (.+)$", r.text, re.MULTILINE)[:2])]})
    answer = await arun(reader(candidates=candidates, max_steps_per_path=1), doc, QUESTION,
                        model)
    plan, selection = model.calls("planner")  # one selection: two nodes were enough
    listed = re.findall(r"^- (.+)$", selection.text, re.MULTILINE)
    assert len(listed) == min(candidates, len(GREEK))
    assert asked in selection.text
    assert ("diverse" in selection.text) is (candidates > 1)
    nodes = selection.schema.model_json_schema()["properties"]["nodes"]  # type: ignore[union-attr]
    assert (nodes["minItems"], nodes["maxItems"]) == (1, 12)
    chosen = next(s for s in answer.steps if s.detail.get("stage") == "select")
    assert chosen.detail["starts"] == listed[:2] and "invalid_selection" not in answer.flags


async def test_a_cut_selection_keeps_the_nodes_it_scored() -> None:
    def cut(request: Request) -> str:
        names = re.findall(r"^- (.+)$", request.text, re.MULTILINE)
        nodes = [{"key": names[2], "score": 90}, {"key": names[0], "score": 80}]
        return json.dumps({"nodes": nodes})[:-9]  # cut inside the second node's score

    model = scripted()
    model.rules[2] = Rule("planner", ("Choose up to",), cut)
    answer = await arun(reader(n_init=1), document(), QUESTION, model)
    chosen = next(s for s in answer.steps if s.detail.get("stage") == "select")
    assert len(model.calls("planner")) == 2  # the plan and one selection: no re-ask
    assert chosen.detail["valid"] == 1 and "invalid_selection" not in answer.flags
    asked = re.findall(r"^- (.+)$", model.calls("planner")[1].text, re.MULTILINE)
    assert chosen.detail["starts"] == [asked[2]]  # the scored node, not the vector ranking's top


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
    assert path.read == []  # current, not read: no step has shown it yet
    assert path.show_chunk() == 1 and path.read == [1]  # what a step does when it shows it
    assert "read_subsequent_chunk" not in path.legal() or path.current + 1 < len(graph.spans)
    path.apply(Call("search_more"))
    assert path.current == 0 and path.show_chunk() == 0
    assert "read_previous_chunk" not in path.legal()  # nothing before chunk 0
    assert "read_subsequent_chunk" not in path.legal()  # chunk 1 already read
    path.apply(Call("search_more"))  # queue empty: on to the neighbours
    assert path.mode == "neighbors" and path.read == [1, 0]
    with pytest.raises(ValueError):
        path.show_chunk()  # nothing to show outside the chunk state
    # read_previous_chunk pushes k-1 to the FRONT of the queue
    other = PathState(graph, "delta")
    other.apply(other.check(Call("read_chunk", (3, 2)))[0])  # type: ignore[arg-type]
    assert other.current == 3 and other.queue == [2]
    other.show_chunk()
    other.apply(Call("read_subsequent_chunk"))
    assert other.current == 4 and other.queue == [2] and other.read == [3]
    other.show_chunk()
    assert other.read == [3, 4]


async def test_neighbours_share_a_fact_ranked_and_unvisited(tmp_path: Path) -> None:
    graph = await _graph(document(), ArtifactCache(tmp_path))
    assert set(graph.neighbors("beta")) == {"alpha", "harbour", "gamma"}
    path = PathState(graph, "beta", visited=["beta", "alpha"], neighbor_limit=1)
    assert len(path.neighbor_choices()) == 1 and "alpha" not in path.neighbor_choices()


def test_neighbours_are_ranked_by_shared_facts_and_only_those_sharing_one() -> None:
    """§3.6.3 with unequal co-occurrence counts (the document above shares one fact per pair)."""
    from longweave.graphs.store import Fact, KeyGraph

    pairs = [("a", "b"), ("a", "c"), ("a", "c"), ("a", "d"), ("a", "d"), ("a", "d"), ("b", "e")]
    facts = [Fact(i, f"{u} and {v}.", 0, (u, v)) for i, (u, v) in enumerate(pairs)]
    graph = KeyGraph.from_facts("doc", [(0, 10)], facts, {})
    assert PathState(graph, "a").neighbor_choices() == ["d", "c", "b"]  # "e" shares no fact
    assert PathState(graph, "a", neighbor_limit=2).neighbor_choices() == ["d", "c"]
    assert PathState(graph, "a", visited=["a", "d"]).neighbor_choices() == ["c", "b"]


async def test_step_prompts_show_the_path_s_previous_actions_across_nodes() -> None:
    """Reference-port bugs (§3.5.1): previous actions were always empty, and moving to a
    neighbour overwrote the history. Here every step sees the path's last `last_actions`."""
    model = scripted()
    await arun(reader(n_init=1, max_steps_per_path=5, last_actions=2), document(), QUESTION,
               model)
    shown = [re.search(r"Your previous actions: (.*)\n", r.text).group(1)  # type: ignore[union-attr]
             for r in model.calls("stepper")]
    assert len(shown) == 5
    assert shown[:2] == ["none yet", "stop_and_read_neighbor()"]
    moved = shown[2].split("; ")
    assert moved[0] == "stop_and_read_neighbor()" and moved[1].startswith("read_neighbor_node('")
    assert shown[3] == f"{moved[1]}; stop_and_read_neighbor()"  # capped at the last two


async def test_paths_stop_at_the_step_cap_and_the_answer_is_called_once() -> None:
    model, steps = scripted(), 3
    answer = await arun(reader(max_steps_per_path=steps), document(), QUESTION, model)
    assert len(model.calls("stepper")) == 2 * steps
    assert len(model.calls("answerer")) == 1
    assert answer.usage.calls == len(PARAS) + 2 + 2 * steps + 1  # build + plan, select + steps
    assert "capped" in answer.flags
    prompt = model.calls("answerer")[0].text
    assert prompt.count("Notebook of path ") == 2
    assert answer.text == "Gamma"


async def test_five_paths_give_five_labelled_notebooks() -> None:
    model = scripted()
    model.rules.insert(4, model.rules[2])  # selection offers enough names
    answer = await arun(reader(n_init=5, max_steps_per_path=2), document(), QUESTION, model)
    prompt = model.calls("answerer")[0].text
    assert [f"Notebook of path {i}:" in prompt for i in range(1, 6)] == [True] * 5
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


@pytest.mark.parametrize(("move", "complaint"), [
    ({"action": "read_chunk", "chunk_ids": [99]}, "chunk 99 does not exist"),
    ({"action": "search_more"}, "'search_more' is not available in the facts state"),
])
async def test_an_unknown_id_or_illegal_action_is_reasked_twice_then_ends_the_path(
    move: dict[str, Any], complaint: str
) -> None:
    model = scripted(lambda r: {"notebook": "n", "rationale": "r", **move})
    answer = await arun(reader(n_init=1), document(), QUESTION, model)
    first, *reasks = model.calls("stepper")
    assert len(reasks) == 2 and all(complaint in r.messages[-1].content for r in reasks)
    assert complaint not in first.text
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["ended"] == ["invalid"] and explored.detail["invalid_rate"] == 1.0
    assert "invalid_action" in answer.flags and len(model.calls("answerer")) == 1


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


async def test_a_chunk_queued_but_never_shown_is_not_read_or_cited() -> None:
    """The step cap ends a path right after it moved to a chunk: that chunk was never shown, so
    it is neither in the path's read set nor cited (it once counted as read when it was chosen)."""

    def stepper(request: Request) -> dict[str, Any]:
        base = {"notebook": "x", "rationale": "r"}
        offered = request.text.rsplit("Available now: ", 1)[1]
        if "A chunk of the text" in request.text:
            move = "read_subsequent_chunk" if "subsequent" in offered else "read_previous_chunk"
            return base | {"action": move}
        ids = [int(i) for i in re.findall(r"\[chunk (\d+)\]", request.text)]
        return base | {"action": "read_chunk", "chunk_ids": ids[:1]}

    doc, model = document(), scripted(stepper)
    answer = await arun(reader(n_init=1, max_steps_per_path=2), doc, QUESTION, model)
    shown = [int(i) for r in model.calls("stepper")
             for i in re.findall(r"^\[chunk (\d+)\]$", r.text, re.MULTILINE)]
    assert len(shown) == 1  # step 1 chose a chunk, step 2 showed it and chose a neighbour chunk
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["ended"] == ["capped"]
    assert explored.detail["read"] == [shown]
    asked = model.calls("stepper")[-1]
    assert "read_subsequent_chunk" in asked.text or "read_previous_chunk" in asked.text
    assert [c.chunk_index for c in answer.citations] == shown
    for c in answer.citations:
        assert doc.text[c.start:c.end] == c.text


# -- faithful mode: the paper's call strings ---------------------------------------------------


def test_call_strings_follow_a_strict_grammar() -> None:
    assert parse_call("read_chunk([3, 7])") == {"action": "read_chunk", "chunk_ids": [3, 7]}
    assert parse_call(" read_chunk( [ 3,7 ] ) ") == {"action": "read_chunk", "chunk_ids": [3, 7]}
    assert parse_call("read_chunk([])") == {"action": "read_chunk", "chunk_ids": []}
    assert parse_call("read_neighbor_node('Gamma')") == {"action": "read_neighbor_node",
                                                         "neighbor": "Gamma"}
    assert parse_call("termination()") == {"action": "termination"}
    for bad in ("read_chunk(3)", "termination", "termination().", "`search_more()`",
                "read_chunk(ids=[3])", "fly()", "read_neighbor_node(Gamma)", ""):
        with pytest.raises(ParseError, match="not a function call"):
            parse_call(bad)
    step = parse_step("Notebook: Gamma built\nDelta.\nRationale: r\nAction: search_more()\nok")
    assert step == {"notebook": "Gamma built\nDelta.", "rationale": "r", "action": "search_more"}
    for bad, why in (("Rationale: r\nAction: termination()", "Notebook:"),
                     ("Notebook: n\nRationale: r", "Action:"),
                     ("Notebook: n\nAction: termination()\nRationale: r", "last"),
                     ("Notebook: a\nNotebook: b\nAction: termination()", "more than one")):
        with pytest.raises(ParseError, match=why):
            parse_step(bad)


async def test_call_string_mode_parses_validates_and_reasks_in_the_same_form() -> None:
    def stepper(request: Request) -> str:
        if "A chunk of the text" in request.text:
            return "Notebook: Gamma built Delta.\nRationale: r\nAction: stop()"
        ids = re.findall(r"\[chunk (\d+)\]", request.text)
        return f"Notebook: x\nRationale: r\nAction: read_chunk([{ids[0]}])"

    doc, model = document(), scripted(stepper)
    answer = await arun(reader(n_init=1, call_format="call_string"), doc, QUESTION, model)
    steps = model.calls("stepper")
    assert all(r.schema is None for r in steps)
    assert ("Action: <exactly one call, written like one of: read_chunk([id, ...]), "
            "stop_and_read_neighbor()>") in steps[0].text
    assert "written like one of: search_more(), " in steps[1].text  # the chunk state's calls
    assert "termination()>" in steps[1].text and "read_chunk([id" not in steps[1].text
    # The chunk step's "stop()" is no call: re-asked in the call form (not as JSON) twice, then
    # the path ends.
    assert len(steps) == 1 + 3
    for reask in steps[2:]:
        assert "'stop()' is not a function call" in reask.text
        assert "an Action: line holding one call" in reask.text
        assert "JSON" not in reask.messages[-1].content
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["ended"] == ["invalid"] and explored.detail["invalid"] == 3
    assert [c.chunk_index for c in answer.citations] == explored.detail["read"][0]
    assert len(explored.detail["read"][0]) == 1


async def test_call_string_mode_recovers_from_an_unknown_node() -> None:
    tried: list[str] = []

    def stepper(request: Request) -> str:
        if "Neighbouring nodes" in request.text and not tried:
            tried.append(request.text)
            return 'Notebook: n\nRationale: r\nAction: read_neighbor_node("Atlantis")'
        if "Neighbouring nodes" in request.text:
            return "Notebook: Gamma built Delta\nRationale: r\nAction: termination()"
        return "Notebook: n\nRationale: r\nAction: stop_and_read_neighbor()"

    model = scripted(stepper)
    answer = await arun(reader(n_init=1, call_format="call_string"), document(), QUESTION, model)
    reasks = [r for r in model.calls("stepper") if "no node named 'Atlantis'" in r.text]
    assert len(reasks) == 1
    explored = next(s for s in answer.steps if s.role == "explorer")
    assert explored.detail["ended"] == ["termination"] and explored.detail["invalid"] == 1
    assert "Gamma built Delta" in model.calls("answerer")[0].text
    assert answer.usage.calls == len(PARAS) + 2 + 3 + 1  # build, plan+select, steps, answer


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


def test_near_duplicate_names_merge_alike_across_blocks_without_an_n_by_n_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The earliest surviving match wins, block by block exactly as all at once."""
    import numpy as np

    import longweave.graphs.build as build
    from longweave.graphs.store import Fact, KeyGraph

    rng = np.random.default_rng(7)
    n, dim = 1300, 32
    base = rng.normal(size=(n, dim)).astype(np.float32)
    for j in range(1, n, 3):  # plant near-duplicates of earlier names, some of them chained
        base[j] = base[rng.integers(0, j)] + 0.05 * rng.normal(size=dim)
    vectors = base / np.linalg.norm(base, axis=1, keepdims=True)
    names = [f"name {i}" for i in range(n)]
    facts = [Fact(i, f"{names[i]} is here.", 0, (names[i],)) for i in range(n)]
    graph = KeyGraph.from_facts("doc", [(0, 10)], facts, {})
    assert graph.names == names

    def reference() -> list[str]:  # the plain definition, all pairs at once
        sims, gone, kept = vectors @ vectors.T, set(), []
        for j in range(n):
            if any(i not in gone and sims[i, j] >= 0.9 for i in range(j)):
                gone.add(j)
            else:
                kept.append(names[j])
        return kept

    monkeypatch.setattr(build, "_MERGE_BLOCK", 128)  # ten blocks
    merged, kept_vectors = build.merge_near_duplicates(graph, vectors, 0.9)
    assert merged.names == reference() and len(merged.names) < n
    assert np.array_equal(kept_vectors, vectors[[names.index(m) for m in merged.names]])


@pytest.mark.parametrize(("name", "key"), [
    ("  Mara   Quill's ", "mara quill s"),
    ("Straße", "strasse"),
    ("Cafe\u0301", "café"),  # a decomposed accent composes
    ("İstanbul", "istanbul"),  # casefold's i + U+0307 loses its dot
    ("हिन्दी भाषा", "हिन्दी भाषा"),  # vowel signs and the virama stay in their words
    ("สวัสดี ครับ", "สวัสดี ครับ"),  # Thai vowel and tone marks likewise
    ("a_b--c", "a b c"),
])
def test_key_normalization_keeps_combining_marks_in_their_words(name: str, key: str) -> None:
    from longweave.graphs.store import normalize_key

    assert normalize_key(name) == key


def test_a_facts_step_without_read_chunk_does_not_ask_to_read_chunks() -> None:
    """When every chunk of the node's facts is read or queued, read_chunk is not offered, and
    the prompt must not tell the model to use it."""
    from longweave.agents.graph_reader_prompts import step_messages

    def text(legal: list[str]) -> str:
        messages = step_messages("facts", "Who?", "Find who.", [], "", "[chunk 0] Mara kept it.",
                                 legal)
        return messages[-1].content

    offered = text(["read_chunk", "stop_and_read_neighbor"])
    assert "read its chunks (read_chunk" in offered
    spent = text(["stop_and_read_neighbor"])
    assert "read_chunk" not in spent and "read or queued already" in spent
    assert spent.endswith("Available now: stop_and_read_neighbor.")
