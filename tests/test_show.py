"""`longweave show` and `longweave.visualize`: the graph and the tree built with the strict
scripted model, rendered as self-contained pages (and SVG/PNG), with an answer's path marked."""

from __future__ import annotations

import html
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import longweave.retrieval.index as index_module
from longweave.agents.graph_reader import GraphReader
from longweave.agents.mem_walker import MemWalker
from longweave.answer import Answer, Step
from longweave.cache import ArtifactCache
from longweave.documents import Document
from longweave.errors import ConfigError, MissingDependency
from longweave.graphs.store import Fact, KeyGraph
from longweave.runner import arun
from longweave.testing import HashEmbedder, Request, ScriptedModel, quoted_after
from longweave.visualize import (
    NotBuilt,
    Trail,
    afind_structure,
    render_graph,
    render_tree,
    trail,
)
from tests.cli_run import run_cli

# -- the graph: one paragraph per chunk (chunk_tokens=6 with the scripted word tokenizer) --------

PARAS = ["Alpha met Beta at Harbour.", "Beta sailed with Gamma.", "Gamma built Delta.",
         "Delta lit Lamp.", "Lamp warned Ships."]
GRAPH_SET = {"chunk_tokens": 6, "n_init": 1, "merge_threshold": None, "margin": 16}


def graph_model() -> ScriptedModel:
    """Extracts one fact per sentence (keys: its capitalized words); the walk starts at delta,
    reads its chunks, moves to the first neighbour (gamma), reads its unread chunk, stops."""

    def extract(request: Request) -> dict[str, Any]:
        passage = quoted_after(request.text, "Passage:")
        return {"atomic_facts": [
            {"fact": s.strip() + ".", "key_elements": re.findall(r"\b[A-Z]\w+", s)}
            for s in passage.split(".") if s.strip()]}

    def step(request: Request) -> dict[str, Any]:
        base = {"notebook": "Gamma built Delta.", "rationale": "read on"}
        if "Neighbouring nodes" in request.text:
            first = re.findall(r"^- (.+)$", request.text, re.MULTILINE)[0]
            return base | {"action": "read_neighbor_node", "neighbor": first}
        if "A chunk of the text" in request.text:
            return base | {"action": "termination" if "Beta" in request.text else "search_more"}
        return base | {"action": "read_chunk", "chunk_ids": []}

    model = ScriptedModel()
    model.on("extractor", reply=extract)
    model.on("planner", contains="write a short plan", reply="1. Find who built Delta.")
    model.on("planner", contains="Choose up to", reply={"nodes": [{"key": "delta", "score": 99}]})
    model.on("stepper", reply=step)
    model.on("answerer", reply={"analysis": "the notebook says so", "answer": "Gamma"})
    return model


def reader() -> GraphReader:
    return GraphReader(**GRAPH_SET).with_embedder(HashEmbedder(dim=64))


# -- the tree: 9 sentinel paragraphs, one per leaf; K=3 gives 9 -> 3 -> 1 (13 nodes) ------------

TREE_SET = {"window": 1024, "max_children": 3, "segment_tokens": 80, "nav_max_new": 48,
            "answer_max_new": 32, "reasoning_chars": 100, "margin": 16}
TAG = re.compile(r"SENTINEL-(\d+)|\bS(\d+)\b")


def tags(text: str) -> list[int]:
    return sorted({int(a or b) for a, b in TAG.findall(text)})


def tree_text() -> str:
    return "\n\n".join(f"SENTINEL-{i} " + " ".join(f"word{i}x{j}" for j in range(60)) + "."
                       for i in range(9))


def tree_model(target: int = 4) -> ScriptedModel:
    """Summaries name the sentinels they cover; the walk goes down to the leaf with `target`."""

    def navigate(request: Request) -> dict[str, Any]:
        shown = [tags(t) for t in re.findall(r"^\[\d+\] (.*)$", request.text, re.MULTILINE)]
        for n, covered in enumerate(shown, 1):
            if target in covered:
                return {"reasoning": "it is there", "action": "goto", "child": n}
        return {"reasoning": "not here", "action": "back"}

    def read(request: Request) -> dict[str, Any]:
        passage = quoted_after(request.text, "passage of the text:")
        if target in tags(passage):
            return {"reasoning": "here", "action": "answer", "answer": f"S{target}"}
        return {"reasoning": "not here", "action": "back"}

    model = ScriptedModel(context_window=1024)
    model.on("summarizer", reply=lambda r: "covers " + " ".join(f"S{i}" for i in tags(r.text)))
    model.on("navigator", reply=navigate)
    model.on("reader", contains="You reached this passage", reply=read)
    return model


async def built_graph(cache: ArtifactCache) -> tuple[KeyGraph, Answer]:
    doc = Document.from_text("\n\n".join(PARAS))
    answer = await arun(reader(), doc, "Who built Delta?", graph_model(), artifacts=cache)
    graph = await afind_structure(doc, "graph", graph_model(), cache, strategy=reader())
    assert isinstance(graph, KeyGraph)
    return graph, answer


async def built_tree(cache: ArtifactCache) -> tuple[Any, Answer, Document]:
    doc, walker = Document.from_text(tree_text()), MemWalker(**TREE_SET)
    answer = await arun(walker, doc, "Where is S4?", tree_model(), artifacts=cache)
    tree = await afind_structure(doc, "tree", tree_model(), cache, strategy=walker)
    return tree, answer, doc


def node_class(page: str, attr: str, value: str) -> str:
    found = re.search(rf'<g class="([^"]*)" data-id="\d+" {attr}="{re.escape(value)}"', page)
    if found is None:
        found = re.search(rf'<g class="([^"]*)" data-id="{re.escape(value)}"', page)
    assert found is not None, f"no node {value}"
    return found.group(1)


def page_data(page: str) -> Any:
    raw = re.search(r'<script type="application/json" id="lw-data">(.*?)</script>', page, re.S)
    assert raw is not None
    return json.loads(raw.group(1))


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
    assert "@import" not in page and "url(" not in page


# -- trails from answers -----------------------------------------------------------------------


async def test_graph_trail_follows_the_paths_steps(tmp_path: Path) -> None:
    _, answer = await built_graph(ArtifactCache(tmp_path))
    path = trail(answer)
    assert path.starts == ("delta",)
    assert path.nodes == ("delta", "gamma")
    assert path.walked("gamma", "delta") and not path.walked("delta", "lamp")
    assert path.chunks == (2, 3, 1)  # delta's chunks in order, then gamma's unread one
    assert path.ends == ("gamma",)


async def test_tree_trail_goes_root_to_the_answering_leaf(tmp_path: Path) -> None:
    tree, answer, _ = await built_tree(ArtifactCache(tmp_path))
    path = trail(answer)
    parent = next(n.id for n in tree.nodes if 4 in n.children)
    assert path.nodes == (tree.root, parent, 4)
    assert path.starts == (tree.root,) and path.ends == (4,) and path.chunks == (4,)
    assert path.walked(tree.root, parent) and path.walked(parent, 4)


def test_only_graph_and_tree_strategies_have_a_trail() -> None:
    with pytest.raises(ConfigError, match="graph-reader"):
        trail(Answer(text="x", strategy="rag", model="m"))
    fallback = Answer(text="x", strategy="mem-walker", model="m", steps=[
        Step(role="navigator", detail={"node": 5, "action": "back"}),
        Step(role="fallback", detail={"reason": "capped", "last_leaf": 2})])
    assert trail(fallback).ends == (2,) and trail(fallback).starts == (5,)


# -- the pages ---------------------------------------------------------------------------------


async def test_graph_page_names_every_node_and_fact_and_marks_the_path(tmp_path: Path) -> None:
    graph, answer = await built_graph(ArtifactCache(tmp_path / "cache"))
    page = render_graph(graph, highlight=answer)
    assert_self_contained(page)
    for name in graph.graph.nodes:
        assert f'data-name="{html.escape(name)}"' in page
        assert f">{html.escape(name)}</text>" in page  # the label, shown or on hover
    assert "hl" in node_class(page, "data-name", "delta").split()
    assert {"hl", "start"} <= set(node_class(page, "data-name", "delta").split())
    assert {"hl", "end"} <= set(node_class(page, "data-name", "gamma").split())
    for other in ("alpha", "beta", "harbour", "lamp", "ships"):
        assert "hl" not in node_class(page, "data-name", other).split()
    assert len(re.findall(r'<line class="edge hl"', page)) == 1  # delta - gamma
    data = page_data(page)
    assert {n["name"] for n in data["nodes"]} == set(graph.graph.nodes)
    delta = next(n for n in data["nodes"] if n["name"] == "delta")
    assert sorted(data["facts"][i] for i in delta["facts"]) == [
        [2, "Gamma built Delta."], [3, "Delta lit Lamp."]]
    assert render_graph(graph, highlight=answer) == page  # the layout is deterministic


async def test_tree_page_shows_every_summary_and_marks_the_path(tmp_path: Path) -> None:
    tree, answer, doc = await built_tree(ArtifactCache(tmp_path))
    page = render_tree(tree, highlight=answer, text=doc.text)
    assert_self_contained(page)
    for node in tree.nodes:
        assert f'<p class="sum">{html.escape(node.summary)}</p>' in page
        assert f'<details id="t{node.id}"' in page
    assert "SENTINEL-7 word7x0" in page  # a leaf's segment, from the text
    path = trail(answer)
    for node_id in path.nodes:
        assert "hl" in node_class(page, "data-id", str(node_id)).split()
        assert re.search(rf'<details id="t{node_id}" class="[^"]*\bhl\b[^"]*" open>', page)
    assert re.search(r'<details id="t4" class="tnode leaf hl end" open>', page)
    assert "hl" not in node_class(page, "data-id", "7").split()
    assert re.search(r'<details id="t7" class="tnode leaf">', page)  # off the path: closed


def test_page_data_cannot_close_its_script_element() -> None:
    evil = "Mara wrote </script><script>alert(1)</script> & left."
    graph = KeyGraph.from_facts("d", [(0, 10)], [Fact(0, evil, 0, ("mara",))], {})
    page = render_graph(graph)
    assert "<script>alert(1)" not in page
    assert page_data(page)["facts"] == [[0, evil]]


def test_pruning_keeps_the_highlighted_nodes() -> None:
    facts = [Fact(i, f"Hub met N{i}.", 0, ("hub", f"n{i}")) for i in range(30)]
    graph = KeyGraph.from_facts("d", [(0, 10)], facts, {})
    page = render_graph(graph, max_nodes=5, highlight=["n29"])
    names = [n["name"] for n in page_data(page)["nodes"]]
    assert len(names) == 5 and {"hub", "n29"} <= set(names)  # the highlighted node always
    assert "hl" in node_class(page, "data-name", "n29").split()
    assert "showing the 5 with the most facts" in page


async def test_svg_and_png_files_and_a_missing_matplotlib(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tree, answer, _ = await built_tree(ArtifactCache(tmp_path / "cache"))
    render_tree(tree, tmp_path / "tree.svg", highlight=answer)
    svg = (tmp_path / "tree.svg").read_text()
    assert svg.startswith("<?xml") and 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert "<script" not in svg and "var(--" not in svg  # plain CSS for every SVG viewer
    assert re.search(r'<g class="node hl end" data-id="4"', svg)
    render_tree(tree, tmp_path / "tree.png", highlight=answer)
    assert (tmp_path / "tree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="unknown output format"):
        render_tree(tree, tmp_path / "tree.gif")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependency, match="matplotlib") as info:
        render_tree(tree, tmp_path / "again.png")
    assert "longweave[eval]" in info.value.hint and not (tmp_path / "again.png").exists()


def test_trail_of_names() -> None:
    path = Trail.of(["b", "a", "b"])
    assert path.nodes == ("b", "a") and "a" in path and not path.walked("a", "b")


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scripted_cli: Callable[..., ScriptedModel]
) -> dict[str, ScriptedModel]:
    """Scripted models behind every model string (one per structure), a hash embedder, and a
    private cache directory."""
    models = {"graph": graph_model(), "tree": tree_model()}
    scripted_cli(models["graph"], columns=300)  # commands in messages stay on one line
    monkeypatch.setattr(index_module, "resolve_embedder",
                        lambda spec, cache_dir=None: HashEmbedder(dim=64))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "story.md").write_text("\n\n".join(PARAS) + "\n")
    (tmp_path / "sentinels.txt").write_text(tree_text())

    def use(kind: str) -> ScriptedModel:
        return scripted_cli(models[kind])

    models["use"] = use  # type: ignore[assignment]
    return models


def settings(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_cli_says_how_to_build_then_builds_and_finds_it_again(cli, monkeypatch, capsys) -> None:
    model = cli["graph"]
    code = run_cli(monkeypatch, "show", "story.md", "--graph", *settings(GRAPH_SET))
    err = capsys.readouterr().err
    assert code == 1 and model.requests == []
    assert "no graph-reader graph is built for story.md" in err
    assert "longweave show story.md --graph --build --set chunk_tokens=6" in err
    assert "longweave ask story.md QUESTION --strategy graph-reader --set" in err
    code = run_cli(monkeypatch, "show", "story.md", "--graph", "--build", "-o", "g.html",
                   *settings(GRAPH_SET))
    err = capsys.readouterr().err
    assert code == 0 and "wrote g.html (a graph of 7 key elements" in err
    assert len(model.calls("extractor")) == len(PARAS)
    assert model.calls("planner") == [] and model.calls("stepper") == []  # the build alone
    page = Path("g.html").read_text()
    assert all(f'data-name="{n}"' in page for n in ("alpha", "delta", "ships"))
    sent = len(model.requests)
    assert run_cli(monkeypatch, "show", "story.md", "--graph", *settings(GRAPH_SET)) == 0
    assert len(model.requests) == sent and Path("story.graph.html").exists()


def test_cli_highlights_the_path_of_an_ask_answer(cli, monkeypatch, capsys) -> None:
    model = cli["graph"]
    code = run_cli(monkeypatch, "ask", "story.md", "Who built Delta?", "--strategy",
                   "graph-reader", "--json", *settings(GRAPH_SET))
    assert code == 0
    Path("answer.json").write_text(capsys.readouterr().out)
    built = len(model.calls("extractor"))
    code = run_cli(monkeypatch, "show", "story.md", "--answer", "answer.json", "-o", "p.html",
                   *settings(GRAPH_SET))  # the kind comes from the answer's strategy
    assert code == 0 and len(model.calls("extractor")) == built  # ask's graph, found
    page = Path("p.html").read_text()
    assert {"hl", "start"} <= set(node_class(page, "data-name", "delta").split())
    code = run_cli(monkeypatch, "show", "story.md", "--tree", "--answer", "answer.json")
    assert code == 1 and "graph-reader answer" in capsys.readouterr().err
    # the answer's path or the nodes named: one of them, not one silently dropped
    code = run_cli(monkeypatch, "show", "story.md", "--answer", "answer.json", "--highlight",
                   "delta", "-o", "q.html", *settings(GRAPH_SET))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "error: --answer and --highlight each choose" in err
    assert not Path("q.html").exists()


def test_cli_answer_files_that_are_no_answer_are_named(cli, monkeypatch, capsys) -> None:
    Path("empty.json").write_text("")
    Path("other.json").write_text('{"text": "not all of an answer"}')
    for name, problem in [("missing.json", "cannot be read"), ("empty.json", "is empty"),
                          ("other.json", "is not an Answer as `ask --json` writes it")]:
        assert run_cli(monkeypatch, "show", "story.md", "--graph", "--answer", name) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert f"error: {name}: {problem}" in err and "unexpected" not in err
    assert cli["graph"].requests == []


def test_cli_tree_as_svg_and_png(cli, monkeypatch, capsys) -> None:
    model = cli["use"]("tree")
    args = ("show", "sentinels.txt", "--tree", *settings(TREE_SET))
    assert run_cli(monkeypatch, *args, "--build", "-o", "t.svg", "--highlight", "4") == 0
    assert "a tree of 13 nodes, depth 2" in capsys.readouterr().err
    summaries = len(model.calls("summarizer"))
    assert summaries == 13 and model.calls("navigator") == []
    assert re.search(r'<g class="node hl" data-id="4"', Path("t.svg").read_text())
    assert run_cli(monkeypatch, *args, "-o", "t.png") == 0
    assert Path("t.png").read_bytes()[:4] == b"\x89PNG" and len(model.calls()) == summaries


def test_cli_needs_graph_or_tree(cli, monkeypatch, capsys) -> None:
    assert run_cli(monkeypatch, "show", "story.md") == 1
    assert "--graph (graph-reader) or --tree (mem-walker)" in capsys.readouterr().err
    assert run_cli(monkeypatch, "show", "story.md", "--graph", "--tree") == 1


async def test_library_not_built_error_carries_the_commands(tmp_path: Path) -> None:
    doc = Document.from_text("\n\n".join(PARAS))
    with pytest.raises(NotBuilt) as info:
        await afind_structure(doc, "graph", graph_model(), ArtifactCache(tmp_path),
                              strategy=reader())
    assert info.value.kind == "graph" and "--build" in info.value.command
    assert "--strategy graph-reader" in info.value.ask


async def test_render_answer_loads_the_walked_structure_without_model_calls(
    tmp_path: Path,
) -> None:
    from longweave.visualize import arender_answer

    cache = ArtifactCache(tmp_path / "cache")
    tree, answer, doc = await built_tree(cache)
    quiet = ScriptedModel(context_window=1024)  # no rules: any call would raise
    page = await arender_answer(answer, doc, quiet, cache, tmp_path / "trace.html",
                                strategy=MemWalker(**TREE_SET))
    assert quiet.requests == [] and (tmp_path / "trace.html").read_text() == page
    assert re.search(r'<details id="t4" class="tnode leaf hl end" open>', page)
    with pytest.raises(ConfigError, match="walks no graph or tree"):
        await arender_answer(answer.model_copy(update={"strategy": "rag"}), doc, quiet, cache)
