"""JSONL traces: every call's prompt and output, every step, usage that adds up, per-run keys."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from longweave.agents.chain_of_agents import ChainOfAgents
from longweave.answer import Usage
from longweave.api import aask, ask
from longweave.batch import BatchItem, BatchJob, ResultLog, arun_batch
from longweave.cli import app
from longweave.documents import Document
from longweave.errors import UnscriptedCall
from longweave.events import Event, EventLog, ignore
from longweave.llm import Completion, Message
from longweave.session import Session
from longweave.testing import Request, ScriptedModel, quoted_after
from longweave.trace import TraceWriter, combine, read_trace, trace_sink

SENTINEL = re.compile(r"SENTINEL-(\d+)")
PART = re.compile(r"Part (\d+) of (\d+)")
COA = ChainOfAgents(max_new=32, margin=16)
EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"


def sentinel_text(n: int, tag: str = "", words: int = 60) -> str:
    paras = [f"SENTINEL-{i} {tag} " + " ".join(f"word{i}x{j}" for j in range(words)) + "."
             for i in range(n)]
    return "\n\n".join(paras)


def cu_reply(request: Request) -> str:
    part = quoted_after(request.text, "of the text:")
    seen = ",".join(SENTINEL.findall(part))
    return f"CU{PART.search(request.text).group(1)} saw {seen} [c1]"


def scripted(window: int = 400) -> ScriptedModel:
    model = ScriptedModel(context_window=window)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="The final answer [c1].")
    return model


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def summed(calls: list[dict[str, Any]]) -> Usage:
    return sum((Usage(**c["usage"]) for c in calls), Usage())


# -- one answer --------------------------------------------------------------------------------


def test_chain_of_agents_trace_has_every_prompt_output_step_and_the_usage(tmp_path: Path) -> None:
    model, path = scripted(), tmp_path / "run.jsonl"
    doc = Document.from_text(sentinel_text(8))
    answer = ask(doc, "What is hidden?", strategy=COA, model=model, cache=False, trace=path)
    records = read_trace(path)
    assert [r["type"] for r in records][0] == "start" and records[-1]["type"] == "finish"
    assert len({r["run"] for r in records}) == 1  # one answer, one run id on every line
    start = records[0]
    assert start["question"] == "What is hidden?" and start["strategy"] == "chain-of-agents"
    assert start["document_id"] == doc.id and start["model"] == "scripted"

    calls = of_type(records, "call")
    assert len(calls) == len(model.requests) >= 4  # several workers and the manager
    for call, request in zip(calls, model.requests, strict=True):
        assert call["role"] == request.role
        assert [m["content"] for m in call["messages"]] == [m.content for m in request.messages]
        assert call["max_tokens"] == request.max_tokens
        assert call["usage"]["prompt_tokens"] == request.prompt_tokens
        assert call["finish_reason"] == "stop" and call["cache_hit"] is False
    workers = [c for c in calls if c["role"] == "worker"]
    assert [c["index"] for c in workers] == list(range(len(workers)))
    assert all(c["output"] == cu_reply(r) for c, r in zip(workers, model.calls("worker"),
                                                          strict=True))
    assert calls[-1]["role"] == "manager" and calls[-1]["output"] == "The final answer [c1]."

    steps = of_type(records, "step")
    assert [{k: s[k] for k in ("role", "index", "detail", "output")} for s in steps] == [
        step.model_dump(mode="json") for step in answer.steps]

    finish = records[-1]
    assert finish["answer"] == answer.text and finish["usage"] == answer.usage.model_dump()
    total = summed(calls)
    assert (total.calls, total.prompt_tokens, total.completion_tokens) == (
        answer.usage.calls, answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert total.seconds == pytest.approx(answer.usage.seconds)


async def test_a_failed_call_and_the_failed_run_are_traced(tmp_path: Path) -> None:
    model = ScriptedModel(context_window=400)
    model.on("worker", reply=cu_reply)  # no manager: the last call is unscripted
    path = tmp_path / "run.jsonl"
    with pytest.raises(UnscriptedCall):
        await aask(sentinel_text(3), "Where?", strategy=COA, model=model, cache=False, trace=path)
    records = read_trace(path)
    failed = of_type(records, "call")[-1]
    assert failed["role"] == "manager" and failed["error_type"] == "UnscriptedCall"
    assert "Question: Where?" in failed["messages"][-1]["content"] and "usage" not in failed
    error = records[-1]
    assert error["type"] == "error" and error["error_type"] == "UnscriptedCall"
    assert error["usage"]["calls"] == len(model.calls("worker"))  # what was spent before


async def test_each_line_is_on_disk_before_the_run_goes_on(tmp_path: Path) -> None:
    path, seen = tmp_path / "run.jsonl", []

    def peek(event: Event) -> None:  # runs before the trace sees the event
        if event.kind == "progress":  # follows the call's result event
            seen.append(len(of_type(read_trace(path), "call")))

    model = ScriptedModel()
    model.on("reader", reply="Under the mat.")
    await aask("The key is under the mat.", "Where?", strategy="truncate", model=model,
               cache=False, on_event=peek, trace=path)
    assert seen == [1]


def test_combine_and_trace_sink_keep_ignore_recognisable(tmp_path: Path) -> None:
    log = EventLog()
    assert combine() is ignore and combine(None, ignore) is ignore and combine(log) is log
    with trace_sink(None) as sink:
        assert sink is ignore
    with trace_sink(tmp_path / "t.jsonl", question="Q?") as sink:
        both = combine(log, sink)
        both(Event("start", "truncate", message="truncate on text"))
        both(Event("finish", "truncate", message="done", data={"wall": 0.5}))
    start, finish = read_trace(tmp_path / "t.jsonl")
    assert start["question"] == "Q?" and start["run"] == finish["run"]
    assert finish["wall"] == 0.5 and len(log.events) == 2


def test_a_torn_last_line_is_skipped_and_the_next_line_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "start", "run": "a"}\n{"type": "ca', encoding="utf-8")
    with TraceWriter(path) as writer:
        writer.write({"type": "start", "run": "b", "note": {1, 2}, "where": path})
    records = read_trace(path)
    assert [r["run"] for r in records] == ["a", "b"]
    assert records[1]["note"] == [1, 2] and records[1]["where"] == str(path)


def test_a_writer_over_an_open_stream_leaves_it_open() -> None:
    out = io.StringIO()
    with TraceWriter(out) as writer:
        writer.write({"type": "start"})
    assert not out.closed and json.loads(out.getvalue()) == {"type": "start"}


# -- a session ---------------------------------------------------------------------------------


def test_a_session_traces_every_turn_with_its_rewrite(tmp_path: Path) -> None:
    model = ScriptedModel()
    model.on("reader", contains="Who is Mara?", reply="Mara Quill.")
    model.on("rewrite", reply="Where was Mara Quill born?")
    model.on("reader", contains="Where was Mara Quill born?", reply="In Tarn.")
    path = tmp_path / "chat.jsonl"
    session = Session.open("Mara Quill was born in Tarn.", strategy="truncate", model=model,
                           cache=False, persist=False, trace=path)
    session.ask("Who is Mara?")
    second = session.ask("Where was she born?")
    records = read_trace(path)
    turns = Counter(r["turn"] for r in records)
    assert set(turns) == {1, 2} and len({r["run"] for r in records}) == 2
    second_calls = [r for r in of_type(records, "call") if r["turn"] == 2]
    assert [c["role"] for c in second_calls] == ["rewrite", "reader"]
    assert second_calls[0]["output"] == "Where was Mara Quill born?"
    finish = [r for r in of_type(records, "finish") if r["turn"] == 2][0]
    assert finish["usage"] == second.usage.model_dump()  # the rewrite counts in its turn
    assert summed(second_calls).prompt_tokens == second.usage.prompt_tokens


# -- batch -------------------------------------------------------------------------------------


@dataclass
class Yielding(ScriptedModel):
    """The scripted model, handing control back to the event loop in every call, as a real
    backend does while it waits, so concurrent answers interleave."""

    async def complete(self, messages: Sequence[Message], **kw: Any) -> Completion:
        await asyncio.sleep(0)
        return await super().complete(messages, **kw)


def _batch_items(tmp_path: Path, n: int = 3) -> list[BatchItem]:
    items = []
    for d in range(n):
        doc = tmp_path / f"doc{d}.txt"
        doc.write_text(sentinel_text(4, tag=f"DOC{d}"), encoding="utf-8")
        items += [BatchItem(document=str(doc), question=q) for q in ("What?", "Which?")]
    return items


async def test_a_concurrent_batch_writes_interleaved_lines_each_with_its_key(
    tmp_path: Path,
) -> None:
    model = Yielding(context_window=400)
    model.on("worker", reply=cu_reply)
    model.on("manager", reply="Done [c1].")
    job = BatchJob("chain-of-agents", model, options={"max_new": 32, "margin": 16},
                   cache=False, cache_dir=tmp_path / "cache")
    out, path = tmp_path / "out.jsonl", tmp_path / "trace.jsonl"
    summary = await arun_batch(_batch_items(tmp_path), out, job, concurrency=4, trace=path)
    outputs = {r.key: r for r in ResultLog(out).records()}
    assert summary.answered == len(outputs) == 6
    assert "trace" not in out.read_text(encoding="utf-8")  # the output holds records only
    records = read_trace(path)
    keys = [r["key"] for r in records]
    assert set(keys) == set(outputs)
    changes = sum(a != b for a, b in zip(keys, keys[1:], strict=False))
    assert changes > len(outputs) - 1, "concurrent answers' lines should interleave"
    for key, output in outputs.items():
        mine = [r for r in records if r["key"] == key]
        assert [mine[0]["type"], mine[-1]["type"]] == ["start", "finish"]
        assert len({r["run"] for r in mine}) == 1
        assert mine[0]["question"] == output.question and mine[0]["document"] == output.document
        calls = of_type(mine, "call")
        doc_tag = f"DOC{Path(output.document).stem[3:]}"
        assert all(doc_tag in c["messages"][-1]["content"] for c in calls if c["role"] == "worker")
        assert summed(calls).prompt_tokens == output.usage.prompt_tokens
        assert len(calls) == output.usage.calls
        assert mine[-1]["answer"] == output.answer == "Done."


async def test_a_failing_batch_item_ends_its_trace_with_the_error(tmp_path: Path) -> None:
    job = BatchJob("truncate", ScriptedModel(), cache=False, cache_dir=tmp_path / "cache")
    item = BatchItem(document=str(tmp_path / "missing.txt"), question="Q?")
    await arun_batch([item], tmp_path / "out.jsonl", job, trace=tmp_path / "trace.jsonl")
    start, error = read_trace(tmp_path / "trace.jsonl")
    assert start["document"].endswith("missing.txt")
    assert error["type"] == "error" and error["error_type"] == "DocumentError"
    assert start["key"] == error["key"] == job.key(item)


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    scripted_model = scripted_cli(context_window=700, columns=200)
    scripted_model.on("reader", reply="Mara Quill kept the light first.")
    scripted_model.on("worker", reply="Mara Quill was the first keeper [c1].")
    scripted_model.on("manager", reply="Mara Quill [c1].")
    return scripted_model


def test_batch_trace_flag_writes_a_line_set_per_record(cli_model, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"The {name} door is red.", encoding="utf-8")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What colour?"}\n', encoding="utf-8")
    out, trace = tmp_path / "out.jsonl", tmp_path / "trace.jsonl"
    result = CliRunner().invoke(app, ["batch", str(folder), "-q", str(questions), "-o", str(out),
                                      "-s", "truncate", "--trace", str(trace), "--no-cache"])
    assert result.exit_code == 0, result.output
    records = read_trace(trace)
    keys = {r.key for r in ResultLog(out).records()}
    assert {r["key"] for r in records} == keys and len(keys) == 2
    assert len(of_type(records, "call")) == 2 and len(of_type(records, "finish")) == 2
    assert all(r.steps is None for r in ResultLog(out).records())  # --steps was not given


def test_compare_trace_flag_writes_each_strategys_calls_and_row(cli_model, tmp_path) -> None:
    trace = tmp_path / "trace.jsonl"
    result = CliRunner().invoke(app, ["compare", str(EXAMPLE), "Who was the first keeper?",
                                      "-S", "truncate,infini-retri,chain-of-agents",
                                      "--set", "max_new=48", "--trace", str(trace),
                                      "--no-cache"])
    assert result.exit_code == 0, result.output
    records = read_trace(trace)
    starts = of_type(records, "start")
    assert [s["strategy"] for s in starts] == ["truncate", "infini-retri", "chain-of-agents"]
    assert all(s["question"] == "Who was the first keeper?" for s in starts)
    rows = of_type(records, "row")
    # InfiniRetri needs a local model's attention: its row fails, the others still run.
    assert [(r["strategy"], r["error_type"]) for r in rows] == [
        ("truncate", None), ("infini-retri", "BackendCapabilityError"), ("chain-of-agents", None)]
    coa_run = starts[2]["run"]
    coa_calls = [r for r in of_type(records, "call") if r["run"] == coa_run]
    assert len(coa_calls) == len(cli_model.requests) - 1 == rows[2]["usage"]["calls"]
    finish = [r for r in of_type(records, "finish") if r["run"] == coa_run][0]
    assert finish["usage"] == rows[2]["usage"] | {"seconds": finish["usage"]["seconds"]}


def test_chat_trace_flag_writes_the_sessions_calls(
    cli_model, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from longweave.cli import main

    trace = tmp_path / "chat.jsonl"
    monkeypatch.setattr(sys, "stdin", io.StringIO("Who was the first keeper?\n/quit\n"))
    monkeypatch.setattr(sys, "argv", ["longweave", "chat", str(EXAMPLE), "-s", "truncate",
                                      "--new", "--no-cache", "--trace", str(trace)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    records = read_trace(trace)
    assert [r["type"] for r in records if r["type"] in ("start", "call", "finish")] == [
        "start", "call", "finish"]
    assert records[0]["turn"] == 1 and records[-1]["answer"] == "Mara Quill kept the light first."


# -- Ray: lines collected in the workers, written by the driver --------------------------------


def _room_reply(request: Request) -> str:
    return "room " + request.text.split("Room ", 1)[1].split(" ", 1)[0]


async def test_a_ray_batch_trace_is_written_by_the_driver(tmp_path: Path) -> None:
    import sys

    import cloudpickle
    import ray

    from longweave.executors.ray import RayExecutor

    model = ScriptedModel()
    model.on("reader", reply=_room_reply)
    items = []
    for i in range(3):
        doc = tmp_path / f"room{i}.txt"
        doc.write_text(f"Room {i} is on floor {i}.", encoding="utf-8")
        items.append(BatchItem(document=str(doc), question="Which room?"))
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the reply ships by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = await arun_batch(items, tmp_path / "out.jsonl", job,
                                   executor=RayExecutor(concurrency=2), trace=tmp_path / "t.jsonl")
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert summary.answered == 3 and model.requests == []  # the calls ran in the workers
    outputs = {r.key: r for r in ResultLog(tmp_path / "out.jsonl").records()}
    records = read_trace(tmp_path / "t.jsonl")
    assert {r["key"] for r in records} == set(outputs)
    for key, output in outputs.items():
        mine = [r for r in records if r["key"] == key]
        assert [r["type"] for r in mine] == ["start", "step", "call", "step", "finish"]
        assert mine[2]["output"] == output.answer and output.answer.startswith("room ")
        assert mine[2]["usage"]["prompt_tokens"] == output.usage.prompt_tokens


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_with_no_reader_is_refused_and_one_with_a_reader_is_written(
    tmp_path: Path,
) -> None:
    """Opening a pipe that nothing reads would block before the first answer."""
    import os
    import threading
    import time

    from longweave.errors import DocumentError

    pipe = tmp_path / "trace.pipe"
    os.mkfifo(pipe)
    doc = sentinel_text(3)
    model = scripted()
    with pytest.raises(DocumentError) as info:
        ask(doc, "Which sentinels?", strategy=COA, model=model, cache=False, trace=pipe)
    assert "named pipe that nothing reads" in info.value.message and model.requests == []
    job = BatchJob(COA, model, cache=False, cache_dir=tmp_path / "cache")
    item = BatchItem(document=str(EXAMPLE), question="Who kept the light?")
    with pytest.raises(DocumentError, match="nothing reads"):
        asyncio.run(arun_batch([item], tmp_path / "out.jsonl", job, trace=pipe))
    assert model.requests == [] and not (tmp_path / "out.jsonl").exists()

    fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a reader, there before the writer
    data: list[bytes] = []

    def read() -> None:  # until the writer has come and gone
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:  # the writer is there, with nothing new
                chunk = None
            if chunk:
                data.append(chunk)
            elif chunk == b"" and data:
                return
            time.sleep(0.005)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        answer = ask(doc, "Which sentinels?", strategy=COA, model=model, cache=False, trace=pipe)
    finally:
        reader.join(timeout=30)
        os.close(fd)
    lines = b"".join(data).decode().splitlines()
    assert answer.text == "The final answer."
    assert [json.loads(line)["type"] for line in lines][0] == "start"
    assert len(of_type([json.loads(line) for line in lines], "call")) == len(model.requests)
