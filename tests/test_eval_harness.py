"""The evaluation harness end to end with the strict scripted model: scores, resume, files."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

import longweave.retrieval.index as index_module
from longweave.compare import split_options
from longweave.errors import ConfigError
from longweave.evals.harness import arun_eval
from longweave.evals.report import summarize, write_reports
from longweave.testing import HashEmbedder, ScriptedModel
from tests.cli_run import run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
GENERIC = FIXTURES / "generic"

# Scripted replies by question: keeper right (F1 1), lamp "In 1923." (EM 0, F1 2/3, contains 1),
# range picks (B) (option 1), museum names it (contains 1).
REPLIES = {  # keyed by the question text (the document shares some of its words)
    "Who was the first keeper?": "Mara Quill",
    "When was the electric lamp installed?": "In 1923.",
    "How far out can the light be seen?": "The answer is (B).",
    "What did the cottage become?": "It became a museum.",
}
EXPECTED = {"keeper": 1.0, "lamp": 0.0, "range": 1.0, "museum": 1.0}


def scripted(name: str = "scripted") -> ScriptedModel:
    model = ScriptedModel(name=name, context_window=2048)
    for needle, reply in REPLIES.items():
        model.on("reader", contains=needle, reply=reply)
    return model


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    fake = HashEmbedder()
    monkeypatch.setattr(index_module, "resolve_embedder", lambda spec, cache_dir=None: fake)
    return tmp_path / "cache"


async def test_scores_follow_the_scripted_answers_for_every_strategy(cache, tmp_path) -> None:
    model = scripted()
    results = await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate", "rag"],
                              model=model, cache=False, options={"max_new": 32})
    assert results.format == "jsonl" and results.cases == 4
    assert len(model.calls("reader")) == 8  # one answer call per case and strategy
    for strategy in ("truncate", "rag"):
        got = {r.case: r.score for r in results.results if r.strategy == strategy}
        assert got == EXPECTED
    lamp = next(r for r in results.results if r.case == "lamp")
    assert lamp.scores == {"em": 0.0, "f1": pytest.approx(2 / 3), "contains": 1.0}
    assert lamp.metric == "em" and lamp.calls == 1 and lamp.prompt_tokens > 0
    rows = {(r.strategy, r.task): r for r in summarize(results)}
    assert rows[("truncate", "questions")].n == 3
    assert rows[("truncate", "questions")].score == pytest.approx(2 / 3)
    assert rows[("rag", "inline")].score == 1.0
    # every record in the answer logs carries the case's gold answers
    logged = [json.loads(x) for x in (tmp_path / "out/answers/rag.jsonl").read_text().splitlines()]
    assert {r["id"] for r in logged} == set(EXPECTED)
    assert next(r for r in logged if r["id"] == "range")["meta"]["answers"] == ["B"]


async def test_second_run_resumes_without_model_calls(cache, tmp_path) -> None:
    model = scripted()
    first = await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate"], model=model,
                            cache=False)
    sent = len(model.requests)
    seen: list[tuple[str, int, int]] = []
    second = await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate"], model=model,
                             cache=False, on_start=lambda *a: seen.append(a))
    assert len(model.requests) == sent, "resume must not call the model again"
    assert seen == [("truncate", 0, 4)]  # nothing to do, four skipped
    assert [r.score for r in second.results] == [r.score for r in first.results]


async def test_failed_items_score_zero_and_are_retried(cache, tmp_path) -> None:
    model = ScriptedModel(context_window=2048)  # no rules: every call is unscripted
    broken = await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate"],
                             model=model, cache=False)
    assert all(r.score == 0.0 and "no rule" in (r.error or "") for r in broken.results)
    lamp = next(r for r in broken.results if r.case == "lamp")  # 0 on every metric it has
    assert lamp.scores == {"em": 0.0, "f1": 0.0, "contains": 0.0}
    # One failure among answers: every metric column agrees with the score.
    half = ScriptedModel(context_window=2048)
    half.on("reader", contains="Who was the first keeper?", reply="Mara Quill")
    mixed = await arun_eval(GENERIC, out=tmp_path / "mixed", strategies=["truncate"],
                            model=half, cache=False, options={"max_new": 32}, limit=2)
    (row,) = [r for r in summarize(mixed) if r.task == "questions"]
    assert (row.n, row.failed, row.score) == (2, 1, 0.5)
    assert row.metrics["f1"] == 0.5 and row.metrics["em"] == 0.5
    assert mixed.options == {"truncate": {"max_new": 32}} and mixed.limit == 2
    fixed = await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate"],
                            model=scripted(), cache=False)
    assert {r.case: r.score for r in fixed.results} == EXPECTED
    assert all(r.error is None for r in fixed.results)


async def test_beam_rubric_judge_float_and_faithful(cache, tmp_path) -> None:
    model = ScriptedModel(context_window=8192)
    model.on("reader", reply="Your sprint ends on March 29.")
    model.on("judge", contains="Rubric item", reply={"reason": "close", "grade": "partial"})
    model.on("judge", contains="Reference items", reply={"order": [1, 3, 2]})
    results = await arun_eval(FIXTURES / "beam", out=tmp_path / "out", strategies=["truncate"],
                              model=model, cache=False, options={"max_new": 32})
    by = {r.category: r for r in results.results}
    info = by["information_extraction"]
    assert info.metric == "beam" and info.score == 0.5  # a partial nugget keeps its 0.5
    assert info.scores["beam_faithful"] == 0.0  # ... and floors to 0 in faithful mode
    assert by["event_ordering"].score == pytest.approx(2 / 3)
    judged = len(model.calls("judge"))
    assert judged == 3  # one call per rubric item (one each here) and one ordering call
    assert by["abstention"].score == 0.5
    await arun_eval(FIXTURES / "beam", out=tmp_path / "out", strategies=["truncate"],
                    model=model, cache=False, options={"max_new": 32})
    assert len(model.calls("judge")) == judged  # verdicts are reused on a rerun


async def test_needle_citations_cover_the_needle(cache, tmp_path) -> None:
    model = ScriptedModel(context_window=4096)
    model.on("reader", reply="Eat a sandwich and sit in Dolores Park on a sunny day.")
    results = await arun_eval(FIXTURES / "needle", out=tmp_path / "out",
                              strategies=["truncate"], model=model, cache=False,
                              lengths=[400, 800], depths=[0, 100], options={"max_new": 32})
    assert [(r.length, r.depth) for r in results.results] == [
        (400, 0), (400, 100), (800, 0), (800, 100)]
    assert all(r.score == 1.0 and r.scores["cited"] == 1.0 for r in results.results)
    written = write_reports(results, tmp_path / "out")
    assert written["depth_plot"].read_bytes()[:4] == b"\x89PNG"


def test_split_options_scopes_and_reports() -> None:
    notes: list[str] = []
    chosen = split_options({"margin": 8, "keep": "middle", "chain_of_agents.paths": "x"},
                           ["truncate", "chain-of-agents"], notes=notes)
    assert chosen == {"truncate": {"margin": 8, "keep": "middle"},
                      "chain-of-agents": {"margin": 8, "paths": "x"}}
    assert notes == ["option keep does not apply to chain-of-agents"]
    chosen = split_options({"chain-of-agents.margin": 4, "margin": 8},
                           ["truncate", "chain-of-agents"])
    assert chosen == {"truncate": {"margin": 8}, "chain-of-agents": {"margin": 4}}
    with pytest.raises(ConfigError, match="no strategy"):
        split_options({"nonsense": 1}, ["truncate"])
    with pytest.raises(ConfigError, match="not in this run"):
        split_options({"rag.k": 3}, ["truncate"])


async def test_reports_written_and_plot_skipped_without_matplotlib(
    cache, tmp_path, monkeypatch
) -> None:
    results = await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate"],
                              model=scripted(), cache=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it now fails
    written = write_reports(results, tmp_path / "out")
    assert written["plot"] is None and not (tmp_path / "out/score_by_length.png").exists()
    data = json.loads(written["json"].read_text())
    assert data["summary"][0]["strategy"] == "truncate" and len(data["results"]) == 4
    rows = list(csv.DictReader(written["csv"].open()))
    assert {r["case"]: float(r["score"]) for r in rows} == EXPECTED


def test_cli_prints_the_table_and_writes_every_file(cache, tmp_path, monkeypatch, capsys,
                                                    scripted_cli) -> None:
    model = scripted_cli(scripted(), columns=200)  # the whole table on one line per row
    out = tmp_path / "out"
    code = run_cli(monkeypatch, "eval", str(GENERIC), "--strategies", "truncate,rag",
                   "--out", str(out), "--no-cache", "--set", "max_new=32")
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "truncate" in stdout and "rag" in stdout and "0.667" in stdout
    for name in ("results.json", "results.csv", "answers/truncate.jsonl", "answers/rag.jsonl"):
        assert (out / name).exists(), name
    assert (out / "score_by_length.png").read_bytes()[:4] == b"\x89PNG"
    sent = len(model.requests)
    code = run_cli(monkeypatch, "eval", str(GENERIC), "--strategies", "truncate,rag",
                   "--out", str(out), "--no-cache", "--set", "max_new=32")
    assert code == 0 and len(model.requests) == sent  # resumed: nothing asked again
    assert "already answered" in capsys.readouterr().err


def test_the_table_keeps_every_number_whole_at_80_columns(cache, tmp_path, monkeypatch,
                                                          capsys, scripted_cli) -> None:
    """A pipe gets 80 columns: the numbers used to shrink to "0.…" there, score included."""
    scripted_cli(scripted(), columns=80)
    code = run_cli(monkeypatch, "eval", str(GENERIC), "--strategies", "truncate,rag",
                   "--out", str(tmp_path / "out"), "--no-cache", "--set", "max_new=32")
    stdout = capsys.readouterr().out
    assert code == 0 and "…" not in stdout
    assert all(len(line) <= 80 for line in stdout.splitlines())
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    for row in data["summary"]:
        assert f"{row['score']:.3f}" in stdout


def test_a_misspelt_strategy_is_named_even_with_options(cache, tmp_path, monkeypatch,
                                                         capsys, scripted_cli) -> None:
    """With --set, the options were split first and the error was about the option."""
    scripted_cli(scripted())
    code = run_cli(monkeypatch, "eval", str(GENERIC), "--strategies", "trunacte",
                   "--set", "max_new=32", "--out", str(tmp_path / "out"))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "unknown strategy 'trunacte'" in err and "did you mean truncate?" in err


def test_cli_bad_strategy_is_a_clear_error(cache, tmp_path, monkeypatch, capsys,
                                           scripted_cli) -> None:
    model = scripted_cli(scripted())
    code = run_cli(monkeypatch, "eval", str(GENERIC), "--strategies", "nope",
                   "--out", str(tmp_path / "out"))
    assert code == 1 and "unknown strategy" in capsys.readouterr().err
    assert model.requests == []


async def test_trace_records_every_strategys_calls(cache, tmp_path) -> None:
    from longweave.trace import read_trace

    model = scripted()
    await arun_eval(GENERIC, out=tmp_path / "out", strategies=["truncate", "rag"], model=model,
                    cache=False, options={"max_new": 32}, trace=tmp_path / "trace.jsonl")
    lines = read_trace(tmp_path / "trace.jsonl")
    calls = [line for line in lines if line["type"] == "call"]
    assert len(calls) == len(model.requests) == 8
    assert {c["strategy"] for c in calls if "strategy" in c} <= {"truncate", "rag"}
    outputs = {c["output"] for c in calls}
    assert "Mara Quill" in outputs and "In 1923." in outputs
    assert len({line["key"] for line in lines if "key" in line}) == 8  # every item attributable


def test_the_table_keeps_names_whole_off_a_terminal(monkeypatch) -> None:
    """Piped into a log, the table was laid out in rich's 80 columns, where the numbers took
    the room and "mem-walker" and "leval/quality" folded one letter per line."""
    import io

    from rich.console import Console

    from longweave.cli.render import print_table
    from longweave.evals.harness import CaseResult, EvalResults
    from longweave.evals.report import results_table

    cases = [CaseResult(strategy="mem-walker", case=f"c{i}", task="leval/quality", length=8192,
                        tokens=8000, metric="option", score=i % 2, scores={"option": i % 2},
                        calls=5, prompt_tokens=5290, seconds=34.4) for i in range(6)]
    results = EvalResults(dataset="quality.jsonl", format="leval", model="local",
                          strategies=["mem-walker"], cases=6, results=cases)
    monkeypatch.delenv("COLUMNS", raising=False)
    piped = io.StringIO()
    print_table(Console(file=piped), results_table(results))
    row = next(line for line in piped.getvalue().splitlines() if "mem-walker" in line)
    assert "leval/quality" in row and "0.500" in row and "5,290" in row
    monkeypatch.setenv("COLUMNS", "80")  # a width asked for is kept
    narrow = io.StringIO()
    print_table(Console(file=narrow), results_table(results))
    assert all(len(line) <= 80 for line in narrow.getvalue().splitlines())
