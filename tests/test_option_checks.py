"""Settings and options a new user gets wrong are refused with the valid form: InfiniRetri's
layer, PRISM's memory schema, `show --highlight`; a served API model's failures are a gateway's
(502/504); `--help` labels values as click does (TEXT, PATH, KEY=VALUE) and flags not at all."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from longweave.agents.infini_retri import InfiniRetri
from longweave.documents import Document
from longweave.errors import ConfigError, ModelError
from longweave.llm import Message
from longweave.memory.structured_memory import from_json_schema, load_schema_file
from longweave.runner import arun
from longweave.testing import Request, ScriptedModel
from tests.cli_run import run_cli

# -- InfiniRetri: `layer` against the scorer's layer count ---------------------------------------


class LayeredScorer:
    """An AttentionScorer of `layers` decoder layers that records what the strategy asked of it."""

    def __init__(self, layers: int | None = 3) -> None:
        self.name = "layered-scorer"
        self.context_window = 8192
        self.layers = layers
        self.encoded = 0  # encode calls: the document is split with them
        self.forwards: list[int] = []  # the layer of each scoring forward

    def render(self, messages: Sequence[Message]) -> str:
        return "".join(f"<{m.role}> {m.content}\n" for m in messages) + "<assistant>"

    def encode(self, text: str) -> list[int]:
        self.encoded += 1
        return [len(word) for word in text.split()]

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        self.forwards.append(layer)
        rows = np.zeros((len(ids) - start, len(ids)), dtype=np.float32)
        rows[:, :] = 1.0 / len(ids)
        return rows


DOC = Document.from_text(" ".join(f"Sentence {i} says thing {i}." for i in range(40)))


@pytest.mark.parametrize("layer", [-3, -1, 0, 2])
def test_a_layer_of_the_scorer_is_accepted(layer: int) -> None:
    assert InfiniRetri(scorer=LayeredScorer(3), layer=layer).layer == layer


@pytest.mark.parametrize("layer", [-100, -4, 3, 30])
def test_a_layer_the_scorer_lacks_is_refused_at_construction(layer: int) -> None:
    with pytest.raises(ConfigError) as info:
        InfiniRetri(scorer=LayeredScorer(3), layer=layer)
    assert f"layer={layer} is out of range" in info.value.message
    assert "layered-scorer has 3 decoder layers" in info.value.message
    assert "-3..2" in info.value.hint


async def test_the_bundled_scorer_checks_the_layer_before_the_document_is_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scorer=None resolves the scorer at run start (hybrid mode): checked there, before work."""
    import longweave.agents.infini_retri as module

    scorer = LayeredScorer(30)
    monkeypatch.setattr(module, "_local_scorer", lambda spec: scorer)
    model = ScriptedModel(name="api-like")
    with pytest.raises(ConfigError, match=r"layer=-100 is out of range") as info:
        await arun(InfiniRetri(layer=-100), DOC, "What does sentence 3 say?", model)
    assert "-30..29" in info.value.hint
    assert scorer.encoded == 0 and scorer.forwards == [] and model.requests == []


async def test_the_estimate_refuses_the_layer_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import longweave.agents.infini_retri as module
    from longweave.estimate import aestimate

    scorer = LayeredScorer(30)
    monkeypatch.setattr(module, "_local_scorer", lambda spec: scorer)
    with pytest.raises(ConfigError, match=r"layer=-100 is out of range"):
        await aestimate(DOC, InfiniRetri(layer=-100), ScriptedModel(), "What?")
    assert scorer.encoded == 0
    estimate = await aestimate(DOC, InfiniRetri(layer=-30, window=64), ScriptedModel(), "What?")
    assert estimate.calls > 0 and scorer.forwards == []  # estimated, never scored


async def test_a_scorer_that_does_not_know_its_layers_is_not_checked_early() -> None:
    scorer = LayeredScorer(None)
    model = ScriptedModel()
    model.on("reader", reply="thing 3")
    answer = await arun(InfiniRetri(scorer=scorer, layer=-100, window=64), DOC, "What?", model)
    assert answer.text == "thing 3" and set(scorer.forwards) == {-100}


def test_question_attention_refuses_a_layer_before_the_forward() -> None:
    pytest.importorskip("torch")
    from longweave.local_models.attention import eager_question_attention, question_attention

    # Layers without attention modules: any step past the check would fail otherwise.
    decoder = SimpleNamespace(layers=[object()] * 3)
    model = SimpleNamespace(model=decoder, config=SimpleNamespace(name_or_path="tiny-llama"))
    for attend in (question_attention, eager_question_attention):
        with pytest.raises(ConfigError, match="tiny-llama has 3 decoder layers") as info:
            attend(model, [5, 6, 7], 1, layer=-100)
        assert "-3..2" in info.value.hint


def local_llm(source: Any, cache_root: Path) -> SimpleNamespace:
    def weights() -> None:
        raise AssertionError("the weights were loaded")

    return SimpleNamespace(name=source.name, context_window=2048, source=source,
                           cache_root=cache_root, loaded=False, hf_model=weights,
                           _weights=weights)


def test_a_local_scorer_reads_its_layer_count_from_the_config(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from longweave.local_models.attention import LocalAttentionScorer
    from longweave.local_models.loader import ModelSource

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "n_layer": 5, "n_positions": 2048}))  # n_layer: GPT-2's name
    scorer = LocalAttentionScorer(local_llm(ModelSource("tiny", str(folder)), tmp_path))  # type: ignore[arg-type]
    assert scorer.layers == 5
    with pytest.raises(ConfigError, match="-5..4"):
        InfiniRetri(scorer=scorer, layer=5)


def gguf_header(*entries: tuple[str, int, bytes]) -> bytes:
    """A GGUF v3 header of no tensors and `entries` (key, value type, value bytes)."""
    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries))
    return head + b"".join(text(k) + struct.pack("<I", kind) + v for k, kind, v in entries)


def test_a_gguf_scorer_reads_its_block_count_from_the_header(tmp_path: Path) -> None:
    from longweave.local_models.attention import LocalAttentionScorer
    from longweave.local_models.loader import ModelSource

    def words(*items: str) -> bytes:  # an array of strings, which the reader skips
        return struct.pack("<IQ", 8, len(items)) + b"".join(
            struct.pack("<Q", len(w)) + w.encode() for w in items)

    def layers(header: bytes) -> int | None:
        (tmp_path / "m.gguf").write_bytes(header + b"\0" * 64)  # tensor entries would follow
        source = ModelSource("tiny-gguf", str(tmp_path), "m.gguf", 2048)
        return LocalAttentionScorer(local_llm(source, tmp_path)).layers  # type: ignore[arg-type]

    architecture = ("general.architecture", 8, struct.pack("<Q", 5) + b"llama")
    assert layers(gguf_header(
        architecture, ("general.tags", 9, words("a", "bb")), ("general.ratio", 6, b"\0" * 4),
        ("qwen2.block_count", 4, struct.pack("<I", 9)), ("llama.block_count", 4,
                                                          struct.pack("<I", 7)))) == 7
    assert layers(gguf_header(("llama.block_count", 10, struct.pack("<Q", 4)),
                              architecture)) == 4  # in either order
    assert layers(gguf_header(architecture)) is None
    assert layers(b"GGUF" + b"\xff" * 20) is None  # damaged: loading it will say so
    assert layers(b"PK\x03\x04") is None


def test_the_bundled_scorer_knows_its_30_layers_without_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from longweave.local_models import LocalLLM
    from longweave.local_models.attention import LocalAttentionScorer
    from longweave.local_models.loader import BundledModelMissing, bundled_source

    try:
        bundled_source()
    except BundledModelMissing:
        pytest.skip("the bundled model is not installed")

    def loaded(self: object) -> None:
        raise AssertionError("reading the layer count loaded the model")

    monkeypatch.setattr(LocalLLM, "_hf", loaded)
    monkeypatch.setattr(LocalLLM, "_weights", loaded)
    scorer = LocalAttentionScorer(LocalLLM.bundled())
    assert scorer.layers == 30  # SmolLM2-135M
    with pytest.raises(ConfigError, match="-30..29"):
        InfiniRetri(scorer="local", layer=30)


# -- PRISM: a memory schema that is not one says what one looks like -------------------------------


@pytest.mark.parametrize("schema", [
    {"type": "object"},
    {"type": "object", "properties": {"notes": {"type": "object"}}},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                      "n": {"type": "null"}}},
    {"type": "object", "properties": {"a": "string"}},
    {"type": "array", "items": {"type": "string"}},
])
def test_an_unusable_schema_says_what_a_memory_schema_is(schema: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        from_json_schema(schema)
    assert "memory schema" in info.value.message
    assert '"properties"' in info.value.hint and "docs/strategies/prism.md" in info.value.hint


@pytest.mark.parametrize(("text", "problem"), [
    ("evidence: list[str]", "cannot read the memory schema"),
    ('["evidence"]', "is not a JSON object"),
])
def test_a_schema_file_that_is_no_json_object_says_what_to_give(
    tmp_path: Path, text: str, problem: str,
) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_schema_file(path)
    assert problem in info.value.message and str(path) in info.value.message
    assert "docs/strategies/prism.md" in info.value.hint


def test_the_command_line_shows_the_schema_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    scripted_cli: Callable[..., ScriptedModel],
) -> None:
    model = scripted_cli(columns=300)
    monkeypatch.chdir(tmp_path)
    Path("doc.txt").write_text("Mara Quill kept the light from 1871.\n")
    Path("s.json").write_text('{"type": "object"}')
    code = run_cli(monkeypatch, "ask", "doc.txt", "Who kept the light?", "--strategy", "prism",
                   "--set", "memory_schema=s.json")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == []
    assert "error: an object without properties in the memory schema" in err
    assert "see memory_schema in docs/strategies/prism.md" in err and "unexpected" not in err


# -- show: --highlight names a node the structure has; counts in the right number ----------------

TREE_SET = {"window": 1024, "max_children": 3, "segment_tokens": 80, "nav_max_new": 48,
            "answer_max_new": 32, "reasoning_chars": 100, "margin": 16}


def tree_settings() -> list[str]:
    return [a for k, v in TREE_SET.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_show_refuses_an_unknown_highlight_once_the_tree_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    scripted_cli: Callable[..., ScriptedModel],
) -> None:
    """Refused before the page is drawn, after the build: the tree is cached, so the rerun
    with a node it has calls no model."""
    model = scripted_cli(ScriptedModel(context_window=1024), columns=300)
    model.on("summarizer", reply="covers some sentinels")
    monkeypatch.chdir(tmp_path)
    Path("four.txt").write_text("\n\n".join(
        f"SENTINEL-{i} " + " ".join(f"word{i}x{j}" for j in range(60)) + "." for i in range(4)))
    args = ("show", "four.txt", "--tree", *tree_settings(), "-o", "t.html")
    code = run_cli(monkeypatch, *args, "--build", "--highlight", "2", "--highlight", "nonode",
                   "--highlight", "7")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "error: --highlight nonode, 7: no such node in this tree" in err
    assert "give a node id from 0 to 6 (the root is 6)" in err
    assert not Path("t.html").exists()
    built = len(model.calls("summarizer"))
    assert built > 0  # the build ran, and its tree was cached
    assert run_cli(monkeypatch, *args, "--highlight", "6", "--highlight", "2") == 0
    assert "wrote t.html (a tree of 7 nodes, depth 2)" in " ".join(capsys.readouterr().err.split())
    assert len(model.requests) == built
    page = Path("t.html").read_text()
    assert re.search(r'<g class="node hl[^"]*" data-id="2"', page)
    assert re.search(r'<g class="node" data-id="3"', page)


def test_a_tree_of_one_node_is_said_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    scripted_cli: Callable[..., ScriptedModel],
) -> None:
    model = scripted_cli(ScriptedModel(context_window=1024), columns=300)
    monkeypatch.chdir(tmp_path)
    Path("one.txt").write_text("Mara Quill kept the Tarn light from 1871 to 1920.\n")
    code = run_cli(monkeypatch, "show", "one.txt", "--tree", *tree_settings(), "--build",
                   "-o", "t.html", "--highlight", "0")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 0 and "wrote t.html (a tree of 1 node, depth 0)" in err
    assert model.requests == []  # a lone leaf is its own text: nothing to summarize


def test_an_unknown_key_element_is_refused_with_the_closest_ones() -> None:
    from longweave.cli.show import _describe, _marks
    from longweave.graphs.store import Fact, KeyGraph

    facts = [Fact(0, "Mara Quill kept the light.", 0, ("mara quill", "light"))]
    graph = KeyGraph.from_facts("d", [(0, 10)], facts, {})
    assert _marks(["Mara  Quill", "LIGHT"], graph) == ["mara quill", "light"]
    with pytest.raises(ConfigError, match="--highlight Mara Quil: no such key element") as info:
        _marks(["light", "Mara Quil"], graph)
    assert info.value.hint.startswith("did you mean mara quill?")
    assert _describe(graph) == "a graph of 2 key elements, 1 edge, 1 fact"


# -- serve: an API model that fails or is not there is a bad gateway ------------------------------


def raised_while(handling: BaseException, error: ModelError) -> ModelError:
    """`error` as a backend raises it when its retries give up: `from None`, while handling."""
    try:
        try:
            raise handling
        except BaseException:
            raise error from None
    except ModelError as exc:
        return exc


def failing(error: BaseException) -> ScriptedModel:
    model = ScriptedModel(name="upstream")

    def fail(request: Request) -> str:
        raise error

    model.on("", reply=fail)
    return model


def post(model: Any) -> Any:
    from starlette.testclient import TestClient

    from longweave.local_models.server import build_app

    with TestClient(build_app(model)) as client:
        return client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})


@pytest.mark.parametrize(("error", "status", "code"), [
    (ModelError("openai:m: cannot connect to http://x/v1: refused", provider="openai"), 502,
     "upstream_error"),
    (ModelError("openai:m: HTTP 503 from http://x/v1: busy", provider="openai", status=503), 502,
     "upstream_error"),
    (raised_while(TimeoutError(), ModelError("openai:m: no reply within 1 s",
                                             provider="openai")), 504, "upstream_timeout"),
    (ModelError("openai:m: HTTP 504 from http://x/v1: slow", provider="openai", status=504), 504,
     "upstream_timeout"),
    (ModelError("local: generation failed: RuntimeError: boom", provider="local"), 500,
     "ModelError"),
    (RuntimeError("a bug"), 500, None),
])
def test_upstream_failures_are_502_and_timeouts_504(error: Exception, status: int,
                                                    code: str | None) -> None:
    model = failing(error)
    response = post(model)
    assert len(model.requests) == 1
    assert response.status_code == status
    body = response.json()["error"]
    assert (body["type"], body["code"]) == ("server_error", code)
    assert str(error) in body["message"]


def test_an_unreachable_api_model_is_a_502(monkeypatch: pytest.MonkeyPatch) -> None:
    from longweave.openai_backend import OpenAILLM

    llm = OpenAILLM("m", base_url="http://127.0.0.1:1/v1", api_key="x", max_retries=0)
    response = post(llm)
    assert response.status_code == 502
    assert "cannot connect to http://127.0.0.1:1/v1" in response.json()["error"]["message"]


def test_an_api_model_that_does_not_answer_in_time_is_a_504() -> None:
    from longweave.openai_backend import OpenAILLM
    from tests.faultserver import FaultServer, hang

    with FaultServer(hang(2.0)) as server:
        llm = OpenAILLM("m", base_url=server.base_url, api_key="x", max_retries=0, timeout=0.3,
                        stream=False)
        response = post(llm)
    assert response.status_code == 504
    assert "no reply within 0.3 s" in response.json()["error"]["message"]


# -- --help: click's labels, nothing for a flag, PATH QUESTION in the usage line ------------------


@pytest.mark.parametrize(("command", "usage"), [
    ("ask", "Usage: longweave ask [OPTIONS] PATH QUESTION"),
    ("batch", "Usage: longweave batch [OPTIONS] FOLDER"),
    ("eval", "Usage: longweave eval [OPTIONS] DATASET"),
    ("compare", "Usage: longweave compare [OPTIONS] PATH QUESTION"),
    ("index", "Usage: longweave index [OPTIONS] PATHS..."),
    ("strategies", "Usage: longweave strategies [OPTIONS] [NAME]"),
])
def test_help_labels_values_not_python_types(command: str, usage: str) -> None:
    from typer.testing import CliRunner

    from longweave.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    text = result.output
    assert usage in text
    assert not re.search(r"<(bool|str|int|float|path|list\[[^>]*)>", text)
    assert not re.search(r"\{\w+\}", text)
    rows = {m.group(1): m.group(2).strip() for m in
            re.finditer(r"│\s*(--[\w-]+)(?:\s+-\w(?:,-\w)?)?\s+(\S*(?: \[[^\]]*\])?)\s", text)}
    assert rows["--help"] in ("", "Show")  # a flag: its help follows straight away
    if command in ("ask", "batch", "eval", "compare"):
        assert rows["--set"] == "KEY=VALUE" and rows["--model"] == "TEXT"
        assert rows["--trace"] == "PATH" and rows["--no-cache"] == "Bypass"


def test_the_root_help_shows_no_type_for_its_flags() -> None:
    from typer.testing import CliRunner

    from longweave.cli import app

    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    assert "Usage: longweave [OPTIONS] COMMAND [ARGS]..." in text
    assert re.search(r"--version\s+Print the version", text) and "<bool>" not in text
