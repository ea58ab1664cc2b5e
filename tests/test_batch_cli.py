"""`longweave batch` and its questions files: expansion, resume after Ctrl-C, recorded failures."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longweave.batch import ResultLog
from longweave.batch_inputs import batch_items, load_questions
from longweave.cli import app
from longweave.errors import DocumentError
from longweave.testing import Request, ScriptedModel

FRUITS = {"apple": "Red.", "banana": "Yellow.", "cherry": "Dark red.", "damson": "Purple."}


def _reply(request: Request) -> str:
    return next(answer for fruit, answer in FRUITS.items() if fruit in request.text)


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """A scripted model behind every model string, a private cache, and a wide console."""
    scripted = scripted_cli(context_window=2048, columns=200)
    scripted.on("reader", reply=_reply)
    return scripted


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("The apple in the bowl is red.", encoding="utf-8")
    (docs / "b.md").write_text("# Fruit\n\nThe banana is yellow.", encoding="utf-8")
    (docs / "sub" / "c.txt").write_text("The cherry is dark red.", encoding="utf-8")
    return docs


def _questions(tmp_path: Path, rows: list[dict[str, object]], name: str = "q.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _batch(*args: str | Path) -> object:
    return CliRunner().invoke(app, ["batch", *map(str, args), "--strategy", "truncate",
                                    "--set", "max_new=16"])


def _pairs(out: Path) -> Counter[tuple[str, str]]:
    return Counter((Path(r.document).name, r.question) for r in ResultLog(out).records())


def test_questions_without_a_document_are_asked_of_every_file(model, folder, tmp_path) -> None:
    questions = _questions(tmp_path, [
        {"question": "What colour is it?", "id": 1, "gold": "red"},
        {"question": "Which fruit?"},
    ])
    out = tmp_path / "answers.jsonl"
    result = _batch(folder, "--questions", questions, "--out", out)
    assert result.exit_code == 0, result.output
    pairs = _pairs(out)
    assert set(pairs.values()) == {1} and len(pairs) == 6
    records = {(Path(r.document).name, r.question): r for r in ResultLog(out).records()}
    colour = records["c.txt", "What colour is it?"]
    assert colour.answer == "Dark red." and colour.id == "1" and colour.meta == {"gold": "red"}
    assert colour.citations[0].text == "The cherry is dark red."
    assert all(r.steps is None for r in records.values())  # steps only with --steps
    # The summary table and the running cost.
    assert "answered" in result.stdout and "6" in result.stdout
    assert "prompt tokens" in result.stdout and "6 calls" in result.stderr


def test_a_rerun_skips_everything_answered(model, folder, tmp_path) -> None:
    questions = _questions(tmp_path, [{"question": "Which fruit?"}])
    out = tmp_path / "answers.jsonl"
    assert _batch(folder, "-q", questions, "-o", out).exit_code == 0
    sent = len(model.requests)
    again = _batch(folder, "-q", questions, "-o", out)
    assert again.exit_code == 0 and len(model.requests) == sent
    assert "3 already answered" in again.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3


def test_ctrl_c_stops_cleanly_and_a_rerun_completes_every_pair_once(
    model, folder, tmp_path, ctrl_c
) -> None:
    (folder / "d.txt").write_text("The damson is purple.", encoding="utf-8")
    questions = _questions(tmp_path, [{"question": "What colour?"}, {"question": "Which?"}])
    out = tmp_path / "answers.jsonl"
    calls = 0

    def interrupt_on_the_fifth_call(request: Request) -> str:
        nonlocal calls
        calls += 1
        if calls == 5:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C mid-run
        return _reply(request)

    model.rules.clear()
    model.on("reader", reply=interrupt_on_the_fifth_call)
    first = _batch(folder, "-q", questions, "-o", out, "--concurrency", "1", "--no-cache")
    assert first.exit_code == 130, first.output
    written = len(ResultLog(out).records())
    assert 0 < written < 8
    assert f"{written} answers written" in first.stderr and "rerun" in first.stderr

    second = _batch(folder, "-q", questions, "-o", out, "--concurrency", "1", "--no-cache")
    assert second.exit_code == 0, second.output
    pairs = _pairs(out)
    assert len(pairs) == 8 and set(pairs.values()) == {1}  # every pair exactly once
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8
    assert f"{written} already answered" in second.stderr


def test_a_broken_file_fails_its_pairs_and_the_others_are_answered(
    model, folder, tmp_path
) -> None:
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    questions = _questions(tmp_path, [{"question": "Which fruit?"}])
    out = tmp_path / "answers.jsonl"
    result = _batch(folder, "-q", questions, "-o", out)
    assert result.exit_code == 1
    records = ResultLog(out).records()
    broken = [r for r in records if r.document.endswith("broken.pdf")]
    assert len(broken) == 1 and broken[0].error_type == "DocumentError"
    assert sorted(Path(r.document).name for r in records if r.ok) == ["a.txt", "b.md", "c.txt"]
    assert "1 failed" in result.stderr and "broken.pdf" in result.stderr


def test_documents_named_by_rows_globs_and_missing_files(model, folder, tmp_path) -> None:
    outside = tmp_path / "elsewhere" / "damson.rst"
    outside.parent.mkdir()
    outside.write_text("The damson is purple.", encoding="utf-8")
    questions = _questions(tmp_path, [
        {"question": "Which fruit?"},  # every .txt outside sub/
        {"question": "Colour?", "document": "sub/c.txt"},  # excluded by the glob, still asked
        {"question": "Colour?", "document": str(outside)},  # outside the folder
        {"question": "Colour?", "document": "../elsewhere/damson.rst", "id": "rel"},
        {"question": "Colour?", "document": "missing.txt"},
    ])
    out = tmp_path / "answers.jsonl"
    result = _batch(folder, "-q", questions, "-o", out, "--include", "*.txt",
                    "--exclude", "sub/*", "--steps")
    assert result.exit_code == 1
    records = {(Path(r.document).name, r.question, r.id): r for r in ResultLog(out).records()}
    assert set(records) == {
        ("a.txt", "Which fruit?", None), ("c.txt", "Colour?", None),
        ("damson.rst", "Colour?", None), ("damson.rst", "Colour?", "rel"),
        ("missing.txt", "Colour?", None),
    }
    assert records["damson.rst", "Colour?", "rel"].answer == "Purple."
    assert records["missing.txt", "Colour?", None].error_type == "DocumentError"
    assert records["a.txt", "Which fruit?", None].steps  # --steps keeps the steps


def test_a_relative_folder_gives_absolute_documents(folder, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(folder.parent)
    questions = _questions(tmp_path, [{"question": "Which?"}, {"question": "Colour?",
                                                             "document": "a.txt"}])
    items = batch_items(Path(folder.name), questions)
    assert [i.document for i in items] == [
        str(folder / "a.txt"), str(folder / "b.md"), str(folder / "sub" / "c.txt"),
        str(folder / "a.txt"),
    ]


def test_csv_questions_keep_extra_columns_as_meta(model, folder, tmp_path) -> None:
    questions = tmp_path / "q.csv"
    questions.write_text("id,question,document,gold\nq1,Colour?,a.txt,red\nq2,Which?,,\n",
                         encoding="utf-8")
    items = batch_items(folder, questions)
    assert [(Path(i.document).name, i.id, i.meta) for i in items] == [
        ("a.txt", "q1", {"gold": "red"}),
        ("a.txt", "q2", {}), ("b.md", "q2", {}), ("c.txt", "q2", {}),
    ]
    out = tmp_path / "answers.jsonl"
    assert _batch(folder, "-q", questions, "-o", out).exit_code == 0
    assert len(ResultLog(out).answered()) == 4


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("q.jsonl", '{"question": "ok"}\n{"question": "broken\n', "line 2: not valid JSON"),
        ("q.jsonl", '{"question": "ok"}\n\n["a list"]\n', "line 3: expected a JSON object"),
        ("q.jsonl", '{"document": "a.txt"}\n', "line 1: 'question' must be a non-empty"),
        ("q.jsonl", '{"question": "a", "id": 7}\n{"question": "b", "id": "7"}\n',
         "line 2: id '7' is already used on line 1"),
        ("q.csv", "query,document\nWhat?,a.txt\n", "line 1: the header has no 'question'"),
        ("q.csv", "question,document\nWhat?,a.txt,extra\n", "line 2: more cells than"),
        ("q.txt", "What?\n", "unknown questions format '.txt'"),
        ("q.jsonl", "\n", "holds no questions"),
    ],
)
def test_malformed_questions_files_name_the_file_and_line(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_questions(path)
    assert problem in info.value.message and name in info.value.message


def test_a_folder_given_as_the_questions_file_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="is a folder, not a questions file"):
        load_questions(tmp_path)  # it said "unknown questions format '(no suffix)'"


def test_a_bad_questions_file_stops_before_any_call(model, folder, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("not json\n", encoding="utf-8")
    result = _batch(folder, "-q", questions, "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 1 and isinstance(result.exception, DocumentError)
    assert "line 1" in str(result.exception) and model.requests == []
    assert not (tmp_path / "out.jsonl").exists()


def test_docstring_examples_run() -> None:
    import doctest

    import longweave.batch_inputs

    assert doctest.testmod(longweave.batch_inputs).failed == 0


def test_batch_view_counts_cost_and_summarizes() -> None:
    from io import StringIO

    from rich.console import Console

    from longweave.answer import Usage
    from longweave.batch import BatchRecord, BatchSummary
    from longweave.cli.batch_view import BatchView

    console = Console(file=StringIO(), width=160)
    common = {"key": "k", "document": "/x/a.txt", "question": "Q?", "strategy": "t", "model": "m"}
    with BatchView(console) as view:
        view.start(2, 3)
        view.record(BatchRecord(**common, answer="A", usage=Usage(calls=2, prompt_tokens=10)))
        view.record(BatchRecord(**common, id="q7", error="boom", error_type="RuntimeError"))
    assert (view.answered, view.failed, view.written) == (1, 1, 2)
    assert view.usage.calls == 2 and view.usage.prompt_tokens == 10
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "3 already answered" in shown and "q7 on a.txt: boom" in shown
    assert "2/2" in shown and "2 calls · 10+0 tok · 1 failed" in shown
    summary = BatchSummary(answered=1, failed=1, skipped=3, usage=view.usage, seconds=1.25)
    console.print(view.summary(summary))
    table = console.file.getvalue()  # type: ignore[attr-defined]
    for label, value in [("answered", "1"), ("failed", "1"), ("skipped", "3"),
                         ("model calls", "2"), ("prompt tokens", "10"), ("time", "1.2s")]:
        assert re.search(rf"{label}.*│\s+{re.escape(value)} │", table), label
    view.start(1, 0, "second run")  # a second bar (an evaluation's next strategy) starts at 0
    view.record(BatchRecord(**common, answer="B", usage=Usage(calls=1, prompt_tokens=5)))
    view.stop()
    assert "1 call · 5+0 tok" in console.file.getvalue()  # type: ignore[attr-defined]
    assert view.usage.calls == 3  # the view's own total still counts every run


def test_estimate_asks_nothing_and_then_compares_with_the_run(model, folder, tmp_path) -> None:
    questions = _questions(tmp_path, [{"question": "What colour is it?"}])
    out = tmp_path / "answers.jsonl"
    result = _batch(folder, "--questions", questions, "--out", out, "--estimate")
    assert result.exit_code == 0, result.output
    assert not model.requests and not out.exists()
    assert "calls" in result.output and "3 questions to answer" in result.output
    result = _batch(folder, "--questions", questions, "--out", out, "--estimate", "--run")
    assert result.exit_code == 0, result.output
    assert len(model.requests) == 3 and len(ResultLog(out).answered()) == 3
    assert "actual" in result.output  # the estimate printed beside the run's usage
    result = _batch(folder, "--questions", questions, "--out", out, "--estimate")
    assert "0 questions to answer, 3 already answered" in result.output


def test_prices_and_throughput_are_checked(model, folder, tmp_path) -> None:
    questions = _questions(tmp_path, [{"question": "What colour is it?"}])
    out = tmp_path / "answers.jsonl"
    base = (folder, "--questions", questions, "--out", out, "--estimate")
    for extra, said in [(("--throughput", "-5"), "must be more than 0"),
                        (("--throughput", "0"), "must be more than 0"),
                        (("--price-in", "-1", "--price-out", "2"), "--price-in"),
                        (("--price-in", "3"), "needs both --price-in and --price-out")]:
        result = _batch(*base, *extra)
        shown = " ".join(f"{result.output} {getattr(result.exception, 'message', '')}".split())
        assert result.exit_code != 0 and said in shown, extra
        assert "unexpected" not in shown
    result = _batch(*base, "--price-in", "3", "--price-out", "0", "--throughput", "50")
    assert result.exit_code == 0 and "cost" in result.output and "model seconds" in result.output
    assert not model.requests


def test_estimate_with_a_pilot_answers_a_few_then_estimates_the_rest(
        model, folder, tmp_path) -> None:
    questions = _questions(tmp_path, [{"question": "What colour is it?"},
                                      {"question": "Which fruit is it?"}])
    out = tmp_path / "answers.jsonl"
    result = _batch(folder, "--questions", questions, "--out", out, "--estimate", "--pilot", "2")
    assert result.exit_code == 0, result.output
    # Two questions, on two different documents, were answered and kept.
    assert len(model.requests) == 2 and len(ResultLog(out).answered()) == 2
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len({r["document"] for r in records}) == 2
    assert "pilot: 2 of 2 questions answered" in result.output
    assert "calibrated on a pilot of 2 question(s)" in result.output
    assert "4 questions to answer, 2 already answered; nothing else was asked" in result.output
    # --run answers the rest (the pilot's answers are resumed, not asked again).
    result = _batch(folder, "--questions", questions, "--out", out, "--estimate", "--pilot", "1",
                    "--run")
    assert result.exit_code == 0, result.output
    assert len(model.requests) == 6 and len(ResultLog(out).answered()) == 6
    assert sum(_pairs(out).values()) == 6 and set(_pairs(out).values()) == {1}
    result = _batch(folder, "--questions", questions, "--out", out, "--pilot", "1")
    assert result.exit_code == 2 and "go with --estimate" in result.output


def test_a_pilot_stopped_by_a_fatal_error_still_prints_the_estimate(
        model, folder, tmp_path, monkeypatch) -> None:
    """The pilot meets an error every question would hit (a model that cannot load): the
    estimate, made without a model, still prints; the rest is not run, even with --run."""
    from longweave.local_models.loader import ModelLoadError

    async def unloadable(messages, **kwargs):  # type: ignore[no-untyped-def]
        raise ModelLoadError("cannot load the weights of 'hf:x': damaged", hint="fix it")

    monkeypatch.setattr(model, "complete", unloadable)
    questions = _questions(tmp_path, [{"question": "What colour is it?"}])
    result = _batch(folder, "--questions", questions, "--out", tmp_path / "a.jsonl",
                    "--estimate", "--pilot", "1", "--run")
    shown = " ".join(result.output.split())
    assert result.exit_code == 1 and "stopped at an error every remaining question" in str(
        result.exception)
    assert "pilot: 0 of 1 questions answered" in shown and "3 questions to answer" in shown
    assert "calls" in shown  # the estimate table


def test_a_failed_pilot_question_is_left_out_of_the_calibration(model, folder, tmp_path) -> None:
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    questions = _questions(tmp_path, [{"question": "What colour is it?"}])
    out = tmp_path / "answers.jsonl"
    result = _batch(folder, "--questions", questions, "--out", out, "--estimate", "--pilot", "4")
    assert result.exit_code == 0, result.output
    assert len(model.requests) == 3 and len(ResultLog(out).answered()) == 3
    assert "pilot: 3 of 4 questions answered; the 1 that failed" in " ".join(result.output.split())
    # The broken document is still to answer, and the estimate says it cannot be read.
    assert "1 questions to answer, 3 already answered" in result.output
    assert "could not be read" in " ".join(result.output.split())
    assert "calibrated on a pilot of 3 question(s)" in result.output


def test_ask_trace_writes_every_call(model, tmp_path) -> None:
    from longweave.trace import read_trace

    doc = tmp_path / "d.txt"
    doc.write_text("The apple in the bowl is red.", encoding="utf-8")
    trace = tmp_path / "trace.jsonl"
    result = CliRunner().invoke(app, ["ask", str(doc), "What colour is the apple?", "--strategy",
                                      "truncate", "--set", "max_new=16", "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    calls = [line for line in read_trace(trace) if line["type"] == "call"]
    assert len(calls) == len(model.requests) == 1
    assert "apple" in calls[0]["messages"][-1]["content"]


def test_bad_output_and_trace_paths_stop_before_any_call(model, folder, tmp_path) -> None:
    questions = _questions(tmp_path, [{"question": "Which fruit?"}])
    before = questions.read_bytes()
    note = tmp_path / "notes.md"
    note.write_text("# Notes\n\nBuy apples.\n", encoding="utf-8")
    cases = [
        (["-o", questions], "is the questions file"),
        (["-o", note], "is not a batch output"),
        (["-o", note / "out.jsonl"], "notes.md is a file, not a folder"),
        (["-o", "/dev/zero"], "is not a regular file"),
        (["-o", tmp_path / "out.jsonl", "--trace", note / "t.jsonl"], "is a file, not a folder"),
        (["-o", tmp_path / "out.jsonl", "--trace", tmp_path / "out.jsonl"], "also the output"),
        (["-o", tmp_path / "out.jsonl", "--trace", questions], "also the questions"),
    ]
    for args, problem in cases:
        for estimate in ([], ["--estimate"]):
            result = _batch(folder, "-q", questions, *args, *estimate)
            assert result.exit_code == 1 and isinstance(result.exception, DocumentError), args
            assert problem in result.exception.message, (args, result.exception.message)
    assert model.requests == [] and not (tmp_path / "out.jsonl").exists()
    assert questions.read_bytes() == before
    assert note.read_text(encoding="utf-8") == "# Notes\n\nBuy apples.\n"
