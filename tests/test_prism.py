"""PRISM against the strict scripted model: STRATEGIES.md §5.6 acceptance checks, and end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from longweave.agents import prism_prompts
from longweave.agents.base import RunContext
from longweave.agents.prism import Prism
from longweave.agents.prism_compact import COMPLAINT_CHARS
from longweave.agents.prism_prompts import END_OF_MEMORY, QAMemory, final_schema, revision_schema
from longweave.cache import ArtifactCache
from longweave.chunking import Chunker
from longweave.documents import Document, open_document
from longweave.memory.structured_memory import from_model
from longweave.runner import arun
from longweave.structured import json_instructions, reask_message
from longweave.testing import Request, ScriptedModel, quoted_blocks

SENTINEL = re.compile(r"SENTINEL-(\d+)")
PIECE = re.compile(r"Piece (\d+) of (\d+)")
SMALL = {"chunk_tokens": 100, "step_max_new": 128, "answer_max_new": 64, "margin": 16}


def sentinel_document(n: int, words: int = 60) -> Document:
    paras = [f"SENTINEL-{i} " + " ".join(f"w{i}x{j}" for j in range(words)) + "." for i in range(n)]
    return Document.from_text("\n\n".join(paras))


def piece(request: Request) -> int:
    return int(PIECE.search(request.text).group(1)) - 1


def chunk_text(request: Request) -> str:
    return quoted_blocks(request.text)[-1]  # the piece: the step prompt quotes nothing else


def fact_step(request: Request) -> dict[str, Any]:
    """One valid fact per piece (its sentinel) and one revision outside the schema."""
    i = request.text.count('"path":["evidence",')  # the next free index of the log
    seen = SENTINEL.findall(chunk_text(request))
    return {"revisions": [
        {"op": "add", "path": ["evidence", i], "value": f"saw {','.join(seen)}"},
        {"op": "add", "path": ["nowhere"], "value": "x"},
    ]}


def scripted(final: Any = None, window: int = 2400) -> ScriptedModel:
    model = ScriptedModel(context_window=window)
    model.on("stepper", reply=fact_step)
    model.on("manager", reply=final or {"answer": "the answer", "used_paths": [["evidence", 1]]})
    return model


async def test_n_steps_in_order_then_one_final_from_memory_only() -> None:
    model, doc = scripted(), sentinel_document(8)
    answer = await arun(Prism(**SMALL), doc, "What is hidden?", model)
    steps = model.calls("stepper")
    n = len(steps)
    assert n >= 3
    assert [r.role for r in model.requests] == ["stepper"] * n + ["manager"]
    assert [piece(r) for r in steps] == list(range(n))
    seen = [int(s) for r in steps for s in SENTINEL.findall(chunk_text(r))]
    assert seen == list(range(8))
    (final,) = model.calls("manager")
    assert '"evidence":["saw 0' in final.text  # the rendered (folded) memory
    assert "Piece " not in final.text and not re.search(r"w\d+x\d+", final.text)
    assert answer.text == "the answer"
    assert answer.usage.calls == n + 1  # cost formula: n + 1
    assert answer.usage.prompt_tokens == sum(r.prompt_tokens for r in model.requests)
    for request in model.requests:
        assert request.prompt_tokens + request.max_tokens <= 2400


async def test_static_prefix_is_byte_identical_and_memory_part_is_a_prefix() -> None:
    model, doc = scripted(), sentinel_document(8)
    answer = await arun(Prism(**SMALL), doc, "What is hidden?", model)
    steps = model.calls("stepper")
    assert len({r.messages[0].content for r in steps}) == 1
    assert "Question: What is hidden?" in steps[0].messages[0].content
    for this, following in zip(steps, steps[1:], strict=False):
        head = this.text.split(END_OF_MEMORY)[0]
        assert following.text.startswith(head)
        assert len(following.text.split(END_OF_MEMORY)[0]) > len(head)  # the log grew
    traced = [s for s in answer.steps if s.role == "stepper"]
    assert traced[0].detail["shared_prefix_tokens"] == 0
    prefix = traced[0].detail["prefix_tokens"]
    assert all(s.detail["prefix_tokens"] == prefix for s in traced)
    assert all(s.detail["shared_prefix_tokens"] > prefix for s in traced[1:])
    grows = [s.detail["shared_prefix_tokens"] for s in traced[1:]]
    assert grows == sorted(grows) and grows[-1] > grows[0]


async def test_in_place_variant_renders_json_and_keeps_the_static_prefix() -> None:
    model, doc = scripted(), sentinel_document(6)
    await arun(Prism(variant="in_place", **SMALL), doc, "q?", model)
    steps = model.calls("stepper")
    assert len({r.messages[0].content for r in steps}) == 1
    assert 'Memory:\n{"evidence":["saw 0"]}' in steps[1].text
    assert "log of revisions" not in steps[0].text


@pytest.mark.parametrize("ops", ["add", "add_update"])
async def test_step_prefix_quotes_no_path_placeholder_and_ends_on_where_values_come_from(
    ops: str,
) -> None:
    # A small model copied quoted placeholders ("key", a field's name) into the memory.
    model, settings = scripted(), Prism(ops=ops, **SMALL)
    await arun(settings, sentinel_document(3), "q?", model)
    lines = model.calls("stepper")[0].messages[0].content.split("\n")
    batch = revision_schema(from_model(QAMemory), settings._ops(), settings.value_chars,
                            settings.list_items, settings.max_revisions)
    assert lines[-2] == json_instructions(batch)  # the shape, then what fills it
    assert lines[-1].startswith("That shape only says where things go. Every name and value "
                                "you write is taken from the piece")
    assert not any('"field"' in line or '"key"' in line for line in lines)


async def test_rejected_revisions_are_logged_and_valid_siblings_apply() -> None:
    model = ScriptedModel(context_window=2400)
    batch = revision_schema(from_model(QAMemory), ("add",), 300, 10, 16)
    revision = batch.model_fields["revisions"].annotation.__args__[0]
    # model_construct skips validation, as a backend that does not enforce the bound would
    unchecked = batch.model_construct(revisions=[
        revision.model_construct(op="update", path=["evidence", 0], value="changed"),
        revision.model_construct(op="add", path=["evidence", 1], value="y" * 301),
        revision.model_construct(op="add", path=["evidence", 1], value="short")])

    def step(request: Request) -> Any:
        i = piece(request)
        if i == 0:
            return {"revisions": [
                {"op": "add", "path": ["evidence", 0], "value": "kept"},
                {"op": "add", "path": ["evidence", 0], "value": "duplicate"},
                {"op": "add", "path": ["candidate_answers"], "value": "not a list"},
                {"op": "add", "path": ["missing"], "value": "x"},
                {"op": "add", "path": ["entities", "Mara"], "value": "keeper"},
            ]}
        if i == 1:
            return unchecked  # a backend that enforces no schema: the validator still checks
        return {"revisions": []}

    model.on("stepper", reply=step)
    model.on("manager", reply={"answer": "a", "used_paths": []})
    answer = await arun(Prism(**{**SMALL, "step_max_new": 256}), sentinel_document(4), "q?",
                        model)
    first, second = [s for s in answer.steps if s.role == "stepper"][:2]
    assert len(first.detail["applied"]) == 2
    reasons = [r["reason"] for r in first.detail["rejected"]]
    assert len(reasons) == 3
    assert "already exists" in reasons[0] and "expected a list" in reasons[1]
    assert "not in the schema" in reasons[2]
    reasons = [r["reason"] for r in second.detail["rejected"]]
    assert "not allowed" in reasons[0] and "longer than 300" in reasons[1]
    assert second.detail["applied"] == ['{"path":["evidence",1],"op":"add","value":"short"}']
    final = answer.steps[-1]
    assert json.loads(final.detail["memory"]) == {"evidence": ["kept", "short"],
                                                  "entities": {"Mara": "keeper"}}
    # no used paths: citations are every contributing chunk
    assert [c.chunk_index for c in answer.citations] == [0, 1]


async def test_add_update_allows_updates() -> None:
    model = ScriptedModel(context_window=2400)

    def step(request: Request) -> Any:
        op = "add" if piece(request) == 0 else "update"
        return {"revisions": [{"op": op, "path": ["evidence", 0], "value": f"v{piece(request)}"}]}

    model.on("stepper", reply=step)
    model.on("manager", reply={"answer": "a", "used_paths": [["evidence", 0]]})
    answer = await arun(Prism(ops="add_update", **SMALL), sentinel_document(4), "q?", model)
    n = len(model.calls("stepper"))
    assert json.loads(answer.steps[-1].detail["memory"]) == {"evidence": [f"v{n - 1}"]}
    assert [c.chunk_index for c in answer.citations] == list(range(n))  # every writer of it
    assert '"op":"update"' in model.calls("stepper")[-1].text  # the log keeps both


async def test_memory_never_exceeds_mem_cap_and_overflow_is_traced() -> None:
    model, doc = scripted(), sentinel_document(10)
    answer = await arun(Prism(mem_cap=40, **SMALL), doc, "q?", model)
    traced = [s for s in answer.steps if s.role == "stepper"]
    assert len(traced) >= 5
    assert all(s.detail["memory_tokens"] <= 40 for s in traced)
    overflow = [s for s in answer.steps if s.role == "overflow"]
    assert overflow and overflow[0].detail["policy"] == "freeze"
    assert {s.detail["action"] for s in overflow} == {"reject"}  # nothing rewrites the memory
    assert "mem_cap" in answer.flags
    assert any("mem_cap" in r["reason"] for s in traced for r in s.detail["rejected"])


async def test_unparseable_step_is_retried_twice_then_an_empty_batch() -> None:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", contains="Piece 2 of", reply="not json at all")
    model.on("stepper", reply=fact_step)
    model.on("manager", reply={"answer": "a", "used_paths": [["evidence", 1]]})
    answer = await arun(Prism(**SMALL), sentinel_document(6), "q?", model)
    steps = model.calls("stepper")
    n = len({piece(r) for r in steps})
    assert [piece(r) for r in steps].count(1) == 3
    assert "not usable" in steps[2].messages[-1].content  # the re-ask carries the complaint
    assert len(model.requests) == n + 1 + 2
    # Every call is charged, the three that raised ParseError included.
    assert answer.usage.calls == len(model.requests)
    assert answer.usage.prompt_tokens == sum(r.prompt_tokens for r in model.requests)
    second = [s for s in answer.steps if s.role == "stepper"][1]
    assert second.detail["empty_batch"] and second.detail["attempts"] == 3
    assert "invalid_step" in answer.flags
    third = next(r for r in steps if piece(r) == 2)
    assert third.text.split(END_OF_MEMORY)[0] == steps[1].text.split(END_OF_MEMORY)[0]
    # evidence 1 came from chunk 2 (chunk 1 wrote nothing)
    assert [c.chunk_index for c in answer.citations] == [2]


def cut_step(request: Request) -> str:
    """A step reply stopped at max_tokens: one whole revision, one invalid whole revision, and
    a third cut inside its value."""
    i = request.text.count('"path":["evidence",')
    whole = [{"op": "add", "path": ["evidence", i], "value": f"saw {piece(request)}"},
             {"op": "add", "path": ["nowhere"], "value": 3}]
    cut = {"op": "add", "path": ["evidence", i + 1], "value": "the keeper retired in 1920"}
    return json.dumps({"revisions": [*whole, cut]})[:-6]  # cut inside the last value


@pytest.mark.parametrize("keep_cut", [True, False])
async def test_a_cut_step_keeps_its_whole_revisions_without_a_reask(keep_cut: bool) -> None:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply=cut_step)
    model.on("manager", reply={"answer": "x", "used_paths": [["evidence", 0]]})
    doc = sentinel_document(3)
    answer = await arun(Prism(**SMALL, keep_cut=keep_cut), doc, "q?", model)
    steps = [s for s in answer.steps if s.role == "stepper" and "applied" in s.detail]
    memory = next(s for s in answer.steps if s.role == "manager").detail["memory"]
    if keep_cut:
        assert len(model.calls("stepper")) == len(steps)  # no re-asks
        assert all(s.detail["applied"] and s.detail["attempts"] == 1 for s in steps)
        assert "retired in 19" not in memory  # the cut revision was never applied
        assert "invalid_step" not in answer.flags
        assert [c.chunk_index for c in answer.citations] == [0]
    else:  # re-asked up to `retries` times, then an empty batch
        assert len(model.calls("stepper")) == 3 * len(steps)
        assert all(not s.detail["applied"] for s in steps) and "invalid_step" in answer.flags


@pytest.mark.parametrize("variant", ["amendments", "in_place"])
async def test_a_reask_with_the_longest_complaint_fits_beside_a_full_step(variant: str) -> None:
    """The plan reserves a complaint of COMPLAINT_CHARS characters at a token each: as many
    punctuation marks (a token each to the scripted model, where as many "x" are one) still fit
    beside a memory at mem_cap, a whole chunk and the reply."""
    model, prism = scripted(), Prism(variant=variant, **SMALL)
    ctx = RunContext(model, sentinel_document(4), "q?", prism.name)
    run = (await prism.initial_state(ctx))["run"]
    memory = prism_prompts.memory_part("x " * run.plan.mem_cap, variant)
    step = prism_prompts.step_messages(run.prefix, memory, 9998, 9999,
                                       "x " * run.plan.chunk_tokens)
    worst = [*step, reask_message("!" * COMPLAINT_CHARS)]
    assert model.count_prompt_tokens(worst) + prism.step_max_new <= run.plan.window


async def test_citations_come_from_provenance_of_used_paths() -> None:
    model, doc = scripted({"answer": "x", "used_paths": [["evidence", 2]]}), sentinel_document(8)
    answer = await arun(Prism(**SMALL), doc, "q?", model)
    (citation,) = answer.citations
    assert citation.chunk_index == 2
    assert doc.text[citation.start:citation.end] == citation.text
    assert "SENTINEL-2" in citation.text or SENTINEL.search(citation.text)


async def test_broken_final_falls_back_to_text() -> None:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply=fact_step)
    model.on("manager", contains="used_paths", reply="{broken")
    model.on("manager", reply="plain answer")
    answer = await arun(Prism(**SMALL), sentinel_document(4), "q?", model)
    assert answer.text in ("plain answer", "{broken") and "invalid_final" in answer.flags
    assert answer.citations  # all contributing chunks


async def test_final_cut_at_the_cap_keeps_its_answer_without_a_second_call() -> None:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply=fact_step)
    # Cut inside the second used path (a prefix of every evidence path), as a reply stopped at
    # max_tokens is: only the whole first path may cite.
    model.on("manager", contains="used_paths",
             reply='{"answer": "Mara Quill kept the light until", '
                   '"used_paths": [["evidence", 2], ["evidence", 1')
    answer = await arun(Prism(**SMALL), sentinel_document(4), "q?", model)
    assert answer.text == "Mara Quill kept the light until"
    assert "cut_final" in answer.flags and "invalid_final" not in answer.flags
    assert len(model.calls("manager")) == 1  # no free-text re-ask
    assert [c.chunk_index for c in answer.citations] == [2]  # the whole path survived
    assert answer.usage.calls == len(model.requests)


async def test_final_without_answer_text_still_falls_back_to_text() -> None:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply=fact_step)
    model.on("manager", contains="used_paths", reply='{"answer": "", "used_paths": [',
             times=1)
    model.on("manager", reply="plain answer")
    answer = await arun(Prism(**SMALL), sentinel_document(4), "q?", model)
    assert answer.text == "plain answer" and "invalid_final" in answer.flags
    assert len(model.calls("manager")) == 2


async def test_empty_question_uses_the_summary_schema_and_free_text() -> None:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply=lambda r: {"revisions": [
        {"op": "add", "path": ["events", piece(r)], "value": f"event {piece(r)}"}]})
    model.on("manager", reply="A summary.")
    answer = await arun(Prism(**SMALL), sentinel_document(4), "", model)
    assert "- events: list[str]" in model.calls("stepper")[0].text
    (final,) = model.calls("manager")
    assert final.schema is None and "Write a summary" in final.text
    assert answer.text == "A summary."
    assert len(answer.citations) == len(model.calls("stepper"))


class Ledger(BaseModel):
    """A user schema."""

    payments: list[str] = Field(description="payments made")
    total: int = Field(description="sum of payments")


async def test_user_schemas_from_a_class_and_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(Ledger.model_json_schema()))
    saved = Prism(memory_schema=Ledger).model_dump(mode="json")["memory_schema"]
    assert saved == Ledger.model_json_schema()  # a class is saved (a session, JSON) as its schema
    for choice in (Ledger, str(path), path, saved):
        model = ScriptedModel(context_window=2400)
        model.on("stepper", contains="Piece 1 of", reply={"revisions": [
            {"op": "add", "path": ["total"], "value": 12},
            {"op": "add", "path": ["payments", 0], "value": 5}]})
        model.on("stepper", reply={"revisions": []})
        model.on("manager", reply={"answer": "12", "used_paths": [["total"]]})
        answer = await arun(Prism(memory_schema=choice, **SMALL), sentinel_document(4), "q?",
                            model)
        assert "- total: int — sum of payments" in model.calls("stepper")[0].text
        first = [s for s in answer.steps if s.role == "stepper"][0]
        assert "expected a string" in first.detail["rejected"][0]["reason"]
        assert [c.chunk_index for c in answer.citations] == [0]


SPEC = {"name": "harbour", "fields": [
    {"name": "keepers", "description": "lighthouse keepers -> years", "type": "dict[str,str]"},
    {"name": "dates", "description": "dated events", "type": "list[str]"}]}


async def test_generated_schema_is_used_cached_and_falls_back(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    model = ScriptedModel(context_window=2400)
    model.on("planner", reply=SPEC, times=1)
    model.on("stepper", reply={"revisions": [{"op": "add", "path": ["keepers", "Mara"],
                                              "value": "1889-1920"}]}, times=1)
    model.on("stepper", reply={"revisions": []})
    model.on("manager", reply={"answer": "Mara", "used_paths": [["keepers", "Mara"]]})
    prism = Prism(memory_schema="generate", task="Questions about a town's history", **SMALL)
    answer = await arun(prism, sentinel_document(4), "Who kept the light?", model,
                        artifacts=cache)
    (planner,) = model.calls("planner")
    assert "Questions about a town's history" in planner.text and "cookbook" in planner.text
    assert "- keepers: dict[str,str]" in model.calls("stepper")[0].text
    assert answer.text == "Mara" and [c.chunk_index for c in answer.citations] == [0]
    again = ScriptedModel(context_window=2400)
    again.on("stepper", reply={"revisions": []})
    again.on("manager", reply={"answer": "?", "used_paths": []})
    await arun(prism, sentinel_document(4), "Another?", again, artifacts=cache)
    assert not again.calls("planner")  # cached per task type
    assert "- keepers: dict[str,str]" in again.calls("stepper")[0].text
    broken = ScriptedModel(context_window=2400)
    broken.on("planner", reply={"name": "x", "fields": []})
    broken.on("stepper", reply={"revisions": []})
    broken.on("manager", reply={"answer": "?", "used_paths": []})
    answer = await arun(prism, sentinel_document(4), "q?", broken)
    assert "- evidence: list[str]" in broken.calls("stepper")[0].text
    assert next(s for s in answer.steps if s.role == "planner").detail["fallback"]


async def test_cached_tokens_are_reported_through_an_openai_compatible_server() -> None:
    from longweave.openai_backend import OpenAILLM
    from tests.faultserver import FaultServer, completion

    doc = sentinel_document(5)
    step = json.dumps({"revisions": []})
    final = json.dumps({"answer": "done", "used_paths": []})
    with FaultServer() as server:
        llm = OpenAILLM("test-model", base_url=server.base_url, api_key="sk-test",
                        context_window=4096, max_retries=0)
        prism = Prism(window=4096, chunk_tokens=100, step_max_new=128, answer_max_new=64)
        n = len(Chunker(100, tokenizer=llm.tokenizer).split(doc.text))
        server.push(completion(step, cached_tokens=0))
        server.push(*[completion(step, cached_tokens=300 + k) for k in range(n - 1)])
        server.push(completion(final, cached_tokens=0))
        answer = await arun(prism, doc, "q?", llm)
    traced = [s for s in answer.steps if s.role == "stepper"]
    assert len(traced) == n >= 3
    assert [s.detail["cached_tokens"] for s in traced] == [0, *range(300, 300 + n - 1)]
    assert answer.usage.cached_tokens == sum(range(300, 300 + n - 1))
    system = {r.messages[0]["content"] for r in server.requests[:n]}
    assert len(system) == 1  # the same static prefix went to the server every step


# -- the real local model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from longweave import local_models
    model = local_models.LocalLLM.bundled(
        cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache")
    yield model
    model.close()


class People(BaseModel):
    """A map-only memory for the bundled model's test."""

    people: dict[str, str] = Field(description="person -> what the text says about them")


@pytest.mark.real_model
async def test_real_local_model_end_to_end(local_llm: Any) -> None:
    doc = open_document(Path(__file__).parents[1] / "examples" / "harbour_report.md")
    # ~950 tokens in 3 chunks; one short revision per step: 4 calls in all. A map memory: with
    # the default QA memory's lists the bundled model writes the index 1000 where an add needs
    # the list's length (§5.2 rule 2), so every revision is rejected and nothing can be cited.
    prism = Prism(window=2048, chunk_tokens=500, step_max_new=48, answer_max_new=48,
                  value_chars=40, max_revisions=1, list_items=2, answer_chars=80, retries=0,
                  memory_schema=People)
    answer = await arun(prism, doc, "Who was the first keeper of the lighthouse?", local_llm)
    assert answer.text.strip()
    assert any(s.detail["applied"] for s in answer.steps if s.role == "stepper")
    assert answer.citations
    for citation in answer.citations:
        assert doc.text[citation.start:citation.end] == citation.text
    traced = [s for s in answer.steps if s.role == "stepper"]
    assert len(traced) >= 2
    assert answer.usage.calls == len(traced) + 1 + ("invalid_final" in answer.flags)


@pytest.mark.parametrize("chars", [1000, 80])
def test_the_final_schema_shows_no_docstring_to_copy(chars: int) -> None:
    # The bundled model answered "The final answer and the memory paths it used (for citations)."
    shown = json_instructions(final_schema(chars))
    assert "memory paths" not in shown
    assert f'"answer": string (at most {chars} characters)' in shown


async def test_a_session_with_a_class_schema_saves_and_resumes_it(tmp_path: Path) -> None:
    """A pydantic class is saved as its JSON schema: the resumed session reads the same memory."""
    from longweave.config import Settings
    from longweave.session import Session

    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply={"revisions": [{"op": "add", "path": ["total"], "value": 12}]})
    model.on("manager", reply={"answer": "12", "used_paths": [["total"]]})
    model.on("rewrite", reply="What is the total now?")
    settings = Settings(cache_dir=tmp_path / "cache")
    text = sentinel_document(2).text
    for strategy, options in [(Prism(memory_schema=Ledger, **SMALL), {}),
                              ("prism", {"memory_schema": Ledger, **SMALL})]:
        session = Session.open(text, strategy=strategy, model=model, cache=False,
                               settings=settings, **options)
        assert (await session.aask("What is the total?")).text == "12"
        saved = json.loads(session.path.read_text(encoding="utf-8"))
        assert saved["options"]["memory_schema"] == Ledger.model_json_schema()
        resumed = Session.open(text, model=model, cache=False, settings=settings, resume=True)
        assert resumed.strategy.memory_schema == Ledger.model_json_schema()
        asked = len(model.calls("stepper"))
        assert (await resumed.aask("And the total now?")).text == "12"
        assert "- total: int — sum of payments" in model.calls("stepper")[asked].text
        session.path.unlink()
