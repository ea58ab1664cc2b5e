"""The Ray executor: same output as the local executor, and a worker death loses nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from longweave.batch import BatchItem, BatchJob, ResultLog, arun_batch
from longweave.executors import get_executor
from longweave.executors.ray import RayExecutor
from longweave.testing import Request, ScriptedModel


def _corpus(tmp_path: Path, n: int = 5) -> list[BatchItem]:
    items: list[BatchItem] = []
    for i in range(n):
        doc = tmp_path / f"doc{i}.txt"
        doc.write_text(f"Room {i} holds exactly {i * 7} chairs.", encoding="utf-8")
        items += [
            BatchItem(document=str(doc), question="How many chairs?", id=f"chairs-{i}"),
            BatchItem(document=str(doc), question="Which room?", id=f"room-{i}"),
        ]
    return items


def _reply(request: Request) -> str:
    # Deterministic answers that depend on the document and the question.
    text = request.text
    room = text.split("Room ", 1)[1].split(" ", 1)[0]
    if "How many chairs?" in text:
        return text.split("exactly ", 1)[1].split(" ", 1)[0]
    return f"room {room}"


def _model() -> ScriptedModel:
    model = ScriptedModel()
    model.on("reader", reply=_reply)
    return model


def _pairs(out: Path) -> list[tuple[str, str, str | None]]:
    return sorted((Path(r.document).name, r.question, r.answer) for r in ResultLog(out).records())


async def test_ray_output_equals_the_local_executors(tmp_path: Path, ray_runtime: None) -> None:
    items = _corpus(tmp_path)
    job = BatchJob("truncate", _model(), cache=False, cache_dir=tmp_path / "cache")
    local = await arun_batch(items, tmp_path / "local.jsonl", job, concurrency=2)
    remote = await arun_batch(
        items, tmp_path / "ray.jsonl", job, executor=RayExecutor(concurrency=2)
    )
    assert local.answered == remote.answered == len(items) and remote.failed == 0
    assert _pairs(tmp_path / "ray.jsonl") == _pairs(tmp_path / "local.jsonl")
    assert ("doc3.txt", "How many chairs?", "21") in _pairs(tmp_path / "ray.jsonl")
    assert remote.usage.calls == local.usage.calls == len(items)
    # A rerun through Ray resumes like a local one: nothing left to do.
    again = await arun_batch(items, tmp_path / "ray.jsonl", job, executor=RayExecutor())
    assert (again.answered, again.skipped) == (0, len(items))


def _dying_model(marker: Path) -> ScriptedModel:
    def reply(request: Request) -> str:
        if "Room 2 " in request.text and not marker.exists():
            marker.write_text("died once", encoding="utf-8")
            os._exit(1)  # the worker process dies mid-document, as a crash or OOM kill would
        return _reply(request)

    model = ScriptedModel()
    model.on("reader", reply=reply)
    return model


async def test_a_worker_that_dies_mid_document_is_retried_and_nothing_is_doubled(
    tmp_path: Path, ray_runtime: None
) -> None:
    items = _corpus(tmp_path)
    marker = tmp_path / "died"
    job = BatchJob("truncate", _dying_model(marker), cache=False, cache_dir=tmp_path / "cache")
    summary = await arun_batch(
        items, tmp_path / "ray.jsonl", job, executor=RayExecutor(concurrency=1, max_retries=2)
    )
    assert marker.exists()  # the kill really happened
    records = ResultLog(tmp_path / "ray.jsonl").records()
    assert summary.answered == len(items) and summary.failed == 0
    assert len(records) == len({r.key for r in records}) == len(items)
    assert ("doc2.txt", "How many chairs?", "14") in _pairs(tmp_path / "ray.jsonl")


async def test_a_document_whose_worker_keeps_dying_is_recorded_as_failed(
    tmp_path: Path, ray_runtime: None
) -> None:
    def reply(request: Request) -> str:
        if "Room 1 " in request.text:
            os._exit(1)
        return _reply(request)

    model = ScriptedModel()
    model.on("reader", reply=reply)
    items = _corpus(tmp_path, n=3)
    job = BatchJob("truncate", model, cache=False, cache_dir=tmp_path / "cache")
    summary = await arun_batch(
        items, tmp_path / "ray.jsonl", job, executor=RayExecutor(max_retries=1)
    )
    failed = [r for r in ResultLog(tmp_path / "ray.jsonl").records() if not r.ok]
    assert summary.answered == 4 and summary.failed == 2
    assert {Path(r.document).name for r in failed} == {"doc1.txt"}
    assert all("Ray task" in (r.error or "") for r in failed)


def test_get_executor_builds_a_ray_executor() -> None:
    executor = get_executor("ray", address="auto", concurrency=3)
    assert isinstance(executor, RayExecutor) and executor.address == "auto"


def test_the_batch_command_runs_on_ray(
    tmp_path: Path, ray_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import longweave.batch
    from longweave.cli import main

    items = _corpus(tmp_path, n=3)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(f'{{"id": "{i.id}", "question": "{i.question}", "document": "{i.document}"}}\n'
                for i in items),
        encoding="utf-8",
    )
    model = _model()

    class ScriptedJob(BatchJob):
        # The CLI ships the model string to the workers, which would load the real model there;
        # the job class (shipped by value) carries the scripted model instead.
        def __init__(self, strategy: str, _model: object, **options: object) -> None:
            super().__init__(strategy, model, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(longweave.batch, "BatchJob", ScriptedJob)
    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "answers.jsonl"
    monkeypatch.setattr(sys, "argv", [
        "longweave", "batch", str(tmp_path), "--questions", str(questions), "--out", str(out),
        "--strategy", "truncate", "--no-cache", "--executor", "ray",
    ])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    assert ("doc1.txt", "How many chairs?", "7") in _pairs(out)
    assert len(ResultLog(out).records()) == len(items)
