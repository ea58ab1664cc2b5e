"""The batch core: records appended as they finish, resume, failures recorded, executors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from longweave.batch import BatchItem, BatchJob, BatchRecord, ResultLog, arun_batch
from longweave.errors import ConfigError, DocumentError
from longweave.executors import get_executor
from longweave.executors.local import LocalExecutor
from longweave.testing import ScriptedModel


def _docs(tmp_path: Path) -> tuple[Path, Path]:
    red = tmp_path / "red.txt"
    red.write_text("The door of the red house is painted blue.", encoding="utf-8")
    green = tmp_path / "green.txt"
    green.write_text("The green house has no door at all.", encoding="utf-8")
    return red, green


def _model() -> ScriptedModel:
    model = ScriptedModel()
    model.on("reader", contains="red house", reply="Blue.")
    model.on("reader", contains="green house", reply="It has none.")
    return model


def _items(red: Path, green: Path) -> list[BatchItem]:
    return [
        BatchItem(document=str(red), question="What colour is the door?", id="q1"),
        BatchItem(document=str(green), question="What colour is the door?", id="q1"),
        BatchItem(document=str(red), question="Which house?", meta={"gold": ["red"]}),
    ]


async def test_every_item_is_answered_once_and_written(tmp_path: Path) -> None:
    red, green = _docs(tmp_path)
    model = _model()
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    out = tmp_path / "out.jsonl"
    seen: list[str] = []
    summary = await arun_batch(_items(red, green), out, job, on_record=lambda r: seen.append(r.key))
    records = ResultLog(out).records()
    assert summary.answered == 3 and summary.failed == 0 and summary.skipped == 0
    assert sorted(seen) == sorted(r.key for r in records) and len(set(seen)) == 3
    by_doc = {(Path(r.document).name, r.question): r for r in records}
    assert by_doc["red.txt", "What colour is the door?"].answer == "Blue."
    assert by_doc["green.txt", "What colour is the door?"].answer == "It has none."
    which = by_doc["red.txt", "Which house?"]
    assert which.meta == {"gold": ["red"]} and which.citations[0].text.startswith("The door")
    assert summary.usage.calls == 3 == len(model.requests)
    assert all(r.steps is None for r in records)  # traces only on request


async def test_a_rerun_skips_answered_items_and_retries_failures(tmp_path: Path) -> None:
    red, green = _docs(tmp_path)
    model = ScriptedModel()
    model.on("reader", contains="red house", reply="Blue.")  # green is unscripted: it fails
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    out = tmp_path / "out.jsonl"
    first = await arun_batch(_items(red, green), out, job)
    assert (first.answered, first.failed) == (2, 1)
    failed = [r for r in ResultLog(out).records() if not r.ok]
    assert failed[0].error_type == "UnscriptedCall" and "green" in failed[0].document

    model.on("reader", contains="green house", reply="It has none.")
    calls_before = len(model.requests)
    second = await arun_batch(_items(red, green), out, job)
    assert (second.answered, second.failed, second.skipped) == (1, 0, 2)
    assert len(model.requests) == calls_before + 1  # only the failed item was asked again
    assert len(ResultLog(out).answered()) == 3


async def test_a_torn_last_line_is_ignored_and_the_next_record_starts_a_new_line(
    tmp_path: Path,
) -> None:
    red, green = _docs(tmp_path)
    job = BatchJob("truncate", _model(), cache=False, cache_dir=tmp_path / "cache")
    out = tmp_path / "out.jsonl"
    await arun_batch(_items(red, green)[:1], out, job)
    with out.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "torn", "docu')  # a crash in the middle of a write
    summary = await arun_batch(_items(red, green), out, job)
    assert summary.skipped == 1 and summary.answered == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[1] == '{"key": "torn", "docu'
    assert [json.loads(line)["key"] for line in lines[2:]]  # whole lines after the torn one
    assert len(ResultLog(out).records()) == 3


async def test_missing_documents_and_duplicate_items(tmp_path: Path) -> None:
    red, _ = _docs(tmp_path)
    job = BatchJob("truncate", _model(), cache=False, cache_dir=tmp_path / "cache")
    items = [
        BatchItem(document=str(tmp_path / "nope.txt"), question="Q?"),
        BatchItem(document=str(red), question="Colour?"),
        BatchItem(document=str(red), question="Colour?"),  # asked once
    ]
    summary = await arun_batch(items, tmp_path / "out.jsonl", job)
    records = ResultLog(tmp_path / "out.jsonl").records()
    assert (summary.answered, summary.failed, len(records)) == (1, 1, 2)
    missing = next(r for r in records if not r.ok)
    assert missing.error_type == "DocumentError" and "nope.txt" in (missing.error or "")


async def test_an_unknown_strategy_fails_before_any_work(tmp_path: Path) -> None:
    red, green = _docs(tmp_path)
    job = BatchJob("no-such-strategy", _model(), cache=False, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError):
        await arun_batch(_items(red, green), tmp_path / "out.jsonl", job)
    assert not (tmp_path / "out.jsonl").exists()


class _RecordingJob(BatchJob):
    """A job whose answers wait, recording how many run at once and in which order."""

    def __init__(self) -> None:
        super().__init__("truncate", "scripted")
        self.running = 0
        self.peak = 0
        self.started: list[str] = []

    async def answer(self, item: BatchItem, **_: object) -> BatchRecord:
        self.started.append(item.question)
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        return BatchRecord(key=self.key(item), document=item.document, question=item.question,
                           strategy=self.strategy, model="scripted", answer="ok")

    def check(self) -> None:
        return None


async def test_local_executor_bounds_concurrency_and_runs_a_documents_first_question_alone(
    tmp_path: Path,
) -> None:
    job = _RecordingJob()
    groups = [
        [BatchItem(document="a", question=f"a{i}") for i in range(4)],
        [BatchItem(document="b", question=f"b{i}") for i in range(4)],
    ]
    records = [r async for r in LocalExecutor(concurrency=3).run(job, groups)]
    assert sorted(r.question for r in records) == sorted(i.question for g in groups for i in g)
    assert job.peak == 3
    # No sibling of a document starts before its first question has finished.
    assert job.started.index("a0") < min(job.started.index(f"a{i}") for i in range(1, 4))
    assert set(job.started[:2]) == {"a0", "b0"}


async def test_a_bug_in_a_job_surfaces_instead_of_hanging() -> None:
    class Broken(_RecordingJob):
        async def answer(self, item: BatchItem, **_: object) -> BatchRecord:
            raise RuntimeError("boom")

    groups = [[BatchItem(document="a", question="q")]]
    with pytest.raises(RuntimeError, match="boom"):
        _ = [r async for r in LocalExecutor().run(Broken(), groups)]


def test_executor_lookup() -> None:
    assert get_executor("local", concurrency=2).concurrency == 2  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="unknown executor"):
        get_executor("threads")
    with pytest.raises(ConfigError):
        LocalExecutor(concurrency=0)


def test_a_job_pickles_without_its_model_or_documents(tmp_path: Path) -> None:
    import pickle

    job = BatchJob("truncate", "local", options={"max_new": 8}, cache_dir=tmp_path)
    job._documents["x"] = object()  # type: ignore[assignment]
    clone = pickle.loads(pickle.dumps(job))
    assert clone.options == {"max_new": 8} and clone.model == "local" and not clone._documents


def _fifo(tmp_path: Path) -> Path:
    import os

    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("where", ["/dev/zero", "/dev/full", "fifo", "folder"])
async def test_an_output_that_is_not_a_regular_file_is_refused_before_any_call(
    tmp_path: Path, where: str
) -> None:
    red, green = _docs(tmp_path)
    if where.startswith("/dev/") and not Path(where).exists():
        pytest.skip(f"no {where} here")
    out = {"fifo": lambda: _fifo(tmp_path), "folder": lambda: tmp_path}.get(
        where, lambda: Path(where))()
    model = _model()
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    with pytest.raises(DocumentError) as info:
        await asyncio.wait_for(arun_batch(_items(red, green), out, job), timeout=10)
    assert str(out) in info.value.message and model.requests == []
    assert "regular file" in info.value.message or "directory" in info.value.message
    with pytest.raises(DocumentError):  # reading it back to resume is refused too
        ResultLog(out).records() if where != "folder" else ResultLog(out).check()


async def test_an_output_or_trace_that_cannot_be_created_is_refused_before_any_call(
    tmp_path: Path,
) -> None:
    red, green = _docs(tmp_path)
    model = _model()
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    good = tmp_path / "out.jsonl"
    cases = [
        (red / "out.jsonl", None, "red.txt is a file, not a folder"),
        (good, red / "sub" / "trace.jsonl", "red.txt is a file, not a folder"),
        ("", None, "the output path is empty"),
        (good, "", "the trace path is empty"),
        (good, tmp_path, "is a directory"),
    ]
    if Path("/proc/self").is_dir():
        cases.append((Path("/proc/no-such-dir-longweave/out.jsonl"), None, "cannot be created"))
    for out, trace, problem in cases:
        with pytest.raises(DocumentError) as info:
            await arun_batch(_items(red, green), out, job, trace=trace)
        assert problem in info.value.message
    assert model.requests == [] and not good.exists()
    # Missing folders are fine: they are made when the first record is written.
    deep = tmp_path / "a" / "b" / "out.jsonl"
    summary = await arun_batch(_items(red, green), deep, job, trace=tmp_path / "t" / "t.jsonl")
    assert summary.answered == 3 and len(ResultLog(deep).records()) == 3


@pytest.mark.parametrize("content", [
    b"# My notes\n\nThe door is blue.\n",
    b'{"question": "What colour is the door?"}\n',
    b"\xff\xfe\x00binary junk\n",
])
async def test_a_file_without_batch_records_is_not_appended_to(
    tmp_path: Path, content: bytes
) -> None:
    red, green = _docs(tmp_path)
    model = _model()
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    note = tmp_path / "notes.md"
    note.write_bytes(content)
    with pytest.raises(DocumentError) as info:
        await arun_batch(_items(red, green), note, job)
    assert "not a batch output" in info.value.message and model.requests == []
    assert note.read_bytes() == content


async def test_an_output_torn_in_its_first_record_still_resumes(tmp_path: Path) -> None:
    red, green = _docs(tmp_path)
    job = BatchJob("truncate", _model(), cache=False, cache_dir=tmp_path / "cache")
    out = tmp_path / "out.jsonl"
    out.write_text('{"key": "torn", "docu', encoding="utf-8")  # a crash in the first write
    summary = await arun_batch(_items(red, green), out, job)
    assert summary.answered == 3 and len(ResultLog(out).records()) == 3
    out.write_text("", encoding="utf-8")  # an empty file is a fresh output
    assert (await arun_batch(_items(red, green), out, job)).answered == 3


async def test_an_item_takes_a_path_and_is_keyed_as_its_text(tmp_path: Path) -> None:
    red, _ = _docs(tmp_path)
    item = BatchItem(document=red, question="What colour is the door?")
    assert item.document == str(red)
    assert item == BatchItem(document=str(red), question="What colour is the door?")
    job = BatchJob("truncate", _model(), cache=False, cache_dir=tmp_path / "cache")
    summary = await arun_batch([item], tmp_path / "out.jsonl", job)
    assert summary.answered == 1
    assert ResultLog(tmp_path / "out.jsonl").records()[0].document == str(red)


async def test_other_options_are_other_answers_and_a_changed_document_is_named(
    tmp_path: Path,
) -> None:
    import os

    red, green = _docs(tmp_path)
    out = tmp_path / "out.jsonl"
    items = _items(red, green)

    def job(**options: object) -> BatchJob:
        return BatchJob("truncate", _model(), options=options, cache=False,
                        cache_dir=tmp_path / "cache")

    assert (await arun_batch(items, out, job())).answered == 3
    first = ResultLog(out).records()
    assert first[0].options == {} and first[0].document_stamp is not None
    # Other settings: not the answers already written, so asked (and told apart by `options`).
    summary = await arun_batch(items, out, job(max_new=5))
    assert (summary.answered, summary.skipped) == (3, 0)
    assert [r.options for r in ResultLog(out).records()[3:]] == [{"max_new": 5}] * 3
    # The same settings again: all skipped, and silently while the documents are unchanged.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (await arun_batch(items, out, job(max_new=5))).skipped == 3
    red.write_text("The door of the red house is painted green now.", encoding="utf-8")
    os.utime(red, ns=(1, 1))  # a different size and time, whatever the clock's resolution
    with pytest.warns(RuntimeWarning, match=r"1 document changed since .*out.jsonl answered it "
                                            r"\(first: .*red.txt\); those answers are kept"):
        assert (await arun_batch(items, out, job(max_new=5))).skipped == 3


async def test_a_failed_item_still_reports_the_calls_it_paid_for(tmp_path: Path) -> None:
    red, _ = _docs(tmp_path)
    model = ScriptedModel()
    model.on("worker", reply="The door is blue [c1].")
    model.on("manager", reply=lambda request: 1 / 0)
    job = BatchJob("chain-of-agents", model, options={"max_new": 32}, cache=False,
                   cache_dir=tmp_path / "cache")
    summary = await arun_batch([BatchItem(document=str(red), question="Colour?")],
                               tmp_path / "out.jsonl", job)
    (record,) = ResultLog(tmp_path / "out.jsonl").records()
    assert record.error_type == "ZeroDivisionError" and summary.failed == 1
    assert record.usage.calls == len(model.calls("worker")) == summary.usage.calls > 0


async def test_a_model_that_cannot_be_made_stops_the_batch_at_its_first_item(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every item would fail the same way: the run stops at the first record saying so."""
    from longweave.batch import BatchStopped

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LONGWEAVE_OPENAI_API_KEY",
                 "LONGWEAVE_OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    docs = []
    for i in range(3):
        docs.append(tmp_path / f"d{i}.txt")
        docs[-1].write_text(f"Document {i}.", encoding="utf-8")
    items = [BatchItem(document=d, question="What?") for d in docs]
    out = tmp_path / "out.jsonl"
    job = BatchJob("truncate", "openai:gpt-4o-mini", cache=False)
    with pytest.raises(BatchStopped, match="no API key") as stopped:
        await arun_batch(items, out, job, executor=LocalExecutor(concurrency=1))
    assert stopped.value.summary.stopped and "it keeps the answers in" in stopped.value.hint
    # Items that failed before the driver read the first failure are written too (each fails
    # at once here); none is asked after it.
    records = ResultLog(out).records()
    assert stopped.value.summary.failed == len(records) >= 1
    assert all(r.fatal and r.error_type == "ConfigError" and "OPENAI_API_KEY" in r.hint
               for r in records)


async def test_a_local_model_that_fails_to_load_at_its_first_call_stops_the_batch(
        tmp_path: Path) -> None:
    """A local model is made lazily and loads at its first call: that failure is fatal too
    (each question would load it again, 15-25 s for a GGUF file, and fail the same way)."""
    from longweave.batch import BatchStopped
    from longweave.local_models.loader import ModelLoadError

    class Unloadable(ScriptedModel):
        async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
            self.requests.append(messages)
            await asyncio.sleep(0.05)  # a load takes a while; the driver reads the record first
            raise ModelLoadError("cannot load the weights of 'hf:x': damaged", hint="fix it")

    model = Unloadable()
    docs = [tmp_path / f"d{i}.txt" for i in range(5)]
    for d in docs:
        d.write_text("Some text.", encoding="utf-8")
    items = [BatchItem(document=d, question="What?") for d in docs]
    with pytest.raises(BatchStopped, match="cannot load the weights"):
        await arun_batch(items, tmp_path / "out.jsonl", BatchJob("truncate", model, cache=False),
                         executor=LocalExecutor(concurrency=1))
    assert len(model.requests) <= 2  # the first, and at most the one started meanwhile


async def test_answers_finished_when_a_batch_stops_are_still_written(tmp_path: Path) -> None:
    """The run stops at a fatal error, but what other questions had already answered is
    written (it was dropped with the work in flight, and paid for again on the rerun)."""
    from longweave.batch import BatchStopped
    from longweave.errors import ModelError

    class QuotaRunsOut(ScriptedModel):
        async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
            if "Room zero" in messages[-1].content:
                raise ModelError("HTTP 429: insufficient_quota", status=429, fatal=True)
            # Finished just after the failure, before the driver has read it.
            await asyncio.sleep(0)
            return await super().complete(messages, **kwargs)

    model = QuotaRunsOut()
    model.on("reader", reply="An answer.")
    names = ["zero", "one", "two"]
    items = []
    for name in names:
        doc = tmp_path / f"{name}.txt"
        doc.write_text(f"Room {name} holds chairs.", encoding="utf-8")
        items.append(BatchItem(document=doc, question="What is there?"))
    out = tmp_path / "out.jsonl"
    with pytest.raises(BatchStopped):
        await arun_batch(items, out, BatchJob("truncate", model, cache=False),
                         executor=LocalExecutor(concurrency=3))
    records = {Path(r.document).stem: r for r in ResultLog(out).records()}
    assert records["zero"].fatal
    assert {n for n, r in records.items() if r.ok} == {"one", "two"}


async def test_a_stopped_local_executor_gives_what_is_finished_and_cancels_the_rest() -> None:
    """The executor side of a stop: after `stop` is set, records already finished still come
    out (the driver used to close the stream and drop them), and work in flight is cancelled."""
    done: list[str] = []

    class Slow:
        async def answer(self, item: BatchItem) -> BatchRecord:
            await asyncio.sleep(0.3)
            done.append(item.question)
            return BatchRecord(key=item.question, document="d", question=item.question,
                               strategy="s", model="m")

    items = [[BatchItem(document=f"d{i}.txt", question=f"q{i}")] for i in range(9)]
    stop = asyncio.Event()
    stream = LocalExecutor(concurrency=3).run(Slow(), items, stop=stop)  # type: ignore[arg-type]
    first = await stream.__anext__()
    await asyncio.sleep(0.05)  # the other two of the first three finish meanwhile
    stop.set()
    given = [first.key, *[record.key async for record in stream]]
    assert sorted(given) == sorted(done) and len(given) == 3  # all finished, none after
    await asyncio.sleep(0.5)
    assert len(done) == 3  # what was in flight was cancelled
