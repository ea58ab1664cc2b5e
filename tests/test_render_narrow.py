"""The eval table on a narrow terminal: rich shrank the name columns first, folding "mem-walker"
one letter per line (or dropping it) and cutting the numbers on the right; the rows are stacked
there now, a heading of names and one `label  value` line per number."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import longweave.llm
from longweave.cli.render import print_table
from longweave.evals.harness import CaseResult, EvalResults
from longweave.evals.report import results_table
from longweave.testing import ScriptedModel
from tests.cli_run import run_cli

GENERIC = Path(__file__).parent / "fixtures" / "eval" / "generic" / "questions.jsonl"


def results() -> EvalResults:
    """Three rows: two strategies on one task (one of them with a failure), and a second task
    scored by F1 rather than by option, so each row leaves one metric column empty."""
    def case(strategy: str, task: str, length: int, n: int, **fields: Any) -> CaseResult:
        return CaseResult(strategy=strategy, case=f"{task}-{n}", task=task, length=length,
                          tokens=length - 200, calls=5, prompt_tokens=5290, seconds=34.4,
                          **fields)

    quality, narrative = "leval/quality", "longbench/narrativeqa"
    rows = [
        case("mem-walker", quality, 8192, 1, metric="option", score=1, scores={"option": 1}),
        case("mem-walker", quality, 8192, 2, metric="option", score=0, scores={"option": 0}),
        case("rag", quality, 8192, 1, metric="option", score=1, scores={"option": 1}),
        case("rag", quality, 8192, 2, metric="option", score=0, error="timed out"),
        case("mem-walker", narrative, 16384, 1, metric="f1", score=0.25, scores={"f1": 0.25}),
    ]
    return EvalResults(dataset="quality.jsonl", format="leval", model="local",
                       strategies=["mem-walker", "rag"], cases=3, results=rows)


COST = {"calls/q": "5.0", "tokens/q": "5,290", "s/q": "34.4"}
EXPECTED = {
    "mem-walker · leval/quality": {"length": "8k", "n": "2", "score": "0.500",
                                   "option acc": "0.500", "failed": "0", **COST},
    "mem-walker · longbench/narrativeqa": {"length": "16k", "n": "1", "score": "0.250",
                                           "f1": "0.250", "failed": "0", **COST},
    "rag · leval/quality": {"length": "8k", "n": "2", "score": "0.500", "option acc": "1.000",
                            "failed": "1", **COST},
}


def blocks(out: str) -> dict[str, dict[str, str]]:
    """The stacked rows in `out`, after its title line: each heading with its labelled values."""
    found: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n")[1:]:
        heading, *lines = block.strip("\n").splitlines()
        found[heading] = dict(re.split(r" {2,}", line.strip(), maxsplit=1) for line in lines)
    return found


def printed(console: Console) -> str:
    print_table(console, results_table(results()))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


def test_an_80_column_terminal_stacks_the_rows_with_every_name_whole_and_every_value() -> None:
    out = printed(Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None))
    assert "┃" not in out and "[bold]" not in out  # no table, and markup is styled, not shown
    assert out.splitlines()[0] == "quality.jsonl (leval) · model local"
    assert blocks(out) == EXPECTED  # an empty metric cell (f1 of quality) is left out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_styles_survive_the_stacked_layout() -> None:
    """The score stays bold and a failure count red, as in the table."""
    console = Console(file=io.StringIO(), force_terminal=True, width=80, color_system="standard")
    out = printed(console)
    assert "┃" not in out
    assert "\x1b[1m0.500\x1b[0m" in out and "\x1b[31m1\x1b[0m" in out


@pytest.mark.parametrize("terminal", [True, False])
def test_a_wide_terminal_and_a_pipe_still_get_the_table(terminal: bool) -> None:
    console = Console(file=io.StringIO(), force_terminal=terminal, width=200 if terminal else 80,
                      color_system=None)
    out = printed(console)
    assert "┃ strategy   ┃ task" in out
    row = next(line for line in out.splitlines() if "rag" in line)
    assert all(value in row for value in ("leval/quality", "8k", "1.000", "5,290", "34.4"))
    plain = Console(file=io.StringIO(), width=200, color_system=None)
    plain.print(results_table(results()))
    assert out == plain.file.getvalue()  # exactly rich's own table, at its natural width


def test_eval_at_80_columns_prints_each_row_whole(monkeypatch, tmp_path, capsys) -> None:
    """Through the command, with a scripted reader: every summary row of results.json is a block
    whose heading names it and whose values are its numbers."""
    model = ScriptedModel(name="scripted", context_window=2048)
    for question, reply in {"Who was the first keeper?": "Mara Quill",
                            "When was the electric lamp installed?": "In 1923.",
                            "How far out can the light be seen?": "The answer is (B).",
                            "What did the cottage become?": "It became a museum."}.items():
        model.on("reader", contains=question, reply=reply)
    monkeypatch.setattr(longweave.llm, "resolve_model", lambda spec, **_: model)
    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "out"
    code = run_cli(monkeypatch, "eval", str(GENERIC), "-s", "truncate", "-o", str(out),
                   "--no-cache", "--set", "max_new=32")
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert len(model.calls("reader")) == 4  # one answer per case
    summary = json.loads((out / "results.json").read_text())["summary"]
    shown = blocks(stdout)
    assert sorted(shown) == sorted(f"{r['strategy']} · {r['task']}" for r in summary)
    for r in summary:
        values = shown[f"{r['strategy']} · {r['task']}"]
        assert values["score"] == f"{r['score']:.3f}" and values["n"] == str(r["n"])
        assert values["tokens/q"] == f"{r['tokens']:,.0f}"
    assert "┃" not in stdout and all(len(line) <= 80 for line in stdout.splitlines())
